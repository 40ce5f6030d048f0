//! The [`Outbox`] of one remote address: messages to that address in FIFO order, over one
//! lazily opened connection.
//!
//! Spark's Outbox drains its queue on the caller's thread. Here the caller never touches the
//! network: while the connection is being opened (by a task on the IO runtime), messages wait in
//! the outbox's queue; once it is open, the queue is handed to the connection in order and later
//! messages go straight to the connection's writer queue (which batches them into few writes).
//! If the connect fails, every queued message fails with the cause and the outbox is removed, so
//! the next message to that address tries again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use rpcenv_transport::{TransportClient, TransportError};

use crate::address::RpcAddress;
use crate::error::RpcError;
use crate::net::Network;
use crate::reply::ReplySlot;

/// A message waiting in an outbox.
pub(crate) enum OutboxMessage {
    OneWay(Bytes),
    Rpc(Bytes, Arc<ReplySlot>),
}

impl OutboxMessage {
    fn len(&self) -> usize {
        match self {
            OutboxMessage::OneWay(b) | OutboxMessage::Rpc(b, _) => b.len(),
        }
    }
}

enum State {
    /// The connection is being opened; messages wait here, in order, with their total size.
    Connecting(VecDeque<OutboxMessage>, usize),
    /// Messages go straight to the connection.
    Connected(TransportClient),
    /// Failed or stopped: messages are refused (the poster opens a new outbox).
    Closed,
}

/// The messages to one remote address.
pub(crate) struct Outbox {
    address: RpcAddress,
    state: Mutex<State>,
    /// Signalled when the connection opens or fails (for senders waiting for room).
    settled: tokio::sync::Notify,
}

/// What `Outbox::post` did.
pub(crate) enum Posted {
    Done,
    /// The outbox's connection is gone: post to a new outbox.
    Stale(OutboxMessage),
    /// `rpc.outbox.maxBytes` would be exceeded: this many bytes wait already.
    Full(OutboxMessage, usize),
}

impl Outbox {
    /// A new outbox whose connection is opened by a task on `network`'s runtime.
    pub(crate) fn open(address: RpcAddress, network: &Arc<Network>) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox {
            address: address.clone(),
            state: Mutex::new(State::Connecting(VecDeque::new(), 0)),
            settled: tokio::sync::Notify::new(),
        });
        let weak_net: Weak<Network> = Arc::downgrade(network);
        let me = outbox.clone();
        network.runtime().spawn(async move {
            let Some(net) = weak_net.upgrade() else {
                return;
            };
            let connected = net
                .factory()
                .create_client(address.host().trim_matches(['[', ']']), address.port())
                .await;
            match connected {
                Ok(client) => me.connected(client, &net),
                Err(e) => {
                    tracing::warn!(peer = %address, error = %e, "cannot connect");
                    net.remove_outbox(&me);
                    me.close(&|| RpcError::Connection {
                        peer: address.to_string(),
                        source: e.clone(),
                    });
                }
            }
        });
        outbox
    }

    pub(crate) fn address(&self) -> &RpcAddress {
        &self.address
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues or sends a message, unless more than `rpc.outbox.maxBytes` would wait. Never
    /// blocks on the network.
    pub(crate) fn post(&self, message: OutboxMessage, net: &Network) -> Posted {
        let max = net.outbox_max_bytes();
        let mut state = self.lock();
        match &mut *state {
            State::Connecting(queue, queued) => {
                if *queued > 0 && *queued + message.len() > max {
                    return Posted::Full(message, *queued);
                }
                *queued += message.len();
                queue.push_back(message);
                Posted::Done
            }
            State::Connected(client) if client.is_active() => {
                let queued = client.queued_bytes();
                if queued > 0 && queued + message.len() > max {
                    return Posted::Full(message, queued);
                }
                let client = client.clone();
                // Sent under the lock: a concurrent post cannot overtake this one.
                dispatch(&client, message, net);
                Posted::Done
            }
            State::Connected(_) => Posted::Stale(message),
            State::Closed => Posted::Stale(message),
        }
    }

    fn connected(&self, client: TransportClient, net: &Network) {
        let mut state = self.lock();
        let queued = match std::mem::replace(&mut *state, State::Connected(client.clone())) {
            State::Connecting(q, _) => q,
            other => {
                // Stopped while connecting.
                *state = other;
                drop(state);
                client.close();
                return;
            }
        };
        for message in queued {
            dispatch(&client, message, net);
        }
        drop(state);
        self.settled.notify_waiters();
    }

    /// Waits until `need` more bytes fit (or the outbox is closed or replaced); fails with the
    /// failure of its connection if that ends while waiting.
    pub(crate) async fn wait_for_room(
        &self,
        need: usize,
        max: usize,
    ) -> Result<(), TransportError> {
        loop {
            let settled = self.settled.notified();
            let mut settled = std::pin::pin!(settled);
            settled.as_mut().enable();
            let client = match &*self.lock() {
                State::Connecting(_, queued) if *queued > 0 && *queued + need > max => None,
                State::Connected(c) if c.is_active() => Some(c.clone()),
                _ => return Ok(()),
            };
            match client {
                Some(c) => return c.wait_queued_at_most(max.saturating_sub(need)).await,
                None => settled.await,
            }
        }
    }

    /// Whether this outbox's connection is `client`.
    pub(crate) fn uses(&self, client: &TransportClient) -> bool {
        matches!(&*self.lock(), State::Connected(c) if c == client)
    }

    /// Fails every queued message with the error `error` makes and refuses later ones.
    pub(crate) fn close(&self, error: &dyn Fn() -> RpcError) {
        let text = error().to_string();
        let queued = match std::mem::replace(&mut *self.lock(), State::Closed) {
            State::Connecting(q, _) => q,
            _ => VecDeque::new(),
        };
        self.settled.notify_waiters();
        let mut dropped_one_way = 0;
        for message in queued {
            match message {
                OutboxMessage::Rpc(_, slot) => {
                    slot.complete(Err(error()));
                }
                OutboxMessage::OneWay(_) => dropped_one_way += 1,
            }
        }
        if dropped_one_way > 0 {
            tracing::warn!(peer = %self.address, dropped = dropped_one_way, error = %text, "one-way messages not delivered");
        }
    }
}

/// Hands one message to a connection.
pub(crate) fn dispatch(client: &TransportClient, message: OutboxMessage, net: &Network) {
    match message {
        OutboxMessage::OneWay(body) => {
            if let Err(e) = client.send(body) {
                tracing::warn!(peer = %client.remote_addr(), error = %e, "one-way message not delivered");
            }
        }
        OutboxMessage::Rpc(body, slot) => {
            if slot.is_complete() {
                // Aborted or timed out before it could be sent.
                return;
            }
            let on_reply = net.reply_handler(slot.clone(), client);
            let id = client.send_rpc_with_callback(body, on_reply);
            let client = client.clone();
            slot.set_cancel(Box::new(move || client.remove_rpc_request(id)));
        }
    }
}
