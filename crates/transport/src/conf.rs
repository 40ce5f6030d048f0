//! `TransportConf`: the transport's own settings (the RpcEnv's `RpcConf` builds one).

use std::time::Duration;

/// The largest frame body Spark's decoder accepts (`Integer.MAX_VALUE - 1`).
pub const SPARK_MAX_FRAME_BODY: usize = (i32::MAX - 1) as usize;

/// Settings of one transport context (server and/or client factory).
///
/// `Default` gives Spark's defaults. Durations of `None` mean "unlimited", as Spark's `<= 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConf {
    /// Spark's module name (`rpc`, `files`, `shuffle`); used in setting names in errors.
    pub module: String,
    /// Largest accepted frame body (the frame length minus its own 8 bytes), checked before any
    /// buffer grows. Also caps buffered upload bodies. Spark's decoder allows `2^31 - 2`; the
    /// RpcEnv derives a tighter one from `rpc.message.maxSize` plus headroom.
    pub max_frame_size: usize,
    /// Idle time after which a connection with outstanding requests is closed and its requests
    /// fail (`spark.<module>.io.connectionTimeout`, default `spark.network.timeout` = 120 s).
    pub connection_timeout: Option<Duration>,
    /// Timeout of a TCP connect (`spark.<module>.io.connectionCreationTimeout`, default the
    /// connection timeout).
    pub connect_timeout: Option<Duration>,
    /// Close connections idle for `connection_timeout` even with nothing outstanding (Spark's
    /// `closeIdleConnections`, used by file clients). Off by default.
    pub close_idle_connections: bool,
    /// Connections per peer in a client factory's pool (`spark.<module>.io.numConnectionsPerPeer`).
    pub num_connections_per_peer: usize,
    /// Bind retries on successive ports (`spark.port.maxRetries`, default 16).
    pub port_max_retries: u32,
    /// Service name used in bind errors (Spark's `startServiceOnPort` name).
    pub service_name: String,
    /// After a failed connect, connects to the same peer fail at once for `retry_wait * 0.95`
    /// (`spark.<module>.io.retryWait`, 5 s), doubling on each further failure up to
    /// `max_retry_backoff`.
    pub retry_wait: Duration,
    /// Whether the client factory fails fast after a recent failed connect: a connect to a peer
    /// that failed within the fast-fail window fails at once instead of trying again.
    pub fast_fail: bool,
    /// Cap of the doubling fast-fail window.
    pub max_retry_backoff: Duration,
    /// TCP keepalive idle time (`None` turns keepalive off). Probes then go every 10 s, 3 times.
    pub tcp_keepalive: Option<Duration>,
    /// TCP_NODELAY (on, as Spark).
    pub tcp_nodelay: bool,
    /// Listen backlog (`spark.<module>.io.backLog`).
    pub backlog: u32,
    /// SO_RCVBUF (`spark.<module>.io.receiveBuffer`), `None` = OS default.
    pub receive_buffer: Option<usize>,
    /// SO_SNDBUF (`spark.<module>.io.sendBuffer`), `None` = OS default.
    pub send_buffer: Option<usize>,
    /// The byte budget of one connection (`rpc.io.maxQueuedBytesPerConnection`, 16 MiB): frames
    /// queued towards the peer plus what was read from it and not yet done with (unanswered
    /// requests, unread stream pieces). Over it the connection stops reading from the peer until
    /// the count falls under half. 0 = no budget.
    pub max_queued_bytes_per_connection: usize,
    /// Time an accepted connection has to complete its first frame (`rpc.io.handshakeTimeout`,
    /// 10 s); with authentication on, the handshake is held to it too. `None` = unlimited.
    pub handshake_timeout: Option<Duration>,
    /// Most connections a server keeps open (`rpc.io.maxInboundConnections`, 0 = no cap). At the
    /// cap, or out of file descriptors, the server sheds the connection stalled longest without
    /// completing a frame, and otherwise waits before accepting more.
    pub max_inbound_connections: usize,
}

impl Default for TransportConf {
    fn default() -> Self {
        TransportConf {
            module: "rpc".to_string(),
            max_frame_size: SPARK_MAX_FRAME_BODY,
            connection_timeout: Some(Duration::from_secs(120)),
            connect_timeout: Some(Duration::from_secs(120)),
            close_idle_connections: false,
            num_connections_per_peer: 1,
            port_max_retries: 16,
            service_name: "TransportServer".to_string(),
            retry_wait: Duration::from_secs(5),
            fast_fail: true,
            max_retry_backoff: Duration::from_secs(30),
            tcp_keepalive: Some(Duration::from_secs(60)),
            tcp_nodelay: true,
            backlog: 1024,
            receive_buffer: None,
            send_buffer: None,
            max_queued_bytes_per_connection: 16 << 20,
            handshake_timeout: Some(Duration::from_secs(10)),
            max_inbound_connections: 0,
        }
    }
}

impl TransportConf {
    /// The name of the setting that controls the idle timeout, as Spark spells it.
    pub fn connection_timeout_key(&self) -> String {
        format!("spark.{}.io.connectionTimeout", self.module)
    }

    /// The fast-fail window after `consecutive_failures` failed connects (0 = none).
    pub fn fast_fail_window(&self, consecutive_failures: u32) -> Duration {
        if consecutive_failures == 0 {
            return Duration::ZERO;
        }
        let base = self.retry_wait.mul_f64(0.95);
        let factor = 1u32 << (consecutive_failures - 1).min(16);
        base.saturating_mul(factor)
            .min(self.max_retry_backoff.max(base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sparks() {
        let c = TransportConf::default();
        assert_eq!(c.connection_timeout, Some(Duration::from_secs(120)));
        assert_eq!(c.num_connections_per_peer, 1);
        assert_eq!(c.port_max_retries, 16);
        assert_eq!(c.max_frame_size, (i32::MAX - 1) as usize);
        assert_eq!(c.connection_timeout_key(), "spark.rpc.io.connectionTimeout");
    }

    #[test]
    fn fast_fail_window_backs_off_and_caps() {
        let c = TransportConf::default();
        assert_eq!(c.fast_fail_window(0), Duration::ZERO);
        assert_eq!(c.fast_fail_window(1), Duration::from_millis(4750));
        assert_eq!(c.fast_fail_window(2), Duration::from_millis(9500));
        assert_eq!(c.fast_fail_window(3), Duration::from_millis(19000));
        assert_eq!(c.fast_fail_window(4), Duration::from_secs(30));
        assert_eq!(c.fast_fail_window(40), Duration::from_secs(30));
    }
}
