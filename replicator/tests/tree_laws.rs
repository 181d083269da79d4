//! Laws of revision trees, checked on random histories (CouchDB's `couch_key_tree_prop_tests`,
//! restated for our flat model).
//!
//! A random "true" history (forks, several generation-1 roots, deletions anywhere) is cut into
//! the paths peers would send: whole leaf paths, stemmed ones (the newest revisions only), and
//! paths of an older state of a branch (the newest revision is an ancestor of a leaf).

use std::collections::{BTreeMap, BTreeSet};

use hearth_replicator::rev::Rev;
use hearth_replicator::tree::{EditConflict, MergeOutcome, RevTree};
use proptest::prelude::*;

/// At least 1,000 cases per law, more if `PROPTEST_CASES` asks for more.
fn config() -> ProptestConfig {
    let default = ProptestConfig::default();
    ProptestConfig { cases: default.cases.max(1000), ..default }
}

/// The true history of a document: revision `i`'s parent is an earlier revision.
#[derive(Clone, Debug, Default)]
struct History {
    revs: Vec<Rev>,
    parent: Vec<Option<usize>>,
    deleted: Vec<bool>,
}

impl History {
    fn leaves(&self) -> Vec<usize> {
        (0..self.revs.len()).filter(|i| !self.parent.contains(&Some(*i))).collect()
    }

    /// Indices from `i` up to its root, newest first.
    fn chain(&self, mut i: usize) -> Vec<usize> {
        let mut chain = vec![i];
        while let Some(p) = self.parent[i] {
            chain.push(p);
            i = p;
        }
        chain
    }
}

fn history() -> impl Strategy<Value = History> {
    prop::collection::vec((any::<u16>(), 0u8..100, any::<u8>(), prop::bool::weighted(0.2)), 1..40).prop_map(|raw| {
        let mut h = History::default();
        for (i, (hash, kind, back, deleted)) in raw.into_iter().enumerate() {
            let back = usize::from(back);
            let parent = match kind {
                _ if i == 0 => None,
                0..=4 => None,
                5..=79 => Some(i - 1 - back % i.min(3)),
                _ => Some(back % i),
            };
            let pos = parent.map_or(1, |p| h.revs[p].pos + 1);
            h.revs.push(Rev::new(pos, format!("{hash:04x}{i}")));
            h.parent.push(parent);
            h.deleted.push(deleted);
        }
        h
    })
}

/// A path as a peer sends it: revisions newest first, and the newest one's deleted flag.
type Path = (Vec<Rev>, bool);

/// A history and paths cut from it (two per leaf, each whole, stemmed or of an older state).
fn history_and_paths() -> impl Strategy<Value = (History, Vec<Path>)> {
    history()
        .prop_flat_map(|h| {
            let n = 2 * h.leaves().len();
            (Just(h), prop::collection::vec((any::<u16>(), any::<u16>(), 0u8..4), n))
        })
        .prop_map(|(h, cuts)| {
            let leaves = h.leaves();
            let paths = cuts
                .into_iter()
                .enumerate()
                .map(|(i, (drop, keep, mode))| {
                    let chain = h.chain(leaves[i % leaves.len()]);
                    let len = chain.len();
                    let (drop, keep) = match mode {
                        0 => (0, len),
                        1 => (0, 1 + usize::from(keep) % len),
                        _ => {
                            let drop = usize::from(drop) % len;
                            (drop, 1 + usize::from(keep) % (len - drop))
                        }
                    };
                    let window = &chain[drop..drop + keep];
                    let revs = window.iter().map(|&j| h.revs[j].clone()).collect();
                    (revs, h.deleted[window[0]])
                })
                .collect();
            (h, paths)
        })
}

fn merge_all(paths: &[Path]) -> RevTree {
    let mut t = RevTree::new();
    for (path, deleted) in paths {
        t.merge_path(path, *deleted);
    }
    t
}

/// The tree's structure as seen through its public API.
fn parents(t: &RevTree) -> BTreeMap<Rev, Option<Rev>> {
    t.revs().map(|r| (r.clone(), t.parent(r).cloned())).collect()
}

/// Checks the structural invariants: parents are known revisions one generation below, leaves
/// are exactly the revisions nobody has as parent, winner and order follow CouchDB's rule.
fn check_invariants(t: &RevTree) -> Result<(), TestCaseError> {
    let mut has_child = BTreeSet::new();
    for r in t.revs() {
        prop_assert!(r.pos >= 1);
        if let Some(p) = t.parent(r) {
            prop_assert!(t.contains(p), "parent {p} of {r} is unknown");
            prop_assert_eq!(p.pos + 1, r.pos);
            has_child.insert(p.clone());
        }
    }
    let mut expected: Vec<(bool, Rev)> =
        t.revs().filter(|r| !has_child.contains(*r)).map(|r| (!t.deleted(r).unwrap_or(false), r.clone())).collect();
    expected.sort_by(|a, b| b.cmp(a));
    let leaves: Vec<(bool, Rev)> = t.leaves().into_iter().map(|l| (!l.deleted, l.rev)).collect();
    prop_assert_eq!(&leaves, &expected);
    for r in t.revs() {
        prop_assert_eq!(t.is_leaf(r), !has_child.contains(r));
    }
    let winner = t.winner();
    prop_assert_eq!(winner.as_ref().map(|w| &w.rev), expected.first().map(|e| &e.1));
    prop_assert_eq!(t.is_deleted(), winner.as_ref().is_some_and(|w| w.deleted));
    let live: Vec<Rev> = expected.iter().skip(1).filter(|e| e.0).map(|e| e.1.clone()).collect();
    let dead: Vec<Rev> = expected.iter().skip(1).filter(|e| !e.0).map(|e| e.1.clone()).collect();
    prop_assert_eq!(t.conflicts(), live);
    prop_assert_eq!(t.deleted_conflicts(), dead);
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn merging_paths_in_any_order_gives_the_same_tree_and_winner(
        (paths, shuffled) in history_and_paths()
            .prop_flat_map(|(_, paths)| (Just(paths.clone()), Just(paths).prop_shuffle()))
    ) {
        let a = merge_all(&paths);
        let b = merge_all(&shuffled);
        check_invariants(&a)?;
        prop_assert_eq!(a.winner(), b.winner());
        prop_assert_eq!(a.leaves(), b.leaves());
        prop_assert_eq!(a, b);
    }

    #[test]
    fn merging_the_same_paths_twice_changes_nothing((_, paths) in history_and_paths()) {
        let mut t = merge_all(&paths);
        let once = t.clone();
        for (path, deleted) in &paths {
            prop_assert_eq!(t.merge_path(path, *deleted), MergeOutcome::AlreadyKnown);
        }
        prop_assert_eq!(t, once);
    }

    #[test]
    fn merging_whole_leaf_paths_rebuilds_the_true_history(h in history()) {
        let mut t = RevTree::new();
        for leaf in h.leaves() {
            let path: Vec<Rev> = h.chain(leaf).iter().map(|&i| h.revs[i].clone()).collect();
            let outcome = t.merge_path(&path, h.deleted[leaf]);
            prop_assert_ne!(outcome, MergeOutcome::AlreadyKnown);
        }
        check_invariants(&t)?;
        let expected: BTreeMap<Rev, Option<Rev>> = (0..h.revs.len())
            .map(|i| (h.revs[i].clone(), h.parent[i].map(|p| h.revs[p].clone())))
            .collect();
        prop_assert_eq!(parents(&t), expected);
        let mut leaves: Vec<(bool, Rev)> = h
            .leaves()
            .into_iter()
            .map(|i| (!h.deleted[i], h.revs[i].clone()))
            .collect();
        leaves.sort_by(|a, b| b.cmp(a));
        prop_assert_eq!(t.winner().map(|w| w.rev), leaves.first().map(|l| l.1.clone()));
        for leaf in h.leaves() {
            let history: Vec<Rev> = h.chain(leaf).iter().map(|&i| h.revs[i].clone()).collect();
            prop_assert_eq!(t.history(&h.revs[leaf]), Some(history));
            prop_assert_eq!(t.edit_parent(Some(&h.revs[leaf]), false), Ok(Some(h.revs[leaf].clone())));
        }
        for (i, rev) in h.revs.iter().enumerate() {
            if h.parent.contains(&Some(i)) {
                prop_assert_eq!(t.edit_parent(Some(rev), false), Err(EditConflict));
            }
        }
    }

    #[test]
    fn the_winner_does_not_depend_on_insertion_order(
        (paths, shuffled) in history_and_paths()
            .prop_flat_map(|(_, paths)| (Just(paths.clone()), Just(paths).prop_shuffle()))
    ) {
        let a = merge_all(&paths);
        let mut reversed = paths.clone();
        reversed.reverse();
        prop_assert_eq!(a.winner(), merge_all(&shuffled).winner());
        prop_assert_eq!(a.winner(), merge_all(&reversed).winner());
        prop_assert_eq!(a.is_deleted(), merge_all(&reversed).is_deleted());
    }

    #[test]
    fn stemming_keeps_every_leaf_and_exactly_the_revisions_near_one(
        (_, paths) in history_and_paths(),
        limit in 1usize..8,
    ) {
        let mut t = merge_all(&paths);
        let before = t.clone();
        let removed = t.stem(limit);
        check_invariants(&t)?;
        prop_assert_eq!(t.leaves(), before.leaves());
        // Kept: exactly the revisions among the `limit` newest of some leaf's history.
        let mut near: BTreeSet<Rev> = BTreeSet::new();
        for leaf in before.leaves() {
            let history = before.history(&leaf.rev).unwrap_or_default();
            near.extend(history.into_iter().take(limit));
        }
        let kept: BTreeSet<Rev> = t.revs().cloned().collect();
        prop_assert_eq!(&kept, &near);
        let mut expected_removed: Vec<Rev> =
            before.revs().filter(|r| !near.contains(*r)).cloned().collect();
        expected_removed.sort();
        prop_assert_eq!(removed, expected_removed);
        // A kept revision keeps its parent if the parent is kept, else becomes a root.
        for r in t.revs() {
            let parent = before.parent(r).filter(|p| kept.contains(*p));
            prop_assert_eq!(t.parent(r), parent);
            prop_assert_eq!(t.deleted(r), before.deleted(r));
        }
        // Each leaf's newest `limit` revisions are untouched; a lone chain shrinks to the limit.
        for leaf in t.leaves() {
            let old = before.history(&leaf.rev).unwrap_or_default();
            let new = t.history(&leaf.rev).unwrap_or_default();
            let n = limit.min(old.len());
            prop_assert_eq!(&new[..n], &old[..n]);
        }
        if t.leaves().len() == 1 {
            prop_assert!(t.len() <= limit);
        }
    }

    #[test]
    fn stemming_is_idempotent((_, paths) in history_and_paths(), limit in 1usize..8) {
        let mut t = merge_all(&paths);
        t.stem(limit);
        let once = t.clone();
        prop_assert_eq!(t.stem(limit), Vec::<Rev>::new());
        prop_assert_eq!(t, once);
    }

    #[test]
    fn stemming_deeper_than_the_tree_changes_nothing((_, paths) in history_and_paths()) {
        let mut t = merge_all(&paths);
        let before = t.clone();
        prop_assert!(t.stem(t.len()).is_empty());
        prop_assert_eq!(t, before);
    }

    #[test]
    fn merging_after_stemming_loses_no_path_and_keeps_invariants(
        (_, paths) in history_and_paths(),
        limit in 1usize..6,
    ) {
        // As the store does: stem after every update.
        let mut t = RevTree::new();
        for (path, deleted) in &paths {
            t.merge_path(path, *deleted);
            let leaf = t.is_leaf(&path[0]);
            prop_assert!(t.contains(&path[0]));
            t.stem(limit);
            check_invariants(&t)?;
            prop_assert!(!leaf || t.is_leaf(&path[0]));
            if t.leaves().len() == 1 {
                prop_assert!(t.len() <= limit);
            }
        }
    }

    #[test]
    fn revs_diff_finds_own_revisions_present_and_fresh_ones_missing(
        (_, paths) in history_and_paths(),
        fresh in prop::collection::vec((1u64..60, "[g-z]{1,6}"), 0..8),
    ) {
        let t = merge_all(&paths);
        let own: Vec<Rev> = t.revs().cloned().collect();
        prop_assert_eq!(t.revs_diff(&own), (vec![], vec![]));
        let fresh: Vec<Rev> = fresh.into_iter().map(|(pos, h)| Rev::new(pos, h)).collect();
        let mut asked = fresh.clone();
        asked.extend(own.iter().cloned());
        asked.extend(fresh.iter().cloned());
        let (missing, ancestors) = t.revs_diff(&asked);
        let mut seen = BTreeSet::new();
        let unique: Vec<Rev> = fresh.iter().filter(|r| seen.insert((*r).clone())).cloned().collect();
        prop_assert_eq!(&missing, &unique);
        let max = missing.iter().map(|r| r.pos).max().unwrap_or(0);
        let mut expected: Vec<Rev> =
            t.leaves().into_iter().map(|l| l.rev).filter(|r| r.pos < max).collect();
        expected.sort_by(|a, b| b.cmp(a));
        prop_assert_eq!(ancestors, expected);
    }

    #[test]
    fn latest_gives_exactly_the_leaves_below_a_revision((_, paths) in history_and_paths()) {
        let t = merge_all(&paths);
        let leaves = t.leaves();
        for r in t.revs() {
            let expected: Vec<Rev> = leaves
                .iter()
                .filter(|l| t.history(&l.rev).unwrap_or_default().contains(r))
                .map(|l| l.rev.clone())
                .collect();
            prop_assert_eq!(t.latest(r), expected);
        }
    }

    #[test]
    fn encoding_round_trips((_, paths) in history_and_paths(), limit in 1usize..10) {
        let mut t = merge_all(&paths);
        prop_assert_eq!(RevTree::decode(&t.encode()), Ok(t.clone()));
        t.stem(limit);
        prop_assert_eq!(RevTree::decode(&t.encode()), Ok(t.clone()));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(t) = RevTree::decode(&bytes) {
            check_invariants(&t)?;
        }
    }

    #[test]
    fn decoding_damaged_encodings_never_panics_and_accepts_only_valid_trees(
        (_, paths) in history_and_paths(),
        damage in prop::collection::vec((any::<u16>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = merge_all(&paths).encode();
        for (at, byte) in damage {
            let at = usize::from(at) % bytes.len();
            bytes[at] = byte;
        }
        if let Ok(t) = RevTree::decode(&bytes) {
            check_invariants(&t)?;
            prop_assert_eq!(RevTree::decode(&t.encode()), Ok(t));
        }
    }

    #[test]
    fn decoding_random_entries_never_panics_and_accepts_only_valid_trees(
        entries in prop::collection::vec(
            (0u64..5, "[a-c]{0,2}", prop::option::of(0u64..6), 0u8..4),
            0..8,
        )
    ) {
        let bytes = serde_json::to_vec(&entries).unwrap();
        if let Ok(t) = RevTree::decode(&bytes) {
            check_invariants(&t)?;
            prop_assert_eq!(t.len(), entries.len());
            prop_assert_eq!(RevTree::decode(&t.encode()), Ok(t));
        }
    }
}
