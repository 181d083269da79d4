//! Accepting a sharing is no failure: the owner learns of the acceptance (the recipient's
//! answer) before the recipient has recorded it, and may push at once; the recipient's
//! handler then waits for its acceptance to be recorded (`service::acceptance_recorded`,
//! tested on its own in `acceptance_wait`) instead of answering 503: no replication fails for
//! good, none is answered "still recording", and the owner's notices raise no warning. Two
//! servers, real HTTP; the server's own log layer (`hearth::logging`) is captured.

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
    let finals: Vec<&str> = text.lines().filter(|l| l.contains("transient=false")).collect();
    assert!(finals.is_empty(), "{finals:#?}");
    // The owner's first calls wait for the acceptance to be recorded: none is answered "still
    // recording" (and retried) unless recording it took longer than `ACCEPTANCE_WAIT`.
    let early: Vec<&str> = text.lines().filter(|l| l.contains("still recording its acceptance")).collect();
    assert!(early.is_empty(), "{early:#?}");
    // The owner's notices (the member list after each acceptance) meet the same moment, and
    // wait the same way: never a warning.
    let notices: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ") && l.contains("notification")).collect();
    assert!(notices.is_empty(), "{notices:#?}");
}
