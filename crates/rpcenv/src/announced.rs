//! The listening addresses peers announce on their connections (the sender address of each
//! message's envelope), and which of them a connection event is about.
//!
//! Spark raises `onConnected` for a peer's listening address once per connection (on its first
//! message). A peer may announce other addresses later on the same connection (nothing stops a
//! hostile one from alternating them); those raise no further `Connected`, but each of them gets
//! its `Disconnected` when the connection closes. A connection may also claim the address of
//! another, live peer: its close does not disconnect an address still announced on another open
//! connection, so the real owner's peers do not see it leave.
//!
//! Socket- and clock-free: the network feeds it connection ids and envelope addresses.

use std::sync::RwLock;

use foldhash::HashMap;

use crate::address::RpcAddress;
use crate::codec::WireAddress;

/// Distinct addresses recorded per connection (a well-behaved peer announces one); further ones
/// are still used as messages' senders but not recorded.
const MAX_PER_CONNECTION: usize = 16;

/// What one connection announced.
struct Addresses {
    /// The address of its latest message.
    current: RpcAddress,
    /// Every address it announced (the first one first).
    all: Vec<RpcAddress>,
}

/// Connection id -> the addresses its peer announced. Read for every incoming message (a shared
/// lock, no allocation while the address does not change, a fast hash of the id: the keys are
/// this process's own connection ids), written when it does.
#[derive(Default)]
pub(crate) struct Announced {
    by_connection: RwLock<HashMap<u64, Addresses>>,
}

impl Announced {
    /// The address `wire` stands for when it is the one `connection` announced last.
    pub(crate) fn known(&self, connection: u64, wire: WireAddress<'_>) -> Option<RpcAddress> {
        self.by_connection
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&connection)
            .filter(|a| wire.is(&a.current))
            .map(|a| a.current.clone())
    }

    /// Records that `connection` announced `address`; true when it is the connection's first
    /// announcement (the one `Connected` is raised for).
    pub(crate) fn note(&self, connection: u64, address: &RpcAddress) -> bool {
        let mut map = self
            .by_connection
            .write()
            .unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&connection) {
            None => {
                map.insert(
                    connection,
                    Addresses {
                        current: address.clone(),
                        all: vec![address.clone()],
                    },
                );
                true
            }
            Some(known) => {
                if !known.all.contains(address) {
                    if known.all.len() < MAX_PER_CONNECTION {
                        known.all.push(address.clone());
                    } else {
                        tracing::warn!(connection, %address, "a peer announces too many listening addresses on one connection; not recorded");
                    }
                }
                known.current = address.clone();
                false
            }
        }
    }

    /// The address `connection` announced last.
    pub(crate) fn current(&self, connection: u64) -> Option<RpcAddress> {
        self.by_connection
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&connection)
            .map(|a| a.current.clone())
    }

    /// `connection` closed: forgets it, and returns the addresses announced on it that no other
    /// open connection announces (those that disconnect).
    pub(crate) fn closed(&self, connection: u64) -> Vec<RpcAddress> {
        let mut map = self
            .by_connection
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let Some(gone) = map.remove(&connection) else {
            return Vec::new();
        };
        gone.all
            .into_iter()
            .filter(|a| !map.values().any(|other| other.all.contains(a)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(address: &RpcAddress) -> WireAddress<'_> {
        WireAddress {
            host: address.host(),
            port: address.port(),
        }
    }

    /// A peer alternating its announced address: one `Connected` for the connection, one
    /// `Disconnected` per address when it closes.
    #[test]
    fn alternating_addresses_connect_once_and_disconnect_each() {
        let announced = Announced::default();
        let (x, y) = (RpcAddress::new("h", 1), RpcAddress::new("h", 2));
        let mut connected = 0;
        for i in 0..100 {
            let address = if i % 2 == 0 { &x } else { &y };
            match announced.known(7, wire(address)) {
                Some(known) => assert_eq!(&known, address),
                None => connected += usize::from(announced.note(7, address)),
            }
        }
        assert_eq!(connected, 1);
        assert_eq!(announced.current(7), Some(y.clone()));
        assert_eq!(announced.closed(7), vec![x, y]);
        assert!(announced.closed(7).is_empty(), "forgotten");
    }

    /// A connection claiming a live peer's address, then closing, does not disconnect it.
    #[test]
    fn a_claimed_address_does_not_disconnect_its_owner() {
        let announced = Announced::default();
        let (owner, own) = (1, RpcAddress::new("worker", 4000));
        let (claimer, other) = (2, RpcAddress::new("elsewhere", 5000));
        assert!(announced.note(owner, &own));
        assert!(announced.note(claimer, &other));
        assert!(!announced.note(claimer, &own));
        assert_eq!(announced.closed(claimer), vec![other]);
        // The owner's own close does disconnect it.
        assert_eq!(announced.closed(owner), vec![own]);
    }

    #[test]
    fn a_connection_records_a_bounded_number_of_addresses() {
        let announced = Announced::default();
        for port in 0..1000 {
            announced.note(3, &RpcAddress::new("h", port));
        }
        assert_eq!(announced.closed(3).len(), MAX_PER_CONNECTION);
    }
}
