//! How a ref travels inside a message, and how it is rebound when it arrives: a ref to an
//! endpoint of the receiving env becomes local, a ref to another env's endpoint goes through the
//! outbox of its address, and a ref to a client-mode endpoint goes over the connection the
//! message came on.

use std::any::Any;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::address::RpcEndpointAddress;
use crate::decode_scope::current_env;
use crate::dispatcher::Dispatcher;
use crate::endpoint_ref::{Route, RpcEndpointRef};
use crate::error::RpcError;
use crate::message::RpcMessage;

/// How a ref travels: its endpoint address and the protocol name of its message type.
#[derive(Serialize, Deserialize)]
struct WireRef<'a> {
    address: RpcEndpointAddress,
    #[serde(borrow)]
    protocol: std::borrow::Cow<'a, str>,
}

impl<M: RpcMessage> Serialize for RpcEndpointRef<M> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireRef {
            address: self.endpoint_address().clone(),
            protocol: M::protocol_name(),
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
        rebind::<M>(wire.address).map_err(serde::de::Error::custom)
    }
}

/// Rebinds a deserialized ref to the env decoding the message it arrived in (the decode scope
/// in force), through that env's dispatcher.
fn rebind<M: RpcMessage>(address: RpcEndpointAddress) -> Result<RpcEndpointRef<M>, String> {
    let (env, client) = current_env()
        .and_then(|(env, client)| Some((as_dispatcher(env)?, client)))
        .ok_or_else(|| {
            format!("cannot deserialize a ref to {address}: refs are rebound by the RpcEnv that receives them, and none is decoding")
        })?;
    let defaults = env.defaults();
    if address.address() == defaults.sender.as_ref() {
        match env.lookup::<M>(address.name()) {
            Ok(local) => return Ok(local),
            Err(e) if address.address().is_some() => return Err(e.to_string()),
            // A client-mode endpoint of another env (both have no address).
            Err(_) => {}
        }
    }
    let route = match (address.address(), client) {
        (Some(host), _) => Route::Outbox(host.clone()),
        (None, Some(client)) => Route::Connection(client),
        (None, None) => {
            return Err(RpcError::ClientEndpointUnreachable {
                uri: address.to_string(),
            }
            .to_string())
        }
    };
    Ok(RpcEndpointRef::new(address, route, defaults.clone()))
}

/// The decode scope's env as the dispatcher it is (the network puts the dispatcher there).
fn as_dispatcher(env: Arc<dyn Any + Send + Sync>) -> Option<Arc<Dispatcher>> {
    env.downcast::<Dispatcher>().ok()
}
