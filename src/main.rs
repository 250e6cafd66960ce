//! The protogate command line: clap → telemetry → config → bind → serve.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;

use protogate::config::Config;
use protogate::snapshot::{Snapshot, SnapshotStore};
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
        Command::Serve(inputs) => {
            let config = Arc::new(inputs.config()?);
            let snapshot = Snapshot::load(config.clone(), None).map_err(|e| e.to_string())?;
            serve(config.listen, snapshot).await
        }
        Command::Check(inputs) => {
            let config = Arc::new(inputs.config()?);
            let snapshot = Snapshot::load(config, None).map_err(|e| e.to_string())?;
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
            let snapshot = Snapshot::load(config, None).map_err(|e| e.to_string())?;
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
        } => {
            let valid = |s: f64| s.is_finite() && (0.0..=600.0).contains(&s);
            if !valid(seconds)
                || !valid(warmup)
                || concurrency.iter().any(|&c| c == 0 || c > 10_000)
            {
                return Err(
                    "--seconds and --warmup take 0 to 600, --concurrency 1 to 10000".into(),
                );
            }
            let report = protogate::bench::run(protogate::bench::BenchOptions {
                concurrency,
                duration: std::time::Duration::from_secs_f64(seconds),
                warmup: std::time::Duration::from_secs_f64(warmup),
                max_requests,
                ws_idle,
            })
            .await?;
            print!("{report}");
            Ok(())
        }
        Command::Demo { listen } => {
            let (_stop, stopped) = tokio::sync::watch::channel(());
            let addrs = demo::start_shop(stopped)
                .await
                .map_err(|e| format!("cannot start the demo services: {e}"))?;
            let config = Config {
                listen,
                ..Config::default()
            };
            let config = Arc::new(demo::shop_config(&addrs, config));
            let registry = demo::shop_registry().map_err(|e| e.to_string())?;
            let snapshot = Snapshot::build(config, registry, None).map_err(|e| e.to_string())?;
            // Bound first, so the commands printed name the real port when `listen` ends in :0.
            let listener = bind(listen).await?;
            let bound = listener.local_addr().map_err(|e| e.to_string())?;
            println!("{}", demo::instructions(bound));
            serve_on(listener, snapshot).await
        }
    }
}

async fn bind(listen: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))
}

async fn serve(listen: SocketAddr, snapshot: Snapshot) -> Result<(), String> {
    serve_on(bind(listen).await?, snapshot).await
}

async fn serve_on(listener: TcpListener, snapshot: Snapshot) -> Result<(), String> {
    let grace = snapshot.config.shutdown_grace;
    let store = Arc::new(SnapshotStore::new(snapshot));
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    // The signal handlers are installed on the first poll; do it before announcing the port, or a
    // parent that reads the line and signals at once kills the process (SIGTERM's default action)
    // instead of stopping it gracefully.
    let mut signal = Box::pin(telemetry::shutdown_signal());
    let signalled =
        std::future::poll_fn(|cx| std::task::Poll::Ready(signal.as_mut().poll(cx).is_ready()))
            .await;
    // On stdout, so a parent (the load bench, a script) can read the port chosen for :0.
    println!("listening on http://{bound}");
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        if !signalled {
            signal.await;
        }
        tracing::info!("shutting down: no new connections, finishing in-flight requests");
        let _ = signalled_tx.send(());
    };
    let serving = server::run(listener, store, shutdown);
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => return result.map_err(|e| e.to_string()),
        _ = signalled_rx => {}
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
