//! A child of the demo whose parent died: its stderr is a pipe nobody reads any more. A log line
//! it cannot write must cost nothing (tracing-subscriber's default reports the failure with
//! `eprintln!`, which panics on the same broken pipe, in whatever thread logged), and it must
//! still shut down by itself once its standard input closes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{rpcenv, Lines};

/// Well under the 20 s after which an orphan whose shutdown hangs exits anyway (with status 1).
const CLEAN_EXIT: Duration = Duration::from_secs(10);

#[test]
fn a_master_whose_stderr_reader_died_logs_nothing_and_still_exits_when_its_parent_goes() {
    let mut child = rpcenv()
        .args([
            "master",
            "--bind-host",
            "127.0.0.1",
            "--port",
            "0",
            "--parent-watch",
            "--log-level",
            "warn",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rpcenv starts");
    let mut out = Lines::new(child.stdout.take().expect("piped"));
    // The reader of its stderr goes away, as a killed demo's does.
    drop(child.stderr.take());
    let line = out.expect("the listening line", |l| {
        l.starts_with("master listening on ")
    });
    let port: u16 = line
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    // A frame whose length is absurd: the master closes the connection and logs a warning,
    // which has nowhere to go.
    let mut peer = TcpStream::connect(("127.0.0.1", port)).unwrap();
    peer.set_read_timeout(Some(CLEAN_EXIT)).unwrap();
    peer.write_all(&[0xff; 64]).unwrap();
    // Read until the master closes the connection.
    let mut rest = Vec::new();
    let _ = peer.read_to_end(&mut rest);
    // The parent goes: standard input closes.
    drop(child.stdin.take());
    let deadline = Instant::now() + CLEAN_EXIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the master did not shut down within {CLEAN_EXIT:?} of its parent's going");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
