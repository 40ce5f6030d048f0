//! A miniature of Spark's standalone cluster manager, built only on rpcenv's public API: a
//! [`Master`] endpoint that workers register with (an ask carrying the worker's own ref), that
//! hands out tasks by `send` to the stored worker refs, and that notices lost workers through
//! `on_disconnected` of the connection a worker registered over and through heartbeat expiry;
//! and a [`Worker`] endpoint that runs tasks and reports results to the master ref it received
//! when it registered, and that registers again when the master forgets it.
//!
//! The master's rules live in [`MasterState`]: no sockets, no clock (the time and the connection
//! a message came over are passed in), so they are unit-tested deterministically and fuzzed.

mod error;
mod master;
mod protocol;
mod state;
mod worker;

pub use error::ClusterError;
pub use master::{Master, HEARTBEAT_INTERVAL};
pub use protocol::{
    task_result, ClusterStatus, MasterMsg, MasterRef, Registered, SubmissionReport, Submitted,
    WorkerMsg, WorkerRef, MASTER, WORKER,
};
pub use state::{
    message_name, Answer, Command, LaunchFailure, Limits, MasterState, Outcome, Via,
    DEFAULT_MAX_TASKS_PER_SUBMIT, MAX_CORES, MAX_ID_LEN, MAX_TASKS_PER_SUBMIT_KEY, MAX_WORKERS,
};
pub use worker::{Backoff, Worker, WorkerEvent};
