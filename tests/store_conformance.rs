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
