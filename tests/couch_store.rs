//! The store conformance suite on the CouchDB backend, against the server named by
//! `HEARTH_TEST_COUCHDB_URL` (scripts/test starts PouchDB Server in memory and sets it; any
//! CouchDB 3 works too, with `HEARTH_TEST_COUCHDB_USER` and `HEARTH_TEST_COUCHDB_PASSWORD`).
//! Each test uses its own database prefix, so runs never see each other's data.

use std::sync::Arc;

use hearth::config::CouchConfig;
use hearth::store::conformance;
use hearth::store::couch::{CouchServer, CouchStore};
use hearth::store::{ChangesQuery, DocId, DocWrite, Doctype, Store, WriteResult};

/// A configuration for the test CouchDB with a fresh prefix, or `None` (saying so) when no
/// server was given.
fn test_config() -> Option<CouchConfig> {
    let Ok(url) = std::env::var("HEARTH_TEST_COUCHDB_URL") else {
        eprintln!("SKIPPED: set HEARTH_TEST_COUCHDB_URL to run the CouchDB backend tests (scripts/test does)");
        return None;
    };
    Some(CouchConfig {
        url: Some(url),
        user: std::env::var("HEARTH_TEST_COUCHDB_USER").ok(),
        password: std::env::var("HEARTH_TEST_COUCHDB_PASSWORD").ok().map(Into::into),
        prefix: Some(format!("t{}", uuid::Uuid::new_v4().simple())),
    })
}

/// A store as one hearth process would open it.
fn open(config: &CouchConfig, domain: &str) -> CouchStore {
    let server = CouchServer::connect_blocking(config).expect("the test CouchDB must be reachable");
    CouchStore::new(server, domain, 1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn couchdb_store_passes_the_conformance_suite() {
    let Some(config) = test_config() else { return };
    let store = open(&config, "conformance.localhost:8080");
    conformance::run_all(&store, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_from_two_processes_never_both_win_and_share_sequence_numbers() {
    let Some(config) = test_config() else { return };
    // Two handles on the same databases, as two hearth processes would have.
    let a: Arc<dyn Store> = Arc::new(open(&config, "shared.localhost"));
    let b: Arc<dyn Store> = Arc::new(open(&config, "shared.localhost"));
    let t = Doctype::parse("io.hearth.race").unwrap();
    let id = DocId::parse("doc").unwrap();
    let edit = |parent: Option<hearth_replicator::rev::Rev>, n: i64| DocWrite {
        id: id.clone(),
        rev: parent,
        revisions: None,
        deleted: false,
        body: hearth::store::Body::from_map(serde_json::json!({"n": n}).as_object().unwrap()),
    };
    let WriteResult::Ok { rev: r1, .. } = a.bulk_docs(&t, vec![edit(None, 0)], true).await.unwrap().remove(0) else {
        panic!("create failed")
    };
    let mut tasks = Vec::new();
    for n in 1..=12 {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        let (t, w) = (t.clone(), edit(Some(r1.clone()), n));
        tasks.push(tokio::spawn(async move { store.bulk_docs(&t, vec![w], true).await.unwrap().remove(0) }));
    }
    let mut ok = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), WriteResult::Ok { .. }) {
            ok += 1;
        }
    }
    assert_eq!(ok, 1, "one edit of a leaf wins, the others conflict");
    let v = a.get(&t, &id, Default::default()).await.unwrap();
    assert!(v.conflicts.is_empty(), "no conflict branch was created: {:?}", v.conflicts);
    assert_eq!(v.doc.rev.pos, 2);
    // Both handles number the changes the same way, whichever numbers them first.
    let cb = b.changes(&t, &ChangesQuery::default()).await.unwrap();
    let ca = a.changes(&t, &ChangesQuery::default()).await.unwrap();
    assert_eq!(ca, cb);
    assert_eq!(ca.rows.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_instance_drops_its_databases() {
    use hearth::instance::{Domain, NewInstance, Registry};
    let Some(couch) = test_config() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut config = hearth::Config::for_tests(dir.path());
    config.store = hearth::config::StoreKind::Couchdb;
    config.couchdb = couch;
    let registry = Registry::open(Arc::new(config)).unwrap();
    let d = Domain::parse("gone.localhost:8080").unwrap();
    let add = || NewInstance { domain: d.clone(), passphrase: None, email: None, public_name: None };
    registry.add(add()).unwrap();
    let t = Doctype::parse("io.cozy.notes").unwrap();
    let w = DocWrite {
        id: DocId::parse("n").unwrap(),
        rev: None,
        revisions: None,
        deleted: false,
        body: hearth::store::Body::from_map(serde_json::json!({"x": 1}).as_object().unwrap()),
    };
    let store = registry.get(&d).unwrap().unwrap().store.clone();
    store.bulk_docs(&t, vec![w], true).await.unwrap();
    store.put_local(&t, "cp", Default::default()).await.unwrap();
    assert_eq!(store.doctypes().await.unwrap(), vec![t.clone()]);
    registry.remove(&d).unwrap();
    registry.add(add()).unwrap();
    let fresh = registry.get(&d).unwrap().unwrap().store.clone();
    assert!(fresh.doctypes().await.unwrap().is_empty(), "the old databases are gone");
    assert_eq!(fresh.db_info(&t).await.unwrap(), Default::default());
}
