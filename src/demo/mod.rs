//! The bundled example services: the demo shop behind `protogate demo`, and a mirror backend for
//! tests and benchmarks. All are real tonic servers on loopback ports.

mod bench_service;
mod mirror;
mod shop;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use bench_service::BenchEcho;
pub use mirror::{control, Mirror, MirrorStats};
pub use shop::{Catalog, Orders, Users};

use crate::config::{Backend, BackendName, Config, ServiceRule};
use crate::descriptors::{DescriptorError, Registry, RegistryBuilder, SourceName};
use crate::proto::shop::v1::{
    catalog_service_server::CatalogServiceServer, order_service_server::OrderServiceServer,
    user_service_server::UserServiceServer,
};

/// The demo shop's descriptor set, as committed in `descriptors/shop.binpb`; regenerate it with
/// `cargo run -- compile protos/shop/v1/*.proto -I protos -o descriptors/shop.binpb`.
pub static SHOP_DESCRIPTORS: &[u8] = include_bytes!("../../descriptors/shop.binpb");

/// Where the demo shop's services listen.
#[derive(Debug, Clone, Copy)]
pub struct ShopAddrs {
    /// shop.v1.CatalogService.
    pub catalog: SocketAddr,
    /// shop.v1.OrderService.
    pub orders: SocketAddr,
    /// shop.v1.UserService.
    pub users: SocketAddr,
}

/// Starts the three shop services on ephemeral loopback ports; they stop when `shutdown` changes
/// or is dropped.
pub async fn start_shop(shutdown: watch::Receiver<()>) -> std::io::Result<ShopAddrs> {
    let catalog = Catalog::default();
    let orders = Orders::new(catalog.products());
    let users = Users::default();
    let bind = || TcpListener::bind("127.0.0.1:0");
    let (l1, l2, l3) = (bind().await?, bind().await?, bind().await?);
    let addrs = ShopAddrs {
        catalog: l1.local_addr()?,
        orders: l2.local_addr()?,
        users: l3.local_addr()?,
    };
    spawn_server(l1, CatalogServiceServer::new(catalog), shutdown.clone());
    spawn_server(l2, OrderServiceServer::new(orders), shutdown.clone());
    spawn_server(l3, UserServiceServer::new(users), shutdown);
    Ok(addrs)
}

fn spawn_server<S>(listener: TcpListener, service: S, mut shutdown: watch::Receiver<()>)
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    tokio::spawn(async move {
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        // Room for many open streams on one connection (hyper's default is 200), so the
        // gateway's one channel per backend can hold the bench's idle WebSocket calls.
        if let Err(err) = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(20_000))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop)
            .await
        {
            tracing::error!("demo service stopped: {err}");
        }
    });
}

/// The benchmark service's descriptor set (bench/v1/bench.proto with its imports).
pub static BENCH_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bench.binpb"));

/// Starts the benchmark echo service on an ephemeral loopback port.
pub async fn start_bench_backend(shutdown: watch::Receiver<()>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    spawn_server(
        listener,
        crate::proto::bench::v1::bench_service_server::BenchServiceServer::new(BenchEcho),
        shutdown,
    );
    Ok(addr)
}

/// Starts a mirror backend for every service of `pool` on an ephemeral loopback port.
pub async fn start_mirror(
    pool: prost_reflect::DescriptorPool,
    mut shutdown: watch::Receiver<()>,
) -> std::io::Result<(SocketAddr, Arc<MirrorStats>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mirror = Mirror::new(pool);
    let stats = mirror.stats();
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(err) = mirror.serve(listener, stop).await {
            tracing::error!("mirror stopped: {err}");
        }
    });
    Ok((addr, stats))
}

/// The demo shop's registry, from the committed descriptor set.
pub fn shop_registry() -> Result<Registry, DescriptorError> {
    let mut builder = RegistryBuilder::new();
    builder.add_set_bytes(SourceName::new("descriptors/shop.binpb"), SHOP_DESCRIPTORS)?;
    builder.build()
}

/// A config that sends each shop service to its own backend.
pub fn shop_config(addrs: &ShopAddrs, mut config: Config) -> Config {
    for (service, name, addr) in [
        ("shop.v1.CatalogService", "catalog", addrs.catalog),
        ("shop.v1.OrderService", "orders", addrs.orders),
        ("shop.v1.UserService", "users", addrs.users),
    ] {
        let backend = BackendName::new(name);
        if let Ok(uri) = format!("http://{addr}").parse() {
            config.backends.insert(
                backend.clone(),
                Backend {
                    addresses: vec![uri],
                    timeout: None,
                    connect_timeout: std::time::Duration::from_secs(2),
                    connections: 1,
                },
            );
        }
        config.services.push(ServiceRule {
            pattern: service.to_owned(),
            backend: Some(backend),
            timeout: None,
            json: config.json.clone(),
            stream_framing: None,
        });
    }
    config
}

/// The API key the demo accepts for its orders.
pub const DEMO_API_KEY: &str = "demo-key";

/// The demo's edge settings: orders need the API key [`DEMO_API_KEY`], whose "free" plan allows
/// 5 requests a minute; the catalog and users stay public.
pub fn edge_config_toml() -> String {
    format!(
        r#"
[auth]
api_keys = [{{ name = "demo", sha256 = "{hash}", plan = "free" }}]

[plans.free]
limits = [{{ requests = 5, per = "1m" }}]

[policies."shop.v1.OrderService"]
auth = "api_key"
rate_limits = [{{ key = "caller", plan = true }}]
"#,
        hash = crate::middleware::auth::api_key::sha256_hex(DEMO_API_KEY),
    )
}

/// What `protogate demo` prints: the curl commands that work against it.
pub fn instructions(listen: SocketAddr) -> String {
    let base = format!("http://{listen}");
    let key = DEMO_API_KEY;
    format!(
        r#"protogate demo: the shop's catalog, orders and users services run on loopback, with the
gateway in front of them at {base}. Try:

  curl {base}/v1/products
  curl '{base}/v1/products?category=CATEGORY_BOOKS'
  curl {base}/v1/products/p1
  curl -H 'Accept: application/xml' {base}/v1/products/p1   # the same answer in XML
  curl -i {base}/v1/products/nope                     # 404 with google.rpc details
  curl -X POST {base}/v1/products -H 'Content-Type: application/json' -d '{{"name": "Tea", "priceCents": 450, "currency": "EUR"}}'
  curl -X POST {base}/v1/products -H 'Content-Type: application/xml' -d '<Product><name>Coffee</name><priceCents>300</priceCents><currency>EUR</currency></Product>'
  curl -X PATCH {base}/v1/products/p1 -H 'Content-Type: application/json' -d '{{"priceCents": 3499}}'   # update_mask from the body

Orders need the API key {key} (plan "free": 5 requests a minute, then 429 with Retry-After):

  curl -i {base}/v1/users/u1/orders                   # 401: no key
  curl -X POST {base}/v1/users/u1/orders -H 'x-api-key: {key}' -H 'Content-Type: application/json' -d '{{"items": [{{"productId": "p1", "quantity": 2}}]}}'
  curl -i {base}/v1/users/u1/orders -H 'x-api-key: {key}'   # RateLimit-* headers
  curl -X POST {base}/v1/orders/o1:cancel -H 'x-api-key: {key}' -H 'Content-Type: application/json' -d '{{}}'
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}}\n' -H 'x-api-key: {key}' {base}/v1/users/u1/orders; done
  curl -N {base}/v1/products/p1:watch                 # server streaming, one JSON line per update
  curl -X POST {base}/shop.v1.UserService/GetUser -H 'Content-Type: application/json' -d '{{"id": "u1"}}'

Stop with Ctrl-C."#
    )
}
