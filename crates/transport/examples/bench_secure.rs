//! W1 (ask_latency: 20,000 sequential 16-byte echoes) and W2 (ask_throughput: 200,000 echoes,
//! 64 outstanding) at the transport level, plain vs Spark's AES auth with the CTR and GCM
//! session ciphers vs SASL (auth only, and auth-conf: 3DES, what a JVM picks) vs TLS, over
//! loopback in one process. One JSON line per (mode, workload), as shared/design/WORKLOADS.md.
//! `cargo run --release -p rpcenv-transport --example bench_secure [MODE...]` (all modes by
//! default; modes: plain boxed auth-ctr auth-gcm sasl-auth sasl-auth-conf tls13).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rpcenv_transport::{
    AuthCipher, AuthClientBootstrap, AuthConf, AuthServerBootstrap, AuthVersion, ClientBootstrap,
    NoOpRpcHandler, RpcHandler, RpcResponder, SaslClientBootstrap, SaslConf, SaslServerBootstrap,
    ServerBootstrap, TlsClientBootstrap, TlsConf, TlsServerBootstrap, TransportClient,
    TransportClientFactory, TransportConf, TransportServer,
};

/// Passes the socket through, boxed (what every bootstrap does before any wrapping).
struct Boxed;
impl ServerBootstrap for Boxed {
    fn bootstrap<'a>(
        &'a self,
        _p: std::net::SocketAddr,
        io: rpcenv_transport::BoxedIo,
    ) -> rpcenv_transport::BootstrapFuture<'a> {
        Box::pin(async move { Ok(io) })
    }
}
impl ClientBootstrap for Boxed {
    fn bootstrap<'a>(
        &'a self,
        _p: std::net::SocketAddr,
        io: rpcenv_transport::BoxedIo,
    ) -> rpcenv_transport::BootstrapFuture<'a> {
        Box::pin(async move { Ok(io) })
    }
}

struct Echo;
impl RpcHandler for Echo {
    fn receive(&self, _c: &TransportClient, m: Bytes, r: RpcResponder) {
        r.respond(m);
    }
}

fn peak_rss_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn report(system: &str, workload: &str, ops: usize, secs: f64, mut lat_us: Vec<f64>) {
    lat_us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "{{\"system\":\"{system}\",\"workload\":\"{workload}\",\"payload_bytes\":16,\"ops\":{ops},\"secs\":{secs:.3},\"ops_per_sec\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"rss_kb\":{}}}",
        ops as f64 / secs,
        percentile(&lat_us, 0.5),
        percentile(&lat_us, 0.99),
        peak_rss_kb().map_or("null".into(), |v| v.to_string())
    );
}

async fn w1(c: &TransportClient, system: &str) {
    let n = 20_000;
    let payload = Bytes::from(vec![7u8; 16]);
    for _ in 0..n / 10 {
        c.send_rpc(payload.clone()).await.unwrap();
    }
    let mut lat = Vec::with_capacity(n);
    let t = Instant::now();
    for _ in 0..n {
        let s = Instant::now();
        c.send_rpc(payload.clone()).await.unwrap();
        lat.push(s.elapsed().as_secs_f64() * 1e6);
    }
    report(system, "ask_latency", n, t.elapsed().as_secs_f64(), lat);
}

async fn w2(c: &TransportClient, system: &str) {
    let total = 200_000;
    let payload = Bytes::from(vec![7u8; 16]);
    for round in 0..2 {
        let ops = if round == 0 { total / 10 } else { total };
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (c, p) = (c.clone(), payload.clone());
            set.spawn(async move {
                let mut lat = Vec::with_capacity(ops / 64);
                for _ in 0..ops / 64 {
                    let s = Instant::now();
                    c.send_rpc(p.clone()).await.unwrap();
                    lat.push(s.elapsed().as_secs_f64() * 1e6);
                }
                lat
            });
        }
        let mut lat = Vec::with_capacity(ops);
        while let Some(l) = set.join_next().await {
            lat.extend(l.unwrap());
        }
        if round == 1 {
            report(
                system,
                "ask_throughput",
                ops / 64 * 64,
                t.elapsed().as_secs_f64(),
                lat,
            );
        }
    }
}

#[tokio::main]
async fn main() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let tls_server = TlsConf::default()
        .with_identity_pem(&data.join("server.pem"), &data.join("server.key"))
        .unwrap();
    let tls_client = TlsConf::default()
        .with_ca_pem(&data.join("ca.pem"))
        .unwrap();
    let auth = |c: AuthCipher| {
        AuthConf::new("bench", "secret")
            .cipher(c)
            .version(AuthVersion::V1)
    };
    let sasl = |encrypt: bool| {
        SaslConf::new("bench", "secret")
            .encrypt(encrypt)
            .always_encrypt(encrypt)
    };
    let only: Vec<String> = std::env::args().skip(1).collect();
    type Boots = (Vec<Arc<dyn ServerBootstrap>>, Vec<Arc<dyn ClientBootstrap>>);
    let modes: Vec<(&str, Boots)> = vec![
        ("plain", (vec![], vec![])),
        ("boxed", (vec![Arc::new(Boxed)], vec![Arc::new(Boxed)])),
        (
            "auth-ctr",
            (
                vec![Arc::new(AuthServerBootstrap::new(auth(AuthCipher::Ctr)))],
                vec![Arc::new(AuthClientBootstrap::new(auth(AuthCipher::Ctr)))],
            ),
        ),
        (
            "auth-gcm",
            (
                vec![Arc::new(AuthServerBootstrap::new(auth(AuthCipher::Gcm)))],
                vec![Arc::new(AuthClientBootstrap::new(auth(AuthCipher::Gcm)))],
            ),
        ),
        (
            "sasl-auth",
            (
                vec![Arc::new(SaslServerBootstrap::new(sasl(false)))],
                vec![Arc::new(SaslClientBootstrap::new(sasl(false)))],
            ),
        ),
        (
            "sasl-auth-conf",
            (
                vec![Arc::new(SaslServerBootstrap::new(sasl(true)))],
                vec![Arc::new(SaslClientBootstrap::new(sasl(true)))],
            ),
        ),
        (
            "tls13",
            (
                vec![Arc::new(TlsServerBootstrap::new(&tls_server).unwrap())],
                vec![Arc::new(TlsClientBootstrap::new(&tls_client).unwrap())],
            ),
        ),
    ];
    for (name, (sb, cb)) in modes {
        if !only.is_empty() && !only.iter().any(|m| m == name) {
            continue;
        }
        let system = format!("rpcenv-transport/{name}");
        let server = TransportServer::bind_with_bootstraps(
            TransportConf::default(),
            "127.0.0.1",
            0,
            Arc::new(Echo),
            sb,
        )
        .await
        .unwrap();
        let f = TransportClientFactory::with_bootstraps(
            TransportConf::default(),
            Arc::new(NoOpRpcHandler),
            cb,
        );
        let c = f.create_client("127.0.0.1", server.port()).await.unwrap();
        w1(&c, &system).await;
        w2(&c, &system).await;
        f.close();
        server.close();
    }
}
