//! The cluster across simulated hosts (network namespaces on a private bridge) under the faults
//! real networks have. Each scenario builds its own hosts, runs real processes on them (`rpcenv
//! master` / `worker` / `submit`, and `cluster-peer` for echo servers and askers), injects a fault
//! and checks how it surfaces. Scenarios run one at a time; each is bounded (its waits have
//! deadlines, all under 60 s in total). They need root: without it they print why and skip,
//! except under `CI=true`, where that is a failure.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{hosts, PEER, START};
use rpcenv_cluster_tests::netns::Network;
use rpcenv_cluster_tests::process::{wait_until, Proc};
use rpcenv_cluster_tests::rpcenv_bin;

fn rpcenv() -> PathBuf {
    rpcenv_bin().unwrap_or_else(|e| panic!("{e}"))
}

/// `rpcenv ARGS` on `host`.
fn rpcenv_on(net: &Network, host: &str, args: &[&str]) -> Command {
    let mut c = net.command(host, rpcenv());
    c.args(args);
    c
}

/// The port every master of these scenarios listens on.
const MASTER_PORT: &str = "7077";

/// A master on `host`, binding every address and advertising the name `advertise`.
fn master(net: &Network, host: &str, advertise: &str, worker_timeout: &str) -> (Proc, String) {
    let c = rpcenv_on(
        net,
        host,
        &[
            "master",
            "--bind-host",
            "0.0.0.0",
            "--advertise-host",
            advertise,
            "--port",
            MASTER_PORT,
            "--worker-timeout",
            worker_timeout,
            // Exit with the harness even if it is killed.
            "--parent-watch",
        ],
    );
    let p = Proc::spawn(format!("master on {host}"), c).unwrap();
    let line = p
        .wait_line("its listening line", START, |l| {
            l.starts_with("master listening on ")
        })
        .unwrap();
    let uri = line.text["master listening on ".len()..].to_string();
    assert_eq!(uri, format!("rpc://master@{advertise}:{MASTER_PORT}"));
    (p, uri)
}

/// The line a worker prints each time it (re-)registers.
fn registered(id: &str, uri: &str) -> String {
    format!("worker {id} registered with {uri} (")
}

/// Waits (at most `within`) for worker `id` to print its registration line again, after its
/// output mark `from`; returns when it was printed.
fn registered_again(w: &Proc, id: &str, uri: &str, from: usize, within: Duration) -> Instant {
    let line = registered(id, uri);
    w.wait_line_from(from, &format!("{id} registering again"), within, |l| {
        l.starts_with(&line)
    })
    .unwrap_or_else(|e| panic!("{e}"))
    .1
    .at
}

/// A worker called `id` on host `id`, binding every address and advertising its host name; waits
/// for its registration line.
fn worker(net: &Network, id: &str, uri: &str, task_time: &str) -> Proc {
    let c = rpcenv_on(
        net,
        id,
        &[
            "worker",
            "--master",
            uri,
            "--bind-host",
            "0.0.0.0",
            "--advertise-host",
            id,
            "--id",
            id,
            "--cores",
            "2",
            "--task-time",
            task_time,
            "--parent-watch",
        ],
    );
    let p = Proc::spawn(format!("worker {id}"), c).unwrap();
    let expected = registered(id, uri);
    let line = p
        .wait_line("its registration line", START, |l| l.starts_with(&expected))
        .unwrap();
    assert!(
        line.text.contains(&format!("reachable at {id}:")),
        "a worker advertises its host name: {}",
        line.text
    );
    p
}

/// `rpcenv submit URI --tasks N --wait` on `host`.
fn submit(net: &Network, host: &str, uri: &str, tasks: u64) -> Proc {
    let c = rpcenv_on(
        net,
        host,
        &[
            "submit",
            uri,
            "--tasks",
            &tasks.to_string(),
            "--wait",
            "--timeout",
            "50s",
        ],
    );
    Proc::spawn(format!("submit of {tasks} tasks from {host}"), c).unwrap()
}

/// Waits for a submission's last line and checks that every task completed exactly once.
fn completed_exactly_once(mut p: Proc, tasks: u64, within: Duration) {
    let expected = format!("submitted {tasks} tasks: {tasks} completed exactly once");
    p.wait_line("its exactly-once line", within, |l| {
        l.starts_with("submitted ") && l.contains(" tasks: ")
    })
    .map(|l| assert_eq!(l.text, expected, "{}", p.transcript()))
    .unwrap();
    let status = p.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{}", p.transcript());
    assert_eq!(
        p.stdout_lines().last().map(String::as_str),
        Some(expected.as_str()),
        "the last line"
    );
}

#[test]
fn s1_master_and_three_workers_on_four_hosts_complete_a_submission_from_a_fifth_exactly_once() {
    let Some((_serial, net)) = hosts(
        "scenario 1",
        &["master", "worker-1", "worker-2", "worker-3", "client"],
    ) else {
        return;
    };
    let started = Instant::now();
    let (_master, uri) = master(&net, "master", "master", "10s");
    let _workers: Vec<Proc> = ["worker-1", "worker-2", "worker-3"]
        .iter()
        .map(|id| worker(&net, id, &uri, "20ms"))
        .collect();
    completed_exactly_once(
        submit(&net, "client", &uri, 600),
        600,
        Duration::from_secs(50),
    );
    eprintln!(
        "scenario 1: 600 tasks on 3 workers across 5 hosts in {:?}",
        started.elapsed()
    );
}

/// The master's log line declaring `id` lost.
fn lost_line(id: &str) -> impl Fn(&str) -> bool + '_ {
    move |l: &str| l.contains("worker lost") && l.contains(id)
}

/// How scenario 2 cuts worker-1 off without a FIN reaching anyone.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// `iptables` DROP both ways.
    Partition,
    /// Its link goes down.
    LinkDown,
}

#[test]
fn s2_a_partitioned_worker_is_lost_in_time_its_tasks_requeued_and_it_rejoins_when_healed() {
    worker_cut_off_and_back(Cut::Partition);
}

#[test]
fn s2_a_worker_whose_link_goes_down_is_lost_in_time_and_rejoins_when_it_comes_back() {
    worker_cut_off_and_back(Cut::LinkDown);
}

fn worker_cut_off_and_back(cut_by: Cut) {
    let Some((_serial, net)) = hosts(
        &format!("scenario 2 ({cut_by:?})"),
        &["master", "worker-1", "worker-2", "worker-3", "client"],
    ) else {
        return;
    };
    let timeout = Duration::from_secs(2);
    let (master, uri) = master(&net, "master", "master", "2s");
    let workers: Vec<Proc> = ["worker-1", "worker-2", "worker-3"]
        .iter()
        .map(|id| worker(&net, id, &uri, "100ms"))
        .collect();
    let tasks = 400;
    let fds = master.fd_count().unwrap();
    let run = submit(&net, "client", &uri, tasks);
    // Tasks are running on worker-1 when it is cut off: the submission reached the master (its
    // connection is open there) and tasks go out at once.
    wait_until(
        "the submission's connection at the master",
        START,
        Duration::from_millis(20),
        || (master.fd_count().unwrap_or(0) > fds).then_some(()),
    )
    .unwrap();
    let w1 = &workers[0];
    let before = w1.mark();
    let cut = Instant::now();
    match cut_by {
        Cut::Partition => net.partition("worker-1").unwrap(),
        Cut::LinkDown => net.set_link("worker-1", false).unwrap(),
    }
    let bound = timeout + timeout / 4 + Duration::from_secs(2);
    let lost = master
        .wait_line(
            "worker-1 declared lost",
            Duration::from_secs(20),
            lost_line("worker-1"),
        )
        .unwrap();
    let detected = lost.at.duration_since(cut);
    eprintln!(
        "scenario 2 ({cut_by:?}): worker-1 declared lost {detected:?} after the cut (bound {bound:?}): {}",
        lost.text
    );
    assert!(
        detected <= bound,
        "detected after {detected:?}, bound {bound:?}"
    );
    assert!(detected >= timeout, "not before the timeout: {detected:?}");

    let healed = Instant::now();
    match cut_by {
        Cut::Partition => net.heal("worker-1").unwrap(),
        Cut::LinkDown => net.set_link("worker-1", true).unwrap(),
    }
    let again = registered_again(w1, "worker-1", &uri, before, Duration::from_secs(20));
    eprintln!(
        "scenario 2 ({cut_by:?}): worker-1 registered again {:?} after the cut was undone",
        again.duration_since(healed)
    );
    completed_exactly_once(run, tasks, Duration::from_secs(40));
    // The rejoined worker takes part in new work.
    completed_exactly_once(
        submit(&net, "client", &uri, 60),
        60,
        Duration::from_secs(30),
    );
}

#[test]
fn s3_a_stopped_worker_fails_asks_at_their_timeout_keeps_the_master_bounded_and_rejoins() {
    let Some((_serial, net)) = hosts("scenario 3", &["master", "worker-1", "worker-2", "client"])
    else {
        return;
    };
    let (master, uri) = master(&net, "master", "master", "2s");
    let w1 = worker(&net, "worker-1", &uri, "20ms");
    let _w2 = worker(&net, "worker-2", &uri, "20ms");
    let port = w1.stdout_lines()[0]
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches(')').parse::<u16>().ok())
        .expect("the worker's port in its registration line");
    let mut probe = Proc::spawn("probe", {
        let mut c = net.command("client", PEER);
        c.args([
            "probe",
            "--uri",
            &format!("rpc://worker@worker-1:{port}"),
            "--conf",
            "rpc.lookupTimeout=2s",
        ]);
        c
    })
    .unwrap();
    probe
        .wait_line("ready", START, |l| l == "probe ready")
        .unwrap();
    let check = |probe: &mut Proc| {
        let from = probe.mark();
        probe.send_line("check").unwrap();
        probe
            .wait_line_from(from, "a probe answer", Duration::from_secs(20), |l| {
                l.starts_with("ok ") || l.starts_with("err ")
            })
            .unwrap()
            .1
            .text
    };
    assert!(
        check(&mut probe).starts_with("ok "),
        "the worker answers while running"
    );
    let base_rss = master.rss_kib().unwrap();

    let before = w1.mark();
    w1.signal("STOP").unwrap();
    let stopped = Instant::now();
    let run = submit(&net, "client", &uri, 2000);
    let answer = check(&mut probe);
    eprintln!("scenario 3: an ask to the stopped worker: {answer}");
    let ms: u64 = answer
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(answer.starts_with("err "), "{answer}");
    assert!(
        answer.contains("rpc.lookupTimeout"),
        "names the setting: {answer}"
    );
    assert!(
        (2000..6000).contains(&ms),
        "fails at its 2 s timeout: {answer}"
    );
    master
        .wait_line(
            "worker-1 declared lost",
            Duration::from_secs(20),
            lost_line("worker-1"),
        )
        .unwrap();
    // Stopped for a while longer while the master keeps working; its memory stays bounded.
    let mut peak = base_rss;
    wait_until(
        "six seconds of a stopped worker",
        Duration::from_secs(8),
        Duration::from_millis(250),
        || {
            peak = peak.max(master.rss_kib().unwrap_or(0));
            (stopped.elapsed() >= Duration::from_secs(6)).then_some(())
        },
    )
    .unwrap();
    eprintln!("scenario 3: master RSS {base_rss} KiB before, at most {peak} KiB while worker-1 was stopped");
    assert!(
        peak < base_rss + 32 * 1024,
        "master RSS {base_rss} -> {peak} KiB"
    );

    let resumed = Instant::now();
    w1.signal("CONT").unwrap();
    let again = registered_again(&w1, "worker-1", &uri, before, Duration::from_secs(20));
    eprintln!(
        "scenario 3: worker-1 registered again {:?} after SIGCONT",
        again.duration_since(resumed)
    );
    assert!(
        check(&mut probe).starts_with("ok "),
        "the worker answers again"
    );
    completed_exactly_once(run, 2000, Duration::from_secs(40));
}

#[test]
fn s4_a_master_restarted_on_another_host_with_the_same_address_gets_every_worker_back() {
    let Some((_serial, net)) = hosts(
        "scenario 4",
        &[
            "master", "standby", "worker-1", "worker-2", "worker-3", "client",
        ],
    ) else {
        return;
    };
    let (mut first, uri) = master(&net, "master", "master", "5s");
    let workers: Vec<Proc> = ["worker-1", "worker-2", "worker-3"]
        .iter()
        .map(|id| worker(&net, id, &uri, "20ms"))
        .collect();
    completed_exactly_once(
        submit(&net, "client", &uri, 60),
        60,
        Duration::from_secs(30),
    );
    let marks: Vec<usize> = workers.iter().map(Proc::mark).collect();

    first.kill().unwrap();
    // The standby takes over the master's address; the name `master` now reaches it.
    net.move_address("master", "standby").unwrap();
    let restarted = Instant::now();
    let (_second, uri2) = master(&net, "standby", "master", "5s");
    assert_eq!(uri2, uri);
    for ((w, mark), id) in workers
        .iter()
        .zip(marks)
        .zip(["worker-1", "worker-2", "worker-3"])
    {
        let left = Duration::from_secs(10).saturating_sub(restarted.elapsed());
        let at = registered_again(w, id, &uri, mark, left);
        eprintln!(
            "scenario 4: {id} registered again {:?} after the restart",
            at.duration_since(restarted)
        );
    }
    completed_exactly_once(
        submit(&net, "client", &uri, 120),
        120,
        Duration::from_secs(30),
    );
}
