//! Path-template parsing and request matching for google.api.http rules; pure, no I/O.
#![deny(clippy::unwrap_used, clippy::expect_used)]

mod table;
mod template;

pub use table::{
    Binding, Duplicate, Found, MatchOptions, RouteId, RouteMatch, RouteTable, RouteTableBuilder,
    UnescapeMode,
};
pub use template::{FieldPath, PathTemplate, Segment, TemplateError, TemplateErrorKind, Variable};
