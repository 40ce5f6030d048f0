//! What may travel as a message or a reply.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A message type an endpoint accepts: typically an enum of the endpoint's requests.
///
/// Messages are moved (never serialized) to local endpoints, and serialized once when they cross
/// the network. The [`protocol_name`](Self::protocol_name) lets a remote lookup check that the
/// asker and the endpoint agree on the type; it is the type's name by default, and may be
/// overridden to stay stable when the type moves between modules.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// enum Counter { Add(u64), Get }
///
/// impl rpcenv::RpcMessage for Counter {
///     fn protocol_name() -> std::borrow::Cow<'static, str> { "counter/v1".into() }
/// }
/// ```
pub trait RpcMessage: Serialize + DeserializeOwned + Send + 'static {
    /// The name both ends of a lookup must agree on.
    fn protocol_name() -> Cow<'static, str> {
        Cow::Borrowed(std::any::type_name::<Self>())
    }
}

/// A reply type: anything serde can carry. Local replies are moved, not serialized.
pub trait RpcReply: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> RpcReply for T {}

macro_rules! message_types {
    ($($t:ty),* $(,)?) => { $(impl RpcMessage for $t {})* };
}

message_types!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    String,
    Vec<u8>,
);

impl<T: RpcMessage> RpcMessage for Option<T> {}
