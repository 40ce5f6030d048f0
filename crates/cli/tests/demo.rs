//! `rpcenv demo`: the scenario's outcome, its authentication, the job file its workers fetch,
//! and that it leaves nothing behind.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{processes_with, wait_until, Proc};

/// A marker on every process of one demo run (children inherit the demo's `--conf`s).
fn marker(what: &str) -> String {
    format!(
        "app.test.marker={what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Checks the last line of a demo run.
fn assert_ok(lines: &[String]) {
    let all = lines.join("\n");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("demo OK: 200/200 tasks completed exactly once, 1 lost worker(s) detected"),
        "{all}"
    );
    assert!(all.contains("lost: worker-1"), "{all}");
    // Every worker fetched the master's job file through open_channel; reported before the
    // summary.
    let fetched = lines
        .iter()
        .position(|l| {
            l.starts_with("job file: fetched by 3 of 3 workers through open_channel before their first task, 3145728 bytes each, SHA-256 verified")
        })
        .unwrap_or_else(|| panic!("no job-file line: {all}"));
    assert!(fetched < lines.len() - 1, "{all}");
}

#[test]
fn the_demo_authenticates_with_a_private_secret_file_and_leaves_nothing_behind() {
    let started = Instant::now();
    let marker = marker("auth");
    let mut demo = Proc::start(&["demo", "--conf", &marker]);
    let line = demo.out.expect("the secret file line", |l| {
        l.starts_with("demo secret file: ")
    });
    assert!(
        demo.out.seen.len() <= 2,
        "not among the first lines: {:?}",
        demo.out.seen
    );
    let path = PathBuf::from(&line["demo secret file: ".len()..]);
    // While the demo runs: readable by this user only, and the children get its path, never
    // the secret.
    let mode = std::fs::metadata(&path)
        .expect("the secret file exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    let secret = std::fs::read(&path).unwrap();
    assert_eq!(secret.len(), 32);
    demo.out
        .expect("the master", |l| l.starts_with("started master at"));
    wait_until("the children", || processes_with(&marker).len() >= 3);
    let demo_cmdline = std::fs::read(format!("/proc/{}/cmdline", demo.pid())).unwrap();
    for pid in processes_with(&marker) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline);
        // A child between fork and exec still shows the demo's own command line, and one that
        // exited since it was listed (a zombie, or gone) shows none: only the children that are
        // running their subcommand are judged (every one's argv is checked for the secret below).
        if pid != demo.pid() && !cmdline.is_empty() && cmdline != demo_cmdline {
            assert!(text.contains("authenticate=true"), "{text}");
            assert!(
                text.contains(&format!("authenticate.secret.file={}", path.display())),
                "{text}"
            );
        }
        assert!(
            !cmdline.windows(secret.len()).any(|w| w == secret),
            "the secret is in {pid}'s argv"
        );
        assert!(!text.contains("authenticate.secret="), "{text}");
    }
    let rest = demo.out.rest();
    assert!(demo.wait_exit(), "{}", demo.out.seen.join("\n"));
    assert_ok(&rest);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(!path.exists(), "{} left behind", path.display());
    wait_until("every child to exit", || processes_with(&marker).is_empty());
}

#[test]
fn the_demo_without_auth_runs_the_same_scenario() {
    let marker = marker("noauth");
    let mut demo = Proc::start(&["demo", "--no-auth", "--conf", &marker]);
    let rest = demo.out.rest();
    assert!(demo.wait_exit(), "{}", rest.join("\n"));
    assert!(
        !rest.iter().any(|l| l.starts_with("demo secret file")),
        "{rest:?}"
    );
    assert!(!rest.iter().any(|l| l.contains("authenticate")), "{rest:?}");
    assert_ok(&rest);
    wait_until("every child to exit", || processes_with(&marker).is_empty());
}

#[test]
fn killing_the_demo_leaves_no_process_and_no_secret_file_behind() {
    let marker = marker("kill");
    let mut demo = Proc::start(&["demo", "--conf", &marker]);
    let line = demo.out.expect("the secret file line", |l| {
        l.starts_with("demo secret file: ")
    });
    let path = PathBuf::from(&line["demo secret file: ".len()..]);
    demo.out
        .expect("the master", |l| l.starts_with("started master at"));
    let job = demo.out.expect("the job file", |l| {
        l.starts_with("master serving the job file at ")
    });
    let name = job
        .split("/files/")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("the job file's name");
    let job_path = std::env::temp_dir().join(name);
    assert!(job_path.exists(), "{}", job_path.display());
    // The master and at least one worker are running (children carry the marker too).
    wait_until("children to start", || processes_with(&marker).len() >= 3);
    demo.kill(); // SIGKILL: no chance to clean up
    wait_until("every child to exit", || processes_with(&marker).is_empty());
    assert!(!path.exists(), "{} left behind", path.display());
    assert!(!job_path.exists(), "{} left behind", job_path.display());
}
