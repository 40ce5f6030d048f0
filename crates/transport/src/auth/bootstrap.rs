//! The auth handshake on a raw connection, before framing starts (Spark: `AuthClientBootstrap` /
//! `AuthRpcHandler`): one plaintext
//! RpcRequest carrying the client's challenge, one plaintext RpcResponse carrying the server's
//! answer, then both sides switch to the session cipher.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use super::ctr::CtrStream;
use super::engine::{server_response, ClientEngine, EngineError, SessionKeys};
use super::gcm::GcmStream;
use super::message::AuthMessage;
use super::sasl::{self, SaslConf, EXPECTED_SASL_MESSAGE};
use super::wire::{bounded, call, failed, io_failed, refuse, send, timeout_reason, Reply};
use super::{AuthCipher, AuthConf, AUTHENTICATION_FAILED, UNKNOWN_CHALLENGE};
use crate::bootstrap::{BootstrapFuture, BoxedIo, ClientBootstrap, ServerBootstrap};
use crate::error::TransportError;
use crate::message::{type_name, Message};

/// The largest challenge body the server reads; a larger first RpcRequest is not a challenge.
const MAX_CHALLENGE: usize = 64 * 1024;
/// RpcRequest header after the frame length and type: request id + body length.
const RPC_REQUEST_HEADER: usize = 8 + 4;

fn rpc_failure(request_id: i64, text: &str) -> Message {
    Message::RpcFailure {
        request_id,
        error: text.to_string(),
    }
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
    sasl_fallback: Option<Arc<SaslConf>>,
}

impl AuthClientBootstrap {
    /// A bootstrap using `conf`.
    pub fn new(conf: AuthConf) -> Self {
        AuthClientBootstrap {
            conf: Arc::new(conf),
            sasl_fallback: None,
        }
    }

    /// Retry with SASL on the same connection when the AES handshake fails other than by
    /// timing out (`spark.network.crypto.saslFallback`), as Spark's `AuthClientBootstrap` does.
    pub fn with_sasl_fallback(mut self, sasl: SaslConf) -> Self {
        self.sasl_fallback = Some(Arc::new(sasl));
        self
    }
}

impl ClientBootstrap for AuthClientBootstrap {
    fn bootstrap<'a>(&'a self, peer: SocketAddr, mut io: BoxedIo) -> BootstrapFuture<'a> {
        Box::pin(async move {
            let conf = &self.conf;
            let after = conf.rpc_timeout;
            let aes_error =
                match tokio::time::timeout(after, client_exchange(conf, peer, &mut io)).await {
                    Ok(Ok(keys)) => return Ok(wrap(io, peer, conf, &keys, true)),
                    Ok(Err(e)) => e,
                    Err(_) => return Err(failed(peer, timeout_reason(after))),
                };
            let Some(sasl_conf) = &self.sasl_fallback else {
                return Err(aes_error);
            };
            tracing::debug!(%peer, error = %aes_error, "AES authentication failed; falling back to SASL");
            let sasl_after = sasl_conf.rpc_timeout;
            match tokio::time::timeout(sasl_after, sasl::client_handshake(sasl_conf, peer, io))
                .await
            {
                Ok(Ok(io)) => Ok(io),
                Ok(Err(e)) => Err(failed(
                    peer,
                    format!("AES authentication failed ({aes_error}), and so did the SASL fallback ({e})"),
                )),
                Err(_) => Err(failed(
                    peer,
                    format!(
                        "AES authentication failed ({aes_error}); the SASL fallback: {}",
                        timeout_reason(sasl_after)
                    ),
                )),
            }
        })
    }
}

/// The AES exchange: one challenge, one answer; the session keys.
async fn client_exchange(
    conf: &AuthConf,
    peer: SocketAddr,
    io: &mut BoxedIo,
) -> Result<SessionKeys, TransportError> {
    let engine = ClientEngine::new(&conf.app_id, conf.secret.expose());
    let body = match call(io, peer, engine.challenge().to_vec(), "the AES challenge").await? {
        Reply::Accepted(body) => body,
        Reply::Refused(text) if text.contains(EXPECTED_SASL_MESSAGE) => {
            return Err(failed(
                peer,
                format!(
                    "the server refused: {text}: it authenticates with SASL only; set \
                     network.crypto.enabled=false on this side to use SASL (or leave \
                     network.crypto.saslFallback=true to fall back to it)"
                ),
            ))
        }
        Reply::Refused(text) => return Err(failed(peer, format!("the server refused: {text}"))),
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
    Ok(keys)
}

/// The server side: authenticates every accepted connection before the handler sees anything.
#[derive(Debug, Clone)]
pub struct AuthServerBootstrap {
    conf: Arc<AuthConf>,
    sasl_fallback: Option<Arc<SaslConf>>,
}

impl AuthServerBootstrap {
    /// A bootstrap using `conf`.
    pub fn new(conf: AuthConf) -> Self {
        AuthServerBootstrap {
            conf: Arc::new(conf),
            sasl_fallback: None,
        }
    }

    /// Answer a client whose first RpcRequest is not an AES challenge with SASL
    /// (`spark.network.crypto.saslFallback`), as Spark's `AuthRpcHandler` does.
    pub fn with_sasl_fallback(mut self, sasl: SaslConf) -> Self {
        self.sasl_fallback = Some(Arc::new(sasl));
        self
    }
}

impl ServerBootstrap for AuthServerBootstrap {
    fn bootstrap<'a>(&'a self, peer: SocketAddr, io: BoxedIo) -> BootstrapFuture<'a> {
        let handshake = server_handshake(&self.conf, self.sasl_fallback.as_deref(), peer, io);
        Box::pin(bounded(self.conf.rpc_timeout, peer, handshake))
    }
}

async fn server_handshake(
    conf: &AuthConf,
    sasl_fallback: Option<&SaslConf>,
    peer: SocketAddr,
    mut io: BoxedIo,
) -> Result<BoxedIo, TransportError> {
    let what = "waiting for the client's challenge";
    let mut head = [0u8; 9];
    io.read_exact(&mut head)
        .await
        .map_err(|e| io_failed(peer, what, e))?;
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
        .map_err(|e| io_failed(peer, what, e))?;
    let request_id = i64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
    let body_len = (len - min) as u64;
    if body_len > MAX_CHALLENGE as u64 {
        refuse(io, rpc_failure(request_id, UNKNOWN_CHALLENGE)).await;
        return Err(failed(
            peer,
            format!("the client's first RpcRequest ({body_len} bytes) is not an auth challenge; answered \"{UNKNOWN_CHALLENGE}\" and closed"),
        ));
    }
    let mut body = vec![0u8; body_len as usize];
    io.read_exact(&mut body)
        .await
        .map_err(|e| io_failed(peer, what, e))?;
    let challenge = match AuthMessage::decode(&body) {
        Ok(c) => c,
        Err(e) => {
            if let Some(sasl_conf) = sasl_fallback {
                tracing::debug!(%peer, "the first request is not an AES challenge; falling back to SASL");
                let first = Some((request_id, Bytes::from(body)));
                return sasl::server_handshake(sasl_conf, peer, io, first).await;
            }
            refuse(io, rpc_failure(request_id, UNKNOWN_CHALLENGE)).await;
            let hint = if body.first() == Some(&sasl::SASL_MESSAGE_TAG) {
                " (it is a SASL message: the client uses SASL, which this server only accepts \
                 with network.crypto.saslFallback=true)"
            } else {
                ""
            };
            return Err(failed(
                peer,
                format!("the client's first RpcRequest is not an auth challenge ({}){hint}; answered \"{UNKNOWN_CHALLENGE}\" and closed", e.0),
            ));
        }
    };
    let (response, keys) =
        match server_response(&conf.app_id, conf.secret.expose(), &challenge, conf.version) {
            Ok(r) => r,
            Err(e) => {
                refuse(io, rpc_failure(request_id, AUTHENTICATION_FAILED)).await;
                return Err(failed(
                    peer,
                    format!("{e}; answered \"{AUTHENTICATION_FAILED}\" and closed"),
                ));
            }
        };
    let answer = Message::RpcResponse {
        request_id,
        body: Bytes::from(response.to_vec()).into(),
    };
    send(&mut io, peer, &answer, "sending the answer").await?;
    tracing::debug!(%peer, cipher = ?conf.cipher, version = conf.version.number(), encrypt = conf.encrypt, "authenticated the client");
    Ok(wrap(io, peer, conf, &keys, false))
}
