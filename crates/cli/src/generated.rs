//! Files of pseudo-random bytes that a file server publishes (the demo's job file, the
//! `file_fetch` bench's file), and the SHA-256 a fetcher checks them with.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Bytes generated and hashed per write: the whole file is never held in memory.
const PIECE: usize = 1 << 20;

/// A generated file in the temporary directory; removed when dropped.
#[derive(Debug)]
pub struct GeneratedFile {
    path: PathBuf,
    len: u64,
    sha256: String,
}

impl GeneratedFile {
    /// Writes `len` pseudo-random bytes (real bytes, not a sparse file: a hole would hash and
    /// travel as zeros) to a new file named after `label` in the temporary directory.
    pub fn create(label: &str, len: u64) -> anyhow::Result<GeneratedFile> {
        let path = std::env::temp_dir().join(format!(
            "rpcenv-{label}-{}-{:016x}.bin",
            std::process::id(),
            rand::random::<u64>()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        // From here on the file is removed whatever happens.
        let mut generated = GeneratedFile {
            path,
            len,
            sha256: String::new(),
        };
        let mut out = std::io::BufWriter::with_capacity(PIECE, file);
        let mut hasher = Sha256::new();
        let mut piece = vec![0u8; PIECE];
        let mut rng = rand::rng();
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left).map_or(PIECE, |l| l.min(PIECE));
            rng.fill_bytes(&mut piece[..n]);
            hasher.update(&piece[..n]);
            out.write_all(&piece[..n])
                .with_context(|| format!("cannot write {}", generated.path.display()))?;
            left -= n as u64;
        }
        out.flush()
            .with_context(|| format!("cannot write {}", generated.path.display()))?;
        generated.sha256 = hex(&hasher.finalize());
        Ok(generated)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Its SHA-256, in lower-case hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

impl Drop for GeneratedFile {
    fn drop(&mut self) {
        crate::roles::remove_if_present(&self.path);
    }
}

/// Reads `reader` to its end: (bytes read, SHA-256 in lower-case hex).
pub fn sha256_of(mut reader: impl Read) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_is_the_standard_one() {
        let (n, h) = sha256_of(&b"abc"[..]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_generated_file_has_its_length_and_hash_and_goes_when_dropped() {
        let f = GeneratedFile::create("unit", PIECE as u64 + 17).unwrap();
        let bytes = std::fs::read(f.path()).unwrap();
        assert_eq!(bytes.len() as u64, f.len());
        assert_eq!(sha256_of(&bytes[..]).unwrap().1, f.sha256());
        // Not a run of zeros (a sparse or unwritten file would be).
        assert!(bytes.iter().any(|&b| b != 0));
        let path = f.path().to_path_buf();
        drop(f);
        assert!(!path.exists());
    }
}
