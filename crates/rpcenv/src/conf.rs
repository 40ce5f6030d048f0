//! [`RpcConf`]: one string map of settings, like SparkConf, with typed and validated accessors for
//! the keys rpcenv knows.
//!
//! Keys are written without Spark's `spark.` prefix (`rpc.askTimeout`); the prefixed form is accepted
//! as an alias. Durations use Spark's format (`120s`, `500ms`, `2m`, `1h`; a bare number is in the
//! key's default unit), sizes too (`128m`, `64k`, `1g`; a bare number is in the key's default unit).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// A setting with a bad value, a missing setting, or an unreadable configuration file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfError {
    /// The value of a key could not be parsed or is out of range.
    #[error("invalid value {value:?} for setting {key}: {reason}")]
    Invalid {
        /// The key, as rpcenv names it (without `spark.`).
        key: String,
        /// The value given.
        value: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A key that was required is not set.
    #[error("setting {key} is not set")]
    Missing {
        /// The key.
        key: String,
    },
    /// A configuration file could not be read, or one of its lines is malformed.
    #[error("cannot read configuration file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The kind of value a known key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A duration; a bare number is in this unit.
    Duration(TimeUnit),
    /// A byte size; a bare number is in this many bytes.
    Size(u64),
    /// A whole number in an inclusive range.
    Int(i64, i64),
    /// `true` or `false`.
    Bool,
    /// Any text.
    Text,
}

/// The unit of a bare duration number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    /// Milliseconds.
    Millis,
    /// Seconds.
    Seconds,
}

/// A setting rpcenv knows: its name, kind, default (as text) and meaning.
#[derive(Debug, Clone, Copy)]
pub struct KnownKey {
    /// The key, without `spark.`.
    pub key: &'static str,
    /// What it holds.
    pub kind: ValueKind,
    /// The default, as it would be written; `None` when it falls back to another key or is
    /// computed (the doc says which).
    pub default: Option<&'static str>,
    /// What it controls.
    pub doc: &'static str,
}

const MIB: u64 = 1024 * 1024;

/// Every setting rpcenv reads, with Spark's defaults.
pub const KNOWN_KEYS: &[KnownKey] = &[
    KnownKey {
        key: "network.timeout",
        kind: ValueKind::Duration(TimeUnit::Seconds),
        default: Some("120s"),
        doc: "Default for rpc.askTimeout, rpc.lookupTimeout and rpc.io.connectionTimeout.",
    },
    KnownKey {
        key: "rpc.askTimeout",
        kind: ValueKind::Duration(TimeUnit::Seconds),
        default: None,
        doc: "How long an ask waits for its reply (falls back to network.timeout).",
    },
    KnownKey {
        key: "rpc.lookupTimeout",
        kind: ValueKind::Duration(TimeUnit::Seconds),
        default: None,
        doc: "How long a lookup of a remote endpoint waits (falls back to network.timeout).",
    },
    KnownKey {
        key: "rpc.numRetries",
        kind: ValueKind::Int(1, 1000),
        default: Some("3"),
        doc: "Attempts made by ask_with_retry.",
    },
    KnownKey {
        key: "rpc.retry.wait",
        kind: ValueKind::Duration(TimeUnit::Millis),
        default: Some("3s"),
        doc: "Wait between the attempts of ask_with_retry.",
    },
    KnownKey {
        key: "rpc.netty.dispatcher.numThreads",
        kind: ValueKind::Int(1, 1024),
        default: None,
        doc: "Threads of the shared message loop (default max(2, available cores)).",
    },
    KnownKey {
        key: "rpc.io.threads",
        kind: ValueKind::Int(1, 1024),
        default: None,
        doc: "Worker threads of the IO runtime shared by the envs of a process (default min(4, cores)), which serves inbound connections too unless rpc.io.serverThreads is set; read when the first env starts.",
    },
    KnownKey {
        key: "rpc.io.serverThreads",
        kind: ValueKind::Int(0, 1024),
        default: None,
        doc: "Worker threads of a runtime of their own for the accept loops and inbound connections of the servers of a process (default 0: they run on the IO runtime); read when the first server starts.",
    },
    KnownKey {
        key: "rpc.io.clientThreads",
        kind: ValueKind::Int(1, 1024),
        default: None,
        doc: "Worker threads of the IO runtime (default rpc.io.threads minus rpc.io.serverThreads, at least 1: rpc.io.threads while the servers have no runtime of their own); read when the first env starts.",
    },
    KnownKey {
        key: "rpc.io.numConnectionsPerPeer",
        kind: ValueKind::Int(1, 64),
        default: Some("1"),
        doc: "Transport connections per peer for non-RPC uses (the RpcEnv always uses one, for ordering).",
    },
    KnownKey {
        key: "rpc.io.connectionTimeout",
        kind: ValueKind::Duration(TimeUnit::Seconds),
        default: None,
        doc: "A connection with outstanding requests and no traffic for this long is closed (falls back to network.timeout).",
    },
    KnownKey {
        key: "rpc.io.connectionCreationTimeout",
        kind: ValueKind::Duration(TimeUnit::Seconds),
        default: None,
        doc: "Connect timeout (falls back to rpc.io.connectionTimeout).",
    },
    KnownKey {
        key: "rpc.io.retryWait",
        kind: ValueKind::Duration(TimeUnit::Millis),
        default: Some("5s"),
        doc: "After a failed connect, new connects to that peer fail fast for 95% of this window.",
    },
    KnownKey {
        key: "rpc.io.maxQueuedBytesPerConnection",
        kind: ValueKind::Size(1),
        default: Some("16m"),
        doc: "Byte budget of one connection: frames queued towards the peer plus requests read from it and not yet answered (and unread stream pieces). Over it the connection stops reading from the peer until under half.",
    },
    KnownKey {
        key: "rpc.io.handshakeTimeout",
        kind: ValueKind::Duration(TimeUnit::Seconds),
        default: Some("10s"),
        doc: "An accepted connection that has not completed its first frame (or its authentication handshake) within this is closed (0 = no limit).",
    },
    KnownKey {
        key: "rpc.io.maxInboundConnections",
        kind: ValueKind::Int(0, 1 << 24),
        default: Some("0"),
        doc: "Most connections a server keeps open (0 = no cap). At the cap, or out of file descriptors, it closes the connection stalled longest without a complete frame, else waits before accepting.",
    },
    KnownKey {
        key: "files.io.connectionTimeout",
        kind: ValueKind::Duration(TimeUnit::Seconds),
        default: None,
        doc: "Idle timeout of the file-fetch connections, which close when idle (falls back to rpc.io.connectionTimeout).",
    },
    KnownKey {
        key: "files.io.connectionCreationTimeout",
        kind: ValueKind::Duration(TimeUnit::Seconds),
        default: None,
        doc: "Connect timeout of the file-fetch connections (falls back to rpc.io.connectionCreationTimeout).",
    },
    KnownKey {
        key: "files.io.numConnectionsPerPeer",
        kind: ValueKind::Int(1, 64),
        default: None,
        doc: "File-fetch connections per server (falls back to rpc.io.numConnectionsPerPeer).",
    },
    KnownKey {
        key: "files.io.retryWait",
        kind: ValueKind::Duration(TimeUnit::Millis),
        default: None,
        doc: "Fast-fail window after a failed file-fetch connect (falls back to rpc.io.retryWait).",
    },
    KnownKey {
        key: "files.io.maxQueuedBytesPerConnection",
        kind: ValueKind::Size(1),
        default: None,
        doc: "Byte budget of one file-fetch connection: file bytes received and not yet read. A slow reader stops the socket here (falls back to rpc.io.maxQueuedBytesPerConnection).",
    },
    KnownKey {
        key: "rpc.message.maxSize",
        kind: ValueKind::Size(MIB),
        default: Some("128m"),
        doc: "Largest message that may be sent (bare numbers are MiB; at most 2047m).",
    },
    KnownKey {
        key: "rpc.outbox.maxBytes",
        kind: ValueKind::Size(1),
        default: Some("64m"),
        doc: "Bytes that may wait to be sent to one remote address; past it `send` fails with QueueFull at once and `send_async` waits.",
    },
    KnownKey {
        key: "rpc.messageLoop.maxExtraThreads",
        kind: ValueKind::Int(0, 1024),
        default: Some("16"),
        doc: "Compensating threads the shared message loop may run while handlers block in ask_sync (each blocked handler holds a loop thread); 0 never adds one.",
    },
    KnownKey {
        key: "rpc.messageLoop.spinMicros",
        kind: ValueKind::Int(0, 10_000),
        default: Some("50"),
        doc: "Microseconds a message-loop thread (or a caller blocked in ask_sync) may stay awake waiting for the next message, used only while messages have recently been arriving that closely; 0 turns spinning off.",
    },
    KnownKey {
        key: "rpc.slowHandler.threshold",
        kind: ValueKind::Duration(TimeUnit::Millis),
        default: Some("1s"),
        doc: "A handler call longer than this is logged as a warning naming the endpoint, the message type and the time (at most once per 10 s per endpoint); 0 turns the warning off.",
    },
    KnownKey {
        key: "rpc.inbox.capacity",
        kind: ValueKind::Int(1, 1 << 30),
        default: Some("65536"),
        doc: "Messages an inbox holds before a one-way message from a connection counts in that connection's byte budget (rpc.io.maxQueuedBytesPerConnection) until handled; the connection stops being read only once its budget is exhausted.",
    },
    KnownKey {
        key: "rpc.io.maxChunksBeingTransferred",
        kind: ValueKind::Int(1, i64::MAX),
        default: Some("9223372036854775807"),
        doc: "Chunks of registered streams an env may be writing at once (Spark: spark.shuffle.maxChunksBeingTransferred); a chunk or stream request at the cap closes its connection, as Spark does.",
    },
    KnownKey {
        key: "port.maxRetries",
        kind: ValueKind::Int(0, 65535),
        default: Some("16"),
        doc: "How many successive ports a server tries when its port is taken.",
    },
    KnownKey {
        key: "authenticate",
        kind: ValueKind::Bool,
        default: Some("false"),
        doc: "Authenticate every connection: with Spark's AES protocol and its session cipher unless network.crypto.enabled=false (then SASL DIGEST-MD5), or SASL without SASL encryption when ssl.rpc.enabled=true (as Spark).",
    },
    KnownKey {
        key: "authenticate.secret",
        kind: ValueKind::Text,
        default: None,
        doc: "The shared secret (never logged); else authenticate.secret.file, else the environment variable _SPARK_AUTH_SECRET or RPCENV_AUTHENTICATE_SECRET.",
    },
    KnownKey {
        key: "authenticate.secret.file",
        kind: ValueKind::Text,
        default: None,
        doc: "A file whose bytes, Base64-encoded as Spark does, are the secret.",
    },
    KnownKey {
        key: "authenticate.appId",
        kind: ValueKind::Text,
        default: Some("sparkSaslUser"),
        doc: "The app id both sides of an authenticated connection must use (NettyRpcEnv's).",
    },
    KnownKey {
        key: "network.crypto.enabled",
        kind: ValueKind::Bool,
        default: None,
        doc: "Spark's switch between the AES protocol (true) and SASL DIGEST-MD5 (false). Unset means the AES protocol here (Spark: SASL), a deliberate deviation: AES is the better choice when both sides allow it.",
    },
    KnownKey {
        key: "network.crypto.saslFallback",
        kind: ValueKind::Bool,
        default: Some("true"),
        doc: "With the AES protocol: a server also answers SASL clients with SASL, and a client whose AES attempt fails (other than by timing out) retries with SASL, as Spark does.",
    },
    KnownKey {
        key: "authenticate.enableSaslEncryption",
        kind: ValueKind::Bool,
        default: Some("false"),
        doc: "SASL: the client asks for QOP auth-conf (SASL encryption, 3DES with a JVM server); ignored with TLS on.",
    },
    KnownKey {
        key: "network.sasl.serverAlwaysEncrypt",
        kind: ValueKind::Bool,
        default: Some("false"),
        doc: "SASL: the server offers only QOP auth-conf, refusing clients that do not encrypt.",
    },
    KnownKey {
        key: "network.sasl.maxEncryptedBlockSize",
        kind: ValueKind::Size(1),
        default: Some("64k"),
        doc: "SASL encryption: plaintext bytes per encrypted piece (each write is cut into pieces of at most this size).",
    },
    KnownKey {
        key: "network.crypto.cipher",
        kind: ValueKind::Text,
        default: Some("AES/CTR/NoPadding"),
        doc: "Session cipher of authenticated connections: AES/CTR/NoPadding or AES/GCM/NoPadding (authenticated). Both sides must agree.",
    },
    KnownKey {
        key: "network.crypto.authEngineVersion",
        kind: ValueKind::Int(1, 2),
        default: Some("1"),
        doc: "Auth engine version: 1 (session key = raw X25519 output) or 2 (HKDF-derived key). Both sides must agree.",
    },
    KnownKey {
        key: "network.auth.rpcTimeout",
        kind: ValueKind::Duration(TimeUnit::Seconds),
        default: Some("30s"),
        doc: "Bound of the authentication handshake of a connection.",
    },
    KnownKey {
        key: "ssl.rpc.enabled",
        kind: ValueKind::Bool,
        default: Some("false"),
        doc: "TLS on every connection (rustls; with authenticate=true, SASL then only authenticates, as in Spark).",
    },
    KnownKey {
        key: "ssl.rpc.privateKey",
        kind: ValueKind::Text,
        default: None,
        doc: "PEM private key (unencrypted) of this side's certificate; falls back to ssl.privateKey.",
    },
    KnownKey {
        key: "ssl.rpc.certChain",
        kind: ValueKind::Text,
        default: None,
        doc: "PEM certificate chain (leaf first); falls back to ssl.certChain.",
    },
    KnownKey {
        key: "ssl.rpc.trustStore",
        kind: ValueKind::Text,
        default: None,
        doc: "PEM bundle of the CA certificates to trust; falls back to ssl.trustStore.",
    },
    KnownKey {
        key: "ssl.rpc.trustAll",
        kind: ValueKind::Bool,
        default: Some("false"),
        doc: "Development only: trust any certificate when no trust store is set (Spark's behaviour without one).",
    },
    KnownKey {
        key: "ssl.rpc.clientAuth",
        kind: ValueKind::Bool,
        default: Some("false"),
        doc: "Servers require client certificates signed by a trusted CA (mutual TLS).",
    },
    KnownKey {
        key: "ssl.rpc.protocol",
        kind: ValueKind::Text,
        default: Some("TLSv1.3"),
        doc: "TLSv1.3 (only 1.3) or TLSv1.2 (1.2 and 1.3).",
    },
    KnownKey {
        key: "ssl.rpc.enabledAlgorithms",
        kind: ValueKind::Text,
        default: None,
        doc: "Comma-separated IANA names of the allowed TLS cipher suites (default: rustls's).",
    },
];

/// Looks up a known key (with or without the `spark.` prefix).
pub fn known_key(key: &str) -> Option<&'static KnownKey> {
    let key = normalize(key);
    KNOWN_KEYS.iter().find(|k| k.key == key)
}

fn normalize(key: &str) -> &str {
    key.trim().strip_prefix("spark.").unwrap_or(key.trim())
}

/// The configuration of an [`RpcEnv`](crate::RpcEnv): a string map, like SparkConf.
///
/// Any key may be set, so applications can keep their own settings beside rpcenv's; values of
/// known keys are validated when they are set, and the error names the key.
///
/// ```
/// use std::time::Duration;
/// use rpcenv::RpcConf;
///
/// let mut conf = RpcConf::new();
/// conf.set("spark.rpc.askTimeout", "30s")?.set("rpc.numRetries", "5")?;
/// assert_eq!(conf.ask_timeout().duration(), Duration::from_secs(30));
/// assert_eq!(conf.num_retries(), 5);
/// assert!(conf.set("rpc.askTimeout", "soon").is_err());
/// # Ok::<(), rpcenv::ConfError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RpcConf {
    entries: BTreeMap<String, String>,
}

impl RpcConf {
    /// An empty configuration: every key at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (with or without `spark.`) to `value`, validating known keys.
    pub fn set(
        &mut self,
        key: impl AsRef<str>,
        value: impl Into<String>,
    ) -> Result<&mut Self, ConfError> {
        let key = normalize(key.as_ref()).to_string();
        let value = value.into().trim().to_string();
        if let Some(known) = known_key(&key) {
            validate(known, &value)?;
        }
        self.entries.insert(key, value);
        Ok(self)
    }

    /// Builder form of [`set`](Self::set).
    pub fn with(
        mut self,
        key: impl AsRef<str>,
        value: impl Into<String>,
    ) -> Result<Self, ConfError> {
        self.set(key, value)?;
        Ok(self)
    }

    /// Removes a key.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.entries.remove(normalize(key))
    }

    /// The raw value of a key, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(normalize(key)).map(String::as_str)
    }

    /// Whether a key is set.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// All set keys and values, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Reads `key value` or `key=value` lines (`#` starts a comment), as in spark-defaults.conf.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut conf = RpcConf::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let split = line
                .split_once('=')
                .or_else(|| line.split_once(char::is_whitespace))
                .ok_or_else(|| ConfError::File {
                    path: path.display().to_string(),
                    reason: format!("line {}: expected `key value` or `key=value`", n + 1),
                })?;
            conf.set(split.0.trim(), split.1.trim())?;
        }
        Ok(conf)
    }

    /// A duration setting; `Ok(None)` when unset. Bare numbers are in the known key's unit
    /// (seconds for unknown keys).
    pub fn get_duration(&self, key: &str) -> Result<Option<Duration>, ConfError> {
        let unit = match known_key(key).map(|k| k.kind) {
            Some(ValueKind::Duration(unit)) => unit,
            _ => TimeUnit::Seconds,
        };
        self.get(key)
            .map(|v| parse_duration(v, unit).map_err(|reason| invalid(key, v, reason)))
            .transpose()
    }

    /// A size setting in bytes; `Ok(None)` when unset. Bare numbers are in the known key's unit
    /// (bytes for unknown keys).
    pub fn get_size(&self, key: &str) -> Result<Option<u64>, ConfError> {
        let unit = match known_key(key).map(|k| k.kind) {
            Some(ValueKind::Size(unit)) => unit,
            _ => 1,
        };
        self.get(key)
            .map(|v| parse_size(v, unit).map_err(|reason| invalid(key, v, reason)))
            .transpose()
    }

    /// A whole-number setting; `Ok(None)` when unset.
    pub fn get_int(&self, key: &str) -> Result<Option<i64>, ConfError> {
        self.get(key)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| invalid(key, v, "expected a whole number".into()))
            })
            .transpose()
    }

    /// A boolean setting; `Ok(None)` when unset.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, ConfError> {
        self.get(key)
            .map(|v| parse_bool(v).map_err(|reason| invalid(key, v, reason)))
            .transpose()
    }

    // Typed accessors of known keys. Their values were validated by `set`, so these cannot fail.

    fn known_duration(&self, key: &str) -> Option<Duration> {
        self.get_duration(key).ok().flatten()
    }

    fn known_int(&self, key: &str, default: i64) -> i64 {
        self.get_int(key).ok().flatten().unwrap_or(default)
    }

    /// `network.timeout` (120 s).
    pub fn network_timeout(&self) -> Duration {
        self.known_duration("network.timeout")
            .unwrap_or(Duration::from_secs(120))
    }

    /// `rpc.numRetries` (3).
    pub fn num_retries(&self) -> u32 {
        self.known_int("rpc.numRetries", 3) as u32
    }

    /// `rpc.retry.wait` (3 s).
    pub fn retry_wait(&self) -> Duration {
        self.known_duration("rpc.retry.wait")
            .unwrap_or(Duration::from_secs(3))
    }

    /// `rpc.netty.dispatcher.numThreads` (max(2, available cores)).
    pub fn dispatcher_threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        self.known_int("rpc.netty.dispatcher.numThreads", cores.max(2) as i64) as usize
    }

    /// `rpc.io.threads` (min(4, available cores), at least 1): the IO threads of a process in
    /// all, of which [`server_io_threads`](Self::server_io_threads) serve inbound connections
    /// on a runtime of their own when that is set.
    pub fn io_threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        self.known_int("rpc.io.threads", cores.clamp(1, 4) as i64) as usize
    }

    /// `rpc.io.serverThreads` (0): the workers of a runtime of their own for the servers'
    /// accept loops and inbound connections; with 0 these run on the IO runtime. Spark's servers
    /// and clients have pools of their own (`spark.rpc.io.serverThreads`, `clientThreads`); see
    /// the `runtime` module for when that pays.
    pub fn server_io_threads(&self) -> usize {
        self.known_int("rpc.io.serverThreads", 0) as usize
    }

    /// `rpc.io.clientThreads` ([`io_threads`](Self::io_threads) minus
    /// [`server_io_threads`](Self::server_io_threads), at least 1): the workers of the IO
    /// runtime, which runs outbound connections, ask timers and the env's tasks (and inbound
    /// connections too when servers have no runtime of their own).
    pub fn client_io_threads(&self) -> usize {
        let rest = self
            .io_threads()
            .saturating_sub(self.server_io_threads())
            .max(1);
        self.known_int("rpc.io.clientThreads", rest as i64) as usize
    }

    /// `rpc.io.numConnectionsPerPeer` (1).
    pub fn connections_per_peer(&self) -> usize {
        self.known_int("rpc.io.numConnectionsPerPeer", 1) as usize
    }

    /// `rpc.io.connectionTimeout`, else `network.timeout`.
    pub fn connection_timeout(&self) -> Duration {
        self.known_duration("rpc.io.connectionTimeout")
            .unwrap_or_else(|| self.network_timeout())
    }

    /// `rpc.io.connectionCreationTimeout`, else the connection timeout.
    pub fn connection_creation_timeout(&self) -> Duration {
        self.known_duration("rpc.io.connectionCreationTimeout")
            .unwrap_or_else(|| self.connection_timeout())
    }

    /// `rpc.io.retryWait` (5 s).
    pub fn io_retry_wait(&self) -> Duration {
        self.known_duration("rpc.io.retryWait")
            .unwrap_or(Duration::from_secs(5))
    }

    /// `rpc.io.maxQueuedBytesPerConnection` in bytes (16 MiB).
    pub fn max_queued_bytes_per_connection(&self) -> u64 {
        self.get_size("rpc.io.maxQueuedBytesPerConnection")
            .ok()
            .flatten()
            .unwrap_or(16 * MIB)
    }

    /// `rpc.io.handshakeTimeout` (10 s; zero = no limit).
    pub fn handshake_timeout(&self) -> Duration {
        self.known_duration("rpc.io.handshakeTimeout")
            .unwrap_or(Duration::from_secs(10))
    }

    /// `rpc.io.maxInboundConnections` (0 = no cap).
    pub fn max_inbound_connections(&self) -> usize {
        self.known_int("rpc.io.maxInboundConnections", 0) as usize
    }

    /// `rpc.message.maxSize` in bytes (128 MiB).
    pub fn max_message_size(&self) -> u64 {
        self.get_size("rpc.message.maxSize")
            .ok()
            .flatten()
            .unwrap_or(128 * MIB)
    }

    /// `rpc.outbox.maxBytes` (64 MiB).
    pub fn outbox_max_bytes(&self) -> u64 {
        self.get_size("rpc.outbox.maxBytes")
            .ok()
            .flatten()
            .unwrap_or(64 * MIB)
    }

    /// `rpc.messageLoop.spinMicros` (50 µs): how long a waiter may spin while messages come that
    /// closely.
    pub fn spin_window(&self) -> Duration {
        Duration::from_micros(self.known_int("rpc.messageLoop.spinMicros", 50) as u64)
    }

    /// `rpc.messageLoop.maxExtraThreads` (16).
    pub fn max_extra_loop_threads(&self) -> usize {
        self.known_int("rpc.messageLoop.maxExtraThreads", 16) as usize
    }

    /// `rpc.slowHandler.threshold` (1 s): handler calls longer than this are logged.
    pub fn slow_handler_threshold(&self) -> Duration {
        self.known_duration("rpc.slowHandler.threshold")
            .unwrap_or(Duration::from_secs(1))
    }

    /// `rpc.inbox.capacity` (65536 messages).
    pub fn inbox_capacity(&self) -> usize {
        self.known_int("rpc.inbox.capacity", 65536) as usize
    }

    /// `rpc.io.maxChunksBeingTransferred` (no cap: `u64::MAX`).
    pub fn max_chunks_being_transferred(&self) -> u64 {
        match self.known_int("rpc.io.maxChunksBeingTransferred", i64::MAX) {
            i64::MAX => u64::MAX,
            n => n as u64,
        }
    }

    /// The settings of the `files` client pool (Spark's `files` transport module): this
    /// configuration with every `files.io.X` that is set in place of `rpc.io.X`, so that the
    /// `rpc.io` accessors read `files.io.X`, else `rpc.io.X`.
    pub(crate) fn files_io_view(&self) -> RpcConf {
        let mut view = self.clone();
        for (key, value) in &self.entries {
            if let Some(name) = key.strip_prefix("files.io.") {
                view.entries.insert(format!("rpc.io.{name}"), value.clone());
            }
        }
        view
    }

    /// `port.maxRetries` (16).
    pub fn port_max_retries(&self) -> u32 {
        self.known_int("port.maxRetries", 16) as u32
    }
}

impl fmt::Debug for RpcConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets never reach logs.
        let mut m = f.debug_map();
        for (k, v) in &self.entries {
            if k.contains("secret") || k.contains("password") {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

fn invalid(key: &str, value: &str, reason: String) -> ConfError {
    ConfError::Invalid {
        key: normalize(key).to_string(),
        value: value.to_string(),
        reason,
    }
}

fn validate(known: &KnownKey, value: &str) -> Result<(), ConfError> {
    let check = match known.kind {
        ValueKind::Duration(unit) => parse_duration(value, unit).map(drop),
        ValueKind::Size(unit) => parse_size(value, unit).and_then(|bytes| {
            if known.key == "rpc.message.maxSize" && !(1..=2047 * MIB).contains(&bytes) {
                Err("must be between 1 byte and 2047m".into())
            } else {
                Ok(())
            }
        }),
        ValueKind::Int(lo, hi) => match value.parse::<i64>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(()),
            Ok(_) => Err(format!("must be between {lo} and {hi}")),
            Err(_) => Err("expected a whole number".into()),
        },
        ValueKind::Bool => parse_bool(value).map(drop),
        ValueKind::Text => Ok(()),
    };
    check.map_err(|reason| invalid(known.key, value, reason))
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn split_number(v: &str) -> Result<(u64, &str), String> {
    let v = v.trim();
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err("expected a non-negative number with an optional unit".into());
    }
    let n = v[..digits]
        .parse::<u64>()
        .map_err(|_| "number too large".to_string())?;
    Ok((n, v[digits..].trim()))
}

/// Parses Spark's duration format: `120s`, `500ms`, `100us`, `2m`/`2min`, `1h`, `1d`; a bare number
/// is in `unit`.
pub fn parse_duration(v: &str, unit: TimeUnit) -> Result<Duration, String> {
    const FORM: &str = "expected a duration such as 120s, 500ms, 2m, 1h";
    let (n, suffix) = split_number(v).map_err(|_| FORM.to_string())?;
    let d = match suffix.to_ascii_lowercase().as_str() {
        "" => match unit {
            TimeUnit::Millis => Duration::from_millis(n),
            TimeUnit::Seconds => Duration::from_secs(n),
        },
        "us" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        other => return Err(format!("unknown time unit \"{other}\"; {FORM}")),
    };
    Ok(d)
}

/// Parses Spark's size format: `512`, `64k`/`64kb`, `128m`, `1g`, `1t`, `1p` (binary units); a bare
/// number is in units of `unit` bytes.
pub fn parse_size(v: &str, unit: u64) -> Result<u64, String> {
    const FORM: &str = "expected a size such as 512k, 128m, 1g";
    let (n, suffix) = split_number(v).map_err(|_| FORM.to_string())?;
    let mult: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" => unit,
        "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        "p" | "pb" => 1 << 50,
        other => return Err(format!("unknown size unit \"{other}\"; {FORM}")),
    };
    n.checked_mul(mult).ok_or_else(|| "size too large".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sparks() {
        let c = RpcConf::new();
        assert_eq!(c.network_timeout(), Duration::from_secs(120));
        assert_eq!(c.ask_timeout().duration(), Duration::from_secs(120));
        assert_eq!(c.ask_timeout().setting(), "rpc.askTimeout");
        assert_eq!(c.lookup_timeout().setting(), "rpc.lookupTimeout");
        assert_eq!(c.num_retries(), 3);
        assert_eq!(c.retry_wait(), Duration::from_secs(3));
        assert!(c.dispatcher_threads() >= 2);
        assert_eq!(c.max_message_size(), 128 * MIB);
        assert_eq!(c.port_max_retries(), 16);
        assert_eq!(c.connections_per_peer(), 1);
        assert_eq!(c.server_io_threads(), 0);
        assert_eq!(c.client_io_threads(), c.io_threads());
    }

    #[test]
    fn io_threads_split_between_servers_and_clients() {
        let split = |pairs: &[(&str, &str)]| {
            let mut c = RpcConf::new();
            for (k, v) in pairs {
                c.set(k, *v).unwrap();
            }
            (c.server_io_threads(), c.client_io_threads())
        };
        assert_eq!(split(&[("rpc.io.threads", "1")]), (0, 1));
        assert_eq!(split(&[("rpc.io.threads", "3")]), (0, 3));
        assert_eq!(
            split(&[("rpc.io.threads", "2"), ("rpc.io.serverThreads", "1")]),
            (1, 1)
        );
        assert_eq!(
            split(&[("rpc.io.threads", "5"), ("rpc.io.serverThreads", "2")]),
            (2, 3)
        );
        assert_eq!(
            split(&[("rpc.io.threads", "2"), ("rpc.io.serverThreads", "3")]),
            (3, 1)
        );
        assert_eq!(
            split(&[
                ("spark.rpc.io.serverThreads", "2"),
                ("spark.rpc.io.clientThreads", "6")
            ]),
            (2, 6)
        );
        let mut c = RpcConf::new();
        assert!(c.set("rpc.io.clientThreads", "0").is_err());
    }

    #[test]
    fn spark_prefix_is_an_alias() {
        let mut c = RpcConf::new();
        c.set("spark.rpc.askTimeout", "7s").unwrap();
        assert_eq!(c.get("rpc.askTimeout"), Some("7s"));
        assert_eq!(c.get("spark.rpc.askTimeout"), Some("7s"));
        assert_eq!(c.ask_timeout().duration(), Duration::from_secs(7));
    }

    #[test]
    fn ask_timeout_falls_back_to_network_timeout_and_names_it() {
        let c = RpcConf::new().with("network.timeout", "45").unwrap();
        let t = c.ask_timeout();
        assert_eq!(t.duration(), Duration::from_secs(45));
        assert_eq!(t.setting(), "network.timeout");
    }

    #[test]
    fn durations_and_sizes_in_sparks_formats() {
        use TimeUnit::*;
        assert_eq!(
            parse_duration("120s", Seconds),
            Ok(Duration::from_secs(120))
        );
        assert_eq!(
            parse_duration("500ms", Seconds),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(parse_duration("2m", Seconds), Ok(Duration::from_secs(120)));
        assert_eq!(
            parse_duration("2min", Seconds),
            Ok(Duration::from_secs(120))
        );
        assert_eq!(parse_duration("1h", Seconds), Ok(Duration::from_secs(3600)));
        assert_eq!(
            parse_duration("1d", Seconds),
            Ok(Duration::from_secs(86400))
        );
        assert_eq!(
            parse_duration("100us", Seconds),
            Ok(Duration::from_micros(100))
        );
        assert_eq!(parse_duration("30", Seconds), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30", Millis), Ok(Duration::from_millis(30)));
        assert!(parse_duration("-1s", Seconds).is_err());
        assert!(parse_duration("1.5s", Seconds).is_err());
        assert!(parse_duration("3 weeks", Seconds).is_err());
        assert_eq!(parse_size("128m", 1), Ok(128 * MIB));
        assert_eq!(parse_size("64k", 1), Ok(64 * 1024));
        assert_eq!(parse_size("1g", 1), Ok(1 << 30));
        assert_eq!(parse_size("12", MIB), Ok(12 * MIB));
        assert!(parse_size("12x", 1).is_err());
    }

    #[test]
    fn bad_values_of_known_keys_are_rejected_naming_the_key() {
        let mut c = RpcConf::new();
        for (key, value) in [
            ("rpc.askTimeout", "soon"),
            ("spark.rpc.numRetries", "0"),
            ("rpc.netty.dispatcher.numThreads", "many"),
            ("rpc.message.maxSize", "4096"),
            ("port.maxRetries", "-1"),
        ] {
            let e = c.set(key, value).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(normalize(key)), "{text}");
            assert!(text.contains(value), "{text}");
        }
        // Unknown keys are free-form.
        c.set("app.anything", "goes").unwrap();
        assert_eq!(c.get("app.anything"), Some("goes"));
    }

    #[test]
    fn reads_spark_defaults_style_files() {
        let dir = std::env::temp_dir().join(format!("rpcenv-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rpcenv.conf");
        std::fs::write(
            &path,
            "# comment\nspark.rpc.askTimeout 10s\nrpc.numRetries=4\n\napp.name  demo\n",
        )
        .unwrap();
        let c = RpcConf::from_file(&path).unwrap();
        assert_eq!(c.ask_timeout().duration(), Duration::from_secs(10));
        assert_eq!(c.num_retries(), 4);
        assert_eq!(c.get("app.name"), Some("demo"));
        std::fs::write(&path, "rpc.numRetries=zero\n").unwrap();
        let e = RpcConf::from_file(&path).unwrap_err();
        assert!(e.to_string().contains("rpc.numRetries"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_io_keys_fall_back_to_rpc_io() {
        let conf = RpcConf::new()
            .with("spark.rpc.io.connectionTimeout", "7s")
            .unwrap()
            .with("rpc.io.retryWait", "1s")
            .unwrap()
            .with("spark.files.io.retryWait", "2s")
            .unwrap()
            .with("files.io.maxQueuedBytesPerConnection", "1m")
            .unwrap();
        let files = conf.files_io_view();
        assert_eq!(files.connection_timeout(), Duration::from_secs(7));
        assert_eq!(files.io_retry_wait(), Duration::from_secs(2));
        assert_eq!(files.max_queued_bytes_per_connection(), MIB);
        assert_eq!(
            conf.io_retry_wait(),
            Duration::from_secs(1),
            "rpc.io unchanged"
        );
        assert!(RpcConf::new()
            .set("files.io.connectionTimeout", "soon")
            .is_err());
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = RpcConf::new()
            .with("authenticate.secret", "hunter2")
            .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
