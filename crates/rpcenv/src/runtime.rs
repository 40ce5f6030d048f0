//! The tokio runtime the envs of a process share by default.
//!
//! One multi-thread runtime for all envs keeps the thread count flat however many envs a process
//! holds (33 envs in one process must not mean hundreds of threads on 2 cores). Its size comes from
//! the `rpc.io.threads` of the first env that needs it. A user may hand an env a runtime of its own
//! instead ([`RpcEnvBuilder::runtime`](crate::RpcEnvBuilder::runtime)).

use std::sync::OnceLock;

static SHARED: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The process-wide runtime, started on first use with `threads` workers.
pub(crate) fn shared_runtime(threads: usize) -> tokio::runtime::Handle {
    SHARED
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .thread_name("rpcenv-io")
                .enable_all()
                .build()
                .expect("cannot start the rpcenv IO runtime (out of threads or file descriptors?)")
        })
        .handle()
        .clone()
}
