//! The tokio runtimes the envs of a process share by default: the IO runtime, and, when
//! `rpc.io.serverThreads` is set, a runtime of the servers' own for their accept loops and inbound
//! connections.
//!
//! Shared runtimes keep the thread count flat however many envs a process holds (33 envs in one
//! process must not mean hundreds of threads on 2 cores). Their sizes come from the first env
//! that needs each (see [`RpcConf::io_threads`](crate::RpcConf::io_threads)). A user may hand an
//! env a runtime of its own instead ([`RpcEnvBuilder::runtime`](crate::RpcEnvBuilder::runtime));
//! that runtime then serves its inbound connections too.
//!
//! Why servers may have a runtime of their own (as Spark's servers and clients have event loop
//! groups of their own), and why it is not the default. With one pool of work-stealing workers,
//! the tasks of a request's two ends, when both are in one process (the asker and its connection
//! on one side, the serving connection on the other), land on whichever worker is free and move
//! between them, so a message's data crosses between cores several times; a pool per side keeps
//! each side on its own workers. But it also fixes how the threads are shared between the sides:
//! a server busy with inbound connections gets only its part. On the 2-core machines, with one
//! server and one client worker against two shared ones, alternated rounds of the same binary
//! with the cores far apart (a round trip of 145-275 ns, see `rpcenv bench --core-rtt`) gave
//! pipelined asks within a process (W2) 1.12x, 1 MiB asks (W4) 1.23x (24 of 24 rounds) and 32
//! clients (W6) 0.97x; with the cores close together (under 100 ns), 8 alternated rounds gave
//! W2 0.92x and W6 0.86x with separate runtimes, W4 still 1.47x. Where a request's two ends live in different
//! processes, as across hosts, only the sharing is left; hence the default of one runtime.

use std::sync::OnceLock;

static IO: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static SERVERS: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The process-wide IO runtime (outbound connections, ask timers, the envs' tasks), started on
/// first use with `threads` workers.
pub(crate) fn shared_runtime(threads: usize) -> tokio::runtime::Handle {
    started(&IO, threads, "rpcenv-io")
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
