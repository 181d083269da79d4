//! Revocation ends every way back in, over real HTTP between instances: after the owner revokes
//! everyone, revokes one member, deletes a document under a `remove: revoke` rule, or after a
//! member leaves, nothing brings the revoked party back: not the owner's invitation link, not
//! the member's `state` link or preview code, not the fetch of its sharing request, not an
//! answer that arrives late, not a request accepted afterwards.

mod common;

use common::flow::{load, PASS};
use common::{browser, eventually, spawn_app, TestApp, TestInstance};
use hearth::sharing::{links, request, service, MemberStatus, SharingError, SharingId};
use hearth::store::{DocId, Doctype, GetOptions};
use reqwest::Method;
use serde_json::{json, Value};

const WAIT: u64 = 20;

fn rule(remove: &str) -> Value {
    json!({"title": "Notes", "doctype": "io.cozy.notes", "values": ["n1"], "add": "sync", "update": "sync", "remove": remove})
}

/// A sharing with a preview page (so members have preview codes) and personal recipients.
async fn create(owner: &TestInstance, token: &str, rule: Value, recipients: Value) -> String {
    let body = json!({"data": {"type": "io.cozy.sharings",
        "attributes": {"description": "holiday notes", "preview_path": "/preview", "rules": [rule]},
        "relationships": {"recipients": {"data": recipients}}}});
    let (s, v) = owner.call(Method::POST, "/sharings/", Some(token), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    v["data"]["id"].as_str().unwrap().to_owned()
}

/// An invitation link of the owner; answers its code.
async fn new_link(owner: &TestInstance, token: &str, id: &str) -> String {
    let (s, v) = owner
        .call(
            Method::POST,
            &format!("/sharings/{id}/invitations"),
            Some(token),
            Some(json!({"permissions": ["write"]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["data"]["attributes"]["link"].as_str().unwrap().split("invitation=").nth(1).unwrap().to_owned()
}

/// `POST /sharings/:id/discovery` as a script does it, with `state` or `invitation`.
async fn discover(owner: &TestInstance, id: &str, field: &str, value: &str, who: &TestInstance) -> (u16, Value) {
    let resp = browser()
        .post(owner.url(&format!("/sharings/{id}/discovery")))
        .header("Accept", "application/json")
        .form(&[(field, value), ("url", &format!("http://{}", who.domain))])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null))
}

/// The recipient's owner presses Accept on the request it was sent to by `redirect`.
async fn accept(app: &TestApp, who: &TestInstance, id: &str, redirect: &Value) -> Result<(), SharingError> {
    let url = url::Url::parse(redirect["redirect"].as_str().unwrap()).unwrap();
    let state = url.query_pairs().find(|(k, _)| k == "state").unwrap().1.into_owned();
    let inst = app.instance(&who.domain);
    let sid = SharingId::parse(id).unwrap();
    let digest = service::pending_digest(&app.sharing, &inst, &sid).await?;
    service::accept(&app.sharing, &inst, &sid, &state, &digest).await.map(|_| ())
}

/// Discovery then acceptance; answers the member's index on the owner.
async fn join(app: &TestApp, owner: &TestInstance, id: &str, field: &str, value: &str, who: &TestInstance) -> usize {
    let (s, redirect) = discover(owner, id, field, value, who).await;
    assert_eq!(s, 200, "{redirect}");
    accept(app, who, id, &redirect).await.expect("accept");
    index_of(app, owner, id, who).await
}

async fn index_of(app: &TestApp, owner: &TestInstance, id: &str, who: &TestInstance) -> usize {
    let me = format!("http://{}", who.domain);
    load(app, owner, id).await.members.iter().rposition(|m| m.instance.as_deref() == Some(me.as_str())).unwrap()
}

async fn state(app: &TestApp, owner: &TestInstance, id: &str, index: usize) -> String {
    service::member_state(
        &app.instance(&owner.domain),
        &load(app, owner, id).await,
        hearth::sharing::MemberIndex(index),
    )
    .unwrap()
}

/// The owner's invitation link lets nobody in: not its page, not its use, not its details.
async fn link_is_closed(owner: &TestInstance, id: &str, code: &str, who: &TestInstance) {
    let page = browser().get(owner.url(&format!("/sharings/{id}/discovery?invitation={code}"))).send().await.unwrap();
    assert_eq!(page.status(), 403, "the link's page");
    let (s, v) = discover(owner, id, "invitation", code, who).await;
    assert_eq!(s, 403, "using the link: {v}");
    assert_eq!(owner.call(Method::GET, &format!("/invitations/{code}"), None, None).await.0, 404, "its details");
}

/// Every way member `index` had in is closed: its `state` link (page and use), its preview
/// code, the fetch of its sharing request, and an answer sent with its `state`.
async fn member_ways_are_closed(app: &TestApp, owner: &TestInstance, id: &str, index: usize, who: &TestInstance) {
    let inst = app.instance(&owner.domain);
    let s = load(app, owner, id).await;
    let state = service::member_state(&inst, &s, hearth::sharing::MemberIndex(index)).unwrap();
    let html = browser()
        .get(owner.url(&format!("/sharings/{id}/discovery?state={state}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("This invitation was revoked.") && !html.contains("id=\"url\""), "{html}");
    let (s2, v) = discover(owner, id, "state", &state, who).await;
    assert_eq!(s2, 409, "discovery with the state: {v}");
    let code = links::preview_code(&inst, &s, hearth::sharing::MemberIndex(index)).unwrap();
    assert_eq!(owner.call(Method::GET, "/permissions/self", Some(&code), None).await.0, 401, "the preview code");
    let token = request::request_token(&inst, &s, hearth::sharing::MemberIndex(index)).unwrap();
    assert_eq!(owner.call(Method::GET, &format!("/sharings/{id}/request"), Some(&token), None).await.0, 403);
    let late = json!({"data": {"type": "io.cozy.sharings.answer", "id": id, "attributes": {"state": state,
        "client": {"client_id": "c", "client_secret": "s"}, "access_token": {"access_token": "a", "refresh_token": "r"},
        "request_digest": request::offered_digest(&s, hearth::sharing::MemberIndex(index)).unwrap()}}});
    let (s3, v) = owner.call(Method::POST, &format!("/sharings/{id}/answer"), None, Some(late)).await;
    assert_eq!(s3, 409, "a late answer: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_revoking_everyone_no_link_code_or_late_answer_reopens_the_sharing() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let [bob, carol, dave, eve] = ["bob", "carol", "dave", "eve"].map(|n| one.add_instance(n, PASS));
    let token = one.token(&alice, "io.cozy.notes");
    let id =
        create(&alice, &token, rule("sync"), json!([{"email": "bob@example.net"}, {"email": "carol@example.net"}]))
            .await;
    let code = new_link(&alice, &token, &id).await;
    join(&one, &alice, &id, "state", &state(&one, &alice, &id, 1).await, &bob).await;
    // Carol (personal invitation) and dave (the link) start, and have not answered yet.
    let (s, carol_redirect) = discover(&alice, &id, "state", &state(&one, &alice, &id, 2).await, &carol).await;
    assert_eq!(s, 200, "{carol_redirect}");
    let (s, dave_redirect) = discover(&alice, &id, "invitation", &code, &dave).await;
    assert_eq!(s, 200, "{dave_redirect}");
    let dave_index = index_of(&one, &alice, &id, &dave).await;

    let (s, v) = alice.call(Method::DELETE, &format!("/sharings/{id}/recipients"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    assert!(v["data"]["attributes"]["revoked_at"].is_string(), "{v}");

    // The issue's case: someone opens the owner's invitation link after the revocation.
    link_is_closed(&alice, &id, &code, &eve).await;
    // Answers that arrive late.
    for (who, redirect) in [(&carol, &carol_redirect), (&dave, &dave_redirect)] {
        let late = accept(&one, who, &id, redirect).await;
        assert!(matches!(late, Err(SharingError::Conflict(_))), "{late:?}");
        assert!(!load(&one, who, &id).await.active);
    }
    for (index, who) in [(1, &bob), (2, &carol), (dave_index, &dave)] {
        member_ways_are_closed(&one, &alice, &id, index, who).await;
    }
    // Nobody new either: no added recipient, no new link.
    let add = json!({"data": {"relationships": {"recipients": {"data": [{"email": "frank@example.net"}]}}}});
    assert_eq!(alice.call(Method::POST, &format!("/sharings/{id}/recipients"), Some(&token), Some(add)).await.0, 409);
    let link = json!({"permissions": ["read"]});
    assert_eq!(alice.call(Method::POST, &format!("/sharings/{id}/invitations"), Some(&token), Some(link)).await.0, 409);
    // Bob's instance learns it, and a notice sent to it again changes nothing.
    eventually(WAIT, "bob learns the revocation", || async { load(&one, &bob, &id).await.revoked_at.is_some() }).await;
    let s = load(&one, &alice, &id).await;
    let notice = request::notice(&one.instance(&alice.domain), &s, hearth::sharing::MemberIndex(1)).unwrap();
    assert_eq!(bob.call(Method::PUT, &format!("/sharings/{id}"), None, Some(notice)).await.0, 409);

    let s = load(&one, &alice, &id).await;
    assert!(!s.active && s.is_revoked(), "nothing reopened it");
    assert!(s.members[1..].iter().all(|m| m.status == MemberStatus::Revoked), "{:?}", s.members);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_one_member_ends_its_ways_back_in_and_nobody_elses() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let [bob, carol, eve] = ["bob", "carol", "eve"].map(|n| one.add_instance(n, PASS));
    let token = one.token(&alice, "io.cozy.notes");
    let id = create(&alice, &token, rule("sync"), json!([{"email": "carol@example.net"}])).await;
    let code = new_link(&alice, &token, &id).await;
    let other_code = new_link(&alice, &token, &id).await;
    let bob_index = join(&one, &alice, &id, "invitation", &code, &bob).await;
    join(&one, &alice, &id, "state", &state(&one, &alice, &id, 1).await, &carol).await;

    let (s, v) =
        alice.call(Method::DELETE, &format!("/sharings/{id}/recipients/{bob_index}"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    // Bob's instance does not come back through the link it joined with, nor any other.
    for c in [&code, &other_code] {
        let (s, v) = discover(&alice, &id, "invitation", c, &bob).await;
        assert_eq!(s, 403, "{v}");
    }
    member_ways_are_closed(&one, &alice, &id, bob_index, &bob).await;
    eventually(WAIT, "bob learns the revocation", || async { load(&one, &bob, &id).await.revoked_at.is_some() }).await;
    let late = service::pending_digest(&one.sharing, &one.instance(&bob.domain), &SharingId::parse(&id).unwrap()).await;
    assert!(matches!(late, Err(SharingError::Conflict(_))), "bob's copy is not a request to accept: {late:?}");

    // The others are not touched: carol stays, and the link still lets someone new in.
    let eve_index = join(&one, &alice, &id, "invitation", &code, &eve).await;
    let s = load(&one, &alice, &id).await;
    assert!(s.active && !s.is_revoked());
    assert_eq!(s.members[bob_index].status, MemberStatus::Revoked);
    assert_eq!(s.members[1].status, MemberStatus::Ready, "carol");
    assert_eq!(s.members[eve_index].status, MemberStatus::Ready, "eve");
    assert_eq!(s.members.len(), 4, "no new member for bob: {:?}", s.members);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_under_a_revoke_rule_ends_the_sharing_for_good() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let [bob, carol, eve] = ["bob", "carol", "eve"].map(|n| one.add_instance(n, PASS));
    let token = one.token(&alice, "io.cozy.notes");
    let (s, v) =
        alice.call(Method::PUT, "/data/io.cozy.notes/n1", Some(&token), Some(json!({"title": "playlist"}))).await;
    assert_eq!(s, 201, "{v}");
    let rev = v["rev"].as_str().unwrap().to_owned();
    let id = create(&alice, &token, rule("revoke"), json!([{"email": "bob@example.net"}])).await;
    let code = new_link(&alice, &token, &id).await;
    join(&one, &alice, &id, "state", &state(&one, &alice, &id, 1).await, &bob).await;
    let (s, carol_redirect) = discover(&alice, &id, "invitation", &code, &carol).await;
    assert_eq!(s, 200, "{carol_redirect}");
    let carol_index = index_of(&one, &alice, &id, &carol).await;
    // Once the note is shared, alice deletes it.
    let notes = Doctype::parse("io.cozy.notes").unwrap();
    let bob_store = one.instance(&bob.domain).store.clone();
    eventually(WAIT, "the note reaches bob", || {
        let (store, notes) = (bob_store.clone(), notes.clone());
        async move { store.db_info(&notes).await.unwrap().doc_count == 1 }
    })
    .await;
    let (s, _) = alice.call(Method::DELETE, &format!("/data/io.cozy.notes/n1?rev={rev}"), Some(&token), None).await;
    assert_eq!(s, 200);
    eventually(WAIT, "the removal revokes the sharing", || async { load(&one, &alice, &id).await.is_revoked() }).await;

    link_is_closed(&alice, &id, &code, &eve).await;
    let late = accept(&one, &carol, &id, &carol_redirect).await;
    assert!(matches!(late, Err(SharingError::Conflict(_))), "{late:?}");
    for (index, who) in [(1, &bob), (carol_index, &carol)] {
        member_ways_are_closed(&one, &alice, &id, index, who).await;
    }
    let s = load(&one, &alice, &id).await;
    assert!(!s.active && s.members[1..].iter().all(|m| m.status == MemberStatus::Revoked), "{:?}", s.members);
    let n1 = alice_store_has(&one, &alice, "n1").await;
    assert!(!n1, "the note stays deleted on alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_leaving_a_selector_rule_with_remove_revoke_revokes_the_sharing() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let [bob, carol] = ["bob", "carol"].map(|n| one.add_instance(n, PASS));
    let token = one.token(&alice, "io.cozy.todos");
    let (s, v) =
        alice.call(Method::PUT, "/data/io.cozy.todos/rvX", Some(&token), Some(json!({"list": "R1", "n": 1}))).await;
    assert_eq!(s, 201, "{v}");
    let rev = v["rev"].as_str().unwrap().to_owned();
    let rule = json!({"title": "Todos", "doctype": "io.cozy.todos", "selector": "list", "values": ["R1"],
        "add": "sync", "update": "sync", "remove": "revoke"});
    let id = create(&alice, &token, rule, json!([{"email": "bob@example.net"}, {"email": "carol@example.net"}])).await;
    join(&one, &alice, &id, "state", &state(&one, &alice, &id, 1).await, &bob).await;
    let (s, carol_redirect) = discover(&alice, &id, "state", &state(&one, &alice, &id, 2).await, &carol).await;
    assert_eq!(s, 200, "{carol_redirect}");
    let todos = Doctype::parse("io.cozy.todos").unwrap();
    let bob_store = one.instance(&bob.domain).store.clone();
    eventually(WAIT, "the todo reaches bob", || {
        let (store, todos) = (bob_store.clone(), todos.clone());
        async move { store.db_info(&todos).await.unwrap().doc_count == 1 }
    })
    .await;
    assert!(!load(&one, &alice, &id).await.is_revoked());

    let (s, v) = alice
        .call(Method::PUT, &format!("/data/io.cozy.todos/rvX?rev={rev}"), Some(&token), Some(json!({"list": "other"})))
        .await;
    assert_eq!(s, 201, "{v}");
    eventually(WAIT, "leaving the set revokes the sharing", || async { load(&one, &alice, &id).await.is_revoked() })
        .await;
    eventually(WAIT, "bob learns the revocation", || async { load(&one, &bob, &id).await.is_revoked() }).await;
    let late = accept(&one, &carol, &id, &carol_redirect).await;
    assert!(matches!(late, Err(SharingError::Conflict(_))), "{late:?}");
    let s = load(&one, &alice, &id).await;
    assert!(!s.active && s.members[1..].iter().all(|m| m.status == MemberStatus::Revoked), "{:?}", s.members);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_document_of_a_revoke_rule_before_anyone_accepted_revokes_the_sharing() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = one.add_instance("bob", PASS);
    let token = one.token(&alice, "io.cozy.notes");
    let (s, v) =
        alice.call(Method::PUT, "/data/io.cozy.notes/n1", Some(&token), Some(json!({"title": "playlist"}))).await;
    assert_eq!(s, 201, "{v}");
    let rev = v["rev"].as_str().unwrap().to_owned();
    let id = create(&alice, &token, rule("revoke"), json!([{"email": "bob@example.net"}])).await;
    let (s, redirect) = discover(&alice, &id, "state", &state(&one, &alice, &id, 1).await, &bob).await;
    assert_eq!(s, 200, "{redirect}");
    let (s, _) = alice.call(Method::DELETE, &format!("/data/io.cozy.notes/n1?rev={rev}"), Some(&token), None).await;
    assert_eq!(s, 200);

    let late = accept(&one, &bob, &id, &redirect).await;
    assert!(matches!(late, Err(SharingError::Conflict(_))), "{late:?}");
    let s = load(&one, &alice, &id).await;
    assert!(s.is_revoked() && !s.active, "{s:?}");
    assert_eq!(s.members[1].status, MemberStatus::Revoked);
    member_ways_are_closed(&one, &alice, &id, 1, &bob).await;
}

async fn alice_store_has(app: &TestApp, inst: &TestInstance, id: &str) -> bool {
    let store = app.instance(&inst.domain).store.clone();
    store
        .get(&Doctype::parse("io.cozy.notes").unwrap(), &DocId::parse(id).unwrap(), GetOptions::default())
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_left_does_not_come_back_in() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let [bob, carol] = ["bob", "carol"].map(|n| one.add_instance(n, PASS));
    let token = one.token(&alice, "io.cozy.notes");
    let id = create(&alice, &token, rule("sync"), json!([{"email": "carol@example.net"}])).await;
    let code = new_link(&alice, &token, &id).await;
    let bob_index = join(&one, &alice, &id, "invitation", &code, &bob).await;
    join(&one, &alice, &id, "state", &state(&one, &alice, &id, 1).await, &carol).await;

    let bob_app = one.token(&bob, "io.cozy.notes");
    let (s, v) = bob.call(Method::DELETE, &format!("/sharings/{id}/recipients/self"), Some(&bob_app), None).await;
    assert_eq!(s, 200, "{v}");
    assert!(load(&one, &bob, &id).await.is_revoked());
    eventually(WAIT, "alice sees bob leave", || async {
        load(&one, &alice, &id).await.members[bob_index].status == MemberStatus::Revoked
    })
    .await;
    let (s, v) = discover(&alice, &id, "invitation", &code, &bob).await;
    assert_eq!(s, 403, "{v}");
    member_ways_are_closed(&one, &alice, &id, bob_index, &bob).await;
    let again =
        service::pending_digest(&one.sharing, &one.instance(&bob.domain), &SharingId::parse(&id).unwrap()).await;
    assert!(matches!(again, Err(SharingError::Conflict(_))), "{again:?}");
    // Nor as a recipient the owner adds again (nextcloud/server#21107): a clear refusal, not
    // a seat bob's instance would never take.
    let body = json!({"data": {"type": "io.cozy.sharings", "relationships": {"recipients": {"data": [
        {"instance": format!("http://{}", bob.domain)}]}}}});
    let owner = one.token(&alice, "io.cozy.sharings");
    let (s, v) = alice.call(Method::POST, &format!("/sharings/{id}/recipients"), Some(&owner), Some(body)).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["reason"].as_str().is_some_and(|r| r.contains("only a new sharing")), "{v}");
    let s = load(&one, &alice, &id).await;
    assert!(s.active && s.members[1].status == MemberStatus::Ready, "carol stays");
    assert_eq!(s.members.len(), 3, "no new member for bob: {:?}", s.members);
}
