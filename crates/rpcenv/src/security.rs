//! Security settings of an env, turned into the transport's connection bootstraps: Spark's AES
//! authentication with its session cipher (`authenticate`), and TLS (`ssl.rpc.*`).
//!
//! - `authenticate=true` authenticates every connection, incoming and outgoing, with Spark's
//!   AES protocol and encrypts it with the session cipher (`network.crypto.cipher`, CTR by
//!   default, or GCM; `network.crypto.authEngineVersion` 1 or 2). SASL is not implemented: a JVM
//!   peer must set `spark.network.crypto.enabled=true` and `spark.network.crypto.saslFallback=false`.
//!   The secret comes from `authenticate.secret`, else `authenticate.secret.file` (as Spark, the
//!   secret is the Base64 encoding of the file's bytes), else the environment variable
//!   `_SPARK_AUTH_SECRET` (Spark's) or `RPCENV_AUTHENTICATE_SECRET`. It is never logged.
//! - `ssl.rpc.enabled=true` puts TLS on every connection: PEM `ssl.rpc.privateKey` and
//!   `ssl.rpc.certChain`, trusting the PEM CA bundle `ssl.rpc.trustStore` (or anything, with the
//!   development-only `ssl.rpc.trustAll=true`); `ssl.rpc.clientAuth=true` requires client
//!   certificates. Unset `ssl.rpc.X` keys fall back to `ssl.X`, as in Spark. With both, TLS
//!   encrypts and the AES protocol only authenticates (Spark uses SASL there: no JVM interop).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rpcenv_transport::auth::DEFAULT_APP_ID;
use rpcenv_transport::{
    AuthCipher, AuthClientBootstrap, AuthConf, AuthServerBootstrap, AuthVersion, ClientBootstrap,
    ServerBootstrap, TlsClientBootstrap, TlsConf, TlsProtocol, TlsServerBootstrap, TransportError,
};

use crate::conf::RpcConf;

/// Environment variables that may hold the secret, in order.
const SECRET_ENV: [&str; 2] = ["_SPARK_AUTH_SECRET", "RPCENV_AUTHENTICATE_SECRET"];

fn config(reason: impl Into<String>) -> TransportError {
    TransportError::SecurityConfig {
        reason: reason.into(),
    }
}

fn flag(conf: &RpcConf, key: &str) -> Result<bool, TransportError> {
    conf.get_bool(key)
        .map(|v| v.unwrap_or(false))
        .map_err(|e| config(e.to_string()))
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn secret(conf: &RpcConf) -> Result<String, TransportError> {
    if let Some(s) = conf.get("authenticate.secret") {
        return Ok(s.to_string());
    }
    if let Some(path) = conf.get("authenticate.secret.file") {
        let bytes = std::fs::read(path).map_err(|e| {
            config(format!(
                "cannot read the secret file {path} (authenticate.secret.file): {e}"
            ))
        })?;
        return Ok(base64(&bytes));
    }
    for var in SECRET_ENV {
        if let Ok(s) = std::env::var(var) {
            if !s.is_empty() {
                return Ok(s);
            }
        }
    }
    Err(config(
        "authenticate is true but no secret is set: set authenticate.secret, \
         authenticate.secret.file or the environment variable _SPARK_AUTH_SECRET",
    ))
}

/// The auth settings, or `None` when `authenticate` is off.
fn auth_conf(conf: &RpcConf, tls: bool) -> Result<Option<AuthConf>, TransportError> {
    if !flag(conf, "authenticate")? {
        return Ok(None);
    }
    if conf.get_bool("network.crypto.enabled").ok().flatten() == Some(false) {
        return Err(config(
            "network.crypto.enabled=false asks for SASL authentication, which rpcenv does not \
             implement: authenticate=true always uses the AES protocol",
        ));
    }
    let cipher = match conf.get("network.crypto.cipher") {
        None => AuthCipher::Ctr,
        Some(v) => AuthCipher::parse(v).ok_or_else(|| {
            config(format!(
                "network.crypto.cipher is {v:?}: expected AES/CTR/NoPadding or AES/GCM/NoPadding"
            ))
        })?,
    };
    let version = conf
        .get_int("network.crypto.authEngineVersion")
        .map_err(|e| config(e.to_string()))?
        .map_or(AuthVersion::V1, AuthVersion::from_number);
    let rpc_timeout = conf
        .get_duration("network.auth.rpcTimeout")
        .map_err(|e| config(e.to_string()))?
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(30));
    let app_id = conf.get("authenticate.appId").unwrap_or(DEFAULT_APP_ID);
    Ok(Some(
        AuthConf::new(app_id, secret(conf)?)
            .cipher(cipher)
            .version(version)
            .rpc_timeout(rpc_timeout)
            .encrypt(!tls),
    ))
}

/// `ssl.rpc.<name>`, else `ssl.<name>`.
fn ssl<'a>(conf: &'a RpcConf, name: &str) -> Option<&'a str> {
    conf.get(&format!("ssl.rpc.{name}"))
        .or_else(|| conf.get(&format!("ssl.{name}")))
}

/// The TLS settings, or `None` when `ssl.rpc.enabled` is off.
fn tls_conf(conf: &RpcConf) -> Result<Option<TlsConf>, TransportError> {
    if !flag(conf, "ssl.rpc.enabled")? {
        return Ok(None);
    }
    for (name, instead) in [
        ("keyStore", "ssl.rpc.privateKey and ssl.rpc.certChain (PEM)"),
        ("privateKeyPassword", "an unencrypted PEM key"),
        ("trustStoreReloadingEnabled", "a restart"),
    ] {
        if ssl(conf, name).is_some_and(|v| v != "false") {
            return Err(config(format!(
                "ssl.rpc.{name} is not supported; use {instead}"
            )));
        }
    }
    let mut tls = TlsConf::default();
    match (ssl(conf, "certChain"), ssl(conf, "privateKey")) {
        (Some(chain), Some(key)) => {
            tls = tls.with_identity_pem(Path::new(chain), Path::new(key))?;
        }
        (None, None) => {}
        _ => {
            return Err(config(
                "ssl.rpc.certChain and ssl.rpc.privateKey must be set together",
            ))
        }
    }
    tls = match ssl(conf, "trustStore") {
        Some(ca) => tls.with_ca_pem(Path::new(ca))?,
        None if flag(conf, "ssl.rpc.trustAll")? => tls.trust_all(),
        None => tls,
    };
    if let Some(p) = ssl(conf, "protocol") {
        tls.protocol = TlsProtocol::parse(p).ok_or_else(|| {
            config(format!(
                "ssl.rpc.protocol is {p:?}: expected TLSv1.3 or TLSv1.2"
            ))
        })?;
    }
    if let Some(list) = ssl(conf, "enabledAlgorithms") {
        tls.cipher_suites = list
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
    }
    tls.require_client_auth = flag(conf, "ssl.rpc.clientAuth")?;
    let timeout = conf.connection_creation_timeout();
    if !timeout.is_zero() {
        tls.handshake_timeout = timeout;
    }
    Ok(Some(tls))
}

/// The bootstraps of the env's server: TLS first, then authentication.
pub(crate) fn server_bootstraps(
    conf: &RpcConf,
) -> Result<Vec<Arc<dyn ServerBootstrap>>, TransportError> {
    let tls = tls_conf(conf)?;
    let mut v: Vec<Arc<dyn ServerBootstrap>> = Vec::new();
    if let Some(t) = &tls {
        v.push(Arc::new(TlsServerBootstrap::new(t)?));
    }
    if let Some(a) = auth_conf(conf, tls.is_some())? {
        v.push(Arc::new(AuthServerBootstrap::new(a)));
    }
    Ok(v)
}

/// The bootstraps of every outgoing connection: TLS first, then authentication.
pub(crate) fn client_bootstraps(
    conf: &RpcConf,
) -> Result<Vec<Arc<dyn ClientBootstrap>>, TransportError> {
    let tls = tls_conf(conf)?;
    let mut v: Vec<Arc<dyn ClientBootstrap>> = Vec::new();
    if let Some(t) = &tls {
        v.push(Arc::new(TlsClientBootstrap::new(t)?));
    }
    if let Some(a) = auth_conf(conf, tls.is_some())? {
        v.push(Arc::new(AuthClientBootstrap::new(a)));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
    }

    #[test]
    fn auth_settings_follow_spark_defaults() {
        let conf = RpcConf::new()
            .with("spark.authenticate", "true")
            .unwrap()
            .with("spark.authenticate.secret", "s")
            .unwrap();
        let a = auth_conf(&conf, false).unwrap().unwrap();
        assert_eq!(a.app_id, "sparkSaslUser");
        assert_eq!(a.cipher, AuthCipher::Ctr);
        assert_eq!(a.version, AuthVersion::V1);
        assert_eq!(a.rpc_timeout, Duration::from_secs(30));
        assert!(a.encrypt);
        let conf = conf
            .with("network.crypto.cipher", "AES/GCM/NoPadding")
            .unwrap()
            .with("network.crypto.authEngineVersion", "2")
            .unwrap()
            .with("network.auth.rpcTimeout", "5s")
            .unwrap()
            .with("authenticate.appId", "app")
            .unwrap();
        let a = auth_conf(&conf, true).unwrap().unwrap();
        assert_eq!(
            (
                a.cipher,
                a.version,
                a.rpc_timeout,
                a.app_id.as_str(),
                a.encrypt
            ),
            (
                AuthCipher::Gcm,
                AuthVersion::V2,
                Duration::from_secs(5),
                "app",
                false
            )
        );
        assert!(auth_conf(&RpcConf::new(), false).unwrap().is_none());
    }

    #[test]
    fn bad_auth_settings_are_refused_with_the_key_named() {
        let base = RpcConf::new()
            .with("authenticate", "true")
            .unwrap()
            .with("authenticate.secret", "s")
            .unwrap();
        let err = auth_conf(
            &base
                .clone()
                .with("network.crypto.cipher", "AES/CBC")
                .unwrap(),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("network.crypto.cipher"), "{err}");
        let err = auth_conf(
            &base.with("network.crypto.enabled", "false").unwrap(),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("SASL"), "{err}");
    }
}
