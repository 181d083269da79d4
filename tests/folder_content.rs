//! The content of shared files (issue 13, items 2 and 5), over real HTTP between instances:
//! metadata arrives by the replicator, then each file's bytes on the content channel, verified,
//! visible only whole; the status counts what is pending per member.

mod common;

use common::bytes::{bytes_of, enc, md5_b64, mkdir, replace};
use common::flow::{answer_invitation, create_sharing, link, PASS};
use common::{eventually, spawn_app, spawn_app_with, TestApp, TestInstance};
use reqwest::Method;
use serde_json::{json, Value};

const ROOT: &str = "io.cozy.files.root-dir";
const WAIT: u64 = 60;

async fn upload(i: &TestInstance, token: &str, dir: &str, name: &str, data: &[u8]) -> String {
    let resp = i
        .req(Method::POST, &format!("/files/{}?Type=file&Name={}", enc(dir), enc(name)), Some(token))
        .header("Content-MD5", md5_b64(data))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    v["data"]["id"].as_str().unwrap_or_else(|| panic!("upload: {v}")).to_owned()
}

async fn download(i: &TestInstance, token: &str, path: &str) -> (u16, Vec<u8>) {
    let resp = i.req(Method::GET, &format!("/files/download?Path={}", enc(path)), Some(token)).send().await.unwrap();
    let status = resp.status().as_u16();
    let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(|s| s.trim_matches('"').to_owned());
    let body = resp.bytes().await.unwrap().to_vec();
    if status == 200 {
        assert_eq!(etag.as_deref(), Some(md5_b64(&body).as_str()), "served bytes are the file's, whole: {path}");
    } else {
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert!(v["error"].is_string(), "a JSON error while the content is pending: {status} {v}");
    }
    (status, body)
}

async fn status(app: &TestApp, i: &TestInstance, sid: &str) -> Value {
    let token = app.token(i, "io.cozy.sharings");
    let (s, v) = i.call(Method::GET, &format!("/sharings/{sid}/status"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    v["data"]["attributes"].clone()
}

struct Tree {
    /// (path under the shared folder, bytes)
    files: Vec<(String, Vec<u8>)>,
}

/// Alice's folder "Team": nested directories, `small` files spread over them, and one file of
/// `big` bytes.
async fn make_tree(alice: &TestInstance, ta: &str, small: usize, big: usize) -> (String, Tree) {
    let team = mkdir(alice, ta, ROOT, "Team").await;
    let a = mkdir(alice, ta, &team, "a").await;
    let ab = mkdir(alice, ta, &a, "b").await;
    let abc = mkdir(alice, ta, &ab, "c").await;
    let d = mkdir(alice, ta, &team, "d").await;
    let dirs = [(team.clone(), ""), (a, "a/"), (ab, "a/b/"), (abc, "a/b/c/"), (d, "d/")];
    let mut files = Vec::new();
    for n in 0..small {
        let (dir, prefix) = &dirs[n % dirs.len()];
        let data = bytes_of(n as u64, 1000 + n * 37);
        let name = format!("file-{n}.bin");
        upload(alice, ta, dir, &name, &data).await;
        files.push((format!("{prefix}{name}"), data));
    }
    let data = bytes_of(999, big);
    upload(alice, ta, &dirs[3].0, "big.bin", &data).await;
    files.push(("a/b/c/big.bin".into(), data));
    (team, Tree { files })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_tree_arrives_with_identical_content_on_every_member_and_edits_follow() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let carol = app.add_instance("carol", PASS);
    let (ta, tb, tc) =
        (app.token(&alice, "io.cozy.files"), app.token(&bob, "io.cozy.files"), app.token(&carol, "io.cozy.files"));
    let (team, tree) = make_tree(&alice, &ta, 50, 30 << 20).await;
    let rule = json!({"title": "Team", "doctype": "io.cozy.files", "values": [team], "add": "sync", "update": "sync", "remove": "sync"});
    let recipients =
        json!([{"instance": format!("http://{}", bob.domain)}, {"instance": format!("http://{}", carol.domain)}]);
    let sid = create_sharing(&alice, &ta, json!([rule]), recipients, json!([])).await;
    answer_invitation(&link(&app, &alice, &sid, 1).await, &bob, "accept").await;
    answer_invitation(&link(&app, &alice, &sid, 2).await, &carol, "accept").await;

    for (member, token) in [(&bob, &tb), (&carol, &tc)] {
        for (path, data) in &tree.files {
            let path = format!("/Shared with me/Team/{path}");
            eventually(WAIT, &format!("{path} arrives whole on {}", member.domain), || async {
                download(member, token, &path).await.0 == 200
            })
            .await;
            let (_, got) = download(member, token, &path).await;
            assert_eq!(got.len(), data.len(), "{path}");
            assert!(got == *data, "{path}: the bytes are alice's");
            let (s, v) =
                member.call(Method::GET, &format!("/files/metadata?Path={}", enc(&path)), Some(token), None).await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["data"]["attributes"]["md5sum"], json!(md5_b64(data)), "{path}");
        }
    }
    // Per member: nothing pending, and each file was sent exactly once.
    let total: u64 = tree.files.iter().map(|(_, d)| d.len() as u64).sum();
    eventually(WAIT, "alice's status shows nothing pending", || async {
        let st = status(&app, &alice, &sid).await;
        (1..=2).all(|m| st["members"][m]["content"]["files_pending"] == json!(0))
    })
    .await;
    let st = status(&app, &alice, &sid).await;
    for m in 1..=2 {
        let c = &st["members"][m]["content"];
        assert_eq!(c["bytes_pending"], json!(0), "{st}");
        assert_eq!(c["files_sent"], json!(tree.files.len()), "each file sent once: {st}");
        assert_eq!(c["bytes_sent"], json!(total), "{st}");
    }
    let st = status(&app, &bob, &sid).await;
    assert_eq!(st["content_missing"], json!({"files": 0, "bytes": 0}), "{st}");

    // Bob edits a file: the new bytes reach alice, and through her carol; the old bytes are
    // never served under the new metadata.
    let edited = bytes_of(4242, 5000);
    let bob_id = {
        let (s, v) = bob
            .call(
                Method::GET,
                &format!("/files/metadata?Path={}", enc("/Shared with me/Team/a/file-1.bin")),
                Some(&tb),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["data"]["id"].as_str().unwrap().to_owned()
    };
    replace(&bob, &tb, &bob_id, &edited).await;
    eventually(WAIT, "bob's edit reaches alice", || async {
        let (s, body) = download(&alice, &ta, "/Team/a/file-1.bin").await;
        s == 200 && body == edited
    })
    .await;
    eventually(WAIT, "bob's edit reaches carol through alice", || async {
        let (s, body) = download(&carol, &tc, "/Shared with me/Team/a/file-1.bin").await;
        s == 200 && body == edited
    })
    .await;
    // A new file from carol, the same way.
    let carol_d = {
        let (_, v) = carol
            .call(Method::GET, &format!("/files/metadata?Path={}", enc("/Shared with me/Team/d")), Some(&tc), None)
            .await;
        v["data"]["id"].as_str().unwrap().to_owned()
    };
    let from_carol = bytes_of(77, 200_000);
    upload(&carol, &tc, &carol_d, "from-carol.bin", &from_carol).await;
    eventually(WAIT, "carol's file reaches bob", || async {
        let (s, body) = download(&bob, &tb, "/Shared with me/Team/d/from-carol.bin").await;
        s == 200 && body == from_carol
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_whose_content_has_not_arrived_answers_a_json_409_and_the_channel_refuses_strangers() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let (ta, tb) = (app.token(&alice, "io.cozy.files"), app.token(&bob, "io.cozy.files"));
    let dir = mkdir(&alice, &ta, ROOT, "Docs").await;
    let data = bytes_of(5, 10_000);
    let file = upload(&alice, &ta, &dir, "x.bin", &data).await;
    let rule = json!({"title": "Docs", "doctype": "io.cozy.files", "values": [dir], "add": "sync", "update": "sync", "remove": "sync"});
    let sid =
        create_sharing(&alice, &ta, json!([rule]), json!([{"instance": format!("http://{}", bob.domain)}]), json!([]))
            .await;
    answer_invitation(&link(&app, &alice, &sid, 1).await, &bob, "accept").await;
    eventually(WAIT, "the content arrives", || async {
        download(&bob, &tb, "/Shared with me/Docs/x.bin").await.0 == 200
    })
    .await;
    // Remove bob's copy of the bytes behind the server's back: the document stays, the content
    // is pending again; the download answers 409 with a JSON error, never other bytes.
    let files = app.files.of(&app.instance(&bob.domain)).await.unwrap();
    let on_bob = common::flow::id_on(&app, &alice, &sid, 1, &file).await;
    let (vfs_id, _, _): (String, u64, String) = files.current_version(&on_bob).await.unwrap().unwrap();
    files.content.delete(&hearth::files::version_key(&vfs_id).unwrap()).await.unwrap();
    let (s, body) = download(&bob, &tb, "/Shared with me/Docs/x.bin").await;
    assert_eq!(s, 409);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "conflict", "{v}");
    let st = status(&app, &bob, &sid).await;
    assert_eq!(st["content_missing"], json!({"files": 1, "bytes": 10_000}), "{st}");
    // What bob answers a sender for each version offered, asked all at once: the bytes are
    // missing; another version of the file, or a file unknown here, is stale; while a
    // reception of the version is under way it is in progress, and once one ends, present.
    use hearth::files::received::ContentNeed::{InProgress, Missing, Present, Stale};
    let asked = |v: &str| {
        vec![
            (on_bob.clone(), v.to_owned()),
            (on_bob.clone(), "othervfs1".to_owned()),
            ("nofile".to_owned(), v.to_owned()),
        ]
    };
    assert_eq!(files.content_needs(&asked(&vfs_id)).await.unwrap(), [Missing, Stale, Stale]);
    assert!(!files.arriving(&vfs_id));
    let receiving = files.begin_received(&on_bob, &vfs_id).await.unwrap().expect("the bytes are not here");
    assert_eq!(files.content_needs(&asked(&vfs_id)).await.unwrap(), [InProgress, Stale, Stale]);
    // Its bytes are arriving, for a sender relaying them from here (`sync::content`).
    assert!(files.arriving(&vfs_id));
    receiving.abort().await;
    assert_eq!(files.content_needs(&asked(&vfs_id)).await.unwrap(), [Missing, Stale, Stale], "aborted");
    assert!(!files.arriving(&vfs_id));

    // The content routes want the member's token: a user's token, none, or a bad one get 401/403
    // and change nothing.
    let path = format!("/sharings/{sid}/io.cozy.files/{}/content?vfs_id={vfs_id}", enc(&on_bob));
    for token in [None, Some(tb.as_str()), Some("not-a-token")] {
        let resp = bob.req(Method::PUT, &path, token).body(data.clone()).send().await.unwrap();
        let s = resp.status().as_u16();
        assert!(s == 401 || s == 403, "{s}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"].is_string(), "{v}");
    }
    let resp = bob
        .req(Method::POST, &format!("/sharings/{sid}/io.cozy.files/_content_diff"), None)
        .json(&json!({on_bob.clone(): {"vfs_id": vfs_id}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(download(&bob, &tb, "/Shared with me/Docs/x.bin").await.0, 409, "still pending");

    // The member's own token asking about more files than a diff takes: 413, a JSON error, and
    // nothing changes.
    let s = common::flow::load(&app, &alice, &sid).await;
    let peer = common::flow::peer_token(&s, 1);
    let too_many: serde_json::Map<String, Value> = (0..=hearth::sharing::protocol::MAX_DIFF)
        .map(|n| (format!("{n:032x}"), json!({"vfs_id": "abc"})))
        .chain([(on_bob.clone(), json!({"vfs_id": vfs_id}))])
        .collect();
    let resp = bob
        .req(Method::POST, &format!("/sharings/{sid}/io.cozy.files/_content_diff"), Some(&peer))
        .json(&too_many)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"].is_string() && v["reason"].as_str().is_some_and(|r| r.contains("1000")), "{v}");

    // Wrong bytes from the member itself are refused (412), nothing kept.
    let mut wrong = data.clone();
    wrong[0] ^= 1;
    let resp = bob.req(Method::PUT, &path, Some(&peer)).body(wrong).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 412, "{:?}", resp.text().await);
    assert_eq!(download(&bob, &tb, "/Shared with me/Docs/x.bin").await.0, 409, "nothing kept");
    // The right bytes make it whole.
    let resp = bob.req(Method::PUT, &path, Some(&peer)).body(data.clone()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text().await);
    let (s, got) = download(&bob, &tb, "/Shared with me/Docs/x.bin").await;
    assert_eq!((s, got == data), (200, true));
    assert_eq!(files.content_needs(&asked(&vfs_id)).await.unwrap(), [Present, Stale, Stale]);
}

/// More files than one content diff request asks about (`sync::content` asks 500 at a time,
/// in batches of 1,000 feed rows): metadata in one replication batch, so the first round reads
/// them all in one batch, asked in two parts; every file arrives whole and is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_of_more_files_than_a_diff_request_asks_about_arrives_whole_each_sent_once() {
    let app = spawn_app_with(|c| c.replication.batch_size = 1000).await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let (ta, tb) = (app.token(&alice, "io.cozy.files"), app.token(&bob, "io.cozy.files"));
    let dir = mkdir(&alice, &ta, ROOT, "Many").await;
    let n = hearth::sharing::protocol::MAX_DIFF / 2 + 30;
    let mut files = Vec::with_capacity(n);
    for i in 0..n {
        let data = bytes_of(i as u64, 100 + i);
        upload(&alice, &ta, &dir, &format!("f{i}.bin"), &data).await;
        files.push((format!("f{i}.bin"), data));
    }
    let sid = common::folder::share((&app, &alice, &ta), &[(&app, &bob, &tb)], &dir).await;
    eventually(WAIT, "alice's status shows nothing pending for bob", || async {
        let st = status(&app, &alice, &sid).await;
        let m = &st["members"][1];
        m["content"]["files_pending"] == json!(0) && m["replication"]["pending"] == json!(0)
    })
    .await;
    let st = status(&app, &alice, &sid).await;
    assert_eq!(st["members"][1]["content"]["files_sent"], json!(n), "each file sent once: {st}");
    let st = status(&app, &bob, &sid).await;
    assert_eq!(st["content_missing"], json!({"files": 0, "bytes": 0}), "{st}");
    for (name, data) in &files {
        let (s, got) = download(&bob, &tb, &format!("/Shared with me/Team/{name}")).await;
        assert_eq!(s, 200, "{name}");
        assert!(got == *data, "{name}: the bytes are alice's");
    }
}
