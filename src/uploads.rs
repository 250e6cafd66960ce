//! Descriptor sets added at runtime: named, optionally bound to a backend, and merged after the
//! startup inputs into every snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use prost::Message;
use prost_types::FileDescriptorSet;
use sha2::{Digest, Sha256};

use crate::config::BackendName;
use crate::descriptors::{DescriptorError, SourceName};

/// The longest set name.
pub const MAX_SET_NAME: usize = 128;

/// The name of an uploaded set: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with `.`, so it is
/// safe as a file name and never collides with the state folder's temporary files.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetName(String);

/// A name that [`SetName::parse`] refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid set name {0:?}: use 1 to 128 of A-Z a-z 0-9 . _ -, not starting with '.'")]
pub struct InvalidSetName(pub String);

impl SetName {
    /// Checks `text` against the naming rule.
    pub fn parse(text: &str) -> Result<SetName, InvalidSetName> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if text.is_empty()
            || text.len() > MAX_SET_NAME
            || text.starts_with('.')
            || !text.chars().all(allowed)
        {
            return Err(InvalidSetName(text.to_owned()));
        }
        Ok(SetName(text.to_owned()))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where the services of a set are served, when the config's rules should not decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetBinding {
    /// A backend the config defines.
    Backend(BackendName),
    /// A backend of its own at this `http://` URL.
    Upstream(http::Uri),
}

impl SetBinding {
    /// The name of the backend a set's services call: the named one, or for an `upstream=` binding
    /// one named after the set (`upload:NAME`).
    pub fn backend_name(&self, set: &SetName) -> BackendName {
        match self {
            SetBinding::Backend(name) => name.clone(),
            SetBinding::Upstream(_) => BackendName::new(format!("upload:{set}")),
        }
    }
}

/// One uploaded descriptor set, as accepted.
#[derive(Debug, Clone)]
pub struct UploadedSet {
    /// Its name.
    pub name: SetName,
    /// The encoded FileDescriptorSet, exactly as it is served and stored.
    pub bytes: Bytes,
    /// SHA-256 of `bytes`, lower-case hex.
    pub sha256: String,
    /// Where its services are served, if the upload said.
    pub binding: Option<SetBinding>,
    /// When it was accepted.
    pub uploaded_at: SystemTime,
    /// The file names it holds, in its order.
    pub files: Vec<String>,
    /// The full names of the services its files define, sorted.
    pub services: Vec<String>,
}

impl UploadedSet {
    /// Reads the file and service names of an encoded FileDescriptorSet; the bytes are checked
    /// against the other descriptors only when a snapshot is built with them.
    pub fn new(
        name: SetName,
        bytes: Bytes,
        binding: Option<SetBinding>,
        uploaded_at: SystemTime,
    ) -> Result<UploadedSet, DescriptorError> {
        let source = source_name(&name);
        let set =
            FileDescriptorSet::decode(bytes.clone()).map_err(|err| DescriptorError::Decode {
                source_name: source.clone(),
                reason: err.to_string(),
            })?;
        if set.file.is_empty() {
            return Err(DescriptorError::Decode {
                source_name: source,
                reason: "the set holds no file".to_owned(),
            });
        }
        let mut files = Vec::with_capacity(set.file.len());
        let mut services = Vec::new();
        for file in &set.file {
            if file.name().is_empty() {
                return Err(DescriptorError::Decode {
                    source_name: source,
                    reason: "a file has no name".to_owned(),
                });
            }
            files.push(file.name().to_owned());
            for service in &file.service {
                services.push(match file.package() {
                    "" => service.name().to_owned(),
                    package => format!("{package}.{}", service.name()),
                });
            }
        }
        services.sort();
        services.dedup();
        Ok(UploadedSet {
            sha256: sha256_hex(&bytes),
            name,
            bytes,
            binding,
            uploaded_at,
            files,
            services,
        })
    }

    /// The source name its files carry in the registry, so errors say which set they came from.
    pub fn source(&self) -> SourceName {
        source_name(&self.name)
    }
}

fn source_name(name: &SetName) -> SourceName {
    SourceName::new(format!("set {:?}", name.as_str()))
}

/// SHA-256 of `bytes` in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The uploaded sets of one snapshot, by name. Cloning shares the sets.
#[derive(Debug, Clone, Default)]
pub struct Uploads {
    sets: BTreeMap<SetName, Arc<UploadedSet>>,
}

impl Uploads {
    /// No sets.
    pub fn new() -> Self {
        Self::default()
    }

    /// The set called `name`.
    pub fn get(&self, name: &SetName) -> Option<&Arc<UploadedSet>> {
        self.sets.get(name)
    }

    /// Every set, in name order (the order they are merged in).
    pub fn iter(&self) -> impl Iterator<Item = &Arc<UploadedSet>> + '_ {
        self.sets.values()
    }

    /// How many sets there are.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// These sets with `set` added, or replacing the one of the same name.
    pub fn with(&self, set: UploadedSet) -> Uploads {
        let mut sets = self.sets.clone();
        sets.insert(set.name.clone(), Arc::new(set));
        Uploads { sets }
    }

    /// These sets without the one called `name`.
    pub fn without(&self, name: &SetName) -> Uploads {
        let mut sets = self.sets.clone();
        sets.remove(name);
        Uploads { sets }
    }

    /// The set whose files carry `source` in the registry.
    pub fn owner_of(&self, source: &SourceName) -> Option<&SetName> {
        self.sets
            .values()
            .find(|set| &set.source() == source)
            .map(|set| &set.name)
    }
}

impl FromIterator<UploadedSet> for Uploads {
    fn from_iter<I: IntoIterator<Item = UploadedSet>>(iter: I) -> Self {
        Uploads {
            sets: iter
                .into_iter()
                .map(|set| (set.name.clone(), Arc::new(set)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    #[test]
    fn set_names() {
        for good in ["a", "shop.v1", "my_set-2", &"x".repeat(128)] {
            assert!(SetName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "é",
            "a%2Fb",
            &"x".repeat(129),
        ] {
            assert!(SetName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_services_and_hash() {
        let set = FileDescriptorSet {
            file: vec![prost_types::FileDescriptorProto {
                name: Some("a/v1/a.proto".into()),
                package: Some("a.v1".into()),
                service: vec![prost_types::ServiceDescriptorProto {
                    name: Some("Svc".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let bytes = Bytes::from(set.encode_to_vec());
        let name = SetName::parse("a").unwrap();
        let up = UploadedSet::new(name, bytes.clone(), None, SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(up.files, ["a/v1/a.proto"]);
        assert_eq!(up.services, ["a.v1.Svc"]);
        assert_eq!(up.sha256, sha256_hex(&bytes));
        assert_eq!(sha256_hex(b"").len(), 64);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn garbage_and_empty_sets_are_refused() {
        let name = SetName::parse("a").unwrap();
        for bytes in [&b"\xff\xff"[..], b""] {
            let err = UploadedSet::new(
                name.clone(),
                Bytes::copy_from_slice(bytes),
                None,
                SystemTime::UNIX_EPOCH,
            )
            .unwrap_err();
            assert!(err.to_string().contains("set \"a\""), "{err}");
        }
    }
}
