//! A miniature of Spark's standalone cluster manager, built only on rpcenv's public API: a
//! [`Master`] endpoint that workers register with (an ask carrying the worker's own ref), that
//! hands out tasks by `send` to the stored worker refs, and that notices lost workers through
//! `on_disconnected` and through heartbeat expiry; and a [`Worker`] endpoint that runs tasks and
//! reports results to the master ref it received when it registered.
//!
//! The master's bookkeeping is [`MasterState`]: no sockets, no clock (the time is passed in), so
//! its rules are unit-tested deterministically.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use rpcenv::{
    EndpointCtx, HandlerResult, RpcAddress, RpcCallContext, RpcConf, RpcEndpoint, RpcEndpointRef,
    RpcEnv, RpcMessage,
};
use serde::{Deserialize, Serialize};

/// The master's endpoint name.
pub const MASTER: &str = "master";
/// A worker's endpoint name.
pub const WORKER: &str = "worker";
/// How often workers heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// The default worker timeout for real use (Spark's `spark.worker.timeout` is 60 s).
pub const DEFAULT_WORKER_TIMEOUT: &str = "60s";

/// Messages to the master.
#[derive(Debug, Serialize, Deserialize)]
pub enum MasterMsg {
    /// Ask: a worker registers with its own ref; answered with [`Registered`].
    RegisterWorker {
        id: String,
        cores: u32,
        worker: RpcEndpointRef<WorkerMsg>,
    },
    /// Send: a worker is alive.
    Heartbeat { id: String },
    /// Send: a worker finished a task.
    TaskFinished {
        worker: String,
        task: u64,
        result: u64,
    },
    /// Ask: queue `count` new tasks; answered with the total number of tasks.
    SubmitTasks { count: u64 },
    /// Ask: answered with a [`ClusterStatus`].
    Status,
    /// Send (to itself): look for workers whose heartbeats stopped.
    CheckWorkers,
    /// Ask: tell every worker to shut down; workers leaving after this are not losses.
    /// Answered with the number of workers told.
    Decommission,
}

impl RpcMessage for MasterMsg {
    fn protocol_name() -> std::borrow::Cow<'static, str> {
        "rpcenv-demo/master/1".into()
    }
}

/// Messages to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerMsg {
    /// Send: run a task.
    LaunchTask { task: u64, input: u64 },
    /// Send (from the worker's own process): the master's answer to the registration.
    Registered(Registered),
    /// Send: the cluster is shutting down; exit.
    Shutdown,
}

impl RpcMessage for WorkerMsg {
    fn protocol_name() -> std::borrow::Cow<'static, str> {
        "rpcenv-demo/worker/1".into()
    }
}

/// The master's answer to a registration: the ref workers report to.
#[derive(Debug, Serialize, Deserialize)]
pub struct Registered {
    pub master: RpcEndpointRef<MasterMsg>,
}

/// A snapshot of the cluster, for status lines and the demo's checks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub workers_alive: usize,
    pub total: u64,
    pub queued: usize,
    pub running: usize,
    pub done: usize,
    pub heartbeats: u64,
    /// Completions of tasks already completed (must stay 0).
    pub duplicates: u64,
    /// Results that were not the expected value (must stay 0).
    pub wrong_results: u64,
    /// Results from workers declared lost, ignored (their tasks were re-queued).
    pub late_results: u64,
    /// Tasks completed per worker.
    pub per_worker: BTreeMap<String, u64>,
    /// Lost workers and how the loss was detected.
    pub lost: Vec<(String, String)>,
    /// Tasks re-queued because their worker was lost.
    pub requeued: Vec<u64>,
}

/// What a task computes (the master checks it).
pub fn task_result(input: u64) -> u64 {
    input.wrapping_mul(input).wrapping_add(7)
}

struct WorkerInfo {
    worker: RpcEndpointRef<WorkerMsg>,
    cores: u32,
    /// Addresses the worker's connection events may name (its listen and/or socket address).
    addresses: Vec<RpcAddress>,
    last_heartbeat: Instant,
    running: Vec<u64>,
}

/// The master's bookkeeping, free of sockets and clocks.
pub struct MasterState {
    worker_timeout: Duration,
    workers: BTreeMap<String, WorkerInfo>,
    lost_ids: Vec<String>,
    queue: VecDeque<u64>,
    done: HashMap<u64, String>,
    status: ClusterStatus,
}

/// A task to send to a worker.
pub struct Launch {
    pub worker: RpcEndpointRef<WorkerMsg>,
    pub task: u64,
}

impl MasterState {
    /// An empty cluster whose workers are lost after `worker_timeout` without a heartbeat.
    pub fn new(worker_timeout: Duration) -> Self {
        MasterState {
            worker_timeout,
            workers: BTreeMap::new(),
            lost_ids: Vec::new(),
            queue: VecDeque::new(),
            done: HashMap::new(),
            status: ClusterStatus::default(),
        }
    }

    /// Registers (or re-registers) a worker.
    pub fn register(
        &mut self,
        id: String,
        cores: u32,
        worker: RpcEndpointRef<WorkerMsg>,
        addresses: Vec<RpcAddress>,
        now: Instant,
    ) {
        self.lost_ids.retain(|l| *l != id);
        self.workers.insert(
            id,
            WorkerInfo {
                worker,
                cores: cores.max(1),
                addresses,
                last_heartbeat: now,
                running: Vec::new(),
            },
        );
    }

    /// Records a heartbeat; false for an unknown (or lost) worker.
    pub fn heartbeat(&mut self, id: &str, now: Instant) -> bool {
        self.status.heartbeats += 1;
        match self.workers.get_mut(id) {
            Some(w) => {
                w.last_heartbeat = now;
                true
            }
            None => false,
        }
    }

    /// Queues `count` new tasks.
    pub fn submit(&mut self, count: u64) {
        let first = self.status.total;
        self.queue.extend(first..first + count);
        self.status.total += count;
    }

    /// Records a task's result.
    pub fn finished(&mut self, worker: &str, task: u64, result: u64) {
        let Some(info) = self.workers.get_mut(worker) else {
            // A worker declared lost: its tasks were re-queued, so this result is not counted.
            self.status.late_results += 1;
            return;
        };
        info.running.retain(|t| *t != task);
        if self.done.contains_key(&task) {
            self.status.duplicates += 1;
            return;
        }
        if result != task_result(task) {
            self.status.wrong_results += 1;
        }
        self.done.insert(task, worker.to_string());
        *self
            .status
            .per_worker
            .entry(worker.to_string())
            .or_default() += 1;
    }

    /// Hands queued tasks to workers with free cores.
    pub fn schedule(&mut self) -> Vec<Launch> {
        let mut launches = Vec::new();
        for info in self.workers.values_mut() {
            while info.running.len() < info.cores as usize {
                let Some(task) = self.queue.pop_front() else {
                    return launches;
                };
                info.running.push(task);
                launches.push(Launch {
                    worker: info.worker.clone(),
                    task,
                });
            }
        }
        launches
    }

    /// Declares the worker lost: its running tasks go back to the front of the queue.
    pub fn lose(&mut self, id: &str, how: &str) -> bool {
        let Some(info) = self.workers.remove(id) else {
            return false;
        };
        for &task in info.running.iter().rev() {
            self.queue.push_front(task);
        }
        self.status.requeued.extend(info.running);
        self.lost_ids.push(id.to_string());
        self.status.lost.push((id.to_string(), how.to_string()));
        true
    }

    /// The worker whose connection events name `address`.
    pub fn worker_at(&self, address: &RpcAddress) -> Option<String> {
        self.workers
            .iter()
            .find(|(_, w)| w.addresses.contains(address))
            .map(|(id, _)| id.clone())
    }

    /// Workers whose last heartbeat is older than the timeout at `now`.
    pub fn expired(&self, now: Instant) -> Vec<String> {
        self.workers
            .iter()
            .filter(|(_, w)| now.duration_since(w.last_heartbeat) > self.worker_timeout)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The refs of the registered workers.
    pub fn worker_refs(&self) -> Vec<RpcEndpointRef<WorkerMsg>> {
        self.workers.values().map(|w| w.worker.clone()).collect()
    }

    /// The current status.
    pub fn status(&self) -> ClusterStatus {
        let mut s = self.status.clone();
        s.workers_alive = self.workers.len();
        s.queued = self.queue.len();
        s.running = self.workers.values().map(|w| w.running.len()).sum();
        s.done = self.done.len();
        s
    }
}

/// The master endpoint.
pub struct Master {
    state: MasterState,
    decommissioned: bool,
}

impl Master {
    /// A master that loses workers after `worker_timeout` without a heartbeat.
    pub fn new(worker_timeout: Duration) -> Self {
        Master {
            state: MasterState::new(worker_timeout),
            decommissioned: false,
        }
    }

    fn launch(&mut self) {
        for Launch { worker, task } in self.state.schedule() {
            if let Err(e) = worker.send(WorkerMsg::LaunchTask { task, input: task }) {
                // The next loss event re-queues it; the master keeps serving.
                tracing::warn!(task, %worker, error = %e, "cannot launch task");
            }
        }
    }

    fn lose(&mut self, id: &str, how: &str) {
        if self.decommissioned {
            tracing::info!(worker = id, "worker left");
            return;
        }
        if self.state.lose(id, how) {
            tracing::warn!(
                worker = id,
                how,
                "worker lost; its running tasks are re-queued"
            );
            self.launch();
        }
    }
}

impl RpcEndpoint for Master {
    type Message = MasterMsg;

    fn on_start(&mut self, ctx: &EndpointCtx<MasterMsg>) -> HandlerResult {
        // Look for silent workers four times per timeout period.
        let me = ctx.self_ref().ok_or("no self ref")?.clone();
        let every = (self.state.worker_timeout / 4).max(Duration::from_millis(50));
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

    fn receive(&mut self, _: &EndpointCtx<MasterMsg>, msg: MasterMsg) -> HandlerResult {
        match msg {
            MasterMsg::Heartbeat { id } => {
                if !self.state.heartbeat(&id, Instant::now()) {
                    tracing::warn!(worker = %id, "heartbeat from an unknown or lost worker");
                }
            }
            MasterMsg::TaskFinished {
                worker,
                task,
                result,
            } => {
                self.state.finished(&worker, task, result);
                self.launch();
            }
            MasterMsg::CheckWorkers => {
                for id in self.state.expired(Instant::now()) {
                    self.lose(&id, "heartbeat expired");
                }
            }
            other => return Err(format!("{other:?} must be asked, not sent").into()),
        }
        Ok(())
    }

    fn receive_and_reply(
        &mut self,
        ctx: &EndpointCtx<MasterMsg>,
        msg: MasterMsg,
        reply: RpcCallContext,
    ) -> HandlerResult {
        match msg {
            MasterMsg::RegisterWorker { id, cores, worker } => {
                let mut addresses: Vec<RpcAddress> =
                    worker.address().cloned().into_iter().collect();
                addresses.extend(reply.sender_address().cloned());
                tracing::info!(worker = %id, cores, ?addresses, "worker registered");
                self.state
                    .register(id, cores, worker, addresses, Instant::now());
                let master = ctx.self_ref().ok_or("stopping")?.clone();
                reply.reply(Registered { master });
                self.launch();
            }
            MasterMsg::SubmitTasks { count } => {
                self.state.submit(count);
                reply.reply(self.state.status().total);
                self.launch();
            }
            MasterMsg::Status => reply.reply(self.state.status()),
            MasterMsg::Decommission => {
                self.decommissioned = true;
                let workers = self.state.worker_refs();
                for w in &workers {
                    if let Err(e) = w.send(WorkerMsg::Shutdown) {
                        tracing::warn!(worker = %w, error = %e, "cannot tell the worker to shut down");
                    }
                }
                reply.reply(workers.len() as u64);
            }
            other => reply.send_failure(format!("{other:?} is a one-way message")),
        }
        Ok(())
    }

    fn on_disconnected(
        &mut self,
        _: &EndpointCtx<MasterMsg>,
        remote: &RpcAddress,
    ) -> HandlerResult {
        if let Some(id) = self.state.worker_at(remote) {
            self.lose(&id, "on_disconnected");
        }
        Ok(())
    }
}

/// The worker endpoint.
pub struct Worker {
    id: String,
    master: Option<RpcEndpointRef<MasterMsg>>,
    task_time: Duration,
    /// Told when the master asks the worker to shut down.
    exit: Option<std::sync::mpsc::Sender<()>>,
}

impl RpcEndpoint for Worker {
    type Message = WorkerMsg;

    fn receive(&mut self, ctx: &EndpointCtx<WorkerMsg>, msg: WorkerMsg) -> HandlerResult {
        match msg {
            WorkerMsg::Registered(Registered { master }) => self.master = Some(master),
            WorkerMsg::Shutdown => {
                tracing::info!(worker = %self.id, "the master asked this worker to shut down");
                if let Some(exit) = &self.exit {
                    let _ = exit.send(());
                }
            }
            WorkerMsg::LaunchTask { task, input } => {
                let master = self.master.clone().ok_or("a task before registration")?;
                let worker = self.id.clone();
                let time = self.task_time;
                // The work runs off the message loop; the result goes to the master's ref.
                ctx.runtime().spawn(async move {
                    tokio::time::sleep(time).await;
                    let result = task_result(input);
                    if let Err(e) = master.send(MasterMsg::TaskFinished {
                        worker,
                        task,
                        result,
                    }) {
                        tracing::warn!(task, error = %e, "cannot report a result");
                    }
                });
            }
        }
        Ok(())
    }
}

/// Arguments of `rpcenv master`.
#[derive(clap::Args, Debug)]
pub struct MasterArgs {
    /// Host to bind and advertise.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 7077)]
    pub port: u16,
    /// A worker without heartbeat for this long is lost and its tasks re-queued.
    #[arg(long, default_value = DEFAULT_WORKER_TIMEOUT, value_parser = parse_duration)]
    pub worker_timeout: Duration,
    /// Exit when standard input closes (the demo runs its children this way).
    #[arg(long, hide = true)]
    pub parent_watch: bool,
}

/// Arguments of `rpcenv worker`.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The master's URI, `rpc://master@host:port`.
    #[arg(long)]
    pub master: String,
    /// Tasks run at once.
    #[arg(long, default_value_t = 2)]
    pub cores: u32,
    /// Run without a listening port: the master reaches this worker over its own connection.
    #[arg(long)]
    pub client_mode: bool,
    /// The worker's id (default: worker-<pid>).
    #[arg(long)]
    pub id: Option<String>,
    /// Time one task takes.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub task_time: Duration,
    /// Exit when standard input closes (the demo runs its children this way).
    #[arg(long, hide = true)]
    pub parent_watch: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    rpcenv::conf::parse_duration(s, rpcenv::conf::TimeUnit::Seconds)
}

/// Blocks until `exit` is signalled, or (with `--parent-watch`) until standard input closes
/// because the parent died or let go.
fn wait_for_exit(
    parent_watch: bool,
    exit: std::sync::mpsc::Sender<()>,
    signalled: std::sync::mpsc::Receiver<()>,
) {
    if parent_watch {
        std::thread::spawn(move || {
            let mut sink = String::new();
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            while matches!(lock.read_line(&mut sink), Ok(n) if n > 0) {
                sink.clear();
            }
            let _ = exit.send(());
        });
    } else {
        // Keep a sender alive so that the wait only ends when signalled.
        std::mem::forget(exit);
    }
    let _ = signalled.recv();
}

/// `rpcenv master`.
pub fn run_master(args: &MasterArgs, conf: &RpcConf) -> anyhow::Result<ExitCode> {
    let env = RpcEnv::builder(MASTER)
        .bind_host(&args.host)
        .port(args.port)
        .conf(conf.clone())
        .build()
        .context("cannot start the master")?;
    env.setup_endpoint(MASTER, Master::new(args.worker_timeout))?;
    let address = env.address().expect("a server env has an address");
    println!("master listening on rpc://{MASTER}@{address}");
    std::io::stdout().flush()?;
    let (exit, signalled) = std::sync::mpsc::channel();
    wait_for_exit(args.parent_watch, exit, signalled);
    env.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// `rpcenv worker`.
pub fn run_worker(args: &WorkerArgs, conf: &RpcConf) -> anyhow::Result<ExitCode> {
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let env = RpcEnv::builder(&id)
        .client_mode(args.client_mode)
        .conf(conf.clone())
        .build()
        .context("cannot start the worker")?;
    let master: RpcEndpointRef<MasterMsg> = env
        .setup_endpoint_ref_by_uri(&args.master)
        .with_context(|| format!("cannot reach the master at {}", args.master))?;
    let (exit, signalled) = std::sync::mpsc::channel();
    let me = env.setup_endpoint(
        WORKER,
        Worker {
            id: id.clone(),
            master: None,
            task_time: args.task_time,
            exit: Some(exit.clone()),
        },
    )?;
    let registered: Registered = master
        .ask_sync(MasterMsg::RegisterWorker {
            id: id.clone(),
            cores: args.cores,
            worker: me.clone(),
        })
        .context("registration with the master failed")?;
    let reports_to = registered.master.clone();
    me.send(WorkerMsg::Registered(registered))?;
    println!(
        "worker {id} registered with {} ({} cores{})",
        args.master,
        args.cores,
        if args.client_mode {
            ", client mode"
        } else {
            ""
        }
    );
    std::io::stdout().flush()?;
    // Heartbeats from a thread of their own, to the ref the master handed back.
    let heartbeat_id = id.clone();
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || loop {
            std::thread::sleep(HEARTBEAT_INTERVAL);
            if let Err(e) = reports_to.send(MasterMsg::Heartbeat {
                id: heartbeat_id.clone(),
            }) {
                tracing::warn!(error = %e, "heartbeat not sent");
            }
        })?;
    wait_for_exit(args.parent_watch, exit, signalled);
    env.shutdown();
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker_ref(env: &RpcEnv, name: &str) -> RpcEndpointRef<WorkerMsg> {
        env.setup_endpoint(
            name,
            Worker {
                id: name.into(),
                master: None,
                task_time: Duration::ZERO,
                exit: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn tasks_go_to_free_cores_and_complete_once() {
        let env = RpcEnv::builder("t").client_mode(true).build().unwrap();
        let now = Instant::now();
        let mut s = MasterState::new(Duration::from_secs(2));
        s.register("a".into(), 2, worker_ref(&env, "a"), vec![], now);
        s.submit(5);
        let launched: Vec<u64> = s.schedule().iter().map(|l| l.task).collect();
        assert_eq!(launched, vec![0, 1]);
        s.finished("a", 0, task_result(0));
        s.finished("a", 0, task_result(0));
        let st = s.status();
        assert_eq!(
            (st.done, st.duplicates, st.running, st.queued),
            (1, 1, 1, 3)
        );
        env.shutdown();
    }

    #[test]
    fn a_silent_worker_expires_and_its_tasks_are_requeued_first() {
        let env = RpcEnv::builder("t").client_mode(true).build().unwrap();
        let t0 = Instant::now();
        let mut s = MasterState::new(Duration::from_secs(2));
        let addr = RpcAddress::new("127.0.0.1", 4000);
        s.register("a".into(), 2, worker_ref(&env, "a"), vec![addr.clone()], t0);
        s.register("b".into(), 1, worker_ref(&env, "b"), vec![], t0);
        s.submit(4);
        assert_eq!(s.schedule().len(), 3);
        // b keeps heartbeating; a does not.
        assert!(s.heartbeat("b", t0 + Duration::from_secs(2)));
        assert!(s.expired(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(
            s.expired(t0 + Duration::from_secs(3)),
            vec!["a".to_string()]
        );
        assert_eq!(s.worker_at(&addr), Some("a".into()));
        assert!(s.lose("a", "heartbeat expired"));
        assert!(!s.lose("a", "on_disconnected"), "lost once");
        let st = s.status();
        assert_eq!(st.requeued, vec![0, 1]);
        assert_eq!(
            st.lost,
            vec![("a".to_string(), "heartbeat expired".to_string())]
        );
        // A late result of the lost worker is ignored; the re-run completes the task.
        s.finished("a", 0, task_result(0));
        s.finished("b", 2, task_result(2));
        let next: Vec<u64> = s.schedule().iter().map(|l| l.task).collect();
        assert_eq!(next, vec![0]);
        s.finished("b", 0, task_result(0));
        let st = s.status();
        assert_eq!((st.done, st.late_results, st.duplicates), (2, 1, 0));
        assert!(!s.heartbeat("a", t0), "a lost worker is unknown");
        env.shutdown();
    }
}
