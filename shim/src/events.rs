//! Task events: RPCs put them on an unbounded channel (never waiting on containerd); one
//! publisher task forwards them in order.

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
use tokio::sync::mpsc;

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

pub type EventSender = mpsc::UnboundedSender<TaskEvent>;
pub type EventReceiver = mpsc::UnboundedReceiver<TaskEvent>;

pub fn channel() -> (EventSender, EventReceiver) {
    mpsc::unbounded_channel()
}

/// Sends an event; a closed channel (shim shutting down) is not an error for the caller.
pub fn send(tx: &EventSender, ev: TaskEvent) {
    if tx.send(ev).is_err() {
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
    while let Some(ev) = rx.recv().await {
        let topic = ev.topic();
        if let Err(e) = publisher
            .publish(Context::default(), topic, &namespace, ev.into_message())
            .await
        {
            tracing::warn!("publishing {topic}: {e}");
        }
    }
}
