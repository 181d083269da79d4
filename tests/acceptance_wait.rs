//! A call from the owner that comes before the recipient has recorded its acceptance waits for
//! it (`sharing::service::acceptance_recorded`) instead of being answered 503. Two servers,
//! real HTTP. (Apart from `acceptance_logs`, whose test captures every server's log.)

mod common;

use common::flow::{create_sharing, link, load, notes_rule, put_doc, PASS};
use common::spawn_app;
use serde_json::json;

/// The owner's call that comes before the recipient has recorded its acceptance waits for it
/// (`service::acceptance_recorded`, at most `ACCEPTANCE_WAIT`) and is answered once it is
/// recorded, instead of 503. The recipient's sharing is put back as it stands while it records
/// its acceptance (active, with the owner's credentials, is what recording it writes), and
/// restored 300 ms after the owner's `_revs_diff` is sent: the call answers 200, no sooner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_calling_before_the_acceptance_is_recorded_waits_for_it() {
    use hearth::sharing::SharingId;
    let one = spawn_app().await;
    let two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let ta = one.token(&alice, "io.cozy.notes");
    let note = "0123456789abcdef0123456789abcdef";
    put_doc(&alice, &ta, "io.cozy.notes", note, json!({"title": "note"})).await;
    let sid = create_sharing(
        &alice,
        &ta,
        json!([notes_rule(&[note])]),
        json!([{"instance": format!("http://{}", bob.domain)}]),
        json!([]),
    )
    .await;
    common::flow::answer_invitation(&link(&one, &alice, &sid, 1).await, &bob, "accept").await;
    let owner_token = load(&one, &alice, &sid).await.members[1].outbound.clone().expect("credentials").access_token;
    let id = SharingId::parse(&sid).unwrap();
    let store = two.instance(&bob.domain).store.clone();
    let (creds, _) = hearth::sharing::update(store.as_ref(), &id, |s| {
        s.active = false;
        Ok(s.members[0].outbound.take())
    })
    .await
    .unwrap();
    assert!(load(&two, &bob, &sid).await.accepting_here());
    let restore = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        hearth::sharing::update(store.as_ref(), &id, |s| {
            s.active = true;
            s.members[0].outbound = creds.clone();
            Ok(())
        })
        .await
        .unwrap();
    });
    let started = std::time::Instant::now();
    let (status, body) = bob
        .call(reqwest::Method::POST, &format!("/sharings/{sid}/_revs_diff"), Some(&owner_token), Some(json!({})))
        .await;
    let waited = started.elapsed();
    restore.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        waited >= std::time::Duration::from_millis(250),
        "answered after {waited:?}, before the acceptance was recorded"
    );
}
