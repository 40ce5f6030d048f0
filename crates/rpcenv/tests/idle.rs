//! An idle env costs no CPU: its message-loop threads and IO threads sleep when there is nothing
//! to do, whatever was running before (no spinning after the last message, no polling timers).
//!
//! The env under test runs in a child process (this test binary again, told so by an environment
//! variable), so that its CPU time, read from `/proc/<pid>/stat`, is its own.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{suite_conf, Echo};
use rpcenv::{RpcAddress, RpcEnv};

/// Set in the child: it hosts the env instead of testing.
const CHILD_VAR: &str = "RPCENV_IDLE_CHILD";
/// The line by which the child announces its address.
const READY: &str = "idle-child-listening ";
const ENDPOINTS: usize = 10;

/// The child: an env with ten endpoints, announced on stdout; it lives until stdin closes.
fn child_main() {
    let env = RpcEnv::builder("idle-child")
        .bind_host("127.0.0.1")
        .port(0)
        .conf(suite_conf())
        .build()
        .expect("child env");
    for i in 0..ENDPOINTS {
        env.setup_endpoint(&format!("echo-{i}"), Echo)
            .expect("endpoint");
    }
    // Straight to the process's stdout: the test harness may capture `println!`.
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{READY}{}",
        env.address().expect("server mode").to_url()
    )
    .unwrap();
    out.flush().unwrap();
    drop(out);
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    env.shutdown();
}

/// Kills the child however the test ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    let rest = &stat[stat.rfind(')').expect("comm field") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3: utime is field 14, stime field 15.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_env_with_connected_peers_uses_almost_no_cpu() {
    if std::env::var_os(CHILD_VAR).is_some() {
        child_main();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut child = ChildGuard(
        Command::new(exe)
            .args([
                "an_idle_env_with_connected_peers_uses_almost_no_cpu",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_VAR, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child env"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let address = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest may have written "test NAME ... " before it on the same line.
        .find_map(|l| l.split_once(READY).map(|(_, address)| address.to_string()))
        .expect("the child announces its address");
    let address = RpcAddress::from_url(&address).unwrap();
    let pid = child.0.id();

    // Two peers connect and use every endpoint once; their connections stay open.
    let peers: Vec<RpcEnv> = (0..2)
        .map(|i| {
            RpcEnv::builder(format!("idle-peer-{i}"))
                .bind_host("127.0.0.1")
                .port(0)
                .conf(suite_conf())
                .build()
                .unwrap()
        })
        .collect();
    for peer in &peers {
        for i in 0..ENDPOINTS {
            let r = peer
                .setup_endpoint_ref::<String>(&address, &format!("echo-{i}"))
                .unwrap();
            assert_eq!(r.ask_sync::<String>("hi".into()).unwrap(), "hi");
        }
    }

    // Over the next 10 s nothing is sent: the child may use at most 5 ticks (50 ms) of CPU.
    let before = cpu_ticks(pid);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let used = cpu_ticks(pid) - before;
    assert!(
        used <= 5,
        "an idle env with {ENDPOINTS} endpoints and 2 connected peers used {used} ticks of CPU in {:?}",
        start.elapsed()
    );

    // The connections were up all along: the peers are still answered.
    for peer in &peers {
        let r = peer
            .setup_endpoint_ref::<String>(&address, "echo-0")
            .unwrap();
        assert_eq!(
            r.ask_sync::<String>("still there".into()).unwrap(),
            "still there"
        );
    }
    for peer in peers {
        peer.shutdown();
    }
    drop(child.0.stdin.take());
}
