//! The seven shared workloads and `file_fetch`, each against fresh envs that are shut down
//! afterwards.
//!
//! Callers run as tasks on the envs' tokio runtime (what an async application does); W5's sender
//! is a plain thread calling `send`, the natural way to reach a local endpoint, and W7's caller
//! is a plain thread calling `ask_sync`, as a synchronous heartbeat or status loop does.

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use rpcenv::codec::Blob;
use rpcenv::{
    EndpointCtx, HandlerResult, RpcCallContext, RpcConf, RpcEndpoint, RpcEndpointRef, RpcEnv,
    RpcError, RpcMessage,
};
use serde::{Deserialize, Serialize};

use super::{
    process_cpu, warm_up, Measured, Plan, Workload, LARGE_BYTES, SMALL_BYTES, W2_WINDOW,
    W6_CLIENTS, W6_WINDOW,
};
use crate::generated::GeneratedFile;

/// The message of every workload: a byte payload. [`Blob`] is rpcenv's type for byte payloads:
/// written as a byte string, and a large one is decoded without a copy (it shares the frame).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Payload(pub(crate) Blob);

impl RpcMessage for Payload {
    fn protocol_name() -> std::borrow::Cow<'static, str> {
        "rpcenv-bench/payload".into()
    }
}

static SMALL: [u8; SMALL_BYTES] = [7; SMALL_BYTES];

fn small() -> Payload {
    Payload(Blob::from(&SMALL[..]))
}

/// Replies with the request (W1, W2, W6).
struct Echo;

impl RpcEndpoint for Echo {
    type Message = Payload;

    fn inline(&self) -> bool {
        true
    }

    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<Payload>,
        message: Payload,
        reply: RpcCallContext,
    ) -> HandlerResult {
        reply.reply(message);
        Ok(())
    }
}

/// Replies with the request's length (W4).
struct Len;

impl RpcEndpoint for Len {
    type Message = Payload;

    fn inline(&self) -> bool {
        true
    }

    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<Payload>,
        message: Payload,
        reply: RpcCallContext,
    ) -> HandlerResult {
        reply.reply(message.0.len() as u64);
        Ok(())
    }
}

/// Counts one-way messages (W3, W5).
struct Count {
    seen: u64,
    tally: Arc<Tally>,
}

impl RpcEndpoint for Count {
    type Message = Payload;

    fn receive(&mut self, _: &EndpointCtx<Payload>, message: Payload) -> HandlerResult {
        std::hint::black_box(&message);
        self.seen += 1;
        self.tally.count.store(self.seen, Ordering::Release);
        if self.seen == self.tally.target.load(Ordering::Acquire) {
            self.tally.reached.notify_one();
        }
        Ok(())
    }
}

/// What a counting endpoint has seen, and a signal when it reaches a target.
#[derive(Default)]
struct Tally {
    count: AtomicU64,
    target: AtomicU64,
    reached: tokio::sync::Notify,
}

impl Tally {
    /// Declares that `n` more messages are coming (before the first is sent); returns the count
    /// to wait for.
    fn expect(&self, n: usize) -> u64 {
        let target = self.count.load(Ordering::Acquire) + n as u64;
        self.target.store(target, Ordering::Release);
        target
    }

    async fn wait(&self, target: u64) {
        loop {
            let mut reached = std::pin::pin!(self.reached.notified());
            reached.as_mut().enable();
            if self.count.load(Ordering::Acquire) >= target {
                return;
            }
            // The notification is the fast path; the timeout only guards against a missed one.
            let _ = tokio::time::timeout(Duration::from_millis(50), reached).await;
        }
    }
}

/// Fresh envs for one workload, shut down when dropped.
struct Envs(Vec<RpcEnv>);

impl Envs {
    fn start(&mut self, name: &str, conf: &RpcConf) -> anyhow::Result<RpcEnv> {
        let env = RpcEnv::builder(name)
            .bind_host("127.0.0.1")
            .port(0)
            .conf(conf.clone())
            .build()
            .with_context(|| format!("starting env {name}"))?;
        self.0.push(env.clone());
        Ok(env)
    }
}

impl Drop for Envs {
    fn drop(&mut self) {
        for env in self.0.iter().rev() {
            env.shutdown();
        }
    }
}

/// A server env hosting `endpoint` as `name`, and a client env holding a remote ref to it.
fn pair<E: RpcEndpoint<Message = Payload>>(
    envs: &mut Envs,
    conf: &RpcConf,
    name: &str,
    endpoint: E,
) -> anyhow::Result<(RpcEnv, RpcEndpointRef<Payload>)> {
    let server = envs.start("bench-server", conf)?;
    server.setup_endpoint(name, endpoint)?;
    let client = envs.start("bench-client", conf)?;
    let address = server.address().context("the server env has no address")?;
    let r = client.setup_endpoint_ref::<Payload>(address, name)?;
    Ok((client, r))
}

/// Runs `fut` as a task on `env`'s runtime and blocks the calling (non-runtime) thread for it.
fn block<T: Send + 'static, E: std::error::Error + Send + Sync + 'static>(
    env: &RpcEnv,
    fut: impl Future<Output = Result<T, E>> + Send + 'static,
) -> anyhow::Result<T> {
    let rt = env.runtime();
    Ok(rt
        .block_on(rt.spawn(fut))
        .context("a bench task panicked")??)
}

fn elapsed_ns(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// `n` asks one after another.
async fn sequential(r: RpcEndpointRef<Payload>, n: usize) -> Result<Vec<u64>, RpcError> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let reply: Payload = r.ask(small()).await?;
        lat.push(elapsed_ns(t0));
        debug_assert_eq!(reply.0.len(), SMALL_BYTES);
    }
    Ok(lat)
}

/// `n` asks with `window` outstanding at all times: `window` callers, each asking again as soon
/// as its reply is in, until `n` have been asked.
async fn windowed(
    r: RpcEndpointRef<Payload>,
    n: usize,
    window: usize,
) -> Result<Vec<u64>, RpcError> {
    let left = Arc::new(AtomicI64::new(i64::try_from(n).unwrap_or(i64::MAX)));
    let callers: Vec<_> = (0..window.min(n))
        .map(|_| {
            let (r, left) = (r.clone(), left.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n / window + 1);
                while left.fetch_sub(1, Ordering::Relaxed) > 0 {
                    let t0 = Instant::now();
                    let reply: Payload = r.ask(small()).await?;
                    lat.push(elapsed_ns(t0));
                    debug_assert_eq!(reply.0.len(), SMALL_BYTES);
                }
                Ok::<_, RpcError>(lat)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for caller in callers {
        all.extend(caller.await.expect("an asking task panicked")?);
    }
    Ok(all)
}

/// What one run of a workload's body yields: per-op latencies (the run is timed around it), or
/// its own elapsed time (one-way workloads, timed until the endpoint has counted everything).
enum Run {
    Latencies(Vec<u64>),
    Timed(Duration),
}

/// Warms up with batches of `body` (the first failure ends the workload), then measures one
/// run of the workload's count.
fn measure(
    plan: Plan,
    w: Workload,
    mut body: impl FnMut(usize) -> anyhow::Result<Run>,
) -> anyhow::Result<Measured> {
    let mut failure = None;
    warm_up(plan, w, |b| {
        if failure.is_none() {
            failure = body(b).err();
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let n = plan.ops(w);
    let cpu0 = process_cpu();
    let t0 = Instant::now();
    let run = body(n)?;
    let elapsed = t0.elapsed();
    let cpu = process_cpu()
        .zip(cpu0)
        .map(|(end, start)| end.saturating_sub(start));
    Ok(match run {
        Run::Latencies(lat_ns) => Measured {
            ops: n,
            elapsed,
            lat_ns,
            cpu,
        },
        Run::Timed(elapsed) => Measured {
            ops: n,
            elapsed,
            lat_ns: Vec::new(),
            cpu,
        },
    })
}

fn w1(plan: Plan, conf: &RpcConf) -> anyhow::Result<Measured> {
    let mut envs = Envs(Vec::new());
    let (client, r) = pair(&mut envs, conf, "echo", Echo)?;
    measure(plan, Workload::AskLatency, |n| {
        block(&client, sequential(r.clone(), n)).map(Run::Latencies)
    })
}

fn w2(plan: Plan, conf: &RpcConf) -> anyhow::Result<Measured> {
    let mut envs = Envs(Vec::new());
    let (client, r) = pair(&mut envs, conf, "echo", Echo)?;
    measure(plan, Workload::AskThroughput, |n| {
        block(&client, windowed(r.clone(), n, W2_WINDOW)).map(Run::Latencies)
    })
}

/// `n` one-way sends (waiting for room when `rpc.outbox.maxBytes` is reached), timed until the
/// endpoint has counted them all.
async fn one_way(
    r: RpcEndpointRef<Payload>,
    tally: Arc<Tally>,
    n: usize,
) -> Result<Duration, RpcError> {
    let target = tally.expect(n);
    let t0 = Instant::now();
    for _ in 0..n {
        r.send_async(small()).await?;
    }
    tally.wait(target).await;
    Ok(t0.elapsed())
}

fn w3(plan: Plan, conf: &RpcConf) -> anyhow::Result<Measured> {
    let mut envs = Envs(Vec::new());
    let tally = Arc::new(Tally::default());
    let count = Count {
        seen: 0,
        tally: tally.clone(),
    };
    let (client, r) = pair(&mut envs, conf, "count", count)?;
    measure(plan, Workload::SendThroughput, |n| {
        block(&client, one_way(r.clone(), tally.clone(), n)).map(Run::Timed)
    })
}

async fn large(r: RpcEndpointRef<Payload>, big: Bytes, n: usize) -> Result<Vec<u64>, RpcError> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let len: u64 = r.ask(Payload(Blob::new(big.clone()))).await?;
        lat.push(elapsed_ns(t0));
        debug_assert_eq!(len, LARGE_BYTES as u64);
    }
    Ok(lat)
}

fn w4(plan: Plan, conf: &RpcConf) -> anyhow::Result<Measured> {
    let mut envs = Envs(Vec::new());
    let (client, r) = pair(&mut envs, conf, "len", Len)?;
    let big = Bytes::from(vec![7u8; LARGE_BYTES]);
    measure(plan, Workload::AskLarge, |n| {
        block(&client, large(r.clone(), big.clone(), n)).map(Run::Latencies)
    })
}

/// `n` sends to a local endpoint from this thread, timed until it has counted them all.
fn local_sends(
    env: &RpcEnv,
    r: &RpcEndpointRef<Payload>,
    tally: &Arc<Tally>,
    n: usize,
) -> anyhow::Result<Duration> {
    let target = tally.expect(n);
    let t0 = Instant::now();
    for _ in 0..n {
        r.send(small())?;
    }
    let tally = tally.clone();
    block(env, async move {
        tally.wait(target).await;
        Ok::<_, RpcError>(())
    })?;
    Ok(t0.elapsed())
}

fn w5(plan: Plan, conf: &RpcConf) -> anyhow::Result<Measured> {
    let mut envs = Envs(Vec::new());
    let env = envs.start("bench-local", conf)?;
    let tally = Arc::new(Tally::default());
    let r = env.setup_endpoint(
        "count",
        Count {
            seen: 0,
            tally: tally.clone(),
        },
    )?;
    measure(plan, Workload::LocalSend, |n| {
        local_sends(&env, &r, &tally, n).map(Run::Timed)
    })
}

/// `n` asks spread evenly over the refs, each with `W6_WINDOW` outstanding.
async fn fan_in(refs: Vec<RpcEndpointRef<Payload>>, n: usize) -> Result<Vec<u64>, RpcError> {
    let per_client = n / refs.len();
    let clients: Vec<_> = refs
        .into_iter()
        .map(|r| tokio::spawn(windowed(r, per_client, W6_WINDOW)))
        .collect();
    let mut all = Vec::with_capacity(n);
    for c in clients {
        all.extend(c.await.expect("a client task panicked")?);
    }
    Ok(all)
}

fn w6(plan: Plan, conf: &RpcConf) -> anyhow::Result<Measured> {
    let mut envs = Envs(Vec::new());
    let server = envs.start("bench-server", conf)?;
    server.setup_endpoint("echo", Echo)?;
    let address = server
        .address()
        .context("the server env has no address")?
        .clone();
    let mut refs = Vec::with_capacity(W6_CLIENTS);
    for i in 0..W6_CLIENTS {
        let client = envs.start(&format!("bench-client-{i}"), conf)?;
        refs.push(client.setup_endpoint_ref::<Payload>(&address, "echo")?);
    }
    measure(plan, Workload::FanIn, |n| {
        block(&server, fan_in(refs.clone(), n)).map(Run::Latencies)
    })
}

/// The pace of W7: one ask due every millisecond.
const PACE: Duration = Duration::from_millis(1);

/// What a paced run yields: per-ask latencies and the span from the first ask's due time to
/// the end of the last ask's slot (or its reply, if later).
struct Paced {
    lat_ns: Vec<u64>,
    span: Duration,
}

/// `n` asks from this (non-runtime) thread, ask `i` due at `start + i * PACE`: the thread sleeps
/// until an ask is due, or asks at once when the previous reply came late (no catching up with
/// extra asks). One outstanding at a time; latency is timed from issue to reply.
fn paced(r: &RpcEndpointRef<Payload>, start: Instant, n: usize) -> anyhow::Result<Paced> {
    let mut lat_ns = Vec::with_capacity(n);
    let mut slot_end = start;
    let mut last_reply = start;
    for i in 0..n {
        let due = start + PACE * u32::try_from(i).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let t0 = Instant::now();
        let reply: Payload = r.ask_sync(small())?;
        last_reply = Instant::now();
        lat_ns.push(u64::try_from((last_reply - t0).as_nanos()).unwrap_or(u64::MAX));
        debug_assert_eq!(reply.0.len(), SMALL_BYTES);
        slot_end = due + PACE;
    }
    // The phase ends with the last ask's slot, or its reply if that came later.
    let end = slot_end.max(last_reply);
    let now = Instant::now();
    if end > now {
        std::thread::sleep(end - now);
    }
    Ok(Paced {
        lat_ns,
        span: end - start,
    })
}

/// W7: a paced ask every millisecond from a plain thread; warm-up is a paced second; the
/// measured phase, and the CPU it is charged, runs from the first measured ask's due time.
fn w7(plan: Plan, conf: &RpcConf) -> anyhow::Result<Measured> {
    let mut envs = Envs(Vec::new());
    let (_client, r) = pair(&mut envs, conf, "echo", Echo)?;
    let warm_ops = (plan.paced_warmup().as_millis() as usize).max(1);
    paced(&r, Instant::now(), warm_ops)?;
    let n = plan.ops(Workload::PacedAsk);
    let start = Instant::now() + PACE;
    let now = Instant::now();
    std::thread::sleep(start.saturating_duration_since(now));
    let cpu0 = process_cpu();
    let run = paced(&r, start, n)?;
    let cpu = process_cpu()
        .zip(cpu0)
        .map(|(end, start)| end.saturating_sub(start));
    Ok(Measured {
        ops: n,
        elapsed: run.span,
        lat_ns: run.lat_ns,
        cpu,
    })
}

/// Runs one workload against fresh envs.
pub(crate) fn run(w: Workload, plan: Plan, conf: &RpcConf) -> anyhow::Result<Measured> {
    match w {
        Workload::AskLatency => w1(plan, conf),
        Workload::AskThroughput => w2(plan, conf),
        Workload::SendThroughput => w3(plan, conf),
        Workload::AskLarge => w4(plan, conf),
        Workload::LocalSend => w5(plan, conf),
        Workload::FanIn => w6(plan, conf),
        Workload::PacedAsk => w7(plan, conf),
        Workload::FileFetch => file_fetch(plan, conf),
    }
}

/// `n` whole reads of the file at `uri`, one after another, each through a fresh
/// `open_channel`; the bytes are counted and dropped.
async fn fetch_files(env: RpcEnv, uri: String, len: u64, n: usize) -> std::io::Result<Vec<u64>> {
    use tokio::io::AsyncReadExt as _;
    let mut lat = Vec::with_capacity(n);
    let mut buf = vec![0u8; 256 << 10];
    for _ in 0..n {
        let t0 = Instant::now();
        let mut channel = env
            .open_channel_async(&uri)
            .await
            .map_err(std::io::Error::other)?;
        let mut total = 0u64;
        loop {
            let read = channel.read(&mut buf).await?;
            if read == 0 {
                break;
            }
            total += read as u64;
        }
        if total != len {
            return Err(std::io::Error::other(format!(
                "{uri}: {total} bytes read, expected {len}"
            )));
        }
        lat.push(elapsed_ns(t0));
    }
    Ok(lat)
}

/// `file_fetch`: a server env's file server publishes a generated file; a client env fetches it
/// whole, one file after another.
fn file_fetch(plan: Plan, conf: &RpcConf) -> anyhow::Result<Measured> {
    let file = GeneratedFile::create("bench-file", plan.file_bytes)?;
    let mut envs = Envs(Vec::new());
    let server = envs.start("bench-server", conf)?;
    let client = envs.start("bench-client", conf)?;
    let uri = server.file_server()?.add_file(file.path())?;
    measure(plan, Workload::FileFetch, |n| {
        block(
            &client,
            fetch_files(client.clone(), uri.clone(), plan.file_bytes, n),
        )
        .map(Run::Latencies)
    })
}
