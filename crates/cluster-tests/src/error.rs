//! The harness's one error type.

use std::time::Duration;

/// What went wrong while setting up hosts, running processes or injecting faults.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A system command (`ip`, `iptables`, `tc`, `kill`) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A condition was not met in time.
    #[error("{what} did not happen within {within:?}")]
    Deadline {
        /// The awaited condition (and, for a process, its output so far).
        what: String,
        /// How long the harness waited.
        within: Duration,
    },
    /// A process ended before the awaited condition.
    #[error("{process} exited ({status}) before {what}; its output:\n{transcript}")]
    Exited {
        /// The process's label.
        process: String,
        /// How it ended.
        status: String,
        /// The awaited condition.
        what: String,
        /// Everything it printed.
        transcript: String,
    },
    /// Something the harness needs is not there.
    #[error("missing: {what}")]
    Missing {
        /// The missing piece and how to provide it.
        what: String,
    },
}

impl HarnessError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
        let what = what.into();
        move |source| HarnessError::Io { what, source }
    }
}
