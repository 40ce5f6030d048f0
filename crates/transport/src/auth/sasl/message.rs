//! Spark's `SaslMessage`: `0xEA | i32 len | appId UTF-8 | i32 len | token`, the body of every
//! handshake RpcRequest (the RpcResponse carries the raw token).

/// The tag byte that starts every SaslMessage.
pub(crate) const SASL_MESSAGE_TAG: u8 = 0xEA;

/// Why bytes are not a SaslMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotASaslMessage(pub(crate) &'static str);

/// One handshake step from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SaslMessage {
    pub(crate) app_id: String,
    pub(crate) token: Vec<u8>,
}

impl SaslMessage {
    /// The encoding.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + 4 + self.app_id.len() + 4 + self.token.len());
        v.push(SASL_MESSAGE_TAG);
        v.extend_from_slice(&(self.app_id.len() as i32).to_be_bytes());
        v.extend_from_slice(self.app_id.as_bytes());
        v.extend_from_slice(&(self.token.len() as i32).to_be_bytes());
        v.extend_from_slice(&self.token);
        v
    }

    /// Decode a whole message. As Spark, the token is everything after the length field (whose
    /// value must agree).
    pub(crate) fn decode(src: &[u8]) -> Result<SaslMessage, NotASaslMessage> {
        let rest = match src.split_first() {
            Some((&SASL_MESSAGE_TAG, rest)) => rest,
            _ => {
                return Err(NotASaslMessage(
                    "does not start with the SaslMessage tag 0xEA",
                ))
            }
        };
        let take_len = |b: &[u8]| -> Option<usize> {
            let n = i32::from_be_bytes(b.get(..4)?.try_into().ok()?);
            usize::try_from(n).ok()
        };
        let id_len = take_len(rest).ok_or(NotASaslMessage("truncated app id length"))?;
        let rest = &rest[4..];
        let id = rest
            .get(..id_len)
            .ok_or(NotASaslMessage("truncated app id"))?;
        let app_id = std::str::from_utf8(id)
            .map_err(|_| NotASaslMessage("the app id is not UTF-8"))?
            .to_string();
        let rest = &rest[id_len..];
        let token_len = take_len(rest).ok_or(NotASaslMessage("truncated token length"))?;
        let token = &rest[4..];
        if token.len() != token_len {
            return Err(NotASaslMessage("the token length disagrees with the body"));
        }
        Ok(SaslMessage {
            app_id,
            token: token.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let m = SaslMessage {
            app_id: "app".into(),
            token: b"tok".to_vec(),
        };
        let v = m.to_vec();
        assert_eq!(v, b"\xea\0\0\0\x03app\0\0\0\x03tok");
        assert_eq!(SaslMessage::decode(&v).unwrap(), m);
        let empty = SaslMessage {
            app_id: "sparkSaslUser".into(),
            token: vec![],
        };
        assert_eq!(SaslMessage::decode(&empty.to_vec()).unwrap(), empty);
    }

    #[test]
    fn other_bodies_are_refused() {
        for bad in [
            &b""[..],
            b"\xfb\0\0\0\x03app",
            b"\xea\0\0",
            b"\xea\0\0\0\x09app",
            b"\xea\xff\xff\xff\xffapp",
            b"\xea\0\0\0\x03app\0\0\0\x05tok",
            b"\xea\0\0\0\x02\xff\xfe\0\0\0\0",
        ] {
            assert!(SaslMessage::decode(bad).is_err(), "{bad:?}");
        }
    }
}
