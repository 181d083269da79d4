//! What goes from this instance to one member of a sharing: the decision on each change of the
//! sharing's feed, made with what the sender knows (the rules, the feed's row, whether the
//! document is deleted here). It mirrors the receiving side's judgement
//! ([`super::receive::judge`]), so that in a consistent sharing nothing sent is refused;
//! `sync::replication` reads the feed and the leaves, asks [`judge`], and executes the answer.
//!
//! The rules (Cozy's semantics of `add`, `update` and `remove`; see also `store::tracking`):
//! - a document under a `remove: revoke` rule that was deleted here, or left the rule's set,
//!   ends the sharing (Cozy, cozy-stack PR #3133: leaving the set counts as a removal);
//! - a document that came from the member and has not changed here since (the row's latest
//!   change is the write that brought it) is not sent back: the member holds every revision of
//!   it, so it is not even asked about (no echo of an initial sync to its sender);
//! - a document the member has never been sent (it entered the sharing after the member's
//!   checkpoint, and did not come from that member) *arrives*: it is sent whole, without
//!   `_revs_diff`, if it is still in the sharing and alive, and if it belongs to the initial set
//!   the owner sends (listed in the request's `_initial`; documents of id rules are known to be
//!   so) or the rule's `add` lets new documents flow this way; deletions and departures of
//!   documents the member never had are not sent;
//! - any other change is an update, a deletion or a departure (the document left the sharing
//!   and is alive here: the member gets a deletion instead of the new content), sent when the
//!   rule's `update` or `remove` lets it flow this way.
//!
//! (Two more rules are applied on the revisions themselves, in `sync::replication`: a removal
//! that is not the document's winner here, the document being alive and in the sharing, is
//! history and is not sent; see `files::shared`, "Re-entry". And a departure whose revision is
//! no longer readable when it is fetched follows the current winner only while the document is
//! still out of the sharing: one that came back meanwhile gets nothing, its newer row follows.)

use super::model::{ChangeKind, Flow, Sharing};
use crate::store::{MemberIndex, SharedChange};

/// What to do with one change of the sharing's feed for one member (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToMember {
    /// Not sent.
    Skip,
    /// A document under a `remove: revoke` rule was deleted here or left the rule's set: the
    /// sharing must end (revoked on the owner, left on a recipient).
    Revoke,
    /// Never sent to this member: it goes whole, without `_revs_diff` (after a crash, the batch
    /// in flight is sent again whole, which the member merges as a no-op). `initial`: the owner
    /// lists it in `_initial`, as part of the initial set.
    Arrival { initial: bool },
    /// The document left the sharing and is alive here: the member gets a deletion on top of the
    /// revision it may have (a departure), never the new content.
    Departure,
    /// An update or a deletion of a document the member has, asked about with `_revs_diff`.
    Change,
}

/// Whether `row` came from `member` and has not changed here since, and so is not sent back
/// nor even read (a document under a `remove: revoke` rule is always looked at, as its
/// deletion must end the sharing here too). Cheap: the feed's rows are filtered with it before
/// their leaves are read.
pub fn is_echo(s: &Sharing, member: MemberIndex, row: &SharedChange) -> bool {
    row.origin == Some(member)
        && row.joined == row.seq
        && !row.removed
        && s.rules.get(row.rule_index).is_some_and(|rule| rule.remove != Flow::Revoke)
}

/// The decision on `row` of `s`'s feed for `member`, whose checkpoint is `since`, given whether
/// the document's winning revision here is a deletion (`deleted`).
pub fn judge(s: &Sharing, member: MemberIndex, row: &SharedChange, deleted: bool, since: u64) -> ToMember {
    let Some(rule) = s.rules.get(row.rule_index) else { return ToMember::Skip };
    let gone = deleted || row.removed;
    if gone && rule.remove == Flow::Revoke {
        return ToMember::Revoke;
    }
    if row.origin == Some(member) && row.joined == row.seq && !row.removed {
        return ToMember::Skip;
    }
    let to_owner = !s.owner;
    if row.joined > since && row.origin != Some(member) {
        let arrives = (!to_owner && (row.initial || rule.by_id())) || rule.allows(ChangeKind::Add, to_owner);
        return if gone || !arrives { ToMember::Skip } else { ToMember::Arrival { initial: row.initial && s.owner } };
    }
    let kind = if gone { ChangeKind::Remove } else { ChangeKind::Update };
    if !rule.allows(kind, to_owner) {
        ToMember::Skip
    } else if row.removed && !deleted {
        ToMember::Departure
    } else {
        ToMember::Change
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharing::receive::tests::sharing;
    use crate::store::{DocId, Doctype};

    /// A row at `seq`, that joined at `joined`, of the selector rule unless `by_id`.
    fn row(seq: u64, joined: u64, by_id: bool) -> SharedChange {
        SharedChange {
            seq,
            doctype: Doctype::parse("io.cozy.todos").unwrap(),
            id: DocId::parse("d").unwrap(),
            rule_index: usize::from(!by_id),
            removed: false,
            joined,
            initial: false,
            origin: None,
            left_rev: None,
        }
    }

    const M: MemberIndex = MemberIndex(1);
    const OWNER: MemberIndex = MemberIndex(0);

    #[test]
    fn what_came_from_the_member_unchanged_is_an_echo_unless_a_removal_would_revoke() {
        let s = sharing(true, ("sync", "sync", "sync"));
        let echo = SharedChange { origin: Some(M), ..row(5, 5, false) };
        assert!(is_echo(&s, M, &echo));
        assert_eq!(judge(&s, M, &echo, false, 0), ToMember::Skip);
        assert!(!is_echo(&s, MemberIndex(2), &echo), "another member gets it");
        assert_eq!(judge(&s, MemberIndex(2), &echo, false, 0), ToMember::Arrival { initial: false });
        assert!(!is_echo(&s, M, &SharedChange { seq: 6, ..echo.clone() }), "changed here since");
        let revoke = sharing(true, ("sync", "sync", "revoke"));
        assert!(!is_echo(&revoke, M, &echo));
        assert_eq!(judge(&revoke, M, &echo, true, 0), ToMember::Revoke);
        assert_eq!(judge(&revoke, M, &SharedChange { removed: true, ..echo }, false, 0), ToMember::Revoke);
    }

    #[test]
    fn a_new_document_arrives_when_initial_by_id_or_allowed_by_add() {
        // The owner sends its initial set and its id rules' documents whatever `add` says.
        let s = sharing(true, ("none", "sync", "sync"));
        assert_eq!(judge(&s, M, &row(5, 5, false), false, 0), ToMember::Skip);
        assert_eq!(
            judge(&s, M, &SharedChange { initial: true, ..row(5, 5, false) }, false, 0),
            ToMember::Arrival { initial: true }
        );
        assert_eq!(judge(&s, M, &row(5, 5, true), false, 0), ToMember::Arrival { initial: false });
        // A recipient sends a new document only under `add: sync`.
        let r = sharing(false, ("push", "sync", "sync"));
        assert_eq!(judge(&r, OWNER, &row(5, 5, true), false, 0), ToMember::Skip);
        let r = sharing(false, ("sync", "sync", "sync"));
        assert_eq!(judge(&r, OWNER, &row(5, 5, true), false, 0), ToMember::Arrival { initial: false });
        assert_eq!(
            judge(&r, OWNER, &SharedChange { initial: true, ..row(5, 5, true) }, false, 0),
            ToMember::Arrival { initial: false },
            "only the owner lists an initial set"
        );
        // Deleted or gone before the member ever had it: nothing to send.
        assert_eq!(judge(&r, OWNER, &row(5, 5, true), true, 0), ToMember::Skip);
        assert_eq!(judge(&r, OWNER, &SharedChange { removed: true, ..row(5, 5, true) }, false, 0), ToMember::Skip);
    }

    #[test]
    fn a_known_document_goes_as_its_rule_lets_it_flow() {
        let s = sharing(true, ("sync", "push", "none"));
        // Joined before the checkpoint (3): the member has it.
        assert_eq!(judge(&s, M, &row(5, 2, false), false, 3), ToMember::Change);
        assert_eq!(judge(&s, M, &row(5, 2, false), true, 3), ToMember::Skip, "remove: none");
        let r = sharing(false, ("sync", "push", "sync"));
        assert_eq!(judge(&r, OWNER, &row(5, 2, false), false, 3), ToMember::Skip, "update: push, not from a recipient");
        assert_eq!(judge(&r, OWNER, &row(5, 2, false), true, 3), ToMember::Change, "a deletion");
        let left = SharedChange { removed: true, ..row(5, 2, false) };
        assert_eq!(judge(&r, OWNER, &left, false, 3), ToMember::Departure, "alive here, out of the sharing");
        assert_eq!(judge(&r, OWNER, &left, true, 3), ToMember::Change, "deleted here: the deletion itself");
        // A document that came from the member and changed here since goes back to it.
        let changed = SharedChange { origin: Some(OWNER), ..row(5, 2, false) };
        assert_eq!(judge(&r, OWNER, &changed, true, 3), ToMember::Change);
    }
}
