//! What a sandbox watches while it lives: its VM's death (every process then exits with
//! [`VM_GONE_EXIT_STATUS`]) and the guest's OOM kills (forwarded as TaskOOM).

use std::sync::Arc;

use containerd_shim_protos::events::task::TaskOOM;
use protocol::agent as pb;
use tokio::sync::watch;

use super::{lock, Member, Slot, VM_GONE_EXIT_STATUS};
use crate::events::{self, EventSender, TaskEvent};
use crate::guest::GuestAgent;

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
    if !sb.containers.is_empty() {
        tracing::error!("the sandbox VM died; its tasks exit with {VM_GONE_EXIT_STATUS}");
    }
    // Recording an exit and queueing its event never blocks: fine under the lock.
    for c in sb.containers.values() {
        c.vm_gone(&events);
    }
}

/// Forwards the guest's OOM notifications until the agent connection ends.
pub(super) async fn oom_events(agent: Arc<dyn GuestAgent>, events: EventSender) {
    while let Ok(ev) = agent.get_oom_event(pb::GetOOMEventRequest::default()).await {
        events::send(
            &events,
            TaskEvent::Oom(TaskOOM {
                container_id: ev.container_id,
                ..Default::default()
            }),
        );
    }
}
