//! API keys: configured by their SHA-256, so the config file never holds a usable secret.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::middleware::policy::selector_covers;

/// `[[auth.api_keys]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApiKey {
    pub name: String,
    pub sha256: String,
    pub plan: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// One configured key: who it stands for and what it may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The name logs, metrics, rate limits and backends see; never the key itself.
    pub name: Arc<str>,
    /// Its rate-limit plan, if it has one.
    pub plan: Option<Arc<str>>,
    /// Packages, services or methods it may call; empty means every one.
    pub allow: Vec<String>,
    /// Scopes it holds, for policies that require scopes.
    pub scopes: Vec<String>,
}

impl ApiKey {
    /// Whether the key may call `method` (a method's full name).
    pub fn may_call(&self, method: &str) -> bool {
        self.allow.is_empty() || self.allow.iter().any(|a| selector_covers(a, method))
    }
}

/// Every configured key, found by the hash of what a client presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    by_hash: HashMap<[u8; 32], Arc<ApiKey>>,
}

impl ApiKeys {
    /// Checks and indexes the configured keys; problems are reported under `key`.
    pub(crate) fn from_raw(raw: &[RawApiKey], key: &str, problems: &mut Vec<String>) -> ApiKeys {
        let mut by_hash = HashMap::with_capacity(raw.len());
        let mut names = std::collections::HashSet::new();
        for (i, entry) in raw.iter().enumerate() {
            let at = format!("{key}[{i}]");
            if entry.name.is_empty() {
                problems.push(format!("{at}.name: must not be empty"));
            } else if !names.insert(entry.name.as_str()) {
                problems.push(format!("{at}.name: {:?} is used twice", entry.name));
            }
            let Some(hash) = parse_hex32(&entry.sha256) else {
                problems.push(format!(
                    "{at}.sha256: expected 64 hex digits (e.g. from `printf %s KEY | sha256sum`)"
                ));
                continue;
            };
            let api_key = Arc::new(ApiKey {
                name: entry.name.as_str().into(),
                plan: entry.plan.as_deref().map(Into::into),
                allow: entry.allow.clone(),
                scopes: entry.scopes.clone(),
            });
            if by_hash.insert(hash, api_key).is_some() {
                problems.push(format!("{at}.sha256: the same key is configured twice"));
            }
        }
        ApiKeys { by_hash }
    }

    /// The key a client presented, if it is configured.
    pub fn find(&self, presented: &[u8]) -> Option<&Arc<ApiKey>> {
        if self.by_hash.is_empty() {
            return None;
        }
        let hash: [u8; 32] = Sha256::digest(presented).into();
        self.by_hash.get(&hash)
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of `key` in hex, as the config wants it (`protogate hash-key`).
pub fn sha256_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    fn raw(name: &str, key: &str) -> RawApiKey {
        RawApiKey {
            name: name.into(),
            sha256: sha256_hex(key),
            plan: Some("free".into()),
            allow: vec!["shop.v1.Catalog".into()],
            scopes: vec![],
        }
    }

    #[test]
    fn keys_are_found_by_hash_only() {
        let mut problems = Vec::new();
        let keys = ApiKeys::from_raw(&[raw("demo", "s3cret")], "auth.api_keys", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let found = keys.find(b"s3cret").unwrap();
        assert_eq!(&*found.name, "demo");
        assert_eq!(found.plan.as_deref(), Some("free"));
        assert!(keys.find(b"s3cret ").is_none());
        assert!(keys.find(sha256_hex("s3cret").as_bytes()).is_none());
        assert!(found.may_call("shop.v1.Catalog.GetProduct"));
        assert!(!found.may_call("shop.v1.CatalogAdmin.Delete"));
        assert!(!found.may_call("shop.v1.Orders.GetOrder"));
    }

    #[test]
    fn bad_entries_are_reported() {
        let mut problems = Vec::new();
        let mut bad = raw("demo", "a");
        bad.sha256 = "xyz".into();
        ApiKeys::from_raw(
            &[bad, raw("twice", "b"), raw("twice", "b"), raw("", "c")],
            "auth.api_keys",
            &mut problems,
        );
        assert!(
            problems[0].starts_with("auth.api_keys[0].sha256"),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("used twice")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("configured twice")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("[3].name")),
            "{problems:?}"
        );
    }
}
