//! Sharing requests answered by an app (token-authenticated), with the acceptance page's checks:
//! `GET /sharings/requests`, `POST /sharings/:id/accept` (with the digest of what the app
//! showed), `POST /sharings/:id/refuse`.

mod common;

use common::flow::{create_sharing, hidden, link, load, notes_rule, PASS};
use common::{browser, spawn_app, TestApp, TestInstance};
use hearth::sharing::MemberStatus;
use reqwest::Method;
use serde_json::{json, Value};

/// Alice shares with bob; someone gives bob's address on the invitation page, so the request
/// reaches bob's instance. Answers the sharing id.
async fn request_reaches_bob(app: &TestApp, alice: &TestInstance, bob: &TestInstance) -> String {
    let token = app.token(alice, "io.cozy.notes");
    let (s, v) = alice.call(Method::PUT, "/data/io.cozy.notes/n1", Some(&token), Some(json!({"t": 1}))).await;
    assert_eq!(s, 201, "{v}");
    let id =
        create_sharing(alice, &token, json!([notes_rule(&["n1"])]), json!([{"email": "bob@example.net"}]), json!([]))
            .await;
    let link = link(app, alice, &id, 1).await;
    let b = browser();
    let html = b.get(&link).send().await.unwrap().text().await.unwrap();
    let resp = b
        .post(link.split('?').next().unwrap())
        .form(&[("state", hidden(&html, "state")), ("url", format!("http://{}", bob.domain))])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    id
}

async fn requests(bob: &TestInstance, token: &str) -> Vec<Value> {
    let (s, v) = bob.call(Method::GET, "/sharings/requests", Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    v["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn an_app_lists_a_request_and_accepts_it_with_the_digest_it_showed() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let id = request_reaches_bob(&app, &alice, &bob).await;
    let token = app.token(&bob, "io.cozy.sharings");

    let listed = requests(&bob, &token).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["attributes"]["description"], "holiday notes");
    let digest = listed[0]["meta"]["digest"].as_str().unwrap().to_owned();
    assert!(listed[0].to_string().find("state").is_none(), "the owner's state is never shown: {listed:?}");

    let path = format!("/sharings/{id}/accept");
    // No token, a token that cannot manage sharings, a wrong digest: refused, nothing changes.
    let (s, _) = bob.call(Method::POST, &path, None, Some(json!({"digest": digest}))).await;
    assert_eq!(s, 401);
    let reader = app.token(&bob, "io.cozy.notes:GET");
    let (s, v) = bob.call(Method::POST, &path, Some(&reader), Some(json!({"digest": digest}))).await;
    assert_eq!(s, 403, "{v}");
    let (s, v) = bob.call(Method::POST, &path, Some(&token), Some(json!({"digest": "0".repeat(64)}))).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["reason"].is_string(), "{v}");
    let (s, v) = bob.call(Method::POST, &path, Some(&token), Some(json!({}))).await;
    assert_eq!(s, 400, "the digest is required: {v}");
    assert!(!load(&app, &bob, &id).await.active);
    assert!(load(&app, &alice, &id).await.members[1].status.is_invited(), "bob has not answered yet");

    let (s, v) = bob.call(Method::POST, &path, Some(&token), Some(json!({"digest": digest}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["id"], id.as_str());
    assert!(load(&app, &bob, &id).await.active);
    assert_eq!(load(&app, &alice, &id).await.members[1].status, MemberStatus::Ready);
    assert!(requests(&bob, &token).await.is_empty());
    // Answered: a second answer is a conflict.
    let (s, _) = bob.call(Method::POST, &path, Some(&token), Some(json!({"digest": digest}))).await;
    assert_eq!(s, 409);
    let (s, _) = bob.call(Method::POST, &format!("/sharings/{id}/refuse"), Some(&token), None).await;
    assert_eq!(s, 409);
}

#[tokio::test]
async fn an_app_refuses_a_request_and_the_owner_sees_the_refusal() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let id = request_reaches_bob(&app, &alice, &bob).await;
    let token = app.token(&bob, "io.cozy.sharings");
    let (s, v) = bob.call(Method::POST, &format!("/sharings/{id}/refuse"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(load(&app, &alice, &id).await.members[1].status, MemberStatus::Refused);
    let alice_token = app.token(&alice, "io.cozy.sharings");
    let (s, status) = alice.call(Method::GET, &format!("/sharings/{id}/status"), Some(&alice_token), None).await;
    assert_eq!(s, 200);
    assert_eq!(status["data"]["attributes"]["members"][1]["status"], "refused", "{status}");
    assert!(requests(&bob, &token).await.is_empty());
    let digest = "0".repeat(64);
    let (s, _) =
        bob.call(Method::POST, &format!("/sharings/{id}/accept"), Some(&token), Some(json!({"digest": digest}))).await;
    assert_eq!(s, 409);
}

#[tokio::test]
async fn answering_an_unknown_or_own_sharing_is_a_clear_error() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let id = request_reaches_bob(&app, &alice, &bob).await;
    let token = app.token(&alice, "io.cozy.sharings");
    // Alice owns it: there is no request to answer on her side.
    let (s, v) = alice.call(Method::POST, &format!("/sharings/{id}/refuse"), Some(&token), None).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) =
        alice.call(Method::POST, "/sharings/not-an-id!/accept", Some(&token), Some(json!({"digest": "x"}))).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = alice
        .call(Method::POST, &format!("/sharings/{}/accept", "a".repeat(32)), Some(&token), Some(json!({"digest": "x"})))
        .await;
    assert_eq!(s, 404, "{v}");
}
