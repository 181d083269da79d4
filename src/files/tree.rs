//! Changes of the tree: rename, move, trash, restore, destroy, empty the trash. Each runs under
//! the instance's write lock, from its checks to its document write (see "Writes" above).

use super::*;

/// Changes of `PATCH /files/:id`.
#[derive(Clone, Debug, Default)]
pub struct Patch {
    /// Cozy's free-form `metadata` object, as written (replaces the former one whole).
    pub metadata: Option<Box<serde_json::value::RawValue>>,
    pub name: Option<String>,
    pub dir_id: Option<String>,
    pub tags: Option<Vec<String>>,
    pub executable: Option<bool>,
    pub updated_at: Option<String>,
    pub if_match: Option<Rev>,
}

impl Files {
    /// `PATCH /files/:id`: rename, move (`dir_id`), tags, executable, updated_at.
    pub async fn patch(&self, id: &str, p: Patch) -> Result<Item> {
        if let Some(name) = &p.name {
            model::check_name(name).map_err(bad)?;
        }
        let _lock = self.writes.lock().await;
        self.sync().await?;
        let item = self.load(id).await?;
        check_mutable(&item)?;
        check_if_match(&item, p.if_match.as_ref())?;
        if item.trashed() {
            return Err(bad("items in the trash cannot be changed: restore them first"));
        }
        let name = p.name.clone().unwrap_or_else(|| item.name().to_owned());
        let dir_id = p.dir_id.clone().unwrap_or_else(|| item.dir_id().unwrap_or(ROOT_ID).to_owned());
        let mut body = item.body.clone();
        let moves_directory = item.kind() == Kind::Directory && Some(dir_id.as_str()) != item.dir_id();
        if name != item.name() || Some(dir_id.as_str()) != item.dir_id() {
            let target = self.writable_dir(&dir_id).await?;
            if target.iter().any(|e| e.id == item.id) {
                return Err(bad("a directory cannot move into itself or one of its descendants"));
            }
            if moves_directory {
                // Every node must stay within `MAX_DEPTH` levels of the root, as a new directory
                // does (`writable_dir`): deeper ones could no longer be walked to from the root
                // or from a directory trashed above them, and emptying the trash left them.
                let deepest = target.len() as i64 + self.index.height(&item.id).await?;
                if deepest > index::MAX_DEPTH {
                    return Err(bad(format!(
                        "this move would put items {deepest} levels deep: at most {} levels are allowed",
                        index::MAX_DEPTH
                    )));
                }
            }
            self.check_free(&dir_id, &name, Some(&item.id)).await?;
            model::set(&mut body, "name", json!(name));
            model::set(&mut body, "dir_id", json!(dir_id));
            if item.kind() == Kind::Directory {
                let parent_path = index::path_of(&target).unwrap_or_else(|| "/".into());
                model::set(&mut body, "path", json!(child_path(&parent_path, &name)));
            }
        }
        if let Some(tags) = p.tags {
            model::set(&mut body, "tags", json!(tags));
        }
        if let Some(metadata) = &p.metadata {
            body.set("metadata", metadata);
        }
        if let Some(x) = p.executable {
            if item.kind() != Kind::File {
                return Err(bad("only files have executable"));
            }
            model::set(&mut body, "executable", json!(x));
        }
        model::set(&mut body, "updated_at", json!(p.updated_at.unwrap_or_else(now)));
        self.write_doc(id, Some(&item.rev), false, body).await?;
        if moves_directory {
            self.cascade(id).await?;
        }
        self.sync().await?;
        self.load(id).await
    }

    /// `DELETE /files/:id`: moves an item to the trash (renamed with a suffix when the trash
    /// holds that name already), remembering where it was.
    pub async fn trash(&self, id: &str, if_match: Option<Rev>) -> Result<Item> {
        let _lock = self.writes.lock().await;
        self.sync().await?;
        let item = self.load(id).await?;
        check_mutable(&item)?;
        check_if_match(&item, if_match.as_ref())?;
        if item.trashed() {
            return Err(bad("this item is already in the trash"));
        }
        let restore_path = item.ancestry.get(1..).and_then(index::path_of).unwrap_or_else(|| "/".into());
        self.trash_locked(&item, &restore_path).await?;
        self.sync().await?;
        self.load(id).await
    }

    /// Moves `item` into the trash (the write lock held), to be restored at `restore_path`.
    pub(super) async fn trash_locked(&self, item: &Item, restore_path: &str) -> Result<()> {
        let id = item.id.as_str();
        let name = self.free_name(TRASH_ID, item.name(), item.kind(), &item.id).await?;
        let mut body = item.body.clone();
        model::set(&mut body, "name", json!(name));
        model::set(&mut body, "dir_id", json!(TRASH_ID));
        model::set(&mut body, "trashed", json!(true));
        model::set(&mut body, "restore_path", json!(restore_path));
        if item.kind() == Kind::Directory {
            model::set(&mut body, "path", json!(child_path(&format!("/{TRASH_NAME}"), &name)));
        }
        self.write_doc(id, Some(&item.rev), false, body).await?;
        if item.kind() == Kind::Directory {
            self.cascade(id).await?;
        }
        Ok(())
    }

    /// `POST /files/trash/:id`: puts an item of the trash back where it was, recreating the
    /// directories of its path that are gone, with a suffix when its name is taken there.
    pub async fn restore(&self, id: &str) -> Result<Item> {
        let _lock = self.writes.lock().await;
        self.sync().await?;
        let item = self.load(id).await?;
        if item.dir_id() != Some(TRASH_ID) {
            return Err(bad("only items directly in the trash can be restored"));
        }
        let restore_path = item.body.get("restore_path").and_then(|v| v.as_str().map(str::to_owned));
        let names: Vec<String> = match restore_path.as_deref().map(model::split_path) {
            Some(Ok(names)) => names.into_iter().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let mut dir = ROOT_ID.to_owned();
        let mut dir_path = String::from("/");
        for wanted in names {
            let mut name = wanted.clone();
            dir = match self.index.child_named(&dir, &wanted, None).await? {
                Some(e) if e.kind == Kind::Directory => e.id,
                existing => {
                    // Gone (or a file took its name): make the directory again.
                    if existing.is_some() {
                        name = self.free_name(&dir, &wanted, Kind::Directory, "").await?;
                    }
                    let new_id = DocId::generate();
                    let body = directory_body(&name, &dir, &child_path(&dir_path, &name), None, Vec::new());
                    self.write_doc(new_id.as_str(), None, false, body).await?;
                    self.sync().await?;
                    new_id.as_str().to_owned()
                }
            };
            dir_path = child_path(&dir_path, &name);
        }
        let name = self.free_name(&dir, item.name(), item.kind(), &item.id).await?;
        let mut body = item.body.clone();
        model::set(&mut body, "name", json!(name));
        model::set(&mut body, "dir_id", json!(dir));
        model::set(&mut body, "trashed", json!(false));
        model::remove(&mut body, "restore_path");
        if item.kind() == Kind::Directory {
            let parent = self.index.ancestry(&dir).await?;
            model::set(&mut body, "path", json!(child_path(&index::path_of(&parent).unwrap_or("/".into()), &name)));
        }
        self.write_doc(id, Some(&item.rev), false, body).await?;
        if item.kind() == Kind::Directory {
            self.cascade(id).await?;
        }
        self.sync().await?;
        self.load(id).await
    }

    /// `name`, or `name (2)`, `name (3)`… (before a file's extension, as Cozy does): the first
    /// one free in `dir` (other than `except`).
    pub(super) async fn free_name(&self, dir: &str, name: &str, kind: Kind, except: &str) -> Result<String> {
        if self.index.child_named(dir, name, Some(except)).await?.is_none() {
            return Ok(name.to_owned());
        }
        let (stem, ext) = match (kind, name.rfind('.')) {
            (Kind::File, Some(i)) if i > 0 => (&name[..i], &name[i..]),
            _ => (name, ""),
        };
        for n in 2..1000 {
            let mut candidate = format!("{stem} ({n}){ext}");
            while candidate.len() > model::MAX_NAME_BYTES {
                // Shorten the stem, on a character boundary, to fit the suffix.
                let cut = stem.char_indices().map(|(i, _)| i).rfind(|i| *i + ext.len() + 8 <= model::MAX_NAME_BYTES);
                candidate = format!("{} ({n}){ext}", &stem[..cut.unwrap_or(0)]);
                if candidate.len() > model::MAX_NAME_BYTES {
                    return Err(FilesError::Conflict(format!("no free name for {name:?}")));
                }
            }
            if self.index.child_named(dir, &candidate, Some(except)).await?.is_none() {
                return Ok(candidate);
            }
        }
        Err(FilesError::Conflict(format!("no free name for {name:?}")))
    }

    /// `DELETE /files/trash/:id`: destroys an item of the trash, its subtree, and their content.
    pub async fn destroy(&self, id: &str) -> Result<()> {
        let _lock = self.writes.lock().await;
        self.sync().await?;
        let item = self.load(id).await?;
        check_mutable(&item)?;
        if !item.trashed() {
            return Err(bad("only items in the trash can be destroyed: DELETE /files/:id first"));
        }
        self.destroy_locked(&item).await
    }

    pub(super) async fn destroy_locked(&self, item: &Item) -> Result<()> {
        if item.kind() == Kind::Directory {
            loop {
                let batch = self.index.descendants(&item.id, 200).await?;
                if batch.is_empty() {
                    break;
                }
                self.delete_nodes(&batch).await?;
            }
        }
        self.delete_nodes(&item.ancestry[..1]).await
    }

    /// Deletes documents, then their content.
    pub(super) async fn delete_nodes(&self, nodes: &[Entry]) -> Result<()> {
        let keys: Vec<DocId> = nodes.iter().filter_map(|e| DocId::parse(&e.id).ok()).collect();
        let writes: Vec<DocWrite> = (self.live_rows(keys, false).await?.into_iter())
            .map(|(id, rev, _)| DocWrite { id, rev: Some(rev), revisions: None, deleted: true, body: Body::empty() })
            .collect();
        for r in self.store.bulk_docs(&doctype(), writes, true).await? {
            if let WriteResult::Conflict { id } | WriteResult::Rejected { id, .. } = r {
                return Err(FilesError::Conflict(format!("{id} changed meanwhile: try again")));
            }
        }
        // The index learns of the deletions (the callers read it again to go on).
        self.sync().await?;
        // Their content, unless another document still names it: a dissociated copy, or the
        // copy a second sharing of the same files made, names the version of the file it came
        // from, and destroying one of them must not take the other's bytes.
        let versions: std::collections::HashSet<String> = nodes.iter().filter_map(|e| e.vfs_id.clone()).collect();
        if let Err(e) = self.release_versions(&versions).await {
            tracing::warn!(error = ?e, "failed to delete destroyed content; the sweep will");
        }
        Ok(())
    }

    /// `DELETE /files/trash`: destroys everything in the trash.
    pub async fn empty_trash(&self) -> Result<()> {
        let _lock = self.writes.lock().await;
        loop {
            self.sync().await?;
            let trash = self.load(TRASH_ID).await?;
            let (children, _, _) = self.children(&trash, None, 100).await?;
            if children.is_empty() {
                return Ok(());
            }
            for child in &children {
                self.destroy_locked(child).await?;
            }
        }
    }
}
