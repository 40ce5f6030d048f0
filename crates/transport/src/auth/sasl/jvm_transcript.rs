//! Replays DIGEST-MD5 exchanges recorded from the JVM (Spark's `SparkSaslClient` /
//! `SparkSaslServer` and the JDK's mechanism with each cipher; see the data file's header): the
//! same nonces give byte-identical challenges, responses and rspauth values, and the negotiated
//! layers wrap to the JVM's exact bytes and unwrap what the JVM wrapped.

use super::digest::{Credentials, DigestClient, DigestServer, Qop};
use super::directives::Directives;
use super::layer::SecurityLayer;

const TRANSCRIPT: &str = include_str!("../../../tests/data/sasl-jvm-transcript.txt");

#[derive(Default)]
struct Case {
    name: String,
    app_id: String,
    secret: String,
    encrypt: bool,
    challenge: String,
    response: String,
    rspauth: String,
    /// (direction is client-to-server, plaintext, wrapped)
    wraps: Vec<(bool, Vec<u8>, Vec<u8>)>,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mut cur = Case::default();
    for line in TRANSCRIPT.lines().filter(|l| !l.starts_with('#')) {
        if line == "end" {
            out.push(std::mem::take(&mut cur));
            continue;
        }
        let (k, v) = line.split_once('=').expect("key=value");
        match k {
            "case" => cur.name = v.into(),
            "app_id" => cur.app_id = v.into(),
            "secret" => cur.secret = v.into(),
            "encrypt" => cur.encrypt = v == "true",
            "challenge" => cur.challenge = v.into(),
            "response" => cur.response = v.into(),
            "rspauth" => cur.rspauth = v.into(),
            "c2s" | "s2c" => {
                let (p, w) = v.split_once(':').expect("plain:wrapped");
                cur.wraps.push((k == "c2s", unhex(p), unhex(w)));
            }
            other => panic!("unknown transcript key {other}"),
        }
    }
    assert_eq!(out.len(), 7, "the transcript's cases");
    out
}

fn directive(token: &str, name: &str) -> String {
    Directives::parse(token.as_bytes())
        .unwrap()
        .required(name)
        .unwrap()
        .to_string()
}

#[test]
fn the_jvm_exchanges_replay_byte_for_byte() {
    for case in cases() {
        let creds = || Credentials::spark(&case.app_id, case.secret.as_bytes());
        let nonce = directive(&case.challenge, "nonce");
        let cnonce = directive(&case.response, "cnonce");
        let always = case.name == "spark-always-encrypt";
        let server = DigestServer::with_nonce(creds(), always, nonce);
        if !case.name.starts_with("jdk-") {
            assert_eq!(
                String::from_utf8(server.challenge()).unwrap(),
                case.challenge,
                "{}: our challenge",
                case.name
            );
        }
        // Our client computes the JVM client's response, byte for byte, when it picks the same
        // cipher (it picks 3des like the JDK; the jdk-* cases forced another).
        let mut client = DigestClient::with_cnonce(creds(), case.encrypt, cnonce);
        let ours = String::from_utf8(client.respond(case.challenge.as_bytes()).unwrap()).unwrap();
        if !case.name.starts_with("jdk-") {
            assert_eq!(ours, case.response, "{}: our response", case.name);
        }
        // Our server accepts the JVM client's response and answers the JVM server's rspauth.
        let (rspauth, s) = server.verify(case.response.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(rspauth).unwrap(),
            case.rspauth,
            "{}: rspauth",
            case.name
        );
        assert_eq!(s.qop == Qop::AuthConf, case.encrypt, "{}", case.name);
        let Some(mut server_layer) = s.layer else {
            assert!(case.wraps.is_empty());
            continue;
        };
        // The JVM client's side of the layer: the cipher it chose.
        let chosen = directive(&case.response, "cipher");
        let cipher = super::SaslCipher::parse(&chosen).unwrap();
        assert_eq!(server_layer.cipher, cipher);
        let mut client_layer: SecurityLayer = {
            // The client's layer, from our client answering with the JVM client's choice (it is
            // forced to that cipher by offering only it).
            let offer = case.challenge.replace(
                "cipher=\"3des,rc4,des,rc4-56,rc4-40\"",
                &format!("cipher=\"{chosen}\""),
            );
            let mut c =
                DigestClient::with_cnonce(creds(), true, directive(&case.response, "cnonce"));
            let r = String::from_utf8(c.respond(offer.as_bytes()).unwrap()).unwrap();
            assert_eq!(
                r, case.response,
                "{}: our response with {chosen}",
                case.name
            );
            c.finish(case.rspauth.as_bytes()).unwrap().layer.unwrap()
        };
        for (c2s, plain, wrapped) in &case.wraps {
            let (from, to) = if *c2s {
                (&mut client_layer, &mut server_layer)
            } else {
                (&mut server_layer, &mut client_layer)
            };
            let mut buf = plain.clone();
            from.sealer.seal(&mut buf, 0);
            assert_eq!(
                &buf,
                wrapped,
                "{}: our wrap of {} bytes",
                case.name,
                plain.len()
            );
            let mut theirs = wrapped.clone();
            let n = to.opener.open(&mut theirs).unwrap();
            assert_eq!(&theirs[..n], &plain[..], "{}: unwrap", case.name);
        }
    }
}
