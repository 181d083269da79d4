//! The store conformance suite on the embedded SQLite backend.

use hearth::store::conformance;
use hearth::store::sqlite::SqliteStore;

#[tokio::test]
async fn sqlite_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.sqlite"), 1000).unwrap();
    conformance::run_all(&store, 1000).await;
}

#[tokio::test]
async fn sqlite_store_passes_with_a_small_revs_limit_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sqlite");
    {
        let store = SqliteStore::open(&path, 3).unwrap();
        conformance::run_all(&store, 3).await;
    }
    // Everything written is still there after reopening the file.
    let store = SqliteStore::open(&path, 3).unwrap();
    let t = hearth::store::Doctype::parse("io.hearth.conformance.alldocs").unwrap();
    let info = hearth::store::Store::db_info(&store, &t).await.unwrap();
    assert_eq!(info.doc_count, 3);
}

/// 20,000 conflicting branches of one document, pushed in batches of 5,000 as a replicator
/// would: every branch is kept, the CouchDB winner is picked, and re-sending changes nothing.
/// (How long it takes is measured by `hearth-bench`, not here.)
#[tokio::test]
async fn twenty_thousand_conflicting_branches_of_one_document_are_all_kept() {
    use hearth::store::{DocId, DocWrite, GetOptions, OpenRevs, Store};
    use hearth_replicator::rev::Rev;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("t.sqlite"), 1000).unwrap();
    let t = hearth::store::Doctype::parse("io.cozy.notes").unwrap();
    let id = DocId::parse("many").unwrap();
    let branch = |i: u32| DocWrite {
        id: id.clone(),
        rev: None,
        revisions: Some(vec![Rev::new(2, format!("{i:08x}")), Rev::new(1, "root")]),
        deleted: false,
        body: hearth::store::Body::parse(&format!(r#"{{"i":{i}}}"#)).unwrap(),
    };
    for batch in 0..4u32 {
        let docs: Vec<DocWrite> = (batch * 5000..(batch + 1) * 5000).map(branch).collect();
        assert!(store.bulk_docs(&t, docs, false).await.unwrap().is_empty());
    }
    let view = store.get(&t, &id, GetOptions::default()).await.unwrap();
    assert_eq!(view.doc.rev, Rev::new(2, format!("{:08x}", 19_999)));
    assert_eq!(view.doc.body.get("i"), Some(serde_json::json!(19_999)));
    assert_eq!(view.conflicts.len(), 19_999);
    let seq = store.db_info(&t).await.unwrap().update_seq;
    assert!(store.bulk_docs(&t, (0..100).map(branch).collect(), false).await.unwrap().is_empty());
    assert_eq!(store.db_info(&t).await.unwrap().update_seq, seq, "re-sent branches change nothing");
    let leaves = store.open_revs(&t, &id, OpenRevs::All, false).await.unwrap();
    assert_eq!(leaves.len(), 20_000);
}

/// `pending` on SQLite comes from per-bucket counts of the feed (1,024 sequence numbers per
/// bucket) plus the index within one bucket: it must match a full count wherever a page ends,
/// as documents move across buckets, and in a file written before the counts existed (which
/// gets them when opened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_matches_a_full_count_across_feed_buckets_and_in_older_files() {
    use hearth::store::{Body, ChangesQuery, DocId, DocWrite, Doctype, GetOptions, Store};
    use hearth_replicator::rev::Rev;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sqlite");
    let t = Doctype::parse("io.hearth.buckets").unwrap();
    let other = Doctype::parse("io.hearth.buckets-other").unwrap();
    let doc = |i: usize, gen: u64| DocWrite {
        id: DocId::parse(&format!("d{i:04}")).unwrap(),
        rev: Some(Rev::new(gen, format!("g{gen}"))),
        revisions: Some((1..=gen).rev().map(|g| Rev::new(g, format!("g{g}"))).collect()),
        deleted: false,
        body: Body::parse(&format!(r#"{{"i":{i},"gen":{gen}}}"#)).unwrap(),
    };
    async fn check(store: &SqliteStore, t: &Doctype) {
        let feed = store.changes(t, &ChangesQuery::default()).await.unwrap();
        let mut ends = vec![0, 1, 1023, 1024, 1025, 2047, 2048, 2049, 3071, 3500];
        ends.extend(feed.rows.iter().step_by(97).map(|r| r.seq));
        ends.push(feed.last_seq);
        for since in ends {
            let full = store.changes(t, &ChangesQuery { since, ..Default::default() }).await.unwrap().rows.len() as u64;
            let page = store.changes(t, &ChangesQuery { since, limit: Some(5), ..Default::default() }).await.unwrap();
            assert_eq!(page.rows.len() as u64 + page.pending, full, "page of 5 after {since}");
            let none = store.changes(t, &ChangesQuery { since, limit: Some(0), ..Default::default() }).await.unwrap();
            assert_eq!(none.pending, full, "limit=0 after {since}");
        }
    }
    {
        let store = SqliteStore::open(&path, 1000).unwrap();
        for chunk in (0..3000).collect::<Vec<_>>().chunks(500) {
            let docs = chunk.iter().map(|&i| doc(i, 1)).collect();
            assert!(store.bulk_docs(&t, docs, false).await.unwrap().is_empty());
            let docs = chunk.iter().map(|&i| doc(i, 1)).collect();
            store.bulk_docs(&other, docs, false).await.unwrap();
        }
        // Every third document changes again: it leaves its bucket for the last ones.
        let moved: Vec<DocWrite> = (0..3000).step_by(3).map(|i| doc(i, 2)).collect();
        assert!(store.bulk_docs(&t, moved, false).await.unwrap().is_empty());
        check(&store, &t).await;
    }
    // As a file of schema 2 would be: no counts, bodies in a WITHOUT ROWID table (until
    // schema 4), and a body stored with spaces.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "DELETE FROM feed_counts; PRAGMA user_version = 2;
             CREATE TABLE old_bodies (doctype TEXT NOT NULL, id TEXT NOT NULL, rev TEXT NOT NULL,
                 body BLOB NOT NULL, PRIMARY KEY (doctype, id, rev)) WITHOUT ROWID;
             INSERT INTO old_bodies SELECT doctype, id, rev, body FROM bodies;
             DROP TABLE bodies;
             ALTER TABLE old_bodies RENAME TO bodies;
             UPDATE bodies SET body = CAST('{\"i\": 7, \"gen\" : 1}' AS BLOB) WHERE id = 'd0007';
             DROP TABLE sharing_starts;
             INSERT INTO shared (sharing_id, doctype, id, seq, rule, removed)
                 VALUES ('5123456789abcdef0123456789abcdef', 'io.hearth.buckets', 'd0001', 1, 0, 0);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path, 1000).unwrap();
    let version: i64 =
        rusqlite::Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 5, "upgraded to the current schema");
    check(&store, &t).await;
    let seven = store.get(&t, &DocId::parse("d0007").unwrap(), GetOptions::default()).await.unwrap();
    assert_eq!(seven.doc.body.as_str(), r#"{"i":7,"gen":1}"#);
    // Schema 2 took an initial set in one transaction and marked no start: a sharing with a
    // feed has its set, and asking for it again adds nothing.
    let sharing = hearth::sharing::SharingId::parse("5123456789abcdef0123456789abcdef").unwrap();
    store.set_tracking(vec![hearth::store::TrackRule {
        sharing_id: sharing.clone(),
        rule_index: 0,
        doctype: t.clone(),
        selector: None,
        values: vec!["d0002".into()],
        joins: true,
        parent_field: None,
    }]);
    let part = store.track_existing_part(&sharing, None, 100).await.unwrap();
    assert_eq!((part.added, part.next), (0, None), "the set of a sharing of schema 2 is taken already");
}

/// Version 4 of the schema keeps bodies in a rowid table: a file written by version 3 (bodies
/// in a `WITHOUT ROWID` table) is converted when opened, every body as it was written, and
/// takes writes as before.
#[tokio::test]
async fn a_file_of_schema_3_keeps_every_body_when_bodies_move_to_a_rowid_table() {
    use hearth::store::{Body, DocId, DocWrite, Doctype, GetOptions, Store};
    use hearth_replicator::rev::Rev;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sqlite");
    let t = Doctype::parse("io.hearth.bodies").unwrap();
    // Small bodies, bodies over a quarter page and bodies over several pages, as written.
    let text = |i: usize| format!(r#"{{"i" : {i}, "pad":"{}"}}"#, "x".repeat([10, 1500, 20_000][i % 3]));
    let doc = |i: usize| DocWrite {
        id: DocId::parse(&format!("d{i:03}")).unwrap(),
        rev: Some(Rev::new(1, format!("r{i}"))),
        revisions: Some(vec![Rev::new(1, format!("r{i}"))]),
        deleted: false,
        body: Body::parse(&text(i)).unwrap(),
    };
    let table_sql = |path: &std::path::Path| -> String {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("SELECT sql FROM sqlite_master WHERE name = 'bodies'", [], |r| r.get(0))
            .unwrap()
    };
    {
        let store = SqliteStore::open(&path, 1000).unwrap();
        assert!(store.bulk_docs(&t, (0..90).map(doc).collect(), false).await.unwrap().is_empty());
    }
    assert!(!table_sql(&path).contains("WITHOUT ROWID"), "a new file has a rowid table");
    // As version 3 wrote it.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "BEGIN;
             CREATE TABLE old_bodies (doctype TEXT NOT NULL, id TEXT NOT NULL, rev TEXT NOT NULL,
                 body BLOB NOT NULL, PRIMARY KEY (doctype, id, rev)) WITHOUT ROWID;
             INSERT INTO old_bodies SELECT doctype, id, rev, body FROM bodies;
             DROP TABLE bodies;
             ALTER TABLE old_bodies RENAME TO bodies;
             PRAGMA user_version = 3;
             COMMIT;",
        )
        .unwrap();
    assert!(table_sql(&path).contains("WITHOUT ROWID"));

    let store = SqliteStore::open(&path, 1000).unwrap();
    assert!(!table_sql(&path).contains("WITHOUT ROWID"), "converted when opened");
    let version: i64 =
        rusqlite::Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 5);
    for i in 0..90 {
        let got = store.get(&t, &DocId::parse(&format!("d{i:03}")).unwrap(), GetOptions::default()).await.unwrap();
        assert_eq!(got.doc.body.as_str(), Body::parse(&text(i)).unwrap().as_str(), "body of d{i:03}");
    }
    assert!(store.bulk_docs(&t, (90..99).map(doc).collect(), false).await.unwrap().is_empty());
    assert_eq!(store.db_info(&t).await.unwrap().doc_count, 99);
}

/// Version 5 of the schema keeps the revision a document left its sharing at
/// (`shared.left_rev`): a file written by version 4 gets the column when opened, its removed
/// rows say nothing of it (their files' content is not offered any more), and removals
/// recorded from then on have it.
#[tokio::test]
async fn a_file_of_schema_4_gets_the_revision_documents_leave_at_and_its_older_removals_have_none() {
    use hearth::store::{Body, DocId, DocWrite, Doctype, Store, TrackRule};
    use hearth_replicator::rev::Rev;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.sqlite");
    let t = Doctype::parse("io.hearth.leaving").unwrap();
    let sharing = hearth::sharing::SharingId::parse("6123456789abcdef0123456789abcdef").unwrap();
    let rules = vec![TrackRule {
        sharing_id: sharing.clone(),
        rule_index: 0,
        doctype: t.clone(),
        selector: Some("list".into()),
        values: vec!["in".into()],
        joins: true,
        parent_field: None,
    }];
    let edit = |id: &str, parent: Option<&Rev>, list: &str| DocWrite {
        id: DocId::parse(id).unwrap(),
        rev: parent.cloned(),
        revisions: None,
        deleted: false,
        body: Body::parse(&format!(r#"{{"list":"{list}"}}"#)).unwrap(),
    };
    async fn put(store: &SqliteStore, t: &Doctype, w: DocWrite) -> Rev {
        match store.bulk_docs(t, vec![w], true).await.unwrap().pop() {
            Some(hearth::store::WriteResult::Ok { rev, .. }) => rev,
            other => panic!("{other:?}"),
        }
    }
    let b = {
        let store = SqliteStore::open(&path, 1000).unwrap();
        store.set_tracking(rules.clone());
        let a = put(&store, &t, edit("a", None, "in")).await;
        let b = put(&store, &t, edit("b", None, "in")).await;
        put(&store, &t, edit("a", Some(&a), "out")).await;
        b
    };
    // As version 4 wrote it.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("BEGIN; ALTER TABLE shared DROP COLUMN left_rev; PRAGMA user_version = 4; COMMIT;")
        .unwrap();

    let store = SqliteStore::open(&path, 1000).unwrap();
    let version: i64 =
        rusqlite::Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 5);
    store.set_tracking(rules);
    let feed = store.shared_changes(&sharing, 0, 10).await.unwrap();
    let older: Vec<_> = feed.iter().map(|c| (c.id.as_str(), c.removed, c.left_rev.clone())).collect();
    assert_eq!(older, [("b", false, None), ("a", true, None)], "an older removal says nothing of its revision");
    let b2 = put(&store, &t, edit("b", Some(&b), "out")).await;
    let feed = store.shared_changes(&sharing, 0, 10).await.unwrap();
    let now: Vec<_> = feed.iter().map(|c| (c.id.as_str(), c.removed, c.left_rev.clone())).collect();
    assert_eq!(now, [("a", true, None), ("b", true, Some(b2))]);
}
