//! The immutable state behind every request (descriptors, routes, backends, options) and the
//! store that swaps it whole.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use prost_reflect::MethodDescriptor;

use crate::config::Config;
use crate::descriptors::{
    self, DescriptorError, HttpBinding, Registry, RegistryBuilder, RuleOrigin,
};
use crate::routing::{MatchOptions, PathTemplate, RouteTable, RouteTableBuilder};
use crate::transcode::{RequestPlan, ResponsePlan};
use crate::upstream::{BackendChannel, Backends};

/// The gRPC call shape of a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStreaming,
    /// A stream of requests, one response.
    ClientStreaming,
    /// Streams both ways.
    Bidi,
}

impl CallKind {
    fn of(method: &MethodDescriptor) -> CallKind {
        match (method.is_client_streaming(), method.is_server_streaming()) {
            (false, false) => CallKind::Unary,
            (false, true) => CallKind::ServerStreaming,
            (true, false) => CallKind::ClientStreaming,
            (true, true) => CallKind::Bidi,
        }
    }
}

/// One HTTP binding of a gRPC method, resolved and ready to serve.
#[derive(Debug)]
pub struct Route {
    /// The path template, for logs and metrics (never the raw path).
    pub template: Box<str>,
    /// The gRPC method.
    pub method: MethodDescriptor,
    /// `/package.Service/Method`.
    pub grpc_path: PathAndQuery,
    /// Its call shape.
    pub kind: CallKind,
    /// How the request message is built.
    pub request: RequestPlan,
    /// How the response is rendered.
    pub response: ResponsePlan,
    /// The backend serving it, if any is configured.
    pub backend: Option<Arc<BackendChannel>>,
    /// The configured deadline (service rule, else backend, else default).
    pub timeout: Duration,
    /// Where the binding was declared.
    pub origin: RuleOrigin,
}

/// A problem that stops a snapshot from being built; the running one stays.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Descriptors did not load.
    #[error(transparent)]
    Descriptors(#[from] DescriptorError),
    /// An HTTP rule is unusable.
    #[error(transparent)]
    Rule(#[from] descriptors::RuleError),
    /// A binding does not fit its method.
    #[error("{binding}: {reason}")]
    Binding {
        /// The binding, described.
        binding: String,
        /// What is wrong.
        reason: String,
    },
}

/// Everything a request needs, built once and never changed.
#[derive(Debug)]
pub struct Snapshot {
    /// The descriptors.
    pub registry: Registry,
    /// The route table.
    pub routes: RouteTable<Arc<Route>>,
    /// The backends' channels.
    pub backends: Backends,
    /// The configuration it was built from.
    pub config: Arc<Config>,
    /// Things worth an operator's attention that did not stop the build (duplicate routes,
    /// services with no backend).
    pub warnings: Vec<String>,
}

impl Snapshot {
    /// Loads the descriptors the config names, then builds the snapshot.
    pub fn load(
        config: Arc<Config>,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, SnapshotError> {
        let registry = load_registry(&config)?;
        Snapshot::build(config, registry, previous)
    }

    /// Builds routes and backends over a registry; channels of unchanged backends are taken from
    /// `previous`. Must run inside a tokio runtime.
    pub fn build(
        config: Arc<Config>,
        registry: Registry,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, SnapshotError> {
        let backends = Backends::build(&config, previous.map(|p| &p.backends));
        let bindings = descriptors::bindings(&registry, &config.http_rules)?;
        let mut table = RouteTableBuilder::new(MatchOptions {
            unescape: config.path_unescape,
        });
        let mut warnings = Vec::new();
        let mut unbacked = std::collections::BTreeSet::new();
        let mut described = Vec::with_capacity(bindings.len());
        for binding in bindings {
            let template =
                PathTemplate::parse(&binding.path).map_err(|e| SnapshotError::Binding {
                    binding: binding.describe(),
                    reason: e.to_string(),
                })?;
            let route = build_route(&config, &backends, &binding, &template)?;
            if route.backend.is_none() {
                unbacked.insert(binding.method.parent_service().full_name().to_owned());
            }
            described.push(binding.describe());
            if let Err(dup) = table.insert(binding.http_method.clone(), &template, Arc::new(route))
            {
                let first = described
                    .get(dup.existing().index())
                    .cloned()
                    .unwrap_or_default();
                let warning = format!(
                    "duplicate route: {} matches exactly the same requests as {first}; the first declared wins",
                    binding.describe()
                );
                tracing::warn!("{warning}");
                warnings.push(warning);
                described.pop();
            }
        }
        for service in unbacked {
            let warning = format!(
                "no backend for service {service}: set default_backend, --upstream, or a [services] rule"
            );
            tracing::warn!("{warning}");
            warnings.push(warning);
        }
        Ok(Snapshot {
            registry,
            routes: table.build(),
            backends,
            config,
            warnings,
        })
    }
}

/// Loads every descriptor input of the config into one registry.
pub fn load_registry(config: &Config) -> Result<Registry, DescriptorError> {
    let mut builder = RegistryBuilder::new();
    for dir in &config.descriptors.dirs {
        builder.add_set_dir(dir)?;
    }
    for set in &config.descriptors.sets {
        builder.add_set_file(set)?;
    }
    builder.add_protos(&config.descriptors.protos, &config.descriptors.proto_paths)?;
    builder.build()
}

fn build_route(
    config: &Config,
    backends: &Backends,
    binding: &HttpBinding,
    template: &PathTemplate,
) -> Result<Route, SnapshotError> {
    let method = &binding.method;
    let service = method.parent_service();
    let rule = config.service_rule(service.full_name());
    let json = rule.map_or_else(|| config.json.clone(), |r| r.json.clone());
    let backend_name = rule
        .and_then(|r| r.backend.clone())
        .or_else(|| config.default_backend.clone());
    let backend = backend_name.and_then(|name| backends.get(&name).cloned());
    let timeout = rule
        .and_then(|r| r.timeout)
        .or_else(|| backend.as_ref().and_then(|b| b.definition.timeout))
        .unwrap_or(config.default_timeout);
    let fail = |reason: String| SnapshotError::Binding {
        binding: binding.describe(),
        reason,
    };
    let variables: Vec<&str> = template
        .variables()
        .iter()
        .map(|v| v.field_path().as_str())
        .collect();
    let request = RequestPlan::new(
        method.input(),
        &binding.http_method,
        &binding.body,
        &variables,
        json.clone(),
        config.query.clone(),
    )
    .map_err(|e| fail(e.to_string()))?;
    let response =
        ResponsePlan::new(method.output(), &binding.response_body, json).map_err(fail)?;
    let grpc_path = PathAndQuery::try_from(format!("/{}/{}", service.full_name(), method.name()))
        .map_err(|e| fail(format!("method name is not a valid path: {e}")))?;
    Ok(Route {
        template: binding.path.clone().into_boxed_str(),
        method: method.clone(),
        grpc_path,
        kind: CallKind::of(method),
        request,
        response,
        backend,
        timeout,
        origin: binding.origin,
    })
}

/// The current snapshot, swapped whole; readers hold the `Arc` they loaded until they finish.
#[derive(Debug)]
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    /// Every stream's counters and going-away signal; they outlive snapshot swaps.
    streams: crate::stream::Streams,
}

impl SnapshotStore {
    /// A store holding `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        SnapshotStore {
            current: ArcSwap::from_pointee(snapshot),
            streams: crate::stream::Streams::default(),
        }
    }

    /// The current snapshot; one load per request.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The streams served from this store.
    pub fn streams(&self) -> &crate::stream::Streams {
        &self.streams
    }

    /// Publishes a new snapshot; requests already running keep the old one.
    pub fn publish(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}

impl Snapshot {
    /// The route table as text, one route a line, in declaration order.
    pub fn describe_routes(&self) -> String {
        let mut out = String::new();
        for (method, template, route) in self.routes.iter() {
            let origin = route.origin.as_str();
            let backend = route
                .backend
                .as_ref()
                .map_or("<none>".to_owned(), |b| b.name.to_string());
            out.push_str(&format!(
                "{:<7} {:<50} -> {} [{origin}, backend {backend}]\n",
                method.as_str(),
                template.to_string(),
                route.method.full_name()
            ));
        }
        out
    }
}
