//! The URIs of served files, as Spark writes and reads them: the percent-encoding of a served
//! file's name, the normalisation of a directory's base URI, and the parsing of a URI a client
//! opens (its host, port and decoded path). Pure functions: no sockets, no file system.

use std::fmt::Write as _;

/// Encodes a file name as the raw path of a URI the way Java's `URI` quotes a path (Spark:
/// `Utils.encodeFileNameToURIRawPath`): ASCII letters, digits, `-_.!~*'()`, `:@&=+$,;/` stay;
/// other ASCII characters are `%XX`; non-ASCII characters stay literal, except Unicode space
/// separators and control characters, which are `%XX` of their UTF-8 bytes. So `a b%cé+x#y?z`
/// becomes `a%20b%25cé+x%23y%3Fz`, the name Spark's own server prints.
pub(crate) fn encode_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let literal = if c.is_ascii() {
            c.is_ascii_alphanumeric() || "-_.!~*'():@&=+$,;/".contains(c)
        } else {
            !(c.is_control() || is_space_separator(c))
        };
        if literal {
            out.push(c);
        } else {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Java's `Character.isSpaceChar`: the Unicode categories Zs, Zl and Zp.
fn is_space_separator(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
    )
}

/// Decodes `%XX` escapes (Java's `URI.getPath`): the bytes are read as UTF-8, an invalid
/// sequence becoming U+FFFD; a `%` not followed by two hex digits stays as it is.
pub(crate) fn decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory key of a base URI (Spark: `RpcEnvFileServer.validateDirectoryUri`): the path of
/// the URI, normalised (`.` and `x/..` segments and repeated slashes removed), with exactly one
/// leading `/` and no trailing one. `/dir1/././` and `dir1` both become `/dir1`.
pub(crate) fn normalize_directory(base_uri: &str) -> String {
    let path = match split_uri(base_uri) {
        Some((_, path)) => path,
        None => strip_query(base_uri),
    };
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." if segments.last().is_some_and(|s| *s != "..") => {
                segments.pop();
            }
            // A leading `..` stays, as Java's normalize keeps it.
            other => segments.push(other),
        }
    }
    format!("/{}", decode(&segments.join("/")))
}

/// The path and what precedes it, without a query or fragment.
fn strip_query(s: &str) -> &str {
    s.find(['?', '#']).map_or(s, |i| &s[..i])
}

/// `(authority, raw path)` of `scheme://authority/path?query#fragment`, or `None` when `uri`
/// has no `scheme://`.
fn split_uri(uri: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = uri.split_once("://")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let rest = strip_query(rest);
    let end = rest.find('/').unwrap_or(rest.len());
    Some((&rest[..end], &rest[end..]))
}

/// Why a URI cannot be opened: Spark's `openChannel` texts.
pub(crate) const NO_HOST: &str = "Host name must be defined.";
/// See [`NO_HOST`].
pub(crate) const NO_PORT: &str = "Port must be defined.";
/// See [`NO_HOST`].
pub(crate) const NO_PATH: &str = "Path must be defined.";

/// A URI to open: where, and the stream id to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileUri {
    /// The host (an IPv6 literal without brackets).
    pub(crate) host: String,
    /// The port (> 0).
    pub(crate) port: u16,
    /// The decoded, unnormalised path: the stream id, as Spark's `openChannel` sends it.
    pub(crate) path: String,
}

/// Parses `scheme://[user@]host:port/path` (any scheme: `rpc`, `spark`, ...). The path is
/// decoded but not normalised: `/files/file%20name` asks for the stream `/files/file name`.
/// Errors carry Spark's texts ([`NO_HOST`], [`NO_PORT`], [`NO_PATH`]) or say what is malformed.
pub(crate) fn parse(uri: &str) -> Result<FileUri, String> {
    let (authority, raw_path) = split_uri(uri).ok_or_else(|| NO_HOST.to_string())?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if let Some(inner) = host_port.strip_prefix('[') {
        let (ip, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in the host of {uri}"))?;
        (ip, after.strip_prefix(':'))
    } else {
        match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err(NO_HOST.into());
    }
    let port = match port.filter(|p| !p.is_empty()) {
        None => return Err(NO_PORT.into()),
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("invalid port \"{p}\" in {uri}"))?,
    };
    if port == 0 {
        return Err(NO_PORT.into());
    }
    if raw_path.is_empty() {
        return Err(NO_PATH.into());
    }
    Ok(FileUri {
        host: host.to_string(),
        port,
        path: decode(raw_path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_as_javas_uri_path() {
        // Checked with jshell against java.net.URI (Spark's encodeFileNameToURIRawPath).
        assert_eq!(encode_name("a b%cé+x#y?z"), "a%20b%25cé+x%23y%3Fz");
        assert_eq!(encode_name("file name"), "file%20name");
        assert_eq!(encode_name("plain-1.0_(x)~!*'"), "plain-1.0_(x)~!*'");
        assert_eq!(encode_name(":@&=+$,;"), ":@&=+$,;");
        assert_eq!(
            encode_name("\"<>[]\\^`{|}"),
            "%22%3C%3E%5B%5D%5C%5E%60%7B%7C%7D"
        );
        assert_eq!(encode_name("tab\tnl\n"), "tab%09nl%0A");
        assert_eq!(encode_name("日本"), "日本");
        assert_eq!(encode_name("nb\u{a0}sp"), "nb%C2%A0sp");
        assert_eq!(encode_name("c1\u{85}"), "c1%C2%85");
    }

    #[test]
    fn decoding_reverses_the_encoding() {
        for name in ["a b%cé+x#y?z", "file name", "日本 x", "100%"] {
            assert_eq!(decode(&encode_name(name)), name);
        }
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("%E6%97%A5"), "日");
        assert_eq!(decode("%FF"), "\u{fffd}");
    }

    #[test]
    fn directory_uris_are_normalised_as_spark_does() {
        assert_eq!(normalize_directory("/dir1"), "/dir1");
        assert_eq!(normalize_directory("dir1"), "/dir1");
        assert_eq!(normalize_directory("/dir1/"), "/dir1");
        assert_eq!(normalize_directory("/dir1/././"), "/dir1");
        assert_eq!(normalize_directory("/dir2/../dir2/"), "/dir2");
        assert_eq!(normalize_directory("//a//b/"), "/a/b");
        assert_eq!(normalize_directory("/files/"), "/files");
        assert_eq!(normalize_directory("rpc://h:1/jars/x/.."), "/jars");
        assert_eq!(normalize_directory("/a%20b"), "/a b");
        assert_eq!(normalize_directory("/classes?x#y"), "/classes");
    }

    #[test]
    fn uris_name_host_port_and_the_decoded_path() {
        let u = parse("spark://127.0.0.1:7077/files/file%20name").unwrap();
        assert_eq!(
            u,
            FileUri {
                host: "127.0.0.1".into(),
                port: 7077,
                path: "/files/file name".into()
            }
        );
        let u = parse("rpc://master@[::1]:9/dir1/../../secret.txt?q#f").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert_eq!(u.path, "/dir1/../../secret.txt", "not normalised");
        assert_eq!(parse("rpc://h:1/dir1//tmp/x").unwrap().path, "/dir1//tmp/x");
    }

    #[test]
    fn a_missing_host_port_or_path_has_sparks_text() {
        for (uri, text) in [
            ("rpc:///files/x", NO_HOST),
            ("/files/x", NO_HOST),
            ("rpc://:5/files/x", NO_HOST),
            ("rpc://h/files/x", NO_PORT),
            ("rpc://h:/files/x", NO_PORT),
            ("rpc://h:0/files/x", NO_PORT),
            ("rpc://h:5", NO_PATH),
            ("rpc://h:5?x", NO_PATH),
        ] {
            assert_eq!(parse(uri).unwrap_err(), text, "{uri}");
        }
        assert!(parse("rpc://h:99999/x")
            .unwrap_err()
            .contains("invalid port"));
    }
}
