//! [`StreamManager`]: the streams of chunks an env serves for its endpoints (Spark:
//! `OneForOneStreamManager`).
//!
//! An endpoint registers a stream (an iterator of chunk bodies) for the connection an ask came
//! over and hands the returned id to the asker, which then fetches the chunks in order, by
//! `ChunkFetchRequest(id, index)` or by `StreamRequest("<id>_<index>")`. This module is the
//! state machine only: which chunk comes next, who may read a stream, when it is released, and
//! how many chunk bodies are still being written. It knows no sockets and no clock; the network
//! layer (`stream_service`) applies its decisions to connections.

use std::collections::HashMap;
use std::fmt;
use std::iter::Peekable;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rpcenv_transport::{BodySource, ReplyBody, TransportClient};

/// Who may read a stream, and the connection whose close releases it (Spark: the `appId` and
/// `channel` of `OneForOneStreamManager.registerStream`).
///
/// Get it from the ask that asked for the stream ([`RpcCallContext::stream_owner`]): the
/// connection the ask came over and the app id that connection authenticated as.
///
/// [`RpcCallContext::stream_owner`]: crate::RpcCallContext::stream_owner
#[derive(Clone)]
pub struct StreamOwner {
    app_id: Option<Arc<str>>,
    connection: u64,
    /// The connection itself, when the owner was made from it: a stream registered after it
    /// closed (an ask answered late) could never be read nor released, so it is not kept.
    client: Option<TransportClient>,
}

impl fmt::Debug for StreamOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamOwner")
            .field("app_id", &self.app_id)
            .field("connection", &self.connection)
            .finish()
    }
}

/// Two owners are the same when they name the same connection and app.
impl PartialEq for StreamOwner {
    fn eq(&self, other: &Self) -> bool {
        self.app_id == other.app_id && self.connection == other.connection
    }
}

impl Eq for StreamOwner {}

impl StreamOwner {
    /// The owner for connection `connection` (a [`TransportClient::id`]), readable by peers
    /// authenticated as `app_id` (`None`: by any peer; only meaningful without authentication,
    /// as every authenticated peer has an app id).
    pub fn new(app_id: Option<&str>, connection: u64) -> Self {
        StreamOwner {
            app_id: app_id.map(Arc::from),
            connection,
            client: None,
        }
    }

    /// The owner of what is registered for requests over `client`: its connection, and the app
    /// id its peer authenticated as.
    pub(crate) fn of(client: &TransportClient) -> Self {
        StreamOwner {
            client: Some(client.clone()),
            ..StreamOwner::new(client.client_id(), client.id())
        }
    }

    /// Whether the owner's connection is known to have closed (never, for an owner made with
    /// [`new`](Self::new)).
    fn closed(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_active())
    }

    /// The same owner, readable only by peers authenticated as `app_id` (Spark's block server
    /// registers a stream for the app named in the request, after checking it).
    pub fn with_app_id(mut self, app_id: &str) -> Self {
        self.app_id = Some(Arc::from(app_id));
        self
    }

    /// The app id whose peers may read the stream.
    pub fn app_id(&self) -> Option<&str> {
        self.app_id.as_deref()
    }

    /// The id of the connection whose close releases the stream.
    pub fn connection(&self) -> u64 {
        self.connection
    }
}

/// Why a chunk request is refused. The texts are Spark's, since Spark clients match them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No such stream: never registered, fully read, or released with its connection.
    Unknown { stream_id: i64 },
    /// The reader authenticated as another app than the stream's owner.
    NotAuthorized {
        client: String,
        stream_id: i64,
        app: Option<String>,
    },
    /// Not the next chunk of the stream.
    OutOfOrder { index: i32, expected: i32 },
    /// The stream has no chunk at this index.
    BeyondEnd { index: i32 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unknown { stream_id } => {
                write!(
                    f,
                    "Unknown stream ID. (stream {stream_id}: never registered, fully read, or released with its connection)"
                )
            }
            Refusal::NotAuthorized {
                client,
                stream_id,
                app,
            } => write!(
                f,
                "Client {client} not authorized to read stream {stream_id} (app {}).",
                app.as_deref().unwrap_or("null")
            ),
            Refusal::OutOfOrder { index, expected } => write!(
                f,
                "Received out-of-order chunk index {index} (expected {expected})"
            ),
            Refusal::BeyondEnd { index } => {
                write!(f, "Requested chunk index beyond end {index}")
            }
        }
    }
}

/// The chunks of one stream, produced one at a time as they are requested.
type Chunks = Peekable<Box<dyn Iterator<Item = ReplyBody> + Send>>;

/// One registered stream: its owner (fixed) and its progress (behind the stream's own lock, held
/// while a chunk is produced, so that producing one stream's chunk never holds up the others).
struct Stream {
    owner: StreamOwner,
    progress: Mutex<Progress>,
}

struct Progress {
    chunks: Chunks,
    /// The index the next request must name.
    next_chunk: i32,
}

/// The streams of chunks an env serves (Spark: `OneForOneStreamManager`). Reach it with
/// [`RpcEnv::stream_manager`](crate::RpcEnv::stream_manager).
///
/// - [`register_stream`](Self::register_stream) takes an iterator of chunk bodies: each body is
///   produced when its chunk is requested (a lazy iterator keeps no chunk in memory before; a
///   [`ReplyBody::Source`] is written in bounded pieces), and the stream is bound to its
///   owner's connection and app id.
/// - Chunks are fetched one at a time and in order; the stream is forgotten after its last
///   chunk, or when its connection closes (chunks not yet produced are never produced).
/// - A peer authenticated as another app than the owner's is refused (Spark:
///   `checkAuthorization`).
/// - It counts the chunk bodies handed to connections and not yet written, for the
///   `rpc.io.maxChunksBeingTransferred` cap (at which the server closes the requesting
///   connection, as Spark does).
pub struct StreamManager {
    next_id: AtomicI64,
    streams: Mutex<HashMap<i64, Arc<Stream>>>,
    in_flight: Arc<AtomicU64>,
    max_in_flight: u64,
}

impl fmt::Debug for StreamManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamManager")
            .field("streams", &self.stream_count())
            .field("chunks_being_transferred", &self.chunks_being_transferred())
            .field("max_chunks_being_transferred", &self.max_in_flight)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The stream id Spark's `StreamRequest` names one chunk by: `"<streamId>_<chunkIndex>"`
/// (Spark: `OneForOneStreamManager.genStreamChunkId`).
pub fn stream_chunk_id(stream_id: i64, chunk_index: i32) -> String {
    format!("{stream_id}_{chunk_index}")
}

/// Parses `"<streamId>_<chunkIndex>"` (Spark: `OneForOneStreamManager.parseStreamChunkId`);
/// `None` for anything else.
pub(crate) fn parse_stream_chunk_id(id: &str) -> Option<(i64, i32)> {
    let (stream, chunk) = id.split_once('_')?;
    Some((stream.parse().ok()?, chunk.parse().ok()?))
}

impl StreamManager {
    /// A manager whose servers close a requesting connection when `max_chunks_being_transferred`
    /// chunk bodies are being written (`u64::MAX`: no cap). Ids start at a random multiple of
    /// 1000, as Spark's do, so that the ids of different envs are told apart in logs.
    pub(crate) fn new(max_chunks_being_transferred: u64) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let start = (h.finish() % i32::MAX as u64) as i64 * 1000;
        StreamManager {
            next_id: AtomicI64::new(start),
            streams: Mutex::new(HashMap::new()),
            in_flight: Arc::new(AtomicU64::new(0)),
            max_in_flight: max_chunks_being_transferred,
        }
    }

    /// Registers a stream whose chunks are `chunks`, in order, for `owner`; returns its id.
    ///
    /// The iterator is advanced when a chunk is requested, and once more to learn whether that
    /// chunk is the last (so the following chunk's body is created one request early: keep
    /// bodies lazy, a [`ReplyBody::Source`] such as a file region, when they are large). The
    /// iterator runs on the connection's IO thread: it must not block for long.
    ///
    /// When the owner's connection has already closed (the ask that asked for the stream was
    /// answered after its asker went), nothing is kept: the stream could never be read, and
    /// nothing would release it. The id returned is then not in use.
    pub fn register_stream<I>(&self, owner: &StreamOwner, chunks: I) -> i64
    where
        I: IntoIterator<Item = ReplyBody>,
        I::IntoIter: Send + 'static,
    {
        let chunks: Box<dyn Iterator<Item = ReplyBody> + Send> = Box::new(chunks.into_iter());
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stream = Stream {
            owner: owner.clone(),
            progress: Mutex::new(Progress {
                chunks: chunks.peekable(),
                next_chunk: 0,
            }),
        };
        if owner.closed() {
            tracing::debug!(
                stream_id = id,
                connection = owner.connection,
                "stream not registered: its connection has closed"
            );
            return id;
        }
        lock(&self.streams).insert(id, Arc::new(stream));
        // The connection marks itself closed before it releases its streams (under the map's
        // lock): closed now but not before, it may have released them before this insert.
        if owner.closed() {
            let late = lock(&self.streams).remove(&id);
            tracing::debug!(
                stream_id = id,
                connection = owner.connection,
                "stream released: its connection closed as it was registered"
            );
            drop(late);
            return id;
        }
        tracing::trace!(
            stream_id = id,
            connection = owner.connection,
            "stream registered"
        );
        id
    }

    /// Forgets a stream before it is fully read; returns whether it was registered.
    pub fn release_stream(&self, stream_id: i64) -> bool {
        lock(&self.streams).remove(&stream_id).is_some()
    }

    /// How many streams are registered.
    pub fn stream_count(&self) -> usize {
        lock(&self.streams).len()
    }

    /// How many chunk bodies have been handed to connections and are not yet written (a body
    /// counts until its last piece is taken for writing, or its connection drops it).
    pub fn chunks_being_transferred(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// `Some((being transferred, cap))` when the cap is reached: the next chunk request closes
    /// its connection instead of being served (Spark checks before serving, too).
    pub(crate) fn at_cap(&self) -> Option<(u64, u64)> {
        if self.max_in_flight == u64::MAX {
            return None;
        }
        let now = self.chunks_being_transferred();
        (now >= self.max_in_flight).then_some((now, self.max_in_flight))
    }

    /// The next chunk of `stream_id`, requested as `chunk_index` by a peer authenticated as
    /// `reader` (`None`: not authenticated). The body counts as being transferred until it is
    /// written or dropped. After the last chunk the stream is forgotten.
    pub(crate) fn next_chunk(
        &self,
        reader: Option<&str>,
        stream_id: i64,
        chunk_index: i32,
    ) -> Result<ReplyBody, Refusal> {
        let stream = lock(&self.streams)
            .get(&stream_id)
            .cloned()
            .ok_or(Refusal::Unknown { stream_id })?;
        if let Some(client) = reader {
            if stream.owner.app_id() != Some(client) {
                return Err(Refusal::NotAuthorized {
                    client: client.to_string(),
                    stream_id,
                    app: stream.owner.app_id().map(str::to_string),
                });
            }
        }
        let mut st = lock(&stream.progress);
        if chunk_index != st.next_chunk {
            return Err(Refusal::OutOfOrder {
                index: chunk_index,
                expected: st.next_chunk,
            });
        }
        let Some(body) = st.chunks.next() else {
            return Err(Refusal::BeyondEnd { index: chunk_index });
        };
        st.next_chunk += 1;
        if st.chunks.peek().is_none() {
            drop(st);
            let mut streams = lock(&self.streams);
            if streams
                .get(&stream_id)
                .is_some_and(|s| Arc::ptr_eq(s, &stream))
            {
                streams.remove(&stream_id);
                tracing::trace!(stream_id, "stream fully read");
            }
        }
        Ok(self.counted(body))
    }

    /// Releases the streams registered for connection `connection` (it closed); returns how
    /// many. Chunks not yet produced are dropped with their iterators, never produced.
    pub(crate) fn connection_closed(&self, connection: u64) -> usize {
        let released: Vec<Arc<Stream>> = {
            let mut streams = lock(&self.streams);
            let ids: Vec<i64> = streams
                .iter()
                .filter(|(_, s)| s.owner.connection == connection)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| streams.remove(id)).collect()
        };
        if !released.is_empty() {
            tracing::debug!(
                connection,
                streams = released.len(),
                "streams released with their connection"
            );
        }
        // Dropped outside the map's lock: an iterator's drop may do work of its own.
        released.len()
    }

    fn counted(&self, body: ReplyBody) -> ReplyBody {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(self.in_flight.clone());
        let body: Box<dyn BodySource> = match body {
            ReplyBody::Bytes(b) => Box::new(b),
            ReplyBody::Source(s) => s,
        };
        ReplyBody::Source(Box::new(Counted {
            body,
            _guard: guard,
        }))
    }
}

/// One chunk body being transferred: counted until dropped.
struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A chunk body that counts as being transferred while the connection holds it.
struct Counted {
    body: Box<dyn BodySource>,
    _guard: InFlight,
}

impl BodySource for Counted {
    fn len(&self) -> u64 {
        self.body.len()
    }

    fn next_piece(&mut self, max: usize) -> std::io::Result<Bytes> {
        self.body.next_piece(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> Vec<ReplyBody> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, n)| ReplyBody::Bytes(Bytes::from(vec![i as u8; *n])))
            .collect()
    }

    fn drain(body: ReplyBody) -> Vec<u8> {
        let ReplyBody::Source(mut s) = body else {
            panic!("the manager hands out counted sources")
        };
        let mut out = Vec::new();
        while !s.is_empty() {
            out.extend_from_slice(&s.next_piece(7).unwrap());
        }
        out
    }

    fn owner(app: Option<&str>, conn: u64) -> StreamOwner {
        StreamOwner::new(app, conn)
    }

    #[test]
    fn chunks_come_in_order_and_the_stream_ends_after_the_last() {
        let m = StreamManager::new(u64::MAX);
        let id = m.register_stream(&owner(None, 1), chunks(&[10, 20, 30]));
        assert_eq!(m.stream_count(), 1);
        for (i, n) in [10usize, 20, 30].iter().enumerate() {
            let body = m.next_chunk(None, id, i as i32).unwrap();
            assert_eq!(drain(body), vec![i as u8; *n]);
        }
        assert_eq!(m.stream_count(), 0, "forgotten after its last chunk");
        assert_eq!(
            m.next_chunk(None, id, 3).unwrap_err(),
            Refusal::Unknown { stream_id: id }
        );
    }

    #[test]
    fn out_of_order_and_repeated_indexes_are_refused_with_sparks_text() {
        let m = StreamManager::new(u64::MAX);
        let id = m.register_stream(&owner(None, 1), chunks(&[1, 1, 1]));
        let err = m.next_chunk(None, id, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Received out-of-order chunk index 1 (expected 0)"
        );
        m.next_chunk(None, id, 0).unwrap();
        let err = m.next_chunk(None, id, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Received out-of-order chunk index 0 (expected 1)"
        );
        // A refused request does not advance the stream.
        m.next_chunk(None, id, 1).unwrap();
    }

    #[test]
    fn an_empty_stream_has_no_chunk() {
        let m = StreamManager::new(u64::MAX);
        let id = m.register_stream(&owner(None, 1), Vec::new());
        assert_eq!(
            m.next_chunk(None, id, 0).unwrap_err().to_string(),
            "Requested chunk index beyond end 0"
        );
    }

    #[test]
    fn another_app_is_not_authorized() {
        let m = StreamManager::new(u64::MAX);
        let id = m.register_stream(&owner(Some("app-a"), 1), chunks(&[4, 4]));
        let err = m.next_chunk(Some("app-b"), id, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Client app-b not authorized to read stream {id} (app app-a).")
        );
        // The refusal does not consume the chunk: the owner's app still reads it.
        assert_eq!(
            drain(m.next_chunk(Some("app-a"), id, 0).unwrap()),
            vec![0; 4]
        );
        // A stream registered without an app id is refused to every authenticated reader.
        let open = m.register_stream(&owner(None, 1), chunks(&[1]));
        assert!(matches!(
            m.next_chunk(Some("app-a"), open, 0),
            Err(Refusal::NotAuthorized { app: None, .. })
        ));
        // An unauthenticated reader is not checked (Spark: no client id, no check).
        m.next_chunk(None, id, 1).unwrap();
    }

    #[test]
    fn a_closed_connection_releases_its_streams_and_only_those() {
        let produced = Arc::new(AtomicU64::new(0));
        let lazy = |p: Arc<AtomicU64>| {
            (0..3).map(move |_| {
                p.fetch_add(1, Ordering::Relaxed);
                ReplyBody::Bytes(Bytes::from_static(b"x"))
            })
        };
        let m = StreamManager::new(u64::MAX);
        let a = m.register_stream(&owner(None, 1), lazy(produced.clone()));
        let b = m.register_stream(&owner(None, 2), chunks(&[1, 1]));
        m.next_chunk(None, a, 0).unwrap();
        assert_eq!(produced.load(Ordering::Relaxed), 2, "one chunk ahead");
        assert_eq!(m.connection_closed(1), 1);
        assert_eq!(
            produced.load(Ordering::Relaxed),
            2,
            "chunks not yet produced are never produced"
        );
        assert_eq!(
            m.next_chunk(None, a, 1).unwrap_err(),
            Refusal::Unknown { stream_id: a }
        );
        m.next_chunk(None, b, 0).unwrap();
        assert_eq!(m.connection_closed(1), 0);
    }

    #[test]
    fn bodies_count_as_transferred_until_written_or_dropped() {
        let m = StreamManager::new(2);
        let id = m.register_stream(&owner(None, 1), chunks(&[3, 3, 3, 3]));
        assert_eq!(m.at_cap(), None);
        let first = m.next_chunk(None, id, 0).unwrap();
        let second = m.next_chunk(None, id, 1).unwrap();
        assert_eq!(m.chunks_being_transferred(), 2);
        assert_eq!(m.at_cap(), Some((2, 2)));
        drain(first);
        assert_eq!(m.chunks_being_transferred(), 1);
        assert_eq!(m.at_cap(), None);
        drop(second);
        assert_eq!(m.chunks_being_transferred(), 0);
        // No cap: never at it.
        let free = StreamManager::new(u64::MAX);
        let id = free.register_stream(&owner(None, 1), chunks(&[1, 1]));
        let _held = free.next_chunk(None, id, 0).unwrap();
        assert_eq!(free.at_cap(), None);
    }

    #[test]
    fn stream_chunk_ids_parse_as_spark_writes_them() {
        assert_eq!(stream_chunk_id(42, 3), "42_3");
        assert_eq!(parse_stream_chunk_id("42_3"), Some((42, 3)));
        assert_eq!(parse_stream_chunk_id("-7_0"), Some((-7, 0)));
        for bad in ["42", "42_", "_3", "a_3", "42_3_1", "/files/x", ""] {
            assert_eq!(parse_stream_chunk_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_released_stream_is_gone() {
        let m = StreamManager::new(u64::MAX);
        let id = m.register_stream(&owner(None, 1), chunks(&[1]));
        assert!(m.release_stream(id));
        assert!(!m.release_stream(id));
        assert_eq!(m.stream_count(), 0);
    }
}
