//! `--bind-host`, `--advertise-host` and their shorthand `--host`: where a process listens, and
//! the name other hosts reach it by (which goes into every URI and ref it hands out).

use rpcenv::RpcEnvBuilder;

/// The host options of `master`, `worker` and `demo`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct HostArgs {
    /// Shorthand for --bind-host and --advertise-host with the same value.
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// The address to listen on (default 127.0.0.1; 0.0.0.0 listens on every interface).
    #[arg(long, value_name = "HOST")]
    pub bind_host: Option<String>,
    /// The name other processes reach this one by, written into every URI and ref it hands out
    /// (default: the bind host).
    #[arg(long, value_name = "HOST")]
    pub advertise_host: Option<String>,
}

impl HostArgs {
    /// The host to bind.
    pub fn bind(&self) -> &str {
        self.bind_host
            .as_deref()
            .or(self.host.as_deref())
            .unwrap_or("127.0.0.1")
    }

    /// The host to advertise.
    pub fn advertise(&self) -> &str {
        self.advertise_host
            .as_deref()
            .or(self.host.as_deref())
            .unwrap_or_else(|| self.bind())
    }

    /// Applies both to an env builder.
    pub fn apply(&self, builder: RpcEnvBuilder) -> RpcEnvBuilder {
        builder
            .bind_host(self.bind())
            .advertise_host(self.advertise())
    }

    /// The same choice as command-line arguments (for the demo's children).
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--bind-host".into(),
            self.bind().into(),
            "--advertise-host".into(),
            self.advertise().into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(host: Option<&str>, bind: Option<&str>, advertise: Option<&str>) -> HostArgs {
        HostArgs {
            host: host.map(Into::into),
            bind_host: bind.map(Into::into),
            advertise_host: advertise.map(Into::into),
        }
    }

    #[test]
    fn host_is_a_shorthand_for_both_and_the_specific_flags_win() {
        let h = hosts(None, None, None);
        assert_eq!((h.bind(), h.advertise()), ("127.0.0.1", "127.0.0.1"));
        let h = hosts(Some("a"), None, None);
        assert_eq!((h.bind(), h.advertise()), ("a", "a"));
        let h = hosts(Some("a"), Some("0.0.0.0"), None);
        assert_eq!((h.bind(), h.advertise()), ("0.0.0.0", "a"));
        let h = hosts(None, Some("0.0.0.0"), Some("node1"));
        assert_eq!((h.bind(), h.advertise()), ("0.0.0.0", "node1"));
        let h = hosts(None, Some("10.0.0.1"), None);
        assert_eq!((h.bind(), h.advertise()), ("10.0.0.1", "10.0.0.1"));
    }
}
