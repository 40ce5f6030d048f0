//! Looking into running envs from outside: `rpcenv status` and `rpcenv top` against a master
//! and a demo in progress, the Prometheus scrape of `--metrics-addr`, and log files free of
//! colour escapes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, master, rpcenv, run, worker, Proc, PATIENCE};

/// The rows of a status table, as whitespace-separated cells.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Asserts that `table` is the status table of a master env.
fn assert_master_table(table: &str) {
    assert!(table.starts_with("env master at 127.0.0.1:"), "{table}");
    let rows = rows(table);
    assert!(
        rows.iter()
            .any(|r| r.first().is_some_and(|c| c == "ENDPOINT")),
        "{table}"
    );
    for endpoint in ["master", "endpoint-verifier", "rpcenv-stats"] {
        let row = rows
            .iter()
            .find(|r| r.first().is_some_and(|c| c == endpoint))
            .unwrap_or_else(|| panic!("no row for {endpoint}:\n{table}"));
        assert_eq!(row.len(), 7, "{row:?}");
        assert!(
            row[1].parse::<u64>().is_ok() && row[2].parse::<u64>().is_ok(),
            "{row:?}"
        );
    }
    assert!(
        rows.iter().any(|r| r.first().is_some_and(|c| c == "PEER")),
        "{table}"
    );
}

#[test]
fn status_prints_the_table_of_a_master() {
    let (_master, uri) = master(&[]);
    let (ok, out, err) = run(&["status", &uri]);
    assert!(ok, "{err}");
    assert_master_table(&out);
    // The name in the URI is optional.
    let bare = uri.replacen("master@", "", 1);
    let (ok, out, err) = run(&["status", &bare]);
    assert!(ok, "{err}");
    assert_master_table(&out);
}

#[test]
fn status_prints_the_table_of_a_demo_in_progress() {
    let mut demo = Proc::start(&["demo", "--tasks", "100000", "--task-time", "1ms"]);
    let secret = demo.out.expect("the secret file line", |l| {
        l.starts_with("demo secret file: ")
    });
    let secret = secret["demo secret file: ".len()..].to_string();
    let line = demo
        .out
        .expect("the master line", |l| l.starts_with("started master at "));
    let uri = line["started master at ".len()..].to_string();
    // The secret goes with the same --conf keys as everywhere else; without it the env refuses.
    let (ok, _, _) = run(&["status", &uri, "--conf", "rpc.lookupTimeout=5s"]);
    assert!(!ok, "status without the secret was answered");
    let secret_conf = format!("authenticate.secret.file={secret}");
    let (ok, out, err) = run(&[
        "status",
        &uri,
        "--conf",
        "authenticate=true",
        "--conf",
        &secret_conf,
    ]);
    assert!(ok, "{err}");
    assert_master_table(&out);
    // The workers have connected by now: the master has connections in.
    let first = out.lines().next().unwrap();
    assert!(!first.contains(": 0 connections in"), "{first}");
    demo.kill();
}

#[test]
fn top_draws_its_first_frame_in_a_terminal_and_quits_on_q() {
    let (_master, uri) = master(&[]);
    // `script` runs top on a pseudo-terminal; what is written to its stdin reaches top as keys.
    let command = format!("{} top {uri}", env!("CARGO_BIN_EXE_rpcenv"));
    let mut top = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script runs");
    let mut stdout = top.stdout.take().unwrap();
    let screen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let screen = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    // Wait for the end of the first frame.
    let deadline = Instant::now() + PATIENCE;
    while !String::from_utf8_lossy(&screen.lock().unwrap()).contains("press q to quit") {
        assert!(
            Instant::now() < deadline,
            "no frame drawn: {:?}",
            String::from_utf8_lossy(&screen.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    top.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(s) = top.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    reader.join().unwrap();
    let screen = String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    // The first frame: cursor home and clear, then the table, lines ended for a raw terminal.
    let frame = screen
        .split("\x1b[H\x1b[2J")
        .nth(1)
        .unwrap_or_else(|| panic!("no frame drawn: {screen:?}"));
    assert_master_table(&frame.replace("\r\n", "\n"));
    assert!(frame.contains("press q to quit"), "{frame:?}");
}

/// `GET /metrics` over plain HTTP/1.0: the body.
fn scrape(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

#[test]
fn the_metrics_address_serves_prometheus_text_with_every_family() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let (_master, uri) = master(&["--metrics-addr", &addr]);
    // A worker and tasks for it: the master opens an outbox to it (the per-peer families).
    let _worker = worker(&uri, "w1", &[]);
    let (ok, _, err) = run(&["submit", &uri, "--tasks", "2", "--wait"]);
    assert!(ok, "{err}");
    // Traffic for the families: lookups and asks through a ping.
    let (ok, _, err) = run(&["ping", &uri, "--count", "2", "--interval", "1ms"]);
    assert!(ok, "{err}");
    let deadline = Instant::now() + PATIENCE;
    let body = loop {
        if let Some(body) = scrape(port).filter(|b| b.contains("rpcenv_peer_connects_total")) {
            break body;
        }
        assert!(Instant::now() < deadline, "no metrics at {addr}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let lines: Vec<std::io::Result<String>> = body.lines().map(|l| Ok(l.to_string())).collect();
    let parsed =
        prometheus_parse::Scrape::parse(lines.into_iter()).expect("Prometheus text format");
    let families: std::collections::HashSet<&str> =
        parsed.samples.iter().map(|s| s.metric.as_str()).collect();
    // Every sample line belongs to a parsed family (a summary's quantile, `_sum` and `_count`
    // lines make one sample of the parser's).
    for line in body
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let name = line.split(['{', ' ']).next().unwrap();
        let base = name
            .strip_suffix("_sum")
            .or(name.strip_suffix("_count"))
            .unwrap_or(name);
        assert!(
            families.contains(name) || families.contains(base),
            "not parsed: {line}"
        );
    }
    for family in [
        "rpcenv_endpoint_messages_received_total",
        "rpcenv_endpoint_asks_answered_total",
        "rpcenv_endpoint_asks_failed_total",
        "rpcenv_endpoint_handler_panics_total",
        "rpcenv_endpoint_inbox_depth_messages",
        "rpcenv_endpoint_queue_time_seconds",
        "rpcenv_endpoint_processing_time_seconds",
        "rpcenv_connections_in_total",
        "rpcenv_bytes_in_total",
        "rpcenv_bytes_out_total",
        "rpcenv_frames_in_total",
        "rpcenv_frames_out_total",
        "rpcenv_connections_out_total",
        "rpcenv_auth_failures_total",
        "rpcenv_ask_timeouts_total",
        "rpcenv_asks_pending",
        "rpcenv_outbox_queued_bytes",
        "rpcenv_outbox_messages_total",
        "rpcenv_outbox_queue_full_total",
        "rpcenv_peer_connects_total",
        "rpcenv_peer_connect_failures_total",
    ] {
        assert!(families.contains(family), "{family} missing from:\n{body}");
    }
    let answered = parsed
        .samples
        .iter()
        .find(|s| {
            s.metric == "rpcenv_endpoint_asks_answered_total"
                && s.labels.get("endpoint") == Some("endpoint-verifier")
        })
        .expect("the verifier's answered asks");
    assert!(
        matches!(answered.value, prometheus_parse::Value::Counter(v) if v >= 2.0),
        "{answered:?}"
    );
    assert!(
        body.contains("# HELP rpcenv_endpoint_asks_answered_total"),
        "{body}"
    );
}

#[test]
fn a_master_logging_to_a_file_writes_no_escape_byte_and_names_env_and_peer() {
    let dir = std::env::temp_dir().join(format!("rpcenv-observe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("master.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut m = rpcenv()
        .args(["master", "--port", "0", "--log-level", "debug"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(file)
        .spawn()
        .unwrap();
    let mut out = common::Lines::new(m.stdout.take().unwrap());
    let line = out.expect("the master's first line", |l| {
        l.starts_with("master listening on ")
    });
    let uri = line["master listening on ".len()..].to_string();
    let (ok, _, err) = run(&["ping", &uri, "--count", "1"]);
    assert!(ok, "{err}");
    // The connection of the ping has been logged (debug) once its close is.
    let deadline = Instant::now() + PATIENCE;
    while std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "the master logged nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = m.kill();
    let _ = m.wait();
    let bytes = std::fs::read(&log).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!bytes.is_empty());
    assert!(
        !bytes.contains(&0x1b),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let (ok, _, err) = run(&[
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "ping",
        "rpc://nobody@127.0.0.1:1",
        "--count",
        "1",
    ]);
    assert!(!ok);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!lines.is_empty(), "{err}");
    for l in lines {
        assert!(l.ends_with('}') && l.contains("\"level\""), "{l}");
    }
}
