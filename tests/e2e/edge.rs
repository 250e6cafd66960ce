//! The edge in front of every protocol: API keys, JWTs, policies, rate limits, IP rules, CORS,
//! header rules, request ids and path normalization, through real clients and the mirror
//! backend, whose call counter shows that a refused request never reached it.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Exchange, Gateway};

const KEY: &str = "demo-key-123";
const OTHER_KEY: &str = "other-key-456";
const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

fn sha(key: &str) -> String {
    protogate::middleware::auth::api_key::sha256_hex(key)
}

/// Keys, a JWT secret and a policy per test case on the mirror's test.v1.Echo.
fn config(extra: &str) -> String {
    config_with("", extra)
}

/// [`config`] with top-level keys, which TOML needs before the first table.
fn config_with(top: &str, extra: &str) -> String {
    format!(
        r#"
        {top}
        [auth]
        api_keys = [
          {{ name = "demo", sha256 = "{demo}", plan = "free" }},
          {{ name = "other", sha256 = "{other}", allow = ["test.v1.Echo.ListMessages"] }},
        ]
        [auth.jwt]
        issuers = ["https://issuer.test"]
        audiences = ["protogate-tests"]
        keys = [{{ algorithm = "HS256", secret = "{SECRET}" }}]
        [auth.forward]
        subject = "x-auth-subject"
        scopes = "x-auth-scopes"
        claims = {{ tenant = "x-auth-tenant" }}
        [plans.free]
        limits = [{{ requests = 3, per = "1m" }}]
        {extra}
        "#,
        demo = sha(KEY),
        other = sha(OTHER_KEY),
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// An HS256 token with `claims` over valid defaults.
fn token(claims: Value) -> String {
    let mut full = json!({
        "iss": "https://issuer.test",
        "aud": "protogate-tests",
        "sub": "user-7",
        "exp": now() + 300,
        "scope": "messages:read",
        "tenant": "acme",
    });
    if let (Some(out), Some(extra)) = (full.as_object_mut(), claims.as_object()) {
        for (k, v) in extra {
            out.insert(k.clone(), v.clone());
        }
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &full,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

fn calls(gw: &Gateway) -> usize {
    gw.mirror
        .as_ref()
        .expect("mirror")
        .calls
        .load(Ordering::SeqCst)
}

async fn get(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> Exchange {
    gw.exchange("GET", path, headers, "").await
}

fn header<'a>(ex: &'a Exchange, name: &str) -> Option<&'a str> {
    ex.headers.get(name).and_then(|v| v.to_str().ok())
}

fn error_code(ex: &Exchange) -> i64 {
    ex.json()["code"].as_i64().unwrap_or(-1)
}

#[tokio::test]
async fn api_keys_from_header_or_query_and_401_otherwise() {
    let gw = Gateway::mirror(&config(
        r#"
        [query]
        unknown = "reject"
        [policies."test.v1.Echo"]
        auth = "api_key"
        "#,
    ))
    .await;
    let missing = get(&gw, "/v1/messages/1", &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(error_code(&missing), 16, "{}", missing.text());
    assert!(header(&missing, "www-authenticate").is_some_and(|v| v.starts_with("Bearer")));
    assert!(missing.json()["message"]
        .as_str()
        .unwrap_or("")
        .contains("API key"));
    let wrong = get(&gw, "/v1/messages/1", &[("x-api-key", "nope")]).await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert_eq!(calls(&gw), 0, "refused requests reached the backend");

    let ok = get(&gw, "/v1/messages/1", &[("x-api-key", KEY)]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["messageId"], "1");
    // The key's name reaches the backend, the key itself does not.
    assert_eq!(
        header(&ok, "grpc-metadata-echo-x-auth-subject"),
        Some("demo")
    );
    assert!(header(&ok, "grpc-metadata-echo-x-api-key").is_none());
    // A bearer token beside the key is the backend's business on an API-key route, even though
    // the gateway checks JWTs elsewhere: it passes through untouched.
    let both = get(
        &gw,
        "/v1/messages/1",
        &[
            ("x-api-key", KEY),
            ("authorization", "Bearer backend-token"),
        ],
    )
    .await;
    assert_eq!(both.status, 200, "{}", both.text());
    assert_eq!(
        header(&both, "grpc-metadata-echo-authorization"),
        Some("Bearer backend-token")
    );
    // From the query too, and the parameter is not bound even though unknown ones are refused.
    let query = get(&gw, &format!("/v1/messages/2?api_key={KEY}"), &[]).await;
    assert_eq!(query.status, 200, "{}", query.text());
    assert_eq!(calls(&gw), 3);
}

#[tokio::test]
async fn api_key_allow_list_gives_403() {
    let gw = Gateway::mirror(&config(
        r#"
        [policies."test.v1"]
        auth = "authenticated"
        "#,
    ))
    .await;
    let allowed = get(&gw, "/v1/messages?text=x", &[("x-api-key", OTHER_KEY)]).await;
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    let denied = get(&gw, "/v1/messages/1", &[("x-api-key", OTHER_KEY)]).await;
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(error_code(&denied), 7);
    assert!(denied.text().contains("test.v1.Echo.GetMessage"));
    assert_eq!(calls(&gw), 1);
}

#[tokio::test]
async fn jwt_scopes_claims_and_forwarded_identity() {
    let gw = Gateway::mirror(&config(
        r#"
        [policies."test.v1.Echo"]
        auth = "jwt"
        scopes = ["messages:read"]
        [policies."test.v1.Echo.UpdateMessage"]
        scopes = ["messages:write"]
        [policies."test.v1.Echo.ListMessages"]
        claims = { tenant = "globex" }
        "#,
    ))
    .await;
    let good = token(json!({}));
    let bearer = format!("Bearer {good}");
    // A client cannot forge the forwarded identity: its own values are replaced.
    let ok = get(
        &gw,
        "/v1/messages/1",
        &[
            ("authorization", &bearer),
            ("grpc-metadata-x-auth-subject", "admin"),
            ("grpc-metadata-x-auth-tenant", "evil"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        header(&ok, "grpc-metadata-echo-x-auth-subject"),
        Some("user-7")
    );
    assert_eq!(
        header(&ok, "grpc-metadata-echo-x-auth-tenant"),
        Some("acme")
    );
    assert_eq!(
        header(&ok, "grpc-metadata-echo-x-auth-scopes"),
        Some("messages:read")
    );
    // The credential is forwarded by default, as grpc-gateway does.
    assert_eq!(
        header(&ok, "grpc-metadata-echo-authorization"),
        Some(bearer.as_str())
    );

    let before = calls(&gw);
    let write = gw
        .exchange(
            "PATCH",
            "/v1/messages/1",
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            "{}",
        )
        .await;
    assert_eq!(write.status, 403, "{}", write.text());
    assert!(write.text().contains("messages:write"));
    let tenant = get(&gw, "/v1/messages", &[("authorization", &bearer)]).await;
    assert_eq!(tenant.status, 403, "{}", tenant.text());
    assert!(tenant.text().contains("tenant"));

    for (what, bad) in [
        ("expired", token(json!({"exp": now() - 3600}))),
        ("wrong audience", token(json!({"aud": "someone-else"}))),
        ("wrong issuer", token(json!({"iss": "https://evil.test"}))),
        ("garbage", "not.a.token".to_owned()),
    ] {
        let ex = get(
            &gw,
            "/v1/messages/1",
            &[("authorization", &format!("Bearer {bad}"))],
        )
        .await;
        assert_eq!(ex.status, 401, "{what}: {}", ex.text());
        assert!(header(&ex, "www-authenticate").is_some(), "{what}");
    }
    // An API key is not a token: this policy wants a JWT.
    let key = get(&gw, "/v1/messages/1", &[("x-api-key", KEY)]).await;
    assert_eq!(key.status, 401, "{}", key.text());
    assert_eq!(calls(&gw), before, "refused requests reached the backend");
}

#[tokio::test]
async fn credential_can_be_stripped_before_the_backend() {
    let gw = Gateway::mirror(&config(
        r#"
        [policies."test.v1.Echo"]
        auth = "jwt"
        "#,
    ))
    .await;
    // Same gateway settings, but with forward_credential off.
    let stripped = Gateway::mirror(
        &config(
            r#"
            [policies."test.v1.Echo"]
            auth = "jwt"
            "#,
        )
        .replace("[auth]\n", "[auth]\n        forward_credential = false\n"),
    )
    .await;
    let bearer = format!("Bearer {}", token(json!({"scope": "a b"})));
    let kept = get(&gw, "/v1/messages/1", &[("authorization", &bearer)]).await;
    assert_eq!(kept.status, 200, "{}", kept.text());
    assert!(header(&kept, "grpc-metadata-echo-authorization").is_some());
    let gone = get(&stripped, "/v1/messages/1", &[("authorization", &bearer)]).await;
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert!(header(&gone, "grpc-metadata-echo-authorization").is_none());
    assert!(header(&gone, "grpc-metadata-echo-grpcgateway-authorization").is_none());
    assert_eq!(
        header(&gone, "grpc-metadata-echo-x-auth-subject"),
        Some("user-7")
    );
}

#[tokio::test]
async fn rate_limits_by_plan_with_headers_and_retry_after() {
    let gw = Gateway::mirror(&config(
        r#"
        [policies."test.v1.Echo"]
        auth = "api_key"
        rate_limits = [{ key = "caller", plan = true }]
        "#,
    ))
    .await;
    for i in 0..3 {
        let ok = get(&gw, "/v1/messages/1", &[("x-api-key", KEY)]).await;
        assert_eq!(ok.status, 200, "request {i}: {}", ok.text());
        assert_eq!(header(&ok, "ratelimit-limit"), Some("3"));
        assert_eq!(
            header(&ok, "ratelimit-remaining"),
            Some((2 - i).to_string().as_str())
        );
        assert!(header(&ok, "ratelimit-reset").is_some());
    }
    let limited = get(&gw, "/v1/messages/1", &[("x-api-key", KEY)]).await;
    assert_eq!(limited.status, 429, "{}", limited.text());
    assert_eq!(error_code(&limited), 8);
    assert_eq!(header(&limited, "ratelimit-remaining"), Some("0"));
    let retry: u64 = header(&limited, "retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(calls(&gw), 3, "the limited request reached the backend");
    // Another caller has a bucket of its own: "other" has no plan, and no default plan exists.
    let other = get(&gw, "/v1/messages?x=1", &[("x-api-key", OTHER_KEY)]).await;
    assert_eq!(other.status, 200, "{}", other.text());
}

#[tokio::test]
async fn several_limits_by_ip_and_route() {
    let gw = Gateway::mirror(&config(
        r#"
        [policies."test.v1.Echo.GetMessage"]
        rate_limits = [
          { key = "ip", requests = 5, per = "1m" },
          { key = "route", requests = 2, per = "1m" },
        ]
        "#,
    ))
    .await;
    assert_eq!(get(&gw, "/v1/messages/1", &[]).await.status, 200);
    let second = get(&gw, "/v1/messages/2", &[]).await;
    assert_eq!(second.status, 200);
    // The tighter limit is the one reported.
    assert_eq!(header(&second, "ratelimit-limit"), Some("2"));
    assert_eq!(header(&second, "ratelimit-remaining"), Some("0"));
    let third = get(&gw, "/v1/users/u/messages/3", &[]).await;
    // Another binding of the method is another route, with a bucket of its own.
    assert_eq!(third.status, 200, "{}", third.text());
    assert_eq!(get(&gw, "/v1/messages/4", &[]).await.status, 429);
    // Methods without the policy are not limited.
    let list = get(&gw, "/v1/messages", &[]).await;
    assert_eq!(list.status, 200);
    assert!(header(&list, "ratelimit-limit").is_none());
}

#[tokio::test]
async fn ip_rules_honour_forwarded_for_only_from_trusted_proxies() {
    let deny_loopback = Gateway::mirror(&config(
        r#"
        [policies."*"]
        ip = { deny = ["127.0.0.0/8"] }
        "#,
    ))
    .await;
    let denied = get(
        &deny_loopback,
        "/v1/messages/1",
        &[("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    assert_eq!(denied.status, 403, "{}", denied.text());
    assert_eq!(calls(&deny_loopback), 0);

    let behind_proxy = Gateway::mirror(&config_with(
        r#"trusted_proxies = ["127.0.0.1/32"]"#,
        r#"
        [policies."*"]
        ip = { allow = ["10.0.0.0/8"], deny = ["10.9.0.0/16"] }
        "#,
    ))
    .await;
    let gw = &behind_proxy;
    assert_eq!(get(gw, "/v1/messages/1", &[]).await.status, 403);
    let from_10 = get(gw, "/v1/messages/1", &[("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(from_10.status, 200, "{}", from_10.text());
    // Spoofing by prepending: the rightmost untrusted hop is the client.
    let spoofed = get(
        gw,
        "/v1/messages/1",
        &[("x-forwarded-for", "10.1.2.3, 192.0.2.1")],
    )
    .await;
    assert_eq!(spoofed.status, 403);
    let denied = get(gw, "/v1/messages/1", &[("x-forwarded-for", "10.9.1.1")]).await;
    assert_eq!(denied.status, 403);
    assert_eq!(calls(gw), 1);
}

#[tokio::test]
async fn cors_preflight_is_answered_at_the_gateway_before_auth() {
    let gw = Gateway::mirror(&config(
        r#"
        [policies."test.v1.Echo"]
        auth = "api_key"
        cors = { allow_origins = ["https://app.example"], allow_headers = ["x-api-key", "content-type"], max_age = "10m", expose_headers = ["x-request-id"] }
        "#,
    ))
    .await;
    let preflight = gw
        .exchange(
            "OPTIONS",
            "/v1/messages/1",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-api-key"),
            ],
            "",
        )
        .await;
    assert_eq!(preflight.status, 204, "{}", preflight.text());
    assert_eq!(
        header(&preflight, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(header(&preflight, "access-control-allow-methods").is_some_and(|m| m.contains("GET")));
    assert!(header(&preflight, "access-control-allow-headers")
        .is_some_and(|m| m.to_ascii_lowercase().contains("x-api-key")));
    let evil = gw
        .exchange(
            "OPTIONS",
            "/v1/messages/1",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ],
            "",
        )
        .await;
    assert_eq!(evil.status, 403, "{}", evil.text());
    assert!(header(&evil, "access-control-allow-origin").is_none());
    // The real request carries the CORS headers, on errors too.
    let actual = get(
        &gw,
        "/v1/messages/1",
        &[("origin", "https://app.example"), ("x-api-key", KEY)],
    )
    .await;
    assert_eq!(actual.status, 200);
    assert_eq!(
        header(&actual, "access-control-allow-origin"),
        Some("https://app.example")
    );
    let refused = get(&gw, "/v1/messages/1", &[("origin", "https://app.example")]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        header(&refused, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(calls(&gw), 1);
}

#[tokio::test]
async fn header_rules_and_request_ids() {
    let gw = Gateway::mirror(&config(
        r#"
        [policies."test.v1.Echo"]
        request_headers = { set = { "grpc-metadata-x-added" = "by-gateway" }, remove = ["grpc-metadata-x-secret"] }
        response_headers = { add = { "x-served-by" = "protogate" }, remove = ["grpc-metadata-echo-x-added-too"] }
        "#,
    ))
    .await;
    let ex = get(
        &gw,
        "/v1/messages/1",
        &[
            ("grpc-metadata-x-secret", "s"),
            ("grpc-metadata-x-added", "client"),
            ("grpc-metadata-x-added-too", "t"),
            ("x-request-id", "req-abc-123"),
        ],
    )
    .await;
    assert_eq!(ex.status, 200, "{}", ex.text());
    assert_eq!(
        header(&ex, "grpc-metadata-echo-x-added"),
        Some("by-gateway")
    );
    assert!(header(&ex, "grpc-metadata-echo-x-secret").is_none());
    assert!(header(&ex, "grpc-metadata-echo-x-added-too").is_none());
    assert_eq!(header(&ex, "x-served-by"), Some("protogate"));
    // The client's request id reaches the backend and comes back.
    assert_eq!(header(&ex, "x-request-id"), Some("req-abc-123"));
    assert_eq!(
        header(&ex, "grpc-metadata-echo-x-request-id"),
        Some("req-abc-123")
    );
    // Without one, each request gets a fresh id, on errors too.
    let a = get(&gw, "/v1/messages/1", &[]).await;
    let b = get(&gw, "/nowhere", &[]).await;
    assert_eq!(b.status, 404);
    let (ida, idb) = (header(&a, "x-request-id"), header(&b, "x-request-id"));
    assert!(ida.is_some_and(|id| id.len() >= 16), "{ida:?}");
    assert_ne!(ida, idb);
    assert_eq!(header(&a, "grpc-metadata-echo-x-request-id"), ida);
}

/// Sends `path` exactly as written (an HTTP client library would clean it up first) and
/// returns the status.
async fn raw_status(gw: &Gateway, method: &str, path: &str) -> u16 {
    let addr = gw.base.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

#[tokio::test]
async fn no_spelling_of_a_path_escapes_its_policy() {
    let gw = Gateway::mirror(&config(
        r#"
        [policies."test.v1.Echo.GetMessage"]
        auth = "api_key"
        "#,
    ))
    .await;
    assert_eq!(raw_status(&gw, "GET", "/v1/messages/1").await, 401);
    for path in [
        "//v1/messages/1",
        "/v1//messages/1",
        "/v1/./messages/1",
        "/v1/x/../messages/1",
        "/v1/%2e/messages/1",
        "/v1/x/%2e%2e/messages/1",
        "/v1/x/%2E%2E/messages/1",
        "/./v1/messages/1",
    ] {
        assert_eq!(raw_status(&gw, "GET", path).await, 401, "{path}");
    }
    // Methods in another case are the same method.
    for method in ["get", "Get", "gET"] {
        assert_eq!(
            raw_status(&gw, method, "/v1/messages/1").await,
            401,
            "{method}"
        );
    }
    // The gRPC-style path reaches the same method and the same policy.
    assert_eq!(
        raw_status(&gw, "POST", "/test.v1.Echo/GetMessage").await,
        401
    );
    // Spellings that name no route are not found, never served.
    for (method, path) in [
        ("GET", "/v1%2Fmessages/1"),
        ("GET", "/V1/messages/1"),
        ("POST", "/test.v1.echo/GetMessage"),
        ("POST", "/test.v1.Echo/getmessage"),
        ("POST", "/TEST.V1.ECHO/GETMESSAGE"),
        ("POST", "/test.v1.Echo%2FGetMessage"),
    ] {
        assert_eq!(raw_status(&gw, method, path).await, 404, "{method} {path}");
    }
    // Above the root is refused outright.
    assert_eq!(raw_status(&gw, "GET", "/../v1/messages/1").await, 400);
    assert_eq!(calls(&gw), 0, "a bypass reached the backend");
}

/// The next text frame as JSON, skipping control frames; panics if none comes in time.
async fn next_json(socket: &mut crate::websocket::Socket) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                return serde_json::from_str(text.as_str()).expect("json frame")
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no text frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn websockets_are_authenticated_at_the_upgrade_and_count_messages() {
    let gw = Gateway::mirror(&config(
        r#"
        [policies."test.v1.Echo.Chat"]
        auth = "authenticated"
        rate_limits = [{ key = "caller", requests = 3, per = "1m" }]
        "#,
    ))
    .await;
    assert_eq!(
        crate::websocket::open(&gw, "/v1/ws/chat", &[]).await.err(),
        Some(401)
    );
    assert_eq!(
        crate::websocket::open(&gw, "/v1/ws/chat", &[("x-api-key", "wrong")])
            .await
            .err(),
        Some(401)
    );
    assert_eq!(calls(&gw), 0);
    // A browser's ways: the query, or the subprotocol token.
    let by_query = crate::websocket::open(&gw, &format!("/v1/ws/chat?api_key={KEY}"), &[]).await;
    assert!(by_query.is_ok(), "{:?}", by_query.err());
    drop(by_query);
    let jwt = token(json!({"sub": "socket-user"}));
    let mut socket = crate::websocket::open(
        &gw,
        "/v1/ws/chat",
        &[
            ("sec-websocket-protocol", &format!("Bearer, {jwt}")),
            ("grpc-metadata-x-mirror-repeat", "1"),
        ],
    )
    .await
    .expect("token in the subprotocol opens the socket");
    // The upgrade took one of the caller's three tokens: two messages are answered, the third
    // ends the stream with RESOURCE_EXHAUSTED.
    for i in 0..3 {
        socket
            .send(Message::text(json!({"text": format!("m{i}")}).to_string()))
            .await
            .expect("send");
        let frame = next_json(&mut socket).await;
        if i < 2 {
            assert_eq!(frame["result"]["text"], format!("m{i}"), "{frame}");
        } else {
            assert_eq!(frame["error"]["code"], 8, "{frame}");
        }
    }
}

#[tokio::test]
async fn browsers_pass_metadata_in_the_websocket_url() {
    let gw = Gateway::mirror("").await;
    // The mirror fails a call with the code and message its metadata asks for: seeing them
    // come back proves the query parameters reached the backend as metadata.
    let mut socket = crate::websocket::open(
        &gw,
        "/v1/ws/chat?grpc-metadata-x-mirror-code=5&grpc-metadata-x-mirror-message=from-the-url",
        &[],
    )
    .await
    .expect("socket");
    socket
        .send(Message::text(r#"{"text":"hi"}"#))
        .await
        .expect("send");
    let mut error = None;
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_secs(10), socket.next()).await
    {
        if let Message::Text(text) = frame {
            let value: Value = serde_json::from_str(text.as_str()).expect("json");
            if let Some(e) = value.get("error") {
                error = Some(e.clone());
            }
        }
    }
    let error = error.expect("the backend's error");
    assert_eq!(error["code"], 5, "{error}");
    assert_eq!(error["message"], "from-the-url", "{error}");
}

#[tokio::test]
async fn a_credential_in_the_query_never_binds_into_the_message() {
    // The key's parameter is named like a field of the message on purpose.
    let gw = Gateway::mirror(
        &config(
            r#"
            [policies."test.v1.Echo"]
            auth = "api_key"
            "#,
        )
        .replace("[auth]\n", "[auth]\n        api_key_query = \"text\"\n"),
    )
    .await;
    let ok = get(&gw, &format!("/v1/messages/1?text={KEY}&name=n"), &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["text"], "", "{}", ok.text());
    assert_eq!(ok.json()["name"], "n");
    // A WebSocket keeps it out of the message too, and does not pass it on as a bearer token.
    let mut socket = crate::websocket::open(
        &gw,
        &format!("/v1/ws/chat?text={KEY}"),
        &[("grpc-metadata-x-mirror-repeat", "1")],
    )
    .await
    .expect("socket");
    socket.send(Message::text("{}")).await.expect("send");
    let frame = next_json(&mut socket).await;
    assert_eq!(frame["result"]["text"], "", "{frame}");
}

/// A private key of tests/fixtures/jwt as the DER jsonwebtoken reads.
fn fixture_der(name: &str) -> Vec<u8> {
    use base64::Engine as _;
    let pem = std::fs::read_to_string(crate::support::repo().join("tests/fixtures/jwt").join(name))
        .expect("fixture key");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM body")
}

/// An RS256 key pair of the fixtures, as a signing key and its public JWK under `kid`.
fn rsa_key(file: &str, kid: &str) -> (jsonwebtoken::EncodingKey, jsonwebtoken::jwk::Jwk) {
    let key = jsonwebtoken::EncodingKey::from_rsa_der(&fixture_der(file));
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::RS256)
        .expect("jwk");
    jwk.common.key_id = Some(kid.to_owned());
    (key, jwk)
}

fn rs256(key: &jsonwebtoken::EncodingKey, kid: &str) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let claims = json!({"sub": "rotating", "exp": now() + 300, "aud": "protogate-tests"});
    jsonwebtoken::encode(&header, &claims, key).expect("token")
}

async fn bearer_status(gw: &Gateway, token: &str) -> u16 {
    get(
        gw,
        "/v1/messages/1",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
    .status
}

/// Retries (bounded) until a token of `kid` is accepted: key fetches run in the background.
async fn accepted(gw: &Gateway, key: &jsonwebtoken::EncodingKey, kid: &str) -> bool {
    for _ in 0..100 {
        if bearer_status(gw, &rs256(key, kid)).await == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_jwks_url_key_rotation_is_picked_up_without_a_restart() {
    use std::sync::{Arc, Mutex};
    let (key_a, jwk_a) = rsa_key("rsa_private.pem", "a");
    let (key_b, jwk_b) = rsa_key("rsa2_private.pem", "b");
    let served = Arc::new(Mutex::new(json!({ "keys": [jwk_a] }).to_string()));
    let body = served.clone();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body.lock().expect("lock").clone() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let idp = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let gw = Gateway::mirror(&format!(
        r#"
        [auth.jwt]
        audiences = ["protogate-tests"]
        jwks_url = "http://{idp}/jwks.json"
        jwks_refresh = "1s"
        [policies."test.v1.Echo"]
        auth = "jwt"
        "#
    ))
    .await;
    assert!(accepted(&gw, &key_a, "a").await, "key a never became valid");
    assert_eq!(
        bearer_status(&gw, &rs256(&key_b, "b")).await,
        401,
        "key b is not published yet"
    );

    // The identity provider rotates to key b; the gateway keeps running.
    *served.lock().expect("lock") = json!({ "keys": [jwk_b] }).to_string();
    assert!(
        accepted(&gw, &key_b, "b").await,
        "the rotated key was not picked up"
    );
    assert_eq!(
        bearer_status(&gw, &rs256(&key_a, "a")).await,
        401,
        "the withdrawn key still works"
    );
}
