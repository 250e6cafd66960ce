//! One shared HTTP/2 connection per address of each configured backend, with calls spread over the
//! addresses round-robin and an address that refuses connections skipped for a while.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use super::connection::Connection;
use crate::config::{Backend, BackendName, Config};
use crate::server::workers::{self, Worker};

/// How long an address that refused a connection is passed over.
const DOWN_FOR: Duration = Duration::from_secs(2);

/// One address of a backend: its connections, used in turn.
#[derive(Debug)]
pub struct Address {
    endpoint: Endpoint,
    count: usize,
    /// Connections for calls made off the request workers (and with `server.workers = 0`).
    shared: OnceLock<Pool>,
    /// Each request worker's own connections, made on its first call: a connection's task runs
    /// on the runtime that made it, so a worker's calls never leave its thread.
    per_worker: OnceLock<Box<[WorkerSlot]>>,
    next: AtomicUsize,
    /// Milliseconds since `BackendChannel::epoch` until which the address is passed over.
    down_until_ms: AtomicU64,
}

/// One worker's pool, with the serial of the worker that made it.
type WorkerSlot = OnceLock<(u64, Pool)>;

/// The connections of one address for one runtime: h2 ones for unary calls, tonic channels for
/// streams. Both connect lazily.
#[derive(Debug)]
struct Pool {
    unary: Vec<Connection>,
    channels: Vec<Channel>,
}

impl Pool {
    /// `count` connections of each kind to `endpoint`, each its own HTTP/2 connection: more
    /// than one lifts a backend's limit on concurrent streams per connection. Must run inside a
    /// tokio runtime, whose tasks then carry the connections.
    fn new(endpoint: &Endpoint, count: usize) -> Pool {
        let timeout = endpoint
            .get_connect_timeout()
            .unwrap_or(Duration::from_secs(5));
        Pool {
            unary: (0..count.max(1))
                .map(|_| Connection::new(endpoint.uri(), timeout))
                .collect(),
            channels: (0..count.max(1))
                .map(|_| endpoint.clone().connect_lazy())
                .collect(),
        }
    }
}

impl Address {
    fn new(endpoint: Endpoint, count: usize) -> Address {
        Address {
            endpoint,
            count: count.max(1),
            shared: OnceLock::new(),
            per_worker: OnceLock::new(),
            next: AtomicUsize::new(0),
            down_until_ms: AtomicU64::new(0),
        }
    }

    /// The next of its stream channels, the current worker's own when on one.
    pub fn channel(&self) -> &Channel {
        let channels = &self.pool().channels;
        &channels[self.turn(channels.len())]
    }

    /// The next of its unary connections, the current worker's own when on one.
    pub fn unary(&self) -> &Connection {
        let unary = &self.pool().unary;
        &unary[self.turn(unary.len())]
    }

    fn turn(&self, n: usize) -> usize {
        if n > 1 {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        } else {
            0
        }
    }

    fn pool(&self) -> &Pool {
        workers::current()
            .and_then(|worker| self.worker_pool(worker))
            .unwrap_or_else(|| {
                self.shared
                    .get_or_init(|| Pool::new(&self.endpoint, self.count))
            })
    }

    /// `worker`'s connections, made now if it has none; None if its slot belongs to a worker of
    /// another set (two gateways in one process sharing a snapshot).
    fn worker_pool(&self, worker: Worker) -> Option<&Pool> {
        let slots = self
            .per_worker
            .get_or_init(|| (0..worker.count).map(|_| OnceLock::new()).collect());
        let (serial, pool) = slots
            .get(worker.index)?
            .get_or_init(|| (worker.serial, Pool::new(&self.endpoint, self.count)));
        (*serial == worker.serial).then_some(pool)
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
            .map(|uri| {
                let endpoint = Endpoint::from(uri.clone())
                    .connect_timeout(definition.connect_timeout)
                    .tcp_nodelay(true);
                Address::new(endpoint, definition.connections)
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
    pub fn candidates(&self) -> impl Iterator<Item = (usize, &Address)> + '_ {
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
        up.chain(down).map(|i| (i, &self.addresses[i]))
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
        assert!(backend
            .addresses
            .iter()
            .all(|a| a.pool().channels.len() == 3 && a.pool().unary.len() == 3));
        // Each address hands out its connections round-robin.
        let address = &backend.addresses[0];
        let picks: Vec<*const Channel> = (0..6)
            .map(|_| address.channel() as *const Channel)
            .collect();
        assert_eq!(picks[0], picks[3]);
        assert_ne!(picks[0], picks[1]);
        assert_ne!(picks[1], picks[2]);
    }

    #[tokio::test]
    async fn each_request_worker_calls_on_connections_of_its_own() {
        let config = Config::from_toml(
            "[backends.b]\naddresses = [\"http://127.0.0.1:9\"]\nconnections = 2",
            std::path::Path::new("."),
        )
        .unwrap();
        let backends = Backends::build(&config, None);
        let backend = backends.get(&BackendName::new("b")).unwrap().clone();
        let shared: Vec<usize> = backend.addresses[0]
            .pool()
            .channels
            .iter()
            .map(|c| c as *const Channel as usize)
            .collect();
        let workers = crate::server::workers::Workers::start(2, Default::default()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..8 {
            let (backend, tx) = (backend.clone(), tx.clone());
            workers.spawn(async move {
                let (_, address) = backend.candidates().next().unwrap();
                let channel = address.channel();
                let index = workers::current().unwrap().index;
                let _ = tx.send((index, channel as *const Channel as usize));
            });
        }
        let picks: Vec<(usize, usize)> = (0..8).map(|_| rx.recv().unwrap()).collect();
        let of = |worker: usize| -> std::collections::BTreeSet<usize> {
            picks
                .iter()
                .filter(|p| p.0 == worker)
                .map(|p| p.1)
                .collect()
        };
        // Each worker takes its own two connections in turn; none is another's or the shared.
        assert_eq!(of(0).len(), 2);
        assert_eq!(of(1).len(), 2);
        assert!(of(0).is_disjoint(&of(1)));
        assert!(picks.iter().all(|p| !shared.contains(&p.1)));
        // Off the workers, calls use the shared connections.
        let (_, address) = backend.candidates().next().unwrap();
        let channel = address.channel();
        assert!(shared.contains(&(channel as *const Channel as usize)));
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
