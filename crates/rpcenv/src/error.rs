//! [`RpcError`], the one error type of the rpc layer, and [`Failure`], what an endpoint answers
//! an ask with when it fails it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::address::AddressError;
use crate::conf::ConfError;

/// Any error, as handlers return it (`?` converts most errors into it).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error shared between the asker and `on_error`.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What an endpoint's handler returns.
pub type HandlerResult = Result<(), BoxError>;

/// Why an ask was answered with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler called [`RpcCallContext::send_failure`](crate::RpcCallContext::send_failure).
    Reported,
    /// The handler returned an error.
    Handler,
    /// The handler panicked.
    Panic,
    /// The endpoint does not implement `receive_and_reply`.
    NotImplemented,
    /// The reply could not be serialized (remote asks).
    Serialization,
}

/// The failure an endpoint answered an ask with.
///
/// Its message always travels; across the wire only the kind and message do. Locally the original
/// error is kept as [`source`](Self::source), so it can be downcast.
#[derive(Clone)]
pub struct Failure {
    kind: FailureKind,
    message: String,
    source: Option<SharedError>,
}

impl Failure {
    /// A failure of `kind` with `message` and no source.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn from_error(kind: FailureKind, error: SharedError) -> Self {
        Failure {
            kind,
            message: error.to_string(),
            source: Some(error),
        }
    }

    /// Why.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The failure's message (the error's `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The original error, for a failure raised in this process.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Everything that can go wrong in the rpc layer. Each variant carries the context needed to act
/// on it: the endpoint, the address, the setting to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// A wait ran out. The message names the setting that controls it.
    #[error("{description}. This timeout is controlled by {setting}")]
    Timeout {
        /// What was waited for, e.g. "Cannot receive any reply from X in 1s".
        description: String,
        /// How long was waited.
        after: Duration,
        /// The setting that controls this timeout.
        setting: String,
    },
    /// No endpoint of that name exists at that address.
    #[error("Cannot find endpoint: {uri}")]
    EndpointNotFound {
        /// The endpoint's full URI.
        uri: String,
    },
    /// The endpoint has been stopped; the message was not delivered.
    #[error("endpoint {name} is stopped; the message was not delivered")]
    EndpointStopped {
        /// The endpoint's name.
        name: String,
    },
    /// The env has been shut down.
    #[error("RpcEnv already stopped")]
    EnvStopped,
    /// An endpoint of that name is already registered in this env.
    #[error("There is already an RpcEndpoint called {name}")]
    AlreadyRegistered {
        /// The name.
        name: String,
    },
    /// The endpoint answered the ask with a failure.
    #[error("endpoint {endpoint} failed the ask: {failure}")]
    Failed {
        /// The endpoint's name.
        endpoint: String,
        /// The failure it answered with.
        #[source]
        failure: Failure,
    },
    /// A handler returned an error (as `on_error` sees it).
    #[error("handler of endpoint {endpoint} failed: {source}")]
    Handler {
        /// The endpoint's name.
        endpoint: String,
        /// The error the handler returned.
        #[source]
        source: SharedError,
    },
    /// A handler panicked (as `on_error` sees it). The message loop survived.
    #[error("handler of endpoint {endpoint} panicked: {message}")]
    Panicked {
        /// The endpoint's name.
        endpoint: String,
        /// The panic's message.
        message: String,
    },
    /// The endpoint received a message it has no handler for.
    #[error("{endpoint} does not implement '{method}'")]
    NotImplemented {
        /// The endpoint's name.
        endpoint: String,
        /// The missing method.
        method: &'static str,
    },
    /// The reply was of another type than the asker expected.
    #[error("endpoint {endpoint} replied with a {actual} but the ask expected a {expected}")]
    UnexpectedReplyType {
        /// The endpoint's name.
        endpoint: String,
        /// The type `ask::<R>` named.
        expected: &'static str,
        /// The type of the reply.
        actual: String,
    },
    /// The endpoint dropped the call context without replying.
    #[error("endpoint {endpoint} dropped the RpcCallContext without replying")]
    NoReply {
        /// The endpoint's name.
        endpoint: String,
    },
    /// The ask was aborted by its caller.
    #[error("ask to {endpoint} was aborted: {reason}")]
    Aborted {
        /// The endpoint's URI.
        endpoint: String,
        /// The reason given to `abort`.
        #[source]
        reason: SharedError,
    },
    /// All attempts of `ask_with_retry` failed.
    #[error("ask to {endpoint} failed after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// The endpoint's URI.
        endpoint: String,
        /// Attempts made (the setting `rpc.numRetries`).
        attempts: u32,
        /// The last attempt's error.
        #[source]
        last: Box<RpcError>,
    },
    /// A lookup named a message type other than the endpoint's.
    #[error("endpoint {uri} speaks {actual}, but the lookup expected {expected}")]
    MessageTypeMismatch {
        /// The endpoint's URI.
        uri: String,
        /// The protocol name of the message type the lookup named.
        expected: String,
        /// The protocol name of the endpoint's message type.
        actual: String,
    },
    /// The connection to a peer could not be opened, or broke; messages queued for it failed.
    #[error("connection to {peer} failed: {source}")]
    Connection {
        /// The peer's address.
        peer: String,
        /// The transport's error.
        #[source]
        source: rpcenv_transport::TransportError,
    },
    /// A message is larger than `rpc.message.maxSize`; nothing was sent.
    #[error("message of {size} bytes exceeds the maximum of {max} bytes; raise rpc.message.maxSize to send it")]
    MessageTooLarge {
        /// The serialized size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Too many bytes wait to be sent to that peer; the message was not queued. Retry later, use
    /// `send_async` (which waits for room), or raise `rpc.outbox.maxBytes`.
    #[error("the outbox to {peer} is full ({queued} bytes wait to be sent, limit {max}); retry, use send_async, or raise rpc.outbox.maxBytes")]
    QueueFull {
        /// The peer's address.
        peer: String,
        /// Bytes waiting.
        queued: usize,
        /// The limit (`rpc.outbox.maxBytes`).
        max: usize,
    },
    /// A message or reply could not be serialized; nothing was sent.
    #[error("cannot serialize a message to {endpoint}: {message}")]
    Serialization {
        /// The endpoint's URI.
        endpoint: String,
        /// The serializer's error.
        message: String,
    },
    /// The remote env is shutting down.
    #[error("the RpcEnv at {peer} is stopped")]
    RemoteEnvStopped {
        /// The peer's address.
        peer: String,
    },
    /// The peer could not decode the request, or this env could not decode the answer.
    #[error("bad request or reply exchanged with {peer}: {message}")]
    BadRequest {
        /// The peer's address.
        peer: String,
        /// What could not be decoded.
        message: String,
    },
    /// A ref to an endpoint of a client-mode env, with no connection to reach it over (e.g. it
    /// was forwarded by a third env).
    #[error("Cannot send message to client endpoint {uri} with no listen address: it is a client-mode endpoint of another connection, reachable only over the connection its env opened, which this env does not hold")]
    ClientEndpointUnreachable {
        /// The endpoint's URI.
        uri: String,
    },
    /// A blocking ask from a handler that could only be answered after that handler returned.
    #[error("ask_sync to {endpoint} would deadlock: {reason}; answer from a task (`ask(..).await`) or reply later instead")]
    Deadlock {
        /// The endpoint asked.
        endpoint: String,
        /// The chain of endpoints waiting for each other.
        reason: String,
    },
    /// A blocking call was made on a tokio runtime thread.
    #[error("{operation} blocks and was called on a tokio runtime thread, where it could deadlock; use the async form instead (e.g. `ask(..).await`)")]
    BlockingInAsyncContext {
        /// The blocking call.
        operation: &'static str,
    },
    /// The operation needs a server-mode env (one that listens), e.g. its file server.
    #[error(
        "{operation} needs a server-mode RpcEnv; this one is in client mode (it does not listen)"
    )]
    ClientMode {
        /// The operation.
        operation: &'static str,
    },
    /// A file or jar of this name is already served from another file (Spark's text, whose
    /// closing parenthesis is missing).
    #[error("File {name} was already registered with a different path (old path = {old}, new path = {new}")]
    FileAlreadyRegistered {
        /// The file name (the key of the URI).
        name: String,
        /// The canonical path already served.
        old: String,
        /// The canonical path refused.
        new: String,
    },
    /// `/files` and `/jars` are the file server's own prefixes, not directories.
    #[error("Directory URI cannot be /files nor /jars.")]
    ReservedDirectoryUri {
        /// The base URI given.
        uri: String,
    },
    /// A directory is already served under this base URI.
    #[error("URI '{uri}' already registered.")]
    DirectoryUriTaken {
        /// The normalised base URI.
        uri: String,
    },
    /// A file URI that cannot be opened: Spark's `Host name must be defined.`, `Port must be
    /// defined.`, `Path must be defined.`, or what is malformed.
    #[error("{reason} ({uri})")]
    InvalidFileUri {
        /// The URI given.
        uri: String,
        /// What is missing or malformed.
        reason: String,
    },
    /// The peer answered a stream request with a failure, e.g. Spark's
    /// `Stream '/files/x' was not found.` (the text is the peer's, unchanged).
    #[error("{message}")]
    StreamFailed {
        /// The peer's address.
        peer: String,
        /// The stream id asked for.
        stream_id: String,
        /// The peer's error text.
        message: String,
    },
    /// A local file could not be read, written or resolved.
    #[error("{path}: {source}")]
    FileIo {
        /// The file.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// An invalid RPC URL.
    #[error(transparent)]
    InvalidAddress(#[from] AddressError),
    /// An invalid setting.
    #[error(transparent)]
    Conf(#[from] ConfError),
    /// The env could not be built.
    #[error("cannot start RpcEnv {name}: {reason}")]
    Startup {
        /// The env's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A chunk fetch, stream read or upload failed: the server refused it (the transport error
    /// carries its text), or the connection broke.
    #[error("{what} from {peer} failed: {source}")]
    Transfer {
        /// What was transferred, e.g. `chunk 3 of stream 7000`, `stream '7000_3'`.
        what: String,
        /// The peer's address.
        peer: String,
        /// The transport's error (boxed: it is larger than the other variants' fields).
        #[source]
        source: Box<rpcenv_transport::TransportError>,
    },
    /// An upload receiver of that name is already registered in this env.
    #[error("There is already an upload receiver called {name}")]
    UploadReceiverExists {
        /// The name.
        name: String,
    },
}

impl RpcError {
    /// Whether this is a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RpcError::Timeout { .. })
    }

    /// The failure an endpoint answered with, if this is one.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            RpcError::Failed { failure, .. } => Some(failure),
            _ => None,
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}
