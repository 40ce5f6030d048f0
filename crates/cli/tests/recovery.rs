//! A cluster that recovers: workers whose master was killed (SIGKILL) and restarted on its port
//! register again by themselves, with backoff and one log line per attempt, and the restarted
//! master completes new tasks exactly once.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, run, worker, Proc};

fn start_master(port: &str) -> Proc {
    let mut m = Proc::start(&["master", "--port", port, "--worker-timeout", "5s"]);
    m.out.expect("the master's first line", |l| {
        l.starts_with("master listening on ")
    });
    m
}

/// The line a worker logs when it notices that its master is gone: the connection's close
/// ("...: registering again"), or a heartbeat that failed first ("heartbeat failed: registering
/// with the master again"), whichever comes first.
fn noticed_the_loss(line: &str) -> bool {
    line.contains("registering again") || line.contains("registering with the master again")
}

#[test]
fn workers_register_again_with_a_restarted_master_and_its_tasks_complete_exactly_once() {
    let port = free_port().to_string();
    let uri = format!("rpc://master@127.0.0.1:{port}");
    let mut master = start_master(&port);
    let mut workers = [
        ("w1", worker(&uri, "w1", &[])),
        ("w2", worker(&uri, "w2", &["--client-mode"])),
    ];
    // Tasks are running when the master dies.
    let (ok, stdout, stderr) = run(&["submit", &uri, "--tasks", "40", "--wait"]);
    assert!(ok, "{stdout}{stderr}");
    run(&["submit", &uri, "--tasks", "1000"]);

    master.kill();
    for (id, w) in &mut workers {
        w.err
            .expect(&format!("{id} noticing the loss"), noticed_the_loss);
        // The master stays down for at least one failed attempt.
        w.err.expect(&format!("{id}'s first failed attempt"), |l| {
            l.contains("registration with") && l.contains("failed")
        });
    }
    let restarted = Instant::now();
    let _master = start_master(&port);
    for (id, w) in &mut workers {
        let deadline = restarted + Duration::from_secs(10);
        let expected = format!("worker {id} registered with {uri} (");
        w.out
            .wait_until(deadline, |l| l.starts_with(&expected))
            .unwrap_or_else(|| {
                panic!(
                    "{id} did not register again within 10 s; stderr:\n{}",
                    w.err.seen.join("\n")
                )
            });
        eprintln!(
            "{id} registered again {:?} after the restart",
            restarted.elapsed()
        );
    }
    // One log line per failed attempt: nothing else was logged while the master was down
    // beyond the loss itself, for the client-mode worker its connection's reset, and the
    // results of the tasks that were running when the master died (a worker runs 2 at once: a
    // result sent in the moment before the worker noticed the loss cannot be delivered, and is
    // logged; the master it was for is gone, with its tasks).
    for (id, w) in &workers {
        let attempts = w
            .err
            .seen
            .iter()
            .filter(|l| l.contains("registration with"))
            .count();
        let lost_results = w
            .err
            .seen
            .iter()
            .filter(|l| {
                l.contains("cannot report a result") || l.contains("one-way message not delivered")
            })
            .count();
        let others: Vec<&String> = w
            .err
            .seen
            .iter()
            .filter(|l| {
                !l.contains("registration with")
                    && !noticed_the_loss(l)
                    && !l.contains("closing connection after error")
                    && !l.contains("cannot report a result")
                    && !l.contains("one-way message not delivered")
            })
            .collect();
        assert!(attempts >= 1, "{id}");
        assert!(
            lost_results <= 2,
            "{id} lost more results than it runs tasks at once: {:?}",
            w.err.seen
        );
        assert!(
            others.is_empty(),
            "{id} logged more than its attempts: {others:?}"
        );
    }
    let (ok, stdout, stderr) = run(&["submit", &uri, "--tasks", "60", "--wait"]);
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().last(),
        Some("submitted 60 tasks: 60 completed exactly once"),
        "{stdout}"
    );
}

#[test]
fn a_master_that_lost_a_worker_asks_it_to_register_again() {
    // A worker stopped (SIGSTOP) past the worker timeout is lost; resumed, its heartbeat is
    // answered with ReconnectWorker and it registers again. Its tasks run once, elsewhere.
    let port = free_port().to_string();
    let uri = format!("rpc://master@127.0.0.1:{port}");
    let mut master = Proc::start(&[
        "master",
        "--port",
        &port,
        "--worker-timeout",
        "1s",
        "--log-level",
        "warn",
    ]);
    master.out.expect("the master's first line", |l| {
        l.starts_with("master listening on ")
    });
    let mut stopped = worker(&uri, "sleepy", &["--client-mode"]);
    let _other = worker(&uri, "steady", &[]);
    let pid = stopped.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    master
        .err
        .expect("the master losing the stopped worker", |l| {
            l.contains("worker lost") && l.contains("sleepy") && l.contains("heartbeat expired")
        });
    let (ok, stdout, stderr) = run(&["submit", &uri, "--tasks", "30", "--wait"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    stopped
        .err
        .expect("the worker told to register again", |l| {
            l.contains("ReconnectWorker") && l.contains("registering again")
        });
    stopped.out.expect("its registration line again", |l| {
        l.starts_with(&format!("worker sleepy registered with {uri} ("))
    });
    let (ok, stdout, stderr) = run(&["submit", &uri, "--tasks", "30", "--wait"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.ends_with("submitted 30 tasks: 30 completed exactly once\n"),
        "{stdout}"
    );
}

#[test]
fn tasks_launched_to_a_worker_the_master_cannot_reach_run_elsewhere() {
    // The worker listens on 127.0.0.1 but advertises 127.0.0.2, where nothing listens: its
    // registration and heartbeats reach the master over its own connection, but every task the
    // master launches to it fails to connect. The master must notice the undelivered launch,
    // stop counting the task as running and give it to the worker it can reach; before, such
    // tasks stayed "running" as long as the unreachable worker heartbeated.
    let (mut master, uri) = common::master(&["--worker-timeout", "5s"]);
    let _unreachable = worker(
        &uri,
        "unreachable",
        &["--bind-host", "127.0.0.1", "--advertise-host", "127.0.0.2"],
    );
    let _steady = worker(&uri, "steady", &[]);
    let (ok, stdout, stderr) = run(&[
        "submit",
        &uri,
        "--tasks",
        "40",
        "--wait",
        "--timeout",
        "20s",
    ]);
    assert!(ok, "{stdout}{stderr}");
    assert!(
        stdout.ends_with("submitted 40 tasks: 40 completed exactly once\n"),
        "{stdout}"
    );
    master
        .err
        .expect("the master naming the undelivered launch", |l| {
            l.contains("unreachable") && l.contains("launch")
        });
}
