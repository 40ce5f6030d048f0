//! Inline endpoints (`RpcEndpoint::inline`): a message from the network that finds the endpoint
//! idle runs on the IO thread that read it. These tests check where handlers run, that a
//! blocking call there fails with a clear error instead of stalling the IO thread, that a panic
//! there is answered like anywhere else, and that inline runs keep the inbox's rules: one call
//! at a time, in the order each sender posted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rpcenv::{
    EndpointCtx, HandlerResult, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcEnv, RpcError,
};

mod common;
use common::{suite_conf, Echo, WAIT};

fn env(name: &str) -> RpcEnv {
    RpcEnv::builder(name).conf(suite_conf()).build().unwrap()
}

/// Where a handler ran, from its thread's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    /// A tokio worker of the IO runtimes (`rpcenv-io`, `rpcenv-srv-io`).
    Io,
    /// A message loop thread (`dispatcher-…`).
    Loop,
}

fn ran_here() -> Ran {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("");
    if name.starts_with("rpcenv-") && name.ends_with("io") {
        Ran::Io
    } else if name.starts_with("dispatcher-") {
        Ran::Loop
    } else {
        panic!("a handler ran on an unexpected thread {name:?}")
    }
}

/// Answers with where it ran, and with what an `ask_sync` to `other` gave there.
struct Where {
    inline: bool,
    other: Option<RpcEndpointRef<String>>,
}

impl RpcEndpoint for Where {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        m: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        if m == "panic" {
            panic!("asked to panic");
        }
        let asked = self
            .other
            .as_ref()
            .map(|o| match o.ask_sync::<String>("ping".into()) {
                Ok(r) => r,
                Err(RpcError::BlockingInAsyncContext { operation }) => {
                    format!("blocking refused: {operation}")
                }
                Err(e) => format!("other error: {e}"),
            });
        ctx.reply((format!("{:?}", ran_here()), asked));
        Ok(())
    }
    fn inline(&self) -> bool {
        self.inline
    }
}

type Answer = (String, Option<String>);

/// Registers an inline `Where` as "inline" on `server`; returns `client`'s ref to it.
fn serve_inline(server: &RpcEnv, client: &RpcEnv) -> RpcEndpointRef<String> {
    let addr = server.address().unwrap().clone();
    server
        .setup_endpoint(
            "inline",
            Where {
                inline: true,
                other: None,
            },
        )
        .unwrap();
    client
        .setup_endpoint_ref::<String>(&addr, "inline")
        .unwrap()
}

/// Asks `r` until an answer says it ran on `want` (the first asks may meet the endpoint still
/// starting, or busy), within the suite's wait; returns that answer.
fn ask_until(r: &RpcEndpointRef<String>, want: Ran) -> Answer {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer: Answer = r.ask_sync("where".into()).unwrap();
        if answer.0 == format!("{want:?}") {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "no ask ran on {want:?} within {WAIT:?}; the last ran on {}",
            answer.0
        );
    }
}

#[test]
fn an_idle_inline_endpoint_answers_on_the_io_thread_and_others_on_the_message_loop() {
    let server = env("server");
    let client = env("client");
    let addr = server.address().unwrap().clone();
    for (name, inline) in [("inline", true), ("looped", false)] {
        server
            .setup_endpoint(
                name,
                Where {
                    inline,
                    other: None,
                },
            )
            .unwrap();
    }
    let inline = client
        .setup_endpoint_ref::<String>(&addr, "inline")
        .unwrap();
    ask_until(&inline, Ran::Io);
    // A plain endpoint never runs on an IO thread.
    let looped = client
        .setup_endpoint_ref::<String>(&addr, "looped")
        .unwrap();
    for _ in 0..50 {
        let (ran, _): Answer = looped.ask_sync("where".into()).unwrap();
        assert_eq!(ran, "Loop");
    }
    // Local messages to an inline endpoint run on the message loop.
    let local = server.endpoint_ref::<String>("inline").unwrap();
    for _ in 0..50 {
        let (ran, _): Answer = local.ask_sync("where".into()).unwrap();
        assert_eq!(ran, "Loop");
    }
    client.shutdown();
    server.shutdown();
}

#[test]
fn a_blocking_call_in_an_inline_handler_fails_with_a_clear_error_and_works_on_the_loop() {
    let server = env("server");
    let client = env("client");
    let addr = server.address().unwrap().clone();
    let other = server.setup_endpoint("echo", Echo).unwrap();
    server
        .setup_endpoint(
            "inline",
            Where {
                inline: true,
                other: Some(other.clone()),
            },
        )
        .unwrap();
    let remote = client
        .setup_endpoint_ref::<String>(&addr, "inline")
        .unwrap();
    let (_, asked) = ask_until(&remote, Ran::Io);
    assert_eq!(
        asked.as_deref(),
        Some("blocking refused: RpcEndpointRef::ask_sync")
    );
    // The same handler, reached locally, runs on the message loop, where it may block.
    let local = server.endpoint_ref::<String>("inline").unwrap();
    let (ran, asked): Answer = local.ask_sync("where".into()).unwrap();
    assert_eq!((ran.as_str(), asked.as_deref()), ("Loop", Some("ping")));
    client.shutdown();
    server.shutdown();
}

#[test]
fn a_panic_in_an_inline_handler_fails_its_ask_and_the_endpoint_goes_on() {
    let server = env("server");
    let client = env("client");
    let remote = serve_inline(&server, &client);
    // Each panic may run inline or on the loop; run enough that some run inline.
    let mut inline_after_panic = 0;
    let deadline = Instant::now() + WAIT;
    while inline_after_panic < 5 {
        let e = remote.ask_sync::<Answer>("panic".into()).unwrap_err();
        assert!(e.to_string().contains("asked to panic"), "{e}");
        let (ran, _): Answer = remote.ask_sync("where".into()).unwrap();
        inline_after_panic += usize::from(ran == "Io");
        assert!(Instant::now() < deadline, "no inline run within {WAIT:?}");
    }
    client.shutdown();
    server.shutdown();
}

/// Records one-way messages `"sender n"`, where each ran, and whether two calls overlapped.
struct Recorder {
    busy: Arc<AtomicBool>,
    overlapped: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(u32, u32)>>>,
    runs: Arc<Mutex<[usize; 2]>>,
}

impl RpcEndpoint for Recorder {
    type Message = String;
    fn receive(&mut self, _: &EndpointCtx<String>, m: String) -> HandlerResult {
        if self.busy.swap(true, Ordering::SeqCst) {
            self.overlapped.store(true, Ordering::SeqCst);
        }
        let (sender, n) = m.split_once(' ').expect("\"sender n\"");
        self.seen
            .lock()
            .unwrap()
            .push((sender.parse().unwrap(), n.parse().unwrap()));
        self.runs.lock().unwrap()[usize::from(ran_here() == Ran::Loop)] += 1;
        self.busy.store(false, Ordering::SeqCst);
        Ok(())
    }
    fn inline(&self) -> bool {
        true
    }
}

#[test]
fn inline_runs_keep_one_call_at_a_time_and_each_senders_order() {
    const PER_SENDER: u32 = 3_000;
    let server = env("server");
    let addr = server.address().unwrap().clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let runs = Arc::new(Mutex::new([0usize; 2]));
    let overlapped = Arc::new(AtomicBool::new(false));
    let local = server
        .setup_endpoint(
            "recorder",
            Recorder {
                busy: Arc::new(AtomicBool::new(false)),
                overlapped: overlapped.clone(),
                seen: seen.clone(),
                runs: runs.clone(),
            },
        )
        .unwrap();
    let clients: Vec<RpcEnv> = (0..2).map(|i| env(&format!("client-{i}"))).collect();
    std::thread::scope(|s| {
        for (i, c) in clients.iter().enumerate() {
            let r = c.setup_endpoint_ref::<String>(&addr, "recorder").unwrap();
            s.spawn(move || {
                for n in 0..PER_SENDER {
                    r.send(format!("{i} {n}")).unwrap();
                }
            });
        }
        // A local sender at the same time: its messages run on the loop, between inline runs.
        let local = local.clone();
        s.spawn(move || {
            for n in 0..PER_SENDER {
                local.send(format!("2 {n}")).unwrap();
            }
        });
    });
    let total = 3 * PER_SENDER as usize;
    let deadline = Instant::now() + WAIT;
    while seen.lock().unwrap().len() < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} messages handled within {WAIT:?}",
            seen.lock().unwrap().len()
        );
        std::thread::yield_now();
    }
    assert!(
        !overlapped.load(Ordering::SeqCst),
        "two calls of a one-at-a-time endpoint overlapped"
    );
    let seen = seen.lock().unwrap();
    let mut next = [0u32; 3];
    for &(sender, n) in seen.iter() {
        assert_eq!(n, next[sender as usize], "sender {sender} out of order");
        next[sender as usize] += 1;
    }
    let [io, looped] = *runs.lock().unwrap();
    assert!(io > 0, "no message ran inline ({looped} on the loop)");
    for c in clients {
        c.shutdown();
    }
    server.shutdown();
}

/// However closely the messages follow each other, and whatever the spin window: asks sent
/// without waiting for their answers, over one connection, are read one after another by one IO
/// thread, which finds the endpoint idle each time and runs every one inline (none is handed to
/// the message loop). The window is the largest allowed, 10 ms, and the default, 50 µs.
#[test]
fn pipelined_asks_to_an_idle_inline_endpoint_all_run_on_the_io_thread() {
    const ASKS: usize = 500;
    for spin in ["10000", "50"] {
        let mut conf = suite_conf();
        conf.set("rpc.messageLoop.spinMicros", spin).unwrap();
        let server = RpcEnv::builder("server")
            .conf(conf.clone())
            .build()
            .unwrap();
        let client = RpcEnv::builder("client").conf(conf).build().unwrap();
        let r = serve_inline(&server, &client);
        // Past the endpoint's start (its first messages may wait for `on_start` on the loop).
        ask_until(&r, Ran::Io);
        let asks: Vec<_> = (0..ASKS).map(|_| r.ask::<Answer>("where".into())).collect();
        let ran: Vec<String> = asks.into_iter().map(|a| a.wait().unwrap().0).collect();
        let looped = ran.iter().filter(|w| *w == "Loop").count();
        assert_eq!(
            looped, 0,
            "{looped} of {ASKS} pipelined asks ran on the message loop (spinMicros={spin})"
        );
        client.shutdown();
        server.shutdown();
    }
}
