//! Spark's SASL authentication: DIGEST-MD5 (RFC 2831) as Spark drives the JDK's mechanism, and
//! SASL encryption (QOP `auth-conf`), as connection bootstraps.
//!
//! Spark uses it when `spark.authenticate=true` and `spark.network.crypto.enabled=false` (its
//! default), and as the fallback of its AES protocol. The exchange is two RpcRequests carrying
//! a `SaslMessage` (`0xEA | appId | i32 len | token`), answered by RpcResponses carrying the raw
//! token: an empty first token, answered by the server's challenge; the client's response,
//! answered by the server's `rspauth`. With `auth-conf` both sides then put
//! Spark's encryption framing between socket and codec (the server right after sending
//! `rspauth`, the client after checking it).
//!
//! - [`SaslClientBootstrap`] asks for `auth-conf` when [`SaslConf::encrypt`], else `auth`, and
//!   picks the strongest cipher offered (3DES from a JVM server, as the JDK client does).
//! - [`SaslServerBootstrap`] offers `auth-conf,auth` (only `auth-conf` with
//!   [`SaslConf::always_encrypt`]) and every cipher. Before authentication it answers an
//!   RpcRequest that is not a SaslMessage with Spark's [`EXPECTED_SASL_MESSAGE`] failure and
//!   keeps the connection open (a client falling back from AES retries on it); a StreamRequest
//!   or ChunkFetchRequest is answered with a failure and the connection closed (Spark 4.3.0
//!   serves them unauthenticated); any other frame closes the connection.

mod bootstrap;
mod digest;
mod directives;
mod layer;
mod message;
mod stream;

use std::time::Duration;

pub(crate) use bootstrap::{client_handshake, server_handshake};
pub use bootstrap::{SaslClientBootstrap, SaslServerBootstrap};
pub use digest::Qop;
pub use layer::SaslCipher;
pub(crate) use message::SASL_MESSAGE_TAG;

#[cfg(test)]
mod jvm_transcript;

use super::Secret;

/// Spark's failure text (first line) for a first message that is not a SaslMessage.
pub const EXPECTED_SASL_MESSAGE: &str = "java.lang.IllegalStateException: Expected SaslMessage, \
     received something else (maybe your client does not have SASL enabled?)";

/// The failure text for a StreamRequest or ChunkFetchRequest before authentication.
pub const UNAUTHENTICATED_FETCH: &str = "java.lang.SecurityException: Unauthenticated stream or \
     chunk request refused: the connection has not completed SASL authentication";

/// Spark's default `spark.network.sasl.maxEncryptedBlockSize`.
pub const DEFAULT_MAX_ENCRYPTED_BLOCK: usize = 64 * 1024;

/// Why a DIGEST-MD5 step failed. The text never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DigestError {
    /// A token that does not follow RFC 2831 or Spark's parameters.
    #[error("DIGEST-MD5: digest format violation: {0}")]
    Format(String),
    /// The client's response was computed with another password (the secrets differ).
    #[error("{}", digest::MISMATCHED_RESPONSE)]
    MismatchedResponse,
    /// The server's rspauth was computed with another password.
    #[error("DIGEST-MD5: the server's rspauth value does not match what the client expects (the server does not know the secret)")]
    RspauthMismatch,
    /// The client asked for a QOP the server does not offer.
    #[error("{}", digest::NO_COMMON_QOP)]
    NoCommonQop,
    /// The client chose a QOP the server did not offer.
    #[error("DIGEST-MD5: the client chose QOP {} which this server does not offer", .0.token())]
    QopRefused(Qop),
    /// The client's user name is not the one this server knows.
    #[error("DIGEST-MD5: unknown user name {0:?}")]
    UnknownUser(String),
}

/// Settings of the SASL bootstraps. `Debug` redacts the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslConf {
    /// The app id sent in every SaslMessage; its base64 is the DIGEST-MD5 user name
    /// (NettyRpcEnv: `sparkSaslUser`).
    pub app_id: String,
    /// The shared secret (`spark.authenticate.secret`); its base64 is the password.
    pub secret: Secret,
    /// Client: ask for `auth-conf` (`spark.authenticate.enableSaslEncryption`).
    pub encrypt: bool,
    /// Server: offer only `auth-conf`, refusing clients that do not encrypt
    /// (`spark.network.sasl.serverAlwaysEncrypt`).
    pub always_encrypt: bool,
    /// Plaintext bytes per encrypted piece (`spark.network.sasl.maxEncryptedBlockSize`).
    pub max_encrypted_block: usize,
    /// Bound of the handshake (`spark.network.auth.rpcTimeout`, 30 s).
    pub rpc_timeout: Duration,
}

impl SaslConf {
    /// Spark's defaults (no encryption, 64 KiB pieces, 30 s) for `app_id` and `secret`.
    pub fn new(app_id: impl Into<String>, secret: impl Into<String>) -> SaslConf {
        SaslConf {
            app_id: app_id.into(),
            secret: Secret::new(secret),
            encrypt: false,
            always_encrypt: false,
            max_encrypted_block: DEFAULT_MAX_ENCRYPTED_BLOCK,
            rpc_timeout: Duration::from_secs(30),
        }
    }

    /// Client: ask for SASL encryption (or not).
    pub fn encrypt(mut self, encrypt: bool) -> Self {
        self.encrypt = encrypt;
        self
    }

    /// Server: require SASL encryption (or not).
    pub fn always_encrypt(mut self, always: bool) -> Self {
        self.always_encrypt = always;
        self
    }

    /// With another piece size (at least 1 byte).
    pub fn max_encrypted_block(mut self, bytes: usize) -> Self {
        self.max_encrypted_block = bytes.max(1);
        self
    }

    /// With another handshake bound.
    pub fn rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }
}
