//! Descriptor loading: descriptor sets and .proto sources merged into one checked pool, and the
//! google.api.http bindings of its methods.

mod http_rule;
mod registry;

pub use http_rule::{bindings, HttpBinding, RuleError, RuleOrigin};
pub use registry::{
    bundled_set, compile_protos, compile_sources, DescriptorError, Registry, RegistryBuilder,
    SourceName,
};
