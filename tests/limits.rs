//! The limits anonymous callers meet, and the limits of a sharing (stated in the README): the
//! routes reachable without credentials take at most 64 KiB, declared or streamed; a sharing
//! has at most 20 rules of at most 100 values of at most 256 bytes, and `max_members` members;
//! pending requests per owner are counted from an index, without reading the requests.

mod common;

use common::flow::{load, PASS};
use common::{browser, spawn_app, spawn_app_with, TestInstance};
use hearth::sharing::{self, SharingId};
use hearth::store::Doctype;
use reqwest::Method;
use serde_json::{json, Value};

const LIMIT: usize = 64 * 1024;

/// A JSON document of exactly `size` bytes: `{"data": "aaa..."}`.
fn json_of(size: usize) -> String {
    format!("{{\"data\": \"{}\"}}", "a".repeat(size - 12))
}

async fn send(inst: &TestInstance, method: Method, path: &str, body: reqwest::Body) -> (u16, Value) {
    let resp = inst.req(method, path, None).header("Content-Type", "application/json").body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn unauthenticated_sharing_routes_take_64_kib_at_most_declared_or_streamed() {
    let app = spawn_app().await;
    let bob = app.add_instance("bob", PASS);
    let id = SharingId::derived("https://owner1.example", "n");
    for path in [format!("/sharings/{id}"), format!("/sharings/{id}/answer")] {
        let method = if path.ends_with("answer") { Method::POST } else { Method::PUT };
        // At the limit, the body is read (and refused for what it says).
        let (s, v) = send(&bob, method.clone(), &path, json_of(LIMIT).into()).await;
        assert_eq!(s, 400, "{path}: {v}");
        let (s, v) = send(&bob, method.clone(), &path, json_of(LIMIT + 1).into()).await;
        assert_eq!(s, 413, "{path}: {v}");
        assert_eq!(v["error"], "too_large");
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            (0..40).map(|_| Ok(vec![b' '; 4096])).chain([Ok(json_of(LIMIT).into_bytes())]).collect();
        let (s, v) =
            send(&bob, method.clone(), &path, reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))).await;
        assert_eq!(s, 413, "{path}, streamed: {v}");
    }
    // The answer: a 30 MB array.
    let big = format!("[{}1]", "1,".repeat(15 * 1024 * 1024));
    let (s, _) = send(&bob, Method::POST, &format!("/sharings/{id}/answer"), big.into()).await;
    assert_eq!(s, 413);
    let forms = browser()
        .post(bob.url(&format!("/sharings/{id}/discovery")))
        .header("Accept", "application/json")
        .form(&[("state", "s".repeat(LIMIT)), ("url", "x".into())])
        .send()
        .await
        .unwrap();
    assert_eq!(forms.status(), 413);
    let inst = app.instance(&bob.domain);
    assert!(sharing::list(inst.store.as_ref()).await.unwrap().is_empty(), "nothing stored");
}

#[tokio::test]
async fn sharings_are_made_within_the_stated_limits() {
    let app = spawn_app_with(|c| c.federation.max_members = 3).await;
    let alice = app.add_instance("alice", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let rule = |values: Vec<String>| json!({"title": "t", "doctype": "io.cozy.notes", "values": values});
    let ids = |n: usize| (0..n).map(|i| format!("n{i}")).collect::<Vec<_>>();
    let body = |rules: Vec<Value>, recipients: usize| {
        let r: Vec<Value> = (0..recipients).map(|i| json!({"email": format!("r{i}@example.net")})).collect();
        json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": rules},
            "relationships": {"recipients": {"data": r}}}})
    };
    let cases = [
        ("20 rules of 100 values", body(vec![rule(ids(100)); 20], 2), 201),
        ("21 rules", body(vec![rule(ids(1)); 21], 1), 400),
        ("101 values", body(vec![rule(ids(101))], 1), 400),
        ("a value of 256 bytes", body(vec![rule(vec!["v".repeat(256)])], 1), 201),
        ("a value of 257 bytes", body(vec![rule(vec!["v".repeat(257)])], 1), 400),
        ("a control character", body(vec![rule(vec!["a\nb".into()])], 1), 400),
        ("3 recipients over max_members = 3", body(vec![rule(ids(1))], 3), 400),
    ];
    for (what, b, want) in cases {
        let (s, v) = alice.call(Method::POST, "/sharings/", Some(&token), Some(b)).await;
        assert_eq!(s, want, "{what}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_are_counted_per_owner_without_reading_them() {
    let app = spawn_app_with(|c| c.federation.max_pending_requests_per_peer = 2).await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let body = json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": [
            {"title": "t", "doctype": "io.cozy.notes", "values": ["n1"]}]},
            "relationships": {"recipients": {"data": [{"email": "bob@example.net"}]}}}});
        let (s, v) = alice.call(Method::POST, "/sharings/", Some(&token), Some(body)).await;
        assert_eq!(s, 201);
        ids.push(v["data"]["id"].as_str().unwrap().to_owned());
    }
    let discover = |id: String| {
        let (app, alice, bob) = (&app, &alice, &bob);
        async move {
            let s = load(app, alice, &id).await;
            let state = hearth::sharing::service::member_state(
                &app.instance(&alice.domain),
                &s,
                hearth::sharing::MemberIndex(1),
            )
            .unwrap();
            let resp = browser()
                .post(alice.url(&format!("/sharings/{id}/discovery")))
                .header("Accept", "application/json")
                .form(&[("state", state), ("url", format!("http://{}", bob.domain))])
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(discover(ids[0].clone()).await.0, 200);
    assert_eq!(discover(ids[1].clone()).await.0, 200);
    // The first pending request becomes unreadable: counting does not read it.
    let inst = app.instance(&bob.domain);
    let sharings = Doctype::parse("io.cozy.sharings").unwrap();
    let first = hearth::store::DocId::parse(&ids[0]).unwrap();
    let rec = hearth::store::json::get(inst.store.as_ref(), &sharings, &first).await.unwrap().unwrap();
    let garbage = json!({"owner": "not a boolean"}).as_object().unwrap().clone();
    hearth::store::json::put(inst.store.as_ref(), &sharings, &first, Some(&rec.rev), garbage).await.unwrap();
    let (s, v) = discover(ids[2].clone()).await;
    assert_eq!(s, 502, "alice's discovery reports bob's refusal: {v}");
    assert!(v["reason"].as_str().unwrap().contains("answered 429"), "{v}");
    // Bob discards one: there is room again.
    let bob_app = app.token(&bob, "io.cozy.notes");
    let (s, v) = bob.call(Method::POST, &format!("/sharings/{}/discard", ids[1]), Some(&bob_app), None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = discover(ids[2].clone()).await;
    assert_eq!(s, 200, "{v}");
}
