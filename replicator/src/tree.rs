//! Revision trees with CouchDB semantics.
//!
//! # Model
//!
//! A tree is the set of known revisions of one document, keyed by [`Rev`]. Each revision
//! records the revision of its parent (always one generation below) when the parent is known,
//! and its deleted flag when known. A revision without a parent is a root: either a generation-1
//! revision or one whose ancestors were stemmed away or never received. A revision known only
//! by id, as the ancestor of another one, has an unknown deleted flag.
//!
//! This flat model gives the trees `couch_key_tree:merge` gives once CouchDB has repaired
//! duplicated keys (`repair_tree`), without any recursion: every operation walks the map in key
//! order (a parent always sorts before its children, since its generation is lower), so a
//! 100,000-deep chain costs no stack. A revision id appears at most once, so the duplicate
//! chains CouchDB and PouchDB can build (`[(1,a→b),(3,c)] + (2,b→c→d)`) cannot exist here: the
//! path simply links `3-c` under `2-b`, giving the single chain `a→b→c→d`.
//!
//! # Merging
//!
//! [`RevTree::merge_path`] adds the revisions of a path (newest first, consecutive generations,
//! as `_revisions` lists them). The newest gets the given deleted flag, the others are known by
//! id only; a revision already known keeps its flag (CouchDB's `value_pref`: a revision is never
//! rewritten) and its parent. A known root gains the path's parent, which reconnects stemmed
//! roots ("stemming-induced conflicts" disappear when a longer history arrives).
//!
//! Outcome codes only matter for interactive edits (`new_edits=true`), where the path is always
//! `[new, parent]` and they agree with CouchDB. For replicated paths they can differ:
//!
//! * Nothing added (`[1→1a, (3,1aa)] + 1→1a→1aa`, which only reconnects): CouchDB says
//!   `new_leaf`, we say [`MergeOutcome::AlreadyKnown`], since no revision is new.
//! * Only ancestors added to a known revision (`[(3,c)] + (1,a→b→c)`): CouchDB says
//!   `internal_node`; we say [`MergeOutcome::NewBranch`] (revisions were added, and none extends
//!   a leaf). So an outcome other than `AlreadyKnown` does not mean the path's newest revision is
//!   new: check [`RevTree::contains`] before the merge for that.
//! * A path adding a chain under a leaf (`[1] + 1→2→3`) is a [`MergeOutcome::NewLeaf`], as in
//!   CouchDB; the decision looks at the nearest revision of the path that was known before.
//! * A revision claimed with a different parent than the one we know (impossible between honest
//!   peers, since ids hash their parent): CouchDB adds the path's older part as another root;
//!   we keep the known parent and ignore the path's revisions older than that point.
//! * Revisions that are not valid ids (generation 0, a hash that `Rev::from_str` would refuse or
//!   re-spell) end the path: they and everything older are ignored, so that every tree can be
//!   encoded and decoded. Ids parsed from the wire are always valid.
//!
//! # Stemming, winner, encoding
//!
//! [`RevTree::stem`] keeps, for every leaf, the leaf and its nearest ancestors up to `limit`
//! revisions, as CouchDB's `stem/2` and PouchDB's `stem` do. Like CouchDB, a kept revision keeps
//! its kept parent: in `1→2_0→(3,3_1), 1→2_1` stemmed to 2, `1-1` stays (it is within 2 of
//! `2-2_1`) and stays the parent of `2-2_0`, so `3-3`'s history still has 3 revisions; PouchDB
//! cuts that link instead. Only a lone chain is guaranteed to end up at most `limit` long. The winner is the first leaf in the
//! order descending by (not deleted, generation, hash bytes) (CouchDB's `to_doc_info_path`).
//! [`RevTree::encode`] is a flat JSON array, one `[pos, hash, parent index | null, flag]` entry
//! per revision in key order, flag `0` unknown, `1` live, `2` deleted.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::rev::Rev;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The path added a revision that extends an existing leaf (or the tree was empty).
    NewLeaf,
    /// The path added a revision that does not extend a leaf: a new branch or a new root.
    NewBranch,
    /// Every revision of the path was already known (the tree may still gain a parent link).
    AlreadyKnown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub rev: Rev,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document update conflict")]
pub struct EditConflict;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt revision tree encoding")]
pub struct DecodeError;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Node {
    /// The parent revision (generation `pos - 1`), always present in the tree when set.
    parent: Option<Rev>,
    /// `None`: known only by id, as an ancestor.
    deleted: Option<bool>,
    /// How many revisions of the tree have this one as parent (derived, kept in step).
    children: usize,
}

/// A leaf in the index of leaves: ascending order is winner order.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LeafKey {
    live: bool,
    rev: Rev,
}

impl Ord for LeafKey {
    /// Descending by (not deleted, generation, hash bytes): the winner sorts first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.live, &other.rev).cmp(&(self.live, &self.rev))
    }
}

impl PartialOrd for LeafKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The revision tree of one document. See the module documentation.
///
/// Besides the revisions, the tree keeps its leaves indexed in winner order, kept in step by
/// every change, so that merging a path costs O(path × log n) and the winner O(log n), however
/// many branches the document has: a document with 20,000 conflicting branches costs no more
/// per merge than one with two.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevTree {
    nodes: BTreeMap<Rev, Node>,
    /// Derived from `nodes`: every revision without children.
    leaves: BTreeSet<LeafKey>,
}

/// Flag values of the encoding.
const FLAG_UNKNOWN: u8 = 0;
const FLAG_LIVE: u8 = 1;
const FLAG_DELETED: u8 = 2;

/// A revision id we can store: positive generation, and a hash that parses back to itself.
fn valid_rev(rev: &Rev) -> bool {
    (1..=crate::rev::MAX_POS).contains(&rev.pos)
        && format!("1-{}", rev.hash).parse::<Rev>().is_ok_and(|parsed| parsed.hash == rev.hash)
}

/// Winner-first order: descending by (not deleted, pos, hash bytes).
fn winner_order(a: &Leaf, b: &Leaf) -> Ordering {
    (!b.deleted, &b.rev).cmp(&(!a.deleted, &a.rev))
}

fn leaf_key(rev: &Rev, node: &Node) -> LeafKey {
    LeafKey { live: !node.deleted.unwrap_or(false), rev: rev.clone() }
}

impl RevTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of revisions known (leaves and ancestors).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the revision is known, as a leaf or as an ancestor.
    pub fn contains(&self, rev: &Rev) -> bool {
        self.nodes.contains_key(rev)
    }

    /// Every known revision, in ascending order.
    pub fn revs(&self) -> impl Iterator<Item = &Rev> + '_ {
        self.nodes.keys()
    }

    /// The parent of a known revision; `None` for a root or an unknown revision.
    pub fn parent(&self, rev: &Rev) -> Option<&Rev> {
        self.nodes.get(rev).and_then(|n| n.parent.as_ref())
    }

    /// The deleted flag of a revision; `None` if the revision is unknown or known only by id.
    pub fn deleted(&self, rev: &Rev) -> Option<bool> {
        self.nodes.get(rev).and_then(|n| n.deleted)
    }

    /// How many revisions of `path` can be merged: it stops at the first invalid id or gap in
    /// the generations, and after a known revision whose known parent differs from the path's.
    fn usable_len(&self, path: &[Rev]) -> usize {
        let mut len = 0;
        let mut newer: Option<&Rev> = None;
        for (i, rev) in path.iter().enumerate() {
            if !valid_rev(rev) {
                break;
            }
            if let Some(newer) = newer {
                let consecutive = newer.pos.checked_sub(1) == Some(rev.pos);
                debug_assert!(consecutive, "path is not consecutive at {newer} -> {rev}");
                if !consecutive {
                    break;
                }
            }
            len = i + 1;
            let known_parent = self.nodes.get(rev).and_then(|n| n.parent.as_ref());
            if let (Some(known), Some(older)) = (known_parent, path.get(i + 1)) {
                if known != older {
                    break;
                }
            }
            newer = Some(rev);
        }
        len
    }

    /// Merges a path (newest first, consecutive generations): see the module documentation.
    pub fn merge_path(&mut self, path: &[Rev], deleted: bool) -> MergeOutcome {
        self.merge(path, deleted).0
    }

    /// [`RevTree::merge_path`], also telling whether the tree changed at all (a revision, a
    /// parent link or a deleted flag added): `false` means the merge was a no-op.
    pub fn merge(&mut self, path: &[Rev], deleted: bool) -> (MergeOutcome, bool) {
        let mut changed = false;
        let path = path.get(..self.usable_len(path)).unwrap_or_default();
        let outcome = match path.iter().position(|r| !self.nodes.contains_key(r)) {
            None => MergeOutcome::AlreadyKnown,
            Some(newest_added) => {
                let known_ancestor = path.iter().skip(newest_added + 1).find_map(|r| self.nodes.get(r));
                match known_ancestor {
                    Some(node) if node.children == 0 => MergeOutcome::NewLeaf,
                    Some(_) => MergeOutcome::NewBranch,
                    None if self.nodes.is_empty() => MergeOutcome::NewLeaf,
                    None => MergeOutcome::NewBranch,
                }
            }
        };
        // Oldest first, so that every parent is in the tree when its child is linked.
        for (i, rev) in path.iter().enumerate().rev() {
            let parent = path.get(i + 1);
            let flag = (i == 0).then_some(deleted);
            let linked = match self.nodes.get_mut(rev) {
                Some(node) => {
                    if node.deleted.is_none() && flag.is_some() {
                        if node.children == 0 {
                            let old = leaf_key(rev, node);
                            node.deleted = flag;
                            self.leaves.remove(&old);
                            self.leaves.insert(leaf_key(rev, node));
                        } else {
                            node.deleted = flag;
                        }
                        changed = true;
                    }
                    if node.parent.is_none() && parent.is_some() {
                        node.parent = parent.cloned();
                        true
                    } else {
                        false
                    }
                }
                None => {
                    let node = Node { parent: parent.cloned(), deleted: flag, children: 0 };
                    self.leaves.insert(leaf_key(rev, &node));
                    self.nodes.insert(rev.clone(), node);
                    changed = true;
                    parent.is_some()
                }
            };
            if linked {
                changed = true;
                if let Some(p) = parent {
                    if let Some(node) = self.nodes.get_mut(p) {
                        if node.children == 0 {
                            self.leaves.remove(&leaf_key(p, node));
                        }
                        node.children += 1;
                    }
                }
            }
        }
        (outcome, changed)
    }

    /// Keeps, for every leaf, the leaf and its ancestors up to `limit` revisions in all (a limit
    /// of 0 counts as 1); drops every other revision. A kept revision whose parent is dropped
    /// becomes a root. Returns the dropped revisions, ascending.
    pub fn stem(&mut self, limit: usize) -> Vec<Rev> {
        let limit = limit.max(1);
        if self.nodes.len() <= limit {
            return Vec::new();
        }
        // Descending key order visits children before parents; a revision's budget is how many
        // more revisions (itself included) the nearest-budget leaf below it may keep.
        let mut removed = Vec::new();
        {
            let mut budget: std::collections::HashMap<&Rev, usize> = Default::default();
            for (rev, node) in self.nodes.iter().rev() {
                let own = if node.children == 0 { limit } else { budget.get(rev).copied().unwrap_or(0) };
                if own == 0 {
                    removed.push(rev.clone());
                    continue;
                }
                if let (Some(parent), true) = (&node.parent, own > 1) {
                    let entry = budget.entry(parent).or_insert(0);
                    *entry = (*entry).max(own - 1);
                }
            }
        }
        if removed.is_empty() {
            return removed;
        }
        removed.reverse();
        for node in self.nodes.values_mut() {
            if node.parent.as_ref().is_some_and(|p| removed.binary_search(p).is_ok()) {
                node.parent = None;
            }
        }
        for rev in &removed {
            let parent = self.nodes.remove(rev).and_then(|n| n.parent);
            if let Some(p) = parent.and_then(|p| self.nodes.get_mut(&p)) {
                p.children = p.children.saturating_sub(1);
            }
        }
        // Stemming already visits every revision: rebuilding the index costs no more.
        self.index_leaves();
        removed
    }

    fn index_leaves(&mut self) {
        self.leaves = self.nodes.iter().filter(|(_, n)| n.children == 0).map(|(rev, n)| leaf_key(rev, n)).collect();
    }

    /// The leaves, winner first.
    fn leaf_iter(&self) -> impl Iterator<Item = Leaf> + '_ {
        self.leaves.iter().map(|k| Leaf { rev: k.rev.clone(), deleted: !k.live })
    }

    /// Number of leaves (the winner and every conflict, deleted ones included).
    pub fn leaf_count(&self) -> usize {
        self.leaves.len()
    }

    /// The leaves, winner first (descending by not deleted, generation, hash bytes).
    pub fn leaves(&self) -> Vec<Leaf> {
        self.leaf_iter().collect()
    }

    /// The winning leaf; `None` for an empty tree.
    pub fn winner(&self) -> Option<Leaf> {
        self.leaf_iter().next()
    }

    pub fn is_leaf(&self, rev: &Rev) -> bool {
        self.nodes.get(rev).is_some_and(|n| n.children == 0)
    }

    /// Whether the document is deleted, i.e. its winner is (false for an empty tree).
    pub fn is_deleted(&self) -> bool {
        self.winner().is_some_and(|w| w.deleted)
    }

    /// Non-winning live leaves, winner order (`_conflicts`).
    pub fn conflicts(&self) -> Vec<Rev> {
        self.leaves().into_iter().skip(1).filter(|l| !l.deleted).map(|l| l.rev).collect()
    }

    /// Non-winning deleted leaves, winner order (`_deleted_conflicts`).
    pub fn deleted_conflicts(&self) -> Vec<Rev> {
        self.leaves().into_iter().skip(1).filter(|l| l.deleted).map(|l| l.rev).collect()
    }

    /// The chain from `rev` up to its root, newest first (for `_revisions`); `None` if unknown.
    pub fn history(&self, rev: &Rev) -> Option<Vec<Rev>> {
        let mut node = self.nodes.get(rev)?;
        let mut chain = vec![rev.clone()];
        while let Some(parent) = &node.parent {
            let Some(next) = self.nodes.get(parent) else {
                break;
            };
            chain.push(parent.clone());
            node = next;
        }
        Some(chain)
    }

    /// The leaves descending from `rev` (`rev` itself if it is a leaf), winner first; empty if
    /// `rev` is unknown.
    pub fn latest(&self, rev: &Rev) -> Vec<Rev> {
        let Some(node) = self.nodes.get(rev) else {
            return Vec::new();
        };
        if node.children == 0 {
            return vec![rev.clone()];
        }
        let Some(next_pos) = rev.pos.checked_add(1) else {
            return Vec::new();
        };
        let mut descendants: HashSet<&Rev> = HashSet::from([rev]);
        let mut deepest = rev.pos;
        let mut leaves = Vec::new();
        for (r, n) in self.nodes.range(Rev::new(next_pos, "")..) {
            if r.pos > deepest.saturating_add(1) {
                break;
            }
            if n.parent.as_ref().is_some_and(|p| descendants.contains(p)) {
                descendants.insert(r);
                deepest = r.pos;
                if n.children == 0 {
                    leaves.push(Leaf { rev: r.clone(), deleted: n.deleted.unwrap_or(false) });
                }
            }
        }
        leaves.sort_by(winner_order);
        leaves.into_iter().map(|l| l.rev).collect()
    }

    /// `_revs_diff` for this document: (missing, possible_ancestors). Missing are the requested
    /// revisions not in the tree (deduplicated, request order); possible ancestors are the
    /// leaves (deleted included) below the highest missing generation, descending.
    pub fn revs_diff(&self, revs: &[Rev]) -> (Vec<Rev>, Vec<Rev>) {
        let mut seen = HashSet::new();
        let missing: Vec<Rev> = revs.iter().filter(|r| !self.contains(r) && seen.insert(*r)).cloned().collect();
        let Some(max_pos) = missing.iter().map(|r| r.pos).max() else {
            return (missing, Vec::new());
        };
        let mut ancestors: Vec<Rev> = self.leaf_iter().map(|l| l.rev).filter(|r| r.pos < max_pos).collect();
        ancestors.sort_by(|a, b| b.cmp(a));
        (missing, ancestors)
    }

    /// The parent of an interactive edit (`new_edits=true`): with no `_rev`, `None` for a new
    /// document, or the winning deleted leaf when recreating a deleted document; with a `_rev`,
    /// that revision if it is a leaf. Anything else is a conflict.
    pub fn edit_parent(&self, given: Option<&Rev>, deleting: bool) -> Result<Option<Rev>, EditConflict> {
        match given {
            None => match self.winner() {
                None => Ok(None),
                Some(w) if w.deleted && !deleting => Ok(Some(w.rev)),
                Some(_) => Err(EditConflict),
            },
            Some(rev) if self.is_leaf(rev) => Ok(Some(rev.clone())),
            Some(_) => Err(EditConflict),
        }
    }

    /// A compact flat encoding: see the module documentation.
    pub fn encode(&self) -> Vec<u8> {
        let mut index = std::collections::HashMap::with_capacity(self.nodes.len());
        let mut entries = Vec::with_capacity(self.nodes.len());
        for (i, (rev, node)) in self.nodes.iter().enumerate() {
            index.insert(rev, i);
            let flag = match node.deleted {
                None => FLAG_UNKNOWN,
                Some(false) => FLAG_LIVE,
                Some(true) => FLAG_DELETED,
            };
            let parent = node.parent.as_ref().and_then(|p| index.get(p).copied());
            entries.push((rev.pos, rev.hash.as_str(), parent, flag));
        }
        // Serialising integers and strings into a Vec cannot fail.
        serde_json::to_vec(&entries).unwrap_or_default()
    }

    /// Decodes [`RevTree::encode`]'s output, checking every entry: valid ids in strictly
    /// ascending order, parents pointing to an earlier entry one generation below, known flags.
    /// A leaf whose flag is unknown (which merging never produces) is accepted, read as live.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        type Entry = (u64, String, Option<u64>, u8);
        let entries: Vec<Entry> = serde_json::from_slice(bytes).map_err(|_| DecodeError)?;
        let mut revs: Vec<Rev> = Vec::with_capacity(entries.len());
        let mut nodes = BTreeMap::new();
        for (pos, hash, parent, flag) in entries {
            let rev = Rev { pos, hash };
            if !valid_rev(&rev) || revs.last().is_some_and(|prev| *prev >= rev) {
                return Err(DecodeError);
            }
            let deleted = match flag {
                FLAG_UNKNOWN => None,
                FLAG_LIVE => Some(false),
                FLAG_DELETED => Some(true),
                _ => return Err(DecodeError),
            };
            let parent = match parent {
                None => None,
                Some(i) => {
                    let p = usize::try_from(i).ok().and_then(|i| revs.get(i)).ok_or(DecodeError)?;
                    if p.pos.checked_add(1) != Some(pos) {
                        return Err(DecodeError);
                    }
                    Some(p.clone())
                }
            };
            if let Some(p) = &parent {
                let parent_node: &mut Node = nodes.get_mut(p).ok_or(DecodeError)?;
                parent_node.children += 1;
            }
            nodes.insert(rev.clone(), Node { parent, deleted, children: 0 });
            revs.push(rev);
        }
        let mut tree = RevTree { nodes, leaves: BTreeSet::new() };
        tree.index_leaves();
        Ok(tree)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Rev {
        s.parse().unwrap()
    }

    fn revs(list: &[&str]) -> Vec<Rev> {
        list.iter().map(|s| r(s)).collect()
    }

    /// A path from its first generation and its hashes OLDEST first (as trees are drawn),
    /// returned newest first as `merge_path` wants it.
    fn chain(start: u64, hashes: &str) -> Vec<Rev> {
        let mut path: Vec<Rev> =
            hashes.split_whitespace().enumerate().map(|(i, h)| Rev::new(start + i as u64, h)).collect();
        path.reverse();
        path
    }

    /// A tree from live paths `(start, "oldest … newest")`, merged in order.
    fn tree(paths: &[(u64, &str)]) -> RevTree {
        let mut t = RevTree::new();
        for (start, hashes) in paths {
            t.merge_path(&chain(*start, hashes), false);
        }
        t
    }

    /// The structure: every revision, with `<parent` when it has one, ascending.
    fn shape(t: &RevTree) -> Vec<String> {
        t.revs()
            .map(|rev| match t.parent(rev) {
                Some(p) => format!("{rev}<{}", p.hash),
                None => rev.to_string(),
            })
            .collect()
    }

    fn merged(paths: &[(u64, &str)], path: (u64, &str)) -> (RevTree, MergeOutcome) {
        let mut t = tree(paths);
        let outcome = t.merge_path(&chain(path.0, path.1), false);
        (t, outcome)
    }

    // ---- CouchDB couch_key_tree merge cases (generations 1-based) ----

    #[test]
    fn merging_into_an_empty_tree_gives_the_path_as_a_new_leaf() {
        let (t, outcome) = merged(&[], (1, "1 1a"));
        assert_eq!(outcome, MergeOutcome::NewLeaf);
        assert_eq!(shape(&t), ["1-1", "2-1a<1"]);
        assert_eq!(t.deleted(&r("1-1")), None);
        assert_eq!(t.deleted(&r("2-1a")), Some(false));
    }

    #[test]
    fn merging_a_tree_into_itself_changes_nothing() {
        let (t, outcome) = merged(&[(1, "1 1a")], (1, "1 1a"));
        assert_eq!(outcome, MergeOutcome::AlreadyKnown);
        assert_eq!(t, tree(&[(1, "1 1a")]));
    }

    #[test]
    fn merging_a_prefix_of_the_tree_changes_nothing() {
        let (t, outcome) = merged(&[(1, "1"), (1, "2")], (1, "1"));
        assert_eq!(outcome, MergeOutcome::AlreadyKnown);
        assert_eq!(shape(&t), ["1-1", "1-2"]);
    }

    #[test]
    fn merging_an_unrelated_root_makes_a_new_branch() {
        let (t, outcome) = merged(&[(1, "1"), (1, "2")], (1, "3"));
        assert_eq!(outcome, MergeOutcome::NewBranch);
        assert_eq!(shape(&t), ["1-1", "1-2", "1-3"]);
        assert_eq!(t.winner().unwrap().rev, r("1-3"));
    }

    #[test]
    fn merging_a_child_path_into_itself_changes_nothing() {
        let base = [(1, "1 1a"), (1, "1 1b")];
        for path in [(1, "1 1a"), (1, "1 1b"), (2, "1a"), (1, "1")] {
            let (t, outcome) = merged(&base, path);
            assert_eq!(outcome, MergeOutcome::AlreadyKnown, "{path:?}");
            assert_eq!(shape(&t), shape(&tree(&base)));
        }
    }

    #[test]
    fn merging_each_leaf_path_of_a_tree_into_it_changes_nothing() {
        let base = [(1, "1 1a 1aa"), (1, "1 1b 1bb"), (1, "1 1b 1bc")];
        let mut t = tree(&base);
        for leaf in t.leaves() {
            let path = t.history(&leaf.rev).unwrap();
            assert_eq!(t.merge_path(&path, false), MergeOutcome::AlreadyKnown);
        }
        assert_eq!(t, tree(&base));
    }

    #[test]
    fn merging_an_odd_length_path_extends_a_leaf() {
        let (t, outcome) = merged(&[(1, "1 1a"), (1, "1 1b")], (1, "1 1a 1aa"));
        assert_eq!(outcome, MergeOutcome::NewLeaf);
        assert_eq!(shape(&t), ["1-1", "2-1a<1", "2-1b<1", "3-1aa<1a"]);
    }

    #[test]
    fn merging_a_stem_that_is_a_known_node_changes_nothing() {
        let (t, outcome) = merged(&[(1, "1 1a"), (1, "1 1b")], (2, "1a"));
        assert_eq!(outcome, MergeOutcome::AlreadyKnown);
        assert_eq!(shape(&t), ["1-1", "2-1a<1", "2-1b<1"]);
    }

    #[test]
    fn merging_a_stem_at_a_deeper_level_changes_nothing() {
        let base = [(1, "1 1a"), (1, "1 1b 1bb")];
        let (t, outcome) = merged(&base, (3, "1bb"));
        assert_eq!(outcome, MergeOutcome::AlreadyKnown);
        assert_eq!(t, tree(&base));
    }

    #[test]
    fn merging_a_deeper_stem_into_a_stemmed_forest_changes_nothing() {
        let base = [(2, "1a"), (2, "1b 1bb")];
        let (t, outcome) = merged(&base, (3, "1bb"));
        assert_eq!(outcome, MergeOutcome::AlreadyKnown);
        assert_eq!(shape(&t), ["2-1a", "2-1b", "3-1bb<1b"]);
    }

    #[test]
    fn merging_a_deeper_or_larger_stem_into_a_single_tree_changes_nothing() {
        for stem in [(3, "1aa"), (2, "1a 1aa")] {
            let (t, outcome) = merged(&[(1, "1 1a 1aa")], stem);
            assert_eq!(outcome, MergeOutcome::AlreadyKnown);
            assert_eq!(shape(&t), ["1-1", "2-1a<1", "3-1aa<1a"]);
        }
    }

    #[test]
    fn merging_stems_into_stems_changes_nothing() {
        let (t, outcome) = merged(&[(2, "1a 1aa")], (3, "1aa"));
        assert_eq!(outcome, MergeOutcome::AlreadyKnown);
        assert_eq!(shape(&t), ["2-1a", "3-1aa<1a"]);
    }

    #[test]
    fn merging_a_disjoint_stem_creates_a_conflict() {
        let (t, outcome) = merged(&[(1, "1 1a")], (3, "1aa"));
        assert_eq!(outcome, MergeOutcome::NewBranch);
        assert_eq!(shape(&t), ["1-1", "2-1a<1", "3-1aa"]);
        assert_eq!(t.conflicts(), revs(&["2-1a"]));
    }

    #[test]
    fn a_longer_history_reconnects_a_stemming_induced_conflict() {
        let (t, outcome) = merged(&[(1, "1 1a"), (3, "1aa")], (1, "1 1a 1aa"));
        // CouchDB says new_leaf; nothing is new here, so we say AlreadyKnown.
        assert_eq!(outcome, MergeOutcome::AlreadyKnown);
        assert_eq!(shape(&t), ["1-1", "2-1a<1", "3-1aa<1a"]);
        assert!(t.conflicts().is_empty());
        assert_eq!(t.leaves().len(), 1);
    }

    #[test]
    fn couchdb_902_extending_one_branch_is_a_new_leaf_and_keeps_known_values() {
        let mut t = RevTree::new();
        t.merge_path(&chain(1, "foo foo2"), false);
        t.merge_path(&chain(1, "foo foo3"), true);
        let outcome = t.merge_path(&chain(1, "foo foo3 foo4"), false);
        assert_eq!(outcome, MergeOutcome::NewLeaf);
        assert_eq!(shape(&t), ["1-foo", "2-foo2<foo", "2-foo3<foo", "3-foo4<foo3"]);
        assert_eq!(t.deleted(&r("2-foo3")), Some(true));
    }

    #[test]
    fn a_known_revision_is_never_rewritten() {
        let mut t = RevTree::new();
        t.merge_path(&chain(1, "a"), false);
        assert_eq!(t.merge_path(&chain(1, "a"), true), MergeOutcome::AlreadyKnown);
        assert!(!t.is_deleted());
    }

    #[test]
    fn an_ancestor_known_by_id_gets_its_flag_when_sent_itself() {
        let mut t = tree(&[(1, "a b")]);
        assert_eq!(t.deleted(&r("1-a")), None);
        t.merge_path(&chain(1, "a"), true);
        assert_eq!(t.deleted(&r("1-a")), Some(true));
        assert!(!t.is_deleted());
    }

    #[test]
    fn a_new_leaf_when_branches_exist_is_a_new_leaf() {
        let (_, outcome) = merged(&[(1, "1 2a"), (1, "1 2b")], (1, "1 2b 3"));
        assert_eq!(outcome, MergeOutcome::NewLeaf);
    }

    #[test]
    fn a_new_branch_is_the_same_tree_in_both_orders() {
        let (a, oa) = merged(&[(1, "1 2a")], (1, "1 2b"));
        let (b, ob) = merged(&[(1, "1 2b")], (1, "1 2a"));
        assert_eq!((oa, ob), (MergeOutcome::NewBranch, MergeOutcome::NewBranch));
        assert_eq!(a, b);
    }

    #[test]
    fn a_chain_added_under_a_leaf_is_a_new_leaf() {
        let (t, outcome) = merged(&[(1, "a")], (1, "a b c"));
        assert_eq!(outcome, MergeOutcome::NewLeaf);
        assert_eq!(shape(&t), ["1-a", "2-b<a", "3-c<b"]);
    }

    #[test]
    fn a_path_starting_before_the_stored_root_that_adds_a_leaf_is_a_new_leaf() {
        let (t, outcome) = merged(&[(3, "c d")], (1, "a b c d e"));
        assert_eq!(outcome, MergeOutcome::NewLeaf);
        assert_eq!(shape(&t), ["1-a", "2-b<a", "3-c<b", "4-d<c", "5-e<d"]);
    }

    #[test]
    fn a_path_adding_only_ancestors_is_a_new_branch_and_keeps_the_leaf() {
        let (t, outcome) = merged(&[(3, "c")], (1, "a b c"));
        // CouchDB says internal_node: see the module documentation.
        assert_eq!(outcome, MergeOutcome::NewBranch);
        assert_eq!(shape(&t), ["1-a", "2-b<a", "3-c<b"]);
        assert_eq!(t.leaves().len(), 1);
    }

    #[test]
    fn duplicate_roots_are_repaired_into_a_single_chain() {
        let (t, outcome) = merged(&[(1, "a b"), (3, "c")], (2, "b c d"));
        assert_eq!(outcome, MergeOutcome::NewLeaf);
        assert_eq!(shape(&t), ["1-a", "2-b<a", "3-c<b", "4-d<c"]);
        assert_eq!(t.history(&r("4-d")).unwrap(), revs(&["4-d", "3-c", "2-b", "1-a"]));
    }

    #[test]
    fn a_revision_claimed_under_another_parent_keeps_its_known_parent() {
        let (t, outcome) = merged(&[(1, "a b")], (1, "x b c"));
        assert_eq!(outcome, MergeOutcome::NewLeaf);
        assert_eq!(shape(&t), ["1-a", "2-b<a", "3-c<b"]);
        assert!(!t.contains(&r("1-x")));
    }

    #[test]
    fn invalid_revision_ids_end_the_path() {
        let mut t = RevTree::new();
        let path = vec![Rev::new(3, "c"), Rev::new(2, "b b"), Rev::new(1, "a")];
        assert_eq!(t.merge_path(&path, false), MergeOutcome::NewLeaf);
        assert_eq!(shape(&t), ["3-c"]);
        let upper = Rev::new(1, "ABCDEF0123456789ABCDEF0123456789");
        assert_eq!(t.merge_path(&[upper], false), MergeOutcome::AlreadyKnown);
        assert_eq!(t.merge_path(&[Rev::new(0, "z")], false), MergeOutcome::AlreadyKnown);
        assert_eq!(t.merge_path(&[], false), MergeOutcome::AlreadyKnown);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn merging_a_deleted_child_of_a_leaf_is_a_new_leaf_and_deletes_the_document() {
        let mut t = tree(&[(1, "a")]);
        assert_eq!(t.merge_path(&chain(1, "a b"), true), MergeOutcome::NewLeaf);
        assert!(t.is_deleted());
        assert_eq!(t.winner().unwrap(), Leaf { rev: r("2-b"), deleted: true });
    }

    #[test]
    fn no_history_inserts_make_separate_roots() {
        let mut t = tree(&[(1, "x")]);
        assert_eq!(t.merge_path(&[r("2-y")], true), MergeOutcome::NewBranch);
        assert_eq!(t.winner().unwrap().rev, r("1-x"));
        assert!(!t.is_deleted());
        assert_eq!(t.deleted_conflicts(), revs(&["2-y"]));

        let mut t = tree(&[(1, "x")]);
        t.merge_path(&[r("2-y")], false);
        assert_eq!(t.winner().unwrap().rev, r("2-y"));
        assert_eq!(t.conflicts(), revs(&["1-x"]));
    }

    // ---- find_missing / revs_diff ----

    #[test]
    fn revs_diff_finds_nothing_missing_among_known_revisions() {
        let t = tree(&[(1, "1 1a"), (1, "1 1b")]);
        assert_eq!(t.revs_diff(&revs(&["1-1", "2-1a"])), (vec![], vec![]));
    }

    #[test]
    fn revs_diff_lists_unknown_revisions_as_missing() {
        let t = tree(&[(1, "1 1a"), (1, "1 1b")]);
        let (missing, ancestors) = t.revs_diff(&revs(&["1-10", "101-x"]));
        assert_eq!(missing, revs(&["1-10", "101-x"]));
        assert_eq!(ancestors, revs(&["2-1b", "2-1a"]));
    }

    #[test]
    fn revs_diff_lists_stemmed_away_revisions_as_missing() {
        let t = tree(&[(2, "1a 1aa")]);
        let (missing, ancestors) = t.revs_diff(&revs(&["1-1", "2-1a", "3-1aa"]));
        assert_eq!(missing, revs(&["1-1"]));
        assert!(ancestors.is_empty());
    }

    #[test]
    fn revs_diff_gives_possible_ancestors_below_the_highest_missing_generation() {
        // The example from the replication protocol documentation.
        let bb = "3-bb00000000000000000000000000000a";
        let ten = "4-10000000000000000000000000000000";
        let six = "5-06000000000000000000000000000000";
        let mut t = tree(&[(4, "10000000000000000000000000000000")]);
        t.merge_path(&[r("2-other")], true);
        let (missing, ancestors) = t.revs_diff(&revs(&[bb, ten, six]));
        assert_eq!(missing, revs(&[bb, six]));
        assert_eq!(ancestors, revs(&[ten, "2-other"]));
        let (missing, ancestors) = t.revs_diff(&revs(&[bb]));
        assert_eq!(missing, revs(&[bb]));
        assert_eq!(ancestors, revs(&["2-other"]));
    }

    #[test]
    fn revs_diff_deduplicates_missing_revisions_in_request_order() {
        let t = tree(&[(1, "a")]);
        let (missing, ancestors) = t.revs_diff(&revs(&["3-c", "1-a", "2-b", "3-c"]));
        assert_eq!(missing, revs(&["3-c", "2-b"]));
        assert_eq!(ancestors, revs(&["1-a"]));
        assert_eq!(RevTree::new().revs_diff(&revs(&["1-a"])), (revs(&["1-a"]), vec![]));
        assert_eq!(t.revs_diff(&[]), (vec![], vec![]));
    }

    // ---- stemming ----

    #[test]
    fn stemming_with_a_limit_at_least_the_depth_changes_nothing() {
        for limit in [3, 4, 1000] {
            let mut t = tree(&[(1, "1 1a 1aa")]);
            assert!(t.stem(limit).is_empty());
            assert_eq!(t, tree(&[(1, "1 1a 1aa")]));
        }
    }

    #[test]
    fn stemming_a_chain_to_one_keeps_only_the_leaf() {
        let mut t = tree(&[(1, "1 1a 1aa")]);
        assert_eq!(t.stem(1), revs(&["1-1", "2-1a"]));
        assert_eq!(shape(&t), ["3-1aa"]);
        assert_eq!(t.deleted(&r("3-1aa")), Some(false));
    }

    #[test]
    fn stemming_with_a_limit_of_zero_acts_as_one() {
        let mut t = tree(&[(1, "1 1a 1aa")]);
        t.stem(0);
        assert_eq!(shape(&t), ["3-1aa"]);
    }

    #[test]
    fn stemming_a_chain_to_two_keeps_the_leaf_and_its_parent_as_a_root() {
        let mut t = tree(&[(1, "1 1a 1aa")]);
        assert_eq!(t.stem(2), revs(&["1-1"]));
        assert_eq!(shape(&t), ["2-1a", "3-1aa<1a"]);
        assert_eq!(t.history(&r("3-1aa")).unwrap(), revs(&["3-1aa", "2-1a"]));
    }

    #[test]
    fn stemming_above_a_fork_splits_the_tree_into_roots() {
        let mut t = tree(&[(1, "a b"), (1, "a c d e")]);
        assert_eq!(t.stem(2), revs(&["2-c"]));
        assert_eq!(shape(&t), ["1-a", "2-b<a", "3-d", "4-e<d"]);
    }

    #[test]
    fn stemming_branches_to_one_keeps_only_the_leaves() {
        let mut t = tree(&[(1, "1 2_0 3"), (1, "1 2_0 3_1"), (1, "1 2_1")]);
        assert_eq!(t.stem(1), revs(&["1-1", "2-2_0"]));
        assert_eq!(shape(&t), ["2-2_1", "3-3", "3-3_1"]);
    }

    #[test]
    fn stemming_branches_to_two_keeps_a_root_still_needed_by_a_short_branch_attached() {
        // `1-1` is within two of `2-2_1`, so it stays, and stays the parent of `2-2_0` (as in
        // CouchDB's stem/2; PouchDB cuts that link, leaving `3-3`'s history at two revisions).
        let base = [(1, "1 2_0 3"), (1, "1 2_0 3_1"), (1, "1 2_1")];
        let mut t = tree(&base);
        assert!(t.stem(2).is_empty());
        assert_eq!(t, tree(&base));
        assert_eq!(t.history(&r("3-3")).unwrap().len(), 3);
    }

    #[test]
    fn stemming_after_a_merge_drops_the_oldest_revision() {
        let (mut t, _) = merged(&[(1, "1 2_0")], (2, "2_0 3"));
        assert_eq!(t.stem(2), revs(&["1-1"]));
        assert_eq!(shape(&t), ["2-2_0", "3-3<2_0"]);
    }

    #[test]
    fn merging_unstemmed_recovers_as_much_as_possible() {
        let (t, _) = merged(&[(2, "2_1"), (3, "3"), (3, "3_1")], (1, "1 2_0 3"));
        assert_eq!(shape(&t), ["1-1", "2-2_0<1", "2-2_1", "3-3<2_0", "3-3_1"]);
    }

    #[test]
    fn stemming_a_deep_chain_needs_no_recursion() {
        let hashes: Vec<String> = (0..100_000).map(|i| format!("h{i}")).collect();
        let mut t = tree(&[(1, &hashes.join(" "))]);
        assert_eq!(t.len(), 100_000);
        assert_eq!(t.history(&Rev::new(100_000, "h99999")).unwrap().len(), 100_000);
        assert_eq!(t.latest(&r("1-h0")), vec![Rev::new(100_000, "h99999")]);
        let decoded = RevTree::decode(&t.encode()).unwrap();
        assert_eq!(decoded, t);
        assert_eq!(t.stem(1000).len(), 99_000);
        assert_eq!(t.len(), 1000);
        let leaf = Rev::new(100_000, "h99999");
        let next = Rev::new(100_001, "next");
        assert_eq!(t.merge_path(&[next, leaf], false), MergeOutcome::NewLeaf);
        drop(decoded);
    }

    // ---- winner, conflicts, deletion ----

    #[test]
    fn a_higher_generation_wins_numerically() {
        let mut t = tree(&[(1, "z")]);
        t.merge_path(&[r("9-z")], false);
        t.merge_path(&[r("10-a")], false);
        assert_eq!(t.winner().unwrap().rev, r("10-a"));
        assert_eq!(t.conflicts(), revs(&["9-z", "1-z"]));
    }

    #[test]
    fn a_live_leaf_beats_a_deleted_deeper_one() {
        let mut t = RevTree::new();
        t.merge_path(&chain(2, "z z"), true);
        t.merge_path(&[r("2-a")], false);
        assert_eq!(t.winner().unwrap(), Leaf { rev: r("2-a"), deleted: false });
        assert!(!t.is_deleted());
        assert!(t.conflicts().is_empty());
        assert_eq!(t.deleted_conflicts(), revs(&["3-z"]));
    }

    #[test]
    fn when_every_leaf_is_deleted_the_highest_wins_and_the_document_is_deleted() {
        let mut t = RevTree::new();
        t.merge_path(&chain(1, "x a"), true);
        t.merge_path(&chain(1, "x b"), true);
        assert_eq!(t.winner().unwrap(), Leaf { rev: r("2-b"), deleted: true });
        assert!(t.is_deleted());
        assert_eq!(t.deleted_conflicts(), revs(&["2-a"]));
        assert!(t.conflicts().is_empty());
    }

    #[test]
    fn hashes_compare_by_bytes_so_lowercase_beats_uppercase() {
        let t = tree(&[(2, "B"), (2, "a")]);
        assert_eq!(t.winner().unwrap().rev, r("2-a"));
    }

    #[test]
    fn leaves_come_winner_first_with_deleted_ones_last() {
        let mut t = tree(&[(1, "r a"), (1, "r b"), (1, "r c d")]);
        t.merge_path(&chain(3, "d e"), true);
        t.merge_path(&chain(2, "a f"), true);
        let leaves: Vec<(String, bool)> = t.leaves().into_iter().map(|l| (l.rev.to_string(), l.deleted)).collect();
        assert_eq!(leaves, [("2-b".to_string(), false), ("4-e".to_string(), true), ("3-f".to_string(), true),]);
        assert!(t.is_leaf(&r("2-b")));
        assert!(!t.is_leaf(&r("1-r")));
        assert!(!t.is_leaf(&r("9-nope")));
    }

    #[test]
    fn an_empty_tree_has_no_winner_and_is_not_deleted() {
        let t = RevTree::new();
        assert!(t.is_empty());
        assert_eq!(t.winner(), None);
        assert!(!t.is_deleted());
        assert!(t.leaves().is_empty() && t.conflicts().is_empty());
    }

    // ---- history and latest ----

    #[test]
    fn history_walks_up_to_the_root_newest_first() {
        let t = tree(&[(3, "c d"), (3, "c e f")]);
        assert_eq!(t.history(&r("5-f")).unwrap(), revs(&["5-f", "4-e", "3-c"]));
        assert_eq!(t.history(&r("3-c")).unwrap(), revs(&["3-c"]));
        assert_eq!(t.history(&r("1-a")), None);
    }

    #[test]
    fn latest_gives_the_leaves_below_a_revision_winner_first() {
        let mut t = tree(&[(1, "a b c"), (1, "a b d e"), (1, "a x")]);
        t.merge_path(&chain(3, "c z"), true);
        assert_eq!(t.latest(&r("2-b")), revs(&["4-e", "4-z"]));
        assert_eq!(t.latest(&r("1-a")), revs(&["4-e", "2-x", "4-z"]));
        assert_eq!(t.latest(&r("2-x")), revs(&["2-x"]));
        assert!(t.latest(&r("2-nope")).is_empty());
    }

    // ---- interactive edits ----

    #[test]
    fn a_new_document_has_no_parent() {
        assert_eq!(RevTree::new().edit_parent(None, false), Ok(None));
        assert_eq!(RevTree::new().edit_parent(None, true), Ok(None));
    }

    #[test]
    fn editing_an_existing_document_without_rev_conflicts() {
        let t = tree(&[(1, "a")]);
        assert_eq!(t.edit_parent(None, false), Err(EditConflict));
        assert_eq!(t.edit_parent(None, true), Err(EditConflict));
    }

    #[test]
    fn recreating_a_deleted_document_continues_from_the_deleted_winner() {
        let mut t = tree(&[(1, "a")]);
        t.merge_path(&chain(1, "a b"), true);
        assert_eq!(t.edit_parent(None, false), Ok(Some(r("2-b"))));
        assert_eq!(t.edit_parent(None, true), Err(EditConflict));
        let recreated = Rev::new(3, "c");
        assert_eq!(t.merge_path(&[recreated.clone(), r("2-b")], false), MergeOutcome::NewLeaf);
        assert!(!t.is_deleted());
        assert_eq!(t.winner().unwrap().rev, recreated);
    }

    #[test]
    fn editing_a_leaf_continues_from_it_and_anything_else_conflicts() {
        let mut t = tree(&[(1, "a b"), (1, "a c")]);
        t.merge_path(&chain(2, "c d"), true);
        assert_eq!(t.edit_parent(Some(&r("2-b")), false), Ok(Some(r("2-b"))));
        assert_eq!(t.edit_parent(Some(&r("3-d")), false), Ok(Some(r("3-d"))));
        assert_eq!(t.edit_parent(Some(&r("3-d")), true), Ok(Some(r("3-d"))));
        assert_eq!(t.edit_parent(Some(&r("1-a")), false), Err(EditConflict));
        assert_eq!(t.edit_parent(Some(&r("2-c")), true), Err(EditConflict));
        assert_eq!(t.edit_parent(Some(&r("7-z")), false), Err(EditConflict));
        assert_eq!(RevTree::new().edit_parent(Some(&r("1-a")), false), Err(EditConflict));
    }

    // ---- the index of leaves ----

    fn leaves_from_nodes(t: &RevTree) -> Vec<Leaf> {
        let mut leaves: Vec<Leaf> = t
            .nodes
            .iter()
            .filter(|(_, n)| n.children == 0)
            .map(|(rev, n)| Leaf { rev: rev.clone(), deleted: n.deleted.unwrap_or(false) })
            .collect();
        leaves.sort_by(winner_order);
        leaves
    }

    proptest::proptest! {
        #[test]
        fn the_index_of_leaves_follows_every_merge_and_stem(
            ops in proptest::collection::vec((1..6u64, proptest::collection::vec(0..3u8, 1..4), proptest::bool::ANY, 0..8usize), 1..40)
        ) {
            let mut t = RevTree::new();
            for (start, hashes, deleted, stem) in ops {
                // Newest first, hashes from a small alphabet so that paths meet.
                let path: Vec<Rev> = hashes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, h)| (start + hashes.len() as u64).checked_sub(i as u64 + 1).map(|pos| (pos, h)))
                    .filter(|(pos, _)| *pos > 0)
                    .map(|(pos, h)| Rev::new(pos, format!("h{h}")))
                    .collect();
                t.merge_path(&path, deleted);
                proptest::prop_assert_eq!(t.leaves(), leaves_from_nodes(&t));
                if stem > 0 && stem < 4 {
                    t.stem(stem);
                    proptest::prop_assert_eq!(t.leaves(), leaves_from_nodes(&t));
                }
                proptest::prop_assert_eq!(RevTree::decode(&t.encode()).unwrap(), t.clone());
            }
        }
    }

    #[test]
    fn twenty_thousand_conflicting_branches_merge_and_pick_the_couchdb_winner() {
        let mut t = RevTree::new();
        t.merge_path(&[r("1-root")], false);
        for i in 0..20_000u32 {
            let (outcome, changed) = t.merge(&[Rev::new(2, format!("{i:08x}")), r("1-root")], i % 7 == 0);
            assert_eq!(outcome, if i == 0 { MergeOutcome::NewLeaf } else { MergeOutcome::NewBranch });
            assert!(changed);
        }
        assert_eq!(t.leaf_count(), 20_000);
        // The highest live hash wins: 0x4e1f (19999) is deleted (19999 % 7 == 0), 0x4e1e is not.
        assert_eq!(t.winner().unwrap(), Leaf { rev: Rev::new(2, format!("{:08x}", 19_998)), deleted: false });
        assert_eq!(t.conflicts().len() + t.deleted_conflicts().len(), 19_999);
        assert_eq!(t.deleted_conflicts().len(), (0..20_000).filter(|i| i % 7 == 0).count());
        // Re-sending a known branch is a no-op.
        assert_eq!(
            t.merge(&[Rev::new(2, format!("{:08x}", 5)), r("1-root")], false),
            (MergeOutcome::AlreadyKnown, false)
        );
        assert_eq!(RevTree::decode(&t.encode()).unwrap(), t);
    }

    // ---- encoding ----

    #[test]
    fn encoding_round_trips_flags_parents_and_roots() {
        let mut t = tree(&[(1, "a b"), (3, "c")]);
        t.merge_path(&chain(3, "c d"), true);
        t.merge_path(&[r("1-z")], false);
        let bytes = t.encode();
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"[[1,"a",null,0],[1,"z",null,1],[2,"b",0,1],[3,"c",null,1],[4,"d",3,2]]"#
        );
        assert_eq!(RevTree::decode(&bytes).unwrap(), t);
        assert_eq!(RevTree::decode(b"[]").unwrap(), RevTree::new());
        assert_eq!(RevTree::new().encode(), b"[]");
    }

    #[test]
    fn decoding_rejects_malformed_input() {
        let bad: &[&str] = &[
            "",
            "{}",
            "null",
            "[1]",
            "[[1,\"a\",null]]",
            "[[1,\"a\",null,0,0]]",
            "[[1,\"a\",null,3]]",
            "[[1,\"a\",null,-1]]",
            "[[0,\"a\",null,1]]",
            "[[-1,\"a\",null,1]]",
            "[[1,\"\",null,1]]",
            "[[1,\"a b\",null,1]]",
            "[[1,\"ABCDEF0123456789ABCDEF0123456789\",null,1]]",
            "[[1,\"a\",null,1],[1,\"a\",null,1]]",
            "[[1,\"b\",null,1],[1,\"a\",null,1]]",
            "[[1,\"a\",0,1]]",
            "[[1,\"a\",null,0],[2,\"b\",1,1]]",
            "[[1,\"a\",null,0],[3,\"b\",0,1]]",
            "[[1,\"a\",null,0],[1,\"b\",0,1]]",
            "[[1,\"a\",null,0],[2,\"b\",18446744073709551615,1]]",
            "[[1,\"a\",null,0],[2,\"b\",1.0,1]]",
            "[[1,\"a\",null,1]] x",
        ];
        for input in bad {
            assert_eq!(RevTree::decode(input.as_bytes()), Err(DecodeError), "{input:?} should be refused");
        }
        let deep = "[".repeat(100_000);
        assert_eq!(RevTree::decode(deep.as_bytes()), Err(DecodeError));
    }
}
