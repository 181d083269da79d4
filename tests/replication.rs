//! Replication of shared documents between instances over real HTTP: push and sync rules,
//! read-only members, selectors, documents leaving, `remove: revoke`, relaying through the
//! owner, conflicts, deletion against edit, a peer down then catching up, refused documents,
//! and re-sharing after revocation. Every wait polls with a deadline.

mod common;

use common::flow::*;
use common::{eventually, spawn_app, TestApp, TestInstance};
use hearth::sharing::xor;
use hearth::sharing::{self, MemberStatus, Sharing, SharingId};
use hearth::store::{DocId, DocWrite, Doctype, GetOptions, StoreError};
use reqwest::Method;
use serde_json::{json, Map, Value};

const WAIT: u64 = 20;

fn rule(doctype: &str, values: &[&str], add: &str, update: &str, remove: &str) -> Value {
    json!({"title": "shared", "doctype": doctype, "values": values, "add": add, "update": update, "remove": remove})
}

async fn load(app: &TestApp, inst: &TestInstance, id: &str) -> Sharing {
    sharing::load(app.instance(&inst.domain).store.as_ref(), &SharingId::parse(id).unwrap()).await.unwrap().unwrap()
}

/// A document's id on member `member`'s instance (ids travel XOR-ed with the member's key).
async fn id_on(owner_app: &TestApp, owner: &TestInstance, sid: &str, member: usize, id: &str) -> String {
    let s = load(owner_app, owner, sid).await;
    let key = xor::parse_key(s.members[member].xor_key.as_deref().unwrap()).unwrap();
    xor::xor_id(id, &key)
}

/// The winning revision, body and conflicts of a document, read from an instance's store.
async fn read(
    app: &TestApp,
    inst: &TestInstance,
    doctype: &str,
    id: &str,
) -> Option<(String, Map<String, Value>, Vec<String>)> {
    let store = app.instance(&inst.domain).store.clone();
    match store.get(&Doctype::parse(doctype).unwrap(), &DocId::parse(id).unwrap(), GetOptions::default()).await {
        Ok(v) => Some((
            v.doc.rev.to_string(),
            v.doc.body.to_map().unwrap(),
            v.conflicts.iter().map(|r| r.to_string()).collect(),
        )),
        Err(StoreError::NotFound | StoreError::Deleted) => None,
        Err(e) => panic!("{e}"),
    }
}

async fn put(inst: &TestInstance, token: &str, doctype: &str, id: &str, body: Value) -> String {
    let (s, v) = inst.call(Method::PUT, &format!("/data/{doctype}/{id}"), Some(token), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    v["rev"].as_str().unwrap().to_owned()
}

/// Sets up a sharing from `owner` with each recipient accepting, and returns its id.
async fn share(
    owner_app: &TestApp,
    owner: &TestInstance,
    rules: Value,
    recipients: &[(&TestInstance, bool)],
) -> String {
    let token = owner_app.token(owner, "io.cozy.notes io.cozy.todos");
    let rw: Vec<Value> = recipients
        .iter()
        .filter(|(_, ro)| !ro)
        .map(|(r, _)| json!({"instance": format!("http://{}", r.domain)}))
        .collect();
    let ro: Vec<Value> = recipients
        .iter()
        .filter(|(_, ro)| *ro)
        .map(|(r, _)| json!({"instance": format!("http://{}", r.domain)}))
        .collect();
    let id = create_sharing(owner, &token, rules, json!(rw), json!(ro)).await;
    let s = load(owner_app, owner, &id).await;
    for (i, m) in s.members.iter().enumerate().skip(1) {
        let who =
            recipients.iter().find(|(r, _)| m.instance.as_deref() == Some(&format!("http://{}", r.domain))).unwrap().0;
        answer_invitation(&link(owner_app, owner, &id, i).await, who, "accept").await;
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_rules_flow_from_the_owner_only_and_read_only_members_cannot_write() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let a = app.token(&alice, "io.cozy.notes");
    let b = app.token(&bob, "io.cozy.notes");
    put(&alice, &a, "io.cozy.notes", "n1", json!({"title": "before"})).await;
    let sid =
        share(&app, &alice, json!([rule("io.cozy.notes", &["n1", "n2"], "push", "push", "push")]), &[(&bob, false)])
            .await;
    let n1 = id_on(&app, &alice, &sid, 1, "n1").await;
    eventually(WAIT, "n1 reaches bob", || async { read(&app, &bob, "io.cozy.notes", &n1).await.is_some() }).await;
    let r = put(
        &alice,
        &a,
        "io.cozy.notes",
        "n1",
        json!({"_rev": read(&app, &alice, "io.cozy.notes", "n1").await.unwrap().0, "title": "after"}),
    )
    .await;
    eventually(WAIT, "the update reaches bob", || async {
        read(&app, &bob, "io.cozy.notes", &n1).await.unwrap().0 == r
    })
    .await;
    // A document created later under the rule arrives too.
    put(&alice, &a, "io.cozy.notes", "n2", json!({"title": "second"})).await;
    let n2 = id_on(&app, &alice, &sid, 1, "n2").await;
    eventually(WAIT, "n2 reaches bob", || async { read(&app, &bob, "io.cozy.notes", &n2).await.is_some() }).await;
    // Bob's edit stays local.
    let bob_rev = put(&bob, &b, "io.cozy.notes", &n1, json!({"_rev": r, "title": "bob's"})).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(read(&app, &alice, "io.cozy.notes", "n1").await.unwrap().1["title"], "after");
    assert_eq!(read(&app, &bob, "io.cozy.notes", &n1).await.unwrap().0, bob_rev);
    // And alice refuses it even if bob's instance sends it: with push rules its token is GET-only.
    let creds = load(&app, &bob, &sid).await.members[0].outbound.clone().unwrap();
    let doc = json!({"io.cozy.notes": [{"_id": n1, "_rev": bob_rev, "_revisions": {"start": 3, "ids": [bob_rev.split('-').nth(1).unwrap(), r.split('-').nth(1).unwrap()]}, "title": "forced"}]});
    let (s, v) =
        alice.call(Method::POST, &format!("/sharings/{sid}/_bulk_docs"), Some(&creds.access_token), Some(doc)).await;
    assert_refused_as_read_only(s, &v);
    assert_eq!(read(&app, &alice, "io.cozy.notes", "n1").await.unwrap().1["title"], "after");
    let status = alice.call(Method::GET, &format!("/sharings/{sid}/status"), Some(&a), None).await.1;
    assert_eq!(status["data"]["attributes"]["members"][1]["replication"]["health"], "healthy", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_rules_relay_changes_between_recipients_through_the_owner() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let carol = app.add_instance("carol", PASS);
    let dave = app.add_instance("dave", PASS);
    let a = app.token(&alice, "io.cozy.notes");
    put(&alice, &a, "io.cozy.notes", "n1", json!({"title": "v1"})).await;
    let sid = share(&app, &alice, json!([notes_rule(&["n1"])]), &[(&bob, false), (&carol, false), (&dave, true)]).await;
    let (on_bob, on_carol, on_dave) = (
        id_on(&app, &alice, &sid, 1, "n1").await,
        id_on(&app, &alice, &sid, 2, "n1").await,
        id_on(&app, &alice, &sid, 3, "n1").await,
    );
    eventually(WAIT, "n1 reaches everyone", || async {
        read(&app, &bob, "io.cozy.notes", &on_bob).await.is_some()
            && read(&app, &carol, "io.cozy.notes", &on_carol).await.is_some()
            && read(&app, &dave, "io.cozy.notes", &on_dave).await.is_some()
    })
    .await;
    // Bob edits: alice gets it, and relays it to carol and dave.
    let b = app.token(&bob, "io.cozy.notes");
    let rev = read(&app, &bob, "io.cozy.notes", &on_bob).await.unwrap().0;
    let new = put(&bob, &b, "io.cozy.notes", &on_bob, json!({"_rev": rev, "title": "from bob"})).await;
    eventually(WAIT, "bob's edit reaches carol and dave through alice", || async {
        read(&app, &alice, "io.cozy.notes", "n1").await.unwrap().0 == new
            && read(&app, &carol, "io.cozy.notes", &on_carol).await.unwrap().0 == new
            && read(&app, &dave, "io.cozy.notes", &on_dave).await.unwrap().0 == new
    })
    .await;
    // Dave is read-only: his edit stays on his instance, and alice refuses it if sent.
    let d = app.token(&dave, "io.cozy.notes");
    let dave_rev = put(&dave, &d, "io.cozy.notes", &on_dave, json!({"_rev": new, "title": "from dave"})).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(read(&app, &alice, "io.cozy.notes", "n1").await.unwrap().0, new);
    let creds = load(&app, &dave, &sid).await.members[0].outbound.clone().unwrap();
    let doc = json!({"io.cozy.notes": [{"_id": on_dave, "_rev": dave_rev, "title": "forced"}]});
    let (s, v) =
        alice.call(Method::POST, &format!("/sharings/{sid}/_bulk_docs"), Some(&creds.access_token), Some(doc)).await;
    assert_refused_as_read_only(s, &v);
    // Carol deletes it: the deletion flows to everyone (remove: sync).
    let c = app.token(&carol, "io.cozy.notes");
    let (s, _) = carol.call(Method::DELETE, &format!("/data/io.cozy.notes/{on_carol}?rev={new}"), Some(&c), None).await;
    assert_eq!(s, 200);
    eventually(WAIT, "carol's deletion reaches alice and bob", || async {
        read(&app, &alice, "io.cozy.notes", "n1").await.is_none()
            && read(&app, &bob, "io.cozy.notes", &on_bob).await.is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_a_recipient_received_are_not_sent_back_but_its_own_edits_are() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let a = app.token(&alice, "io.cozy.notes");
    let ids = ["n0", "n1", "n2", "n3", "n4"];
    for id in ids {
        put(&alice, &a, "io.cozy.notes", id, json!({"title": "v1"})).await;
    }
    let sid = share(&app, &alice, json!([notes_rule(&ids)]), &[(&bob, false)]).await;
    let mut on_bob = Vec::new();
    for id in ids {
        on_bob.push(id_on(&app, &alice, &sid, 1, id).await);
    }
    eventually(WAIT, "every note reaches bob", || async {
        for id in &on_bob {
            if read(&app, &bob, "io.cozy.notes", id).await.is_none() {
                return false;
            }
        }
        true
    })
    .await;
    // Bob's link to alice goes past what it received without asking alice about any of it.
    let b = app.token(&bob, "io.cozy.notes");
    let link = || async {
        let st = bob.call(Method::GET, &format!("/sharings/{sid}/status"), Some(&b), None).await.1;
        st["data"]["attributes"]["members"][0]["replication"].clone()
    };
    eventually(WAIT, "bob's link to alice has gone past the received notes", || async {
        let l = link().await;
        l["last_seq"].as_u64() > Some(0) && l["pending"] == 0 && l["running"] == false
    })
    .await;
    let l = link().await;
    assert_eq!(l["health"], "healthy", "{l}");
    // Both stores record a received document as from that member, unchanged since: bob does
    // not ask alice about any of it.
    assert_eq!(l["processed"].as_u64(), Some(0), "{l}");
    // An edit made on bob still goes to alice.
    let rev = read(&app, &bob, "io.cozy.notes", &on_bob[0]).await.unwrap().0;
    let new = put(&bob, &b, "io.cozy.notes", &on_bob[0], json!({"_rev": rev, "title": "from bob"})).await;
    eventually(WAIT, "bob's edit reaches alice", || async {
        read(&app, &alice, "io.cozy.notes", "n0").await.is_some_and(|(r, _, _)| r == new)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_recipient_stays_at_rest_after_its_initial_sync() {
    // A read-only member's token on the owner is GET-only: sending received documents back to
    // alice would be refused (403) and leave bob's link retrying with documents pending, though
    // bob did nothing. (Bob has a link to alice because carol, a read-write member, may send
    // documents through alice; with read-only members only, he would have none.)
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let carol = app.add_instance("carol", PASS);
    let a = app.token(&alice, "io.cozy.notes");
    let ids = ["r0", "r1", "r2", "r3"];
    for id in ids {
        put(&alice, &a, "io.cozy.notes", id, json!({"title": "v1"})).await;
    }
    let sid = share(&app, &alice, json!([notes_rule(&ids)]), &[(&bob, true), (&carol, false)]).await;
    let s = load(&app, &alice, &sid).await;
    let bob_index = s.members.iter().position(|m| m.instance.as_deref() == Some(&format!("http://{}", bob.domain)));
    let bob_index = bob_index.expect("bob is a member");
    assert!(s.members[bob_index].read_only);
    let mut on_bob = Vec::new();
    for id in ids {
        on_bob.push(id_on(&app, &alice, &sid, bob_index, id).await);
    }
    eventually(WAIT, "every note reaches bob", || async {
        for id in &on_bob {
            if read(&app, &bob, "io.cozy.notes", id).await.is_none() {
                return false;
            }
        }
        true
    })
    .await;
    let b = app.token(&bob, "io.cozy.notes");
    let link = || async {
        let st = bob.call(Method::GET, &format!("/sharings/{sid}/status"), Some(&b), None).await.1;
        st["data"]["attributes"]["members"][0]["replication"].clone()
    };
    // Bob's link to alice goes past the received notes (its feed holds them) and rests. On
    // CouchDB a received document's membership and its write are two rows of the feed,
    // numbered apart (see `TrackState::arrival` in src/store/couch/track.rs): the link may rest
    // between them, so at rest means nothing left to read.
    eventually(WAIT, "bob's link to alice has gone past the received notes", || async {
        let l = link().await;
        l["last_seq"].as_u64() > Some(0) && l["running"] == false && l["pending"] == 0
    })
    .await;
    let l = link().await;
    assert_eq!(l["pending"], 0, "{l}");
    assert_eq!(l["health"], "healthy", "{l}");
    assert!(l["last_error"].is_null(), "{l}");
    assert_eq!(l["attempts"], 0, "{l}");
    assert_eq!(l["processed"].as_u64(), Some(0), "nothing was sent back to alice: {l}");
    // Alice's side of the link saw nothing from bob either.
    let t = app.token(&alice, "io.cozy.notes");
    let st = alice.call(Method::GET, &format!("/sharings/{sid}/status"), Some(&t), None).await.1;
    let member = &st["data"]["attributes"]["members"][bob_index];
    assert_eq!(member["replication"]["refused_docs"], 0, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_on_a_field_track_documents_joining_and_leaving() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let a = app.token(&alice, "io.cozy.todos");
    let list_rule = json!({"title": "groceries", "doctype": "io.cozy.todos", "selector": "list_id", "values": ["l1"],
        "add": "sync", "update": "sync", "remove": "sync"});
    put(&alice, &a, "io.cozy.todos", "t1", json!({"list_id": "l1", "text": "milk"})).await;
    put(&alice, &a, "io.cozy.todos", "t2", json!({"list_id": "l2", "text": "private"})).await;
    let sid = share(&app, &alice, json!([list_rule]), &[(&bob, false)]).await;
    let t1 = id_on(&app, &alice, &sid, 1, "t1").await;
    let t2 = id_on(&app, &alice, &sid, 1, "t2").await;
    eventually(WAIT, "t1 reaches bob", || async { read(&app, &bob, "io.cozy.todos", &t1).await.is_some() }).await;
    assert!(read(&app, &bob, "io.cozy.todos", &t2).await.is_none(), "t2 is not in the list");
    // A new todo in l1 joins; bob's new todo in l1 reaches alice (bob's id space).
    put(&alice, &a, "io.cozy.todos", "t3", json!({"list_id": "l1", "text": "eggs"})).await;
    let t3 = id_on(&app, &alice, &sid, 1, "t3").await;
    eventually(WAIT, "t3 reaches bob", || async { read(&app, &bob, "io.cozy.todos", &t3).await.is_some() }).await;
    let b = app.token(&bob, "io.cozy.todos");
    put(&bob, &b, "io.cozy.todos", "0000000000000000000000000000beef", json!({"list_id": "l1", "text": "from bob"}))
        .await;
    let on_alice = id_on(&app, &alice, &sid, 1, "0000000000000000000000000000beef").await;
    eventually(WAIT, "bob's todo reaches alice", || async {
        read(&app, &alice, "io.cozy.todos", &on_alice).await.is_some()
    })
    .await;
    // t1 moves to a private list: it leaves the sharing. Under `remove: sync` bob's copy is
    // deleted, and nothing of its new content travels.
    let rev = read(&app, &alice, "io.cozy.todos", "t1").await.unwrap().0;
    let moved = put(&alice, &a, "io.cozy.todos", "t1", json!({"_rev": rev, "list_id": "l2", "text": "private"})).await;
    eventually(WAIT, "bob's copy is deleted", || async { read(&app, &bob, "io.cozy.todos", &t1).await.is_none() })
        .await;
    let store = app.instance(&bob.domain).store.clone();
    let todos = Doctype::parse("io.cozy.todos").unwrap();
    let all = store.open_revs(&todos, &DocId::parse(&t1).unwrap(), hearth::store::OpenRevs::All, false).await.unwrap();
    assert!(!format!("{all:?}").contains("private"), "the new content stays with alice: {all:?}");
    assert_eq!(read(&app, &alice, "io.cozy.todos", "t1").await.unwrap().0, moved, "alice keeps her document");
    // A peer cannot change it any more: it is outside the sharing.
    let creds = load(&app, &bob, &sid).await.members[0].outbound.clone().unwrap();
    let body = json!({"io.cozy.todos": [{"_id": t1, "_rev": "9-ffff", "list_id": "l1", "text": "pulled back"}]});
    let (s, refused) =
        alice.call(Method::POST, &format!("/sharings/{sid}/_bulk_docs"), Some(&creds.access_token), Some(body)).await;
    assert_eq!((s, refused.as_array().map(Vec::len)), (200, Some(1)), "{refused}");
    assert_eq!(read(&app, &alice, "io.cozy.todos", "t1").await.unwrap().0, moved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_document_under_a_revoke_rule_revokes_the_sharing() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let a = app.token(&alice, "io.cozy.notes");
    let r = put(&alice, &a, "io.cozy.notes", "n1", json!({"title": "playlist"})).await;
    let sid =
        share(&app, &alice, json!([rule("io.cozy.notes", &["n1"], "push", "push", "revoke")]), &[(&bob, false)]).await;
    let n1 = id_on(&app, &alice, &sid, 1, "n1").await;
    eventually(WAIT, "n1 reaches bob", || async { read(&app, &bob, "io.cozy.notes", &n1).await.is_some() }).await;
    let (s, _) = alice.call(Method::DELETE, &format!("/data/io.cozy.notes/n1?rev={r}"), Some(&a), None).await;
    assert_eq!(s, 200);
    eventually(WAIT, "the sharing is revoked on both sides", || async {
        !load(&app, &alice, &sid).await.active && !load(&app, &bob, &sid).await.active
    })
    .await;
    assert!(read(&app, &bob, "io.cozy.notes", &n1).await.is_some(), "bob keeps his copy");
}

/// Writes on an instance's store directly (its server may be stopped).
async fn edit_in_store(
    app: &TestApp,
    inst: &TestInstance,
    id: &str,
    parent: &str,
    deleted: bool,
    body: Value,
) -> String {
    let store = app.instance(&inst.domain).store.clone();
    let w = DocWrite {
        id: DocId::parse(id).unwrap(),
        rev: Some(parent.parse().unwrap()),
        revisions: None,
        deleted,
        body: hearth::store::Body::from_map(body.as_object().unwrap()),
    };
    match store.bulk_docs(&Doctype::parse("io.cozy.notes").unwrap(), vec![w], true).await.unwrap().pop().unwrap() {
        hearth::store::WriteResult::Ok { rev, .. } => rev.to_string(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_converge_everywhere_and_the_resolution_replicates() {
    let one = spawn_app().await;
    let mut two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let carol = two.add_instance("carol", PASS);
    let a = one.token(&alice, "io.cozy.notes");
    let r1 = put(&alice, &a, "io.cozy.notes", "n1", json!({"title": "v1"})).await;
    let r2 = put(&alice, &a, "io.cozy.notes", "n2", json!({"title": "v1"})).await;
    let sid = share(&one, &alice, json!([notes_rule(&["n1", "n2"])]), &[(&bob, false), (&carol, false)]).await;
    let ids = |m: usize| {
        let (one, alice, sid) = (&one, &alice, sid.clone());
        async move { (id_on(one, alice, &sid, m, "n1").await, id_on(one, alice, &sid, m, "n2").await) }
    };
    let (b1, b2) = ids(1).await;
    let (c1, c2) = ids(2).await;
    eventually(WAIT, "both documents reach bob and carol", || async {
        read(&two, &bob, "io.cozy.notes", &b2).await.is_some()
            && read(&two, &carol, "io.cozy.notes", &c2).await.is_some()
            && read(&two, &bob, "io.cozy.notes", &b1).await.is_some()
            && read(&two, &carol, "io.cozy.notes", &c1).await.is_some()
    })
    .await;
    // While bob's server is down, alice and bob edit n1 concurrently, alice deletes n2 while
    // bob edits it.
    two.stop().await;
    let alice_edit = put(&alice, &a, "io.cozy.notes", "n1", json!({"_rev": r1, "title": "alice"})).await;
    let (s, _) = alice.call(Method::DELETE, &format!("/data/io.cozy.notes/n2?rev={r2}"), Some(&a), None).await;
    assert_eq!(s, 200);
    let bob_edit = edit_in_store(&two, &bob, &b1, &r1, false, json!({"title": "bob"})).await;
    let bob_edit2 = edit_in_store(&two, &bob, &b2, &r2, false, json!({"title": "bob keeps it"})).await;
    two.restart().await;
    let winner = std::cmp::max(alice_edit.clone(), bob_edit.clone());
    let loser = std::cmp::min(alice_edit.clone(), bob_edit.clone());
    eventually(WAIT, "all three agree on n1's winner and conflict", || async {
        let want = Some((winner.clone(), vec![loser.clone()]));
        let strip = |v: Option<(String, Map<String, Value>, Vec<String>)>| v.map(|(r, _, c)| (r, c));
        strip(read(&one, &alice, "io.cozy.notes", "n1").await) == want
            && strip(read(&two, &bob, "io.cozy.notes", &b1).await) == want
            && strip(read(&two, &carol, "io.cozy.notes", &c1).await) == want
    })
    .await;
    // Deletion against edit: the edit wins everywhere (a live leaf beats a deleted one).
    eventually(WAIT, "n2 converges on bob's edit", || async {
        read(&one, &alice, "io.cozy.notes", "n2").await.map(|v| v.0) == Some(bob_edit2.clone())
            && read(&two, &carol, "io.cozy.notes", &c2).await.map(|v| v.0) == Some(bob_edit2.clone())
    })
    .await;
    // Alice resolves n1 by deleting the losing leaf; the resolution replicates.
    let (s, _) = alice.call(Method::DELETE, &format!("/data/io.cozy.notes/n1?rev={loser}"), Some(&a), None).await;
    assert_eq!(s, 200);
    eventually(WAIT, "no conflict left anywhere", || async {
        read(&one, &alice, "io.cozy.notes", "n1").await.unwrap().2.is_empty()
            && read(&two, &bob, "io.cozy.notes", &b1).await.unwrap().2.is_empty()
            && read(&two, &carol, "io.cozy.notes", &c1).await.unwrap().2.is_empty()
    })
    .await;
    assert_eq!(read(&two, &carol, "io.cozy.notes", &c1).await.unwrap().0, winner);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_down_for_a_while_catches_up_and_its_state_is_reported() {
    let one = spawn_app().await;
    let mut two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let a = one.token(&alice, "io.cozy.notes");
    let ids: Vec<String> = (0..40).map(|i| format!("note{i:02}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let sid = share(&one, &alice, json!([notes_rule(&refs)]), &[(&bob, false)]).await;
    two.stop().await;
    for id in &ids {
        put(&alice, &a, "io.cozy.notes", id, json!({"title": id})).await;
    }
    eventually(WAIT, "alice reports bob as retrying", || async {
        let st = alice.call(Method::GET, &format!("/sharings/{sid}/status"), Some(&a), None).await.1;
        let rep = &st["data"]["attributes"]["members"][1]["replication"];
        rep["health"] == "retrying" || rep["health"] == "down"
    })
    .await;
    let st = alice.call(Method::GET, &format!("/sharings/{sid}/status"), Some(&a), None).await.1;
    let rep = &st["data"]["attributes"]["members"][1]["replication"];
    assert!(rep["last_error"].as_str().unwrap().contains("unreachable"), "{rep}");
    assert_eq!(rep["pending"], 40);
    two.restart().await;
    for id in &ids {
        let on_bob = id_on(&one, &alice, &sid, 1, id).await;
        eventually(WAIT, "bob catches up", || async { read(&two, &bob, "io.cozy.notes", &on_bob).await.is_some() })
            .await;
    }
    eventually(WAIT, "bob is healthy again", || async {
        let st = alice.call(Method::GET, &format!("/sharings/{sid}/status"), Some(&a), None).await.1;
        st["data"]["attributes"]["members"][1]["replication"]["health"] == "healthy"
            && st["data"]["attributes"]["members"][1]["replication"]["pending"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_create_or_change_documents_outside_the_sharing() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let a = app.token(&alice, "io.cozy.notes");
    put(&alice, &a, "io.cozy.notes", "n1", json!({"title": "shared"})).await;
    let private = put(&alice, &a, "io.cozy.notes", "secret", json!({"title": "private"})).await;
    let sid = share(&app, &alice, json!([notes_rule(&["n1"])]), &[(&bob, false)]).await;
    let creds = load(&app, &bob, &sid).await.members[0].outbound.clone().unwrap();
    let key = |id: &str| {
        let (app, alice, sid) = (&app, &alice, sid.clone());
        let id = id.to_owned();
        async move { id_on(app, alice, &sid, 1, &id).await }
    };
    // An update of alice's private document, a new document matching no rule.
    let body = json!({"io.cozy.notes": [
        {"_id": key("secret").await, "_rev": "2-ffff", "_revisions": {"start": 2, "ids": ["ffff", private.split('-').nth(1).unwrap()]}, "title": "pwned"},
        {"_id": key("other").await, "_rev": "1-aaaa", "title": "intruder"},
    ]});
    let (s, refused) =
        alice.call(Method::POST, &format!("/sharings/{sid}/_bulk_docs"), Some(&creds.access_token), Some(body)).await;
    assert_eq!(s, 200, "{refused}");
    assert_eq!(refused.as_array().unwrap().len(), 2, "{refused}");
    assert_eq!(read(&app, &alice, "io.cozy.notes", "secret").await.unwrap().0, private, "local documents untouched");
    assert!(read(&app, &alice, "io.cozy.notes", "other").await.is_none());
    // `_revs_diff` says nothing about documents outside the sharing.
    let (_, diff) = alice
        .call(
            Method::POST,
            &format!("/sharings/{sid}/_revs_diff"),
            Some(&creds.access_token),
            Some(json!({format!("io.cozy.notes/{}", key("secret").await): [private]})),
        )
        .await;
    assert_eq!(diff.as_object().unwrap().len(), 1, "reported missing: {diff}");
    // Another instance's token, or none, is refused.
    assert_eq!(alice.call(Method::POST, &format!("/sharings/{sid}/_bulk_docs"), None, Some(json!({}))).await.0, 401);
    assert_eq!(
        alice.call(Method::POST, &format!("/sharings/{sid}/_bulk_docs"), Some(&a), Some(json!({}))).await.0,
        401
    );
    // Malformed bodies are 400s.
    for bad in [
        json!([]),
        json!({"io.cozy.notes": 3}),
        json!({"io.cozy.notes": [{"title": "no id"}]}),
        json!({"Bad/Type": []}),
    ] {
        let (s, v) = alice
            .call(Method::POST, &format!("/sharings/{sid}/_bulk_docs"), Some(&creds.access_token), Some(bad))
            .await;
        assert_eq!(s, 400, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_shared_again_after_revocation_arrives_fresh() {
    // Ids as hearth makes them (32 hex digits): every digit changes with the member key.
    const DOC: &str = "5e1f0c2ab8d34f6e9a7b1c0d2e3f4a5b";
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let a = app.token(&alice, "io.cozy.notes");
    let b = app.token(&bob, "io.cozy.notes");
    put(&alice, &a, "io.cozy.notes", DOC, json!({"title": "v1"})).await;
    let first = share(&app, &alice, json!([notes_rule(&[DOC])]), &[(&bob, false)]).await;
    let old = id_on(&app, &alice, &first, 1, DOC).await;
    eventually(WAIT, "the note reaches bob", || async { read(&app, &bob, "io.cozy.notes", &old).await.is_some() })
        .await;
    alice.call(Method::DELETE, &format!("/sharings/{first}/recipients"), Some(&a), None).await;
    eventually(WAIT, "bob learns the revocation", || async { !load(&app, &bob, &first).await.active }).await;
    // Bob deletes his copy, which leaves a tombstone above alice's revision.
    let rev = read(&app, &bob, "io.cozy.notes", &old).await.unwrap().0;
    assert_eq!(bob.call(Method::DELETE, &format!("/data/io.cozy.notes/{old}?rev={rev}"), Some(&b), None).await.0, 200);
    let second = share(&app, &alice, json!([notes_rule(&[DOC])]), &[(&bob, false)]).await;
    let new = id_on(&app, &alice, &second, 1, DOC).await;
    assert_ne!(new, old, "a new sharing gets new ids");
    eventually(WAIT, "the note arrives again, alive", || async {
        read(&app, &bob, "io.cozy.notes", &new).await.is_some()
    })
    .await;
    assert!(read(&app, &bob, "io.cozy.notes", &old).await.is_none(), "the old copy stays deleted");
    assert_eq!(load(&app, &alice, &second).await.members[1].status, MemberStatus::Ready);
}

/// A member whose token may not write is let in and has each document refused, with the
/// reason its replicator shows (CouchDB's per-document `forbidden`).
fn assert_refused_as_read_only(status: u16, v: &Value) {
    assert!((200..300).contains(&status), "{status} {v}");
    let refused = v.as_array().cloned().unwrap_or_default();
    assert_eq!(refused.len(), 1, "{v}");
    assert_eq!(refused[0]["error"], "forbidden", "{v}");
    assert!(refused[0]["reason"].as_str().is_some_and(|r| r.contains("may only read")), "{v}");
}
