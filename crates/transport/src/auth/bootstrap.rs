//! The auth handshake on a raw connection, before framing starts (Spark: `AuthClientBootstrap` /
//! `AuthRpcHandler`): one plaintext
//! RpcRequest carrying the client's challenge, one plaintext RpcResponse carrying the server's
//! answer, then both sides switch to the session cipher.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ctr::CtrStream;
use super::engine::{server_response, ClientEngine, EngineError, SessionKeys};
use super::gcm::GcmStream;
use super::message::AuthMessage;
use super::{AuthCipher, AuthConf, AUTHENTICATION_FAILED, UNKNOWN_CHALLENGE};
use crate::bootstrap::{BootstrapFuture, BoxedIo, ClientBootstrap, ServerBootstrap};
use crate::error::TransportError;
use crate::message::{type_name, Message};

/// The largest handshake frame body accepted (an AuthMessage is about 100 bytes; a JVM's
/// RpcFailure carries a stack trace).
const MAX_HANDSHAKE_FRAME: usize = 1 << 20;
/// The largest challenge body the server reads; a larger first RpcRequest is not a challenge.
const MAX_CHALLENGE: usize = 64 * 1024;
/// RpcRequest header after the frame length and type: request id + body length.
const RPC_REQUEST_HEADER: usize = 8 + 4;

fn failed(peer: SocketAddr, reason: impl Into<String>) -> TransportError {
    TransportError::AuthFailed {
        peer,
        reason: reason.into(),
    }
}

fn io_failed(peer: SocketAddr, what: &str, e: std::io::Error) -> TransportError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        failed(
            peer,
            format!("the connection closed during authentication ({what})"),
        )
    } else {
        failed(
            peer,
            format!("I/O error during authentication ({what}): {e}"),
        )
    }
}

fn timeout_reason(after: Duration) -> String {
    format!(
        "the handshake did not complete within {} ms (spark.network.auth.rpcTimeout)",
        after.as_millis()
    )
}

/// Put the session cipher (if any) between the socket and framing.
fn wrap(
    io: BoxedIo,
    peer: SocketAddr,
    conf: &AuthConf,
    keys: &SessionKeys,
    client: bool,
) -> BoxedIo {
    if !conf.encrypt {
        return io;
    }
    match conf.cipher {
        AuthCipher::Ctr => {
            let (in_iv, out_iv) = if client {
                (&keys.client_iv, &keys.server_iv)
            } else {
                (&keys.server_iv, &keys.client_iv)
            };
            Box::new(CtrStream::new(io, peer, &keys.key, in_iv, out_iv))
        }
        AuthCipher::Gcm => Box::new(GcmStream::new(io, peer, &keys.key)),
    }
}

/// The client side: authenticates every connection a client factory opens.
#[derive(Debug, Clone)]
pub struct AuthClientBootstrap {
    conf: Arc<AuthConf>,
}

impl AuthClientBootstrap {
    /// A bootstrap using `conf`.
    pub fn new(conf: AuthConf) -> Self {
        AuthClientBootstrap {
            conf: Arc::new(conf),
        }
    }
}

impl ClientBootstrap for AuthClientBootstrap {
    fn bootstrap<'a>(&'a self, peer: SocketAddr, io: BoxedIo) -> BootstrapFuture<'a> {
        Box::pin(async move {
            let after = self.conf.rpc_timeout;
            match tokio::time::timeout(after, client_handshake(&self.conf, peer, io)).await {
                Ok(r) => r,
                Err(_) => Err(failed(peer, timeout_reason(after))),
            }
        })
    }
}

async fn client_handshake(
    conf: &AuthConf,
    peer: SocketAddr,
    mut io: BoxedIo,
) -> Result<BoxedIo, TransportError> {
    let engine = ClientEngine::new(&conf.app_id, conf.secret.expose());
    let request_id = rand::random::<i64>() & i64::MAX;
    let frame = Message::RpcRequest {
        request_id,
        body: Bytes::from(engine.challenge().to_vec()),
    }
    .to_bytes();
    io.write_all(&frame)
        .await
        .map_err(|e| io_failed(peer, "sending the challenge", e))?;
    io.flush()
        .await
        .map_err(|e| io_failed(peer, "sending the challenge", e))?;
    let mut len = [0u8; 8];
    io.read_exact(&mut len)
        .await
        .map_err(|e| io_failed(peer, "waiting for the server's answer", e))?;
    let len = i64::from_be_bytes(len);
    if len <= 8 || len - 8 > MAX_HANDSHAKE_FRAME as i64 {
        return Err(failed(
            peer,
            format!("the server answered with an impossible frame length {len}"),
        ));
    }
    let mut content = vec![0u8; (len - 8) as usize];
    io.read_exact(&mut content)
        .await
        .map_err(|e| io_failed(peer, "reading the server's answer", e))?;
    let reply = Message::decode(Bytes::from(content)).map_err(|e| {
        failed(
            peer,
            format!("the server's answer is not a valid frame: {e}"),
        )
    })?;
    let body = match reply {
        Message::RpcResponse {
            request_id: id,
            body,
        } if id == request_id => body,
        Message::RpcFailure { error, .. } => {
            let first = error.lines().next().unwrap_or_default();
            return Err(failed(peer, format!("the server refused: {first}")));
        }
        other => {
            return Err(failed(
                peer,
                format!(
                    "the server answered the challenge with an unexpected {}",
                    other.type_name()
                ),
            ))
        }
    };
    let response = AuthMessage::decode(&body).map_err(|e| {
        failed(
            peer,
            format!(
                "the server's answer is not an auth message ({}); does it have authentication on?",
                e.0
            ),
        )
    })?;
    let keys = engine
        .finish(&response, conf.version)
        .map_err(|e| match e {
            EngineError::DecryptFailed => failed(
                peer,
                "the server's answer did not decrypt: the secrets differ, or the server does not \
             authenticate",
            ),
            other => failed(peer, other.to_string()),
        })?;
    tracing::debug!(%peer, cipher = ?conf.cipher, version = conf.version.number(), encrypt = conf.encrypt, "authenticated the connection");
    Ok(wrap(io, peer, conf, &keys, true))
}

/// The server side: authenticates every accepted connection before the handler sees anything.
#[derive(Debug, Clone)]
pub struct AuthServerBootstrap {
    conf: Arc<AuthConf>,
}

impl AuthServerBootstrap {
    /// A bootstrap using `conf`.
    pub fn new(conf: AuthConf) -> Self {
        AuthServerBootstrap {
            conf: Arc::new(conf),
        }
    }
}

impl ServerBootstrap for AuthServerBootstrap {
    fn bootstrap<'a>(&'a self, peer: SocketAddr, io: BoxedIo) -> BootstrapFuture<'a> {
        Box::pin(async move {
            let after = self.conf.rpc_timeout;
            match tokio::time::timeout(after, server_handshake(&self.conf, peer, io)).await {
                Ok(r) => r,
                Err(_) => Err(failed(peer, timeout_reason(after))),
            }
        })
    }
}

/// Answer RpcFailure `text`, close the write side and let the peer read it before the socket
/// goes (dropping a socket with unread input would reset the connection and lose the answer).
async fn refuse(mut io: BoxedIo, request_id: i64, text: &str) {
    let frame = Message::RpcFailure {
        request_id,
        error: text.to_string(),
    }
    .to_bytes();
    let _ = io.write_all(&frame).await;
    let _ = io.flush().await;
    let _ = io.shutdown().await;
    let linger = async {
        let mut sink = [0u8; 8192];
        let mut total = 0usize;
        while total < (1 << 20) {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
}

async fn server_handshake(
    conf: &AuthConf,
    peer: SocketAddr,
    mut io: BoxedIo,
) -> Result<BoxedIo, TransportError> {
    let mut head = [0u8; 9];
    io.read_exact(&mut head)
        .await
        .map_err(|e| io_failed(peer, "waiting for the client's challenge", e))?;
    let len = i64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
    let type_id = head[8];
    if type_id != 3 {
        return Err(failed(
            peer,
            format!(
                "the client sent {} before authenticating; connection closed without a reply",
                type_name(type_id)
            ),
        ));
    }
    let min = (8 + 1 + RPC_REQUEST_HEADER) as i64;
    if len < min {
        return Err(failed(
            peer,
            format!("the client's first frame has an impossible length {len}; connection closed"),
        ));
    }
    let mut header = [0u8; RPC_REQUEST_HEADER];
    io.read_exact(&mut header)
        .await
        .map_err(|e| io_failed(peer, "reading the client's challenge", e))?;
    let request_id = i64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
    let body_len = (len - min) as u64;
    if body_len > MAX_CHALLENGE as u64 {
        refuse(io, request_id, UNKNOWN_CHALLENGE).await;
        return Err(failed(
            peer,
            format!("the client's first RpcRequest ({body_len} bytes) is not an auth challenge; answered \"{UNKNOWN_CHALLENGE}\" and closed"),
        ));
    }
    let mut body = vec![0u8; body_len as usize];
    io.read_exact(&mut body)
        .await
        .map_err(|e| io_failed(peer, "reading the client's challenge", e))?;
    let challenge = match AuthMessage::decode(&body) {
        Ok(c) => c,
        Err(e) => {
            refuse(io, request_id, UNKNOWN_CHALLENGE).await;
            return Err(failed(
                peer,
                format!("the client's first RpcRequest is not an auth challenge ({}); answered \"{UNKNOWN_CHALLENGE}\" and closed", e.0),
            ));
        }
    };
    let (response, keys) =
        match server_response(&conf.app_id, conf.secret.expose(), &challenge, conf.version) {
            Ok(r) => r,
            Err(e) => {
                refuse(io, request_id, AUTHENTICATION_FAILED).await;
                return Err(failed(
                    peer,
                    format!("{e}; answered \"{AUTHENTICATION_FAILED}\" and closed"),
                ));
            }
        };
    let frame = Message::RpcResponse {
        request_id,
        body: Bytes::from(response.to_vec()),
    }
    .to_bytes();
    io.write_all(&frame)
        .await
        .map_err(|e| io_failed(peer, "sending the answer", e))?;
    io.flush()
        .await
        .map_err(|e| io_failed(peer, "sending the answer", e))?;
    tracing::debug!(%peer, cipher = ?conf.cipher, version = conf.version.number(), encrypt = conf.encrypt, "authenticated the client");
    Ok(wrap(io, peer, conf, &keys, false))
}
