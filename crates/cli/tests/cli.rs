//! The `rpcenv` command, run as a user runs it: the demo, master + worker + ping across
//! processes, and the errors a user gets for bad input.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn rpcenv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rpcenv"))
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A child killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `rpcenv ARGS` and returns it with its first stdout line.
fn start(args: &[&str]) -> (Proc, String) {
    let mut child = rpcenv()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("rpcenv {args:?} printed nothing within 30 s"));
    (Proc(child), line)
}

#[test]
fn demo_completes_every_task_exactly_once_and_detects_the_lost_worker() {
    let started = Instant::now();
    let out = rpcenv().arg("demo").stdin(Stdio::null()).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let rest = last
        .strip_prefix("demo OK: 200/200 tasks completed exactly once, ")
        .unwrap_or_else(|| panic!("unexpected last line {last:?}\n{stdout}"));
    let lost: u32 = rest
        .strip_suffix(" lost worker(s) detected")
        .unwrap()
        .parse()
        .unwrap();
    assert!(lost >= 1, "{last}");
    assert!(stdout.contains("worker-1"), "{stdout}");
    assert!(stdout.contains("lost: worker-1"), "{stdout}");
    // Generous: the demo's own goal is under 30 s on an idle machine.
    assert!(started.elapsed() < Duration::from_secs(90));
}

#[test]
fn master_worker_and_ping_across_processes() {
    let (_master, line) = start(&["master", "--port", "0"]);
    let uri = line
        .strip_prefix("master listening on ")
        .unwrap_or_else(|| panic!("first line {line:?}"))
        .to_string();
    assert!(uri.starts_with("rpc://master@127.0.0.1:"), "{uri}");
    let (_worker, line) = start(&["worker", "--master", &uri, "--id", "w1"]);
    assert!(line.starts_with("worker w1 registered with"), "{line}");
    let (_client_worker, line) =
        start(&["worker", "--master", &uri, "--id", "w2", "--client-mode"]);
    assert!(line.contains("client mode"), "{line}");

    let out = rpcenv()
        .args(["ping", &uri, "--count", "3", "--interval", "10ms"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("reply from"))
            .count(),
        3,
        "{stdout}"
    );
    assert!(
        stdout.contains("3 pings, 3 answered; min/median/max ="),
        "{stdout}"
    );
}

#[test]
fn an_unreachable_master_fails_naming_the_uri() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("rpc://master@127.0.0.1:{port}");
    for args in [
        vec!["ping", uri.as_str(), "--conf", "rpc.lookupTimeout=3s"],
        vec![
            "worker",
            "--master",
            uri.as_str(),
            "--conf",
            "rpc.lookupTimeout=3s",
        ],
    ] {
        let started = Instant::now();
        let out = rpcenv().args(&args).stdin(Stdio::null()).output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?}: {stdout}");
        assert!(
            stderr.contains(&format!("127.0.0.1:{port}")),
            "{args:?}: {stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(30), "{args:?}");
    }
}

#[test]
fn bad_input_fails_at_once_naming_the_problem() {
    let cases: [(&[&str], &str); 4] = [
        (&["ping", "rpc://master-at-nowhere"], "rpc://name@host:port"),
        (
            &[
                "ping",
                "rpc://master@127.0.0.1:1",
                "--conf",
                "rpc.askTimeout=soon",
            ],
            "rpc.askTimeout",
        ),
        (
            &[
                "ping",
                "rpc://master@127.0.0.1:1",
                "--conf",
                "rpc.askTimout=1s",
            ],
            "rpc.askTimout",
        ),
        (&["master", "--conf", "noequals"], "KEY=VALUE"),
    ];
    for (args, needle) in cases {
        let out = rpcenv().args(args).stdin(Stdio::null()).output().unwrap();
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{args:?} succeeded: {stdout}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} should name {needle}"
        );
    }
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["demo", "master", "worker", "ping", "bench"] {
        let out = rpcenv().args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: rpcenv"),
            "{sub}"
        );
    }
}

/// Processes whose command line contains `marker` (scanning /proc).
fn processes_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(marker) && pid != std::process::id() {
                pids.push(pid);
            }
        }
    }
    pids
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killing_the_demo_leaves_no_process_behind() {
    let marker = format!(
        "app.test.marker=kill-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    );
    let (mut demo, line) = start(&["demo", "--conf", &marker]);
    assert!(line.starts_with("started master at"), "{line}");
    // The master and at least one worker are running (children carry the marker too).
    wait_until("children to start", || processes_with(&marker).len() >= 3);
    let _ = demo.0.kill(); // SIGKILL: no chance to clean up
    let _ = demo.0.wait();
    wait_until("every child to exit", || processes_with(&marker).is_empty());
}

/// The SASL settings from the command line: a master that authenticates with SASL and SASL
/// encryption (`network.crypto.enabled=false`), pinged by a SASL client, by an AES client that
/// falls back to SASL (the default), and refused for a wrong secret.
#[test]
fn sasl_authentication_from_the_command_line() {
    let sasl = [
        "--conf",
        "authenticate=true",
        "--conf",
        "network.crypto.enabled=false",
        "--conf",
        "authenticate.enableSaslEncryption=true",
        "--conf",
        "network.sasl.serverAlwaysEncrypt=true",
    ];
    let mut master_args = vec![
        "master",
        "--port",
        "0",
        "--conf",
        "authenticate.secret=s3cret",
    ];
    master_args.extend(sasl);
    let (_master, line) = start(&master_args);
    let uri = line
        .strip_prefix("master listening on ")
        .unwrap_or_else(|| panic!("first line {line:?}"))
        .to_string();
    let ping = |extra: &[&str]| {
        let mut args = vec!["ping", uri.as_str(), "--count", "1"];
        args.extend_from_slice(extra);
        let out = rpcenv().args(&args).output().unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.success(), format!("{stdout}\n{stderr}"))
    };
    let mut good = vec!["--conf", "authenticate.secret=s3cret"];
    good.extend(sasl);
    let (ok, out) = ping(&good);
    assert!(ok && out.contains("1 pings, 1 answered"), "{out}");
    let (ok, out) = ping(&[
        "--conf",
        "authenticate=true",
        "--conf",
        "authenticate.secret=s3cret",
        "--conf",
        "authenticate.enableSaslEncryption=true",
    ]);
    assert!(
        ok && out.contains("1 pings, 1 answered"),
        "AES falling back to SASL: {out}"
    );
    let mut wrong = vec!["--conf", "authenticate.secret=wrong"];
    wrong.extend(sasl);
    let (ok, out) = ping(&wrong);
    assert!(!ok && out.contains("Mismatched response"), "{out}");
}
