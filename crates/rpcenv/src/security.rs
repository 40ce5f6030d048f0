//! Security settings of an env, turned into the transport's connection bootstraps: Spark's
//! authentication (`authenticate`: its AES protocol, or SASL DIGEST-MD5) and TLS (`ssl.rpc.*`).
//!
//! - `authenticate=true` authenticates every connection, incoming and outgoing. Which protocol:
//!   - `network.crypto.enabled` unset or `true`: Spark's AES protocol, then its session cipher
//!     (`network.crypto.cipher`, CTR by default, or GCM; `network.crypto.authEngineVersion` 1 or
//!     2). With `network.crypto.saslFallback` (default `true`, as Spark) the server also answers
//!     SASL clients with SASL and a client retries with SASL when its AES attempt fails other
//!     than by timing out. Unset meaning AES is rpcenv's choice; Spark's unset means SASL.
//!   - `network.crypto.enabled=false`: SASL DIGEST-MD5, as Spark's default. With
//!     `authenticate.enableSaslEncryption` the client asks for SASL encryption (QOP
//!     `auth-conf`); `network.sasl.serverAlwaysEncrypt` makes the server refuse clients that do
//!     not; `network.sasl.maxEncryptedBlockSize` (64k) cuts writes into encrypted pieces.
//!   - with TLS on: SASL without SASL encryption (TLS encrypts), as Spark.
//!
//!   The secret comes from `authenticate.secret`, else `authenticate.secret.file` (as Spark, the
//!   secret is the Base64 encoding of the file's bytes), else the environment variable
//!   `_SPARK_AUTH_SECRET` (Spark's) or `RPCENV_AUTHENTICATE_SECRET`. It is never logged.
//! - `ssl.rpc.enabled=true` puts TLS on every connection: PEM `ssl.rpc.privateKey` and
//!   `ssl.rpc.certChain`, trusting the PEM CA bundle `ssl.rpc.trustStore` (or anything, with the
//!   development-only `ssl.rpc.trustAll=true`); `ssl.rpc.clientAuth=true` requires client
//!   certificates. Unset `ssl.rpc.X` keys fall back to `ssl.X`, as in Spark.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rpcenv_transport::auth::sasl::DEFAULT_MAX_ENCRYPTED_BLOCK;
use rpcenv_transport::auth::DEFAULT_APP_ID;
use rpcenv_transport::{
    AuthCipher, AuthClientBootstrap, AuthConf, AuthServerBootstrap, AuthVersion, ClientBootstrap,
    SaslClientBootstrap, SaslConf, SaslServerBootstrap, ServerBootstrap, TlsClientBootstrap,
    TlsConf, TlsProtocol, TlsServerBootstrap, TransportError,
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
        return Ok(base64::engine::general_purpose::STANDARD.encode(bytes));
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

/// The largest `network.sasl.maxEncryptedBlockSize` accepted (a peer refuses larger pieces).
const MAX_SASL_BLOCK: u64 = 8 << 20;

/// How the env authenticates its connections.
#[derive(Debug)]
enum AuthMode {
    /// `authenticate` is off.
    Off,
    /// Spark's AES protocol, with SASL as the fallback when `network.crypto.saslFallback`.
    Aes {
        aes: AuthConf,
        fallback: Option<SaslConf>,
    },
    /// SASL DIGEST-MD5 only.
    Sasl(SaslConf),
}

/// The app id every authenticated connection of an env carries, `None` when `authenticate` is
/// off. Both protocols accept only a peer that proves this env's own app id (AES compares the
/// ids in its handshake; SASL authenticates the id as its user name) with the shared secret.
pub(crate) fn authenticated_app_id(conf: &RpcConf) -> Option<String> {
    flag(conf, "authenticate").ok()?.then(|| {
        conf.get("authenticate.appId")
            .unwrap_or(DEFAULT_APP_ID)
            .to_string()
    })
}

fn auth_mode(conf: &RpcConf, tls: bool) -> Result<AuthMode, TransportError> {
    if !flag(conf, "authenticate")? {
        return Ok(AuthMode::Off);
    }
    let rpc_timeout = conf
        .get_duration("network.auth.rpcTimeout")
        .map_err(|e| config(e.to_string()))?
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(30));
    let app_id = conf.get("authenticate.appId").unwrap_or(DEFAULT_APP_ID);
    let secret = secret(conf)?;
    let block = conf
        .get_size("network.sasl.maxEncryptedBlockSize")
        .map_err(|e| config(e.to_string()))?
        .unwrap_or(DEFAULT_MAX_ENCRYPTED_BLOCK as u64);
    if block == 0 || block > MAX_SASL_BLOCK {
        return Err(config(format!(
            "network.sasl.maxEncryptedBlockSize is {block} bytes: expected 1 byte to 8m"
        )));
    }
    // With TLS, SASL only authenticates (Spark's rule): TLS encrypts.
    let sasl = SaslConf::new(app_id, secret.as_str())
        .encrypt(!tls && flag(conf, "authenticate.enableSaslEncryption")?)
        .always_encrypt(!tls && flag(conf, "network.sasl.serverAlwaysEncrypt")?)
        .max_encrypted_block(block as usize)
        .rpc_timeout(rpc_timeout);
    let crypto = conf
        .get_bool("network.crypto.enabled")
        .map_err(|e| config(e.to_string()))?;
    if tls || crypto == Some(false) {
        return Ok(AuthMode::Sasl(sasl));
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
    let fallback = conf
        .get_bool("network.crypto.saslFallback")
        .map_err(|e| config(e.to_string()))?
        .unwrap_or(true);
    Ok(AuthMode::Aes {
        aes: AuthConf::new(app_id, secret)
            .cipher(cipher)
            .version(version)
            .rpc_timeout(rpc_timeout),
        fallback: fallback.then_some(sasl),
    })
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
    match auth_mode(conf, tls.is_some())? {
        AuthMode::Off => {}
        AuthMode::Aes { aes, fallback } => {
            let mut b = AuthServerBootstrap::new(aes);
            if let Some(sasl) = fallback {
                b = b.with_sasl_fallback(sasl);
            }
            v.push(Arc::new(b));
        }
        AuthMode::Sasl(sasl) => v.push(Arc::new(SaslServerBootstrap::new(sasl))),
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
    match auth_mode(conf, tls.is_some())? {
        AuthMode::Off => {}
        AuthMode::Aes { aes, fallback } => {
            let mut b = AuthClientBootstrap::new(aes);
            if let Some(sasl) = fallback {
                b = b.with_sasl_fallback(sasl);
            }
            v.push(Arc::new(b));
        }
        AuthMode::Sasl(sasl) => v.push(Arc::new(SaslClientBootstrap::new(sasl))),
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth_on() -> RpcConf {
        RpcConf::new()
            .with("spark.authenticate", "true")
            .unwrap()
            .with("spark.authenticate.secret", "s")
            .unwrap()
    }

    fn aes(mode: AuthMode) -> (AuthConf, Option<SaslConf>) {
        match mode {
            AuthMode::Aes { aes, fallback } => (aes, fallback),
            other => panic!("expected the AES protocol, got {other:?}"),
        }
    }

    fn sasl(mode: AuthMode) -> SaslConf {
        match mode {
            AuthMode::Sasl(s) => s,
            other => panic!("expected SASL, got {other:?}"),
        }
    }

    #[test]
    fn the_secret_file_is_base64_encoded_as_spark_does() {
        let dir = std::env::temp_dir().join(format!("rpcenv-secret-{}", std::process::id()));
        std::fs::write(&dir, [0xff, 0xfe, 0x00, 0x01]).unwrap();
        let conf = RpcConf::new()
            .with("authenticate.secret.file", dir.to_str().unwrap())
            .unwrap();
        assert_eq!(secret(&conf).unwrap(), "//4AAQ==");
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn unset_crypto_keeps_the_aes_protocol_with_spark_defaults_and_sasl_fallback() {
        let (a, fallback) = aes(auth_mode(&auth_on(), false).unwrap());
        assert_eq!(a.app_id, "sparkSaslUser");
        assert_eq!(a.cipher, AuthCipher::Ctr);
        assert_eq!(a.version, AuthVersion::V1);
        assert_eq!(a.rpc_timeout, Duration::from_secs(30));
        assert!(a.encrypt);
        let fallback = fallback.expect("network.crypto.saslFallback defaults to true");
        assert!(!fallback.encrypt && !fallback.always_encrypt);
        assert_eq!(fallback.max_encrypted_block, 64 * 1024);
        let conf = auth_on()
            .with("network.crypto.enabled", "true")
            .unwrap()
            .with("network.crypto.saslFallback", "false")
            .unwrap()
            .with("network.crypto.cipher", "AES/GCM/NoPadding")
            .unwrap()
            .with("network.crypto.authEngineVersion", "2")
            .unwrap()
            .with("network.auth.rpcTimeout", "5s")
            .unwrap()
            .with("authenticate.appId", "app")
            .unwrap();
        let (a, fallback) = aes(auth_mode(&conf, false).unwrap());
        assert_eq!(
            (a.cipher, a.version, a.rpc_timeout, a.app_id.as_str()),
            (
                AuthCipher::Gcm,
                AuthVersion::V2,
                Duration::from_secs(5),
                "app"
            )
        );
        assert!(fallback.is_none());
        assert!(matches!(
            auth_mode(&RpcConf::new(), false).unwrap(),
            AuthMode::Off
        ));
    }

    #[test]
    fn crypto_disabled_selects_sasl_with_its_settings() {
        let conf = auth_on()
            .with("network.crypto.enabled", "false")
            .unwrap()
            .with("authenticate.enableSaslEncryption", "true")
            .unwrap()
            .with("network.sasl.serverAlwaysEncrypt", "true")
            .unwrap()
            .with("network.sasl.maxEncryptedBlockSize", "1k")
            .unwrap();
        let s = sasl(auth_mode(&conf, false).unwrap());
        assert_eq!(s.app_id, "sparkSaslUser");
        assert!(s.encrypt && s.always_encrypt);
        assert_eq!(s.max_encrypted_block, 1024);
        // TLS on: SASL authenticates only, whatever network.crypto.enabled says.
        for c in [conf.clone(), auth_on()] {
            let s = sasl(auth_mode(&c, true).unwrap());
            assert!(!s.encrypt && !s.always_encrypt);
        }
    }

    #[test]
    fn bad_auth_settings_are_refused_with_the_key_named() {
        for (key, value) in [
            ("network.crypto.cipher", "AES/CBC"),
            ("network.sasl.maxEncryptedBlockSize", "1g"),
        ] {
            let conf = auth_on().with(key, value).unwrap();
            let err = auth_mode(&conf, false).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }
}
