//! What the `rpcenv` command's behaviour tests share: children that are killed whatever happens,
//! and their output read line by line with deadlines.

#![allow(dead_code)] // Each test file uses its own part.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// The `rpcenv` binary.
pub(crate) fn rpcenv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rpcenv"))
}

/// How long a test waits for something that takes well under a second on an idle machine.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// The lines of one output stream, read by a thread of their own.
pub(crate) struct Lines {
    rx: Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl Lines {
    pub(crate) fn new(stream: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next line matching `pred` before `deadline`; `None` at the deadline or the end.
    pub(crate) fn wait_until(
        &mut self,
        deadline: Instant,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// The next line matching `pred` within [`PATIENCE`], or a panic showing what was seen.
    pub(crate) fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        self.wait_until(deadline, pred).unwrap_or_else(|| {
            panic!(
                "no {what} within {PATIENCE:?}; seen:\n{}",
                self.seen.join("\n")
            )
        })
    }

    /// Every further line until the stream ends (or [`PATIENCE`] passes).
    pub(crate) fn rest(&mut self) -> Vec<String> {
        let start = self.seen.len();
        let deadline = Instant::now() + PATIENCE;
        self.wait_until(deadline, |_| false);
        self.seen[start..].to_vec()
    }
}

/// A child process, killed and reaped when dropped (so a failing test leaves nothing behind).
pub(crate) struct Proc {
    /// The child.
    pub child: Child,
    /// Its standard output.
    pub out: Lines,
    /// Its standard error.
    pub err: Lines,
}

impl Proc {
    /// Starts `rpcenv ARGS` with its stdin, stdout and stderr piped (its stdin stays open, so a
    /// child started with `--parent-watch` lives until this is dropped).
    pub(crate) fn start(args: &[&str]) -> Proc {
        let mut child = rpcenv()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rpcenv starts");
        let out = Lines::new(child.stdout.take().expect("piped"));
        let err = Lines::new(child.stderr.take().expect("piped"));
        Proc { child, out, err }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for it to be gone.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the exit (at most [`PATIENCE`]) and returns whether it succeeded.
    pub(crate) fn wait_exit(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "the process did not exit within {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A master on a free port of 127.0.0.1 (plus `extra` arguments), and its URI.
pub(crate) fn master(extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["master", "--port", "0"];
    args.extend_from_slice(extra);
    let mut m = Proc::start(&args);
    let line = m.out.expect("the master's first line", |l| {
        l.starts_with("master listening on ")
    });
    let uri = line["master listening on ".len()..].to_string();
    (m, uri)
}

/// A worker of `uri` (plus `extra` arguments), once it printed its registration line.
pub(crate) fn worker(uri: &str, id: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["worker", "--master", uri, "--id", id, "--task-time", "5ms"];
    args.extend_from_slice(extra);
    let mut w = Proc::start(&args);
    let expected = format!("worker {id} registered with {uri} (");
    w.out
        .expect("the registration line", |l| l.starts_with(&expected));
    w
}

/// A port of 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

/// Runs `rpcenv ARGS` to its end: (success, stdout, stderr).
pub(crate) fn run(args: &[&str]) -> (bool, String, String) {
    let out = rpcenv()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("rpcenv runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Processes whose command line contains `marker` (scanning /proc).
pub(crate) fn processes_with(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(marker) && pid != std::process::id() {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Waits (at most [`PATIENCE`]) for `cond`.
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
