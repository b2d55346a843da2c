//! Task events: RPCs put them on one ordered channel (never waiting on containerd); one
//! publisher task forwards them in order.
//!
//! The channel is bounded where the guest could fill it: at most [`OOM_QUEUE`] TaskOOM events
//! wait for containerd at once, and more are dropped with a warning (the guest decides how
//! many OOM kills it reports). Every other event (TaskExit above all) is never dropped: each is
//! one per container, process or RPC that containerd itself asked for, so their number is the
//! host's, not the guest's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::context::Context;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::guest_output::OOM_QUEUE;

/// One event for containerd.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    Delete(TaskDelete),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Oom(TaskOOM),
    Paused(TaskPaused),
    Resumed(TaskResumed),
}

impl TaskEvent {
    pub fn topic(&self) -> &'static str {
        match self {
            TaskEvent::Create(_) => topics::TASK_CREATE_EVENT_TOPIC,
            TaskEvent::Start(_) => topics::TASK_START_EVENT_TOPIC,
            TaskEvent::Exit(_) => topics::TASK_EXIT_EVENT_TOPIC,
            TaskEvent::Delete(_) => topics::TASK_DELETE_EVENT_TOPIC,
            TaskEvent::ExecAdded(_) => topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskEvent::ExecStarted(_) => topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskEvent::Oom(_) => topics::TASK_OOM_EVENT_TOPIC,
            TaskEvent::Paused(_) => topics::TASK_PAUSED_EVENT_TOPIC,
            TaskEvent::Resumed(_) => topics::TASK_RESUMED_EVENT_TOPIC,
        }
    }

    /// Whether the event may be dropped when its queue is full: only those the guest can
    /// raise at will.
    fn droppable(&self) -> bool {
        matches!(self, TaskEvent::Oom(_))
    }

    fn into_message(self) -> Box<dyn MessageDyn> {
        match self {
            TaskEvent::Create(e) => Box::new(e),
            TaskEvent::Start(e) => Box::new(e),
            TaskEvent::Exit(e) => Box::new(e),
            TaskEvent::Delete(e) => Box::new(e),
            TaskEvent::ExecAdded(e) => Box::new(e),
            TaskEvent::ExecStarted(e) => Box::new(e),
            TaskEvent::Oom(e) => Box::new(e),
            TaskEvent::Paused(e) => Box::new(e),
            TaskEvent::Resumed(e) => Box::new(e),
        }
    }
}

/// An event on its way, holding its place in the droppable events' quota until published.
struct Queued {
    event: TaskEvent,
    _slot: Option<OwnedSemaphorePermit>,
}

/// The sending side of the event channel (cheap to clone).
#[derive(Clone)]
pub struct EventSender {
    tx: mpsc::UnboundedSender<Queued>,
    /// Places for droppable events ([`OOM_QUEUE`]).
    droppable: Arc<Semaphore>,
    /// Droppable events dropped since the last one that got through.
    dropped: Arc<AtomicU64>,
}

/// The receiving side: events in the order they were sent.
pub struct EventReceiver {
    rx: mpsc::UnboundedReceiver<Queued>,
}

impl EventReceiver {
    /// The next event; None once every sender is gone.
    pub async fn recv(&mut self) -> Option<TaskEvent> {
        self.rx.recv().await.map(|q| q.event)
    }

    pub fn try_recv(&mut self) -> Result<TaskEvent, TryRecvError> {
        self.rx.try_recv().map(|q| q.event)
    }
}

pub fn channel() -> (EventSender, EventReceiver) {
    channel_with(OOM_QUEUE)
}

/// A channel holding at most `droppable` droppable events at once.
fn channel_with(droppable: usize) -> (EventSender, EventReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sender = EventSender {
        tx,
        droppable: Arc::new(Semaphore::new(droppable)),
        dropped: Arc::new(AtomicU64::new(0)),
    };
    (sender, EventReceiver { rx })
}

/// Sends an event; a closed channel (shim shutting down) is not an error for the caller. A
/// droppable event finding its queue full is dropped: the first of a run with a warning, the
/// count once one gets through again.
pub fn send(tx: &EventSender, event: TaskEvent) {
    let slot = if event.droppable() {
        match tx.droppable.clone().try_acquire_owned() {
            Ok(p) => {
                let dropped = tx.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    tracing::warn!(
                        "{dropped} {} events were dropped: containerd did not keep up",
                        event.topic()
                    );
                }
                Some(p)
            }
            Err(_) => {
                if tx.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(
                        "{OOM_QUEUE} events wait for containerd: dropping {} events until it catches up",
                        event.topic()
                    );
                }
                return;
            }
        }
    } else {
        None
    };
    if tx.tx.send(Queued { event, _slot: slot }).is_err() {
        tracing::debug!("event channel closed; event dropped");
    }
}

/// Protobuf timestamp of a wall-clock instant.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    }
}

/// Forwards events to containerd until every sender is gone.
pub async fn run_publisher(mut rx: EventReceiver, publisher: RemotePublisher, namespace: String) {
    // A droppable event keeps its place in the queue until containerd has it.
    while let Some(Queued { event, _slot }) = rx.rx.recv().await {
        let topic = event.topic();
        if let Err(e) = publisher
            .publish(Context::default(), topic, &namespace, event.into_message())
            .await
        {
            tracing::warn!("publishing {topic}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oom(id: &str) -> TaskEvent {
        TaskEvent::Oom(TaskOOM {
            container_id: id.into(),
            ..Default::default()
        })
    }

    fn exit(id: &str) -> TaskEvent {
        TaskEvent::Exit(TaskExit {
            container_id: id.into(),
            ..Default::default()
        })
    }

    /// A flood of OOM events while containerd is not reading fills only the OOM quota; exits
    /// sent in between all arrive, in order with the OOM events that were kept.
    #[test]
    fn oom_events_are_bounded_and_exits_never_dropped() {
        let (tx, mut rx) = channel_with(4);
        for n in 0..10_000 {
            send(&tx, oom("c1"));
            if n % 1000 == 0 {
                send(&tx, exit(&format!("e{n}")));
            }
        }
        let mut got = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            got.push(ev);
        }
        let exits: Vec<String> = got
            .iter()
            .filter_map(|e| match e {
                TaskEvent::Exit(x) => Some(x.container_id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(
            exits,
            (0..10)
                .map(|n| format!("e{}", n * 1000))
                .collect::<Vec<_>>()
        );
        assert_eq!(got.iter().filter(|e| e.droppable()).count(), 4);
        // The first event sent is the first received.
        assert_eq!(got[0], oom("c1"));
        // Published events free their places.
        send(&tx, oom("c2"));
        assert_eq!(rx.try_recv().ok(), Some(oom("c2")));
    }
}
