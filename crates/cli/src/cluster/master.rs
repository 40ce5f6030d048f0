//! The [`Master`] endpoint: [`MasterState`] wired to the network.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rpcenv::{EndpointCtx, HandlerResult, RpcAddress, RpcCallContext, RpcEndpoint, RpcTimeout};

use super::protocol::{MasterMsg, Registered, WorkerMsg, WorkerRef};
use super::state::{
    message_name, Answer, Command, LaunchFailure, Limits, MasterState, Outcome, Via,
};

/// How often workers heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// The master endpoint.
#[derive(Debug)]
pub struct Master {
    state: MasterState<WorkerRef>,
    /// Launches that failed, as (registration, task, how): filled by the tasks that await the
    /// launches, taken by the endpoint (only this process can add to it, unlike a message,
    /// which any peer could send).
    failed_launches: Arc<Mutex<Vec<(u64, u64, LaunchFailure)>>>,
}

impl Master {
    /// A master with these limits.
    pub fn new(limits: Limits) -> Self {
        Master {
            state: MasterState::new(limits, rand::random()),
            failed_launches: Arc::default(),
        }
    }

    /// Acts on the launches that failed since the last call (see
    /// [`MasterState::launch_failed`]).
    fn take_failed_launches(&mut self, ctx: &EndpointCtx<MasterMsg>) {
        let failed = std::mem::take(
            &mut *self
                .failed_launches
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for (registration, task, failure) in failed {
            let out = self.state.launch_failed(registration, task, failure);
            self.apply(ctx, "a failed launch", out, None);
        }
    }

    /// Launches `task` on `worker` as an ask: the worker accepts it with an empty answer. A
    /// launch that fails (undelivered, refused, or unanswered for the worker timeout) is
    /// recorded, and the endpoint woken to act on it (see [`MasterState::launch_failed`]); a
    /// one-way message would be lost without a word when the worker's address cannot be
    /// reached.
    fn launch(
        &self,
        ctx: &EndpointCtx<MasterMsg>,
        worker: &WorkerRef,
        registration: u64,
        task: u64,
    ) {
        let timeout = RpcTimeout::new(self.state.limits().worker_timeout, "--worker-timeout");
        let accepted = worker.ask_with_timeout::<()>(
            WorkerMsg::LaunchTask {
                registration,
                task,
                input: task,
            },
            timeout,
        );
        let (failed, me, worker) = (
            self.failed_launches.clone(),
            ctx.self_ref().cloned(),
            worker.clone(),
        );
        ctx.runtime().spawn(async move {
            let Err(e) = accepted.await else {
                return;
            };
            let failure = if e.is_timeout() {
                tracing::warn!(%worker, task, error = %e, "a task launch went unanswered: the task is queued again");
                LaunchFailure::Unanswered
            } else {
                tracing::warn!(%worker, task, error = %e, "a task launch was not accepted");
                LaunchFailure::NotAccepted
            };
            let first = {
                let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
                failed.push((registration, task, failure));
                failed.len() == 1
            };
            // One wake-up takes every failure recorded until it runs.
            if let (true, Some(me)) = (first, me) {
                // Fails only while the master stops, with nothing left to schedule.
                let _ = me.send(MasterMsg::CheckWorkers);
            }
        });
    }

    /// Carries out what handling a message produced: tells workers, answers the asker.
    fn apply(
        &self,
        ctx: &EndpointCtx<MasterMsg>,
        what: &'static str,
        out: Outcome<WorkerRef>,
        reply: Option<RpcCallContext>,
    ) {
        for (id, how) in &out.lost {
            tracing::warn!(worker = %id, how, "worker lost; its running tasks are re-queued");
        }
        for id in &out.left {
            tracing::info!(worker = %id, "worker left");
        }
        for (worker, command) in out.commands {
            let msg = match command {
                Command::Launch { registration, task } => {
                    self.launch(ctx, &worker, registration, task);
                    continue;
                }
                Command::ReconnectWorker { registration } => {
                    tracing::info!(%worker, "heartbeat of an unknown registration: asking the worker to register again");
                    WorkerMsg::ReconnectWorker { registration }
                }
                Command::Shutdown { registration } => WorkerMsg::Shutdown { registration },
            };
            if let Err(e) = worker.send(msg) {
                tracing::warn!(%worker, error = %e, "cannot reach a worker");
            }
        }
        let Some(reply) = reply else {
            if let Err(e) = out.answer {
                tracing::warn!(message = what, error = %e, "one-way message refused");
            }
            return;
        };
        match out.answer {
            Ok(Answer::Registered { registration }) => match ctx.self_ref() {
                Some(master) => reply.reply(Registered {
                    master: master.clone(),
                    registration,
                }),
                None => reply.send_failure("the master is stopping"),
            },
            Ok(Answer::Submitted(s)) => reply.reply(s),
            Ok(Answer::Submission(r)) => reply.reply(r),
            Ok(Answer::Status(s)) => reply.reply(s),
            Ok(Answer::Decommissioned(n)) => reply.reply(n),
            Ok(Answer::Done) => reply.reply(()),
            Err(e) => {
                tracing::warn!(message = what, peer = ?reply.connection_address(), error = %e, "ask refused");
                reply.send_failure(e);
            }
        }
    }
}

impl RpcEndpoint for Master {
    type Message = MasterMsg;

    fn on_start(&mut self, ctx: &EndpointCtx<MasterMsg>) -> HandlerResult {
        // Look for silent workers four times per timeout period.
        let me = ctx.self_ref().ok_or("no self ref")?.clone();
        let every = (self.state.limits().worker_timeout / 4).max(Duration::from_millis(50));
        ctx.runtime().spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if me.send(MasterMsg::CheckWorkers).is_err() {
                    break; // stopped
                }
            }
        });
        Ok(())
    }

    fn receive(&mut self, ctx: &EndpointCtx<MasterMsg>, msg: MasterMsg) -> HandlerResult {
        self.take_failed_launches(ctx);
        let what = message_name(&msg);
        let out = self.state.handle(msg, Via::Send, Instant::now());
        self.apply(ctx, what, out, None);
        Ok(())
    }

    fn receive_and_reply(
        &mut self,
        ctx: &EndpointCtx<MasterMsg>,
        msg: MasterMsg,
        reply: RpcCallContext,
    ) -> HandlerResult {
        let what = message_name(&msg);
        let connection = reply.connection_address().map(RpcAddress::from_socket_addr);
        let out = self.state.handle(msg, Via::Ask(connection), Instant::now());
        self.apply(ctx, what, out, Some(reply));
        Ok(())
    }

    fn on_disconnected(
        &mut self,
        ctx: &EndpointCtx<MasterMsg>,
        remote: &RpcAddress,
    ) -> HandlerResult {
        let out = self.state.disconnected(remote);
        if out.lost.is_empty() && out.left.is_empty() {
            tracing::debug!(%remote, "a connection closed; no registration was bound to it");
        }
        self.apply(ctx, "on_disconnected", out, None);
        Ok(())
    }
}
