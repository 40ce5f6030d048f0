//! RpcEnvs over TLS (Spark's SslNettyRpcEnvSuite: the remote scenarios with
//! `ssl.rpc.*` set, PEM key and chain, TLSv1.3), TLS with authentication, refused untrusted
//! servers, and mutual TLS. Certificates come from the transport crate's tests/data.

use std::sync::mpsc::channel;
use std::time::Duration;

use rpcenv::{
    EndpointCtx, HandlerResult, RpcCallContext, RpcConf, RpcEndpoint, RpcEndpointRef, RpcEnv,
};

mod common;
use common::{Echo, Forward};

const WAIT: Duration = Duration::from_secs(10);

fn data(name: &str) -> String {
    format!(
        "{}/../transport/tests/data/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// SslNettyRpcEnvSuite's settings, with PEM material.
fn tls_conf(extra: &[(&str, String)]) -> RpcConf {
    let mut c = RpcConf::new();
    for (k, v) in [
        ("spark.ssl.rpc.enabled", "true".to_string()),
        ("spark.ssl.rpc.privateKey", data("server.key")),
        ("spark.ssl.rpc.certChain", data("server.pem")),
        ("spark.ssl.rpc.trustStore", data("ca.pem")),
        ("spark.ssl.rpc.protocol", "TLSv1.3".to_string()),
        ("rpc.askTimeout", "20s".to_string()),
    ] {
        c.set(k, v).unwrap();
    }
    for (k, v) in extra {
        c.set(*k, v.clone()).unwrap();
    }
    c
}

fn env(name: &str, conf: RpcConf, client_mode: bool) -> RpcEnv {
    RpcEnv::builder(name)
        .bind_host("127.0.0.1")
        .client_mode(client_mode)
        .conf(conf)
        .build()
        .unwrap()
}

#[test]
fn send_and_ask_over_tls_from_client_and_server_mode_envs() {
    let server = env("server", tls_conf(&[]), false);
    let (tx, rx) = channel();
    server.setup_endpoint("forward", Forward(tx)).unwrap();
    server.setup_endpoint("echo", Echo).unwrap();
    for client_mode in [true, false] {
        let another = env("client", tls_conf(&[]), client_mode);
        let f: RpcEndpointRef<String> = another
            .setup_endpoint_ref(server.address().unwrap(), "forward")
            .unwrap();
        f.send("hello".into()).unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), "hello");
        let e: RpcEndpointRef<String> = another
            .setup_endpoint_ref(server.address().unwrap(), "echo")
            .unwrap();
        assert_eq!(e.ask_sync::<String>("hi".into()).unwrap(), "hi");
        let big = "y".repeat(2 << 20);
        assert_eq!(e.ask_sync::<String>(big.clone()).unwrap(), big);
        // Missing endpoints are reported as without TLS.
        assert!(another
            .setup_endpoint_ref::<String>(server.address().unwrap(), "nope")
            .is_err());
        another.shutdown();
    }
    server.shutdown();
}

#[test]
fn a_server_can_call_back_a_client_over_its_tls_connection() {
    // Client-mode refs travel to the server, which asks them over the client's connection.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Callback(RpcEndpointRef<String>);
    impl rpcenv::RpcMessage for Callback {}
    struct AskBack;
    impl RpcEndpoint for AskBack {
        type Message = Callback;
        fn receive_and_reply(
            &mut self,
            _: &EndpointCtx<Callback>,
            Callback(r): Callback,
            ctx: RpcCallContext,
        ) -> HandlerResult {
            let answer = r.ask_sync::<String>("ping".into())?;
            ctx.reply(answer);
            Ok(())
        }
    }
    let server = env("server", tls_conf(&[]), false);
    server.setup_endpoint("ask-back", AskBack).unwrap();
    let client = env("client", tls_conf(&[]), true);
    let mine = client.setup_endpoint("echo", Echo).unwrap();
    let r: RpcEndpointRef<Callback> = client
        .setup_endpoint_ref(server.address().unwrap(), "ask-back")
        .unwrap();
    assert_eq!(r.ask_sync::<String>(Callback(mine)).unwrap(), "ping");
    client.shutdown();
    server.shutdown();
}

/// TLS with `authenticate=true`: SASL authenticates (without SASL encryption), TLS encrypts.
#[test]
fn tls_with_authentication() {
    let auth = |secret: &str| {
        tls_conf(&[
            ("authenticate", "true".into()),
            ("authenticate.secret", secret.into()),
        ])
    };
    let server = env("server", auth("good"), false);
    server.setup_endpoint("echo", Echo).unwrap();
    let good = env("client", auth("good"), true);
    let r: RpcEndpointRef<String> = good
        .setup_endpoint_ref(server.address().unwrap(), "echo")
        .unwrap();
    assert_eq!(r.ask_sync::<String>("hi".into()).unwrap(), "hi");
    let bad = env("client", auth("bad"), true);
    let err = bad
        .setup_endpoint_ref::<String>(server.address().unwrap(), "echo")
        .unwrap_err()
        .to_string();
    // With TLS, authentication is SASL (as in Spark): a wrong secret is its mismatch.
    assert!(err.contains("Mismatched response"), "{err}");
    good.shutdown();
    bad.shutdown();
    server.shutdown();
}

#[test]
fn untrusted_servers_are_refused_and_trust_all_is_explicit() {
    let server = env("server", tls_conf(&[]), false);
    server.setup_endpoint("echo", Echo).unwrap();
    let other_ca = env(
        "client",
        tls_conf(&[("ssl.rpc.trustStore", data("other-ca.pem"))]),
        true,
    );
    let err = other_ca
        .setup_endpoint_ref::<String>(server.address().unwrap(), "echo")
        .unwrap_err()
        .to_string();
    assert!(err.contains("TLS"), "{err}");
    // No trust store and no trustAll: refused at build time.
    let mut bare = RpcConf::new();
    bare.set("ssl.rpc.enabled", "true").unwrap();
    let err = RpcEnv::builder("c")
        .client_mode(true)
        .conf(bare.clone())
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("ssl.rpc.trustStore"), "{err}");
    bare.set("ssl.rpc.trustAll", "true").unwrap();
    let trust_all = env("client", bare, true);
    let r: RpcEndpointRef<String> = trust_all
        .setup_endpoint_ref(server.address().unwrap(), "echo")
        .unwrap();
    assert_eq!(r.ask_sync::<String>("hi".into()).unwrap(), "hi");
    other_ca.shutdown();
    trust_all.shutdown();
    server.shutdown();
}

#[test]
fn mutual_tls() {
    let server = env(
        "server",
        tls_conf(&[("ssl.rpc.clientAuth", "true".into())]),
        false,
    );
    server.setup_endpoint("echo", Echo).unwrap();
    let with_cert = env(
        "client",
        tls_conf(&[
            ("ssl.rpc.privateKey", data("client.key")),
            ("ssl.rpc.certChain", data("client.pem")),
        ]),
        true,
    );
    let r: RpcEndpointRef<String> = with_cert
        .setup_endpoint_ref(server.address().unwrap(), "echo")
        .unwrap();
    assert_eq!(r.ask_sync::<String>("hi".into()).unwrap(), "hi");
    let mut no_cert = RpcConf::new();
    no_cert.set("ssl.rpc.enabled", "true").unwrap();
    no_cert.set("ssl.rpc.trustStore", data("ca.pem")).unwrap();
    no_cert.set("rpc.lookupTimeout", "10s").unwrap();
    let without = env("client", no_cert, true);
    assert!(without
        .setup_endpoint_ref::<String>(server.address().unwrap(), "echo")
        .is_err());
    with_cert.shutdown();
    without.shutdown();
    server.shutdown();
}
