//! A real CouchDB client against hearth: PouchDB (Node, `tests/node/replicate.js`) replicates
//! 1,000 documents from a hearth doctype and 1,000 others to it, edits the same documents on
//! both sides, replicates again both ways, and checks that both ends agree on every winning
//! revision, body and `_conflicts`; then that bodies keep their text (key order, floats,
//! strings) both ways. Most ids hold characters a path must encode (`/ + % ? #`, space, `é`,
//! `😀`), so every id route replication uses is exercised with percent-encoded ids. Needs
//! `npm ci` in tests/node (the test script does it).

mod common;

use std::process::Stdio;
use std::time::Duration;

use hearth::store::{AllDocsQuery, Doctype, GetOptions};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pouchdb_replicates_both_ways_and_agrees_on_every_document() {
    let node_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        node_dir.join("node_modules/pouchdb").exists(),
        "run `npm ci --ignore-scripts` in tests/node first (scripts/test does it)"
    );
    let app = common::spawn_app().await;
    // PouchDB talks to 127.0.0.1 directly, so the instance is named after that address.
    let domain = format!("127.0.0.1:{}", app.port);
    app.registry
        .add(hearth::instance::NewInstance {
            domain: hearth::instance::Domain::parse(&domain).unwrap(),
            passphrase: None,
            email: None,
            public_name: None,
        })
        .unwrap();
    let inst = common::TestInstance { domain: domain.clone(), port: app.port, client: app.client.clone() };
    let token = app.token(&inst, "io.cozy.notes");

    let run = tokio::process::Command::new("node")
        .arg(node_dir.join("replicate.js"))
        .env("HEARTH_DB", format!("http://{domain}/data/io.cozy.notes"))
        .env("HEARTH_TOKEN", &token)
        .env("DOCS", "1000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed");
    let out = tokio::time::timeout(Duration::from_secs(300), run.wait_with_output())
        .await
        .expect("the PouchDB run took more than 5 minutes")
        .expect("node run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!("no JSON summary; stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    });
    let mut short = summary.clone();
    short.as_object_mut().map(|o| o.remove("live_ids"));
    assert!(
        out.status.success() && summary["ok"] == true,
        "PouchDB and hearth disagree: {short}\nstderr tail: {}",
        String::from_utf8_lossy(&out.stderr).lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );

    // Cross-check from hearth's own store: every document is there and the conflicts PouchDB
    // saw are in hearth's trees too.
    let instance = app.registry.get(&hearth::instance::Domain::parse(&domain).unwrap()).unwrap().unwrap();
    let t = Doctype::parse("io.cozy.notes").unwrap();
    let all = instance.store.all_docs(&t, &AllDocsQuery { inclusive_end: true, ..Default::default() }).await.unwrap();
    let mut conflicted = 0;
    for row in &all.rows {
        if let hearth::store::AllDocsRow::Doc { id, .. } = row {
            let v = instance.store.get(&t, id, GetOptions::default()).await.unwrap();
            if !v.conflicts.is_empty() {
                conflicted += 1;
            }
        }
    }
    // hearth holds exactly the ids PouchDB holds, as written: none stored in an encoded form.
    let mut pouch_ids: Vec<&str> =
        summary["live_ids"].as_array().expect("summary has live_ids").iter().filter_map(Value::as_str).collect();
    pouch_ids.sort_unstable();
    let mut hearth_ids: Vec<&str> = all
        .rows
        .iter()
        .filter_map(|r| match r {
            hearth::store::AllDocsRow::Doc { id, .. } => Some(id.as_str()),
            _ => None,
        })
        // Step f's `exact-*` documents are written after PouchDB listed its live ids.
        .filter(|id| !id.starts_with("exact-"))
        .collect();
    hearth_ids.sort_unstable();
    assert_eq!(hearth_ids, pouch_ids, "hearth and PouchDB hold the same ids");
    for c in ["/", "+", "%", "?", "#", " ", "é", "😀"] {
        assert!(hearth_ids.iter().any(|id| id.contains(c)), "no replicated id holds {c:?}");
    }
    let expected = summary["conflicted"].as_u64().expect("summary has conflicted");
    assert!(expected >= 300, "the run must create conflicts: {summary}");
    assert_eq!(conflicted, expected, "hearth holds the same conflicted documents as PouchDB");
    assert!(all.rows.len() >= 1900, "about 2,000 live documents expected, got {}", all.rows.len());

    // Exact bodies: PouchDB compared key order, floats and strings as text on both sides
    // (`exact_checked`); an integer beyond JavaScript's numbers, written to hearth and pulled
    // by PouchDB, is still exact in hearth's store, under the revision PouchDB holds.
    assert!(summary["exact_checked"].as_u64().is_some_and(|n| n >= 11), "{summary}");
    let big = instance.store.get(&t, &hearth::store::DocId::parse("exact-big").unwrap(), GetOptions::default()).await;
    let big = big.expect("exact-big is in hearth").doc;
    assert_eq!(
        big.body.as_str(),
        r#"{"order":{"z":1,"a":2},"big":123456789012345678901234567890,"neg":-9223372036854775809}"#
    );
    assert_eq!(Some(big.rev.to_string().as_str()), summary["big_rev"].as_str());
}
