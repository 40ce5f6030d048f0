//! How a ref travels inside a message, and how it is rebound when it arrives: a ref to an
//! endpoint of the receiving env becomes local, a ref to another env's endpoint goes through the
//! outbox of its address, and a ref to a client-mode endpoint goes over the connection the
//! message came on, when that message came from the endpoint's own env. A client-mode endpoint
//! has no address, only the connection its env opened: a ref to it forwarded by a third env
//! cannot reach it (the third env's connection leads elsewhere, and delivering by name there
//! would reach an unrelated endpoint of the same name), so it arrives unreachable.

use std::any::Any;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::address::RpcEndpointAddress;
use crate::decode_scope::current_env;
use crate::dispatcher::Dispatcher;
use crate::endpoint_ref::{Route, RpcEndpointRef};
use crate::message::RpcMessage;

/// How a ref travels: its endpoint address, the protocol name of its message type, and for a
/// client-mode endpoint (no address) the identity of its env and whether the sender holds the
/// ref second-hand.
#[derive(Serialize, Deserialize)]
struct WireRef<'a> {
    address: RpcEndpointAddress,
    #[serde(borrow)]
    protocol: std::borrow::Cow<'a, str>,
    owner: u64,
    forwarded: bool,
}

impl<M: RpcMessage> Serialize for RpcEndpointRef<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (owner, forwarded) = match self.address() {
            None => self.client_origin(),
            Some(_) => (0, false),
        };
        WireRef {
            address: self.endpoint_address().clone(),
            protocol: M::protocol_name(),
            owner,
            forwarded,
        }
        .serialize(serializer)
    }
}

impl<'de, M: RpcMessage> Deserialize<'de> for RpcEndpointRef<M> {
    /// Rebinds the ref to the env that is deserializing it: possible only while an env decodes
    /// an incoming message.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireRef::deserialize(deserializer)?;
        if wire.protocol != M::protocol_name() {
            return Err(serde::de::Error::custom(format!(
                "ref to {} speaks {} but {} was expected",
                wire.address,
                wire.protocol,
                M::protocol_name()
            )));
        }
        rebind::<M>(wire.address, wire.owner, wire.forwarded).map_err(serde::de::Error::custom)
    }
}

/// Rebinds a deserialized ref to the env decoding the message it arrived in (the decode scope
/// in force), through that env's dispatcher.
fn rebind<M: RpcMessage>(
    address: RpcEndpointAddress,
    owner: u64,
    forwarded: bool,
) -> Result<RpcEndpointRef<M>, String> {
    let (env, client) = current_env()
        .and_then(|(env, client)| Some((as_dispatcher(env)?, client)))
        .ok_or_else(|| {
            format!("cannot deserialize a ref to {address}: refs are rebound by the RpcEnv that receives them, and none is decoding")
        })?;
    let defaults = env.defaults();
    let own = match address.address() {
        Some(host) => defaults.sender.as_ref() == Some(host),
        None => owner == defaults.env_id,
    };
    if own {
        return env.lookup::<M>(address.name()).map_err(|e| e.to_string());
    }
    let route = match (address.address(), client) {
        (Some(host), _) => Route::Outbox(host.clone()),
        (None, Some(client)) if !forwarded => Route::Connection(client, owner),
        (None, _) => Route::Unreachable(owner),
    };
    Ok(RpcEndpointRef::new(address, route, defaults.clone()))
}

/// The decode scope's env as the dispatcher it is (the network puts the dispatcher there).
fn as_dispatcher(env: Arc<dyn Any + Send + Sync>) -> Option<Arc<Dispatcher>> {
    env.downcast::<Dispatcher>().ok()
}
