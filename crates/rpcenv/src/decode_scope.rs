//! The decode scope: what the decoding of one received message may consult besides its bytes.
//!
//! Refs ([`RpcEndpointRef`](crate::RpcEndpointRef)) and [`Blob`](crate::codec::Blob)s are
//! decoded inside the users' own `#[derive(Deserialize)]` types, and serde cannot hand a seed
//! through derived impls. So a decode learns, from the one thread-local below, which env a ref
//! is rebound to, which connection the message came over (a ref to a client-mode endpoint is
//! reached over it), and which received frame a large `Blob` may share instead of copying.
//! [`DecodeScope::run`] is the only place that sets it, and it restores the previous value when
//! the decode returns. Its one counterpart is the encoding's (`codec::OFFERED`: the large blobs
//! an envelope holds, written without a copy); nothing else passes state through a thread-local.

use std::any::Any;
use std::cell::RefCell;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use rpcenv_transport::TransportClient;

/// The env, connection and received frame one decode binds to.
pub(crate) struct DecodeScope {
    /// The env refs are rebound to. Type-erased because this layer cannot name it: the local
    /// layer's dispatcher, which downcasts it back.
    env: Weak<dyn Any + Send + Sync>,
    /// The connection the message came over.
    client: Option<TransportClient>,
    /// The received bytes the decoded content lies in, for `Blob`s to share.
    source: Option<Bytes>,
}

thread_local! {
    /// The scope of the decode running on this thread, set only by [`DecodeScope::run`].
    static CURRENT: RefCell<Option<DecodeScope>> = const { RefCell::new(None) };
}

impl DecodeScope {
    /// A scope that rebinds refs to `env` (and, for client-mode endpoints, to `client`).
    pub(crate) fn new(env: Weak<dyn Any + Send + Sync>, client: Option<TransportClient>) -> Self {
        DecodeScope {
            env,
            client,
            source: None,
        }
    }

    /// The same scope, letting `Blob`s share `source` (the bytes the content lies in).
    pub(crate) fn with_source(mut self, source: Bytes) -> Self {
        self.source = Some(source);
        self
    }

    /// Runs `f` (a decode) with this scope in force, and hands the scope back afterwards. Moved
    /// in and out rather than cloned: a decode per message costs no reference counting here.
    pub(crate) fn run<T>(self, f: impl FnOnce() -> T) -> (T, Self) {
        let previous = CURRENT.with(|c| c.replace(Some(self)));
        let result = f();
        let me = CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), previous));
        (result, me.expect("the scope set above is still in force"))
    }

    /// The connection the message came over.
    pub(crate) fn client(&self) -> Option<&TransportClient> {
        self.client.as_ref()
    }

    /// The peer a message came from, for error messages.
    pub(crate) fn peer(&self) -> String {
        self.client.as_ref().map_or_else(
            || "this process".to_string(),
            |c| c.remote_addr().to_string(),
        )
    }
}

/// The env and connection of the decode in force on this thread, if any (and if the env is
/// still alive).
pub(crate) fn current_env() -> Option<(Arc<dyn Any + Send + Sync>, Option<TransportClient>)> {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .and_then(|s| Some((s.env.upgrade()?, s.client.clone())))
    })
}

/// `bytes` as a handle into the received frame when it lies inside the source of the decode in
/// force; `None` outside a decode or when it lies elsewhere.
pub(crate) fn shared_from_source(bytes: &[u8]) -> Option<Bytes> {
    CURRENT.with(|c| {
        let scope = c.borrow();
        let source = scope.as_ref()?.source.as_ref()?;
        let start = source.as_ptr() as usize;
        let at = bytes.as_ptr() as usize;
        (at >= start && at + bytes.len() <= start + source.len()).then(|| source.slice_ref(bytes))
    })
}

/// A scope for decodes that bind no refs (tests, benchmarks): only `Blob`s share `source`.
#[cfg(test)]
pub(crate) fn detached(source: Bytes) -> DecodeScope {
    DecodeScope::new(Weak::<()>::new(), None).with_source(source)
}
