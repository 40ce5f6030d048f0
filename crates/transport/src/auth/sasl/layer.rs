//! DIGEST-MD5's confidentiality layer (QOP `auth-conf`, RFC 2831 section 2.4), as the JDK
//! implements it (Spark: `SparkSaslClient.wrap` / `unwrap`):
//!
//! ```text
//! wrap(msg) = CIPHER(Kc, msg | pad | HMAC-MD5(Ki, seq | msg)[0..10]) | 0x0001 | seq
//! ```
//!
//! `seq` is a 4-byte big-endian counter per direction starting at 0; `pad` (block ciphers only)
//! is 1..=8 bytes each holding the pad length. The cipher state runs on across messages (CBC
//! chains from the previous message's last block, RC4 continues its keystream).
//!
//! Keys, from the binary H(A1) of the authentication:
//! - `Kic`/`Kis` = MD5(H(A1) | "Digest session key to {client-to-server, server-to-client}
//!   signing key magic constant");
//! - `Kcc`/`Kcs` = MD5(H(A1)[0..n] | "Digest H(A1) to {client-to-server, server-to-client}
//!   sealing key magic constant"), n = 5 for rc4-40, 7 for rc4-56, else 16;
//! - RC4 keys with all 16 bytes of Kc; DES with its first 7 bytes spread to 8 (7 bits per byte,
//!   odd parity), 3DES (EDE) with K1 = Kc[0..7], K2 = Kc[7..14] as K1|K2|K1; the CBC IV is
//!   Kc[8..16].

use cbc::cipher::array::Array;
use cbc::cipher::consts::U8;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyInit, KeyIvInit, StreamCipher};
use des::{Des, TdesEde3};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use rc4::Rc4;
use zeroize::Zeroizing;

/// The 2-byte message type of every wrapped message.
const MESSAGE_TYPE: [u8; 2] = [0, 1];
/// Bytes of the truncated HMAC.
const MAC_LEN: usize = 10;
/// Message type + sequence number after the ciphertext.
const TRAILER: usize = 6;
/// The DES block size.
const BLOCK: usize = 8;

const CLIENT_SIGN: &[u8] = b"Digest session key to client-to-server signing key magic constant";
const SERVER_SIGN: &[u8] = b"Digest session key to server-to-client signing key magic constant";
const CLIENT_SEAL: &[u8] = b"Digest H(A1) to client-to-server sealing key magic constant";
const SERVER_SEAL: &[u8] = b"Digest H(A1) to server-to-client sealing key magic constant";

/// A DIGEST-MD5 cipher (the `cipher` directive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslCipher {
    /// `3des`: two-key triple DES (EDE) in CBC mode; what the JDK client picks from Spark's offer.
    TripleDes,
    /// `rc4`: RC4 with a 128-bit key.
    Rc4,
    /// `des`: single DES in CBC mode.
    Des,
    /// `rc4-56`: RC4 keyed from 56 bits of H(A1).
    Rc4_56,
    /// `rc4-40`: RC4 keyed from 40 bits of H(A1).
    Rc4_40,
}

impl SaslCipher {
    /// Every cipher, in the JDK's order of preference (strongest first).
    pub const ALL: [SaslCipher; 5] = [
        SaslCipher::TripleDes,
        SaslCipher::Rc4,
        SaslCipher::Des,
        SaslCipher::Rc4_56,
        SaslCipher::Rc4_40,
    ];

    /// The directive token.
    pub fn token(self) -> &'static str {
        match self {
            SaslCipher::TripleDes => "3des",
            SaslCipher::Rc4 => "rc4",
            SaslCipher::Des => "des",
            SaslCipher::Rc4_56 => "rc4-56",
            SaslCipher::Rc4_40 => "rc4-40",
        }
    }

    /// Parse a directive token (case-insensitive).
    pub fn parse(token: &str) -> Option<SaslCipher> {
        SaslCipher::ALL
            .into_iter()
            .find(|c| c.token().eq_ignore_ascii_case(token.trim()))
    }

    /// How many bytes of H(A1) key the sealing keys.
    fn key_material(self) -> usize {
        match self {
            SaslCipher::Rc4_40 => 5,
            SaslCipher::Rc4_56 => 7,
            _ => 16,
        }
    }
}

/// Why a wrapped message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LayerError {
    /// Too short, or not a whole number of cipher blocks.
    #[error("a wrapped message of {0} bytes has an impossible length")]
    Length(usize),
    /// The padding after decryption is impossible (another key, or corrupted data).
    #[error("the decrypted padding is invalid (another key, or corrupted data)")]
    Padding,
    /// The HMAC does not match (another key, or tampered data).
    #[error("the message's HMAC does not match (another key, or tampered data)")]
    Mac,
    /// The sequence number is not the next one expected (replayed, reordered or dropped data).
    #[error("out of order sequencing of messages: got {got}, expected {expected}")]
    Sequence { got: u32, expected: u32 },
    /// The message type is not 1.
    #[error("invalid message type {0}")]
    MessageType(u16),
}

fn md5(parts: &[&[u8]]) -> Zeroizing<[u8; 16]> {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    Zeroizing::new(h.finalize().into())
}

/// A DES key from 7 bytes: 56 bits, 7 per byte in the high bits, the low bit odd parity.
fn des_key(raw: &[u8]) -> Zeroizing<[u8; 8]> {
    let mut bits = 0u64;
    for &b in &raw[..7] {
        bits = (bits << 8) | u64::from(b);
    }
    let mut key = Zeroizing::new([0u8; 8]);
    for (i, k) in key.iter_mut().enumerate() {
        let seven = ((bits >> (7 * (7 - i))) & 0x7f) as u8;
        let b = seven << 1;
        *k = b | ((b.count_ones() as u8 & 1) ^ 1);
    }
    key
}

fn tdes_key(kc: &[u8; 16]) -> Zeroizing<[u8; 24]> {
    let (k1, k2) = (des_key(&kc[..7]), des_key(&kc[7..14]));
    let mut key = Zeroizing::new([0u8; 24]);
    key[..8].copy_from_slice(&*k1);
    key[8..16].copy_from_slice(&*k2);
    key[16..].copy_from_slice(&*k1);
    key
}

enum Encrypt {
    Tdes(Box<cbc::Encryptor<TdesEde3>>),
    Des(Box<cbc::Encryptor<Des>>),
    Rc4(Box<Rc4>),
}

enum Decrypt {
    Tdes(Box<cbc::Decryptor<TdesEde3>>),
    Des(Box<cbc::Decryptor<Des>>),
    Rc4(Box<Rc4>),
}

fn blocks(buf: &mut [u8]) -> &mut [Array<u8, U8>] {
    let (blocks, tail) = Array::<u8, U8>::slice_as_chunks_mut(buf);
    debug_assert!(tail.is_empty());
    blocks
}

impl Encrypt {
    fn new(cipher: SaslCipher, kc: &[u8; 16]) -> Encrypt {
        let iv = &kc[8..];
        match cipher {
            SaslCipher::TripleDes => Encrypt::Tdes(Box::new(
                cbc::Encryptor::new_from_slices(&*tdes_key(kc), iv).expect("24-byte key"),
            )),
            SaslCipher::Des => Encrypt::Des(Box::new(
                cbc::Encryptor::new_from_slices(&*des_key(kc), iv).expect("8-byte key"),
            )),
            _ => Encrypt::Rc4(Box::new(Rc4::new_from_slice(kc).expect("16-byte key"))),
        }
    }

    fn block_size(&self) -> usize {
        match self {
            Encrypt::Rc4(_) => 1,
            _ => BLOCK,
        }
    }

    fn apply(&mut self, buf: &mut [u8]) {
        match self {
            Encrypt::Tdes(c) => c.encrypt_blocks(blocks(buf)),
            Encrypt::Des(c) => c.encrypt_blocks(blocks(buf)),
            Encrypt::Rc4(c) => c.apply_keystream(buf),
        }
    }
}

impl Decrypt {
    fn new(cipher: SaslCipher, kc: &[u8; 16]) -> Decrypt {
        let iv = &kc[8..];
        match cipher {
            SaslCipher::TripleDes => Decrypt::Tdes(Box::new(
                cbc::Decryptor::new_from_slices(&*tdes_key(kc), iv).expect("24-byte key"),
            )),
            SaslCipher::Des => Decrypt::Des(Box::new(
                cbc::Decryptor::new_from_slices(&*des_key(kc), iv).expect("8-byte key"),
            )),
            _ => Decrypt::Rc4(Box::new(Rc4::new_from_slice(kc).expect("16-byte key"))),
        }
    }

    fn block_size(&self) -> usize {
        match self {
            Decrypt::Rc4(_) => 1,
            _ => BLOCK,
        }
    }

    fn apply(&mut self, buf: &mut [u8]) {
        match self {
            Decrypt::Tdes(c) => c.decrypt_blocks(blocks(buf)),
            Decrypt::Des(c) => c.decrypt_blocks(blocks(buf)),
            Decrypt::Rc4(c) => c.apply_keystream(buf),
        }
    }
}

fn mac(keyed: &Hmac<Md5>, seq: &[u8; 4], msg: &[u8]) -> [u8; MAC_LEN] {
    let mut m = keyed.clone();
    m.update(seq);
    m.update(msg);
    let full = m.finalize().into_bytes();
    full[..MAC_LEN].try_into().expect("10 bytes")
}

/// The sending half: wraps outbound messages.
pub(crate) struct Sealer {
    enc: Encrypt,
    mac: Hmac<Md5>,
    seq: u32,
}

impl Sealer {
    /// The wrapped size of a message of `n` bytes.
    pub(crate) fn wrapped_len(&self, n: usize) -> usize {
        let bs = self.enc.block_size();
        let pad = if bs > 1 { bs - (n + MAC_LEN) % bs } else { 0 };
        n + pad + MAC_LEN + TRAILER
    }

    /// Wrap the message at `buf[start..]` in place (it grows by the padding, MAC and trailer).
    /// The message must not be empty (the JDK wraps nothing for an empty message).
    pub(crate) fn seal(&mut self, buf: &mut Vec<u8>, start: usize) {
        debug_assert!(buf.len() > start);
        let seq = self.seq.to_be_bytes();
        let tag = mac(&self.mac, &seq, &buf[start..]);
        let bs = self.enc.block_size();
        if bs > 1 {
            let pad = bs - (buf.len() - start + MAC_LEN) % bs;
            buf.resize(buf.len() + pad, pad as u8);
        }
        buf.extend_from_slice(&tag);
        self.enc.apply(&mut buf[start..]);
        buf.extend_from_slice(&MESSAGE_TYPE);
        buf.extend_from_slice(&seq);
        self.seq = self.seq.wrapping_add(1);
    }
}

/// The receiving half: unwraps inbound messages.
pub(crate) struct Opener {
    dec: Decrypt,
    mac: Hmac<Md5>,
    seq: u32,
}

impl Opener {
    /// Unwrap the wrapped message `buf` in place; the plaintext is `buf[..n]` for the returned
    /// `n`. Any failure is final: the cipher state has moved on.
    pub(crate) fn open(&mut self, buf: &mut [u8]) -> Result<usize, LayerError> {
        let bs = self.dec.block_size();
        let len = buf.len();
        if len < MAC_LEN + TRAILER + 1 || !(len - TRAILER).is_multiple_of(bs) {
            return Err(LayerError::Length(len));
        }
        let (body, trailer) = buf.split_at_mut(len - TRAILER);
        self.dec.apply(body);
        let mut msg_len = body.len() - MAC_LEN;
        if bs > 1 {
            let pad = usize::from(body[msg_len - 1]);
            if pad == 0 || pad > bs || pad > msg_len {
                return Err(LayerError::Padding);
            }
            if body[msg_len - pad..msg_len]
                .iter()
                .any(|&b| usize::from(b) != pad)
            {
                return Err(LayerError::Padding);
            }
            msg_len -= pad;
        }
        let seq: [u8; 4] = trailer[2..].try_into().expect("4 bytes");
        let expected_mac = mac(&self.mac, &seq, &body[..msg_len]);
        let got_mac = &body[body.len() - MAC_LEN..];
        if expected_mac != got_mac {
            return Err(LayerError::Mac);
        }
        let got = u32::from_be_bytes(seq);
        if got != self.seq {
            return Err(LayerError::Sequence {
                got,
                expected: self.seq,
            });
        }
        if trailer[..2] != MESSAGE_TYPE {
            return Err(LayerError::MessageType(u16::from_be_bytes([
                trailer[0], trailer[1],
            ])));
        }
        self.seq = self.seq.wrapping_add(1);
        Ok(msg_len)
    }
}

/// Both halves of a negotiated confidentiality layer.
pub(crate) struct SecurityLayer {
    pub(crate) sealer: Sealer,
    pub(crate) opener: Opener,
    pub(crate) cipher: SaslCipher,
}

impl SecurityLayer {
    /// The layer of the client (`client`) or server side, from the binary H(A1).
    pub(crate) fn new(ha1: &[u8; 16], cipher: SaslCipher, client: bool) -> SecurityLayer {
        let kic = md5(&[ha1, CLIENT_SIGN]);
        let kis = md5(&[ha1, SERVER_SIGN]);
        let n = cipher.key_material();
        let kcc = md5(&[&ha1[..n], CLIENT_SEAL]);
        let kcs = md5(&[&ha1[..n], SERVER_SEAL]);
        let (my_ki, peer_ki, my_kc, peer_kc) = if client {
            (&kic, &kis, &kcc, &kcs)
        } else {
            (&kis, &kic, &kcs, &kcc)
        };
        let keyed = |k: &[u8; 16]| <Hmac<Md5>>::new_from_slice(k).expect("any HMAC key length");
        SecurityLayer {
            sealer: Sealer {
                enc: Encrypt::new(cipher, my_kc),
                mac: keyed(my_ki),
                seq: 0,
            },
            opener: Opener {
                dec: Decrypt::new(cipher, peer_kc),
                mac: keyed(peer_ki),
                seq: 0,
            },
            cipher,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cipher: SaslCipher) -> (SecurityLayer, SecurityLayer) {
        let ha1 = [0x5au8; 16];
        (
            SecurityLayer::new(&ha1, cipher, true),
            SecurityLayer::new(&ha1, cipher, false),
        )
    }

    #[test]
    fn des_keys_spread_seven_bits_per_byte_with_odd_parity() {
        let k = des_key(&[0xff; 7]);
        assert_eq!(*k, [0xfe; 8]);
        let k = des_key(&[0; 7]);
        assert_eq!(*k, [0x01; 8]);
        // 0x80 00.. -> the top bit lands in the first byte's top bit.
        let k = des_key(&[0x80, 0, 0, 0, 0, 0, 0]);
        assert_eq!(k[0], 0x80);
        for b in k.iter() {
            assert_eq!(b.count_ones() % 2, 1);
        }
    }

    #[test]
    fn wrapped_sizes_match_the_jdk() {
        // wrap("hello") is 22 bytes with 3des, 21 with rc4 (observed from the JDK).
        for (cipher, len) in [(SaslCipher::TripleDes, 22), (SaslCipher::Rc4, 21)] {
            let (mut c, _) = pair(cipher);
            let mut buf = b"hello".to_vec();
            c.sealer.seal(&mut buf, 0);
            assert_eq!(buf.len(), len, "{cipher:?}");
            assert_eq!(c.sealer.wrapped_len(5), len);
            assert_eq!(&buf[len - 6..], &[0, 1, 0, 0, 0, 0]);
        }
    }

    #[test]
    fn every_cipher_round_trips_both_ways_with_running_state() {
        for cipher in SaslCipher::ALL {
            let (mut c, mut s) = pair(cipher);
            for n in [1usize, 7, 8, 9, 100, 65536] {
                let msg: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
                let one_way = |a: &mut SecurityLayer, b: &mut SecurityLayer| {
                    let mut buf = vec![9u8; 3];
                    buf.extend_from_slice(&msg);
                    a.sealer.seal(&mut buf, 3);
                    assert_eq!(buf.len() - 3, a.sealer.wrapped_len(n));
                    let wrapped = &mut buf[3..];
                    let got = b.opener.open(wrapped).unwrap();
                    assert_eq!(&wrapped[..got], &msg[..], "{cipher:?} {n}");
                };
                one_way(&mut c, &mut s);
                one_way(&mut s, &mut c);
            }
        }
    }

    #[test]
    fn tampering_replay_and_the_wrong_direction_are_refused() {
        let (mut c, mut s) = pair(SaslCipher::TripleDes);
        let mut first = b"first message".to_vec();
        c.sealer.seal(&mut first, 0);
        let replay = first.clone();
        s.opener.open(&mut first).unwrap();
        // A replayed message: CBC chaining garbles it, so it fails before the sequence check.
        assert!(s.opener.open(&mut replay.clone()).is_err());
        // A flipped bit.
        let (mut c, mut s) = pair(SaslCipher::Rc4);
        let mut m = b"some data".to_vec();
        c.sealer.seal(&mut m, 0);
        m[2] ^= 1;
        assert_eq!(s.opener.open(&mut m), Err(LayerError::Mac));
        // A sequence number that is not the next one (RC4: the MAC covers the number sent).
        let (mut c, mut s) = pair(SaslCipher::Rc4);
        let mut m = b"x".to_vec();
        c.sealer.seal(&mut m, 0);
        let mut m2 = b"y".to_vec();
        c.sealer.seal(&mut m2, 0);
        let mut fresh = pair(SaslCipher::Rc4).1;
        assert!(fresh.opener.open(&mut m2).is_err());
        s.opener.open(&mut m).unwrap();
        // The client's own output does not open with the client's opener (other keys).
        let (mut c, _) = pair(SaslCipher::Des);
        let mut m = b"mine".to_vec();
        c.sealer.seal(&mut m, 0);
        assert!(c.opener.open(&mut m).is_err());
        // Impossible lengths.
        let (_, mut s) = pair(SaslCipher::TripleDes);
        assert_eq!(s.opener.open(&mut [0u8; 5]), Err(LayerError::Length(5)));
        assert_eq!(s.opener.open(&mut [0u8; 23]), Err(LayerError::Length(23)));
    }
}
