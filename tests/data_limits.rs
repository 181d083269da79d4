//! The limits CouchDB sets, as hearth applies them (configured small here): a document body over
//! `max_document_size` gets 413 `document_too_large` naming it, on every route that writes one
//! (a `_bulk_docs` refused whole, as CouchDB does); more than `max_bulk_docs_count` documents in
//! a `_bulk_docs`, or `max_bulk_get_count` in a `_bulk_get`, 413 with CouchDB's error names;
//! a `_revs_diff` is bounded in documents and revisions; nothing refused is written. Between
//! instances the same limits hold, and a sender whose batch is refused as too large splits it:
//! the documents that fit arrive, the one too large is reported refused, and replication goes
//! on past it instead of trying it forever.

mod common;

use common::flow::*;
use common::{eventually, spawn_app_with, TestInstance};
use hearth::store::Doctype;
use reqwest::Method;
use serde_json::{json, Value};

const NOTES: &str = "io.cozy.notes";
const DOC_LIMIT: usize = 2000;

/// A document whose body (as stored: `{"text":"..."}`) is exactly `size` bytes.
fn doc_of(size: usize) -> Value {
    json!({"text": "a".repeat(size - r#"{"text":""}"#.len())})
}

async fn changes_count(inst: &TestInstance, token: &str) -> usize {
    let (s, v) = inst.call(Method::GET, &format!("/data/{NOTES}/_changes"), Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    v["results"].as_array().unwrap().len()
}

fn assert_limit(status: u16, v: &Value, error: &str) {
    assert_eq!((status, v["error"].as_str()), (413, Some(error)), "{v}");
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_over_the_size_limit_are_refused_on_every_write_route() {
    let app = spawn_app_with(|c| c.max_document_size = DOC_LIMIT).await;
    let alice = app.add_instance("alice", PASS);
    let t = app.token(&alice, NOTES);
    let at = doc_of(DOC_LIMIT);
    let over = doc_of(DOC_LIMIT + 1);
    // Whitespace and `_` members do not count: the body as stored does.
    let mut spaced = at.clone();
    spaced["_id"] = json!("spaced");
    let spaced = serde_json::to_string_pretty(&spaced).unwrap();
    assert!(spaced.len() > DOC_LIMIT + 10);
    let resp = alice
        .req(Method::POST, &format!("/data/{NOTES}/"), Some(&t))
        .header("Content-Type", "application/json")
        .body(spaced)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let (s, v) = alice.call(Method::PUT, &format!("/data/{NOTES}/at"), Some(&t), Some(at.clone())).await;
    assert_eq!(s, 201, "{v}");

    let (s, v) = alice.call(Method::PUT, &format!("/data/{NOTES}/big"), Some(&t), Some(over.clone())).await;
    assert_limit(s, &v, "document_too_large");
    assert_eq!(v["reason"], "big", "CouchDB names the document");
    let mut with_id = over.clone();
    with_id["_id"] = json!("big2");
    let (s, v) = alice.call(Method::POST, &format!("/data/{NOTES}/"), Some(&t), Some(with_id.clone())).await;
    assert_limit(s, &v, "document_too_large");
    assert_eq!(v["reason"], "big2");
    let mut replicated = over.clone();
    replicated["_rev"] = json!("1-a");
    let (s, v) =
        alice.call(Method::PUT, &format!("/data/{NOTES}/big3?new_edits=false"), Some(&t), Some(replicated)).await;
    assert_limit(s, &v, "document_too_large");
    let (s, v) = alice.call(Method::PUT, &format!("/data/{NOTES}/_local/cp"), Some(&t), Some(over.clone())).await;
    assert_limit(s, &v, "document_too_large");
    // In a batch, one document too large refuses the whole request: nothing is written.
    let docs = json!([{"_id": "ok1", "a": 1}, with_id, {"_id": "ok2", "a": 2}]);
    for new_edits in [true, false] {
        let docs: Vec<Value> = docs
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let mut d = d.clone();
                if !new_edits {
                    d["_rev"] = json!("1-abc");
                }
                d
            })
            .collect();
        let body = json!({"docs": docs, "new_edits": new_edits});
        let (s, v) = alice.call(Method::POST, &format!("/data/{NOTES}/_bulk_docs"), Some(&t), Some(body)).await;
        assert_limit(s, &v, "document_too_large");
        assert_eq!(v["reason"], "big2");
    }
    assert_eq!(changes_count(&alice, &t).await, 2, "only the two documents within the limit were written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_requests_over_their_count_limits_get_couchdb_errors_and_change_nothing() {
    let app = spawn_app_with(|c| {
        c.max_bulk_docs_count = 5;
        c.max_bulk_get_count = 4;
        c.revs_limit = 3;
    })
    .await;
    let alice = app.add_instance("alice", PASS);
    let t = app.token(&alice, NOTES);
    let docs = |n: usize| (0..n).map(|i| json!({"_id": format!("n{i}"), "i": i})).collect::<Vec<_>>();
    let bulk = format!("/data/{NOTES}/_bulk_docs");
    let (s, v) = alice.call(Method::POST, &bulk, Some(&t), Some(json!({"docs": docs(6)}))).await;
    assert_limit(s, &v, "max_bulk_docs_count_exceeded");
    assert!(v["reason"].as_str().unwrap().contains('5'), "{v}");
    assert_eq!(changes_count(&alice, &t).await, 0);
    // A million empty documents in 3 MB: refused at the sixth, whatever follows.
    let huge = format!("{{\"docs\":[{}{{}}]}}", "{},".repeat(1_000_000));
    let resp = alice
        .req(Method::POST, &bulk, Some(&t))
        .header("Content-Type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "max_bulk_docs_count_exceeded");
    let (s, v) = alice.call(Method::POST, &bulk, Some(&t), Some(json!({"docs": docs(5)}))).await;
    assert_eq!(s, 201, "{v}");

    let get = |n: usize| json!({"docs": (0..n).map(|i| json!({"id": format!("n{i}")})).collect::<Vec<_>>()});
    let path = format!("/data/{NOTES}/_bulk_get");
    let (s, v) = alice.call(Method::POST, &path, Some(&t), Some(get(5))).await;
    assert_limit(s, &v, "max_bulk_get_count_exceeded");
    let (s, v) = alice.call(Method::POST, &path, Some(&t), Some(get(4))).await;
    assert_eq!((s, v["results"].as_array().map(Vec::len)), (200, Some(4)), "{v}");

    // `_revs_diff`: at most max_bulk_docs_count documents of at most revs_limit revisions.
    let path = format!("/data/{NOTES}/_revs_diff");
    let ids = |n: usize| (0..n).map(|i| (format!("x{i}"), json!(["1-a"]))).collect::<serde_json::Map<_, _>>();
    let (s, v) = alice.call(Method::POST, &path, Some(&t), Some(Value::Object(ids(6)))).await;
    assert_limit(s, &v, "too_large");
    let (s, v) = alice.call(Method::POST, &path, Some(&t), Some(Value::Object(ids(5)))).await;
    assert_eq!((s, v.as_object().map(|m| m.len())), (200, Some(5)), "{v}");
    let (s, v) = alice.call(Method::POST, &path, Some(&t), Some(json!({"x": ["1-a", "2-b", "3-c", "4-d"]}))).await;
    assert_limit(s, &v, "too_large");
    let (s, _) = alice.call(Method::POST, &path, Some(&t), Some(json!({"x": ["1-a", "2-b", "3-c"]}))).await;
    assert_eq!(s, 200);
    assert_eq!(changes_count(&alice, &t).await, 5);
}

/// Bob's hearth takes smaller documents and batches than alice's sends: her batch of six notes
/// is refused as too large, split until each part passes; the note over bob's
/// `max_document_size` is refused alone, reported by alice's status with the reason, and not
/// sent again: the link settles with nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_splits_what_a_member_refuses_as_too_large_and_reports_the_document_too_large_refused() {
    let owner_app = spawn_app_with(|_| {}).await;
    let member_app = spawn_app_with(|c| {
        c.max_document_size = DOC_LIMIT;
        c.max_bulk_docs_count = 2;
    })
    .await;
    let alice = owner_app.add_instance("alice", PASS);
    let bob = member_app.add_instance("bob", PASS);
    let a = owner_app.token(&alice, "io.cozy.notes io.cozy.sharings");
    let ids: Vec<String> = (0..6).map(|i| format!("0123456789abcdef0123456789abcde{i}")).collect();
    let big = &ids[3];
    for id in &ids {
        let body = if id == big { doc_of(DOC_LIMIT * 2) } else { json!({"title": id}) };
        put_doc(&alice, &a, NOTES, id, body).await;
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let sid =
        share(&owner_app, &alice, json!([rule_with(NOTES, None, &refs, ("sync", "sync", "sync"))]), &[(&bob, false)])
            .await;
    eventually(60, "the link settles", || async {
        let r = replication_state(&alice, &a, &sid, 1).await;
        r["pending"] == 0 && r["running"] == false && r["refused_docs"] == 1
    })
    .await;
    let r = replication_state(&alice, &a, &sid, 1).await;
    assert_eq!(r["health"], "degraded", "{r}");
    assert_eq!(r["last_refusal"]["doc"], format!("{NOTES}/{big}"), "{r}");
    assert!(r["last_refusal"]["reason"].as_str().unwrap().contains("too large"), "{r}");
    for id in &ids {
        let on_bob = id_on(&owner_app, &alice, &sid, 1, id).await;
        let found = winner(&member_app, &bob, NOTES, &on_bob).await;
        assert_eq!(found.is_some(), id != big, "{id} on bob");
    }
    let bob_store = member_app.instance(&bob.domain).store.clone();
    assert_eq!(bob_store.db_info(&Doctype::parse(NOTES).unwrap()).await.unwrap().doc_count, 5);
    // Later edits still flow; the refused one is not retried meanwhile.
    let (rev, _) = winner(&owner_app, &alice, NOTES, &ids[0]).await.unwrap();
    let edit = put_doc(&alice, &a, NOTES, &ids[0], json!({"_rev": rev, "title": "edited"})).await;
    let first_on_bob = id_on(&owner_app, &alice, &sid, 1, &ids[0]).await;
    eventually(60, "the edit reaches bob", || async {
        winner(&member_app, &bob, NOTES, &first_on_bob).await.is_some_and(|(r, _)| r == edit)
    })
    .await;
    eventually(60, "the link settles again", || async {
        let r = replication_state(&alice, &a, &sid, 1).await;
        r["pending"] == 0 && r["running"] == false
    })
    .await;
    let r = replication_state(&alice, &a, &sid, 1).await;
    assert_eq!((r["refused_docs"].as_u64(), r["doc_write_failures"].as_u64()), (Some(1), Some(1)), "{r}");
}
