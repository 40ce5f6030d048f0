//! Simulated hosts: one Linux network namespace per host, each joined by a veth pair to a bridge
//! that lives in a namespace of its own, so the machine's own network is never touched.
//!
//! Every host has an address in `10.77.0.0/24` (a subnet that exists only inside these
//! namespaces) and every host's name resolves on every host through `/etc/netns/<ns>/hosts`, which
//! `ip netns exec` mounts over `/etc/hosts`. Namespace names carry the prefix [`PREFIX`], the
//! creating process's pid and a counter: a [`Network`] removes its namespaces when dropped (also
//! when a test panics), and [`sweep_stale`] removes those of processes that died without cleaning
//! up (a killed test run).
//!
//! Faults are made with the kernel's own tools: `iptables` DROP rules for a partition (dropped on
//! arrival on both sides, so no FIN or RST reaches anyone and no local send fails early), `ip link
//! set down`, and a `tc ... tbf` token bucket for bandwidth (the kernel here has no `netem`; delay
//! and loss come from [`crate::proxy`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::HarnessError;

/// The prefix of every namespace this harness creates.
pub const PREFIX: &str = "rpcct";

/// The environment variable that turns a skip (not root, no `ip`) into a failure.
const CI_VAR: &str = "CI";

static NETWORKS: AtomicU32 = AtomicU32::new(0);

/// One simulated host.
#[derive(Clone, Debug)]
pub struct Host {
    /// The host's DNS name, resolvable on every host of its network.
    pub name: String,
    /// The network namespace the host is.
    pub ns: String,
    /// The host's own address.
    pub ip: Ipv4Addr,
    /// The veth end on the bridge that leads to this host.
    bridge_port: String,
}

/// A set of hosts on one bridge; removed when dropped.
#[derive(Debug)]
pub struct Network {
    bridge_ns: String,
    hosts: Vec<Host>,
}

/// Why the harness cannot run here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    match effective_uid() {
        Some(0) => {}
        Some(uid) => {
            return Some(format!(
                "network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN); running as uid {uid}"
            ))
        }
        None => return Some("cannot read the effective uid from /proc/self/status".into()),
    }
    for tool in ["ip", "iptables", "tc"] {
        if which(tool).is_none() {
            return Some(format!(
                "`{tool}` is not installed (apt-get install iproute2 iptables)"
            ));
        }
    }
    None
}

/// True when the scenario can run. Otherwise prints why and returns false, except under `CI=true`,
/// where a skipped scenario is a failure (it panics with the reason).
pub fn available_or_skip(scenario: &str) -> bool {
    let Some(reason) = unavailable() else {
        return true;
    };
    if std::env::var(CI_VAR).is_ok_and(|v| v == "true") {
        panic!("{scenario} cannot run under CI=true: {reason}");
    }
    eprintln!("skipping {scenario}: {reason}");
    false
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Runs a system command and fails with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(HarnessError::io(format!("running {program}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HarnessError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String, HarnessError> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

fn hosts_dir(ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(ns)
}

/// Removes the namespaces (and their `/etc/netns` files) of harness runs whose process is gone,
/// killing whatever still runs inside them.
pub fn sweep_stale() {
    let me = std::process::id().to_string();
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    let mut names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    if let Ok(dirs) = std::fs::read_dir("/etc/netns") {
        names.extend(
            dirs.flatten()
                .map(|d| d.file_name().to_string_lossy().into_owned()),
        );
    }
    names.sort();
    names.dedup();
    for ns in names {
        let mut parts = ns.split('-');
        if parts.next() != Some(PREFIX) {
            continue;
        }
        let Some(pid) = parts.next() else { continue };
        if pid == me || Path::new("/proc").join(pid).exists() {
            continue;
        }
        tracing::info!(ns, "removing a stale namespace of a dead harness run");
        remove_ns(&ns);
    }
}

/// Kills every process in `ns`, deletes it and its `/etc/netns` directory. Best effort: used on
/// the way out, where an error cannot be acted on.
fn remove_ns(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-KILL", pid]);
        }
    }
    let _ = run("ip", &["netns", "del", ns]);
    let _ = std::fs::remove_dir_all(hosts_dir(ns));
}

impl Network {
    /// Creates one namespace per name in `hosts` (addresses 10.77.0.1, .2, ... in order), the
    /// bridge between them, and the hosts files. Sweeps stale namespaces first.
    pub fn new(hosts: &[&str]) -> Result<Network, HarnessError> {
        sweep_stale();
        let id = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            NETWORKS.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Network {
            bridge_ns: format!("{id}-bridge"),
            hosts: Vec::new(),
        };
        // From here on, Drop removes whatever was created, also on an error.
        run("ip", &["netns", "add", &net.bridge_ns])?;
        let br = net.bridge_ns.clone();
        run("ip", &["-n", &br, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &br, "link", "set", "br0", "up"])?;
        for (i, name) in hosts.iter().enumerate() {
            let host = Host {
                name: name.to_string(),
                ns: format!("{id}-{i}"),
                ip: Ipv4Addr::new(10, 77, 0, i as u8 + 1),
                bridge_port: format!("p{i}"),
            };
            run("ip", &["netns", "add", &host.ns])?;
            net.hosts.push(host.clone());
            let ns = host.ns.as_str();
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    &br,
                    "link",
                    "add",
                    &host.bridge_port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                ],
            )?;
            run(
                "ip",
                &["-n", &br, "link", "set", &host.bridge_port, "master", "br0"],
            )?;
            run("ip", &["-n", &br, "link", "set", &host.bridge_port, "up"])?;
            // A host announces its address (gratuitous ARP) whenever its link comes up, as a
            // host taking over an address does.
            in_ns(
                ns,
                "sh",
                &[
                    "-c",
                    "echo 1 > /proc/sys/net/ipv4/conf/eth0/arp_notify \
                     && echo 1 > /proc/sys/net/ipv4/conf/all/arp_accept",
                ],
            )?;
            let cidr = format!("{}/24", host.ip);
            run("ip", &["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
            run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        }
        let mut hosts_file = String::from("127.0.0.1 localhost\n");
        for h in &net.hosts {
            hosts_file.push_str(&format!("{} {}\n", h.ip, h.name));
        }
        for h in &net.hosts {
            let dir = hosts_dir(&h.ns);
            std::fs::create_dir_all(&dir).map_err(HarnessError::io("creating /etc/netns"))?;
            std::fs::write(dir.join("hosts"), &hosts_file)
                .map_err(HarnessError::io("writing /etc/netns/<ns>/hosts"))?;
        }
        Ok(net)
    }

    /// The host called `name`.
    ///
    /// # Panics
    /// When there is no such host (a mistake in the scenario).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Every host.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// A command that runs `program` on host `name` (through `ip netns exec`, which also mounts
    /// the host's `/etc/hosts`).
    pub fn command(&self, name: &str, program: impl AsRef<Path>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host(name).ns])
            .arg(program.as_ref())
            // Plain log lines, for the scenarios to read.
            .env("NO_COLOR", "1");
        c
    }

    /// Cuts host `name` off from every other host: everything arriving at it is dropped, and every
    /// other host drops what arrives from it. Nothing is refused, so no FIN or RST reaches anyone.
    pub fn partition(&self, name: &str) -> Result<(), HarnessError> {
        self.partition_rules(name, "-I")
    }

    /// Undoes [`partition`](Self::partition); connections that were open resume.
    pub fn heal(&self, name: &str) -> Result<(), HarnessError> {
        self.partition_rules(name, "-D")
    }

    fn partition_rules(&self, name: &str, op: &str) -> Result<(), HarnessError> {
        let cut = self.host(name);
        in_ns(
            &cut.ns,
            "iptables",
            &["-w", op, "INPUT", "-i", "eth0", "-j", "DROP"],
        )?;
        let from = cut.ip.to_string();
        for h in self.hosts.iter().filter(|h| h.name != name) {
            in_ns(
                &h.ns,
                "iptables",
                &["-w", op, "INPUT", "-s", &from, "-j", "DROP"],
            )?;
        }
        Ok(())
    }

    /// Takes host `name`'s link down (`up == false`) or brings it back up.
    pub fn set_link(&self, name: &str, up: bool) -> Result<(), HarnessError> {
        let state = if up { "up" } else { "down" };
        run(
            "ip",
            &["-n", &self.host(name).ns, "link", "set", "eth0", state],
        )
        .map(drop)
    }

    /// Limits host `name`'s link to `rate` (a `tc` rate such as `10mbit`) in both directions with
    /// a token bucket filter: on the host's egress and on the bridge port's egress towards it.
    pub fn limit_bandwidth(&self, name: &str, rate: &str) -> Result<(), HarnessError> {
        let h = self.host(name);
        let tbf = [
            "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms",
        ];
        let mut args = vec!["qdisc", "replace", "dev", "eth0"];
        args.extend_from_slice(&tbf);
        in_ns(&h.ns, "tc", &args)?;
        let mut args = vec!["qdisc", "replace", "dev", h.bridge_port.as_str()];
        args.extend_from_slice(&tbf);
        in_ns(&self.bridge_ns, "tc", &args).map(drop)
    }

    /// Moves the address of host `from` to host `to` (which keeps its own as well), as a standby
    /// taking over a failed machine's address; `from`'s link goes down. `to`'s link is cycled so
    /// that it announces the address (gratuitous ARP), and the other hosts' neighbour caches are
    /// flushed so that they resolve the address again.
    pub fn move_address(&self, from: &str, to: &str) -> Result<Ipv4Addr, HarnessError> {
        let (src, dst) = (self.host(from), self.host(to));
        let cidr = format!("{}/24", src.ip);
        run("ip", &["-n", &src.ns, "addr", "del", &cidr, "dev", "eth0"])?;
        run("ip", &["-n", &src.ns, "link", "set", "eth0", "down"])?;
        run("ip", &["-n", &dst.ns, "link", "set", "eth0", "down"])?;
        run("ip", &["-n", &dst.ns, "addr", "add", &cidr, "dev", "eth0"])?;
        run("ip", &["-n", &dst.ns, "link", "set", "eth0", "up"])?;
        // The announcement can go out before the bridge forwards on the port that just came up;
        // the other hosts forget the old hardware address either way, as the announcement would
        // have made them do.
        for h in self.hosts.iter().filter(|h| h.name != from && h.name != to) {
            run("ip", &["-n", &h.ns, "neigh", "flush", "dev", "eth0"])?;
        }
        Ok(src.ip)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for h in &self.hosts {
            remove_ns(&h.ns);
        }
        remove_ns(&self.bridge_ns);
    }
}
