//! Authentication: who the caller is, from an API key or a JWT, and whether a policy lets them in.

pub mod api_key;
pub mod claims;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod pem;

#[cfg(test)]
mod testkit;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};

use crate::error::{ErrorKind, GatewayError};
use crate::middleware::policy::{Access, Policy};
use api_key::{ApiKey, ApiKeys, RawApiKey};
use claims::Claims;
use jwt::{JwtSettings, JwtVerifier, RawJwt};

/// `[auth]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub api_key_header: Option<String>,
    pub api_key_query: Option<String>,
    pub token_query: Option<String>,
    pub forward_credential: Option<bool>,
    pub plan_claim: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    pub jwt: Option<RawJwt>,
    #[serde(default)]
    pub forward: RawForward,
}

/// `[auth.forward]`: which facts about the caller reach the backend, under which metadata keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawForward {
    pub subject: Option<String>,
    pub plan: Option<String>,
    pub scopes: Option<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// The checked `[auth]` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    /// The header an API key is read from.
    pub api_key_header: HeaderName,
    /// The query parameter an API key is read from, if any.
    pub api_key_query: Option<String>,
    /// The query parameter a bearer token is read from (browsers opening WebSockets), if any.
    pub token_query: Option<String>,
    /// Whether `Authorization` still reaches the backend once checked.
    pub forward_credential: bool,
    /// The claim naming a JWT caller's rate-limit plan.
    pub plan_claim: String,
    /// The configured API keys.
    pub api_keys: ApiKeys,
    /// JWT validation, when tokens are accepted.
    pub jwt: Option<JwtSettings>,
    /// Metadata written for the backend: (what, key).
    pub forward: Vec<(Forwarded, AsciiMetadataKey)>,
}

/// A fact about the caller that can be forwarded as metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded {
    /// The API key's name or the token's subject.
    Subject,
    /// The caller's plan.
    Plan,
    /// The caller's scopes, space-separated.
    Scopes,
    /// A claim of the token.
    Claim(String),
}

impl Default for AuthSettings {
    fn default() -> Self {
        let mut problems = Vec::new();
        AuthSettings::from_raw(&RawAuth::default(), Path::new("."), &mut problems)
    }
}

impl AuthSettings {
    /// Checks `[auth]`; problems are pushed with their key.
    pub(crate) fn from_raw(raw: &RawAuth, base: &Path, problems: &mut Vec<String>) -> AuthSettings {
        let api_key_header = match &raw.api_key_header {
            None => HeaderName::from_static("x-api-key"),
            Some(name) => HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|_| {
                problems.push(format!(
                    "auth.api_key_header: {name:?} is not a header name"
                ));
                HeaderName::from_static("x-api-key")
            }),
        };
        let param = |value: &Option<String>, default: &str| match value.as_deref() {
            None => Some(default.to_owned()),
            Some("") => None,
            Some(name) => Some(name.to_owned()),
        };
        let mut forward = Vec::new();
        let mut target = |what: Forwarded, key: &str, name: &str| match AsciiMetadataKey::from_bytes(
            name.to_ascii_lowercase().as_bytes(),
        ) {
            Ok(k) if !name.ends_with("-bin") => forward.push((what, k)),
            _ => problems.push(format!(
                "auth.forward.{key}: {name:?} is not a metadata key"
            )),
        };
        target(
            Forwarded::Subject,
            "subject",
            raw.forward.subject.as_deref().unwrap_or("x-auth-subject"),
        );
        if let Some(name) = &raw.forward.plan {
            target(Forwarded::Plan, "plan", name);
        }
        if let Some(name) = &raw.forward.scopes {
            target(Forwarded::Scopes, "scopes", name);
        }
        for (claim, name) in &raw.forward.claims {
            target(
                Forwarded::Claim(claim.clone()),
                &format!("claims.{claim}"),
                name,
            );
        }
        // An empty name turns a forward off.
        forward.retain(|(_, key)| !key.as_str().is_empty());
        AuthSettings {
            api_key_header,
            api_key_query: param(&raw.api_key_query, "api_key"),
            token_query: param(&raw.token_query, "access_token"),
            forward_credential: raw.forward_credential.unwrap_or(true),
            plan_claim: raw.plan_claim.clone().unwrap_or_else(|| "plan".to_owned()),
            api_keys: ApiKeys::from_raw(&raw.api_keys, "auth.api_keys", problems),
            jwt: raw
                .jwt
                .as_ref()
                .and_then(|jwt| JwtSettings::from_raw(jwt, base, "auth.jwt", problems)),
            forward,
        }
    }

    /// Query parameters that carry credentials, never bound into a request message.
    pub fn credential_params(&self) -> impl Iterator<Item = &str> {
        self.api_key_query
            .iter()
            .chain(self.token_query.iter())
            .map(String::as_str)
    }
}

/// Who made a request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The API key's name or the token's subject.
    pub name: Arc<str>,
    /// The rate-limit plan.
    pub plan: Option<Arc<str>>,
    /// What authenticated it.
    pub credential: Credential,
}

/// What authenticated a caller.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A configured API key.
    ApiKey(Arc<ApiKey>),
    /// A verified token's claims.
    Jwt(Arc<Claims>),
}

impl Principal {
    fn scopes(&self) -> &[String] {
        match &self.credential {
            Credential::ApiKey(key) => &key.scopes,
            Credential::Jwt(claims) => &claims.scopes,
        }
    }

    /// The API key's name, when a key authenticated the caller.
    pub fn api_key(&self) -> Option<&str> {
        match &self.credential {
            Credential::ApiKey(key) => Some(&key.name),
            Credential::Jwt(_) => None,
        }
    }

    /// The token's subject, when a token authenticated the caller.
    pub fn subject(&self) -> Option<&str> {
        match &self.credential {
            Credential::ApiKey(_) => None,
            Credential::Jwt(_) => Some(&self.name),
        }
    }
}

/// Checks credentials against the configured keys and token verifier.
#[derive(Debug)]
pub struct Authenticator {
    settings: AuthSettings,
    jwt: Option<Arc<JwtVerifier>>,
}

/// Where a credential may come from besides headers and the query: the WebSocket handshake.
pub type HandshakeToken<'a> = Option<&'a str>;

impl Authenticator {
    /// An authenticator for `settings`; a verifier whose settings did not change is reused, so its
    /// fetched keys survive a reload. Must run inside a tokio runtime when JWKS URLs are set.
    pub fn new(settings: AuthSettings, previous: Option<&Authenticator>) -> Authenticator {
        let jwt = settings.jwt.as_ref().map(|jwt| {
            previous
                .filter(|p| p.settings.jwt.as_ref() == Some(jwt))
                .and_then(|p| p.jwt.clone())
                .unwrap_or_else(|| Arc::new(JwtVerifier::start(jwt.clone())))
        });
        Authenticator { settings, jwt }
    }

    /// The settings it checks against.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// The caller, if the request carries a credential of a configured kind; one that does not
    /// check out is an error (a 401 where the route needs a caller).
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        handshake: HandshakeToken<'_>,
        access: Access,
    ) -> Result<Option<Principal>, GatewayError> {
        // Only the kinds of credential the gateway is configured for, and the route accepts, are
        // its business; any other (a token for the backend to check, say) passes through.
        let keys = !self.settings.api_keys.is_empty() && access != Access::Jwt;
        let tokens = self.jwt.is_some() && access != Access::ApiKey;
        if tokens {
            if let Some(token) = bearer(headers) {
                return self.token(token).map(Some);
            }
        }
        if keys {
            if let Some(key) = headers.get(&self.settings.api_key_header) {
                return self.key(key.as_bytes()).map(Some);
            }
        }
        if let Some(query) = query {
            let param =
                |name: &Option<String>| name.as_deref().and_then(|name| query_param(query, name));
            if let Some(key) = param(&self.settings.api_key_query).filter(|_| keys) {
                return self.key(key.as_bytes()).map(Some);
            }
            if let Some(token) = param(&self.settings.token_query).filter(|_| tokens) {
                return self.token(&token).map(Some);
            }
        }
        if let Some(token) = handshake {
            // A browser socket has one place for a credential: a key or a token.
            if let Some(key) = self
                .settings
                .api_keys
                .find(token.as_bytes())
                .filter(|_| keys)
            {
                return Ok(Some(principal_of_key(key)));
            }
            if tokens {
                return self.token(token).map(Some);
            }
            if keys {
                return Err(unauthenticated("invalid API key"));
            }
        }
        Ok(None)
    }

    fn key(&self, presented: &[u8]) -> Result<Principal, GatewayError> {
        self.settings
            .api_keys
            .find(presented)
            .map(principal_of_key)
            .ok_or_else(|| unauthenticated("invalid API key"))
    }

    fn token(&self, token: &str) -> Result<Principal, GatewayError> {
        let Some(verifier) = &self.jwt else {
            return Err(unauthenticated("no bearer tokens are configured"));
        };
        let claims = verifier
            .verify(token)
            .map_err(|e| unauthenticated(format!("invalid token: {e}")))?;
        let name: Arc<str> = claims.subject.as_deref().unwrap_or("").into();
        let plan = claims.get(&self.settings.plan_claim).map(Into::into);
        Ok(Principal {
            name,
            plan,
            credential: Credential::Jwt(Arc::new(claims)),
        })
    }

    /// Whether `principal` may call `method` under `policy`: 401 when a caller is needed and
    /// there is none, 403 when the caller lacks what the policy asks.
    pub fn authorize(
        &self,
        policy: &Policy,
        principal: Option<&Principal>,
        method: &str,
    ) -> Result<(), GatewayError> {
        let needed = match policy.access {
            Access::Public => return Ok(()),
            Access::Authenticated => "an API key or a bearer token",
            Access::ApiKey => "an API key",
            Access::Jwt => "a bearer token",
        };
        let Some(principal) = principal else {
            return Err(unauthenticated(format!("this method needs {needed}")));
        };
        let kind_ok = !matches!(
            (&principal.credential, policy.access),
            (Credential::ApiKey(_), Access::Jwt) | (Credential::Jwt(_), Access::ApiKey)
        );
        if !kind_ok {
            return Err(unauthenticated(format!("this method needs {needed}")));
        }
        if let Credential::ApiKey(key) = &principal.credential {
            if !key.may_call(method) {
                return Err(forbidden(format!(
                    "API key {:?} may not call {method}",
                    &*key.name
                )));
            }
        }
        let held = principal.scopes();
        if let Some(missing) = policy.scopes.iter().find(|s| !held.contains(s)) {
            return Err(forbidden(format!("missing scope {missing:?}")));
        }
        for (claim, want) in &policy.claims {
            let got = match &principal.credential {
                Credential::Jwt(claims) => claims.get(claim),
                Credential::ApiKey(_) => None,
            };
            if got.as_deref() != Some(want.as_str()) {
                return Err(forbidden(format!("claim {claim:?} must be {want:?}")));
            }
        }
        Ok(())
    }

    /// Writes the caller's forwarded facts into the backend's metadata, after removing anything
    /// the client sent under those keys (so they cannot be forged), and strips the credential
    /// unless it is forwarded.
    pub fn forward(&self, principal: Option<&Principal>, md: &mut MetadataMap) {
        if !self.settings.forward_credential {
            md.remove("authorization");
            md.remove("grpcgateway-authorization");
        }
        for (what, key) in &self.settings.forward {
            md.remove(key.as_str());
            let Some(principal) = principal else {
                continue;
            };
            let value = match what {
                Forwarded::Subject => Some(principal.name.to_string()),
                Forwarded::Plan => principal.plan.as_deref().map(str::to_owned),
                Forwarded::Scopes => Some(principal.scopes().join(" ")).filter(|s| !s.is_empty()),
                Forwarded::Claim(claim) => match &principal.credential {
                    Credential::Jwt(claims) => claims.get(claim),
                    Credential::ApiKey(_) => None,
                },
            };
            if let Some(value) = value.and_then(|v| AsciiMetadataValue::try_from(v).ok()) {
                md.insert(key.clone(), value);
            }
        }
    }

    /// The `WWW-Authenticate` challenge of a 401 here.
    pub fn challenge(&self) -> HeaderValue {
        if self.jwt.is_some() || self.settings.api_keys.is_empty() {
            HeaderValue::from_static("Bearer realm=\"protogate\"")
        } else {
            HeaderValue::from_static("ApiKey realm=\"protogate\"")
        }
    }
}

fn principal_of_key(key: &Arc<ApiKey>) -> Principal {
    Principal {
        name: key.name.clone(),
        plan: key.plan.clone(),
        credential: Credential::ApiKey(key.clone()),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The decoded value of the first `name` parameter in a raw query string.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| {
            percent_encoding::percent_decode_str(&value.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn unauthenticated(message: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::Status(tonic::Code::Unauthenticated), message)
}

fn forbidden(message: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorKind::Status(tonic::Code::PermissionDenied), message)
}
