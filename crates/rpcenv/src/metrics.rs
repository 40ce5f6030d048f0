//! What an env measures, through the [`metrics`](https://docs.rs/metrics) facade (the handle
//! types and registration helpers are the transport's, [`rpcenv_transport::metrics`]).
//!
//! Every handle is registered once: per endpoint when its inbox is made, per remote address when
//! its outbox is opened, per env when the env is built. Recording a message is then an increment
//! of a handle: with no recorder installed a branch on an empty handle, with one an atomic
//! operation; never a lookup, an allocation or a lock.
//!
//! Names carry the `rpcenv_` prefix and their unit (`_total`, `_bytes`, `_seconds`). Labels:
//! `endpoint` (an endpoint's name), `peer` (a remote env's address, at most [`MAX_PEERS`]
//! distinct values per process, the rest `other`), `cause` (why an outbox closed).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use rpcenv_transport::metrics::{
    counter, describe_metric, gauge, histogram, label, Counter, Gauge, Histogram, Kind, Unit,
};

/// Messages queued in an endpoint's inbox (asks, one-way messages and events), label `endpoint`.
pub const RECEIVED: &str = "rpcenv_endpoint_messages_received_total";
/// Asks whose handler returned, label `endpoint`.
pub const ASKS_ANSWERED: &str = "rpcenv_endpoint_asks_answered_total";
/// Asks whose handler failed or panicked, label `endpoint`.
pub const ASKS_FAILED: &str = "rpcenv_endpoint_asks_failed_total";
/// Handler calls that panicked, label `endpoint`.
pub const PANICS: &str = "rpcenv_endpoint_handler_panics_total";
/// Messages waiting in an endpoint's inbox, label `endpoint`.
pub const INBOX_DEPTH: &str = "rpcenv_endpoint_inbox_depth_messages";
/// How long the oldest message of each batch waited in the inbox, label `endpoint`.
pub const QUEUE_TIME: &str = "rpcenv_endpoint_queue_time_seconds";
/// How long each handler call took, label `endpoint` (a busy inbox times its calls in runs of up
/// to 32 and records each call of a run at the run's average).
pub const PROCESSING_TIME: &str = "rpcenv_endpoint_processing_time_seconds";
/// Bytes waiting to be written to a remote address, label `peer`.
pub const OUTBOX_BYTES: &str = "rpcenv_outbox_queued_bytes";
/// Messages waiting for the connection to a remote address to open, label `peer`.
pub const OUTBOX_MESSAGES: &str = "rpcenv_outbox_queued_messages";
/// Messages handed to the outbox of a remote address, label `peer`.
pub const OUTBOX_SENT: &str = "rpcenv_outbox_messages_total";
/// Sends refused with `QueueFull` (`rpc.outbox.maxBytes`), label `peer`.
pub const QUEUE_FULL: &str = "rpcenv_outbox_queue_full_total";
/// Connections opened by outboxes, label `peer`.
pub const CONNECTS: &str = "rpcenv_peer_connects_total";
/// Connects that failed, label `peer`.
pub const CONNECT_FAILURES: &str = "rpcenv_peer_connect_failures_total";
/// Outboxes closed, labels `peer` and `cause` (`connect_failed`, `connection_lost`,
/// `shutdown`).
pub const CLOSES: &str = "rpcenv_peer_closes_total";
/// Asks that ended with their timeout.
pub const ASK_TIMEOUTS: &str = "rpcenv_ask_timeouts_total";
/// Asks waiting for their reply.
pub const PENDING_ASKS: &str = "rpcenv_asks_pending";

/// Distinct `peer` label values a process uses; later peers share the value `other`, so that a
/// churning cluster cannot grow the metric set without bound.
pub const MAX_PEERS: usize = 64;

/// The `peer` label values handed out so far.
static PEERS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// The `peer` label value of `address`: itself while fewer than [`MAX_PEERS`] addresses have
/// one, else `other`. Called once per outbox.
pub(crate) fn peer_label(address: &str) -> String {
    let mut peers = PEERS.lock().unwrap_or_else(|p| p.into_inner());
    let peers = peers.get_or_insert_with(HashSet::new);
    if peers.contains(address) || peers.len() < MAX_PEERS {
        peers.insert(address.to_string());
        address.to_string()
    } else {
        "other".to_string()
    }
}

/// The handles of one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    pub(crate) received: Counter,
    pub(crate) answered: Counter,
    pub(crate) failed: Counter,
    pub(crate) panics: Counter,
    pub(crate) depth: Gauge,
    pub(crate) queue_time: Histogram,
    pub(crate) processing_time: Histogram,
}

impl EndpointMetrics {
    pub(crate) fn new(endpoint: &str) -> Self {
        let l = || vec![label("endpoint", endpoint.to_string())];
        EndpointMetrics {
            received: counter(RECEIVED, l()),
            answered: counter(ASKS_ANSWERED, l()),
            failed: counter(ASKS_FAILED, l()),
            panics: counter(PANICS, l()),
            depth: gauge(INBOX_DEPTH, l()),
            queue_time: histogram(QUEUE_TIME, l()),
            processing_time: histogram(PROCESSING_TIME, l()),
        }
    }
}

/// The handles of one remote address.
#[derive(Debug)]
pub(crate) struct PeerMetrics {
    peer: String,
    pub(crate) queued_bytes: Gauge,
    pub(crate) queued_messages: Gauge,
    pub(crate) sent: Counter,
    pub(crate) queue_full: Counter,
    pub(crate) connects: Counter,
    pub(crate) connect_failures: Counter,
}

impl PeerMetrics {
    pub(crate) fn new(address: &str) -> Self {
        let peer = peer_label(address);
        let l = || vec![label("peer", peer.clone())];
        PeerMetrics {
            queued_bytes: gauge(OUTBOX_BYTES, l()),
            queued_messages: gauge(OUTBOX_MESSAGES, l()),
            sent: counter(OUTBOX_SENT, l()),
            queue_full: counter(QUEUE_FULL, l()),
            connects: counter(CONNECTS, l()),
            connect_failures: counter(CONNECT_FAILURES, l()),
            peer,
        }
    }

    /// The outbox closed because of `cause` (once per outbox).
    pub(crate) fn closed(&self, cause: &'static str) {
        counter(
            CLOSES,
            vec![label("peer", self.peer.clone()), label("cause", cause)],
        )
        .increment(1);
        self.queued_bytes.set(0.0);
        self.queued_messages.set(0.0);
    }
}

/// The handles of one env's asks.
#[derive(Debug)]
pub(crate) struct AskMetrics {
    pub(crate) timeouts: Counter,
    pub(crate) pending: Gauge,
}

impl AskMetrics {
    pub(crate) fn new() -> Self {
        AskMetrics {
            timeouts: counter(ASK_TIMEOUTS, Vec::new()),
            pending: gauge(PENDING_ASKS, Vec::new()),
        }
    }
}

/// Seconds, as histograms record them.
pub(crate) fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Registers the units and descriptions of every rpcenv and transport metric with the installed
/// recorder (the Prometheus exporter prints them as `# HELP`); call once after installing one.
pub fn describe() {
    use Kind::{Counter as C, Gauge as G, Histogram as H};
    rpcenv_transport::metrics::describe();
    for (kind, name, unit, text) in [
        (
            C,
            RECEIVED,
            Unit::Count,
            "messages queued in the endpoint's inbox",
        ),
        (C, ASKS_ANSWERED, Unit::Count, "asks whose handler returned"),
        (
            C,
            ASKS_FAILED,
            Unit::Count,
            "asks whose handler failed or panicked",
        ),
        (C, PANICS, Unit::Count, "handler calls that panicked"),
        (G, INBOX_DEPTH, Unit::Count, "messages waiting in the inbox"),
        (
            H,
            QUEUE_TIME,
            Unit::Seconds,
            "wait of the oldest message of each batch in the inbox",
        ),
        (
            H,
            PROCESSING_TIME,
            Unit::Seconds,
            "time of each handler call (averaged over runs of up to 32 calls when busy)",
        ),
        (
            G,
            OUTBOX_BYTES,
            Unit::Bytes,
            "bytes waiting to be written to the peer",
        ),
        (
            G,
            OUTBOX_MESSAGES,
            Unit::Count,
            "messages waiting for the connection to open",
        ),
        (
            C,
            OUTBOX_SENT,
            Unit::Count,
            "messages handed to the peer's outbox",
        ),
        (C, QUEUE_FULL, Unit::Count, "sends refused with QueueFull"),
        (C, CONNECTS, Unit::Count, "connections opened to the peer"),
        (
            C,
            CONNECT_FAILURES,
            Unit::Count,
            "connects to the peer that failed",
        ),
        (C, CLOSES, Unit::Count, "outboxes closed, by cause"),
        (C, ASK_TIMEOUTS, Unit::Count, "asks that timed out"),
        (G, PENDING_ASKS, Unit::Count, "asks waiting for their reply"),
    ] {
        describe_metric(kind, name, unit, text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_labels_are_capped() {
        // Other tests of this process may have taken some of the labels already.
        let mine: Vec<String> = (0..MAX_PEERS + 5)
            .map(|i| peer_label(&format!("cap-test-{i}:1")))
            .collect();
        assert!(mine.iter().any(|l| l == "other"));
        let distinct: HashSet<&String> = mine.iter().filter(|l| *l != "other").collect();
        assert!(distinct.len() <= MAX_PEERS);
        // A peer that has a label keeps it.
        assert_eq!(peer_label("cap-test-0:1"), mine[0]);
    }
}
