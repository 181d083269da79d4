//! Sharing folders (issue 13), over real HTTP between instances: a rule on `io.cozy.files`
//! naming a directory shares its whole subtree, on every member under ids of its own with
//! `dir_id`s that follow, the shared root placed in the recipient's "Shared with me". Moves of
//! whole subtrees and the conflict rules are in `folder_conflicts.rs`.

mod common;

use base64::Engine;
use common::flow::{answer_invitation, create_sharing, id_on, link, load, winner, PASS};
use common::{eventually, spawn_app, TestApp, TestInstance};
use md5::Digest;
use reqwest::Method;
use serde_json::{json, Value};

const ROOT: &str = "io.cozy.files.root-dir";
const WAIT: u64 = 20;

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn upload(i: &TestInstance, token: &str, dir: &str, name: &str, data: &[u8]) -> String {
    let resp = i
        .req(Method::POST, &format!("/files/{}?Type=file&Name={}", enc(dir), enc(name)), Some(token))
        .header("Content-MD5", base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data)))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    v["data"]["id"].as_str().unwrap_or_else(|| panic!("upload: {v}")).to_owned()
}

async fn mkdir(i: &TestInstance, token: &str, dir: &str, name: &str) -> String {
    let resp = i
        .req(Method::POST, &format!("/files/{}?Type=directory&Name={}", enc(dir), enc(name)), Some(token))
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    v["data"]["id"].as_str().unwrap_or_else(|| panic!("mkdir: {v}")).to_owned()
}

/// `GET /files/metadata?Path=`: the status and the item's id.
async fn at_path(i: &TestInstance, token: &str, path: &str) -> (u16, Option<String>) {
    let (s, v) = i.call(Method::GET, &format!("/files/metadata?Path={}", enc(path)), Some(token), None).await;
    (s, v["data"]["id"].as_str().map(str::to_owned))
}

/// Alice shares `rule` with bob, who accepts; answers the sharing's id.
async fn share_files(app: &TestApp, alice: &TestInstance, bob: &TestInstance, rule: Value) -> String {
    let token = app.token(alice, "io.cozy.files");
    let recipients = json!([{"instance": format!("http://{}", bob.domain)}]);
    let id = create_sharing(alice, &token, json!([rule]), recipients, json!([])).await;
    answer_invitation(&link(app, alice, &id, 1).await, bob, "accept").await;
    id
}

fn files_rule(title: &str, value: &str) -> Value {
    json!({"title": title, "doctype": "io.cozy.files", "values": [value], "add": "sync", "update": "sync", "remove": "sync"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_directory_arrives_whole_in_shared_with_me_with_its_tree_consistent() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let (ta, tb) = (app.token(&alice, "io.cozy.files"), app.token(&bob, "io.cozy.files"));
    let projects = mkdir(&alice, &ta, ROOT, "Projects").await;
    let sub = mkdir(&alice, &ta, &projects, "sub").await;
    let deep = mkdir(&alice, &ta, &sub, "deep").await;
    let a = upload(&alice, &ta, &deep, "a.txt", b"alpha").await;
    let outside = upload(&alice, &ta, ROOT, "outside.txt", b"not shared").await;
    let sid = share_files(&app, &alice, &bob, files_rule("Team projects", &projects)).await;

    let path_a = "/Shared with me/Team projects/sub/deep/a.txt";
    eventually(WAIT, "the subtree reaches bob", || async { at_path(&bob, &tb, path_a).await.0 == 200 }).await;
    // Every member's ids, dir_ids included, go through the same transform.
    let on_bob = |id: String| {
        let (app, alice, sid) = (&app, &alice, &sid);
        async move { id_on(app, alice, sid, 1, &id).await }
    };
    assert_eq!(at_path(&bob, &tb, path_a).await.1, Some(on_bob(a.clone()).await));
    let (_, bob_a) = winner(&app, &bob, "io.cozy.files", &on_bob(a.clone()).await).await.unwrap();
    assert_eq!(bob_a["dir_id"], json!(on_bob(deep.clone()).await));
    let (_, bob_sub) = winner(&app, &bob, "io.cozy.files", &on_bob(sub.clone()).await).await.unwrap();
    assert_eq!(bob_sub["dir_id"], json!(on_bob(projects.clone()).await));
    // Content travels apart, on the content channel (tests/folder_content.rs): it follows.
    let download = format!("/files/download/{}", enc(&on_bob(a.clone()).await));
    eventually(WAIT, "the content follows", || async {
        let resp = bob.req(Method::GET, &download, Some(&tb)).send().await.unwrap();
        resp.status().as_u16() == 200 && resp.bytes().await.unwrap().as_ref() == b"alpha"
    })
    .await;
    let (_, bob_root) = winner(&app, &bob, "io.cozy.files", &on_bob(projects.clone()).await).await.unwrap();
    assert_eq!(bob_root["dir_id"], json!("io.cozy.files.shared-with-me-dir"));
    assert_eq!(bob_root["name"], json!("Team projects"));
    assert!(winner(&app, &bob, "io.cozy.files", &on_bob(outside).await).await.is_none(), "outside the folder");
    // Alice keeps her own placement of the shared root.
    let (_, alice_root) = winner(&app, &alice, "io.cozy.files", &projects).await.unwrap();
    assert_eq!((alice_root["name"].clone(), alice_root["dir_id"].clone()), (json!("Projects"), json!(ROOT)));

    // Added later, at any depth: it joins.
    let later_dir = mkdir(&alice, &ta, &deep, "later").await;
    upload(&alice, &ta, &later_dir, "b.txt", b"beta").await;
    let path_b = "/Shared with me/Team projects/sub/deep/later/b.txt";
    eventually(WAIT, "a later file reaches bob", || async { at_path(&bob, &tb, path_b).await.0 == 200 }).await;

    // Bob adds a file in the shared folder: it reaches alice's tree where it belongs.
    let bob_sub = at_path(&bob, &tb, "/Shared with me/Team projects/sub").await.1.unwrap();
    upload(&bob, &tb, &bob_sub, "from-bob.txt", b"hi alice").await;
    eventually(WAIT, "bob's file reaches alice", || async {
        at_path(&alice, &ta, "/Projects/sub/from-bob.txt").await.0 == 200
    })
    .await;
    let (_, root_now) = winner(&app, &alice, "io.cozy.files", &projects).await.unwrap();
    assert_eq!(root_now["dir_id"], json!(ROOT), "alice's root stays in place");

    // Moved out: it leaves the sharing, bob keeps his copy; later changes to it stay on alice.
    let patch = |attrs: Value| json!({"data": {"type": "io.cozy.files", "attributes": attrs}});
    let (s, v) =
        alice.call(Method::PATCH, &format!("/files/{a}"), Some(&ta), Some(patch(json!({"dir_id": ROOT})))).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) =
        alice.call(Method::PATCH, &format!("/files/{a}"), Some(&ta), Some(patch(json!({"name": "renamed.txt"})))).await;
    assert_eq!(s, 200, "{v}");
    upload(&alice, &ta, &sub, "c.txt", b"gamma").await;
    let path_c = "/Shared with me/Team projects/sub/c.txt";
    eventually(WAIT, "a file written after the move reaches bob", || async {
        at_path(&bob, &tb, path_c).await.0 == 200
    })
    .await;
    // It left bob's shared tree; bob keeps a dissociated copy in his trash, as it was when it
    // left (what alice did after the move is not sent).
    eventually(WAIT, "the file moved out leaves bob's tree", || async { at_path(&bob, &tb, path_a).await.0 == 404 })
        .await;
    assert!(winner(&app, &bob, "io.cozy.files", &on_bob(a).await).await.is_none());
    let (s, v) = bob.call(Method::GET, "/files/trash", Some(&tb), None).await;
    assert_eq!(s, 200, "{v}");
    let names: Vec<&str> =
        v["data"].as_array().unwrap().iter().filter_map(|c| c["attributes"]["name"].as_str()).collect();
    assert_eq!(names, ["a.txt"], "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_naming_a_file_shares_that_file_alone() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let (ta, tb) = (app.token(&alice, "io.cozy.files"), app.token(&bob, "io.cozy.files"));
    let dir = mkdir(&alice, &ta, ROOT, "Docs").await;
    let f = upload(&alice, &ta, &dir, "report.pdf", b"%PDF").await;
    upload(&alice, &ta, &dir, "sibling.txt", b"not shared").await;
    let sid = share_files(&app, &alice, &bob, files_rule("report.pdf", &f)).await;
    let path = "/Shared with me/report.pdf";
    eventually(WAIT, "the file reaches bob", || async { at_path(&bob, &tb, path).await.0 == 200 }).await;
    assert_eq!(at_path(&bob, &tb, path).await.1, Some(id_on(&app, &alice, &sid, 1, &f).await));
    let (s, v) = bob.call(Method::GET, "/files/io.cozy.files.shared-with-me-dir", Some(&tb), None).await;
    assert_eq!(s, 200, "{v}");
    let names: Vec<&str> =
        v["included"].as_array().unwrap().iter().filter_map(|c| c["attributes"]["name"].as_str()).collect();
    assert_eq!(names, ["report.pdf"], "{v}");
    assert_eq!(load(&app, &alice, &sid).await.members[1].status, hearth::sharing::MemberStatus::Ready);
}

/// The root holds the trash and "Shared with me": a rule on it, on the trash or on "Shared with
/// me" is a 400 that creates nothing (sharing the root would send what the owner threw away).
#[tokio::test]
async fn the_root_the_trash_and_shared_with_me_cannot_be_shared() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let token = app.token(&alice, "io.cozy.files");
    for dir in [ROOT, "io.cozy.files.trash-dir", "io.cozy.files.shared-with-me-dir"] {
        let body = json!({"data": {"type": "io.cozy.sharings",
            "attributes": {"description": "everything", "rules": [files_rule("All", dir)]},
            "relationships": {"recipients": {"data": [{"instance": "http://bob.localhost:1"}]}}}});
        let (status, v) = alice.call(Method::POST, "/sharings/", Some(&token), Some(body)).await;
        assert_eq!(status, 400, "{dir}: {v}");
        assert!(v["reason"].as_str().unwrap().contains("cannot be shared"), "{v}");
    }
    let (status, v) = alice.call(Method::GET, "/sharings/", Some(&token), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(0), "nothing was created: {v}");
}
