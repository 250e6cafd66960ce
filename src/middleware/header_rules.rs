//! Header rules: headers removed, set or added on a request or a response, checked at load time.

use std::collections::{BTreeMap, HashMap};

use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

/// `request_headers = {...}` or `response_headers = {...}` as written in the config.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderRules {
    /// Appended, keeping values already there.
    #[serde(default)]
    pub(crate) add: BTreeMap<String, String>,
    /// Replacing every value already there.
    #[serde(default)]
    pub(crate) set: BTreeMap<String, String>,
    /// Removed, every value.
    #[serde(default)]
    pub(crate) remove: Vec<String>,
}

/// Checked header rules; applying them only clones prepared names and values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

/// Headers that frame or route the message: changing them would corrupt it, not adjust it.
const MANAGED: [HeaderName; 8] = [
    CONNECTION,
    CONTENT_LENGTH,
    HOST,
    HeaderName::from_static("keep-alive"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

impl HeaderRules {
    /// Checks raw rules; each bad name or value is pushed to `problems` as `key.table: reason` and
    /// left out.
    pub(crate) fn parse(
        raw: &RawHeaderRules,
        key: &str,
        problems: &mut Vec<String>,
    ) -> HeaderRules {
        let mut seen = HashMap::new();
        let mut name = |table: &str, text: &str, problems: &mut Vec<String>| {
            let name = match HeaderName::from_bytes(text.as_bytes()) {
                Ok(name) => name,
                Err(_) => {
                    problems.push(format!("{key}.{table}: {text:?} is not a header name"));
                    return None;
                }
            };
            if MANAGED.contains(&name) {
                problems.push(format!(
                    "{key}.{table}: {text:?} is managed by the gateway and cannot be changed"
                ));
                return None;
            }
            // TOML keys are case-sensitive but header names are not: two spellings would make
            // the outcome depend on the map's order.
            if let Some(other) = seen.insert((table.to_owned(), name.clone()), text.to_owned()) {
                problems.push(format!(
                    "{key}.{table}: {other:?} and {text:?} name the same header"
                ));
                return None;
            }
            Some(name)
        };
        let mut pairs =
            |table: &str, map: &BTreeMap<String, String>, problems: &mut Vec<String>| {
                let mut out = Vec::with_capacity(map.len());
                for (text, value) in map {
                    let Some(header) = name(table, text, problems) else {
                        continue;
                    };
                    match HeaderValue::from_str(value) {
                        Ok(value) => out.push((header, value)),
                        Err(_) => problems.push(format!(
                            "{key}.{table}.{text}: {value:?} is not a valid header value \
                         (visible ASCII, spaces and tabs only)"
                        )),
                    }
                }
                out
            };
        let set = pairs("set", &raw.set, problems);
        let add = pairs("add", &raw.add, problems);
        let remove = raw
            .remove
            .iter()
            .filter_map(|text| name("remove", text, problems))
            .collect();
        HeaderRules { remove, set, add }
    }

    /// Whether applying the rules would change nothing, so the caller can skip them.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Removes, then sets (replacing), then adds (appending), so a header both removed and added
    /// ends with only the added value.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    /// Rules for a child (a route inside a service, a service inside the global policy): a header
    /// the child names anywhere is decided by the child alone; the parent's rules for other
    /// headers still apply.
    pub fn merge(parent: &HeaderRules, child: &HeaderRules) -> HeaderRules {
        let child_names = |name: &HeaderName| {
            child.remove.contains(name)
                || child.set.iter().any(|(n, _)| n == name)
                || child.add.iter().any(|(n, _)| n == name)
        };
        let inherited = |rules: &[(HeaderName, HeaderValue)]| {
            rules
                .iter()
                .filter(|(name, _)| !child_names(name))
                .cloned()
                .collect::<Vec<_>>()
        };
        let mut remove: Vec<HeaderName> = parent
            .remove
            .iter()
            .filter(|n| !child_names(n))
            .cloned()
            .collect();
        remove.extend(child.remove.iter().cloned());
        let mut set = inherited(&parent.set);
        set.extend(child.set.iter().cloned());
        let mut add = inherited(&parent.add);
        add.extend(child.add.iter().cloned());
        HeaderRules { remove, set, add }
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    fn raw(add: &[(&str, &str)], set: &[(&str, &str)], remove: &[&str]) -> RawHeaderRules {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        RawHeaderRules {
            add: map(add),
            set: map(set),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn rules(add: &[(&str, &str)], set: &[(&str, &str)], remove: &[&str]) -> HeaderRules {
        let mut problems = Vec::new();
        let rules = HeaderRules::parse(&raw(add, set, remove), "r", &mut problems);
        assert_eq!(problems, Vec::<String>::new());
        rules
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn values<'a>(map: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        map.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn removes_every_value_case_insensitively() {
        let mut map = headers(&[("x-internal", "1"), ("x-internal", "2"), ("x-keep", "k")]);
        rules(&[], &[], &["X-Internal"]).apply(&mut map);
        assert!(map.get("x-internal").is_none());
        assert_eq!(values(&map, "x-keep"), ["k"]);
    }

    #[test]
    fn set_replaces_and_add_appends() {
        let mut map = headers(&[("x-set", "old1"), ("x-set", "old2"), ("x-add", "old")]);
        rules(
            &[("X-Add", "new")],
            &[("X-Set", "new"), ("x-fresh", "f")],
            &[],
        )
        .apply(&mut map);
        assert_eq!(values(&map, "x-set"), ["new"]);
        assert_eq!(values(&map, "x-add"), ["old", "new"]);
        assert_eq!(values(&map, "x-fresh"), ["f"]);
    }

    #[test]
    fn order_is_remove_then_set_then_add() {
        let mut map = headers(&[("x-a", "client")]);
        rules(&[("x-a", "added")], &[("x-a", "set")], &["x-a"]).apply(&mut map);
        assert_eq!(values(&map, "x-a"), ["set", "added"]);

        let mut map = headers(&[("x-b", "client")]);
        rules(&[("x-b", "added")], &[], &["x-b"]).apply(&mut map);
        assert_eq!(values(&map, "x-b"), ["added"]);
    }

    #[test]
    fn empty_rules_change_nothing() {
        let empty = rules(&[], &[], &[]);
        assert!(empty.is_empty());
        assert!(!rules(&[], &[], &["x"]).is_empty());
        let mut map = headers(&[("x-a", "1")]);
        empty.apply(&mut map);
        assert_eq!(map, headers(&[("x-a", "1")]));
    }

    #[test]
    fn bad_names_and_values_are_reported_with_their_key() {
        let mut problems = Vec::new();
        let rules = HeaderRules::parse(
            &raw(
                &[("bad name", "v"), ("x-ok", "fine")],
                &[
                    ("x-bad-value", "line\nbreak"),
                    ("X-Dup", "1"),
                    ("x-dup", "2"),
                ],
                &[
                    "",
                    "Content-Length",
                    "transfer-encoding",
                    "keep-alive",
                    "x-gone",
                ],
            ),
            "policies.\"shop.v1\".response_headers",
            &mut problems,
        );
        let key = "policies.\"shop.v1\".response_headers";
        assert_eq!(
            problems,
            [
                format!("{key}.set.x-bad-value: \"line\\nbreak\" is not a valid header value (visible ASCII, spaces and tabs only)"),
                format!("{key}.set: \"X-Dup\" and \"x-dup\" name the same header"),
                format!("{key}.add: \"bad name\" is not a header name"),
                format!("{key}.remove: \"\" is not a header name"),
                format!("{key}.remove: \"Content-Length\" is managed by the gateway and cannot be changed"),
                format!("{key}.remove: \"transfer-encoding\" is managed by the gateway and cannot be changed"),
                format!("{key}.remove: \"keep-alive\" is managed by the gateway and cannot be changed"),
            ]
        );
        // What was valid is kept.
        let mut map = HeaderMap::new();
        rules.apply(&mut map);
        assert_eq!(values(&map, "x-ok"), ["fine"]);
        assert_eq!(values(&map, "x-dup"), ["1"]);
    }

    #[test]
    fn the_same_name_in_two_tables_is_not_a_duplicate() {
        rules(&[("x-a", "2")], &[("x-a", "1")], &["x-a"]);
    }

    #[test]
    fn merge_lets_the_child_decide_every_header_it_names() {
        let parent = rules(
            &[("x-parent-add", "p"), ("x-shared", "parent-add")],
            &[("x-parent-set", "p"), ("x-overridden", "parent")],
            &["x-parent-removed", "x-child-sets"],
        );
        let child = rules(
            &[("x-child-add", "c")],
            &[("x-overridden", "child"), ("x-child-sets", "c")],
            &["x-shared"],
        );
        let merged = HeaderRules::merge(&parent, &child);
        let mut map = headers(&[
            ("x-parent-removed", "client"),
            ("x-shared", "client"),
            ("x-child-sets", "client"),
        ]);
        merged.apply(&mut map);
        assert!(map.get("x-parent-removed").is_none());
        assert!(
            map.get("x-shared").is_none(),
            "child's remove beats parent's add"
        );
        assert_eq!(values(&map, "x-child-sets"), ["c"]);
        assert_eq!(values(&map, "x-overridden"), ["child"]);
        assert_eq!(values(&map, "x-parent-set"), ["p"]);
        assert_eq!(values(&map, "x-parent-add"), ["p"]);
        assert_eq!(values(&map, "x-child-add"), ["c"]);
    }

    #[test]
    fn merge_with_empty_is_identity() {
        let some = rules(&[("x-a", "1")], &[("x-b", "2")], &["x-c"]);
        let empty = HeaderRules::default();
        assert_eq!(HeaderRules::merge(&some, &empty), some);
        assert_eq!(HeaderRules::merge(&empty, &some), some);
    }
}
