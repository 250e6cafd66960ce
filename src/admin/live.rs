//! The live descriptor registry: the inputs of the current snapshot (config, startup descriptors,
//! uploaded sets) and the one place that changes them. Every change builds a complete snapshot
//! off to the side, refuses it whole on any error, stores it in the state folder, then publishes
//! it with one swap; changes run one at a time.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Mutex;

use super::diff::Change;
use super::reflect;
use super::state_dir::{StateDir, StateError};
use crate::config::{BackendName, Config};
use crate::descriptors::{DescriptorError, RuleError};
use crate::snapshot::{Snapshot, SnapshotError, SnapshotInputs, SnapshotStore};
use crate::uploads::{SetBinding, SetName, UploadedSet, Uploads};

/// Reads the configuration again for a reload (the config file plus command-line overrides).
pub type ConfigLoader = Arc<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// How long a reflection may take.
const REFLECT_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a change was refused; the live registry is as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveError {
    /// The input is unusable (unparsable, a missing import, a bad rule or binding): 400.
    #[error("{0}")]
    Invalid(String),
    /// It conflicts with another set, the startup descriptors or the config: 409.
    #[error("{0}")]
    Conflict(String),
    /// No set has that name: 404.
    #[error("{0}")]
    NotFound(String),
    /// A backend did not answer reflection usefully: 502.
    #[error("{0}")]
    Backend(String),
    /// The state folder could not be written: 500.
    #[error("{0}")]
    Storage(String),
}

/// What a change did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// Services, methods and routes added, changed and removed.
    pub changes: Change,
    /// Warnings of the new snapshot that the old one did not have.
    pub warnings: Vec<String>,
}

/// What a reload did, with settings that only a restart applies.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reloaded {
    /// The change.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Settings that changed in the file but keep their running values until a restart.
    pub needs_restart: Vec<String>,
}

/// The live registry. Readers use the store; writers go through here.
pub struct LiveRegistry {
    store: Arc<SnapshotStore>,
    /// The inputs of the published snapshot. Held across a whole change, so changes are
    /// serialized and each builds on the one before.
    inputs: Mutex<SnapshotInputs>,
    state: Option<StateDir>,
    loader: Option<ConfigLoader>,
}

impl std::fmt::Debug for LiveRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRegistry")
            .field("state", &self.state)
            .field("reloadable", &self.loader.is_some())
            .finish_non_exhaustive()
    }
}

impl LiveRegistry {
    /// Builds the first snapshot from `inputs` and a store holding it. Must run inside a tokio
    /// runtime.
    pub fn start(
        inputs: SnapshotInputs,
        state: Option<StateDir>,
        loader: Option<ConfigLoader>,
    ) -> Result<LiveRegistry, SnapshotError> {
        let snapshot = Snapshot::assemble(&inputs, None)?;
        Ok(LiveRegistry {
            store: Arc::new(SnapshotStore::new(snapshot)),
            inputs: Mutex::new(inputs),
            state,
            loader,
        })
    }

    /// The store the data plane reads.
    pub fn store(&self) -> &Arc<SnapshotStore> {
        &self.store
    }

    /// Adds `set`, or replaces the set of the same name. Returns whether it replaced one.
    pub async fn put(&self, set: UploadedSet) -> Result<(Outcome, bool), LiveError> {
        let mut inputs = self.inputs.lock().await;
        let replaced = inputs.uploads.get(&set.name).is_some();
        let next = inputs.with_uploads(inputs.uploads.with(set.clone()));
        let outcome = self
            .apply(next, &mut inputs, Operation::Put, |state| state.save(&set))
            .await?;
        tracing::info!(
            set = %set.name,
            sha256 = %set.sha256,
            routes_added = outcome.changes.routes.added.len(),
            routes_removed = outcome.changes.routes.removed.len(),
            "descriptor set {}",
            if replaced { "replaced" } else { "added" }
        );
        Ok((outcome, replaced))
    }

    /// Removes the set called `name` and its routes.
    pub async fn delete(&self, name: &SetName) -> Result<Outcome, LiveError> {
        let mut inputs = self.inputs.lock().await;
        if inputs.uploads.get(name).is_none() {
            return Err(LiveError::NotFound(format!(
                "no descriptor set is called {:?}",
                name.as_str()
            )));
        }
        let next = inputs.with_uploads(inputs.uploads.without(name));
        let outcome = self
            .apply(next, &mut inputs, Operation::Delete, |state| {
                state.remove(name)
            })
            .await?;
        tracing::info!(set = %name, "descriptor set removed");
        Ok(outcome)
    }

    /// Reads the configuration and its descriptor inputs again and rebuilds with the same uploads;
    /// a bad configuration is refused and the running one kept.
    pub async fn reload(&self) -> Result<Reloaded, LiveError> {
        let loader = self.loader.clone().ok_or_else(|| {
            LiveError::Invalid("this gateway was not started from a reloadable config".to_owned())
        })?;
        let mut inputs = self.inputs.lock().await;
        let uploads = inputs.uploads.clone();
        let next = tokio::task::spawn_blocking(move || {
            let config = Arc::new(loader()?);
            SnapshotInputs::load(config, uploads).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| LiveError::Invalid(format!("reload stopped: {e}")))?
        .map_err(LiveError::Invalid)?;
        let needs_restart = restart_only(&inputs.config, &next.config);
        let outcome = self
            .apply(next, &mut inputs, Operation::Reload, |_| Ok(()))
            .await?;
        tracing::info!(
            routes_added = outcome.changes.routes.added.len(),
            routes_removed = outcome.changes.routes.removed.len(),
            "configuration reloaded"
        );
        for setting in &needs_restart {
            tracing::warn!("{setting} changed; it applies at the next restart");
        }
        Ok(Reloaded {
            outcome,
            needs_restart,
        })
    }

    /// Pulls the descriptors of every service `backend` offers through gRPC server reflection
    /// and registers them as the set `name`, bound to that backend.
    pub async fn reflect(
        &self,
        backend: &BackendName,
        name: SetName,
    ) -> Result<(UploadedSet, Outcome, bool), LiveError> {
        let snapshot = self.store.load();
        let channel = snapshot
            .backends
            .get(backend)
            .and_then(|b| {
                b.candidates()
                    .next()
                    .map(|(_, address)| address.channel().clone())
            })
            .ok_or_else(|| {
                LiveError::Invalid(format!("the config defines no backend called {backend:?}"))
            })?;
        drop(snapshot);
        let bytes = reflect::fetch(channel, REFLECT_LIMIT)
            .await
            .map_err(|e| LiveError::Backend(format!("backend {backend:?}: {e}")))?;
        let binding = Some(SetBinding::Backend(backend.clone()));
        let set = UploadedSet::new(name, bytes, binding, SystemTime::now())
            .map_err(|e| LiveError::Invalid(e.to_string()))?;
        let (outcome, replaced) = self.put(set.clone()).await?;
        Ok((set, outcome, replaced))
    }

    /// The uploaded sets of the published snapshot.
    pub fn uploads(&self) -> Uploads {
        self.store.load().uploads.clone()
    }

    /// Builds `next` off the request path, stores the change, and publishes it; on any error
    /// nothing changes.
    async fn apply(
        &self,
        next: SnapshotInputs,
        inputs: &mut SnapshotInputs,
        operation: Operation,
        persist: impl FnOnce(&StateDir) -> Result<(), StateError> + Send,
    ) -> Result<Outcome, LiveError> {
        let previous = self.store.load();
        let building = next.clone();
        let base = previous.clone();
        // Building a large set takes CPU for a while; the request workers keep serving.
        let snapshot =
            tokio::task::spawn_blocking(move || Snapshot::assemble(&building, Some(&base)))
                .await
                .map_err(|e| LiveError::Invalid(format!("building the snapshot stopped: {e}")))?
                .map_err(|e| classify(e, operation))?;
        if let Some(state) = &self.state {
            // Written before publishing: an accepted change is one that survives a restart.
            persist(state).map_err(|e| {
                tracing::error!("{e}");
                LiveError::Storage(e.to_string())
            })?;
        }
        let changes = Change::between(&previous, &snapshot);
        let warnings = snapshot
            .warnings
            .iter()
            .filter(|w| !previous.warnings.contains(w))
            .cloned()
            .collect();
        self.store.publish(snapshot);
        *inputs = next;
        // Freeing a large snapshot takes a while; when this is the last reference, do it off the
        // request workers (otherwise the last request holding it frees it).
        tokio::task::spawn_blocking(move || drop(previous));
        Ok(Outcome { changes, warnings })
    }
}

/// The kind of change, which decides whether some errors are the input's fault or a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Put,
    Delete,
    Reload,
}

fn classify(err: SnapshotError, operation: Operation) -> LiveError {
    let message = err.to_string();
    if operation == Operation::Reload {
        // The new config is what is wrong, whatever it collides with.
        return LiveError::Invalid(format!("the new configuration is refused: {message}"));
    }
    let conflict = match &err {
        SnapshotError::Descriptors(
            DescriptorError::FileConflict { .. } | DescriptorError::SymbolConflict { .. },
        )
        | SnapshotError::RouteConflict { .. }
        | SnapshotError::BackendTaken { .. }
        | SnapshotError::BindingConflict { .. }
        // The config's http_rules name a method that the change removes.
        | SnapshotError::Rule(RuleError::UnknownSelector(_)) => true,
        // Other sets import a file that a delete removes.
        SnapshotError::Descriptors(DescriptorError::MissingImport { .. }) => {
            operation == Operation::Delete
        }
        _ => false,
    };
    if conflict {
        LiveError::Conflict(message)
    } else {
        LiveError::Invalid(message)
    }
}

/// Settings read at start only, named when a reload changes them.
fn restart_only(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.listen != new.listen {
        out.push("listen".to_owned());
    }
    if old.admin.listen != new.admin.listen {
        out.push("admin_listen".to_owned());
    }
    if old.admin.token != new.admin.token {
        out.push("admin_token".to_owned());
    }
    if old.admin.state_dir != new.admin.state_dir {
        out.push("state_dir".to_owned());
    }
    if old.admin.max_upload_bytes != new.admin.max_upload_bytes {
        out.push("admin_max_upload_bytes".to_owned());
    }
    if old.shutdown_grace != new.shutdown_grace {
        out.push("shutdown_grace".to_owned());
    }
    if old.server != new.server {
        out.push("server".to_owned());
    }
    if old.edge.rate_limit_store != new.edge.rate_limit_store {
        out.push("rate_limit_store".to_owned());
    }
    out
}

/// Reads a set's bytes for an upload, with the name already checked.
pub(super) fn uploaded(
    name: SetName,
    bytes: Bytes,
    binding: Option<SetBinding>,
) -> Result<UploadedSet, LiveError> {
    UploadedSet::new(name, bytes, binding, SystemTime::now())
        .map_err(|e| LiveError::Invalid(e.to_string()))
}
