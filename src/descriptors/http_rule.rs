//! google.api.http rules of every method: from annotations, from the config, and the automatic
//! `POST /{package.Service}/{Method}` binding.

use prost_reflect::{MethodDescriptor, Value};

use super::Registry;
use crate::proto::google::api::{http_rule::Pattern, HttpRule};

/// Where a binding was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOrigin {
    /// A google.api.http option in the proto.
    Annotation,
    /// An `[[http_rules]]` entry in the config file.
    Config,
    /// The automatic `POST /{package.Service}/{Method}` binding.
    Auto,
}

/// One HTTP binding of one gRPC method, not yet parsed or resolved.
#[derive(Debug, Clone)]
pub struct HttpBinding {
    /// The gRPC method it calls.
    pub method: MethodDescriptor,
    /// The HTTP method.
    pub http_method: http::Method,
    /// The path template text.
    pub path: String,
    /// `*`, a top-level field name, or empty for no body.
    pub body: String,
    /// A response field written as the whole body, or empty.
    pub response_body: String,
    /// Where it was declared.
    pub origin: RuleOrigin,
}

impl RuleOrigin {
    /// `annotation`, `config` or `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleOrigin::Annotation => "annotation",
            RuleOrigin::Config => "config",
            RuleOrigin::Auto => "auto",
        }
    }
}

impl HttpBinding {
    /// A short description for warnings: `GET /v1/x (pkg.Svc.Method, annotation)`.
    pub fn describe(&self) -> String {
        let origin = self.origin.as_str();
        format!(
            "{} {} ({}, {origin})",
            self.http_method,
            self.path,
            self.method.full_name()
        )
    }
}

/// A rule that cannot be turned into a binding.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// A config rule names a method that no loaded service has.
    #[error("http rule selector {0:?} names no loaded method")]
    UnknownSelector(String),
    /// A rule with no pattern, or a bad custom method.
    #[error("http rule for {method}: {reason}")]
    Invalid {
        /// The method's full name.
        method: String,
        /// What is wrong.
        reason: String,
    },
}

/// Every binding of every method of the registry's services: a config rule for a method replaces
/// its annotation; every method also gets the automatic binding.
pub fn bindings(
    registry: &Registry,
    config_rules: &[HttpRule],
) -> Result<Vec<HttpBinding>, RuleError> {
    let pool = registry.pool();
    for rule in config_rules {
        if pool
            .get_service_by_name(rule.selector.rsplit_once('.').map_or("", |(s, _)| s))
            .and_then(|s| {
                let name = rule.selector.rsplit_once('.').map_or("", |(_, m)| m);
                s.methods().find(|m| m.name() == name)
            })
            .is_none()
        {
            return Err(RuleError::UnknownSelector(rule.selector.clone()));
        }
    }
    let extension = pool.get_extension_by_name("google.api.http");
    let mut out = Vec::new();
    for service in registry.services() {
        for method in service.methods() {
            let configured: Vec<&HttpRule> = config_rules
                .iter()
                .filter(|r| r.selector == method.full_name())
                .collect();
            if configured.is_empty() {
                if let Some(ext) = &extension {
                    if let Some(rule) = annotation(&method, ext)? {
                        flatten(&method, &rule, RuleOrigin::Annotation, &mut out)?;
                    }
                }
            } else {
                for rule in configured {
                    flatten(&method, rule, RuleOrigin::Config, &mut out)?;
                }
            }
            out.push(HttpBinding {
                path: format!("/{}/{}", service.full_name(), method.name()),
                method,
                http_method: http::Method::POST,
                body: "*".to_owned(),
                response_body: String::new(),
                origin: RuleOrigin::Auto,
            });
        }
    }
    Ok(out)
}

/// The method's google.api.http rule; one that cannot be read refuses the load rather than
/// silently losing the method's routes.
fn annotation(
    method: &MethodDescriptor,
    extension: &prost_reflect::ExtensionDescriptor,
) -> Result<Option<HttpRule>, RuleError> {
    let options = method.options();
    if !options.has_extension(extension) {
        return Ok(None);
    }
    let unreadable = |reason: String| RuleError::Invalid {
        method: method.full_name().to_owned(),
        reason: format!("unreadable google.api.http option: {reason}"),
    };
    match options.get_extension(extension).as_ref() {
        Value::Message(rule) => rule
            .transcode_to::<HttpRule>()
            .map(Some)
            .map_err(|err| unreadable(err.to_string())),
        other => Err(unreadable(format!("not a message: {other:?}"))),
    }
}

fn flatten(
    method: &MethodDescriptor,
    rule: &HttpRule,
    origin: RuleOrigin,
    out: &mut Vec<HttpBinding>,
) -> Result<(), RuleError> {
    let invalid = |reason: &str| RuleError::Invalid {
        method: method.full_name().to_owned(),
        reason: reason.to_owned(),
    };
    let (http_method, path) = match &rule.pattern {
        Some(Pattern::Get(p)) => (http::Method::GET, p.clone()),
        Some(Pattern::Put(p)) => (http::Method::PUT, p.clone()),
        Some(Pattern::Post(p)) => (http::Method::POST, p.clone()),
        Some(Pattern::Delete(p)) => (http::Method::DELETE, p.clone()),
        Some(Pattern::Patch(p)) => (http::Method::PATCH, p.clone()),
        Some(Pattern::Custom(custom)) => {
            let m = http::Method::from_bytes(custom.kind.as_bytes())
                .map_err(|_| invalid(&format!("bad custom method {:?}", custom.kind)))?;
            (m, custom.path.clone())
        }
        None => {
            return Err(invalid(
                "no pattern (get, put, post, delete, patch or custom)",
            ))
        }
    };
    out.push(HttpBinding {
        method: method.clone(),
        http_method,
        path,
        body: rule.body.clone(),
        response_body: rule.response_body.clone(),
        origin,
    });
    for extra in &rule.additional_bindings {
        if !extra.additional_bindings.is_empty() {
            return Err(invalid("additional_bindings must not nest"));
        }
        flatten(method, extra, origin, out)?;
    }
    Ok(())
}
