//! Blocking inside handlers: what a handler that waits for a reply (`ask_sync`, or
//! `Ask::wait` on an ask it made) holds, and how the env keeps working around it.
//!
//! A handler blocked on a reply holds a message loop thread, and, for an endpoint that
//! processes one message at a time, the endpoint itself. Three consequences are handled here:
//!
//! - **Deadlocks that cannot end otherwise fail at once**: an `ask_sync` to a one-at-a-time
//!   endpoint whose handler is (directly, or through a chain of handlers each blocked in an
//!   `ask_sync` of this env) waiting for the asking handler could only be answered after the
//!   asker returns. [`enter`] walks that chain ([`WaitNode::blocked_on`]) before the message is
//!   sent. Only `ask_sync` knows its target before the message goes: a handler waiting in
//!   `Ask::wait` is not part of a chain, and a cycle through it ends at the ask's timeout.
//! - **The shared pool keeps serving**: while a loop thread blocks, its loop may run a
//!   compensating thread ([`LoopThreads`], at most `rpc.messageLoop.maxExtraThreads`).
//! - **Shutdown is not held up**: an env's asks blocked on loop threads are registered in its
//!   [`BlockedAsks`], which the shutdown fails before it waits for the handlers to return.
//!
//! Only a wait made on a message loop thread pays for any of this (a thread-local read
//! elsewhere), so the callers' ordinary asks cost nothing more.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use crate::error::RpcError;
use crate::reply_slot::ReplySlot;

thread_local! {
    /// A thread-identity flag, not a parameter: the message loop this thread belongs to (set
    /// once when a loop thread starts), so that blocking operations know they hold one of its
    /// threads (shutdown must not wait for the loops from it; an `ask_sync` lets the loop
    /// compensate).
    static LOOP_THREAD: RefCell<Option<Arc<dyn LoopThreads>>> = const { RefCell::new(None) };
    /// A thread-identity flag, not a parameter: the endpoint whose handler runs on this thread
    /// (set by the inbox around a batch), so that an `ask_sync` knows who waits.
    static RUNNING: RefCell<Option<Arc<WaitNode>>> = const { RefCell::new(None) };
}

/// How long the chain of blocked handlers [`enter`] follows may be.
const MAX_CHAIN: usize = 64;

/// A message loop as a thread blocked on it sees it.
pub(crate) trait LoopThreads: Send + Sync {
    /// One of the loop's threads starts to block (it may start a compensating thread).
    fn blocking_started(&self);
    /// That thread is back.
    fn blocking_ended(&self);
}

/// Marks the current thread as a thread of `message_loop` (for its whole life).
pub(crate) fn set_loop_thread(message_loop: Arc<dyn LoopThreads>) {
    LOOP_THREAD.with(|l| *l.borrow_mut() = Some(message_loop));
}

/// Whether the current thread is a message loop thread (a handler is running on it).
pub(crate) fn on_message_loop_thread() -> bool {
    LOOP_THREAD.with(|l| l.borrow().is_some())
}

/// An endpoint in the graph of handlers waiting for each other.
pub(crate) struct WaitNode {
    name: Arc<str>,
    one_at_a_time: bool,
    /// What the handler running now waits for in an `ask_sync`, if anything.
    blocked_on: Mutex<Option<Waiting>>,
}

/// An `ask_sync` a handler waits in.
struct Waiting {
    /// The endpoint asked.
    target: Arc<WaitNode>,
    /// The ask's reply slot: once it is complete the handler no longer waits for `target`,
    /// although its thread may not have woken yet to say so.
    ask: Arc<ReplySlot>,
}

impl WaitNode {
    pub(crate) fn new(name: Arc<str>, one_at_a_time: bool) -> Arc<Self> {
        Arc::new(WaitNode {
            name,
            one_at_a_time,
            blocked_on: Mutex::new(None),
        })
    }

    /// The endpoint the running handler waits for, unless the answer it waits for has come.
    fn blocked_on(&self) -> Option<Arc<WaitNode>> {
        let (target, ask) = {
            let waiting = self.blocked_on.lock().unwrap_or_else(|p| p.into_inner());
            let w = waiting.as_ref()?;
            (w.target.clone(), w.ask.clone())
        };
        (!ask.is_complete()).then_some(target)
    }

    fn set_blocked_on(&self, waiting: Option<Waiting>) {
        *self.blocked_on.lock().unwrap_or_else(|p| p.into_inner()) = waiting;
    }
}

/// Marks the current thread as running `node`'s handler until dropped.
pub(crate) struct Running(Option<Arc<WaitNode>>);

/// Marks the current thread as running `node`'s handler (restoring the previous mark on drop).
pub(crate) fn running(node: &Arc<WaitNode>) -> Running {
    Running(RUNNING.with(|r| r.borrow_mut().replace(node.clone())))
}

impl Drop for Running {
    fn drop(&mut self) {
        let previous = self.0.take();
        RUNNING.with(|r| *r.borrow_mut() = previous);
    }
}

/// The asks of an env that block message loop threads, failed first when it shuts down.
#[derive(Default)]
pub(crate) struct BlockedAsks {
    state: Mutex<BlockedState>,
}

#[derive(Default)]
struct BlockedState {
    closed: bool,
    slots: Vec<Arc<ReplySlot>>,
}

impl std::fmt::Debug for BlockedAsks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        write!(f, "BlockedAsks({} waiting)", st.slots.len())
    }
}

impl BlockedAsks {
    /// Fails every registered ask (and every one registered later) with `EnvStopped`.
    pub(crate) fn fail_all(&self) {
        let slots = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.closed = true;
            std::mem::take(&mut st.slots)
        };
        for slot in slots {
            slot.cancel_with(Err(RpcError::EnvStopped));
        }
    }

    fn register(&self, slot: &Arc<ReplySlot>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.closed {
            drop(st);
            slot.cancel_with(Err(RpcError::EnvStopped));
            return;
        }
        st.slots.push(slot.clone());
    }

    fn unregister(&self, slot: &Arc<ReplySlot>) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = st.slots.iter().position(|s| Arc::ptr_eq(s, slot)) {
            st.slots.swap_remove(i);
        }
    }
}

/// A wait for a reply on a message loop thread (`ask_sync`, `Ask::wait`): undoes its marks
/// when dropped.
pub(crate) struct Blocking<'a> {
    waiter: Option<Arc<WaitNode>>,
    message_loop: Option<Arc<dyn LoopThreads>>,
    asks: &'a BlockedAsks,
    slot: Option<Arc<ReplySlot>>,
}

/// Starts a blocking wait for the reply that arrives in `slot`, of an ask to the endpoint
/// `target` (`None`: not an endpoint of this env, or not known). Fails with
/// [`RpcError::Deadlock`] when the ask could only be answered after the asking handler
/// returned. `uri` names the target in the error. On a loop thread the slot is registered, so
/// that the env's shutdown fails it, and the deadlock check stops counting the asking handler
/// as blocked once the slot is complete: call this before the message goes, so that even the
/// fastest answer is seen.
pub(crate) fn enter<'a>(
    target: Option<&Arc<WaitNode>>,
    uri: &dyn std::fmt::Display,
    asks: &'a BlockedAsks,
    slot: &Arc<ReplySlot>,
) -> Result<Blocking<'a>, RpcError> {
    let message_loop = LOOP_THREAD.with(|l| l.borrow().clone());
    let Some(message_loop) = message_loop else {
        return Ok(Blocking {
            waiter: None,
            message_loop: None,
            asks,
            slot: None,
        });
    };
    let waiter = RUNNING.with(|r| r.borrow().clone());
    if let (Some(me), Some(target)) = (&waiter, target) {
        if let Some(chain) = deadlock_chain(me, target) {
            return Err(RpcError::Deadlock {
                endpoint: uri.to_string(),
                reason: chain,
            });
        }
    }
    if let (Some(me), Some(target)) = (&waiter, target) {
        me.set_blocked_on(Some(Waiting {
            target: target.clone(),
            ask: slot.clone(),
        }));
    }
    asks.register(slot);
    message_loop.blocking_started();
    Ok(Blocking {
        waiter,
        message_loop: Some(message_loop),
        asks,
        slot: Some(slot.clone()),
    })
}

/// Why `me` asking `target` can never be answered, or `None`: `target` (one at a time) is held
/// by a handler that waits, through one-at-a-time endpoints each blocked in an ask, for `me`,
/// which is one at a time and held by the asking handler.
fn deadlock_chain(me: &Arc<WaitNode>, target: &Arc<WaitNode>) -> Option<String> {
    if !me.one_at_a_time {
        return None;
    }
    let mut path = vec![target.name.to_string()];
    let mut node = target.clone();
    for _ in 0..MAX_CHAIN {
        if !node.one_at_a_time {
            return None;
        }
        if Arc::ptr_eq(&node, me) {
            return Some(if path.len() == 1 {
                format!(
                    "endpoint {} processes one message at a time and asked itself from its own handler: the ask could only be processed after the handler returns",
                    me.name
                )
            } else {
                format!(
                    "endpoint {} processes one message at a time and its handler asks along the chain {} (each handler on it blocked in ask_sync for the next): the ask could only be processed after the asking handler returns",
                    me.name,
                    path.join(" -> "),
                )
            });
        }
        node = node.blocked_on()?;
        path.push(node.name.to_string());
    }
    None
}

impl Drop for Blocking<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.asks.unregister(&slot);
        }
        if let Some(me) = self.waiter.take() {
            me.set_blocked_on(None);
        }
        if let Some(message_loop) = self.message_loop.take() {
            message_loop.blocking_ended();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `node` waits for `target` in an ask that has not been answered.
    fn waits_for(node: &WaitNode, target: &Arc<WaitNode>) {
        node.set_blocked_on(Some(Waiting {
            target: target.clone(),
            ask: ReplySlot::new(),
        }));
    }

    #[test]
    fn chains_back_to_a_one_at_a_time_asker_are_deadlocks() {
        let a = WaitNode::new("a".into(), true);
        let b = WaitNode::new("b".into(), true);
        let c = WaitNode::new("c".into(), false);
        assert!(deadlock_chain(&a, &a).unwrap().contains("asked itself"));
        assert!(deadlock_chain(&a, &b).is_none(), "b is not blocked");
        waits_for(&b, &a);
        let why = deadlock_chain(&a, &b).unwrap();
        assert!(why.contains("b -> a"), "{why}");
        // Through an endpoint that runs messages concurrently, another thread can answer.
        waits_for(&b, &c);
        waits_for(&c, &a);
        assert!(deadlock_chain(&a, &b).is_none());
        // A concurrent asker is not held by its handler.
        assert!(deadlock_chain(&c, &c).is_none());
    }

    /// A handler whose ask has been answered no longer waits for the endpoint it asked, even
    /// before its thread wakes to say so: asking it back is no deadlock.
    #[test]
    fn a_handler_whose_ask_was_answered_is_not_blocked() {
        let a = WaitNode::new("a".into(), true);
        let b = WaitNode::new("b".into(), true);
        let ask = ReplySlot::new();
        a.set_blocked_on(Some(Waiting {
            target: b.clone(),
            ask: ask.clone(),
        }));
        assert!(deadlock_chain(&b, &a).is_some(), "a waits for b");
        assert!(ask.complete(Err(RpcError::EnvStopped)));
        assert!(deadlock_chain(&b, &a).is_none(), "a has its answer");
    }
}
