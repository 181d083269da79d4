//! CouchDB `_attachments` are refused, for now, on every path a document is written by: `/data`
//! PUT (`new_edits` true and false), POST, `_bulk_docs` (`new_edits` true and false) and
//! documents received from a sharing peer. Each gets 400 `bad_request` whose reason names
//! `_attachments` and `/files`, and nothing is written; a peer's batch still applies its other
//! documents and lists the refused one in its answer.

mod common;

use common::flow::*;
use common::spawn_app;
use reqwest::Method;
use serde_json::{json, Value};

const NOTES: &str = "/data/io.cozy.notes";

fn attachments() -> Value {
    json!({"photo.png": {"content_type": "image/png", "data": "iVBORw0KGgo="}})
}

fn assert_refused(status: u16, v: &Value, what: &str) {
    assert_eq!(status, 400, "{what}: {v}");
    assert_eq!(v["error"], "bad_request", "{what}: {v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("_attachments") && reason.contains("/files"), "{what}: {v}");
}

#[tokio::test]
async fn every_data_write_path_refuses_attachments_and_writes_nothing() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let (s, v) = alice.call(Method::PUT, &format!("{NOTES}/kept"), Some(&token), Some(json!({"n": 1}))).await;
    assert_eq!(s, 201, "{v}");
    let rev = v["rev"].as_str().unwrap().to_owned();

    let with = |mut doc: Value| {
        doc["_attachments"] = attachments();
        doc
    };
    let cases: Vec<(&str, Method, String, Value)> = vec![
        ("PUT a new document", Method::PUT, format!("{NOTES}/a1"), with(json!({"n": 1}))),
        ("PUT an update", Method::PUT, format!("{NOTES}/kept"), with(json!({"_rev": rev, "n": 2}))),
        (
            "PUT new_edits=false",
            Method::PUT,
            format!("{NOTES}/a2?new_edits=false"),
            with(json!({"_rev": "1-0123456789abcdef0123456789abcdef", "n": 1})),
        ),
        ("POST", Method::POST, format!("{NOTES}/"), with(json!({"_id": "a3", "n": 1}))),
        (
            "_bulk_docs",
            Method::POST,
            format!("{NOTES}/_bulk_docs"),
            json!({"docs": [{"_id": "a4", "n": 1}, with(json!({"_id": "a5", "n": 1}))]}),
        ),
        (
            "_bulk_docs new_edits=false",
            Method::POST,
            format!("{NOTES}/_bulk_docs"),
            json!({"new_edits": false, "docs": [
                {"_id": "a6", "_rev": "1-0123456789abcdef0123456789abcdef", "n": 1},
                with(json!({"_id": "a7", "_rev": "1-0123456789abcdef0123456789abcdef", "n": 1}))]}),
        ),
    ];
    for (what, method, path, body) in cases {
        let (s, v) = alice.call(method, &path, Some(&token), Some(body)).await;
        assert_refused(s, &v, what);
    }
    // A standalone attachment (CouchDB's `PUT /db/doc/att`) is not JSON: refused too.
    let resp = alice
        .req(Method::PUT, &format!("{NOTES}/kept/photo.png?rev={rev}"), Some(&token))
        .header("Content-Type", "image/png")
        .body(vec![0x89, b'P', b'N', b'G'])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // Nothing was written: the database holds `kept` at its first revision, alone.
    let (s, v) = alice.call(Method::GET, &format!("{NOTES}/_all_docs"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<&str> = v["rows"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["kept"]);
    let (_, kept) = alice.call(Method::GET, &format!("{NOTES}/kept"), Some(&token), None).await;
    assert_eq!((kept["_rev"].as_str(), &kept["n"]), (Some(rev.as_str()), &json!(1)));
    assert!(kept.get("_attachments").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_document_with_attachments_is_refused_alone_and_the_rest_of_its_batch_applies() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let a = app.token(&alice, "io.cozy.notes");
    let mut common = Vec::new();
    for id in ["n1", "n2"] {
        common.push(put_doc(&alice, &a, "io.cozy.notes", id, json!({"title": "first"})).await);
    }
    let sid = share(&app, &alice, json!([notes_rule(&["n1", "n2"])]), &[(&bob, false)]).await;
    let creds = load(&app, &bob, &sid).await.members[0].outbound.clone().unwrap();
    // Bob's instance sends an edit of each note; one has attachments.
    let edit = |id: String, parent: &str, title: &str| {
        let parent = parent.split_once('-').unwrap().1.to_owned();
        let hash = format!("{:032x}", 0xb0b_u64 + title.len() as u64);
        json!({"_id": id, "_rev": format!("2-{hash}"), "_revisions": {"start": 2, "ids": [hash, parent]},
            "title": title})
    };
    let n1 = id_on(&app, &alice, &sid, 1, "n1").await;
    let n2 = id_on(&app, &alice, &sid, 1, "n2").await;
    let mut with_photo = edit(n2.clone(), &common[1], "with a photo");
    with_photo["_attachments"] = attachments();
    let body = json!({"io.cozy.notes": [edit(n1, &common[0], "plain"), with_photo]});
    let (s, refused) =
        alice.call(Method::POST, &format!("/sharings/{sid}/_bulk_docs"), Some(&creds.access_token), Some(body)).await;
    assert_eq!(s, 200, "{refused}");
    let refused = refused.as_array().unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!((refused[0]["id"].as_str(), refused[0]["error"].as_str()), (Some(n2.as_str()), Some("bad_request")));
    assert!(refused[0]["reason"].as_str().unwrap().contains("_attachments"), "{refused:?}");
    assert_eq!(winner(&app, &alice, "io.cozy.notes", "n1").await.unwrap().1["title"], "plain");
    let (rev, n2_body) = winner(&app, &alice, "io.cozy.notes", "n2").await.unwrap();
    assert_eq!(
        (rev, &n2_body["title"]),
        (common[1].clone(), &json!("first")),
        "the edit with attachments was not written"
    );
    assert!(n2_body.get("_attachments").is_none());
}
