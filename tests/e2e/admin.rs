//! The admin API end to end: uploads in every form against a real mirror backend, replacement and
//! deletion, refusals that leave the registry exactly as it was, persistence across a restart of
//! the real binary, gRPC reflection against a tonic backend, config reload (HTTP and SIGHUP), and
//! uploads under a steady load with zero failed requests.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use reqwest::Method;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use protogate::config::Config;
use protogate::demo::{self, Mirror};
use protogate::descriptors::{bundled_set, compile_protos, RegistryBuilder, SourceName};
use protogate::uploads::sha256_hex;

use crate::cli::{protogate, Launching, MirrorBackend, Served, TempDir, PATIENCE};
use crate::support::{self, AdminGateway, AdminSetup};

const WIDGETS_FILE: &str = "widgets/v1/widgets.proto";

const WIDGETS_V1: &str = r#"
syntax = "proto3";
package widgets.v1;
import "google/api/annotations.proto";
service Widgets {
  rpc GetWidget(Widget) returns (Widget) {
    option (google.api.http) = {get: "/v1/widgets/{id}"};
  }
  rpc ListWidgets(Widget) returns (Widget) {
    option (google.api.http) = {get: "/v1/widgets"};
  }
}
message Widget {
  string id = 1;
  string name = 2;
  int32 size = 3;
}
"#;

/// GetWidget moves to /v2, CreateWidget is new, ListWidgets stays where it was.
const WIDGETS_V2: &str = r#"
syntax = "proto3";
package widgets.v1;
import "google/api/annotations.proto";
service Widgets {
  rpc GetWidget(Widget) returns (Widget) {
    option (google.api.http) = {get: "/v2/widgets/{id}"};
  }
  rpc ListWidgets(Widget) returns (Widget) {
    option (google.api.http) = {get: "/v1/widgets"};
  }
  rpc CreateWidget(Widget) returns (Widget) {
    option (google.api.http) = {post: "/v2/widgets" body: "*"};
  }
}
message Widget {
  string id = 1;
  string name = 2;
  int32 size = 3;
}
"#;

const GADGETS_FILE: &str = "gadgets/v1/gadgets.proto";

const GADGETS: &str = r#"
syntax = "proto3";
package gadgets.v1;
import "google/api/annotations.proto";
service Gadgets {
  rpc GetGadget(Gadget) returns (Gadget) {
    option (google.api.http) = {get: "/v1/gadgets/{id}"};
  }
}
message Gadget {
  string id = 1;
  bool shiny = 2;
}
"#;

const THING_TYPES: &str = r#"
syntax = "proto3";
package things.v1;
message Thing {
  string id = 1;
  repeated string tags = 2;
}
"#;

const THINGS: &str = r#"
syntax = "proto3";
package things.v1;
import "google/api/annotations.proto";
import "things/v1/types.proto";
service Things {
  rpc GetThing(Thing) returns (Thing) {
    option (google.api.http) = {get: "/v1/things/{id}"};
  }
}
"#;

const THINGS_FILES: [(&str, &str); 2] = [
    ("things/v1/types.proto", THING_TYPES),
    ("things/v1/things.proto", THINGS),
];

/// Compiles `files` (name, text) as `protogate compile` does: a FileDescriptorSet with imports.
fn compiled(files: &[(&str, &str)]) -> Bytes {
    let tmp = TempDir::new("protos");
    let mut paths = Vec::new();
    for (name, text) in files {
        let path = tmp.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write proto");
        paths.push(path);
    }
    compile_protos(&paths, &[tmp.path().to_owned()], bundled_set())
        .expect("test protos compile")
        .into()
}

/// A mirror backend that knows every service these tests upload (widgets in its v2 form, a
/// superset of v1), in this process; stops on drop.
struct Backend {
    addr: SocketAddr,
    stats: Arc<demo::MirrorStats>,
    _stop: watch::Sender<()>,
}

impl Backend {
    async fn start() -> Backend {
        let (stop, stopped) = watch::channel(());
        let (addr, stats) = demo::start_mirror(mirror_pool(), stopped)
            .await
            .expect("mirror starts");
        Backend {
            addr,
            stats,
            _stop: stop,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn mirror_pool() -> prost_reflect::DescriptorPool {
    let mut builder = RegistryBuilder::new();
    for (source, set) in [
        ("widgets", compiled(&[(WIDGETS_FILE, WIDGETS_V2)])),
        ("gadgets", compiled(&[(GADGETS_FILE, GADGETS)])),
        ("things", compiled(&THINGS_FILES)),
    ] {
        builder
            .add_set_bytes(SourceName::new(source), &set)
            .expect("mirror set");
    }
    builder.build().expect("mirror pool").pool().clone()
}

/// A gateway with no services whose default backend is `backend`, and its admin API.
async fn empty_gateway(backend: &Backend, tweak: impl FnOnce(&mut AdminSetup)) -> AdminGateway {
    let mut config = Config::default();
    config.set_upstream(&backend.url()).expect("upstream");
    let mut setup = AdminSetup::new(config);
    tweak(&mut setup);
    AdminGateway::start(setup).await
}

impl AdminGateway {
    async fn call(&self, method: Method, path: &str) -> (u16, Value) {
        let resp = self
            .admin_request(method, path)
            .send()
            .await
            .expect("admin request");
        support::read(resp).await
    }

    async fn put(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let resp = self
            .admin_request(Method::PUT, path)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("upload");
        support::read(resp).await
    }

    async fn put_set(&self, name: &str, set: &Bytes) -> (u16, Value) {
        self.put(
            &format!("/admin/v1/descriptors/{name}"),
            "application/x-protobuf",
            set.clone(),
        )
        .await
    }

    /// The live route table and the listed sets, to compare before and after a refusal.
    async fn registry_state(&self) -> (Value, Value) {
        let (status, routes) = self.call(Method::GET, "/admin/v1/routes").await;
        assert_eq!(status, 200, "{routes}");
        let (status, sets) = self.call(Method::GET, "/admin/v1/descriptors").await;
        assert_eq!(status, 200, "{sets}");
        (routes, sets)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.gateway.get(path).await
    }
}

/// The `routes` list of a change, as `METHOD PATH` strings.
fn route_names(changes: &Value, which: &str) -> Vec<String> {
    changes["changes"]["routes"][which]
        .as_array()
        .unwrap_or_else(|| panic!("no routes.{which} in {changes}"))
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A multipart/form-data body with one part per file, as `curl -F file=@x.proto` sends them.
fn multipart(files: &[(&str, &str)]) -> (String, Vec<u8>) {
    let boundary = "protogate-test-7c1f3e";
    let mut body = String::new();
    for (name, text) in files {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
             Content-Type: text/plain\r\n\r\n{text}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

#[tokio::test]
async fn uploads_in_every_form_serve_their_routes() {
    let backend = Backend::start().await;
    let gw = empty_gateway(&backend, |_| {}).await;
    let (routes, sets) = gw.registry_state().await;
    assert_eq!(
        routes["routes"],
        serde_json::json!([]),
        "starts with no services"
    );
    assert_eq!(sets["sets"], serde_json::json!([]));
    assert_eq!(gw.get("/v1/widgets/7").await.0, 404);

    // A binary FileDescriptorSet.
    let widgets = compiled(&[(WIDGETS_FILE, WIDGETS_V1)]);
    let (status, body) = gw.put_set("widgets", &widgets).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["replaced"], false);
    assert_eq!(
        strings(&body["changes"]["services"]["added"]),
        ["widgets.v1.Widgets"]
    );
    assert_eq!(
        strings(&body["changes"]["methods"]["added"]),
        [
            "widgets.v1.Widgets.GetWidget",
            "widgets.v1.Widgets.ListWidgets"
        ]
    );
    let added = route_names(&body, "added");
    assert!(
        added.contains(&"GET /v1/widgets/{id}".to_owned()),
        "{added:?}"
    );
    assert!(
        added.contains(&"POST /widgets.v1.Widgets/GetWidget".to_owned()),
        "{added:?}"
    );
    let (status, reply) = gw.get("/v1/widgets/7?name=gear&size=3").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply,
        serde_json::json!({"id": "7", "name": "gear", "size": 3})
    );

    // One .proto file as text.
    let (status, body) = gw
        .put(
            &format!("/admin/v1/descriptors/gadgets?file={GADGETS_FILE}"),
            "text/plain",
            GADGETS,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["set"]["files"], serde_json::json!([GADGETS_FILE]));
    let (status, reply) = gw.get("/v1/gadgets/3?shiny=true").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["shiny"], true);

    // Several .proto files, one importing the other, as a multipart form.
    let (content_type, form) = multipart(&THINGS_FILES);
    let (status, body) = gw
        .put("/admin/v1/descriptors/things", &content_type, form)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(strings(&body["set"]["services"]), ["things.v1.Things"]);
    let (status, reply) = gw.get("/v1/things/5?tags=a&tags=b").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["tags"], serde_json::json!(["a", "b"]));

    let (_, sets) = gw.registry_state().await;
    let listed: Vec<&str> = sets["sets"]
        .as_array()
        .expect("sets")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(listed, ["gadgets", "things", "widgets"]);
    let entry = &sets["sets"][2];
    assert_eq!(entry["sha256"], sha256_hex(&widgets));
    assert_eq!(entry["size"], widgets.len());
    assert_eq!(entry["services"], serde_json::json!(["widgets.v1.Widgets"]));
    assert!(
        entry["uploadedAt"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{entry}"
    );

    // The download is the set as uploaded.
    let resp = gw
        .admin_request(Method::GET, "/admin/v1/descriptors/widgets")
        .send()
        .await
        .expect("download");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
    assert_eq!(resp.bytes().await.expect("body"), widgets);
    assert_eq!(backend.stats.calls.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_replaced_set_swaps_its_routes_and_a_deleted_one_is_gone() {
    let backend = Backend::start().await;
    let gw = empty_gateway(&backend, |_| {}).await;
    let (status, body) = gw
        .put_set("widgets", &compiled(&[(WIDGETS_FILE, WIDGETS_V1)]))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(gw.get("/v1/widgets/1").await.0, 200);

    let (status, body) = gw
        .put_set("widgets", &compiled(&[(WIDGETS_FILE, WIDGETS_V2)]))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replaced"], true);
    assert_eq!(
        strings(&body["changes"]["services"]["changed"]),
        ["widgets.v1.Widgets"]
    );
    assert_eq!(
        strings(&body["changes"]["methods"]["added"]),
        ["widgets.v1.Widgets.CreateWidget"]
    );
    let added = route_names(&body, "added");
    let removed = route_names(&body, "removed");
    assert!(
        added.contains(&"GET /v2/widgets/{id}".to_owned()),
        "{added:?}"
    );
    assert!(added.contains(&"POST /v2/widgets".to_owned()), "{added:?}");
    assert_eq!(removed, ["GET /v1/widgets/{id}"]);

    assert_eq!(
        gw.get("/v1/widgets/1").await.0,
        404,
        "the old route is gone"
    );
    let (status, reply) = gw.get("/v2/widgets/1").await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = gw
        .gateway
        .send("POST", "/v2/widgets", r#"{"id": "9", "size": 4}"#)
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["size"], 4);
    assert_eq!(
        gw.get("/v1/widgets").await.0,
        200,
        "the unchanged route stays"
    );

    let (status, body) = gw
        .call(Method::DELETE, "/admin/v1/descriptors/widgets")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        strings(&body["changes"]["services"]["removed"]),
        ["widgets.v1.Widgets"]
    );
    for path in ["/v2/widgets/1", "/v1/widgets"] {
        let (status, reply) = gw.get(path).await;
        assert_eq!(status, 404, "{path}: {reply}");
    }
    let (status, body) = gw
        .call(Method::DELETE, "/admin/v1/descriptors/widgets")
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], 5);
    assert_eq!(
        gw.call(Method::GET, "/admin/v1/descriptors/widgets")
            .await
            .0,
        404
    );
    let (routes, _) = gw.registry_state().await;
    assert_eq!(routes["routes"], serde_json::json!([]));
}

#[tokio::test]
async fn sets_bound_to_a_backend_or_an_upstream_call_it() {
    let backend = Backend::start().await;
    // No default backend: the binding is the only way calls reach the mirror.
    let toml = format!(
        "[backends.mirror]\naddresses = [\"http://{}\"]\n",
        backend.addr
    );
    let config = Config::from_toml(&toml, Path::new(".")).expect("config");
    let gw = AdminGateway::start(AdminSetup::new(config)).await;

    let (status, body) = gw
        .put(
            "/admin/v1/descriptors/gadgets?backend=mirror",
            "application/octet-stream",
            compiled(&[(GADGETS_FILE, GADGETS)]),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["set"]["backend"], "mirror");
    assert_eq!(gw.get("/v1/gadgets/1").await.0, 200);

    let upstream = format!("/admin/v1/descriptors/widgets?upstream={}", backend.url());
    let (status, body) = gw
        .put(
            &upstream,
            "application/x-protobuf",
            compiled(&[(WIDGETS_FILE, WIDGETS_V1)]),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let routes = body["changes"]["routes"]["added"]
        .as_array()
        .expect("routes");
    assert!(
        routes.iter().all(|r| r["backend"] == "upload:widgets"),
        "{body}"
    );
    assert_eq!(gw.get("/v1/widgets/1").await.0, 200);

    // Unbound, the service has no backend: 503 naming it, and a warning in the answer.
    let (content_type, form) = multipart(&THINGS_FILES);
    let (status, body) = gw
        .put("/admin/v1/descriptors/things", &content_type, form)
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body["warnings"]
            .to_string()
            .contains("no backend for service things.v1.Things"),
        "{body}"
    );
    let (status, reply) = gw.get("/v1/things/1").await;
    assert_eq!(status, 503, "{reply}");
}

#[tokio::test]
async fn every_refusal_leaves_the_registry_as_it_was() {
    let backend = Backend::start().await;
    let gw = empty_gateway(&backend, |setup| {
        setup.token = Some("s3cret".to_owned());
        setup.max_upload_bytes = 256 << 10;
    })
    .await;
    let widgets = compiled(&[(WIDGETS_FILE, WIDGETS_V1)]);
    assert_eq!(gw.put_set("widgets", &widgets).await.0, 201);
    assert_eq!(
        gw.put_set("gadgets", &compiled(&[(GADGETS_FILE, GADGETS)]))
            .await
            .0,
        201
    );
    let before = gw.registry_state().await;

    let mut missing_import =
        prost_types::FileDescriptorSet::decode(compiled(&[(GADGETS_FILE, GADGETS)])).expect("set");
    for file in &mut missing_import.file {
        if file.name() == GADGETS_FILE {
            file.name = Some("lonely/v1/lonely.proto".into());
            file.package = Some("lonely.v1".into());
            file.dependency.push("nowhere/v1/missing.proto".into());
        }
    }
    let missing_import = Bytes::from(missing_import.encode_to_vec());
    let symbol_twin = compiled(&[(
        "twin/widget.proto",
        "syntax = \"proto3\";\npackage widgets.v1;\nmessage Widget { string id = 1; }\n",
    )]);
    let route_clash = compiled(&[(
        "clash/v1/clash.proto",
        r#"syntax = "proto3";
        package clash.v1;
        import "google/api/annotations.proto";
        message Req { string name = 1; }
        service Clash {
          rpc Get(Req) returns (Req) { option (google.api.http) = {get: "/v1/widgets/{name}"}; }
        }"#,
    )]);

    struct Refusal {
        what: &'static str,
        path: String,
        content_type: &'static str,
        body: Bytes,
        status: u16,
        mentions: &'static [&'static str],
    }
    let upload = |what, name: &str, content_type, body: Bytes, status, mentions| Refusal {
        what,
        path: format!("/admin/v1/descriptors/{name}"),
        content_type,
        body,
        status,
        mentions,
    };
    let binary = "application/x-protobuf";
    let refusals = [
        upload(
            "bad bytes",
            "junk",
            binary,
            Bytes::from_static(b"\xff\xff\xff"),
            400,
            &["junk", "not a valid FileDescriptorSet"],
        ),
        upload(
            "missing import",
            "lonely",
            binary,
            missing_import,
            400,
            &["lonely/v1/lonely.proto", "nowhere/v1/missing.proto"],
        ),
        upload(
            "missing import in text",
            "lonely",
            "text/plain",
            Bytes::from_static(b"syntax = \"proto3\";\nimport \"nowhere/v1/missing.proto\";\n"),
            400,
            &["nowhere/v1/missing.proto"],
        ),
        upload(
            "unparsable text",
            "broken",
            "text/plain",
            Bytes::from_static(b"syntax = \"proto3\";\nmessage {"),
            400,
            &["broken.proto"],
        ),
        upload(
            "file name conflict",
            "impostor",
            binary,
            compiled(&[(WIDGETS_FILE, WIDGETS_V2)]),
            409,
            &[WIDGETS_FILE, "set \"widgets\"", "set \"impostor\""],
        ),
        upload(
            "symbol conflict",
            "twin",
            binary,
            symbol_twin,
            409,
            &["widgets.v1.Widget", WIDGETS_FILE, "twin/widget.proto"],
        ),
        upload(
            "route conflict",
            "clash",
            binary,
            route_clash,
            409,
            &[
                "GET /v1/widgets/{id}",
                "GET /v1/widgets/{name}",
                "set \"widgets\"",
                "set \"clash\"",
            ],
        ),
        upload(
            "bad name",
            ".hidden",
            binary,
            widgets.clone(),
            400,
            &["invalid set name"],
        ),
        upload(
            "bad name with a space",
            "a%20b",
            binary,
            widgets.clone(),
            400,
            &["invalid set name"],
        ),
        upload(
            "unknown backend",
            "gadgets2?backend=ghost",
            binary,
            compiled(&[(
                "g2.proto",
                "syntax = \"proto3\";\npackage g2;\nservice S {}\n",
            )]),
            400,
            &["ghost"],
        ),
        upload(
            "both bindings",
            "x?backend=a&upstream=http://127.0.0.1:1",
            binary,
            widgets.clone(),
            400,
            &["not both"],
        ),
        upload(
            "unknown parameter",
            "x?bakend=a",
            binary,
            widgets.clone(),
            400,
            &["bakend"],
        ),
        upload(
            "unsupported type",
            "x",
            "application/json",
            Bytes::from_static(b"{}"),
            415,
            &["application/x-protobuf"],
        ),
        upload(
            "oversize",
            "big",
            binary,
            Bytes::from(vec![0u8; 300 << 10]),
            413,
            &["262144"],
        ),
    ];
    for refusal in refusals {
        let (status, body) = gw
            .put(&refusal.path, refusal.content_type, refusal.body)
            .await;
        assert_eq!(status, refusal.status, "{}: {body}", refusal.what);
        assert_eq!(
            body["details"],
            serde_json::json!([]),
            "{}: the error format: {body}",
            refusal.what
        );
        let message = body["message"].as_str().unwrap_or_default();
        for part in refusal.mentions {
            assert!(
                message.contains(part),
                "{}: {part:?} missing from {message:?}",
                refusal.what
            );
        }
        assert_eq!(
            gw.registry_state().await,
            before,
            "{} changed the registry",
            refusal.what
        );
    }

    // Deleting what is not there.
    let (status, _) = gw
        .call(Method::DELETE, "/admin/v1/descriptors/nothing")
        .await;
    assert_eq!(status, 404);

    // No token, a wrong token, another scheme: 401 with a challenge, nothing changed.
    let client = reqwest::Client::new();
    let url = format!("{}/admin/v1/descriptors/sneaky", gw.admin);
    for auth in [None, Some("Bearer wrong"), Some("Basic czNjcmV0")] {
        let mut request = client
            .put(&url)
            .header("content-type", binary)
            .body(widgets.clone());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let resp = request.send().await.expect("request");
        assert_eq!(resp.status(), 401, "{auth:?}");
        let challenge = resp.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let (_, body) = support::read(resp).await;
        assert_eq!(body["code"], 16, "UNAUTHENTICATED: {body}");
    }
    let resp = client
        .get(format!("{}/admin/v1/routes", gw.admin))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401, "reads need the token too");
    assert_eq!(gw.registry_state().await, before);

    // The admin API is not on the public port.
    let (status, _) = gw.gateway.get("/admin/v1/routes").await;
    assert_eq!(status, 404);
}

/// A tonic server: the mirror behind gRPC server reflection of `set`, in v1 or only v1alpha.
async fn reflecting_backend(set: Bytes, v1: bool) -> (SocketAddr, watch::Sender<()>) {
    let builder =
        tonic_reflection::server::Builder::configure().register_encoded_file_descriptor_set(&set);
    let routes = Mirror::new(mirror_pool()).routes();
    let routes = if v1 {
        routes.add_service(builder.build_v1().expect("reflection v1"))
    } else {
        routes.add_service(builder.build_v1alpha().expect("reflection v1alpha"))
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, mut stopped) = watch::channel(());
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let shutdown = async move {
            let _ = stopped.changed().await;
        };
        let _ = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
    });
    (addr, stop)
}

#[tokio::test]
async fn reflection_registers_what_a_backend_serves_in_v1_or_v1alpha() {
    let both = [
        compiled(&[(WIDGETS_FILE, WIDGETS_V1)]),
        compiled(&THINGS_FILES),
    ];
    // An encoded set is its files one after another, so two sets joined are one set; decoding
    // with prost-types instead would drop the google.api.http options.
    let set = Bytes::from([both[0].as_ref(), both[1].as_ref()].concat());
    let (v1, _stop_v1) = reflecting_backend(set.clone(), true).await;
    let (alpha, _stop_alpha) = reflecting_backend(set, false).await;
    let toml = format!(
        "[backends.modern]\naddresses = [\"http://{v1}\"]\n[backends.vintage]\naddresses = [\"http://{alpha}\"]\n"
    );
    let config = Config::from_toml(&toml, Path::new(".")).expect("config");
    let gw = AdminGateway::start(AdminSetup::new(config)).await;

    let (status, body) = gw
        .call(Method::POST, "/admin/v1/reflect?backend=modern")
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["set"]["name"], "reflected.modern");
    assert_eq!(body["set"]["backend"], "modern");
    assert_eq!(
        strings(&body["set"]["services"]),
        ["things.v1.Things", "widgets.v1.Widgets"],
        "every service but reflection itself"
    );
    // The google.api.http annotations came through, and calls go to that backend.
    let (status, reply) = gw.get("/v1/widgets/12").await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = gw.get("/v1/things/3").await;
    assert_eq!(status, 200, "{reply}");

    // Asking again replaces the set with the same content: nothing changes.
    let (status, body) = gw
        .call(Method::POST, "/admin/v1/reflect?backend=modern")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(route_names(&body, "added").is_empty() && route_names(&body, "removed").is_empty());

    // A v1alpha-only server, as a set of another name: the same services bound to another
    // backend conflict.
    let (status, body) = gw
        .call(Method::POST, "/admin/v1/reflect?backend=vintage&name=old")
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = gw
        .call(Method::DELETE, "/admin/v1/descriptors/reflected.modern")
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gw
        .call(Method::POST, "/admin/v1/reflect?backend=vintage&name=old")
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["set"]["backend"], "vintage");
    assert_eq!(gw.get("/v1/widgets/12").await.0, 200);

    let (status, body) = gw
        .call(Method::POST, "/admin/v1/reflect?backend=ghost")
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = gw.call(Method::POST, "/admin/v1/reflect").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn reload_applies_a_changed_config_and_refuses_a_bad_one() {
    let backend = Backend::start().await;
    let tmp = TempDir::new("reload");
    let file = tmp.join("protogate.toml");
    let base = format!(
        "default_backend = \"mirror\"\n[backends.mirror]\naddresses = [\"http://{}\"]\n",
        backend.addr
    );
    std::fs::write(&file, &base).expect("write config");
    let path = file.clone();
    let loader: protogate::admin::ConfigLoader =
        Arc::new(move || Config::from_file(&path).map_err(|e| e.to_string()));
    let mut setup = AdminSetup::new(loader().expect("config"));
    setup.loader = Some(loader);
    let gw = AdminGateway::start(setup).await;
    let (status, body) = gw
        .put_set("gadgets", &compiled(&[(GADGETS_FILE, GADGETS)]))
        .await;
    assert_eq!(status, 201, "{body}");

    // A rule for the uploaded method replaces its annotation; listen only changes at a restart.
    let changed = format!(
        "listen = \"127.0.0.1:1\"\n{base}\n[[http_rules]]\nselector = \"gadgets.v1.Gadgets.GetGadget\"\nget = \"/v1/config/gadgets/{{id}}\"\n"
    );
    std::fs::write(&file, changed).expect("write config");
    let (status, body) = gw.call(Method::POST, "/admin/v1/reload").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(route_names(&body, "added"), ["GET /v1/config/gadgets/{id}"]);
    assert_eq!(route_names(&body, "removed"), ["GET /v1/gadgets/{id}"]);
    assert_eq!(body["needsRestart"], serde_json::json!(["listen"]));
    let (status, reply) = gw.get("/v1/config/gadgets/8").await;
    assert_eq!(status, 200, "{reply}");
    let before = gw.registry_state().await;

    for (bad, mentions) in [
        (
            format!("default_timeout = \"soon\"\n{base}"),
            "default_timeout",
        ),
        (format!("frobnicate = true\n{base}"), "frobnicate"),
        (
            format!("{base}[[http_rules]]\nselector = \"gadgets.v1.Gadgets.Nope\"\nget = \"/x\"\n"),
            "gadgets.v1.Gadgets.Nope",
        ),
    ] {
        std::fs::write(&file, bad).expect("write config");
        let (status, body) = gw.call(Method::POST, "/admin/v1/reload").await;
        assert_eq!(status, 400, "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(mentions),
            "{mentions} missing from {message}"
        );
        assert_eq!(
            gw.registry_state().await,
            before,
            "a refused reload changed the registry"
        );
        assert_eq!(gw.get("/v1/config/gadgets/8").await.0, 200);
    }
}

#[tokio::test]
async fn uploads_and_deletes_under_load_fail_no_request() {
    const TASKS: usize = 4;
    const MAX_PER_TASK: usize = 50_000;
    const ROUNDS: usize = 8;
    let backend = Backend::start().await;
    let gw = Arc::new(empty_gateway(&backend, |_| {}).await);
    let v1 = compiled(&[(WIDGETS_FILE, WIDGETS_V1)]);
    let v2 = compiled(&[(WIDGETS_FILE, WIDGETS_V2)]);
    let churn = compiled(&THINGS_FILES);
    assert_eq!(
        gw.put_set("gadgets", &compiled(&[(GADGETS_FILE, GADGETS)]))
            .await
            .0,
        201
    );
    assert_eq!(gw.put_set("widgets", &v1).await.0, 201);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + PATIENCE;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (gw, stop, done, failures) =
                (gw.clone(), stop.clone(), done.clone(), failures.clone());
            tokio::spawn(async move {
                for i in 0..MAX_PER_TASK {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    // An unaffected route, and a route of the set being replaced (in both versions).
                    let (path, field) = if i % 2 == 0 {
                        (format!("/v1/gadgets/{task}-{i}"), "id")
                    } else {
                        (format!("/v1/widgets?name={task}-{i}"), "name")
                    };
                    let outcome = gw.gateway.client.get(gw.gateway.url(&path)).send().await;
                    let ok = match outcome {
                        Ok(resp) => {
                            let (status, body) = support::read(resp).await;
                            if status == 200 && body[field] == format!("{task}-{i}") {
                                None
                            } else {
                                Some(format!("{path}: {status} {body}"))
                            }
                        }
                        Err(err) => Some(format!("{path}: {err}")),
                    };
                    if let Some(failure) = ok {
                        failures.lock().expect("lock").push(failure);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let before_changes = done.load(Ordering::Relaxed);
    for round in 0..ROUNDS {
        for (what, status) in [
            (gw.put_set("widgets", &v2).await, 200),
            (gw.put_set("things", &churn).await, 201),
            (gw.put_set("widgets", &v1).await, 200),
            (
                gw.call(Method::DELETE, "/admin/v1/descriptors/things")
                    .await,
                200,
            ),
        ] {
            assert_eq!(what.0, status, "round {round}: {}", what.1);
        }
    }
    let during_changes = done.load(Ordering::Relaxed) - before_changes;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("load task");
    }
    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        during_changes >= ROUNDS,
        "the load ran during the changes ({during_changes} requests)"
    );
    assert!(backend.stats.calls.load(Ordering::Relaxed) >= done.load(Ordering::Relaxed));
}

/// `admin listening on http://ADDR` from what a gateway printed before its listening line.
fn admin_url(served: &Served) -> String {
    let addr = served
        .banner
        .lines()
        .find_map(|l| l.strip_prefix("admin listening on "))
        .unwrap_or_else(|| panic!("no admin line in {:?}", served.banner));
    addr.to_owned()
}

async fn admin_call(
    method: Method,
    url: String,
    token: &str,
    body: Option<(&str, Bytes)>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(token);
    if let Some((content_type, bytes)) = body {
        request = request.header("content-type", content_type).body(bytes);
    }
    support::read(request.send().await.expect("admin request")).await
}

#[tokio::test]
async fn sets_survive_a_restart_of_the_binary() {
    let backend = Backend::start().await;
    let state = TempDir::new("state");
    let upstream = backend.url();
    let flags = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token",
        "t0ken",
        "--upstream",
        &upstream,
        "--state-dir",
    ];
    let args: Vec<&OsStr> = flags
        .iter()
        .map(OsStr::new)
        .chain([state.path().as_os_str()])
        .collect();

    let gateway = Served::start(&args).await;
    let admin = admin_url(&gateway);
    let widgets = compiled(&[(WIDGETS_FILE, WIDGETS_V1)]);
    let put = |name: &str, content_type: &'static str, body: Bytes| {
        admin_call(
            Method::PUT,
            format!("{admin}/admin/v1/descriptors/{name}"),
            "t0ken",
            Some((content_type, body)),
        )
    };
    let (status, body) = put("widgets", "application/x-protobuf", widgets.clone()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = put(
        "gadgets",
        "text/plain",
        Bytes::from_static(GADGETS.as_bytes()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin_call(
        Method::DELETE,
        format!("{admin}/admin/v1/descriptors/gadgets"),
        "t0ken",
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = support::read(
        reqwest::get(gateway.url("/v1/widgets/9"))
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, 200);
    gateway.terminate();
    let (exit, stderr) = gateway.exit_within(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0), "{stderr}");

    // The saved set is loaded before the listener opens: served from the first request.
    let gateway = Served::start(&args).await;
    let (status, body) = support::read(
        reqwest::get(gateway.url("/v1/widgets/9"))
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "9");
    let (status, _) = support::read(
        reqwest::get(gateway.url("/v1/gadgets/1"))
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, 404, "the deleted set stays deleted");
    let (status, sets) = admin_call(
        Method::GET,
        format!("{}/admin/v1/descriptors", admin_url(&gateway)),
        "t0ken",
        None,
    )
    .await;
    assert_eq!(status, 200, "{sets}");
    assert_eq!(sets["sets"].as_array().map(Vec::len), Some(1), "{sets}");
    assert_eq!(sets["sets"][0]["sha256"], sha256_hex(&widgets));

    // `protogate routes` reads the same folder.
    let run = protogate([
        OsStr::new("routes"),
        OsStr::new("--state-dir"),
        state.path().as_os_str(),
    ])
    .await;
    run.assert_ok();
    assert!(run.stdout.contains("/v1/widgets/{id}"), "{}", run.stdout);
}

#[tokio::test]
async fn sighup_reloads_the_config() {
    let mirror = MirrorBackend::start().await;
    let tmp = TempDir::new("sighup");
    let config = tmp.join("protogate.toml");
    std::fs::write(&config, "").expect("write config");
    let launching = Launching::spawn([
        OsStr::new("serve"),
        OsStr::new("--proto"),
        OsStr::new("protos/test/v1/echo.proto"),
        OsStr::new("--proto-path"),
        OsStr::new("protos"),
        OsStr::new("--upstream"),
        OsStr::new(&mirror.url),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--admin-listen"),
        OsStr::new("off"),
        OsStr::new("--config"),
        config.as_os_str(),
    ]);
    let pid = launching.pid().to_string();
    let gateway = launching.announced().await;
    assert!(
        !gateway.banner.contains("admin listening"),
        "{}",
        gateway.banner
    );
    let plain = gateway.url("/v1/plain/5");
    assert_eq!(reqwest::get(&plain).await.expect("get").status(), 404);

    std::fs::write(
        &config,
        "[[http_rules]]\nselector = \"test.v1.Echo.Plain\"\nget = \"/v1/plain/{message_id}\"\n",
    )
    .expect("write config");
    let hup = || {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
    };
    hup();
    // The reload runs in the background; poll for its effect, within bounds.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = reqwest::get(&plain).await.expect("get").status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP never applied the new rule"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A bad config is refused; the gateway keeps serving with the running one.
    std::fs::write(&config, "default_timeout = \"soon\"\n").expect("write config");
    hup();
    for _ in 0..5 {
        assert_eq!(reqwest::get(&plain).await.expect("get").status(), 200);
    }
    gateway.terminate();
    let (exit, stderr) = gateway.exit_within(Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("SIGHUP: configuration reloaded"),
        "{stderr}"
    );
}

#[tokio::test]
async fn backends_marked_reflect_are_registered_at_startup() {
    let (addr, _stop) = reflecting_backend(compiled(&[(WIDGETS_FILE, WIDGETS_V1)]), true).await;
    let tmp = TempDir::new("reflect");
    let config = tmp.join("protogate.toml");
    std::fs::write(
        &config,
        format!("[backends.widgets]\naddresses = [\"http://{addr}\"]\nreflect = true\n"),
    )
    .expect("write config");
    let gateway = Served::start([
        OsStr::new("serve"),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--admin-listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--config"),
        config.as_os_str(),
    ])
    .await;
    let resp = reqwest::get(gateway.url("/v1/widgets/4"))
        .await
        .expect("get");
    let (status, body) = support::read(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "4");
}

#[tokio::test]
async fn the_admin_api_never_opens_on_a_public_address_without_a_token() {
    let run = protogate([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "0.0.0.0:0",
    ])
    .await;
    let stderr = run.assert_failed();
    assert!(
        stderr.contains("loopback") && stderr.contains("--admin-token"),
        "{stderr}"
    );
}
