//! CouchDB's semantics on `/data`, input by input from a review (defects D2 to D8): ETags that
//! only promise what the body holds, `_local` revisions checked, `open_revs` without
//! `_revisions` unless asked, `_changes?descending=true`, `_bulk_get` errors per document, write
//! answers that show a deletion and give a `Location`, scoped counts. The tests run on SQLite,
//! and on CouchDB when `HEARTH_TEST_COUCHDB_URL` is set (scripts/test); PouchDB Server (in
//! tests/node) answers the same way.

mod common;

use common::flow::PASS;
use common::{spawn_app, TestApp, TestInstance};
use reqwest::Method;
use serde_json::{json, Value};

const U: &str = "/data/io.cozy.notes";

async fn setup() -> (TestApp, TestInstance, String) {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let t = app.token(&alice, "io.cozy.notes");
    (app, alice, t)
}

/// Sends `body` and returns status, headers and the JSON answer (Null if not JSON).
async fn send(
    inst: &TestInstance,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = inst.req(method, path, Some(token));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("answer");
    (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_deletion_written_with_put_answers_data_with_deleted_true() {
    let (_app, alice, t) = setup().await;
    let (s, _, put) = send(&alice, Method::PUT, &format!("{U}/dz"), &t, Some(json!({"a": 0}))).await;
    assert_eq!(s, 201, "{put}");
    let rev = put["rev"].as_str().unwrap();
    let body = json!({"_rev": rev, "a": 1, "_deleted": true});
    let (s, _, del) = send(&alice, Method::PUT, &format!("{U}/dz"), &t, Some(body)).await;
    assert_eq!(s, 201, "{del}");
    assert_eq!(del["data"], json!({"_id": "dz", "_rev": del["rev"], "a": 1, "_deleted": true}));
    let (s, _, _) = send(&alice, Method::GET, &format!("{U}/dz"), &t, None).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn created_documents_are_answered_with_their_location() {
    let (_app, alice, t) = setup().await;
    let base = alice.url(U);
    let (s, h, put) = send(&alice, Method::PUT, &format!("{U}/a%2Bb%2Fc"), &t, Some(json!({"x": 1}))).await;
    assert_eq!(s, 201, "{put}");
    assert_eq!(h["location"], format!("{base}/a%2Bb%2Fc").as_str());
    let (s, h, post) = send(&alice, Method::POST, &format!("{U}/"), &t, Some(json!({"x": 2}))).await;
    assert_eq!(s, 201, "{post}");
    assert_eq!(h["location"], format!("{base}/{}", post["id"].as_str().unwrap()).as_str());
    let replicated = json!({"_rev": "1-0000000000000000000000000000000a", "x": 3});
    let (s, h, _) = send(&alice, Method::PUT, &format!("{U}/r?new_edits=false"), &t, Some(replicated)).await;
    assert_eq!(s, 201);
    assert_eq!(h["location"], format!("{base}/r").as_str());
    let (s, h, _) = send(&alice, Method::PUT, &format!("{U}/_local/ck"), &t, Some(json!({"last_seq": 3}))).await;
    assert_eq!(s, 201);
    assert_eq!(h["location"], format!("{base}/_local/ck").as_str());
}

#[tokio::test]
async fn a_repeated_id_in_bulk_docs_is_told_as_such_not_as_a_url_mismatch() {
    let (_app, alice, t) = setup().await;
    let text = r#"{"docs":[{"_id":"one","_id":"two","v":1}]}"#;
    let resp = alice
        .req(Method::POST, &format!("{U}/_bulk_docs"), Some(&t))
        .header("Content-Type", "application/json")
        .body(text)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let answer: Value = resp.json().await.unwrap();
    let reason = answer["reason"].as_str().unwrap();
    assert!(reason.contains("_id more than once"), "{reason}");
    assert!(!reason.contains("URL"), "{reason}");
    // The same repeated id in a PUT, and a body id that differs from the URL's, keep their reasons.
    let (s, _, a) = send(&alice, Method::PUT, &format!("{U}/one"), &t, Some(json!({"_id": "other"}))).await;
    assert_eq!(s, 400);
    assert!(a["reason"].as_str().unwrap().contains("URL"), "{a}");
    let (s, info) = alice.call(Method::GET, &format!("{U}/"), Some(&t), None).await;
    assert_eq!((s, &info["doc_count"]), (200, &json!(0)));
}

#[tokio::test]
async fn local_writes_need_the_current_revision_as_couchdb_checks_it() {
    let (_app, alice, t) = setup().await;
    let ck = format!("{U}/_local/ck");
    let (s, _, a) = send(&alice, Method::PUT, &ck, &t, Some(json!({"last_seq": 3}))).await;
    assert_eq!((s, &a["rev"]), (201, &json!("0-1")), "{a}");
    let (s, _, a) = send(&alice, Method::PUT, &ck, &t, Some(json!({"_rev": "0-1", "last_seq": 4}))).await;
    assert_eq!((s, &a["rev"]), (201, &json!("0-2")), "{a}");
    // A stale revision, none on an existing document, one in the future: 409, nothing written.
    for body in [json!({"_rev": "0-1", "last_seq": 5}), json!({"last_seq": 6}), json!({"_rev": "0-9", "last_seq": 7})] {
        let (s, _, a) = send(&alice, Method::PUT, &ck, &t, Some(body.clone())).await;
        assert_eq!((s, &a["error"]), (409, &json!("conflict")), "{body}: {a}");
    }
    let (s, _, a) = send(&alice, Method::PUT, &format!("{ck}?rev=0-1"), &t, Some(json!({"last_seq": 8}))).await;
    assert_eq!(s, 409, "{a}");
    let (s, _, a) = send(&alice, Method::PUT, &ck, &t, Some(json!({"_rev": "1-abc", "last_seq": 8}))).await;
    assert_eq!(s, 400, "{a}");
    let (s, _, doc) = send(&alice, Method::GET, &ck, &t, None).await;
    assert_eq!((s, doc), (200, json!({"_id": "_local/ck", "_rev": "0-2", "last_seq": 4})));
    // The rev in the query works as in the body.
    let (s, _, a) = send(&alice, Method::PUT, &format!("{ck}?rev=0-2"), &t, Some(json!({"last_seq": 9}))).await;
    assert_eq!((s, &a["rev"]), (201, &json!("0-3")), "{a}");
    // Deleting needs the current revision too.
    for path in [format!("{ck}?rev=0-99"), ck.clone(), format!("{ck}?rev=0-2")] {
        let (s, _, a) = send(&alice, Method::DELETE, &path, &t, None).await;
        assert_eq!((s, &a["error"]), (409, &json!("conflict")), "{path}: {a}");
    }
    let (s, _, _) = send(&alice, Method::GET, &ck, &t, None).await;
    assert_eq!(s, 200);
    let (s, _, a) = send(&alice, Method::DELETE, &format!("{ck}?rev=0-3"), &t, None).await;
    assert_eq!(s, 200, "{a}");
    let (s, _, _) = send(&alice, Method::DELETE, &format!("{ck}?rev=0-3"), &t, None).await;
    assert_eq!(s, 404);
    // Once deleted, it is written anew without a revision.
    let (s, _, a) = send(&alice, Method::PUT, &ck, &t, Some(json!({"last_seq": 10}))).await;
    assert_eq!((s, &a["rev"]), (201, &json!("0-1")), "{a}");
}

/// GET with `If-None-Match`: status, ETag header if any, and the body.
async fn get_if(inst: &TestInstance, path: &str, token: &str, etag: &str) -> (u16, Option<String>, String) {
    let resp = inst.req(Method::GET, path, Some(token)).header("If-None-Match", etag).send().await.unwrap();
    let etag = resp.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
    (resp.status().as_u16(), etag, resp.text().await.unwrap())
}

#[tokio::test]
async fn an_etag_never_answers_304_for_a_body_whose_meta_members_changed() {
    let (_app, alice, t) = setup().await;
    let (s, h, put) = send(&alice, Method::PUT, &format!("{U}/cg"), &t, Some(json!({"key": 1}))).await;
    assert_eq!(s, 201, "{put}");
    let etag = h["etag"].to_str().unwrap().to_owned();
    // Without conflicts the body is the revision's own: the ETag holds, with or without the option.
    for q in ["", "?conflicts=true", "?deleted_conflicts=true"] {
        let (s, tag, _) = get_if(&alice, &format!("{U}/cg{q}"), &t, &etag).await;
        assert_eq!((s, tag.as_deref()), (304, Some(etag.as_str())), "{q}");
    }
    let losing = json!({"_rev": "1-0000000000000000000000000000000a", "key": 2});
    let (s, _, a) = send(&alice, Method::PUT, &format!("{U}/cg?new_edits=false"), &t, Some(losing)).await;
    assert_eq!(s, 201, "{a}");
    for q in ["?conflicts=true", "?meta=true"] {
        let (s, tag, body) = get_if(&alice, &format!("{U}/cg{q}"), &t, &etag).await;
        assert_eq!((s, tag), (200, None), "{q}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["_conflicts"], json!(["1-0000000000000000000000000000000a"]), "{q}");
    }
    // revs_info and local_seq: CouchDB sends no ETag either.
    for q in ["?revs_info=true", "?local_seq=true"] {
        let (s, tag, _) = get_if(&alice, &format!("{U}/cg{q}"), &t, &etag).await;
        assert_eq!((s, tag), (200, None), "{q}");
    }
    // The plain document did not change: still 304.
    let (s, _, _) = get_if(&alice, &format!("{U}/cg"), &t, &etag).await;
    assert_eq!(s, 304);
}

#[tokio::test]
async fn open_revs_answers_revisions_only_when_asked_with_revs_true() {
    let (_app, alice, t) = setup().await;
    let (s, _, a) = send(&alice, Method::PUT, &format!("{U}/o"), &t, Some(json!({"v": 1}))).await;
    assert_eq!(s, 201, "{a}");
    let (s, _, b) = send(&alice, Method::PUT, &format!("{U}/o"), &t, Some(json!({"_rev": a["rev"], "v": 2}))).await;
    assert_eq!(s, 201, "{b}");
    let rev = b["rev"].as_str().unwrap();
    for q in ["open_revs=all", &format!("open_revs=[\"{rev}\"]")] {
        let (s, plain) = alice.call(Method::GET, &format!("{U}/o?{q}"), Some(&t), None).await;
        assert_eq!(s, 200);
        assert_eq!(plain, json!([{"ok": {"_id": "o", "_rev": rev, "v": 2}}]), "{q}");
        let (s, with) = alice.call(Method::GET, &format!("{U}/o?{q}&revs=true"), Some(&t), None).await;
        assert_eq!(s, 200);
        let ids = &with[0]["ok"]["_revisions"];
        assert_eq!(ids["start"], 2, "{q}: {with}");
        assert_eq!(ids["ids"].as_array().map(Vec::len), Some(2), "{q}: {with}");
    }
}

#[tokio::test]
async fn bulk_get_answers_a_bad_rev_in_its_own_entry_and_a_deleted_document_without_rev_as_its_leaf() {
    let (_app, alice, t) = setup().await;
    let (s, _, cf) = send(&alice, Method::PUT, &format!("{U}/cf"), &t, Some(json!({"v": 1}))).await;
    assert_eq!(s, 201, "{cf}");
    let (s, _, dz) = send(&alice, Method::PUT, &format!("{U}/dz"), &t, Some(json!({"v": 2}))).await;
    assert_eq!(s, 201, "{dz}");
    let (s, _, del) =
        send(&alice, Method::DELETE, &format!("{U}/dz?rev={}", dz["rev"].as_str().unwrap()), &t, None).await;
    assert_eq!(s, 200, "{del}");
    let aaa = "1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let docs = json!({"docs": [
        {"id": "cf", "rev": aaa},
        {"id": "a+b", "rev": "bad"},
        {"id": "cf"},
        {"id": "dz"},
        {"id": "nope"},
        {"id": "_design/x"},
    ]});
    let (s, answer) = alice.call(Method::POST, &format!("{U}/_bulk_get"), Some(&t), Some(docs)).await;
    assert_eq!(s, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 6, "{answer}");
    assert_eq!(results[0]["docs"][0]["error"]["error"], "not_found", "{answer}");
    assert_eq!(results[0]["docs"][0]["error"]["rev"], aaa);
    let bad = &results[1];
    assert_eq!(bad["id"], "a+b");
    assert_eq!(bad["docs"][0]["error"]["error"], "bad_request", "{answer}");
    assert_eq!(bad["docs"][0]["error"]["rev"], "bad");
    assert_eq!(results[2]["docs"], json!([{"ok": {"_id": "cf", "_rev": cf["rev"], "v": 1}}]));
    assert_eq!(results[3]["docs"], json!([{"ok": {"_id": "dz", "_rev": del["rev"], "_deleted": true}}]));
    assert_eq!(results[4]["docs"][0]["error"]["error"], "not_found", "{answer}");
    assert_eq!(results[5]["docs"][0]["error"]["error"], "bad_request", "{answer}");
}

#[tokio::test]
async fn changes_in_descending_order_are_refused_rather_than_answered_in_the_wrong_order() {
    let (_app, alice, t) = setup().await;
    for id in ["c1", "c2"] {
        let (s, _, _) = send(&alice, Method::PUT, &format!("{U}/{id}"), &t, Some(json!({}))).await;
        assert_eq!(s, 201);
    }
    for method in [Method::GET, Method::POST] {
        let (s, a) = alice.call(method.clone(), &format!("{U}/_changes?descending=true"), Some(&t), None).await;
        assert_eq!((s, &a["error"]), (400, &json!("bad_request")), "{method}: {a}");
        assert!(a["reason"].as_str().unwrap().contains("descending"), "{a}");
    }
    let (s, a) = alice.call(Method::GET, &format!("{U}/_changes?descending=false"), Some(&t), None).await;
    assert_eq!(s, 200, "{a}");
    let ids: Vec<_> = a["results"].as_array().unwrap().iter().map(|r| r["id"].clone()).collect();
    assert_eq!(ids, [json!("c1"), json!("c2")]);
}

#[tokio::test]
async fn all_docs_tells_a_scoped_token_its_own_count_not_the_doctypes() {
    let (app, alice, t) = setup().await;
    for i in 0..10 {
        let (s, _, _) = send(&alice, Method::PUT, &format!("{U}/n{i}"), &t, Some(json!({"i": i}))).await;
        assert_eq!(s, 201);
    }
    let (s, all) = alice.call(Method::GET, &format!("{U}/_all_docs"), Some(&t), None).await;
    assert_eq!((s, &all["total_rows"]), (200, &json!(10)));
    let some = app.token(&alice, "io.cozy.notes:GET:n2,n3,n9");
    let (s, scoped) = alice.call(Method::GET, &format!("{U}/_all_docs"), Some(&some), None).await;
    assert_eq!(s, 200, "{scoped}");
    assert_eq!(scoped["total_rows"], 3, "{scoped}");
    assert_eq!(scoped["rows"].as_array().unwrap().len(), 3);
    let (s, keyed) = alice.call(Method::GET, &format!("{U}/_all_docs?keys=[\"n2\"]"), Some(&some), None).await;
    assert_eq!((s, &keyed["total_rows"]), (200, &json!(3)), "{keyed}");
}
