//! What a change did: the services, methods and routes one snapshot has that another lacks, and
//! those both have in different forms.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use prost_reflect::MethodDescriptor;
use serde::Serialize;

use crate::descriptors::RuleOrigin;
use crate::snapshot::{Route, Snapshot};

/// Items added, changed and removed, each list sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delta<T> {
    /// In the new snapshot only.
    pub added: Vec<T>,
    /// In both, different.
    pub changed: Vec<T>,
    /// In the old snapshot only.
    pub removed: Vec<T>,
}

impl<T> Default for Delta<T> {
    fn default() -> Self {
        Delta {
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
        }
    }
}

impl<T> Delta<T> {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// One route as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteInfo {
    /// The HTTP method.
    pub method: String,
    /// The path template.
    pub path: String,
    /// `package.Service.Method`.
    pub grpc_method: String,
    /// The backend serving it, if any.
    pub backend: Option<String>,
    /// `annotation`, `config` or `auto`.
    pub origin: &'static str,
    /// The uploaded set it came from; absent for the startup inputs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
}

impl RouteInfo {
    fn of(method: &http::Method, template: String, route: &Route) -> RouteInfo {
        RouteInfo {
            method: method.to_string(),
            path: template,
            grpc_method: route.method.full_name().to_owned(),
            backend: route.backend.as_ref().map(|b| b.name.to_string()),
            origin: match route.origin {
                RuleOrigin::Annotation => "annotation",
                RuleOrigin::Config => "config",
                RuleOrigin::Auto => "auto",
            },
            set: route.set.as_ref().map(|s| s.to_string()),
        }
    }
}

/// Every route of a snapshot, in declaration order.
pub(super) fn routes(snapshot: &Snapshot) -> Vec<RouteInfo> {
    snapshot
        .routes
        .iter()
        .map(|(method, template, route)| RouteInfo::of(method, template.to_string(), route))
        .collect()
}

/// The difference between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Services by full name; a service changed when any of its methods did.
    pub services: Delta<String>,
    /// Methods by full name; a method changed when its definition, or the definition of its
    /// request or response message, did.
    pub methods: Delta<String>,
    /// Routes; a route changed when the same method and template now lead to another gRPC
    /// method, backend, origin or set.
    pub routes: Delta<RouteInfo>,
}

impl Change {
    /// What turning `old` into `new` changes.
    pub fn between(old: &Snapshot, new: &Snapshot) -> Change {
        let old_methods = methods(old);
        let new_methods = methods(new);
        let methods = delta(&old_methods, &new_methods, |name, _| name.clone());

        let service_of = |method: &str| method.rsplit_once('.').map_or("", |(s, _)| s).to_owned();
        let old_services: BTreeSet<String> = old_methods.keys().map(|m| service_of(m)).collect();
        let new_services: BTreeSet<String> = new_methods.keys().map(|m| service_of(m)).collect();
        let touched: BTreeSet<String> = methods
            .added
            .iter()
            .chain(&methods.changed)
            .chain(&methods.removed)
            .map(|m| service_of(m))
            .collect();
        let services = Delta {
            added: new_services.difference(&old_services).cloned().collect(),
            changed: touched
                .into_iter()
                .filter(|s| old_services.contains(s) && new_services.contains(s))
                .collect(),
            removed: old_services.difference(&new_services).cloned().collect(),
        };

        let old_routes = route_map(old);
        let new_routes = route_map(new);
        let routes = delta(&old_routes, &new_routes, |_, info| info.clone());
        Change {
            services,
            methods,
            routes,
        }
    }
}

/// Each method's full name with the encoding of what defines it.
fn methods(snapshot: &Snapshot) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for service in snapshot.registry.services() {
        for method in service.methods() {
            out.insert(method.full_name().to_owned(), fingerprint(&method));
        }
    }
    out
}

fn fingerprint(method: &MethodDescriptor) -> Vec<u8> {
    let mut bytes = method.method_descriptor_proto().encode_to_vec();
    bytes.extend(method.input().descriptor_proto().encode_to_vec());
    bytes.extend(method.output().descriptor_proto().encode_to_vec());
    bytes
}

fn route_map(snapshot: &Snapshot) -> BTreeMap<(String, String), RouteInfo> {
    snapshot
        .routes
        .iter()
        .map(|(method, template, route)| {
            let info = RouteInfo::of(method, template.to_string(), route);
            ((info.method.clone(), info.path.clone()), info)
        })
        .collect()
}

fn delta<K: Ord, V: PartialEq, T: Ord>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    item: impl Fn(&K, &V) -> T,
) -> Delta<T> {
    let mut delta = Delta::default();
    for (key, value) in new {
        match old.get(key) {
            None => delta.added.push(item(key, value)),
            Some(before) if before != value => delta.changed.push(item(key, value)),
            Some(_) => {}
        }
    }
    for (key, value) in old {
        if !new.contains_key(key) {
            delta.removed.push(item(key, value));
        }
    }
    delta.added.sort();
    delta.changed.sort();
    delta.removed.sort();
    delta
}
