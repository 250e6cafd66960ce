//! The `protogate` binary as users run it: compile, serve, check, routes, config files and demo.
//! Also the process harness the descriptors and shutdown tests share.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use protogate::demo::{self, MirrorStats};

use crate::support;

/// The longest a command, or a gateway's start-up, may take (debug builds on shared cores).
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// A uniquely named folder under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "protogate-e2e-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of a crashed run that had the same pid.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A finished `protogate` command.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// Panics, showing both streams, unless the command exited 0.
    pub(crate) fn assert_ok(&self) -> &Self {
        assert!(self.status.success(), "expected success, got {self:#?}");
        self
    }

    /// Panics unless the command failed; returns its stderr.
    pub(crate) fn assert_failed(&self) -> &str {
        assert!(!self.status.success(), "expected failure, got {self:#?}");
        assert!(
            self.stderr.contains("error: "),
            "no error line on stderr: {self:#?}"
        );
        &self.stderr
    }
}

fn command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_protogate"));
    // From the repository root, so relative paths read as in the docs.
    cmd.args(args)
        .current_dir(support::repo())
        // The log level the docs promise, whatever the environment running the tests says.
        .env("RUST_LOG", "info")
        // A token in the test runner's environment must not change what the tests start.
        .env_remove("PROTOGATE_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `protogate ARGS` from the repository root to completion; killed if it outlives
/// [`PATIENCE`].
pub(crate) async fn protogate<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let output = tokio::time::timeout(PATIENCE, command(args).output())
        .await
        .expect("protogate finishes in time")
        .expect("protogate runs");
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A `protogate serve` (or `demo`) child that announced its address; killed on drop.
pub(crate) struct Served {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// What it printed on stdout before the `listening on` line.
    pub(crate) banner: String,
    stderr: JoinHandle<String>,
}

/// A `protogate` child that has not yet said where it listens; killed on drop.
pub(crate) struct Launching {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: JoinHandle<String>,
}

impl Launching {
    /// Spawns `protogate ARGS` from the repository root.
    pub(crate) fn spawn<I, S>(args: I) -> Launching
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = command(args).spawn().expect("spawn protogate");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr = tokio::spawn(async move {
            let mut bytes = Vec::new();
            let _ = stderr.read_to_end(&mut bytes).await;
            String::from_utf8_lossy(&bytes).into_owned()
        });
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Launching {
            child,
            stdout,
            stderr,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("the child is still running")
    }

    /// Reads stdout up to the `listening on http://ADDR` line.
    pub(crate) async fn announced(self) -> Served {
        let Launching {
            mut child,
            mut stdout,
            stderr,
        } = self;
        let mut banner = String::new();
        let announced = tokio::time::timeout(PATIENCE, async {
            while let Ok(Some(line)) = stdout.next_line().await {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    return Some(addr.parse::<SocketAddr>().expect("an address"));
                }
                banner.push_str(&line);
                banner.push('\n');
            }
            None
        })
        .await;
        let Ok(Some(addr)) = announced else {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let stderr = stderr.await.unwrap_or_default();
            panic!("protogate never said where it listens; stdout:\n{banner}\nstderr:\n{stderr}");
        };
        // Keep reading, so a later print never meets a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Served {
            child,
            addr,
            banner,
            stderr,
        }
    }
}

impl Served {
    /// Starts `protogate ARGS` and reads its address from the `listening on http://ADDR` line.
    pub(crate) async fn start<I, S>(args: I) -> Served
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Launching::spawn(args).announced().await
    }

    /// `http://ADDR` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM, as an init system or `kill PID` would.
    pub(crate) fn terminate(&self) {
        let pid = self.child.id().expect("the child is still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Waits at most `limit` for the child to exit; returns its status and stderr.
    pub(crate) async fn exit_within(mut self, limit: Duration) -> (ExitStatus, String) {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for protogate"),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                let stderr = self.stderr.await.unwrap_or_default();
                panic!("protogate still running {limit:?} later; stderr:\n{stderr}");
            }
        };
        (status, self.stderr.await.unwrap_or_default())
    }
}

/// A mirror backend for the test protos, in this process; stops on drop.
pub(crate) struct MirrorBackend {
    /// `http://ADDR`, for `--upstream`.
    pub(crate) url: String,
    pub(crate) stats: Arc<MirrorStats>,
    _stop: watch::Sender<()>,
}

impl MirrorBackend {
    pub(crate) async fn start() -> MirrorBackend {
        let (stop, stopped) = watch::channel(());
        let (addr, stats) = demo::start_mirror(support::test_registry().pool().clone(), stopped)
            .await
            .expect("mirror starts");
        MirrorBackend {
            url: format!("http://{addr}"),
            stats,
            _stop: stop,
        }
    }
}

/// `GET /v1/messages/42` through a gateway started with `inputs`; that route exists only when
/// the google.api.http annotation of test.v1.Echo.GetMessage survived loading.
pub(crate) async fn assert_serves_annotated_route(inputs: &[&OsStr]) {
    let mirror = MirrorBackend::start().await;
    let mut args: Vec<&OsStr> = vec![OsStr::new("serve")];
    args.extend_from_slice(inputs);
    args.extend(["--upstream", &mirror.url, "--listen", "127.0.0.1:0"].map(OsStr::new));
    let gateway = Served::start(args).await;
    let resp = reqwest::get(gateway.url("/v1/messages/42"))
        .await
        .expect("request");
    let (status, body) = support::read(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messageId"], "42");
    assert_eq!(mirror.stats.calls.load(Ordering::Relaxed), 1);
}

/// `protogate compile protos/test/v1/echo.proto -I protos -o OUT`.
pub(crate) async fn compile_echo(out: &Path) {
    let run = protogate([
        OsStr::new("compile"),
        OsStr::new("protos/test/v1/echo.proto"),
        OsStr::new("-I"),
        OsStr::new("protos"),
        OsStr::new("-o"),
        out.as_os_str(),
    ])
    .await;
    run.assert_ok();
    assert!(run.stdout.starts_with("wrote "), "{run:#?}");
    assert!(out.is_file(), "{} was not written", out.display());
}

#[tokio::test]
async fn compiled_set_keeps_http_annotations() {
    let tmp = TempDir::new("compile");
    let set = tmp.join("echo.binpb");
    compile_echo(&set).await;
    assert_serves_annotated_route(&[OsStr::new("--descriptor-set"), set.as_os_str()]).await;
}

#[tokio::test]
async fn protos_compiled_at_startup_keep_http_annotations() {
    assert_serves_annotated_route(
        &[
            "--proto",
            "protos/test/v1/echo.proto",
            "--proto-path",
            "protos",
        ]
        .map(OsStr::new),
    )
    .await;
}

#[tokio::test]
async fn descriptor_dir_sets_keep_http_annotations() {
    let tmp = TempDir::new("dir");
    compile_echo(&tmp.join("echo.binpb")).await;
    assert_serves_annotated_route(&[OsStr::new("--descriptor-dir"), tmp.path().as_os_str()]).await;
}

const ECHO_PROTO: [&str; 4] = [
    "--proto",
    "protos/test/v1/echo.proto",
    "--proto-path",
    "protos",
];

#[tokio::test]
async fn check_prints_routes_and_duplicate_warnings() {
    let run = protogate(["check"].iter().chain(&ECHO_PROTO)).await;
    run.assert_ok();
    let out = &run.stdout;
    assert!(
        out.lines().any(|l| l.starts_with("GET")
            && l.contains("/v1/messages/{message_id}")
            && l.contains("test.v1.Echo.GetMessage ")),
        "{out}"
    );
    let duplicate = out
        .lines()
        .find(|l| l.starts_with("warning: duplicate route") && l.contains("GetMessageDuplicate"))
        .unwrap_or_else(|| panic!("no duplicate route warning in:\n{out}"));
    assert!(
        duplicate.contains("test.v1.Echo.GetMessage,"),
        "{duplicate}"
    );
    assert!(
        out.lines().last().is_some_and(|l| l.starts_with("ok: ")),
        "{out}"
    );
}

#[tokio::test]
async fn routes_prints_only_the_table() {
    let run = protogate(["routes"].iter().chain(&ECHO_PROTO)).await;
    run.assert_ok();
    let out = &run.stdout;
    let line = out
        .lines()
        .find(|l| l.contains("/v1/messages/{message_id}"))
        .unwrap_or_else(|| panic!("no GetMessage route in:\n{out}"));
    assert!(line.starts_with("GET") && line.contains("test.v1.Echo.GetMessage"));
    assert!(out.contains("POST    /test.v1.Echo/Plain "), "{out}");
    assert!(
        !out.contains("warning:") && !out.contains("ok:"),
        "routes prints the table alone:\n{out}"
    );
}

/// Runs `protogate ARGS --config FILE` with `toml` written to FILE.
async fn with_config(args: &[&str], toml: &str) -> Run {
    let tmp = TempDir::new("config");
    let file = tmp.join("protogate.toml");
    std::fs::write(&file, toml).expect("write config");
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.extend([OsStr::new("--config"), file.as_os_str()]);
    protogate(all).await
}

#[tokio::test]
async fn config_unknown_key_is_named() {
    let run = with_config(&["check"], "listen = \"127.0.0.1:0\"\nfrobnicate = true\n").await;
    let stderr = run.assert_failed();
    assert!(stderr.contains("frobnicate"), "{stderr}");
}

#[tokio::test]
async fn config_bad_value_is_named() {
    let run = with_config(&["check"], "default_timeout = \"soon\"\n").await;
    let stderr = run.assert_failed();
    assert!(
        stderr.contains("default_timeout") && stderr.contains("soon"),
        "{stderr}"
    );
}

#[tokio::test]
async fn config_http_rules_add_routes() {
    let rule = r#"
        [[http_rules]]
        selector = "test.v1.Echo.Plain"
        get = "/v1/plain/{message_id}"
    "#;
    let args: Vec<&str> = ["routes"].iter().chain(&ECHO_PROTO).copied().collect();
    let without = protogate(&args).await;
    without.assert_ok();
    assert!(!without.stdout.contains("/v1/plain/"), "{}", without.stdout);

    let run = with_config(&args, rule).await;
    run.assert_ok();
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("/v1/plain/{message_id}"))
        .unwrap_or_else(|| panic!("no config route in:\n{}", run.stdout));
    assert!(
        line.starts_with("GET") && line.contains("test.v1.Echo.Plain") && line.contains("config"),
        "{line}"
    );
}

#[tokio::test]
async fn upstream_must_be_http() {
    let run = protogate(["serve", "--listen", "127.0.0.1:0", "--upstream", "ftp://x"]).await;
    let stderr = run.assert_failed();
    assert!(
        stderr.contains("--upstream") && stderr.contains("ftp://x"),
        "{stderr}"
    );
}

#[tokio::test]
async fn load_bench_runs_every_scenario_on_loopback() {
    let run = protogate([
        "bench",
        "--concurrency",
        "2",
        "--seconds",
        "0.2",
        "--warmup",
        "0.05",
        "--ws-idle",
        "5",
        "--max-requests",
        "200",
    ])
    .await;
    run.assert_ok();
    let out = &run.stdout;
    let first = out.lines().next().unwrap_or_default();
    assert!(
        first.contains("backend 127.0.0.1:") && first.contains(" at 127.0.0.1:"),
        "{out}"
    );
    for name in [
        "a) gRPC direct",
        "b) REST POST JSON",
        "g) POST, no idle spin",
        "h) floor: hyper→h2 relay",
        "c) REST GET path+query",
        "e) GET during swaps",
        "f) POST + full edge",
    ] {
        let fields: Vec<&str> = out
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} row in:\n{out}"))
            .split_whitespace()
            .collect();
        // req/s, errors, p50, p99, p99.9, gateway CPU, ratio, added p50.
        assert_eq!(fields.len(), 8, "{name}: {fields:?}");
        let number = |i: usize| fields[i].parse::<f64>().unwrap_or(-1.0);
        assert!(number(0) > 0.0, "{name} served nothing: {fields:?}");
        assert_eq!(fields[1], "0", "{name} had errors: {fields:?}");
        assert!(number(6) > 0.0, "{name} has no ratio: {fields:?}");
        if name.starts_with("a)") {
            assert_eq!(fields[5], "-", "direct gRPC has no gateway CPU");
        } else {
            assert!(number(5) > 0.0, "{name} has no gateway CPU: {fields:?}");
        }
    }
    assert!(out.contains("(0 refused)"), "{out}");
    let ws = out
        .lines()
        .find_map(|line| line.strip_prefix("WebSocket via gateway"))
        .unwrap_or_else(|| panic!("no WebSocket row in:\n{out}"));
    assert!(ws.contains("ratio"), "{ws}");
    assert!(
        out.contains("idle streams held open: 5 WebSockets"),
        "{out}"
    );
    let rss: u64 = out
        .lines()
        .find_map(|line| {
            line.strip_prefix("gateway peak RSS: ")?
                .strip_suffix(" KiB")
        })
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    assert!(rss > 0, "{out}");
}

#[tokio::test]
async fn idle_spin_is_bounded() {
    for value in ["1s", "soon"] {
        let run = protogate(["serve", "--listen", "127.0.0.1:0", "--idle-spin", value]).await;
        let stderr = run.assert_failed();
        assert!(
            stderr.contains("--idle-spin") && stderr.contains(value) && stderr.contains("10ms"),
            "{stderr}"
        );
    }
    let run = with_config(&["check"], "[server]\nidle_spin = \"20ms\"\n").await;
    let stderr = run.assert_failed();
    assert!(stderr.contains("server.idle_spin"), "{stderr}");
}

#[tokio::test]
async fn bench_relay_refuses_bad_arguments() {
    let run = protogate(["bench-relay", "--upstream", "not-an-address"]).await;
    let stderr = run.assert_failed();
    assert!(
        stderr.contains("--upstream") && stderr.contains("not-an-address"),
        "{stderr}"
    );
    let run = protogate([
        "bench-relay",
        "--upstream",
        "127.0.0.1:9",
        "--idle-spin",
        "1s",
    ])
    .await;
    let stderr = run.assert_failed();
    assert!(
        stderr.contains("--idle-spin") && stderr.contains("10ms"),
        "{stderr}"
    );
}

#[tokio::test]
async fn committed_shop_descriptors_are_current() {
    // What `protos/shop/v1/*.proto` expands to in the command documented in src/demo/mod.rs.
    let mut protos: Vec<PathBuf> = std::fs::read_dir(support::repo().join("protos/shop/v1"))
        .expect("read protos/shop/v1")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .map(|p| Path::new("protos/shop/v1").join(p.file_name().expect("file name")))
        .collect();
    protos.sort();
    assert!(protos.len() >= 3, "{protos:?}");
    let tmp = TempDir::new("shop");
    let out = tmp.join("shop.binpb");
    let mut args: Vec<&OsStr> = vec![OsStr::new("compile")];
    args.extend(protos.iter().map(|p| p.as_os_str()));
    args.extend([OsStr::new("-I"), OsStr::new("protos"), OsStr::new("-o")]);
    args.push(out.as_os_str());
    protogate(args).await.assert_ok();
    let fresh = std::fs::read(&out).expect("read compiled set");
    let committed = std::fs::read(support::repo().join("descriptors/shop.binpb"))
        .expect("read descriptors/shop.binpb");
    assert!(
        fresh == committed,
        "descriptors/shop.binpb is stale; regenerate it with \
         `cargo run -- compile protos/shop/v1/*.proto -I protos -o descriptors/shop.binpb`"
    );
}

/// One `curl` line of the demo's instructions, as curl would send it.
#[derive(Debug)]
struct Curl {
    method: reqwest::Method,
    url: String,
    /// `-d`: curl sends it as a form body with the POST method unless -X says otherwise.
    body: Option<String>,
    /// `-H`: extra request headers.
    headers: Vec<(String, String)>,
    /// `-N`: a stream, read line by line.
    streaming: bool,
    /// The comment after `#`.
    comment: String,
}

impl Curl {
    fn parse(line: &str) -> Curl {
        let (words, comment) = shell_words(line);
        let mut words = words.into_iter();
        assert_eq!(words.next().as_deref(), Some("curl"), "{line}");
        let (mut method, mut url, mut body, mut streaming) = (None, None, None, false);
        let mut headers = Vec::new();
        while let Some(word) = words.next() {
            match word.as_str() {
                "-X" => method = words.next(),
                "-d" => body = words.next(),
                "-H" => {
                    let header = words.next().unwrap_or_default();
                    let (name, value) = header.split_once(':').expect("-H 'Name: value'");
                    headers.push((name.trim().to_owned(), value.trim().to_owned()));
                }
                "-N" => streaming = true,
                "-i" => {}
                w if w.starts_with("http://") => url = Some(word),
                other => panic!("the test does not know curl's {other:?} in: {line}"),
            }
        }
        let method = method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.into());
        Curl {
            method: reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
            url: url.unwrap_or_else(|| panic!("no URL in: {line}")),
            body,
            headers,
            streaming,
            comment,
        }
    }
}

/// Splits a shell line into words (single quotes only), and the comment after an unquoted `#`.
fn shell_words(line: &str) -> (Vec<String>, String) {
    let (mut words, mut word, mut quoted, mut in_word) = (Vec::new(), String::new(), false, false);
    for (i, c) in line.trim().char_indices() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            '#' if !quoted && !in_word => {
                return (words, line.trim()[i + 1..].trim().to_owned());
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    assert!(!quoted, "unbalanced quote in: {line}");
    if in_word {
        words.push(word);
    }
    (words, String::new())
}

#[tokio::test]
async fn demo_instructions_all_work() {
    let demo = Served::start(["demo", "--listen", "127.0.0.1:0"]).await;
    let instructions = demo::instructions(demo.addr);
    assert_eq!(
        demo.banner.trim_end(),
        instructions,
        "the demo prints its instructions, for the port it bound, before the listening line"
    );
    let client = reqwest::Client::new();
    let curls: Vec<Curl> = instructions
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl "))
        .map(Curl::parse)
        .collect();
    assert!(curls.len() >= 10, "{curls:#?}");
    let (mut not_found, mut unauthorized) = (0, 0);
    // In order: later lines use what earlier ones created (order o1).
    for curl in &curls {
        let mut request = client.request(curl.method.clone(), &curl.url);
        for (name, value) in &curl.headers {
            request = request.header(name, value);
        }
        if let Some(body) = &curl.body {
            // curl's default for -d, unless -H gives a Content-Type.
            if !curl
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            {
                request = request.header("content-type", "application/x-www-form-urlencoded");
            }
            request = request.body(body.clone());
        }
        let resp = request.send().await.expect("request");
        let status = resp.status();
        let xml = resp
            .headers()
            .get("content-type")
            .is_some_and(|ct| ct.as_bytes().ends_with(b"/xml"));
        let text = resp.text().await.expect("body");
        if curl.comment.contains("404") {
            not_found += 1;
            assert_eq!(status, 404, "{curl:?}: {text}");
            let body: serde_json::Value = serde_json::from_str(&text).expect("JSON error body");
            assert_eq!(body["code"], 5, "{curl:?}: {text}");
            continue;
        }
        if curl.comment.contains("401") {
            unauthorized += 1;
            assert_eq!(status, 401, "{curl:?}: {text}");
            let body: serde_json::Value = serde_json::from_str(&text).expect("JSON error body");
            assert_eq!(body["code"], 16, "{curl:?}: {text}");
            continue;
        }
        assert!(status.is_success(), "{curl:?}: {status} {text}");
        if curl.streaming {
            let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
            assert!(!lines.is_empty(), "{curl:?}: empty stream");
            for line in lines {
                assert!(line.starts_with(r#"{"result":"#), "{curl:?}: {line}");
                serde_json::from_str::<serde_json::Value>(line).expect("one JSON value a line");
            }
        } else if xml {
            assert!(text.starts_with("<?xml"), "{curl:?}: {text}");
        } else {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{curl:?}: {e}: {text}"));
        }
    }
    assert_eq!(not_found, 1, "exactly one line is commented as a 404");
    assert_eq!(unauthorized, 1, "exactly one line is commented as a 401");
    // The key's plan allows 5 order requests a minute: the loop the instructions print ends in
    // a 429 with Retry-After.
    let orders = format!("http://{}/v1/users/u1/orders", demo.addr);
    let mut limited = None;
    for _ in 0..6 {
        let resp = client
            .get(&orders)
            .header("x-api-key", demo::DEMO_API_KEY)
            .send()
            .await
            .expect("request");
        if resp.status() == 429 {
            limited = Some(resp);
            break;
        }
        assert_eq!(resp.status(), 200);
    }
    let limited = limited.expect("the demo's rate limit answered 429 within its plan");
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(limited.headers()["ratelimit-limit"], "5");
}

#[tokio::test]
async fn each_request_writes_one_access_log_line() {
    let mirror = MirrorBackend::start().await;
    let served = Served::start([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--proto",
        "protos/test/v1/echo.proto",
        "--proto-path",
        "protos",
        "--upstream",
        &mirror.url,
    ])
    .await;
    let client = reqwest::Client::new();
    let ok = client
        .get(served.url("/v1/messages/42?revision=1"))
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
    let missing = client
        .get(served.url("/nowhere"))
        .send()
        .await
        .expect("request");
    assert_eq!(missing.status(), 404);
    served.terminate();
    let (status, stderr) = served.exit_within(PATIENCE).await;
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("protogate::access"))
        .collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    let hit = lines[0];
    for part in [
        "method=GET",
        "path=/v1/messages/42",
        "route=\"/v1/messages/{message_id}\"",
        "grpc_method=\"test.v1.Echo.GetMessage\"",
        "status=200",
        "latency_us=",
    ] {
        assert!(hit.contains(part), "{part} missing from {hit}");
    }
    assert!(
        !hit.contains('\u{1b}'),
        "colour codes in a piped log: {hit}"
    );
    assert!(
        lines[1].contains("status=404") && lines[1].contains("route=\"-\""),
        "{}",
        lines[1]
    );
}
