//! Received batches racing local writes. The safety principle: a peer's change may update only
//! documents that are in the sharing when the change is written. Here the owner moves shared
//! documents out of the sharing (into a private list, with private text) while the recipient's
//! instance sends edits of the same documents, all at once over real HTTP. Each received
//! document is judged and written in one store transaction, so either the peer's edit lands
//! first (and the owner's move, made on top of an older revision, is refused with 409 and
//! made again on top of it) or the move lands first (and the edit is refused). The bug this
//! guards against, a judgement made before the move and a write after it, leaves the edit as a
//! second branch of a document that is no longer shared, which can then pull the document (and
//! its private branch) back to the peer.

mod common;

use common::flow::*;
use common::{eventually, spawn_app};
use futures_util::future::join_all;
use hearth::store::{DocId, Doctype, OpenRev, OpenRevs};
use reqwest::Method;
use serde_json::{json, Value};

const WAIT: u64 = 60;
const DOCS: usize = 80;
/// How many todos ahead of its move a todo's edit is sent (see below).
const LEAD: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_writes_moving_documents_out_never_let_a_racing_peer_edit_land_outside_the_sharing() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let a = app.token(&alice, "io.cozy.todos io.cozy.sharings");
    let ids: Vec<String> = (0..DOCS).map(|i| format!("5ab1e5ab1e5ab1e5ab1e5ab1{i:08x}")).collect();
    let mut common_revs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        common_revs.push(
            put_doc(&alice, &a, "io.cozy.todos", id, json!({"list_id": "l1", "text": format!("todo {i}")})).await,
        );
    }
    let rules = json!([rule_with("io.cozy.todos", Some("list_id"), &["l1"], ("sync", "sync", "sync"))]);
    let sid = share(&app, &alice, rules, &[(&bob, false)]).await;
    let mut on_bob = Vec::new();
    for id in &ids {
        on_bob.push(id_on(&app, &alice, &sid, 1, id).await);
    }
    eventually(WAIT, "every todo reaches bob", || async {
        for id in &on_bob {
            if winner(&app, &bob, "io.cozy.todos", id).await.is_none() {
                return false;
            }
        }
        true
    })
    .await;
    let creds = load(&app, &bob, &sid).await.members[0].outbound.clone().unwrap();

    // Alice moves each todo out of the shared list, retrying on 409 on top of whatever won.
    // The edits go out together; each move starts when the edit of the todo `LEAD` places
    // before it was answered, so that this todo's edit is about to be judged or written,
    // whatever the backend's pace.
    let (mut go, gates): (Vec<_>, Vec<_>) =
        (0..DOCS).map(|_| tokio::sync::oneshot::channel::<()>()).map(|(tx, rx)| (Some(tx), rx)).unzip();
    let releases: Vec<_> = (0..DOCS).map(|j| go.get_mut(j + LEAD).and_then(Option::take)).collect();
    for tx in go.iter_mut().take(LEAD).filter_map(Option::take) {
        let _ = tx.send(());
    }
    let move_out = |(i, gate): (usize, tokio::sync::oneshot::Receiver<()>)| {
        let (app, alice, a, id) = (&app, &alice, &a, ids[i].clone());
        async move {
            let _ = gate.await;
            loop {
                let (rev, _) = winner(app, alice, "io.cozy.todos", &id).await.unwrap();
                let body = json!({"_rev": rev, "list_id": "private", "text": format!("secret {i}")});
                let (s, v) = alice.call(Method::PUT, &format!("/data/io.cozy.todos/{id}"), Some(a), Some(body)).await;
                match s {
                    201 => return v["rev"].as_str().unwrap().to_owned(),
                    409 => continue,
                    _ => panic!("{s} {v}"),
                }
            }
        }
    };
    // Bob's instance sends an edit of the revision both have, one batch per todo.
    let peer_edit = |(i, next): (usize, Option<tokio::sync::oneshot::Sender<()>>)| {
        let (alice, sid, token) = (&alice, sid.clone(), creds.access_token.clone());
        let common = common_revs[i].split_once('-').unwrap().1.to_owned();
        let hash = format!("{:032x}", 0xb0b0_0000_u64 + i as u64);
        let doc = json!({"_id": on_bob[i], "_rev": format!("2-{hash}"), "_revisions": {"start": 2, "ids": [hash, common]},
            "list_id": "l1", "text": format!("bob's edit {i}")});
        async move {
            let body = json!({"io.cozy.todos": [doc]});
            let (s, refused) =
                alice.call(Method::POST, &format!("/sharings/{sid}/_bulk_docs"), Some(&token), Some(body)).await;
            assert_eq!(s, 200, "{refused}");
            if let Some(next) = next {
                let _ = next.send(());
            }
            refused.as_array().unwrap().is_empty()
        }
    };
    let (moved, accepted) = tokio::join!(
        join_all(gates.into_iter().enumerate().map(move_out)),
        join_all(releases.into_iter().enumerate().map(peer_edit))
    );
    let accepted = accepted.iter().filter(|a| **a).count();
    println!("{accepted} of {DOCS} peer edits landed before the move, the others were refused");

    // Every todo has one branch, alice's private version: no edit landed beside it.
    for (i, id) in ids.iter().enumerate() {
        let l = leaves(&app, &alice, "io.cozy.todos", id).await;
        assert_eq!(l, [moved[i].clone()], "todo {i}: a peer edit landed outside the sharing");
        let (_, body) = winner(&app, &alice, "io.cozy.todos", id).await.unwrap();
        assert_eq!(body["list_id"], "private");
    }
    // And nothing private ever reached bob.
    eventually(WAIT, "replication settles", || async {
        let r = replication_state(&alice, &a, &sid, 1).await;
        r["pending"] == 0 && r["running"] == false
    })
    .await;
    let store = app.instance(&bob.domain).store.clone();
    let todos = Doctype::parse("io.cozy.todos").unwrap();
    for (i, id) in on_bob.iter().enumerate() {
        let all = store.open_revs(&todos, &DocId::parse(id).unwrap(), OpenRevs::All, false).await.unwrap();
        for r in all {
            if let OpenRev::Found(d) = r {
                let text = d.body.get("text").unwrap_or(Value::Null);
                assert!(!text.as_str().unwrap_or("").starts_with("secret"), "todo {i}: {text} reached bob");
            }
        }
    }
}
