//! `rpcenv demo`: a master and three workers as separate processes on 127.0.0.1 (this binary
//! run in the other roles), one worker in client mode; 200 tasks; one worker killed with SIGKILL
//! mid-run; every task must complete exactly once. The master publishes a job file (a few MiB)
//! from its file server, and every worker fetches it through `open_channel` and checks its
//! SHA-256 before its first task.
//!
//! Every connection is authenticated: the demo writes a random secret to a file only its user
//! can read and hands the file's path (never the secret) to its children through
//! `authenticate.secret.file`; the file is removed at the end. `--no-auth` turns this off.
//!
//! The children watch their standard input: when this process ends (normally, on Ctrl-C, or
//! killed), the pipe closes and they exit, so nothing is left behind.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rand::RngCore;
use rpcenv::{RpcConf, RpcEndpointRef, RpcEnv};
use rpcenv_cli::cluster::{ClusterStatus, MasterMsg, Submitted};

use crate::generated::GeneratedFile;
use crate::hosts::HostArgs;

/// Arguments of `rpcenv demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Tasks to run.
    #[arg(long, default_value_t = 200)]
    pub tasks: u64,
    /// The master's worker timeout (short, so that the demo shows heartbeat expiry quickly; the
    /// default of `rpcenv master` for real use is 60s).
    #[arg(long, default_value = "2s")]
    pub worker_timeout: String,
    /// Time one task takes on a worker.
    #[arg(long, default_value = "40ms")]
    pub task_time: String,
    /// Run without authentication (by default the demo's processes share a random secret).
    #[arg(long)]
    pub no_auth: bool,
    #[command(flatten)]
    pub hosts: HostArgs,
}

const WORKERS: usize = 3;
/// Size of the job file every worker fetches.
const JOB_BYTES: u64 = 3 << 20;
/// How long a child has to print an expected line.
const LINE_WAIT: Duration = Duration::from_secs(10);
/// How long a worker has to download the job file (an unoptimized build encrypts and decrypts
/// at a few MB/s, and the three workers share the master).
const FETCH_WAIT: Duration = Duration::from_secs(40);
const CORES: u32 = 2;
/// The whole demo must finish well within this.
const DEADLINE: Duration = Duration::from_secs(45);

/// A file holding a random secret, readable only by this user; removed when dropped.
struct SecretFile {
    path: PathBuf,
}

impl SecretFile {
    fn create() -> anyhow::Result<SecretFile> {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let path = std::env::temp_dir().join(format!(
            "rpcenv-demo-{}-{:016x}.secret",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create the secret file {}", path.display()))?;
        // From here on the file is removed whatever happens.
        let guard = SecretFile { path };
        file.write_all(&secret)
            .with_context(|| format!("cannot write the secret file {}", guard.path.display()))?;
        Ok(guard)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        crate::roles::remove_if_present(&self.path);
    }
}

/// A child process; killed (and reaped) when dropped.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Its standard output, line by line.
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(name: &str, args: &[String], first_line: &str) -> anyhow::Result<(Proc, String)> {
        let mut proc = Proc::start(name, args)?;
        let line = proc.next_line(first_line, LINE_WAIT)?;
        Ok((proc, line))
    }

    /// Starts the child without waiting for its output.
    fn start(name: &str, args: &[String]) -> anyhow::Result<Proc> {
        let exe = std::env::current_exe().context("cannot find the rpcenv binary")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start the {name} process"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            name: name.to_string(),
            child,
            stdin,
            lines: rx,
        })
    }

    /// Its next line of output, which must start with `expected` and come within `wait`.
    fn next_line(&mut self, expected: &str, wait: Duration) -> anyhow::Result<String> {
        let name = &self.name;
        let line = self.lines.recv_timeout(wait).map_err(|_| {
            anyhow!("the {name} process did not print {expected:?}... within {wait:?}")
        })?;
        if !line.starts_with(expected) {
            self.kill();
            bail!(
                "the {} process said {line:?}, expected {expected:?}...",
                self.name
            );
        }
        Ok(line)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes its standard input (it shuts down by itself), then waits a little, then kills.
    fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(process = %self.name, "did not exit after its stdin closed; killing it");
        self.kill();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `rpcenv demo`.
pub fn run(
    args: &DemoArgs,
    conf: &RpcConf,
    conf_args: &[String],
    log_level: &str,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    match play(args, conf, conf_args, log_level, started) {
        Ok(summary) => {
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("demo FAILED: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn common_args(conf_args: &[String], log_level: &str) -> Vec<String> {
    let mut v = vec!["--log-level".to_string(), log_level.to_string()];
    for c in conf_args {
        v.push("--conf".into());
        v.push(c.clone());
    }
    v
}

fn play(
    args: &DemoArgs,
    conf: &RpcConf,
    conf_args: &[String],
    log_level: &str,
    started: Instant,
) -> anyhow::Result<String> {
    let mut conf = conf.clone();
    let mut conf_args = conf_args.to_vec();
    // Declared first, so dropped (the file removed) after the children are stopped.
    let secret = if args.no_auth || conf.contains("authenticate") {
        None
    } else {
        let secret = SecretFile::create()?;
        println!("demo secret file: {}", secret.path().display());
        let path = secret.path().to_string_lossy().into_owned();
        for (key, value) in [
            ("authenticate", "true".to_string()),
            ("authenticate.secret.file", path),
        ] {
            conf.set(key, value.clone())?;
            conf_args.push(format!("{key}={value}"));
        }
        Some(secret)
    };
    let common = common_args(&conf_args, log_level);
    // The job's file, published by the master and fetched by every worker before its first
    // task; removed after the children are stopped.
    let job = GeneratedFile::create("demo-job", JOB_BYTES)?;
    let mut master_args: Vec<String> = vec!["master".into()];
    master_args.extend(args.hosts.to_args());
    master_args.extend([
        "--port".into(),
        "0".into(),
        "--worker-timeout".into(),
        args.worker_timeout.clone(),
        "--parent-watch".into(),
        "--serve-file".into(),
        job.path().to_string_lossy().into_owned(),
        // Should this process be killed, the master removes the job file when it sees it gone.
        "--remove-on-exit".into(),
        job.path().to_string_lossy().into_owned(),
    ]);
    if let Some(secret) = &secret {
        // Should this process be killed, the master removes the file when it sees it gone.
        master_args.push("--remove-on-exit".into());
        master_args.push(secret.path().to_string_lossy().into_owned());
    }
    master_args.extend(common.iter().cloned());
    let (mut master, line) = Proc::spawn("master", &master_args, "master listening on ")?;
    let uri = line.trim_start_matches("master listening on ").to_string();
    println!("started master at {uri}");
    let served = master.next_line("serving ", LINE_WAIT)?;
    let job_uri = served.trim_start_matches("serving ").to_string();
    println!(
        "master serving the job file at {job_uri} ({} bytes)",
        job.len()
    );

    let mut workers = Vec::new();
    let mut fetches = 0;
    for i in 1..=WORKERS {
        let id = format!("worker-{i}");
        let mut w: Vec<String> = vec![
            "worker".into(),
            "--master".into(),
            uri.clone(),
            "--cores".into(),
            CORES.to_string(),
            "--id".into(),
            id.clone(),
            "--task-time".into(),
            args.task_time.clone(),
            "--parent-watch".into(),
            "--job-file".into(),
            job_uri.clone(),
            "--job-sha256".into(),
            job.sha256().to_string(),
        ];
        // The last worker has no listening port: the master reaches it over its connection.
        if i == WORKERS {
            w.push("--client-mode".into());
        } else {
            w.extend(args.hosts.to_args());
        }
        w.extend(common.iter().cloned());
        workers.push(Proc::start(&id, &w)?);
    }
    // Started together, the workers fetch the job file at the same time, so that no worker is
    // registered (and heartbeating) for long while another's download keeps the master busy.
    for (i, proc) in workers.iter_mut().enumerate() {
        let id = format!("worker-{}", i + 1);
        proc.next_line(&format!("worker {id} fetched {job_uri} "), FETCH_WAIT)?;
        fetches += 1;
        let line = proc.next_line(&format!("worker {id} registered"), LINE_WAIT)?;
        println!("started {line}");
    }

    let env = RpcEnv::builder("demo")
        .client_mode(true)
        .conf(conf)
        .build()?;
    let outcome = drive(args, &env, &uri, &mut workers, started);
    // Tear down: the master tells its workers to exit, then everything stops.
    if let Ok(m) = env.setup_endpoint_ref_by_uri::<MasterMsg>(&uri) {
        if let Err(e) = m.ask_sync::<u64>(MasterMsg::Decommission) {
            tracing::warn!(error = %e, "the master did not decommission its workers");
        }
    }
    env.shutdown();
    for w in &mut workers {
        w.stop();
    }
    master.stop();
    let status = outcome?;
    let summary = check(args, &status)?;
    print_summary(&status, started.elapsed());
    println!(
        "job file: fetched by {fetches} of {WORKERS} workers through open_channel before their first task, {} bytes each, SHA-256 verified",
        job.len()
    );
    Ok(summary)
}

fn status(master: &RpcEndpointRef<MasterMsg>) -> anyhow::Result<ClusterStatus> {
    master
        .ask_sync(MasterMsg::Status)
        .context("the master did not answer a status request")
}

fn drive(
    args: &DemoArgs,
    env: &RpcEnv,
    uri: &str,
    workers: &mut [Proc],
    started: Instant,
) -> anyhow::Result<ClusterStatus> {
    let master: RpcEndpointRef<MasterMsg> = env.setup_endpoint_ref_by_uri(uri)?;
    let deadline = started + DEADLINE;
    let live = std::io::stdout().is_terminal();
    let mut last_print = Instant::now() - Duration::from_secs(1);
    let mut show = |s: &ClusterStatus, force: bool| {
        let line = format!(
            "workers alive {} | tasks queued {} / running {} / done {} of {} | heartbeats {} | lost {}",
            s.workers_alive,
            s.queued,
            s.running,
            s.done,
            s.total,
            s.heartbeats,
            s.lost_count
        );
        if live {
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else if force || last_print.elapsed() >= Duration::from_millis(500) {
            println!("{line}");
            last_print = Instant::now();
        }
    };

    // Every worker registered.
    loop {
        let s = status(&master)?;
        if s.workers_alive == WORKERS {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {} of {WORKERS} workers registered", s.workers_alive);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Submitted { count: total, .. } =
        master.ask_sync(MasterMsg::SubmitTasks { count: args.tasks })?;
    if live {
        println!();
    }

    // Run; kill worker-1 with SIGKILL once a quarter of the tasks are done.
    let kill_at = (args.tasks / 4).max(1) as usize;
    let mut killed = false;
    let mut s;
    loop {
        s = status(&master)?;
        show(&s, false);
        if !killed && s.done >= kill_at {
            workers[0].kill();
            killed = true;
            if live {
                println!();
            }
            println!(
                "killed worker-1 (SIGKILL) with {} of {total} tasks done",
                s.done
            );
        }
        if killed && s.done as u64 == total && s.lost_count > 0 {
            break;
        }
        if Instant::now() > deadline {
            if live {
                println!();
            }
            bail!(
                "timed out: {}/{total} tasks done, {} lost worker(s) detected",
                s.done,
                s.lost_count
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    show(&s, true);
    if live {
        println!();
    }
    Ok(s)
}

fn check(args: &DemoArgs, s: &ClusterStatus) -> anyhow::Result<String> {
    let completions: u64 = s.per_worker.values().sum();
    if s.done as u64 != args.tasks || completions != args.tasks {
        bail!(
            "{} of {} tasks done ({} completions recorded)",
            s.done,
            args.tasks,
            completions
        );
    }
    if s.duplicates != 0 {
        bail!("{} tasks completed more than once", s.duplicates);
    }
    if s.wrong_results != 0 {
        bail!("{} tasks returned a wrong result", s.wrong_results);
    }
    if !s.lost.iter().any(|(id, _)| id == "worker-1") {
        bail!(
            "the killed worker-1 was not detected as lost (lost: {:?})",
            s.lost
        );
    }
    Ok(format!(
        "demo OK: {}/{} tasks completed exactly once, {} lost worker(s) detected",
        s.done, args.tasks, s.lost_count
    ))
}

fn print_summary(s: &ClusterStatus, elapsed: Duration) {
    println!();
    println!("{:<12} {:>15}", "worker", "tasks completed");
    for (id, n) in &s.per_worker {
        println!("{id:<12} {n:>15}");
    }
    println!("{:<12} {:>15}", "total", s.per_worker.values().sum::<u64>());
    for (id, how) in &s.lost {
        println!("lost: {id} (detected by {how})");
    }
    println!(
        "re-queued tasks: {} {:?}; late results ignored: {}; heartbeats: {}; duplicates: {}; elapsed {:.1} s",
        s.requeued.len(),
        s.requeued,
        s.late_results,
        s.heartbeats,
        s.duplicates,
        elapsed.as_secs_f64()
    );
}
