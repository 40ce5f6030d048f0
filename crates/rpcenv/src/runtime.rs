//! The tokio runtimes the envs of a process share by default: one for the servers' inbound
//! connections, one for everything else.
//!
//! Shared runtimes keep the thread count flat however many envs a process holds (33 envs in one
//! process must not mean hundreds of threads on 2 cores). Their sizes come from the first env
//! that needs each (`rpc.io.serverThreads`, `rpc.io.clientThreads`; see
//! [`RpcConf::io_threads`](crate::RpcConf::io_threads)). A user may hand an env a runtime of its
//! own instead ([`RpcEnvBuilder::runtime`](crate::RpcEnvBuilder::runtime)); that runtime then
//! serves its inbound connections too.
//!
//! Why servers have a runtime of their own (as Spark's servers and clients have event loop
//! groups of their own): with one pool of work-stealing workers, the tasks of a request's two
//! ends (the asker and its connection on one side, the serving connection on the other) land on
//! whichever worker is free, and move between them, so the data of each message crosses between
//! cores several times. With a pool per side, each side's tasks stay on its own workers. On the
//! 2-core machines, one server and one client worker against two shared ones (alternated rounds,
//! the same binary): pipelined asks (W2) 167-258k against 137-198k asks/s, 1 MiB asks (W4) 2.6-3.3k
//! against 2.2-2.6k, 32 clients (W6) 138-196k against 139-164k; sequential asks (W1, W7) alike.

use std::sync::OnceLock;

static CLIENTS: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static SERVERS: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The process-wide IO runtime (outbound connections, ask timers, the envs' tasks), started on
/// first use with `threads` workers.
pub(crate) fn shared_runtime(threads: usize) -> tokio::runtime::Handle {
    started(&CLIENTS, threads, "rpcenv-io")
}

/// The process-wide runtime of the servers' accept loops and inbound connections, started on
/// first use with `threads` workers.
pub(crate) fn shared_server_runtime(threads: usize) -> tokio::runtime::Handle {
    started(&SERVERS, threads, "rpcenv-srv-io")
}

fn started(
    cell: &'static OnceLock<tokio::runtime::Runtime>,
    threads: usize,
    name: &'static str,
) -> tokio::runtime::Handle {
    cell.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap_or_else(|e| {
                panic!("cannot start the rpcenv runtime {name} (out of threads or file descriptors?): {e}")
            })
    })
    .handle()
    .clone()
}
