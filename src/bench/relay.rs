//! Scenario h's relay (`protogate bench-relay`, run by the bench in its own process): the floor
//! of the gateway's own stack. hyper's HTTP/1.1 server with the gateway's settings, on the
//! gateway's worker threads with their idle spin, relaying each request to the backend as one
//! unary call over the worker's own h2 connection, with nothing of the gateway in between: no
//! routing, edge, transcoding, metadata, deadline, metrics or compression. What scenario b costs
//! above it is protogate's own request handling.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::{TcpListener, TcpStream};
use tonic::metadata::MetadataMap;

use crate::config::ServerConfig;
use crate::server::spin::{self, IdleSpin};
use crate::server::workers::{self, Workers};
use crate::upstream::{Connection, Outgoing};

/// The one method every request is relayed to.
const ECHO: &str = "/bench.v1.BenchService/Echo";

/// The largest answer read back, as the gateway's default.
const MAX_RESPONSE: usize = 4 << 20;

/// Serves the relay on 127.0.0.1 with `workers` worker threads (None or 0: one per core)
/// spinning for `idle_spin` (None: the gateway's default), relaying to `backend`. Prints
/// `listening on http://ADDR` as the gateway does, then serves until the process ends.
pub async fn serve(
    backend: SocketAddr,
    workers: Option<usize>,
    idle_spin: Option<Duration>,
) -> Result<(), String> {
    let config = ServerConfig::default();
    let count = workers
        .filter(|n| *n > 0)
        .unwrap_or_else(workers::default_count);
    let spin = IdleSpin::new(idle_spin.unwrap_or(config.idle_spin), Default::default());
    let workers = Workers::start(count, spin).map_err(|e| format!("relay workers: {e}"))?;
    let uri: http::Uri = format!("http://{backend}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    // Each worker calls the backend over its own connection, as the gateway's do.
    let upstreams: Arc<Vec<Connection>> = Arc::new(
        (0..count)
            .map(|_| Connection::new(&uri, Duration::from_secs(5)))
            .collect(),
    );
    let message = Bytes::from(super::small().encode_to_vec());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("relay listener: {e}"))?;
    let addr = listener.local_addr().map_err(|e| format!("{e}"))?;
    println!("listening on http://{addr}");
    let builder = Arc::new(crate::server::connection_builder(&config));
    loop {
        let (tcp, _) = listener
            .accept()
            .await
            .map_err(|e| format!("relay accept: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let Ok(tcp) = tcp.into_std() else { continue };
        let (builder, upstreams, message) = (builder.clone(), upstreams.clone(), message.clone());
        workers.spawn(async move {
            let Ok(tcp) = TcpStream::from_std(tcp) else {
                return;
            };
            let service = service_fn(move |request| {
                let (upstreams, message) = (upstreams.clone(), message.clone());
                async move {
                    Ok::<_, std::convert::Infallible>(relay(request, &upstreams, message).await)
                }
            });
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// One request: its body read to the end and not looked at, the same `Small` message sent to the
/// backend, the answer's message bytes sent back.
async fn relay(
    request: Request<Incoming>,
    upstreams: &[Connection],
    message: Bytes,
) -> Response<Full<Bytes>> {
    spin::busy();
    let answer = |status: StatusCode, body: Bytes| {
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response
    };
    if request.into_body().collect().await.is_err() {
        return answer(StatusCode::BAD_REQUEST, Bytes::new());
    }
    let worker = workers::current().map_or(0, |w| w.index);
    let Some(upstream) = upstreams.get(worker) else {
        return answer(StatusCode::INTERNAL_SERVER_ERROR, Bytes::new());
    };
    let path = PathAndQuery::from_static(ECHO);
    let reply = upstream
        .unary(
            &path,
            MetadataMap::new(),
            Outgoing::Encoded(message),
            None,
            MAX_RESPONSE,
        )
        .await;
    spin::busy();
    match reply {
        Ok(reply) => answer(StatusCode::OK, reply.message),
        Err(_) => answer(StatusCode::BAD_GATEWAY, Bytes::new()),
    }
}
