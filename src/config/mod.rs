//! The config file: TOML parsed into a raw mirror that refuses unknown keys, then checked into a
//! typed [`Config`] with every error reported at once.

mod raw;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, StatusCode};

use crate::error::{code_from_name, StatusTable};
use crate::proto::google::api::{http_rule::Pattern, CustomHttpPattern, HttpRule};
use crate::routing::UnescapeMode;
use crate::transcode::bind::{BindOptions, UnknownQuery};
use crate::transcode::JsonOptions;
use raw::{RawConfig, RawHttpRule, RawJson};
pub use server::{parse_idle_spin, ServerConfig};

/// The address the gateway listens on when neither the config nor `--listen` says.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The admin listener's address when neither the config nor `--admin-listen` says.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

/// The largest upload the admin API reads when the config does not say.
pub const DEFAULT_ADMIN_MAX_UPLOAD: usize = 16 << 20;

/// Where the admin API listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    /// [`DEFAULT_ADMIN_LISTEN`]; if that address is taken the gateway runs without the admin API
    /// and says so, since nobody asked for it explicitly.
    Default,
    /// An address the operator chose; failing to bind it stops the gateway.
    At(SocketAddr),
    /// No admin listener (`"off"`).
    Off,
}

impl AdminListen {
    /// Parses `host:port` or `off`.
    pub fn parse(text: &str) -> Result<AdminListen, String> {
        if text == "off" {
            return Ok(AdminListen::Off);
        }
        text.parse()
            .map(AdminListen::At)
            .map_err(|_| format!("{text:?} is not an address like 127.0.0.1:9901, or \"off\""))
    }

    /// The address to bind, if any.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            AdminListen::Default => DEFAULT_ADMIN_LISTEN.parse().ok(),
            AdminListen::At(addr) => Some(*addr),
            AdminListen::Off => None,
        }
    }
}

/// The admin API's bearer token; its `Debug` form hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// A token, or None for an empty string (which would let anyone in).
    pub fn new(token: impl Into<String>) -> Option<AdminToken> {
        let token = token.into();
        (!token.is_empty()).then_some(AdminToken(token))
    }

    /// The secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// The admin API's settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where it listens.
    pub listen: AdminListen,
    /// The bearer token every admin request must carry; None means no check, which is only
    /// allowed on a loopback address.
    pub token: Option<AdminToken>,
    /// Where accepted uploads are kept across restarts; None keeps them in memory only.
    pub state_dir: Option<PathBuf>,
    /// The largest upload body read (413 above it).
    pub max_upload_bytes: usize,
}

/// The name of a backend in `[backends.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendName(String);

impl BackendName {
    /// A backend called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        BackendName(name.into())
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BackendName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One gRPC backend: one or more `http://` addresses behind one connection pool.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// Its addresses; calls are balanced over them.
    pub addresses: Vec<http::Uri>,
    /// The deadline for calls to it when the route and client set none.
    pub timeout: Option<Duration>,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// HTTP/2 connections kept to each address; calls are spread over them.
    pub connections: usize,
}

/// Which backend serves a service, or every service of a package.
#[derive(Debug, Clone)]
pub struct ServiceRule {
    /// A full service name (`shop.v1.Catalog`) or a package prefix (`shop.v1`, `shop`).
    pub pattern: String,
    /// The backend, or None for the default one.
    pub backend: Option<BackendName>,
    /// A deadline for its calls.
    pub timeout: Option<Duration>,
    /// JSON options for its messages.
    pub json: JsonOptions,
    /// How its streamed responses are framed when the client's Accept names no framing.
    pub stream_framing: Option<crate::stream::Framing>,
}

impl ServiceRule {
    /// Whether the rule covers `service` (a full name), by exact name or package prefix.
    pub fn covers(&self, service: &str) -> bool {
        service == self.pattern
            || (service.starts_with(&self.pattern)
                && service.as_bytes().get(self.pattern.len()) == Some(&b'.'))
    }
}

/// Where descriptors come from.
#[derive(Debug, Clone, Default)]
pub struct DescriptorInputs {
    /// Binary FileDescriptorSet files.
    pub sets: Vec<PathBuf>,
    /// Folders whose `*.pb`, `*.binpb`, `*.protoset` files are loaded.
    pub dirs: Vec<PathBuf>,
    /// .proto files compiled at startup.
    pub protos: Vec<PathBuf>,
    /// Include paths for the .proto files.
    pub proto_paths: Vec<PathBuf>,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The public listener.
    pub listen: SocketAddr,
    /// Descriptor inputs.
    pub descriptors: DescriptorInputs,
    /// Backends by name.
    pub backends: BTreeMap<BackendName, Backend>,
    /// Service → backend rules, most specific first.
    pub services: Vec<ServiceRule>,
    /// The backend of services no rule covers.
    pub default_backend: Option<BackendName>,
    /// The deadline when neither client, route nor backend sets one.
    pub default_timeout: Duration,
    /// The largest request body read.
    pub max_body_bytes: usize,
    /// The largest response message accepted from a backend.
    pub max_response_bytes: usize,
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// How path variables are decoded.
    pub path_unescape: UnescapeMode,
    /// JSON options for services no rule overrides.
    pub json: JsonOptions,
    /// Query parameter and path variable binding.
    pub query: BindOptions,
    /// Request headers forwarded to backends as they are.
    pub forward_headers: Vec<HeaderName>,
    /// gRPC code → HTTP status.
    pub status_table: StatusTable,
    /// HTTP rules for methods whose protos carry none.
    pub http_rules: Vec<HttpRule>,
    /// WebSocket limits and the Origin allow-list.
    pub websocket: WebSocketConfig,
    /// The admin API.
    pub admin: AdminConfig,
    /// The public listener's limits, health endpoints and compression (`[server]`).
    pub server: ServerConfig,
    /// Backends whose services are registered at startup through gRPC server reflection
    /// (`reflect = true`).
    pub reflect_backends: Vec<BackendName>,
    /// Authentication, rate limits and per-route policies.
    pub edge: crate::middleware::EdgeSettings,
}

/// `[websocket]`: how WebSocket streams are bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketConfig {
    /// Origins allowed to open a socket; `None` allows any (and requests without Origin).
    pub allowed_origins: Option<Vec<String>>,
    /// The largest frame a client may send; larger closes the socket with 1009.
    pub max_message_bytes: usize,
    /// Open WebSocket streams across the listener; beyond it, upgrades get a 503.
    pub max_streams: usize,
    /// A socket with no frame either way for this long is closed.
    pub idle_timeout: Duration,
    /// How often the gateway pings an open socket.
    pub ping_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        // An empty file is a valid config; its parse cannot fail.
        match Config::from_raw(RawConfig::default(), Path::new(".")) {
            Ok(config) => config,
            Err(errors) => unreachable!("the empty config is invalid: {errors}"),
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug)]
pub struct ConfigError {
    /// The file, if it came from one.
    pub file: Option<PathBuf>,
    /// One line per problem, each naming its key.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "invalid config {}:", file.display())?,
            None => write!(f, "invalid config:")?,
        }
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and checks a config file; relative paths in it are relative to its folder.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let fail = |problem: String| ConfigError {
            file: Some(path.to_owned()),
            problems: vec![problem],
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })
    }

    /// Parses and checks config text; relative paths resolve against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: None,
            problems: vec![e.to_string().trim().replace('\n', " ")],
        })?;
        Config::from_raw(raw, base)
    }

    fn from_raw(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let path = |p: &String| {
            let p = Path::new(p);
            if p.is_absolute() || base == Path::new(".") {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let default_timeout = duration(
            &mut problems,
            "default_timeout",
            &raw.default_timeout,
            Some(Duration::from_secs(30)),
        )
        .unwrap_or(Duration::from_secs(30));
        let shutdown_grace = duration(
            &mut problems,
            "shutdown_grace",
            &raw.shutdown_grace,
            Some(Duration::from_secs(10)),
        )
        .unwrap_or(Duration::from_secs(10));

        let mut backends = BTreeMap::new();
        let mut reflect_backends = Vec::new();
        for (name, backend) in &raw.backends {
            if backend.reflect == Some(true) {
                reflect_backends.push(BackendName::new(name));
            }
            let key = format!("backends.{name}");
            if backend.addresses.is_empty() {
                problems.push(format!("{key}.addresses: at least one address is needed"));
            }
            let mut addresses = Vec::new();
            for address in &backend.addresses {
                match parse_backend_uri(address) {
                    Ok(uri) => addresses.push(uri),
                    Err(e) => problems.push(format!("{key}.addresses: {e}")),
                }
            }
            let timeout = duration(
                &mut problems,
                &format!("{key}.timeout"),
                &backend.timeout,
                None,
            );
            let connect_timeout = duration(
                &mut problems,
                &format!("{key}.connect_timeout"),
                &backend.connect_timeout,
                Some(Duration::from_secs(5)),
            )
            .unwrap_or(Duration::from_secs(5));
            backends.insert(
                BackendName::new(name),
                Backend {
                    addresses,
                    timeout,
                    connect_timeout,
                    connections: match backend.connections {
                        Some(n) if n > MAX_CONNECTIONS_PER_ADDRESS => {
                            problems.push(format!(
                                "{key}.connections: at most {MAX_CONNECTIONS_PER_ADDRESS}"
                            ));
                            1
                        }
                        n => size(n, 1, &format!("{key}.connections"), &mut problems),
                    },
                },
            );
        }

        let json = merge_json(JsonOptions::default(), &raw.json, "json", &mut problems);
        // In name order a package comes before everything under it, so each rule can start from
        // the most specific rule above it and override only what it names.
        let mut services: Vec<ServiceRule> = Vec::new();
        for (pattern, service) in &raw.services {
            let key = format!("services.{pattern:?}");
            let parent = services
                .iter()
                .filter(|rule| rule.covers(pattern))
                .max_by_key(|rule| rule.pattern.len())
                .cloned();
            let backend = service.backend.as_ref().map(BackendName::new);
            if let Some(b) = &backend {
                if !backends.contains_key(b) {
                    problems.push(format!("{key}.backend: no backend named {b:?}"));
                }
            }
            let timeout = duration(
                &mut problems,
                &format!("{key}.timeout"),
                &service.timeout,
                None,
            );
            let base_json = parent
                .as_ref()
                .map_or_else(|| json.clone(), |p| p.json.clone());
            let json = match &service.json {
                Some(j) => merge_json(base_json, j, &format!("{key}.json"), &mut problems),
                None => base_json,
            };
            let stream_framing = match service.stream_framing.as_deref() {
                None => None,
                Some(name) => {
                    let framing = crate::stream::Framing::from_name(name);
                    if framing.is_none() {
                        problems.push(format!(
                            "{key}.stream_framing: {name:?} is not one of \"ndjson\", \"sse\", \"array\""
                        ));
                    }
                    framing
                }
            };
            services.push(ServiceRule {
                pattern: pattern.clone(),
                backend: backend.or_else(|| parent.as_ref().and_then(|p| p.backend.clone())),
                timeout: timeout.or_else(|| parent.as_ref().and_then(|p| p.timeout)),
                json,
                stream_framing,
            });
        }
        // Most specific first: a longer pattern is a deeper package or a service name.
        services.sort_by_key(|s| std::cmp::Reverse(s.pattern.len()));

        let default_backend = raw.default_backend.as_ref().map(BackendName::new);
        if let Some(b) = &default_backend {
            if !backends.contains_key(b) {
                problems.push(format!("default_backend: no backend named {b:?}"));
            }
        }

        let path_unescape = match raw.path_unescape.as_deref() {
            None | Some("all-except-slash") => UnescapeMode::AllExceptSlash,
            Some("all-characters") => UnescapeMode::AllCharacters,
            Some("none") => UnescapeMode::None,
            Some(other) => {
                problems.push(format!(
                    "path_unescape: {other:?} is not one of \"all-except-slash\", \"all-characters\", \"none\""
                ));
                UnescapeMode::AllExceptSlash
            }
        };

        let edge = crate::middleware::EdgeSettings::from_raw(
            crate::middleware::RawEdge {
                auth: raw.auth.as_ref(),
                plans: raw.plans.as_ref(),
                policies: raw.policies.as_ref(),
                trusted_proxies: &raw.trusted_proxies,
                forwarded_header: raw.forwarded_header.as_deref(),
                rate_limit_store: Some(&raw.rate_limit_store),
            },
            base,
            &mut problems,
        );
        let unknown = match raw.query.unknown.as_deref() {
            None | Some("ignore") => UnknownQuery::Ignore,
            // Credentials in the query are the edge's, never a field of the message.
            Some("reject") => UnknownQuery::Reject {
                always_ignored: raw
                    .query
                    .always_ignored
                    .iter()
                    .cloned()
                    .chain(edge.auth.credential_params().map(str::to_owned))
                    .collect(),
            },
            Some(other) => {
                problems.push(format!(
                    "query.unknown: {other:?} is not one of \"ignore\", \"reject\""
                ));
                UnknownQuery::Ignore
            }
        };
        let query = BindOptions {
            unknown_query: unknown,
            plus_as_space: raw.query.plus_as_space.unwrap_or(true),
            case_insensitive_enums: raw.query.case_insensitive_enums.unwrap_or(false),
        };

        let mut forward_headers = Vec::new();
        for name in &raw.headers.forward {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => forward_headers.push(h),
                Err(_) => problems.push(format!("headers.forward: {name:?} is not a header name")),
            }
        }

        let mut overrides = HashMap::new();
        for (name, status) in &raw.errors.http_status {
            let key = format!("errors.http_status.{name}");
            let code = code_from_name(name);
            let status = StatusCode::from_u16(*status)
                .ok()
                .filter(|s| s.as_u16() >= 200 && s.as_u16() <= 599);
            match (code, status) {
                (Some(code), Some(status)) => {
                    overrides.insert(code, status);
                }
                (None, _) => problems.push(format!(
                    "{key}: not a gRPC code name (use e.g. FAILED_PRECONDITION)"
                )),
                (_, None) => problems.push(format!("{key}: not an HTTP status from 200 to 599")),
            }
        }

        let mut http_rules = Vec::new();
        for (i, rule) in raw.http_rules.iter().enumerate() {
            let key = format!("http_rules[{i}]");
            if rule.selector.is_empty() {
                problems.push(format!("{key}.selector: required (the method's full name)"));
            }
            match convert_rule(rule, true) {
                Ok(r) => http_rules.push(r),
                Err(e) => problems.push(format!("{key}: {e}")),
            }
        }

        let max_body_bytes = size(raw.max_body_bytes, 4 << 20, "max_body_bytes", &mut problems);
        let max_response_bytes = size(
            raw.max_response_bytes,
            4 << 20,
            "max_response_bytes",
            &mut problems,
        );

        let ws = &raw.websocket;
        let websocket = WebSocketConfig {
            allowed_origins: ws.allowed_origins.clone(),
            max_message_bytes: size(
                ws.max_message_bytes,
                1 << 20,
                "websocket.max_message_bytes",
                &mut problems,
            ),
            max_streams: size(
                ws.max_streams,
                10_000,
                "websocket.max_streams",
                &mut problems,
            ),
            idle_timeout: ws_duration(&ws.idle_timeout, 300, "idle_timeout", &mut problems),
            ping_interval: ws_duration(&ws.ping_interval, 30, "ping_interval", &mut problems),
        };

        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = match listen_text.parse() {
            Ok(a) => a,
            Err(_) => {
                problems.push(format!(
                    "listen: {listen_text:?} is not an address like 127.0.0.1:8080"
                ));
                SocketAddr::from(([127, 0, 0, 1], 8080))
            }
        };

        let admin_listen = match raw.admin_listen.as_deref() {
            None => AdminListen::Default,
            Some(text) => AdminListen::parse(text).unwrap_or_else(|e| {
                problems.push(format!("admin_listen: {e}"));
                AdminListen::Default
            }),
        };
        let admin = AdminConfig {
            listen: admin_listen,
            token: match raw.admin_token.as_deref() {
                Some("") => {
                    problems.push("admin_token: must not be empty".to_owned());
                    None
                }
                token => token.and_then(AdminToken::new),
            },
            state_dir: raw.state_dir.as_ref().map(path),
            max_upload_bytes: size(
                raw.admin_max_upload_bytes,
                DEFAULT_ADMIN_MAX_UPLOAD,
                "admin_max_upload_bytes",
                &mut problems,
            ),
        };

        let server = ServerConfig::from_raw(&raw.server, &mut problems);

        if !problems.is_empty() {
            return Err(ConfigError {
                file: None,
                problems,
            });
        }
        Ok(Config {
            listen,
            descriptors: DescriptorInputs {
                sets: raw.descriptor_sets.iter().map(path).collect(),
                dirs: raw.descriptor_dirs.iter().map(path).collect(),
                protos: raw.protos.iter().map(path).collect(),
                proto_paths: raw.proto_paths.iter().map(path).collect(),
            },
            backends,
            services,
            default_backend,
            default_timeout,
            max_body_bytes,
            max_response_bytes,
            shutdown_grace,
            path_unescape,
            json,
            query,
            forward_headers,
            status_table: StatusTable::with_overrides(overrides),
            http_rules,
            websocket,
            admin,
            server,
            reflect_backends,
            edge,
        })
    }

    /// Makes `url` the default backend, as `--upstream URL` does.
    pub fn set_upstream(&mut self, url: &str) -> Result<(), String> {
        let uri = parse_backend_uri(url)?;
        let name = BackendName::new("default");
        self.backends.insert(
            name.clone(),
            Backend {
                addresses: vec![uri],
                timeout: None,
                connect_timeout: Duration::from_secs(5),
                connections: 1,
            },
        );
        self.default_backend = Some(name);
        Ok(())
    }

    /// The rule covering a service, the most specific one.
    pub fn service_rule(&self, service: &str) -> Option<&ServiceRule> {
        self.services.iter().find(|rule| rule.covers(service))
    }
}

fn duration(
    problems: &mut Vec<String>,
    key: &str,
    text: &Option<String>,
    default: Option<Duration>,
) -> Option<Duration> {
    match text {
        None => default,
        Some(t) => match humantime::parse_duration(t) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(format!(
                    "{key}: {e} (got {t:?}; write e.g. \"5s\" or \"250ms\")"
                ));
                default
            }
        },
    }
}

/// More connections per address than this buys nothing but memory.
const MAX_CONNECTIONS_PER_ADDRESS: u64 = 64;

fn size(value: Option<u64>, default: usize, key: &str, problems: &mut Vec<String>) -> usize {
    match value {
        None => default,
        Some(0) => {
            problems.push(format!("{key}: must be greater than 0"));
            default
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    }
}

fn parse_backend_uri(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("{text:?} is not a URL like http://127.0.0.1:50051"))?;
    match uri.scheme_str() {
        Some("http") if uri.authority().is_some() => Ok(uri),
        _ => Err(format!(
            "{text:?}: only http:// addresses with a host are supported"
        )),
    }
}

fn merge_json(
    mut base: JsonOptions,
    raw: &RawJson,
    key: &str,
    problems: &mut Vec<String>,
) -> JsonOptions {
    if let Some(v) = raw.emit_unpopulated {
        base.emit_unpopulated = v;
    }
    if let Some(v) = raw.use_proto_names {
        base.use_proto_names = v;
    }
    if let Some(v) = raw.enums_as_numbers {
        base.enums_as_numbers = v;
    }
    if let Some(v) = raw.pretty {
        base.pretty = v;
    }
    match raw.unknown_fields.as_deref() {
        None => {}
        Some("ignore") => base.reject_unknown_fields = false,
        Some("reject") => base.reject_unknown_fields = true,
        Some(other) => problems.push(format!(
            "{key}.unknown_fields: {other:?} is not one of \"ignore\", \"reject\""
        )),
    }
    match raw.other_content_types.as_deref() {
        None => {}
        Some("reject") => base.other_content_types_as_json = false,
        Some("json") => base.other_content_types_as_json = true,
        Some(other) => problems.push(format!(
            "{key}.other_content_types: {other:?} is not one of \"reject\", \"json\""
        )),
    }
    base
}

fn convert_rule(raw: &RawHttpRule, top: bool) -> Result<HttpRule, String> {
    let mut patterns = Vec::new();
    if let Some(p) = &raw.get {
        patterns.push(Pattern::Get(p.clone()));
    }
    if let Some(p) = &raw.put {
        patterns.push(Pattern::Put(p.clone()));
    }
    if let Some(p) = &raw.post {
        patterns.push(Pattern::Post(p.clone()));
    }
    if let Some(p) = &raw.delete {
        patterns.push(Pattern::Delete(p.clone()));
    }
    if let Some(p) = &raw.patch {
        patterns.push(Pattern::Patch(p.clone()));
    }
    if let Some(c) = &raw.custom {
        patterns.push(Pattern::Custom(CustomHttpPattern {
            kind: c.kind.clone(),
            path: c.path.clone(),
        }));
    }
    if patterns.len() != 1 {
        return Err("exactly one of get, put, post, delete, patch, custom is needed".to_owned());
    }
    if !top && !raw.additional_bindings.is_empty() {
        return Err("additional_bindings must not nest".to_owned());
    }
    let additional_bindings = raw
        .additional_bindings
        .iter()
        .map(|r| convert_rule(r, false))
        .collect::<Result<_, _>>()?;
    Ok(HttpRule {
        selector: raw.selector.clone(),
        pattern: patterns.pop(),
        body: raw.body.clone(),
        response_body: raw.response_body.clone(),
        additional_bindings,
    })
}

fn ws_duration(
    text: &Option<String>,
    default_secs: u64,
    key: &str,
    problems: &mut Vec<String>,
) -> Duration {
    let Some(text) = text else {
        return Duration::from_secs(default_secs);
    };
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            problems.push(format!(
                "websocket.{key}: {text:?} is not a duration like 30s"
            ));
            Duration::from_secs(default_secs)
        }
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    #[test]
    fn empty_config_has_grpc_gateway_defaults() {
        let config = Config::from_toml("", Path::new(".")).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert!(config.json.emit_unpopulated);
        assert!(!config.json.reject_unknown_fields);
        assert_eq!(config.query.unknown_query, UnknownQuery::Ignore);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[json]\nemit_unpopulatd = true\n", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("emit_unpopulatd"), "{err}");
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let text = r#"
            default_timeout = "soon"
            default_backend = "ghost"
            path_unescape = "sometimes"
            [backends.a]
            addresses = ["ftp://x"]
            [errors.http_status]
            FAILED_PRECONDITION = 999
            NOT_A_CODE = 400
        "#;
        let err = Config::from_toml(text, Path::new(".")).unwrap_err();
        let all = err.to_string();
        for key in [
            "default_timeout",
            "default_backend",
            "path_unescape",
            "backends.a.addresses",
            "errors.http_status.FAILED_PRECONDITION",
            "errors.http_status.NOT_A_CODE",
        ] {
            assert!(all.contains(key), "{key} missing from: {all}");
        }
    }

    #[test]
    fn services_match_by_name_or_package_prefix_most_specific_first() {
        let text = r#"
            [backends.a]
            addresses = ["http://127.0.0.1:1"]
            [backends.b]
            addresses = ["http://127.0.0.1:2"]
            [services."shop"]
            backend = "a"
            [services."shop.v1.Orders"]
            backend = "b"
        "#;
        let config = Config::from_toml(text, Path::new(".")).unwrap();
        let backend = |s: &str| {
            config
                .service_rule(s)
                .and_then(|r| r.backend.clone())
                .map(|b| b.to_string())
        };
        assert_eq!(backend("shop.v1.Orders").as_deref(), Some("b"));
        assert_eq!(backend("shop.v1.Catalog").as_deref(), Some("a"));
        assert_eq!(backend("shopping.Cart"), None);
    }

    #[test]
    fn a_service_rule_inherits_what_it_does_not_name_from_its_package() {
        let text = r#"
            [backends.a]
            addresses = ["http://127.0.0.1:1"]
            [services."shop"]
            backend = "a"
            timeout = "3s"
            json = { pretty = true }
            [services."shop.v1.Catalog"]
            timeout = "1s"
            json = { use_proto_names = true }
        "#;
        let config = Config::from_toml(text, Path::new(".")).unwrap();
        let rule = config.service_rule("shop.v1.Catalog").unwrap();
        assert_eq!(rule.backend.as_ref().map(|b| b.as_str()), Some("a"));
        assert_eq!(rule.timeout, Some(Duration::from_secs(1)));
        assert!(rule.json.pretty && rule.json.use_proto_names);
        let other = config.service_rule("shop.v1.Orders").unwrap();
        assert_eq!(other.timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn admin_keys() {
        let config = Config::from_toml("", Path::new("/etc/pg")).unwrap();
        assert_eq!(config.admin.listen, AdminListen::Default);
        assert_eq!(
            config.admin.listen.addr().map(|a| a.to_string()).as_deref(),
            Some(DEFAULT_ADMIN_LISTEN)
        );
        assert!(config.admin.token.is_none() && config.admin.state_dir.is_none());
        let text = r#"
            admin_listen = "off"
            admin_token = "s3cret"
            state_dir = "state"
            admin_max_upload_bytes = 1024
            [backends.a]
            addresses = ["http://127.0.0.1:1"]
            reflect = true
        "#;
        let config = Config::from_toml(text, Path::new("/etc/pg")).unwrap();
        assert_eq!(config.admin.listen, AdminListen::Off);
        assert_eq!(
            config.admin.token.as_ref().map(|t| t.expose()),
            Some("s3cret")
        );
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "the token is never printed"
        );
        assert_eq!(config.admin.state_dir, Some(PathBuf::from("/etc/pg/state")));
        assert_eq!(config.admin.max_upload_bytes, 1024);
        assert_eq!(config.reflect_backends, [BackendName::new("a")]);
        let err = Config::from_toml("admin_listen = \"nowhere\"\n", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin_listen"), "{err}");
    }

    #[test]
    fn http_rules_need_one_pattern() {
        let text = r#"
            [[http_rules]]
            selector = "a.B.C"
            get = "/x"
            post = "/y"
        "#;
        let err = Config::from_toml(text, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("http_rules[0]"), "{err}");
    }

    #[test]
    fn per_service_json_overrides_only_what_it_names() {
        let text = r#"
            [json]
            pretty = true
            [services."a"]
            json = { use_proto_names = true }
        "#;
        let config = Config::from_toml(text, Path::new(".")).unwrap();
        let rule = config.service_rule("a.S").unwrap();
        assert!(rule.json.pretty && rule.json.use_proto_names);
        assert!(!config.json.use_proto_names);
    }
}
