//! The file server and `open_channel`: Spark's RpcEnvSuite "file server" test ported, path
//! traversal, authentication (unauthenticated requests, wrong secrets, AES), a large file through
//! a slow reader with bounded memory, a broken connection surfacing on read, the `files` pool
//! apart from the RPC pool and closing its idle connections. Every env binds 127.0.0.1, port 0.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rpcenv::{EndpointCtx, HandlerResult, RpcCallContext, RpcConf, RpcEndpoint, RpcEnv, RpcError};
use rpcenv_transport::Message;

mod common;
use common::WAIT;

/// A fresh directory of this test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rpcenv-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.canonicalize().unwrap()
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

fn conf(pairs: &[(&str, &str)]) -> RpcConf {
    let mut c = common::suite_conf();
    for (k, v) in pairs {
        c.set(*k, *v).unwrap();
    }
    c
}

fn server_with(c: RpcConf) -> RpcEnv {
    RpcEnv::builder("files-server").conf(c).build().unwrap()
}

fn client_with(c: RpcConf) -> RpcEnv {
    RpcEnv::builder("files-client")
        .client_mode(true)
        .conf(c)
        .build()
        .unwrap()
}

/// The whole file at `uri`, through the blocking reader.
fn read_all(env: &RpcEnv, uri: &str) -> Result<Vec<u8>, RpcError> {
    let mut channel = env.open_channel(uri)?;
    let mut out = Vec::new();
    channel.read_to_end(&mut out).expect("read");
    assert_eq!(out.len() as u64, channel.len());
    Ok(out)
}

/// The error text of opening `uri`.
fn open_error(env: &RpcEnv, uri: &str) -> String {
    env.open_channel(uri).expect_err(uri).to_string()
}

/// Spark's RpcEnvSuite "file server": files (one with a space in its name, one empty), a jar,
/// two directories; the reserved and duplicate directory URIs refused; every URI fetched
/// byte-exactly (by `open_channel`, `fetch_file`, and with Spark's scheme); missing entries
/// answered with Spark's text.
#[test]
fn file_server() {
    let _alone = one_at_a_time();
    let root = scratch("suite");
    let content: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let file = write(&root.join("file"), &content);
    let file_with_space = write(&root.join("file name"), b"spaced");
    let empty = write(&root.join("empty"), b"");
    let jar = write(&root.join("jar"), b"PK jar bytes");
    let dir1 = root.join("dir1");
    let file1 = write(&dir1.join("file1"), b"one");
    let dir2 = root.join("dir2");
    let file2 = write(&dir2.join("file2"), b"two");

    let server = server_with(conf(&[]));
    let fs = server.file_server().unwrap();
    let base = server.address().unwrap().to_url();
    let file_uri = fs.add_file(&file).unwrap();
    let space_uri = fs.add_file(&file_with_space).unwrap();
    let empty_uri = fs.add_file(&empty).unwrap();
    let jar_uri = fs.add_jar(&jar).unwrap();
    let dir1_uri = fs.add_directory("/dir1", &dir1).unwrap();
    let dir2_uri = fs.add_directory("/dir2", &dir2).unwrap();
    assert_eq!(file_uri, format!("{base}/files/file"));
    assert_eq!(space_uri, format!("{base}/files/file%20name"));
    assert_eq!(jar_uri, format!("{base}/jars/jar"));
    assert_eq!(dir1_uri, format!("{base}/dir1"));
    assert!(base.starts_with("rpc://127.0.0.1:"), "{base}");

    // The file server's own prefixes are not directories.
    for reserved in ["/files", "/jars"] {
        let err = fs.add_directory(reserved, &dir1).unwrap_err();
        assert_eq!(err.to_string(), "Directory URI cannot be /files nor /jars.");
    }
    // The same directories under other spellings are duplicates.
    assert_eq!(
        fs.add_directory("/dir1/././", &dir1)
            .unwrap_err()
            .to_string(),
        "URI '/dir1' already registered."
    );
    assert_eq!(
        fs.add_directory("/dir2/../dir2/", &dir2)
            .unwrap_err()
            .to_string(),
        "URI '/dir2' already registered."
    );

    let client = client_with(conf(&[]));
    let out = root.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let expected = [
        (file_uri.clone(), file.clone()),
        (space_uri, file_with_space),
        (empty_uri, empty),
        (jar_uri, jar),
        (format!("{dir1_uri}/file1"), file1),
        (format!("{dir2_uri}/file2"), file2),
    ];
    for (i, (uri, path)) in expected.iter().enumerate() {
        let want = std::fs::read(path).unwrap();
        assert_eq!(read_all(&client, uri).unwrap(), want, "{uri}");
        // The server's own env fetches from itself too.
        assert_eq!(
            read_all(&server, uri).unwrap(),
            want,
            "{uri} from the server env"
        );
        let spark = uri.replacen("rpc://", "spark://", 1);
        assert_eq!(read_all(&client, &spark).unwrap(), want, "{spark}");
        let dest = out.join(format!("fetched-{i}"));
        assert_eq!(client.fetch_file(uri, &dest).unwrap(), want.len() as u64);
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            want,
            "{uri} fetched to a file"
        );
    }

    for missing in ["files", "jars", "dir1"] {
        let uri = format!("{base}/{missing}/doesNotExist");
        assert_eq!(
            open_error(&client, &uri),
            format!("Stream '/{missing}/doesNotExist' was not found.")
        );
    }
    let unknown = open_error(&client, &format!("{base}/nodir/x"));
    assert!(
        unknown.contains("requirement failed: Invalid stream URI: nodir not found."),
        "{unknown}"
    );
    // A failed fetch leaves the destination as it was and no temporary file.
    let dest = out.join("fetched-0");
    let err = client
        .fetch_file(&format!("{base}/files/doesNotExist"), &dest)
        .unwrap_err();
    assert!(matches!(err, RpcError::StreamFailed { .. }), "{err:?}");
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), expected.len(), "no temporary files: {names:?}");

    // Removed files are no longer served.
    assert!(fs.remove_file("file"));
    assert_eq!(
        open_error(&client, &file_uri),
        "Stream '/files/file' was not found."
    );
    client.shutdown();
    server.shutdown();
    std::fs::remove_dir_all(root).unwrap();
}

/// Nothing outside a served directory is reachable: `..`, an absolute path after the
/// directory, an encoded `..`, a symlink leading out all answer "not found"; a missing host,
/// port or path is refused with Spark's text before anything is sent.
#[test]
fn path_traversal_is_not_found() {
    let _alone = one_at_a_time();
    let root = scratch("traversal");
    let dir = root.join("served").join("dir");
    write(&dir.join("ok"), b"ok");
    let secret = write(&root.join("served").join("secret"), b"secret");
    write(&root.join("secret"), b"root secret");
    std::os::unix::fs::symlink(&secret, dir.join("link")).unwrap();
    std::fs::create_dir_all(dir.join("sub")).unwrap();

    let server = server_with(conf(&[]));
    let dir_uri = server
        .file_server()
        .unwrap()
        .add_directory("/dir", &dir)
        .unwrap();
    let client = client_with(conf(&[]));
    assert_eq!(read_all(&client, &format!("{dir_uri}/ok")).unwrap(), b"ok");
    let absolute = secret.display().to_string();
    for (path, id) in [
        ("/../secret", "/dir/../secret".to_string()),
        ("/../../secret", "/dir/../../secret".to_string()),
        ("/%2E%2E/secret", "/dir/../secret".to_string()),
        (&format!("/{absolute}")[..], format!("/dir/{absolute}")),
        ("/link", "/dir/link".to_string()),
        ("/sub", "/dir/sub".to_string()),
        ("/", "/dir/".to_string()),
        ("/%00ok", "/dir/\0ok".to_string()),
    ] {
        let uri = format!("{dir_uri}{path}");
        assert_eq!(
            open_error(&client, &uri),
            format!("Stream '{id}' was not found."),
            "{uri}"
        );
    }
    let port = server.address().unwrap().port();
    for (uri, text) in [
        ("rpc:///files/x".to_string(), "Host name must be defined."),
        (
            "rpc://127.0.0.1/files/x".to_string(),
            "Port must be defined.",
        ),
        (format!("rpc://127.0.0.1:{port}"), "Path must be defined."),
    ] {
        let err = client.open_channel(&uri).unwrap_err();
        assert!(matches!(err, RpcError::InvalidFileUri { .. }), "{err:?}");
        assert!(err.to_string().starts_with(text), "{err}");
    }
    client.shutdown();
    server.shutdown();
    std::fs::remove_dir_all(root).unwrap();
}

const AES: [(&str, &str); 2] = [("authenticate", "true"), ("authenticate.secret", "good")];

/// With authentication on, a StreamRequest sent before (instead of) the handshake gets nothing:
/// the connection closes without a byte of the file (Spark 4.3.0 served it).
#[test]
fn an_unauthenticated_stream_request_is_refused() {
    let _alone = one_at_a_time();
    let root = scratch("unauth");
    let file = write(&root.join("file"), b"confidential bytes");
    // Plain TCP below the authentication (a raw client speaks no TLS): not the suite's settings.
    let plain_aes = || {
        let mut c = RpcConf::new();
        for (k, v) in AES {
            c.set(k, v).unwrap();
        }
        c
    };
    let server = server_with(plain_aes());
    server.file_server().unwrap().add_file(&file).unwrap();
    let addr = server.address().unwrap().clone();
    let request = Message::StreamRequest {
        stream_id: "/files/file".into(),
    }
    .to_bytes();
    let mut s = std::net::TcpStream::connect((addr.host(), addr.port())).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&request).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "no answer, got {:?}",
        String::from_utf8_lossy(&got)
    );
    // An authenticated env gets the file over the same server.
    let client = client_with(plain_aes());
    let uri = format!("{}/files/file", addr.to_url());
    assert_eq!(read_all(&client, &uri).unwrap(), b"confidential bytes");
    client.shutdown();
    server.shutdown();
    std::fs::remove_dir_all(root).unwrap();
}

/// A client with another secret is refused at the handshake; one with the same secret fetches
/// byte-exactly over AES (GCM too).
#[test]
fn fetches_are_authenticated() {
    let _alone = one_at_a_time();
    let root = scratch("auth");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let file = write(&root.join("data.bin"), &content);
    for cipher in ["AES/CTR/NoPadding", "AES/GCM/NoPadding"] {
        let with_cipher = |secret: &str| {
            let mut c = conf(&AES);
            c.set("authenticate.secret", secret).unwrap();
            c.set("network.crypto.cipher", cipher).unwrap();
            c.set("network.crypto.saslFallback", "false").unwrap();
            c
        };
        let server = server_with(with_cipher("good"));
        let uri = server.file_server().unwrap().add_file(&file).unwrap();
        let good = client_with(with_cipher("good"));
        assert_eq!(read_all(&good, &uri).unwrap(), content, "{cipher}");
        let bad = client_with(with_cipher("bad"));
        let err = bad.open_channel(&uri).unwrap_err();
        assert!(matches!(err, RpcError::Connection { .. }), "{err:?}");
        assert!(err.to_string().contains("uthentication"), "{err}");
        for env in [good, bad, server] {
            env.shutdown();
        }
    }
    std::fs::remove_dir_all(root).unwrap();
}

/// The byte of a large test file at `i` (a pattern that is not periodic in any piece size).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

/// Writes a file of `len` pattern bytes, a MiB at a time.
fn large_file(path: &Path, len: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut i = 0u64;
    while i < len {
        let n = (len - i).min(1 << 20);
        let piece: Vec<u8> = (i..i + n).map(pattern).collect();
        f.write_all(&piece).unwrap();
        i += n;
    }
    f.flush().unwrap();
}

/// Taken by every test of this file, so that the memory test measures itself alone.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Resets this process's peak resident set size to the current one (Linux `clear_refs` 5), so
/// that a measurement is not hidden under an earlier peak.
fn reset_vm_hwm() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
}

/// This process's peak resident set size in KiB.
fn vm_hwm_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// A 64 MiB file read slowly: the server produces far faster than the reader takes, yet the
/// process (server and client both) does not grow by the file's size, because unread pieces
/// count in the connection's byte budget and stop the socket. The content arrives intact.
#[test]
fn a_large_file_through_a_slow_reader_keeps_memory_bounded() {
    let _alone = one_at_a_time();
    const LEN: u64 = 64 << 20;
    let root = scratch("large");
    let path = root.join("large.bin");
    large_file(&path, LEN);
    let server = server_with(conf(&[]));
    let uri = server.file_server().unwrap().add_file(&path).unwrap();
    let client = client_with(conf(&[("files.io.maxQueuedBytesPerConnection", "1m")]));
    reset_vm_hwm();
    let before = vm_hwm_kb();
    let mut channel = client.open_channel(&uri).unwrap();
    assert_eq!(channel.len(), LEN);
    let mut buf = vec![0u8; 256 * 1024];
    let mut at = 0u64;
    let mut reads = 0u32;
    loop {
        let n = channel.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(at + k as u64), "byte {}", at + k as u64);
        }
        at += n as u64;
        reads += 1;
        if reads.is_multiple_of(8) {
            // A slow consumer: the sender keeps going only as far as the budget lets it.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(at, LEN);
    let growth_kb = vm_hwm_kb().saturating_sub(before);
    eprintln!("64 MiB through a slow reader: VmHWM grew by {growth_kb} KiB");
    assert!(
        growth_kb < 32 * 1024,
        "VmHWM grew by {growth_kb} KiB for a 64 MiB file"
    );
    client.shutdown();
    server.shutdown();
    std::fs::remove_dir_all(root).unwrap();
}

/// A server that goes away in the middle of a file: the reader gets an error, never a short
/// file that looks complete.
#[test]
fn a_broken_connection_is_an_error_on_read() {
    let _alone = one_at_a_time();
    let root = scratch("broken");
    let path = root.join("big.bin");
    large_file(&path, 32 << 20);
    let server = server_with(conf(&[]));
    let uri = server.file_server().unwrap().add_file(&path).unwrap();
    let client = client_with(conf(&[("files.io.maxQueuedBytesPerConnection", "1m")]));
    let mut channel = client.open_channel(&uri).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    channel.read_exact(&mut buf).unwrap();
    server.shutdown();
    let mut read = buf.len() as u64;
    let err = loop {
        match channel.read(&mut buf) {
            Ok(0) => panic!("EOF after {read} of {} bytes", channel.len()),
            Ok(n) => read += n as u64,
            Err(e) => break e,
        }
    };
    assert!(read < channel.len());
    let inner = err.get_ref().expect("the RpcError inside");
    assert!(inner.is::<RpcError>(), "{err:?}");
    // A download that breaks leaves nothing behind.
    let dest = root.join("out.bin");
    assert!(client.fetch_file(&uri, &dest).is_err());
    assert!(!dest.exists());
    client.shutdown();
    std::fs::remove_dir_all(root).unwrap();
}

/// A reader that gives up in the middle: its connection closes (the server stops sending the
/// rest), and the next download opens a new one.
#[test]
fn dropping_a_channel_early_stops_the_transfer() {
    let _alone = one_at_a_time();
    let root = scratch("dropped");
    let path = root.join("big.bin");
    large_file(&path, 32 << 20);
    let server = server_with(conf(&[]));
    let uri = server.file_server().unwrap().add_file(&path).unwrap();
    let client = client_with(conf(&[("files.io.maxQueuedBytesPerConnection", "1m")]));
    let mut channel = client.open_channel(&uri).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    channel.read_exact(&mut buf).unwrap();
    assert_eq!(server.stats().connections_in, 1);
    drop(channel);
    wait_until("the abandoned connection to close", || {
        server.stats().connections_in == 0
    });
    let mut channel = client.open_channel(&uri).unwrap();
    let mut all = Vec::new();
    channel.read_to_end(&mut all).unwrap();
    assert_eq!(all.len() as u64, 32 << 20);
    assert!(all.iter().enumerate().all(|(i, b)| *b == pattern(i as u64)));
    drop(channel);
    assert_eq!(server.stats().connections_in, 1, "a complete read keeps it");
    client.shutdown();
    server.shutdown();
    std::fs::remove_dir_all(root).unwrap();
}

/// Descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A peer that pipelines requests for a large file and never reads: the server stops reading
/// from it at its byte budget, holds no descriptor per waiting reply, and keeps serving others;
/// when the peer goes, everything is released.
#[test]
fn a_peer_that_asks_and_never_reads_is_held_by_the_budget() {
    let _alone = one_at_a_time();
    let root = scratch("hoarder");
    let path = root.join("f");
    large_file(&path, 200 * 1024);
    let server = server_with(RpcConf::new());
    let uri = server.file_server().unwrap().add_file(&path).unwrap();
    let addr = server.address().unwrap().clone();
    let before = open_fds();
    let mut raw = std::net::TcpStream::connect((addr.host(), addr.port())).unwrap();
    raw.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let request = Message::StreamRequest {
        stream_id: "/files/f".into(),
    }
    .to_bytes();
    let batch = request.repeat(10_000);
    let mut sent = 0usize;
    // 2 million requests (400 GB of answers) do not fit: writing stops once the server stops
    // reading and the socket buffers are full.
    while sent < 2_000_000 && raw.write_all(&batch).is_ok() {
        sent += 10_000;
    }
    assert!(sent < 2_000_000, "the server kept reading");
    let held = open_fds().saturating_sub(before);
    assert!(
        held < 16,
        "{held} descriptors held for {sent} waiting requests"
    );
    let client = client_with(RpcConf::new());
    let mut want = Vec::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_end(&mut want)
        .unwrap();
    assert_eq!(read_all(&client, &uri).unwrap(), want, "others are served");
    drop(raw);
    wait_until("the hoarder's connection to close", || {
        server.stats().connections_in == 1
    });
    client.shutdown();
    server.shutdown();
    std::fs::remove_dir_all(root).unwrap();
}

/// Small files are read when requested, so thousands of requests for one, packed into a single
/// read, would each queue a copy of it: the server answers them only while its byte budget
/// allows, and the rest wait, undecoded, until the answers before them have been written. A
/// peer that never reads then costs about the budget, not a copy of the file per 21-byte
/// request (3,000 requests of one 64 KiB read held 195 MiB before).
#[test]
fn many_requests_for_a_small_file_in_one_read_are_held_by_the_budget() {
    let _alone = one_at_a_time();
    let root = scratch("small-hoarder");
    let path = root.join("f");
    large_file(&path, 64 * 1024);
    let server = server_with(conf(&[("rpc.io.maxQueuedBytesPerConnection", "2m")]));
    let uri = server.file_server().unwrap().add_file(&path).unwrap();
    let addr = server.address().unwrap().clone();
    reset_vm_hwm();
    let before = vm_hwm_kb();
    let mut raw = std::net::TcpStream::connect((addr.host(), addr.port())).unwrap();
    raw.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let request = Message::StreamRequest {
        stream_id: "/files/f".into(),
    }
    .to_bytes();
    let batch = request.repeat(10_000);
    let mut sent = 0usize;
    while sent < 1_000_000 && raw.write_all(&batch).is_ok() {
        sent += 10_000;
    }
    assert!(sent < 1_000_000, "the server kept reading");
    let client = client_with(conf(&[]));
    let mut want = Vec::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_end(&mut want)
        .unwrap();
    assert_eq!(read_all(&client, &uri).unwrap(), want, "others are served");
    let growth_kb = vm_hwm_kb().saturating_sub(before);
    eprintln!("{sent} requests for a 64 KiB file, never read: VmHWM grew by {growth_kb} KiB");
    assert!(
        growth_kb < 48 * 1024,
        "VmHWM grew by {growth_kb} KiB for a peer that never reads (budget 2 MiB)"
    );
    drop(raw);
    wait_until("the hoarder's connection to close", || {
        server.stats().connections_in == 1
    });
    client.shutdown();
    server.shutdown();
    std::fs::remove_dir_all(root).unwrap();
}

/// Holds every ask until told to answer them all.
struct Gate(Vec<RpcCallContext>);

impl RpcEndpoint for Gate {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        m: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        if m == "open" {
            for held in self.0.drain(..) {
                held.reply("answered".to_string());
            }
            ctx.reply("opened".to_string());
        } else {
            self.0.push(ctx);
        }
        Ok(())
    }
}

/// Waits until `f` holds, at most `WAIT`.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Files travel over a connection of their own: a fetch completes while an ask waits on the
/// RPC connection, the ask is answered afterwards, and the idle files connection closes
/// (`files.io.connectionTimeout`) while the RPC one stays.
#[test]
fn the_files_pool_is_apart_from_the_rpc_pool() {
    let _alone = one_at_a_time();
    let root = scratch("pools");
    let content: Vec<u8> = (0..8_000_000u32).map(|i| (i % 241) as u8).collect();
    let file = write(&root.join("payload"), &content);
    let server = server_with(conf(&[]));
    let uri = server.file_server().unwrap().add_file(&file).unwrap();
    server.setup_endpoint("gate", Gate(Vec::new())).unwrap();
    let client = client_with(conf(&[("files.io.connectionTimeout", "1s")]));
    let gate = client
        .setup_endpoint_ref::<String>(server.address().unwrap(), "gate")
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let waiting = gate.clone();
    std::thread::spawn(move || {
        let _ = tx.send(waiting.ask_sync::<String>("wait".into()));
    });
    wait_until("the ask to be held", || {
        server
            .stats()
            .endpoints
            .iter()
            .any(|e| e.name == "gate" && e.processed >= 1)
    });
    assert_eq!(read_all(&client, &uri).unwrap(), content);
    assert_eq!(
        server.stats().connections_in,
        2,
        "an RPC and a files connection"
    );
    assert!(rx.try_recv().is_err(), "the ask still waits");
    assert_eq!(gate.ask_sync::<String>("open".into()).unwrap(), "opened");
    assert_eq!(rx.recv_timeout(WAIT).unwrap().unwrap(), "answered");
    wait_until("the idle files connection to close", || {
        server.stats().connections_in == 1
    });
    assert_eq!(gate.ask_sync::<String>("open".into()).unwrap(), "opened");
    // A client-mode env has no file server.
    assert!(matches!(
        client.file_server(),
        Err(RpcError::ClientMode { .. })
    ));
    client.shutdown();
    server.shutdown();
    std::fs::remove_dir_all(root).unwrap();
}

/// The async forms on a runtime: `open_channel_async` read with `AsyncRead`, and
/// `fetch_file_async`.
#[test]
fn async_open_and_fetch() {
    let _alone = one_at_a_time();
    use tokio::io::AsyncReadExt;
    let root = scratch("async");
    let content: Vec<u8> = (0..1_000_000u32).map(|i| (i % 239) as u8).collect();
    let file = write(&root.join("a.bin"), &content);
    let server = server_with(conf(&[]));
    let uri = server.file_server().unwrap().add_file(&file).unwrap();
    let client = client_with(conf(&[]));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dest = root.join("copy.bin");
    rt.block_on(async {
        let mut channel = client.open_channel_async(&uri).await.unwrap();
        let mut got = Vec::new();
        channel.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, content);
        assert_eq!(
            client.fetch_file_async(&uri, &dest).await.unwrap(),
            content.len() as u64
        );
        let err = client.open_channel(&uri).unwrap_err();
        assert!(
            matches!(err, RpcError::BlockingInAsyncContext { .. }),
            "{err:?}"
        );
    });
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    client.shutdown();
    server.shutdown();
    std::fs::remove_dir_all(root).unwrap();
}
