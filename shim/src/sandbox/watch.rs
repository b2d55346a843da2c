//! What a sandbox watches while it lives: its VM's death (every process then exits with
//! [`VM_GONE_EXIT_STATUS`], or as OOM-killed when the host's OOM killer took the VM), its
//! agent's liveness (a guest that stops answering is stopped, so its tasks end instead of
//! hanging), and the guest's OOM kills (forwarded as TaskOOM: only for the containers this
//! shim created, at most one per container per [`OOM_WINDOW`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::events::task::TaskOOM;
use protocol::agent as pb;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{lock, Member, SandboxOwner, Slot, VmGone, VM_GONE_EXIT_STATUS};
use crate::events::{self, EventSender, TaskEvent};
use crate::guest::GuestAgent;
use crate::guest_output::rate::RateGate;
use crate::guest_output::OOM_WINDOW;

/// When the VM dies, every process of the sandbox exits with [`VM_GONE_EXIT_STATUS`].
pub(super) async fn vm_death<C: Member>(
    slot: Slot<C>,
    events: EventSender,
    mut exited: watch::Receiver<bool>,
) {
    if exited.wait_for(|dead| *dead).await.is_err() {
        return;
    }
    let slot = lock(&slot);
    let Some(sb) = slot.as_ref() else {
        return;
    };
    let oom = sb.vm.as_ref().and_then(|vm| vm.host_oom());
    let why = if oom.is_some() {
        VmGone::HostOom
    } else {
        VmGone::Died
    };
    if !sb.containers.is_empty() {
        match &oom {
            Some(what) => tracing::error!(
                "the sandbox VM was killed by the host's OOM killer ({what}); its tasks exit \
                 with {} and each container gets a TaskOOM",
                why.exit_status()
            ),
            None => {
                tracing::error!("the sandbox VM died; its tasks exit with {VM_GONE_EXIT_STATUS}")
            }
        }
    }
    // Recording an exit and queueing its event never blocks: fine under the lock.
    for c in sb.containers.values() {
        c.vm_gone(&events, why);
    }
}

/// How often the agent is asked whether it still answers, how long each answer may take,
/// and how many missed answers in a row declare the guest dead. A wedged or panicked guest is
/// thus stopped at most INTERVAL + MISSES x ANSWER (20 s) after it stopped answering; a guest
/// busy under TCG still answers a Check within a second.
pub const LIVENESS_INTERVAL: Duration = Duration::from_secs(5);
pub const LIVENESS_ANSWER: Duration = Duration::from_secs(5);
pub const LIVENESS_MISSES: u32 = 3;

/// Asks the agent for a health check every [`LIVENESS_INTERVAL`] until the VM is gone; after
/// [`LIVENESS_MISSES`] missed answers in a row it stops the VM, naming why, and
/// [`vm_death`] then ends every task. Without this, a guest whose agent hangs (a wedged
/// kernel, a hung vsock) would leave its tasks "running" and every RPC waiting out its
/// deadline. A timer, not an event: a silent guest sends none.
pub(super) async fn agent_liveness<C: Member>(
    owner: SandboxOwner<C>,
    agent: Arc<dyn GuestAgent>,
    mut exited: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(LIVENESS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut misses = 0;
    loop {
        tokio::select! {
            _ = exited.wait_for(|dead| *dead) => return,
            _ = tick.tick() => {}
        }
        let answer = tokio::select! {
            _ = exited.wait_for(|dead| *dead) => return,
            a = tokio::time::timeout(LIVENESS_ANSWER, agent.check(pb::CheckRequest::new())) => a,
        };
        let missed = match answer {
            Ok(Ok(_)) => {
                misses = 0;
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {LIVENESS_ANSWER:?}"),
        };
        misses += 1;
        tracing::warn!("agent health check {misses} of {LIVENESS_MISSES} missed: {missed}");
        if misses >= LIVENESS_MISSES {
            owner
                .stop_vm(&format!(
                    "its agent missed {misses} health checks in a row (the guest is wedged or \
                     its kernel died; last: {missed})"
                ))
                .await;
            return;
        }
    }
}

/// What becomes of one OOM event from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// To containerd.
    Forward,
    /// Another one for the same container within [`OOM_WINDOW`]: dropped.
    Coalesced,
    /// A container this shim did not create in this sandbox: ignored.
    NotOurs,
}

/// At most one TaskOOM per container per [`OOM_WINDOW`]; it remembers only containers this
/// shim created, each for one window.
#[derive(Debug, Default)]
struct OomFilter {
    last: HashMap<String, Instant>,
}

impl OomFilter {
    fn judge(&mut self, id: &str, created: bool, now: Instant) -> Verdict {
        if !created {
            return Verdict::NotOurs;
        }
        self.last
            .retain(|_, at| now.saturating_duration_since(*at) < OOM_WINDOW);
        if self.last.contains_key(id) {
            return Verdict::Coalesced;
        }
        self.last.insert(id.to_string(), now);
        Verdict::Forward
    }
}

/// Forwards the guest's OOM notifications until the agent connection ends.
pub(super) async fn oom_events<C: Member>(
    slot: Slot<C>,
    agent: Arc<dyn GuestAgent>,
    events: EventSender,
) {
    let next = || {
        let agent = agent.clone();
        async move {
            agent
                .get_oom_event(pb::GetOOMEventRequest::default())
                .await
                .ok()
                .map(|ev| ev.container_id)
        }
    };
    let created = |id: &str| {
        lock(&slot)
            .as_ref()
            .is_some_and(|sb| sb.containers.created(id, std::time::Instant::now()))
    };
    forward_ooms(next, created, &events).await;
}

/// Sends TaskOOM for each container id `next` yields (until None) that `created` knows, at
/// most one per container per [`OOM_WINDOW`]. What it refuses is logged at the guest line
/// rate (one report per flood).
async fn forward_ooms<N, F>(mut next: N, created: impl Fn(&str) -> bool, events: &EventSender)
where
    N: FnMut() -> F,
    F: std::future::Future<Output = Option<String>>,
{
    let mut filter = OomFilter::default();
    let mut notes = RateGate::for_guest_lines(Instant::now());
    loop {
        // The request is never cancelled (a reply in flight would be lost): reports wait
        // beside it.
        let request = next();
        tokio::pin!(request);
        let reply = loop {
            let tick = async {
                match notes.deadline() {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = &mut request => break r,
                () = tick => {
                    if let Some(r) = notes.check(Instant::now()) {
                        tracing::warn!("OOM events from the guest: {r}");
                    }
                }
            }
        };
        let Some(id) = reply else { break };
        let now = Instant::now();
        match filter.judge(&id, created(&id), now) {
            Verdict::Forward => events::send(
                events,
                TaskEvent::Oom(TaskOOM {
                    container_id: id,
                    ..Default::default()
                }),
            ),
            Verdict::Coalesced => {
                if notes.admit(now) {
                    tracing::debug!(container = %id, "OOM event within {OOM_WINDOW:?} of the last one: coalesced");
                }
            }
            Verdict::NotOurs => {
                if notes.admit(now) {
                    tracing::warn!("OOM event for {id:?}, a container this shim did not create in this sandbox: ignored");
                }
            }
        }
        if let Some(r) = notes.check(now) {
            tracing::warn!("OOM events from the guest: {r}");
        }
    }
    if let Some(r) = notes.finish() {
        tracing::warn!("OOM events from the guest: {r}");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_our_containers_once_per_window() {
        let mut f = OomFilter::default();
        let t0 = Instant::now();
        assert_eq!(f.judge("c1", true, t0), Verdict::Forward);
        assert_eq!(f.judge("forged", false, t0), Verdict::NotOurs);
        // A flood for c1 within the window: one event only; c2 is not held back by it.
        for ms in 1..1000 {
            let now = t0 + Duration::from_millis(ms);
            assert_eq!(f.judge("c1", true, now), Verdict::Coalesced, "at {ms} ms");
        }
        assert_eq!(
            f.judge("c2", true, t0 + Duration::from_millis(5)),
            Verdict::Forward
        );
        assert_eq!(f.judge("c1", true, t0 + OOM_WINDOW), Verdict::Forward);
        // Ignored ids are never remembered; old entries go.
        assert!(!f.last.contains_key("forged"));
        f.judge("c3", true, t0 + OOM_WINDOW * 10);
        assert_eq!(f.last.len(), 1);
    }

    /// A flood of forged and repeated OOM events: one TaskOOM for the sandbox's own
    /// container, nothing for the others.
    #[tokio::test]
    async fn a_guest_flooding_oom_events_reaches_containerd_once_per_window() {
        let (tx, mut rx) = events::channel();
        let mut n = 0u32;
        let next = || {
            n += 1;
            let id = match n {
                n if n > 20_000 => None,
                n if n % 2 == 0 => Some("c1".to_string()),
                n => Some(format!("forged-{n}")),
            };
            async move { id }
        };
        let started = Instant::now();
        forward_ooms(next, |id| id == "c1", &tx).await;
        assert!(
            started.elapsed() < OOM_WINDOW,
            "the flood took too long to tell"
        );
        let mut got = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            got.push(ev);
        }
        assert_eq!(
            got,
            [TaskEvent::Oom(TaskOOM {
                container_id: "c1".into(),
                ..Default::default()
            })]
        );
    }
}
