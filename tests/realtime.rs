//! `GET /realtime/events`: who may subscribe, which events a subscriber gets, and what happens
//! to a subscriber that stops reading (it is dropped; the server goes on).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{eventually, spawn_app, TestInstance};
use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const PASS: &str = "correct horse";

/// Reads `event:`/`data:` frames from an SSE response until `stop` says so (or 60 s pass: the machine may be loaded).
async fn read_events(resp: reqwest::Response, mut stop: impl FnMut(&str, &Value) -> bool) -> Vec<(String, Value)> {
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no matching event within 60 s; got {out:?}"))
            .expect("the stream ended")
            .expect("chunk");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut name = None;
            let mut data = None;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(v).expect("data is JSON"));
                }
            }
            if let (Some(name), Some(data)) = (name, data) {
                let done = stop(&name, &data);
                out.push((name, data));
                if done {
                    return out;
                }
            }
        }
    }
}

async fn subscribe(inst: &TestInstance, token: &str) -> reqwest::Response {
    let resp = inst.req(Method::GET, "/realtime/events", Some(token)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    resp
}

#[tokio::test]
async fn the_events_endpoint_needs_a_token_or_the_owners_session() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let (s, v) = alice.call(Method::GET, "/realtime/events", None, None).await;
    assert_eq!(s, 401, "{v}");
    assert!(v["reason"].is_string(), "{v}");
    let (s, _) = alice.call(Method::GET, "/realtime/events", Some("not-a-token"), None).await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn changes_arrive_only_for_the_doctypes_and_ids_the_token_may_read() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let writer = app.token(&alice, "io.cozy.notes io.cozy.contacts");
    let notes_reader = app.token(&alice, "io.cozy.notes:GET");
    let one_note = app.token(&alice, "io.cozy.notes:GET:n2");

    let all_notes = subscribe(&alice, &notes_reader).await;
    let only_n2 = subscribe(&alice, &one_note).await;
    let a = tokio::spawn(read_events(all_notes, |name, d| name == "change" && d["id"] == "n2"));
    let b = tokio::spawn(read_events(only_n2, |name, d| name == "change" && d["id"] == "n2"));
    eventually(10, "both subscribers are live", || async {
        app.instance(&alice.domain).realtime_subscribers.load(Ordering::Relaxed) == 2
    })
    .await;
    // Written in this order: a contact, note n1, then note n2 (each its own commit).
    for (path, body) in [
        ("/data/io.cozy.contacts/c1", json!({"name": "Bob"})),
        ("/data/io.cozy.notes/n1", json!({"title": "one"})),
        ("/data/io.cozy.notes/n2", json!({"title": "two"})),
    ] {
        let (s, v) = alice.call(Method::PUT, path, Some(&writer), Some(body)).await;
        assert_eq!(s, 201, "{v}");
    }
    let a = a.await.unwrap();
    let changes: Vec<&Value> = a.iter().filter(|(n, _)| n == "change").map(|(_, d)| d).collect();
    assert_eq!(a[0].0, "ready", "{a:?}");
    assert_eq!(a[0].1["doctypes"], json!(["io.cozy.notes"]), "{a:?}");
    assert_eq!(changes.len(), 2, "{a:?}");
    assert!(changes.iter().all(|d| d["doctype"] == "io.cozy.notes"), "no contact for a notes token: {a:?}");
    assert_eq!(changes[0]["id"], "n1");
    assert!(changes[0]["rev"].as_str().is_some_and(|r| r.starts_with("1-")), "{a:?}");
    let b = b.await.unwrap();
    let ids: Vec<&Value> = b.iter().filter(|(n, _)| n == "change").map(|(_, d)| &d["id"]).collect();
    assert_eq!(ids, vec!["n2"], "a token on n2 only hears of n2: {b:?}");
}

#[tokio::test]
async fn a_new_sharing_request_and_its_answer_are_sharing_events() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let bob_token = app.token(&bob, "io.cozy.sharings");
    let alice_token = app.token(&alice, "io.cozy.notes io.cozy.sharings");
    let on_bob = subscribe(&bob, &bob_token).await;
    let on_alice = subscribe(&alice, &alice_token).await;
    let bob_events = tokio::spawn(read_events(on_bob, |name, d| name == "sharing" && d["kind"] == "request"));
    let alice_events = tokio::spawn(read_events(on_alice, |name, d| name == "sharing" && d["kind"] == "refused"));
    eventually(10, "both subscribers are live", || async {
        app.instance(&alice.domain).realtime_subscribers.load(Ordering::Relaxed) == 1
            && app.instance(&bob.domain).realtime_subscribers.load(Ordering::Relaxed) == 1
    })
    .await;
    let id = common::flow::create_sharing(
        &alice,
        &alice_token,
        json!([common::flow::notes_rule(&["n1"])]),
        json!([{"email": "bob@example.net"}]),
        json!([]),
    )
    .await;
    let link = common::flow::link(&app, &alice, &id, 1).await;
    common::flow::answer_invitation(&link, &bob, "refuse").await;
    let bob_events = bob_events.await.unwrap();
    assert!(bob_events.iter().any(|(n, d)| n == "sharing" && d["sharing_id"] == id.as_str()), "{bob_events:?}");
    let alice_events = alice_events.await.unwrap();
    let refused = alice_events.last().unwrap();
    assert_eq!(refused.1["sharing_id"], id.as_str());
    assert_eq!(refused.1["member"], 1, "{alice_events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_dropped_and_the_server_goes_on() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let inst = app.instance(&alice.domain);

    // A client with a tiny receive window that sends its request and never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut stalled = socket.connect(([127, 0, 0, 1], app.port).into()).await.unwrap();
    let request =
        format!("GET /realtime/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n", alice.domain);
    stalled.write_all(request.as_bytes()).await.unwrap();
    eventually(10, "the stalled client is subscribed", || async {
        inst.realtime_subscribers.load(Ordering::Relaxed) == 1
    })
    .await;

    // 20,000 changes with long ids (~10 MB of events): far more than the queue and the socket
    // buffers (Linux lets a send buffer grow to 4 MB) hold.
    let long = "x".repeat(480);
    for batch in 0..40 {
        let docs: Vec<Value> = (0..500).map(|i| json!({"_id": format!("{long}-{batch}-{i}"), "n": i})).collect();
        // On the CouchDB backend of a loaded machine a write may outlast the store's request
        // timeout: 503, which a client retries (a document written by the first try is then
        // a per-document conflict in the 201).
        let mut tries = 0;
        let (s, v) = loop {
            tries += 1;
            let (s, v) = alice
                .call(Method::POST, "/data/io.cozy.notes/_bulk_docs", Some(&token), Some(json!({"docs": docs.clone()})))
                .await;
            if s != 503 || tries == 3 {
                break (s, v);
            }
        };
        assert_eq!(s, 201, "{v}");
    }
    eventually(60, "the stalled subscriber is dropped", || async {
        inst.realtime_subscribers.load(Ordering::Relaxed) == 0
    })
    .await;

    // The server still serves, and a new subscriber gets new changes.
    let fresh = subscribe(&alice, &token).await;
    let got = tokio::spawn(read_events(fresh, |name, d| name == "change" && d["id"] == "after"));
    eventually(10, "the new subscriber is live", || async { inst.realtime_subscribers.load(Ordering::Relaxed) == 1 })
        .await;
    let (s, _) = alice.call(Method::PUT, "/data/io.cozy.notes/after", Some(&token), Some(json!({}))).await;
    assert_eq!(s, 201);
    let got = got.await.unwrap();
    assert!(got.iter().any(|(n, d)| n == "change" && d["id"] == "after"));
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_on_a_shared_document_is_a_sharing_event() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let id = common::flow::share(&app, &alice, json!([common::flow::notes_rule(&["n1"])]), &[(&bob, false)]).await;
    let token = app.token(&alice, "io.cozy.notes io.cozy.sharings");
    let rev = common::flow::put_doc(&alice, &token, "io.cozy.notes", "n1", json!({"title": "one"})).await;
    let events = subscribe(&alice, &token).await;
    let got = tokio::spawn(read_events(events, |name, d| name == "sharing" && d["kind"] == "conflict"));
    eventually(10, "the subscriber is live", || async {
        app.instance(&alice.domain).realtime_subscribers.load(Ordering::Relaxed) == 1
    })
    .await;
    // A sibling of the first revision, as a replication brings it: two live leaves.
    let sibling = json!({"_id": "n1", "_rev": "1-ffffffffffffffffffffffffffffffff", "title": "other"});
    let (s, v) = alice.call(Method::PUT, "/data/io.cozy.notes/n1?new_edits=false", Some(&token), Some(sibling)).await;
    assert!(s == 201 || s == 200, "{s} {v}");
    let got = got.await.unwrap();
    let (_, conflict) = got.last().unwrap();
    assert_eq!(conflict["sharing_id"], id.as_str(), "{got:?}");
    assert_eq!(conflict["doctype"], "io.cozy.notes");
    assert_eq!(conflict["id"], "n1");
    let revs: Vec<&str> = conflict["revs"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(revs.len(), 2, "{conflict}");
    assert!(revs.contains(&rev.as_str()) && revs.contains(&"1-ffffffffffffffffffffffffffffffff"), "{conflict}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_of_one_instance_each_get_every_change_once_and_in_order() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let inst = app.instance(&alice.domain);
    const N: usize = 3000;
    let mut readers = Vec::new();
    for _ in 0..5 {
        let resp = subscribe(&alice, &token).await;
        readers
            .push(tokio::spawn(read_events(resp, |name, d| name == "change" && d["id"] == format!("d{:05}", N - 1))));
    }
    // One more that stops reading for a second while the changes pour in: it falls behind the
    // instance's shared events and catches up from the store.
    let slow = subscribe(&alice, &token).await;
    let slow = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        read_events(slow, |name, d| name == "change" && d["id"] == format!("d{:05}", N - 1)).await
    });
    eventually(10, "every subscriber is live", || async { inst.realtime_subscribers.load(Ordering::Relaxed) == 6 })
        .await;
    for batch in 0..N / 500 {
        let docs: Vec<Value> = (0..500).map(|i| json!({"_id": format!("d{:05}", batch * 500 + i)})).collect();
        let (s, v) =
            alice.call(Method::POST, "/data/io.cozy.notes/_bulk_docs", Some(&token), Some(json!({"docs": docs}))).await;
        assert_eq!(s, 201, "{v}");
    }
    let expected: Vec<String> = (0..N).map(|i| format!("d{i:05}")).collect();
    readers.push(slow);
    for r in readers {
        let got = r.await.unwrap();
        let ids: Vec<String> =
            got.iter().filter(|(n, _)| n == "change").map(|(_, d)| d["id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(ids, expected);
    }
}
