//! Spark's connection authentication, as connection bootstraps: its AES protocol (Spark: `AuthEngine`)
//! with the session ciphers, and SASL DIGEST-MD5 ([`sasl`]).
//!
//! - [`AuthClientBootstrap`] sends the challenge as the connection's first RpcRequest, checks the
//!   server's response and wraps the connection in the session cipher; with a SASL fallback it
//!   retries with SASL on the same connection when that fails other than by timing out.
//! - [`AuthServerBootstrap`] runs before any message reaches the handler: the first frame must be
//!   an RpcRequest carrying a challenge. With a SASL fallback, an RpcRequest that is not a
//!   challenge is handed to the SASL server. Otherwise anything else is refused and the
//!   connection closed (a non-auth RpcRequest gets RpcFailure `Unknown challenge message.`, a
//!   wrong secret or app id `Authentication failed.`, any other frame no reply at all). This is
//!   stricter than Spark 4.3.0, which serves stream and chunk requests before authentication.
//!
//! The session cipher is AES-CTR (Spark's default) or Spark's segmented AES-GCM; a JVM peer must
//! be configured with `spark.network.crypto.enabled=true` and the same
//! `spark.network.crypto.cipher` and `spark.network.crypto.authEngineVersion`: the protocol has
//! no key confirmation, so a mismatch passes the handshake and fails at the first encrypted
//! message.

mod bootstrap;
mod ctr;
mod engine;
mod gcm;
mod message;
pub mod sasl;
mod stream;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

pub use bootstrap::{AuthClientBootstrap, AuthServerBootstrap};
pub use sasl::{SaslClientBootstrap, SaslConf, SaslServerBootstrap};

/// The app id NettyRpcEnv authenticates with (`SecurityManager.getSaslUser`).
pub const DEFAULT_APP_ID: &str = "sparkSaslUser";

/// The RpcFailure text for a first request that is not an auth challenge.
pub const UNKNOWN_CHALLENGE: &str = "Unknown challenge message.";

/// The RpcFailure text for a challenge with a wrong secret or app id.
pub const AUTHENTICATION_FAILED: &str = "Authentication failed.";

/// The session cipher (`spark.network.crypto.cipher`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthCipher {
    /// `AES/CTR/NoPadding` (Spark's default): one AES-CTR stream per direction, no integrity.
    #[default]
    Ctr,
    /// `AES/GCM/NoPadding`: Tink-style segmented AES-GCM, authenticated.
    Gcm,
}

impl AuthCipher {
    /// Parse Spark's transformation name (case-insensitive), or `ctr` / `gcm`.
    pub fn parse(s: &str) -> Option<AuthCipher> {
        match s.trim().to_ascii_uppercase().as_str() {
            "AES/CTR/NOPADDING" | "CTR" => Some(AuthCipher::Ctr),
            "AES/GCM/NOPADDING" | "GCM" => Some(AuthCipher::Gcm),
            _ => None,
        }
    }

    /// Spark's transformation name.
    pub fn spark_name(self) -> &'static str {
        match self {
            AuthCipher::Ctr => "AES/CTR/NoPadding",
            AuthCipher::Gcm => "AES/GCM/NoPadding",
        }
    }
}

/// The auth engine version (`spark.network.crypto.authEngineVersion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthVersion {
    /// Version 1 (Spark's default): the session key is the raw 32-byte X25519 output (AES-256).
    #[default]
    V1,
    /// Version 2: the session key is HKDF(shared, transcript, "derivedKey"), 16 bytes (AES-128).
    V2,
}

impl AuthVersion {
    /// Spark's rule: 1 is version 1, any other number version 2.
    pub fn from_number(n: i64) -> AuthVersion {
        if n == 1 {
            AuthVersion::V1
        } else {
            AuthVersion::V2
        }
    }

    /// The number as configured.
    pub fn number(self) -> u8 {
        match self {
            AuthVersion::V1 => 1,
            AuthVersion::V2 => 2,
        }
    }
}

/// A shared secret. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Secret(Arc<Zeroizing<String>>);

impl Secret {
    /// Wrap a secret.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(Arc::new(Zeroizing::new(secret.into())))
    }

    /// The secret's bytes (UTF-8, as Spark's `getBytes(UTF_8)`).
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

/// Settings of the AES auth bootstraps. `Debug` redacts the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConf {
    /// The app id both sides must agree on (NettyRpcEnv: [`DEFAULT_APP_ID`]).
    pub app_id: String,
    /// The shared secret (`spark.authenticate.secret`).
    pub secret: Secret,
    /// The session cipher.
    pub cipher: AuthCipher,
    /// The engine version.
    pub version: AuthVersion,
    /// Bound of the handshake (`spark.network.auth.rpcTimeout`, 30 s).
    pub rpc_timeout: Duration,
    /// Wrap the connection in the session cipher after authenticating. Off when TLS already
    /// encrypts the connection (authentication only).
    pub encrypt: bool,
}

impl AuthConf {
    /// Spark's defaults (CTR, version 1, 30 s, encryption on) for `app_id` and `secret`.
    pub fn new(app_id: impl Into<String>, secret: impl Into<String>) -> AuthConf {
        AuthConf {
            app_id: app_id.into(),
            secret: Secret::new(secret),
            cipher: AuthCipher::Ctr,
            version: AuthVersion::V1,
            rpc_timeout: Duration::from_secs(30),
            encrypt: true,
        }
    }

    /// With another cipher.
    pub fn cipher(mut self, cipher: AuthCipher) -> Self {
        self.cipher = cipher;
        self
    }

    /// With another engine version.
    pub fn version(mut self, version: AuthVersion) -> Self {
        self.version = version;
        self
    }

    /// With another handshake bound.
    pub fn rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// With or without the session cipher.
    pub fn encrypt(mut self, encrypt: bool) -> Self {
        self.encrypt = encrypt;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_secret() {
        let c = AuthConf::new("app", "hunter2-top-secret");
        let s = format!("{c:?} {}", c.secret);
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("redacted"));
    }

    #[test]
    fn parsing_follows_spark() {
        assert_eq!(
            AuthCipher::parse("aes/gcm/nopadding"),
            Some(AuthCipher::Gcm)
        );
        assert_eq!(
            AuthCipher::parse("AES/CTR/NoPadding"),
            Some(AuthCipher::Ctr)
        );
        assert_eq!(AuthCipher::parse("AES/CBC"), None);
        assert_eq!(AuthVersion::from_number(1), AuthVersion::V1);
        assert_eq!(AuthVersion::from_number(2), AuthVersion::V2);
        assert_eq!(AuthVersion::from_number(7), AuthVersion::V2);
    }
}
