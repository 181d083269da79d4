//! Which documents belong to which sharing. The sharing layer hands the store the rules of the
//! active sharings ([`TrackRule`]); every document write then updates, in the same transaction,
//! a per-sharing changes feed: one row per (sharing, document) at its latest sequence, with
//! the rule that selected it and whether it has left the sharing. Replication reads that feed
//! (never the whole instance feed), so no change can be lost between a write and its tracking.
//!
//! How documents enter a sharing (the rules' semantics, as in Cozy):
//! - on the owner, the documents its rules select when the sharing starts (the *initial set*,
//!   [`Store::track_existing`](super::Store::track_existing), run once per sharing);
//! - documents that begin to match later, only where the rule's `add` lets them flow from this
//!   instance ([`TrackRule::joins`]): an id rule names its documents once and for all, so on
//!   the owner they belong from the start whenever they are written;
//! - documents received from a peer, when the receiving side's judge accepts them
//!   ([`Store::apply_received`](super::Store::apply_received)): they join with the rule the judge
//!   names, whatever `add` says, and the row remembers which member they came from.
//!
//! A row also keeps the sequence at which its document entered the sharing (`joined`): a
//! member whose checkpoint is below it has never been sent the document, so its next change is
//! the document's arrival there rather than an update (see `sync::replication`).

use std::sync::{Arc, RwLock};

use serde_json::Value;

use super::{Body, DocId, DocWrite, Doctype, SharingId, StoreError};

/// One rule of one sharing, as the store needs it to decide membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackRule {
    pub sharing_id: SharingId,
    pub rule_index: usize,
    pub doctype: Doctype,
    /// Field path matched against `values`; the document id when `None`.
    pub selector: Option<String>,
    pub values: Vec<String>,
    /// Whether a document that begins to match after the sharing started enters it on this
    /// instance (the sharing layer derives it from the rule's `add` and the instance's role).
    pub joins: bool,
    /// Subtree rules (`io.cozy.files` shared by id, as in Cozy): the member naming a
    /// document's parent (`dir_id`). A document whose parent is in the sharing under this
    /// rule is selected too, at any depth; one whose parent is not (moved out) is not.
    pub parent_field: Option<String>,
}

/// What a judge or a tracking decision knows of a document's parent: the rule its row in the
/// sharing has, when the parent is in it (not removed).
pub type ParentRule = Option<usize>;

impl TrackRule {
    /// The parent a document names, when some rule of `rules` for its doctype selects by parent.
    pub fn parent_of(rules: &[TrackRule], doctype: &str, body: &Body) -> Option<String> {
        let field = rules.iter().find(|r| r.doctype == doctype && r.parent_field.is_some())?.parent_field.as_ref()?;
        match body.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            _ => None,
        }
    }

    /// [`TrackRule::matches`], or for a subtree rule, the document's parent is in the sharing
    /// under this rule (`parent`).
    pub fn matches_in(&self, doctype: &str, id: &str, body: &Body, parent: ParentRule) -> bool {
        self.matches(doctype, id, body)
            || (self.parent_field.is_some() && self.doctype == doctype && parent == Some(self.rule_index))
    }

    /// Whether a document (its id and winning body) is selected by this rule. Only the
    /// member on the selector's path is parsed.
    pub fn matches(&self, doctype: &str, id: &str, body: &Body) -> bool {
        if self.doctype != doctype {
            return false;
        }
        match &self.selector {
            None => self.values.iter().any(|v| v == id),
            Some(path) => match body.get(path) {
                Some(Value::String(s)) => self.values.contains(&s),
                Some(Value::Array(items)) => {
                    items.iter().any(|i| i.as_str().is_some_and(|s| self.values.iter().any(|v| v == s)))
                }
                _ => false,
            },
        }
    }
}

/// The rules every write of a backend is tracked against, shared by its writers.
///
/// If a thread panicked while holding the lock, [`Rules::get`] fails (`Internal`) until the
/// next [`Rules::set`]: a write never commits untracked for want of its rules.
#[derive(Debug, Default)]
pub struct Rules(RwLock<Arc<Vec<TrackRule>>>);

impl Rules {
    /// The current rules; `Internal` while the lock is poisoned.
    pub fn get(&self) -> Result<Arc<Vec<TrackRule>>, StoreError> {
        match self.0.read() {
            Ok(rules) => Ok(rules.clone()),
            Err(_) => Err(StoreError::Internal(anyhow::anyhow!("tracking rules lock poisoned"))),
        }
    }

    /// Replaces the rules. The whole value is replaced, so this also heals a poisoned lock.
    pub fn set(&self, rules: Vec<TrackRule>) {
        let mut held = self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        *held = Arc::new(rules);
        drop(held);
        self.0.clear_poison();
    }

    /// Poisons the lock as a panicking holder would (for the tests of what follows).
    #[cfg(test)]
    pub(crate) fn poison(&self) {
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let _held = self.0.write();
                panic!("poisoning the tracking rules on purpose");
            })
            .join()
        });
    }
}

/// What tracking decides for one write of a document in one sharing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackAction {
    /// Record a change with this rule; `removed` when the document left the sharing.
    Record {
        rule_index: usize,
        removed: bool,
    },
    Nothing,
}

/// The decision for one sharing: `matching` is the first of its rules that selects the
/// document's winner, `joining` the first of those that lets a document join later
/// ([`TrackRule::joins`]), `tracked` its current row (rule, removed) if any.
pub fn decide(
    deleted: bool,
    matching: Option<usize>,
    joining: Option<usize>,
    tracked: Option<(usize, bool)>,
) -> TrackAction {
    match (deleted, tracked) {
        // A deletion travels for documents in the sharing.
        (true, Some((rule, false))) => TrackAction::Record { rule_index: rule, removed: false },
        (true, _) => TrackAction::Nothing,
        (false, Some((rule, false))) => match matching {
            Some(now) => TrackAction::Record { rule_index: now, removed: false },
            // It no longer matches: it leaves the sharing (the rule's `remove` policy applies).
            None => TrackAction::Record { rule_index: rule, removed: true },
        },
        // Not in the sharing (never, or it left): it enters only where `add` lets it.
        (false, _) => match joining {
            Some(rule) => TrackAction::Record { rule_index: rule, removed: false },
            None => TrackAction::Nothing,
        },
    }
}

/// Whether a tracking decision changes a document's membership (it enters the sharing, or
/// leaves it), as opposed to recording one more change of a document that stays where it is.
/// A cascade ([`Store::retrack`](super::Store::retrack)) records only those.
pub fn changes_membership(action: TrackAction, tracked: Option<(usize, bool)>) -> bool {
    match (action, tracked) {
        (TrackAction::Nothing, _) => false,
        (TrackAction::Record { .. }, None) => true,
        (TrackAction::Record { removed, .. }, Some((_, was_removed))) => removed != was_removed,
    }
}

/// The first rule of `sharing` selecting a document, and the first of those it may join by.
pub fn matching_rules(
    rules: &[TrackRule],
    sharing: &str,
    doctype: &str,
    id: &str,
    body: &Body,
    parent: ParentRule,
) -> (Option<usize>, Option<usize>) {
    let mut matching = rules.iter().filter(|r| r.sharing_id == sharing && r.matches_in(doctype, id, body, parent));
    let first = matching.next();
    let joining = first.filter(|r| r.joins).or_else(|| matching.find(|r| r.joins));
    (first.map(|r| r.rule_index), joining.map(|r| r.rule_index))
}

/// What one call of [`Store::track_existing_part`](super::Store::track_existing_part) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackedPart {
    /// Documents this part added to the sharing's initial set.
    pub added: u64,
    /// Where the next part starts (an opaque position to hand back), or `None` once the whole
    /// set is recorded: the sharing's start is then marked, and later calls add nothing.
    pub next: Option<String>,
}

/// What [`Store::retrack`](super::Store::retrack) did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retracked {
    /// Rows recorded (documents whose membership changed).
    pub recorded: u64,
    /// Live documents that entered a sharing again after having left it (their row was
    /// `removed`). Members may hold the removal that was sent when they left, a tombstone on
    /// top of the revision they still have: they come back only with a newer revision (see
    /// `files::shared`, "Re-entry").
    pub rejoined: Vec<DocId>,
}

/// One row of a sharing's changes feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedChange {
    pub seq: u64,
    pub doctype: Doctype,
    pub id: DocId,
    pub rule_index: usize,
    pub removed: bool,
    /// The sequence at which the document entered the sharing (0 for rows older than this
    /// field: taken as known to every member). A document received from a member enters with
    /// the write that brings it, so `joined == seq` while it has not changed here since.
    pub joined: u64,
    /// Whether it is part of the initial set (recorded by `track_existing`).
    pub initial: bool,
    /// The member it was received from, when it entered the sharing that way.
    pub origin: Option<super::MemberIndex>,
    /// For a removed row, the document's winning revision when it left: the revision whose
    /// write took it out of the sharing, or for a cascade ([`Store::retrack`](super::Store::retrack))
    /// its winner when its parent moved. `None` for a row in the sharing, and for a removed
    /// row recorded before this field (an SQLite file before schema 5, a CouchDB state
    /// without it), which says nothing of when its document left. A document whose winner is still this revision
    /// holds nothing made after it left the sharing: only then is a file's content offered for
    /// such a row (`Files::offered_versions`). On CouchDB, writes the sequencer numbers in one
    /// page count as one change (see `store::couch`, "Sequence numbers"): a move and an edit
    /// made before the move was numbered leave at the edit's revision.
    pub left_rev: Option<hearth_replicator::rev::Rev>,
}

/// Which rows of a sharing's feed a replicator wants, with their documents' leaves (see
/// `Store::shared_changes_with_leaves`): rows it returns `false` for are left out, and their
/// leaves are not read. Called on the store's own thread, so it must be cheap.
pub type KeepRow = std::sync::Arc<dyn Fn(&SharedChange) -> bool + Send + Sync>;

/// A page of a sharing's feed, each row with its document's leaves as of that row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedChangesPage {
    /// The rows kept, in feed order, each with its document's leaf revisions (winner first,
    /// with their deleted flags, as `Store::doc_leaves`). A row whose document has no
    /// revision tree is left out.
    pub rows: Vec<(SharedChange, Vec<(hearth_replicator::rev::Rev, bool)>)>,
    /// How many rows of the feed were read, kept or not: a page that read `limit` rows may
    /// have more after it.
    pub read: usize,
    /// The sequence of the last row read (`since` when there was none): where the next page
    /// starts.
    pub last_seq: u64,
}

/// A document's membership in a sharing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedState {
    pub rule_index: usize,
    pub removed: bool,
    /// The sequence of its latest row (every write of a document in the sharing moves it).
    pub seq: u64,
}

/// A received document as its judge sees it, read in the transaction that writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// The document exists here (alive or deleted).
    pub exists: bool,
    /// Its row in the sharing it is received for.
    pub shared: Option<SharedState>,
    /// The rule of its parent's row in that sharing, for doctypes with subtree rules (see
    /// [`TrackRule::parent_field`]): its parent named by the received version.
    pub parent: ParentRule,
}

/// A judge's decision on one received document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `join`: it enters the sharing with this rule; `revokes`: the write ends the
    /// sharing (a deletion under a `remove: revoke` rule), which the caller carries out.
    Accept {
        join: Option<usize>,
        revokes: bool,
    },
    /// Nothing to write, nothing to refuse: what the change asks already holds here (a
    /// removal of a document that already left the sharing here).
    Moot,
    Refuse(String),
}

/// The judging function `Store::apply_received` calls for each document, inside the write.
pub type Judge = dyn Fn(&DocWrite, &Standing) -> Verdict + Send + Sync;

/// What became of one received document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    Written {
        revokes: bool,
    },
    /// Judged moot: not written, not refused.
    Moot,
    /// The judge refused it: nothing was written.
    Refused(String),
    /// It was accepted but is not a valid replicated write (no revisions...).
    Invalid(String),
}

/// Counters of a sharing's feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SharedInfo {
    pub last_seq: u64,
    /// Documents in the sharing (not removed).
    pub docs: u64,
    /// Rows with a sequence above the `since` asked for.
    pub pending: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tracking_decisions_cover_joining_leaving_and_deleting() {
        let record = |rule_index, removed| TrackAction::Record { rule_index, removed };
        // Entering: only by a rule that lets documents join later.
        assert_eq!(decide(false, Some(0), Some(0), None), record(0, false));
        assert_eq!(decide(false, Some(0), Some(2), None), record(2, false));
        assert_eq!(decide(false, Some(0), None, None), TrackAction::Nothing, "add: none");
        // In the sharing: an update under the rule matching now, or leaving.
        assert_eq!(decide(false, Some(0), None, Some((1, false))), record(0, false));
        assert_eq!(decide(false, None, None, Some((1, false))), record(1, true));
        // Left: stays out, unless a rule lets it join again.
        assert_eq!(decide(false, None, None, Some((1, true))), TrackAction::Nothing);
        assert_eq!(decide(false, Some(2), None, Some((1, true))), TrackAction::Nothing);
        assert_eq!(decide(false, Some(2), Some(2), Some((1, true))), record(2, false));
        // Deletions travel for documents in the sharing only.
        assert_eq!(decide(true, None, None, Some((1, false))), record(1, false));
        assert_eq!(decide(true, Some(0), Some(0), None), TrackAction::Nothing);
        assert_eq!(decide(true, None, None, Some((1, true))), TrackAction::Nothing);
        assert_eq!(decide(false, None, None, None), TrackAction::Nothing);
    }

    #[test]
    fn a_cascade_records_only_documents_entering_or_leaving() {
        let record = |rule_index, removed| TrackAction::Record { rule_index, removed };
        assert!(changes_membership(record(0, false), None), "enters");
        assert!(changes_membership(record(0, true), Some((0, false))), "leaves");
        assert!(changes_membership(record(0, false), Some((0, true))), "enters again");
        assert!(!changes_membership(record(0, false), Some((0, false))), "stays in");
        assert!(!changes_membership(TrackAction::Nothing, Some((0, true))), "stays out");
        assert!(!changes_membership(TrackAction::Nothing, None));
    }

    #[test]
    fn the_joining_rule_is_the_first_matching_rule_that_lets_documents_join() {
        let rule = |i: usize, joins: bool, list: &str| TrackRule {
            sharing_id: SharingId::parse("5e").unwrap(),
            rule_index: i,
            doctype: Doctype::parse("d").unwrap(),
            selector: Some("list".into()),
            values: vec![list.into()],
            joins,
            parent_field: None,
        };
        let rules = [rule(0, false, "l1"), rule(1, true, "l2"), rule(2, true, "l1"), rule(3, true, "l1")];
        let body = |list: &str| Body::from_map(json!({ "list": list }).as_object().unwrap());
        assert_eq!(matching_rules(&rules, "5e", "d", "x", &body("l1"), None), (Some(0), Some(2)));
        assert_eq!(matching_rules(&rules, "5e", "d", "x", &body("l2"), None), (Some(1), Some(1)));
        assert_eq!(matching_rules(&rules, "5e", "d", "x", &body("l9"), None), (None, None));
        assert_eq!(matching_rules(&rules, "other", "d", "x", &body("l1"), None), (None, None));
    }

    #[test]
    fn a_subtree_rule_selects_its_root_and_whatever_has_a_parent_in_the_sharing_under_it() {
        let rule = TrackRule {
            sharing_id: SharingId::parse("5e").unwrap(),
            rule_index: 1,
            doctype: Doctype::parse("io.cozy.files").unwrap(),
            selector: None,
            values: vec!["root".into()],
            joins: true,
            parent_field: Some("dir_id".into()),
        };
        let body = |parent: &str| Body::from_map(json!({ "dir_id": parent }).as_object().unwrap());
        let rules = [rule.clone()];
        assert_eq!(TrackRule::parent_of(&rules, "io.cozy.files", &body("d1")).as_deref(), Some("d1"));
        assert_eq!(TrackRule::parent_of(&rules, "io.cozy.notes", &body("d1")), None);
        assert!(rule.matches_in("io.cozy.files", "root", &body("elsewhere"), None));
        assert!(rule.matches_in("io.cozy.files", "child", &body("d1"), Some(1)));
        assert!(!rule.matches_in("io.cozy.files", "child", &body("d1"), None), "parent outside the sharing");
        assert!(!rule.matches_in("io.cozy.files", "child", &body("d1"), Some(0)), "parent under another rule");
        let flat = TrackRule { parent_field: None, ..rule };
        assert!(!flat.matches_in("io.cozy.files", "child", &body("d1"), Some(1)), "not a subtree rule");
    }

    #[test]
    fn rules_match_ids_or_field_paths() {
        let by_id = TrackRule {
            sharing_id: SharingId::parse("5e").unwrap(),
            rule_index: 0,
            doctype: Doctype::parse("d").unwrap(),
            selector: None,
            values: vec!["a".into()],
            joins: true,
            parent_field: None,
        };
        assert!(by_id.matches("d", "a", &Body::empty()));
        assert!(!by_id.matches("d", "b", &Body::empty()));
        assert!(!by_id.matches("e", "a", &Body::empty()));
        let by_field = TrackRule { selector: Some("list.id".into()), values: vec!["l1".into()], ..by_id };
        let body = |v: Value| Body::from_map(v.as_object().unwrap());
        assert!(by_field.matches("d", "x", &body(json!({"list": {"id": "l1"}}))));
        assert!(by_field.matches("d", "x", &body(json!({"list": {"id": ["l0", "l1"]}}))));
        assert!(!by_field.matches("d", "x", &body(json!({"list": {"id": "l2"}}))));
        assert!(!by_field.matches("d", "x", &body(json!({"list": "l1"}))));
    }
}
