//! DIGEST-MD5's token syntax (RFC 2831): a comma-separated list of `name=value` directives, each
//! value a token or a quoted string with backslash escapes. Names compare case-insensitively.

use super::DigestError;

/// A parsed directive list, in the order received.
#[derive(Debug, Default)]
pub(crate) struct Directives {
    entries: Vec<(String, String)>,
}

fn violation(detail: impl Into<String>) -> DigestError {
    DigestError::Format(detail.into())
}

impl Directives {
    /// Parse a challenge or response. Empty list elements (`a=1,,b=2`) are allowed, as in
    /// RFC 2616's `#rule`.
    pub(crate) fn parse(token: &[u8]) -> Result<Directives, DigestError> {
        let text = std::str::from_utf8(token).map_err(|_| violation("the token is not UTF-8"))?;
        let mut entries = Vec::new();
        let mut rest = text.chars().peekable();
        loop {
            while rest.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                rest.next();
            }
            if rest.peek().is_none() {
                break;
            }
            let mut name = String::new();
            while let Some(&c) = rest.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                if c == ',' || c == '"' {
                    return Err(violation(format!(
                        "directive {name:?} has no value (unexpected {c:?})"
                    )));
                }
                name.push(c);
                rest.next();
            }
            while rest.peek().is_some_and(|c| c.is_whitespace()) {
                rest.next();
            }
            if rest.next() != Some('=') {
                return Err(violation(format!("directive {name:?} has no '='")));
            }
            while rest.peek().is_some_and(|c| c.is_whitespace()) {
                rest.next();
            }
            let mut value = String::new();
            if rest.peek() == Some(&'"') {
                rest.next();
                loop {
                    match rest.next() {
                        None => {
                            return Err(violation(format!(
                                "the quoted value of {name:?} is not closed"
                            )))
                        }
                        Some('"') => break,
                        Some('\\') => match rest.next() {
                            Some(c) => value.push(c),
                            None => {
                                return Err(violation(format!(
                                    "the quoted value of {name:?} ends in an escape"
                                )))
                            }
                        },
                        Some(c) => value.push(c),
                    }
                }
                while rest.peek().is_some_and(|c| c.is_whitespace()) {
                    rest.next();
                }
                match rest.peek() {
                    None | Some(',') => {}
                    Some(c) => {
                        return Err(violation(format!(
                            "unexpected {c:?} after the quoted value of {name:?}"
                        )))
                    }
                }
            } else {
                while let Some(&c) = rest.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    rest.next();
                }
                value.truncate(value.trim_end().len());
            }
            entries.push((name.to_ascii_lowercase(), value));
        }
        Ok(Directives { entries })
    }

    /// The value of `name`, refusing a repeated directive.
    pub(crate) fn single(&self, name: &str) -> Result<Option<&str>, DigestError> {
        let mut found = None;
        for (n, v) in &self.entries {
            if n == name {
                if found.is_some() {
                    return Err(violation(format!(
                        "peer sent more than one {name} directive"
                    )));
                }
                found = Some(v.as_str());
            }
        }
        Ok(found)
    }

    /// The value of `name`, which must be present once.
    pub(crate) fn required(&self, name: &str) -> Result<&str, DigestError> {
        self.single(name)?
            .ok_or_else(|| violation(format!("missing {name} directive")))
    }

    /// Every value of `name` (a challenge may offer several realms).
    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A quoted-string value with `"` and `\` escaped.
pub(crate) fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The comma-separated elements of a list value (`qop="auth-conf,auth"`), trimmed.
pub(crate) fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_jvm_challenge() {
        let d = Directives::parse(
            br#"realm="default",nonce="ab\"c",qop="auth-conf,auth",charset=utf-8,cipher="3des,rc4",algorithm=md5-sess"#,
        )
        .unwrap();
        assert_eq!(d.required("realm").unwrap(), "default");
        assert_eq!(d.required("nonce").unwrap(), "ab\"c");
        assert_eq!(
            list(d.required("qop").unwrap()).collect::<Vec<_>>(),
            ["auth-conf", "auth"]
        );
        assert_eq!(d.required("charset").unwrap(), "utf-8");
        assert_eq!(d.required("algorithm").unwrap(), "md5-sess");
        assert_eq!(d.single("maxbuf").unwrap(), None);
    }

    #[test]
    fn whitespace_empty_elements_and_case() {
        let d = Directives::parse(b" Realm = \"a b\" ,, NC=00000001 , qop = auth ").unwrap();
        assert_eq!(d.required("realm").unwrap(), "a b");
        assert_eq!(d.required("nc").unwrap(), "00000001");
        assert_eq!(d.required("qop").unwrap(), "auth");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            &b"nonce"[..],
            b"nonce=\"open",
            b"nonce=\"x\"y",
            b"a=1,a=2",
            b"\"x\"=1",
            b"nonce=\"x\\",
            &[0xff, 0xfe],
        ] {
            let r = Directives::parse(bad).and_then(|d| d.single("a").map(|_| ()));
            assert!(r.is_err(), "{:?} accepted", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn quoting_round_trips() {
        let v = r#"we"ird\value"#;
        let d = Directives::parse(format!("x={}", quote(v)).as_bytes()).unwrap();
        assert_eq!(d.required("x").unwrap(), v);
    }
}
