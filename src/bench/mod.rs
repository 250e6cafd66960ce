//! The end-to-end load bench (`protogate bench`): a real tonic backend, the gateway in its own
//! process, and a load generator, all on 127.0.0.1, with every scenario at the same concurrency in
//! one run so the figures can be quoted as ratios to direct gRPC.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::demo;
pub use relay::serve as serve_relay;

mod relay;
use crate::proto::bench::v1::{bench_service_client::BenchServiceClient, Small};

/// How long and how hard to drive each scenario.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Concurrency levels; every scenario runs at each.
    pub concurrency: Vec<usize>,
    /// Measured time per scenario.
    pub duration: Duration,
    /// Unmeasured time before each scenario.
    pub warmup: Duration,
    /// A bound on requests per scenario, whatever the duration.
    pub max_requests: usize,
    /// Idle WebSockets to hold open for the memory figure (0 skips it).
    pub ws_idle: usize,
    /// Times every scenario runs at each concurrency, each time right after direct gRPC; the
    /// report gives medians.
    pub rounds: usize,
    /// Request worker threads of the gateway process; None: its default, one per core.
    pub gateway_workers: Option<usize>,
    /// The gateway process's idle spin; None: its default.
    pub gateway_idle_spin: Option<Duration>,
}

/// One scenario's figures.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Scenario name.
    pub name: &'static str,
    /// Concurrency it ran at.
    pub concurrency: usize,
    /// Completed requests.
    pub requests: usize,
    /// Failed requests (non-200 or transport error).
    pub errors: usize,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles in microseconds: p50, p99, p99.9.
    pub latency_us: [u64; 3],
    /// Gateway CPU time per request in microseconds (None for direct gRPC).
    pub gateway_cpu_us: Option<f64>,
}

/// Runs the whole bench and returns the report as text.
pub async fn run(options: BenchOptions) -> Result<String, String> {
    let (_stop, stopped) = tokio::sync::watch::channel(());
    let backend = demo::start_bench_backend(stopped)
        .await
        .map_err(|e| format!("bench backend: {e}"))?;
    let spin = options.gateway_idle_spin;
    let gateway = ServerProcess::start(backend, None, &options, spin).await?;
    // The same gateway with the whole edge at work, for scenario f.
    let edged = ServerProcess::start(backend, Some(&edge_config()), &options, spin).await?;
    // And one that sleeps as soon as it is idle, for scenario g.
    let sleeper = ServerProcess::start(backend, None, &options, Some(Duration::ZERO)).await?;
    // And the gateway's stack with none of the gateway, for scenario h.
    let relay = ServerProcess::relay(backend, &options).await?;
    let http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http::<Full<Bytes>>();
    let grpc = BenchServiceClient::connect(format!("http://{backend}"))
        .await
        .map_err(|e| format!("connecting to the bench backend: {e}"))?;

    let admin = gateway.admin.ok_or("the gateway has no admin API")?;
    let swap_set = synthetic_set(SWAP_SERVICES)?;
    let mut out = String::new();
    out.push_str(&format!(
        "protogate load bench: backend {backend}, gateway pid {} at {}; {} s per scenario after {} s warm-up\n",
        gateway.pid,
        gateway.addr,
        options.duration.as_secs_f64(),
        options.warmup.as_secs_f64()
    ));
    let small_json =
        Bytes::from(serde_json::to_vec(&small()).map_err(|e| format!("bench body: {e}"))?);
    let post = Rest::new(
        http::Method::POST,
        gateway.addr,
        "/v1/echo",
        small_json.clone(),
    )?;
    let get = Rest::new(
        http::Method::GET,
        gateway.addr,
        "/v1/echo/widget?count=42&total=123456789&active=true&score=98.5",
        Bytes::new(),
    )?;
    let post_sleeping = Rest::new(
        http::Method::POST,
        sleeper.addr,
        "/v1/echo",
        small_json.clone(),
    )?;
    let post_relay = Rest::new(
        http::Method::POST,
        relay.addr,
        "/v1/echo",
        small_json.clone(),
    )?;
    let post_edge = Rest {
        headers: EDGE_HEADERS,
        ..Rest::new(http::Method::POST, edged.addr, "/v1/echo", small_json)?
    };

    for &concurrency in &options.concurrency {
        let mut rounds = Vec::with_capacity(options.rounds.max(1));
        let mut swaps = Swaps(Vec::new());
        let load = Load {
            concurrency,
            options: &options,
            http: &http,
        };
        for _ in 0..options.rounds.max(1) {
            let direct = {
                let grpc = grpc.clone();
                drive("a) gRPC direct", concurrency, &options, None, move || {
                    let mut client = grpc.clone();
                    async move { client.echo(small()).await.is_ok() }
                })
                .await
            };
            let post_figures = load.drive("b) REST POST JSON", &gateway, &post).await;
            let sleeping = load
                .drive("g) POST, no idle spin", &sleeper, &post_sleeping)
                .await;
            let floor = load
                .drive("h) floor: hyper→h2 relay", &relay, &post_relay)
                .await;
            let get_figures = load.drive("c) REST GET path+query", &gateway, &get).await;
            let edge = load.drive("f) POST + full edge", &edged, &post_edge).await;
            // The same GETs while the admin API swaps a 1,000-service set in every SWAP_EVERY.
            let swapping = Swapper::start(http.clone(), admin, swap_set.clone());
            let during = load.drive("e) GET during swaps", &gateway, &get).await;
            let swapped = swapping.stop().await;
            swaps.0.extend(swapped.0);
            rounds.push(vec![
                direct,
                post_figures,
                sleeping,
                floor,
                get_figures,
                during,
                edge,
            ]);
        }
        out.push_str(&format!("\nconcurrency {concurrency}\n"));
        out.push_str(&table(&rounds));
        out.push_str(&swaps.describe());
    }
    out.push_str(&bidi_scenario(&grpc, gateway.addr, &options).await);
    if options.ws_idle > 0 {
        out.push_str(&idle_sockets(&grpc, &gateway, options.ws_idle).await);
    }
    out.push_str(&format!(
        "\ngateway peak RSS: {} KiB\n",
        gateway.peak_rss_kib().unwrap_or(0)
    ));
    gateway.stop().await;
    edged.stop().await;
    sleeper.stop().await;
    relay.stop().await;
    Ok(out)
}

/// The figures of every scenario as a table: with several rounds, each column is the median over
/// the rounds, and the ratio to (a) is the median of each round's own ratio, with its range, so a
/// change in the machine's load between rounds does not skew it.
fn table(rounds: &[Vec<Figures>]) -> String {
    let mut out = format!(
        "{:<24} {:>10} {:>8} {:>9} {:>9} {:>9} {:>12} {:>10} {:>12}{}\n",
        "scenario",
        "req/s",
        "errors",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "gw CPU µs/req",
        "rps ratio",
        "+p50 µs",
        if rounds.len() > 1 {
            "  ratio range"
        } else {
            ""
        },
    );
    let Some(first) = rounds.first() else {
        return out;
    };
    for (i, f) in first.iter().enumerate() {
        let all: Vec<&Figures> = rounds.iter().filter_map(|r| r.get(i)).collect();
        let direct: Vec<&Figures> = rounds.iter().filter_map(|r| r.first()).collect();
        let ratios = median_and_range(
            all.iter()
                .zip(&direct)
                .map(|(f, d)| f.rps / d.rps.max(f64::MIN_POSITIVE)),
        );
        let added = median_and_range(
            all.iter()
                .zip(&direct)
                .map(|(f, d)| f.latency_us[0] as f64 - d.latency_us[0] as f64),
        );
        let rps = median_and_range(all.iter().map(|f| f.rps));
        let errors: usize = all.iter().map(|f| f.errors).sum();
        let latency = |k: usize| median_and_range(all.iter().map(|f| f.latency_us[k] as f64)).0;
        let cpu = f
            .gateway_cpu_us
            .map(|_| median_and_range(all.iter().filter_map(|f| f.gateway_cpu_us)).0);
        out.push_str(&format!(
            "{:<24} {:>10.0} {:>8} {:>9.0} {:>9.0} {:>9.0} {:>12} {:>10.2} {:>12}{}\n",
            f.name,
            rps.0,
            errors,
            latency(0),
            latency(1),
            latency(2),
            cpu.map_or("-".to_owned(), |c| format!("{c:.1}")),
            ratios.0,
            if cpu.is_some() {
                format!("{:.0}", added.0)
            } else {
                "-".to_owned()
            },
            if rounds.len() > 1 {
                format!("  {:.2}–{:.2}", ratios.1, ratios.2)
            } else {
                String::new()
            },
        ));
    }
    out
}

/// The median, minimum and maximum of some figures (zeros when there are none).
fn median_and_range(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    let mut values: Vec<f64> = values.collect();
    values.sort_unstable_by(f64::total_cmp);
    match (values.first(), values.last()) {
        (Some(&min), Some(&max)) => {
            let n = values.len();
            let median = if n % 2 == 1 {
                values[n / 2]
            } else {
                (values[n / 2 - 1] + values[n / 2]) / 2.0
            };
            (median, min, max)
        }
        _ => (0.0, 0.0, 0.0),
    }
}

/// The API key scenario f presents.
pub const EDGE_KEY: &str = "bench-key";

/// What scenario f's client sends besides the body: a key, an Origin and a request id.
pub const EDGE_HEADERS: &[(&str, &str)] = &[
    ("x-api-key", EDGE_KEY),
    ("origin", "https://app.example"),
    ("x-request-id", "bench-request"),
];

/// Scenario f's edge (and the edge criterion bench's): API key auth, two rate limits too high to
/// refuse, CORS, header rules and forwarded identity, all on the bench method.
pub fn edge_config() -> String {
    format!(
        r#"
[auth]
api_keys = [{{ name = "bench", sha256 = "{hash}", plan = "bench" }}]

[plans.bench]
limits = [{{ requests = 1000000000, per = "1s" }}]

[policies."bench.v1"]
auth = "api_key"
rate_limits = [{{ key = "caller", plan = true }}, {{ key = "ip", requests = 1000000000, per = "1s" }}]
cors = {{ allow_origins = ["https://app.example"] }}
request_headers = {{ set = {{ "grpc-metadata-x-edge" = "1" }} }}
response_headers = {{ add = {{ "x-served-by" = "protogate" }} }}
"#,
        hash = crate::middleware::auth::api_key::sha256_hex(EDGE_KEY),
    )
}

/// How many services the set swapped in during scenario e has.
const SWAP_SERVICES: usize = 1_000;

/// How often scenario e swaps the set in.
const SWAP_EVERY: Duration = Duration::from_millis(250);

/// A .proto file of `services` services with one method each, every method with a GET route of
/// its own (`/v1/{package}/svc{i}/items/{id}`), for the registry benchmarks.
pub fn synthetic_proto(package: &str, services: usize) -> String {
    let mut text = format!(
        "syntax = \"proto3\";\npackage {package};\nimport \"google/api/annotations.proto\";\n\
         message Item {{ string id = 1; string name = 2; int64 count = 3; }}\n"
    );
    let segment = package.replace('.', "-");
    for i in 0..services {
        text.push_str(&format!(
            "service Svc{i} {{ rpc Get(Item) returns (Item) {{ \
             option (google.api.http) = {{get: \"/v1/{segment}/svc{i}/items/{{id}}\"}}; }} }}\n"
        ));
    }
    text
}

/// [`synthetic_proto`] compiled into a descriptor set.
pub fn synthetic_set(services: usize) -> Result<Bytes, String> {
    let text = synthetic_proto("bulk.v1", services);
    crate::descriptors::compile_sources(
        &[("bulk/v1/bulk.proto".to_owned(), text)],
        crate::descriptors::bundled_set(),
    )
    .map(Bytes::from)
    .map_err(|e| format!("synthetic set: {e}"))
}

/// Uploads a set to the gateway's admin API on a fixed beat until stopped.
struct Swapper {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<(Duration, bool)>>,
}

/// What the swapper did.
struct Swaps(Vec<(Duration, bool)>);

impl Swapper {
    fn start(client: Client<HttpConnector, Full<Bytes>>, admin: SocketAddr, set: Bytes) -> Swapper {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut swaps = Vec::new();
            let mut beat = tokio::time::interval(SWAP_EVERY);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Bounded like the scenarios: at most an hour of beats.
            for _ in 0..14_400 {
                tokio::select! {
                    _ = beat.tick() => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
                let Ok(uri) =
                    format!("http://{admin}/admin/v1/descriptors/bulk").parse::<http::Uri>()
                else {
                    break;
                };
                let mut request = http::Request::new(Full::new(set.clone()));
                *request.method_mut() = http::Method::PUT;
                *request.uri_mut() = uri;
                request.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-protobuf"),
                );
                let started = Instant::now();
                let ok = match client.request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        response.into_body().collect().await.is_ok() && status.is_success()
                    }
                    Err(_) => false,
                };
                swaps.push((started.elapsed(), ok));
            }
            swaps
        });
        Swapper { stop, task }
    }

    async fn stop(self) -> Swaps {
        let _ = self.stop.send(true);
        Swaps(self.task.await.unwrap_or_default())
    }
}

impl Swaps {
    fn describe(&self) -> String {
        let mut times: Vec<u128> = self.0.iter().map(|(d, _)| d.as_millis()).collect();
        times.sort_unstable();
        let failed = self.0.iter().filter(|(_, ok)| !ok).count();
        let at = |p: f64| {
            times
                .get(((times.len() as f64 * p).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0)
        };
        format!(
            "   e) swapped a {SWAP_SERVICES}-service set in {} times, one every {} ms ({failed} refused); \
             upload to publish p50 {} ms, max {} ms\n",
            times.len(),
            SWAP_EVERY.as_millis(),
            at(0.5),
            at(1.0),
        )
    }
}

/// The bench's small message: five scalar fields.
pub fn small() -> Small {
    Small {
        name: "widget".into(),
        count: 42,
        total: 123_456_789,
        active: true,
        score: 98.5,
    }
}

/// One kind of REST request a scenario repeats.
#[derive(Debug, Clone)]
struct Rest {
    method: http::Method,
    uri: http::Uri,
    /// Sent as JSON.
    body: Bytes,
    headers: &'static [(&'static str, &'static str)],
}

impl Rest {
    fn new(
        method: http::Method,
        addr: SocketAddr,
        path: &str,
        body: Bytes,
    ) -> Result<Rest, String> {
        let uri = format!("http://{addr}{path}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        Ok(Rest {
            method,
            uri,
            body,
            headers: &[],
        })
    }

    /// Sends it once; true when the answer is a 200 read to its end.
    async fn send(&self, client: &Client<HttpConnector, Full<Bytes>>) -> bool {
        let mut request = http::Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        request.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.headers {
            request.headers_mut().insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        match client.request(request).await {
            Ok(response) => {
                let ok = response.status() == http::StatusCode::OK;
                ok && response.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        }
    }
}

/// What every REST scenario of a round shares: its concurrency, the bench's bounds, the client.
struct Load<'a> {
    concurrency: usize,
    options: &'a BenchOptions,
    http: &'a Client<HttpConnector, Full<Bytes>>,
}

impl Load<'_> {
    /// Drives `rest` at `gateway`, whose CPU the figures report.
    async fn drive(&self, name: &'static str, gateway: &ServerProcess, rest: &Rest) -> Figures {
        let (http, rest) = (self.http.clone(), Arc::new(rest.clone()));
        drive(
            name,
            self.concurrency,
            self.options,
            Some(gateway),
            move || {
                let (http, rest) = (http.clone(), rest.clone());
                async move { rest.send(&http).await }
            },
        )
        .await
    }
}

/// Drives `call` from `concurrency` tasks: a warm-up, then a measured window bounded in time and
/// count. Gateway CPU is read from its /proc entry around the measured window.
async fn drive<F, Fut>(
    name: &'static str,
    concurrency: usize,
    options: &BenchOptions,
    gateway: Option<&ServerProcess>,
    call: F,
) -> Figures
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let warm_until = Instant::now() + options.warmup;
    run_tasks(concurrency, warm_until, usize::MAX, call.clone()).await;
    let cpu_before = gateway.and_then(|g| g.cpu_time());
    let started = Instant::now();
    let per_task = options.max_requests / concurrency.max(1);
    let results = run_tasks(concurrency, started + options.duration, per_task, call).await;
    let elapsed = started.elapsed();
    let cpu_after = gateway.and_then(|g| g.cpu_time());
    let mut latencies: Vec<u32> = Vec::new();
    let mut errors = 0;
    for (lat, errs) in results {
        latencies.extend(lat);
        errors += errs;
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        u64::from(latencies[i])
    };
    let requests = latencies.len();
    let gateway_cpu_us = match (cpu_before, cpu_after) {
        (Some(before), Some(after)) if requests > 0 => {
            Some((after - before).as_secs_f64() * 1e6 / requests as f64)
        }
        _ => None,
    };
    Figures {
        name,
        concurrency,
        requests,
        errors,
        rps: requests as f64 / elapsed.as_secs_f64(),
        latency_us: [pct(0.50), pct(0.99), pct(0.999)],
        gateway_cpu_us,
    }
}

async fn run_tasks<F, Fut>(
    concurrency: usize,
    until: Instant,
    per_task: usize,
    call: Arc<F>,
) -> Vec<(Vec<u32>, usize)>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task.min(1 << 20));
                let mut errors = 0;
                while Instant::now() < until && latencies.len() < per_task {
                    let t = Instant::now();
                    if call().await {
                        latencies.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(result) = task.await {
            out.push(result);
        }
    }
    out
}

/// A gateway under test, or the floor relay, in its own process so its CPU and memory are its
/// own.
struct ServerProcess {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    /// Its admin API (the relay has none).
    admin: Option<SocketAddr>,
    /// Its config and descriptor files, removed when it stops.
    _dir: Option<TempDir>,
}

impl ServerProcess {
    async fn start(
        backend: SocketAddr,
        config: Option<&str>,
        options: &BenchOptions,
        idle_spin: Option<Duration>,
    ) -> Result<ServerProcess, String> {
        let dir = TempDir::new()?;
        let set = dir.path.join("bench.binpb");
        std::fs::write(&set, demo::BENCH_DESCRIPTORS).map_err(|e| format!("{e}"))?;
        let mut command = ServerProcess::command("serve", options.gateway_workers, idle_spin)?;
        if let Some(config) = config {
            let path = dir.path.join("protogate.toml");
            std::fs::write(&path, config).map_err(|e| format!("{e}"))?;
            command.arg("--config").arg(path);
        }
        command
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--descriptor-set")
            .arg(&set)
            .args(["--upstream", &format!("http://{backend}")]);
        let process = ServerProcess::spawn(command, Some(dir)).await?;
        if process.admin.is_none() {
            return Err("the gateway did not report its admin address".into());
        }
        Ok(process)
    }

    /// Starts the floor relay (scenario h) with the gateways' worker settings.
    async fn relay(backend: SocketAddr, options: &BenchOptions) -> Result<ServerProcess, String> {
        let mut command = ServerProcess::command(
            "bench-relay",
            options.gateway_workers,
            options.gateway_idle_spin,
        )?;
        command.args(["--upstream", &backend.to_string()]);
        ServerProcess::spawn(command, None).await
    }

    /// This binary's `subcommand` with the workers' settings, each left to its default if None.
    fn command(
        subcommand: &str,
        workers: Option<usize>,
        idle_spin: Option<Duration>,
    ) -> Result<Command, String> {
        let exe = std::env::current_exe().map_err(|e| format!("{e}"))?;
        let mut command = Command::new(exe);
        command.arg(subcommand);
        if let Some(workers) = workers {
            command.arg("--workers").arg(workers.to_string());
        }
        if let Some(spin) = idle_spin {
            command
                .arg("--idle-spin")
                .arg(format!("{}us", spin.as_micros()));
        }
        Ok(command)
    }

    /// Runs `command` and waits for the addresses it prints.
    async fn spawn(mut command: Command, dir: Option<TempDir>) -> Result<ServerProcess, String> {
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting a server process: {e}"))?;
        let pid = child.id().ok_or("a server process exited at once")?;
        let stdout = child.stdout.take().ok_or("no server process stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (admin, addr) = tokio::time::timeout(Duration::from_secs(30), async {
            let mut admin = None;
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("admin listening on http://") {
                    admin = addr.trim().parse::<SocketAddr>().ok();
                }
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    return Some((admin, addr.trim().parse::<SocketAddr>().ok()?));
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or("a server process did not report its address")?;
        Ok(ServerProcess {
            child,
            pid,
            addr,
            admin,
            _dir: dir,
        })
    }

    /// utime + stime of the process, from /proc (USER_HZ is 100 on Linux).
    fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(Duration::from_millis((utime + stime) * 10))
    }

    /// The gateway's resident set size now.
    fn rss_kib(&self) -> Option<u64> {
        rss_of(&self.pid.to_string())
    }

    /// The gateway's peak resident set size.
    fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A scratch folder removed on drop.
struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let path = std::env::temp_dir().join(format!("protogate-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Messages in flight on one stream during the bidi scenario.
const WINDOW: usize = 32;

/// Scenario (d): messages per second through one bidi stream, direct gRPC and through a
/// WebSocket on the gateway, each with [`WINDOW`] messages in flight.
async fn bidi_scenario(
    grpc: &BenchServiceClient<tonic::transport::Channel>,
    gateway: SocketAddr,
    options: &BenchOptions,
) -> String {
    let limit = options.max_requests.max(1);
    let direct = {
        let (tx, rx) = tokio::sync::mpsc::channel::<Small>(WINDOW);
        let mut client = grpc.clone();
        match client
            .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(response) => {
                use futures_util::StreamExt;
                let replies = response.into_inner();
                pump(
                    options.duration,
                    limit,
                    |n| {
                        let tx = tx.clone();
                        async move {
                            for _ in 0..n {
                                if tx.send(small()).await.is_err() {
                                    return false;
                                }
                            }
                            true
                        }
                    },
                    futures_util::stream::unfold(replies, |mut r| async move {
                        matches!(r.message().await, Ok(Some(_))).then_some(((), r))
                    })
                    .boxed(),
                )
                .await
            }
            Err(_) => None,
        }
    };
    let through = match ws_connect(gateway, "/bench.v1.BenchService/Chat").await {
        Some(socket) => {
            use futures_util::{SinkExt, StreamExt};
            let (sink, mut source) = socket.split();
            let sink = Arc::new(tokio::sync::Mutex::new(sink));
            let frame = serde_json::to_string(&small()).unwrap_or_default();
            pump(
                options.duration,
                limit,
                |n| {
                    let (sink, frame) = (sink.clone(), frame.clone());
                    async move {
                        let mut sink = sink.lock().await;
                        for _ in 0..n {
                            let message =
                                tokio_tungstenite::tungstenite::Message::text(frame.clone());
                            if sink.feed(message).await.is_err() {
                                return false;
                            }
                        }
                        sink.flush().await.is_ok()
                    }
                },
                futures_util::stream::poll_fn(move |cx| loop {
                    use tokio_tungstenite::tungstenite::Message;
                    match std::task::ready!(source.poll_next_unpin(cx)) {
                        Some(Ok(Message::Text(_))) => return std::task::Poll::Ready(Some(())),
                        Some(Ok(_)) => continue,
                        _ => return std::task::Poll::Ready(None),
                    }
                })
                .boxed(),
            )
            .await
        }
        None => None,
    };
    let show = |m: Option<f64>| m.map_or("failed".to_owned(), |m| format!("{m:.0}"));
    let ratio = match (direct, through) {
        (Some(d), Some(t)) if d > 0.0 => format!("{:.2}", t / d),
        _ => "-".to_owned(),
    };
    format!(
        "\nd) bidi stream, one stream, {WINDOW} in flight (messages/s)\n{:<24} {:>10}\n{:<24} {:>10}   ratio {ratio}\n",
        "gRPC direct",
        show(direct),
        "WebSocket via gateway",
        show(through),
    )
}

/// Sends and receives on one stream for `duration` (or `limit` replies), keeping the window
/// full; the replies per second, or None when the stream broke.
async fn pump<S, SF>(
    duration: Duration,
    limit: usize,
    send: S,
    mut replies: futures_util::stream::BoxStream<'static, ()>,
) -> Option<f64>
where
    S: Fn(usize) -> SF,
    SF: std::future::Future<Output = bool>,
{
    use futures_util::StreamExt;
    if !send(WINDOW).await {
        return None;
    }
    let started = Instant::now();
    let mut received = 0usize;
    while received < limit && started.elapsed() < duration {
        replies.next().await?;
        received += 1;
        if !send(1).await {
            return None;
        }
    }
    for _ in 0..WINDOW {
        if replies.next().await.is_none() {
            break;
        }
    }
    Some(received as f64 / started.elapsed().as_secs_f64())
}

type BenchSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn ws_connect(gateway: SocketAddr, path: &str) -> Option<BenchSocket> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = format!("ws://{gateway}{path}").into_client_request().ok()?;
    let tcp = tokio::net::TcpStream::connect(gateway).await.ok()?;
    let _ = tcp.set_nodelay(true);
    tokio_tungstenite::client_async(request, tcp)
        .await
        .ok()
        .map(|(socket, _)| socket)
}

/// Memory per idle open stream: `n` WebSockets held open on the gateway (gateway RSS growth),
/// and `n` direct gRPC bidi streams (this process's RSS growth: client and server side).
async fn idle_sockets(
    grpc: &BenchServiceClient<tonic::transport::Channel>,
    gateway: &ServerProcess,
    n: usize,
) -> String {
    // Direct streams first, before this process has freed memory to reuse.
    let own_before = own_rss_kib().unwrap_or(0);
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = tokio::sync::mpsc::channel::<Small>(1);
        let mut client = grpc.clone();
        match client
            .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(response) => streams.push((tx, response.into_inner())),
            Err(_) => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let own_after = own_rss_kib().unwrap_or(0);
    let direct = streams.len();
    drop(streams);
    let before = gateway.rss_kib().unwrap_or(0);
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        match ws_connect(gateway.addr, "/bench.v1.BenchService/Chat").await {
            Some(socket) => sockets.push(socket),
            None => break,
        }
    }
    // Let the gateway open every backend call before reading its memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = gateway.rss_kib().unwrap_or(0);
    let opened = sockets.len();
    drop(sockets);

    let per = |delta: u64, count: usize| delta as f64 * 1024.0 / count.max(1) as f64;
    format!(
        "\nidle streams held open: {opened} WebSockets on the gateway: +{} KiB RSS, {:.0} bytes each \
         (gateway side, backend call included);\n{direct} direct gRPC bidi streams: +{} KiB RSS in the \
         bench process, {:.0} bytes each (client and server side together)\n",
        after.saturating_sub(before),
        per(after.saturating_sub(before), opened),
        own_after.saturating_sub(own_before),
        per(own_after.saturating_sub(own_before), direct),
    )
}

fn own_rss_kib() -> Option<u64> {
    rss_of("self")
}

fn rss_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
