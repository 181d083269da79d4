//! The `/data` API over real HTTP: the flow a new user follows, CouchDB behaviours clients rely
//! on, token checks, and bad input that must get a clear 4xx and change nothing.

mod common;

use common::{spawn_app, spawn_app_with, TestInstance};
use reqwest::Method;
use serde_json::{json, Value};

const NOTES: &str = "/data/io.cozy.notes";

async fn update_seq(inst: &TestInstance, token: &str) -> u64 {
    let (s, info) = inst.call(Method::GET, &format!("{NOTES}/"), Some(token), None).await;
    assert_eq!(s, 200, "{info}");
    info["update_seq"].as_u64().expect("update_seq")
}

#[tokio::test]
async fn a_new_note_is_created_and_shows_in_the_changes_feed() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", "x");
    let token = app.token(&alice, "io.cozy.notes");
    let (s, created) = alice.call(Method::POST, &format!("{NOTES}/"), Some(&token), Some(json!({"title": "hi"}))).await;
    assert_eq!(s, 201, "{created}");
    assert_eq!(created["ok"], true);
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(created["data"]["title"], "hi");
    let (s, changes) = alice.call(Method::GET, &format!("{NOTES}/_changes"), Some(&token), None).await;
    assert_eq!(s, 200);
    assert_eq!(changes["results"][0]["id"], id.as_str());
    assert_eq!(changes["results"][0]["changes"][0]["rev"], created["rev"]);
    assert_eq!(changes["last_seq"], 1);
    let (s, doc) = alice.call(Method::GET, &format!("{NOTES}/{id}"), Some(&token), None).await;
    assert_eq!(s, 200);
    assert_eq!(doc["title"], "hi");
    assert_eq!(doc["_rev"], created["rev"]);
}

#[tokio::test]
async fn unknown_hosts_get_a_json_404() {
    let app = spawn_app().await;
    let ghost =
        TestInstance { domain: format!("ghost.localhost:{}", app.port), port: app.port, client: app.client.clone() };
    let (s, body) = ghost.call(Method::GET, "/data/io.cozy.notes/", None, None).await;
    assert_eq!(s, 404);
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn documents_are_updated_with_rev_or_if_match_and_stale_revs_conflict() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", "x");
    let t = app.token(&alice, "io.cozy.notes");
    let (s, r1) = alice.call(Method::PUT, &format!("{NOTES}/n1"), Some(&t), Some(json!({"v": 1}))).await;
    assert_eq!(s, 201, "{r1}");
    let rev1 = r1["rev"].as_str().unwrap().to_owned();
    // Update through If-Match.
    let resp = alice
        .req(Method::PUT, &format!("{NOTES}/n1"), Some(&t))
        .header("If-Match", format!("\"{rev1}\""))
        .json(&json!({"v": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let rev2: Value = resp.json().await.unwrap();
    assert_eq!(etag, format!("\"{}\"", rev2["rev"].as_str().unwrap()));
    // The stale revision conflicts, and nothing changes.
    let seq = update_seq(&alice, &t).await;
    let (s, err) = alice.call(Method::PUT, &format!("{NOTES}/n1"), Some(&t), Some(json!({"_rev": rev1, "v": 3}))).await;
    assert_eq!((s, err["error"].as_str()), (409, Some("conflict")));
    assert_eq!(update_seq(&alice, &t).await, seq);
    // Delete needs the current rev.
    let (s, _) = alice.call(Method::DELETE, &format!("{NOTES}/n1?rev={rev1}"), Some(&t), None).await;
    assert_eq!(s, 409);
    let (s, del) =
        alice.call(Method::DELETE, &format!("{NOTES}/n1?rev={}", rev2["rev"].as_str().unwrap()), Some(&t), None).await;
    assert_eq!(s, 200, "{del}");
    let (s, gone) = alice.call(Method::GET, &format!("{NOTES}/n1"), Some(&t), None).await;
    assert_eq!((s, gone["reason"].as_str()), (404, Some("deleted")));
    // Recreating continues the history from the deletion.
    let (s, again) = alice.call(Method::PUT, &format!("{NOTES}/n1"), Some(&t), Some(json!({"v": 4}))).await;
    assert_eq!(s, 201);
    assert!(again["rev"].as_str().unwrap().starts_with("4-"));
}

#[tokio::test]
async fn replication_routes_speak_couchdb() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", "x");
    let t = app.token(&alice, "io.cozy.notes");
    // Replicated writes: two branches of one document, answer lists only errors.
    let (s, body) = alice
        .call(
            Method::POST,
            &format!("{NOTES}/_bulk_docs"),
            Some(&t),
            Some(json!({"new_edits": false, "docs": [
                {"_id": "d", "_rev": "2-b", "_revisions": {"start": 2, "ids": ["b", "a"]}, "n": "b"},
                {"_id": "d", "_rev": "2-c", "_revisions": {"start": 2, "ids": ["c", "a"]}, "n": "c"},
            ]})),
        )
        .await;
    assert_eq!((s, body.clone()), (201, json!([])));
    let (_, doc) = alice.call(Method::GET, &format!("{NOTES}/d?conflicts=true&revs=true"), Some(&t), None).await;
    assert_eq!(doc["_rev"], "2-c");
    assert_eq!(doc["_conflicts"], json!(["2-b"]));
    assert_eq!(doc["_revisions"], json!({"start": 2, "ids": ["c", "a"]}));
    let (_, open) = alice.call(Method::GET, &format!("{NOTES}/d?open_revs=all"), Some(&t), None).await;
    assert_eq!(open.as_array().unwrap().len(), 2);
    let (_, open) = alice
        .call(Method::GET, &format!("{NOTES}/d?open_revs=%5B%222-b%22%2C%223-x%22%5D&revs=true"), Some(&t), None)
        .await;
    assert_eq!(open[0]["ok"]["_rev"], "2-b");
    assert_eq!(open[1]["missing"], "3-x");
    let (_, diff) = alice
        .call(Method::POST, &format!("{NOTES}/_revs_diff"), Some(&t), Some(json!({"d": ["2-b", "3-z"], "e": ["1-q"]})))
        .await;
    assert_eq!(
        diff,
        json!({"d": {"missing": ["3-z"], "possible_ancestors": ["2-c", "2-b"]}, "e": {"missing": ["1-q"]}})
    );
    let (_, got) = alice
        .call(
            Method::POST,
            &format!("{NOTES}/_bulk_get?revs=true"),
            Some(&t),
            Some(json!({"docs": [{"id": "d", "rev": "2-b"}, {"id": "zz", "rev": "1-a"}, {"id": "d"}]})),
        )
        .await;
    assert_eq!(got["results"][0]["docs"][0]["ok"]["n"], "b");
    assert_eq!(got["results"][0]["docs"][0]["ok"]["_revisions"]["ids"], json!(["b", "a"]));
    assert_eq!(got["results"][1]["docs"][0]["error"]["error"], "not_found");
    assert_eq!(got["results"][2]["docs"][0]["ok"]["_rev"], "2-c");
    let (_, ch) = alice.call(Method::GET, &format!("{NOTES}/_changes?style=all_docs"), Some(&t), None).await;
    assert_eq!(ch["results"][0]["changes"], json!([{"rev": "2-c"}, {"rev": "2-b"}]));
    // Checkpoints.
    let (s, put) =
        alice.call(Method::PUT, &format!("{NOTES}/_local/cp%3D%3D"), Some(&t), Some(json!({"last_seq": 1}))).await;
    assert_eq!((s, put["rev"].as_str()), (201, Some("0-1")));
    let (_, cp) = alice.call(Method::GET, &format!("{NOTES}/_local/cp%3D%3D"), Some(&t), None).await;
    assert_eq!((cp["_id"].as_str(), cp["last_seq"].as_u64()), (Some("_local/cp=="), Some(1)));
    let (_, all) = alice.call(Method::GET, &format!("{NOTES}/_all_docs?include_docs=true"), Some(&t), None).await;
    assert_eq!(all["total_rows"], 1);
    assert_eq!(all["rows"][0]["doc"]["n"], "c");
}

#[tokio::test]
async fn longpoll_changes_wait_for_the_next_write() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", "x");
    let t = app.token(&alice, "io.cozy.notes");
    let waiting = {
        let alice = TestInstance { domain: alice.domain.clone(), port: alice.port, client: alice.client.clone() };
        let t = t.clone();
        tokio::spawn(async move {
            alice
                .call(Method::GET, &format!("{NOTES}/_changes?feed=longpoll&since=0&timeout=20000"), Some(&t), None)
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    alice.call(Method::PUT, &format!("{NOTES}/late"), Some(&t), Some(json!({}))).await;
    let (s, ch) = waiting.await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(ch["results"][0]["id"], "late");
    // With nothing new, the wait ends at the timeout with no rows.
    let (s, ch) =
        alice.call(Method::GET, &format!("{NOTES}/_changes?feed=longpoll&since=1&timeout=100"), Some(&t), None).await;
    assert_eq!((s, ch["results"].as_array().map(Vec::len)), (200, Some(0)));
}

#[tokio::test]
async fn tokens_are_checked_for_presence_validity_and_scope() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", "x");
    let bob = app.add_instance("bob", "y");
    let good = app.token(&alice, "io.cozy.notes");
    let bobs = app.token(&bob, "io.cozy.notes");
    let read_only = app.token(&alice, "io.cozy.notes:GET");
    let one_doc = app.token(&alice, "io.cozy.notes:GET,PUT:only");
    let path = format!("{NOTES}/_all_docs");
    assert_eq!(alice.call(Method::GET, &path, None, None).await.0, 401);
    assert_eq!(alice.call(Method::GET, &path, Some("garbage"), None).await.0, 401);
    assert_eq!(alice.call(Method::GET, &path, Some(&bobs), None).await.0, 401, "another instance's token");
    assert_eq!(alice.call(Method::GET, &path, Some(&good), None).await.0, 200);
    assert_eq!(alice.call(Method::GET, "/data/io.cozy.files/_all_docs", Some(&good), None).await.0, 403);
    let write = alice.call(Method::PUT, &format!("{NOTES}/a"), Some(&read_only), Some(json!({}))).await;
    assert_eq!(write.0, 403);
    assert_eq!(alice.call(Method::PUT, &format!("{NOTES}/only"), Some(&one_doc), Some(json!({}))).await.0, 201);
    assert_eq!(alice.call(Method::PUT, &format!("{NOTES}/other"), Some(&one_doc), Some(json!({}))).await.0, 403);
    let bulk = json!({"docs": [{"_id": "only"}, {"_id": "other"}]});
    assert_eq!(alice.call(Method::POST, &format!("{NOTES}/_bulk_docs"), Some(&one_doc), Some(bulk)).await.0, 403);
    // A scope limited to some ids sees only those in the feed.
    alice.call(Method::PUT, &format!("{NOTES}/other"), Some(&good), Some(json!({}))).await;
    let (_, ch) = alice.call(Method::GET, &format!("{NOTES}/_changes"), Some(&one_doc), None).await;
    let ids: Vec<&str> = ch["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["only"]);
    // Expired tokens are refused.
    let inst = app.registry.get(&hearth::instance::Domain::parse(&alice.domain).unwrap()).unwrap().unwrap();
    let scope = hearth::auth::PermissionSet::parse("io.cozy.notes").unwrap();
    let expired = inst.keys.issue(hearth::auth::Audience::Cli, "cli", 0, Some(&scope), None);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(alice.call(Method::GET, &path, Some(&expired), None).await.0, 401);
    // A session token is not an API token.
    let session = inst.keys.issue(hearth::auth::Audience::Session, "owner", 60, Some(&scope), None);
    assert_eq!(alice.call(Method::GET, &path, Some(&session), None).await.0, 401);
}

#[tokio::test]
async fn bad_input_gets_a_json_4xx_and_changes_nothing() {
    let app = spawn_app_with(|c| c.max_http_request_size = 4096).await;
    let alice = app.add_instance("alice", "x");
    let t = app.token(&alice, "io.cozy.notes");
    alice.call(Method::PUT, &format!("{NOTES}/keep"), Some(&t), Some(json!({"v": 1}))).await;
    let seq = update_seq(&alice, &t).await;
    let raw = |method: Method, path: String, body: &'static str| {
        alice.req(method, &path, Some(&t)).header("Content-Type", "application/json").body(body)
    };
    let cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (raw(Method::POST, format!("{NOTES}/"), "{not json"), 400),
        (raw(Method::POST, format!("{NOTES}/"), ""), 400),
        (raw(Method::POST, format!("{NOTES}/"), "[1,2]"), 400),
        (raw(Method::POST, format!("{NOTES}/"), r#"{"_id": 3}"#), 400),
        (raw(Method::POST, format!("{NOTES}/"), r#"{"_id": "_design/x"}"#), 400),
        (raw(Method::POST, format!("{NOTES}/"), r#"{"_foo": 1}"#), 400),
        (raw(Method::POST, format!("{NOTES}/"), r#"{"_rev": "1-x"}"#), 400),
        (raw(Method::PUT, format!("{NOTES}/_weird"), "{}"), 400),
        (raw(Method::PUT, format!("{NOTES}/keep"), r#"{"_rev": "bad"}"#), 400),
        (raw(Method::PUT, format!("{NOTES}/keep?rev=nope"), "{}"), 400),
        (raw(Method::PUT, format!("{NOTES}/keep?new_edits=maybe"), "{}"), 400),
        (raw(Method::PUT, format!("{NOTES}/keep"), r#"{"_id": "other"}"#), 400),
        (raw(Method::POST, "/data/IO.Bad/".into(), "{}"), 400),
        (raw(Method::POST, format!("{NOTES}/_bulk_docs"), r#"{"docs": 3}"#), 400),
        (raw(Method::POST, format!("{NOTES}/_bulk_docs"), r#"{"docs": [{"_id": "ok"}, {"_id": 1}]}"#), 400),
        (raw(Method::POST, format!("{NOTES}/_bulk_docs"), r#"{"new_edits": false, "docs": [{"_id": "x"}]}"#), 400),
        (raw(Method::POST, format!("{NOTES}/_bulk_docs"), r#"{"new_edits": "no", "docs": []}"#), 400),
        (
            raw(
                Method::POST,
                format!("{NOTES}/_bulk_docs"),
                r#"{"new_edits": false, "docs": [{"_id": "x", "_revisions": {"start": 1, "ids": ["a", "b"]}}]}"#,
            ),
            400,
        ),
        (
            raw(
                Method::POST,
                format!("{NOTES}/_bulk_docs"),
                r#"{"new_edits": false, "docs": [{"_id": "x", "_revisions": {"start": 18446744073709551615, "ids": ["a"]}}]}"#,
            ),
            400,
        ),
        (raw(Method::POST, format!("{NOTES}/_revs_diff"), r#"{"a": ["x"]}"#), 400),
        (raw(Method::POST, format!("{NOTES}/_revs_diff"), r#"{"a": "1-x"}"#), 400),
        (raw(Method::POST, format!("{NOTES}/_bulk_get"), r#"{"docs": [{"rev": "1-a"}]}"#), 400),
        (raw(Method::GET, format!("{NOTES}/_changes?since=abc"), ""), 400),
        (raw(Method::GET, format!("{NOTES}/_changes?feed=continuous"), ""), 400),
        (raw(Method::GET, format!("{NOTES}/_changes?limit=-1"), ""), 400),
        (raw(Method::GET, format!("{NOTES}/_all_docs?keys=notjson"), ""), 400),
        (raw(Method::GET, format!("{NOTES}/_all_docs?startkey=3"), ""), 400),
        (raw(Method::GET, format!("{NOTES}/keep?open_revs=nope"), ""), 400),
        (raw(Method::GET, format!("{NOTES}/keep?revs=yes"), ""), 400),
        (raw(Method::DELETE, format!("{NOTES}/keep"), ""), 400),
        (raw(Method::GET, "/nowhere".into(), ""), 404),
    ];
    for (i, (req, want)) in cases.into_iter().enumerate() {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, want, "case {i}: {body}");
        assert!(body["error"].is_string() && body["reason"].is_string(), "case {i}: JSON error body, got {body}");
    }
    // Deeply nested JSON is refused, not a stack overflow.
    let deep = format!("{}{}", "[".repeat(1500), "]".repeat(1500));
    let resp = alice.req(Method::POST, &format!("{NOTES}/"), Some(&t)).body(deep).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // Bodies over the limit get 413 whether or not they declare their length.
    let big = format!("{{\"x\": \"{}\"}}", "a".repeat(8192));
    let resp = alice.req(Method::POST, &format!("{NOTES}/"), Some(&t)).body(big.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "too_large");
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.into_bytes())]);
    let resp = alice
        .req(Method::POST, &format!("{NOTES}/"), Some(&t))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(update_seq(&alice, &t).await, seq, "no bad request changed anything");
}

#[tokio::test]
async fn the_owner_logs_in_with_the_passphrase_and_guessing_is_rate_limited() {
    let app = spawn_app_with(|c| c.login_max_failures = 3).await;
    let alice = app.add_instance("alice", "correct horse");
    let resp = alice.req(Method::GET, "/auth/login?redirect=/somewhere", None).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    let html = resp.text().await.unwrap();
    assert!(html.contains("name=\"passphrase\"") && html.contains("value=\"/somewhere\""));
    let login = |p: &'static str, redirect: &'static str| {
        alice.req(Method::POST, "/auth/login", None).form(&[("passphrase", p), ("redirect", redirect)]).send()
    };
    let ok = login("correct horse", "/somewhere").await.unwrap();
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/somewhere");
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("hearth_session=") && cookie.contains("HttpOnly"), "{cookie}");
    // No open redirect to another site (browsers drop the tab of `/\t/evil.example`).
    for target in ["//evil.example", "/\t/evil.example", "/\\evil.example", "https://evil.example"] {
        let ok = login("correct horse", target).await.unwrap();
        assert_eq!(ok.headers()["location"], "/", "{target:?}");
    }
    for _ in 0..3 {
        assert_eq!(login("wrong", "/").await.unwrap().status(), 401);
    }
    let limited = login("wrong", "/").await.unwrap();
    assert_eq!(limited.status(), 429);
    // Even the right passphrase waits once the address is limited.
    assert_eq!(login("correct horse", "/").await.unwrap().status(), 429);
    // A form without the field is a 400.
    let bad = alice.req(Method::POST, "/auth/login", None).form(&[("nope", "x")]).send().await.unwrap();
    assert_eq!(bad.status(), 400);
}
