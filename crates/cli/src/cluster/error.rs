//! [`ClusterError`]: why the master or a worker refused a message.

/// Why a message to the master or to a worker was refused. An asker gets it as the ask's failure;
/// for a one-way message it is logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// A submission of zero tasks.
    #[error("a submission needs at least one task")]
    NoTasks,
    /// A submission over the cap.
    #[error("a submission of {count} tasks exceeds app.maxTasksPerSubmit = {max}")]
    TooManyTasks {
        /// Tasks asked for.
        count: u64,
        /// The cap.
        max: u64,
    },
    /// The task counter would overflow.
    #[error("{count} more tasks would overflow the task counter ({total} submitted so far)")]
    TaskCounterOverflow {
        /// Tasks asked for.
        count: u64,
        /// Tasks submitted so far.
        total: u64,
    },
    /// No submission starts at this task.
    #[error("no submission starts at task {first}")]
    UnknownSubmission {
        /// The task asked about.
        first: u64,
    },
    /// A worker id that is empty, too long or has control characters.
    #[error("worker id {id:?} is not valid: {reason}")]
    BadWorkerId {
        /// The id (cut to its first characters).
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A core count out of range.
    #[error("worker {id} offers {cores} cores; 1 to {max} are accepted")]
    BadCores {
        /// The worker.
        id: String,
        /// Its cores.
        cores: u32,
        /// The cap.
        max: u32,
    },
    /// The id is registered over another connection.
    #[error("worker {id} is already registered over another connection")]
    DuplicateWorker {
        /// The worker.
        id: String,
    },
    /// The master has as many workers as it accepts.
    #[error("the master has {max} workers, as many as it accepts")]
    TooManyWorkers {
        /// The cap.
        max: usize,
    },
    /// The cluster was decommissioned.
    #[error("the cluster is decommissioned: no new registrations")]
    Decommissioned,
    /// No registered worker has this id.
    #[error("unknown worker {id}")]
    UnknownWorker {
        /// The worker.
        id: String,
    },
    /// A message for a registration that is not the current one.
    #[error("registration {registration} of worker {id} is not its current one")]
    StaleRegistration {
        /// The worker.
        id: String,
        /// The registration the message named.
        registration: u64,
    },
    /// A result for a task the worker is not running.
    #[error("task {task} is not running on worker {id}")]
    TaskNotRunning {
        /// The worker.
        id: String,
        /// The task.
        task: u64,
    },
    /// An ask sent as a one-way message.
    #[error("{message} must be asked, not sent")]
    MustBeAsked {
        /// The message's name.
        message: &'static str,
    },
    /// A one-way message sent as an ask.
    #[error("{message} is a one-way message, not an ask")]
    OneWay {
        /// The message's name.
        message: &'static str,
    },
    /// A message only the worker's own process may send came over the network.
    #[error("{message} is accepted only from the worker's own process")]
    NotLocal {
        /// The message's name.
        message: &'static str,
    },
    /// A task launched before the worker registered.
    #[error("task {task} launched before this worker registered")]
    NotRegistered {
        /// The task.
        task: u64,
    },
}
