#![allow(dead_code)]
//! Security flags shared by `echo_server` and `echo_client`:
//! `--secret S [--cipher ctr|gcm] [--auth-version 1|2] [--app-id ID]` (Spark's AES auth when a
//! secret is given), `--sasl` (SASL DIGEST-MD5 instead), `--sasl-encrypt` (SASL with encryption:
//! the client asks for QOP auth-conf, the server requires it, as `serverAlwaysEncrypt`),
//! `--sasl-fallback` (AES auth that falls back to SASL, as `network.crypto.saslFallback`) and
//! `[--tls] [--tls-cert PEM --tls-key PEM] [--tls-ca PEM]` (with TLS, SASL only authenticates).

use std::path::PathBuf;
use std::sync::Arc;

use rpcenv_transport::{
    AuthCipher, AuthClientBootstrap, AuthConf, AuthServerBootstrap, AuthVersion, ClientBootstrap,
    SaslClientBootstrap, SaslConf, SaslServerBootstrap, ServerBootstrap, TlsClientBootstrap,
    TlsConf, TlsServerBootstrap, TransportError,
};

/// The parsed security flags.
#[derive(Debug, Default)]
pub(crate) struct SecurityArgs {
    secret: Option<String>,
    cipher: AuthCipher,
    version: AuthVersion,
    app_id: Option<String>,
    sasl: bool,
    sasl_encrypt: bool,
    sasl_fallback: bool,
    tls: bool,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
}

/// Usage text of the flags.
pub(crate) const USAGE: &str = "[--secret S [--cipher ctr|gcm] [--auth-version 1|2] [--app-id ID] \
                         [--sasl | --sasl-encrypt | --sasl-fallback]] \
                         [--tls] [--tls-cert PEM --tls-key PEM] [--tls-ca PEM]";

impl SecurityArgs {
    /// Take the flag `flag` (reading its value from `args`); `Ok(false)` if it is not one of ours.
    pub(crate) fn take(
        &mut self,
        flag: &str,
        args: &mut impl Iterator<Item = String>,
    ) -> Result<bool, String> {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag {
            "--secret" => self.secret = Some(value()?),
            "--cipher" => {
                let v = value()?;
                self.cipher =
                    AuthCipher::parse(&v).ok_or_else(|| format!("unknown cipher {v:?}"))?;
            }
            "--auth-version" => {
                let v = value()?;
                let n: i64 = v.parse().map_err(|_| format!("bad version {v:?}"))?;
                self.version = AuthVersion::from_number(n);
            }
            "--app-id" => self.app_id = Some(value()?),
            "--sasl" => self.sasl = true,
            "--sasl-encrypt" => {
                self.sasl = true;
                self.sasl_encrypt = true;
            }
            "--sasl-fallback" => self.sasl_fallback = true,
            "--tls" => self.tls = true,
            "--tls-cert" => self.tls_cert = Some(value()?.into()),
            "--tls-key" => self.tls_key = Some(value()?.into()),
            "--tls-ca" => self.tls_ca = Some(value()?.into()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn tls_on(&self) -> bool {
        self.tls || self.tls_cert.is_some() || self.tls_ca.is_some()
    }

    fn app_id(&self) -> &str {
        self.app_id.as_deref().unwrap_or("sparkSaslUser")
    }

    /// The AES auth settings, when a secret is given without `--sasl`.
    fn auth(&self) -> Option<AuthConf> {
        let s = self.secret.as_ref().filter(|_| !self.sasl)?;
        Some(
            AuthConf::new(self.app_id(), s.as_str())
                .cipher(self.cipher)
                .version(self.version)
                // TLS already encrypts: authenticate only.
                .encrypt(!self.tls_on()),
        )
    }

    /// The SASL settings: with `--sasl`, or as the fallback of AES with `--sasl-fallback`.
    fn sasl(&self) -> Option<SaslConf> {
        let s = self
            .secret
            .as_ref()
            .filter(|_| self.sasl || self.sasl_fallback)?;
        let encrypt = self.sasl_encrypt && !self.tls_on();
        Some(
            SaslConf::new(self.app_id(), s.as_str())
                .encrypt(encrypt)
                .always_encrypt(encrypt),
        )
    }

    fn tls_conf(&self) -> Result<TlsConf, TransportError> {
        let mut conf = TlsConf::default();
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            conf = conf.with_identity_pem(cert, key)?;
        }
        conf = match &self.tls_ca {
            Some(ca) => conf.with_ca_pem(ca)?,
            None => conf.trust_all(),
        };
        Ok(conf)
    }

    /// One line describing the security in force.
    pub(crate) fn describe(&self) -> String {
        let auth = match (self.auth(), self.sasl()) {
            (Some(a), fallback) => {
                let cipher = if a.encrypt {
                    format!("{} v{}", a.cipher.spark_name(), a.version.number())
                } else {
                    "without session cipher".into()
                };
                let fallback = if fallback.is_some() {
                    ", SASL fallback"
                } else {
                    ""
                };
                format!("AES auth {cipher} (app id {}){fallback}", a.app_id)
            }
            (None, Some(s)) if s.encrypt => format!("SASL auth-conf (app id {})", s.app_id),
            (None, Some(s)) => format!("SASL auth (app id {})", s.app_id),
            (None, None) => "no auth".into(),
        };
        let tls = if self.tls_on() { "TLS" } else { "no TLS" };
        format!("{auth}, {tls}")
    }

    /// Bootstraps of a server: TLS first (a CA given means client certificates are required),
    /// then auth (AES, AES falling back to SASL, or SASL).
    pub(crate) fn server_bootstraps(
        &self,
    ) -> Result<Vec<Arc<dyn ServerBootstrap>>, TransportError> {
        let mut v: Vec<Arc<dyn ServerBootstrap>> = Vec::new();
        if self.tls_on() {
            let mut conf = self.tls_conf()?;
            conf.require_client_auth = self.tls_ca.is_some();
            v.push(Arc::new(TlsServerBootstrap::new(&conf)?));
        }
        match (self.auth(), self.sasl()) {
            (Some(auth), fallback) => {
                let mut b = AuthServerBootstrap::new(auth);
                if let Some(sasl) = fallback {
                    b = b.with_sasl_fallback(sasl);
                }
                v.push(Arc::new(b));
            }
            (None, Some(sasl)) => v.push(Arc::new(SaslServerBootstrap::new(sasl))),
            (None, None) => {}
        }
        Ok(v)
    }

    /// Bootstraps of a client: TLS first (trusting `--tls-ca`, or anything without it), then
    /// auth.
    pub(crate) fn client_bootstraps(
        &self,
    ) -> Result<Vec<Arc<dyn ClientBootstrap>>, TransportError> {
        let mut v: Vec<Arc<dyn ClientBootstrap>> = Vec::new();
        if self.tls_on() {
            v.push(Arc::new(TlsClientBootstrap::new(&self.tls_conf()?)?));
        }
        match (self.auth(), self.sasl()) {
            (Some(auth), fallback) => {
                let mut b = AuthClientBootstrap::new(auth);
                if let Some(sasl) = fallback {
                    b = b.with_sasl_fallback(sasl);
                }
                v.push(Arc::new(b));
            }
            (None, Some(sasl)) => v.push(Arc::new(SaslClientBootstrap::new(sasl))),
            (None, None) => {}
        }
        Ok(v)
    }
}
