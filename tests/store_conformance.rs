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
        body: serde_json::json!({"i": i}).as_object().unwrap().clone(),
    };
    for batch in 0..4u32 {
        let docs: Vec<DocWrite> = (batch * 5000..(batch + 1) * 5000).map(branch).collect();
        assert!(store.bulk_docs(&t, docs, false).await.unwrap().is_empty());
    }
    let view = store.get(&t, &id, GetOptions::default()).await.unwrap();
    assert_eq!(view.doc.rev, Rev::new(2, format!("{:08x}", 19_999)));
    assert_eq!(view.doc.body["i"], 19_999);
    assert_eq!(view.conflicts.len(), 19_999);
    let seq = store.db_info(&t).await.unwrap().update_seq;
    assert!(store.bulk_docs(&t, (0..100).map(branch).collect(), false).await.unwrap().is_empty());
    assert_eq!(store.db_info(&t).await.unwrap().update_seq, seq, "re-sent branches change nothing");
    let leaves = store.open_revs(&t, &id, OpenRevs::All, false).await.unwrap();
    assert_eq!(leaves.len(), 20_000);
}
