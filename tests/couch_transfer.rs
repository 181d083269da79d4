//! `hearth instances export|import`: an instance moved from SQLite to CouchDB and back keeps
//! every document's revision tree, winner and conflicts, and its `_local` documents. The
//! SQLite round trip always runs; the CouchDB one needs `HEARTH_TEST_COUCHDB_URL` (scripts/test
//! sets it).

use std::collections::BTreeMap;

use hearth::config::CouchConfig;
use hearth::store::couch::{CouchServer, CouchStore};
use hearth::store::sqlite::SqliteStore;
use hearth::store::{
    transfer, Body, ChangesQuery, DocId, DocWrite, Doctype, GetOptions, OpenRev, OpenRevs, Store, StoreError,
    WriteResult,
};
use hearth_replicator::rev::Rev;
use serde_json::value::RawValue;
use serde_json::{json, Value};

const DOMAIN: &str = "mover.localhost:8080";
/// Issue 9's body: keys out of order at two depths, integers beyond `u64` and `i64`.
const EXACT: &str =
    r#"{"zeta":1,"alpha":{"yak":2,"bee":3},"big":123456789012345678901234567890,"neg":-9223372036854775809}"#;

fn body(v: Value) -> Body {
    Body::from_map(v.as_object().unwrap())
}

fn rev(s: &str) -> Rev {
    s.parse().unwrap()
}

fn edit(id: &str, parent: Option<&Rev>, deleted: bool, b: Value) -> DocWrite {
    DocWrite { id: DocId::parse(id).unwrap(), rev: parent.cloned(), revisions: None, deleted, body: body(b) }
}

fn replicated(id: &str, history: &[&str], deleted: bool, b: Value) -> DocWrite {
    let revs: Vec<Rev> = history.iter().map(|r| rev(r)).collect();
    DocWrite {
        id: DocId::parse(id).unwrap(),
        rev: revs.first().cloned(),
        revisions: Some(revs),
        deleted,
        body: body(b),
    }
}

async fn put(store: &dyn Store, t: &Doctype, w: DocWrite) -> Rev {
    match store.bulk_docs(t, vec![w], true).await.unwrap().remove(0) {
        WriteResult::Ok { rev, .. } => rev,
        other => panic!("edit failed: {other:?}"),
    }
}

/// An instance with a bit of everything: edits, deletions, recreations, conflicts (live and
/// deleted), long and stemmed-looking histories, several doctypes, `_local` documents, and a
/// doctype holding only `_local` documents.
async fn populate(store: &dyn Store) {
    let notes = Doctype::parse("io.cozy.notes").unwrap();
    let files = Doctype::parse("io.cozy.files").unwrap();
    let sharings = Doctype::parse("io.cozy.sharings").unwrap();
    let checkpoints = Doctype::parse("io.hearth.checkpoints").unwrap();
    for i in 0..30 {
        let id = format!("note-{i:02}");
        let mut r = put(store, &notes, edit(&id, None, false, json!({"title": format!("n{i}"), "v": 0}))).await;
        for v in 1..(i % 4) {
            r = put(store, &notes, edit(&id, Some(&r), false, json!({"title": format!("n{i}"), "v": v}))).await;
        }
        if i % 7 == 0 {
            put(store, &notes, edit(&id, Some(&r), true, json!({}))).await;
        }
    }
    // Deleted, then recreated on top of its tombstone.
    let r = put(store, &notes, edit("phoenix", None, false, json!({"life": 1}))).await;
    let r = put(store, &notes, edit("phoenix", Some(&r), true, json!({}))).await;
    assert_eq!(r.pos, 2);
    put(store, &notes, edit("phoenix", None, false, json!({"life": 2}))).await;
    // Conflicts from peers: two live branches and a deleted one.
    let errors = store
        .bulk_docs(
            &notes,
            vec![
                replicated("conflicted", &["2-aaa", "1-root"], false, json!({"side": "a"})),
                replicated("conflicted", &["2-bbb", "1-root"], false, json!({"side": "b"})),
                replicated("conflicted", &["4-ddd", "3-ccc", "2-ccc2", "1-root"], true, json!({})),
                replicated("roots", &["1-x"], false, json!({"root": "x"})),
                replicated("roots", &["3-z", "2-y"], false, json!({"root": "y"})),
                replicated("all-deleted", &["2-p", "1-o"], true, json!({})),
                replicated("all-deleted", &["2-q", "1-o"], true, json!({"kept": "in a tombstone"})),
            ],
            false,
        )
        .await
        .unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let history: Vec<String> = (1..=60).rev().map(|i| format!("{i}-h{i}")).collect();
    let refs: Vec<&str> = history.iter().map(String::as_str).collect();
    store.bulk_docs(&files, vec![replicated("long", &refs, false, json!({"name": "a.txt"}))], false).await.unwrap();
    put(store, &files, edit("dir", None, false, json!({"type": "directory", "path": "/"}))).await;
    put(store, &sharings, edit("s1", None, false, json!({"rules": [{"doctype": "io.cozy.notes"}], "active": true})))
        .await;
    // Bodies a parse into numbers would change: they must move byte for byte.
    let exact = |text: &str| Body::parse(text).unwrap();
    let mut w = edit("exact", None, false, json!({}));
    w.body = exact(EXACT);
    put(store, &notes, w).await;
    let mut w = replicated("exact-conflict", &["2-a", "1-o"], false, json!({}));
    w.body = exact(EXACT);
    let mut other = replicated("exact-conflict", &["2-b", "1-o"], false, json!({}));
    other.body = exact(r#"{"z":1e400,"a":0.30000000000000004,"9":{"y":1,"x":2}}"#);
    assert!(store.bulk_docs(&notes, vec![w, other], false).await.unwrap().is_empty());
    store.put_local(&files, "exact", exact(EXACT)).await.unwrap();
    store.put_local(&notes, "sharing-s1-1", body(json!({"last_seq": 12}))).await.unwrap();
    store.put_local(&notes, "sharing-s1-1", body(json!({"last_seq": 31}))).await.unwrap();
    store.put_local(&files, "a/b c", body(json!({"nested": {"x": [1, 2]}}))).await.unwrap();
    store.put_local(&checkpoints, "only-local", body(json!({"k": "v"}))).await.unwrap();
}

/// Header and end line; leaves per (doctype, id); `_local` bodies per (doctype, id), all as
/// their JSON text.
type Normalised = (Value, BTreeMap<(String, String), Vec<String>>, BTreeMap<(String, String), String>);

/// The parts of an export line the comparison needs; documents stay text (a parse into
/// `Value` would round their numbers, or refuse `1e400`).
#[derive(serde::Deserialize)]
struct Line {
    r#type: String,
    #[serde(default)]
    doctype: String,
    #[serde(default)]
    id: String,
    /// The leaves on `doc` lines, their count on the `end` line.
    leaves: Option<Box<RawValue>>,
    body: Option<Box<RawValue>>,
}

#[derive(serde::Deserialize)]
struct Leaf {
    _rev: String,
}

/// Everything an export says, in a form where order doesn't matter: per (doctype, id) the
/// leaves (with bodies and `_revisions`, as text) sorted by revision; per (doctype, id) the
/// `_local` bodies. The header and counts are compared too.
fn normalise(export: &[u8]) -> Normalised {
    let mut docs = BTreeMap::new();
    let mut locals = BTreeMap::new();
    let mut header = Value::Null;
    let mut end = Value::Null;
    for line in std::str::from_utf8(export).unwrap().lines() {
        let l: Line = serde_json::from_str(line).unwrap();
        let key = (l.doctype.clone(), l.id.clone());
        match l.r#type.as_str() {
            "header" => header = serde_json::from_str(line).unwrap(),
            "doctype" => {}
            "doc" => {
                let leaves: Vec<Box<RawValue>> = serde_json::from_str(l.leaves.unwrap().get()).unwrap();
                let mut leaves: Vec<(Rev, String)> = leaves
                    .iter()
                    .map(|leaf| {
                        let rev = serde_json::from_str::<Leaf>(leaf.get()).unwrap()._rev.parse::<Rev>().unwrap();
                        (rev, leaf.get().to_owned())
                    })
                    .collect();
                leaves.sort();
                let leaves = leaves.into_iter().map(|(_, text)| text).collect();
                assert!(docs.insert(key, leaves).is_none(), "a document exported twice");
            }
            "local" => {
                locals.insert(key, l.body.unwrap().get().to_owned());
            }
            "end" => end = serde_json::from_str(line).unwrap(),
            other => panic!("unknown line type {other}"),
        }
    }
    (json!({"header": header, "end": end}), docs, locals)
}

async fn export(store: &dyn Store) -> Vec<u8> {
    let mut out = Vec::new();
    transfer::export(store, DOMAIN, &mut out).await.unwrap();
    out
}

async fn import(store: &dyn Store, file: &[u8]) {
    let mut input = std::io::BufReader::new(file);
    assert_eq!(transfer::exported_domain(&mut input).unwrap(), DOMAIN);
    transfer::import(store, &mut input).await.unwrap();
}

/// Every document reads the same on both stores: winner, body, conflicts, deleted
/// conflicts, each leaf and its history.
async fn same_documents(a: &dyn Store, b: &dyn Store, export: &[u8]) {
    let (_, docs, _) = normalise(export);
    assert!(docs.len() >= 37, "only {} documents exported", docs.len());
    for (doctype, id) in docs.keys() {
        let (t, id) = (Doctype::parse(doctype).unwrap(), DocId::parse(id).unwrap());
        let (va, vb) = (
            a.get(&t, &id, GetOptions { rev: None, revs: true }).await,
            b.get(&t, &id, GetOptions { rev: None, revs: true }).await,
        );
        match (va, vb) {
            (Ok(va), Ok(vb)) => assert_eq!(va, vb, "{doctype}/{id}"),
            (Err(StoreError::Deleted), Err(StoreError::Deleted)) => {}
            (va, vb) => panic!("{doctype}/{id}: {va:?} vs {vb:?}"),
        }
        let la = a.open_revs(&t, &id, OpenRevs::All, false).await.unwrap();
        let lb = b.open_revs(&t, &id, OpenRevs::All, false).await.unwrap();
        assert_eq!(la, lb, "{doctype}/{id}: leaves, winner first");
        assert!(la.iter().all(|l| matches!(l, OpenRev::Found(_))));
    }
}

async fn moves_there_and_back(target: &dyn Store) {
    let dir = tempfile::tempdir().unwrap();
    let source = SqliteStore::open(&dir.path().join("source.sqlite"), 1000).unwrap();
    populate(&source).await;
    let first = export(&source).await;

    import(target, &first).await;
    let second = export(target).await;
    assert_eq!(normalise(&first), normalise(&second), "the target exports what it imported");
    same_documents(&source, target, &first).await;
    // Sequence numbers continue above the source's, so old checkpoints re-read everything.
    let notes = Doctype::parse("io.cozy.notes").unwrap();
    let old = source.db_info(&notes).await.unwrap();
    let new = target.db_info(&notes).await.unwrap();
    assert!(new.update_seq > old.update_seq, "{new:?} after {old:?}");
    assert_eq!((new.doc_count, new.doc_del_count), (old.doc_count, old.doc_del_count));
    let after_checkpoint =
        target.changes(&notes, &ChangesQuery { since: old.update_seq, ..Default::default() }).await.unwrap();
    assert_eq!(after_checkpoint.rows.len() as u64, old.doc_count + old.doc_del_count);
    assert_eq!(target.get_local(&notes, "sharing-s1-1").await.unwrap().body, body(json!({"last_seq": 31})));
    // Exact bodies, compared as text (`same_documents` compares every leaf's body text too).
    assert!(String::from_utf8_lossy(&first).contains(&EXACT[1..EXACT.len() - 1]), "the file holds the text as written");
    let exact = target.get(&notes, &DocId::parse("exact").unwrap(), GetOptions::default()).await.unwrap();
    assert_eq!(exact.doc.body.as_str(), EXACT);
    let files = Doctype::parse("io.cozy.files").unwrap();
    assert_eq!(target.get_local(&files, "exact").await.unwrap().body.as_str(), EXACT);

    // And back into a fresh SQLite store.
    let back = SqliteStore::open(&dir.path().join("back.sqlite"), 1000).unwrap();
    import(&back, &second).await;
    let third = export(&back).await;
    assert_eq!(normalise(&first), normalise(&third), "back where it started");
    same_documents(&source, &back, &first).await;

    // Importing again changes nothing.
    import(target, &first).await;
    assert_eq!(normalise(&export(target).await), normalise(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_moves_between_sqlite_stores_with_every_tree() {
    let dir = tempfile::tempdir().unwrap();
    let target = SqliteStore::open(&dir.path().join("target.sqlite"), 1000).unwrap();
    moves_there_and_back(&target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_moves_from_sqlite_to_couchdb_and_back_with_every_tree() {
    let Ok(url) = std::env::var("HEARTH_TEST_COUCHDB_URL") else {
        eprintln!("SKIPPED: set HEARTH_TEST_COUCHDB_URL to run the CouchDB backend tests (scripts/test does)");
        return;
    };
    let config = CouchConfig {
        url: Some(url),
        user: std::env::var("HEARTH_TEST_COUCHDB_USER").ok(),
        password: std::env::var("HEARTH_TEST_COUCHDB_PASSWORD").ok().map(Into::into),
        prefix: Some(format!("t{}", uuid::Uuid::new_v4().simple())),
    };
    let server = CouchServer::connect_blocking(&config).unwrap();
    let target = CouchStore::new(server, DOMAIN, 1000);
    moves_there_and_back(&target).await;
}

#[tokio::test]
async fn a_truncated_or_foreign_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let source = SqliteStore::open(&dir.path().join("s.sqlite"), 1000).unwrap();
    populate(&source).await;
    let full = export(&source).await;
    let cut = &full[..full.len() - 40];
    let cut = &cut[..cut.iter().rposition(|b| *b == b'\n').unwrap() + 1];
    let target = SqliteStore::open(&dir.path().join("t.sqlite"), 1000).unwrap();
    let mut input = std::io::BufReader::new(cut);
    transfer::exported_domain(&mut input).unwrap();
    let err = transfer::import(&target, &mut input).await.unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err:#}");
    let mut foreign = std::io::BufReader::new(&b"{\"hello\": 1}\n"[..]);
    assert!(transfer::exported_domain(&mut foreign).is_err());
}
