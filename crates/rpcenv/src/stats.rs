//! [`EnvStats`]: a snapshot of what an env is doing, read from counters the env keeps for
//! itself (the metrics facade is write-only), so that it can be asked for in process
//! ([`RpcEnv::stats`](crate::RpcEnv::stats)) or remotely (the `rpcenv-stats` endpoint).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::message::RpcMessage;

/// The name of the built-in endpoint that answers [`StatsRequest`] with its env's [`EnvStats`].
pub const STATS_NAME: &str = "rpcenv-stats";

/// The question the `rpcenv-stats` endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatsRequest {
    /// The env's current [`EnvStats`].
    Snapshot,
}

impl RpcMessage for StatsRequest {
    fn protocol_name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("rpcenv/stats/1")
    }
}

/// A snapshot of one env.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct EnvStats {
    /// The env's name.
    pub name: String,
    /// The address it listens on (`host:port`), if it is a server.
    pub address: Option<String>,
    /// Its endpoints, by name.
    pub endpoints: Vec<EndpointStats>,
    /// The remote addresses it has an outbox for, by address.
    pub peers: Vec<PeerStats>,
    /// Connections its server accepted that are open now.
    pub connections_in: usize,
    /// Outboxes whose connection is open now.
    pub connections_out: usize,
}

/// A snapshot of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStats {
    /// The endpoint's name.
    pub name: String,
    /// Messages waiting in its inbox.
    pub depth: usize,
    /// Messages (asks, one-way messages, events) its handler has processed.
    pub processed: u64,
    /// Time spent in its handler, in total.
    pub busy: Duration,
    /// The longest a message has waited in its inbox before its handler took it.
    pub max_queue_time: Duration,
}

/// A snapshot of the outbox of one remote address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStats {
    /// The remote env's address (`host:port`).
    pub address: String,
    /// Bytes waiting to be written to it.
    pub outbox_bytes: usize,
    /// Whether the connection to it is open (false while it is being opened).
    pub connected: bool,
}

/// The counters an inbox keeps for its [`EndpointStats`]: updated once per batch by the thread
/// that processed it (relaxed atomics, no lock).
#[derive(Debug, Default)]
pub(crate) struct EndpointCounters {
    processed: AtomicU64,
    busy_nanos: AtomicU64,
    max_queue_nanos: AtomicU64,
}

impl EndpointCounters {
    /// A batch of `n` messages was processed in `busy`; its oldest message had waited `queued`.
    pub(crate) fn batch(&self, n: usize, busy: Duration, queued: Duration) {
        self.processed.fetch_add(n as u64, Ordering::Relaxed);
        self.busy_nanos.fetch_add(nanos(busy), Ordering::Relaxed);
        self.max_queue_nanos
            .fetch_max(nanos(queued), Ordering::Relaxed);
    }

    /// The snapshot, with the inbox's current `depth`.
    pub(crate) fn snapshot(&self, name: &str, depth: usize) -> EndpointStats {
        EndpointStats {
            name: name.to_string(),
            depth,
            processed: self.processed.load(Ordering::Relaxed),
            busy: Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed)),
            max_queue_time: Duration::from_nanos(self.max_queue_nanos.load(Ordering::Relaxed)),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_add_up_and_keep_the_longest_wait() {
        let c = EndpointCounters::default();
        c.batch(3, Duration::from_millis(2), Duration::from_millis(5));
        c.batch(1, Duration::from_millis(1), Duration::from_millis(1));
        let s = c.snapshot("e", 7);
        assert_eq!(s.processed, 4);
        assert_eq!(s.busy, Duration::from_millis(3));
        assert_eq!(s.max_queue_time, Duration::from_millis(5));
        assert_eq!(s.depth, 7);
    }
}
