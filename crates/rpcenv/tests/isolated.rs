//! Isolated endpoints (a message loop of their own): stopping one ends and joins its loop's
//! thread, so starting and stopping many leaves the thread count (and the stacks' memory
//! mappings) where it was.
//!
//! One test in this file: it counts the threads of the test process.

use std::time::{Duration, Instant};

use rpcenv::{EndpointCtx, HandlerResult, RpcEndpoint};

mod common;
use common::{new_env, WAIT};

struct Isolated;

impl RpcEndpoint for Isolated {
    type Message = String;
    fn receive(&mut self, _: &EndpointCtx<String>, _: String) -> HandlerResult {
        Ok(())
    }
    fn isolated(&self) -> bool {
        true
    }
}

/// A number field of /proc/self/status (`Threads`, `VmSize` in kB).
fn status(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("a {field} line"))
}

/// The memory mappings of the process.
fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

fn threads() -> usize {
    status("Threads")
}

#[test]
fn a_thousand_isolated_endpoints_started_and_stopped_leave_no_threads() {
    let env = new_env();
    // Warm up whatever starts lazily (runtime workers, the first loop).
    let r = env.setup_endpoint("warm-up", Isolated).unwrap();
    r.send("hi".into()).unwrap();
    env.stop(&r);
    let deadline = Instant::now() + WAIT;
    let baseline = threads();
    let maps_before = mappings();
    for i in 0..1000 {
        let r = env
            .setup_endpoint(&format!("isolated-{i}"), Isolated)
            .unwrap();
        r.send("hi".into()).unwrap();
        env.stop(&r);
    }
    let deadline = deadline.max(Instant::now() + WAIT);
    let mut now = threads();
    while now > baseline && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        now = threads();
    }
    assert!(now <= baseline, "{now} threads, baseline {baseline}");
    // An ended thread that was neither joined nor detached keeps its stack mapped (a stack and
    // a guard page each): the mappings stay about where they were (malloc's per-thread arenas
    // add a few).
    let grown = mappings().saturating_sub(maps_before);
    assert!(grown < 200, "{grown} more memory mappings");
    env.shutdown();
}
