//! Addresses: [`RpcAddress`] (a host and port) and [`RpcEndpointAddress`] (an endpoint's name at an
//! address, written `rpc://name@host:port`, or `rpc-client://name` for an endpoint of a client-mode
//! env, which has no address).
//!
//! Parsing accepts Spark's schemes (`spark://`, `spark-client://`) as aliases. IPv6 literals are kept
//! in their canonical compressed form and bracketed, so `::0:1` and `[::1]` name the same address.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The scheme rpcenv writes for server addresses.
pub const SCHEME: &str = "rpc";
/// The scheme rpcenv writes for endpoints of client-mode envs.
pub const CLIENT_SCHEME: &str = "rpc-client";
const SPARK_SCHEME: &str = "spark";
const SPARK_CLIENT_SCHEME: &str = "spark-client";

const ADDRESS_FORM: &str = "rpc://host:port";
const ENDPOINT_FORM: &str = "rpc://name@host:port";

/// A URL that could not be parsed as an RPC address.
///
/// Its message quotes the input, says what is wrong and names the expected form:
/// `Invalid RPC URL: "rpc://1.2. 3.4:1234" (invalid host "1.2. 3.4"; expected rpc://host:port)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid RPC URL: \"{url}\" ({reason}; expected {expected})")]
pub struct AddressError {
    /// The input, verbatim.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
    /// The form that was expected.
    pub expected: &'static str,
}

/// A host and port: where an [`RpcEnv`](crate::RpcEnv) listens.
///
/// Cheap to clone (the host is shared). IPv6 hosts are normalized and bracketed:
///
/// ```
/// use rpcenv::RpcAddress;
/// let a = RpcAddress::new("::0:1", 1234);
/// assert_eq!(a.host(), "[::1]");
/// assert_eq!(a.to_url(), "rpc://[::1]:1234");
/// assert_eq!(RpcAddress::from_url("spark://[::1]:1234").unwrap(), a);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RpcAddress {
    host: Arc<str>,
    port: u16,
}

impl RpcAddress {
    /// An address from a host (name, IPv4 or IPv6 literal, bracketed or not) and a port.
    pub fn new(host: impl AsRef<str>, port: u16) -> Self {
        RpcAddress {
            host: normalize_host(host.as_ref()).into(),
            port,
        }
    }

    /// The address of a socket (an IP literal, never a reverse DNS lookup).
    pub fn from_socket_addr(addr: SocketAddr) -> Self {
        Self::new(addr.ip().to_string(), addr.port())
    }

    /// Parses `rpc://host:port` (or `spark://host:port`).
    pub fn from_url(url: &str) -> Result<Self, AddressError> {
        let err = |reason: String| AddressError {
            url: url.to_string(),
            reason,
            expected: ADDRESS_FORM,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| err("no scheme".into()))?;
        if scheme != SCHEME && scheme != SPARK_SCHEME {
            return Err(err(format!("unknown scheme \"{scheme}\"")));
        }
        if rest.contains('@') {
            return Err(err("unexpected endpoint name".into()));
        }
        parse_host_port(rest).map_err(err)
    }

    /// The host; IPv6 literals are bracketed (`[::1]`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`.
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `rpc://host:port`.
    pub fn to_url(&self) -> String {
        format!("{SCHEME}://{}:{}", self.host, self.port)
    }
}

impl fmt::Display for RpcAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for RpcAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for RpcAddress {
    type Err = AddressError;

    /// Parses `rpc://host:port` or a bare `host:port`.
    fn from_str(s: &str) -> Result<Self, AddressError> {
        if s.contains("://") {
            return Self::from_url(s);
        }
        parse_host_port(s).map_err(|reason| AddressError {
            url: s.to_string(),
            reason,
            expected: "host:port",
        })
    }
}

/// The address of one endpoint: its name at an env's address, or, for an endpoint of a client-mode
/// env (which does not listen), its name alone.
///
/// ```
/// use rpcenv::{RpcAddress, RpcEndpointAddress};
/// let e = RpcEndpointAddress::new(Some(RpcAddress::new("localhost", 12345)), "test");
/// assert_eq!(e.to_string(), "rpc://test@localhost:12345");
/// assert_eq!("spark://test@localhost:12345".parse::<RpcEndpointAddress>().unwrap(), e);
/// assert_eq!(RpcEndpointAddress::new(None, "test").to_string(), "rpc-client://test");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RpcEndpointAddress {
    address: Option<RpcAddress>,
    name: Arc<str>,
}

impl RpcEndpointAddress {
    /// An endpoint address; `address` is `None` for endpoints of client-mode envs.
    pub fn new(address: Option<RpcAddress>, name: impl AsRef<str>) -> Self {
        RpcEndpointAddress {
            address,
            name: name.as_ref().into(),
        }
    }

    /// The env's address, `None` for a client-mode endpoint.
    pub fn address(&self) -> Option<&RpcAddress> {
        self.address.as_ref()
    }

    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Parses `rpc://name@host:port`, `rpc-client://name` or their `spark` forms.
    pub fn parse(uri: &str) -> Result<Self, AddressError> {
        let err = |reason: String| AddressError {
            url: uri.to_string(),
            reason,
            expected: ENDPOINT_FORM,
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| err("no scheme".into()))?;
        let client = match scheme {
            SCHEME | SPARK_SCHEME => false,
            CLIENT_SCHEME | SPARK_CLIENT_SCHEME => true,
            other => return Err(err(format!("unknown scheme \"{other}\""))),
        };
        if client {
            validate_name(rest).map_err(err)?;
            return Ok(Self::new(None, rest));
        }
        let (name, host_port) = rest
            .rsplit_once('@')
            .ok_or_else(|| err("no endpoint name".into()))?;
        validate_name(name).map_err(err)?;
        let address = parse_host_port(host_port).map_err(err)?;
        Ok(Self::new(Some(address), name))
    }
}

impl fmt::Display for RpcEndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.address {
            Some(a) => write!(f, "{SCHEME}://{}@{}:{}", self.name, a.host, a.port),
            None => write!(f, "{CLIENT_SCHEME}://{}", self.name),
        }
    }
}

impl fmt::Debug for RpcEndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for RpcEndpointAddress {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, AddressError> {
        Self::parse(s)
    }
}

fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("no endpoint name".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '/' | '?' | '#' | '@' | ':') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("invalid character {c:?} in endpoint name"));
    }
    Ok(())
}

/// Parses `host:port` where host may be a bracketed IPv6 literal. No path, query or fragment.
fn parse_host_port(s: &str) -> Result<RpcAddress, String> {
    if s.contains(['/', '?', '#']) {
        return Err("a path, query or fragment is not allowed".into());
    }
    let (host, port) = if let Some(inner) = s.strip_prefix('[') {
        let (ip, after) = inner
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in host".to_string())?;
        ip.parse::<Ipv6Addr>()
            .map_err(|_| format!("invalid IPv6 address \"{ip}\""))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "no port".to_string())?;
        (&s[..ip.len() + 2], port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(|| "no port".to_string())?;
        if host.is_empty() {
            return Err("no host".into());
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(format!("invalid host \"{host}\""));
        }
        (host, port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port \"{port}\""));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port} is out of range 0-65535"))?;
    Ok(RpcAddress::new(host, port))
}

/// Brackets and canonicalizes IPv6 literals; leaves other hosts as they are.
fn normalize_host(host: &str) -> String {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<Ipv6Addr>() {
        Ok(ip) => format!("[{ip}]"),
        Err(_) => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    //! Spark's NettyRpcAddressSuite and RpcAddressSuite, with our scheme.
    use super::*;

    #[test]
    fn to_string() {
        let a = RpcEndpointAddress::new(Some(RpcAddress::new("localhost", 12345)), "test");
        assert_eq!(a.to_string(), "rpc://test@localhost:12345");
    }

    #[test]
    fn to_string_for_client_mode() {
        assert_eq!(
            RpcEndpointAddress::new(None, "test").to_string(),
            "rpc-client://test"
        );
    }

    #[test]
    fn host_port() {
        let a = RpcAddress::new("1.2.3.4", 1234);
        assert_eq!(a.host(), "1.2.3.4");
        assert_eq!(a.port(), 1234);
        assert_eq!(a.host_port(), "1.2.3.4:1234");
    }

    #[test]
    fn from_spark_url() {
        for url in ["rpc://1.2.3.4:1234", "spark://1.2.3.4:1234"] {
            let a = RpcAddress::from_url(url).unwrap();
            assert_eq!(a.host(), "1.2.3.4");
            assert_eq!(a.port(), 1234);
        }
    }

    #[test]
    fn from_spark_url_a_typo_url() {
        let e = RpcAddress::from_url("rpc://1.2. 3.4:1234").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid RPC URL: \"rpc://1.2. 3.4:1234\" (invalid host \"1.2. 3.4\"; expected rpc://host:port)"
        );
    }

    #[test]
    fn from_spark_url_invalid_scheme() {
        let e = RpcAddress::from_url("invalid://1.2.3.4:1234").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid RPC URL: \"invalid://1.2.3.4:1234\" (unknown scheme \"invalid\"; expected rpc://host:port)"
        );
    }

    #[test]
    fn to_spark_url() {
        assert_eq!(
            RpcAddress::new("1.2.3.4", 1234).to_url(),
            "rpc://1.2.3.4:1234"
        );
    }

    #[test]
    fn spark_39468_ipv6_host_port() {
        let a = RpcAddress::new("::1", 1234);
        assert_eq!(a.host(), "[::1]");
        assert_eq!(a.port(), 1234);
        assert_eq!(a.host_port(), "[::1]:1234");
    }

    #[test]
    fn spark_39468_ipv6_from_spark_url() {
        let a = RpcAddress::from_url("rpc://[::1]:1234").unwrap();
        assert_eq!(a.host(), "[::1]");
        assert_eq!(a.port(), 1234);
    }

    #[test]
    fn spark_39468_ipv6_to_spark_url() {
        assert_eq!(RpcAddress::new("::1", 1234).to_url(), "rpc://[::1]:1234");
    }

    #[test]
    fn spark_42173_consistent_sparse_mapping() {
        assert_eq!(RpcAddress::new("::0:1", 1234).to_url(), "rpc://[::1]:1234");
    }

    #[test]
    fn spark_42173_consistent_sparse_mapping_trailing_0s() {
        assert_eq!(
            RpcAddress::new("2600::", 1234).to_url(),
            "rpc://[2600::]:1234"
        );
    }

    #[test]
    fn endpoint_address_parse_errors_name_the_input_and_the_form() {
        for (uri, reason) in [
            ("rpc://host:1234", "no endpoint name"),
            ("rpc://@host:1234", "no endpoint name"),
            ("rpc://name@host", "no port"),
            (
                "rpc://name@host:99999",
                "port 99999 is out of range 0-65535",
            ),
            (
                "rpc://name@host:12/path",
                "a path, query or fragment is not allowed",
            ),
            (
                "rpc://name@host:12?q",
                "a path, query or fragment is not allowed",
            ),
            ("http://name@host:12", "unknown scheme \"http\""),
            ("name@host:12", "no scheme"),
            ("rpc-client://", "no endpoint name"),
        ] {
            let e = RpcEndpointAddress::parse(uri).unwrap_err();
            assert_eq!(e.url, uri);
            assert_eq!(e.reason, reason, "{uri}");
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("Invalid RPC URL: \"{uri}\"")),
                "{text}"
            );
            assert!(text.ends_with("expected rpc://name@host:port)"), "{text}");
        }
    }

    #[test]
    fn endpoint_address_round_trips() {
        for uri in [
            "rpc://master@127.0.0.1:7077",
            "rpc://w-1@[::1]:0",
            "rpc-client://driver",
        ] {
            let a: RpcEndpointAddress = uri.parse().unwrap();
            assert_eq!(a.to_string(), uri);
        }
        let spark: RpcEndpointAddress = "spark-client://x".parse().unwrap();
        assert_eq!(spark.address(), None);
        assert_eq!(spark.name(), "x");
    }
}
