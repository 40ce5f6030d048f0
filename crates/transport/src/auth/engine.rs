//! Spark's AES auth engine (Spark: `AuthEngine`): X25519 ephemeral keys, each sent
//! encrypted under an AES-GCM key derived with HKDF-SHA256 from the shared secret and bound to
//! the transcript; then the session key and IVs derived from the X25519 output.
//!
//! No sockets, no clocks: randomness can be injected, so Spark's own test vectors
//! (from its `AuthEngineSuite`) are plain unit tests.

use aes_gcm::aead::{Nonce, Tag};
use aes_gcm::{AeadInOut, Aes128Gcm, KeyInit};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::message::AuthMessage;
use super::AuthVersion;

/// Size of the key-encrypting keys, salts and session IVs (`AES_GCM_KEY_SIZE_BYTES`).
const KEY_SIZE: usize = 16;
/// AES-GCM nonce size of the protected public keys (Tink's `AesGcmJce`).
const IV_SIZE: usize = 12;
/// AES-GCM tag size.
const TAG_SIZE: usize = 16;
/// iv12 || ct32 || tag16.
const CIPHERTEXT_SIZE: usize = IV_SIZE + 32 + TAG_SIZE;

const INPUT_IV_INFO: &[u8] = b"inputIv";
const OUTPUT_IV_INFO: &[u8] = b"outputIv";
const DERIVED_KEY_INFO: &[u8] = b"derivedKey";

/// Why a handshake step failed. The text never contains key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EngineError {
    /// The message names another app id.
    AppIdMismatch { expected: String, got: String },
    /// The salt or ciphertext has the wrong size.
    Malformed(&'static str),
    /// The protected public key did not decrypt: a different secret (or app id, or transcript).
    DecryptFailed,
    /// The peer's public key is of small order (no contributory shared secret).
    WeakPublicKey,
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::AppIdMismatch { expected, got } => {
                write!(f, "the peer uses app id {got:?}, this side {expected:?}")
            }
            EngineError::Malformed(what) => write!(f, "malformed auth message: {what}"),
            EngineError::DecryptFailed => write!(
                f,
                "the peer's key exchange message did not decrypt (the secrets differ)"
            ),
            EngineError::WeakPublicKey => write!(f, "the peer sent a small-order X25519 key"),
        }
    }
}

/// The session material both sides derive.
pub(crate) struct SessionKeys {
    /// 32 bytes (v1: the raw X25519 output) or 16 bytes (v2: HKDF "derivedKey").
    pub(crate) key: Zeroizing<Vec<u8>>,
    /// HKDF "inputIv": what the client decrypts with (CTR).
    pub(crate) client_iv: [u8; KEY_SIZE],
    /// HKDF "outputIv": what the client encrypts with (CTR).
    pub(crate) server_iv: [u8; KEY_SIZE],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("key_id", &key_id(&self.key))
            .finish_non_exhaustive()
    }
}

fn hkdf_into(ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .expect("HKDF output length is small");
}

/// A non-secret identifier of a session key (Spark's `TransportCipherUtil.getKeyId`):
/// hex(HKDF-SHA256(key, salt = empty, info = "keyID", 32)). Safe to log.
pub(crate) fn key_id(key: &[u8]) -> String {
    let mut out = [0u8; 32];
    hkdf_into(key, &[], b"keyID", &mut out);
    out.iter().map(|b| format!("{b:02x}")).collect()
}

fn aad(app_id: &str, salt: &[u8], transcript: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(app_id.len() + salt.len() + transcript.len());
    v.extend_from_slice(app_id.as_bytes());
    v.extend_from_slice(salt);
    v.extend_from_slice(transcript);
    v
}

fn kek(secret: &[u8], salt: &[u8], aad: &[u8]) -> Aes128Gcm {
    let mut key = Zeroizing::new([0u8; KEY_SIZE]);
    hkdf_into(secret, salt, aad, key.as_mut());
    Aes128Gcm::new_from_slice(key.as_ref()).expect("16-byte key")
}

/// `encryptEphemeralPublicKey`: the AuthMessage carrying `public` for `transcript`.
fn encrypt_public_key(
    app_id: &str,
    secret: &[u8],
    public: &PublicKey,
    transcript: &[u8],
    salt: [u8; KEY_SIZE],
    iv: [u8; IV_SIZE],
) -> AuthMessage {
    let aad = aad(app_id, &salt, transcript);
    let mut ciphertext = Vec::with_capacity(CIPHERTEXT_SIZE);
    ciphertext.extend_from_slice(&iv);
    ciphertext.extend_from_slice(public.as_bytes());
    let tag = kek(secret, &salt, &aad)
        .encrypt_inout_detached(
            &Nonce::<Aes128Gcm>::from(iv),
            &aad,
            (&mut ciphertext[IV_SIZE..]).into(),
        )
        .expect("AES-GCM encryption of 32 bytes");
    ciphertext.extend_from_slice(&tag);
    AuthMessage {
        app_id: app_id.to_string(),
        salt: salt.to_vec(),
        ciphertext,
    }
}

/// `decryptEphemeralPublicKey`.
fn decrypt_public_key(
    app_id: &str,
    secret: &[u8],
    msg: &AuthMessage,
    transcript: &[u8],
) -> Result<PublicKey, EngineError> {
    if msg.app_id != app_id {
        return Err(EngineError::AppIdMismatch {
            expected: app_id.to_string(),
            got: msg.app_id.clone(),
        });
    }
    if msg.salt.len() != KEY_SIZE {
        return Err(EngineError::Malformed("salt is not 16 bytes"));
    }
    if msg.ciphertext.len() != CIPHERTEXT_SIZE {
        return Err(EngineError::Malformed("ciphertext is not 60 bytes"));
    }
    let aad = aad(app_id, &msg.salt, transcript);
    let (iv, rest) = msg.ciphertext.split_at(IV_SIZE);
    let (ct, tag) = rest.split_at(32);
    let mut public = [0u8; 32];
    public.copy_from_slice(ct);
    let nonce = Nonce::<Aes128Gcm>::try_from(iv).expect("12-byte nonce");
    let tag = Tag::<Aes128Gcm>::try_from(tag).expect("16-byte tag");
    kek(secret, &msg.salt, &aad)
        .decrypt_inout_detached(&nonce, &aad, (&mut public[..]).into(), &tag)
        .map_err(|_| EngineError::DecryptFailed)?;
    Ok(PublicKey::from(public))
}

fn transcript(messages: &[&AuthMessage]) -> Vec<u8> {
    let mut v = Vec::with_capacity(messages.iter().map(|m| m.encoded_len()).sum());
    for m in messages {
        m.encode_into(&mut v);
    }
    v
}

/// Derive the session key and IVs from the X25519 output and the full transcript.
fn session_keys(
    private: &StaticSecret,
    peer: &PublicKey,
    transcript: &[u8],
    version: AuthVersion,
) -> Result<SessionKeys, EngineError> {
    let shared = private.diffie_hellman(peer);
    if !shared.was_contributory() {
        return Err(EngineError::WeakPublicKey);
    }
    let shared = shared.as_bytes();
    let mut client_iv = [0u8; KEY_SIZE];
    let mut server_iv = [0u8; KEY_SIZE];
    hkdf_into(shared, transcript, INPUT_IV_INFO, &mut client_iv);
    hkdf_into(shared, transcript, OUTPUT_IV_INFO, &mut server_iv);
    let key = match version {
        AuthVersion::V1 => Zeroizing::new(shared.to_vec()),
        AuthVersion::V2 => {
            let mut k = Zeroizing::new(vec![0u8; KEY_SIZE]);
            hkdf_into(shared, transcript, DERIVED_KEY_INFO, &mut k);
            k
        }
    };
    Ok(SessionKeys {
        key,
        client_iv,
        server_iv,
    })
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

/// The client's half of the handshake: holds the ephemeral private key between challenge and
/// response.
pub(crate) struct ClientEngine {
    app_id: String,
    secret: Zeroizing<Vec<u8>>,
    private: StaticSecret,
    challenge: AuthMessage,
}

impl ClientEngine {
    /// A challenge with fresh randomness.
    pub(crate) fn new(app_id: &str, secret: &[u8]) -> Self {
        Self::with_randomness(app_id, secret, random(), random(), random())
    }

    /// A challenge from the given private key, salt and GCM IV (tests).
    pub(crate) fn with_randomness(
        app_id: &str,
        secret: &[u8],
        private: [u8; 32],
        salt: [u8; KEY_SIZE],
        iv: [u8; IV_SIZE],
    ) -> Self {
        let private = StaticSecret::from(private);
        let challenge =
            encrypt_public_key(app_id, secret, &PublicKey::from(&private), &[], salt, iv);
        ClientEngine {
            app_id: app_id.to_string(),
            secret: Zeroizing::new(secret.to_vec()),
            private,
            challenge,
        }
    }

    /// The challenge to send.
    pub(crate) fn challenge(&self) -> &AuthMessage {
        &self.challenge
    }

    /// `deriveSessionCipher`: check the server's response and derive the session keys.
    pub(crate) fn finish(
        &self,
        response: &AuthMessage,
        version: AuthVersion,
    ) -> Result<SessionKeys, EngineError> {
        let server_public = decrypt_public_key(
            &self.app_id,
            &self.secret,
            response,
            &transcript(&[&self.challenge]),
        )?;
        session_keys(
            &self.private,
            &server_public,
            &transcript(&[&self.challenge, response]),
            version,
        )
    }
}

/// The server's half: answer `challenge` (fresh randomness).
pub(crate) fn server_response(
    app_id: &str,
    secret: &[u8],
    challenge: &AuthMessage,
    version: AuthVersion,
) -> Result<(AuthMessage, SessionKeys), EngineError> {
    server_response_with(
        app_id,
        secret,
        challenge,
        version,
        random(),
        random(),
        random(),
    )
}

/// As [`server_response`] with the given private key, salt and GCM IV (tests).
pub(crate) fn server_response_with(
    app_id: &str,
    secret: &[u8],
    challenge: &AuthMessage,
    version: AuthVersion,
    private: [u8; 32],
    salt: [u8; KEY_SIZE],
    iv: [u8; IV_SIZE],
) -> Result<(AuthMessage, SessionKeys), EngineError> {
    let client_public = decrypt_public_key(app_id, secret, challenge, &[])?;
    let private = StaticSecret::from(private);
    let response = encrypt_public_key(
        app_id,
        secret,
        &PublicKey::from(&private),
        &transcript(&[challenge]),
        salt,
        iv,
    );
    let keys = session_keys(
        &private,
        &client_public,
        &transcript(&[challenge, &response]),
        version,
    )?;
    Ok((response, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    // The vectors of Spark's AuthEngineSuite / CtrAuthEngineSuite.
    const CLIENT_PRIVATE: &str = "efe6b68b3fce92158e3637f6ef9d937e75558928dd4b401de04b43d300a73186";
    const CHALLENGE: &str = "fb00000005617070496400000010890b6e960f48e998777267a7e4e623220000003c48ad7dc7ec9466da93bda9f11488dc9404050e02c661d87d67c782444944c6e369b27e0a416c30845a2d9e64271511ca98b41d65f8c426e18ff380f6";
    const RESPONSE: &str = "fb00000005617070496400000010708451c9dd2792c97c1ca66e6df449ef0000003c64fe899ecdaf458d4e25e9d5c5a380b8e6d1a184692fac065ed84f8592c18e9629f9c636809dca2ffc041f20346eb53db7873808ecad08b46b5ee3ff";
    const V1_KEY: &str = "31963f15a320d5c90333f7ecf5cf3a31c7eaf151de07fef8494663a9f47cfd31";
    const INPUT_IV: &str = "fc6a5dc8b90a9dad8f54f08b51a59ed2";
    const OUTPUT_IV: &str = "a72709baf00785cad6329ce09f631f71";
    const V2_KEY: &str = "2d6e7a9048c8265c33a8f3747bfcc84c";
    const V2_KEY_ID: &str = "de04fd52d71040ed9d260579dacfdf4f5695f991ce8ddb1dde05a7335880906e";

    fn fixed_client() -> ClientEngine {
        let challenge = AuthMessage::decode(&unhex(CHALLENGE)).unwrap();
        let private: [u8; 32] = unhex(CLIENT_PRIVATE).try_into().unwrap();
        let salt: [u8; 16] = challenge.salt.clone().try_into().unwrap();
        let iv: [u8; 12] = challenge.ciphertext[..12].try_into().unwrap();
        ClientEngine::with_randomness("appId", b"secret", private, salt, iv)
    }

    #[test]
    fn challenge_is_reproduced_byte_for_byte() {
        assert_eq!(hex(&fixed_client().challenge().to_vec()), CHALLENGE);
    }

    #[test]
    fn response_decrypts_and_re_encrypts_byte_for_byte() {
        let challenge = AuthMessage::decode(&unhex(CHALLENGE)).unwrap();
        let response = AuthMessage::decode(&unhex(RESPONSE)).unwrap();
        let server_public =
            decrypt_public_key("appId", b"secret", &response, &unhex(CHALLENGE)).unwrap();
        let again = encrypt_public_key(
            "appId",
            b"secret",
            &server_public,
            &transcript(&[&challenge]),
            response.salt.clone().try_into().unwrap(),
            response.ciphertext[..12].try_into().unwrap(),
        );
        assert_eq!(hex(&again.to_vec()), RESPONSE);
        // The client's public key inside the challenge is the one of the fixed private key.
        let client_public = decrypt_public_key("appId", b"secret", &challenge, &[]).unwrap();
        let private: [u8; 32] = unhex(CLIENT_PRIVATE).try_into().unwrap();
        assert_eq!(
            client_public.as_bytes(),
            PublicKey::from(&StaticSecret::from(private)).as_bytes()
        );
    }

    #[test]
    fn v1_session_key_and_ivs() {
        let response = AuthMessage::decode(&unhex(RESPONSE)).unwrap();
        let keys = fixed_client().finish(&response, AuthVersion::V1).unwrap();
        assert_eq!(hex(&keys.key), V1_KEY);
        assert_eq!(hex(&keys.client_iv), INPUT_IV);
        assert_eq!(hex(&keys.server_iv), OUTPUT_IV);
    }

    #[test]
    fn v2_session_key_and_key_id() {
        let response = AuthMessage::decode(&unhex(RESPONSE)).unwrap();
        let keys = fixed_client().finish(&response, AuthVersion::V2).unwrap();
        assert_eq!(hex(&keys.key), V2_KEY);
        assert_eq!(key_id(&keys.key), V2_KEY_ID);
        assert_eq!(hex(&keys.client_iv), INPUT_IV);
        assert_eq!(hex(&keys.server_iv), OUTPUT_IV);
        assert!(!format!("{keys:?}").contains(V2_KEY));
    }

    #[test]
    fn both_sides_agree_and_mismatches_are_refused() {
        for version in [AuthVersion::V1, AuthVersion::V2] {
            let client = ClientEngine::new("app", b"s3cret");
            let (response, server_keys) =
                server_response("app", b"s3cret", client.challenge(), version).unwrap();
            let client_keys = client.finish(&response, version).unwrap();
            assert_eq!(*client_keys.key, *server_keys.key);
            assert_eq!(client_keys.client_iv, server_keys.client_iv);
            assert_eq!(client_keys.server_iv, server_keys.server_iv);
        }
        let client = ClientEngine::new("app", b"s3cret");
        assert_eq!(
            server_response("app", b"other", client.challenge(), AuthVersion::V1).unwrap_err(),
            EngineError::DecryptFailed
        );
        assert!(matches!(
            server_response("other-app", b"s3cret", client.challenge(), AuthVersion::V1),
            Err(EngineError::AppIdMismatch { .. })
        ));
        // A response for another challenge (transcript binding) is refused.
        let other = ClientEngine::new("app", b"s3cret");
        let (response, _) =
            server_response("app", b"s3cret", other.challenge(), AuthVersion::V1).unwrap();
        assert_eq!(
            client.finish(&response, AuthVersion::V1).unwrap_err(),
            EngineError::DecryptFailed
        );
    }
}
