//! Fuzz the frame decoder: arbitrary bytes, fed in pieces whose sizes come from the input, must
//! never panic or grow the buffer past the cap, and every decoded message must re-encode to a
//! frame that decodes to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rpcenv_transport::{Decoded, FrameDecoder, Message};

const CAP: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&split_seed, input)) = data.split_first() else { return };
    let step = usize::from(split_seed % 64) + 1;
    let mut dec = FrameDecoder::new(CAP);
    let mut buf = BytesMut::new();
    for piece in input.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(Decoded::Message(m))) => check_reencode(&m),
                Ok(Some(Decoded::Body { data, .. })) => assert!(!data.is_empty()),
                Ok(None) => break,
                Err(_) => return, // a typed error: the connection would be closed
            }
        }
        // Frames never ask for more than the cap; raw stream bodies (not capped: they are passed
        // through in pieces) ask for at most 4 MiB at a time.
        assert!(dec.reserve_hint(&buf) <= (CAP + 8).max(4 << 20));
    }
});

fn check_reencode(m: &Message) {
    if m.raw_body_len().is_some() {
        return; // the raw body is not part of the frame
    }
    let wire = m.to_bytes();
    let mut again = BytesMut::from(&wire[..]);
    let mut dec = FrameDecoder::new(usize::MAX >> 1);
    match dec.decode(&mut again) {
        Ok(Some(Decoded::Message(m2))) => assert_eq!(&m2, m),
        other => panic!("re-encoded {m:?} decoded as {other:?}"),
    }
}
