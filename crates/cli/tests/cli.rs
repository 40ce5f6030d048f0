//! The `rpcenv` command, run as a user runs it: master + workers + ping + submit across
//! processes, ports and hosts, and the errors a user gets for bad input.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, master, run, worker, Proc};

#[test]
fn master_worker_and_ping_across_processes() {
    let (_master, uri) = master(&[]);
    assert!(uri.starts_with("rpc://master@127.0.0.1:"), "{uri}");
    let _worker = worker(&uri, "w1", &[]);
    let mut client_worker =
        Proc::start(&["worker", "--master", &uri, "--id", "w2", "--client-mode"]);
    let line = client_worker.out.expect("the registration line", |l| {
        l.starts_with("worker w2 registered with")
    });
    assert!(line.ends_with("(2 cores, client mode)"), "{line}");

    let (ok, stdout, stderr) = run(&["ping", &uri, "--count", "3", "--interval", "10ms"]);
    assert!(ok, "{stdout}\n{stderr}");
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
fn submit_wait_prints_that_every_task_completed_exactly_once() {
    let (_master, uri) = master(&[]);
    let _w1 = worker(&uri, "w1", &[]);
    let _w2 = worker(&uri, "w2", &["--client-mode"]);
    for _ in 0..2 {
        let (ok, stdout, stderr) = run(&["submit", &uri, "--tasks", "60", "--wait"]);
        assert!(ok, "{stdout}\n{stderr}");
        assert_eq!(
            stdout.lines().last(),
            Some("submitted 60 tasks: 60 completed exactly once"),
            "{stdout}"
        );
    }
    // Without --wait: queued, and said so.
    let (ok, stdout, _) = run(&["submit", &uri, "--tasks", "3"]);
    assert!(ok);
    assert_eq!(stdout.trim(), "submitted 3 tasks (tasks 120 to 122)");
}

#[test]
fn submit_wait_reports_a_shortfall_with_a_non_zero_exit() {
    // No worker: nothing completes.
    let (_master, uri) = master(&[]);
    let (ok, stdout, _) = run(&[
        "submit",
        &uri,
        "--tasks",
        "5",
        "--wait",
        "--timeout",
        "300ms",
    ]);
    assert!(!ok, "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some("submitted 5 tasks: 0 completed exactly once, 5 not completed (gave up after 300ms)"),
        "{stdout}"
    );
}

#[test]
fn submit_refuses_zero_and_too_many_tasks_naming_the_cap() {
    let (_master, uri) = master(&["--conf", "app.maxTasksPerSubmit=1000"]);
    for (tasks, needle) in [
        ("0", "at least one task"),
        ("1001", "exceeds app.maxTasksPerSubmit = 1000"),
        ("1099511627776", "exceeds app.maxTasksPerSubmit"),
        ("18446744073709551615", "exceeds app.maxTasksPerSubmit"),
    ] {
        let (ok, stdout, stderr) = run(&["submit", &uri, "--tasks", tasks]);
        assert!(!ok, "{tasks}: {stdout}");
        assert!(stderr.contains(needle), "{tasks}: {stderr}");
    }
    let (ok, stdout, stderr) = run(&["submit", &uri, "--tasks", "1000"]);
    assert!(ok, "{stdout}{stderr}");
}

#[test]
fn a_taken_port_fails_the_master_naming_the_port_unless_retries_are_allowed() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (ok, stdout, stderr) = run(&["master", "--port", &port]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains(&format!("port {port}")), "{stderr}");
    assert!(stderr.contains("--port-retries"), "{stderr}");

    let mut m = Proc::start(&["master", "--port", &port, "--port-retries", "8"]);
    let line = m
        .out
        .expect("the first line", |l| l.starts_with("master listening on"));
    assert!(
        line.starts_with("master listening on rpc://master@127.0.0.1:"),
        "{line}"
    );
    assert!(!line.ends_with(&format!(":{port}")), "{line}");
    drop(taken);
}

#[test]
fn the_advertised_host_names_every_uri_and_ref() {
    // Bound on 127.0.0.1, advertised as localhost: the URI, the worker's ref and the master's ref
    // handed to workers all use the name, and the cluster works through it.
    let (_master, uri) = master(&["--bind-host", "127.0.0.1", "--advertise-host", "localhost"]);
    assert!(uri.starts_with("rpc://master@localhost:"), "{uri}");
    let mut w = Proc::start(&[
        "worker",
        "--master",
        &uri,
        "--id",
        "named",
        "--host",
        "localhost",
        "--task-time",
        "1ms",
    ]);
    let line = w.out.expect("the registration line", |l| {
        l.starts_with("worker named registered")
    });
    assert!(line.contains("reachable at localhost:"), "{line}");
    let (ok, stdout, stderr) = run(&["submit", &uri, "--tasks", "20", "--wait"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.ends_with("submitted 20 tasks: 20 completed exactly once\n"),
        "{stdout}"
    );
}

#[test]
fn an_unreachable_master_fails_naming_the_uri() {
    let port = free_port();
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
        vec![
            "submit",
            uri.as_str(),
            "--tasks",
            "1",
            "--conf",
            "rpc.lookupTimeout=3s",
        ],
    ] {
        let started = Instant::now();
        let (ok, stdout, stderr) = run(&args);
        assert!(!ok, "{args:?}: {stdout}");
        assert!(
            stderr.contains(&format!("127.0.0.1:{port}")),
            "{args:?}: {stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(30), "{args:?}");
    }
}

#[test]
fn bad_input_fails_at_once_naming_the_problem() {
    let cases: [(&[&str], &str); 5] = [
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
        (
            &[
                "master",
                "--port",
                "0",
                "--conf",
                "app.maxTasksPerSubmit=many",
            ],
            "app.maxTasksPerSubmit",
        ),
    ];
    for (args, needle) in cases {
        let (ok, stdout, stderr) = run(args);
        assert!(!ok, "{args:?} succeeded: {stdout}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} should name {needle}"
        );
    }
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["demo", "master", "worker", "submit", "ping", "bench"] {
        let (ok, stdout, _) = run(&[sub, "--help"]);
        assert!(ok, "{sub} --help");
        assert!(stdout.contains("Usage: rpcenv"), "{sub}");
    }
    let (_, stdout, _) = run(&["master", "--help"]);
    for flag in [
        "--bind-host",
        "--advertise-host",
        "--host",
        "--port-retries",
    ] {
        assert!(stdout.contains(flag), "master --help lacks {flag}");
    }
}

/// A file removed when dropped.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn an_authenticated_cluster_refuses_a_submitter_without_the_secret() {
    let secret = TempFile(std::env::temp_dir().join(format!(
        "rpcenv-cli-test-{}-{:?}.secret",
        std::process::id(),
        std::time::SystemTime::now()
    )));
    std::fs::write(&secret.0, b"a secret the test shares").unwrap();
    let file = format!("authenticate.secret.file={}", secret.0.display());
    let auth = ["--conf", "authenticate=true", "--conf", &file];
    let (_master, uri) = master(&auth);
    let mut worker_args = vec!["--client-mode"];
    worker_args.extend_from_slice(&auth);
    let _w = worker(&uri, "w1", &worker_args);

    let (ok, stdout, stderr) = run(&[
        "submit",
        &uri,
        "--tasks",
        "5",
        "--conf",
        "rpc.lookupTimeout=5s",
    ]);
    assert!(!ok, "a submitter without the secret was served: {stdout}");
    assert!(stderr.contains(&uri), "{stderr}");
    let mut args = vec!["submit", &uri, "--tasks", "5", "--wait"];
    args.extend_from_slice(&auth);
    let (ok, stdout, stderr) = run(&args);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.ends_with("submitted 5 tasks: 5 completed exactly once\n"),
        "{stdout}"
    );
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
    let with_secret = |secret: &'static str, rest: &[&'static str]| {
        let mut v = vec!["--conf", secret];
        v.extend_from_slice(rest);
        v
    };
    let (_master, uri) = master(&with_secret("authenticate.secret=s3cret", &sasl));
    let ping = |extra: Vec<&str>| {
        let mut args = vec!["ping", uri.as_str(), "--count", "1"];
        args.extend(extra);
        let (ok, stdout, stderr) = run(&args);
        (ok, format!("{stdout}\n{stderr}"))
    };
    let (ok, out) = ping(with_secret("authenticate.secret=s3cret", &sasl));
    assert!(ok && out.contains("1 pings, 1 answered"), "{out}");
    let aes_with_fallback = [
        "--conf",
        "authenticate=true",
        "--conf",
        "authenticate.enableSaslEncryption=true",
    ];
    let (ok, out) = ping(with_secret(
        "authenticate.secret=s3cret",
        &aes_with_fallback,
    ));
    assert!(
        ok && out.contains("1 pings, 1 answered"),
        "AES falling back to SASL: {out}"
    );
    let (ok, out) = ping(with_secret("authenticate.secret=wrong", &sasl));
    assert!(!ok && out.contains("Mismatched response"), "{out}");
}
