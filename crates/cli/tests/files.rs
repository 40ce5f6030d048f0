//! `rpcenv fetch` and `rpcenv master --serve-file / --serve-jar / --serve-dir`: the printed URIs,
//! byte-exact downloads, exit codes and error texts, and memory that stays flat for a 256 MiB
//! file on both sides.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{master, rpcenv, run, Proc};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Writes `len` pseudo-random bytes to `path` (real bytes: a sparse file would travel and hash
/// as zeros) and returns their SHA-256. One random MiB is drawn and written again and again, each
/// 4 KiB block of it stamped with its own offset, so that no two blocks are alike (a block
/// delivered twice or out of place changes the hash) and a debug build writes 256 MiB quickly.
fn random_file(path: &Path, len: usize) -> Vec<u8> {
    const BLOCK: usize = 4096;
    fn written<T>(r: std::io::Result<T>, path: &Path, len: usize) -> T {
        r.unwrap_or_else(|e| panic!("cannot write {len} bytes to {}: {e}", path.display()))
    }
    let mut out = std::io::BufWriter::new(written(std::fs::File::create(path), path, len));
    let mut hasher = Sha256::new();
    let mut piece = vec![0u8; 1 << 20];
    rand::rng().fill_bytes(&mut piece);
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(piece.len());
        for (i, block) in piece[..n].chunks_mut(BLOCK).enumerate() {
            let stamp = ((offset + i * BLOCK) as u64).to_le_bytes();
            let k = stamp.len().min(block.len());
            block[..k].copy_from_slice(&stamp[..k]);
        }
        hasher.update(&piece[..n]);
        written(out.write_all(&piece[..n]), path, len);
        offset += n;
    }
    written(out.flush(), path, len);
    hasher.finalize().to_vec()
}

/// A temporary directory for the 256 MiB test's two copies of its file. It is made in `/dev/shm`
/// where that is a writable directory: a tmpfs, so the 512 MiB take memory (of which a test
/// machine has plenty) rather than disk (of which a CI machine may have little: this test once
/// failed there with "No space left on device"). The file server reads with `read`, not `mmap`,
/// so a tmpfs page never counts in the master's VmHWM, which the test measures.
fn roomy_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("rpcenv-files-")
            .tempdir_in(shm)
        {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

fn sha256_file(path: &Path) -> Vec<u8> {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize().to_vec()
}

/// A directory of served files: `file` (70 KB), `file name` (1 KB), `empty`, `app.jar`, and
/// `dir1/entry.bin`, `dir1/sub/nested.bin`.
struct Served {
    dir: tempfile::TempDir,
}

impl Served {
    fn new() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("dir1/sub")).unwrap();
        random_file(&root.join("file"), 70_001);
        random_file(&root.join("file name"), 1000);
        random_file(&root.join("empty"), 0);
        random_file(&root.join("app.jar"), 3000);
        random_file(&root.join("dir1/entry.bin"), 5000);
        random_file(&root.join("dir1/sub/nested.bin"), 100);
        Served { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// A master serving everything, its `host:port`, and its `serving` URIs in order.
    fn master(&self, extra: &[&str]) -> (Proc, String, Vec<String>) {
        let dir = format!("/dir1={}", self.arg("dir1"));
        let mut args = vec![
            "--serve-file".to_string(),
            self.arg("file"),
            "--serve-file".into(),
            self.arg("file name"),
            "--serve-file".into(),
            self.arg("empty"),
            "--serve-jar".into(),
            self.arg("app.jar"),
            "--serve-dir".into(),
            dir,
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (mut m, uri) = master(&args);
        let hostport = uri.trim_start_matches("rpc://master@").to_string();
        let served = (0..5)
            .map(|_| {
                let line = m.out.expect("a serving line", |_| true);
                line.strip_prefix("serving ")
                    .unwrap_or_else(|| panic!("not a serving line: {line:?}"))
                    .to_string()
            })
            .collect();
        (m, hostport, served)
    }
}

#[test]
fn master_prints_one_serving_line_per_flag_right_after_its_first_line() {
    let files = Served::new();
    let (m, hostport, _) = files.master(&[]);
    assert_eq!(
        m.out.seen[1..],
        [
            format!("serving rpc://{hostport}/files/file"),
            format!("serving rpc://{hostport}/files/file%20name"),
            format!("serving rpc://{hostport}/files/empty"),
            format!("serving rpc://{hostport}/jars/app.jar"),
            format!("serving rpc://{hostport}/dir1"),
        ]
    );
}

#[test]
fn fetch_writes_each_served_file_byte_exactly_and_exits_0_quietly() {
    let files = Served::new();
    let (_m, hostport, _) = files.master(&[]);
    let out = tempfile::tempdir().unwrap();
    for (path, source) in [
        ("/files/file", "file"),
        ("/files/file%20name", "file name"),
        ("/files/empty", "empty"),
        ("/jars/app.jar", "app.jar"),
        ("/dir1/entry.bin", "dir1/entry.bin"),
        ("/dir1/sub/nested.bin", "dir1/sub/nested.bin"),
    ] {
        // Spark's scheme is accepted as well as rpcenv's.
        for scheme in ["rpc", "spark"] {
            let uri = format!("{scheme}://{hostport}{path}");
            let dest = out.path().join("got");
            let dest_arg = dest.to_string_lossy().into_owned();
            let (ok, stdout, stderr) = run(&["fetch", &uri, "-o", &dest_arg]);
            assert!(ok, "{uri}: {stderr}");
            // Not a terminal: no progress line.
            assert_eq!(stderr, "", "{uri}");
            assert_eq!(stdout, "", "{uri}");
            assert_eq!(
                std::fs::read(&dest).unwrap(),
                std::fs::read(files.path(source)).unwrap(),
                "{uri}"
            );
        }
    }
}

/// Runs `rpcenv fetch ARGS`: (exit code, stderr).
fn fetch_failing(args: &[&str]) -> (Option<i32>, String) {
    let out = rpcenv()
        .arg("fetch")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_failed_fetch_exits_1_with_the_error_text_and_leaves_the_output_alone() {
    let files = Served::new();
    let (_m, hostport, served) = files.master(&[]);
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("kept");
    std::fs::write(&dest, b"before").unwrap();
    let dest_arg = dest.to_string_lossy().into_owned();
    let nothing_listens = format!("rpc://127.0.0.1:{}/files/file", common::free_port());
    for (uri, expected) in [
        (
            format!("rpc://{hostport}/files/missing"),
            "Stream '/files/missing' was not found.",
        ),
        (
            format!("rpc://{hostport}/jars/file"),
            "Stream '/jars/file' was not found.",
        ),
        (
            format!("{}/missing", served[4]),
            "Stream '/dir1/missing' was not found.",
        ),
        (
            format!("{}/../file", served[4]),
            "Stream '/dir1/../file' was not found.",
        ),
        (
            format!("rpc://{hostport}/nodir/x"),
            "Invalid stream URI: nodir not found.",
        ),
        (
            "rpc://127.0.0.1/files/file".to_string(),
            "Port must be defined.",
        ),
        (format!("rpc://{hostport}"), "Path must be defined."),
        (nothing_listens, "127.0.0.1"),
    ] {
        let (code, stderr) = fetch_failing(&[&uri, "-o", &dest_arg]);
        assert_eq!(code, Some(1), "{uri}: {stderr}");
        assert!(stderr.contains(expected), "{uri}: {stderr}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"before", "{uri}");
    }
    // Nothing but the kept file: no temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}

#[test]
fn fetch_requires_an_output_file() {
    let (code, stderr) = fetch_failing(&["rpc://127.0.0.1:7077/files/file"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--output <FILE>"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let (code, stderr) = fetch_failing(&["rpc://127.0.0.1:7077/files/file", "-o", &dir_arg]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is a directory"), "{stderr}");
}

#[test]
fn fetch_takes_the_auth_settings_of_every_client_command() {
    let files = Served::new();
    let auth = [
        "--conf",
        "authenticate=true",
        "--conf",
        "authenticate.secret=files-test-secret",
    ];
    let (_m, _, served) = files.master(&auth);
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("got");
    let dest_arg = dest.to_string_lossy().into_owned();
    let mut args = vec!["fetch", &served[0], "-o", &dest_arg];
    args.extend_from_slice(&auth);
    let (ok, _, stderr) = run(&args);
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(files.path("file")).unwrap()
    );
    std::fs::remove_file(&dest).unwrap();
    // Without the secret, or with another one, nothing is served.
    let wrong = [
        "--conf",
        "authenticate=true",
        "--conf",
        "authenticate.secret=another",
    ];
    for conf in [&[][..], &wrong[..]] {
        let mut args = vec![served[0].as_str(), "-o", &dest_arg];
        args.extend_from_slice(conf);
        let (code, stderr) = fetch_failing(&args);
        assert_eq!(code, Some(1), "{conf:?}: {stderr}");
        assert!(stderr.contains("error: "), "{conf:?}: {stderr}");
        assert!(!dest.exists(), "{conf:?}");
    }
}

#[test]
fn master_refuses_what_it_cannot_serve_naming_the_flag() {
    let files = Served::new();
    let dir1 = files.arg("dir1");
    let missing = files.arg("missing");
    let files_dir = format!("/files={dir1}");
    let first = format!("/dir1={dir1}");
    let again = format!("/dir1/././={dir1}");
    let cases: [(&[&str], &str); 4] = [
        (&["--serve-file", &missing], "--serve-file"),
        (&["--serve-dir", &dir1], "BASE=DIR"),
        (
            &["--serve-dir", &files_dir],
            "Directory URI cannot be /files nor /jars.",
        ),
        (
            &["--serve-dir", &first, "--serve-dir", &again],
            "URI '/dir1' already registered.",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["master", "--port", "0"];
        args.extend_from_slice(flags);
        let (ok, stdout, stderr) = run(&args);
        assert!(!ok, "{flags:?}");
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
        assert!(
            !stdout.contains("master listening on"),
            "{flags:?}: {stdout}"
        );
    }
}

/// VmHWM of a running process, in KiB (`None` once it has exited).
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `rpcenv fetch URI -o DEST` at log level info: its peak RSS in KiB, from its closing
/// `fetched` line (read from /proc/self/status after the download, just before it exits).
fn fetch_peak_kb(uri: &str, dest: &Path) -> u64 {
    let dest_arg = dest.to_string_lossy().into_owned();
    let (ok, _, stderr) = run(&["fetch", uri, "-o", &dest_arg, "--log-level", "info"]);
    assert!(ok, "{uri}: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains(" fetched ") || l.ends_with(" fetched"))
        .unwrap_or_else(|| panic!("no fetched line: {stderr}"));
    let value = line
        .split("peak_rss_kb=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no peak_rss_kb in {line:?}"));
    value.parse().unwrap()
}

#[test]
fn a_256_mib_file_is_served_and_fetched_with_flat_memory_on_both_sides() {
    const LEN: usize = 256 << 20;
    const BOUND_KB: u64 = 64 << 10;
    let dir = roomy_tempdir();
    let source = dir.path().join("big.bin");
    let hash = random_file(&source, LEN);
    let tiny = dir.path().join("tiny.bin");
    random_file(&tiny, 1);
    let (source_arg, tiny_arg) = (
        source.to_string_lossy().into_owned(),
        tiny.to_string_lossy().into_owned(),
    );
    let (mut m, _) = master(&["--serve-file", &source_arg, "--serve-file", &tiny_arg]);
    let big_uri = m
        .out
        .expect("the serving line", |l| l.starts_with("serving "))["serving ".len()..]
        .to_string();
    let tiny_uri = m
        .out
        .expect("the serving line", |l| l.starts_with("serving "))["serving ".len()..]
        .to_string();
    let master_pid = m.pid();
    let master_before = vm_hwm_kb(master_pid).expect("the master runs");

    // The fetcher's baseline: the same command fetching a 1-byte file.
    let baseline = fetch_peak_kb(&tiny_uri, &dir.path().join("tiny.out"));
    let dest = dir.path().join("fetched.bin");
    let peak = fetch_peak_kb(&big_uri, &dest);
    let master_after = vm_hwm_kb(master_pid).expect("the master still runs");
    assert_eq!(sha256_file(&dest), hash, "the fetched file differs");
    let master_growth = master_after - master_before;
    let fetcher_growth = peak.saturating_sub(baseline);
    eprintln!(
        "256 MiB: master VmHWM {master_before} -> {master_after} KiB; fetcher VmHWM {peak} KiB \
         (a 1-byte fetch: {baseline} KiB)"
    );
    assert!(
        master_growth < BOUND_KB,
        "the master's VmHWM grew by {master_growth} KiB"
    );
    assert!(
        fetcher_growth < BOUND_KB,
        "the fetcher's VmHWM was {peak} KiB, {fetcher_growth} KiB over a 1-byte fetch's"
    );
}
