//! The messages between the master, its workers and its clients, and the master's answers.
//!
//! The master's messages are generic over the worker handle `W` they carry: on the wire it is a
//! ref to the worker's endpoint ([`WorkerRef`]); the socket-free [`MasterState`](super::MasterState)
//! and its fuzz target use any cloneable stand-in.

use std::collections::BTreeMap;

use rpcenv::{RpcEndpointRef, RpcMessage};
use serde::{Deserialize, Serialize};

/// The master's endpoint name.
pub const MASTER: &str = "master";
/// A worker's endpoint name.
pub const WORKER: &str = "worker";

/// A ref to a worker's endpoint.
pub type WorkerRef = RpcEndpointRef<WorkerMsg>;
/// A ref to the master's endpoint.
pub type MasterRef = RpcEndpointRef<MasterMsg>;

/// Messages to the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterMsg<W = WorkerRef> {
    /// Ask: a worker registers with its own ref; answered with [`Registered`].
    RegisterWorker {
        /// The worker's id, unique in the cluster.
        id: String,
        /// Tasks it runs at once.
        cores: u32,
        /// Where the master sends it tasks.
        worker: W,
    },
    /// Send: a worker is alive. A master that does not know this registration answers with
    /// [`WorkerMsg::ReconnectWorker`] to `worker` (Spark: `Master.receive(Heartbeat)`).
    Heartbeat {
        /// The worker's id.
        id: String,
        /// The registration number the master handed out.
        registration: u64,
        /// Where to ask it to re-register.
        worker: W,
    },
    /// Send: a worker finished a task it was launched under `registration`.
    TaskFinished {
        /// The worker's id.
        worker: String,
        /// The registration the task was launched under.
        registration: u64,
        /// The task.
        task: u64,
        /// What it computed ([`task_result`]).
        result: u64,
    },
    /// Ask: queue `count` new tasks; answered with [`Submitted`].
    SubmitTasks {
        /// How many, 1 to `app.maxTasksPerSubmit`.
        count: u64,
    },
    /// Ask: how the submission whose first task is `first` is doing; answered with a
    /// [`SubmissionReport`].
    SubmissionStatus {
        /// The first task of the submission ([`Submitted::first`]).
        first: u64,
    },
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
        "rpcenv-demo/master/3".into()
    }
}

/// Messages to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerMsg {
    /// Ask: run a task (launched under the worker's registration `registration`); answered
    /// with `()` once the worker has started it, or refused (a stale registration). The master
    /// asks, rather than sends, so that a launch that cannot be delivered is noticed and its
    /// task given to another worker.
    LaunchTask {
        /// The registration the master launched it under.
        registration: u64,
        /// The task.
        task: u64,
        /// Its input.
        input: u64,
    },
    /// Ask, from the worker's own process only: the master accepted the registration.
    Registered(Registered),
    /// Send: the master does not know this worker's registration (it restarted, or declared the
    /// worker lost): register again (Spark: `ReconnectWorker`). A worker whose current
    /// registration is another one ignores it (the heartbeat crossed a new registration).
    ReconnectWorker {
        /// The registration the refused heartbeat named.
        registration: u64,
    },
    /// Send: the cluster is shutting down; exit.
    Shutdown {
        /// The registration being shut down (a stale one is ignored).
        registration: u64,
    },
}

impl RpcMessage for WorkerMsg {
    fn protocol_name() -> std::borrow::Cow<'static, str> {
        "rpcenv-demo/worker/3".into()
    }
}

/// The master's answer to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registered {
    /// The ref the worker reports to.
    pub master: MasterRef,
    /// This registration's number: tasks are launched under it, and results, heartbeats and
    /// shutdowns carry it, so that nothing of an earlier registration is mistaken for this one.
    pub registration: u64,
}

/// The master's answer to a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The first task's number; the submission is tasks `first..first + count`.
    pub first: u64,
    /// How many tasks.
    pub count: u64,
}

/// How one submission is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionReport {
    /// Tasks submitted.
    pub count: u64,
    /// Tasks completed (each counted once).
    pub completed: u64,
    /// Completions of tasks already completed (must stay 0).
    pub duplicates: u64,
    /// Completions with a wrong result (must stay 0).
    pub wrong_results: u64,
}

/// A snapshot of the cluster, for status lines and the demo's checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Registered workers.
    pub workers_alive: usize,
    /// Tasks ever submitted.
    pub total: u64,
    /// Tasks waiting for a core.
    pub queued: u64,
    /// Tasks running on a worker.
    pub running: usize,
    /// Tasks completed.
    pub done: usize,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Completions of tasks already completed (must stay 0).
    pub duplicates: u64,
    /// Results that were not the expected value (must stay 0).
    pub wrong_results: u64,
    /// Results not counted: from a worker's earlier registration, an unknown worker, or for a task
    /// not running there (their tasks were re-queued and run again).
    pub late_results: u64,
    /// Tasks completed per worker.
    pub per_worker: BTreeMap<String, u64>,
    /// Workers lost, in order.
    pub lost_count: u64,
    /// The first lost workers and how each loss was detected.
    pub lost: Vec<(String, String)>,
    /// Tasks re-queued because their worker was lost or re-registered.
    pub requeued_count: u64,
    /// The first of those tasks.
    pub requeued: Vec<u64>,
}

/// What a task computes (the master checks it).
pub fn task_result(input: u64) -> u64 {
    input.wrapping_mul(input).wrapping_add(7)
}
