//! Which sharings each instance's store tracks: the rules of the active sharings are handed to
//! the store (`Store::set_tracking`), which then records, in the same transaction as each
//! write, the documents entering, changing in and leaving each sharing (see `store::tracking`
//! for the mechanics). A sharing that becomes active on its owner has its existing matching
//! documents added (its initial set); one that ends has its feed forgotten.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::model::Sharing;
use super::SharingId;
use crate::instance::Instance;
use crate::store::StoreError;

/// The tracking state of one application.
#[derive(Default)]
pub struct Tracking {
    /// Serialises refreshes: a refresh reads the sharings and hands their rules to the store,
    /// and an older read must never overwrite newer rules.
    lock: tokio::sync::Mutex<()>,
    /// Per instance, the sharings whose rules the store was last given.
    tracked: Mutex<HashMap<String, HashSet<String>>>,
}

impl Tracking {
    async fn refresh_locked(&self, inst: &Instance) -> Result<Vec<Sharing>, StoreError> {
        let all = super::list(inst.store.as_ref()).await?;
        let active: Vec<&Sharing> = all.iter().filter(|s| s.active).collect();
        inst.store.set_tracking(active.iter().flat_map(|s| s.track_rules()).collect());
        if let Ok(mut tracked) = self.tracked.lock() {
            tracked.insert(inst.domain.to_string(), active.iter().map(|s| s.id().to_owned()).collect());
        }
        Ok(all)
    }

    /// Gives the store the rules of the instance's active sharings; answers all its sharings.
    pub async fn refresh(&self, inst: &Instance) -> Result<Vec<Sharing>, StoreError> {
        let _guard = self.lock.lock().await;
        self.refresh_locked(inst).await
    }

    /// Makes sure the store tracks `sharing` before a write for it is applied (a sharing that
    /// has just become active, or an instance just opened).
    pub async fn ensure(&self, inst: &Instance, sharing: &SharingId) -> Result<(), StoreError> {
        let known = self
            .tracked
            .lock()
            .map(|t| t.get(inst.domain.as_str()).is_some_and(|set| set.contains(sharing.as_str())))
            .unwrap_or(false);
        if !known {
            self.refresh(inst).await?;
        }
        Ok(())
    }

    /// After a sharing changed state: update tracking; when it is active on the owner, add the
    /// documents that already match (initial sync); when it ended, forget its feed. Holds the
    /// lock throughout, so the initial scan uses the rules just set.
    pub async fn changed(&self, inst: &Instance, id: &SharingId) -> Result<(), StoreError> {
        let _guard = self.lock.lock().await;
        let all = self.refresh_locked(inst).await?;
        if let Some(s) = all.iter().find(|s| s.id() == id.as_str()) {
            if s.active && s.owner {
                let added = inst.store.track_existing(id).await?;
                tracing::info!(instance = %inst.domain, sharing = %id, added, "initial tracking");
            } else if !s.active {
                inst.store.untrack(id).await?;
            }
        }
        Ok(())
    }
}
