//! The files of every instance of a server, their sweeps, the "Shared with me" directory and
//! the instance's quota setting.

use super::*;

/// What a sweep found and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub objects: u64,
    pub removed: u64,
    pub temporary: u64,
}

impl Files {
    /// Removes content no current version names (see "The sweep" above).
    pub async fn sweep(&self, grace: Duration) -> Result<Swept> {
        let mut cutoff = SystemTime::now().checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
        if self.content.exclusive() {
            // Left by a process that is gone (a crash): nobody will finish it.
            cutoff = cutoff.max(self.opened_at);
        }
        let temporary = self.content.sweep_incomplete(cutoff).await?;
        // Holds whose file has its bytes again (or is gone) go first: their versions with them.
        self.release_all_holds().await?;
        let objects = self.content.list("files/").await?;
        self.sync().await?;
        let mut swept = Swept { objects: objects.len() as u64, removed: 0, temporary };
        for obj in objects {
            if obj.modified > cutoff {
                continue;
            }
            let Some(vfs_id) = obj.key.as_str().rsplit('/').next().map(str::to_owned) else {
                continue;
            };
            // The registry first, then the index: see "The sweep".
            if self.writing.lock().map_or(true, |w| w.contains(&vfs_id)) {
                continue;
            }
            // A hold is looked at after the index: see `held`, step 1.
            if self.index.references(&vfs_id).await? || self.is_held(&vfs_id).await? {
                continue;
            }
            self.content.delete(&obj.key).await?;
            swept.removed += 1;
        }
        Ok(swept)
    }
}

/// The directory received shared roots go in, on a recipient (Cozy's id and name).
pub const SHARED_WITH_ME_ID: &str = "io.cozy.files.shared-with-me-dir";
pub const SHARED_WITH_ME_NAME: &str = "Shared with me";

/// Creates the "Shared with me" directory at the root when it is missing (only that:
/// [`Files::ensure_shared_with_me`] also brings it back from the trash).
pub async fn ensure_shared_with_me(store: &dyn crate::store::Store) -> Result<()> {
    let fields = json!({"type": "directory", "name": SHARED_WITH_ME_NAME, "dir_id": ROOT_ID,
        "path": format!("/{SHARED_WITH_ME_NAME}")});
    ensure_dir_in(store, SHARED_WITH_ME_ID, fields).await
}

impl Files {
    /// The name a shared root received as `id` takes in "Shared with me": the one it has
    /// there already (the recipient may have renamed it), else `title` (the rule's), made free
    /// as Cozy does (`title (2)`...): two sharings with the same title, or a folder of the
    /// recipient's own of that name, never make two items of one name there.
    ///
    /// The name is free when it is chosen: hold [`Files::naming_shared_roots`] until the root
    /// is written under it, or two roots received at once take the same one.
    pub async fn shared_root_name(&self, id: &str, title: &str, kind: Kind) -> Result<String> {
        self.sync().await?;
        if let Some(e) = self.index.get(id).await?.filter(|e| e.dir_id.as_deref() == Some(SHARED_WITH_ME_ID)) {
            return Ok(e.name);
        }
        self.free_name(SHARED_WITH_ME_ID, title, kind, id).await
    }

    /// The lock under which a received shared root is named ([`Files::shared_root_name`]) and
    /// written: two sharings with one title accepted at once, their first documents received
    /// together, each saw the title free and took it.
    pub async fn naming_shared_roots(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.shared_roots.lock().await
    }

    /// The "Shared with me" directory, ready to take a received shared root: made when missing
    /// (never made, or destroyed), and brought back to the root when it is in the trash, itself
    /// or with a directory holding it, or no longer attached to the root. A root placed in it
    /// would otherwise land in the trash, where emptying the trash destroys it (cozy-stack
    /// `EnsureSharedWithMeDir`, PR #3442 and #4475). It comes back under its name, or the
    /// first free ` (n)` when the root holds that name now; what it held when it went to the
    /// trash stays there (the user trashed it): each such item moves to the trash itself,
    /// restorable into "Shared with me", as Cozy does.
    pub async fn ensure_shared_with_me(&self) -> Result<()> {
        let _lock = self.writes.lock().await;
        self.sync().await?;
        let item = match self.load(SHARED_WITH_ME_ID).await {
            Ok(item) => item,
            Err(FilesError::NotFound(_)) => {
                ensure_shared_with_me(self.store.as_ref()).await?;
                return self.sync().await;
            }
            Err(e) => return Err(e),
        };
        if !item.trashed() && item.dir_id() != Some(TRASH_ID) && index::path_of(&item.ancestry).is_some() {
            return Ok(());
        }
        let name = self.free_name(ROOT_ID, SHARED_WITH_ME_NAME, Kind::Directory, SHARED_WITH_ME_ID).await?;
        loop {
            let children = self.index.children(SHARED_WITH_ME_ID, None, 100).await?;
            if children.is_empty() {
                break;
            }
            for child in children {
                let child = self.load(&child.id).await?;
                self.trash_locked(&child, &format!("/{name}")).await?;
            }
            self.sync().await?;
        }
        let item = self.load(SHARED_WITH_ME_ID).await?;
        let mut body = item.body.clone();
        model::set(&mut body, "name", json!(name));
        model::set(&mut body, "dir_id", json!(ROOT_ID));
        model::set(&mut body, "trashed", json!(false));
        model::set(&mut body, "path", json!(format!("/{name}")));
        model::set(&mut body, "updated_at", json!(now()));
        model::remove(&mut body, "restore_path");
        self.write_doc(SHARED_WITH_ME_ID, Some(&item.rev), false, body).await?;
        tracing::info!(name, "\"Shared with me\" was in the trash or detached: brought back to the root");
        self.sync().await
    }
}

/// Writes directory `id` with `fields` (and dates, tags) when it does not exist.
pub(super) async fn ensure_dir_in(store: &dyn crate::store::Store, id: &str, fields: Value) -> Result<()> {
    let id = DocId::parse(id).map_err(|e| FilesError::Internal(anyhow::anyhow!(e)))?;
    match store.get(&doctype(), &id, GetOptions::default()).await {
        Ok(_) => return Ok(()),
        Err(StoreError::NotFound | StoreError::Deleted) => {}
        Err(e) => return Err(e.into()),
    }
    let mut body = Body::empty();
    let at = now();
    if let Value::Object(map) = fields {
        for (k, v) in map {
            model::set(&mut body, &k, v);
        }
    }
    model::set(&mut body, "created_at", json!(at));
    model::set(&mut body, "updated_at", json!(at));
    model::set(&mut body, "tags", json!([]));
    // A concurrent first use wrote it first: fine.
    let w = DocWrite { id, rev: None, revisions: None, deleted: false, body };
    store.bulk_docs(&doctype(), vec![w], true).await?;
    Ok(())
}

/// An instance's own quota, if one was set.
pub async fn instance_quota(store: &dyn Store) -> Result<Option<u64>, StoreError> {
    match store.get_local(&settings_doctype(), QUOTA_DOC).await {
        Ok(doc) => Ok(doc.body.get("quota_bytes").and_then(|v| v.as_u64())),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets (or with `None` removes) an instance's own quota.
pub async fn set_instance_quota(store: &dyn Store, bytes: Option<u64>) -> Result<(), StoreError> {
    match bytes {
        Some(b) => {
            let body = Body::parse(&json!({ "quota_bytes": b }).to_string())
                .map_err(|e| StoreError::Internal(anyhow::anyhow!(e)))?;
            store.put_local(&settings_doctype(), QUOTA_DOC, body).await.map(drop)
        }
        None => match store.delete_local(&settings_doctype(), QUOTA_DOC).await {
            Ok(()) | Err(StoreError::NotFound) => Ok(()),
            Err(e) => Err(e),
        },
    }
}

/// The files of every instance of a server, opened on first use.
pub struct FilesRegistry {
    backend: Arc<dyn ContentBackend>,
    data_dir: std::path::PathBuf,
    default_quota: u64,
    open: tokio::sync::Mutex<HashMap<String, Arc<Files>>>,
}

impl FilesRegistry {
    pub fn new(config: &crate::config::Config) -> anyhow::Result<FilesRegistry> {
        let backend: Arc<dyn ContentBackend> = match config.files.backend {
            crate::config::FilesBackendKind::Fs => {
                Arc::new(content::FsBackend::new(config.data_dir.join("files").join("content"), config.files.direct_io))
            }
            crate::config::FilesBackendKind::S3 => {
                Arc::new(content::S3Backend::new(&content::S3Settings::from_config(&config.files.s3)?)?)
            }
        };
        Ok(FilesRegistry {
            backend,
            data_dir: config.data_dir.clone(),
            default_quota: config.files.quota_bytes,
            open: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The files of an instance (its store and its file-safe name).
    pub async fn of(&self, instance: &crate::instance::Instance) -> Result<Arc<Files>> {
        let name = instance.domain.file_stem();
        let mut open = self.open.lock().await;
        if let Some(f) = open.get(&name) {
            return Ok(f.clone());
        }
        let content = self.backend.open(&name).map_err(FilesError::Internal)?;
        let index_path = self.data_dir.join("files").join("index").join(format!("{name}.sqlite"));
        let files = Arc::new(Files::open(instance.store.clone(), content, &index_path, self.default_quota).await?);
        open.insert(name, files.clone());
        Ok(files)
    }

    /// Forgets an instance's files and removes its content and index (the instance is being
    /// removed).
    pub async fn destroy(&self, domain: &crate::instance::Domain) -> anyhow::Result<()> {
        let name = domain.file_stem();
        self.open.lock().await.remove(&name);
        self.backend.destroy(&name).await?;
        let index_path = self.data_dir.join("files").join("index").join(format!("{name}.sqlite"));
        for suffix in ["", "-wal", "-shm"] {
            let mut p = index_path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(std::path::PathBuf::from(p));
        }
        Ok(())
    }
}

/// Sweeps every opened instance now, then every `interval`, until cancelled.
pub async fn run_sweeps(
    registry: Arc<crate::instance::Registry>,
    files: Arc<FilesRegistry>,
    interval: Duration,
    grace: Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        for inst in registry.opened() {
            let outcome = match files.of(&inst).await {
                Ok(f) => f.sweep(grace).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(s) if s.removed + s.temporary > 0 => {
                    tracing::info!(instance = %inst.domain, removed = s.removed, temporary = s.temporary, "files swept")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(instance = %inst.domain, error = ?e, "files sweep failed"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
