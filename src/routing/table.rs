//! A route table compiled into a segment trie, matched per request without scanning routes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use http::Method;
use percent_encoding::percent_decode_str;

use super::template::{FieldPath, PathTemplate, Segment};

/// How variable values are percent-decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UnescapeMode {
    /// google.api.http: single-segment variables fully decoded; multi-segment keep `%2F`/`%2f`.
    #[default]
    AllExceptSlash,
    /// Every escape decoded, `%2F` included.
    AllCharacters,
    /// Values are passed on exactly as received.
    None,
}

/// Options fixed when the table is built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MatchOptions {
    /// How variable values are percent-decoded.
    pub unescape: UnescapeMode,
}

/// Position of a route in insertion order; stable for the life of the builder and its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId(usize);

impl RouteId {
    /// The zero-based insertion index.
    pub fn index(self) -> usize {
        self.0
    }
}

/// A rejected insert: same method, verb and segment shape as a route already in the table.
#[derive(Debug)]
pub struct Duplicate<T> {
    value: T,
    existing: RouteId,
    /// Boxed so `insert`'s `Result` stays small.
    routes: Box<DuplicateRoutes>,
}

#[derive(Debug)]
struct DuplicateRoutes {
    method: Method,
    template: PathTemplate,
    existing_template: PathTemplate,
}

impl<T> Duplicate<T> {
    /// The rejected value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// Hands the rejected value back.
    pub fn into_value(self) -> T {
        self.value
    }

    /// The route that was kept (look it up with [`RouteTableBuilder::get`]).
    pub fn existing(&self) -> RouteId {
        self.existing
    }

    /// The method shared by both routes.
    pub fn method(&self) -> &Method {
        &self.routes.method
    }

    /// The rejected template.
    pub fn template(&self) -> &PathTemplate {
        &self.routes.template
    }

    /// The template of the route that was kept.
    pub fn existing_template(&self) -> &PathTemplate {
        &self.routes.existing_template
    }
}

impl<T> fmt::Display for Duplicate<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.routes;
        write!(
            f,
            "route {} {} has the same method, verb and segment shape as {} {}, which is kept",
            r.method, r.template, r.method, r.existing_template
        )
    }
}

impl<T: fmt::Debug> std::error::Error for Duplicate<T> {}

/// The outcome of [`RouteTable::find`].
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch<'a, T> {
    /// A route matched path and method.
    Found(Found<'a, T>),
    /// Routes matched the path, none with this method; `allow` is sorted and deduplicated.
    MethodNotAllowed {
        /// Methods of every route that matched the path.
        allow: Vec<Method>,
    },
    /// No route matched the path.
    NotFound,
}

/// A matched route with its variable bindings.
#[derive(Debug, PartialEq, Eq)]
pub struct Found<'a, T> {
    /// Which route matched.
    pub route: RouteId,
    /// The value stored with the route.
    pub value: &'a T,
    /// The route's template (for metrics labels and field lookups).
    pub template: &'a PathTemplate,
    /// One binding per template variable, in template order.
    pub bindings: Vec<Binding<'a>>,
}

/// The value captured for one template variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding<'a> {
    /// Index into the template's [`PathTemplate::variables`].
    pub variable: usize,
    /// The field the value is for.
    pub field_path: &'a FieldPath,
    /// The value, decoded according to [`MatchOptions::unescape`].
    pub value: String,
}

#[derive(Debug)]
struct Route<T> {
    method: Method,
    template: PathTemplate,
    value: T,
}

/// Leaves of one trie node: the routes ending here, one per method.
type Leaves = [(Method, usize)];

#[derive(Debug, Default)]
struct BuildNode {
    literals: BTreeMap<Box<str>, usize>,
    single: Option<usize>,
    multi: Option<usize>,
    leaves: Vec<(Method, usize)>,
}

/// Collects routes, refusing duplicates, then freezes them into a [`RouteTable`].
#[derive(Debug)]
pub struct RouteTableBuilder<T> {
    opts: MatchOptions,
    routes: Vec<Route<T>>,
    /// Node 0 is the root for templates without a verb.
    nodes: Vec<BuildNode>,
    verbs: BTreeMap<Box<str>, usize>,
}

impl<T> RouteTableBuilder<T> {
    /// An empty builder.
    pub fn new(opts: MatchOptions) -> Self {
        RouteTableBuilder {
            opts,
            routes: Vec::new(),
            nodes: vec![BuildNode::default()],
            verbs: BTreeMap::new(),
        }
    }

    /// Adds a route; on a duplicate the first route stays and the new one is handed back.
    pub fn insert(
        &mut self,
        method: Method,
        template: &PathTemplate,
        value: T,
    ) -> Result<(), Duplicate<T>> {
        let nodes = &mut self.nodes;
        let mut node = match template.verb() {
            None => 0,
            Some(verb) => *self.verbs.entry(verb.into()).or_insert_with(|| {
                nodes.push(BuildNode::default());
                nodes.len() - 1
            }),
        };
        for seg in template.segments() {
            node = child(nodes, node, seg);
        }
        // Indexing is sound: `node` is 0, a verb root or a `child()` result, all pushed nodes.
        let leaf = &mut nodes[node];
        if let Some(&(_, existing)) = leaf.leaves.iter().find(|(m, _)| *m == method) {
            let existing_template = self
                .routes
                .get(existing)
                .map(|r| r.template.clone())
                .unwrap_or_else(|| template.clone());
            return Err(Duplicate {
                value,
                existing: RouteId(existing),
                routes: Box::new(DuplicateRoutes {
                    method,
                    template: template.clone(),
                    existing_template,
                }),
            });
        }
        leaf.leaves.push((method.clone(), self.routes.len()));
        self.routes.push(Route {
            method,
            template: template.clone(),
            value,
        });
        Ok(())
    }

    /// The route with this id: its method, template and value.
    pub fn get(&self, id: RouteId) -> Option<(&Method, &PathTemplate, &T)> {
        self.routes
            .get(id.0)
            .map(|r| (&r.method, &r.template, &r.value))
    }

    /// Number of routes inserted.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether no route was inserted.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Freezes the routes into an immutable table.
    pub fn build(self) -> RouteTable<T> {
        let nodes = self
            .nodes
            .into_iter()
            .map(|n| Node {
                literals: Children::new(n.literals),
                single: n.single,
                multi: n.multi,
                leaves: n.leaves.into_boxed_slice(),
            })
            .collect();
        RouteTable {
            opts: self.opts,
            routes: self.routes.into_boxed_slice(),
            nodes,
            verbs: Children::new(self.verbs),
        }
    }
}

/// The child of `parent` along `seg`, created if missing.
fn child(nodes: &mut Vec<BuildNode>, parent: usize, seg: &Segment) -> usize {
    let next = nodes.len();
    // Indexing is sound: callers only pass indices of nodes already pushed.
    let p = &mut nodes[parent];
    let slot = match seg {
        Segment::Literal(lit) => p.literals.entry(lit.clone()).or_insert(next),
        Segment::Single => p.single.get_or_insert(next),
        Segment::Multi => p.multi.get_or_insert(next),
    };
    let found = *slot;
    if found == next {
        nodes.push(BuildNode::default());
    }
    found
}

/// Literal children: sorted for binary search when few, hashed when many.
#[derive(Debug)]
enum Children {
    Sorted(Box<[(Box<str>, usize)]>),
    Hashed(HashMap<Box<str>, usize>),
}

impl Children {
    /// Above this many children a hash lookup beats binary search.
    const HASH_ABOVE: usize = 16;

    fn new(map: BTreeMap<Box<str>, usize>) -> Self {
        if map.len() > Self::HASH_ABOVE {
            Children::Hashed(map.into_iter().collect())
        } else {
            Children::Sorted(map.into_iter().collect())
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Children::Sorted(v) => v.is_empty(),
            Children::Hashed(m) => m.is_empty(),
        }
    }

    fn get(&self, key: &str) -> Option<usize> {
        match self {
            Children::Sorted(v) => v
                .binary_search_by(|(k, _)| (**k).cmp(key))
                .ok()
                .and_then(|i| v.get(i))
                .map(|&(_, n)| n),
            Children::Hashed(m) => m.get(key).copied(),
        }
    }

    /// Looks up a raw request segment by its percent-decoded text.
    fn get_decoded(&self, raw: &str) -> Option<usize> {
        if self.is_empty() {
            return None;
        }
        if !has_percent(raw) {
            return self.get(raw);
        }
        // Non-UTF-8 decodings cannot equal a (UTF-8) literal.
        let decoded = percent_decode_str(raw).decode_utf8().ok()?;
        self.get(&decoded)
    }
}

#[derive(Debug)]
struct Node {
    literals: Children,
    single: Option<usize>,
    multi: Option<usize>,
    leaves: Box<Leaves>,
}

/// Immutable compiled routes; share it behind an `Arc` and swap it whole.
#[derive(Debug)]
pub struct RouteTable<T> {
    opts: MatchOptions,
    routes: Box<[Route<T>]>,
    /// Node 0 is the root for templates without a verb.
    nodes: Box<[Node]>,
    verbs: Children,
}

/// Remaining request segments: `None` when exhausted, else `Some("a/b")` (one or more segments).
type Rest<'p> = Option<&'p str>;

impl<T> RouteTable<T> {
    /// Matches a raw (still percent-encoded) request path without its query string.
    ///
    /// The most specific route wins segment by segment (literal, then `*`, then `**`), with
    /// backtracking; a route with the request's method anywhere beats a better path match
    /// without it. A variable value that decodes to invalid UTF-8 gives `NotFound`.
    pub fn find<'a>(&'a self, method: &Method, path: &str) -> RouteMatch<'a, T> {
        let Some(body) = path.strip_prefix('/') else {
            return RouteMatch::NotFound;
        };
        let verb_attempt = split_verb(body).and_then(|(head, verb)| {
            let root = self.verbs.get_decoded(verb)?;
            Some((root, segments(head)))
        });
        let attempts = verb_attempt.into_iter().chain([(0, segments(body))]);

        let mut path_matched = false;
        for (root, rest) in attempts.clone() {
            let mut hit = None;
            self.walk(root, rest, &mut |leaves| {
                match leaves.iter().find(|(m, _)| m == method) {
                    Some(&(_, route)) => hit = Some(route),
                    None => path_matched = true,
                }
                hit.is_some()
            });
            if let Some(route) = hit {
                return match self.found(route, rest) {
                    Some(found) => RouteMatch::Found(found),
                    None => RouteMatch::NotFound,
                };
            }
        }
        if !path_matched {
            return RouteMatch::NotFound;
        }
        // Error path only: walk again to collect every method that matched the path.
        let mut allow = Vec::new();
        for (root, rest) in attempts {
            self.walk(root, rest, &mut |leaves| {
                allow.extend(leaves.iter().map(|(m, _)| m.clone()));
                false
            });
        }
        allow.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        allow.dedup();
        RouteMatch::MethodNotAllowed { allow }
    }

    /// Depth-first search in specificity order; `visit` sees each matching leaf set and
    /// returns `true` to stop. Depth is bounded by the longest template.
    fn walk(&self, node: usize, rest: Rest<'_>, visit: &mut impl FnMut(&Leaves) -> bool) -> bool {
        let Some(n) = self.nodes.get(node) else {
            return false;
        };
        let Some(remaining) = rest else {
            if !n.leaves.is_empty() && visit(&n.leaves) {
                return true;
            }
            // A trailing `**` may match zero segments.
            return n.multi.is_some_and(|m| self.walk(m, None, visit));
        };
        let (seg, tail) = split_first(remaining);
        if let Some(c) = n.literals.get_decoded(seg) {
            if self.walk(c, tail, visit) {
                return true;
            }
        }
        if let Some(c) = n.single.filter(|_| !seg.is_empty()) {
            if self.walk(c, tail, visit) {
                return true;
            }
        }
        if let Some(m) = n.multi {
            // Let `**` take 0, 1, 2, ... segments, so routes continuing after it win over
            // the bare `**` leaf, which is only reached once everything is consumed.
            let mut r = rest;
            loop {
                if self.walk(m, r, visit) {
                    return true;
                }
                match r {
                    Some(s) => r = split_first(s).1,
                    None => break,
                }
            }
        }
        false
    }

    /// Builds the match for `route` against the segments that led to it.
    fn found(&self, route: usize, rest: Rest<'_>) -> Option<Found<'_, T>> {
        let r = self.routes.get(route)?;
        let tpl = &r.template;
        let segs = tpl.segments();
        let n = rest.map_or(0, |s| s.bytes().filter(|&b| b == b'/').count() + 1);
        let t = segs.len();
        let multi = tpl.multi_index();
        // Request segments taken by template segment `i`. The trie guarantees n == t without
        // `**`, and n >= t - 1 with it, so the split around `**` is unique.
        let range = |i: usize| match multi {
            Some(k) if i == k => (k, n.saturating_sub(t - k - 1)),
            Some(k) if i > k => {
                let j = (i + n).saturating_sub(t);
                (j, j + 1)
            }
            _ => (i, i + 1),
        };
        let mut bindings = Vec::with_capacity(tpl.variables().len());
        for (variable, var) in tpl.variables().iter().enumerate() {
            let from = range(var.start()).0;
            let to = range(var.end().saturating_sub(1)).1;
            let raw = span(rest.unwrap_or_default(), from, to)?;
            let single =
                var.end() - var.start() == 1 && segs.get(var.start()) != Some(&Segment::Multi);
            let value = match self.opts.unescape {
                UnescapeMode::None => raw.to_owned(),
                UnescapeMode::AllCharacters => decode_all(raw)?,
                UnescapeMode::AllExceptSlash if single => decode_all(raw)?,
                UnescapeMode::AllExceptSlash => decode_keep_slash(raw)?,
            };
            bindings.push(Binding {
                variable,
                field_path: var.field_path(),
                value,
            });
        }
        Some(Found {
            route: RouteId(route),
            value: &r.value,
            template: tpl,
            bindings,
        })
    }

    /// Every route in insertion order, for printing the table.
    pub fn iter(&self) -> impl Iterator<Item = (&Method, &PathTemplate, &T)> + '_ {
        self.routes
            .iter()
            .map(|r| (&r.method, &r.template, &r.value))
    }

    /// The route with this id: its method, template and value.
    pub fn get(&self, id: RouteId) -> Option<(&Method, &PathTemplate, &T)> {
        self.routes
            .get(id.0)
            .map(|r| (&r.method, &r.template, &r.value))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The options the table was built with.
    pub fn options(&self) -> MatchOptions {
        self.opts
    }
}

/// `"/"` has zero segments; otherwise the text after the leading `/` has one or more.
fn segments(body: &str) -> Rest<'_> {
    (!body.is_empty()).then_some(body)
}

/// Splits off the first segment: `"a/b/c"` gives `("a", Some("b/c"))`, `"a"` gives `("a", None)`.
fn split_first(rest: &str) -> (&str, Rest<'_>) {
    // Byte search: '/' is ASCII, so the cut is on a char boundary.
    match rest.bytes().position(|b| b == b'/') {
        Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i + 1..)),
        None => (rest, None),
    }
}

/// Whether `s` contains a percent escape (valid or not).
fn has_percent(s: &str) -> bool {
    s.as_bytes().contains(&b'%')
}

/// Splits the last segment at its last raw `:` into (path without verb, verb).
fn split_verb(body: &str) -> Option<(&str, &str)> {
    let last = body.rfind('/').map_or(0, |i| i + 1);
    let colon = last + body.get(last..)?.rfind(':')?;
    Some((body.get(..colon)?, body.get(colon + 1..)?))
}

/// The raw text of segments `from..to` of `rest` (slashes included); `""` when empty.
fn span(rest: &str, from: usize, to: usize) -> Option<&str> {
    if from >= to {
        return Some("");
    }
    let mut start = (from == 0).then_some(0);
    let mut end = rest.len();
    let slashes = rest.bytes().enumerate().filter(|&(_, b)| b == b'/');
    for (slash, (pos, _)) in slashes.enumerate() {
        // Slash number `slash` ends segment `slash` and starts segment `slash + 1`.
        if slash + 1 == from {
            start = Some(pos + 1);
        }
        if slash + 1 == to {
            end = pos;
            break;
        }
    }
    rest.get(start?..end)
}

/// Decodes every escape; `%zz` stays as written; `None` if the result is not UTF-8.
fn decode_all(raw: &str) -> Option<String> {
    if !has_percent(raw) {
        return Some(raw.to_owned());
    }
    percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(Cow::into_owned)
}

/// Like [`decode_all`] but `%2F`/`%2f` stay exactly as written.
fn decode_keep_slash(raw: &str) -> Option<String> {
    if !has_percent(raw) {
        return Some(raw.to_owned());
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = find_encoded_slash(rest) {
        // `i..i + 3` is the ASCII text `%2F`, so both cuts fall on char boundaries.
        let (before, after) = rest.split_at(i);
        let (slash, after) = after.split_at(3);
        out.extend(percent_decode_str(before));
        out.extend_from_slice(slash.as_bytes());
        rest = after;
    }
    out.extend(percent_decode_str(rest));
    String::from_utf8(out).ok()
}

fn find_encoded_slash(s: &str) -> Option<usize> {
    s.as_bytes()
        .windows(3)
        .position(|w| matches!(w, [b'%', b'2', b'F' | b'f']))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    /// What a request should produce: route value and bindings, a 405 Allow list, or a 404.
    #[derive(Debug)]
    enum Want {
        Hit(&'static str, &'static [(&'static str, &'static str)]),
        NotAllowed(&'static [&'static str]),
        Miss,
    }
    use Want::{Hit, Miss, NotAllowed};

    /// Routes are `"METHOD /template"`; each route's value is that same string.
    fn table_with(opts: MatchOptions, routes: &[&'static str]) -> RouteTable<&'static str> {
        let mut b = RouteTableBuilder::new(opts);
        for &route in routes {
            let (method, template) = route.split_once(' ').unwrap();
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let template = PathTemplate::parse(template).unwrap();
            b.insert(method, &template, route).unwrap();
        }
        b.build()
    }

    fn table(routes: &[&'static str]) -> RouteTable<&'static str> {
        table_with(MatchOptions::default(), routes)
    }

    fn check(table: &RouteTable<&'static str>, cases: &[(&str, &str, Want)]) {
        for (method, path, want) in cases {
            let m = Method::from_bytes(method.as_bytes()).unwrap();
            let got = table.find(&m, path);
            let ctx = format!("{method} {path}: got {got:?}, want {want:?}");
            match (got, want) {
                (RouteMatch::Found(f), Hit(value, bindings)) => {
                    assert_eq!(*f.value, *value, "{ctx}");
                    let got: Vec<_> = f
                        .bindings
                        .iter()
                        .map(|b| (b.field_path.as_str(), b.value.as_str()))
                        .collect();
                    assert_eq!(got, *bindings, "{ctx}");
                    for b in &f.bindings {
                        assert_eq!(
                            f.template.variables()[b.variable].field_path(),
                            b.field_path
                        );
                    }
                    assert_eq!(table.get(f.route).map(|r| *r.2), Some(*value), "{ctx}");
                }
                (RouteMatch::MethodNotAllowed { allow }, NotAllowed(want)) => {
                    let got: Vec<_> = allow.iter().map(Method::as_str).collect();
                    assert_eq!(got, *want, "{ctx}");
                }
                (RouteMatch::NotFound, Miss) => {}
                _ => panic!("{ctx}"),
            }
        }
    }

    #[test]
    fn spec_examples() {
        let t = table(&[
            "GET /v1/messages/{message_id}",
            "PATCH /v1/messages/{message_id}",
            "GET /v1/users/{user_id}/messages/{message_id}",
            "GET /v1/{name=shelves/*/books/*}",
            "POST /v1/{name=operations/**}:cancel",
            "POST /v1/{name=**}:cancel",
            "GET /v1/{name=files/**}",
            "POST /v1/{name=shelves/*/books/**}:publish",
        ]);
        check(
            &t,
            &[
                (
                    "GET",
                    "/v1/messages/123456",
                    Hit("GET /v1/messages/{message_id}", &[("message_id", "123456")]),
                ),
                (
                    "PATCH",
                    "/v1/messages/123456",
                    Hit(
                        "PATCH /v1/messages/{message_id}",
                        &[("message_id", "123456")],
                    ),
                ),
                (
                    "GET",
                    "/v1/users/me/messages/123456",
                    Hit(
                        "GET /v1/users/{user_id}/messages/{message_id}",
                        &[("user_id", "me"), ("message_id", "123456")],
                    ),
                ),
                (
                    "GET",
                    "/v1/shelves/s1/books/b2",
                    Hit(
                        "GET /v1/{name=shelves/*/books/*}",
                        &[("name", "shelves/s1/books/b2")],
                    ),
                ),
                ("GET", "/v1/shelves/s1/books", Miss),
                (
                    "GET",
                    "/v1/files/a/b/c.txt",
                    Hit("GET /v1/{name=files/**}", &[("name", "files/a/b/c.txt")]),
                ),
                (
                    "GET",
                    "/v1/files",
                    Hit("GET /v1/{name=files/**}", &[("name", "files")]),
                ),
                (
                    "POST",
                    "/v1/operations/op1:cancel",
                    Hit(
                        "POST /v1/{name=operations/**}:cancel",
                        &[("name", "operations/op1")],
                    ),
                ),
                (
                    "POST",
                    "/v1/projects/p/ops/op1:cancel",
                    Hit(
                        "POST /v1/{name=**}:cancel",
                        &[("name", "projects/p/ops/op1")],
                    ),
                ),
                (
                    "POST",
                    "/v1/shelves/s/books/x/y:publish",
                    Hit(
                        "POST /v1/{name=shelves/*/books/**}:publish",
                        &[("name", "shelves/s/books/x/y")],
                    ),
                ),
                (
                    "POST",
                    "/v1/shelves/s/books:publish",
                    Hit(
                        "POST /v1/{name=shelves/*/books/**}:publish",
                        &[("name", "shelves/s/books")],
                    ),
                ),
                ("POST", "/v1/shelves/s/books:unknown", Miss),
                ("DELETE", "/v1/operations/op1:cancel", NotAllowed(&["POST"])),
            ],
        );
    }

    #[test]
    fn spec_name_messages() {
        // Same shape as `/v1/messages/{message_id}`, so it needs its own table.
        let t = table(&["GET /v1/{name=messages/*}"]);
        check(
            &t,
            &[
                (
                    "GET",
                    "/v1/messages/123456",
                    Hit("GET /v1/{name=messages/*}", &[("name", "messages/123456")]),
                ),
                ("GET", "/v1/messages", Miss),
                ("GET", "/v1/other/1", Miss),
            ],
        );
    }

    #[test]
    fn spec_message_id() {
        let t = table(&["GET /v1/messages/{message_id}"]);
        check(
            &t,
            &[
                (
                    "GET",
                    "/v1/messages/123456",
                    Hit("GET /v1/messages/{message_id}", &[("message_id", "123456")]),
                ),
                ("GET", "/v1/messages/123456/x", Miss),
                ("GET", "/v1/messages", Miss),
            ],
        );
    }

    #[test]
    fn specificity_and_backtracking() {
        let t = table(&[
            "GET /v1/books/special",
            "GET /v1/books/{id}",
            "GET /v1/{name=**}",
            "GET /v1/{name=**}/edit",
            "GET /a/b/c",
            "GET /a/{x}/d",
            "GET /a/{x=**}/e",
            "GET /",
        ]);
        check(
            &t,
            &[
                (
                    "GET",
                    "/v1/books/special",
                    Hit("GET /v1/books/special", &[]),
                ),
                (
                    "GET",
                    "/v1/books/42",
                    Hit("GET /v1/books/{id}", &[("id", "42")]),
                ),
                (
                    "GET",
                    "/v1/books/42/x",
                    Hit("GET /v1/{name=**}", &[("name", "books/42/x")]),
                ),
                (
                    "GET",
                    "/v1/books",
                    Hit("GET /v1/{name=**}", &[("name", "books")]),
                ),
                ("GET", "/v1", Hit("GET /v1/{name=**}", &[("name", "")])),
                (
                    "GET",
                    "/v1/a/b/edit",
                    Hit("GET /v1/{name=**}/edit", &[("name", "a/b")]),
                ),
                (
                    "GET",
                    "/v1/a/edit/b/edit",
                    Hit("GET /v1/{name=**}/edit", &[("name", "a/edit/b")]),
                ),
                (
                    "GET",
                    "/v1/a/edit/b",
                    Hit("GET /v1/{name=**}", &[("name", "a/edit/b")]),
                ),
                (
                    "GET",
                    "/v1/edit",
                    Hit("GET /v1/{name=**}/edit", &[("name", "")]),
                ),
                // Literal `b` dead-ends at `d`, so backtrack into `{x}`.
                ("GET", "/a/b/c", Hit("GET /a/b/c", &[])),
                ("GET", "/a/b/d", Hit("GET /a/{x}/d", &[("x", "b")])),
                ("GET", "/a/b/e", Hit("GET /a/{x=**}/e", &[("x", "b")])),
                ("GET", "/a/b/c/e", Hit("GET /a/{x=**}/e", &[("x", "b/c")])),
                ("GET", "/a/e", Hit("GET /a/{x=**}/e", &[("x", "")])),
                ("GET", "/a/b/x", Miss),
                ("GET", "/", Hit("GET /", &[])),
                ("GET", "//", Miss),
                ("GET", "", Miss),
                ("GET", "v1/books/1", Miss),
            ],
        );
    }

    #[test]
    fn wildcards_without_variables() {
        let t = table(&["GET /v1/*/x", "GET /static/**", "GET /**:probe"]);
        check(
            &t,
            &[
                ("GET", "/v1/anything/x", Hit("GET /v1/*/x", &[])),
                ("GET", "/static/a/b.css", Hit("GET /static/**", &[])),
                ("GET", "/static", Hit("GET /static/**", &[])),
                ("GET", "/any/path:probe", Hit("GET /**:probe", &[])),
                ("GET", "/:probe", Hit("GET /**:probe", &[])),
            ],
        );
    }

    #[test]
    fn verbs_and_colons_in_values() {
        let t = table(&[
            "POST /v1/{name=**}:cancel",
            "POST /v1/things/{id}:cancel",
            "GET /v1/things/{id}",
            "GET /v1/{a}/c",
            "POST /v2/{name}:do",
        ]);
        check(
            &t,
            &[
                (
                    "POST",
                    "/v1/things/1:cancel",
                    Hit("POST /v1/things/{id}:cancel", &[("id", "1")]),
                ),
                (
                    "POST",
                    "/v1/ops/1:cancel",
                    Hit("POST /v1/{name=**}:cancel", &[("name", "ops/1")]),
                ),
                // No `:b` verb route: the colon belongs to the value.
                (
                    "GET",
                    "/v1/things/a:b",
                    Hit("GET /v1/things/{id}", &[("id", "a:b")]),
                ),
                // The verb route matches the path but not the method: fall back to no-verb routes.
                (
                    "GET",
                    "/v1/things/x:cancel",
                    Hit("GET /v1/things/{id}", &[("id", "x:cancel")]),
                ),
                // An encoded colon is never a verb separator.
                ("POST", "/v1/things/1%3Acancel", NotAllowed(&["GET"])),
                (
                    "GET",
                    "/v1/things/1%3Acancel",
                    Hit("GET /v1/things/{id}", &[("id", "1:cancel")]),
                ),
                // Split at the last colon.
                (
                    "POST",
                    "/v2/a:b:do",
                    Hit("POST /v2/{name}:do", &[("name", "a:b")]),
                ),
                // A colon in an earlier segment is never a verb.
                ("GET", "/v1/a:b/c", Hit("GET /v1/{a}/c", &[("a", "a:b")])),
                ("POST", "/v2/:do", Miss),
                ("POST", "/v2/x:", Miss),
                (
                    "DELETE",
                    "/v1/things/1:cancel",
                    NotAllowed(&["GET", "POST"]),
                ),
            ],
        );
    }

    #[test]
    fn method_not_allowed_vs_not_found() {
        let t = table(&[
            "GET /v1/books/{id}",
            "DELETE /v1/books/{id}",
            "POST /v1/books/special",
            "PATCH /v1/{name=**}",
            "GET /v2/x",
        ]);
        check(
            &t,
            &[
                (
                    "PUT",
                    "/v1/books/1",
                    NotAllowed(&["DELETE", "GET", "PATCH"]),
                ),
                // Union over every matching branch, sorted and deduplicated.
                (
                    "PUT",
                    "/v1/books/special",
                    NotAllowed(&["DELETE", "GET", "PATCH", "POST"]),
                ),
                // The literal leaf lacks GET: keep backtracking into `{id}`.
                (
                    "GET",
                    "/v1/books/special",
                    Hit("GET /v1/books/{id}", &[("id", "special")]),
                ),
                (
                    "PATCH",
                    "/v1/books/special",
                    Hit("PATCH /v1/{name=**}", &[("name", "books/special")]),
                ),
                (
                    "POST",
                    "/v1/books/other",
                    NotAllowed(&["DELETE", "GET", "PATCH"]),
                ),
                ("POST", "/v2/x", NotAllowed(&["GET"])),
                ("GET", "/v2/y", Miss),
                ("GET", "/v3", Miss),
            ],
        );
    }

    #[test]
    fn duplicates() {
        // (first, second, duplicate?)
        let cases = [
            ("GET /v1/{a}", "GET /v1/{b}", true),
            ("GET /v1/{a}", "GET /v1/{a=*}", true),
            ("GET /v1/*", "GET /v1/{a}", true),
            ("GET /v1/{a=b/*}", "GET /v1/b/{c}", true),
            ("GET /v1/{a=**}:x", "GET /v1/**:x", true),
            ("GET /v1/{a=**}", "GET /v1/{a}", false),
            ("GET /v1/{a}", "POST /v1/{a}", false),
            ("GET /v1/{a}", "GET /v1/{a}:x", false),
            ("GET /v1/{a}:x", "GET /v1/{a}:y", false),
            ("GET /v1/a", "GET /v1/b", false),
            ("GET /v1/a", "GET /v1/{a}", false),
            ("GET /v1/{a}/b", "GET /v1/{a}", false),
            ("GET /", "GET /{a=**}", false),
        ];
        for (first, second, dup) in cases {
            let parse = |r: &str| {
                let (m, t) = r.split_once(' ').unwrap();
                (
                    m.parse::<Method>().unwrap(),
                    PathTemplate::parse(t).unwrap(),
                )
            };
            let mut b = RouteTableBuilder::new(MatchOptions::default());
            let (m1, t1) = parse(first);
            let (m2, t2) = parse(second);
            b.insert(m1, &t1, 1).unwrap();
            let m2_copy = m2.clone();
            match b.insert(m2, &t2, 2) {
                Ok(()) => assert!(!dup, "{first} vs {second}: not flagged"),
                Err(d) => {
                    assert!(dup, "{first} vs {second}: flagged: {d}");
                    assert_eq!((*d.value(), d.existing()), (2, RouteId(0)));
                    assert_eq!(d.template(), &t2);
                    assert_eq!(d.existing_template(), &t1);
                    assert_eq!(d.method(), &m2_copy);
                    assert_eq!(b.get(d.existing()).map(|r| *r.2), Some(1));
                    assert_eq!(d.into_value(), 2);
                }
            }
            assert_eq!(b.len(), if dup { 1 } else { 2 });
        }
    }

    #[test]
    fn duplicate_message_names_both() {
        let mut b = RouteTableBuilder::new(MatchOptions::default());
        b.insert(Method::GET, &"/v1/{a}".parse().unwrap(), ())
            .unwrap();
        let err = b
            .insert(Method::GET, &"/v1/{b=*}".parse().unwrap(), ())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "route GET /v1/{b} has the same method, verb and segment shape as GET /v1/{a}, which is kept"
        );
    }

    #[test]
    fn unescape_modes() {
        let routes = [
            "GET /v1/books/{id}",
            "GET /v1/{name=files/**}",
            "GET /v1/caf\u{e9}/{x}",
            "GET /v2/{name=foo/*}",
            "GET /v3/{rest=**}",
        ];
        use UnescapeMode::{AllCharacters, AllExceptSlash, None as Raw};
        // (mode, path, want binding)
        let cases: &[(UnescapeMode, &str, Want)] = &[
            (
                AllExceptSlash,
                "/v1/books/a%2Fb",
                Hit("GET /v1/books/{id}", &[("id", "a/b")]),
            ),
            (
                AllCharacters,
                "/v1/books/a%2Fb",
                Hit("GET /v1/books/{id}", &[("id", "a/b")]),
            ),
            (
                Raw,
                "/v1/books/a%2Fb",
                Hit("GET /v1/books/{id}", &[("id", "a%2Fb")]),
            ),
            (
                AllExceptSlash,
                "/v1/books/a%20b%3F",
                Hit("GET /v1/books/{id}", &[("id", "a b?")]),
            ),
            (
                AllExceptSlash,
                "/v1/files/x%2Fy/z%20w%2fv",
                Hit(
                    "GET /v1/{name=files/**}",
                    &[("name", "files/x%2Fy/z w%2fv")],
                ),
            ),
            (
                AllCharacters,
                "/v1/files/x%2Fy/z%20w%2fv",
                Hit("GET /v1/{name=files/**}", &[("name", "files/x/y/z w/v")]),
            ),
            (
                Raw,
                "/v1/files/x%2Fy/z%20w%2fv",
                Hit(
                    "GET /v1/{name=files/**}",
                    &[("name", "files/x%2Fy/z%20w%2fv")],
                ),
            ),
            // `{name=foo/*}` and `{rest=**}` are multi-segment variables too.
            (
                AllExceptSlash,
                "/v2/foo/a%2Fb%20c",
                Hit("GET /v2/{name=foo/*}", &[("name", "foo/a%2Fb c")]),
            ),
            (
                AllExceptSlash,
                "/v3/a%2Fb",
                Hit("GET /v3/{rest=**}", &[("rest", "a%2Fb")]),
            ),
            (
                AllCharacters,
                "/v3/a%2Fb",
                Hit("GET /v3/{rest=**}", &[("rest", "a/b")]),
            ),
            // `%252F` decodes to the text `%2F`.
            (
                AllExceptSlash,
                "/v1/files/a%252Fb",
                Hit("GET /v1/{name=files/**}", &[("name", "files/a%2Fb")]),
            ),
            // Invalid escapes are kept as written.
            (
                AllExceptSlash,
                "/v1/books/%zz%",
                Hit("GET /v1/books/{id}", &[("id", "%zz%")]),
            ),
            (
                AllExceptSlash,
                "/v1/files/%2%2F%%41",
                Hit("GET /v1/{name=files/**}", &[("name", "files/%2%2F%A")]),
            ),
            (
                AllCharacters,
                "/v1/books/%zz",
                Hit("GET /v1/books/{id}", &[("id", "%zz")]),
            ),
            // Decoded bytes that are not UTF-8: no match (raw mode passes them through).
            (AllExceptSlash, "/v1/books/%FF", Miss),
            (AllExceptSlash, "/v1/files/%C3", Miss),
            (AllCharacters, "/v1/books/%FF", Miss),
            (
                Raw,
                "/v1/books/%FF",
                Hit("GET /v1/books/{id}", &[("id", "%FF")]),
            ),
            // Literals compare against the decoded segment, in every mode.
            (
                AllExceptSlash,
                "/v1/b%6Foks/1",
                Hit("GET /v1/books/{id}", &[("id", "1")]),
            ),
            (
                Raw,
                "/v1/b%6Foks/1",
                Hit("GET /v1/books/{id}", &[("id", "1")]),
            ),
            (AllExceptSlash, "/v1%2Fbooks/1", Miss),
            // Unicode: encoded and raw.
            (
                AllExceptSlash,
                "/v1/caf%C3%A9/%E2%9C%93",
                Hit("GET /v1/caf\u{e9}/{x}", &[("x", "\u{2713}")]),
            ),
            (
                AllExceptSlash,
                "/v1/caf\u{e9}/\u{fc}",
                Hit("GET /v1/caf\u{e9}/{x}", &[("x", "\u{fc}")]),
            ),
            (
                Raw,
                "/v1/caf%C3%A9/%E2%9C%93",
                Hit("GET /v1/caf\u{e9}/{x}", &[("x", "%E2%9C%93")]),
            ),
            (AllExceptSlash, "/v1/caf%C3/x", Miss),
        ];
        for (mode, path, want) in cases {
            let t = table_with(MatchOptions { unescape: *mode }, &routes);
            assert_eq!(t.options().unescape, *mode);
            let want = match want {
                Hit(v, b) => Hit(v, b),
                NotAllowed(a) => NotAllowed(a),
                Miss => Miss,
            };
            check(&t, &[("GET", path, want)]);
        }
    }

    #[test]
    fn empty_segments_and_trailing_slash() {
        let t = table(&[
            "GET /v1/books/{id}",
            "GET /v1/books",
            "GET /v1/{x}/shelves",
            "GET /v2/{name=**}",
            "GET /v3/*/{rest=**}",
        ]);
        check(
            &t,
            &[
                ("GET", "/v1/books/", Miss),
                ("GET", "/v1/books", Hit("GET /v1/books", &[])),
                ("GET", "/v1//shelves", Miss),
                ("GET", "/v1/books//", Miss),
                ("GET", "//v1/books", Miss),
                (
                    "GET",
                    "/v2/a//b/",
                    Hit("GET /v2/{name=**}", &[("name", "a//b/")]),
                ),
                ("GET", "/v2/", Hit("GET /v2/{name=**}", &[("name", "")])),
                ("GET", "/v3/x", Hit("GET /v3/*/{rest=**}", &[("rest", "")])),
                (
                    "GET",
                    "/v3/x/y/z",
                    Hit("GET /v3/*/{rest=**}", &[("rest", "y/z")]),
                ),
                ("GET", "/v3//y", Miss),
            ],
        );
    }

    #[test]
    fn many_literal_children_use_hash_lookup() {
        let routes: Vec<&'static str> = (0..200)
            .map(|i| &*Box::leak(format!("GET /v1/svc{i}/items/{{id}}").into_boxed_str()))
            .chain(["GET /v1/{other}/items/{id}"])
            .collect();
        let t = table(&routes);
        assert_eq!(t.len(), 201);
        assert!(!t.is_empty());
        check(
            &t,
            &[
                (
                    "GET",
                    "/v1/svc0/items/7",
                    Hit("GET /v1/svc0/items/{id}", &[("id", "7")]),
                ),
                (
                    "GET",
                    "/v1/svc199/items/8",
                    Hit("GET /v1/svc199/items/{id}", &[("id", "8")]),
                ),
                (
                    "GET",
                    "/v1/svc%31%39%39/items/8",
                    Hit("GET /v1/svc199/items/{id}", &[("id", "8")]),
                ),
                (
                    "GET",
                    "/v1/svc200/items/9",
                    Hit(
                        "GET /v1/{other}/items/{id}",
                        &[("other", "svc200"), ("id", "9")],
                    ),
                ),
                ("GET", "/v1/svc5/other/9", Miss),
            ],
        );
    }

    #[test]
    fn iter_lists_routes_in_insertion_order() {
        let t = table(&["GET /v1/{a}", "POST /v1/{a}:run", "GET /"]);
        let listed: Vec<_> = t
            .iter()
            .map(|(m, tpl, v)| (format!("{m} {tpl}"), *v))
            .collect();
        assert_eq!(
            listed,
            [
                ("GET /v1/{a}".to_owned(), "GET /v1/{a}"),
                ("POST /v1/{a}:run".to_owned(), "POST /v1/{a}:run"),
                ("GET /".to_owned(), "GET /"),
            ]
        );
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn empty_table() {
        let t: RouteTable<()> = RouteTableBuilder::new(MatchOptions::default()).build();
        assert!(t.is_empty());
        assert_eq!(t.find(&Method::GET, "/"), RouteMatch::NotFound);
        assert_eq!(t.find(&Method::GET, "/a:b"), RouteMatch::NotFound);
    }
}
