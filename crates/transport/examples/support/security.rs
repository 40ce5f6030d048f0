#![allow(dead_code)]
//! Security flags shared by `echo_server` and `echo_client`:
//! `--secret S [--cipher ctr|gcm] [--auth-version 1|2] [--app-id ID]` (auth on when a secret is
//! given) and `[--tls] [--tls-cert PEM --tls-key PEM] [--tls-ca PEM]`.

use std::path::PathBuf;
use std::sync::Arc;

use rpcenv_transport::{
    AuthCipher, AuthClientBootstrap, AuthConf, AuthServerBootstrap, AuthVersion, ClientBootstrap,
    ServerBootstrap, TlsClientBootstrap, TlsConf, TlsServerBootstrap, TransportError,
};

/// The parsed security flags.
#[derive(Debug, Default)]
pub(crate) struct SecurityArgs {
    secret: Option<String>,
    cipher: AuthCipher,
    version: AuthVersion,
    app_id: Option<String>,
    tls: bool,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
}

/// Usage text of the flags.
pub(crate) const USAGE: &str =
    "[--secret S [--cipher ctr|gcm] [--auth-version 1|2] [--app-id ID]] \
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

    fn auth(&self) -> Option<AuthConf> {
        self.secret.as_ref().map(|s| {
            AuthConf::new(
                self.app_id.as_deref().unwrap_or("sparkSaslUser"),
                s.as_str(),
            )
            .cipher(self.cipher)
            .version(self.version)
            // TLS already encrypts: authenticate only.
            .encrypt(!self.tls_on())
        })
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
        let auth = match self.auth() {
            Some(a) if a.encrypt => format!(
                "auth {} v{} (app id {})",
                a.cipher.spark_name(),
                a.version.number(),
                a.app_id
            ),
            Some(a) => format!("auth without session cipher (app id {})", a.app_id),
            None => "no auth".into(),
        };
        let tls = if self.tls_on() { "TLS" } else { "no TLS" };
        format!("{auth}, {tls}")
    }

    /// Bootstraps of a server: TLS first (a CA given means client certificates are required),
    /// then auth.
    pub(crate) fn server_bootstraps(
        &self,
    ) -> Result<Vec<Arc<dyn ServerBootstrap>>, TransportError> {
        let mut v: Vec<Arc<dyn ServerBootstrap>> = Vec::new();
        if self.tls_on() {
            let mut conf = self.tls_conf()?;
            conf.require_client_auth = self.tls_ca.is_some();
            v.push(Arc::new(TlsServerBootstrap::new(&conf)?));
        }
        if let Some(auth) = self.auth() {
            v.push(Arc::new(AuthServerBootstrap::new(auth)));
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
        if let Some(auth) = self.auth() {
            v.push(Arc::new(AuthClientBootstrap::new(auth)));
        }
        Ok(v)
    }
}
