//! Merging descriptor sets and .proto sources from many places into one checked pool.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::{FileDescriptorProto, FileDescriptorSet};

/// The google/api, google/rpc and well-known-type files every pool starts from.
static BUNDLED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bundled.binpb"));

/// Where a file came from, for error messages that name both sides of a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceName(String);

impl SourceName {
    /// A source called `name` (a path, an upload name, ...).
    pub fn new(name: impl Into<String>) -> Self {
        SourceName(name.into())
    }

    fn bundled() -> Self {
        SourceName("<bundled>".to_owned())
    }

    fn is_bundled(&self) -> bool {
        self.0 == "<bundled>"
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A descriptor input that could not be loaded or merged.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a FileDescriptorSet.
    #[error("{source_name}: not a valid FileDescriptorSet: {reason}")]
    Decode {
        /// Where the bytes came from.
        source_name: SourceName,
        /// Why.
        reason: String,
    },
    /// A .proto file did not compile.
    #[error("{0}")]
    Compile(String),
    /// One file name with two different contents.
    #[error("file {file:?} is defined differently by {first} and {second}")]
    FileConflict {
        /// The file name.
        file: String,
        /// The source loaded first.
        first: SourceName,
        /// The source loaded second.
        second: SourceName,
    },
    /// One symbol defined by two different files.
    #[error("{symbol:?} is defined both in {first_file:?} (from {first}) and in {second_file:?} (from {second})")]
    SymbolConflict {
        /// The fully qualified name.
        symbol: String,
        /// The first file.
        first_file: String,
        /// Its source.
        first: SourceName,
        /// The second file.
        second_file: String,
        /// Its source.
        second: SourceName,
    },
    /// An import that no loaded file satisfies.
    #[error("{file:?} (from {source_name}) imports {import:?}, which is not loaded")]
    MissingImport {
        /// The importing file.
        file: String,
        /// Its source.
        source_name: SourceName,
        /// The missing import.
        import: String,
    },
    /// prost-reflect refused the merged files.
    #[error("invalid descriptors: {0}")]
    Invalid(String),
}

#[derive(Clone)]
struct Entry {
    /// Decoded for names, imports and comparison (prost-types drops extension options); shared,
    /// so cloning a builder to add uploads to it is cheap.
    file: Arc<FileDescriptorProto>,
    /// The file as received, options and all, which is what the pool is built from.
    raw: Bytes,
    source: SourceName,
}

/// A FileDescriptorSet that keeps each file's encoding, so custom options survive.
#[derive(Clone, PartialEq, prost::Message)]
struct RawSet {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    file: Vec<Bytes>,
}

fn decode_set(
    source: &SourceName,
    bytes: &[u8],
) -> Result<Vec<(FileDescriptorProto, Bytes)>, DescriptorError> {
    let fail = |err: prost::DecodeError| DescriptorError::Decode {
        source_name: source.clone(),
        reason: err.to_string(),
    };
    let set = RawSet::decode(bytes).map_err(fail)?;
    set.file
        .into_iter()
        .map(|raw| {
            let mut file = FileDescriptorProto::decode(raw.clone()).map_err(fail)?;
            file.source_code_info = None;
            if file.name().is_empty() {
                return Err(DescriptorError::Decode {
                    source_name: source.clone(),
                    reason: "a file has no name".to_owned(),
                });
            }
            Ok((file, raw))
        })
        .collect()
}

/// Collects files from sets and .proto sources, then checks and builds them into one pool. Cloning
/// is cheap: the live registry keeps the startup inputs as a builder and adds uploads to a clone.
#[derive(Clone)]
pub struct RegistryBuilder {
    files: BTreeMap<String, Entry>,
    /// Load order, so the pool is built deterministically.
    order: Vec<String>,
    symbols: HashMap<String, String>,
}

impl fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("files", &self.order)
            .finish()
    }
}

impl Default for RegistryBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RegistryBuilder {
    /// A builder holding the bundled google/* files.
    pub fn new() -> Self {
        let mut builder = RegistryBuilder {
            files: BTreeMap::new(),
            order: Vec::new(),
            symbols: HashMap::new(),
        };
        // The bundled set is produced by build.rs from files in this repository.
        match decode_set(&SourceName::bundled(), BUNDLED) {
            Ok(files) => {
                for (file, raw) in files {
                    let name = file.name().to_owned();
                    builder.index_symbols(&file);
                    builder.order.push(name.clone());
                    builder.files.insert(
                        name,
                        Entry {
                            file: Arc::new(file),
                            raw,
                            source: SourceName::bundled(),
                        },
                    );
                }
            }
            Err(err) => tracing::error!("bundled descriptor set is corrupt: {err}"),
        }
        builder
    }

    /// Adds an encoded FileDescriptorSet.
    pub fn add_set_bytes(
        &mut self,
        source: SourceName,
        bytes: &[u8],
    ) -> Result<(), DescriptorError> {
        let files = decode_set(&source, bytes)?;
        self.add_files(source, files)
    }

    /// Adds a descriptor set file from disk.
    pub fn add_set_file(&mut self, path: &Path) -> Result<(), DescriptorError> {
        let bytes = std::fs::read(path).map_err(|source| DescriptorError::Io {
            path: path.to_owned(),
            source,
        })?;
        self.add_set_bytes(SourceName::new(path.display().to_string()), &bytes)
    }

    /// Adds every `*.pb`, `*.binpb` and `*.protoset` in a folder, in name order.
    pub fn add_set_dir(&mut self, dir: &Path) -> Result<(), DescriptorError> {
        let io = |source| DescriptorError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let wanted = matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("pb" | "binpb" | "protoset")
            );
            if wanted && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        for path in paths {
            self.add_set_file(&path)?;
        }
        Ok(())
    }

    /// Compiles .proto files with protox; imports resolve against `include` folders, then the
    /// files already loaded (the bundled google/* among them).
    pub fn add_protos(
        &mut self,
        files: &[PathBuf],
        include: &[PathBuf],
    ) -> Result<(), DescriptorError> {
        if files.is_empty() {
            return Ok(());
        }
        let encoded = compile_protos(files, include, self.current_set())?;
        let source = SourceName::new(
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        );
        let decoded = decode_set(&source, &encoded)?;
        self.add_files(source, decoded)
    }

    /// Adds decoded files with their encodings, refusing any that conflict with files held.
    fn add_files(
        &mut self,
        source: SourceName,
        files: Vec<(FileDescriptorProto, Bytes)>,
    ) -> Result<(), DescriptorError> {
        // Check the whole set before taking any of it, so a refused set changes nothing.
        let mut fresh = Vec::new();
        let mut replace_bundled = Vec::new();
        for (file, raw) in files {
            let name = file.name().to_owned();
            match self.files.get(&name) {
                Some(existing) if *existing.file == file => {}
                // Users' sets often carry their own copy of google/api/*.proto; theirs wins over
                // ours, since the bundled copies are only there to satisfy imports.
                Some(existing) if existing.source.is_bundled() => replace_bundled.push((file, raw)),
                Some(existing) => {
                    return Err(DescriptorError::FileConflict {
                        file: name,
                        first: existing.source.clone(),
                        second: source,
                    })
                }
                None => fresh.push((file, raw)),
            }
        }
        let mut seen: HashMap<String, String> = HashMap::new();
        for (file, _) in &fresh {
            for symbol in top_level_symbols(file) {
                let owner = self
                    .symbols
                    .get(&symbol)
                    .or_else(|| seen.get(&symbol))
                    .cloned();
                if let Some(owner) = owner {
                    let first = self
                        .files
                        .get(&owner)
                        .map(|e| e.source.clone())
                        .unwrap_or_else(|| source.clone());
                    return Err(DescriptorError::SymbolConflict {
                        symbol,
                        first_file: owner,
                        first,
                        second_file: file.name().to_owned(),
                        second: source,
                    });
                }
                seen.insert(symbol, file.name().to_owned());
            }
        }
        for (file, raw) in replace_bundled.into_iter().chain(fresh) {
            let name = file.name().to_owned();
            if !self.files.contains_key(&name) {
                self.index_symbols(&file);
                self.order.push(name.clone());
            }
            self.files.insert(
                name,
                Entry {
                    file: Arc::new(file),
                    raw,
                    source: source.clone(),
                },
            );
        }
        Ok(())
    }

    fn index_symbols(&mut self, file: &FileDescriptorProto) {
        for symbol in top_level_symbols(file) {
            self.symbols.insert(symbol, file.name().to_owned());
        }
    }

    fn current_set(&self) -> FileDescriptorSet {
        FileDescriptorSet {
            file: self
                .order
                .iter()
                .filter_map(|name| self.files.get(name))
                .map(|entry| FileDescriptorProto::clone(&entry.file))
                .collect(),
        }
    }

    /// Checks imports and builds the pool.
    pub fn build(self) -> Result<Registry, DescriptorError> {
        for name in &self.order {
            let Some(entry) = self.files.get(name) else {
                continue;
            };
            for import in &entry.file.dependency {
                if !self.files.contains_key(import) {
                    return Err(DescriptorError::MissingImport {
                        file: name.clone(),
                        source_name: entry.source.clone(),
                        import: import.clone(),
                    });
                }
            }
        }
        // prost-reflect needs every file after its imports.
        let mut sorted = Vec::with_capacity(self.order.len());
        let mut done = std::collections::HashSet::new();
        for name in &self.order {
            self.visit(name, &mut done, &mut sorted);
        }
        let set = RawSet { file: sorted };
        let pool = DescriptorPool::decode(set.encode_to_vec().as_slice())
            .map_err(|err| DescriptorError::Invalid(err.to_string()))?;
        let sources = self
            .files
            .into_iter()
            .map(|(name, entry)| (name, entry.source))
            .collect();
        Ok(Registry { pool, sources })
    }

    fn visit(
        &self,
        name: &str,
        done: &mut std::collections::HashSet<String>,
        out: &mut Vec<Bytes>,
    ) {
        if !done.insert(name.to_owned()) {
            return;
        }
        let Some(entry) = self.files.get(name) else {
            return;
        };
        for import in &entry.file.dependency {
            self.visit(import, done, out);
        }
        out.push(entry.raw.clone());
    }
}

/// Compiles .proto files into a descriptor set that includes their imports, as
/// `protoc --include_imports` would. Imports resolve against `include`, then the folder of each
/// file, then `known` (the bundled google/* files when built from [`RegistryBuilder::new`]).
pub fn compile_protos(
    files: &[PathBuf],
    include: &[PathBuf],
    known: FileDescriptorSet,
) -> Result<Vec<u8>, DescriptorError> {
    let mut includes: Vec<PathBuf> = include.to_vec();
    // A file given by path is found through its own folder when no include path covers it.
    for file in files {
        if !include.iter().any(|dir| file.starts_with(dir)) {
            let parent = file.parent().filter(|p| !p.as_os_str().is_empty());
            includes.push(parent.unwrap_or(Path::new(".")).to_owned());
        }
    }
    let mut resolver = protox::file::ChainFileResolver::new();
    for dir in &includes {
        resolver.add(protox::file::IncludeFileResolver::new(dir.clone()));
    }
    resolver.add(protox::file::DescriptorSetFileResolver::new(known));
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true).include_source_info(false);
    for file in files {
        let rel = includes
            .iter()
            .find_map(|dir| {
                if dir == Path::new(".") {
                    Some(file.as_path())
                } else {
                    file.strip_prefix(dir).ok()
                }
            })
            .unwrap_or(file);
        compiler.open_file(rel).map_err(|err| {
            // An error inside an import names the import, not only the file that was asked for.
            let at = match err.file() {
                Some(name) if Path::new(name) != rel => {
                    format!("{name} (imported by {})", file.display())
                }
                _ => file.display().to_string(),
            };
            DescriptorError::Compile(format!("{at}: {err}"))
        })?;
    }
    // The encoded form keeps custom options such as google.api.http; prost-types would drop them.
    Ok(compiler.encode_file_descriptor_set())
}

/// Compiles .proto sources held in memory (an upload) into a descriptor set of exactly those files.
/// Each source is `(file name, text)`; imports resolve against the other sources, then `known`
/// (the files already loaded). Files taken from `known` are not repeated in the output, so the set
/// stays tied to what it imports instead of carrying stale copies of it.
pub fn compile_sources(
    sources: &[(String, String)],
    known: FileDescriptorSet,
) -> Result<Vec<u8>, DescriptorError> {
    if sources.is_empty() {
        return Err(DescriptorError::Compile(
            "no .proto source was given".to_owned(),
        ));
    }
    let mut resolver = protox::file::ChainFileResolver::new();
    resolver.add(SourceResolver {
        sources: sources.iter().cloned().collect(),
    });
    resolver.add(protox::file::DescriptorSetFileResolver::new(known));
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(false).include_source_info(false);
    for (name, _) in sources {
        compiler
            .open_file(name)
            .map_err(|err| DescriptorError::Compile(compile_message(name, &err)))?;
    }
    Ok(compiler.encode_file_descriptor_set())
}

/// A compile error that names the file it is in, and the file asked for when that differs.
fn compile_message(asked: &str, err: &protox::Error) -> String {
    match err.file() {
        Some(file) if file != asked => format!("{file} (imported by {asked}): {err}"),
        _ if err.to_string().starts_with(asked) => err.to_string(),
        _ => format!("{asked}: {err}"),
    }
}

/// In-memory .proto sources by file name.
struct SourceResolver {
    sources: HashMap<String, String>,
}

impl protox::file::FileResolver for SourceResolver {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        match self.sources.get(name) {
            Some(text) => protox::file::File::from_source(name, text),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// The bundled google/* descriptor set.
pub fn bundled_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(BUNDLED).unwrap_or_default()
}

fn top_level_symbols(file: &FileDescriptorProto) -> Vec<String> {
    let prefix = match file.package() {
        "" => String::new(),
        package => format!("{package}."),
    };
    let messages = file.message_type.iter().map(|m| m.name());
    let enums = file.enum_type.iter().map(|e| e.name());
    let services = file.service.iter().map(|s| s.name());
    messages
        .chain(enums)
        .chain(services)
        .map(|name| format!("{prefix}{name}"))
        .collect()
}

/// A checked descriptor pool and where each of its files came from.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: DescriptorPool,
    sources: BTreeMap<String, SourceName>,
}

impl Registry {
    /// The merged pool.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// Where the file called `name` came from.
    pub fn source_of(&self, name: &str) -> Option<&SourceName> {
        self.sources.get(name)
    }

    /// The services of every non-bundled file.
    pub fn services(&self) -> impl Iterator<Item = prost_reflect::ServiceDescriptor> + '_ {
        self.pool.services().filter(|service| {
            self.sources
                .get(service.parent_file().name())
                .is_some_and(|s| !s.is_bundled())
        })
    }
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;

    fn set_with(name: &str, package: &str, message: &str) -> Vec<u8> {
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some(name.into()),
                package: Some(package.into()),
                syntax: Some("proto3".into()),
                message_type: vec![prost_types::DescriptorProto {
                    name: Some(message.into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        set.encode_to_vec()
    }

    #[test]
    fn same_file_twice_is_fine() {
        let mut b = RegistryBuilder::new();
        b.add_set_bytes(SourceName::new("a"), &set_with("x.proto", "p", "M"))
            .unwrap();
        b.add_set_bytes(SourceName::new("b"), &set_with("x.proto", "p", "M"))
            .unwrap();
        let reg = b.build().unwrap();
        assert!(reg.pool().get_message_by_name("p.M").is_some());
    }

    #[test]
    fn different_file_same_name_names_both_sources() {
        let mut b = RegistryBuilder::new();
        b.add_set_bytes(SourceName::new("first.pb"), &set_with("x.proto", "p", "M"))
            .unwrap();
        let err = b
            .add_set_bytes(SourceName::new("second.pb"), &set_with("x.proto", "p", "N"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("first.pb") && err.contains("second.pb"),
            "{err}"
        );
    }

    #[test]
    fn same_symbol_in_two_files_names_both() {
        let mut b = RegistryBuilder::new();
        b.add_set_bytes(SourceName::new("first.pb"), &set_with("x.proto", "p", "M"))
            .unwrap();
        let err = b
            .add_set_bytes(SourceName::new("second.pb"), &set_with("y.proto", "p", "M"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.M") && err.contains("first.pb") && err.contains("second.pb"));
    }

    #[test]
    fn missing_import_names_file_and_import() {
        let mut set = FileDescriptorSet::decode(set_with("x.proto", "p", "M").as_slice()).unwrap();
        set.file[0].dependency.push("nowhere.proto".into());
        let mut b = RegistryBuilder::new();
        b.add_set_bytes(SourceName::new("a.pb"), &set.encode_to_vec())
            .unwrap();
        let err = b.build().unwrap_err().to_string();
        assert!(
            err.contains("x.proto") && err.contains("nowhere.proto"),
            "{err}"
        );
    }

    #[test]
    fn garbage_bytes_are_refused() {
        let mut b = RegistryBuilder::new();
        let err = b
            .add_set_bytes(SourceName::new("junk.pb"), b"\xff\xff\xff")
            .unwrap_err();
        assert!(err.to_string().contains("junk.pb"));
    }

    #[test]
    fn bundled_files_are_present() {
        let reg = RegistryBuilder::new().build().unwrap();
        for name in [
            "google.api.HttpRule",
            "google.rpc.Status",
            "google.protobuf.Struct",
        ] {
            assert!(reg.pool().get_message_by_name(name).is_some(), "{name}");
        }
        assert!(reg
            .pool()
            .get_extension_by_name("google.api.http")
            .is_some());
        assert_eq!(reg.services().count(), 0);
    }
}
