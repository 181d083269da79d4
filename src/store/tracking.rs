//! Which documents belong to which sharing. The sharing layer hands the store the rules of the
//! active sharings ([`TrackRule`]); every document write then updates, in the same transaction,
//! a per-sharing changes feed: one row per (sharing, document) at its latest sequence, with
//! the rule that selected it and whether it has left the sharing. Replication reads that feed
//! (never the whole instance feed), so no change can be lost between a write and its tracking.

use serde_json::Value;

use super::{Body, DocId, Doctype};

/// One rule of one sharing, as the store needs it to decide membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackRule {
    pub sharing_id: String,
    pub rule_index: usize,
    pub doctype: String,
    /// Field path matched against `values`; the document id when `None`.
    pub selector: Option<String>,
    pub values: Vec<String>,
}

impl TrackRule {
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
/// document's winner, `tracked` its current row (rule, removed) if any.
pub fn decide(deleted: bool, matching: Option<usize>, tracked: Option<(usize, bool)>) -> TrackAction {
    match (deleted, matching, tracked) {
        // A deletion travels for documents in the sharing.
        (true, _, Some((rule, false))) => TrackAction::Record { rule_index: rule, removed: false },
        (true, _, _) => TrackAction::Nothing,
        (false, Some(rule), _) => TrackAction::Record { rule_index: rule, removed: false },
        // It no longer matches: it leaves the sharing (the rule's `remove` policy applies).
        (false, None, Some((rule, false))) => TrackAction::Record { rule_index: rule, removed: true },
        (false, None, _) => TrackAction::Nothing,
    }
}

/// One row of a sharing's changes feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedChange {
    pub seq: u64,
    pub doctype: Doctype,
    pub id: DocId,
    pub rule_index: usize,
    pub removed: bool,
}

/// A document's membership in a sharing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedState {
    pub rule_index: usize,
    pub removed: bool,
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
        assert_eq!(decide(false, Some(0), None), TrackAction::Record { rule_index: 0, removed: false });
        assert_eq!(decide(false, None, Some((1, false))), TrackAction::Record { rule_index: 1, removed: true });
        assert_eq!(decide(false, None, Some((1, true))), TrackAction::Nothing);
        assert_eq!(decide(false, Some(2), Some((1, true))), TrackAction::Record { rule_index: 2, removed: false });
        assert_eq!(decide(true, None, Some((1, false))), TrackAction::Record { rule_index: 1, removed: false });
        assert_eq!(decide(true, Some(0), None), TrackAction::Nothing);
        assert_eq!(decide(false, None, None), TrackAction::Nothing);
    }

    #[test]
    fn rules_match_ids_or_field_paths() {
        let by_id = TrackRule {
            sharing_id: "s".into(),
            rule_index: 0,
            doctype: "d".into(),
            selector: None,
            values: vec!["a".into()],
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
