//! `rpcenv master` and `rpcenv worker`: the cluster's two roles as processes.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use anyhow::Context;
use rpcenv::{RpcConf, RpcEndpointAddress, RpcEnv, RpcError, RpcTimeout};
use rpcenv_cli::cluster::{
    Backoff, Limits, Master, MasterMsg, MasterRef, Registered, Worker, WorkerEvent, WorkerMsg,
    WorkerRef, DEFAULT_MAX_TASKS_PER_SUBMIT, HEARTBEAT_INTERVAL, MASTER, MAX_TASKS_PER_SUBMIT_KEY,
    WORKER,
};

use crate::hosts::HostArgs;
use crate::settings::app_u64;

/// The default worker timeout for real use (Spark's `spark.worker.timeout` is 60 s).
pub const DEFAULT_WORKER_TIMEOUT: &str = "60s";
/// How long one registration attempt waits for the master's answer.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `rpcenv master`.
#[derive(clap::Args, Debug)]
pub struct MasterArgs {
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Port to listen on (0 picks a free one). A taken port is an error unless --port-retries
    /// allows trying the next ones.
    #[arg(long, default_value_t = 7077)]
    pub port: u16,
    /// How many successive ports to try when the port is taken (workers must then be given the
    /// port printed on the first line).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub port_retries: u32,
    /// A worker without heartbeat for this long is lost and its tasks re-queued.
    #[arg(long, default_value = DEFAULT_WORKER_TIMEOUT, value_parser = parse_duration)]
    pub worker_timeout: Duration,
    /// Exit when standard input closes (the demo runs its children this way).
    #[arg(long, hide = true)]
    pub parent_watch: bool,
    /// A file to remove when exiting (repeatable: the demo's secret and job files, so that they
    /// go even if the demo itself is killed).
    #[arg(long, hide = true, value_name = "PATH")]
    pub remove_on_exit: Vec<PathBuf>,
    /// Serve this file from the master's file server at rpc://HOST:PORT/files/NAME (repeatable);
    /// a `serving <uri>` line is printed for it after the first line.
    #[arg(long = "serve-file", value_name = "PATH")]
    pub serve_files: Vec<PathBuf>,
    /// Serve this file at rpc://HOST:PORT/jars/NAME (repeatable); printed like --serve-file.
    #[arg(long = "serve-jar", value_name = "PATH")]
    pub serve_jars: Vec<PathBuf>,
    /// Serve the files under directory DIR at rpc://HOST:PORT/BASE/... (repeatable, e.g.
    /// --serve-dir /classes=out/classes); the directory's base URI is printed like --serve-file.
    #[arg(long = "serve-dir", value_name = "BASE=DIR", value_parser = parse_serve_dir)]
    pub serve_dirs: Vec<(String, PathBuf)>,
}

fn parse_serve_dir(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((base, dir)) if !base.is_empty() && !dir.is_empty() => {
            Ok((base.to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!(
            "{s:?}: expected BASE=DIR, e.g. /classes=out/classes"
        )),
    }
}

/// Registers the files of --serve-file, --serve-jar and --serve-dir (in that order) with the
/// master's file server; returns their URIs.
fn serve_files(env: &RpcEnv, args: &MasterArgs) -> anyhow::Result<Vec<String>> {
    let mut uris = Vec::new();
    if args.serve_files.is_empty() && args.serve_jars.is_empty() && args.serve_dirs.is_empty() {
        return Ok(uris);
    }
    let server = env.file_server()?;
    for path in &args.serve_files {
        let uri = server
            .add_file(path)
            .with_context(|| format!("--serve-file {}", path.display()))?;
        uris.push(uri);
    }
    for path in &args.serve_jars {
        let uri = server
            .add_jar(path)
            .with_context(|| format!("--serve-jar {}", path.display()))?;
        uris.push(uri);
    }
    for (base, dir) in &args.serve_dirs {
        let uri = server
            .add_directory(base, dir)
            .with_context(|| format!("--serve-dir {base}={}", dir.display()))?;
        uris.push(uri);
    }
    Ok(uris)
}

/// Arguments of `rpcenv worker`.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The master's URI, `rpc://master@host:port`.
    #[arg(long)]
    pub master: String,
    /// Tasks run at once.
    #[arg(long, default_value_t = 2)]
    pub cores: u32,
    /// Run without a listening port: the master reaches this worker over its own connection
    /// (the host options and --port then do not apply).
    #[arg(long)]
    pub client_mode: bool,
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// The worker's id (default: worker-<pid>).
    #[arg(long)]
    pub id: Option<String>,
    /// Time one task takes.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub task_time: Duration,
    /// Exit when standard input closes (the demo runs its children this way).
    #[arg(long, hide = true)]
    pub parent_watch: bool,
    /// Before registering, read this file from its file server (e.g. the master's --serve-file)
    /// through open_channel, as a Spark executor fetches its job's files.
    #[arg(long, value_name = "URI", requires = "job_sha256")]
    pub job_file: Option<String>,
    /// The SHA-256 (hex) that the --job-file must have; the worker exits if it differs.
    #[arg(long, value_name = "HEX", requires = "job_file")]
    pub job_sha256: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    rpcenv::conf::parse_duration(s, rpcenv::conf::TimeUnit::Seconds)
}

/// How long a process whose parent is gone may take to shut down before it exits regardless.
const ORPHAN_SHUTDOWN_LIMIT: Duration = Duration::from_secs(20);

/// With `--parent-watch`, sends `exit` once standard input closes (the parent died or let go).
///
/// A child must not outlive its parent: if the shutdown that follows has not ended the process
/// within [`ORPHAN_SHUTDOWN_LIMIT`], `last_words` runs (removing the files the process was to
/// remove) and the process exits with status 1, logging that its shutdown hung.
fn watch_parent<T: Send + 'static>(
    parent_watch: bool,
    exit: Sender<T>,
    event: T,
    last_words: impl FnOnce() + Send + 'static,
) {
    if !parent_watch {
        return;
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        while matches!(lock.read_line(&mut sink), Ok(n) if n > 0) {
            sink.clear();
        }
        let _ = exit.send(event);
        std::thread::sleep(ORPHAN_SHUTDOWN_LIMIT);
        tracing::error!(
            limit = ?ORPHAN_SHUTDOWN_LIMIT,
            "the parent process is gone and the shutdown has not ended: exiting anyway"
        );
        last_words();
        std::process::exit(1);
    });
}

/// `rpcenv master`.
pub fn run_master(args: &MasterArgs, conf: &RpcConf) -> anyhow::Result<ExitCode> {
    let limits = Limits {
        worker_timeout: args.worker_timeout,
        max_tasks_per_submit: app_u64(
            conf,
            MAX_TASKS_PER_SUBMIT_KEY,
            DEFAULT_MAX_TASKS_PER_SUBMIT,
        )?,
    };
    let mut conf = conf.clone();
    conf.set("port.maxRetries", args.port_retries.to_string())?;
    let env = args
        .hosts
        .apply(RpcEnv::builder(MASTER))
        .port(args.port)
        .conf(conf)
        .build()
        .with_context(|| {
            format!(
                "cannot start the master on port {} of {} (if the port is taken, stop what holds \
                 it, pick another --port, or allow --port-retries N)",
                args.port,
                args.hosts.bind()
            )
        })?;
    env.setup_endpoint(MASTER, Master::new(limits))?;
    let served = serve_files(&env, args)?;
    let address = env.address().expect("a server env has an address");
    println!("master listening on rpc://{MASTER}@{address}");
    for uri in served {
        println!("serving {uri}");
    }
    std::io::stdout().flush()?;
    let (exit, signalled) = mpsc::channel();
    let leftovers = args.remove_on_exit.clone();
    watch_parent(args.parent_watch, exit.clone(), (), move || {
        for path in &leftovers {
            remove_if_present(path);
        }
    });
    // Without --parent-watch the master runs until killed: the sender kept here never sends.
    let _ = signalled.recv();
    drop(exit);
    env.shutdown();
    for path in &args.remove_on_exit {
        remove_if_present(path);
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes `path`; a file already gone is fine.
pub fn remove_if_present(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a file");
        }
        _ => {}
    }
}

/// A worker's registrations with its master.
struct Registrar<'a> {
    args: &'a WorkerArgs,
    id: String,
    master: MasterRef,
    me: WorkerRef,
}

impl Registrar<'_> {
    /// One registration: the master's answer is handed to the worker endpoint, then the first
    /// heartbeat tells the master that the worker knows its registration (it then gets tasks).
    fn register(&self) -> Result<Registered, RpcError> {
        let registered: Registered = self.master.ask_sync_with_timeout(
            MasterMsg::RegisterWorker {
                id: self.id.clone(),
                cores: self.args.cores,
                worker: self.me.clone(),
            },
            RpcTimeout::new(REGISTRATION_TIMEOUT, "the worker's registration timeout"),
        )?;
        self.me
            .ask_sync::<()>(WorkerMsg::Registered(registered.clone()))?;
        self.heartbeat(&registered)?;
        let reachable = match self.me.address() {
            Some(a) => format!("reachable at {a}"),
            None => "client mode".to_string(),
        };
        println!(
            "worker {} registered with {} ({} cores, {reachable})",
            self.id, self.args.master, self.args.cores,
        );
        let _ = std::io::stdout().flush();
        Ok(registered)
    }

    fn heartbeat(&self, r: &Registered) -> Result<(), RpcError> {
        r.master.send(MasterMsg::Heartbeat {
            id: self.id.clone(),
            registration: r.registration,
            worker: self.me.clone(),
        })
    }

    /// Heartbeats while registered; registers again (with backoff) when the master is lost or
    /// forgets this worker; returns when told to exit.
    fn run(&self, mut current: Option<Registered>, events: &Receiver<WorkerEvent>) {
        let mut backoff = Backoff::new();
        let mut attempt = 0u32;
        let mut rng = rand::rng();
        loop {
            let wait = match &current {
                Some(r) => {
                    if let Err(e) = self.heartbeat(r) {
                        tracing::warn!(error = %e, "heartbeat failed: registering with the master again");
                        current = None;
                        continue;
                    }
                    HEARTBEAT_INTERVAL
                }
                None => {
                    attempt += 1;
                    match self.register() {
                        Ok(r) => {
                            current = Some(r);
                            backoff = Backoff::new();
                            attempt = 0;
                            HEARTBEAT_INTERVAL
                        }
                        Err(e) => {
                            let wait = backoff.next_wait(&mut rng);
                            tracing::warn!(
                                attempt,
                                next_in = ?wait,
                                "registration with {} failed: {e}",
                                self.args.master
                            );
                            wait
                        }
                    }
                }
            };
            match events.recv_timeout(wait) {
                Ok(WorkerEvent::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(event @ (WorkerEvent::Reconnect | WorkerEvent::MasterDisconnected))
                    if current.is_some() =>
                {
                    let why = if event == WorkerEvent::Reconnect {
                        "the master does not know this worker's registration (ReconnectWorker)"
                    } else {
                        "the connection to the master closed"
                    };
                    tracing::warn!(worker = %self.id, "{why}: registering again");
                    current = None;
                }
                // While unregistered the next attempt is already due.
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// `rpcenv worker`.
pub fn run_worker(args: &WorkerArgs, conf: &RpcConf) -> anyhow::Result<ExitCode> {
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let target = RpcEndpointAddress::parse(&args.master)
        .with_context(|| format!("--master {}", args.master))?;
    // The registration backoff is this worker's policy for reaching its master; rpcenv's
    // fast-fail window after a failed connect (rpc.io.retryWait, doubling up to 30 s) would hide a
    // restarted master for that long, so it is off unless configured.
    let mut conf = conf.clone();
    if !conf.contains("rpc.io.retryWait") {
        conf.set("rpc.io.retryWait", "0ms")?;
    }
    let mut builder = RpcEnv::builder(&id)
        .client_mode(args.client_mode)
        .conf(conf);
    if !args.client_mode {
        builder = args.hosts.apply(builder).port(args.port);
    }
    let env = builder.build().context("cannot start the worker")?;
    let master: MasterRef = env
        .setup_endpoint_ref_by_uri(&args.master)
        .with_context(|| format!("cannot reach the master at {}", args.master))?;
    let (events_tx, events) = mpsc::channel();
    let me = env.setup_endpoint(
        WORKER,
        Worker::new(
            id.clone(),
            args.task_time,
            target.address().cloned(),
            events_tx.clone(),
        ),
    )?;
    if let (Some(uri), Some(sha256)) = (&args.job_file, &args.job_sha256) {
        let bytes = fetch_job_file(&env, uri, sha256)?;
        println!("worker {id} fetched {uri} ({bytes} bytes, SHA-256 verified)");
        std::io::stdout().flush()?;
    }
    let registrar = Registrar {
        args,
        id,
        master,
        me,
    };
    let first = registrar
        .register()
        .with_context(|| format!("registration with the master at {} failed", args.master))?;
    watch_parent(args.parent_watch, events_tx, WorkerEvent::Shutdown, || {});
    registrar.run(Some(first), &events);
    env.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Reads the job file at `uri` through `open_channel` and checks its SHA-256; returns its length.
fn fetch_job_file(env: &RpcEnv, uri: &str, sha256: &str) -> anyhow::Result<u64> {
    let channel = env
        .open_channel(uri)
        .with_context(|| format!("cannot fetch the job file {uri}"))?;
    let (bytes, got) = crate::generated::sha256_of(channel)
        .with_context(|| format!("cannot fetch the job file {uri}"))?;
    if !got.eq_ignore_ascii_case(sha256) {
        anyhow::bail!("the job file {uri} ({bytes} bytes) has SHA-256 {got}, expected {sha256}");
    }
    Ok(bytes)
}
