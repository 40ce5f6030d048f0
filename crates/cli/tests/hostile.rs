//! The master as an attacker meets it: hostile task counts, unknown ids, a peer claiming a
//! worker's address, and thousands of random well-formed messages. Each must get a typed error
//! (or be ignored with a log line) and leave the master serving `ping`, its memory bounded.

mod common;

use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rpcenv::{EndpointCtx, HandlerResult, RpcAddress, RpcEndpointAddress, RpcEnv, RpcError};
use rpcenv_cli::cluster::{
    ClusterStatus, MasterMsg, MasterRef, Registered, SubmissionReport, Submitted, WorkerMsg,
    WorkerRef,
};
use rpcenv_transport::{NoOpRpcHandler, TransportClientFactory, TransportConf};

use common::{master, run, worker, Proc};

/// A stand-in worker endpoint in the test's env: reports what the master sends it.
struct Sink(Sender<String>);

impl rpcenv::RpcEndpoint for Sink {
    type Message = WorkerMsg;
    fn receive(&mut self, _: &EndpointCtx<WorkerMsg>, msg: WorkerMsg) -> HandlerResult {
        let _ = self.0.send(format!("{msg:?}"));
        Ok(())
    }
}

/// The test's side: a client-mode env, a ref to the master and a sink worker endpoint.
struct Attacker {
    env: RpcEnv,
    master: MasterRef,
    address: RpcAddress,
    sink: WorkerRef,
    sunk: std::sync::mpsc::Receiver<String>,
}

impl Attacker {
    fn new(uri: &str) -> Attacker {
        let env = RpcEnv::builder("attacker")
            .client_mode(true)
            .build()
            .unwrap();
        let master: MasterRef = env.setup_endpoint_ref_by_uri(uri).unwrap();
        let address = RpcEndpointAddress::parse(uri)
            .unwrap()
            .address()
            .unwrap()
            .clone();
        let (tx, sunk) = channel();
        let sink = env.setup_endpoint("sink", Sink(tx)).unwrap();
        Attacker {
            env,
            master,
            address,
            sink,
            sunk,
        }
    }

    /// The master still answers: its env's endpoint-verifier (what `rpcenv ping` asks) and a
    /// status request.
    fn assert_serving(&self, after: &str) -> ClusterStatus {
        self.env
            .check_endpoint(&self.address, "master")
            .unwrap_or_else(|e| panic!("no ping answer after {after}: {e}"));
        self.master
            .ask_sync(MasterMsg::Status)
            .unwrap_or_else(|e| panic!("no status after {after}: {e}"))
    }

    /// An ask whose failure must be the master's typed error naming `needle`.
    fn refused<R: rpcenv::RpcReply + std::fmt::Debug>(&self, msg: MasterMsg, needle: &str) {
        let what = format!("{msg:?}");
        match self.master.ask_sync::<R>(msg) {
            Err(e @ RpcError::Failed { .. }) => {
                assert!(
                    e.to_string().contains(needle),
                    "{what}: {e} should say {needle:?}"
                )
            }
            other => panic!("{what}: expected a failure naming {needle:?}, got {other:?}"),
        }
    }
}

impl Drop for Attacker {
    fn drop(&mut self) {
        self.env.shutdown();
    }
}

/// The peak resident memory of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

const MEMORY_CAP_KIB: u64 = 256 * 1024;

#[test]
fn hostile_counts_and_unknown_ids_get_typed_errors_and_the_master_keeps_serving() {
    let (m, uri) = master(&[]);
    let _w1 = worker(&uri, "w1", &[]);
    let a = Attacker::new(&uri);
    for (count, needle) in [
        (1u64 << 40, "exceeds app.maxTasksPerSubmit = 100000"),
        (u64::MAX, "exceeds app.maxTasksPerSubmit = 100000"),
        (0, "at least one task"),
    ] {
        a.refused::<Submitted>(MasterMsg::SubmitTasks { count }, needle);
        a.master.send(MasterMsg::SubmitTasks { count }).unwrap();
        let s = a.assert_serving(&format!("SubmitTasks {{ count: {count} }}"));
        assert_eq!((s.total, s.queued), (0, 0));
    }
    // Unknown ids: a heartbeat is answered with ReconnectWorker to the ref it carried; a result
    // is ignored; a status question and a registration under a taken id are refused.
    a.master
        .send(MasterMsg::Heartbeat {
            id: "ghost".into(),
            registration: 77,
            worker: a.sink.clone(),
        })
        .unwrap();
    let told = a
        .sunk
        .recv_timeout(common::PATIENCE)
        .expect("ReconnectWorker");
    assert_eq!(told, "ReconnectWorker { registration: 77 }");
    a.master
        .send(MasterMsg::TaskFinished {
            worker: "ghost".into(),
            registration: 77,
            task: 3,
            result: 16,
        })
        .unwrap();
    a.refused::<SubmissionReport>(
        MasterMsg::SubmissionStatus { first: 12345 },
        "no submission starts at task 12345",
    );
    a.refused::<Registered>(
        MasterMsg::RegisterWorker {
            id: "w1".into(),
            cores: 2,
            worker: a.sink.clone(),
        },
        "already registered over another connection",
    );
    a.refused::<Registered>(
        MasterMsg::RegisterWorker {
            id: "big".into(),
            cores: u32::MAX,
            worker: a.sink.clone(),
        },
        "1 to 1024 are accepted",
    );
    a.refused::<()>(MasterMsg::CheckWorkers, "one-way message");
    let s = a.assert_serving("unknown ids");
    assert_eq!(
        (s.workers_alive, s.lost_count, s.done, s.late_results),
        (1, 0, 0, 1)
    );
    assert!(vm_hwm_kib(m.pid()) < MEMORY_CAP_KIB);
    let (ok, stdout, stderr) = run(&["ping", &uri, "--count", "1"]);
    assert!(ok, "{stdout}{stderr}");
}

/// A server-mode worker of `uri`, and the address it is reachable at (from its registration line).
fn listening_worker(uri: &str, id: &str) -> (Proc, String) {
    let mut w = Proc::start(&["worker", "--master", uri, "--id", id, "--task-time", "1ms"]);
    let line = w.out.expect("the registration line", |l| {
        l.starts_with(&format!("worker {id} registered"))
    });
    let at = line
        .split("reachable at ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    (w, at)
}

/// Asks `master` (over a connection of its own) for its status in an envelope that claims to
/// come from `claimed`, then closes the connection; returns the connection's own address.
fn ask_claiming(master: &RpcAddress, claimed: &RpcAddress) -> std::net::SocketAddr {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let factory =
            TransportClientFactory::new(TransportConf::default(), Arc::new(NoOpRpcHandler));
        let client = factory
            .create_client(master.host(), master.port())
            .await
            .unwrap();
        let status: MasterMsg = MasterMsg::Status;
        let body =
            rpcenv::codec::bench::encode_envelope(Some(claimed), Some(master), "master", &status)
                .unwrap();
        tokio::time::timeout(common::PATIENCE, client.send_rpc(body))
            .await
            .expect("an answer")
            .expect("a status");
        let local = client.local_addr();
        client.close();
        factory.close();
        local
    })
}

#[test]
fn a_peer_claiming_a_workers_address_then_closing_does_not_drop_the_worker() {
    let (mut m, uri) = master(&["--log-level", "warn,rpcenv_cli=debug"]);
    let (_w1, at) = listening_worker(&uri, "w1");
    let (host, port) = at.rsplit_once(':').unwrap();
    let claimed = RpcAddress::new(host, port.parse().unwrap());
    let _w2 = worker(&uri, "w2", &["--client-mode"]);
    let a = Attacker::new(&uri);

    // The env raises no disconnection for the claimed address (w1's own connection still
    // announces it), only for the closed connection's socket address: once the master has seen
    // that one, any event about the close has been handled.
    let local = ask_claiming(&a.address, &claimed);
    m.err.expect("the master seeing the connection close", |l| {
        l.contains("no registration was bound") && l.contains(&local.to_string())
    });
    let s = a.assert_serving("a claimed address, then a close");
    assert_eq!((s.workers_alive, s.lost_count), (2, 0), "{s:?}");
    // w1 still gets (and completes) tasks.
    let (ok, stdout, stderr) = run(&["submit", &uri, "--tasks", "40", "--wait"]);
    assert!(ok, "{stdout}{stderr}");
    let s = a.assert_serving("the submission");
    assert!(s.per_worker.get("w1").copied().unwrap_or(0) > 0, "{s:?}");
}

/// A random well-formed message: every variant, with values from the edges and at random.
fn random_message(rng: &mut StdRng, sink: &WorkerRef) -> MasterMsg {
    let id = |rng: &mut StdRng| -> String {
        match rng.random_range(0..6) {
            0 => "w1".into(),
            1 => String::new(),
            2 => "x".repeat(rng.random_range(100..300)),
            3 => "a\u{0}b".into(),
            _ => (0..rng.random_range(1..12))
                .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                .collect(),
        }
    };
    let count = |rng: &mut StdRng| -> u64 {
        *[0, 1, 3, 100_000, 100_001, 1 << 40, u64::MAX, rng.random()]
            .get(rng.random_range(0..8))
            .unwrap()
    };
    let number = |rng: &mut StdRng| -> u64 {
        if rng.random_bool(0.5) {
            rng.random_range(0..8)
        } else {
            rng.random()
        }
    };
    match rng.random_range(0..8) {
        0 => MasterMsg::RegisterWorker {
            id: id(rng),
            cores: *[0, 1, 2, 1024, 1025, u32::MAX]
                .get(rng.random_range(0..6))
                .unwrap(),
            worker: sink.clone(),
        },
        1 => MasterMsg::Heartbeat {
            id: id(rng),
            registration: number(rng),
            worker: sink.clone(),
        },
        2 => MasterMsg::TaskFinished {
            worker: id(rng),
            registration: number(rng),
            task: number(rng),
            result: number(rng),
        },
        3 => MasterMsg::SubmitTasks { count: count(rng) },
        4 => MasterMsg::SubmissionStatus { first: number(rng) },
        5 => MasterMsg::Status,
        6 => MasterMsg::CheckWorkers,
        _ => MasterMsg::Decommission,
    }
}

/// Asks `msg` with the reply type of its kind; only the master's own typed refusal may fail it.
fn ask_any(master: &MasterRef, msg: MasterMsg) {
    let what = format!("{msg:?}");
    let result = match &msg {
        MasterMsg::RegisterWorker { .. } => master.ask_sync::<Registered>(msg).map(drop),
        MasterMsg::SubmitTasks { .. } => master.ask_sync::<Submitted>(msg).map(drop),
        MasterMsg::SubmissionStatus { .. } => master.ask_sync::<SubmissionReport>(msg).map(drop),
        MasterMsg::Status => master.ask_sync::<ClusterStatus>(msg).map(drop),
        MasterMsg::Decommission => master.ask_sync::<u64>(msg).map(drop),
        _ => master.ask_sync::<()>(msg),
    };
    if let Err(e) = result {
        assert!(matches!(e, RpcError::Failed { .. }), "{what}: {e:?}");
    }
}

#[test]
fn random_well_formed_messages_from_a_fixed_seed_leave_the_master_serving() {
    let (m, uri) = master(&["--log-level", "error"]);
    let a = Attacker::new(&uri);
    let mut rng = StdRng::seed_from_u64(13);
    for _ in 0..2_000 {
        ask_any(&a.master, random_message(&mut rng, &a.sink));
    }
    let _ = a.assert_serving("2,000 random asks");
    for _ in 0..2_000 {
        a.master.send(random_message(&mut rng, &a.sink)).unwrap();
    }
    // The status ask follows the sends on the same connection, so they were all handled first.
    let s = a.assert_serving("2,000 random one-way messages");
    assert_eq!(s.duplicates, 0);
    assert!(
        vm_hwm_kib(m.pid()) < MEMORY_CAP_KIB,
        "VmHWM {} KiB",
        vm_hwm_kib(m.pid())
    );
    let (ok, stdout, stderr) = run(&["ping", &uri, "--count", "2", "--interval", "10ms"]);
    assert!(ok, "{stdout}{stderr}");
}

#[test]
fn a_worker_refuses_messages_that_do_not_name_its_registration() {
    let (_m, uri) = master(&[]);
    let (mut w1, at) = listening_worker(&uri, "w1");
    let a = Attacker::new(&uri);
    let worker: WorkerRef = a
        .env
        .setup_endpoint_ref_by_uri(&format!("rpc://worker@{at}"))
        .unwrap();
    // A forged registration answer is refused: only the worker's own process may tell it that.
    match worker.ask_sync::<()>(WorkerMsg::Registered(Registered {
        master: a.master.clone(),
        registration: 1,
    })) {
        Err(e @ RpcError::Failed { .. }) => {
            assert!(
                e.to_string().contains("only from the worker's own process"),
                "{e}"
            )
        }
        other => panic!("a forged Registered was not refused: {other:?}"),
    }
    for msg in [
        WorkerMsg::Shutdown { registration: 1 },
        WorkerMsg::LaunchTask {
            registration: 1,
            task: 0,
            input: 0,
        },
    ] {
        worker.send(msg).unwrap();
        w1.err
            .expect("the refusal", |l| l.contains("message refused"));
    }
    // A launch asked under another registration gets the refusal as its answer.
    match worker.ask_sync::<()>(WorkerMsg::LaunchTask {
        registration: 1,
        task: 0,
        input: 0,
    }) {
        Err(e @ RpcError::Failed { .. }) => {
            assert!(e.to_string().contains("registration 1"), "{e}")
        }
        other => panic!("a launch under a forged registration was not refused: {other:?}"),
    }
    // Still registered, still running tasks.
    let (ok, stdout, stderr) = run(&["submit", &uri, "--tasks", "20", "--wait"]);
    assert!(ok, "{stdout}{stderr}");
    let s = a.assert_serving("forged worker messages");
    assert_eq!(
        (s.workers_alive, s.per_worker.get("w1").copied()),
        (1, Some(20))
    );
    assert!(w1.child.try_wait().unwrap().is_none(), "the worker exited");
}
