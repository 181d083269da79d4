//! The Cozy-to-Cozy sharing flow over real HTTP between instances on two servers: creation,
//! discovery and the HTML forms, login, accept and refuse, the credential exchange, statuses
//! on both sides, the read-only switch, revocation with the peer down, leaving.

mod common;

use common::flow::*;
use common::{browser, eventually, spawn_app};
use hearth::sharing::{self, MemberStatus};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_accept_refuse_switch_and_revoke_with_the_peer_down() {
    let one = spawn_app().await;
    let mut two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let carol = two.add_instance("carol", PASS);
    let token = one.token(&alice, "io.cozy.notes");
    let id = create_sharing(
        &alice,
        &token,
        json!([notes_rule(&["n1"])]),
        json!([{"email": "bob@example.net"}, {"email": "carol@example.net"}]),
        json!([]),
    )
    .await;
    let s = load(&one, &alice, &id).await;
    assert_eq!(
        s.members.iter().map(|m| m.status).collect::<Vec<_>>(),
        [MemberStatus::Owner, MemberStatus::MailNotSent, MemberStatus::MailNotSent]
    );

    let bob_link = link(&one, &alice, &id, 1).await;
    let page = answer_invitation(&bob_link, &bob, "accept").await;
    assert!(page.contains("You accepted"), "{page}");
    let carol_link = link(&one, &alice, &id, 2).await;
    let page = answer_invitation(&carol_link, &carol, "refuse").await;
    assert!(page.contains("You refused"), "{page}");

    let owner_side = load(&one, &alice, &id).await;
    assert!(owner_side.active);
    assert_eq!(owner_side.members[1].status, MemberStatus::Ready);
    assert_eq!(owner_side.members[2].status, MemberStatus::Refused);
    let bob_side = load(&two, &bob, &id).await;
    assert!(bob_side.active && !bob_side.owner);
    assert_eq!(bob_side.members[1].status, MemberStatus::Ready);
    let carol_side = load(&two, &carol, &id).await;
    assert!(!carol_side.active);

    // The discovery page now says the invitation is answered; answering again is a conflict.
    let html = browser().get(&bob_link).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("already accepted"), "{html}");
    let again = json!({"data": {"type": "io.cozy.sharings.answer", "id": id, "attributes": {"state": state_of(&bob_link),
        "client": {"client_id": "x", "client_secret": "y"}, "access_token": {"access_token": "a", "refresh_token": "r"}}}});
    let before = load(&one, &alice, &id).await;
    assert_eq!(alice.call(Method::POST, &format!("/sharings/{id}/answer"), None, Some(again.clone())).await.0, 409);
    let mut wrong = again.clone();
    wrong["data"]["attributes"]["state"] = json!("0123456789abcdef0123456789abcdef");
    assert_eq!(alice.call(Method::POST, &format!("/sharings/{id}/answer"), None, Some(wrong)).await.0, 403);
    assert_eq!(load(&one, &alice, &id).await.rev, before.rev, "refused answers change nothing");

    // Bob's instance can reach the sharing on alice with the token alice gave it.
    let bob_token = peer_token(&bob_side, 0);
    assert_eq!(alice.call(Method::GET, &format!("/sharings/{id}"), Some(&bob_token), None).await.0, 200);
    // ...but cannot manage it.
    assert_eq!(
        alice.call(Method::DELETE, &format!("/sharings/{id}/recipients/2"), Some(&bob_token), None).await.0,
        403
    );
    // Alice's instance reaches bob with bob's credentials.
    let alice_token = peer_token(&owner_side, 1);
    assert_eq!(bob.call(Method::GET, &format!("/sharings/{id}"), Some(&alice_token), None).await.0, 200);

    // Read-only switch: bob's old token dies at once, new GET-only credentials reach bob.
    let (s, v) = alice.call(Method::POST, &format!("/sharings/{id}/recipients/1/readonly"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["attributes"]["members"][1]["read_only"], true);
    assert_eq!(alice.call(Method::GET, &format!("/sharings/{id}"), Some(&bob_token), None).await.0, 401);
    eventually(10, "new credentials reach bob", || async { peer_token(&load(&two, &bob, &id).await, 0) != bob_token })
        .await;
    let new_token = peer_token(&load(&two, &bob, &id).await, 0);
    let claims = one.instance(&alice.domain).keys.verify(&new_token, &[hearth::auth::Audience::Access]).unwrap();
    assert_eq!(claims.scope.unwrap(), format!("io.cozy.sharings:GET:{id}"));
    assert_eq!(alice.call(Method::GET, &format!("/sharings/{id}"), Some(&new_token), None).await.0, 200);

    // Revoke bob while bob's server is down: immediate locally, delivered when bob is back.
    let alice_inst = one.instance(&alice.domain);
    eventually(10, "what alice had to tell bob is delivered", || {
        let inst = alice_inst.clone();
        async move { hearth::sharing::outbox::pending(&inst).await.unwrap().is_empty() }
    })
    .await;
    two.stop().await;
    let (s, v) = alice.call(Method::DELETE, &format!("/sharings/{id}/recipients/1"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["attributes"]["members"][1]["status"], "revoked");
    assert_eq!(alice.call(Method::GET, &format!("/sharings/{id}"), Some(&new_token), None).await.0, 401);
    assert_eq!(hearth::sharing::outbox::pending(&alice_inst).await.unwrap().len(), 1);
    // Let a few deliveries fail while bob is down.
    eventually(10, "delivery attempts fail while bob is down", || {
        let inst = alice_inst.clone();
        async move { hearth::sharing::outbox::pending(&inst).await.unwrap().first().is_some_and(|e| e.attempts >= 2) }
    })
    .await;
    assert!(load(&two, &bob, &id).await.active, "bob can't know yet");
    two.restart().await;
    eventually(15, "bob learns the revocation", || async { !load(&two, &bob, &id).await.active }).await;
    eventually(5, "alice's outbox drains", || {
        let inst = alice_inst.clone();
        async move { hearth::sharing::outbox::pending(&inst).await.unwrap().is_empty() }
    })
    .await;
    assert!(load(&one, &alice, &id).await.members[1].outbound.is_none(), "credentials forgotten once told");
    assert!(!load(&one, &alice, &id).await.active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_leaves_then_the_owner_revokes_everyone() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = one.add_instance("bob", PASS);
    let carol = one.add_instance("carol", PASS);
    let token = one.token(&alice, "io.cozy.notes");
    let id = create_sharing(
        &alice,
        &token,
        json!([notes_rule(&["n1", "n2"])]),
        json!([{"email": "bob@example.net"}]),
        json!([{"instance": format!("http://{}", carol.domain)}]),
    )
    .await;
    answer_invitation(&link(&one, &alice, &id, 1).await, &bob, "accept").await;
    answer_invitation(&link(&one, &alice, &id, 2).await, &carol, "accept").await;
    let s = load(&one, &alice, &id).await;
    assert!(s.members[2].read_only && s.members[2].status == MemberStatus::Ready);
    let claims = one
        .instance(&alice.domain)
        .keys
        .verify(&peer_token(&load(&one, &carol, &id).await, 0), &[hearth::auth::Audience::Access])
        .unwrap();
    assert_eq!(claims.scope.unwrap(), format!("io.cozy.sharings:GET:{id}"), "a read-only member gets GET only");

    // Bob leaves with his own app token.
    let bob_app = one.token(&bob, "io.cozy.notes");
    let bob_peer = peer_token(&load(&one, &bob, &id).await, 0);
    let (s, v) = bob.call(Method::DELETE, &format!("/sharings/{id}/recipients/self"), Some(&bob_app), None).await;
    assert_eq!(s, 200, "{v}");
    assert!(!load(&one, &bob, &id).await.active);
    eventually(10, "alice sees bob leave", || async {
        load(&one, &alice, &id).await.members[1].status == MemberStatus::Revoked
    })
    .await;
    assert_eq!(alice.call(Method::GET, &format!("/sharings/{id}"), Some(&bob_peer), None).await.0, 401);
    assert!(load(&one, &alice, &id).await.active, "carol is still there");

    // Alice revokes everyone.
    let carol_peer = peer_token(&load(&one, &carol, &id).await, 0);
    let (s, _) = alice.call(Method::DELETE, &format!("/sharings/{id}/recipients"), Some(&token), None).await;
    assert_eq!(s, 200);
    // Every sharing route refuses the revoked member's token.
    for (method, path) in [
        (Method::GET, format!("/sharings/{id}")),
        (Method::GET, format!("/sharings/{id}/status")),
        (Method::POST, format!("/sharings/{id}/_revs_diff")),
        (Method::POST, format!("/sharings/{id}/_bulk_docs")),
        (Method::DELETE, format!("/sharings/{id}/answer")),
        (Method::POST, format!("/sharings/{id}/recipients/delegated")),
        (Method::POST, format!("/sharings/{id}/credentials")),
        (Method::POST, format!("/sharings/{id}/invitations")),
        (Method::DELETE, format!("/sharings/{id}/recipients/2")),
    ] {
        let (s, v) = alice.call(method.clone(), &path, Some(&carol_peer), Some(json!({}))).await;
        assert_eq!(s, 401, "{method} {path}: {v}");
    }
    eventually(10, "carol learns the revocation", || async { !load(&one, &carol, &id).await.active }).await;
    let s = load(&one, &alice, &id).await;
    assert!(!s.active);
    assert!(s.members[1..].iter().all(|m| m.status == MemberStatus::Revoked));
}

#[tokio::test]
async fn sharing_requests_are_validated_and_bad_ones_change_nothing() {
    let one = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let notes_only = one.token(&alice, "io.cozy.notes");
    let one_doc = one.token(&alice, "io.cozy.notes:ALL:n1");
    let read_only = one.token(&alice, "io.cozy.notes:GET");
    let ok_rule = notes_rule(&["n1"]);
    let bob = json!([{"email": "bob@example.net"}]);
    let cases: Vec<(&str, Option<&str>, Value, u16)> = vec![
        ("no token", None, json!({}), 401),
        ("not JSON:API", Some(&notes_only), json!({"rules": [ok_rule]}), 400),
        (
            "wrong type",
            Some(&notes_only),
            json!({"data": {"type": "io.cozy.files", "attributes": {"rules": [ok_rule]}}}),
            400,
        ),
        (
            "no rules",
            Some(&notes_only),
            json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": []}}}),
            400,
        ),
        (
            "empty values",
            Some(&notes_only),
            json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": [{"doctype": "io.cozy.notes", "values": []}]}}}),
            400,
        ),
        (
            "bad action",
            Some(&notes_only),
            json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": [{"doctype": "io.cozy.notes", "values": ["a"], "add": "maybe"}]}}}),
            400,
        ),
        (
            "bad doctype",
            Some(&notes_only),
            json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": [{"doctype": "Not/Valid", "values": ["a"]}]}}}),
            400,
        ),
        (
            "bad recipient",
            Some(&notes_only),
            json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": [ok_rule]}, "relationships": {"recipients": {"data": [{"name": "nobody"}]}}}}),
            400,
        ),
        (
            "unknown contact",
            Some(&notes_only),
            json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": [ok_rule]}, "relationships": {"recipients": {"data": [{"id": "nope", "type": "io.cozy.contacts"}]}}}}),
            400,
        ),
        (
            "outside scope",
            Some(&notes_only),
            json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": [{"doctype": "io.cozy.files", "values": ["a"]}]}, "relationships": {"recipients": {"data": bob}}}}),
            403,
        ),
        (
            "other ids",
            Some(&one_doc),
            json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": [notes_rule(&["n2"])]}, "relationships": {"recipients": {"data": bob}}}}),
            403,
        ),
        (
            "read-only token",
            Some(&read_only),
            json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": [ok_rule]}, "relationships": {"recipients": {"data": bob}}}}),
            403,
        ),
        (
            "internal doctype",
            Some(&notes_only),
            json!({"data": {"type": "io.cozy.sharings", "attributes": {"rules": [{"doctype": "io.cozy.sharings", "values": ["a"]}]}}}),
            400,
        ),
    ];
    for (what, token, body, want) in cases {
        let (s, v) = alice.call(Method::POST, "/sharings/", token, Some(body)).await;
        assert_eq!(s, want, "{what}: {v}");
        assert!(v["error"].is_string(), "{what}: JSON error expected, got {v}");
    }
    let raw = alice.req(Method::POST, "/sharings/", Some(&notes_only)).body("{oops").send().await.unwrap();
    assert_eq!(raw.status(), 400);
    let inst = one.instance(&alice.domain);
    assert!(sharing::list(inst.store.as_ref()).await.unwrap().is_empty(), "nothing was created");
    // A contact by id works, with its Cozy URL.
    let contacts = one.token(&alice, "io.cozy.contacts");
    alice.call(Method::PUT, "/data/io.cozy.contacts/c1", Some(&contacts), Some(json!({"fullname": "Bob", "email": [{"address": "bob@example.net", "primary": true}], "cozy": [{"url": "https://bob.example.net"}]}))).await;
    let id = create_sharing(
        &alice,
        &notes_only,
        json!([ok_rule]),
        json!([{"id": "c1", "type": "io.cozy.contacts"}]),
        json!([]),
    )
    .await;
    let (s, v) = alice.call(Method::GET, &format!("/sharings/{id}"), Some(&notes_only), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["attributes"]["members"][1]["email"], "bob@example.net");
    assert_eq!(v["data"]["attributes"]["members"][1]["instance"], "https://bob.example.net");
    assert_eq!(v["data"]["attributes"]["members"][1]["name"], "Bob");
    // The sharings doctype itself is not reachable through /data.
    let all = one.token(&alice, "io.cozy.sharings");
    assert_eq!(alice.call(Method::GET, "/data/io.cozy.sharings/_all_docs", Some(&all), None).await.0, 403);
    // Listing, with filters and a cursor.
    for _ in 0..3 {
        create_sharing(&alice, &notes_only, json!([ok_rule]), bob.clone(), json!([])).await;
    }
    let (_, page1) =
        alice.call(Method::GET, "/sharings/?direction=outgoing&page[limit]=3", Some(&notes_only), None).await;
    assert_eq!(page1["data"].as_array().unwrap().len(), 3);
    let next = page1["links"]["next"].as_str().unwrap().to_owned();
    let (_, page2) = alice.call(Method::GET, &next, Some(&notes_only), None).await;
    assert_eq!(page2["data"].as_array().unwrap().len(), 1);
    let (_, incoming) = alice.call(Method::GET, "/sharings/?direction=incoming", Some(&notes_only), None).await;
    assert_eq!(incoming["data"].as_array().unwrap().len(), 0);
    let (_, none) = alice.call(Method::GET, "/sharings/?doctype=io.cozy.files", Some(&notes_only), None).await;
    assert_eq!(none["data"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn discovery_refuses_private_addresses_when_not_allowed_and_reports_unreachable_peers() {
    let one = common::spawn_app_with(|c| c.federation.allow_private_addresses = false).await;
    let alice = one.add_instance("alice", PASS);
    let token = one.token(&alice, "io.cozy.notes");
    let id =
        create_sharing(&alice, &token, json!([notes_rule(&["n1"])]), json!([{"email": "bob@example.net"}]), json!([]))
            .await;
    let l = link(&one, &alice, &id, 1).await;
    let b = browser();
    for url in
        ["http://127.0.0.1:1", "http://169.254.169.254", "http://10.0.0.1", "http://[::1]:80", "http://bob.localhost"]
    {
        let resp = b
            .post(l.split('?').next().unwrap())
            .header("Accept", "application/json")
            .form(&[("state", state_of(&l).as_str()), ("url", url)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{url}");
    }
    let resp = b
        .post(l.split('?').next().unwrap())
        .form(&[("state", "wrong"), ("url", "https://example.net")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(load(&one, &alice, &id).await.members[1].status, MemberStatus::MailNotSent);
}

/// Each audience's caller (apps' bearer tokens, peers' sharing credentials, the owner's
/// session) is refused before the handler runs, with the status and JSON error it always had.
#[tokio::test]
async fn every_audience_is_refused_with_its_status_and_reason() {
    let one = spawn_app().await;
    let (alice, bob) = (one.add_instance("alice", PASS), one.add_instance("bob", PASS));
    let id = share(&one, &alice, json!([notes_rule(&["n1"])]), &[(&bob, false)]).await;
    // Bob's instance calls Alice's as member 1; Alice's calls Bob's as the owner.
    let bob_peer = peer_token(&load(&one, &bob, &id).await, 0);
    let alice_peer = peer_token(&load(&one, &alice, &id).await, 1);
    let (creds, revs_diff) = (format!("/sharings/{id}/credentials"), format!("/sharings/{id}/_revs_diff"));
    refused(&alice, Method::POST, &creds, None, 401, "a bearer token is required").await;
    refused(&alice, Method::POST, &revs_diff, None, 401, "a bearer token is required").await;
    refused(&alice, Method::DELETE, &format!("/sharings/{id}"), Some(&bob_peer), 403, "only the owner's").await;
    refused(&bob, Method::DELETE, &format!("/sharings/{id}/answer"), Some(&alice_peer), 403, "only a member's").await;
    refused(&alice, Method::DELETE, "/sharings/%20/answer", Some(&bob_peer), 400, "").await;
    refused(&alice, Method::POST, "/sharings/", None, 401, "a bearer token is required").await;
    refused(&alice, Method::GET, "/sharings/", Some(&bob_peer), 401, "invalid or expired token").await;
    refused(&alice, Method::GET, "/permissions/x", None, 401, "a bearer token is required").await;
    refused(&alice, Method::POST, "/auth/session/token", None, 401, "log in first").await;
    assert!(load(&one, &alice, &id).await.active && load(&one, &bob, &id).await.active, "nothing was changed");
}

/// Asserts that `inst` refuses the call with `status`, its JSON error kind, and a reason
/// containing `reason`.
async fn refused(
    inst: &common::TestInstance,
    method: Method,
    path: &str,
    token: Option<&str>,
    status: u16,
    reason: &str,
) {
    let (s, v) = inst.call(method.clone(), path, token, Some(json!({}))).await;
    assert_eq!(s, status, "{method} {path}: {v}");
    let error = match status {
        400 => "bad_request",
        401 => "unauthorized",
        _ => "forbidden",
    };
    assert_eq!(v["error"], error, "{method} {path}: {v}");
    assert!(v["reason"].as_str().is_some_and(|r| r.contains(reason)), "{method} {path}: {v}");
}

/// An outbox entry stored (by an older build) with an invalid sharing id is dropped by the
/// worker, logged, and the next entry is still delivered or dropped as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_entry_with_an_invalid_sharing_id_is_dropped() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let inst = app.instance(&alice.domain);
    let outbox = hearth::store::Doctype::parse(hearth::sharing::outbox::OUTBOX_DOCTYPE).unwrap();
    let store = inst.store.as_ref();
    for (id, sharing_id) in [("bad", "not a sharing id"), ("unknown", "0123456789abcdef0123456789abcdef")] {
        let entry = json!({"sharing_id": sharing_id, "member_index": 1, "method": "PUT", "path": "/x",
            "created_at": "2024-01-01T00:00:00Z"});
        let id = hearth::store::DocId::parse(id).unwrap();
        hearth::store::json::put(store, &outbox, &id, None, entry.as_object().unwrap().clone()).await.unwrap();
    }
    assert_eq!(hearth::sharing::outbox::pending(&inst).await.unwrap().len(), 1, "the bad entry does not read back");
    eventually(10, "both entries are dropped", || {
        let (inst, outbox) = (inst.clone(), outbox.clone());
        async move { hearth::store::json::list(inst.store.as_ref(), &outbox).await.unwrap().is_empty() }
    })
    .await;
}

/// An owner stopped before its sharing's initial set was all in the feed (here: the feed and
/// its start marker forgotten, the state a stop between two parts leaves) takes the set again
/// when it starts, and its status says whether the set is still being taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_set_a_stop_left_untaken_is_taken_when_the_owner_starts_again() {
    let mut one = spawn_app().await;
    let two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let token = one.token(&alice, "io.cozy.notes");
    for n in ["n1", "n2", "n3", "n4"] {
        put_doc(&alice, &token, "io.cozy.notes", n, json!({"title": n})).await;
    }
    let id = share(
        &one,
        &alice,
        json!([rule_with("io.cozy.notes", Some("title"), &["n1", "n2", "n3"], ("sync", "sync", "sync"))]),
        &[(&bob, false)],
    )
    .await;
    let sid = sharing::SharingId::parse(&id).unwrap();
    let feed = |app: &common::TestApp| {
        let store = app.instance(&alice.domain).store.clone();
        let sid = sid.clone();
        async move {
            let mut ids: Vec<String> = store
                .shared_changes(&sid, 0, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.id.as_str().to_owned())
                .collect();
            ids.sort();
            ids
        }
    };
    eventually(15, "the initial set is in the feed", || async { feed(&one).await == ["n1", "n2", "n3"] }).await;
    let status = |app_token: String| {
        let alice = &alice;
        let id = id.clone();
        async move {
            let (s, v) = alice.call(Method::GET, &format!("/sharings/{id}/status"), Some(&app_token), None).await;
            assert_eq!(s, 200, "{v}");
            v
        }
    };
    eventually(10, "the status says the set is taken", || async {
        status(token.clone()).await["data"]["attributes"]["initial_set_pending"] == false
    })
    .await;
    one.instance(&alice.domain).store.untrack(&sid).await.unwrap();
    assert!(feed(&one).await.is_empty());
    one.restart().await;
    eventually(15, "the set is taken again at start-up", || async { feed(&one).await == ["n1", "n2", "n3"] }).await;
    let v = status(token.clone()).await;
    assert_eq!(v["data"]["attributes"]["initial_set_pending"], false, "{v}");
    // And bob still holds exactly the shared notes.
    for n in ["n1", "n2", "n3"] {
        let bob_id = id_on(&one, &alice, &id, 1, n).await;
        assert!(winner(&two, &bob, "io.cozy.notes", &bob_id).await.is_some(), "{n} on bob");
    }
}
