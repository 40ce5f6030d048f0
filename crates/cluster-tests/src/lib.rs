//! Support code for rpcenv's multi-host fault scenarios.
//!
//! The scenarios (in `tests/`) run real `rpcenv` processes on simulated hosts and break the network
//! between them. The layers:
//! - [`netns`]: hosts as Linux network namespaces on a private bridge, with DNS names, and the
//!   faults a network has (partition, link down, bandwidth limit, an address moving hosts).
//! - [`process`]: a child process whose output lines can be waited for with a deadline, signals
//!   (SIGSTOP / SIGCONT / SIGKILL), and its RSS and descriptor count from `/proc`.
//! - [`proxy`]: a fault-injecting TCP proxy (delay each direction, blackhole, reset after N
//!   bytes, throttle) for the faults namespaces cannot make without `netem`.
//! - [`probe`]: the echo endpoint and the ask loop that the `cluster-peer` binary and the
//!   in-process scenarios share.
//! - [`stats`]: percentiles and the least-squares slope the soak judges growth with.

pub mod error;
pub mod netns;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod stats;

pub use error::HarnessError;

use std::path::PathBuf;

/// The `rpcenv` binary the scenarios drive: `$RPCENV_BIN`, or the one built next to the running
/// test binary (`target/<profile>/rpcenv`, which `cargo test --workspace` builds).
pub fn rpcenv_bin() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os("RPCENV_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|source| HarnessError::Io {
        what: "locating the running executable".into(),
        source,
    })?;
    // target/<profile>/deps/<test binary> or target/<profile>/<binary>
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("rpcenv");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(HarnessError::Missing {
            what: format!(
                "{} (build it with `cargo build -p rpcenv-cli`, or set RPCENV_BIN)",
                bin.display()
            ),
        })
    }
}

/// Holds the lock that makes scenarios run one at a time (within a test binary; cargo runs test
/// binaries one after another). A scenario that panicked leaves the lock usable.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SCENARIOS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SCENARIOS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logging of the crate's binaries: `RUST_LOG`-style filter from the environment (default
/// `warn`), to stderr, so that stdout carries only their result lines.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}
