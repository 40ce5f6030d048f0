//! Frame I/O of the auth handshakes on a raw connection (before the codec takes over): whole
//! frames read one at a time, so no byte past the handshake is consumed, and the errors both
//! protocols (AES and SASL) report.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bootstrap::BoxedIo;
use crate::error::TransportError;
use crate::message::Message;

/// The largest handshake frame accepted (an auth message is about 100 bytes, a DIGEST-MD5
/// token about 300; a JVM's RpcFailure carries a stack trace).
pub(crate) const MAX_HANDSHAKE_FRAME: usize = 1 << 20;

pub(crate) fn failed(peer: SocketAddr, reason: impl Into<String>) -> TransportError {
    TransportError::AuthFailed {
        peer,
        reason: reason.into(),
    }
}

pub(crate) fn io_failed(peer: SocketAddr, what: &str, e: std::io::Error) -> TransportError {
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

pub(crate) fn timeout_reason(after: Duration) -> String {
    format!(
        "the handshake did not complete within {} ms (spark.network.auth.rpcTimeout)",
        after.as_millis()
    )
}

/// Run a handshake within `after`; a timeout is an auth failure naming the setting.
pub(crate) async fn bounded<T>(
    after: Duration,
    peer: SocketAddr,
    handshake: impl std::future::Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    match tokio::time::timeout(after, handshake).await {
        Ok(r) => r,
        Err(_) => Err(failed(peer, timeout_reason(after))),
    }
}

/// Write one message and flush.
pub(crate) async fn send(
    io: &mut BoxedIo,
    peer: SocketAddr,
    msg: &Message,
    what: &str,
) -> Result<(), TransportError> {
    io.write_all(&msg.to_bytes())
        .await
        .map_err(|e| io_failed(peer, what, e))?;
    io.flush().await.map_err(|e| io_failed(peer, what, e))
}

/// Read one whole frame of at most [`MAX_HANDSHAKE_FRAME`] bytes and decode it.
pub(crate) async fn read_message(
    io: &mut BoxedIo,
    peer: SocketAddr,
    what: &str,
) -> Result<Message, TransportError> {
    let mut len = [0u8; 8];
    io.read_exact(&mut len)
        .await
        .map_err(|e| io_failed(peer, what, e))?;
    let len = i64::from_be_bytes(len);
    if len <= 8 || len - 8 > MAX_HANDSHAKE_FRAME as i64 {
        return Err(failed(
            peer,
            format!("impossible frame length {len} during authentication ({what})"),
        ));
    }
    let mut content = vec![0u8; (len - 8) as usize];
    io.read_exact(&mut content)
        .await
        .map_err(|e| io_failed(peer, what, e))?;
    Message::decode(Bytes::from(content))
        .map_err(|e| failed(peer, format!("not a valid frame ({what}): {e}")))
}

/// The server's answer to a handshake request.
pub(crate) enum Reply {
    /// RpcResponse: its body.
    Accepted(Bytes),
    /// RpcFailure: the first line of its text.
    Refused(String),
}

/// Send `body` as an RpcRequest and wait for its answer.
pub(crate) async fn call(
    io: &mut BoxedIo,
    peer: SocketAddr,
    body: Vec<u8>,
    what: &str,
) -> Result<Reply, TransportError> {
    let request_id = rand::random::<i64>() & i64::MAX;
    let request = Message::RpcRequest {
        request_id,
        body: Bytes::from(body).into(),
    };
    send(io, peer, &request, what).await?;
    match read_message(io, peer, what).await? {
        Message::RpcResponse {
            request_id: id,
            body,
        } if id == request_id => Ok(Reply::Accepted(body.into_bytes())),
        Message::RpcFailure { error, .. } => Ok(Reply::Refused(
            error.lines().next().unwrap_or_default().to_string(),
        )),
        other => Err(failed(
            peer,
            format!(
                "the server answered with an unexpected {} ({what})",
                other.type_name()
            ),
        )),
    }
}

/// Answer `answer` (a failure), close the write side and let the peer read it before the
/// socket goes (dropping a socket with unread input would reset the connection and lose the
/// answer).
pub(crate) async fn refuse(mut io: BoxedIo, answer: Message) {
    let _ = io.write_all(&answer.to_bytes()).await;
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
