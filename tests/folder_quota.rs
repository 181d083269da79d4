//! A files sharing obeys the receiving instance's quota (cozy-stack#2578), over real HTTP
//! between instances: content a member sends past the receiver's quota is refused (413, the
//! reason naming the quota), nothing is kept, and the sender shows it in its status, holds the
//! file and retries it later, while the files after it still go. A sender whose content body
//! stalls is answered 408 and leaves nothing, as an upload is.

mod common;

use common::bytes::{bytes_of, download, enc, upload};
use common::flow::{answer_invitation, create_sharing, link, load, peer_token, share_team_folder, shared_team};
use common::{eventually, spawn_app, spawn_app_with, TestApp, TestInstance};
use reqwest::Method;
use serde_json::{json, Value};

const ROOT: &str = "io.cozy.files.root-dir";
const WAIT: u64 = 90;
const MB: usize = 1_000_000;

async fn status(app: &TestApp, i: &TestInstance, sid: &str) -> Value {
    let token = app.token(i, "io.cozy.sharings");
    let (s, v) = i.call(Method::GET, &format!("/sharings/{sid}/status"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    v["data"]["attributes"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_from_a_member_past_the_owners_quota_is_refused_shown_and_retried() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let (ta, tb) = (app.token(&alice, "io.cozy.files"), app.token(&bob, "io.cozy.files"));
    hearth::files::set_instance_quota(app.instance(&alice.domain).store.as_ref(), Some(4 * MB as u64)).await.unwrap();
    let (_, sid) = share_team_folder(&app, &alice, &ta, &bob).await;
    let bob_team = shared_team(&bob, &tb).await;

    // Bob puts three 3 MB files in the folder, then a small one.
    let big: Vec<(String, Vec<u8>)> = (0..3).map(|n| (format!("big-{n}.bin"), bytes_of(n, 3 * MB))).collect();
    let mut bob_ids = Vec::new();
    for (name, data) in &big {
        bob_ids.push(upload(&bob, &tb, &bob_team, name, data).await);
    }
    let small = bytes_of(9, 10_000);
    upload(&bob, &tb, &bob_team, "small.bin", &small).await;

    // Bob's status shows alice refusing files for her quota, still pending.
    eventually(WAIT, "bob's status shows alice's quota refusing files", || async {
        let c = &status(&app, &bob, &sid).await["members"][0]["content"];
        c["last_error"].as_str().is_some_and(|e| e.contains("quota"))
    })
    .await;
    // Its documents are all accepted, yet alice's copy lacks bytes: the member is degraded,
    // never healthy, for as long as she refuses them.
    let m = status(&app, &bob, &sid).await["members"][0].clone();
    assert_eq!(m["content"]["health"], "degraded", "{m}");
    assert!(m["content"]["refused_files"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(m["health"], "degraded", "{m}");
    // Alice's status says what she refused of what bob sent, and why.
    let received = status(&app, &alice, &sid).await["members"][1]["refused_received"].clone();
    // Each refused file counted once, however often bob sends it again.
    let files = received["files"].as_u64().unwrap();
    assert!((1..=3).contains(&files), "{received}");
    assert!(received["last"]["reason"].as_str().is_some_and(|r| r.contains("quota")), "{received}");
    assert!(received["last"]["doc"].as_str().is_some_and(|d| d.starts_with("io.cozy.files/")), "{received}");
    // The small file after the refused ones still arrives.
    eventually(WAIT, "the small file reaches alice", || async {
        download(&alice, &ta, "/Team/small.bin", &small).await == (200, true)
    })
    .await;
    let c = status(&app, &bob, &sid).await["members"][0]["content"].clone();
    assert!(c["files_pending"].as_u64().unwrap() >= 2, "{c}");
    assert!(c["bytes_pending"].as_u64().unwrap() >= 6 * MB as u64, "{c}");
    // Pending is what alice lacks: not the small file, delivered after the held ones (the
    // checkpoint stays before those).
    eventually(WAIT, "bob counts as pending only the big files alice lacks", || async {
        let mut lacking = 0u64;
        for (name, data) in &big {
            if download(&alice, &ta, &format!("/Team/{name}"), data).await != (200, true) {
                lacking += 1;
            }
        }
        let c = &status(&app, &bob, &sid).await["members"][0]["content"];
        c["files_pending"] == json!(lacking) && c["bytes_pending"] == json!(lacking * 3 * MB as u64)
    })
    .await;
    // At most one big file fits on alice (3 MB of 4 MB); the others are not there.
    let mut here = 0;
    for (name, data) in &big {
        match download(&alice, &ta, &format!("/Team/{name}"), data).await {
            (200, true) => here += 1,
            (409, _) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(here <= 1, "{here} big files stored on alice past her 4 MB quota");
    let used = app.files.of(&app.instance(&alice.domain)).await.unwrap();
    let mut stored = 0u64;
    for id in &bob_ids {
        let on_alice = hearth::sharing::xor::xor_id(
            id,
            &hearth::sharing::xor::parse_key(load(&app, &alice, &sid).await.members[1].xor_key.as_deref().unwrap())
                .unwrap(),
        );
        if let Some((vfs_id, size, _)) = used.current_version(&on_alice).await.unwrap() {
            if used.content.size(&hearth::files::version_key(&vfs_id).unwrap()).await.unwrap().is_some() {
                stored += size;
            }
        }
    }
    assert!(stored <= 4 * MB as u64, "{stored} bytes of content kept on alice");

    // Sent by hand, a refused file gets a JSON 413 naming the quota, and nothing is kept.
    let bob_files = app.files.of(&app.instance(&bob.domain)).await.unwrap();
    let s_bob = load(&app, &bob, &sid).await;
    let token = peer_token(&s_bob, 0);
    let mut refused = 0;
    for ((name, data), id) in big.iter().zip(&bob_ids) {
        if download(&alice, &ta, &format!("/Team/{name}"), data).await.0 == 200 {
            continue;
        }
        let (vfs_id, _, _) = bob_files.current_version(id).await.unwrap().unwrap();
        let path = format!("/sharings/{sid}/io.cozy.files/{}/content?vfs_id={vfs_id}", enc(id));
        // Bob's replicator retries this file meanwhile: while one of its attempts is being
        // read, alice answers 409 "being received already" (one transfer of a version at a
        // time); sent again then, it gets the quota's answer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(WAIT);
        let (st, v) = loop {
            let resp = alice.req(Method::PUT, &path, Some(&token)).body(data.clone()).send().await.unwrap();
            let st = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap();
            let busy = st == 409 && v["reason"].as_str().is_some_and(|r| r.contains("being received already"));
            if !busy || std::time::Instant::now() > deadline {
                break (st, v);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(st, 413, "{v}");
        assert_eq!(v["error"], "too_large", "{v}");
        assert!(v["reason"].as_str().unwrap().contains("quota"), "{v}");
        // What is true: this file's size and the room left for it.
        let reason = v["reason"].as_str().unwrap();
        assert!(reason.contains(&format!("it is {} bytes", data.len())) && reason.contains("bytes are free"), "{v}");
        assert_eq!(download(&alice, &ta, &format!("/Team/{name}"), data).await.0, 409, "nothing kept");
        refused += 1;
    }
    assert!(refused >= 2);

    // Alice's quota grows: the held files are retried and arrive, whole.
    hearth::files::set_instance_quota(app.instance(&alice.domain).store.as_ref(), Some(40 * MB as u64)).await.unwrap();
    for (name, data) in &big {
        eventually(WAIT, &format!("{name} reaches alice once the quota allows"), || async {
            download(&alice, &ta, &format!("/Team/{name}"), data).await == (200, true)
        })
        .await;
    }
    eventually(WAIT, "bob's status shows nothing pending and no error", || async {
        let c = &status(&app, &bob, &sid).await["members"][0]["content"];
        c["files_pending"] == json!(0) && c["last_error"].is_null()
    })
    .await;
    let m = status(&app, &bob, &sid).await["members"][0].clone();
    assert_eq!((&m["content"]["refused_files"], &m["health"]), (&json!(0), &json!("healthy")), "{m}");
    // Alice took them all: none is counted as refused there any more.
    let received = status(&app, &alice, &sid).await["members"][1]["refused_received"].clone();
    assert_eq!(received["files"], 0, "{received}");
}

use common::flow::PASS;

/// Content whose body stalls (`Content-Length` 10,000, 10 bytes sent, the socket kept open) is
/// answered 408 after `files.body_idle_secs`, keeps nothing, and leaves the version free for
/// the next transfer, which lands whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_whose_body_stalls_gets_a_408_and_the_next_transfer_lands() {
    // Alice's links wait a minute or two after a failure: the transfer below is the only one.
    let one = spawn_app_with(|c| {
        c.replication.retry_base_ms = 120_000;
        c.replication.retry_max_ms = 120_000;
    })
    .await;
    let two = spawn_app_with(|c| c.files.body_idle_secs = 1).await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let (ta, tb) = (one.token(&alice, "io.cozy.files"), two.token(&bob, "io.cozy.files"));
    let bob_store = two.instance(&bob.domain).store.clone();
    hearth::files::set_instance_quota(bob_store.as_ref(), Some(1)).await.unwrap();
    let (s, v) = alice.call(Method::POST, &format!("/files/{ROOT}?Type=directory&Name=Team"), Some(&ta), None).await;
    assert_eq!(s, 201, "{v}");
    let team = v["data"]["id"].as_str().unwrap().to_owned();
    let data = bytes_of(3, 10_000);
    let f = upload(&alice, &ta, &team, "f.bin", &data).await;
    let rule = json!({"title": "Team", "doctype": "io.cozy.files", "values": [team], "add": "sync", "update": "sync", "remove": "sync"});
    let sid =
        create_sharing(&alice, &ta, json!([rule]), json!([{"instance": format!("http://{}", bob.domain)}]), json!([]))
            .await;
    answer_invitation(&link(&one, &alice, &sid, 1).await, &bob, "accept").await;
    // Bob refuses the bytes once (his quota); alice waits before she tries again.
    eventually(WAIT, "alice's first transfer is refused", || async {
        status(&one, &alice, &sid).await["members"][1]["content"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("quota"))
    })
    .await;
    hearth::files::set_instance_quota(bob_store.as_ref(), None).await.unwrap();
    let path = "/Shared with me/Team/f.bin";
    let (s, v) = bob.call(Method::GET, &format!("/files/metadata?Path={}", enc(path)), Some(&tb), None).await;
    assert_eq!(s, 200, "{v}");
    let on_bob = v["data"]["id"].as_str().unwrap().to_owned();
    let files = one.files.of(&one.instance(&alice.domain)).await.unwrap();
    let (vfs_id, _, _) = files.current_version(&f).await.unwrap().unwrap();
    let token = peer_token(&load(&one, &alice, &sid).await, 1);
    let put = format!("/sharings/{sid}/io.cozy.files/{}/content?vfs_id={vfs_id}", enc(&on_bob));
    let head = format!(
        "PUT {put} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Length: 10000\r\n\r\n0123456789",
        bob.domain
    );
    let text = common::raw_answer(bob.port, &head, 20).await.expect("an answer to a stalled body");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(download(&bob, &tb, path, &data).await.0, 409, "nothing was kept");
    // The version is free again: sent whole, it lands.
    let resp = bob.req(Method::PUT, &put, Some(&token)).body(data.clone()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().await.unwrap_or_default());
    assert_eq!(download(&bob, &tb, path, &data).await, (200, true));
}

/// Bob's file never reaches alice (her quota refuses its bytes), so alice's link to carol waits
/// for bytes that do not come: once that wait has lasted `replication.content_wait_max_ms`,
/// carol shows `degraded` on alice, saying how many files wait and since when (it used to stay
/// `healthy` for good, the file answering 409 on carol). Once the bytes come, she is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_bytes_do_not_come_shows_degraded_once_the_wait_lasts_and_healthy_once_they_come() {
    let app = spawn_app_with(|c| c.replication.content_wait_max_ms = 2_000).await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let carol = app.add_instance("carol", PASS);
    let (ta, tb, tc) =
        (app.token(&alice, "io.cozy.files"), app.token(&bob, "io.cozy.files"), app.token(&carol, "io.cozy.files"));
    let (s, v) = alice.call(Method::POST, &format!("/files/{ROOT}?Type=directory&Name=Team"), Some(&ta), None).await;
    assert_eq!(s, 201, "{v}");
    let team = v["data"]["id"].as_str().unwrap().to_owned();
    let rule = json!({"title": "Team", "doctype": "io.cozy.files", "values": [team], "add": "sync", "update": "sync", "remove": "sync"});
    let recipients =
        json!([{"instance": format!("http://{}", bob.domain)}, {"instance": format!("http://{}", carol.domain)}]);
    let sid = create_sharing(&alice, &ta, json!([rule]), recipients, json!([])).await;
    let s = load(&app, &alice, &sid).await;
    let index_of = |i: &TestInstance| {
        s.members.iter().position(|m| m.instance.as_deref() == Some(&format!("http://{}", i.domain))).unwrap()
    };
    let (on_bob, on_carol) = (index_of(&bob), index_of(&carol));
    answer_invitation(&link(&app, &alice, &sid, on_bob).await, &bob, "accept").await;
    answer_invitation(&link(&app, &alice, &sid, on_carol).await, &carol, "accept").await;
    let bob_team = shared_team(&bob, &tb).await;

    // Alice has no room: bob's file reaches her and carol, its bytes neither.
    let alice_store = app.instance(&alice.domain).store.clone();
    hearth::files::set_instance_quota(alice_store.as_ref(), Some(1)).await.unwrap();
    let data = bytes_of(5, 10_000);
    upload(&bob, &tb, &bob_team, "f.bin", &data).await;
    let path = "/Shared with me/Team/f.bin";
    eventually(WAIT, "the file reaches carol, without its bytes", || async {
        download(&carol, &tc, path, &data).await.0 == 409
    })
    .await;
    eventually(WAIT, "alice shows carol degraded once the wait has lasted", || async {
        let m = &status(&app, &alice, &sid).await["members"][on_carol];
        m["content"]["health"] == "degraded" && m["health"] == "degraded"
    })
    .await;
    let m = status(&app, &alice, &sid).await["members"][on_carol].clone();
    let said = m["content"]["last_error"].as_str().unwrap_or_default();
    assert!(said.starts_with("1 file(s) have waited for content since 20"), "{m}");
    assert_eq!((&m["content"]["files_pending"], &m["content"]["refused_files"]), (&json!(1), &json!(0)), "{m}");
    assert_eq!(m["replication"]["health"], "healthy", "its documents are all delivered: {m}");

    // Room again: bob's retry brings the bytes, alice relays them, carol is healthy.
    hearth::files::set_instance_quota(alice_store.as_ref(), None).await.unwrap();
    eventually(WAIT, "the bytes reach carol", || async { download(&carol, &tc, path, &data).await == (200, true) })
        .await;
    eventually(WAIT, "alice shows carol healthy, nothing waiting", || async {
        let m = &status(&app, &alice, &sid).await["members"][on_carol];
        m["health"] == "healthy" && m["content"]["last_error"].is_null() && m["content"]["files_pending"] == json!(0)
    })
    .await;
}
