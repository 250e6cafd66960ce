//! The protogate command line: clap → telemetry → config → bind → serve.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::sync::watch;

use protogate::admin::{self, Admin, ConfigLoader, LiveRegistry, StateDir};
use protogate::config::{AdminListen, AdminToken, Config};
use protogate::snapshot::{Snapshot, SnapshotInputs, SnapshotStore};
use protogate::uploads::{SetName, Uploads};
use protogate::{demo, descriptors, server, telemetry};

// glibc malloc took a tenth of the gateway's CPU under load, much of it in lock contention.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An API gateway that serves gRPC services as REST/JSON from descriptors loaded at runtime.
#[derive(Debug, Parser)]
#[command(name = "protogate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(Inputs),
    /// Validate the config and descriptors, print the route table and any warnings.
    Check(Inputs),
    /// Print the route table.
    Routes(Inputs),
    /// Compile .proto files into a descriptor set with imports included (no protoc needed).
    Compile {
        /// The .proto files.
        #[arg(required = true)]
        protos: Vec<PathBuf>,
        /// Include paths for imports (google/api and google/rpc are always available).
        #[arg(short = 'I', long = "include")]
        include: Vec<PathBuf>,
        /// Where to write the descriptor set.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Measure the gateway against direct gRPC on loopback (bounded in time and count).
    Bench {
        /// Concurrency levels (repeatable); every scenario runs at each.
        #[arg(long, default_values_t = [1usize, 32])]
        concurrency: Vec<usize>,
        /// Measured seconds per scenario.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Warm-up seconds before each scenario.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// At most this many requests per scenario.
        #[arg(long, default_value_t = 2_000_000)]
        max_requests: usize,
        /// Idle WebSockets held open to measure memory per socket (0 skips it).
        #[arg(long, default_value_t = 1_000)]
        ws_idle: usize,
        /// Request worker threads of the gateway process (its `--workers`); default: one per
        /// core, 0: the shared multi-threaded runtime.
        #[arg(long)]
        gateway_workers: Option<usize>,
        /// The gateway's `--idle-spin`, like 100us or 0s; default: its own default.
        #[arg(long, value_parser = protogate::config::parse_idle_spin)]
        gateway_idle_spin: Option<std::time::Duration>,
        /// Runs of the scenario sequence at each concurrency; the report gives the medians, and
        /// each ratio is taken within its own run (several damp a noisy machine).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// The load bench's floor relay (scenario h), which the bench runs in its own process.
    #[command(hide = true)]
    BenchRelay {
        /// The bench backend's address.
        #[arg(long)]
        upstream: SocketAddr,
        /// Worker threads; default: one per core.
        #[arg(long)]
        workers: Option<usize>,
        /// The workers' idle spin; default: the gateway's.
        #[arg(long, value_parser = protogate::config::parse_idle_spin)]
        idle_spin: Option<std::time::Duration>,
    },
    /// Start the bundled example shop services and the gateway in front of them.
    Demo {
        /// The gateway's address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

/// Where the gateway's configuration and descriptors come from.
#[derive(Debug, Args)]
struct Inputs {
    /// The TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The address to listen on (overrides the config).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A binary FileDescriptorSet (repeatable).
    #[arg(long = "descriptor-set")]
    descriptor_sets: Vec<PathBuf>,
    /// A folder of *.pb, *.binpb, *.protoset files (repeatable).
    #[arg(long = "descriptor-dir")]
    descriptor_dirs: Vec<PathBuf>,
    /// A .proto file compiled at startup (repeatable).
    #[arg(long = "proto")]
    protos: Vec<PathBuf>,
    /// An include path for --proto files (repeatable).
    #[arg(long = "proto-path")]
    proto_paths: Vec<PathBuf>,
    /// The default backend, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    upstream: Option<String>,
    /// The admin API's address, or "off" (overrides the config; default 127.0.0.1:9901).
    #[arg(long, value_parser = AdminListen::parse)]
    admin_listen: Option<AdminListen>,
    /// The admin API's bearer token (overrides the config).
    #[arg(long, env = "PROTOGATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Where uploaded descriptor sets are kept across restarts (overrides the config; default:
    /// in memory only).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Request worker threads (overrides `server.workers`; default one per core; 0 serves on the
    /// shared multi-threaded runtime).
    #[arg(long)]
    workers: Option<usize>,
    /// How long a worker polls for more work after a request before it sleeps, like 100us; 0s
    /// never spins (overrides `server.idle_spin`).
    #[arg(long, value_parser = protogate::config::parse_idle_spin)]
    idle_spin: Option<std::time::Duration>,
}

impl Inputs {
    fn config(&self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        let d = &mut config.descriptors;
        d.sets.extend(self.descriptor_sets.iter().cloned());
        d.dirs.extend(self.descriptor_dirs.iter().cloned());
        d.protos.extend(self.protos.iter().cloned());
        d.proto_paths.extend(self.proto_paths.iter().cloned());
        if let Some(url) = &self.upstream {
            config
                .set_upstream(url)
                .map_err(|e| format!("--upstream: {e}"))?;
        }
        if let Some(listen) = self.admin_listen {
            config.admin.listen = listen;
        }
        if let Some(token) = self.admin_token.clone().and_then(AdminToken::new) {
            config.admin.token = Some(token);
        }
        if let Some(dir) = &self.state_dir {
            config.admin.state_dir = Some(dir.clone());
        }
        if let Some(workers) = self.workers {
            config.server.workers = workers;
        }
        if let Some(spin) = self.idle_spin {
            config.server.idle_spin = spin;
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve(inputs) => serve(Arc::new(inputs)).await,
        Command::Check(inputs) => {
            let config = Arc::new(inputs.config()?);
            if let Some(addr) = config.admin.listen.addr() {
                admin::check_exposure(addr, config.listen, config.admin.token.as_ref())?;
            }
            let snapshot = load_with_saved_sets(config)?;
            print!("{}", snapshot.describe_routes());
            for warning in &snapshot.warnings {
                println!("warning: {warning}");
            }
            println!(
                "ok: {} routes, {} warnings",
                snapshot.routes.len(),
                snapshot.warnings.len()
            );
            Ok(())
        }
        Command::Routes(inputs) => {
            let config = Arc::new(inputs.config()?);
            let snapshot = load_with_saved_sets(config)?;
            print!("{}", snapshot.describe_routes());
            Ok(())
        }
        Command::Compile {
            protos,
            include,
            output,
        } => {
            let set = descriptors::compile_protos(&protos, &include, descriptors::bundled_set())
                .map_err(|e| e.to_string())?;
            std::fs::write(&output, &set).map_err(|e| format!("{}: {e}", output.display()))?;
            println!("wrote {} ({} bytes)", output.display(), set.len());
            Ok(())
        }
        Command::Bench {
            concurrency,
            seconds,
            warmup,
            max_requests,
            ws_idle,
            gateway_workers,
            gateway_idle_spin,
            rounds,
        } => {
            let valid = |s: f64| s.is_finite() && (0.0..=600.0).contains(&s);
            if !valid(seconds)
                || !valid(warmup)
                || concurrency.iter().any(|&c| c == 0 || c > 10_000)
                || !(1..=100).contains(&rounds)
            {
                return Err(
                    "--seconds and --warmup take 0 to 600, --concurrency 1 to 10000, --rounds 1 to 100".into(),
                );
            }
            let report = protogate::bench::run(protogate::bench::BenchOptions {
                concurrency,
                duration: std::time::Duration::from_secs_f64(seconds),
                warmup: std::time::Duration::from_secs_f64(warmup),
                max_requests,
                ws_idle,
                gateway_workers,
                gateway_idle_spin,
                rounds,
            })
            .await?;
            print!("{report}");
            Ok(())
        }
        Command::BenchRelay {
            upstream,
            workers,
            idle_spin,
        } => protogate::bench::serve_relay(upstream, workers, idle_spin).await,
        Command::Demo { listen } => {
            let (_stop, stopped) = tokio::sync::watch::channel(());
            let addrs = demo::start_shop(stopped)
                .await
                .map_err(|e| format!("cannot start the demo services: {e}"))?;
            let mut config = Config::from_toml(&demo::edge_config_toml(), Path::new("."))
                .map_err(|e| e.to_string())?;
            config.listen = listen;
            let config = Arc::new(demo::shop_config(&addrs, config));
            let registry = demo::shop_registry().map_err(|e| e.to_string())?;
            let snapshot = Snapshot::build(config, registry, None).map_err(|e| e.to_string())?;
            // Bound first, so the commands printed name the real port when `listen` ends in :0.
            let listener = bind(listen).await?;
            let bound = listener.local_addr().map_err(|e| e.to_string())?;
            println!("{}", demo::instructions(bound));
            let grace = snapshot.config.shutdown_grace;
            serve_on(
                listener,
                Arc::new(SnapshotStore::new(snapshot)),
                grace,
                None,
            )
            .await
        }
    }
}

/// The snapshot `serve` would start with, uploads from the state folder included; the folder is
/// only read.
fn load_with_saved_sets(config: Arc<Config>) -> Result<Snapshot, String> {
    let uploads = match &config.admin.state_dir {
        Some(dir) if dir.exists() => StateDir::open(dir)
            .and_then(|state| state.read())
            .map_err(|e| e.to_string())?,
        _ => Uploads::new(),
    };
    let inputs = SnapshotInputs::load(config, uploads).map_err(|e| e.to_string())?;
    Snapshot::assemble(&inputs, None).map_err(|e| e.to_string())
}

/// `protogate serve`: the saved sets and the config's descriptors make the first snapshot, backends
/// marked `reflect = true` are asked for theirs, and only then do the listeners open.
async fn serve(inputs: Arc<Inputs>) -> Result<(), String> {
    let config = Arc::new(inputs.config()?);
    let admin_addr = config.admin.listen.addr();
    if let Some(addr) = admin_addr {
        admin::check_exposure(addr, config.listen, config.admin.token.as_ref())?;
    }
    let state = match &config.admin.state_dir {
        Some(dir) => Some(StateDir::open(dir).map_err(|e| e.to_string())?),
        None => None,
    };
    let uploads = match &state {
        Some(state) => state.load().map_err(|e| e.to_string())?,
        None => Uploads::new(),
    };
    let first = SnapshotInputs::load(config.clone(), uploads).map_err(|e| e.to_string())?;
    let loader: ConfigLoader = {
        let inputs = inputs.clone();
        Arc::new(move || inputs.config())
    };
    let live =
        Arc::new(LiveRegistry::start(first, state, Some(loader)).map_err(|e| e.to_string())?);
    for backend in &config.reflect_backends {
        let Ok(name) = SetName::parse(&format!("reflected.{backend}")) else {
            tracing::warn!("backend {backend:?} makes no valid set name; reflect it with POST /admin/v1/reflect?backend=...&name=...");
            continue;
        };
        match live.reflect(backend, name).await {
            Ok((set, outcome, _)) => tracing::info!(
                "registered {} services of backend {backend} through reflection ({} routes)",
                set.services.len(),
                outcome.changes.routes.added.len()
            ),
            // The backend may start after the gateway; a saved copy, if any, stays in use.
            Err(err) => tracing::warn!("reflection of backend {backend} at startup failed: {err}"),
        }
    }
    let listener = bind(config.listen).await?;
    let admin_listener = match config.admin.listen {
        AdminListen::Off => None,
        AdminListen::At(addr) => Some(bind(addr).await?),
        AdminListen::Default => match admin_addr {
            Some(addr) => match TcpListener::bind(addr).await {
                Ok(listener) => Some(listener),
                Err(err) => {
                    tracing::warn!(
                        "the admin API is off: cannot listen on its default address {addr}: {err}; \
                         set --admin-listen or admin_listen"
                    );
                    None
                }
            },
            None => None,
        },
    };
    let admin = admin_listener.map(|listener| {
        let api = Admin::new(
            live.clone(),
            config.admin.token.clone(),
            config.admin.max_upload_bytes,
        );
        (listener, Arc::new(api))
    });
    let store = live.store().clone();
    serve_on(
        listener,
        store,
        config.shutdown_grace,
        Some(Control { live, admin }),
    )
    .await
}

/// The control plane beside the public listener.
struct Control {
    live: Arc<LiveRegistry>,
    admin: Option<(TcpListener, Arc<Admin>)>,
}

async fn bind(listen: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))
}

async fn serve_on(
    listener: TcpListener,
    store: Arc<SnapshotStore>,
    grace: std::time::Duration,
    control: Option<Control>,
) -> Result<(), String> {
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    // The signal handlers are installed on the first poll; do it before announcing the port, or a
    // parent that reads the line and signals at once kills the process (SIGTERM's default action)
    // instead of stopping it gracefully.
    let mut signal = Box::pin(telemetry::shutdown_signal());
    let signalled =
        std::future::poll_fn(|cx| std::task::Poll::Ready(signal.as_mut().poll(cx).is_ready()))
            .await;
    // Likewise SIGHUP, whose default action also ends the process; it reloads the config.
    #[cfg(unix)]
    let hangups = match &control {
        Some(_) => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!("SIGHUP will not reload the config: {e}"))
            .ok(),
        None => None,
    };
    let (stop, stopped) = watch::channel(false);
    let on_stop = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    if let Some(control) = control {
        if let Some((admin_listener, api)) = control.admin {
            let admin_bound = admin_listener.local_addr().map_err(|e| e.to_string())?;
            let shutdown = on_stop(stopped.clone());
            tokio::spawn(async move {
                if let Err(err) = admin::serve(admin_listener, api, shutdown).await {
                    tracing::error!("the admin listener stopped: {err}");
                }
            });
            println!("admin listening on http://{admin_bound}");
        }
        #[cfg(unix)]
        if let Some(mut hangups) = hangups {
            let live = control.live.clone();
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    match live.reload().await {
                        Ok(_) => tracing::info!("SIGHUP: configuration reloaded"),
                        Err(err) => tracing::error!(
                            "SIGHUP: reload refused, the running configuration stays: {err}"
                        ),
                    }
                }
            });
        }
    }
    // On stdout, so a parent (the load bench, a script) can read the port chosen for :0.
    println!("listening on http://{bound}");
    tokio::spawn(async move {
        if !signalled {
            signal.await;
        }
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = stop.send(true);
    });
    let serving = server::run(listener, store, on_stop(stopped.clone()));
    tokio::pin!(serving);
    let mut signalled_rx = stopped;
    tokio::select! {
        result = &mut serving => return result.map_err(|e| e.to_string()),
        _ = signalled_rx.wait_for(|stop| *stop) => {}
    }
    // In-flight requests get `grace` to finish; then the process exits anyway.
    match tokio::time::timeout(grace, serving).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => {
            tracing::warn!("in-flight requests still running after {grace:?}; exiting");
            Ok(())
        }
    }
}
