//! One shared HTTP/2 connection pool (a tonic Channel) per configured backend.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::transport::{Channel, Endpoint};

use crate::config::{Backend, BackendName, Config};

/// A backend's channel with the definition it was made from.
#[derive(Debug, Clone)]
pub struct BackendChannel {
    /// Its name in the config.
    pub name: BackendName,
    /// Cheap to clone; every clone shares the same connections.
    pub channel: Channel,
    /// Its definition, compared on reload so unchanged backends keep their warm connections.
    pub definition: Backend,
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
            let backend = reused.unwrap_or_else(|| {
                Arc::new(BackendChannel {
                    name: name.clone(),
                    channel: connect(definition),
                    definition: definition.clone(),
                })
            });
            by_name.insert(name.clone(), backend);
        }
        Backends { by_name }
    }

    /// The backend called `name`.
    pub fn get(&self, name: &BackendName) -> Option<&Arc<BackendChannel>> {
        self.by_name.get(name)
    }
}

fn connect(definition: &Backend) -> Channel {
    let endpoints = definition.addresses.iter().map(|uri| {
        Endpoint::from(uri.clone())
            .connect_timeout(definition.connect_timeout)
            .tcp_nodelay(true)
    });
    let mut endpoints: Vec<Endpoint> = endpoints.collect();
    if endpoints.len() == 1 {
        if let Some(endpoint) = endpoints.pop() {
            return endpoint.connect_lazy();
        }
    }
    Channel::balance_list(endpoints.into_iter())
}
