//! Spark network-common's frame protocol over tokio: frames, codec, server, client, client pool.
//!
//! Byte-compatible with Spark's `TransportClient` / `TransportServer` at the frame layer
//! (catalog §5.1). Knows bytes and request ids, nothing of endpoints.
//!
//! - [`Message`] / [`FrameDecoder`]: the 13 message types and the frame decoder (socket-free).
//! - [`TransportServer`]: bind with Spark's port retries, accept, serve an [`RpcHandler`].
//! - [`TransportClient`]: requests over one connection (either side can issue them).
//! - [`TransportClientFactory`]: pooled connections per peer, connect timeout, fast fail.
//! - [`ClientBootstrap`] / [`ServerBootstrap`]: the seam for auth handshakes and ciphers.
//! - [`auth`]: Spark's AES authentication and session ciphers (CTR, GCM), and SASL
//!   (DIGEST-MD5 with SASL encryption), as bootstraps.
//! - [`tls`]: TLS (rustls) as bootstraps.

pub mod auth;
mod bootstrap;
mod client;
mod codec;
mod conf;
mod connection;
mod error;
mod factory;
pub mod frame;
mod handler;
pub mod message;
mod response;
mod server;
mod socket;
pub mod tls;

pub use auth::{
    AuthCipher, AuthClientBootstrap, AuthConf, AuthServerBootstrap, AuthVersion,
    SaslClientBootstrap, SaslConf, SaslServerBootstrap, Secret,
};
pub use bootstrap::{AsyncIo, BootstrapFuture, BoxedIo, ClientBootstrap, ServerBootstrap};
pub use client::{ByteStream, ResponseFuture, RpcFuture, TransportClient};
pub use codec::WriteQueue;
pub use conf::{TransportConf, SPARK_MAX_FRAME_BODY};
pub use error::{Result, TransportError};
pub use factory::TransportClientFactory;
pub use frame::{Decoded, FrameDecoder};
pub use handler::{NoOpRpcHandler, RpcHandler, RpcResponder};
pub use message::{Message, StreamChunkId};
pub use response::RpcCallback;
pub use server::{bind_with_retries, port_for_attempt, TransportServer};
pub use tls::{TlsClientBootstrap, TlsConf, TlsProtocol, TlsServerBootstrap, TlsTrust};
