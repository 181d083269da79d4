//! A file written into a running files sharing after a large one reaches the member while the
//! large one still travels (syncthing#1509: small files stuck behind a huge one): a round ahead
//! delivers the rows written since the running round started, and the next round, which owns
//! the checkpoint, finds them there (nothing is sent twice). Over real HTTP, alice's requests
//! to bob going through a proxy that carries 2 MB/s towards bob.

mod common;

use common::bytes::{bytes_of, download, enc, upload};
use common::flow::{share_team_folder, shared_team, PASS};
use common::{eventually, spawn_app, TestApp, TestInstance};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: u64 = 90;
const MB: usize = 1_000_000;

/// A TCP proxy to 127.0.0.1:`to` on a port of its own, whose client-to-server direction carries
/// at most `rate` bytes a second (the other way goes as fast as it can).
async fn throttled_proxy(to: u16, rate: usize) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else { return };
                let ((mut from_client, mut to_client), (mut from_server, mut to_server)) =
                    (client.into_split(), server.into_split());
                let up = async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
                    }
                    let _ = to_server.shutdown().await;
                };
                let down = async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                    let _ = to_client.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    port
}

async fn content_of_bob(app: &TestApp, alice: &TestInstance, sid: &str) -> Value {
    let token = app.token(alice, "io.cozy.sharings");
    let (s, v) = alice.call(Method::GET, &format!("/sharings/{sid}/status"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    v["data"]["attributes"]["members"][1]["content"].clone()
}

/// alice's "Team" folder shared with bob, whose instance alice reaches through
/// [`throttled_proxy`] at 2 MB/s; `ta`, `tb`: their files tokens, `sid`: the sharing.
struct Team {
    app: TestApp,
    alice: TestInstance,
    bob: TestInstance,
    ta: String,
    tb: String,
    team: String,
    sid: String,
}

async fn team_shared_through_a_slow_proxy() -> Team {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance_at("bob", PASS, throttled_proxy(app.port, 2 * MB).await);
    let (ta, tb) = (app.token(&alice, "io.cozy.files"), app.token(&bob, "io.cozy.files"));
    let (team, sid) = share_team_folder(&app, &alice, &ta, &bob).await;
    shared_team(&bob, &tb).await;
    Team { app, alice, bob, ta, tb, team, sid }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_after_a_large_one_does_not_wait_for_its_transfer() {
    let Team { app, alice, bob, ta, tb, team, sid } = team_shared_through_a_slow_proxy().await;

    // A 24 MB file (12 s at 2 MB/s), then once its transfer runs, a small one.
    let (big, small) = (bytes_of(1, 24 * MB), bytes_of(2, 1_000));
    upload(&alice, &ta, &team, "big.bin", &big).await;
    eventually(WAIT, "the large file's transfer runs", || async {
        let c = content_of_bob(&app, &alice, &sid).await;
        c["running"] == json!(true) && c["bytes_pending"].as_u64().is_some_and(|b| b >= 24 * MB as u64)
    })
    .await;
    upload(&alice, &ta, &team, "small.txt", &small).await;
    eventually(WAIT, "the small file reaches bob", || async {
        download(&bob, &tb, "/Shared with me/Team/small.txt", &small).await == (200, true)
    })
    .await;
    let (big_status, _) = download(&bob, &tb, "/Shared with me/Team/big.bin", &big).await;
    assert_eq!(big_status, 409, "the small file came while the large one still travelled");
    // It comes too, and each file was sent once.
    eventually(WAIT, "the large file reaches bob", || async {
        download(&bob, &tb, "/Shared with me/Team/big.bin", &big).await == (200, true)
    })
    .await;
    eventually(WAIT, "alice has nothing pending for bob", || async {
        let c = content_of_bob(&app, &alice, &sid).await;
        c["files_pending"] == json!(0) && c["running"] == json!(false)
    })
    .await;
    let c = content_of_bob(&app, &alice, &sid).await;
    assert_eq!((c["files_sent"].clone(), c["bytes_sent"].clone()), (json!(2), json!(24 * MB + 1_000)), "{c}");
}

/// A revocation while files' bytes are on their way, some in flight and others waiting their
/// turn (found by replaying a revocation during a transfer): bob keeps his copies, as after any
/// revocation, and those whose bytes arrived download whole. Those whose bytes will never come
/// go to his trash (`sharing::ended`), once the transfers under way ended: not a 409 "retry
/// later" for good, as they were, nor a file left in his tree that answers 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_revocation_files_whose_bytes_never_came_say_so() {
    let Team { app, alice, bob, ta, tb, team, sid } = team_shared_through_a_slow_proxy().await;
    let mut files = Vec::new();
    for n in 0..6u64 {
        let data = bytes_of(70 + n, 16 * MB);
        upload(&alice, &ta, &team, &format!("big{n}.bin"), &data).await;
        files.push((format!("big{n}.bin"), data));
    }
    eventually(WAIT, "a large file's transfer to bob runs", || async {
        let c = content_of_bob(&app, &alice, &sid).await;
        c["running"] == json!(true) && c["bytes_pending"].as_u64().is_some_and(|b| b >= 16 * MB as u64)
    })
    .await;
    let ts = app.token(&alice, "io.cozy.sharings");
    let (s, v) = alice.call(Method::DELETE, &format!("/sharings/{sid}/recipients/1"), Some(&ts), None).await;
    assert!(s == 204 || s == 200, "revoke: {s} {v}");

    // Once the transfers under way end, each file bob keeps is whole in his tree, or in his
    // trash.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(WAIT);
    loop {
        let (mut settled, mut never) = (true, 0);
        seen.clear();
        let (s, trash) = bob.call(Method::GET, "/files/trash", Some(&tb), None).await;
        assert_eq!(s, 200, "{trash}");
        let trashed: Vec<&str> =
            trash["data"].as_array().unwrap().iter().filter_map(|d| d["attributes"]["name"].as_str()).collect();
        for (name, data) in &files {
            let path = format!("/Shared with me/Team/{name}");
            let resp = bob.req(Method::GET, &format!("/files/download?Path={}", enc(&path)), Some(&tb)).send().await;
            let resp = resp.unwrap();
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap();
            let said = String::from_utf8_lossy(&body).into_owned();
            let in_trash = trashed.contains(&name.as_str());
            if status == 200 && body.as_ref() == data.as_slice() && !in_trash {
                // Whole.
            } else if status == 404 && in_trash {
                never += 1;
            } else {
                settled = false;
            }
            let what = if status == 200 { "(bytes)" } else { said.as_str() };
            seen.push(format!("{name}: {status} {what}, in the trash: {in_trash}"));
        }
        if settled && never > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "bob's files after the revocation: {seen:#?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
