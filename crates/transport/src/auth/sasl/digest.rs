//! The DIGEST-MD5 mechanism (RFC 2831) as a socket-free state machine, as Spark drives the JDK's
//! through `javax.security.sasl`: protocol `null`, server name `default` (so the digest-uri is
//! `null/default`), realm `default`, `charset=utf-8`, `algorithm=md5-sess`, no authorization id.
//!
//! ```text
//! server: realm="default",nonce="..",qop="auth-conf,auth",charset=utf-8,cipher="3des,..",algorithm=md5-sess
//! client: charset=utf-8,username="..",realm="default",nonce="..",nc=00000001,cnonce="..",
//!         digest-uri="null/default",maxbuf=65536,response=<32 hex>,qop=auth[,cipher="3des"]
//! server: rspauth=<32 hex>
//! ```
//!
//! H(A1) = MD5(MD5(user ":" realm ":" password) ":" nonce ":" cnonce); response =
//! HEX(MD5(HEX(H(A1)) ":" nonce ":" nc ":" cnonce ":" qop ":" HEX(MD5(A2)))) with
//! A2 = "AUTHENTICATE:" digest-uri for the client's response and ":" digest-uri for the
//! server's rspauth, each followed by ":00000000000000000000000000000000" unless the QOP is
//! `auth`.

use base64::Engine as _;
use md5::{Digest, Md5};
use rand::RngCore;
use zeroize::Zeroizing;

use super::directives::{list, quote, Directives};
use super::layer::{SaslCipher, SecurityLayer};
use super::DigestError;

/// Spark's realm.
pub(crate) const REALM: &str = "default";
/// Spark's digest-uri: protocol `null`, server name `default`.
pub(crate) const DIGEST_URI: &str = "null/default";
/// The only nonce count of a fresh authentication.
const NONCE_COUNT: &str = "00000001";
/// Bytes of randomness in a nonce (40 base64 characters, as the JDK's).
const NONCE_BYTES: usize = 30;
/// The receive buffer size the client announces (the JDK's default).
const MAXBUF: usize = 65536;
/// The JDK's text for a response computed with another password.
pub(crate) const MISMATCHED_RESPONSE: &str =
    "DIGEST-MD5: digest response format violation. Mismatched response.";
/// The JDK's text when client and server share no QOP.
pub(crate) const NO_COMMON_QOP: &str =
    "DIGEST-MD5: No common protection layer between client and server";

/// A protection level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qop {
    /// Authentication only.
    Auth,
    /// Authentication with integrity and confidentiality (SASL encryption).
    AuthConf,
}

impl Qop {
    /// The directive token.
    pub fn token(self) -> &'static str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthConf => "auth-conf",
        }
    }
}

/// What an authentication settled on.
pub(crate) struct Negotiated {
    pub(crate) qop: Qop,
    /// The confidentiality layer, with QOP `auth-conf`.
    pub(crate) layer: Option<SecurityLayer>,
}

/// The user name and password as Spark passes them to the mechanism (both base64 already).
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: Zeroizing<String>,
}

impl Credentials {
    /// Spark's encoding: user = base64(SASL user), password = base64(secret).
    pub(crate) fn spark(sasl_user: &str, secret: &[u8]) -> Credentials {
        let b64 = base64::engine::general_purpose::STANDARD;
        Credentials {
            user: b64.encode(sasl_user.as_bytes()),
            password: Zeroizing::new(b64.encode(secret)),
        }
    }
}

fn random_nonce() -> String {
    let mut raw = [0u8; NONCE_BYTES];
    rand::rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The binary H(A1) of md5-sess.
fn ha1(
    creds: &Credentials,
    realm: &str,
    nonce: &str,
    cnonce: &str,
    authzid: Option<&str>,
) -> Zeroizing<[u8; 16]> {
    let inner = Zeroizing::new(md5(&[
        creds.user.as_bytes(),
        b":",
        realm.as_bytes(),
        b":",
        creds.password.as_bytes(),
    ]));
    let mut parts: Vec<&[u8]> = vec![&inner[..], b":", nonce.as_bytes(), b":", cnonce.as_bytes()];
    if let Some(a) = authzid {
        parts.extend_from_slice(&[b":", a.as_bytes()]);
    }
    Zeroizing::new(md5(&parts))
}

/// The response (`a2_method` "AUTHENTICATE") or rspauth (`a2_method` "") value.
fn digest_value(
    ha1: &[u8; 16],
    nonce: &str,
    cnonce: &str,
    qop: Qop,
    digest_uri: &str,
    a2_method: &str,
) -> String {
    let mut a2 = format!("{a2_method}:{digest_uri}");
    if qop != Qop::Auth {
        a2.push_str(":00000000000000000000000000000000");
    }
    let ha2 = hex(&md5(&[a2.as_bytes()]));
    let kd = md5(&[
        hex(ha1).as_bytes(),
        b":",
        nonce.as_bytes(),
        b":",
        NONCE_COUNT.as_bytes(),
        b":",
        cnonce.as_bytes(),
        b":",
        qop.token().as_bytes(),
        b":",
        ha2.as_bytes(),
    ]);
    hex(&kd)
}

fn parse_qop(token: &str) -> Option<Qop> {
    match token.to_ascii_lowercase().as_str() {
        "auth" => Some(Qop::Auth),
        "auth-conf" => Some(Qop::AuthConf),
        _ => None,
    }
}

fn format_violation(what: impl std::fmt::Display) -> DigestError {
    DigestError::Format(what.to_string())
}

/// The client: answers the server's challenge, then checks its rspauth.
pub(crate) struct DigestClient {
    creds: Credentials,
    encrypt: bool,
    cnonce: String,
    sent: Option<Sent>,
}

struct Sent {
    ha1: Zeroizing<[u8; 16]>,
    rspauth: String,
    qop: Qop,
    cipher: Option<SaslCipher>,
}

impl DigestClient {
    /// A client asking for `auth-conf` when `encrypt`, else `auth`.
    pub(crate) fn new(creds: Credentials, encrypt: bool) -> DigestClient {
        DigestClient::with_cnonce(creds, encrypt, random_nonce())
    }

    /// As [`DigestClient::new`] with a chosen cnonce (tests replaying a recorded exchange).
    pub(crate) fn with_cnonce(creds: Credentials, encrypt: bool, cnonce: String) -> DigestClient {
        DigestClient {
            creds,
            encrypt,
            cnonce,
            sent: None,
        }
    }

    /// The response to the server's challenge.
    pub(crate) fn respond(&mut self, challenge: &[u8]) -> Result<Vec<u8>, DigestError> {
        if self.sent.is_some() {
            return Err(format_violation("a second challenge"));
        }
        let d = Directives::parse(challenge)?;
        let nonce = d.required("nonce")?.to_string();
        match d.single("algorithm")? {
            Some(a) if a.eq_ignore_ascii_case("md5-sess") => {}
            other => {
                return Err(format_violation(format!(
                    "algorithm is {other:?}, expected md5-sess"
                )))
            }
        }
        let utf8 = match d.single("charset")? {
            None => false,
            Some(c) if c.eq_ignore_ascii_case("utf-8") => true,
            Some(c) => return Err(format_violation(format!("unknown charset {c:?}"))),
        };
        let realm = d.all("realm").next().unwrap_or(REALM).to_string();
        let offered: Vec<Qop> = match d.single("qop")? {
            None => vec![Qop::Auth],
            Some(v) => list(v).filter_map(parse_qop).collect(),
        };
        let qop = if self.encrypt {
            Qop::AuthConf
        } else {
            Qop::Auth
        };
        if !offered.contains(&qop) {
            return Err(DigestError::NoCommonQop);
        }
        let cipher = if qop == Qop::AuthConf {
            let ciphers: Vec<SaslCipher> = d
                .single("cipher")?
                .map(|v| list(v).filter_map(SaslCipher::parse).collect())
                .unwrap_or_default();
            let chosen = SaslCipher::ALL
                .into_iter()
                .find(|c| ciphers.contains(c))
                .ok_or_else(|| {
                    format_violation(format!(
                        "the server offers no cipher this client implements ({:?})",
                        d.single("cipher").ok().flatten().unwrap_or("")
                    ))
                })?;
            Some(chosen)
        } else {
            None
        };
        let ha1 = ha1(&self.creds, &realm, &nonce, &self.cnonce, None);
        let response = digest_value(&ha1, &nonce, &self.cnonce, qop, DIGEST_URI, "AUTHENTICATE");
        let rspauth = digest_value(&ha1, &nonce, &self.cnonce, qop, DIGEST_URI, "");
        let mut out = String::new();
        if utf8 {
            out.push_str("charset=utf-8,");
        }
        out.push_str(&format!(
            "username={},realm={},nonce={},nc={NONCE_COUNT},cnonce={},digest-uri={},maxbuf={MAXBUF},response={response},qop={}",
            quote(&self.creds.user),
            quote(&realm),
            quote(&nonce),
            quote(&self.cnonce),
            quote(DIGEST_URI),
            qop.token()
        ));
        if let Some(c) = cipher {
            out.push_str(&format!(",cipher={}", quote(c.token())));
        }
        self.sent = Some(Sent {
            ha1,
            rspauth,
            qop,
            cipher,
        });
        Ok(out.into_bytes())
    }

    /// Check the server's final token and settle the session.
    pub(crate) fn finish(self, token: &[u8]) -> Result<Negotiated, DigestError> {
        let sent = self
            .sent
            .ok_or_else(|| format_violation("rspauth before any challenge"))?;
        let d = Directives::parse(token)?;
        let got = d.required("rspauth")?;
        if !got.eq_ignore_ascii_case(&sent.rspauth) {
            return Err(DigestError::RspauthMismatch);
        }
        Ok(Negotiated {
            qop: sent.qop,
            layer: sent.cipher.map(|c| SecurityLayer::new(&sent.ha1, c, true)),
        })
    }
}

/// The server: issues the challenge, then verifies the client's response.
pub(crate) struct DigestServer {
    creds: Credentials,
    nonce: String,
    qops: Vec<Qop>,
    ciphers: Vec<SaslCipher>,
}

impl DigestServer {
    /// A server offering `auth-conf` and `auth`, or only `auth-conf` when `always_encrypt`
    /// (Spark's `serverAlwaysEncrypt`), with every cipher.
    pub(crate) fn new(creds: Credentials, always_encrypt: bool) -> DigestServer {
        DigestServer::with_nonce(creds, always_encrypt, random_nonce())
    }

    /// As [`DigestServer::new`] with a chosen nonce (tests replaying a recorded exchange).
    pub(crate) fn with_nonce(
        creds: Credentials,
        always_encrypt: bool,
        nonce: String,
    ) -> DigestServer {
        let qops = if always_encrypt {
            vec![Qop::AuthConf]
        } else {
            vec![Qop::AuthConf, Qop::Auth]
        };
        DigestServer {
            creds,
            nonce,
            qops,
            ciphers: SaslCipher::ALL.to_vec(),
        }
    }

    /// The challenge (the answer to the client's empty first message).
    pub(crate) fn challenge(&self) -> Vec<u8> {
        let qops: Vec<&str> = self.qops.iter().map(|q| q.token()).collect();
        let mut out = format!(
            "realm={},nonce={},qop={},charset=utf-8",
            quote(REALM),
            quote(&self.nonce),
            quote(&qops.join(","))
        );
        if self.qops.contains(&Qop::AuthConf) {
            let ciphers: Vec<&str> = self.ciphers.iter().map(|c| c.token()).collect();
            out.push_str(&format!(",cipher={}", quote(&ciphers.join(","))));
        }
        out.push_str(",algorithm=md5-sess");
        out.into_bytes()
    }

    /// Verify the client's response; on success the rspauth token and the session.
    pub(crate) fn verify(&self, token: &[u8]) -> Result<(Vec<u8>, Negotiated), DigestError> {
        let d = Directives::parse(token)?;
        let user = d.required("username")?;
        if user != self.creds.user {
            return Err(DigestError::UnknownUser(user.to_string()));
        }
        let realm = d.single("realm")?.unwrap_or("");
        if realm != REALM {
            return Err(format_violation(format!(
                "realm {realm:?}, expected {REALM:?}"
            )));
        }
        if d.required("nonce")? != self.nonce {
            return Err(format_violation("Mismatched nonce."));
        }
        let nc = d.required("nc")?;
        if nc != NONCE_COUNT {
            return Err(format_violation(format!(
                "nonce count {nc}, expected {NONCE_COUNT}"
            )));
        }
        let cnonce = d.required("cnonce")?;
        if cnonce.is_empty() {
            return Err(format_violation("empty cnonce"));
        }
        let qop = match d.single("qop")? {
            None => Qop::Auth,
            Some(q) => parse_qop(q).ok_or_else(|| format_violation(format!("Invalid QOP: {q}")))?,
        };
        if !self.qops.contains(&qop) {
            return Err(DigestError::QopRefused(qop));
        }
        let cipher = match (qop, d.single("cipher")?) {
            (Qop::AuthConf, Some(c)) => Some(
                SaslCipher::parse(c)
                    .filter(|c| self.ciphers.contains(c))
                    .ok_or_else(|| format_violation(format!("unknown cipher {c:?}")))?,
            ),
            (Qop::AuthConf, None) => return Err(format_violation("missing cipher directive")),
            (Qop::Auth, _) => None,
        };
        let uri = d.required("digest-uri")?;
        if uri != DIGEST_URI {
            return Err(format_violation(format!(
                "Mismatched URI: {uri}; expecting: {DIGEST_URI}"
            )));
        }
        let authzid = d.single("authzid")?;
        if authzid.is_some_and(|a| a != user) {
            return Err(format_violation(
                "an authorization id other than the user name",
            ));
        }
        let ha1 = ha1(&self.creds, realm, &self.nonce, cnonce, authzid);
        let expected = digest_value(&ha1, &self.nonce, cnonce, qop, uri, "AUTHENTICATE");
        let response = d.required("response")?;
        if !response.eq_ignore_ascii_case(&expected) {
            return Err(DigestError::MismatchedResponse);
        }
        let rspauth = digest_value(&ha1, &self.nonce, cnonce, qop, uri, "");
        Ok((
            format!("rspauth={rspauth}").into_bytes(),
            Negotiated {
                qop,
                layer: cipher.map(|c| SecurityLayer::new(&ha1, c, false)),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_2831_worked_example() {
        // RFC 2831 section 4: chris / secret at elwood.innosoft.com, IMAP.
        let creds = Credentials {
            user: "chris".into(),
            password: Zeroizing::new("secret".into()),
        };
        let (nonce, cnonce) = ("OA6MG9tEQGm2hh", "OA6MHXh6VqTrRk");
        let ha1 = ha1(&creds, "elwood.innosoft.com", nonce, cnonce, None);
        let uri = "imap/elwood.innosoft.com";
        assert_eq!(
            digest_value(&ha1, nonce, cnonce, Qop::Auth, uri, "AUTHENTICATE"),
            "d388dad90d4bbd760a152321f2143af7"
        );
        assert_eq!(
            digest_value(&ha1, nonce, cnonce, Qop::Auth, uri, ""),
            "ea40f60335c427b5527b84dbabcdfffd"
        );
    }

    #[test]
    fn spark_credentials_are_base64() {
        let c = Credentials::spark("sparkSaslUser", b"secret");
        assert_eq!(c.user, "c3BhcmtTYXNsVXNlcg==");
        assert_eq!(&*c.password, "c2VjcmV0");
    }

    fn run(
        client_secret: &[u8],
        server_secret: &[u8],
        encrypt: bool,
        always: bool,
    ) -> Result<(Negotiated, Negotiated), DigestError> {
        let server = DigestServer::new(Credentials::spark("u", server_secret), always);
        let mut client = DigestClient::new(Credentials::spark("u", client_secret), encrypt);
        let response = client.respond(&server.challenge())?;
        let (rspauth, s) = server.verify(&response)?;
        let c = client.finish(&rspauth)?;
        Ok((c, s))
    }

    #[test]
    fn matching_secrets_complete_with_the_asked_qop() {
        let (c, s) = run(b"good", b"good", false, false).unwrap();
        assert_eq!((c.qop, s.qop), (Qop::Auth, Qop::Auth));
        assert!(c.layer.is_none() && s.layer.is_none());
        let (c, s) = run(b"good", b"good", true, false).unwrap();
        assert_eq!((c.qop, s.qop), (Qop::AuthConf, Qop::AuthConf));
        assert_eq!(c.layer.unwrap().cipher, SaslCipher::TripleDes);
        assert_eq!(s.layer.unwrap().cipher, SaslCipher::TripleDes);
    }

    #[test]
    fn non_matching_secrets_fail_with_the_jdk_text() {
        let err = run(b"good", b"bad", false, false).err().unwrap();
        assert_eq!(err, DigestError::MismatchedResponse);
        assert!(err.to_string().contains("Mismatched response"), "{err}");
    }

    #[test]
    fn server_always_encrypt_refuses_a_client_that_does_not_encrypt() {
        let err = run(b"s", b"s", false, true).err().unwrap();
        assert_eq!(err, DigestError::NoCommonQop);
        assert_eq!(err.to_string(), NO_COMMON_QOP);
        assert!(run(b"s", b"s", true, true).is_ok());
    }

    #[test]
    fn an_impostor_server_fails_the_rspauth_check() {
        let server = DigestServer::new(Credentials::spark("u", b"s"), false);
        let mut client = DigestClient::new(Credentials::spark("u", b"s"), false);
        client.respond(&server.challenge()).unwrap();
        let err = client
            .finish(b"rspauth=00000000000000000000000000000000")
            .err()
            .unwrap();
        assert_eq!(err, DigestError::RspauthMismatch);
    }

    #[test]
    fn the_server_checks_every_directive() {
        let server = DigestServer::with_nonce(Credentials::spark("u", b"s"), false, "NONCE".into());
        let mut client =
            DigestClient::with_cnonce(Credentials::spark("u", b"s"), true, "CN".into());
        let good = String::from_utf8(client.respond(&server.challenge()).unwrap()).unwrap();
        assert!(server.verify(good.as_bytes()).is_ok());
        for (from, to) in [
            ("nonce=\"NONCE\"", "nonce=\"OTHER\""),
            ("nc=00000001", "nc=00000002"),
            ("digest-uri=\"null/default\"", "digest-uri=\"rpc/default\""),
            ("qop=auth-conf", "qop=auth-int"),
            (",cipher=\"3des\"", ""),
            (",cipher=\"3des\"", ",cipher=\"aes\""),
            ("username=\"dQ==\"", "username=\"eA==\""),
            ("realm=\"default\"", "realm=\"other\""),
        ] {
            assert!(good.contains(from), "{from} not in {good}");
            let bad = good.replace(from, to);
            assert!(server.verify(bad.as_bytes()).is_err(), "accepted with {to}");
        }
    }

    #[test]
    fn the_client_refuses_odd_challenges() {
        let creds = || Credentials::spark("u", b"s");
        for (bad, encrypt) in [
            (&b"nonce=\"n\",qop=\"auth\",algorithm=md5"[..], false),
            (
                b"nonce=\"n\",qop=\"auth-conf\",cipher=\"aes\",algorithm=md5-sess",
                true,
            ),
            (b"qop=\"auth\",algorithm=md5-sess", false),
        ] {
            assert!(DigestClient::new(creds(), encrypt).respond(bad).is_err());
        }
        // An encrypting client facing a server without auth-conf.
        let err = DigestClient::new(creds(), true)
            .respond(b"nonce=\"n\",qop=\"auth\",algorithm=md5-sess")
            .err()
            .unwrap();
        assert_eq!(err, DigestError::NoCommonQop);
        // The JDK client's choice from a partial offer.
        let mut c = DigestClient::new(creds(), true);
        let r = c
            .respond(b"nonce=\"n\",qop=\"auth-conf\",cipher=\"rc4-40,des,rc4\",algorithm=md5-sess")
            .unwrap();
        assert!(String::from_utf8(r).unwrap().ends_with("cipher=\"rc4\""));
    }
}
