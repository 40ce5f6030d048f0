//! The [`Worker`] endpoint, and the [`Backoff`] of its re-registrations.

use std::sync::mpsc::Sender;
use std::time::Duration;

use rand::Rng;
use rpcenv::{EndpointCtx, HandlerResult, RpcAddress, RpcCallContext, RpcEndpoint};

use super::error::ClusterError;
use super::protocol::{task_result, MasterMsg, Registered, WorkerMsg};

/// What the worker endpoint tells the process that runs it (its registration loop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEvent {
    /// The master does not know the current registration: register again.
    Reconnect,
    /// The connection to the master closed: register again.
    MasterDisconnected,
    /// The master decommissioned this worker: exit.
    Shutdown,
}

/// The worker endpoint: runs the tasks launched under its current registration and reports their
/// results to the master that registered it.
pub struct Worker {
    id: String,
    task_time: Duration,
    master: Option<RpcAddress>,
    current: Option<Registered>,
    events: Sender<WorkerEvent>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("master", &self.master)
            .field("registered", &self.current.is_some())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker `id` whose tasks take `task_time`, whose master listens at `master`, telling
    /// `events` when it must register again or exit.
    pub fn new(
        id: String,
        task_time: Duration,
        master: Option<RpcAddress>,
        events: Sender<WorkerEvent>,
    ) -> Self {
        Worker {
            id,
            task_time,
            master,
            current: None,
            events,
        }
    }

    /// The current registration, if its number is `registration`.
    fn current(&self, registration: u64) -> Result<&Registered, ClusterError> {
        match &self.current {
            Some(r) if r.registration == registration => Ok(r),
            _ => Err(ClusterError::StaleRegistration {
                id: self.id.clone(),
                registration,
            }),
        }
    }

    /// Starts `task` if `registration` is the current one; its result goes to the master that
    /// registered this worker.
    fn launch(
        &self,
        ctx: &EndpointCtx<WorkerMsg>,
        registration: u64,
        task: u64,
        input: u64,
    ) -> Result<(), ClusterError> {
        let r = match self.current(registration) {
            Ok(r) => r,
            Err(_) if self.current.is_none() => return Err(ClusterError::NotRegistered { task }),
            Err(e) => return Err(e),
        };
        let master = r.master.clone();
        let worker = self.id.clone();
        let time = self.task_time;
        // The work runs off the message loop; the result goes to the master's ref.
        ctx.runtime().spawn(async move {
            tokio::time::sleep(time).await;
            let result = task_result(input);
            if let Err(e) = master.send(MasterMsg::TaskFinished {
                worker,
                registration,
                task,
                result,
            }) {
                tracing::warn!(task, error = %e, "cannot report a result");
            }
        });
        Ok(())
    }

    fn tell(&self, event: WorkerEvent) {
        // The loop is gone only while the process exits.
        let _ = self.events.send(event);
    }
}

impl RpcEndpoint for Worker {
    type Message = WorkerMsg;

    fn receive(&mut self, _: &EndpointCtx<WorkerMsg>, msg: WorkerMsg) -> HandlerResult {
        let refused = match msg {
            WorkerMsg::LaunchTask { .. } => Some(ClusterError::MustBeAsked {
                message: "LaunchTask",
            }),
            WorkerMsg::ReconnectWorker { registration } => match self.current(registration) {
                Ok(_) => {
                    tracing::info!(worker = %self.id, "the master asks this worker to register again");
                    self.current = None;
                    self.tell(WorkerEvent::Reconnect);
                    None
                }
                // A heartbeat of an earlier registration crossed the new registration: ignore.
                Err(_) => None,
            },
            WorkerMsg::Shutdown { registration } => match self.current(registration) {
                Ok(_) => {
                    tracing::info!(worker = %self.id, "the master asks this worker to shut down");
                    self.tell(WorkerEvent::Shutdown);
                    None
                }
                Err(e) => Some(e),
            },
            WorkerMsg::Registered(_) => Some(ClusterError::NotLocal {
                message: "Registered",
            }),
        };
        if let Some(e) = refused {
            tracing::warn!(worker = %self.id, error = %e, "message refused");
        }
        Ok(())
    }

    fn receive_and_reply(
        &mut self,
        ctx: &EndpointCtx<WorkerMsg>,
        msg: WorkerMsg,
        reply: RpcCallContext,
    ) -> HandlerResult {
        match msg {
            WorkerMsg::LaunchTask {
                registration,
                task,
                input,
            } => match self.launch(ctx, registration, task, input) {
                Ok(()) => reply.reply(()),
                Err(e) => {
                    tracing::warn!(worker = %self.id, error = %e, "message refused");
                    reply.send_failure(e);
                }
            },
            // Only this worker's own process knows what the master answered.
            WorkerMsg::Registered(r) if reply.connection_address().is_none() => {
                self.current = Some(r);
                reply.reply(());
            }
            WorkerMsg::Registered(_) => {
                tracing::warn!(worker = %self.id, peer = ?reply.connection_address(), "Registered from the network refused");
                reply.send_failure(ClusterError::NotLocal {
                    message: "Registered",
                });
            }
            _ => reply.send_failure(ClusterError::OneWay {
                message: "a worker message",
            }),
        }
        Ok(())
    }

    fn on_disconnected(
        &mut self,
        _: &EndpointCtx<WorkerMsg>,
        remote: &RpcAddress,
    ) -> HandlerResult {
        if self.master.as_ref() == Some(remote) && self.current.is_some() {
            self.current = None;
            self.tell(WorkerEvent::MasterDisconnected);
        }
        Ok(())
    }
}

/// The waits between registration attempts: 500 ms doubling to 5 s, each within ±20 % (jitter,
/// so that the workers of a restarted master do not all come back at the same instant).
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The first wait.
    pub const FIRST: Duration = Duration::from_millis(500);
    /// The longest wait (before jitter).
    pub const MAX: Duration = Duration::from_secs(5);

    /// Starts at [`FIRST`](Self::FIRST).
    pub fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    /// The next wait.
    pub fn next_wait(&mut self, rng: &mut impl Rng) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base.mul_f64(rng.random_range(0.8..=1.2))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_doubles_from_half_a_second_to_five_seconds_with_jitter() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new();
        let bases = [500, 1000, 2000, 4000, 5000, 5000, 5000];
        let mut jittered = false;
        for base in bases {
            let w = b.next_wait(&mut rng);
            let base = Duration::from_millis(base);
            assert!(
                w >= base.mul_f64(0.8) && w <= base.mul_f64(1.2),
                "{w:?} vs {base:?}"
            );
            jittered |= w != base;
        }
        assert!(jittered);
    }
}
