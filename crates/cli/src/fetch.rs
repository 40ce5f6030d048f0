//! `rpcenv fetch URI -o FILE`: downloads one file from an RpcEnv file server (rpcenv's
//! `rpcenv master --serve-file`, or Spark's driver) through `open_channel`, as Spark's executors
//! fetch their files and jars.
//!
//! The bytes go to a temporary file beside FILE, renamed over FILE once complete, so FILE is
//! either the whole download or untouched. A progress line is drawn on stderr only when stderr is
//! a terminal. At `--log-level info` a closing line gives the bytes, the time and the process's
//! peak RSS.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rpcenv::{RpcConf, RpcEnv};

/// Arguments of `rpcenv fetch`.
#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    /// The file's URI as its server printed it: rpc://HOST:PORT/files/NAME, /jars/NAME, or a
    /// served directory's URI followed by a path (spark:// is accepted too).
    pub uri: String,
    /// Where to write the file (replaced only once the whole file has arrived).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
}

/// `rpcenv fetch`.
pub fn run(args: &FetchArgs, conf: &RpcConf) -> anyhow::Result<ExitCode> {
    if args.output.is_dir() {
        bail!(
            "-o {}: is a directory (give the file to write)",
            args.output.display()
        );
    }
    let started = Instant::now();
    let env = RpcEnv::builder("fetch")
        .client_mode(true)
        .conf(conf.clone())
        .build()?;
    let result = fetch(&env, &args.uri, &args.output);
    env.shutdown();
    let bytes = result?;
    // The process's peak memory, read last: a download's cost is visible (and checked by the
    // tests) without an outside tool.
    tracing::info!(
        uri = %args.uri,
        output = %args.output.display(),
        bytes,
        secs = started.elapsed().as_secs_f64(),
        peak_rss_kb = crate::usage::peak_rss_kb(),
        "fetched"
    );
    Ok(ExitCode::SUCCESS)
}

/// Downloads `uri` into `output` through a temporary file in the same directory; returns the
/// bytes written.
fn fetch(env: &RpcEnv, uri: &str, output: &Path) -> anyhow::Result<u64> {
    let mut channel = env.open_channel(uri)?;
    let total = channel.len();
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut part = tempfile::Builder::new()
        .prefix(".rpcenv-fetch-")
        .suffix(".part")
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let mut progress = std::io::stderr()
        .is_terminal()
        .then(|| Progress::new(total));
    let mut buf = vec![0u8; 256 << 10];
    let mut written = 0u64;
    loop {
        let n = match channel.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if let Some(p) = &mut progress {
                    p.abandon();
                }
                return Err(e.into());
            }
        };
        part.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", part.path().display()))?;
        written += n as u64;
        if let Some(p) = &mut progress {
            p.show(written, false);
        }
    }
    if let Some(p) = &mut progress {
        p.show(written, true);
    }
    if written != total {
        bail!("{uri}: the stream ended after {written} of {total} bytes");
    }
    part.persist(output)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(written)
}

/// The progress line: bytes so far, share, rate; redrawn at most ten times a second.
struct Progress {
    total: u64,
    started: Instant,
    drawn: Option<Instant>,
}

impl Progress {
    const EVERY: Duration = Duration::from_millis(100);

    fn new(total: u64) -> Progress {
        Progress {
            total,
            started: Instant::now(),
            drawn: None,
        }
    }

    fn show(&mut self, done: u64, last: bool) {
        if !last && self.drawn.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return;
        }
        self.drawn = Some(Instant::now());
        let line = progress_line(done, self.total, self.started.elapsed());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        if last {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }

    /// Ends the line so that an error message starts on a line of its own.
    fn abandon(&mut self) {
        if self.drawn.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    let percent = done.saturating_mul(100).checked_div(total).unwrap_or(100);
    let rate = done as f64 / MIB / elapsed.as_secs_f64().max(1e-3);
    format!(
        "{:.1} / {:.1} MiB {percent:>3}% {rate:.1} MiB/s",
        done as f64 / MIB,
        total as f64 / MIB
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_shows_bytes_share_and_rate() {
        assert_eq!(
            progress_line(1 << 20, 4 << 20, Duration::from_secs(2)),
            "1.0 / 4.0 MiB  25% 0.5 MiB/s"
        );
        assert_eq!(
            progress_line(0, 0, Duration::ZERO),
            "0.0 / 0.0 MiB 100% 0.0 MiB/s"
        );
    }
}
