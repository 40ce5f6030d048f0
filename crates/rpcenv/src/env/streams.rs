//! Streams, chunks and uploads between envs: the serving side ([`RpcEnv::stream_manager`],
//! [`RpcEnv::register_upload_receiver`]) and the requesting side ([`RpcEnv::fetch_chunk`],
//! [`RpcEnv::open_stream`], [`RpcEnv::upload_stream`], each with an `_async` form).
//!
//! The usual exchange (Spark's block fetch): an endpoint answers an ask by registering a stream
//! for the asker's connection (`ctx.stream_owner()`) and replying with its id and chunk count;
//! the asker then fetches the chunks in order from the same env, over the same pooled
//! connection. Closing that connection releases the stream.

use bytes::Bytes;

use super::api::RpcEnv;
use crate::address::RpcAddress;
use crate::error::RpcError;
use crate::stream_client::{stream_request_failed, BlockingStreamReader, StreamReader};
use crate::stream_manager::{stream_chunk_id, StreamManager};
use crate::timeout::{block_on_until, ensure_blocking_allowed};
use crate::upload::{encode_upload_meta, UploadReceiver};

fn transfer(
    what: String,
    address: &RpcAddress,
) -> impl FnOnce(rpcenv_transport::TransportError) -> RpcError + '_ {
    move |source| RpcError::Transfer {
        what,
        peer: address.to_string(),
        source: Box::new(source),
    }
}

fn blocking<F: std::future::Future>(operation: &'static str, f: F) -> Result<F::Output, RpcError> {
    ensure_blocking_allowed(operation)?;
    Ok(block_on_until(f, None).expect("a wait without deadline completes"))
}

impl RpcEnv {
    /// The streams this env serves for its endpoints (see [`StreamManager`]).
    ///
    /// ```
    /// # use rpcenv::{EndpointCtx, HandlerResult, ReplyBody, RpcCallContext, RpcEndpoint};
    /// # use bytes::Bytes;
    /// struct Blocks;
    /// impl RpcEndpoint for Blocks {
    ///     type Message = u32; // how many chunks
    ///     fn receive_and_reply(&mut self, ctx: &EndpointCtx<u32>, n: u32, reply: RpcCallContext) -> HandlerResult {
    ///         let (Some(env), Some(owner)) = (ctx.env(), reply.stream_owner()) else {
    ///             reply.send_failure("streams are for remote askers");
    ///             return Ok(());
    ///         };
    ///         // Chunks are produced lazily, when requested.
    ///         let chunks = (0..n).map(|i| ReplyBody::Bytes(Bytes::from(vec![i as u8; 1024])));
    ///         reply.reply(env.stream_manager().register_stream(&owner, chunks));
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn stream_manager(&self) -> &StreamManager {
        self.inner().network.streams().manager()
    }

    /// Registers `receiver` for the uploads other envs send to `name` with
    /// [`upload_stream`](Self::upload_stream). Fails with
    /// [`RpcError::UploadReceiverExists`] when the name is taken.
    pub fn register_upload_receiver(
        &self,
        name: &str,
        receiver: impl UploadReceiver,
    ) -> Result<(), RpcError> {
        self.inner()
            .network
            .streams()
            .add_receiver(name, std::sync::Arc::new(receiver))
    }

    /// Forgets the upload receiver of `name`; returns whether there was one.
    pub fn remove_upload_receiver(&self, name: &str) -> bool {
        self.inner().network.streams().remove_receiver(name)
    }

    /// Fetches chunk `chunk_index` of stream `stream_id` registered in the env at `address`
    /// (a `ChunkFetchRequest`; the chunk arrives whole, within `rpc.message.maxSize`). Chunks
    /// must be fetched in order. A refusal fails with [`RpcError::Transfer`] carrying the
    /// server's text (`Received out-of-order chunk index 2 (expected 1)`, `Unknown stream
    /// ID.`, `Client <app> not authorized to read stream <id> (app <app>).`).
    pub async fn fetch_chunk_async(
        &self,
        address: &RpcAddress,
        stream_id: i64,
        chunk_index: i32,
    ) -> Result<Bytes, RpcError> {
        let client = self.inner().network.client_to(address).await?;
        client
            .fetch_chunk(stream_id, chunk_index)
            .await
            .map_err(transfer(
                format!("chunk {chunk_index} of stream {stream_id}"),
                address,
            ))
    }

    /// The blocking form of [`fetch_chunk_async`](Self::fetch_chunk_async).
    pub fn fetch_chunk(
        &self,
        address: &RpcAddress,
        stream_id: i64,
        chunk_index: i32,
    ) -> Result<Bytes, RpcError> {
        blocking(
            "RpcEnv::fetch_chunk",
            self.fetch_chunk_async(address, stream_id, chunk_index),
        )?
    }

    /// Opens the stream `stream_id` of the env at `address` (a `StreamRequest`): a chunk of a
    /// registered stream is named `"<streamId>_<chunkIndex>"` ([`stream_chunk_id`]). Resolves
    /// when the server's answer arrives, to a reader of the body as it arrives, with bounded
    /// memory (see [`StreamReader`]). A refusal fails with [`RpcError::StreamFailed`] carrying
    /// the server's text (`Stream '<id>' was not found.` for an id it does not know).
    pub async fn open_stream_async(
        &self,
        address: &RpcAddress,
        stream_id: &str,
    ) -> Result<StreamReader, RpcError> {
        let client = self.inner().network.client_to(address).await?;
        let stream = client.stream(stream_id).await.map_err(|e| {
            stream_request_failed(e, transfer(format!("stream '{stream_id}'"), address))
        })?;
        Ok(StreamReader::new(stream, &client))
    }

    /// The blocking form of [`open_stream_async`](Self::open_stream_async): a `std::io::Read`.
    pub fn open_stream(
        &self,
        address: &RpcAddress,
        stream_id: &str,
    ) -> Result<BlockingStreamReader, RpcError> {
        blocking(
            "RpcEnv::open_stream",
            self.open_stream_async(address, stream_id),
        )?
        .map(BlockingStreamReader::new)
    }

    /// Opens chunk `chunk_index` of the registered stream `stream_id` as a stream (the
    /// `StreamRequest` form of a chunk fetch: the body arrives in pieces instead of whole).
    pub async fn open_chunk_stream_async(
        &self,
        address: &RpcAddress,
        stream_id: i64,
        chunk_index: i32,
    ) -> Result<StreamReader, RpcError> {
        self.open_stream_async(address, &stream_chunk_id(stream_id, chunk_index))
            .await
    }

    /// The blocking form of [`open_chunk_stream_async`](Self::open_chunk_stream_async).
    pub fn open_chunk_stream(
        &self,
        address: &RpcAddress,
        stream_id: i64,
        chunk_index: i32,
    ) -> Result<BlockingStreamReader, RpcError> {
        self.open_stream(address, &stream_chunk_id(stream_id, chunk_index))
    }

    /// Uploads `body` with `meta` to the receiver registered as `receiver` in the env at
    /// `address` (an `UploadStream`); returns the receiver's reply.
    ///
    /// The receiving connection reassembles the whole body before handing it over, so an
    /// upload is bounded by `rpc.message.maxSize` (name, metadata and body together): a larger
    /// one fails here with [`RpcError::MessageTooLarge`] before anything is sent, and a server
    /// with a smaller limit refuses it by closing the connection rather than allocating it.
    /// A refusal by the receiver fails with [`RpcError::Transfer`] carrying its text.
    pub async fn upload_stream_async(
        &self,
        address: &RpcAddress,
        receiver: &str,
        meta: Bytes,
        body: Bytes,
    ) -> Result<Bytes, RpcError> {
        let what = || format!("upload to receiver '{receiver}'");
        let max = self.inner().network.max_message_size();
        let size = (2 + receiver.len() + meta.len()).saturating_add(body.len());
        if size > max {
            return Err(RpcError::MessageTooLarge { size, max });
        }
        let meta = encode_upload_meta(receiver, &meta).ok_or_else(|| RpcError::BadRequest {
            peer: address.to_string(),
            message: format!(
                "the receiver name of {} bytes is longer than {} bytes",
                receiver.len(),
                crate::upload::MAX_RECEIVER_NAME
            ),
        })?;
        let client = self.inner().network.client_to(address).await?;
        client
            .upload_stream(meta, body)
            .await
            .map_err(transfer(what(), address))
    }

    /// The blocking form of [`upload_stream_async`](Self::upload_stream_async).
    pub fn upload_stream(
        &self,
        address: &RpcAddress,
        receiver: &str,
        meta: Bytes,
        body: Bytes,
    ) -> Result<Bytes, RpcError> {
        blocking(
            "RpcEnv::upload_stream",
            self.upload_stream_async(address, receiver, meta, body),
        )?
    }
}
