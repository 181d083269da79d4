//! Only a sharing's owner can make or replace what a recipient is shown (the threat model of
//! `hearth::sharing::request`), over real HTTP: someone who knows the sharing id, a
//! co-recipient with its own request token, an instance of its own (a stand-in owner server
//! that serves forged requests and counts how often it is asked), someone who sends the first
//! notice before the owner does; and the digest that makes the rules accepted the rules shown,
//! checked by the recipient and by the owner.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::flow::{hidden, load, log_in_and_open, PASS};
use common::{browser, spawn_app, TestApp, TestInstance};
use hearth::sharing::{request, service, MemberStatus, SharingId};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The rules an attacker would like bob to accept: all his friends.
fn friends_rule() -> Value {
    json!({"title": "Notes", "doctype": "io.cozy.contacts", "selector": "kind", "values": ["friend"], "add": "sync", "update": "sync", "remove": "sync"})
}

async fn create(owner: &TestInstance, token: &str, recipients: Value) -> String {
    let body = json!({"data": {"type": "io.cozy.sharings",
        "attributes": {"description": "holiday notes", "rules": [{"title": "Notes", "doctype": "io.cozy.notes",
            "values": ["n1"], "add": "sync", "update": "sync", "remove": "sync"}]},
        "relationships": {"recipients": {"data": recipients}}}});
    let (s, v) = owner.call(Method::POST, "/sharings/", Some(token), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    v["data"]["id"].as_str().unwrap().to_owned()
}

async fn discover(app: &TestApp, owner: &TestInstance, id: &str, index: usize, who: &TestInstance) -> String {
    let state = service::member_state(
        &app.instance(&owner.domain),
        &load(app, owner, id).await,
        hearth::sharing::MemberIndex(index),
    )
    .unwrap();
    let resp = browser()
        .post(owner.url(&format!("/sharings/{id}/discovery")))
        .header("Accept", "application/json")
        .form(&[("state", state.as_str()), ("url", &format!("http://{}", who.domain))])
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null);
    assert_eq!(status, 200, "{v}");
    v["redirect"].as_str().unwrap().to_owned()
}

/// A notice as an attacker writes it: any owner address, nonce and token, any rules.
fn forged_notice(id: &str, owner: &str, nonce: &str, token: &str) -> Value {
    json!({"data": {"type": "io.cozy.sharings", "id": id, "attributes": {
        "description": "holiday notes", "id_nonce": nonce, "rules": [friends_rule()],
        "members": [{"status": "owner", "instance": owner, "public_name": "alice"},
                    {"status": "mail-not-sent", "instance": "http://bob.localhost"}]},
        "meta": {"request_token": token}}})
}

/// Sends `who` a forged notice for `id` with the owner address and nonce given (token `t`).
async fn send_forged(who: &TestInstance, id: &SharingId, owner: &str, nonce: &str) -> (u16, Value) {
    who.call(Method::PUT, &format!("/sharings/{id}"), None, Some(forged_notice(id.as_str(), owner, nonce, "t"))).await
}

/// A stand-in for an instance someone runs: answers every request with a sharing request for
/// the id in its path, addressed to `recipient`, with the attacker's rules and the answer state
/// `forged-state`; counts the requests. An answer (`POST .../answer`) gets credentials and
/// `member_index` 0, the owner's own entry.
async fn forging_owner(recipient: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("http://mallory.localhost:{port}");
    let hits = Arc::new(AtomicUsize::new(0));
    let (me, count) = (url.clone(), hits.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let (me, recipient) = (me.clone(), recipient.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let (method, path) = {
                    let mut words = head.split_whitespace();
                    (words.next().unwrap_or_default().to_owned(), words.next().unwrap_or_default().to_owned())
                };
                // The body, read whole before answering (closing on unread bytes resets).
                let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                while buf.len() < end + length {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let id = path.split('/').nth(2).unwrap_or_default();
                let body = if method == "POST" && path.ends_with("/answer") {
                    json!({"data": {"type": "io.cozy.sharings.answer", "id": id, "attributes": {
                        "member_index": 0,
                        "client": {"client_id": "mallory-client", "client_secret": "mallory-secret"},
                        "access_token": {"access_token": "mallory-access", "refresh_token": "mallory-refresh",
                                         "scope": "x", "token_type": "bearer"}}}})
                } else {
                    json!({"data": {"type": "io.cozy.sharings", "id": id, "attributes": {
                        "description": "holiday notes", "rules": [friends_rule()],
                        "members": [{"status": "owner", "instance": me, "public_name": "alice"},
                                    {"status": "seen", "instance": recipient}]}},
                           "meta": {"state": "forged-state"}})
                }
                .to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            });
        }
    });
    (url, hits)
}

/// What bob's instance stores for `id`: its revision and rules.
async fn stored(app: &TestApp, bob: &TestInstance, id: &str) -> Option<(Option<String>, Value)> {
    let s = hearth::sharing::load(app.instance(&bob.domain).store.as_ref(), &SharingId::parse(id).unwrap())
        .await
        .unwrap()?;
    Some((s.rev.clone(), json!(s.rules)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_who_knows_the_sharing_id_cannot_plant_or_replace_a_request() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let id = create(&alice, &token, json!([{"email": "bob@example.net"}])).await;
    discover(&app, &alice, &id, 1, &bob).await;
    let before = stored(&app, &bob, &id).await.unwrap();
    let nonce = load(&app, &alice, &id).await.id_nonce.unwrap();
    let alice_url = format!("http://{}", alice.domain);

    // Re-sending the request with other rules and the owner's address: without a request
    // token that alice issued for bob, refused; bob's request stays as alice made it.
    let path = format!("/sharings/{id}");
    for (what, body, want) in [
        ("no nonce", forged_notice(&id, &alice_url, "", "guess"), 400),
        ("a guessed token", forged_notice(&id, &alice_url, &nonce, "0123456789abcdef0123456789abcdef"), 403),
        ("another nonce", forged_notice(&id, &alice_url, "00", "guess"), 403),
        ("Cozy's shape, no token", forged_notice(&id, &alice_url, &nonce, ""), 400),
    ] {
        let (s, v) = bob.call(Method::PUT, &path, None, Some(body)).await;
        assert_eq!(s, want, "{what}: {v}");
        assert!(v["error"].is_string(), "{what}: {v}");
        assert_eq!(stored(&app, &bob, &id).await.unwrap(), before, "{what} changed nothing");
    }
    // A new id under alice's address (anyone can derive one): alice does not confirm it.
    let planted = SharingId::derived(&alice_url, "abad1dea");
    let (s, v) = bob
        .call(
            Method::PUT,
            &format!("/sharings/{planted}"),
            None,
            Some(forged_notice(planted.as_str(), &alice_url, "abad1dea", "x")),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert!(stored(&app, &bob, planted.as_str()).await.is_none(), "nothing planted");

    // Alice's own notice, sent again, replaces it with the same request.
    let notice =
        request::notice(&app.instance(&alice.domain), &load(&app, &alice, &id).await, hearth::sharing::MemberIndex(1))
            .unwrap();
    let (s, v) = bob.call(Method::PUT, &path, None, Some(notice)).await;
    assert_eq!(s, 200, "{v}");
    let after = stored(&app, &bob, &id).await.unwrap();
    assert_eq!(after.1, before.1);
    assert_eq!(after.1[0]["doctype"], "io.cozy.notes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_co_recipients_own_token_does_not_rewrite_another_members_request() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let [bob, carol] = ["bob", "carol"].map(|n| app.add_instance(n, PASS));
    let token = app.token(&alice, "io.cozy.notes");
    let id = create(&alice, &token, json!([{"email": "bob@example.net"}, {"email": "carol@example.net"}])).await;
    discover(&app, &alice, &id, 1, &bob).await;
    discover(&app, &alice, &id, 2, &carol).await;
    let before = stored(&app, &bob, &id).await.unwrap();
    // Carol's instance holds a genuine token, for carol's request: sent to bob, the request it
    // fetches is addressed to carol's instance, so bob refuses it.
    let owned = load(&app, &alice, &id).await;
    let carols = request::notice(&app.instance(&alice.domain), &owned, hearth::sharing::MemberIndex(2)).unwrap();
    let (s, v) = bob.call(Method::PUT, &format!("/sharings/{id}"), None, Some(carols)).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("not addressed to this instance"), "{v}");
    assert_eq!(stored(&app, &bob, &id).await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_speaks_only_for_the_sharing_ids_it_issued() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let (mallory, hits) = forging_owner(format!("http://{}", bob.domain)).await;
    let token = app.token(&alice, "io.cozy.notes");
    let id = create(&alice, &token, json!([{"email": "bob@example.net"}])).await;
    discover(&app, &alice, &id, 1, &bob).await;
    let before = stored(&app, &bob, &id).await.unwrap();
    let nonce = load(&app, &alice, &id).await.id_nonce.unwrap();

    // Mallory's instance would serve anything, but alice's id does not derive from its address:
    // refused before mallory is even asked.
    for n in [nonce.as_str(), "abad1dea"] {
        let (s, v) =
            bob.call(Method::PUT, &format!("/sharings/{id}"), None, Some(forged_notice(&id, &mallory, n, "t"))).await;
        assert_eq!(s, 403, "{v}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "mallory's server was never asked");
    assert_eq!(stored(&app, &bob, &id).await.unwrap(), before);

    // Under an id of its own, mallory's request is stored as what it is: mallory's, and bob's
    // page says which instance it comes from, whatever name it gives itself.
    let own = SharingId::derived(&mallory, "abad1dea");
    let (s, v) = send_forged(&bob, &own, &mallory, "abad1dea").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let s = hearth::sharing::load(app.instance(&bob.domain).store.as_ref(), &own).await.unwrap().unwrap();
    assert_eq!(s.members[0].instance.as_deref(), Some(mallory.as_str()));
    let b = browser();
    let page = log_in_and_open(&b, &bob, &bob.url(&format!("/auth/authorize/sharing?sharing_id={own}&state=x"))).await;
    assert!(page.contains(&format!("<code>{mallory}</code>")), "{page}");
}

/// An owner's answer to an acceptance names the member index it took the answer for; the
/// recipient's own entry is the one the request was addressed to, whatever that index says: an
/// answer naming the owner's entry (0) does not make the owner a ready member nor leave the
/// recipient's entry unaccepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owners_answer_naming_another_member_index_is_not_followed() {
    let app = spawn_app().await;
    let bob = app.add_instance("bob", PASS);
    let (mallory, _) = forging_owner(format!("http://{}", bob.domain)).await;
    let id = SharingId::derived(&mallory, "abad1dea");
    let (s, v) = send_forged(&bob, &id, &mallory, "abad1dea").await;
    assert_eq!(s, 200, "{v}");
    let inst = app.instance(&bob.domain);
    let digest = service::pending_digest(&app.sharing, &inst, &id).await.unwrap();
    let accepted = service::accept(&app.sharing, &inst, &id, "forged-state", &digest).await.unwrap();
    let stored = hearth::sharing::load(inst.store.as_ref(), &id).await.unwrap().unwrap();
    for s in [&accepted, &stored] {
        assert_eq!(s.members[0].status, MemberStatus::Owner, "{:?}", s.members[0]);
        assert_eq!(s.members[0].instance.as_deref(), Some(mallory.as_str()));
        assert!(s.members[0].outbound.is_some(), "the owner's credentials are kept on the owner's entry");
        assert_eq!(s.members[1].status, MemberStatus::Ready, "{:?}", s.members[1]);
        assert!(s.active);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_empting_the_owners_first_notice_blocks_nothing() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let (mallory, hits) = forging_owner(format!("http://{}", bob.domain)).await;
    let token = app.token(&alice, "io.cozy.notes");
    let id = create(&alice, &token, json!([{"email": "bob@example.net"}])).await;
    let nonce = load(&app, &alice, &id).await.id_nonce.unwrap();
    let alice_url = format!("http://{}", alice.domain);
    // Before bob ever follows his invitation, someone sends notices for the id.
    for body in [forged_notice(&id, &alice_url, &nonce, "guess"), forged_notice(&id, &mallory, &nonce, "guess")] {
        let (s, v) = bob.call(Method::PUT, &format!("/sharings/{id}"), None, Some(body)).await;
        assert_eq!(s, 403, "{v}");
        assert!(stored(&app, &bob, &id).await.is_none(), "nothing stored");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // Then bob follows it: alice's request arrives and is the one he accepts.
    let authorize = discover(&app, &alice, &id, 1, &bob).await;
    let b = browser();
    let html = log_in_and_open(&b, &bob, &authorize).await;
    assert!(html.contains("1 document(s)") && html.contains("io.cozy.notes") && !html.contains("io.cozy.contacts"));
    let form = [
        ("sharing_id", hidden(&html, "sharing_id")),
        ("state", hidden(&html, "state")),
        ("csrf_token", hidden(&html, "csrf_token")),
        ("digest", hidden(&html, "digest")),
        ("action", "accept".to_owned()),
    ];
    let done = b.post(bob.url("/auth/authorize/sharing")).form(&form).send().await.unwrap();
    assert_eq!(done.status(), 200);
    assert_eq!(load(&app, &alice, &id).await.members[1].status, MemberStatus::Ready);
    assert_eq!(json!(load(&app, &bob, &id).await.rules[0].doctype), "io.cozy.notes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_accepted_are_the_rules_shown() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let id = create(&alice, &token, json!([{"email": "bob@example.net"}])).await;
    let authorize = discover(&app, &alice, &id, 1, &bob).await;
    let b = browser();
    let html = log_in_and_open(&b, &bob, &authorize).await;
    assert!(html.contains("edit the documents too"), "{html}");
    let form = |html: &str, digest: &str| {
        vec![
            ("sharing_id", hidden(html, "sharing_id")),
            ("state", hidden(html, "state")),
            ("csrf_token", hidden(html, "csrf_token")),
            ("digest", digest.to_owned()),
            ("action", "accept".to_owned()),
        ]
    };
    let shown = hidden(&html, "digest");
    let (s, json_view) = {
        let r = b.get(&authorize).header("Accept", "application/json").send().await.unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(s, 200);
    assert_eq!(json_view["meta"]["digest"], shown.as_str(), "the JSON view carries the same digest");

    // Meanwhile the owner makes bob read-only and bob's instance is sent the request again.
    let (s, _) = alice.call(Method::POST, &format!("/sharings/{id}/recipients/1/readonly"), Some(&token), None).await;
    assert_eq!(s, 200);
    discover(&app, &alice, &id, 1, &bob).await;
    // The page bob read is not what is offered any more: accepting it is refused.
    let stale = b.post(bob.url("/auth/authorize/sharing")).form(&form(&html, &shown)).send().await.unwrap();
    assert_eq!(stale.status(), 409, "{}", stale.text().await.unwrap());
    let tampered = b.post(bob.url("/auth/authorize/sharing")).form(&form(&html, &"0".repeat(64))).send().await.unwrap();
    assert_eq!(tampered.status(), 409);
    let json_stale = b
        .post(bob.url("/auth/authorize/sharing"))
        .header("Accept", "application/json")
        .form(&form(&html, &shown))
        .send()
        .await
        .unwrap();
    assert_eq!(json_stale.status(), 409);
    assert!(json_stale.json::<Value>().await.unwrap()["reason"].as_str().unwrap().contains("changed"));
    assert_eq!(load(&app, &alice, &id).await.members[1].status, MemberStatus::Seen, "nothing was answered");
    assert!(!load(&app, &bob, &id).await.active);

    // The owner checks the digest too: an answer for another request is refused.
    let state = service::member_state(
        &app.instance(&alice.domain),
        &load(&app, &alice, &id).await,
        hearth::sharing::MemberIndex(1),
    )
    .unwrap();
    let answer = json!({"data": {"type": "io.cozy.sharings.answer", "id": id, "attributes": {"state": state,
        "client": {"client_id": "c", "client_secret": "s"}, "access_token": {"access_token": "a", "refresh_token": "r"},
        "request_digest": shown}}});
    let (s, v) = alice.call(Method::POST, &format!("/sharings/{id}/answer"), None, Some(answer)).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(load(&app, &alice, &id).await.members[1].status, MemberStatus::Seen);

    // Read again, accepted as read: bob is a read-only member.
    let html = b.get(&authorize).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("read-only"), "{html}");
    assert_ne!(hidden(&html, "digest"), shown);
    let done = b
        .post(bob.url("/auth/authorize/sharing"))
        .header("Accept", "application/json")
        .form(&form(&html, &hidden(&html, "digest")))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert_eq!(done.json::<Value>().await.unwrap()["data"]["attributes"]["active"], true);
    let s = load(&app, &alice, &id).await;
    assert!(s.members[1].status == MemberStatus::Ready && s.members[1].read_only);
}
