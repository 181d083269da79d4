//! Which sharings each instance's store tracks: the rules of the active sharings are handed to
//! the store (`Store::set_tracking`), which then records, in the same transaction as each
//! write, the documents entering, changing in and leaving each sharing (see `store::tracking`
//! for the mechanics). A sharing that becomes active on its owner has its existing matching
//! documents added (its initial set), in parts, by a background task the replication worker
//! starts (`sync::manager`): its first documents replicate while the rest is taken, and an
//! owner that stopped midway takes it again when it starts. One that ends has its feed
//! forgotten.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::model::Sharing;
use super::SharingId;
use crate::files::FilesRegistry;
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
    /// Per instance, the sharings whose initial set this process took or is taking.
    initial: Mutex<HashMap<String, HashMap<String, InitialSet>>>,
    /// The last [`InitialSet::generation`] given.
    generations: std::sync::atomic::AtomicU64,
}

/// Where the initial set of one sharing stands in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InitialSet {
    /// Which taking of the set this is: a sharing that ends and starts again while a task is
    /// taking its set gets a new one, and the older task stops at its next part.
    generation: u64,
    done: bool,
}

/// One sharing whose initial set is to be taken (see [`Tracking::initial_sets_due`]).
#[derive(Clone, Debug)]
pub struct InitialSetDue {
    pub sharing: SharingId,
    generation: u64,
}

/// Documents each part of an initial set scans (see [`Store::track_existing_part`]): a part
/// holds the store's writer for a few milliseconds.
///
/// [`Store::track_existing_part`]: crate::store::Store::track_existing_part
const INITIAL_SET_PART: usize = 2_000;

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

    /// After a sharing changed state: update tracking; when it ended, record its files whose
    /// bytes never arrived (`sharing::ended`: from its feed, which says what was in it), then
    /// forget its feed (an active owner's initial set is [`Tracking::take_initial_set`]'s).
    /// When the record cannot be made, the feed stays, for `ended::complete` at next start.
    pub async fn changed(&self, inst: &Instance, id: &SharingId, files: &FilesRegistry) -> Result<(), StoreError> {
        let _guard = self.lock.lock().await;
        let all = self.refresh_locked(inst).await?;
        if let Some(s) = all.iter().find(|s| s.id() == id.as_str()) {
            if !s.active {
                // The store no longer tracks it (`refresh_locked`): its feed is still.
                if let Err(e) = super::ended::record(inst, files, s).await {
                    tracing::error!(instance = %inst.domain, sharing = %id, error = %e,
                        "recording the files of an ended sharing failed; done at next start");
                    return Ok(());
                }
                inst.store.untrack(id).await?;
                self.forget_initial(inst, id.as_str());
            }
        }
        Ok(())
    }

    /// The active sharings of `all` this instance owns whose initial set this process has not
    /// taken nor begun: each is marked begun, for the caller to take with
    /// [`Tracking::take_initial_set`].
    pub fn initial_sets_due(&self, inst: &Instance, all: &[Sharing]) -> Vec<InitialSetDue> {
        let Ok(mut initial) = self.initial.lock() else { return Vec::new() };
        let begun = initial.entry(inst.domain.to_string()).or_default();
        let mut due = Vec::new();
        for id in all.iter().filter(|s| s.active && s.owner).filter_map(|s| s.id.as_ref()) {
            if !begun.contains_key(id.as_str()) {
                let generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                begun.insert(id.to_string(), InitialSet { generation, done: false });
                due.push(InitialSetDue { sharing: id.clone(), generation });
            }
        }
        due
    }

    /// Whether the initial set of `id` (an active sharing this instance owns) is still being
    /// taken, or not yet begun, by this process: its feed does not hold everything yet.
    pub fn initial_set_pending(&self, inst: &Instance, id: &SharingId) -> bool {
        match self.initial.lock() {
            Ok(initial) => !initial.get(inst.domain.as_str()).and_then(|m| m.get(id.as_str())).is_some_and(|s| s.done),
            Err(_) => false,
        }
    }

    /// Whether `due` is still the current taking of its sharing's set.
    fn current(&self, inst: &Instance, due: &InitialSetDue) -> bool {
        self.initial_set(inst, due.sharing.as_str()).is_some_and(|s| s.generation == due.generation)
    }

    /// Where the initial set of sharing `id` stands in this process, if it was begun.
    fn initial_set(&self, inst: &Instance, id: &str) -> Option<InitialSet> {
        self.initial.lock().ok()?.get(inst.domain.as_str())?.get(id).copied()
    }

    fn forget_initial(&self, inst: &Instance, id: &str) {
        if let Ok(mut initial) = self.initial.lock() {
            if let Some(m) = initial.get_mut(inst.domain.as_str()) {
                m.remove(id);
            }
        }
    }

    /// Takes the initial set of `due.sharing` (see `Store::track_existing_part`), a part at a
    /// time, each under the lock and only while the store tracks the sharing and `due` is its
    /// current taking (a sharing that ended, and maybe started again, meanwhile stops it);
    /// answers the documents added. A store that already holds the set (taken before a
    /// restart) adds nothing. On an error, the set is left to be taken again.
    pub async fn take_initial_set(&self, inst: &Instance, due: &InitialSetDue) -> Result<u64, StoreError> {
        let id = &due.sharing;
        let mut resume: Option<String> = None;
        let (mut added, mut parts) = (0, 0);
        loop {
            let part = {
                let _guard = self.lock.lock().await;
                let tracked = self
                    .tracked
                    .lock()
                    .map(|t| t.get(inst.domain.as_str()).is_some_and(|set| set.contains(id.as_str())))
                    .unwrap_or(false);
                if !tracked || !self.current(inst, due) {
                    return Ok(added);
                }
                match inst.store.track_existing_part(id, resume.as_deref(), INITIAL_SET_PART).await {
                    Ok(part) => {
                        // Marked done under the lock: a revocation right after forgets it.
                        if part.next.is_none() {
                            if let Ok(mut initial) = self.initial.lock() {
                                initial
                                    .entry(inst.domain.to_string())
                                    .or_default()
                                    .insert(id.to_string(), InitialSet { generation: due.generation, done: true });
                            }
                        }
                        part
                    }
                    Err(e) => {
                        // Left to be taken again (by the next plan), unless a newer taking
                        // has begun already.
                        if self.current(inst, due) {
                            self.forget_initial(inst, id.as_str());
                        }
                        return Err(e);
                    }
                }
            };
            added += part.added;
            parts += 1;
            resume = part.next;
            if resume.is_none() {
                break;
            }
        }
        tracing::info!(instance = %inst.domain, sharing = %id, added, parts, "initial tracking");
        Ok(added)
    }
}
