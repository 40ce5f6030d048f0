//! Bodies of stream and chunk replies, written in bounded pieces.
//!
//! A handler answers a `StreamRequest` or `ChunkFetchRequest` with a [`ReplyBody`]: bytes already
//! in memory (written by handle, without a copy), or a [`BodySource`] the connection pulls one
//! piece at a time as the socket takes them, so that a large body (a file region, generated data)
//! is never whole in memory.

use std::fmt;
use std::fs::File;
use std::io;

use bytes::Bytes;

/// Largest piece the connection asks a [`BodySource`] for at once.
pub const BODY_PIECE: usize = 256 * 1024;

/// Produces a body of a known length in pieces.
pub trait BodySource: Send + 'static {
    /// Total length of the body in bytes (announced in the frame header before any piece).
    fn len(&self) -> u64;

    /// True for an empty body.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next piece: between 1 and `max` bytes while bytes remain. Called on the connection's
    /// IO task, so it must not block for long (a file read of one piece is fine). An error, or a
    /// body shorter than announced, closes the connection (the peer cannot resynchronise).
    fn next_piece(&mut self, max: usize) -> io::Result<Bytes>;
}

impl BodySource for Bytes {
    fn len(&self) -> u64 {
        Bytes::len(self) as u64
    }

    fn next_piece(&mut self, max: usize) -> io::Result<Bytes> {
        Ok(self.split_to(max.min(Bytes::len(self))))
    }
}

/// A region of a file, read a piece at a time (positioned reads: the file's cursor is unused).
#[derive(Debug)]
pub struct FileRegion {
    file: File,
    offset: u64,
    remaining: u64,
}

impl FileRegion {
    /// `len` bytes of `file` from `offset`.
    pub fn new(file: File, offset: u64, len: u64) -> Self {
        FileRegion {
            file,
            offset,
            remaining: len,
        }
    }
}

impl BodySource for FileRegion {
    fn len(&self) -> u64 {
        self.remaining
    }

    fn next_piece(&mut self, max: usize) -> io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let n = (self.remaining.min(max as u64)) as usize;
        let mut buf = vec![0u8; n];
        self.file.read_exact_at(&mut buf, self.offset)?;
        self.offset += n as u64;
        self.remaining -= n as u64;
        Ok(Bytes::from(buf))
    }
}

/// The body of a stream or chunk reply.
pub enum ReplyBody {
    /// Bytes in memory, written by handle.
    Bytes(Bytes),
    /// Pulled in pieces of at most [`BODY_PIECE`] bytes as the socket takes them.
    Source(Box<dyn BodySource>),
}

impl ReplyBody {
    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            ReplyBody::Bytes(b) => b.len() as u64,
            ReplyBody::Source(s) => s.len(),
        }
    }

    /// True for an empty body.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A body pulled from `source`.
    pub fn source(source: impl BodySource) -> Self {
        ReplyBody::Source(Box::new(source))
    }
}

impl From<Bytes> for ReplyBody {
    fn from(b: Bytes) -> Self {
        ReplyBody::Bytes(b)
    }
}

impl fmt::Debug for ReplyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyBody::Bytes(b) => f.debug_tuple("Bytes").field(&b.len()).finish(),
            ReplyBody::Source(s) => f.debug_tuple("Source").field(&s.len()).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mut s: impl BodySource, max: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while !s.is_empty() {
            let piece = s.next_piece(max).unwrap();
            assert!(!piece.is_empty() && piece.len() <= max);
            out.extend_from_slice(&piece);
        }
        out
    }

    #[test]
    fn bytes_come_out_in_bounded_pieces() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        assert_eq!(drain(Bytes::from(data.clone()), 333), data);
    }

    #[test]
    fn a_file_region_is_read_from_its_offset() {
        let path = std::env::temp_dir().join(format!("body-{}", std::process::id()));
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let region = FileRegion::new(File::open(&path).unwrap(), 100, 4000);
        assert_eq!(drain(region, 1024), &data[100..4100]);
        let short = FileRegion::new(File::open(&path).unwrap(), 4000, 2000);
        let mut short = short;
        assert!(
            short.next_piece(5000).is_err(),
            "reading past the end fails"
        );
        std::fs::remove_file(path).unwrap();
    }
}
