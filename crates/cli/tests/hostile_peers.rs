//! Hostile peers against a server run as a child process (`rpcenv master`, or the transport's
//! `echo_server` example): raw `std::net::TcpStream` clients that pipeline and never read, send
//! half frames and stall, connect and reset, or send garbage. The server's memory (`VmHWM`) and
//! descriptors are read from `/proc/<pid>` of the child, so the clients' own do not count.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use rpcenv_transport::{Decoded, FrameDecoder, Message};

const MIB: u64 = 1 << 20;

/// A server child process, killed (and reaped) when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `rpcenv master` on 127.0.0.1, port 0, with `--conf` pairs, under a descriptor limit.
    fn master(conf: &[&str], fd_limit: Option<u32>) -> Server {
        let exe = env!("CARGO_BIN_EXE_rpcenv");
        let mut args: Vec<String> = vec!["--log-level".into(), "error".into()];
        for c in conf {
            args.push("--conf".into());
            args.push((*c).into());
        }
        args.extend(
            [
                "master",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--parent-watch",
            ]
            .map(String::from),
        );
        let line = Self::start(exe.into(), &args, fd_limit);
        Self::parse(line, "master listening on rpc://master@")
    }

    /// The transport's `echo_server` example on 127.0.0.1, port 0.
    fn echo() -> Server {
        let line = Self::start(echo_server_exe(), &[], None);
        Self::parse(line, "listening on ")
    }

    fn start(exe: PathBuf, args: &[String], fd_limit: Option<u32>) -> (Child, String) {
        let mut cmd = match fd_limit {
            // The limit applies to the server alone: a shell lowers it, then becomes the server.
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(&exe)
                    .args(args);
                c
            }
            None => {
                let mut c = Command::new(&exe);
                c.args(args);
                c
            }
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => (child, line),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} printed nothing within 60 s", exe.display());
            }
        }
    }

    fn parse((child, line): (Child, String), prefix: &str) -> Server {
        let addr = line
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
        Server { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the server process, in bytes.
    fn vm_hwm(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("server process status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM line");
        kb * 1024
    }

    /// Open descriptors of the server process.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("server process fds")
            .count()
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_nodelay(true).unwrap();
        s
    }

    /// One well-behaved RPC over a fresh connection: its answer, read within `within`.
    fn round_trip(&self, body: &[u8], within: Duration) -> Message {
        let mut s = self.connect();
        let req = Message::RpcRequest {
            request_id: 7,
            body: Bytes::copy_from_slice(body).into(),
        };
        s.write_all(&req.to_bytes()).expect("write request");
        read_message(&mut s, within).expect("an answer")
    }
}

/// The `echo_server` example binary next to this test's target directory (built if missing,
/// as when only this test target was asked for).
fn echo_server_exe() -> PathBuf {
    let test_exe = std::env::current_exe().expect("test binary path");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let exe = profile_dir.join("examples").join("echo_server");
    if !exe.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args([
            "build",
            "-p",
            "rpcenv-transport",
            "--example",
            "echo_server",
        ]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build --example echo_server failed");
    }
    exe
}

/// Reads one message (skipping raw body bytes) within `within`.
fn read_message(s: &mut TcpStream, within: Duration) -> Option<Message> {
    let deadline = Instant::now() + within;
    let mut decoder = FrameDecoder::new(64 << 20);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut chunk = [0u8; 64 * 1024];
    loop {
        if let Ok(Some(Decoded::Message(m))) = decoder.decode(&mut buf) {
            return Some(m);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.put_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
}

/// Whether the server closed `s` (EOF or reset) before `deadline`; bytes it sends are skipped.
fn closed_by(mut s: &TcpStream, deadline: Instant) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
}

/// Writes `frames` on `s` until done or a write makes no progress for `stall` (the server
/// stopped reading). Returns the number of frames written completely.
fn pipeline(mut s: TcpStream, frames: Vec<Bytes>, stall: Duration) -> (TcpStream, usize) {
    s.set_write_timeout(Some(stall)).unwrap();
    let mut written = 0;
    let mut batch = Vec::with_capacity(256 * 1024);
    for group in frames.chunks(64) {
        batch.clear();
        for f in group {
            batch.extend_from_slice(f);
        }
        if s.write_all(&batch).is_err() {
            return (s, written);
        }
        written += group.len();
    }
    (s, written)
}

/// Watches the server's peak memory for `window`; panics as soon as it grows `limit` over `base`.
fn assert_growth_below(
    server: &Server,
    base: u64,
    limit: u64,
    window: Duration,
    what: &str,
) -> u64 {
    let end = Instant::now() + window;
    loop {
        let growth = server.vm_hwm().saturating_sub(base);
        assert!(
            growth < limit,
            "{what}: server VmHWM grew by {} MiB (limit {} MiB)",
            growth / MIB,
            limit / MIB
        );
        if Instant::now() >= end {
            return growth;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An RpcEnv request envelope (sender absent, receiver `addr`, endpoint `name`, one content byte).
fn envelope(addr: SocketAddr, name: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_u8(1);
    let host = addr.ip().to_string();
    b.put_u16(host.len() as u16);
    b.put_slice(host.as_bytes());
    b.put_i32(i32::from(addr.port()));
    b.put_u16(name.len() as u16);
    b.put_slice(name.as_bytes());
    b.put_slice(&[1, 0]);
    b.freeze()
}

#[test]
fn a_peer_that_pipelines_asks_and_streams_and_never_reads_holds_bounded_memory() {
    let server = Echo::start();
    let base = server.0.vm_hwm();
    // Two never-reading connections: one pipelines the asks (their echoes fill its queue), the
    // other the stream requests (64 MiB bodies each).
    let streams: Vec<Bytes> = (0..5)
        .map(|_| {
            Message::StreamRequest {
                stream_id: format!("bytes/{}", 64 * MIB),
            }
            .to_bytes()
        })
        .collect();
    let body = Bytes::from(vec![b'x'; 1024]);
    let asks: Vec<Bytes> = (0..100_000)
        .map(|i| {
            Message::RpcRequest {
                request_id: i,
                body: body.clone().into(),
            }
            .to_bytes()
        })
        .collect();
    let (ask_peer, stream_peer) = (server.0.connect(), server.0.connect());
    let stall = Duration::from_secs(3);
    let asking = std::thread::spawn(move || pipeline(ask_peer, asks, stall));
    let streaming = std::thread::spawn(move || pipeline(stream_peer, streams, stall));
    let (_ask_peer, asks_written) = asking.join().expect("asking thread");
    let (_stream_peer, streams_written) = streaming.join().expect("streaming thread");
    // A second, well-behaved client is still answered.
    match server.0.round_trip(b"hello", Duration::from_secs(20)) {
        Message::RpcResponse { body, .. } => assert_eq!(&body.into_bytes()[..], b"hello"),
        other => panic!("expected the echo, got {other:?}"),
    }
    let growth = assert_growth_below(
        &server.0,
        base,
        64 * MIB,
        Duration::from_secs(2),
        "pipelined asks and streams",
    );
    eprintln!(
        "pipelined asks + streams: {asks_written} of 100000 asks and {streams_written} of 5 \
         stream requests written, VmHWM growth {} MiB",
        growth / MIB
    );
}

/// The echo server, a separate type so that its start-up is named in failures.
struct Echo(Server);

impl Echo {
    fn start() -> Echo {
        let server = Server::echo();
        // Warm up (first connection's buffers), so that the baseline is the idle server.
        server.round_trip(b"warm-up", Duration::from_secs(20));
        Echo(server)
    }
}

#[test]
fn asks_to_a_missing_endpoint_with_a_huge_name_never_read_hold_bounded_memory() {
    let server = Server::master(&[], None);
    server.round_trip(&envelope(server.addr, "warm-up"), Duration::from_secs(20));
    let base = server.vm_hwm();
    let name = "n".repeat(65_535);
    let body = envelope(server.addr, &name);
    let frames: Vec<Bytes> = (0..10_000)
        .map(|i| {
            Message::RpcRequest {
                request_id: i,
                body: body.clone().into(),
            }
            .to_bytes()
        })
        .collect();
    let (_hostile, written) = pipeline(server.connect(), frames, Duration::from_secs(3));
    let growth = assert_growth_below(
        &server,
        base,
        64 * MIB,
        Duration::from_secs(2),
        "asks to a missing endpoint",
    );
    eprintln!(
        "missing-endpoint asks: {written} of 10000 written, VmHWM growth {} MiB",
        growth / MIB
    );
}

/// Opens `n` connections that each send half a frame length and then nothing.
fn stall_half_frames(server: &Server, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).expect("connect");
            s.write_all(&[0, 0, 0, 0]).expect("half a length field");
            s
        })
        .collect()
}

#[test]
fn stalled_half_frames_do_not_lock_out_a_well_behaved_client_under_a_descriptor_limit() {
    let server = Server::master(&[], Some(256));
    let _stalled = stall_half_frames(&server, 300);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rpcenv"))
        .args(["--log-level", "error", "--conf", "rpc.lookupTimeout=30s"])
        .args(["ping", "--count", "1"])
        .arg(format!("rpc://master@{}", server.addr))
        .stdin(Stdio::null())
        .output()
        .expect("run rpcenv ping");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("reply from"),
        "ping failed after {took:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(30), "ping took {took:?}");
    eprintln!("ping under 300 stalled connections and ulimit -n 256: answered in {took:?}");
}

#[test]
fn stalled_half_frames_are_closed_after_the_connection_timeout() {
    let server = Server::master(&["rpc.io.connectionTimeout=5s"], None);
    let started = Instant::now();
    let stalled = stall_half_frames(&server, 300);
    let deadline = started + Duration::from_secs(15);
    let closed = stalled.iter().filter(|s| closed_by(s, deadline)).count();
    assert!(
        closed >= 290,
        "only {closed} of 300 stalled connections were closed within 15 s"
    );
    eprintln!(
        "stalled half frames: {closed} of 300 closed after {:?}",
        started.elapsed()
    );
}

#[test]
fn connect_close_cycles_leave_no_descriptor_behind() {
    let server = Server::master(&[], None);
    server.round_trip(&envelope(server.addr, "warm-up"), Duration::from_secs(20));
    let base = server.fds();
    for i in 0..5_000 {
        let s = server.connect();
        if i % 2 == 0 {
            // Linger 0: the close sends a reset.
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        } else {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut now = server.fds();
    while now > base + 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        now = server.fds();
    }
    assert!(
        now <= base + 5,
        "server holds {now} descriptors 5 s after 5000 connect/close cycles (baseline {base})"
    );
    eprintln!("connect/close cycles: fds {base} -> {now}");
}

#[test]
fn garbage_and_impossible_frames_are_closed_within_two_seconds() {
    let server = Server::master(&[], None);
    let frame_len = |n: i64| n.to_be_bytes().to_vec();
    let mut unknown_type = frame_len(8 + 9);
    unknown_type.push(99);
    unknown_type.extend_from_slice(&[0; 8]);
    let mut truncated = frame_len(8 + 1 + 8 + 4 + 100);
    truncated.push(3);
    truncated.extend_from_slice(&1i64.to_be_bytes());
    truncated.extend_from_slice(&100i32.to_be_bytes());
    truncated.extend_from_slice(&[7; 50]);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "garbage",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        ("length 2^40", frame_len(1 << 40), false),
        ("length 2^63-1", frame_len(i64::MAX), false),
        ("length 0", frame_len(0), false),
        ("length 7", frame_len(7), false),
        ("unknown type byte", unknown_type, false),
        ("truncated body", truncated, true),
    ];
    for (what, bytes, half_close) in cases {
        let mut s = server.connect();
        let sent = Instant::now();
        s.write_all(&bytes).unwrap();
        if half_close {
            s.shutdown(Shutdown::Write).unwrap();
        }
        assert!(
            closed_by(&s, sent + Duration::from_secs(2)),
            "{what}: the server did not close the connection within 2 s"
        );
    }
    // The server is still serving.
    server.round_trip(&envelope(server.addr, "after"), Duration::from_secs(20));
}
