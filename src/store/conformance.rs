//! The conformance suite every `Store` backend must pass: CouchDB semantics of interactive and
//! replicated writes, the changes feed, `_revs_diff`, `open_revs`, `_all_docs`, `_local`
//! documents and counters. Each check uses its own doctype, so the suite runs on a store that
//! already holds data. It panics (with the check's name) on the first failure.
//!
//! One file over ~800 lines on purpose: it is test code only (compiled for tests or with the
//! `conformance` feature, which only the tests enable), a flat list of independent checks run
//! in sequence by one entry point; cutting it would scatter the one checklist a new backend is
//! read against, without a seam between its parts.

use std::collections::BTreeMap;

use hearth_replicator::rev::Rev;
use serde_json::{json, Value};

use super::*;

fn dt(name: &str) -> Doctype {
    Doctype::parse(&format!("io.hearth.conformance.{name}")).unwrap_or_else(|e| panic!("{e}"))
}

fn id(s: &str) -> DocId {
    DocId::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

fn rev(s: &str) -> Rev {
    s.parse().unwrap_or_else(|_| panic!("bad rev {s}"))
}

fn body(v: Value) -> Body {
    match v {
        Value::Object(m) => Body::from_map(&m),
        _ => panic!("body must be an object"),
    }
}

fn edit(doc: &str, parent: Option<&Rev>, deleted: bool, b: Value) -> DocWrite {
    DocWrite { id: id(doc), rev: parent.cloned(), revisions: None, deleted, body: body(b) }
}

/// A replicated revision with its history, newest first (`"3-c", "2-b", "1-a"`).
fn replicated(doc: &str, history: &[&str], deleted: bool, b: Value) -> DocWrite {
    let revs: Vec<Rev> = history.iter().map(|r| rev(r)).collect();
    DocWrite { id: id(doc), rev: revs.first().cloned(), revisions: Some(revs), deleted, body: body(b) }
}

async fn put(store: &dyn Store, t: &Doctype, w: DocWrite) -> Result<Rev, WriteResult> {
    let mut r = store.bulk_docs(t, vec![w], true).await.expect("bulk_docs");
    match r.pop().expect("one result") {
        WriteResult::Ok { rev, .. } => Ok(rev),
        other => Err(other),
    }
}

async fn replicate(store: &dyn Store, t: &Doctype, docs: Vec<DocWrite>) {
    let errors = store.bulk_docs(t, docs, false).await.expect("bulk_docs new_edits=false");
    assert!(errors.is_empty(), "replicated writes reported errors: {errors:?}");
}

/// Runs every check. `revs_limit` is the limit the store was opened with.
pub async fn run_all(store: &dyn Store, revs_limit: usize) {
    interactive_edits_follow_couchdb_rules(store).await;
    recreating_a_deleted_document_continues_its_history(store).await;
    replicated_writes_are_idempotent_and_never_overwrite(store).await;
    concurrent_branches_pick_the_same_winner(store).await;
    replicated_histories_are_stemmed_to_the_revs_limit(store, revs_limit).await;
    changes_feed_lists_each_document_once_at_its_latest_change(store).await;
    revs_diff_reports_missing_revisions_and_possible_ancestors(store).await;
    open_revs_returns_leaves_with_history(store).await;
    all_docs_ranges_keys_and_counts(store).await;
    local_documents_have_no_history_and_stay_out_of_the_feed(store).await;
    sharing_feeds_follow_every_write(store).await;
    removed_rows_keep_the_revision_their_document_left_at(store).await;
    branches_of_one_document_in_one_batch_all_count(store).await;
    bodies_come_back_exactly_as_written(store).await;
    changes_count_the_rows_still_pending(store).await;
    documents_join_later_only_by_rules_that_let_them(store).await;
    initial_sets_taken_in_parts_hold_each_document_once(store).await;
    received_documents_are_judged_on_what_their_write_finds(store).await;
    shared_documents_are_listed_by_page(store).await;
    pages_start_after_a_key_and_say_whether_more_follow(store).await;
}

/// Bodies whose key order and numbers a parse into `serde_json::Value` (or JavaScript) would
/// change: issue 9's example first.
pub const EXACT_BODIES: [&str; 3] = [
    r#"{"zeta":1,"alpha":{"yak":2,"bee":3},"big":123456789012345678901234567890,"neg":-9223372036854775809}"#,
    r#"{"f":0.1,"g":1.5e+300,"h":-0.0,"e":1E-7,"i":10.50,"s":"\u00e9 é \"q\" \ud83d\ude00 😀\n","z":[3,{"b":1,"a":[]}],"":null}"#,
    r#"{"9":"nine","10":"ten","1":"one","b":{"2":true,"1":false},"a":18446744073709551616}"#,
];

fn exact(text: &str) -> Body {
    let b = Body::parse(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(b.as_str(), text, "a compact body parses to itself");
    b
}

pub async fn bodies_come_back_exactly_as_written(store: &dyn Store) {
    let t = dt("exact");
    let w = |doc: &str, parent: Option<&Rev>, text: &str| DocWrite {
        id: id(doc),
        rev: parent.cloned(),
        revisions: None,
        deleted: false,
        body: exact(text),
    };
    let [first, second, third] = EXACT_BODIES;
    let r1 = put(store, &t, w("edited", None, first)).await.expect("create");
    let r2 = put(store, &t, w("edited", Some(&r1), second)).await.expect("update");
    put(store, &t, w("made", None, third)).await.expect("create another");
    let mut replicated_doc = replicated("replicated", &["2-b", "1-a"], false, json!({}));
    replicated_doc.body = exact(first);
    let mut conflict = replicated("replicated", &["2-c", "1-a"], false, json!({}));
    conflict.body = exact(third);
    replicate(store, &t, vec![replicated_doc, conflict]).await;
    let made = put_rev(store, &t, "made").await;
    for (doc, rev, text) in [("edited", &r2, second), ("made", &made, third)] {
        let view = store.get(&t, &id(doc), GetOptions { rev: None, revs: true }).await.expect("get");
        assert_eq!((&view.doc.rev, view.doc.body.as_str()), (rev, text), "get {doc}");
    }
    let leaves = store.open_revs(&t, &id("replicated"), OpenRevs::All, false).await.expect("open_revs");
    let bodies: Vec<&str> = leaves
        .iter()
        .map(|l| match l {
            OpenRev::Found(d) => d.body.as_str(),
            OpenRev::Missing(r) => panic!("missing {r}"),
        })
        .collect();
    assert_eq!(bodies, [third, first], "open_revs: the winner 2-c, then 2-b");
    let many = store.open_revs_many(&t, vec![(id("replicated"), vec![rev("2-b")])]).await.expect("open_revs_many");
    assert!(matches!(&many[0].1[0], OpenRev::Found(d) if d.body.as_str() == first));
    let feed = store.changes(&t, &ChangesQuery { include_docs: true, ..Default::default() }).await.expect("changes");
    let fed: Vec<(&str, &str)> =
        feed.rows.iter().map(|r| (r.id.as_str(), r.doc.as_ref().expect("doc").body.as_str())).collect();
    assert_eq!(fed, [("edited", second), ("made", third), ("replicated", third)], "changes with include_docs");
    for q in [
        AllDocsQuery { include_docs: true, inclusive_end: true, ..Default::default() },
        AllDocsQuery {
            include_docs: true,
            keys: Some(vec![id("edited"), id("made"), id("replicated")]),
            ..Default::default()
        },
    ] {
        let all = store.all_docs(&t, &q).await.expect("all_docs");
        let listed: Vec<&str> = all
            .rows
            .iter()
            .map(|r| match r {
                AllDocsRow::Doc { doc: Some(d), .. } => d.body.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(listed, [second, third, third], "all_docs with include_docs");
    }
    // The text enters the revision id: the same body gives the same revision, the same members
    // in another order another one (as in CouchDB).
    let same = put(store, &t, w("same", None, first)).await.expect("same body");
    assert_eq!(same, r1);
    let reordered =
        r#"{"alpha":{"yak":2,"bee":3},"zeta":1,"big":123456789012345678901234567890,"neg":-9223372036854775809}"#;
    assert_ne!(put(store, &t, w("reordered", None, reordered)).await.expect("reordered"), r1);
    // `_local` documents too.
    store.put_local(&t, "exact", exact(second)).await.expect("put_local");
    assert_eq!(store.get_local(&t, "exact").await.expect("get_local").body.as_str(), second);
}

async fn put_rev(store: &dyn Store, t: &Doctype, doc: &str) -> Rev {
    store.get(t, &id(doc), GetOptions::default()).await.expect("get").doc.rev
}

/// `pending` is what the feed still holds after the page: with 10 changes and `limit=3`,
/// CouchDB answers 7, then 4 (PouchDB shows it as progress).
pub async fn changes_count_the_rows_still_pending(store: &dyn Store) {
    let t = dt("pending");
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(put(store, &t, edit(&format!("p{i}"), None, false, json!({"i": i}))).await.expect("create"));
    }
    let t = &t;
    let page = |since: u64, limit: Option<usize>, doc_ids: Option<Vec<DocId>>| {
        let q = ChangesQuery { since, limit, doc_ids, ..Default::default() };
        async move { store.changes(t, &q).await.expect("changes") }
    };
    let ids = |c: &Changes| c.rows.iter().map(|r| r.id.to_string()).collect::<Vec<_>>();
    let a = page(0, Some(3), None).await;
    assert_eq!((ids(&a), a.pending), (vec!["p0".into(), "p1".into(), "p2".into()], 7));
    let b = page(a.last_seq, Some(3), None).await;
    assert_eq!((b.rows.len(), b.pending), (3, 4));
    // A document already passed changes again: it moves to the end of the feed.
    put(store, t, edit("p0", Some(&revs[0]), false, json!({"i": 10}))).await.expect("update");
    let c = page(b.last_seq, Some(3), None).await;
    assert_eq!((ids(&c), c.pending), (vec!["p6".into(), "p7".into(), "p8".into()], 2));
    let d = page(c.last_seq, Some(3), None).await;
    assert_eq!((ids(&d), d.pending), (vec!["p9".into(), "p0".into()], 0));
    let e = page(d.last_seq, Some(3), None).await;
    assert_eq!((e.rows.len(), e.pending), (0, 0));
    // Without a limit nothing is left; with `limit=0` everything is.
    assert_eq!(page(0, None, None).await.pending, 0);
    assert_eq!(page(0, Some(0), None).await.pending, 10);
    assert_eq!(page(a.last_seq, Some(0), None).await.pending, 8, "p0 moved after p2");
    // Filtered feeds count only their documents.
    let only = Some(vec![id("p1"), id("p5"), id("p9"), id("p0"), id("nope")]);
    let f = page(0, Some(1), only.clone()).await;
    assert_eq!((ids(&f), f.pending), (vec!["p1".into()], 3));
    let g = page(f.last_seq, Some(2), only.clone()).await;
    assert_eq!((ids(&g), g.pending), (vec!["p5".into(), "p9".into()], 1));
    assert_eq!(page(0, Some(0), only).await.pending, 4);
}

pub async fn interactive_edits_follow_couchdb_rules(store: &dyn Store) {
    let t = dt("interactive");
    let r1 = put(store, &t, edit("a", None, false, json!({"v": 1}))).await.expect("create");
    assert_eq!(r1.pos, 1);
    // Creating again without a revision conflicts.
    assert!(matches!(put(store, &t, edit("a", None, false, json!({"v": 9}))).await, Err(WriteResult::Conflict { .. })));
    let r2 = put(store, &t, edit("a", Some(&r1), false, json!({"v": 2}))).await.expect("update");
    assert_eq!(r2.pos, 2);
    // A stale parent conflicts, and an unknown one too.
    assert!(matches!(
        put(store, &t, edit("a", Some(&r1), false, json!({"v": 3}))).await,
        Err(WriteResult::Conflict { .. })
    ));
    assert!(matches!(
        put(store, &t, edit("a", Some(&rev("2-ffff")), false, json!({}))).await,
        Err(WriteResult::Conflict { .. })
    ));
    // A revision for a document that doesn't exist conflicts (PouchDB #4712, CouchDB alike).
    assert!(matches!(
        put(store, &t, edit("nope", Some(&r1), false, json!({}))).await,
        Err(WriteResult::Conflict { .. })
    ));
    let view = store.get(&t, &id("a"), GetOptions { rev: None, revs: true }).await.expect("get");
    assert_eq!(view.doc.rev, r2);
    assert_eq!(view.doc.body, body(json!({"v": 2})));
    assert_eq!(view.doc.revisions, Some(vec![r2.clone(), r1.clone()]));
    assert!(view.conflicts.is_empty());
    // The old revision's body is gone (only leaves keep bodies), but its id is known.
    assert!(matches!(
        store.get(&t, &id("a"), GetOptions { rev: Some(r1.clone()), revs: false }).await,
        Err(StoreError::NotFound)
    ));
    // The same edit of the same parent on two stores gives the same revision id.
    let again = put(store, &t, edit("b", None, false, json!({"v": 1}))).await.expect("create b");
    assert_eq!(again.hash, r1.hash, "revision ids must be deterministic");
    let d = put(store, &t, edit("a", Some(&r2), true, json!({}))).await.expect("delete");
    assert_eq!(d.pos, 3);
    assert!(matches!(store.get(&t, &id("a"), GetOptions::default()).await, Err(StoreError::Deleted)));
    let tomb = store.get(&t, &id("a"), GetOptions { rev: Some(d.clone()), revs: false }).await.expect("tombstone");
    assert!(tomb.doc.deleted);
    // Two writes of one id in one batch: the second has a stale parent.
    let results = store
        .bulk_docs(&t, vec![edit("c", None, false, json!({})), edit("c", None, false, json!({"x": 1}))], true)
        .await
        .expect("batch");
    assert!(matches!(results[0], WriteResult::Ok { .. }));
    assert!(matches!(results[1], WriteResult::Conflict { .. }));
}

pub async fn recreating_a_deleted_document_continues_its_history(store: &dyn Store) {
    let t = dt("recreate");
    let r1 = put(store, &t, edit("a", None, false, json!({"v": 1}))).await.expect("create");
    let r2 = put(store, &t, edit("a", Some(&r1), true, json!({}))).await.expect("delete");
    let r3 = put(store, &t, edit("a", None, false, json!({"v": 3}))).await.expect("recreate");
    assert_eq!(r3.pos, 3, "a recreation continues from the deleted leaf");
    let view = store.get(&t, &id("a"), GetOptions { rev: None, revs: true }).await.expect("get");
    assert_eq!(view.doc.revisions, Some(vec![r3, r2, r1]));
    assert!(view.deleted_conflicts.is_empty());
    let info = store.db_info(&t).await.expect("info");
    assert_eq!((info.doc_count, info.doc_del_count), (1, 0));
}

pub async fn replicated_writes_are_idempotent_and_never_overwrite(store: &dyn Store) {
    let t = dt("replicated");
    replicate(store, &t, vec![replicated("a", &["2-b", "1-a"], false, json!({"first": true}))]).await;
    let seq = store.db_info(&t).await.expect("info").update_seq;
    // Same revision again, with another body: ignored, no new change.
    replicate(store, &t, vec![replicated("a", &["2-b", "1-a"], false, json!({"second": true}))]).await;
    assert_eq!(store.db_info(&t).await.expect("info").update_seq, seq);
    let view = store.get(&t, &id("a"), GetOptions::default()).await.expect("get");
    assert_eq!(view.doc.body, body(json!({"first": true})));
    // An ancestor arriving later changes nothing.
    replicate(store, &t, vec![replicated("a", &["1-a"], false, json!({"old": true}))]).await;
    assert_eq!(store.get(&t, &id("a"), GetOptions::default()).await.expect("get").doc.rev, rev("2-b"));
    // A revision without history makes its own root; a live one beats a deleted higher one.
    replicate(store, &t, vec![replicated("n", &["1-x"], false, json!({}))]).await;
    replicate(store, &t, vec![replicated("n", &["2-y"], true, json!({}))]).await;
    let v = store.get(&t, &id("n"), GetOptions::default()).await.expect("get n");
    assert_eq!(v.doc.rev, rev("1-x"));
    assert_eq!(v.deleted_conflicts, vec![rev("2-y")]);
    // A tombstone with history deletes the document.
    replicate(store, &t, vec![replicated("a", &["3-c", "2-b", "1-a"], true, json!({}))]).await;
    assert!(matches!(store.get(&t, &id("a"), GetOptions::default()).await, Err(StoreError::Deleted)));
    // A write without any revision is refused, the rest of the batch applies.
    let mut bad = replicated("z", &["1-z"], false, json!({}));
    bad.revisions = None;
    let errors =
        store.bulk_docs(&t, vec![bad, replicated("ok", &["1-o"], false, json!({}))], false).await.expect("batch");
    assert_eq!(errors.len(), 1);
    assert!(matches!(errors[0], WriteResult::Rejected { .. }));
    assert!(store.get(&t, &id("ok"), GetOptions::default()).await.is_ok());
}

pub async fn concurrent_branches_pick_the_same_winner(store: &dyn Store) {
    let t = dt("conflicts");
    replicate(
        store,
        &t,
        vec![
            replicated("a", &["2-aaa", "1-a"], false, json!({"side": "low"})),
            replicated("a", &["2-bbb", "1-a"], false, json!({"side": "high"})),
            replicated("a", &["3-ccc", "2-ddd", "1-a"], true, json!({})),
        ],
    )
    .await;
    let v = store.get(&t, &id("a"), GetOptions::default()).await.expect("get");
    assert_eq!(v.doc.rev, rev("2-bbb"), "non-deleted beats deleted, then highest rev id");
    assert_eq!(v.conflicts, vec![rev("2-aaa")]);
    assert_eq!(v.deleted_conflicts, vec![rev("3-ccc")]);
    // Resolving: delete the losing leaf interactively.
    put(store, &t, edit("a", Some(&rev("2-aaa")), true, json!({}))).await.expect("delete loser");
    let v = store.get(&t, &id("a"), GetOptions::default()).await.expect("get");
    assert!(v.conflicts.is_empty());
    assert_eq!(v.doc.rev, rev("2-bbb"));
    // An edit on a conflicting leaf is allowed (that's how conflicts are resolved).
    replicate(
        store,
        &t,
        vec![replicated("b", &["2-x", "1-a"], false, json!({})), replicated("b", &["2-y", "1-a"], false, json!({}))],
    )
    .await;
    put(store, &t, edit("b", Some(&rev("2-x")), false, json!({"merged": true}))).await.expect("edit loser");
    let v = store.get(&t, &id("b"), GetOptions::default()).await.expect("get b");
    assert_eq!(v.doc.rev.pos, 3);
    assert_eq!(v.conflicts, vec![rev("2-y")]);
}

pub async fn replicated_histories_are_stemmed_to_the_revs_limit(store: &dyn Store, revs_limit: usize) {
    let t = dt("stemming");
    let n = revs_limit + 50;
    let history: Vec<String> = (1..=n).rev().map(|i| format!("{i}-h{i}")).collect();
    let refs: Vec<&str> = history.iter().map(String::as_str).collect();
    replicate(store, &t, vec![replicated("long", &refs, false, json!({}))]).await;
    let v = store.get(&t, &id("long"), GetOptions { rev: None, revs: true }).await.expect("get");
    let revs = v.doc.revisions.expect("history");
    assert_eq!(revs.len(), revs_limit);
    assert_eq!(revs[0], rev(&format!("{n}-h{n}")));
}

pub async fn changes_feed_lists_each_document_once_at_its_latest_change(store: &dyn Store) {
    let t = dt("changes");
    let ra = put(store, &t, edit("a", None, false, json!({"n": 1}))).await.expect("a");
    put(store, &t, edit("b", None, false, json!({"n": 2}))).await.expect("b");
    let ra2 = put(store, &t, edit("a", Some(&ra), false, json!({"n": 3}))).await.expect("a2");
    replicate(
        store,
        &t,
        vec![replicated("c", &["1-zzz"], false, json!({})), replicated("c", &["1-aaa"], false, json!({}))],
    )
    .await;
    let all = store
        .changes(&t, &ChangesQuery { all_docs: true, include_docs: true, ..Default::default() })
        .await
        .expect("changes");
    let ids: Vec<&str> = all.rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["b", "a", "c"], "one row per document, ordered by latest change");
    assert!(all.rows.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(all.last_seq, all.rows[2].seq);
    assert_eq!(all.rows[1].changes, vec![ra2.clone()]);
    assert_eq!(all.rows[1].doc.as_ref().expect("doc").body, body(json!({"n": 3})));
    assert_eq!(all.rows[2].changes, vec![rev("1-zzz"), rev("1-aaa")], "all_docs lists every leaf, winner first");
    let main = store.changes(&t, &ChangesQuery::default()).await.expect("changes");
    assert_eq!(main.rows[2].changes, vec![rev("1-zzz")]);
    // `since` is exclusive; limit bounds the page.
    let after = store
        .changes(&t, &ChangesQuery { since: all.rows[0].seq, limit: Some(1), ..Default::default() })
        .await
        .expect("page");
    assert_eq!(after.rows.len(), 1);
    assert_eq!(after.rows[0].id.as_str(), "a");
    assert_eq!(after.last_seq, after.rows[0].seq);
    let empty = store.changes(&t, &ChangesQuery { since: all.last_seq, ..Default::default() }).await.expect("empty");
    assert!(empty.rows.is_empty());
    assert_eq!(empty.last_seq, all.last_seq);
    let filtered = store
        .changes(&t, &ChangesQuery { doc_ids: Some(vec![id("c"), id("b")]), ..Default::default() })
        .await
        .expect("doc_ids");
    assert_eq!(filtered.rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["b", "c"]);
    // Deletions appear with their flag.
    put(store, &t, edit("b", Some(&all.rows[0].changes[0]), true, json!({}))).await.expect("delete b");
    let last =
        store.changes(&t, &ChangesQuery { since: all.last_seq, ..Default::default() }).await.expect("after delete");
    assert_eq!(last.rows.len(), 1);
    assert!(last.rows[0].deleted);
    // Another doctype's feed is separate.
    assert!(store.changes(&dt("changes-other"), &ChangesQuery::default()).await.expect("other").rows.is_empty());
}

pub async fn revs_diff_reports_missing_revisions_and_possible_ancestors(store: &dyn Store) {
    let t = dt("revsdiff");
    replicate(store, &t, vec![replicated("a", &["4-d", "3-c", "2-b", "1-a"], false, json!({}))]).await;
    let mut q = BTreeMap::new();
    q.insert(id("a"), vec![rev("3-c"), rev("4-d"), rev("5-e"), rev("3-x")]);
    q.insert(id("unknown"), vec![rev("1-a")]);
    q.insert(id("complete"), vec![]);
    let diff = store.revs_diff(&t, q).await.expect("revs_diff");
    let a = diff.get(&id("a")).expect("a listed");
    assert_eq!(a.missing, vec![rev("5-e"), rev("3-x")]);
    assert_eq!(a.possible_ancestors, vec![rev("4-d")]);
    let u = diff.get(&id("unknown")).expect("unknown listed");
    assert_eq!(u.missing, vec![rev("1-a")]);
    assert!(u.possible_ancestors.is_empty());
    assert!(!diff.contains_key(&id("complete")));
    let mut q = BTreeMap::new();
    q.insert(id("a"), vec![rev("4-d"), rev("2-b")]);
    assert!(store.revs_diff(&t, q).await.expect("nothing missing").is_empty());
}

pub async fn open_revs_returns_leaves_with_history(store: &dyn Store) {
    let t = dt("openrevs");
    replicate(
        store,
        &t,
        vec![
            replicated("a", &["2-x", "1-a"], false, json!({"x": 1})),
            // Distinct hashes per generation: PouchDB Server 4.2.0 mixes up `3-y` and `2-y`.
            replicated("a", &["3-y", "2-w", "1-a"], true, json!({})),
        ],
    )
    .await;
    let all = store.open_revs(&t, &id("a"), OpenRevs::All, false).await.expect("all");
    let revs: Vec<Rev> = all
        .iter()
        .map(|r| match r {
            OpenRev::Found(d) => d.rev.clone(),
            OpenRev::Missing(r) => panic!("missing {r}"),
        })
        .collect();
    assert_eq!(revs, vec![rev("2-x"), rev("3-y")], "winner first");
    if let OpenRev::Found(d) = &all[1] {
        assert!(d.deleted);
        assert_eq!(d.revisions, Some(vec![rev("3-y"), rev("2-w"), rev("1-a")]));
    }
    let some = store
        .open_revs(&t, &id("a"), OpenRevs::Some(vec![rev("2-x"), rev("9-n"), rev("1-a")]), false)
        .await
        .expect("some");
    assert!(matches!(&some[0], OpenRev::Found(d) if d.body == body(json!({"x": 1}))));
    assert_eq!(some[1], OpenRev::Missing(rev("9-n")));
    assert_eq!(some[2], OpenRev::Missing(rev("1-a")), "non-leaf revisions have no body");
    let latest = store.open_revs(&t, &id("a"), OpenRevs::Some(vec![rev("1-a")]), true).await.expect("latest");
    assert_eq!(latest.len(), 2, "latest=true gives the leaves under 1-a");
    assert!(matches!(store.open_revs(&t, &id("none"), OpenRevs::All, false).await, Err(StoreError::NotFound)));
    let none = store.open_revs(&t, &id("none"), OpenRevs::Some(vec![rev("1-a")]), true).await.expect("unknown doc");
    assert_eq!(none, vec![OpenRev::Missing(rev("1-a"))]);
}

pub async fn all_docs_ranges_keys_and_counts(store: &dyn Store) {
    let t = dt("alldocs");
    for name in ["a", "b", "c", "d"] {
        put(store, &t, edit(name, None, false, json!({"name": name}))).await.expect("create");
    }
    let rd = store.get(&t, &id("d"), GetOptions::default()).await.expect("d").doc.rev;
    put(store, &t, edit("d", Some(&rd), true, json!({}))).await.expect("delete d");
    let names = |r: &AllDocs| -> Vec<String> {
        r.rows
            .iter()
            .map(|row| match row {
                AllDocsRow::Doc { id, .. } => id.to_string(),
                AllDocsRow::NotFound { key } => format!("!{key}"),
            })
            .collect()
    };
    let all = store
        .all_docs(&t, &AllDocsQuery { inclusive_end: true, include_docs: true, ..Default::default() })
        .await
        .expect("all");
    assert_eq!(names(&all), ["a", "b", "c"], "deleted documents are not listed");
    assert_eq!(all.total_rows, 3);
    assert!(matches!(&all.rows[0], AllDocsRow::Doc { doc: Some(d), .. } if d.body == body(json!({"name": "a"}))));
    let range = AllDocsQuery {
        start_key: Some("b".into()),
        end_key: Some("c".into()),
        inclusive_end: false,
        ..Default::default()
    };
    assert_eq!(names(&store.all_docs(&t, &range).await.expect("range")), ["b"]);
    let desc = AllDocsQuery { descending: true, limit: Some(2), inclusive_end: true, ..Default::default() };
    assert_eq!(names(&store.all_docs(&t, &desc).await.expect("desc")), ["c", "b"]);
    let skip = AllDocsQuery { skip: 1, limit: Some(1), inclusive_end: true, ..Default::default() };
    assert_eq!(names(&store.all_docs(&t, &skip).await.expect("skip")), ["b"]);
    let keys = AllDocsQuery { keys: Some(vec![id("c"), id("zz"), id("d")]), inclusive_end: true, ..Default::default() };
    let by_keys = store.all_docs(&t, &keys).await.expect("keys");
    assert_eq!(names(&by_keys), ["c", "!zz", "d"]);
    assert!(matches!(&by_keys.rows[2], AllDocsRow::Doc { deleted: true, .. }));
    let info = store.db_info(&t).await.expect("info");
    assert_eq!((info.doc_count, info.doc_del_count), (3, 1));
    assert!(info.update_seq >= 5);
}

/// What an answer written a page at a time needs (see `http::stream`): `_all_docs` pages that
/// start after the last id answered and say whether rows may follow, and pages of bodies
/// bounded by `max_bytes` that say what is left (the bound is a backend's choice: the
/// CouchDB one reads by rows only, and must then answer whole pages).
pub async fn pages_start_after_a_key_and_say_whether_more_follow(store: &dyn Store) {
    let t = dt("pages");
    let text = "x".repeat(1000);
    for name in ["a", "b", "c", "d"] {
        put(store, &t, edit(name, None, false, json!({"text": text}))).await.expect("create");
    }
    let ids = |r: &AllDocs| -> Vec<String> {
        r.rows
            .iter()
            .map(|row| match row {
                AllDocsRow::Doc { id, .. } => id.to_string(),
                AllDocsRow::NotFound { key } => format!("!{key}"),
            })
            .collect()
    };
    let q = |start: Option<&str>, descending: bool, limit: Option<usize>| AllDocsQuery {
        start_key: start.map(str::to_owned),
        exclusive_start: start.is_some(),
        descending,
        limit,
        inclusive_end: true,
        ..Default::default()
    };
    let first = store.all_docs(&t, &q(None, false, Some(2))).await.expect("first page");
    assert_eq!((ids(&first), first.more), (vec!["a".into(), "b".into()], true));
    let second = store.all_docs(&t, &q(Some("b"), false, Some(2))).await.expect("second page");
    assert_eq!(ids(&second), ["c", "d"], "the page starts after b");
    let rest = store.all_docs(&t, &q(Some("d"), false, Some(2))).await.expect("after the end");
    assert_eq!((ids(&rest), rest.more), (Vec::<String>::new(), false));
    let all = store.all_docs(&t, &q(None, false, Some(10))).await.expect("all");
    assert_eq!((all.rows.len(), all.more), (4, false), "a page short of its limit is the last");
    let down = store.all_docs(&t, &q(Some("c"), true, Some(10))).await.expect("descending");
    assert_eq!(ids(&down), ["b", "a"], "descending, after c");
    // A start key that is not a document: the page starts at the next id.
    let between = store.all_docs(&t, &q(Some("bb"), false, Some(1))).await.expect("between");
    assert_eq!(ids(&between), ["c"]);

    // Pages of bodies bounded in bytes: whatever a backend answers, the rest is accounted for.
    let bounded = |since: u64| ChangesQuery {
        since,
        limit: Some(10),
        include_docs: true,
        max_bytes: Some(1500),
        ..Default::default()
    };
    let mut since = 0;
    let mut seen = Vec::new();
    loop {
        let page = store.changes(&t, &bounded(since)).await.expect("bounded changes");
        assert!(!page.rows.is_empty(), "a bounded page holds one row at least");
        assert!(page.rows.iter().all(|r| r.doc.as_ref().is_some_and(|d| d.body.as_str().len() > 1000)));
        seen.extend(page.rows.iter().map(|r| r.id.to_string()));
        assert_eq!(page.pending as usize, 4 - seen.len(), "pending counts what the bound left");
        since = page.last_seq;
        if page.pending == 0 {
            break;
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d"]);
    let mut start: Option<String> = None;
    let mut listed = Vec::new();
    loop {
        let query = AllDocsQuery {
            include_docs: true,
            max_bytes: Some(1500),
            limit: Some(10),
            ..q(start.as_deref(), false, Some(10))
        };
        let page = store.all_docs(&t, &query).await.expect("bounded all_docs");
        listed.extend(ids(&page));
        assert_eq!(page.more, listed.len() < 4, "more says whether rows remain");
        if !page.more {
            break;
        }
        start = listed.last().cloned();
    }
    assert_eq!(listed, ["a", "b", "c", "d"]);
    let keys = AllDocsQuery {
        keys: Some(vec![id("d"), id("nope"), id("a")]),
        include_docs: true,
        max_bytes: Some(1500),
        inclusive_end: true,
        ..Default::default()
    };
    let by_keys = store.all_docs(&t, &keys).await.expect("bounded keys");
    let answered = ids(&by_keys);
    assert_eq!(answered[..], ["d", "!nope", "a"][..answered.len()], "the first keys are answered, in order");
    assert_eq!(by_keys.more, answered.len() < 3);
}

pub async fn local_documents_have_no_history_and_stay_out_of_the_feed(store: &dyn Store) {
    let t = dt("local");
    assert!(matches!(store.get_local(&t, "cp").await, Err(StoreError::NotFound)));
    assert_eq!(store.put_local(&t, "cp", body(json!({"last_seq": 1}))).await.expect("put"), 1);
    assert_eq!(store.put_local(&t, "cp", body(json!({"last_seq": 2}))).await.expect("put"), 2);
    let doc = store.get_local(&t, "cp").await.expect("get");
    assert_eq!((doc.rev, doc.body), (2, body(json!({"last_seq": 2}))));
    assert!(store.changes(&t, &ChangesQuery::default()).await.expect("changes").rows.is_empty());
    assert_eq!(store.db_info(&t).await.expect("info").update_seq, 0);
    store.delete_local(&t, "cp").await.expect("delete");
    assert!(matches!(store.get_local(&t, "cp").await, Err(StoreError::NotFound)));
    assert!(matches!(store.delete_local(&t, "cp").await, Err(StoreError::NotFound)));
}

pub async fn sharing_feeds_follow_every_write(store: &dyn Store) {
    let t = dt("tracking");
    let sharing = &SharingId::parse("0123456789abcdef0123456789abcdef").expect("sharing id");
    let rule = |i: usize, selector: Option<&str>, values: &[&str]| TrackRule {
        sharing_id: sharing.clone(),
        rule_index: i,
        doctype: t.clone(),
        selector: selector.map(str::to_owned),
        values: values.iter().map(|v| v.to_string()).collect(),
        joins: true,
        parent_field: None,
    };
    // Documents written before the sharing exists are picked up by track_existing.
    let before = put(store, &t, edit("early", None, false, json!({"list": "l1"}))).await.expect("early");
    put(store, &t, edit("other", None, false, json!({"list": "l2"}))).await.expect("other");
    store.set_tracking(vec![rule(0, None, &["byid"]), rule(1, Some("list"), &["l1"])]);
    assert_eq!(store.track_existing(sharing).await.expect("track existing"), 1);
    assert_eq!(store.track_existing(sharing).await.expect("again"), 0, "already tracked documents are not added twice");
    let byid = put(store, &t, edit("byid", None, false, json!({}))).await.expect("byid");
    let r1 = put(store, &t, edit("joined", None, false, json!({"list": "l1"}))).await.expect("joined");
    put(store, &t, edit("outside", None, false, json!({"list": "l3"}))).await.expect("outside");
    let feed = store.shared_changes(sharing, 0, 100).await.expect("feed");
    let ids: Vec<&str> = feed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["early", "byid", "joined"]);
    assert_eq!(feed.iter().map(|c| c.rule_index).collect::<Vec<_>>(), [1, 0, 1]);
    assert!(feed.windows(2).all(|w| w[0].seq < w[1].seq));
    // Each row says when and how its document entered: the initial set, then later writes.
    assert_eq!(feed.iter().map(|c| c.initial).collect::<Vec<_>>(), [true, false, false]);
    assert!(feed.iter().all(|c| c.joined == c.seq && c.origin.is_none()), "{feed:?}");
    // Leaving: the document stops matching, and a row says it was removed.
    let r2 = put(store, &t, edit("joined", Some(&r1), false, json!({"list": "l2"}))).await.expect("leave");
    let after = store.shared_changes(sharing, feed[2].seq, 100).await.expect("after");
    assert_eq!(after.len(), 1);
    assert!(after[0].removed && after[0].id.as_str() == "joined");
    // Further edits of a removed document are not tracked; coming back is.
    let r3 = put(store, &t, edit("joined", Some(&r2), false, json!({"list": "l2", "x": 1}))).await.expect("edit");
    assert!(store.shared_changes(sharing, after[0].seq, 100).await.expect("none").is_empty());
    put(store, &t, edit("joined", Some(&r3), false, json!({"list": "l1"}))).await.expect("back");
    let back = store.shared_changes(sharing, after[0].seq, 100).await.expect("back");
    assert!(!back[0].removed);
    assert_eq!(back[0].joined, feed[2].seq, "a document coming back keeps the sequence it first joined at");
    // Deletions of tracked documents travel; replicated writes are tracked too.
    put(store, &t, edit("byid", Some(&byid), true, json!({}))).await.expect("delete");
    replicate(store, &t, vec![replicated("early", &["2-zzz", &before.to_string()], false, json!({"list": "l1"}))])
        .await;
    let last = store.shared_changes(sharing, back[0].seq, 100).await.expect("last");
    assert_eq!(last.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["byid", "early"]);
    let state = store.shared_state(sharing, &t, &[id("early"), id("outside"), id("joined")]).await.expect("state");
    assert_eq!(state.len(), 2);
    assert!(!state[&id("early")].removed);
    let info = store.shared_info(sharing, 0).await.expect("info");
    assert_eq!((info.docs, info.pending), (3, 3));
    assert_eq!(info.last_seq, last[1].seq);
    let leaves = store.doc_leaves(&t, &[id("early"), id("nope")]).await.expect("leaves");
    assert_eq!(leaves.len(), 1);
    assert_eq!(leaves[&id("early")][0].0.pos, 2);
    // The feed with each row's leaves, as a replicator reads it: rows it does not keep are
    // left out, but counted among those read and passed by `last_seq`.
    let every: KeepRow = std::sync::Arc::new(|_| true);
    let page = store.shared_changes_with_leaves(sharing, back[0].seq, 100, every.clone()).await.expect("page");
    assert_eq!((page.read, page.last_seq), (2, last[1].seq));
    let rows: Vec<(&str, u64, bool)> = page.rows.iter().map(|(r, l)| (r.id.as_str(), l[0].0.pos, l[0].1)).collect();
    assert_eq!(rows, [("byid", 2, true), ("early", 2, false)], "each row with its winner first");
    assert_eq!(page.rows[0].0, last[0]);
    assert_eq!(page.rows[1].1, store.doc_leaves(&t, &[id("early")]).await.expect("leaves")[&id("early")]);
    let not_byid: KeepRow = std::sync::Arc::new(|r| r.id.as_str() != "byid");
    let some = store.shared_changes_with_leaves(sharing, back[0].seq, 100, not_byid).await.expect("kept");
    assert_eq!((some.read, some.last_seq), (2, last[1].seq));
    assert_eq!(some.rows.iter().map(|(r, _)| r.id.as_str()).collect::<Vec<_>>(), ["early"]);
    let one = store.shared_changes_with_leaves(sharing, back[0].seq, 1, every.clone()).await.expect("limit");
    assert_eq!((one.read, one.last_seq, one.rows.len()), (1, last[0].seq, 1));
    let none = store.shared_changes_with_leaves(sharing, last[1].seq, 100, every).await.expect("end");
    assert_eq!((none.read, none.last_seq, none.rows.len()), (0, last[1].seq, 0));
    store.untrack(sharing).await.expect("untrack");
    assert!(store.shared_changes(sharing, 0, 100).await.expect("empty").is_empty());
    // Forgotten, the sharing starts again from what matches now.
    assert_eq!(store.track_existing(sharing).await.expect("restart"), 2);
    store.untrack(sharing).await.expect("untrack again");
    store.set_tracking(Vec::new());
}

/// A removed row keeps the revision its document left at (`SharedChange::left_rev`): the
/// write that took it out, or for a cascade (`retrack`) its winner then. Later edits of the
/// document record nothing and leave it as it was; rows in the sharing have none, and a
/// document coming back loses it.
pub async fn removed_rows_keep_the_revision_their_document_left_at(store: &dyn Store) {
    let t = dt("leaving");
    let sharing = &SharingId::parse("3123456789abcdef0123456789abcdef").expect("sharing id");
    // A subtree rule: "root" by id, and whatever has a parent in the sharing.
    let subtree =
        TrackRule { parent_field: Some("dir_id".into()), ..track_rule(sharing, &t, 0, None, &["root"], true) };
    store.set_tracking(vec![subtree]);
    let feed = || async { store.shared_changes(sharing, 0, 100).await.expect("feed") };
    let row = |feed: &[SharedChange], doc: &str| {
        feed.iter().find(|c| c.id.as_str() == doc).cloned().unwrap_or_else(|| panic!("no row for {doc}: {feed:?}"))
    };
    put(store, &t, edit("root", None, false, json!({}))).await.expect("root");
    let sub = put(store, &t, edit("sub", None, false, json!({"dir_id": "root"}))).await.expect("sub");
    let f = put(store, &t, edit("f", None, false, json!({"dir_id": "sub"}))).await.expect("f");
    let g = put(store, &t, edit("g", None, false, json!({"dir_id": "root"}))).await.expect("g");
    let all = feed().await;
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all.iter().all(|c| !c.removed && c.left_rev.is_none()), "{all:?}");
    // Leaving by its own write: the revision of that write.
    let g2 = put(store, &t, edit("g", Some(&g), false, json!({"dir_id": "elsewhere"}))).await.expect("g leaves");
    let left = row(&feed().await, "g");
    assert!(left.removed);
    assert_eq!(left.left_rev, Some(g2.clone()));
    // An edit after it left: no row, the removal still says where it left.
    let g3 = put(store, &t, edit("g", Some(&g2), false, json!({"dir_id": "elsewhere", "v": 2}))).await.expect("edit");
    assert_eq!(row(&feed().await, "g"), left, "an edit of a document out of the sharing records nothing");
    // Leaving with its parent: the directory at its move, what it holds at its winner then.
    let sub2 = put(store, &t, edit("sub", Some(&sub), false, json!({"dir_id": "elsewhere"}))).await.expect("sub");
    assert_eq!(store.retrack(&t, &[id("f")]).await.expect("cascade").recorded, 1);
    let now = feed().await;
    assert_eq!((row(&now, "sub").removed, row(&now, "sub").left_rev), (true, Some(sub2)));
    assert_eq!((row(&now, "f").removed, row(&now, "f").left_rev), (true, Some(f)));
    // Coming back: in the sharing again, with no such revision.
    put(store, &t, edit("g", Some(&g3), false, json!({"dir_id": "root"}))).await.expect("g comes back");
    let back = row(&feed().await, "g");
    assert_eq!((back.removed, back.left_rev), (false, None));
    store.untrack(sharing).await.expect("untrack");
    store.set_tracking(Vec::new());
}

/// A rule of `sharing` on `t` (no subtree), for the suites here and the backends' own tests.
pub(crate) fn track_rule(
    sharing: &SharingId,
    t: &Doctype,
    i: usize,
    selector: Option<&str>,
    values: &[&str],
    joins: bool,
) -> TrackRule {
    TrackRule {
        sharing_id: sharing.clone(),
        rule_index: i,
        doctype: t.clone(),
        selector: selector.map(str::to_owned),
        values: values.iter().map(|v| v.to_string()).collect(),
        joins,
        parent_field: None,
    }
}

/// An initial set taken a part at a time (`track_existing_part`, parts of 3 documents here),
/// with writes between the parts: every document that matches when the scan reaches it is in
/// the set once, with the first rule it matches; one changed before the scan reaches it so that
/// it no longer matches is not in it (or, on a backend that takes the set in one call, is
/// removed from it by the write that came after); and once the set is taken, asking again adds
/// nothing.
pub async fn initial_sets_taken_in_parts_hold_each_document_once(store: &dyn Store) {
    let t = dt("parts");
    let sharing = &SharingId::parse("2123456789abcdef0123456789abcdef").expect("sharing id");
    let mut revs = BTreeMap::new();
    for i in 0..10 {
        let list = if i == 3 { "l2" } else { "l1" };
        let doc = format!("a{i}");
        revs.insert(doc.clone(), put(store, &t, edit(&doc, None, false, json!({"list": list}))).await.expect("put"));
    }
    put(store, &t, edit("zz", None, false, json!({}))).await.expect("zz");
    store.set_tracking(vec![
        track_rule(sharing, &t, 0, None, &["zz", "a5", "zz"], true),
        track_rule(sharing, &t, 1, Some("list"), &["l1"], true),
    ]);
    let (mut resume, mut added, mut parts) = (None::<String>, 0, 0);
    loop {
        let part = store.track_existing_part(sharing, resume.as_deref(), 3).await.expect("part");
        added += part.added;
        parts += 1;
        if parts == 1 {
            // Between the parts: one new matching document, one deleted and one changed so it
            // no longer matches, both ahead of where the scan is.
            put(store, &t, edit("b-new", None, false, json!({"list": "l1"}))).await.expect("new");
            put(store, &t, edit("a9", Some(&revs["a9"]), true, json!({}))).await.expect("delete");
            put(store, &t, edit("a8", Some(&revs["a8"]), false, json!({"list": "l2"}))).await.expect("change");
        }
        match part.next {
            Some(next) => resume = Some(next),
            None => break,
        }
        assert!(parts < 100, "the parts never end");
    }
    let feed = store.shared_changes(sharing, 0, 100).await.expect("feed");
    // a9's deletion is in the feed when the set was taken before it (a tracked document's
    // deletion travels), and a9 is not when the scan came after: either is right.
    let live: BTreeMap<&str, usize> =
        feed.iter().filter(|c| !c.removed && c.id.as_str() != "a9").map(|c| (c.id.as_str(), c.rule_index)).collect();
    assert_eq!(
        live.keys().copied().collect::<Vec<_>>(),
        ["a0", "a1", "a2", "a4", "a5", "a6", "a7", "b-new", "zz"],
        "{feed:?}"
    );
    assert_eq!((live["a5"], live["zz"], live["a0"]), (0, 0, 1), "the first matching rule wins");
    assert_eq!(feed.len(), feed.iter().map(|c| c.id.as_str()).collect::<std::collections::HashSet<_>>().len());
    let initial = feed.iter().filter(|c| c.initial).count() as u64;
    assert_eq!(added, initial, "the parts count what they added");
    assert!(!feed.iter().any(|c| c.id.as_str() == "b-new" && c.initial), "b-new entered by its own write");
    let again = store.track_existing_part(sharing, None, 3).await.expect("again");
    assert_eq!((again.added, again.next), (0, None), "a taken set is taken once");
    assert_eq!(store.track_existing(sharing).await.expect("again, whole"), 0);
    store.untrack(sharing).await.expect("untrack");
    store.set_tracking(Vec::new());
}

/// `add: none`: documents matching when the sharing starts are in it, documents that begin to
/// match later are not, even when another member's acceptance starts the sharing again.
pub async fn documents_join_later_only_by_rules_that_let_them(store: &dyn Store) {
    let t = dt("joining");
    let sharing = &SharingId::parse("1123456789abcdef0123456789abcdef").expect("sharing id");
    put(store, &t, edit("first", None, false, json!({"list": "l1"}))).await.expect("first");
    store.set_tracking(vec![track_rule(sharing, &t, 0, Some("list"), &["l1"], false)]);
    assert_eq!(store.track_existing(sharing).await.expect("start"), 1);
    let later = put(store, &t, edit("later", None, false, json!({"list": "l1"}))).await.expect("later");
    put(store, &t, edit("later", Some(&later), false, json!({"list": "l1", "v": 2}))).await.expect("edit");
    assert_eq!(store.track_existing(sharing).await.expect("again"), 0, "the initial set is taken once");
    let feed = store.shared_changes(sharing, 0, 100).await.expect("feed");
    assert_eq!(feed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["first"]);
    // A second rule that lets documents join takes the later ones.
    store.set_tracking(vec![
        track_rule(sharing, &t, 0, Some("list"), &["l1"], false),
        track_rule(sharing, &t, 1, Some("list"), &["l1", "l2"], true),
    ]);
    put(store, &t, edit("third", None, false, json!({"list": "l1"}))).await.expect("third");
    let feed = store.shared_changes(sharing, 0, 100).await.expect("feed");
    assert_eq!(feed.iter().map(|c| (c.id.as_str(), c.rule_index)).collect::<Vec<_>>(), [("first", 0), ("third", 1)]);
    store.untrack(sharing).await.expect("untrack");
    store.set_tracking(Vec::new());
}

/// `apply_received`: the judge sees each document as its write finds it (a copy sent twice in
/// one batch sees the first), refused documents are not written, accepted ones enter the
/// sharing with the judge's rule and the sender as origin.
pub async fn received_documents_are_judged_on_what_their_write_finds(store: &dyn Store) {
    let t = dt("received");
    let sharing = &SharingId::parse("2123456789abcdef0123456789abcdef").expect("sharing id");
    // No rule lets documents join by tracking: they enter only through the judge.
    store.set_tracking(vec![track_rule(sharing, &t, 0, Some("list"), &["l1"], false)]);
    store.track_existing(sharing).await.expect("start");
    let local = put(store, &t, edit("local", None, false, json!({"list": "l1"}))).await.expect("local");
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, Standing)>>> = Default::default();
    let log = seen.clone();
    let judge: std::sync::Arc<Judge> = std::sync::Arc::new(move |w: &DocWrite, st: &Standing| {
        log.lock().expect("log").push((w.id.as_str().to_owned(), *st));
        match (st.exists, st.shared) {
            (true, None) => Verdict::Refuse("exists outside".into()),
            (false, _) => Verdict::Accept { join: Some(0), revokes: false },
            (true, Some(_)) => Verdict::Accept { join: None, revokes: w.deleted },
        }
    });
    let docs = vec![
        replicated("new", &["1-aaa"], false, json!({"list": "l1"})),
        replicated("local", &["2-fff", &local.to_string()], false, json!({"list": "l1", "pulled": true})),
        replicated("new", &["2-bbb", "1-aaa"], true, json!({})),
        DocWrite { revisions: None, rev: None, ..replicated("norev", &["1-ccc"], false, json!({})) },
    ];
    let out = store.apply_received(sharing, MemberIndex(3), &t, docs, judge.clone()).await.expect("apply");
    assert_eq!(
        out,
        [
            Received::Written { revokes: false },
            Received::Refused("exists outside".into()),
            Received::Written { revokes: true },
            Received::Invalid("the document needs _rev or _revisions".into()),
        ]
    );
    let seen = seen.lock().expect("log").clone();
    let new_seen: Vec<&Standing> = seen.iter().filter(|(id, _)| id == "new").map(|(_, st)| st).collect();
    assert_eq!(new_seen.len(), 2, "{seen:?}");
    assert_eq!(*new_seen[0], Standing { exists: false, shared: None, parent: None });
    let shared = new_seen[1].shared.expect("the second copy sees the first in the sharing");
    assert!(new_seen[1].exists && shared.rule_index == 0 && !shared.removed, "{seen:?}");
    // Nothing of the refused document was written; the accepted one is in the sharing.
    let view = store.get(&t, &id("local"), GetOptions::default()).await.expect("local");
    assert_eq!((view.doc.rev, view.conflicts.len()), (local, 0));
    assert!(matches!(store.get(&t, &id("norev"), GetOptions::default()).await, Err(StoreError::NotFound)));
    let feed = store.shared_changes(sharing, 0, 100).await.expect("feed");
    assert_eq!(feed.len(), 1, "{feed:?}");
    assert_eq!((feed[0].id.as_str(), feed[0].origin, feed[0].initial), ("new", Some(MemberIndex(3)), false));
    assert!(feed[0].joined <= feed[0].seq && feed[0].joined > 0);
    let leaves = store.doc_leaves(&t, &[id("new")]).await.expect("leaves");
    assert_eq!(leaves[&id("new")], vec![(rev("2-bbb"), true)]);
    store.untrack(sharing).await.expect("untrack");
    store.set_tracking(Vec::new());
}

/// `shared_docs`: live documents of the sharing, by (doctype, id), a page at a time.
pub async fn shared_documents_are_listed_by_page(store: &dyn Store) {
    let (a, b) = (dt("listed.a"), dt("listed.b"));
    let sharing = &SharingId::parse("3123456789abcdef0123456789abcdef").expect("sharing id");
    store.set_tracking(vec![
        track_rule(sharing, &a, 0, Some("list"), &["l1"], true),
        track_rule(sharing, &b, 1, Some("list"), &["l1"], true),
    ]);
    store.track_existing(sharing).await.expect("start");
    let mut revs = BTreeMap::new();
    for (t, doc) in [(&b, "x"), (&a, "d3"), (&a, "d1"), (&a, "d2"), (&a, "gone"), (&a, "moved"), (&b, "y")] {
        let r = put(store, t, edit(doc, None, false, json!({"list": "l1"}))).await.expect("put");
        revs.insert(doc, r);
    }
    put(store, &a, edit("outside", None, false, json!({"list": "l2"}))).await.expect("outside");
    put(store, &a, edit("gone", Some(&revs["gone"]), true, json!({}))).await.expect("delete");
    put(store, &a, edit("moved", Some(&revs["moved"]), false, json!({"list": "l2"}))).await.expect("move");
    let key = |(t, i): &(Doctype, DocId)| format!("{}/{}", t.as_str().rsplit('.').next().unwrap_or(""), i.as_str());
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = store.shared_docs(sharing, after.clone(), 2).await.expect("page");
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        all.extend(page.iter().map(key));
    }
    assert_eq!(all, ["a/d1", "a/d2", "a/d3", "b/x", "b/y"]);
    assert!(store
        .shared_docs(&SharingId::parse("4123456789abcdef0123456789abcdef").expect("sharing id"), None, 10)
        .await
        .expect("none")
        .is_empty());
    store.untrack(sharing).await.expect("untrack");
    store.set_tracking(Vec::new());
}

pub async fn branches_of_one_document_in_one_batch_all_count(store: &dyn Store) {
    let t = dt("onebatch");
    let errors = store
        .bulk_docs(
            &t,
            vec![
                replicated("a", &["2-b1", "1-r"], false, json!({"v": "b1"})),
                replicated("other", &["1-o"], false, json!({"v": "o"})),
                replicated("a", &["2-b2", "1-r"], false, json!({"v": "b2"})),
                // The same revision again in the batch: its first body stays.
                replicated("a", &["2-b2", "1-r"], false, json!({"v": "again"})),
                // A branch extended further in the same batch keeps no body of its own.
                replicated("a", &["2-b3", "1-r"], false, json!({"v": "b3"})),
                replicated("a", &["3-c3", "2-b3", "1-r"], true, json!({"v": "c3"})),
            ],
            false,
        )
        .await
        .expect("batch");
    assert!(errors.is_empty(), "{errors:?}");
    let found = store.open_revs(&t, &id("a"), OpenRevs::All, false).await.expect("open_revs");
    let leaves: Vec<(String, bool, Value)> = found
        .into_iter()
        .map(|r| match r {
            OpenRev::Found(d) => (d.rev.to_string(), d.deleted, d.body.get("v").unwrap_or(Value::Null)),
            OpenRev::Missing(r) => panic!("leaf {r} has no body"),
        })
        .collect();
    assert_eq!(
        leaves,
        [
            ("2-b2".to_owned(), false, json!("b2")),
            ("2-b1".to_owned(), false, json!("b1")),
            ("3-c3".to_owned(), true, json!("c3")),
        ]
    );
    let missing = store.open_revs(&t, &id("a"), OpenRevs::Some(vec![rev("2-b3")]), false).await.expect("b3");
    assert_eq!(missing, vec![OpenRev::Missing(rev("2-b3"))]);
    let info = store.db_info(&t).await.expect("info");
    assert_eq!((info.doc_count, info.doc_del_count), (2, 0));
    let feed = store.changes(&t, &ChangesQuery { all_docs: true, ..Default::default() }).await.expect("changes");
    let a = feed.rows.iter().find(|r| r.id.as_str() == "a").expect("a in the feed");
    assert_eq!(a.changes, vec![rev("2-b2"), rev("2-b1"), rev("3-c3")]);
}
