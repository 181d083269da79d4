//! `_changes`, `_all_docs` and `_bulk_get` are written as they are read, a page of the store at
//! a time (`http::stream`): answers longer than a page come whole and in order, with CouchDB's
//! shape, across page boundaries (by rows, 500, and by bytes of documents, 4 MiB), with the
//! request's `limit`, `skip`, ranges and keys applied across pages; and other requests,
//! writes included, are answered while a long answer is still being sent.

mod common;

use std::collections::BTreeSet;

use common::{spawn_app, TestApp, TestInstance};
use reqwest::Method;
use serde_json::{json, Value};

const DOCTYPE: &str = "io.cozy.notes";
const N: usize = 1234;

fn id(i: usize) -> String {
    format!("d{i:05}")
}

/// `n` documents `d00000`... holding `{"i": i, "text": <size bytes>}`, written `batch` at a time.
async fn fill(inst: &TestInstance, token: &str, n: usize, size: usize, batch: usize) {
    let text = "t".repeat(size);
    for start in (0..n).step_by(batch) {
        let docs: Vec<Value> =
            (start..(start + batch).min(n)).map(|i| json!({"_id": id(i), "i": i, "text": text})).collect();
        let (s, v) = inst
            .call(Method::POST, &format!("/data/{DOCTYPE}/_bulk_docs"), Some(token), Some(json!({"docs": docs})))
            .await;
        assert_eq!(s, 201, "{v}");
    }
}

async fn setup(n: usize, size: usize) -> (TestApp, TestInstance, String) {
    let app = spawn_app().await;
    let inst = app.add_instance("alice", "pass");
    let token = app.token(&inst, DOCTYPE);
    fill(&inst, &token, n, size, 500).await;
    (app, inst, token)
}

/// A GET answer: whether it came with a length (sent whole) and its JSON.
async fn get(inst: &TestInstance, token: &str, path: &str) -> (bool, Value) {
    let resp = inst.req(Method::GET, path, Some(token)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let whole = resp.headers().get("content-length").is_some();
    (whole, serde_json::from_str(&resp.text().await.unwrap()).expect("a complete JSON answer"))
}

async fn post(inst: &TestInstance, token: &str, path: &str, body: Value) -> Value {
    let (s, v) = inst.call(Method::POST, path, Some(token), Some(body)).await;
    assert_eq!(s, 200, "{path}: {v}");
    v
}

fn ids(rows: &Value, member: &str) -> Vec<String> {
    rows.as_array().unwrap().iter().map(|r| r[member].as_str().unwrap_or("?").to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changes_feed_longer_than_a_page_comes_whole_and_in_order() {
    let (_app, inst, token) = setup(N, 100).await;
    let path = |q: &str| format!("/data/{DOCTYPE}/_changes?{q}");
    let (whole, all) = get(&inst, &token, &path("include_docs=true")).await;
    assert!(!whole, "a feed of several pages is written as it is read");
    let rows = all["results"].as_array().unwrap();
    assert_eq!(rows.len(), N);
    let seqs: Vec<u64> = rows.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequences increase");
    assert_eq!(ids(&all["results"], "id"), (0..N).map(id).collect::<Vec<_>>());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["doc"]["_id"], id(i));
        assert_eq!(r["doc"]["i"], i);
        assert_eq!(r["doc"]["_rev"], r["changes"][0]["rev"]);
        assert_eq!(r["doc"]["text"].as_str().unwrap().len(), 100);
    }
    assert_eq!((all["last_seq"].as_u64(), all["pending"].as_u64()), (Some(seqs[N - 1]), Some(0)));
    // A limit across pages leaves the rest pending.
    let (_, limited) = get(&inst, &token, &path("limit=700")).await;
    assert_eq!(ids(&limited["results"], "id"), (0..700).map(id).collect::<Vec<_>>());
    assert_eq!((limited["last_seq"].as_u64(), limited["pending"].as_u64()), (Some(seqs[699]), Some(534)));
    // From a sequence, to the end.
    let (_, rest) = get(&inst, &token, &path(&format!("since={}", seqs[599]))).await;
    assert_eq!(ids(&rest["results"], "id"), (600..N).map(id).collect::<Vec<_>>());
    assert_eq!(rest["pending"], 0);
    // Filtered by ids, longer than a page too.
    let wanted: Vec<String> = (0..N).step_by(2).map(id).collect();
    let v = post(&inst, &token, &path("filter=_doc_ids"), json!({"doc_ids": wanted})).await;
    assert_eq!(ids(&v["results"], "id"), wanted);
    // The small answer is sent whole, with its length.
    let (whole, one) = get(&inst, &token, &path(&format!("since={}", seqs[N - 2]))).await;
    assert!(whole);
    assert_eq!(ids(&one["results"], "id"), [id(N - 1)]);
    // A longpoll that finds changes answers them, across pages.
    let (_, lp) = get(&inst, &token, &path("feed=longpoll&since=0")).await;
    assert_eq!(lp["results"].as_array().unwrap().len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_docs_longer_than_a_page_comes_whole_by_range_and_by_keys() {
    let (_app, inst, token) = setup(N, 100).await;
    let path = |q: &str| format!("/data/{DOCTYPE}/_all_docs?{q}");
    let (whole, all) = get(&inst, &token, &path("include_docs=true")).await;
    assert!(!whole, "several pages are written as they are read");
    assert_eq!((all["total_rows"].as_u64(), all["offset"].as_u64()), (Some(N as u64), Some(0)));
    assert_eq!(ids(&all["rows"], "id"), (0..N).map(id).collect::<Vec<_>>());
    for (i, r) in all["rows"].as_array().unwrap().iter().enumerate() {
        assert_eq!((r["key"].as_str(), r["doc"]["i"].as_u64()), (Some(id(i).as_str()), Some(i as u64)));
        assert_eq!(r["value"]["rev"], r["doc"]["_rev"]);
    }
    let (_, desc) = get(&inst, &token, &path("descending=true")).await;
    assert_eq!(ids(&desc["rows"], "id"), (0..N).rev().map(id).collect::<Vec<_>>());
    let (_, page) = get(&inst, &token, &path("skip=100&limit=600")).await;
    assert_eq!(page["offset"], 100);
    assert_eq!(ids(&page["rows"], "id"), (100..700).map(id).collect::<Vec<_>>());
    let (_, range) = get(&inst, &token, &path("startkey=%22d00100%22&endkey=%22d00900%22&inclusive_end=false")).await;
    assert_eq!(ids(&range["rows"], "id"), (100..900).map(id).collect::<Vec<_>>());
    let (_, back) = get(&inst, &token, &path("descending=true&startkey=%22d01100%22&limit=1000")).await;
    assert_eq!(ids(&back["rows"], "id"), (101..=1100).rev().map(id).collect::<Vec<_>>());
    // Keys, in the order asked, missing ones included, with skip and limit.
    let keys: Vec<String> = (0..1300).rev().map(id).collect();
    let v = post(&inst, &token, &path("include_docs=true"), json!({"keys": keys})).await;
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1300);
    for (k, r) in keys.iter().zip(rows) {
        assert_eq!(r["key"], *k);
        if k.as_str() >= id(N).as_str() {
            assert_eq!(r["error"], "not_found", "{r}");
        } else {
            assert_eq!(r["doc"]["_id"], *k, "{r}");
        }
    }
    let v = post(&inst, &token, &path("skip=50&limit=600"), json!({"keys": keys})).await;
    assert_eq!(v["offset"], 50);
    assert_eq!(ids(&v["rows"], "key"), keys[50..650].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_get_of_many_documents_comes_whole_and_in_order() {
    let (_app, inst, token) = setup(N, 400).await;
    let (_, feed) = get(&inst, &token, &format!("/data/{DOCTYPE}/_changes")).await;
    let revs: Vec<String> =
        feed["results"].as_array().unwrap().iter().map(|r| r["changes"][0]["rev"].as_str().unwrap().into()).collect();
    // Every document by its revision, every third by its winner, and some unknown ones.
    let mut wanted = Vec::new();
    for (i, rev) in revs.iter().enumerate() {
        wanted.push(json!({"id": id(i), "rev": rev}));
        if i % 3 == 0 {
            wanted.push(json!({"id": id(i)}));
        }
    }
    wanted.push(json!({"id": "nope"}));
    wanted.push(json!({"id": id(0), "rev": "9-ffff"}));
    let v = post(&inst, &token, &format!("/data/{DOCTYPE}/_bulk_get?revs=true"), json!({"docs": wanted})).await;
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), wanted.len());
    for (w, r) in wanted.iter().zip(results) {
        assert_eq!(r["id"], w["id"]);
        let doc = &r["docs"][0];
        if w["id"] == "nope" {
            assert_eq!(doc["error"], json!({"id": "nope", "rev": null, "error": "not_found", "reason": "missing"}));
        } else if w["rev"] == "9-ffff" {
            assert_eq!(doc["error"]["error"], "not_found");
            assert_eq!(doc["error"]["rev"], "9-ffff");
        } else {
            assert_eq!(doc["ok"]["_id"], w["id"], "{r}");
            assert_eq!(doc["ok"]["text"].as_str().unwrap().len(), 400);
            assert_eq!(doc["ok"]["_revisions"]["start"], 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_large_documents_are_bounded_by_bytes_and_still_come_whole() {
    // 24 documents of 300 kB: 7 MB, more than a page's 4 MiB of bodies.
    let (_app, inst, token) = {
        let app = spawn_app().await;
        let inst = app.add_instance("alice", "pass");
        let token = app.token(&inst, DOCTYPE);
        fill(&inst, &token, 24, 300_000, 6).await;
        (app, inst, token)
    };
    let (_, feed) = get(&inst, &token, &format!("/data/{DOCTYPE}/_changes?include_docs=true")).await;
    let rows = feed["results"].as_array().unwrap();
    assert_eq!(ids(&feed["results"], "id"), (0..24).map(id).collect::<Vec<_>>());
    assert!(rows.iter().all(|r| r["doc"]["text"].as_str().unwrap().len() == 300_000));
    assert_eq!(feed["pending"], 0);
    let (_, all) = get(&inst, &token, &format!("/data/{DOCTYPE}/_all_docs?include_docs=true")).await;
    assert_eq!(ids(&all["rows"], "id"), (0..24).map(id).collect::<Vec<_>>());
    assert!(all["rows"].as_array().unwrap().iter().all(|r| r["doc"]["text"].as_str().unwrap().len() == 300_000));
    let keys: Vec<String> = (0..24).rev().map(id).collect();
    let v = post(&inst, &token, &format!("/data/{DOCTYPE}/_all_docs?include_docs=true"), json!({"keys": keys})).await;
    assert_eq!(ids(&v["rows"], "id"), keys);
}

/// The server keeps serving while it writes a long feed to a client that reads slowly: the
/// client reads the first bytes, then (the answer far from complete) another request, a read
/// and a write on the same doctype are answered; then the feed is read to its end, complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_requests_are_answered_while_a_long_changes_feed_is_being_sent() {
    // 3,000 documents of 4 kB: a 12 MB answer, more than the sockets between client and
    // server buffer, so the server is still writing it while the client waits.
    let (_app, inst, token) = setup(3000, 4000).await;
    let mut feed = inst
        .req(Method::GET, &format!("/data/{DOCTYPE}/_changes?include_docs=true"), Some(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    let mut received = Vec::new();
    while received.len() < 64 * 1024 {
        received.extend_from_slice(&feed.chunk().await.unwrap().expect("more of the feed"));
    }
    let (s, v) = inst.call(Method::GET, &format!("/data/{DOCTYPE}/{}", id(2999)), Some(&token), None).await;
    assert_eq!((s, v["i"].as_u64()), (200, Some(2999)));
    let (s, v) = inst.call(Method::PUT, &format!("/data/{DOCTYPE}/during"), Some(&token), Some(json!({"a": 1}))).await;
    assert_eq!(s, 201, "a write goes through while the feed is read: {v}");
    let (s, _) = inst.call(Method::GET, &format!("/data/{DOCTYPE}/_all_docs?limit=3"), Some(&token), None).await;
    assert_eq!(s, 200);
    let answered_at = received.len();
    while let Some(chunk) = feed.chunk().await.unwrap() {
        received.extend_from_slice(&chunk);
    }
    assert!(
        received.len() > answered_at + 1024 * 1024,
        "the feed was far from sent: {answered_at} of {}",
        received.len()
    );
    let all: Value = serde_json::from_slice(&received).expect("the feed is complete JSON");
    let listed: BTreeSet<String> = ids(&all["results"], "id").into_iter().collect();
    assert!((0..3000).all(|i| listed.contains(&id(i))), "every document written before the feed is in it");
    assert_eq!(listed.len(), all["results"].as_array().unwrap().len(), "each document once");
}
