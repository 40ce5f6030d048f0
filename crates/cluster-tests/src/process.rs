//! A child process run by a scenario: its stdout and stderr lines are collected with the time
//! they arrived, so a scenario waits for a line (with a deadline) instead of sleeping, and knows
//! when something was printed. Signals go through `kill(1)`; memory and descriptors are read from
//! `/proc`. The child is killed when the [`Proc`] is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::HarnessError;

/// Which stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One output line and when the harness read it.
#[derive(Clone, Debug)]
pub struct Line {
    /// When the harness read it.
    pub at: Instant,
    /// Which stream it came from.
    pub stream: Stream,
    /// The line without its line break.
    pub text: String,
}

#[derive(Default)]
struct Output {
    lines: Vec<Line>,
    /// Streams that reached end of file.
    closed: u8,
}

/// A running child process.
pub struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<(Mutex<Output>, Condvar)>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Proc {
    /// Starts `command` with piped stdio; `name` labels it in errors. Its stdin stays open until
    /// [`close_stdin`](Self::close_stdin) or drop (children run with `--parent-watch` exit then).
    pub fn spawn(name: impl Into<String>, mut command: Command) -> Result<Proc, HarnessError> {
        let name = name.into();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(HarnessError::io(format!("starting {name}: {command:?}")))?;
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        if let Some(out) = child.stdout.take() {
            collect(out, Stream::Stdout, output.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(err, Stream::Stderr, output.clone());
        }
        Ok(Proc {
            name,
            stdin: child.stdin.take(),
            child,
            output,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many lines were collected so far: a mark to wait for lines printed after it.
    pub fn mark(&self) -> usize {
        self.output
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lines
            .len()
    }

    /// Waits until a line (collected at index `from` or later) satisfies `matches`; returns it
    /// and its index. Fails at the deadline, or as soon as the process closed its output.
    pub fn wait_line_from(
        &self,
        from: usize,
        what: &str,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<(usize, Line), HarnessError> {
        let deadline = Instant::now() + within;
        let (lock, changed) = &*self.output;
        let mut out = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = from;
        loop {
            while next < out.lines.len() {
                if matches(&out.lines[next].text) {
                    return Ok((next, out.lines[next].clone()));
                }
                next += 1;
            }
            if out.closed == 2 {
                drop(out);
                return Err(self.exited(what));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(out);
                return Err(HarnessError::Deadline {
                    what: format!(
                        "{}: {what}; its output so far:\n{}",
                        self.name,
                        self.transcript()
                    ),
                    within,
                });
            }
            out = changed
                .wait_timeout(out, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// [`wait_line_from`](Self::wait_line_from) over every line since the start.
    pub fn wait_line(
        &self,
        what: &str,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<Line, HarnessError> {
        self.wait_line_from(0, what, within, matches)
            .map(|(_, l)| l)
    }

    /// Every line collected so far, stdout and stderr interleaved as read.
    pub fn transcript(&self) -> String {
        let out = self.output.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = String::new();
        for l in &out.lines {
            let tag = if l.stream == Stream::Stdout {
                "out"
            } else {
                "err"
            };
            s.push_str(&format!("  [{tag}] {}\n", l.text));
        }
        s
    }

    /// The stdout lines collected so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        let out = self.output.0.lock().unwrap_or_else(|e| e.into_inner());
        out.lines
            .iter()
            .filter(|l| l.stream == Stream::Stdout)
            .map(|l| l.text.clone())
            .collect()
    }

    fn exited(&self, what: &str) -> HarnessError {
        HarnessError::Exited {
            process: self.name.clone(),
            status: "output closed".into(),
            what: what.into(),
            transcript: self.transcript(),
        }
    }

    /// Writes one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<(), HarnessError> {
        let stdin = self.stdin.as_mut().ok_or_else(|| HarnessError::Missing {
            what: format!("{}'s stdin (already closed)", self.name),
        })?;
        writeln!(stdin, "{line}")
            .and_then(|_| stdin.flush())
            .map_err(HarnessError::io(format!("writing to {}", self.name)))
    }

    /// Closes the child's stdin (a `--parent-watch` child exits).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`, `TERM`) to the process.
    pub fn signal(&self, signal: &str) -> Result<(), HarnessError> {
        crate::netns::run("kill", &[&format!("-{signal}"), &self.pid().to_string()]).map(drop)
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(&mut self) -> Result<ExitStatus, HarnessError> {
        let _ = self.child.kill();
        self.child
            .wait()
            .map_err(HarnessError::io(format!("reaping {}", self.name)))
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus, HarnessError> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(HarnessError::io(format!("waiting for {}", self.name)))?
            {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Deadline {
                    what: format!("{} exiting; its output:\n{}", self.name, self.transcript()),
                    within,
                });
            }
            // Exit is not observable as an event without a pidfd; poll at a short interval.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's resident set size in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> Result<u64, HarnessError> {
        status_field(self.pid(), "VmRSS:")
    }

    /// The process's peak resident set size in KiB (`VmHWM`).
    pub fn hwm_kib(&self) -> Result<u64, HarnessError> {
        status_field(self.pid(), "VmHWM:")
    }

    /// How many file descriptors the process has open.
    pub fn fd_count(&self) -> Result<usize, HarnessError> {
        fd_count(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `/proc/<pid>/status` in KiB.
pub fn status_field(pid: u32, field: &str) -> Result<u64, HarnessError> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).map_err(HarnessError::io(format!("reading {path}")))?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| HarnessError::Missing {
            what: format!("{field} in {path}"),
        })
}

/// The number of open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> Result<usize, HarnessError> {
    let path = format!("/proc/{pid}/fd");
    std::fs::read_dir(&path)
        .map(|d| d.count())
        .map_err(HarnessError::io(format!("reading {path}")))
}

/// Waits until `condition` returns `Some`, checking every `every`, at most `within`.
pub fn wait_until<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> Result<T, HarnessError> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = condition() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Deadline {
                what: what.into(),
                within,
            });
        }
        std::thread::sleep(every);
    }
}

fn collect(
    stream: impl Read + Send + 'static,
    which: Stream,
    output: Arc<(Mutex<Output>, Condvar)>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf).trim_end().to_string();
                    let (lock, changed) = &*output;
                    lock.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .lines
                        .push(Line {
                            at: Instant::now(),
                            stream: which,
                            text,
                        });
                    changed.notify_all();
                }
            }
        }
        let (lock, changed) = &*output;
        lock.lock().unwrap_or_else(|e| e.into_inner()).closed += 1;
        changed.notify_all();
    });
}
