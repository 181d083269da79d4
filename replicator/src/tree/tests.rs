//! The revision tree's unit tests (CouchDB's merge and stemming rules, case by case).

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
    assert_eq!(t.merge(&[Rev::new(2, format!("{:08x}", 5)), r("1-root")], false), (MergeOutcome::AlreadyKnown, false));
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
