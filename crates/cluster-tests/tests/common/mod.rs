//! What the scenario files share: the hosts of a scenario (one at a time, or skipped without
//! root), the `cluster-peer` processes and their result lines.
#![allow(dead_code)] // each test file uses some of it

use std::collections::HashMap;
use std::sync::MutexGuard;
use std::time::Duration;

use rpcenv_cluster_tests::netns::{self, Network};
use rpcenv_cluster_tests::one_at_a_time;
use rpcenv_cluster_tests::process::Proc;

/// The `cluster-peer` binary (echo servers, askers, probes).
pub(crate) const PEER: &str = env!("CARGO_BIN_EXE_cluster-peer");
/// How long a process may take to start.
pub(crate) const START: Duration = Duration::from_secs(30);

/// The hosts of a scenario, or `None` when the scenario is skipped.
pub(crate) fn hosts(scenario: &str, names: &[&str]) -> Option<(MutexGuard<'static, ()>, Network)> {
    let serial = one_at_a_time();
    if !netns::available_or_skip(scenario) {
        return None;
    }
    let net = Network::new(names).unwrap_or_else(|e| panic!("{scenario}: creating the hosts: {e}"));
    Some((serial, net))
}

/// `key=value` fields of a result line.
pub(crate) fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(crate) fn field(fields: &HashMap<String, String>, key: &str) -> u64 {
    fields
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {fields:?}"))
}

/// An echo server on `host`, binding every address and advertising the host's name.
pub(crate) fn echo_server(net: &Network, host: &str) -> (Proc, String) {
    let mut c = net.command(host, PEER);
    c.args(["serve", "--bind-host", "0.0.0.0", "--advertise-host", host]);
    let p = Proc::spawn(format!("echo server on {host}"), c).unwrap();
    let line = p
        .wait_line("its serving line", START, |l| l.starts_with("serving "))
        .unwrap();
    let uri = line.text["serving ".len()..].to_string();
    assert_eq!(
        uri,
        format!("rpc://echo@{host}:{}", uri.rsplit(':').next().unwrap())
    );
    (p, uri)
}

/// `cluster-peer ask ARGS` on `host`.
pub(crate) fn asker(net: &Network, host: &str, label: &str, args: &[&str]) -> Proc {
    let mut c = net.command(host, PEER);
    c.arg("ask").args(args);
    Proc::spawn(label, c).unwrap()
}

/// Waits for an asker's result line and returns its fields.
pub(crate) fn ask_result(p: &Proc, within: Duration) -> HashMap<String, String> {
    let line = p
        .wait_line("its result line", within, |l| l.starts_with("asks "))
        .unwrap();
    fields(&line.text)
}
