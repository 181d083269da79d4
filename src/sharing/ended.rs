//! When a files sharing ends on an instance, its files whose bytes never arrived go to the
//! trash (issue 13). The documents of shared files come by the replicator before their bytes
//! (`files::received`); Cozy only ever creates a shared file's document with its content, so
//! a Cozy user never meets a file that cannot be opened. Members keep their copies when a
//! sharing ends (Cozy's rule, DESIGN.md section 3.6), but a file whose bytes nothing will bring
//! any more would stay there for good, each download a 404 (`http::files`,
//! `CONTENT_NEVER_ARRIVED`): such files move to the trash instead (never destroyed: the user
//! restores or destroys them). The rule, in the order it runs:
//!
//! 1. **When**: the sharing becomes inactive on this instance (revoked for everyone or for its
//!    last member on the owner; left, or revoked by the owner, on a member), in
//!    [`Tracking::changed`](super::tracking::Tracking::changed), after the store stopped
//!    tracking it and *before* its feed is forgotten (`Store::untrack`): the feed is what says
//!    which documents were in the sharing.
//! 2. **Candidates**: the files of the feed (rows of `io.cozy.files` in the sharing) whose
//!    bytes are being received (judged again in step 3), or else are not here
//!    (`Files::contentless`). On the owner, only
//!    documents that came from a member (the row's `origin`), and its own files whose previous
//!    version is held for a member's edit (`files::held`): the owner's own files otherwise have
//!    their bytes here, and this never touches one. They are written down in a durable record,
//!    a `_local` document `<sharing id>` of [`ENDS_DOCTYPE`], before the feed goes.
//! 3. **Acting** ([`settle`]): a candidate whose previous version is held (an edit whose bytes
//!    never came) gets it back (`files::held`): it had its bytes before the edit, and keeps
//!    them. Any other moves to the trash with the normal trash write
//!    (`Files::trash_contentless`) when, judged again under the files write lock, it is still
//!    a file outside the trash, not under the shared root of another live sharing of this
//!    instance (a file can be in two sharings: its bytes may come by the other), whose bytes
//!    are neither being received nor here. Directories never move. A candidate whose bytes
//!    are being received then stays in the record, and is judged again once the reception
//!    ended ([`run_retries`], every second): committed, it stays; cut (the sender lost its
//!    credentials with the sharing), it goes. So is one whose judging failed (a store error),
//!    while what moved is written down. Settles run one at a time, so none writes back a
//!    record another changed. Only the process that receives knows which bytes are arriving:
//!    `hearth sharings revoke` asks the running server to end the sharing, and ends it itself
//!    only when no server answers.
//! 4. **Once per file**: each end adds a round to the record (its candidates), which is marked
//!    done (kept, with what moved) once every candidate was judged; a file an earlier round
//!    moved is never a candidate again. So a replay (another state change of the ended
//!    sharing, a restart) never moves a file the user restored from the trash since, and a
//!    sharing that ends, becomes active again (an owner whose last member left takes a new
//!    one) and ends again has its second end looked at too. A round not settled when the
//!    sharing becomes active again is dropped: its files are in the sharing again.
//!
//! A crash between the end and the trashing: the record is written before the feed goes, and
//! marked done only after acting, so [`complete`], at start, settles every record not done
//! (moving a file twice is impossible: one in the trash is passed over); and a sharing found
//! inactive with its feed still there (a crash before the record, or a record that failed)
//! has it made then, and its feed forgotten. What is left alone: a member revoked (or leaving)
//! while the owner's sharing goes on with others keeps, on the owner, the files it sent whose
//! bytes never came (moving them would send their removal to every other member); its edits
//! of files whose bytes never came are undone though ([`members_departed`]).

use serde::{Deserialize, Serialize};

use super::model::Sharing;
use super::{Context, MemberIndex, SharingId};
use crate::files::{FilesError, FilesRegistry};
use crate::instance::Instance;
use crate::store::{Body, Doctype, StoreError};

/// Where the records of ended sharings are kept: one `_local` document per sharing, named by
/// its id.
pub const ENDS_DOCTYPE: &str = "io.hearth.sharing-ends";

fn ends() -> Doctype {
    Doctype::parse(ENDS_DOCTYPE).unwrap_or_else(|_| unreachable!("static doctype"))
}

/// Feed rows read at once when picking the candidates.
const PAGE: usize = 1000;

/// The record of an ended sharing (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndRecord {
    /// Files (ids here) still to be judged.
    pub candidates: Vec<String>,
    /// Files moved to the trash.
    pub trashed: Vec<String>,
    /// Files given back the version they had before an edit whose bytes never came
    /// (`files::held`).
    pub reverted: Vec<String>,
    /// Every candidate was judged: the record is never acted on again.
    pub done: bool,
}

fn files_failed(e: FilesError) -> StoreError {
    StoreError::Internal(anyhow::anyhow!("{e}"))
}

/// The record of sharing `id` on `inst`, if one was made.
pub async fn read_record(inst: &Instance, id: &SharingId) -> Result<Option<EndRecord>, StoreError> {
    match inst.store.get_local(&ends(), id.as_str()).await {
        Ok(doc) => serde_json::from_str(doc.body.as_str())
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("end record of sharing {id}: {e}"))),
        Err(StoreError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn write_record(inst: &Instance, id: &SharingId, r: &EndRecord) -> Result<(), StoreError> {
    let body = match serde_json::to_value(r) {
        Ok(serde_json::Value::Object(m)) => Body::from_map(&m),
        _ => return Err(StoreError::Internal(anyhow::anyhow!("an end record does not serialise"))),
    };
    inst.store.put_local(&ends(), id.as_str(), body).await?;
    Ok(())
}

/// Steps 1 and 2 of the module docs, for `s`, which has just become inactive and whose feed is
/// still there: writes a round of its record (the candidates of this end, with those of a round
/// not settled yet, less the files an earlier end moved). No record is made when nothing is a
/// candidate.
pub(super) async fn record(inst: &Instance, files: &FilesRegistry, s: &Sharing) -> Result<(), StoreError> {
    let id = s.sharing_id();
    if !s.rules.iter().any(|r| r.doctype == crate::files::DOCTYPE) {
        return Ok(());
    }
    let mut rec = read_record(inst, id).await?.unwrap_or_default();
    if rec.done {
        rec.candidates.clear();
    }
    let doctype = crate::files::doctype();
    let files = files.of(inst).await.map_err(files_failed)?;
    let held = files.held_files().await.map_err(files_failed)?;
    let mut ids = Vec::new();
    let mut since = 0;
    loop {
        let rows = inst.store.shared_changes(id, since, PAGE).await?;
        let Some(last) = rows.last() else { break };
        since = last.seq;
        let read = rows.len();
        ids.extend(
            rows.into_iter()
                .filter(|r| r.doctype == doctype && !r.removed)
                // On the owner, only what came from a member, or what a member's edit
                // replaced (see the module docs).
                .filter(|r| {
                    !s.owner || r.origin.is_some_and(|o| o != MemberIndex::OWNER) || held.contains(r.id.as_str())
                })
                .map(|r| r.id.as_str().to_owned()),
        );
        if read < PAGE {
            break;
        }
    }
    // Once per file: one an earlier end moved (and the user may have restored) never again.
    ids.retain(|i| !rec.trashed.contains(i) && !rec.candidates.contains(i));
    if ids.is_empty() {
        return Ok(());
    }
    let candidates = files.contentless(&ids, &held).await.map_err(files_failed)?;
    if candidates.is_empty() {
        return Ok(());
    }
    tracing::info!(instance = %inst.domain, sharing = %id, files = candidates.len(),
        "the sharing ended before the bytes of some of its files arrived: they go to the trash");
    rec.candidates.extend(candidates);
    rec.done = false;
    write_record(inst, id, &rec).await
}

/// Step 3 of the module docs: judges the candidates of sharing `id`'s record, if it has one not
/// done, and moves those that fit to the trash. Answers whether candidates are left (bytes
/// being received): [`run_retries`] looks at them again.
///
/// Settles run one at a time in a process (`settling`): each reads the record, acts, and writes
/// it back, and two at once could write back a stale one (a candidate moved by the other, then
/// restored by the user, would move again).
async fn settle(
    inst: &Instance,
    files: &FilesRegistry,
    id: &SharingId,
    settling: &tokio::sync::Mutex<()>,
) -> Result<bool, StoreError> {
    let _alone = settling.lock().await;
    let Some(mut rec) = read_record(inst, id).await?.filter(|r| !r.done) else { return Ok(false) };
    if super::load(inst.store.as_ref(), id).await?.is_some_and(|s| s.active) {
        // Active again (an owner whose last member left took a new one): the round's files are
        // in the sharing again, their bytes may come. Dropped; the next end makes its own.
        rec.candidates.clear();
        rec.done = true;
        write_record(inst, id, &rec).await?;
        return Ok(false);
    }
    let files = files.of(inst).await.map_err(files_failed)?;
    // The shared roots of the other live sharings: what is under them may still get its bytes.
    let keep: Vec<String> = super::list(inst.store.as_ref())
        .await?
        .iter()
        .filter(|o| o.active && o.sharing_id() != id)
        .flat_map(|o| o.rules.iter().filter(|r| r.subtree() && !r.local).flat_map(|r| r.values.iter().cloned()))
        .collect();
    let taken = files.trash_contentless(&rec.candidates, &keep).await.map_err(files_failed)?;
    if !taken.moved.is_empty() {
        tracing::info!(instance = %inst.domain, sharing = %id, files = taken.moved.len(),
            "files whose bytes never arrived before the sharing ended moved to the trash");
    }
    if !taken.reverted.is_empty() {
        tracing::info!(instance = %inst.domain, sharing = %id, files = taken.reverted.len(),
            "files whose edit's bytes never arrived before the sharing ended got their previous content back");
    }
    rec.trashed.extend(taken.moved);
    rec.reverted.extend(taken.reverted);
    rec.done = taken.left.is_empty();
    rec.candidates = taken.left;
    write_record(inst, id, &rec).await?;
    Ok(!rec.done)
}

/// [`settle`] for `id` on `inst`, its failures logged (the record stays, for [`complete`] or
/// [`run_retries`]): what follows a sharing's end at once.
pub async fn settle_logged(cx: &Context, inst: &Instance, id: &SharingId) {
    let again = match settle(inst, &cx.files, id, &cx.end_settling).await {
        Ok(left) => left,
        Err(e) => {
            tracing::error!(instance = %inst.domain, sharing = %id, error = %e,
                "moving the files whose bytes never arrived to the trash failed; retried later");
            true
        }
    };
    if again {
        if let Ok(mut r) = cx.end_retries.lock() {
            r.insert((inst.domain.to_string(), id.to_string()));
        }
    }
}

/// On the owner of sharing `id` while it stays active (a member left or was revoked, others
/// remain): each file whose awaited edit came from a member no longer in it gets back the
/// version held for it (`files::held`, step 4). Failures are logged; the next state change of
/// the sharing, or the next start, looks again.
pub async fn members_departed(cx: &Context, inst: &Instance, id: &SharingId) {
    let s = match super::load(inst.store.as_ref(), id).await {
        Ok(Some(s)) if s.owner && s.active && s.rules.iter().any(|r| r.doctype == crate::files::DOCTYPE) => s,
        Ok(_) => return,
        Err(e) => {
            tracing::error!(instance = %inst.domain, sharing = %id, error = %e, "reading a sharing failed");
            return;
        }
    };
    let gone = |i: usize| s.member(MemberIndex(i)).is_none_or(|m| m.status == super::MemberStatus::Revoked);
    let reverted = match cx.files.of(inst).await {
        Ok(files) => files.revert_departed(id.as_str(), gone).await,
        Err(e) => Err(e),
    };
    match reverted {
        Ok(r) if !r.is_empty() => tracing::info!(instance = %inst.domain, sharing = %id, files = r.len(),
            "files whose edit's bytes can no longer come (its member left) got their previous content back"),
        Ok(_) => {}
        Err(e) => tracing::error!(instance = %inst.domain, sharing = %id, error = %e,
            "giving back the previous content of files a departed member edited failed; retried at the next change"),
    }
}

/// At start, for each instance: the end of every inactive sharing whose feed is still there is
/// recorded and its feed forgotten (see the module docs), then every record not done is
/// settled. Answers the records settled.
pub async fn complete(cx: &Context, inst: &Instance) -> Result<usize, StoreError> {
    let mut settled = 0;
    for s in super::list(inst.store.as_ref()).await? {
        let Some(id) = s.id.clone() else { continue };
        if s.active && s.owner {
            members_departed(cx, inst, &id).await;
        }
        // Only an ended sharing has a record (it never becomes active again).
        if s.active || !s.rules.iter().any(|r| r.doctype == crate::files::DOCTYPE) {
            continue;
        }
        if !inst.store.shared_changes(&id, 0, 1).await?.is_empty() {
            cx.tracking.changed(inst, &id, &cx.files).await?;
        }
        if read_record(inst, &id).await?.is_some_and(|r| !r.done) {
            settle_logged(cx, inst, &id).await;
            settled += 1;
        }
    }
    Ok(settled)
}

/// Settles again, every second, the records [`settle_logged`] left with candidates (bytes that
/// were being received) or failed on, until `cancel` is cancelled.
pub async fn run_retries(
    registry: std::sync::Arc<crate::instance::Registry>,
    cx: std::sync::Arc<Context>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        let due: Vec<(String, String)> =
            cx.end_retries.lock().map(|mut r| std::mem::take(&mut *r).into_iter().collect()).unwrap_or_default();
        if due.is_empty() {
            continue;
        }
        for inst in registry.opened() {
            for (_, id) in due.iter().filter(|(d, _)| d.as_str() == inst.domain.as_str()) {
                let Ok(id) = SharingId::parse(id) else { continue };
                settle_logged(&cx, &inst, &id).await;
            }
        }
    }
}
