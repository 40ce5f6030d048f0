//! The commands that handles ([`TransportClient`](crate::TransportClient), the RPC responder)
//! queue for a connection's task, and the byte cost a queued message counts for. Sits below
//! both the handles and the connection task so that neither imports the other to talk.

use tokio::sync::mpsc;

use crate::message::{Message, StreamChunkId};
use crate::response::{ChunkReply, PendingRpc, StreamReply};

/// What a request waits for.
pub(crate) enum PendingKind {
    Rpc(i64, PendingRpc),
    Chunk(StreamChunkId, ChunkReply),
    Stream(String, StreamReply),
}

/// Work handed to a connection's task.
pub(crate) enum Command {
    /// Write a message that expects no answer (one-way, responses).
    Send(Message),
    /// Register an outstanding request, then write its message.
    Request(Message, PendingKind),
    /// Forget an outstanding RPC (its requester gave up).
    CancelRpc(i64),
    /// Forget an outstanding chunk fetch.
    CancelChunk(StreamChunkId),
}

pub(crate) type CommandSender = mpsc::UnboundedSender<Command>;

/// Memory a queued command takes besides the bytes it will write: its slot in the channel and the
/// allocator's share of its body. Counting it keeps [`TransportClient::queued_bytes`](crate::TransportClient::queued_bytes)
/// and the connection's byte budget a bound on memory for tiny messages too (a million 16-byte
/// messages take about 200 MB queued, not 60).
pub(crate) const QUEUE_ENTRY_OVERHEAD: usize = std::mem::size_of::<Command>() + 16;

/// The bytes a queued message counts for in [`TransportClient::queued_bytes`](crate::TransportClient::queued_bytes)
/// and in the connection's byte budget: its frame and the memory of its queue entry.
pub(crate) fn queue_cost(msg: &Message) -> usize {
    msg.wire_len() + QUEUE_ENTRY_OVERHEAD
}
