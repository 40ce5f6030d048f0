//! [`StreamService`]: the env's answers to chunk fetches, stream requests for registered
//! streams, and uploads (Spark: the stream half of `TransportRequestHandler` and
//! `ChunkFetchRequestHandler`), applying the [`StreamManager`]'s decisions to connections.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use rpcenv_transport::{ReplyBody, RpcResponder, TransportClient};

use crate::error::RpcError;
use crate::stream_manager::{parse_stream_chunk_id, StreamManager};
use crate::upload::{decode_upload_meta, Upload, UploadReceiver, UploadReply};

/// The stream and upload side of an env's transport handler.
pub(crate) struct StreamService {
    manager: Arc<StreamManager>,
    receivers: RwLock<HashMap<String, Arc<dyn UploadReceiver>>>,
    /// The app id every authenticated connection of this env carries (`None` without
    /// authentication).
    app_id: Option<String>,
}

impl StreamService {
    /// The service of an env whose connections authenticate as `app_id` (when they do), with
    /// the chunk cap `max_chunks_being_transferred`.
    pub(crate) fn new(app_id: Option<String>, max_chunks_being_transferred: u64) -> Self {
        StreamService {
            manager: Arc::new(StreamManager::new(max_chunks_being_transferred)),
            receivers: RwLock::new(HashMap::new()),
            app_id,
        }
    }

    pub(crate) fn manager(&self) -> &Arc<StreamManager> {
        &self.manager
    }

    /// A connection is up, authenticated if the env authenticates: it records the app id its
    /// peer proved. The env's authentication (AES or SASL) accepts only peers that prove the
    /// env's own app id and secret, so that is the id an authenticated peer is known by.
    pub(crate) fn connection_active(&self, client: &TransportClient) {
        if let Some(app) = &self.app_id {
            if !client.set_client_id(app.as_str()) {
                tracing::warn!(peer = %client.remote_addr(), already = ?client.client_id(), "connection already has a client id");
            }
        }
    }

    /// A connection closed: the streams registered for it are released.
    pub(crate) fn connection_closed(&self, client: &TransportClient) {
        self.manager.connection_closed(client.id());
    }

    /// Spark's cap on chunk bodies being written: at it, the requesting connection is closed
    /// instead of served (the requester sees its connection close). Returns the text for the
    /// failure answer the handler must still give (it may not leave before the close).
    fn over_cap(&self, client: &TransportClient) -> Option<String> {
        let (now, max) = self.manager.at_cap()?;
        let text = format!(
            "The number of chunks being transferred {now} is above {max}, close the connection."
        );
        tracing::warn!(peer = %client.remote_addr(), "{text} (rpc.io.maxChunksBeingTransferred)");
        client.close();
        Some(text)
    }

    /// A `ChunkFetchRequest`: the chunk's body, or the failure text. An unknown stream is
    /// refused with a failure naming it; Spark without authentication closes the connection
    /// instead (its `StreamAlreadyClosedException`), which tells the requester nothing.
    pub(crate) fn chunk(
        &self,
        client: &TransportClient,
        stream_id: i64,
        chunk_index: i32,
    ) -> Result<ReplyBody, String> {
        if let Some(text) = self.over_cap(client) {
            return Err(text);
        }
        self.manager
            .next_chunk(client.client_id(), stream_id, chunk_index)
            .map_err(|refusal| {
                tracing::warn!(peer = %client.remote_addr(), stream_id, chunk_index, %refusal, "chunk fetch refused");
                refusal.to_string()
            })
    }

    /// A `StreamRequest` for `"<streamId>_<chunkIndex>"`: that chunk's body, or the failure
    /// text. Any other id is not found (with Spark's text, which its clients match).
    pub(crate) fn stream(
        &self,
        client: &TransportClient,
        stream_id: &str,
    ) -> Result<ReplyBody, String> {
        let Some((id, index)) = parse_stream_chunk_id(stream_id) else {
            tracing::debug!(peer = %client.remote_addr(), stream_id, "stream request for an id that names no chunk");
            return Err(format!("Stream '{stream_id}' was not found."));
        };
        self.chunk(client, id, index)
    }

    /// Registers `receiver` for uploads addressed to `name`.
    pub(crate) fn add_receiver(
        &self,
        name: &str,
        receiver: Arc<dyn UploadReceiver>,
    ) -> Result<(), RpcError> {
        let mut receivers = self.receivers.write().unwrap_or_else(|p| p.into_inner());
        if receivers.contains_key(name) {
            return Err(RpcError::UploadReceiverExists {
                name: name.to_string(),
            });
        }
        receivers.insert(name.to_string(), receiver);
        Ok(())
    }

    /// Forgets the receiver of `name`; returns whether there was one.
    pub(crate) fn remove_receiver(&self, name: &str) -> bool {
        self.receivers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .is_some()
    }

    /// An `UploadStream` with its whole body: handed to the receiver its metadata names.
    pub(crate) fn upload(
        &self,
        client: &TransportClient,
        meta: Bytes,
        body: Bytes,
        responder: RpcResponder,
    ) {
        let (receiver, meta) = match decode_upload_meta(&meta) {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(peer = %client.remote_addr(), error = %e, "upload refused");
                responder.fail(e);
                return;
            }
        };
        let found = self
            .receivers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&receiver)
            .cloned();
        let Some(found) = found else {
            tracing::warn!(peer = %client.remote_addr(), receiver, "upload to an unknown receiver refused");
            responder.fail(format!("No upload receiver called '{receiver}'"));
            return;
        };
        let upload = Upload {
            receiver,
            meta,
            body,
            peer: client.remote_addr(),
            app_id: client.client_id().map(str::to_string),
        };
        found.receive(upload, UploadReply::new(responder));
    }
}
