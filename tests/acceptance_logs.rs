//! Accepting a sharing is no failure: the owner learns of the acceptance (the recipient's
//! answer) before the recipient has recorded it, and may push at once; the recipient's
//! handler then waits for its acceptance to be recorded (`service::acceptance_recorded`)
//! instead of answering 503, so the owner's first batch goes through at once: no replication
//! fails, not even transiently, and the owner's notices raise no warning. Two servers, real
//! HTTP; the server's own log layer (`hearth::logging`) is captured.

mod common;

use common::logs::Captured;

use common::flow::{create_sharing, link, load, notes_rule, put_doc, replication_state, winner, PASS};
use common::{eventually, spawn_app};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepting_sharings_logs_no_final_replication_failure() {
    let out = Captured::default();
    let writer = out.clone();
    tracing_subscriber::registry()
        .with(hearth::logging::layer("warn,hearth=info", move || writer.clone(), false))
        .init();
    let one = spawn_app().await;
    let two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let ta = one.token(&alice, "io.cozy.notes");
    // A few acceptances: the owner pushes at once each time.
    for n in 0..3 {
        let note = format!("0123456789abcdef0123456789abcde{n}");
        put_doc(&alice, &ta, "io.cozy.notes", &note, json!({"title": format!("note {n}")})).await;
        let sid = create_sharing(
            &alice,
            &ta,
            json!([notes_rule(&[&note])]),
            json!([{"instance": format!("http://{}", bob.domain)}]),
            json!([]),
        )
        .await;
        common::flow::answer_invitation(&link(&one, &alice, &sid, 1).await, &bob, "accept").await;
        let key = load(&one, &alice, &sid).await.members[1].xor_key.clone().unwrap();
        let on_bob = hearth::sharing::xor::xor_id(&note, &hearth::sharing::xor::parse_key(&key).unwrap());
        eventually(90, "the note reaches bob", || async {
            winner(&two, &bob, "io.cozy.notes", &on_bob).await.is_some()
        })
        .await;
        eventually(90, "alice's link to bob is at rest and healthy", || async {
            let st = replication_state(&alice, &ta, &sid, 1).await;
            st["running"] != json!(true) && st["pending"] == 0 && st["health"] == "healthy"
        })
        .await;
    }
    let text = out.text();
    assert!(text.contains("sharing accepted"), "the log is captured: {text}");
    let failed: Vec<&str> =
        text.lines().filter(|l| l.contains("transient=false") || l.contains("replication failed")).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    // The owner's notices (the member list after each acceptance) meet the same moment, and
    // wait the same way: never a warning.
    let notices: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ") && l.contains("notification")).collect();
    assert!(notices.is_empty(), "{notices:#?}");
}

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
