//! What a sandbox watches while it lives: its VM's death (every process then exits with
//! [`VM_GONE_EXIT_STATUS`]) and the guest's OOM kills (forwarded as TaskOOM).

use std::sync::Arc;

use containerd_shim_protos::events::task::TaskOOM;
use protocol::agent as pb;
use tokio::sync::watch;

use super::{lock, Slot};
use crate::events::{self, EventSender, TaskEvent};
use crate::guest::GuestAgent;
use crate::task::process::{ExitHandle, VM_GONE_EXIT_STATUS};

/// When the VM dies, every process of the sandbox exits with 255.
pub(super) async fn vm_death(slot: Slot, events: EventSender, mut exited: watch::Receiver<bool>) {
    if exited.wait_for(|dead| *dead).await.is_err() {
        return;
    }
    let procs: Vec<(String, String, u32, ExitHandle)> = {
        let slot = lock(&slot);
        let Some(sb) = slot.as_ref() else {
            return;
        };
        if !sb.containers.is_empty() {
            tracing::error!("the sandbox VM died; its tasks exit with {VM_GONE_EXIT_STATUS}");
        }
        sb.containers
            .values()
            .flat_map(|c| {
                let init = (c.id.clone(), c.id.clone(), c.init.pid, c.init.exit_handle());
                let execs = c
                    .execs
                    .values()
                    .filter(|p| p.is_running())
                    .map(|p| (c.id.clone(), p.exec_id.clone(), p.pid, p.exit_handle()));
                std::iter::once(init).chain(execs).collect::<Vec<_>>()
            })
            .collect()
    };
    for (cid, id, pid, handle) in procs {
        handle.publish(&events, VM_GONE_EXIT_STATUS, &cid, &id, pid);
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
