//! Shared set-up: a real mirror (or demo shop) backend and the real gateway on ephemeral loopback
#![allow(dead_code)] // Each test module uses part of the harness.
//! ports, and a real HTTP client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use protogate::config::Config;
use protogate::demo::{self, MirrorStats};
use protogate::descriptors::{Registry, RegistryBuilder};
use protogate::server;
use protogate::snapshot::{Snapshot, SnapshotStore};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The repository root, from which test protos are found.
pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The test protos compiled at runtime, as `--proto protos/test/v1/echo.proto --proto-path protos`.
pub(crate) fn test_registry() -> Registry {
    let mut builder = RegistryBuilder::new();
    builder
        .add_protos(
            &[repo().join("protos/test/v1/echo.proto")],
            &[repo().join("protos")],
        )
        .expect("test protos compile");
    builder.build().expect("test registry builds")
}

/// A running gateway and its backend; both stop when this is dropped.
pub(crate) struct Gateway {
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    /// A plain HTTP client.
    pub(crate) client: reqwest::Client,
    /// The mirror's counters (None for the shop).
    pub(crate) mirror: Option<Arc<MirrorStats>>,
    /// The backend's address.
    pub(crate) backend: std::net::SocketAddr,
    /// The snapshot store, for tests that look at the route table.
    pub(crate) store: Arc<SnapshotStore>,
    _stop: watch::Sender<()>,
}

impl Gateway {
    /// The test protos behind a mirror backend, with extra config TOML (may be empty).
    pub(crate) async fn mirror(config_toml: &str) -> Gateway {
        let registry = test_registry();
        let (stop, stopped) = watch::channel(());
        let (addr, stats) = demo::start_mirror(registry.pool().clone(), stopped.clone())
            .await
            .expect("mirror starts");
        let mut config = Config::from_toml(config_toml, Path::new(".")).expect("test config");
        config
            .set_upstream(&format!("http://{addr}"))
            .expect("upstream url");
        Self::serve(config, registry, stop, stopped, Some(stats), addr).await
    }

    /// The demo shop behind the gateway, as `protogate demo` runs it.
    pub(crate) async fn shop() -> Gateway {
        let (stop, stopped) = watch::channel(());
        let addrs = demo::start_shop(stopped.clone())
            .await
            .expect("shop starts");
        let config = demo::shop_config(&addrs, Config::default());
        let registry = demo::shop_registry().expect("shop descriptors");
        Self::serve(config, registry, stop, stopped, None, addrs.catalog).await
    }

    /// The gateway over `registry` and `config`, whatever backend the config names.
    pub(crate) async fn with(config: Config, registry: Registry) -> Gateway {
        let (stop, stopped) = watch::channel(());
        let addr = "127.0.0.1:9".parse().expect("addr");
        Self::serve(config, registry, stop, stopped, None, addr).await
    }

    async fn serve(
        config: Config,
        registry: Registry,
        stop: watch::Sender<()>,
        mut stopped: watch::Receiver<()>,
        mirror: Option<Arc<MirrorStats>>,
        backend: std::net::SocketAddr,
    ) -> Gateway {
        let snapshot = Snapshot::build(Arc::new(config), registry, None).expect("snapshot builds");
        let store = Arc::new(SnapshotStore::new(snapshot));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let serving = store.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.changed().await;
            };
            let _ = server::run(listener, serving, shutdown).await;
        });
        Gateway {
            base,
            client: reqwest::Client::new(),
            mirror,
            backend,
            store,
            _stop: stop,
        }
    }

    /// `base` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET and parse the JSON body; returns (status, body).
    pub(crate) async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request");
        read(resp).await
    }

    /// Send `method` with a JSON text body; returns (status, body).
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = self
            .client
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("request");
        read(resp).await
    }
}

/// Status and JSON body of a response (Null when the body is not JSON).
pub(crate) async fn read(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// A response kept whole: status, headers and the body's bytes.
#[derive(Debug)]
pub(crate) struct Exchange {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: bytes::Bytes,
}

impl Exchange {
    /// The Content-Type header, or "" when there is none.
    pub(crate) fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (Null when it is not).
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Gateway {
    /// Sends `method path` with the given headers and body, whatever its format.
    pub(crate) async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> Exchange {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, self.url(path)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let resp = request.send().await.expect("request");
        Exchange {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().await.expect("body"),
        }
    }
}

/// What an [`AdminGateway`] starts from.
pub(crate) struct AdminSetup {
    pub(crate) config: Config,
    /// The startup descriptors (`RegistryBuilder::new()` for none).
    pub(crate) startup: RegistryBuilder,
    pub(crate) token: Option<String>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) max_upload_bytes: usize,
    /// How `POST /admin/v1/reload` reads the config again.
    pub(crate) loader: Option<protogate::admin::ConfigLoader>,
}

impl AdminSetup {
    /// No startup descriptors, no token, no state folder, the default upload bound.
    pub(crate) fn new(config: Config) -> AdminSetup {
        AdminSetup {
            config,
            startup: RegistryBuilder::new(),
            token: None,
            state_dir: None,
            max_upload_bytes: protogate::config::DEFAULT_ADMIN_MAX_UPLOAD,
            loader: None,
        }
    }
}

/// The gateway and the admin API over one live registry, each on its own ephemeral loopback
/// port; both stop when this is dropped.
pub(crate) struct AdminGateway {
    /// The public side.
    pub(crate) gateway: Gateway,
    /// `http://127.0.0.1:PORT` of the admin API.
    pub(crate) admin: String,
    pub(crate) token: Option<String>,
    pub(crate) live: Arc<protogate::admin::LiveRegistry>,
}

impl AdminGateway {
    pub(crate) async fn start(setup: AdminSetup) -> AdminGateway {
        use protogate::admin::{self, Admin, LiveRegistry, StateDir};
        use protogate::snapshot::SnapshotInputs;

        let state = setup
            .state_dir
            .map(|dir| StateDir::open(&dir).expect("state folder"));
        let uploads = state
            .as_ref()
            .map(|s| s.load().expect("saved sets load"))
            .unwrap_or_default();
        let inputs = SnapshotInputs {
            config: Arc::new(setup.config),
            startup: setup.startup,
            uploads,
        };
        let live =
            Arc::new(LiveRegistry::start(inputs, state, setup.loader).expect("first snapshot"));
        let (stop, stopped) = watch::channel(());
        let on_stop = |mut stopped: watch::Receiver<()>| async move {
            let _ = stopped.changed().await;
        };

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let serving = live.store().clone();
        let shutdown = on_stop(stopped.clone());
        tokio::spawn(async move {
            let _ = server::run(listener, serving, shutdown).await;
        });

        let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = format!("http://{}", admin_listener.local_addr().expect("addr"));
        let api = Arc::new(Admin::new(
            live.clone(),
            setup
                .token
                .clone()
                .and_then(protogate::config::AdminToken::new),
            setup.max_upload_bytes,
        ));
        let shutdown = on_stop(stopped);
        tokio::spawn(async move {
            let _ = admin::serve(admin_listener, api, shutdown).await;
        });

        AdminGateway {
            gateway: Gateway {
                base,
                client: reqwest::Client::new(),
                mirror: None,
                backend: "127.0.0.1:9".parse().expect("addr"),
                store: live.store().clone(),
                _stop: stop,
            },
            admin,
            token: setup.token,
            live,
        }
    }

    /// A request to the admin API, with the bearer token when there is one.
    pub(crate) fn admin_request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let request = self
            .gateway
            .client
            .request(method, format!("{}{path}", self.admin));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}
