//! CORS: preflight answers and the headers that let a browser read an actual response.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Deserialize;

/// `cors = {...}` as written in the config.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCors {
    /// Origins such as `https://app.example.com`, or `"*"` for any.
    #[serde(default)]
    pub(crate) allow_origins: Vec<String>,
    /// Methods a preflight may ask for; absent means every method the path serves.
    pub(crate) allow_methods: Option<Vec<String>>,
    /// Request headers a preflight may ask for, or `"*"` for any.
    #[serde(default)]
    pub(crate) allow_headers: Vec<String>,
    /// Response headers scripts may read beyond the CORS-safelisted ones.
    #[serde(default)]
    pub(crate) expose_headers: Vec<String>,
    /// Whether cookies and HTTP auth may be sent (`Access-Control-Allow-Credentials`).
    pub(crate) allow_credentials: Option<bool>,
    /// How long a browser may cache a preflight answer, e.g. `"10m"`.
    pub(crate) max_age: Option<String>,
}

/// Why a preflight is refused; the caller answers 403 in its error format, with no CORS headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorsDenied {
    /// No `Origin` header: not a CORS preflight at all.
    #[error("a CORS preflight needs an Origin header")]
    MissingOrigin,
    /// The origin is not in `allow_origins`.
    #[error("this origin is not allowed to call this API")]
    Origin,
    /// No `Access-Control-Request-Method` header.
    #[error("a CORS preflight needs an Access-Control-Request-Method header")]
    MissingMethod,
    /// The method asked for is not served at this path, or not in `allow_methods`.
    #[error("method {0} is not allowed here")]
    Method(String),
    /// A request header asked for is not in `allow_headers`.
    #[error("request header {0} is not allowed")]
    Header(String),
}

/// Checked CORS settings for a route, service or the whole gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    origins: Origins,
    /// Uppercase; `None` defers to the methods the path serves.
    methods: Option<Vec<Method>>,
    headers: AllowHeaders,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Origins {
    Any,
    /// Lowercase, as browsers serialize them.
    List(Vec<Box<str>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowHeaders {
    Any,
    List(Vec<HeaderName>),
}

/// Request headers a browser may list in a preflight (when their values are not "simple", as
/// with `Content-Type: application/json`) and that are always allowed: refusing them would break
/// every JSON POST.
const SAFELISTED: [&str; 4] = [
    "accept",
    "accept-language",
    "content-language",
    "content-type",
];

const PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);

impl Cors {
    /// Checks raw settings; each bad entry is pushed to `problems` as `key.field: reason`.
    pub(crate) fn parse(raw: &RawCors, key: &str, problems: &mut Vec<String>) -> Cors {
        let credentials = raw.allow_credentials.unwrap_or(false);
        let origins = parse_origins(&raw.allow_origins, key, problems);
        let methods = raw.allow_methods.as_ref().map(|list| {
            list.iter()
                .filter_map(|text| {
                    let method = Method::from_bytes(text.to_ascii_uppercase().as_bytes()).ok();
                    if method.is_none() {
                        problems.push(format!("{key}.allow_methods: {text:?} is not a method"));
                    }
                    method
                })
                .collect()
        });
        let headers = if raw.allow_headers.iter().any(|h| h == "*") {
            AllowHeaders::Any
        } else {
            AllowHeaders::List(header_names(
                &raw.allow_headers,
                key,
                "allow_headers",
                problems,
            ))
        };
        let expose = if raw.expose_headers.iter().any(|h| h == "*") {
            // With credentials a browser reads "*" as a header literally named "*".
            if credentials {
                problems.push(format!(
                    "{key}.expose_headers: \"*\" cannot be combined with allow_credentials; \
                     list the headers"
                ));
            }
            Some(HeaderValue::from_static("*"))
        } else {
            let names = header_names(&raw.expose_headers, key, "expose_headers", problems);
            let joined = names
                .iter()
                .map(HeaderName::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            (!names.is_empty())
                .then(|| HeaderValue::from_str(&joined).ok())
                .flatten()
        };
        let max_age = raw
            .max_age
            .as_ref()
            .and_then(|text| match humantime::parse_duration(text) {
                Ok(age) => Some(HeaderValue::from(age.as_secs())),
                Err(e) => {
                    problems.push(format!(
                        "{key}.max_age: {e} (got {text:?}; write e.g. \"10m\")"
                    ));
                    None
                }
            });
        Cors {
            origins,
            methods,
            headers,
            expose,
            credentials,
            max_age,
        }
    }

    /// Whether a request is a CORS preflight: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`. Other `OPTIONS` requests are the route's business.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(ORIGIN)
            && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The headers of the 204 answering a preflight, or why it is refused. `route_methods` are
    /// the methods the path serves; the method asked for must be one of them (and in
    /// `allow_methods` when that is set), compared case-insensitively like routing.
    pub fn preflight(
        &self,
        request_headers: &HeaderMap,
        route_methods: &[Method],
    ) -> Result<HeaderMap, CorsDenied> {
        let origin = request_headers
            .get(ORIGIN)
            .ok_or(CorsDenied::MissingOrigin)?;
        let allow_origin = self.allow_origin(origin).ok_or(CorsDenied::Origin)?;
        let method = request_headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .ok_or(CorsDenied::MissingMethod)?;
        let method_text = method
            .to_str()
            .map_err(|_| CorsDenied::Method(String::from_utf8_lossy(method.as_bytes()).into()))?;
        let listed = |methods: &[Method]| {
            methods
                .iter()
                .any(|m| m.as_str().eq_ignore_ascii_case(method_text))
        };
        if !listed(route_methods) || !self.methods.as_deref().is_none_or(listed) {
            return Err(CorsDenied::Method(method_text.to_owned()));
        }
        let asked_headers = request_headers.get_all(ACCESS_CONTROL_REQUEST_HEADERS);
        for line in &asked_headers {
            let line = line
                .to_str()
                .map_err(|_| CorsDenied::Header(String::from_utf8_lossy(line.as_bytes()).into()))?;
            for name in line.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !self.allows_header(name) {
                    return Err(CorsDenied::Header(name.to_owned()));
                }
            }
        }

        let mut answer = HeaderMap::with_capacity(7);
        answer.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        answer.insert(VARY, PREFLIGHT_VARY);
        if self.credentials {
            answer.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        // Echoing what was asked (already checked) is right with or without credentials, where
        // "*" would be read literally.
        answer.insert(ACCESS_CONTROL_ALLOW_METHODS, method.clone());
        for line in &asked_headers {
            answer.append(ACCESS_CONTROL_ALLOW_HEADERS, line.clone());
        }
        if let Some(age) = &self.max_age {
            answer.insert(ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        Ok(answer)
    }

    /// Adds the CORS headers to an actual (non-preflight) response: `Access-Control-Allow-Origin`
    /// when the origin is allowed, with credentials and exposed headers as configured, and
    /// `Vary: Origin` whenever the answer depends on the origin. A denied origin gets no CORS
    /// headers, so the browser keeps the response from the script.
    pub fn apply(&self, origin: Option<&HeaderValue>, response_headers: &mut HeaderMap) {
        if self.depends_on_origin() {
            // Appended: compression and others add their own Vary entries.
            response_headers.append(VARY, HeaderValue::from_static("origin"));
        }
        let Some(allow_origin) = origin.and_then(|origin| self.allow_origin(origin)) else {
            return;
        };
        response_headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.credentials {
            response_headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose {
            response_headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }

    /// Only `"*"` without credentials answers every origin alike.
    fn depends_on_origin(&self) -> bool {
        self.credentials || self.origins != Origins::Any
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, or `None` if it is not allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            Origins::Any if !self.credentials => Some(HeaderValue::from_static("*")),
            // "*" cannot carry credentials, so the origin is echoed; the opaque "null" origin
            // (sandboxed frames, file: pages) is never trusted with credentials by a wildcard.
            Origins::Any => (origin.as_bytes() != b"null").then(|| origin.clone()),
            Origins::List(list) => list
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
                .then(|| origin.clone()),
        }
    }

    fn allows_header(&self, name: &str) -> bool {
        if SAFELISTED.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return true;
        }
        match &self.headers {
            AllowHeaders::Any => HeaderName::from_bytes(name.as_bytes()).is_ok(),
            AllowHeaders::List(list) => list.iter().any(|h| h.as_str().eq_ignore_ascii_case(name)),
        }
    }
}

fn parse_origins(list: &[String], key: &str, problems: &mut Vec<String>) -> Origins {
    if list.is_empty() {
        problems.push(format!(
            "{key}.allow_origins: at least one origin (or \"*\") is needed"
        ));
    }
    let mut any = false;
    let mut origins = Vec::with_capacity(list.len());
    for text in list {
        if text == "*" {
            any = true;
        } else if text == "null" || is_origin(text) {
            origins.push(text.to_ascii_lowercase().into_boxed_str());
        } else {
            problems.push(format!(
                "{key}.allow_origins: {text:?} is not an origin like \"https://app.example.com\" \
                 or \"http://localhost:8080\" (scheme and host, no path or trailing slash)"
            ));
        }
    }
    // Other entries next to "*" are redundant but still checked, so a typo is reported.
    if any {
        Origins::Any
    } else {
        Origins::List(origins)
    }
}

/// `scheme://host[:port]` exactly as a browser sends it in `Origin`.
fn is_origin(text: &str) -> bool {
    let Some((scheme, host)) = text.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '/' | '?' | '#' | '@' | '*' | ','));
    scheme_ok && host_ok
}

fn header_names(
    list: &[String],
    key: &str,
    field: &str,
    problems: &mut Vec<String>,
) -> Vec<HeaderName> {
    list.iter()
        .filter_map(|text| {
            let name = HeaderName::from_bytes(text.as_bytes()).ok();
            if name.is_none() {
                problems.push(format!("{key}.{field}: {text:?} is not a header name"));
            }
            name
        })
        .collect()
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    fn cors_with(edit: impl FnOnce(&mut RawCors)) -> Cors {
        let mut raw = RawCors {
            allow_origins: vec![
                "https://app.example.com".into(),
                "http://localhost:8080".into(),
            ],
            ..RawCors::default()
        };
        edit(&mut raw);
        let mut problems = Vec::new();
        let cors = Cors::parse(&raw, "cors", &mut problems);
        assert_eq!(problems, Vec::<String>::new());
        cors
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn text<'a>(map: &'a HeaderMap, name: &str) -> Option<&'a str> {
        map.get(name).map(|v| v.to_str().unwrap())
    }

    const ROUTE: &[Method] = &[Method::GET, Method::POST, Method::PATCH];

    #[test]
    fn detects_preflights() {
        let full = request(&[
            ("origin", "https://a.example"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(Cors::is_preflight(&Method::OPTIONS, &full));
        assert!(!Cors::is_preflight(&Method::GET, &full));
        assert!(!Cors::is_preflight(
            &Method::OPTIONS,
            &request(&[("origin", "https://a.example")])
        ));
        assert!(!Cors::is_preflight(
            &Method::OPTIONS,
            &request(&[("access-control-request-method", "GET")])
        ));
    }

    #[test]
    fn preflight_for_a_listed_origin_echoes_it() {
        let cors = cors_with(|raw| {
            raw.allow_headers = vec!["X-Api-Key".into(), "authorization".into()];
            raw.max_age = Some("10m".into());
        });
        let answer = cors
            .preflight(
                &request(&[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "POST"),
                    (
                        "access-control-request-headers",
                        "content-type,x-api-key, Authorization",
                    ),
                ]),
                ROUTE,
            )
            .unwrap();
        assert_eq!(
            text(&answer, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(text(&answer, "access-control-allow-methods"), Some("POST"));
        assert_eq!(
            text(&answer, "access-control-allow-headers"),
            Some("content-type,x-api-key, Authorization")
        );
        assert_eq!(text(&answer, "access-control-max-age"), Some("600"));
        assert_eq!(
            text(&answer, "vary"),
            Some("origin, access-control-request-method, access-control-request-headers")
        );
        assert_eq!(text(&answer, "access-control-allow-credentials"), None);
        assert_eq!(answer.len(), 5);
    }

    #[test]
    fn origins_match_case_insensitively_and_exactly() {
        let cors = cors_with(|_| {});
        let ask = |origin: &str| {
            cors.preflight(
                &request(&[("origin", origin), ("access-control-request-method", "GET")]),
                ROUTE,
            )
        };
        assert!(ask("HTTPS://App.Example.com").is_ok());
        assert!(ask("http://localhost:8080").is_ok());
        for denied in [
            "https://app.example.com.evil.test",
            "https://evil.app.example.com",
            "http://app.example.com",
            "http://localhost:8081",
            "http://localhost",
            "null",
        ] {
            assert_eq!(ask(denied), Err(CorsDenied::Origin), "{denied}");
        }
    }

    #[test]
    fn preflight_refuses_what_is_not_allowed() {
        let cors = cors_with(|raw| {
            raw.allow_methods = Some(vec!["get".into(), "POST".into(), "DELETE".into()]);
            raw.allow_headers = vec!["x-api-key".into()];
        });
        let origin = ("origin", "https://app.example.com");
        for (headers, want) in [
            (
                vec![("access-control-request-method", "GET")],
                CorsDenied::MissingOrigin,
            ),
            (vec![origin], CorsDenied::MissingMethod),
            (
                vec![origin, ("access-control-request-method", "PUT")],
                CorsDenied::Method("PUT".into()),
            ),
            // Served by the route but not in allow_methods.
            (
                vec![origin, ("access-control-request-method", "PATCH")],
                CorsDenied::Method("PATCH".into()),
            ),
            // In allow_methods but not served by the route.
            (
                vec![origin, ("access-control-request-method", "DELETE")],
                CorsDenied::Method("DELETE".into()),
            ),
            (
                vec![
                    origin,
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-api-key,x-secret"),
                ],
                CorsDenied::Header("x-secret".into()),
            ),
            (
                vec![
                    origin,
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-api-key"),
                    ("access-control-request-headers", "authorization"),
                ],
                CorsDenied::Header("authorization".into()),
            ),
        ] {
            assert_eq!(
                cors.preflight(&request(&headers), ROUTE),
                Err(want),
                "{headers:?}"
            );
        }
        // Method names compare like routing: case-insensitively, echoed as asked.
        let answer = cors
            .preflight(
                &request(&[origin, ("access-control-request-method", "post")]),
                ROUTE,
            )
            .unwrap();
        assert_eq!(text(&answer, "access-control-allow-methods"), Some("post"));
    }

    #[test]
    fn safelisted_headers_are_always_allowed_and_star_allows_any() {
        let strict = cors_with(|_| {});
        let star = cors_with(|raw| raw.allow_headers = vec!["*".into()]);
        let ask = |cors: &Cors, asked: &str| {
            cors.preflight(
                &request(&[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "POST"),
                    ("access-control-request-headers", asked),
                ]),
                ROUTE,
            )
        };
        assert!(ask(&strict, "Content-Type, accept").is_ok());
        assert!(ask(&strict, "").is_ok());
        assert_eq!(
            ask(&strict, "x-any"),
            Err(CorsDenied::Header("x-any".into()))
        );
        assert!(ask(&star, "x-any, authorization, x-other").is_ok());
        assert_eq!(
            ask(&star, "bad name"),
            Err(CorsDenied::Header("bad name".into()))
        );
    }

    #[test]
    fn wildcard_origin_without_credentials_answers_star() {
        let cors = cors_with(|raw| raw.allow_origins = vec!["*".into()]);
        let req = request(&[("origin", "https://anyone.test")]);
        let mut response = HeaderMap::new();
        cors.apply(req.get(ORIGIN), &mut response);
        assert_eq!(text(&response, "access-control-allow-origin"), Some("*"));
        assert_eq!(
            text(&response, "vary"),
            None,
            "the answer does not depend on Origin"
        );
        let answer = cors
            .preflight(
                &request(&[("origin", "null"), ("access-control-request-method", "GET")]),
                ROUTE,
            )
            .unwrap();
        assert_eq!(text(&answer, "access-control-allow-origin"), Some("*"));
    }

    #[test]
    fn wildcard_origin_with_credentials_echoes_the_origin() {
        let cors = cors_with(|raw| {
            raw.allow_origins = vec!["*".into()];
            raw.allow_credentials = Some(true);
        });
        let mut response = HeaderMap::new();
        cors.apply(
            request(&[("origin", "https://anyone.test")]).get(ORIGIN),
            &mut response,
        );
        assert_eq!(
            text(&response, "access-control-allow-origin"),
            Some("https://anyone.test")
        );
        assert_eq!(
            text(&response, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(text(&response, "vary"), Some("origin"));

        let mut response = HeaderMap::new();
        cors.apply(request(&[("origin", "null")]).get(ORIGIN), &mut response);
        assert_eq!(text(&response, "access-control-allow-origin"), None);

        let answer = cors
            .preflight(
                &request(&[
                    ("origin", "https://anyone.test"),
                    ("access-control-request-method", "GET"),
                ]),
                ROUTE,
            )
            .unwrap();
        assert_eq!(
            text(&answer, "access-control-allow-origin"),
            Some("https://anyone.test")
        );
        assert_eq!(
            text(&answer, "access-control-allow-credentials"),
            Some("true")
        );
    }

    #[test]
    fn actual_responses_get_origin_credentials_and_exposed_headers() {
        let cors = cors_with(|raw| {
            raw.allow_credentials = Some(true);
            raw.expose_headers = vec!["X-Request-Id".into(), "RateLimit-Remaining".into()];
        });
        let mut response = request(&[
            ("vary", "accept-encoding"),
            ("content-type", "application/json"),
        ]);
        cors.apply(
            request(&[("origin", "https://app.example.com")]).get(ORIGIN),
            &mut response,
        );
        assert_eq!(
            text(&response, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            text(&response, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            text(&response, "access-control-expose-headers"),
            Some("x-request-id, ratelimit-remaining")
        );
        let vary: Vec<_> = response.get_all("vary").iter().collect();
        assert_eq!(vary, ["accept-encoding", "origin"]);
    }

    #[test]
    fn denied_or_missing_origin_gets_no_cors_headers_but_still_varies() {
        let cors = cors_with(|raw| {
            raw.allow_credentials = Some(true);
            raw.expose_headers = vec!["x-request-id".into()];
        });
        for req in [
            request(&[("origin", "https://evil.test")]),
            HeaderMap::new(),
        ] {
            let mut response = HeaderMap::new();
            cors.apply(req.get(ORIGIN), &mut response);
            assert_eq!(response.len(), 1, "{response:?}");
            assert_eq!(text(&response, "vary"), Some("origin"));
        }
    }

    #[test]
    fn bad_settings_are_reported_with_their_key() {
        let raw = RawCors {
            allow_origins: vec![
                "https://ok.example".into(),
                "https://app.example.com/".into(),
                "app.example.com".into(),
                "https://*.example.com".into(),
                "https://a.example/path".into(),
            ],
            allow_methods: Some(vec!["GET".into(), "NOT A METHOD".into()]),
            allow_headers: vec!["x-ok".into(), "bad header".into()],
            expose_headers: vec!["*".into()],
            allow_credentials: Some(true),
            max_age: Some("forever".into()),
        };
        let mut problems = Vec::new();
        Cors::parse(&raw, "policies.\"shop.v1\".cors", &mut problems);
        let key = "policies.\"shop.v1\".cors";
        let origin_tail = "is not an origin like \"https://app.example.com\" or \
                           \"http://localhost:8080\" (scheme and host, no path or trailing slash)";
        assert_eq!(problems.len(), 8, "{problems:#?}");
        assert_eq!(
            problems[0],
            format!("{key}.allow_origins: \"https://app.example.com/\" {origin_tail}")
        );
        assert_eq!(
            problems[1],
            format!("{key}.allow_origins: \"app.example.com\" {origin_tail}")
        );
        assert_eq!(
            problems[2],
            format!("{key}.allow_origins: \"https://*.example.com\" {origin_tail}")
        );
        assert_eq!(
            problems[3],
            format!("{key}.allow_origins: \"https://a.example/path\" {origin_tail}")
        );
        assert_eq!(
            problems[4],
            format!("{key}.allow_methods: \"NOT A METHOD\" is not a method")
        );
        assert_eq!(
            problems[5],
            format!("{key}.allow_headers: \"bad header\" is not a header name")
        );
        assert!(problems[6].starts_with(&format!("{key}.expose_headers: \"*\" cannot")));
        assert!(
            problems[7].starts_with(&format!("{key}.max_age: ")),
            "{}",
            problems[7]
        );
    }

    #[test]
    fn entries_beside_a_wildcard_are_still_checked() {
        let raw = RawCors {
            allow_origins: vec!["https://ok.example".into(), "*".into(), "ok.example".into()],
            ..RawCors::default()
        };
        let mut problems = Vec::new();
        let cors = Cors::parse(&raw, "cors", &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("cors.allow_origins: \"ok.example\" is not an origin"));
        let mut response = HeaderMap::new();
        cors.apply(
            request(&[("origin", "https://other.test")]).get(ORIGIN),
            &mut response,
        );
        assert_eq!(text(&response, "access-control-allow-origin"), Some("*"));
    }

    #[test]
    fn no_origins_is_a_problem() {
        let mut problems = Vec::new();
        let cors = Cors::parse(&RawCors::default(), "cors", &mut problems);
        assert_eq!(
            problems,
            ["cors.allow_origins: at least one origin (or \"*\") is needed"]
        );
        let mut response = HeaderMap::new();
        cors.apply(
            request(&[("origin", "https://a.test")]).get(ORIGIN),
            &mut response,
        );
        assert_eq!(text(&response, "access-control-allow-origin"), None);
    }
}
