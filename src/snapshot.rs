//! The immutable state behind every request (descriptors, routes, backends, options) and the
//! store that swaps it whole.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::PathAndQuery;
use prost_reflect::MethodDescriptor;

use crate::config::{Backend, BackendName, Config, ServiceRule};
use crate::descriptors::{
    self, DescriptorError, HttpBinding, Registry, RegistryBuilder, RuleOrigin,
};
use crate::middleware::policy::Policy;
use crate::middleware::Edge;
use crate::routing::{MatchOptions, PathTemplate, RouteTable, RouteTableBuilder};
use crate::transcode::{RequestPlan, ResponsePlan};
use crate::uploads::{SetBinding, SetName, Uploads};
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
    pub template: Arc<str>,
    /// The gRPC method.
    pub method: MethodDescriptor,
    /// The method's full name, made once for the metrics' labels.
    pub method_name: Arc<str>,
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
    /// The uploaded set its method came from; None for the startup inputs.
    pub set: Option<SetName>,
    /// What callers of it must present and may do (auth, rate limits, CORS, header rules).
    pub policy: Arc<Policy>,
}

impl Route {
    /// The backend serving the route, or the 503 that says none is configured for its service.
    pub fn require_backend(&self) -> Result<&Arc<BackendChannel>, crate::error::GatewayError> {
        self.backend.as_ref().ok_or_else(|| {
            crate::error::GatewayError::new(
                crate::error::ErrorKind::Unavailable,
                format!(
                    "no backend is configured for {}",
                    self.method.parent_service().full_name()
                ),
            )
        })
    }
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
    /// Two routes of different sets (or of a set and the startup inputs) match exactly the same
    /// requests. Inside one set, or inside the startup inputs, that is only a warning.
    #[error("route conflict: {new} matches exactly the same requests as {existing}")]
    RouteConflict {
        /// The route loaded first, described with where it came from.
        existing: String,
        /// The route that collided with it.
        new: String,
    },
    /// A set is bound to a backend the config does not define.
    #[error("set {set:?} is bound to backend {backend:?}, which the config does not define")]
    UnknownBackend {
        /// The set.
        set: String,
        /// The backend it names.
        backend: String,
    },
    /// A set's own backend (`upstream=`) has the name of one the config defines.
    #[error("set {set:?} needs a backend called {backend:?}, which the config already defines")]
    BackendTaken {
        /// The set.
        set: String,
        /// The backend name.
        backend: String,
    },
    /// Two sets bind one service to different backends.
    #[error("service {service} is bound to backend {first_backend:?} by set {first:?} and to {second_backend:?} by set {second:?}")]
    BindingConflict {
        /// The service.
        service: String,
        /// The set bound first.
        first: String,
        /// Its backend.
        first_backend: String,
        /// The other set.
        second: String,
        /// Its backend.
        second_backend: String,
    },
}

/// What a snapshot is built from: the config, the startup descriptor inputs it names (read from
/// disk once per start or reload, not on every upload), and the uploaded sets.
#[derive(Debug, Clone)]
pub struct SnapshotInputs {
    /// The configuration as loaded, before upload bindings are added to it.
    pub config: Arc<Config>,
    /// The startup descriptors, not yet built into a pool.
    pub startup: RegistryBuilder,
    /// The uploaded sets, merged after the startup descriptors.
    pub uploads: Uploads,
}

impl SnapshotInputs {
    /// Reads every descriptor input the config names.
    pub fn load(config: Arc<Config>, uploads: Uploads) -> Result<SnapshotInputs, DescriptorError> {
        let startup = startup_builder(&config)?;
        Ok(SnapshotInputs {
            config,
            startup,
            uploads,
        })
    }

    /// The same inputs with other uploads.
    pub fn with_uploads(&self, uploads: Uploads) -> SnapshotInputs {
        SnapshotInputs {
            config: self.config.clone(),
            startup: self.startup.clone(),
            uploads,
        }
    }
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
    /// The uploaded sets merged into it.
    pub uploads: Uploads,
    /// Authentication, rate limits and policies, made live.
    pub edge: Edge,
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

    /// Builds a snapshot from the startup descriptors plus every uploaded set; the config gets
    /// the backends and service rules the sets are bound to. Any conflict between sets refuses
    /// the whole snapshot. Must run inside a tokio runtime.
    pub fn assemble(
        inputs: &SnapshotInputs,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, SnapshotError> {
        let mut builder = inputs.startup.clone();
        for set in inputs.uploads.iter() {
            builder.add_set_bytes(set.source(), &set.bytes)?;
        }
        let registry = builder.build()?;
        let config = bind_uploads(&inputs.config, &inputs.uploads)?;
        Snapshot::build_with(config, registry, inputs.uploads.clone(), previous)
    }

    /// Builds routes and backends over a registry; channels of unchanged backends are taken from
    /// `previous`. Must run inside a tokio runtime.
    pub fn build(
        config: Arc<Config>,
        registry: Registry,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, SnapshotError> {
        Snapshot::build_with(config, registry, Uploads::new(), previous)
    }

    fn build_with(
        config: Arc<Config>,
        registry: Registry,
        uploads: Uploads,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, SnapshotError> {
        let backends = Backends::build(&config, previous.map(|p| &p.backends));
        let edge = Edge::new(&config.edge, previous.map(|p| &p.edge));
        // Which uploaded set each file came from, by the source name its files carry.
        let set_sources: HashMap<String, SetName> = uploads
            .iter()
            .map(|set| (set.source().to_string(), set.name.clone()))
            .collect();
        let set_of = |method: &MethodDescriptor| {
            registry
                .source_of(method.parent_file().name())
                .and_then(|source| set_sources.get(&source.to_string()))
                .cloned()
        };
        let bindings = descriptors::bindings(&registry, &config.http_rules)?;
        let mut table = RouteTableBuilder::new(MatchOptions {
            unescape: config.path_unescape,
        });
        let mut warnings = Vec::new();
        let mut unbacked = std::collections::BTreeSet::new();
        let mut described = Vec::with_capacity(bindings.len());
        // The set of each route in the table, by insertion index (as `described`).
        let mut route_sets: Vec<Option<SetName>> = Vec::with_capacity(bindings.len());
        for binding in bindings {
            let template =
                PathTemplate::parse(&binding.path).map_err(|e| SnapshotError::Binding {
                    binding: binding.describe(),
                    reason: e.to_string(),
                })?;
            let set = set_of(&binding.method);
            let route = build_route(&config, &backends, &binding, &template, set.clone())?;
            if route.backend.is_none() {
                unbacked.insert(binding.method.parent_service().full_name().to_owned());
            }
            described.push(binding.describe());
            route_sets.push(set.clone());
            if let Err(dup) = table.insert(binding.http_method.clone(), &template, Arc::new(route))
            {
                let first = described
                    .get(dup.existing().index())
                    .cloned()
                    .unwrap_or_default();
                let first_set = route_sets.get(dup.existing().index()).cloned().flatten();
                // Duplicates inside one load keep the old behaviour (first wins, a warning); a
                // route that would shadow, or be shadowed by, another set's is refused.
                if first_set != set {
                    return Err(SnapshotError::RouteConflict {
                        existing: format!("{first} from {}", describe_set(first_set.as_ref())),
                        new: format!("{} from {}", binding.describe(), describe_set(set.as_ref())),
                    });
                }
                let warning = format!(
                    "duplicate route: {} matches exactly the same requests as {first}; the first declared wins",
                    binding.describe()
                );
                tracing::warn!("{warning}");
                warnings.push(warning);
                described.pop();
                route_sets.pop();
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
            uploads,
            edge,
        })
    }
}

fn describe_set(set: Option<&SetName>) -> String {
    match set {
        Some(name) => format!("set {:?}", name.as_str()),
        None => "the startup descriptors".to_owned(),
    }
}

/// Loads every descriptor input of the config into one registry.
pub fn load_registry(config: &Config) -> Result<Registry, DescriptorError> {
    startup_builder(config)?.build()
}

/// Reads every descriptor input of the config, without building the pool yet.
pub fn startup_builder(config: &Config) -> Result<RegistryBuilder, DescriptorError> {
    let mut builder = RegistryBuilder::new();
    for dir in &config.descriptors.dirs {
        builder.add_set_dir(dir)?;
    }
    for set in &config.descriptors.sets {
        builder.add_set_file(set)?;
    }
    builder.add_protos(&config.descriptors.protos, &config.descriptors.proto_paths)?;
    Ok(builder)
}

/// The config with the backends and service rules of bound sets added: an `upstream=` set gets a
/// backend of its own, and each service of a bound set an exact-name rule for its backend that
/// keeps the timeout and JSON options the config's rules give it.
fn bind_uploads(config: &Arc<Config>, uploads: &Uploads) -> Result<Arc<Config>, SnapshotError> {
    if uploads.iter().all(|set| set.binding.is_none()) {
        return Ok(config.clone());
    }
    let mut bound = Config::clone(config);
    let mut bound_by: HashMap<&str, (&SetName, BackendName)> = HashMap::new();
    for set in uploads.iter() {
        let Some(binding) = &set.binding else {
            continue;
        };
        let backend = binding.backend_name(&set.name);
        match binding {
            SetBinding::Backend(name) if !config.backends.contains_key(name) => {
                return Err(SnapshotError::UnknownBackend {
                    set: set.name.to_string(),
                    backend: name.to_string(),
                });
            }
            SetBinding::Backend(_) => {}
            SetBinding::Upstream(uri) => {
                if config.backends.contains_key(&backend) {
                    return Err(SnapshotError::BackendTaken {
                        set: set.name.to_string(),
                        backend: backend.to_string(),
                    });
                }
                bound.backends.insert(
                    backend.clone(),
                    Backend {
                        addresses: vec![uri.clone()],
                        timeout: None,
                        connect_timeout: Duration::from_secs(5),
                        connections: 1,
                    },
                );
            }
        }
        for service in &set.services {
            if let Some((first, first_backend)) = bound_by.get(service.as_str()) {
                if *first_backend != backend {
                    return Err(SnapshotError::BindingConflict {
                        service: service.clone(),
                        first: first.to_string(),
                        first_backend: first_backend.to_string(),
                        second: set.name.to_string(),
                        second_backend: backend.to_string(),
                    });
                }
                continue;
            }
            bound_by.insert(service, (&set.name, backend.clone()));
            let base = config.service_rule(service);
            let rule = ServiceRule {
                pattern: service.clone(),
                backend: Some(backend.clone()),
                timeout: base.and_then(|r| r.timeout),
                json: base.map_or_else(|| config.json.clone(), |r| r.json.clone()),
                stream_framing: base.and_then(|r| r.stream_framing),
            };
            bound.services.retain(|r| r.pattern != *service);
            bound.services.push(rule);
        }
    }
    // Most specific first, as the config keeps them.
    bound
        .services
        .sort_by_key(|rule| std::cmp::Reverse(rule.pattern.len()));
    Ok(Arc::new(bound))
}

fn build_route(
    config: &Config,
    backends: &Backends,
    binding: &HttpBinding,
    template: &PathTemplate,
    set: Option<SetName>,
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
        template: Arc::from(binding.path.as_str()),
        method: method.clone(),
        method_name: Arc::from(method.full_name()),
        grpc_path,
        kind: CallKind::of(method),
        request,
        response,
        backend,
        timeout,
        origin: binding.origin,
        set,
        policy: config.edge.policies.for_method(method.full_name()).clone(),
    })
}

/// The current snapshot, swapped whole; readers hold the `Arc` they loaded until they finish.
#[derive(Debug)]
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    /// Every stream's counters and going-away signal; they outlive snapshot swaps.
    streams: crate::stream::Streams,
    /// The Prometheus metrics; like the stream counters, they outlive snapshot swaps.
    metrics: crate::telemetry::Metrics,
}

impl SnapshotStore {
    /// A store holding `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        let streams = crate::stream::Streams::default();
        let metrics = crate::telemetry::Metrics::new(streams.stats().clone());
        SnapshotStore {
            current: ArcSwap::from_pointee(snapshot),
            streams,
            metrics,
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

    /// The metrics of requests served from this store.
    pub fn metrics(&self) -> &crate::telemetry::Metrics {
        &self.metrics
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

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use std::time::SystemTime;

    use super::*;
    use crate::descriptors::{bundled_set, compile_sources};
    use crate::uploads::UploadedSet;

    fn set(name: &str, file: &str, proto: &str, binding: Option<SetBinding>) -> UploadedSet {
        let bytes = compile_sources(&[(file.to_owned(), proto.to_owned())], bundled_set())
            .expect("test proto compiles");
        UploadedSet::new(
            SetName::parse(name).expect("name"),
            bytes.into(),
            binding,
            SystemTime::UNIX_EPOCH,
        )
        .expect("set")
    }

    fn service(package: &str, path: &str) -> String {
        format!(
            r#"syntax = "proto3";
            package {package};
            import "google/api/annotations.proto";
            message M {{ string id = 1; string key = 2; string n = 3; }}
            service S {{
              rpc Get(M) returns (M) {{ option (google.api.http) = {{get: "{path}"}}; }}
              rpc Again(M) returns (M) {{ option (google.api.http) = {{get: "{path}"}}; }}
            }}"#
        )
    }

    fn inputs(uploads: Vec<UploadedSet>) -> SnapshotInputs {
        SnapshotInputs {
            config: Arc::new(Config::default()),
            startup: RegistryBuilder::new(),
            uploads: uploads.into_iter().collect(),
        }
    }

    #[test]
    fn a_duplicate_inside_one_set_warns_and_the_first_wins() {
        let a = set("a", "a.proto", &service("a", "/v1/x/{id}"), None);
        let snapshot = Snapshot::assemble(&inputs(vec![a]), None).unwrap();
        assert!(
            snapshot
                .warnings
                .iter()
                .any(|w| w.starts_with("duplicate route") && w.contains("a.S.Again")),
            "{:?}",
            snapshot.warnings
        );
        let route = snapshot
            .routes
            .iter()
            .find(|(_, t, _)| t.to_string() == "/v1/x/{id}");
        let (_, _, route) = route.expect("the route is served");
        assert_eq!(route.method.full_name(), "a.S.Get");
        assert_eq!(route.set.as_ref().map(SetName::as_str), Some("a"));
    }

    #[test]
    fn a_route_of_another_set_is_a_conflict_naming_both() {
        let a = set("a", "a.proto", &service("a", "/v1/x/{id}"), None);
        let b = set("b", "b.proto", &service("b", "/v1/x/{key}"), None);
        let err = Snapshot::assemble(&inputs(vec![a, b]), None).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, SnapshotError::RouteConflict { .. }), "{text}");
        for part in ["/v1/x/{id}", "/v1/x/{key}", "set \"a\"", "set \"b\""] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
    }

    #[test]
    fn a_set_cannot_shadow_a_startup_route() {
        let mut startup = RegistryBuilder::new();
        let bytes = compile_sources(
            &[("base.proto".to_owned(), service("base", "/v1/x/{id}"))],
            bundled_set(),
        )
        .unwrap();
        startup
            .add_set_bytes(crate::descriptors::SourceName::new("base.binpb"), &bytes)
            .unwrap();
        let mut with_set = inputs(vec![set("a", "a.proto", &service("a", "/v1/x/{n}"), None)]);
        with_set.startup = startup.clone();
        let err = Snapshot::assemble(&with_set, None).unwrap_err().to_string();
        assert!(
            err.contains("the startup descriptors") && err.contains("set \"a\""),
            "{err}"
        );
        // The startup inputs alone keep today's behaviour: a warning.
        let alone = Snapshot::assemble(&with_set.with_uploads(Uploads::new()), None).unwrap();
        assert!(alone
            .warnings
            .iter()
            .any(|w| w.starts_with("duplicate route")));
    }

    #[tokio::test]
    async fn bindings_add_rules_and_backends() {
        let text = r#"
            [backends.shop]
            addresses = ["http://127.0.0.1:1"]
        "#;
        let config = Arc::new(Config::from_toml(text, std::path::Path::new(".")).unwrap());
        let a = set(
            "a",
            "a.proto",
            &service("a", "/v1/a/{id}"),
            Some(SetBinding::Backend(BackendName::new("shop"))),
        );
        let b = set(
            "b",
            "b.proto",
            &service("b", "/v1/b/{id}"),
            Some(SetBinding::Upstream("http://127.0.0.1:2".parse().unwrap())),
        );
        let mut both = inputs(vec![a.clone(), b]);
        both.config = config.clone();
        let snapshot = Snapshot::assemble(&both, None).unwrap();
        let backend_of = |path: &str| {
            snapshot
                .routes
                .iter()
                .find(|(_, t, _)| t.to_string() == path)
                .and_then(|(_, _, r)| r.backend.as_ref().map(|b| b.name.to_string()))
        };
        assert_eq!(backend_of("/v1/a/{id}").as_deref(), Some("shop"));
        assert_eq!(backend_of("/v1/b/{id}").as_deref(), Some("upload:b"));
        assert!(snapshot.config.service_rule("a.S").is_some());
        assert!(
            config.service_rule("a.S").is_none(),
            "the base config is untouched"
        );

        let ghost = set(
            "g",
            "g.proto",
            &service("g", "/v1/g/{id}"),
            Some(SetBinding::Backend(BackendName::new("ghost"))),
        );
        let mut bad = inputs(vec![ghost]);
        bad.config = config.clone();
        let err = Snapshot::assemble(&bad, None).unwrap_err();
        assert!(matches!(err, SnapshotError::UnknownBackend { .. }), "{err}");

        // The same file in two sets, bound to different backends.
        let twin = set(
            "twin",
            "a.proto",
            &service("a", "/v1/a/{id}"),
            Some(SetBinding::Upstream("http://127.0.0.1:3".parse().unwrap())),
        );
        let mut clash = inputs(vec![a, twin]);
        clash.config = config;
        let err = Snapshot::assemble(&clash, None).unwrap_err();
        assert!(
            matches!(err, SnapshotError::BindingConflict { .. }),
            "{err}"
        );
    }
}
