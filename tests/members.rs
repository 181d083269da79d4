//! Members across instances over real HTTP: a recipient's app adds a member to an
//! `open_sharing` (its instance forwards to the owner's delegated route), and member changes
//! (added, accepted, read-only, left, revoked) reach every member's copy of the sharing.

mod common;

use common::flow::*;
use common::{browser, eventually, spawn_app, TestInstance};
use hearth::sharing::MemberStatus;
use reqwest::Method;
use serde_json::{json, Value};

/// Each member's status and read-only flag, as `GET /sharings/:id` shows them on `inst`.
async fn members_seen(inst: &TestInstance, token: &str, id: &str) -> Vec<(String, bool)> {
    let (s, v) = inst.call(Method::GET, &format!("/sharings/{id}"), Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    v["data"]["attributes"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["status"].as_str().unwrap().to_owned(), m["read_only"] == Value::Bool(true)))
        .collect()
}

/// Follows an invitation link as far as naming `recipient`'s instance: the request reaches it.
async fn discover(link: &str, recipient: &TestInstance) {
    let b = browser();
    let html = b.get(link).send().await.unwrap().text().await.unwrap();
    let resp = b
        .post(link.split('?').next().unwrap())
        .form(&[("state", hidden(&html, "state")), ("url", format!("http://{}", recipient.domain))])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302, "{}", resp.text().await.unwrap());
}

fn open_sharing_body(recipients: Value, open: bool) -> Value {
    json!({"data": {"type": "io.cozy.sharings",
        "attributes": {"description": "holiday notes", "open_sharing": open, "rules": [notes_rule(&["n1"])]},
        "relationships": {"recipients": {"data": recipients}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipients_app_adds_carol_to_an_open_sharing_through_the_owner_and_carol_receives_the_request() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = one.add_instance("bob", PASS);
    let carol = one.add_instance("carol", PASS);
    let alice_app = one.token(&alice, "io.cozy.notes");
    let body = open_sharing_body(json!([{"instance": format!("http://{}", bob.domain)}]), true);
    let (s, v) = alice.call(Method::POST, "/sharings/", Some(&alice_app), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    answer_invitation(&link(&one, &alice, &id, 1).await, &bob, "accept").await;

    let bob_app = one.token(&bob, "io.cozy.notes");
    let add = json!({"data": {"type": "io.cozy.sharings", "id": id,
        "relationships": {"recipients": {"data": [{"name": "Carol", "instance": format!("http://{}", carol.domain)}]}}}});
    let (s, v) = bob.call(Method::POST, &format!("/sharings/{id}/recipients"), Some(&bob_app), Some(add)).await;
    assert_eq!(s, 200, "{v}");
    let invitations = v["meta"]["invitations"].as_array().unwrap().clone();
    assert_eq!(invitations.len(), 1, "{v}");
    assert_eq!(invitations[0]["index"], 2);
    assert_eq!(v["data"]["attributes"]["members"].as_array().unwrap().len(), 3, "bob's copy lists carol at once: {v}");

    // The owner has carol, added by bob, read-only until the owner upgrades her.
    let s = load(&one, &alice, &id).await;
    assert_eq!(s.members.len(), 3);
    assert_eq!(s.members[2].added_by, Some(hearth::sharing::MemberIndex(1)));
    assert!(s.members[2].read_only);

    let carol_link = invitations[0]["invitation"].as_str().unwrap().to_owned();
    discover(&carol_link, &carol).await;
    let carol_app = one.token(&carol, "io.cozy.notes");
    let (s, v) = carol.call(Method::GET, "/sharings/requests", Some(&carol_app), None).await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, [id.as_str()], "carol received the request: {v}");
    accept_request(&one, &carol, &id, &state_of(&carol_link)).await;

    let expected = vec![("owner".to_owned(), false), ("ready".to_owned(), false), ("ready".to_owned(), true)];
    assert_eq!(members_seen(&alice, &alice_app, &id).await, expected);
    eventually(10, "bob's copy shows carol ready", || async { members_seen(&bob, &bob_app, &id).await == expected })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipients_app_cannot_add_members_to_a_sharing_that_is_not_open_and_nothing_changes() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = one.add_instance("bob", PASS);
    let alice_app = one.token(&alice, "io.cozy.notes");
    let body = open_sharing_body(json!([{"instance": format!("http://{}", bob.domain)}]), false);
    let (s, v) = alice.call(Method::POST, "/sharings/", Some(&alice_app), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    answer_invitation(&link(&one, &alice, &id, 1).await, &bob, "accept").await;

    let bob_app = one.token(&bob, "io.cozy.notes");
    let add = json!({"data": {"type": "io.cozy.sharings", "id": id,
        "relationships": {"recipients": {"data": [{"email": "carol@example.net"}]}}}});
    let (s, v) = bob.call(Method::POST, &format!("/sharings/{id}/recipients"), Some(&bob_app), Some(add)).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"], "forbidden", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("open_sharing"), "{v}");
    assert_eq!(load(&one, &alice, &id).await.members.len(), 2);
    assert_eq!(load(&one, &bob, &id).await.members.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_changes_reach_every_members_copy_of_the_sharing() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = one.add_instance("bob", PASS);
    let carol = one.add_instance("carol", PASS);
    let dave = one.add_instance("dave", PASS);
    let id = share(&one, &alice, json!([notes_rule(&["n1"])]), &[(&bob, false), (&carol, false), (&dave, false)]).await;
    let tokens: Vec<(&TestInstance, String)> =
        [&alice, &bob, &carol, &dave].into_iter().map(|i| (i, one.token(i, "io.cozy.notes"))).collect();
    let all_agree = |expected: Vec<(String, bool)>, who: Vec<usize>| {
        let tokens = &tokens;
        let id = &id;
        async move {
            for w in who {
                let (inst, token) = &tokens[w];
                if members_seen(inst, token, id).await != expected {
                    return false;
                }
            }
            true
        }
    };
    let st = |s: &[(&str, bool)]| s.iter().map(|(a, b)| ((*a).to_owned(), *b)).collect::<Vec<_>>();

    // Bob accepted first: he learns that carol and dave accepted after him.
    let mut expected = st(&[("owner", false), ("ready", false), ("ready", false), ("ready", false)]);
    eventually(10, "every copy shows every member ready", || all_agree(expected.clone(), vec![0, 1, 2, 3])).await;

    // Added: erin is invited.
    let add = json!({"data": {"type": "io.cozy.sharings", "id": id,
        "relationships": {"recipients": {"data": [{"email": "erin@example.net"}]}}}});
    let (s, v) = alice.call(Method::POST, &format!("/sharings/{id}/recipients"), Some(&tokens[0].1), Some(add)).await;
    assert_eq!(s, 200, "{v}");
    expected.push(("mail-not-sent".to_owned(), false));
    eventually(10, "every copy lists erin", || all_agree(expected.clone(), vec![0, 1, 2, 3])).await;

    // Read-only: carol.
    let (s, v) =
        alice.call(Method::POST, &format!("/sharings/{id}/recipients/2/readonly"), Some(&tokens[0].1), None).await;
    assert_eq!(s, 200, "{v}");
    expected[2].1 = true;
    eventually(10, "every copy shows carol read-only", || all_agree(expected.clone(), vec![0, 1, 2, 3])).await;

    // Left: dave.
    let (s, v) = dave.call(Method::DELETE, &format!("/sharings/{id}/recipients/self"), Some(&tokens[3].1), None).await;
    assert_eq!(s, 200, "{v}");
    expected[3].0 = "revoked".to_owned();
    eventually(10, "every remaining copy shows dave gone", || all_agree(expected.clone(), vec![0, 1, 2])).await;

    // Revoked: bob.
    let (s, v) = alice.call(Method::DELETE, &format!("/sharings/{id}/recipients/1"), Some(&tokens[0].1), None).await;
    assert_eq!(s, 200, "{v}");
    expected[1].0 = "revoked".to_owned();
    eventually(10, "the owner's and carol's copies show bob revoked", || all_agree(expected.clone(), vec![0, 2])).await;
    eventually(10, "bob's copy ended", || async { !load(&one, &bob, &id).await.active }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_list_from_anyone_but_the_owner_is_refused_and_changes_nothing() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = one.add_instance("bob", PASS);
    let id = share(&one, &alice, json!([notes_rule(&["n1"])]), &[(&bob, false)]).await;
    let bob_app = one.token(&bob, "io.cozy.notes");
    let before = members_seen(&bob, &bob_app, &id).await;
    let list = json!({"data": {"type": "io.cozy.sharings", "id": id,
        "attributes": {"members": [{"status": "owner"}, {"status": "revoked"}]}}});
    // An app token of bob's instance, and no token at all.
    let (s, v) = bob.call(Method::PUT, &format!("/sharings/{id}/recipients"), Some(&bob_app), Some(list.clone())).await;
    assert_eq!(s, 401, "{v}");
    let (s, v) = bob.call(Method::PUT, &format!("/sharings/{id}/recipients"), None, Some(list.clone())).await;
    assert_eq!(s, 401, "{v}");
    // The owner's own credentials, with a malformed list.
    let owner_token = peer_token(&load(&one, &alice, &id).await, 1);
    for bad in [
        json!({"data": {"attributes": {"members": "x"}}}),
        json!({"data": {"attributes": {"members": [{"status": "owner"}]}}}),
        json!({"data": {"attributes": {"members": [{"status": "ready"}, {"status": "ready"}]}}}),
        json!({"data": {"attributes": {"members": [{"status": "owner"}, {"status": "emperor"}]}}}),
    ] {
        let (s, v) = bob.call(Method::PUT, &format!("/sharings/{id}/recipients"), Some(&owner_token), Some(bad)).await;
        assert_eq!(s, 400, "{v}");
        assert!(v["reason"].is_string(), "{v}");
    }
    assert_eq!(members_seen(&bob, &bob_app, &id).await, before);
}

/// `POST /sharings/:id/discovery` as a script does (JSON answer): `form` plus the address.
async fn discover_json(owner: &TestInstance, id: &str, form: (&str, &str), url: &str) -> (u16, Value) {
    let resp = browser()
        .post(owner.url(&format!("/sharings/{id}/discovery")))
        .header("Accept", "application/json")
        .form(&[form, ("url", url)])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null))
}

/// Adding someone who is already in a sharing never makes a second member of them (whose
/// invitation their instance refused, which the owner answered with a 502): a ready member is
/// left as is, an invited one is sent the same invitation again, as Cozy's `addMember` does.
/// An instance already in the sharing that is named again (through an invitation link, or on
/// someone else's invitation) gets a clear 409; so does a request the recipient's instance
/// refuses (it answered one before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_member_again_never_makes_a_second_member_nor_a_bad_gateway() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = one.add_instance("bob", PASS);
    let carol = one.add_instance("carol", PASS);
    let dave = one.add_instance("dave", PASS);
    let erin = one.add_instance("erin", PASS);
    let token = one.token(&alice, "io.cozy.notes");
    let (bob_url, erin_url) = (format!("http://{}", bob.domain), format!("http://{}", erin.domain));
    let recipients = json!([{"instance": bob_url}, {"email": "carol@example.net"}, {"instance": erin_url}]);
    let id = create_sharing(&alice, &token, json!([notes_rule(&["n1"])]), recipients, json!([])).await;
    answer_invitation(&link(&one, &alice, &id, 1).await, &bob, "accept").await;
    answer_invitation(&link(&one, &alice, &id, 3).await, &erin, "refuse").await;
    let carol_link = link(&one, &alice, &id, 2).await;
    let path = format!("/sharings/{id}/recipients");
    let add = |r: Value| {
        Some(json!({"data": {"type": "io.cozy.sharings", "id": id, "relationships": {"recipients": {"data": [r]}}}}))
    };

    // Bob, ready, added again by his address (as typed, with a slash): nothing changes.
    let (s, v) = alice.call(Method::POST, &path, Some(&token), add(json!({"instance": format!("{bob_url}/")}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["meta"]["recipients"], json!([{"index": 1, "outcome": "already_member"}]), "{v}");
    // Carol, invited, added again by her email (other case): the same invitation, still valid.
    let (s, v) = alice.call(Method::POST, &path, Some(&token), add(json!({"email": "Carol@Example.net"}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["meta"]["recipients"], json!([{"index": 2, "outcome": "invited_again"}]), "{v}");
    let s = load(&one, &alice, &id).await;
    assert_eq!(s.members.len(), 4, "nobody made twice: {:?}", s.members);
    assert_eq!(link(&one, &alice, &id, 2).await, carol_link);
    answer_invitation(&carol_link, &carol, "accept").await;

    // Bob through an invitation link: 409, and no seat taken.
    let (s, v) = alice
        .call(
            Method::POST,
            &format!("/sharings/{id}/invitations"),
            Some(&token),
            Some(json!({"permissions": ["read"]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let code = v["data"]["attributes"]["link"].as_str().unwrap().split("invitation=").nth(1).unwrap().to_owned();
    let (s, v) = discover_json(&alice, &id, ("invitation", &code), &bob_url).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("already a member"), "{v}");
    assert_eq!(load(&one, &alice, &id).await.members.len(), 4, "no seat for bob");

    // Dave's invitation, given bob's address: 409; dave's invitation stays open for dave.
    let (s, v) = alice.call(Method::POST, &path, Some(&token), add(json!({"email": "dave@example.net"}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["meta"]["recipients"], json!([{"index": 4, "outcome": "added"}]), "{v}");
    let dave_link = link(&one, &alice, &id, 4).await;
    let (s, v) = discover_json(&alice, &id, ("state", &state_of(&dave_link)), &bob_url).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("already a member"), "{v}");
    answer_invitation(&dave_link, &dave, "accept").await;

    // Erin refused: added again, she is a new member, whose request her instance refuses
    // (it answered this sharing already): a 409 that says so.
    let (s, v) = alice.call(Method::POST, &path, Some(&token), add(json!({"instance": erin_url}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["meta"]["recipients"], json!([{"index": 5, "outcome": "added"}]), "{v}");
    let (s, v) = discover_json(&alice, &id, ("state", &state_of(&link(&one, &alice, &id, 5).await)), &erin_url).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("refused the sharing request"), "{v}");

    let s = load(&one, &alice, &id).await;
    let statuses: Vec<MemberStatus> = s.members.iter().map(|m| m.status).collect();
    assert_eq!(
        statuses,
        [
            MemberStatus::Owner,
            MemberStatus::Ready,
            MemberStatus::Ready,
            MemberStatus::Refused,
            MemberStatus::Ready,
            MemberStatus::MailNotSent
        ]
    );
}
