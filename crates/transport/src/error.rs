//! The transport layer's single error type.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Every failure the transport layer reports.
///
/// Variants carry the context needed to act on them: the peer address, the request id, or the
/// name of the setting that controls the limit that was hit. The type is `Clone` (I/O errors are
/// shared behind an `Arc`) so one connection failure can fail every outstanding request at once.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// A frame's length field is at most 8 (no body) or negative.
    #[error("Frame length should be positive: {body_length}")]
    InvalidFrameLength {
        /// The frame length minus the 8 bytes of the length field itself.
        body_length: i64,
    },

    /// A frame is larger than the decoder's cap; detected before any allocation.
    #[error("Too large frame: {body_length} (the limit is {max} bytes, set by {setting})")]
    FrameTooLarge {
        /// The frame length minus the 8 bytes of the length field itself.
        body_length: u64,
        /// The cap in force.
        max: usize,
        /// The setting that controls the cap.
        setting: &'static str,
    },

    /// A frame carries a type id that is not one of the 13 message types.
    #[error("Unknown message type: {type_id}")]
    UnknownMessageType {
        /// The type byte, as Spark's signed byte.
        type_id: i8,
    },

    /// A frame of a known type whose fields do not fit the frame.
    #[error("Malformed {message_type}: {reason}")]
    MalformedMessage {
        /// The message type being decoded.
        message_type: &'static str,
        /// What was wrong.
        reason: String,
    },

    /// The peer sent bytes that cannot be decoded; only that connection is closed.
    #[error("Bad input from {peer}: {source}")]
    BadInput {
        /// The peer that sent the bytes.
        peer: SocketAddr,
        /// The decoding error.
        #[source]
        source: Box<TransportError>,
    },

    /// The connection closed in the middle of a frame or of a stream body.
    #[error("Connection from {peer} closed with {pending_bytes} bytes of an incomplete frame")]
    TruncatedFrame {
        /// The peer.
        peer: SocketAddr,
        /// How many bytes of the incomplete frame had been received.
        pending_bytes: usize,
    },

    /// The connection is closed (by either side); outstanding requests fail with this.
    #[error("Connection from {peer} closed")]
    ConnectionClosed {
        /// The peer.
        peer: SocketAddr,
    },

    /// An I/O error on an established connection.
    #[error("I/O error on the connection with {peer}: {source}")]
    Io {
        /// The peer.
        peer: SocketAddr,
        /// The error.
        #[source]
        source: Arc<io::Error>,
    },

    /// A request could not be written; the connection is closed.
    #[error("Failed to send RPC {request_id} to {peer}: {cause}")]
    SendFailed {
        /// The request id.
        request_id: i64,
        /// The peer.
        peer: SocketAddr,
        /// Why.
        cause: String,
    },

    /// No traffic for the idle timeout while requests were outstanding (Spark's
    /// `io.connectionTimeout`); the connection was closed.
    #[error(
        "Connection to {peer} has been quiet for {} ms while there are outstanding requests. \
         Assuming connection is dead; please adjust {setting} if this is wrong.",
        idle.as_millis()
    )]
    IdleTimeout {
        /// The peer.
        peer: SocketAddr,
        /// How long the connection was quiet.
        idle: Duration,
        /// The setting that controls the timeout.
        setting: String,
    },

    /// An accepted connection did not complete its first frame (or, with authentication on, its
    /// handshake) in time; it was closed.
    #[error(
        "Connection from {peer} completed no frame within {} ms; closed (the limit is set by {setting})",
        after.as_millis()
    )]
    HandshakeTimeout {
        /// The peer.
        peer: SocketAddr,
        /// How long the connection had been open.
        after: Duration,
        /// The setting that controls the limit.
        setting: String,
    },

    /// An accepted connection still in its handshake was closed to make room for others: the
    /// server was at its connection cap or out of file descriptors, and this one had waited
    /// longest.
    #[error(
        "Connection from {peer} was closed in its handshake to make room for others (the server was at rpc.io.maxInboundConnections or out of file descriptors)"
    )]
    Shed {
        /// The peer.
        peer: SocketAddr,
    },

    /// Part of a frame arrived, then nothing for the connection timeout; the connection was
    /// closed.
    #[error(
        "Connection from {peer} sent part of a frame and then nothing for {} ms; closed (the limit is set by {setting})",
        quiet.as_millis()
    )]
    StalledFrame {
        /// The peer.
        peer: SocketAddr,
        /// How long nothing arrived.
        quiet: Duration,
        /// The setting that controls the limit.
        setting: String,
    },

    /// A stream announced more bytes than the reader accepts whole.
    #[error("Stream '{stream_id}' announces {len} bytes, more than the {limit} bytes this reader collects")]
    StreamTooLarge {
        /// The stream id.
        stream_id: String,
        /// The announced length.
        len: u64,
        /// The caller's limit.
        limit: u64,
    },

    /// Connecting took longer than the connect timeout.
    #[error("Connecting to {addr} timed out ({} ms)", timeout.as_millis())]
    ConnectTimeout {
        /// `host:port` of the peer.
        addr: String,
        /// The timeout in force.
        timeout: Duration,
    },

    /// Connecting failed.
    #[error("Failed to connect to {addr}: {source}")]
    ConnectFailed {
        /// `host:port` of the peer.
        addr: String,
        /// The cause.
        #[source]
        source: Arc<io::Error>,
    },

    /// A connect to this peer failed recently; this one fails at once (Spark's fast fail).
    #[error(
        "Connecting to {addr} failed in the last {} ms, fail this connection directly",
        window.as_millis()
    )]
    FastFail {
        /// `host:port` of the peer.
        addr: String,
        /// The fast-fail window in force.
        window: Duration,
    },

    /// A per-connection bootstrap (auth handshake, cipher setup) failed.
    #[error("Bootstrap of the connection with {peer} failed: {message}")]
    Bootstrap {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        message: String,
    },

    /// Authentication with the peer failed: a wrong secret or app id, a peer that does not
    /// authenticate, a refused or malformed handshake, or no answer within
    /// `spark.network.auth.rpcTimeout`. The connection is closed.
    #[error("Authentication with {peer} failed: {reason}")]
    AuthFailed {
        /// The peer.
        peer: SocketAddr,
        /// Why (never contains key material).
        reason: String,
    },

    /// The TLS handshake with the peer failed or timed out. The connection is closed.
    #[error("TLS handshake with {peer} failed: {reason}")]
    Tls {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },

    /// Security settings (TLS material, auth settings) are invalid or unreadable.
    #[error("Invalid security configuration: {reason}")]
    SecurityConfig {
        /// What is wrong, naming the setting or file.
        reason: String,
    },

    /// The peer answered an RPC (or upload, or merged-block-meta request) with RpcFailure.
    #[error("{message}")]
    RpcFailure {
        /// The peer.
        peer: SocketAddr,
        /// The failed request.
        request_id: i64,
        /// The error text the peer sent (Spark sends a stack trace).
        message: String,
    },

    /// The peer answered a stream request with StreamFailure.
    #[error("{message}")]
    StreamFailure {
        /// The peer.
        peer: SocketAddr,
        /// The stream id.
        stream_id: String,
        /// The error text the peer sent.
        message: String,
    },

    /// The peer answered a chunk fetch with ChunkFetchFailure.
    #[error(
        "Failure while fetching StreamChunkId[streamId={stream_id},chunkIndex={chunk_index}]: \
         {message}"
    )]
    ChunkFetchFailure {
        /// The peer.
        peer: SocketAddr,
        /// The stream id.
        stream_id: i64,
        /// The chunk index.
        chunk_index: i32,
        /// The error text the peer sent.
        message: String,
    },

    /// A newer fetch of the same chunk replaced this one.
    #[error("Fetch of StreamChunkId[streamId={stream_id},chunkIndex={chunk_index}] from {peer} was superseded by a newer fetch of the same chunk")]
    ChunkFetchSuperseded {
        /// The peer.
        peer: SocketAddr,
        /// The stream id.
        stream_id: i64,
        /// The chunk index.
        chunk_index: i32,
    },

    /// A blocking wait for a response timed out (the request was removed).
    #[error("Timed out after {} ms waiting for the response to RPC {request_id} from {peer}", after.as_millis())]
    Timeout {
        /// The peer.
        peer: SocketAddr,
        /// The request id.
        request_id: i64,
        /// How long it waited.
        after: Duration,
    },

    /// Binding the server failed (after port retries, as Spark's `startServiceOnPort`).
    #[error("{message}")]
    BindFailed {
        /// The service name.
        service: String,
        /// The first port tried.
        port: u16,
        /// The full message, naming the service and the `spark.port.maxRetries` setting.
        message: String,
        /// The last bind error.
        #[source]
        source: Arc<io::Error>,
    },

    /// A port outside 0 and 1024..=65535 was requested.
    #[error("port should be between 1024 and 65535 (inclusive), or 0 for a random free port, got {port}")]
    InvalidPort {
        /// The port.
        port: u16,
    },

    /// The client factory was closed.
    #[error("The TransportClientFactory is closed; cannot create a client for {addr}")]
    FactoryClosed {
        /// `host:port` requested.
        addr: String,
    },

    /// A blocking call was made on a tokio runtime thread, where it could deadlock.
    #[error("{operation} blocks and cannot be called from inside a tokio runtime; use the async variant")]
    BlockingInRuntime {
        /// The blocking operation.
        operation: &'static str,
    },

    /// A stream body was cut short (the connection failed while it was arriving).
    #[error("Stream '{stream_id}' from {peer} ended after {received} of {expected} bytes")]
    StreamTruncated {
        /// The peer.
        peer: SocketAddr,
        /// The stream id.
        stream_id: String,
        /// Bytes received.
        received: u64,
        /// Bytes announced.
        expected: u64,
    },
}

impl TransportError {
    pub(crate) fn io(peer: SocketAddr, source: io::Error) -> Self {
        TransportError::Io {
            peer,
            source: Arc::new(source),
        }
    }

    /// True for errors that describe malformed input from the peer.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            TransportError::BadInput { .. }
                | TransportError::InvalidFrameLength { .. }
                | TransportError::FrameTooLarge { .. }
                | TransportError::UnknownMessageType { .. }
                | TransportError::MalformedMessage { .. }
                | TransportError::TruncatedFrame { .. }
        )
    }
}

/// The transport layer's result type.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;
