//! The config file as written: a serde mirror that refuses unknown keys.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub listen: Option<String>,
    #[serde(default)]
    pub descriptor_sets: Vec<String>,
    #[serde(default)]
    pub descriptor_dirs: Vec<String>,
    #[serde(default)]
    pub protos: Vec<String>,
    #[serde(default)]
    pub proto_paths: Vec<String>,
    pub default_backend: Option<String>,
    pub default_timeout: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub shutdown_grace: Option<String>,
    pub path_unescape: Option<String>,
    pub admin_listen: Option<String>,
    pub admin_token: Option<String>,
    pub admin_max_upload_bytes: Option<u64>,
    pub state_dir: Option<String>,
    #[serde(default)]
    pub json: RawJson,
    #[serde(default)]
    pub query: RawQuery,
    #[serde(default)]
    pub headers: RawHeaders,
    #[serde(default)]
    pub errors: RawErrors,
    #[serde(default)]
    pub backends: BTreeMap<String, RawBackend>,
    #[serde(default)]
    pub services: BTreeMap<String, RawService>,
    #[serde(default)]
    pub http_rules: Vec<RawHttpRule>,
    #[serde(default)]
    pub websocket: RawWebSocket,
    pub auth: Option<crate::middleware::auth::RawAuth>,
    pub plans: Option<BTreeMap<String, crate::middleware::ratelimit::config::RawPlan>>,
    pub policies: Option<BTreeMap<String, crate::middleware::policy::RawPolicy>>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub forwarded_header: Option<String>,
    #[serde(default)]
    pub rate_limit_store: crate::middleware::ratelimit::config::RawStore,
    #[serde(default)]
    pub server: RawServer,
}

/// `[server]`: the public listener's limits, health endpoints and compression.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub max_connections: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub max_header_bytes: Option<u64>,
    pub http2_max_concurrent_streams: Option<u64>,
    pub compression: Option<bool>,
    pub compression_min_bytes: Option<u64>,
    pub health_path: Option<String>,
    pub ready_path: Option<String>,
    pub workers: Option<u64>,
    pub idle_spin: Option<String>,
}

/// `[websocket]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWebSocket {
    pub allowed_origins: Option<Vec<String>>,
    pub max_message_bytes: Option<u64>,
    pub max_streams: Option<u64>,
    pub idle_timeout: Option<String>,
    pub ping_interval: Option<String>,
}

/// `[json]` and `[services."x".json]`: every key optional, so a service overrides only some.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJson {
    pub emit_unpopulated: Option<bool>,
    pub use_proto_names: Option<bool>,
    pub enums_as_numbers: Option<bool>,
    pub unknown_fields: Option<String>,
    pub pretty: Option<bool>,
    pub other_content_types: Option<String>,
}

/// `[query]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQuery {
    pub unknown: Option<String>,
    #[serde(default)]
    pub always_ignored: Vec<String>,
    pub plus_as_space: Option<bool>,
    pub case_insensitive_enums: Option<bool>,
}

/// `[headers]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaders {
    #[serde(default)]
    pub forward: Vec<String>,
}

/// `[errors]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawErrors {
    #[serde(default)]
    pub http_status: BTreeMap<String, u16>,
}

/// `[backends.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub addresses: Vec<String>,
    pub timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub connections: Option<u64>,
    pub reflect: Option<bool>,
}

/// `[services."package.or.Service"]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    pub backend: Option<String>,
    pub timeout: Option<String>,
    pub json: Option<RawJson>,
    pub stream_framing: Option<String>,
}

/// `[[http_rules]]`: grpc-gateway's external HTTP rule configuration, one rule per entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttpRule {
    #[serde(default)]
    pub selector: String,
    pub get: Option<String>,
    pub put: Option<String>,
    pub post: Option<String>,
    pub delete: Option<String>,
    pub patch: Option<String>,
    pub custom: Option<RawCustom>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub response_body: String,
    #[serde(default)]
    pub additional_bindings: Vec<RawHttpRule>,
}

/// `custom = { kind = "HEAD", path = "/v1/x" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCustom {
    pub kind: String,
    pub path: String,
}
