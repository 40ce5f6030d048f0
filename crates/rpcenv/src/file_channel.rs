//! Fetching served files (Spark: `NettyRpcEnv.openChannel` and its `files` client factory): a
//! client pool of its own, a reader over a stream's body, and the atomic download to a file.
//!
//! The pool is separate from the RPC pool (a large download never queues behind asks, nor asks
//! behind it), closes idle connections, and runs the env's authentication and TLS bootstraps.
//! A stream's pieces count in its connection's byte budget until the reader takes them, so a
//! slow reader makes the connection stop reading from the socket: memory stays bounded by the
//! budget (`files.io.maxQueuedBytesPerConnection`, else `rpc.io.…`) whatever the file's size.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use rpcenv_transport::{ByteStream, TransportClient, TransportClientFactory};
use tokio::io::{AsyncRead, ReadBuf};

use crate::error::RpcError;
use crate::file_uri;
use crate::stream_client::{stream_request_failed, BlockingStreamReader, StreamReader};
use crate::timeout::block_on_until;

/// The env's `files` client pool.
pub(crate) struct FilesPool {
    factory: TransportClientFactory,
    runtime: tokio::runtime::Handle,
}

impl FilesPool {
    /// A pool whose connections come from `factory` (built with the `files` settings), run on
    /// `runtime`.
    pub(crate) fn new(factory: TransportClientFactory, runtime: tokio::runtime::Handle) -> Self {
        FilesPool { factory, runtime }
    }

    /// Opens the file at `uri`: resolves when the server has answered with the stream's length
    /// (or failed it). Runs on the env's runtime, so it can be awaited from any executor.
    pub(crate) async fn open(&self, uri: &str) -> Result<FileChannel, RpcError> {
        let target = file_uri::parse(uri).map_err(|reason| RpcError::InvalidFileUri {
            uri: uri.to_string(),
            reason,
        })?;
        let factory = self.factory.clone();
        let uri = uri.to_string();
        let task = self.runtime.spawn(async move {
            let peer = format!("{}:{}", target.host, target.port);
            let connection = |source| RpcError::Connection {
                peer: peer.clone(),
                source,
            };
            let client = factory
                .create_client(&target.host, target.port)
                .await
                .map_err(connection)?;
            match client.stream(target.path.clone()).await {
                Ok(stream) => Ok(FileChannel::new(stream, &client, uri)),
                Err(e) => Err(stream_request_failed(e, connection)),
            }
        });
        // The task ends without an answer only when the runtime shuts down.
        task.await.map_err(|_| RpcError::EnvStopped)?
    }

    /// Closes every connection; later opens fail.
    pub(crate) fn close(&self) {
        self.factory.close();
    }
}

/// The body of a served file, read as it arrives: `tokio::io::AsyncRead` (a [`StreamReader`]
/// with the file's URI).
///
/// Backpressure: what the reader has not taken yet counts in its connection's byte budget, so a
/// slow reader slows the sender. A failure (the connection broke, the body ended short) is an
/// `io::Error` whose inner error is the [`RpcError`]; the end of the file is EOF. Dropping the
/// channel before the end closes its connection, so that the server stops sending the rest (as
/// Spark's client does); other downloads on that connection fail, later ones open a new one.
pub struct FileChannel {
    reader: StreamReader,
    uri: String,
}

impl std::fmt::Debug for FileChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileChannel")
            .field("uri", &self.uri)
            .field("reader", &self.reader)
            .finish()
    }
}

impl FileChannel {
    fn new(stream: ByteStream, client: &TransportClient, uri: String) -> Self {
        FileChannel {
            reader: StreamReader::new(stream, client).closing_early(client),
            uri,
        }
    }

    /// The file's length in bytes, as the server announced it.
    pub fn len(&self) -> u64 {
        self.reader.len()
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The URI opened.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The blocking form of this reader (`std::io::Read`), for a plain thread.
    pub fn into_blocking(self) -> BlockingFileChannel {
        BlockingFileChannel {
            uri: self.uri,
            reader: BlockingStreamReader::new(self.reader),
        }
    }
}

impl AsyncRead for FileChannel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().reader).poll_read(cx, buf)
    }
}

/// The blocking reader of a served file (`std::io::Read`): a [`FileChannel`] waited on from a
/// plain thread. Not for a tokio runtime thread (a read there fails instead of blocking it).
#[derive(Debug)]
pub struct BlockingFileChannel {
    reader: BlockingStreamReader,
    uri: String,
}

impl BlockingFileChannel {
    /// The file's length in bytes, as the server announced it.
    pub fn len(&self) -> u64 {
        self.reader.len()
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.reader.is_empty()
    }

    /// The URI opened.
    pub fn uri(&self) -> &str {
        &self.uri
    }
}

impl io::Read for BlockingFileChannel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

/// Tells apart the temporary files of concurrent downloads in one process.
static DOWNLOADS: AtomicU64 = AtomicU64::new(0);

/// Where a download to `dest` is written before it is renamed: a hidden file beside it.
fn temp_path(dest: &Path) -> Result<PathBuf, RpcError> {
    let name = dest.file_name().ok_or_else(|| RpcError::FileIo {
        path: dest.display().to_string(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "not a file path"),
    })?;
    let n = DOWNLOADS.fetch_add(1, Ordering::Relaxed);
    let temp = format!(
        ".{}.{}-{n}.part",
        name.to_string_lossy(),
        std::process::id()
    );
    Ok(dest.with_file_name(temp))
}

/// Writes the whole body of `channel` to `dest` atomically: into a temporary file in `dest`'s
/// directory, renamed over `dest` once complete (readers of `dest` never see a partial file; on
/// failure `dest` is untouched and the temporary file removed). Blocks: run it on a plain
/// thread or a blocking-pool thread. Returns the bytes written.
pub(crate) fn download(mut channel: FileChannel, dest: &Path) -> Result<u64, RpcError> {
    use std::io::Write;
    let temp = temp_path(dest)?;
    let io_error = |path: &Path| {
        let path = path.display().to_string();
        move |source| RpcError::FileIo { path, source }
    };
    let write = |channel: &mut FileChannel| -> Result<u64, RpcError> {
        let mut file = std::fs::File::create(&temp).map_err(io_error(&temp))?;
        let mut written = 0u64;
        while let Some(piece) = block_on_until(channel.reader.next_piece(), None)
            .expect("a wait without deadline completes")?
        {
            file.write_all(&piece).map_err(io_error(&temp))?;
            written += piece.len() as u64;
        }
        file.flush().map_err(io_error(&temp))?;
        Ok(written)
    };
    match write(&mut channel) {
        Ok(written) => match std::fs::rename(&temp, dest) {
            Ok(()) => Ok(written),
            Err(source) => {
                let _ = std::fs::remove_file(&temp);
                Err(io_error(dest)(source))
            }
        },
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            tracing::warn!(uri = %channel.uri, dest = %dest.display(), error = %e, "download failed");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_move_between_threads_and_tasks() {
        fn movable<T: Send + Unpin + 'static>() {}
        movable::<FileChannel>();
        movable::<BlockingFileChannel>();
    }

    #[test]
    fn downloads_go_to_a_hidden_file_beside_the_destination() {
        let t = temp_path(Path::new("/data/out/job.bin")).unwrap();
        assert_eq!(t.parent(), Some(Path::new("/data/out")));
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".job.bin.") && name.ends_with(".part"),
            "{name}"
        );
        assert_ne!(temp_path(Path::new("/data/out/job.bin")).unwrap(), t);
        assert!(temp_path(Path::new("/")).is_err());
    }
}
