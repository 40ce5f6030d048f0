//! The file methods of [`RpcEnv`]: its file server, and fetching files served by any env (or by
//! Spark's `NettyRpcEnv`) over the env's `files` client pool.

use std::path::Path;

use super::api::RpcEnv;
use crate::error::RpcError;
use crate::file_channel::{download, BlockingFileChannel, FileChannel};
use crate::file_server::FileServer;
use crate::timeout::{block_on_until, ensure_blocking_allowed};

impl RpcEnv {
    /// The file server of this env, which serves files, jars and directories to other envs
    /// (Spark: `RpcEnv.fileServer`). [`RpcError::ClientMode`] in client mode.
    pub fn file_server(&self) -> Result<FileServer, RpcError> {
        let address = self.address().ok_or(RpcError::ClientMode {
            operation: "RpcEnv::file_server",
        })?;
        Ok(FileServer::new(
            self.inner().files.clone(),
            address.to_url(),
        ))
    }

    /// Opens a served file (Spark: `RpcEnv.openChannel`): `uri` is `rpc://host:port/path` or
    /// `spark://host:port/path` (a user part, `name@`, is ignored), as a [`FileServer`] returns
    /// it; host, port and path are required. Resolves when the server has announced the file's
    /// length; the returned channel reads the body as it arrives. Uses the env's `files` client
    /// pool (settings `files.io.*`, else `rpc.io.*`), which works in client mode too.
    ///
    /// A file the server does not serve fails with [`RpcError::StreamFailed`] whose text is the
    /// server's (`Stream '/files/x' was not found.`).
    pub async fn open_channel_async(&self, uri: &str) -> Result<FileChannel, RpcError> {
        self.inner().files_pool.open(uri).await
    }

    /// The blocking form of [`open_channel_async`](Self::open_channel_async), with a
    /// `std::io::Read` channel. Not on a tokio runtime thread
    /// ([`RpcError::BlockingInAsyncContext`]).
    pub fn open_channel(&self, uri: &str) -> Result<BlockingFileChannel, RpcError> {
        ensure_blocking_allowed("RpcEnv::open_channel")?;
        block_on_until(self.open_channel_async(uri), None)
            .expect("a wait without deadline completes")
            .map(FileChannel::into_blocking)
    }

    /// Downloads the file at `uri` (see [`open_channel_async`](Self::open_channel_async)) to
    /// `dest` atomically: it is written to a temporary file in `dest`'s directory and renamed
    /// over `dest` when complete, so `dest` is either untouched or whole. Returns its length.
    pub async fn fetch_file_async(&self, uri: &str, dest: &Path) -> Result<u64, RpcError> {
        let channel = self.open_channel_async(uri).await?;
        let dest = dest.to_path_buf();
        self.runtime()
            .spawn_blocking(move || download(channel, &dest))
            .await
            .map_err(|_| RpcError::EnvStopped)?
    }

    /// The blocking form of [`fetch_file_async`](Self::fetch_file_async). Not on a tokio runtime
    /// thread ([`RpcError::BlockingInAsyncContext`]).
    pub fn fetch_file(&self, uri: &str, dest: &Path) -> Result<u64, RpcError> {
        ensure_blocking_allowed("RpcEnv::fetch_file")?;
        let channel = block_on_until(self.open_channel_async(uri), None)
            .expect("a wait without deadline completes")?;
        download(channel, dest)
    }
}
