//! The SASL handshake on a raw connection, before framing starts: two RpcRequests carrying
//! SaslMessages, then (with `auth-conf`) the encryption framing.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use super::digest::{Credentials, DigestClient, DigestServer, Negotiated, Qop};
use super::message::SaslMessage;
use super::stream::SaslStream;
use super::{SaslConf, EXPECTED_SASL_MESSAGE, UNAUTHENTICATED_FETCH};
use crate::auth::wire::{bounded, call, failed, read_message, refuse, send, Reply};
use crate::auth::UNKNOWN_CHALLENGE;
use crate::bootstrap::{BootstrapFuture, BoxedIo, ClientBootstrap, ServerBootstrap};
use crate::error::TransportError;
use crate::message::Message;

fn credentials(conf: &SaslConf) -> Credentials {
    Credentials::spark(&conf.app_id, conf.secret.expose())
}

/// Put the encryption framing on the connection when the session negotiated it.
fn wrap(io: BoxedIo, peer: SocketAddr, conf: &SaslConf, negotiated: Negotiated) -> BoxedIo {
    match negotiated.layer {
        Some(layer) => {
            tracing::debug!(%peer, cipher = layer.cipher.token(), "SASL encryption on");
            Box::new(SaslStream::new(io, peer, layer, conf.max_encrypted_block))
        }
        None => io,
    }
}

/// Explain a refusal of the server.
fn refused_by_server(peer: SocketAddr, text: &str) -> TransportError {
    if text.contains(UNKNOWN_CHALLENGE) {
        return failed(
            peer,
            format!(
                "the server refused SASL ({text}): it authenticates with Spark's AES protocol \
                 only; set network.crypto.enabled=true on this side, or \
                 network.crypto.saslFallback=true on the server"
            ),
        );
    }
    failed(peer, format!("the server refused: {text}"))
}

/// The client side: authenticates every connection a client factory opens.
#[derive(Debug, Clone)]
pub struct SaslClientBootstrap {
    conf: Arc<SaslConf>,
}

impl SaslClientBootstrap {
    /// A bootstrap using `conf`.
    pub fn new(conf: SaslConf) -> Self {
        SaslClientBootstrap {
            conf: Arc::new(conf),
        }
    }
}

impl ClientBootstrap for SaslClientBootstrap {
    fn bootstrap<'a>(&'a self, peer: SocketAddr, io: BoxedIo) -> BootstrapFuture<'a> {
        let handshake = client_handshake(&self.conf, peer, io);
        Box::pin(bounded(self.conf.rpc_timeout, peer, handshake))
    }
}

/// Authenticate `io` as a SASL client (Spark: `SaslClientBootstrap.doBootstrap`).
pub(crate) async fn client_handshake(
    conf: &SaslConf,
    peer: SocketAddr,
    mut io: BoxedIo,
) -> Result<BoxedIo, TransportError> {
    let mut client = DigestClient::new(credentials(conf), conf.encrypt);
    let step = |token: Vec<u8>| {
        SaslMessage {
            app_id: conf.app_id.clone(),
            token,
        }
        .to_vec()
    };
    let challenge = match call(
        &mut io,
        peer,
        step(Vec::new()),
        "SASL: asking for the challenge",
    )
    .await?
    {
        Reply::Accepted(b) => b,
        Reply::Refused(text) => return Err(refused_by_server(peer, &text)),
    };
    let response = client
        .respond(&challenge)
        .map_err(|e| failed(peer, e.to_string()))?;
    let rspauth = match call(&mut io, peer, step(response), "SASL: sending the response").await? {
        Reply::Accepted(b) => b,
        Reply::Refused(text) => return Err(refused_by_server(peer, &text)),
    };
    let negotiated = client
        .finish(&rspauth)
        .map_err(|e| failed(peer, e.to_string()))?;
    if conf.encrypt && negotiated.qop != Qop::AuthConf {
        return Err(failed(
            peer,
            "Encryption requests by negotiated non-encrypted connection.",
        ));
    }
    tracing::debug!(%peer, qop = negotiated.qop.token(), "authenticated the connection (SASL)");
    Ok(wrap(io, peer, conf, negotiated))
}

/// The server side: authenticates every accepted connection before the handler sees anything.
#[derive(Debug, Clone)]
pub struct SaslServerBootstrap {
    conf: Arc<SaslConf>,
}

impl SaslServerBootstrap {
    /// A bootstrap using `conf`.
    pub fn new(conf: SaslConf) -> Self {
        SaslServerBootstrap {
            conf: Arc::new(conf),
        }
    }
}

impl ServerBootstrap for SaslServerBootstrap {
    fn bootstrap<'a>(&'a self, peer: SocketAddr, io: BoxedIo) -> BootstrapFuture<'a> {
        let handshake = server_handshake(&self.conf, peer, io, None);
        Box::pin(bounded(self.conf.rpc_timeout, peer, handshake))
    }
}

/// Authenticate `io` as a SASL server (Spark: `SaslRpcHandler`). `first` is an RpcRequest
/// (id, body) already read by the AES server falling back to SASL.
pub(crate) async fn server_handshake(
    conf: &SaslConf,
    peer: SocketAddr,
    mut io: BoxedIo,
    mut first: Option<(i64, Bytes)>,
) -> Result<BoxedIo, TransportError> {
    let mut server: Option<DigestServer> = None;
    loop {
        let (request_id, body) = match first.take() {
            Some(f) => f,
            None => match read_message(&mut io, peer, "SASL: waiting for the client").await? {
                Message::RpcRequest { request_id, body } => (request_id, body.into_bytes()),
                Message::StreamRequest { stream_id } => {
                    let answer = Message::StreamFailure {
                        stream_id: stream_id.clone(),
                        error: UNAUTHENTICATED_FETCH.to_string(),
                    };
                    refuse(io, answer).await;
                    return Err(failed(
                        peer,
                        format!("the client asked for stream {stream_id:?} before authenticating; refused and closed"),
                    ));
                }
                Message::ChunkFetchRequest { chunk } => {
                    let answer = Message::ChunkFetchFailure {
                        chunk,
                        error: UNAUTHENTICATED_FETCH.to_string(),
                    };
                    refuse(io, answer).await;
                    return Err(failed(
                        peer,
                        format!("the client fetched chunk {}/{} before authenticating; refused and closed", chunk.stream_id, chunk.chunk_index),
                    ));
                }
                other => {
                    return Err(failed(
                        peer,
                        format!(
                            "the client sent {} before authenticating; connection closed without a reply",
                            other.type_name()
                        ),
                    ))
                }
            },
        };
        let msg = match SaslMessage::decode(&body) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%peer, reason = e.0, "refused a request that is not a SaslMessage before authentication");
                let answer = Message::RpcFailure {
                    request_id,
                    error: EXPECTED_SASL_MESSAGE.to_string(),
                };
                send(&mut io, peer, &answer, "SASL: refusing a request").await?;
                continue;
            }
        };
        let refuse_with = |text: String| Message::RpcFailure {
            request_id,
            error: text,
        };
        if msg.app_id != conf.app_id {
            let text = format!(
                "javax.security.sasl.SaslException: unknown app id {:?}",
                msg.app_id
            );
            refuse(io, refuse_with(text.clone())).await;
            return Err(failed(peer, format!("{text}; closed")));
        }
        match server.take() {
            None => {
                if !msg.token.is_empty() {
                    let text = "javax.security.sasl.SaslException: DIGEST-MD5 must not have an initial response".to_string();
                    refuse(io, refuse_with(text.clone())).await;
                    return Err(failed(peer, format!("{text}; closed")));
                }
                let s = DigestServer::new(credentials(conf), conf.always_encrypt);
                let answer = Message::RpcResponse {
                    request_id,
                    body: Bytes::from(s.challenge()).into(),
                };
                send(&mut io, peer, &answer, "SASL: sending the challenge").await?;
                server = Some(s);
            }
            Some(s) => match s.verify(&msg.token) {
                Ok((rspauth, negotiated)) => {
                    let answer = Message::RpcResponse {
                        request_id,
                        body: Bytes::from(rspauth).into(),
                    };
                    send(&mut io, peer, &answer, "SASL: sending rspauth").await?;
                    tracing::debug!(%peer, qop = negotiated.qop.token(), "authenticated the client (SASL)");
                    return Ok(wrap(io, peer, conf, negotiated));
                }
                Err(e) => {
                    let text = format!("javax.security.sasl.SaslException: {e}");
                    refuse(io, refuse_with(text)).await;
                    return Err(failed(
                        peer,
                        format!("{e}; answered with the failure and closed"),
                    ));
                }
            },
        }
    }
}
