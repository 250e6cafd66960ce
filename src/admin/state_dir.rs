//! The state folder: accepted sets kept across restarts, written so that a crash at any moment
//! leaves either the old version of a set or the new one, never a mix.
//!
//! Each set is two files, `NAME.binpb` (the set as uploaded) and `NAME.json` (its binding, hash
//! and upload time). The metadata file is the commit record: a set exists when its `NAME.json`
//! does and the hash in it matches `NAME.binpb`. A save writes both to temporary files
//! (`.tmp.NAME.*`, synced), renames the set into place, then the metadata, syncing the folder
//! after each rename. A crash between the two renames leaves a complete temporary metadata file
//! whose hash matches the new set; loading finishes that save. Any other temporary file is
//! discarded, and so is a set file without metadata (a delete removes the metadata first).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::BackendName;
use crate::uploads::{sha256_hex, SetBinding, SetName, UploadedSet, Uploads};

const TEMP_PREFIX: &str = ".tmp.";
const SET_SUFFIX: &str = ".binpb";
const META_SUFFIX: &str = ".json";

/// A state folder that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file operation failed.
    #[error("state folder: {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A committed set does not read back as it was written.
    #[error("state folder: {path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What `NAME.json` holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Metadata {
    name: String,
    sha256: String,
    size: u64,
    /// RFC 3339, UTC.
    uploaded_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream: Option<String>,
    /// For people reading the folder; recomputed from the set on load.
    #[serde(default)]
    services: Vec<String>,
}

impl Metadata {
    fn of(set: &UploadedSet) -> Metadata {
        let (backend, upstream) = match &set.binding {
            Some(SetBinding::Backend(name)) => (Some(name.to_string()), None),
            Some(SetBinding::Upstream(uri)) => (None, Some(uri.to_string())),
            None => (None, None),
        };
        Metadata {
            name: set.name.to_string(),
            sha256: set.sha256.clone(),
            size: set.bytes.len() as u64,
            uploaded_at: humantime::format_rfc3339_millis(set.uploaded_at).to_string(),
            backend,
            upstream,
            services: set.services.clone(),
        }
    }
}

/// The folder holding accepted sets. One gateway process per folder: writes are serialized by
/// the live registry, not between processes.
#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Uses `path`, creating it if missing.
    pub fn open(path: &Path) -> Result<StateDir, StateError> {
        fs::create_dir_all(path).map_err(|source| StateError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(StateDir {
            path: path.to_owned(),
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn set_path(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}{SET_SUFFIX}"))
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}{META_SUFFIX}"))
    }

    fn temp_path(&self, name: &str, suffix: &str) -> PathBuf {
        self.path.join(format!("{TEMP_PREFIX}{name}{suffix}"))
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
        let path = path.to_owned();
        move |source| StateError::Io { path, source }
    }

    /// Writes a set, replacing any of the same name; when this returns, the new set survives a
    /// crash. On error the folder still holds the old set.
    pub fn save(&self, set: &UploadedSet) -> Result<(), StateError> {
        let name = set.name.as_str();
        let meta =
            serde_json::to_vec_pretty(&Metadata::of(set)).map_err(|e| StateError::Corrupt {
                path: self.meta_path(name),
                reason: e.to_string(),
            })?;
        let temp_set = self.temp_path(name, SET_SUFFIX);
        let temp_meta = self.temp_path(name, META_SUFFIX);
        let written = write_synced(&temp_set, &set.bytes)
            .and_then(|()| write_synced(&temp_meta, &meta))
            .map_err(self.io(&temp_set));
        if let Err(err) = written {
            let _ = fs::remove_file(&temp_set);
            let _ = fs::remove_file(&temp_meta);
            return Err(err);
        }
        let set_path = self.set_path(name);
        fs::rename(&temp_set, &set_path).map_err(self.io(&set_path))?;
        self.sync()?;
        // From here a crash is finished by `load`: the synced temporary metadata matches the set.
        let meta_path = self.meta_path(name);
        fs::rename(&temp_meta, &meta_path).map_err(self.io(&meta_path))?;
        self.sync()
    }

    /// Removes a set; the metadata goes first, so a crash leaves it deleted.
    pub fn remove(&self, name: &SetName) -> Result<(), StateError> {
        let meta_path = self.meta_path(name.as_str());
        match fs::remove_file(&meta_path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(self.io(&meta_path)(err)),
        }
        self.sync()?;
        let set_path = self.set_path(name.as_str());
        match fs::remove_file(&set_path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(self.io(&set_path)(err)),
        }
        self.sync()
    }

    /// Finishes a save a crash interrupted, discards temporary and orphaned files, then reads
    /// every set. A committed set whose file does not match its hash is an error: the folder was
    /// changed by something else, and serving without the set would drop routes silently.
    pub fn load(&self) -> Result<Uploads, StateError> {
        self.recover()?;
        self.read()
    }

    /// Reads every committed set without changing the folder (for `protogate check`).
    pub fn read(&self) -> Result<Uploads, StateError> {
        let mut sets = Vec::new();
        for file in self.file_names()? {
            if file.starts_with('.') {
                continue;
            }
            let Some(stem) = file.strip_suffix(META_SUFFIX) else {
                continue;
            };
            sets.push(self.read_set(stem)?);
        }
        Ok(sets.into_iter().collect())
    }

    fn read_set(&self, stem: &str) -> Result<UploadedSet, StateError> {
        let meta_path = self.meta_path(stem);
        let corrupt = |reason: String| StateError::Corrupt {
            path: meta_path.clone(),
            reason,
        };
        let name = SetName::parse(stem).map_err(|e| corrupt(e.to_string()))?;
        let meta = read_meta(&meta_path)
            .map_err(self.io(&meta_path))?
            .map_err(|e| corrupt(e.to_string()))?;
        if meta.name != stem {
            return Err(corrupt(format!("names set {:?}", meta.name)));
        }
        let set_path = self.set_path(stem);
        let bytes = fs::read(&set_path).map_err(self.io(&set_path))?;
        if sha256_hex(&bytes) != meta.sha256 {
            return Err(StateError::Corrupt {
                path: set_path,
                reason: format!("its SHA-256 is not {} as {stem}.json says", meta.sha256),
            });
        }
        let binding = match (meta.backend, meta.upstream) {
            (Some(backend), None) => Some(SetBinding::Backend(BackendName::new(backend))),
            (None, Some(upstream)) => {
                Some(SetBinding::Upstream(upstream.parse().map_err(|_| {
                    corrupt(format!("upstream {upstream:?} is not a URL"))
                })?))
            }
            (None, None) => None,
            (Some(_), Some(_)) => return Err(corrupt("both backend and upstream".to_owned())),
        };
        let uploaded_at = humantime::parse_rfc3339(&meta.uploaded_at)
            .map_err(|e| corrupt(format!("uploadedAt: {e}")))?;
        UploadedSet::new(name, Bytes::from(bytes), binding, uploaded_at).map_err(|e| {
            StateError::Corrupt {
                path: set_path.clone(),
                reason: e.to_string(),
            }
        })
    }

    fn recover(&self) -> Result<(), StateError> {
        let files = self.file_names()?;
        let mut changed = false;
        for file in &files {
            let Some(rest) = file.strip_prefix(TEMP_PREFIX) else {
                continue;
            };
            if let Some(stem) = rest.strip_suffix(META_SUFFIX) {
                if self.finishes_save(stem) {
                    let meta_path = self.meta_path(stem);
                    fs::rename(self.path.join(file), &meta_path).map_err(self.io(&meta_path))?;
                    tracing::info!("state folder: finished the interrupted save of set {stem:?}");
                    changed = true;
                    continue;
                }
            }
            // An interrupted write, before anything was committed.
            let path = self.path.join(file);
            fs::remove_file(&path).map_err(self.io(&path))?;
            changed = true;
        }
        for file in &files {
            let Some(stem) = file.strip_suffix(SET_SUFFIX) else {
                continue;
            };
            if file.starts_with('.') || self.meta_path(stem).exists() {
                continue;
            }
            // A set whose metadata a delete already removed.
            let path = self.path.join(file);
            fs::remove_file(&path).map_err(self.io(&path))?;
            changed = true;
        }
        if changed {
            self.sync()?;
        }
        Ok(())
    }

    /// Whether `.tmp.STEM.json` is a complete record of the set now at `STEM.binpb`.
    fn finishes_save(&self, stem: &str) -> bool {
        let Ok(Ok(meta)) = read_meta(&self.temp_path(stem, META_SUFFIX)) else {
            return false;
        };
        let Ok(bytes) = fs::read(self.set_path(stem)) else {
            return false;
        };
        SetName::parse(stem).is_ok() && meta.name == stem && sha256_hex(&bytes) == meta.sha256
    }

    fn file_names(&self) -> Result<Vec<String>, StateError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(self.io(&self.path))? {
            let entry = entry.map_err(self.io(&self.path))?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Makes renames and removals in the folder durable.
    fn sync(&self) -> Result<(), StateError> {
        #[cfg(unix)]
        File::open(&self.path)
            .and_then(|dir| dir.sync_all())
            .map_err(self.io(&self.path))?;
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn read_meta(path: &Path) -> std::io::Result<Result<Metadata, serde_json::Error>> {
    let bytes = fs::read(path)?;
    Ok(serde_json::from_slice(&bytes))
}

/// When a set was uploaded, as the admin API shows it.
pub(super) fn format_time(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    // Unwraps here are assertions on test data: a failure fails the test.
    use super::*;
    use prost::Message;

    fn temp_dir(label: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "protogate-state-{label}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&path);
        path
    }

    fn set(name: &str, message: &str, binding: Option<SetBinding>) -> UploadedSet {
        let fds = prost_types::FileDescriptorSet {
            file: vec![prost_types::FileDescriptorProto {
                name: Some(format!("{name}.proto")),
                package: Some("p".into()),
                message_type: vec![prost_types::DescriptorProto {
                    name: Some(message.into()),
                    ..Default::default()
                }],
                service: vec![prost_types::ServiceDescriptorProto {
                    name: Some(format!("{message}Service")),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        UploadedSet::new(
            SetName::parse(name).unwrap(),
            fds.encode_to_vec().into(),
            binding,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123),
        )
        .unwrap()
    }

    #[test]
    fn saves_read_back_with_binding_and_time() {
        let path = temp_dir("roundtrip");
        let dir = StateDir::open(&path).unwrap();
        let a = set(
            "a",
            "A",
            Some(SetBinding::Backend(BackendName::new("shop"))),
        );
        let b = set(
            "b",
            "B",
            Some(SetBinding::Upstream(
                "http://127.0.0.1:5000".parse().unwrap(),
            )),
        );
        dir.save(&a).unwrap();
        dir.save(&b).unwrap();
        dir.save(&set("c", "C", None)).unwrap();
        dir.remove(&SetName::parse("c").unwrap()).unwrap();
        let loaded = dir.load().unwrap();
        assert_eq!(loaded.len(), 2);
        let got = loaded.get(&a.name).unwrap();
        assert_eq!(got.bytes, a.bytes);
        assert_eq!(got.binding, a.binding);
        assert_eq!(got.uploaded_at, a.uploaded_at);
        assert_eq!(got.services, ["p.AService"]);
        assert_eq!(loaded.get(&b.name).unwrap().binding, b.binding);
        let _ = fs::remove_dir_all(&path);
    }

    #[test]
    fn a_crash_between_the_renames_is_finished() {
        let path = temp_dir("finish");
        let dir = StateDir::open(&path).unwrap();
        let old = set("a", "Old", None);
        dir.save(&old).unwrap();
        // The new set renamed into place, its metadata still temporary.
        let new = set("a", "New", None);
        fs::write(dir.set_path("a"), &new.bytes).unwrap();
        let meta = serde_json::to_vec(&Metadata::of(&new)).unwrap();
        fs::write(dir.temp_path("a", META_SUFFIX), meta).unwrap();
        let loaded = dir.load().unwrap();
        assert_eq!(loaded.get(&new.name).unwrap().bytes, new.bytes);
        assert!(!dir.temp_path("a", META_SUFFIX).exists());
        let _ = fs::remove_dir_all(&path);
    }

    #[test]
    fn torn_temporary_files_and_orphans_are_ignored() {
        let path = temp_dir("torn");
        let dir = StateDir::open(&path).unwrap();
        let old = set("a", "Old", None);
        dir.save(&old).unwrap();
        // A crash while writing the new version: half a set and half its metadata.
        let new = set("a", "New", None);
        fs::write(dir.temp_path("a", SET_SUFFIX), &new.bytes[..3]).unwrap();
        fs::write(dir.temp_path("a", META_SUFFIX), b"{\"name\": \"a\", \"sha").unwrap();
        // A crash in a delete, after the metadata went.
        fs::write(dir.set_path("gone"), b"whatever").unwrap();
        // A complete temporary record that does not match the committed set.
        let other = serde_json::to_vec(&Metadata::of(&set("b", "B", None))).unwrap();
        fs::write(dir.temp_path("b", META_SUFFIX), other).unwrap();
        let loaded = dir.load().unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded.get(&old.name).unwrap().bytes, old.bytes);
        let left: Vec<String> = dir.file_names().unwrap();
        assert_eq!(left, ["a.binpb", "a.json"]);
        let _ = fs::remove_dir_all(&path);
    }

    #[test]
    fn a_changed_set_file_is_an_error_naming_it() {
        let path = temp_dir("corrupt");
        let dir = StateDir::open(&path).unwrap();
        dir.save(&set("a", "A", None)).unwrap();
        fs::write(dir.set_path("a"), b"\x0a\x00").unwrap();
        let err = dir.load().unwrap_err().to_string();
        assert!(err.contains("a.binpb") && err.contains("SHA-256"), "{err}");
        let _ = fs::remove_dir_all(&path);
    }
}
