//! Where a server env listens: a taken port is retried upward, and the advertised address may
//! differ from the bound one.
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels, conditions or futures with
//! deadlines.

use rpcenv::RpcEnv;

mod common;
use common::{server, suite_conf};

/// Spark: RpcEnvSuite "port conflict".
#[test]
fn port_conflict() {
    let env = server("server");
    let port = env.address().unwrap().port();
    let another = RpcEnv::builder("conflict")
        .port(port)
        .conf(suite_conf())
        .build()
        .unwrap();
    let bound = another.address().unwrap().port();
    assert_ne!(bound, port);
    another.shutdown();
    env.shutdown();
}

/// Spark: RpcEnvSuite "advertise address different from bind address".
#[test]
fn advertise_address_different_from_bind_address() {
    let env = RpcEnv::builder("advertised")
        .conf(suite_conf())
        .bind_host("127.0.0.1")
        .advertise_host("example.com")
        .build()
        .unwrap();
    assert!(env
        .address()
        .unwrap()
        .host_port()
        .starts_with("example.com:"));
    env.shutdown();
}
