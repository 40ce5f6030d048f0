//! The per-connection bootstrap seam: a step that runs on the raw connection before normal
//! traffic (an auth handshake), and may replace the byte stream with a wrapper (a cipher layer
//! between socket and framing). The codec never knows.
//!
//! A bootstrap may speak frames itself with [`crate::Message`] and [`crate::FrameDecoder`]
//! (Spark's auth sends its handshake as ordinary RpcRequest / RpcResponse frames). Bytes it read
//! past its handshake must be handed back through the returned stream.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::TransportError;

/// A byte stream a connection can run over.
pub trait AsyncIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncIo for T {}

/// A boxed byte stream (the socket, or a wrapper around it).
pub type BoxedIo = Box<dyn AsyncIo>;

/// The future a bootstrap returns.
pub type BootstrapFuture<'a> =
    Pin<Box<dyn Future<Output = Result<BoxedIo, TransportError>> + Send + 'a>>;

/// Runs on every connection a client factory opens, after connect, before the connection is
/// handed out. A failure closes the connection and fails `create_client`.
pub trait ClientBootstrap: Send + Sync + 'static {
    /// Bootstrap the connection to `peer`; return the stream to use from now on.
    fn bootstrap<'a>(&'a self, peer: SocketAddr, io: BoxedIo) -> BootstrapFuture<'a>;

    /// As [`ClientBootstrap::bootstrap`], knowing the host name the connection was made to
    /// (TLS checks the server's certificate against it). The default ignores the name.
    fn bootstrap_to<'a>(
        &'a self,
        host: &'a str,
        peer: SocketAddr,
        io: BoxedIo,
    ) -> BootstrapFuture<'a> {
        let _ = host;
        self.bootstrap(peer, io)
    }
}

/// Runs on every connection a server accepts, before any message reaches the handler. A
/// failure closes that connection only.
pub trait ServerBootstrap: Send + Sync + 'static {
    /// Bootstrap the connection from `peer`; return the stream to use from now on.
    fn bootstrap<'a>(&'a self, peer: SocketAddr, io: BoxedIo) -> BootstrapFuture<'a>;
}
