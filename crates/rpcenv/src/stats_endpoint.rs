//! The `rpcenv-stats` endpoint: the endpoint every server env runs (beside the
//! `endpoint-verifier`) so that an operator's tool (`rpcenv status`, `rpcenv top`) can ask a
//! running env for its [`EnvStats`]. It is reached like any endpoint, so it is authenticated
//! and encrypted like everything else.

use std::sync::Weak;

use crate::call_context::RpcCallContext;
use crate::endpoint::{EndpointCtx, RpcEndpoint};
use crate::error::HandlerResult;
use crate::net::Network;
use crate::stats::{EnvStats, StatsRequest};

/// The snapshot of the env whose network is `network` and whose address is `address`.
pub(crate) fn snapshot(network: &Network, name: &str, address: Option<String>) -> EnvStats {
    let (peers, connections_in) = network.peer_stats();
    EnvStats {
        name: name.to_string(),
        address,
        endpoints: network.dispatcher().endpoint_stats(),
        connections_out: peers.iter().filter(|p| p.connected).count(),
        peers,
        connections_in,
    }
}

/// The stats endpoint; it answers from its env's network and dispatcher.
pub(crate) struct StatsEndpoint {
    network: Weak<Network>,
    name: String,
    address: Option<String>,
}

impl StatsEndpoint {
    pub(crate) fn new(network: Weak<Network>, name: String, address: Option<String>) -> Self {
        StatsEndpoint {
            network,
            name,
            address,
        }
    }
}

impl RpcEndpoint for StatsEndpoint {
    type Message = StatsRequest;

    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<StatsRequest>,
        StatsRequest::Snapshot: StatsRequest,
        reply: RpcCallContext,
    ) -> HandlerResult {
        let network = self.network.upgrade().ok_or("the env is shutting down")?;
        reply.reply(snapshot(&network, &self.name, self.address.clone()));
        Ok(())
    }
}
