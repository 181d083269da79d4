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
mod tests;
