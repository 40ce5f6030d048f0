//! Spark network-common's frame protocol over tokio: frames, codec, server, client, client pool.
//!
//! Byte-compatible with Spark's `TransportClient` / `TransportServer` at the frame layer
//! (Spark: `MessageEncoder` / `TransportFrameDecoder`). Knows bytes and request ids, nothing of
//! endpoints.
//!
//! - [`Message`] / [`FrameDecoder`]: the 13 message types and the frame decoder (socket-free).
//! - [`TransportServer`]: bind with Spark's port retries, accept, serve an [`RpcHandler`].
//! - [`TransportClient`]: requests over one connection (either side can issue them).
//! - [`TransportClientFactory`]: pooled connections per peer, connect timeout, fast fail.
//! - [`ClientBootstrap`] / [`ServerBootstrap`]: the seam for auth handshakes and ciphers.
//! - [`auth`]: Spark's AES authentication and session ciphers (CTR, GCM), and SASL
//!   (DIGEST-MD5 with SASL encryption), as bootstraps.
//! - [`tls`]: TLS (rustls) as bootstraps.
//! - [`metrics`]: what the transport counts (connections, bytes, frames, auth failures), through
//!   the `metrics` facade (feature `metrics`, on by default).
//!
//! # Layers
//!
//! Modules import only from their own layer or the layers below it, never upward, and no two
//! modules import each other (the table in the repository's `ARCHITECTURE.md` is the rule; the
//! `layering` test of the `rpcenv` crate checks every `crate::` path against it):
//!
//! 1. wire: `error`, `conf`, `metrics`, `message`, `frame`, `codec`, `body`, `budget`,
//!    `liveness`, `connection_state` (bytes, frames and the connection's protocol decisions;
//!    no sockets, no clocks);
//! 2. routing: `response` (outstanding requests, matching answers), `command` (what handles
//!    queue for a connection's task);
//! 3. handles: `client`, `handler` (the request handler trait and the RPC responder);
//! 4. io: `connection` (the task that owns a socket), `server`, `factory`, `socket`,
//!    `bootstrap`, `auth`, `tls`.

pub mod auth;
mod body;
mod bootstrap;
mod budget;
mod client;
mod codec;
mod command;
mod conf;
mod connection;
mod connection_state;
mod error;
mod factory;
pub mod frame;
mod handler;
mod liveness;
pub mod message;
pub mod metrics;
mod response;
mod server;
mod socket;
pub mod tls;

pub use auth::{
    AuthCipher, AuthClientBootstrap, AuthConf, AuthServerBootstrap, AuthVersion,
    SaslClientBootstrap, SaslConf, SaslServerBootstrap, Secret,
};
pub use body::{BodySource, FileRegion, ReplyBody, BODY_PIECE};
pub use bootstrap::{AsyncIo, BootstrapFuture, BoxedIo, ClientBootstrap, ServerBootstrap};
pub use budget::BudgetHold;
pub use client::{ResponseFuture, RpcFuture, TransportClient, WriteNow};
pub use codec::WriteQueue;
pub use conf::{TransportConf, SPARK_MAX_FRAME_BODY};
pub use error::{Result, TransportError};
pub use factory::TransportClientFactory;
pub use frame::{Decoded, FrameDecoder};
pub use handler::{NoOpRpcHandler, RpcHandler, RpcResponder};
pub use message::{Body, Message, StreamChunkId};
pub use response::{ByteStream, RpcCallback};
pub use server::{bind_with_retries, port_for_attempt, TransportServer};
pub use tls::{TlsClientBootstrap, TlsConf, TlsProtocol, TlsServerBootstrap, TlsTrust};
