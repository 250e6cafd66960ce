//! One shared HTTP/2 connection per address of each configured backend, with calls spread over the
//! addresses round-robin and an address that refuses connections skipped for a while.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use crate::config::{Backend, BackendName, Config};

/// How long an address that refused a connection is passed over.
const DOWN_FOR: Duration = Duration::from_secs(2);

/// One address of a backend: its connections, used in turn.
#[derive(Debug)]
struct Address {
    channels: Vec<Channel>,
    next: AtomicUsize,
    /// Milliseconds since `BackendChannel::epoch` until which the address is passed over.
    down_until_ms: AtomicU64,
}

impl Address {
    /// The next of its connections.
    fn channel(&self) -> &Channel {
        let n = self.channels.len();
        let i = if n > 1 {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        } else {
            0
        };
        &self.channels[i]
    }
}

/// A backend's connections with the definition they were made from.
#[derive(Debug)]
pub struct BackendChannel {
    /// Its name in the config.
    pub name: BackendName,
    /// Its definition, compared on reload so unchanged backends keep their warm connections.
    pub definition: Backend,
    addresses: Vec<Address>,
    next: AtomicUsize,
    epoch: Instant,
}

impl BackendChannel {
    fn new(name: BackendName, definition: Backend) -> BackendChannel {
        let addresses = definition
            .addresses
            .iter()
            .map(|uri| Address {
                // Each lazy channel makes its own HTTP/2 connection: more than one lifts a
                // backend's limit on concurrent streams per connection.
                channels: (0..definition.connections.max(1))
                    .map(|_| {
                        Endpoint::from(uri.clone())
                            .connect_timeout(definition.connect_timeout)
                            .tcp_nodelay(true)
                            .connect_lazy()
                    })
                    .collect(),
                next: AtomicUsize::new(0),
                down_until_ms: AtomicU64::new(0),
            })
            .collect();
        BackendChannel {
            name,
            definition,
            addresses,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    /// How many addresses it has.
    pub fn len(&self) -> usize {
        self.addresses.len()
    }

    /// Whether it has no address (never true of a checked config).
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }

    /// The addresses to try for one call, in order: round-robin from the next one, those not
    /// marked down first, so a call still goes somewhere when every address is down.
    pub fn candidates(&self) -> impl Iterator<Item = (usize, &Channel)> + '_ {
        let n = self.addresses.len();
        let start = if n > 1 {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        } else {
            0
        };
        let now = self.now_ms();
        let order = (0..n).map(move |k| (start + k) % n);
        let up = order
            .clone()
            .filter(move |&i| self.addresses[i].down_until_ms.load(Ordering::Relaxed) <= now);
        let down =
            order.filter(move |&i| self.addresses[i].down_until_ms.load(Ordering::Relaxed) > now);
        up.chain(down).map(|i| (i, self.addresses[i].channel()))
    }

    /// Passes over address `i` for a while: it refused a connection.
    pub fn mark_down(&self, i: usize) {
        if let Some(address) = self.addresses.get(i) {
            let until = self.now_ms() + DOWN_FOR.as_millis() as u64;
            address.down_until_ms.store(until, Ordering::Relaxed);
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// All backends of a snapshot.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    by_name: BTreeMap<BackendName, Arc<BackendChannel>>,
}

impl Backends {
    /// Channels for every backend of `config`, reusing those of `previous` whose definition is
    /// unchanged. Connections are made lazily, so a backend that is down does not stop startup.
    /// Must run inside a tokio runtime.
    pub fn build(config: &Config, previous: Option<&Backends>) -> Backends {
        let mut by_name = BTreeMap::new();
        for (name, definition) in &config.backends {
            let reused = previous
                .and_then(|p| p.by_name.get(name))
                .filter(|b| &b.definition == definition)
                .cloned();
            let backend = reused
                .unwrap_or_else(|| Arc::new(BackendChannel::new(name.clone(), definition.clone())));
            by_name.insert(name.clone(), backend);
        }
        Backends { by_name }
    }

    /// The backend called `name`.
    pub fn get(&self, name: &BackendName) -> Option<&Arc<BackendChannel>> {
        self.by_name.get(name)
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    #[tokio::test]
    async fn calls_take_an_address_s_connections_in_turn() {
        let config = Config::from_toml(
            r#"
            [backends.pooled]
            addresses = ["http://127.0.0.1:9", "http://127.0.0.1:10"]
            connections = 3
            "#,
            std::path::Path::new("."),
        )
        .unwrap();
        let backends = Backends::build(&config, None);
        let backend = backends.get(&BackendName::new("pooled")).unwrap();
        assert_eq!(backend.len(), 2);
        assert!(backend.addresses.iter().all(|a| a.channels.len() == 3));
        // Each address hands out its connections round-robin.
        let address = &backend.addresses[0];
        let picks: Vec<*const Channel> = (0..6)
            .map(|_| address.channel() as *const Channel)
            .collect();
        assert_eq!(picks[0], picks[3]);
        assert_ne!(picks[0], picks[1]);
        assert_ne!(picks[1], picks[2]);
    }

    #[test]
    fn connection_counts_are_checked() {
        for (value, problem) in [("0", "must be greater than 0"), ("65", "at most 64")] {
            let err = Config::from_toml(
                &format!(
                    "[backends.b]\naddresses = [\"http://127.0.0.1:9\"]\nconnections = {value}"
                ),
                std::path::Path::new("."),
            )
            .unwrap_err();
            assert!(err.to_string().contains(problem), "{value}: {err}");
        }
    }
}
