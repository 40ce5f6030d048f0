//! TLS (rustls) as connection bootstraps: CA-verified and trust-all clients, refused unknown
//! CAs, mutual TLS, TLS together with authentication (no session cipher), TLSv1.2, settings
//! errors. Certificates are in tests/data (made by tests/data/gen.sh).

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use rpcenv_transport::{
    AuthClientBootstrap, AuthConf, AuthServerBootstrap, ClientBootstrap, NoOpRpcHandler,
    ServerBootstrap, TlsClientBootstrap, TlsConf, TlsProtocol, TlsServerBootstrap,
    TransportClientFactory, TransportConf, TransportError, TransportServer,
};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn server_conf() -> TlsConf {
    TlsConf::default()
        .with_identity_pem(&data("server.pem"), &data("server.key"))
        .unwrap()
        .with_ca_pem(&data("ca.pem"))
        .unwrap()
}

fn client_conf(ca: &str) -> TlsConf {
    TlsConf::default().with_ca_pem(&data(ca)).unwrap()
}

async fn server(tls: &TlsConf, auth: Option<AuthConf>) -> (TransportServer, Arc<TestHandler>) {
    let handler = Arc::new(TestHandler::default());
    let mut boots: Vec<Arc<dyn ServerBootstrap>> =
        vec![Arc::new(TlsServerBootstrap::new(tls).unwrap())];
    if let Some(a) = auth {
        boots.push(Arc::new(AuthServerBootstrap::new(a)));
    }
    let s = TransportServer::bind_with_bootstraps(
        TransportConf::default(),
        "127.0.0.1",
        0,
        handler.clone(),
        boots,
    )
    .await
    .unwrap();
    (s, handler)
}

fn factory(tls: &TlsConf, auth: Option<AuthConf>) -> TransportClientFactory {
    let mut boots: Vec<Arc<dyn ClientBootstrap>> =
        vec![Arc::new(TlsClientBootstrap::new(tls).unwrap())];
    if let Some(a) = auth {
        boots.push(Arc::new(AuthClientBootstrap::new(a)));
    }
    TransportClientFactory::with_bootstraps(
        TransportConf::default(),
        Arc::new(NoOpRpcHandler),
        boots,
    )
}

/// Connect and make one RPC; the error of either step.
async fn try_rpc(
    f: &TransportClientFactory,
    host: &str,
    port: u16,
) -> Result<Bytes, TransportError> {
    let c = within(f.create_client(host, port)).await?;
    within(c.send_rpc(Bytes::from("hello/tls"))).await
}

#[tokio::test]
async fn ca_verified_tls_carries_rpcs_streams_and_chunks() {
    init_tracing();
    let (s, _) = server(&server_conf(), None).await;
    for host in ["127.0.0.1", "localhost"] {
        let f = factory(&client_conf("ca.pem"), None);
        let c = within(f.create_client(host, s.port())).await.unwrap();
        assert_eq!(
            within(c.send_rpc(Bytes::from("hello/tls"))).await.unwrap(),
            Bytes::from("Hello, tls!")
        );
        let big = pattern(4 << 20);
        assert_eq!(within(c.send_rpc(big.clone())).await.unwrap(), big);
        let st = within(c.stream("largeBuffer")).await.unwrap();
        assert_eq!(
            within(st.collect(64 << 20)).await.unwrap(),
            pattern(100_000)
        );
        assert_eq!(within(c.fetch_chunk(1, 0)).await.unwrap(), pattern(100_000));
        f.close();
    }
}

#[tokio::test]
async fn trust_all_accepts_and_an_unknown_ca_is_refused() {
    let (s, handler) = server(&server_conf(), None).await;
    let f = factory(&TlsConf::default().trust_all(), None);
    assert_eq!(
        try_rpc(&f, "127.0.0.1", s.port()).await.unwrap(),
        Bytes::from("Hello, tls!")
    );

    let f = factory(&client_conf("other-ca.pem"), None);
    let err = try_rpc(&f, "127.0.0.1", s.port()).await.unwrap_err();
    assert!(matches!(err, TransportError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert_eq!(
        handler.active.lock().unwrap().len(),
        1,
        "only the trusted client got through"
    );
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate() {
    let mut conf = server_conf();
    conf.require_client_auth = true;
    let (s, _) = server(&conf, None).await;
    // Without a client certificate: refused (TLS 1.3 reports it at the first read).
    let f = factory(&client_conf("ca.pem"), None);
    assert!(try_rpc(&f, "127.0.0.1", s.port()).await.is_err());
    // With one.
    let with_cert = client_conf("ca.pem")
        .with_identity_pem(&data("client.pem"), &data("client.key"))
        .unwrap();
    let f = factory(&with_cert, None);
    assert_eq!(
        try_rpc(&f, "127.0.0.1", s.port()).await.unwrap(),
        Bytes::from("Hello, tls!")
    );
}

#[tokio::test]
async fn tls_with_authentication_and_no_session_cipher() {
    let auth = |secret: &str| AuthConf::new("app", secret).encrypt(false);
    let (s, handler) = server(&server_conf(), Some(auth("good"))).await;
    let f = factory(&client_conf("ca.pem"), Some(auth("good")));
    assert_eq!(
        try_rpc(&f, "127.0.0.1", s.port()).await.unwrap(),
        Bytes::from("Hello, tls!")
    );
    let f = factory(&client_conf("ca.pem"), Some(auth("bad")));
    let err = try_rpc(&f, "127.0.0.1", s.port()).await.unwrap_err();
    assert!(matches!(err, TransportError::AuthFailed { .. }), "{err}");
    assert_eq!(handler.active.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn tls12_when_asked_for() {
    let mut sc = server_conf();
    sc.protocol = TlsProtocol::Tls12;
    let (s, _) = server(&sc, None).await;
    let mut cc = client_conf("ca.pem");
    cc.protocol = TlsProtocol::Tls12;
    cc.cipher_suites = vec!["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()];
    let f = factory(&cc, None);
    assert_eq!(
        try_rpc(&f, "127.0.0.1", s.port()).await.unwrap(),
        Bytes::from("Hello, tls!")
    );
    assert_eq!(TlsProtocol::parse("TLSv1.3"), Some(TlsProtocol::Tls13));
    assert_eq!(TlsProtocol::parse("tlsv1.2"), Some(TlsProtocol::Tls12));
}

#[test]
fn settings_errors_are_clear_and_keys_are_not_shown() {
    let err = TlsClientBootstrap::new(&TlsConf::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("ssl.rpc.trustStore"), "{err}");
    let err = TlsServerBootstrap::new(&client_conf("ca.pem"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("private key"), "{err}");
    let err = TlsConf::default()
        .with_ca_pem(&data("missing.pem"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.pem"), "{err}");
    let mut bad = client_conf("ca.pem");
    bad.cipher_suites = vec!["TLS_NOPE".into()];
    assert!(TlsClientBootstrap::new(&bad).is_err());
    let shown = format!("{:?}", server_conf());
    assert!(
        shown.contains("redacted") && !shown.contains("PRIVATE"),
        "{shown}"
    );
}
