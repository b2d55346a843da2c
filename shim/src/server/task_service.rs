//! The ttrpc face of the task layer: each Task RPC logs its failure and delegates to
//! `TaskCore`.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::{Task, TtrpcContext, TtrpcResult};

use crate::error::TaskResult;
use crate::task::TaskCore;

/// The ttrpc face of `TaskCore`.
#[derive(Clone)]
pub struct TaskService {
    core: Arc<TaskCore>,
}

impl TaskService {
    pub fn new(core: Arc<TaskCore>) -> Self {
        Self { core }
    }
}

fn done<T>(r: TaskResult<T>, rpc: &str) -> TtrpcResult<T> {
    r.map_err(|e| {
        tracing::warn!("{rpc}: {e}");
        e.into()
    })
}

fn empty(r: TaskResult<()>, rpc: &str) -> TtrpcResult<Empty> {
    done(r, rpc).map(|()| Empty::new())
}

#[async_trait]
impl Task for TaskService {
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        done(self.core.state_of(&req).await, "state")
    }
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        tracing::info!("create {} (bundle {})", req.id, req.bundle);
        let r = done(self.core.create(&req).await, "create");
        // "created" and "started" are milestones of the start timeline `make bench` draws.
        if r.is_ok() {
            tracing::info!("created {}", req.id);
        }
        r
    }
    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let r = done(self.core.start(&req).await, "start");
        if r.is_ok() {
            tracing::info!("started {} (exec {:?})", req.id, req.exec_id);
        }
        r
    }
    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        done(self.core.delete(&req).await, "delete")
    }
    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        done(self.core.pids(&req).await, "pids")
    }
    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        empty(self.core.pause(&req).await, "pause")
    }
    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        empty(self.core.resume(&req).await, "resume")
    }
    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        empty(self.core.kill(&req).await, "kill")
    }
    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        empty(self.core.exec(&req).await, "exec")
    }
    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        empty(self.core.resize_pty(&req).await, "resize_pty")
    }
    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        empty(self.core.close_io(&req).await, "close_io")
    }
    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        empty(self.core.update(&req).await, "update")
    }
    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        done(self.core.wait(&req).await, "wait")
    }
    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        done(self.core.stats(&req).await, "stats")
    }
    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        done(self.core.connect(&req).await, "connect")
    }
    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<Empty> {
        empty(self.core.shutdown(&req).await, "shutdown")
    }
}
