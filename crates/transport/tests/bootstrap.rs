//! The bootstrap seam: a handshake before normal traffic plus a byte-stream wrapper (a toy XOR
//! "cipher") between socket and framing, without touching the codec.

mod common;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use common::*;
use rpcenv_transport::{
    BootstrapFuture, BoxedIo, ClientBootstrap, ServerBootstrap, TransportClientFactory,
    TransportConf, TransportError, TransportServer,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

const KEY: u8 = 0x5a;

struct Xor(BoxedIo);

impl AsyncRead for Xor {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        for b in &mut buf.filled_mut()[before..] {
            *b ^= KEY;
        }
        r
    }
}

impl AsyncWrite for Xor {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let enc: Vec<u8> = buf.iter().map(|b| b ^ KEY).collect();
        Pin::new(&mut self.0).poll_write(cx, &enc)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

struct ClientHello;

impl ClientBootstrap for ClientHello {
    fn bootstrap<'a>(&'a self, peer: SocketAddr, mut io: BoxedIo) -> BootstrapFuture<'a> {
        Box::pin(async move {
            let fail = |m: String| TransportError::Bootstrap { peer, message: m };
            io.write_all(b"HELLO")
                .await
                .map_err(|e| fail(e.to_string()))?;
            let mut ok = [0u8; 2];
            io.read_exact(&mut ok)
                .await
                .map_err(|e| fail(e.to_string()))?;
            if &ok != b"OK" {
                return Err(fail("server refused".into()));
            }
            Ok(Box::new(Xor(io)) as BoxedIo)
        })
    }
}

struct ServerHello;

impl ServerBootstrap for ServerHello {
    fn bootstrap<'a>(&'a self, peer: SocketAddr, mut io: BoxedIo) -> BootstrapFuture<'a> {
        Box::pin(async move {
            let fail = |m: String| TransportError::Bootstrap { peer, message: m };
            let mut hello = [0u8; 5];
            io.read_exact(&mut hello)
                .await
                .map_err(|e| fail(e.to_string()))?;
            if &hello != b"HELLO" {
                return Err(fail("expected HELLO".into()));
            }
            io.write_all(b"OK").await.map_err(|e| fail(e.to_string()))?;
            Ok(Box::new(Xor(io)) as BoxedIo)
        })
    }
}

#[tokio::test]
async fn handshake_and_cipher_wrap_the_connection() {
    let handler = Arc::new(TestHandler::default());
    let server = TransportServer::bind_with_bootstraps(
        TransportConf::default(),
        "127.0.0.1",
        0,
        handler.clone(),
        vec![Arc::new(ServerHello)],
    )
    .await
    .unwrap();
    let f = TransportClientFactory::with_bootstraps(
        TransportConf::default(),
        Arc::new(TestHandler::default()),
        vec![Arc::new(ClientHello)],
    );
    let c = within(f.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    assert_eq!(
        within(c.send_rpc(Bytes::from("hello/xor"))).await.unwrap(),
        "Hello, xor!".as_bytes()
    );
    let s = within(c.stream("largeBuffer")).await.unwrap();
    assert_eq!(within(s.collect(64 << 20)).await.unwrap(), pattern(100_000));

    // A client without the handshake is refused by the server bootstrap; the server goes on.
    let plain =
        TransportClientFactory::new(TransportConf::default(), Arc::new(TestHandler::default()));
    let p = within(plain.create_client("127.0.0.1", server.port()))
        .await
        .unwrap();
    let e = within(p.send_rpc(Bytes::from("hello/plain")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            TransportError::ConnectionClosed { .. } | TransportError::Io { .. }
        ),
        "{e}"
    );
    assert_eq!(
        within(c.send_rpc(Bytes::from("hello/again")))
            .await
            .unwrap(),
        "Hello, again!".as_bytes()
    );
}
