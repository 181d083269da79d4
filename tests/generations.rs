//! Revision generations at and past the limit (2^53 - 1, see `hearth_replicator::rev::MAX_POS`):
//! refused on the way in with a 400 naming the limit, on every path (interactive edits,
//! `new_edits=false`, `_bulk_docs`, `_revs_diff`), and never acknowledged without being stored.

mod common;

use common::spawn_app;
use reqwest::Method;
use serde_json::{json, Value};

const NOTES: &str = "/data/io.cozy.notes";
const LIMIT: u64 = 9_007_199_254_740_991;

fn names_the_limit(body: &Value) -> bool {
    body["error"] == "bad_request" && body["reason"].as_str().is_some_and(|r| r.contains("9007199254740991"))
}

#[tokio::test]
async fn an_edit_of_a_revision_at_the_limit_is_refused_and_the_document_keeps_its_content() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", "x");
    let t = app.token(&alice, "io.cozy.notes");
    // The request: a generation of 19 nines is refused on the way in.
    let (s, body) = alice
        .call(
            Method::PUT,
            &format!("{NOTES}/x?new_edits=false"),
            Some(&t),
            Some(json!({"_rev": "9999999999999999999-a", "v": 1})),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(names_the_limit(&body), "{body}");
    let (s, _) = alice.call(Method::GET, &format!("{NOTES}/x"), Some(&t), None).await;
    assert_eq!(s, 404, "a refused write changes nothing");

    // At the limit itself a replicated revision is stored...
    let at = format!("{LIMIT}-a");
    let (s, body) = alice
        .call(Method::PUT, &format!("{NOTES}/x?new_edits=false"), Some(&t), Some(json!({"_rev": at, "v": 1})))
        .await;
    assert_eq!(s, 201, "{body}");
    // ...but cannot be edited: the next generation would be past it.
    let (s, body) = alice.call(Method::PUT, &format!("{NOTES}/x"), Some(&t), Some(json!({"_rev": at, "v": 2}))).await;
    assert_eq!(s, 400, "{body}");
    assert!(names_the_limit(&body), "{body}");
    let (s, body) = alice.call(Method::DELETE, &format!("{NOTES}/x?rev={at}"), Some(&t), None).await;
    assert_eq!(s, 400, "{body}");
    let (s, doc) = alice.call(Method::GET, &format!("{NOTES}/x"), Some(&t), None).await;
    assert_eq!(s, 200);
    assert_eq!((doc["_rev"].as_str(), &doc["v"]), (Some(at.as_str()), &json!(1)));

    // One below the limit, the edit is made and reads back.
    let below = format!("{}-b", LIMIT - 1);
    let (s, _) = alice
        .call(Method::PUT, &format!("{NOTES}/y?new_edits=false"), Some(&t), Some(json!({"_rev": below, "v": 1})))
        .await;
    assert_eq!(s, 201);
    let (s, body) =
        alice.call(Method::PUT, &format!("{NOTES}/y"), Some(&t), Some(json!({"_rev": below, "v": 2}))).await;
    assert_eq!(s, 201, "{body}");
    let rev = body["rev"].as_str().unwrap().to_owned();
    assert!(rev.starts_with(&format!("{LIMIT}-")), "{rev}");
    let (_, doc) = alice.call(Method::GET, &format!("{NOTES}/y"), Some(&t), None).await;
    assert_eq!((doc["_rev"].as_str(), &doc["v"]), (Some(rev.as_str()), &json!(2)));
}

#[tokio::test]
async fn generations_past_the_limit_are_refused_on_every_write_and_read_path() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", "x");
    let t = app.token(&alice, "io.cozy.notes");
    let over = format!("{}-a", LIMIT + 1);
    let cases: Vec<(Method, String, Value)> = vec![
        (Method::PUT, format!("{NOTES}/z"), json!({"_rev": over, "v": 1})),
        (Method::PUT, format!("{NOTES}/z?rev={over}"), json!({"v": 1})),
        (Method::PUT, format!("{NOTES}/z?new_edits=false"), json!({"_revisions": {"start": LIMIT + 1, "ids": ["a"]}})),
        (Method::PUT, format!("{NOTES}/z?new_edits=false"), json!({"_revisions": {"start": u64::MAX, "ids": ["a"]}})),
        (Method::PUT, format!("{NOTES}/z?new_edits=false"), json!({"_revisions": {"start": 1e21, "ids": ["a"]}})),
        (
            Method::POST,
            format!("{NOTES}/_bulk_docs"),
            json!({"new_edits": false, "docs": [{"_id": "z", "_rev": "18446744073709551615-a"}]}),
        ),
        (Method::POST, format!("{NOTES}/_bulk_docs"), json!({"docs": [{"_id": "z", "_rev": over}]})),
        (Method::POST, format!("{NOTES}/_revs_diff"), json!({"z": [over]})),
    ];
    for (method, path, body) in cases {
        let (s, answer) = alice.call(method.clone(), &path, Some(&t), Some(body.clone())).await;
        assert_eq!(s, 400, "{method} {path} {body}: {answer}");
        assert!(names_the_limit(&answer), "{method} {path} {body}: {answer}");
    }
    // In `_bulk_get` such a rev is its entry's error, as CouchDB answers a bad rev there.
    let body = json!({"docs": [{"id": "z", "rev": over}]});
    let (s, answer) = alice.call(Method::POST, &format!("{NOTES}/_bulk_get"), Some(&t), Some(body)).await;
    assert_eq!(s, 200, "{answer}");
    let entry = &answer["results"][0]["docs"][0]["error"];
    assert_eq!(entry["error"], "bad_request", "{answer}");
    assert!(names_the_limit(entry), "{answer}");
    let (s, _) = alice.call(Method::GET, &format!("{NOTES}/z"), Some(&t), None).await;
    assert_eq!(s, 404, "nothing was written");
}
