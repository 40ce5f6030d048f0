//! Socket options shared by server and client sides (no delay, keep-alive, buffer sizes), as
//! Spark sets them on both ends of a connection.

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::conf::TransportConf;

/// Apply TCP_NODELAY, keepalive and buffer sizes to a connected socket.
pub(crate) fn configure(stream: &TcpStream, conf: &TransportConf) -> std::io::Result<()> {
    stream.set_nodelay(conf.tcp_nodelay)?;
    let sock = SockRef::from(stream);
    if let Some(idle) = conf.tcp_keepalive {
        let ka = TcpKeepalive::new().with_time(idle);
        #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
        let ka = ka
            .with_interval(std::time::Duration::from_secs(10))
            .with_retries(3);
        sock.set_tcp_keepalive(&ka)?;
    }
    if let Some(n) = conf.receive_buffer {
        sock.set_recv_buffer_size(n)?;
    }
    if let Some(n) = conf.send_buffer {
        sock.set_send_buffer_size(n)?;
    }
    Ok(())
}
