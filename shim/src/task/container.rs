//! One container of the sandbox: its init process, its execs, its host mounts.

use std::collections::HashMap;
use std::path::PathBuf;

use super::process::Process;
use crate::error::{TaskError, TaskResult};
use containerd_shim_protos::events::task::TaskOOM;

use crate::events::{self, EventSender, TaskEvent};
use crate::resources::rootfs::MountPlan;
use crate::sandbox::{Member, VmGone};

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    pub mounts: MountPlan,
    pub paused: bool,
}

impl Container {
    /// True for the ids containerd uses to name the init process.
    pub fn is_init(&self, exec_id: &str) -> bool {
        exec_id.is_empty() || exec_id == self.id
    }

    pub fn process(&self, exec_id: &str) -> TaskResult<&Process> {
        if self.is_init(exec_id) {
            return Ok(&self.init);
        }
        self.execs.get(exec_id).ok_or_else(|| {
            TaskError::not_found(format!(
                "exec {exec_id:?} of container {:?} not found",
                self.id
            ))
        })
    }

    pub fn process_mut(&mut self, exec_id: &str) -> TaskResult<&mut Process> {
        if exec_id.is_empty() || exec_id == self.id {
            return Ok(&mut self.init);
        }
        let id = self.id.clone();
        self.execs.get_mut(exec_id).ok_or_else(|| {
            TaskError::not_found(format!("exec {exec_id:?} of container {id:?} not found"))
        })
    }

    /// The id the agent knows a process by: "" for init.
    pub fn agent_exec_id(&self, exec_id: &str) -> String {
        if self.is_init(exec_id) {
            String::new()
        } else {
            exec_id.to_string()
        }
    }
}

impl Member for Container {
    fn vm_gone(&self, events: &EventSender, why: VmGone) {
        if why == VmGone::HostOom && self.init.is_running() {
            events::send(
                events,
                TaskEvent::Oom(TaskOOM {
                    container_id: self.id.clone(),
                    ..Default::default()
                }),
            );
        }
        let init = std::iter::once((&self.id, &self.init));
        let execs = self
            .execs
            .values()
            .filter(|p| p.is_running())
            .map(|p| (&p.exec_id, p));
        for (event_id, p) in init.chain(execs) {
            p.exit_handle()
                .publish(events, why.exit_status(), &self.id, event_id, p.pid);
        }
    }
}
