//! Where connections run when `rpc.io.serverThreads` is set: a server's inbound connections on
//! the servers' runtime (`rpcenv-srv-io` threads), everything else on the IO runtime
//! (`rpcenv-io`); an env handed a runtime of its own runs all its IO there.
//!
//! The shared runtimes are process-wide and start with the first env that needs each, so this
//! file holds one test, whose steps run in order: first an env with its own runtime (no servers'
//! runtime may start), then envs on the shared runtimes. Which threads did the work is read from
//! `/proc/self/task/*/stat` (CPU ticks per thread, by thread name).

mod common;

use std::time::Instant;

use common::{suite_conf, Echo, WAIT};
use rpcenv::{RpcConf, RpcEndpointRef, RpcEnv};

/// The CPU ticks (user + system) of this process's threads whose name starts with `prefix`;
/// `None` when there is no such thread.
fn thread_ticks(prefix: &str) -> Option<u64> {
    let mut found = None;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("a task entry").path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // The fields after the name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat[stat.rfind(')').expect("stat has a name") + 2..]
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        *found.get_or_insert(0) += ticks;
    }
    found
}

fn conf() -> RpcConf {
    let mut c = suite_conf();
    // One worker for the servers, one for the rest, whatever the machine's cores.
    c.set("rpc.io.threads", "2").unwrap();
    c.set("rpc.io.serverThreads", "1").unwrap();
    c
}

/// Asks `r` until the threads named `prefix` have used CPU, or fails after a deadline.
fn ask_until_busy(r: &RpcEndpointRef<String>, prefix: &str) {
    let deadline = Instant::now() + WAIT * 6;
    let before = thread_ticks(prefix).unwrap_or(0);
    while thread_ticks(prefix).unwrap_or(0) == before {
        assert!(
            Instant::now() < deadline,
            "the {prefix} threads did no work in {:?} of asks",
            WAIT * 6
        );
        for _ in 0..200 {
            let reply: String = r.ask_sync("ping".to_string()).unwrap();
            assert_eq!(reply, "ping");
        }
    }
}

#[test]
fn inbound_connections_run_on_the_servers_runtime_unless_the_env_has_its_own() {
    let asker = RpcEnv::builder("asker")
        .client_mode(true)
        .conf(conf())
        .build()
        .unwrap();

    // An env with a runtime of its own serves its inbound connections there.
    let own_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("own-rt")
        .enable_all()
        .build()
        .unwrap();
    let own = RpcEnv::builder("own")
        .conf(conf())
        .runtime(own_rt.handle().clone())
        .build()
        .unwrap();
    own.setup_endpoint("echo", Echo).unwrap();
    let r: RpcEndpointRef<String> = asker
        .setup_endpoint_ref(own.address().unwrap(), "echo")
        .unwrap();
    ask_until_busy(&r, "own-rt");
    assert_eq!(
        thread_ticks("rpcenv-srv-io"),
        None,
        "the servers' runtime started although the only server has a runtime of its own"
    );

    // An env on the shared runtimes: its inbound connections run on the servers' runtime.
    let shared = RpcEnv::builder("shared").conf(conf()).build().unwrap();
    shared.setup_endpoint("echo", Echo).unwrap();
    let r: RpcEndpointRef<String> = asker
        .setup_endpoint_ref(shared.address().unwrap(), "echo")
        .unwrap();
    ask_until_busy(&r, "rpcenv-srv-io");

    shared.shutdown();
    own.shutdown();
    asker.shutdown();
}
