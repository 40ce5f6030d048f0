//! Spark's `AuthMessage`: `0xFB | i32 len | appId UTF-8 | i32 len | salt | i32 len |
//! ciphertext`, the body of the handshake's RpcRequest and RpcResponse.

/// The tag byte that starts every AuthMessage.
pub(crate) const AUTH_MESSAGE_TAG: u8 = 0xFB;

/// Why bytes are not an AuthMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotAnAuthMessage(pub(crate) &'static str);

/// One handshake message: the sender's app id, a fresh salt and its encrypted X25519 public key.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AuthMessage {
    pub(crate) app_id: String,
    pub(crate) salt: Vec<u8>,
    pub(crate) ciphertext: Vec<u8>,
}

impl std::fmt::Debug for AuthMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthMessage")
            .field("app_id", &self.app_id)
            .field("salt_len", &self.salt.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

impl AuthMessage {
    /// The encoded size in bytes.
    pub(crate) fn encoded_len(&self) -> usize {
        1 + 4 + self.app_id.len() + 4 + self.salt.len() + 4 + self.ciphertext.len()
    }

    /// Append the encoding to `dst`.
    pub(crate) fn encode_into(&self, dst: &mut Vec<u8>) {
        dst.reserve(self.encoded_len());
        dst.push(AUTH_MESSAGE_TAG);
        for part in [self.app_id.as_bytes(), &self.salt, &self.ciphertext] {
            dst.extend_from_slice(&(part.len() as i32).to_be_bytes());
            dst.extend_from_slice(part);
        }
    }

    /// The encoding.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut v);
        v
    }

    /// Decode a whole message (trailing bytes are refused).
    pub(crate) fn decode(mut src: &[u8]) -> Result<AuthMessage, NotAnAuthMessage> {
        match src.split_first() {
            Some((&AUTH_MESSAGE_TAG, rest)) => src = rest,
            _ => {
                return Err(NotAnAuthMessage(
                    "does not start with the AuthMessage tag 0xFB",
                ))
            }
        }
        let mut field = || -> Result<Vec<u8>, NotAnAuthMessage> {
            if src.len() < 4 {
                return Err(NotAnAuthMessage("truncated length field"));
            }
            let len = i32::from_be_bytes([src[0], src[1], src[2], src[3]]);
            let len = usize::try_from(len).map_err(|_| NotAnAuthMessage("negative length"))?;
            if src.len() - 4 < len {
                return Err(NotAnAuthMessage("field longer than the message"));
            }
            let v = src[4..4 + len].to_vec();
            src = &src[4 + len..];
            Ok(v)
        };
        let app_id =
            String::from_utf8(field()?).map_err(|_| NotAnAuthMessage("app id is not UTF-8"))?;
        let salt = field()?;
        let ciphertext = field()?;
        if !src.is_empty() {
            return Err(NotAnAuthMessage("trailing bytes"));
        }
        Ok(AuthMessage {
            app_id,
            salt,
            ciphertext,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let m = AuthMessage {
            app_id: "appId".into(),
            salt: vec![1; 16],
            ciphertext: vec![2; 60],
        };
        let bytes = m.to_vec();
        assert_eq!(bytes.len(), m.encoded_len());
        assert_eq!(
            &bytes[..10],
            &[0xFB, 0, 0, 0, 5, b'a', b'p', b'p', b'I', b'd']
        );
        assert_eq!(AuthMessage::decode(&bytes).unwrap(), m);
        assert!(AuthMessage::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(AuthMessage::decode(&trailing).is_err());
        assert!(AuthMessage::decode(b"hello").is_err());
        assert!(AuthMessage::decode(&[]).is_err());
        assert!(AuthMessage::decode(&[0xFB, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
