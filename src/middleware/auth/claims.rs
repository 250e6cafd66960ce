//! The verified claims of a caller, read by policies and forwarded to backends as metadata.

use serde_json::{Map, Value};

/// What a verified token says about its caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    /// `sub`, when it is a string.
    pub subject: Option<String>,
    /// The scopes from the configured scope claim (a space-separated string or an array).
    pub scopes: Vec<String>,
    all: Map<String, Value>,
}

impl Claims {
    /// Reads the subject and scopes out of a verified payload.
    pub(crate) fn new(all: Map<String, Value>, scope_claim: &str) -> Claims {
        let subject = match all.get("sub") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let scopes = match all.get(scope_claim) {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|item| item.as_str())
                .flat_map(str::split_whitespace)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        Claims {
            subject,
            scopes,
            all,
        }
    }

    /// A claim as text: strings as they are, numbers and booleans written out, arrays of those
    /// joined by ","; `a.b` reaches into objects when no claim is literally named `a.b`.
    /// `None` when absent, null, or an object.
    pub fn get(&self, name: &str) -> Option<String> {
        // Claim names may contain dots themselves (URL-named claims), so the exact name wins.
        let value = match self.all.get(name) {
            Some(v) => v,
            None => {
                let mut parts = name.split('.');
                let first = self.all.get(parts.next()?)?;
                parts.try_fold(first, |v, part| v.as_object()?.get(part))?
            }
        };
        match value {
            Value::Array(items) => {
                let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
                Some(parts?.join(","))
            }
            other => scalar(other),
        }
    }

    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(value: Value, scope_claim: &str) -> Claims {
        match value {
            Value::Object(map) => Claims::new(map, scope_claim),
            _ => unreachable!("test payloads are objects"),
        }
    }

    #[test]
    fn claims_render_as_text() {
        let c = claims(
            json!({
                "sub": "alice",
                "n": 42,
                "admin": true,
                "groups": ["a", "b", 3],
                "org": {"id": "o-1", "tier": {"name": "pro"}},
                "org.id": "literal",
                "nested": [{"x": 1}],
                "nothing": null,
                "https://example.com/tenant": "t-9"
            }),
            "scope",
        );
        let cases = [
            ("sub", Some("alice")),
            ("n", Some("42")),
            ("admin", Some("true")),
            ("groups", Some("a,b,3")),
            ("org.id", Some("literal")),
            ("org.tier.name", Some("pro")),
            ("org", None),
            ("org.missing", None),
            ("nested", None),
            ("nothing", None),
            ("absent", None),
            ("sub.deeper", None),
            ("https://example.com/tenant", Some("t-9")),
        ];
        for (name, want) in cases {
            assert_eq!(c.get(name).as_deref(), want, "{name}");
        }
        assert_eq!(c.subject.as_deref(), Some("alice"));
    }

    #[test]
    fn scopes_from_a_string_or_an_array() {
        let oauth = claims(json!({"scope": "read  write\tadmin"}), "scope");
        assert_eq!(oauth.scopes, ["read", "write", "admin"]);
        assert!(oauth.has_scope("write"));
        assert!(!oauth.has_scope("wri"));

        let azure = claims(json!({"scp": ["read", "write"], "scope": "other"}), "scp");
        assert_eq!(azure.scopes, ["read", "write"]);

        let wrong_type = claims(json!({"scope": 7, "sub": 12}), "scope");
        assert!(wrong_type.scopes.is_empty());
        assert_eq!(wrong_type.subject, None);
    }
}
