//! Replays of public bug reports about a sharing that ends (revoked, left) while files move,
//! against real servers over HTTP: each test names the report it replays.

mod common;

use common::bytes::{bytes_of, enc, mkdir, upload};
use common::flow::{answer_invitation, create_sharing, link, load, PASS};
use common::folder::{attrs_at, download, id_at, leave, trash_names, FILES, ROOT, SHARED, WAIT};
use common::{eventually, spawn_app, TestApp, TestInstance};
use reqwest::Method;
use serde_json::{json, Value};

/// The names of the files directly in directory `id`.
async fn children(i: &TestInstance, token: &str, id: &str) -> Vec<String> {
    let (s, v) = i.call(Method::GET, &format!("/files/{}?page%5Blimit%5D=1000", enc(id)), Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    let mut n: Vec<String> = v["included"]
        .as_array()
        .map(|a| a.iter().filter(|d| d["attributes"]["type"] == json!("file")).collect::<Vec<_>>())
        .unwrap_or_default()
        .iter()
        .map(|d| d["attributes"]["name"].as_str().unwrap().to_owned())
        .collect();
    n.sort();
    n
}

async fn revoke_all(app: &TestApp, owner: &TestInstance, sid: &str) {
    let t = app.token(owner, "io.cozy.sharings");
    let (s, v) = owner.call(Method::DELETE, &format!("/sharings/{sid}/recipients"), Some(&t), None).await;
    assert!(s == 200 || s == 204, "revoke: {s} {v}");
}

fn team_rule(team: &str) -> Value {
    json!({"title": "Team", "doctype": FILES, "values": [team], "add": "sync", "update": "sync", "remove": "sync"})
}

async fn share_with(app: &TestApp, alice: &TestInstance, ta: &str, team: &str, bob: &TestInstance) -> String {
    let to = json!([{"instance": format!("http://{}", bob.domain)}]);
    let sid = create_sharing(alice, ta, json!([team_rule(team)]), to, json!([])).await;
    answer_invitation(&link(app, alice, &sid, 1).await, bob, "accept").await;
    sid
}

/// nextcloud/desktop#1323 ("Files become zero size when sync dropped"), syncthing#2323 ("all
/// devices out of sync when folder removed before transfer completion": files of size 0 left
/// on the receivers): the owner revokes while the bytes of many files (small ones through the
/// in-memory `put_verified` path, and large streamed ones) are still on their way. Afterwards,
/// every file left in bob's copy must open whole with the owner's bytes (never 0 bytes, never
/// 409/404 for good), and the files that went to his trash are only ones whose bytes never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_while_bytes_are_in_flight_leaves_no_broken_file_in_the_members_copy() {
    let one = spawn_app().await;
    let two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let (ta, tb) = (one.token(&alice, FILES), two.token(&bob, FILES));
    let team = mkdir(&alice, &ta, ROOT, "Team").await;
    let mut data = std::collections::BTreeMap::new();
    for n in 0..40u64 {
        let len = if n % 10 == 9 { 3_000_000 } else { 150_000 + n as usize * 1000 };
        let name = format!("f{n:02}.bin");
        let bytes = bytes_of(n + 1, len);
        upload(&alice, &ta, &team, &name, &bytes).await;
        data.insert(name, bytes);
    }
    let sid = share_with(&one, &alice, &ta, &team, &bob).await;
    // Revoke as soon as bob has the folder's documents and a first file's bytes.
    eventually(WAIT, "a first file's bytes reach bob", || async {
        download(&bob, &tb, &format!("{SHARED}/f00.bin")).await.0 == 200
    })
    .await;
    revoke_all(&one, &alice, &sid).await;
    eventually(WAIT, "bob learns the revocation", || async { !load(&two, &bob, &sid).await.active }).await;
    let bob_team = id_at(&bob, &tb, SHARED).await.expect("bob keeps his copy");
    // Give the end its settlement (in-flight receptions end, candidates are judged again).
    let mut report = String::new();
    let mut settled = false;
    for _ in 0..30 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        report.clear();
        for name in children(&bob, &tb, &bob_team).await {
            let (s, body) = download(&bob, &tb, &format!("{SHARED}/{name}")).await;
            if s != 200 || Some(&body) != data.get(&name) {
                report.push_str(&format!("{name}: {s} ({} bytes); ", body.len()));
            }
        }
        if report.is_empty() {
            settled = true;
            break;
        }
    }
    assert!(settled, "files left in bob's copy that do not open whole: {report}");
    let kept = children(&bob, &tb, &bob_team).await;
    let trashed = trash_names(&bob, &tb).await;
    eprintln!("kept {} files, trashed {:?}", kept.len(), trashed);
    for name in &trashed {
        assert!(data.contains_key(name), "{name} in bob's trash");
        assert!(!kept.contains(name), "{name} both kept and trashed");
    }
    // Alice's folder is untouched.
    assert_eq!(children(&alice, &ta, &team).await.len(), 40);
    assert!(trash_names(&alice, &ta).await.is_empty());
}

/// linagora/cozy-stack#3709 and #2691: a sharing revoked, then the same folder shared again
/// with the same member, who works in it: the new sharing must carry edits both ways with no
/// conflict and no duplicate on the owner, and the old copy must stay out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharing_a_folder_again_after_a_revocation_carries_edits_without_duplicates() {
    let one = spawn_app().await;
    let two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let (ta, tb) = (one.token(&alice, FILES), two.token(&bob, FILES));
    let team = mkdir(&alice, &ta, ROOT, "Team").await;
    let a = bytes_of(1, 10_000);
    upload(&alice, &ta, &team, "a.txt", &a).await;
    let s1 = share_with(&one, &alice, &ta, &team, &bob).await;
    eventually(WAIT, "a.txt reaches bob", || async {
        download(&bob, &tb, &format!("{SHARED}/a.txt")).await == (200, a.clone())
    })
    .await;
    revoke_all(&one, &alice, &s1).await;
    eventually(WAIT, "bob learns the revocation", || async { !load(&two, &bob, &s1).await.active }).await;
    // Bob edits his old copy meanwhile: it is his, it must not reach alice.
    let old = id_at(&bob, &tb, &format!("{SHARED}/a.txt")).await.unwrap();
    let old_edit = bytes_of(2, 10_000);
    let resp = bob
        .req(Method::PUT, &format!("/files/{old}"), Some(&tb))
        .header("Content-MD5", common::bytes::md5_b64(&old_edit))
        .body(old_edit.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let s2 = share_with(&one, &alice, &ta, &team, &bob).await;
    assert_ne!(s1, s2);
    let again = "/Shared with me/Team (2)";
    eventually(WAIT, "the second sharing's a.txt reaches bob", || async {
        download(&bob, &tb, &format!("{again}/a.txt")).await == (200, a.clone())
    })
    .await;
    let new_root = id_at(&bob, &tb, again).await.unwrap();
    let new_a = id_at(&bob, &tb, &format!("{again}/a.txt")).await.unwrap();
    assert_ne!(new_a, old, "the new sharing reuses the old copy's id");
    // Bob works in the new sharing: a new file and an edit.
    let b = bytes_of(3, 5_000);
    upload(&bob, &tb, &new_root, "b.txt", &b).await;
    let edit = bytes_of(4, 12_000);
    let resp = bob
        .req(Method::PUT, &format!("/files/{new_a}"), Some(&tb))
        .header("Content-MD5", common::bytes::md5_b64(&edit))
        .body(edit.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    eventually(WAIT, "bob's file and edit reach alice", || async {
        download(&alice, &ta, "/Team/b.txt").await == (200, b.clone())
            && download(&alice, &ta, "/Team/a.txt").await == (200, edit.clone())
    })
    .await;
    // Alice's edit reaches bob's new copy only.
    let c = bytes_of(5, 4_000);
    upload(&alice, &ta, &team, "c.txt", &c).await;
    eventually(WAIT, "alice's c.txt reaches bob's new copy", || async {
        download(&bob, &tb, &format!("{again}/c.txt")).await == (200, c.clone())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(children(&alice, &ta, &team).await, ["a.txt", "b.txt", "c.txt"], "no conflict copy on alice");
    let old_root = id_at(&bob, &tb, SHARED).await.unwrap();
    assert_eq!(children(&bob, &tb, &old_root).await, ["a.txt"], "the old copy stays as it was");
    assert_eq!(download(&bob, &tb, &format!("{SHARED}/a.txt")).await, (200, old_edit));
    assert_eq!(children(&bob, &tb, &new_root).await, ["a.txt", "b.txt", "c.txt"]);
    assert!(trash_names(&alice, &ta).await.is_empty());
    assert!(trash_names(&bob, &tb).await.is_empty());
}

/// The same sharing ending twice on the owner (`sharing::ended`, one round per
/// end): bob leaves before the bytes of his big file came (alice's quota), and it goes to
/// alice's trash; alice then adds carol to the same sharing, which becomes active again; carol
/// leaves before the bytes of her big file came. Her file must go to alice's trash like bob's,
/// not stay in alice's folder as a file that answers 404 for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharing_that_ends_a_second_time_takes_back_the_second_rounds_files_too() {
    let one = spawn_app().await;
    let two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let carol = two.add_instance("carol", PASS);
    let (ta, tb, tc) = (one.token(&alice, FILES), two.token(&bob, FILES), two.token(&carol, FILES));
    hearth::files::set_instance_quota(one.instance(&alice.domain).store.as_ref(), Some(1_000_000)).await.unwrap();
    let team = mkdir(&alice, &ta, ROOT, "Team").await;
    let a = bytes_of(1, 10_000);
    upload(&alice, &ta, &team, "a.txt", &a).await;
    let sid = share_with(&one, &alice, &ta, &team, &bob).await;
    eventually(WAIT, "a.txt reaches bob", || async {
        download(&bob, &tb, &format!("{SHARED}/a.txt")).await == (200, a.clone())
    })
    .await;
    let bob_team = id_at(&bob, &tb, SHARED).await.unwrap();
    upload(&bob, &tb, &bob_team, "bob.bin", &bytes_of(8, 3_000_000)).await;
    eventually(WAIT, "bob.bin reaches alice without its bytes", || async {
        download(&alice, &ta, "/Team/bob.bin").await.0 == 409
    })
    .await;
    leave(&two, &bob, &sid).await;
    eventually(WAIT, "bob.bin goes to alice's trash", || async { trash_names(&alice, &ta).await == ["bob.bin"] }).await;

    let ts = one.token(&alice, "io.cozy.sharings");
    let add = json!({"data": {"type": "io.cozy.sharings", "id": sid,
        "relationships": {"recipients": {"data": [{"instance": format!("http://{}", carol.domain)}]}}}});
    let (s, v) = alice.call(Method::POST, &format!("/sharings/{sid}/recipients"), Some(&ts), Some(add)).await;
    assert!(s == 200 || s == 201, "adding carol: {s} {v}");
    let index = load(&one, &alice, &sid).await.members.len() - 1;
    answer_invitation(&link(&one, &alice, &sid, index).await, &carol, "accept").await;
    eventually(WAIT, "a.txt reaches carol", || async {
        download(&carol, &tc, &format!("{SHARED}/a.txt")).await == (200, a.clone())
    })
    .await;
    assert!(load(&one, &alice, &sid).await.active, "the sharing is active again");
    let carol_team = id_at(&carol, &tc, SHARED).await.unwrap();
    upload(&carol, &tc, &carol_team, "carol.bin", &bytes_of(9, 3_000_000)).await;
    eventually(WAIT, "carol.bin reaches alice without its bytes", || async {
        download(&alice, &ta, "/Team/carol.bin").await.0 == 409
    })
    .await;
    leave(&two, &carol, &sid).await;
    eventually(WAIT, "the sharing ends again on alice", || async { !load(&one, &alice, &sid).await.active }).await;
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    let (s, _) = download(&alice, &ta, "/Team/carol.bin").await;
    assert_eq!(
        (s, trash_names(&alice, &ta).await),
        (404, vec!["bob.bin".to_owned(), "carol.bin".to_owned()]),
        "the second end left carol.bin in alice's folder (its download: {s})"
    );
}

/// linagora/cozy-stack#2731 ("Fix echo on restore file deleted from a shared dir"): a member
/// trashes a file of the shared folder, the sharing is revoked, and the member restores the
/// file: it comes back whole in his copy, stays there (nothing moves it back to the trash,
/// a restart included), and nothing of it reaches the owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_trashed_before_a_revocation_and_restored_after_stays_restored() {
    let one = spawn_app().await;
    let mut two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let (ta, tb) = (one.token(&alice, FILES), two.token(&bob, FILES));
    let team = mkdir(&alice, &ta, ROOT, "Team").await;
    let a = bytes_of(1, 10_000);
    let k = bytes_of(2, 10_000);
    let a_id = upload(&alice, &ta, &team, "a.txt", &a).await;
    upload(&alice, &ta, &team, "keep.txt", &k).await;
    let sid = share_with(&one, &alice, &ta, &team, &bob).await;
    eventually(WAIT, "a.txt reaches bob", || async {
        download(&bob, &tb, &format!("{SHARED}/a.txt")).await == (200, a.clone())
            && download(&bob, &tb, &format!("{SHARED}/keep.txt")).await == (200, k.clone())
    })
    .await;
    let on_bob = id_at(&bob, &tb, &format!("{SHARED}/a.txt")).await.unwrap();
    let (s, v) = bob.call(Method::DELETE, &format!("/files/{on_bob}"), Some(&tb), None).await;
    assert_eq!(s, 200, "{v}");
    eventually(WAIT, "the removal reaches alice", || async { attrs_at(&alice, &ta, "/Team/a.txt").await.is_none() })
        .await;
    revoke_all(&one, &alice, &sid).await;
    eventually(WAIT, "bob learns the revocation", || async { !load(&two, &bob, &sid).await.active }).await;
    let (s, v) = bob.call(Method::GET, "/files/trash", Some(&tb), None).await;
    assert_eq!(s, 200, "{v}");
    let in_trash = v["data"].as_array().unwrap().iter().find(|d| d["attributes"]["name"] == json!("a.txt"));
    let in_trash = in_trash.unwrap_or_else(|| panic!("a.txt in bob's trash: {v}"))["id"].as_str().unwrap().to_owned();
    eprintln!("trashed a.txt on bob: {in_trash} (was {on_bob})");
    let (s, v) = bob.call(Method::POST, &format!("/files/trash/{in_trash}"), Some(&tb), None).await;
    assert_eq!(s, 200, "restore: {v}");
    assert_eq!(download(&bob, &tb, &format!("{SHARED}/a.txt")).await, (200, a.clone()));
    two.restart().await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(download(&bob, &tb, &format!("{SHARED}/a.txt")).await, (200, a.clone()), "restored a.txt moved");
    assert_eq!(download(&bob, &tb, &format!("{SHARED}/keep.txt")).await, (200, k));
    assert!(trash_names(&bob, &tb).await.is_empty());
    // Nothing reached alice: her folder holds keep.txt alone, and her a.txt is the dissociated
    // copy in her trash (a new id, README "Sharing folders"), not the original.
    assert_eq!(children(&alice, &ta, &team).await, ["keep.txt"]);
    assert_eq!(trash_names(&alice, &ta).await, ["a.txt"]);
    let (s, _) = alice.call(Method::GET, &format!("/files/{a_id}"), Some(&ta), None).await;
    assert_eq!(s, 404, "the original left alice's tree");
}
