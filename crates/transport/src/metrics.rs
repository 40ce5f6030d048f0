//! What the transport counts, through the [`metrics`](https://docs.rs/metrics) facade: the
//! connections a process opens and accepts, the bytes and frames (by message type) it reads and
//! writes, and the handshakes that fail authentication.
//!
//! The library links only the facade; a process that wants the numbers installs a recorder
//! (the `rpcenv` binary installs the Prometheus exporter). Handles are registered once, when a
//! connection's [`FrameDecoder`](crate::FrameDecoder) or [`WriteQueue`](crate::WriteQueue) is
//! made, so counting a frame is one increment of a handle (with no recorder installed, a branch
//! on an empty handle): no lookup, no allocation, no lock per frame.
//!
//! Without the crate's `metrics` feature the handles are empty types of the same shape, so
//! the callers do not change.

#[cfg(feature = "metrics")]
pub use metrics::{Counter, Gauge, Histogram, Label, SharedString, Unit};

#[cfg(not(feature = "metrics"))]
pub use disabled::{Counter, Gauge, Histogram, Label, SharedString, Unit};

/// Connections accepted by this process's servers.
pub const CONNECTIONS_IN: &str = "rpcenv_connections_in_total";
/// Connections this process opened.
pub const CONNECTIONS_OUT: &str = "rpcenv_connections_out_total";
/// Bytes read from connections (frames and raw stream bodies), after decryption.
pub const BYTES_IN: &str = "rpcenv_bytes_in_total";
/// Bytes queued for writing to connections, before encryption.
pub const BYTES_OUT: &str = "rpcenv_bytes_out_total";
/// Frames read, label `type` (the message type).
pub const FRAMES_IN: &str = "rpcenv_frames_in_total";
/// Frames written, label `type`.
pub const FRAMES_OUT: &str = "rpcenv_frames_out_total";
/// Handshakes that failed authentication (either side).
pub const AUTH_FAILURES: &str = "rpcenv_auth_failures_total";

/// The `type` label of each message type, indexed by its wire type id.
pub const FRAME_TYPES: [&str; 13] = [
    "ChunkFetchRequest",
    "ChunkFetchSuccess",
    "ChunkFetchFailure",
    "RpcRequest",
    "RpcResponse",
    "RpcFailure",
    "StreamRequest",
    "StreamResponse",
    "StreamFailure",
    "OneWayMessage",
    "UploadStream",
    "MergedBlockMetaRequest",
    "MergedBlockMetaSuccess",
];

#[cfg(feature = "metrics")]
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Registers (or finds) the counter `name` with `labels` in the installed recorder.
pub fn counter(name: &'static str, labels: Vec<Label>) -> Counter {
    #[cfg(feature = "metrics")]
    {
        let key = metrics::Key::from_parts(name, labels);
        metrics::with_recorder(|r| r.register_counter(&key, &METADATA))
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (name, labels);
        Counter
    }
}

/// Registers (or finds) the gauge `name` with `labels` in the installed recorder.
pub fn gauge(name: &'static str, labels: Vec<Label>) -> Gauge {
    #[cfg(feature = "metrics")]
    {
        let key = metrics::Key::from_parts(name, labels);
        metrics::with_recorder(|r| r.register_gauge(&key, &METADATA))
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (name, labels);
        Gauge
    }
}

/// Registers (or finds) the histogram `name` with `labels` in the installed recorder.
pub fn histogram(name: &'static str, labels: Vec<Label>) -> Histogram {
    #[cfg(feature = "metrics")]
    {
        let key = metrics::Key::from_parts(name, labels);
        metrics::with_recorder(|r| r.register_histogram(&key, &METADATA))
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (name, labels);
        Histogram
    }
}

/// A label (no allocation for static values).
pub fn label(key: &'static str, value: impl Into<SharedString>) -> Label {
    Label::new(key, value)
}

/// The frame and byte counters of one direction of one connection.
#[derive(Debug, Clone)]
pub(crate) struct FrameCounters {
    bytes: Counter,
    frames: [Counter; 13],
}

impl FrameCounters {
    /// The counters of frames read.
    pub(crate) fn inbound() -> Self {
        Self::new(BYTES_IN, FRAMES_IN)
    }

    /// The counters of frames written.
    pub(crate) fn outbound() -> Self {
        Self::new(BYTES_OUT, FRAMES_OUT)
    }

    fn new(bytes: &'static str, frames: &'static str) -> Self {
        FrameCounters {
            bytes: counter(bytes, Vec::new()),
            frames: FRAME_TYPES.map(|t| counter(frames, vec![label("type", t)])),
        }
    }

    /// One frame of message type `type_id`, `len` bytes on the wire.
    pub(crate) fn frame(&self, type_id: u8, len: usize) {
        if let Some(c) = self.frames.get(usize::from(type_id)) {
            c.increment(1);
        }
        self.bytes.increment(len as u64);
    }

    /// Raw body bytes (a stream's or an upload's) that follow a frame.
    pub(crate) fn body(&self, len: usize) {
        self.bytes.increment(len as u64);
    }
}

/// A connection was accepted (`inbound`) or opened.
pub(crate) fn connection_opened(inbound: bool) {
    counter(
        if inbound {
            CONNECTIONS_IN
        } else {
            CONNECTIONS_OUT
        },
        Vec::new(),
    )
    .increment(1);
}

/// A handshake failed authentication.
pub(crate) fn auth_failed() {
    counter(AUTH_FAILURES, Vec::new()).increment(1);
}

/// The kinds of metric, for [`describe_metric`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A counter.
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram.
    Histogram,
}

/// Registers the unit and description of the metric `name` with the installed recorder (the
/// Prometheus exporter prints them as `# HELP`).
pub fn describe_metric(kind: Kind, name: &'static str, unit: Unit, text: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::with_recorder(|r| match kind {
        Kind::Counter => r.describe_counter(name.into(), Some(unit), text.into()),
        Kind::Gauge => r.describe_gauge(name.into(), Some(unit), text.into()),
        Kind::Histogram => r.describe_histogram(name.into(), Some(unit), text.into()),
    });
    #[cfg(not(feature = "metrics"))]
    let _ = (kind, name, unit, text);
}

/// Registers the units and descriptions of the transport's metrics with the installed recorder,
/// and the process-wide counters themselves (at 0, so that a scrape shows them before anything
/// happened); call once after installing one.
pub fn describe() {
    for (name, unit, text) in [
        (CONNECTIONS_IN, Unit::Count, "connections accepted"),
        (CONNECTIONS_OUT, Unit::Count, "connections opened"),
        (BYTES_IN, Unit::Bytes, "bytes read from connections"),
        (
            BYTES_OUT,
            Unit::Bytes,
            "bytes queued for writing to connections",
        ),
        (FRAMES_IN, Unit::Count, "frames read, by message type"),
        (FRAMES_OUT, Unit::Count, "frames written, by message type"),
        (
            AUTH_FAILURES,
            Unit::Count,
            "handshakes that failed authentication",
        ),
    ] {
        describe_metric(Kind::Counter, name, unit, text);
    }
    for name in [
        CONNECTIONS_IN,
        CONNECTIONS_OUT,
        BYTES_IN,
        BYTES_OUT,
        AUTH_FAILURES,
    ] {
        counter(name, Vec::new()).increment(0);
    }
}

#[cfg(not(feature = "metrics"))]
mod disabled {
    //! Empty handles for builds without the `metrics` feature.

    /// A label (dropped).
    #[derive(Debug, Clone)]
    pub struct Label;
    impl Label {
        /// A label that goes nowhere.
        pub fn new(_: &'static str, _: impl Into<SharedString>) -> Self {
            Label
        }
    }
    /// A label value (unused).
    pub type SharedString = std::borrow::Cow<'static, str>;

    /// A counter that counts nothing.
    #[derive(Debug, Clone, Default)]
    pub struct Counter;
    impl Counter {
        /// Does nothing.
        pub fn increment(&self, _: u64) {}
    }

    /// A gauge that holds nothing.
    #[derive(Debug, Clone, Default)]
    pub struct Gauge;
    impl Gauge {
        /// Does nothing.
        pub fn set(&self, _: f64) {}
        /// Does nothing.
        pub fn increment(&self, _: f64) {}
        /// Does nothing.
        pub fn decrement(&self, _: f64) {}
    }

    /// The unit of a metric (unused).
    #[derive(Debug, Clone, Copy)]
    pub enum Unit {
        /// A count.
        Count,
        /// Bytes.
        Bytes,
        /// Seconds.
        Seconds,
    }

    /// A histogram that records nothing.
    #[derive(Debug, Clone, Default)]
    pub struct Histogram;
    impl Histogram {
        /// Does nothing.
        pub fn record(&self, _: f64) {}
        /// Does nothing.
        pub fn record_many(&self, _: f64, _: usize) {}
    }
}
