//! A shared folder's root going to the trash ends the sharing there (Cozy, cozy-stack PR #2487
//! and #3709): on a recipient, that recipient leaves (its copy is its own, nothing of it flows
//! back to the owner); on the owner, the sharing is revoked for everyone (members keep their
//! files). Two instances on two servers, real HTTP between them.

mod common;

use base64::Engine;
use common::bytes::{md5_b64, mkdir, replace};
use common::flow::{answer_invitation, create_sharing, link, load, winner, PASS};
use common::folder::{
    attrs_at, download, id_at, objects_after_sweep, share, team, trash_names, FILES, ROOT, SHARED, WAIT,
};
use common::{eventually, spawn_app, TestApp, TestInstance};
use hearth::sharing::MemberStatus;
use hearth::store::{Body, DocId, DocWrite, GetOptions};
use md5::Digest;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashSet;

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn upload(i: &TestInstance, token: &str, dir: &str, name: &str, data: &[u8]) -> String {
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data));
    let resp = i
        .req(Method::POST, &format!("/files/{}?Type=file&Name={}", enc(dir), enc(name)), Some(token))
        .header("Content-MD5", md5)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    v["data"]["id"].as_str().unwrap_or_else(|| panic!("upload: {v}")).to_owned()
}

async fn trash(i: &TestInstance, token: &str, id: &str) {
    let (s, v) = i.call(Method::DELETE, &format!("/files/{}", enc(id)), Some(token), None).await;
    assert_eq!(s, 200, "trash: {v}");
}

/// Alice (on `one`) shares `/Projects` holding `a.txt` with bob (on `two`), who accepts.
struct World {
    one: TestApp,
    two: TestApp,
    alice: TestInstance,
    bob: TestInstance,
    ta: String,
    tb: String,
    sid: String,
    projects: String,
    key: Vec<u8>,
}

impl World {
    async fn new() -> World {
        let one = spawn_app().await;
        let two = spawn_app().await;
        let alice = one.add_instance("alice", PASS);
        let bob = two.add_instance("bob", PASS);
        let (ta, tb) = (one.token(&alice, FILES), two.token(&bob, FILES));
        let projects = mkdir(&alice, &ta, ROOT, "Projects").await;
        upload(&alice, &ta, &projects, "a.txt", b"alpha").await;
        let rule = json!({"title": "Team", "doctype": FILES, "values": [projects], "add": "sync", "update": "sync", "remove": "sync"});
        let rw = json!([{"instance": format!("http://{}", bob.domain)}]);
        let sid = create_sharing(&alice, &ta, json!([rule]), rw, json!([])).await;
        answer_invitation(&link(&one, &alice, &sid, 1).await, &bob, "accept").await;
        let s = load(&one, &alice, &sid).await;
        let key = hearth::sharing::xor::parse_key(s.members[1].xor_key.as_deref().unwrap()).unwrap();
        let w = World { one, two, alice, bob, ta, tb, sid, projects, key };
        // Its bytes too: a file whose bytes never came goes to the trash when the sharing ends.
        eventually(WAIT, "a.txt reaches bob, bytes and all", || async {
            download(&w.bob, &w.tb, &format!("{SHARED}/a.txt")).await == (200, b"alpha".to_vec())
        })
        .await;
        w
    }

    fn on_bob(&self, id: &str) -> String {
        hearth::sharing::xor::xor_id(id, &self.key)
    }

    /// Bob's membership has ended on both sides (he left, alice knows).
    async fn bob_left(&self) -> bool {
        let on_bob = load(&self.two, &self.bob, &self.sid).await;
        let on_alice = load(&self.one, &self.alice, &self.sid).await;
        !on_bob.active
            && on_bob.members[1].status == MemberStatus::Revoked
            && on_alice.members[1].status == MemberStatus::Revoked
    }

    /// Alice's `/Projects` is where it was, with the id it had, holding `names`.
    async fn alice_intact(&self, names: &[&str]) {
        let p = attrs_at(&self.alice, &self.ta, "/Projects").await.expect("alice's /Projects is there");
        assert_eq!(p["id"], json!(self.projects), "{p}");
        assert_eq!(p["attributes"]["dir_id"], json!(ROOT), "{p}");
        assert_ne!(p["attributes"]["trashed"], json!(true), "{p}");
        for name in names {
            assert!(id_at(&self.alice, &self.ta, &format!("/Projects/{name}")).await.is_some(), "{name}");
        }
        let (s, v) = self.alice.call(Method::GET, "/files/trash", Some(&self.ta), None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["data"].as_array().map_or(0, Vec::len), 0, "alice's trash stays empty: {v}");
    }

    /// After bob's membership ended: alice's later file does not reach him, and bob emptying
    /// his trash leaves alice's folder alone.
    async fn nothing_flows_after_bob_left(&self) {
        let later = upload(&self.alice, &self.ta, &self.projects, "later.txt", b"later").await;
        let (s, v) = self.bob.call(Method::DELETE, "/files/trash", Some(&self.tb), None).await;
        assert!(s == 200 || s == 204, "empty trash: {s} {v}");
        // Give anything that would wrongly flow a chance to (a negative cannot be waited on).
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(winner(&self.two, &self.bob, FILES, &self.on_bob(&later)).await.is_none(), "later.txt reached bob");
        self.alice_intact(&["a.txt", "later.txt"]).await;
        assert!(self.bob_left().await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_trashing_the_shared_folder_leaves_the_sharing_and_the_owners_folder_stays() {
    let w = World::new().await;
    let root = id_at(&w.bob, &w.tb, SHARED).await.unwrap();
    assert_eq!(root, w.on_bob(&w.projects));
    trash(&w.bob, &w.tb, &root).await;
    assert!(!load(&w.two, &w.bob, &w.sid).await.active, "bob left before his trash answered");
    eventually(WAIT, "bob's membership ends on both sides", || w.bob_left()).await;
    w.alice_intact(&["a.txt"]).await;
    w.nothing_flows_after_bob_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_trashing_a_directory_holding_the_shared_folder_leaves_the_sharing() {
    let w = World::new().await;
    let root = id_at(&w.bob, &w.tb, SHARED).await.unwrap();
    let mine = mkdir(&w.bob, &w.tb, ROOT, "Mine").await;
    let body = json!({"data": {"type": FILES, "attributes": {"dir_id": mine}}});
    let (s, v) = w.bob.call(Method::PATCH, &format!("/files/{}", enc(&root)), Some(&w.tb), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    assert!(load(&w.two, &w.bob, &w.sid).await.active, "moving the root alone ends nothing");
    trash(&w.bob, &w.tb, &mine).await;
    eventually(WAIT, "bob's membership ends on both sides", || w.bob_left()).await;
    w.alice_intact(&["a.txt"]).await;
    w.nothing_flows_after_bob_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_trashing_the_shared_folder_revokes_the_sharing_and_members_keep_their_files() {
    let w = World::new().await;
    trash(&w.alice, &w.ta, &w.projects).await;
    let on_alice = load(&w.one, &w.alice, &w.sid).await;
    assert!(!on_alice.active && on_alice.revoked_at.is_some(), "revoked before the trash answered");
    assert_eq!(on_alice.members[1].status, MemberStatus::Revoked);
    eventually(WAIT, "bob learns the revocation", || async {
        let s = load(&w.two, &w.bob, &w.sid).await;
        !s.active && s.revoked_at.is_some()
    })
    .await;
    // Bob keeps his copy, where it was, and what he adds stays his.
    let shared = attrs_at(&w.bob, &w.tb, SHARED).await.expect("bob keeps the folder");
    assert_ne!(shared["attributes"]["trashed"], json!(true), "{shared}");
    assert!(id_at(&w.bob, &w.tb, &format!("{SHARED}/a.txt")).await.is_some());
    let root = shared["id"].as_str().unwrap().to_owned();
    let mine = upload(&w.bob, &w.tb, &root, "mine.txt", b"mine").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(winner(&w.one, &w.alice, FILES, &w.on_bob(&mine)).await.is_none(), "bob's file reached alice");
    assert!(id_at(&w.bob, &w.tb, &format!("{SHARED}/a.txt")).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trashing_the_root_or_the_trash_is_refused_and_ends_no_sharing() {
    let w = World::new().await;
    for id in [ROOT, "io.cozy.files.trash-dir"] {
        let (s, v) = w.alice.call(Method::DELETE, &format!("/files/{id}"), Some(&w.ta), None).await;
        assert_eq!(s, 403, "{v}");
    }
    let on_alice = load(&w.one, &w.alice, &w.sid).await;
    assert!(on_alice.active && on_alice.revoked_at.is_none(), "the sharing goes on");
    assert_eq!(on_alice.members[1].status, MemberStatus::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_a_shared_folder_the_owner_trashed_does_not_share_it_again() {
    let w = World::new().await;
    trash(&w.alice, &w.ta, &w.projects).await;
    eventually(WAIT, "bob learns the revocation", || async {
        let s = load(&w.two, &w.bob, &w.sid).await;
        !s.active && s.revoked_at.is_some()
    })
    .await;
    let (s, v) = w.alice.call(Method::POST, &format!("/files/trash/{}", enc(&w.projects)), Some(&w.ta), None).await;
    assert_eq!(s, 200, "restore: {v}");
    let p = attrs_at(&w.alice, &w.ta, "/Projects").await.expect("restored where it was");
    assert_eq!(p["id"], json!(w.projects), "{p}");
    // The sharing stays ended on both sides (as in Cozy): what alice adds stays hers.
    let on_alice = load(&w.one, &w.alice, &w.sid).await;
    assert!(!on_alice.active && on_alice.revoked_at.is_some());
    let later = upload(&w.alice, &w.ta, &w.projects, "later.txt", b"later").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(winner(&w.two, &w.bob, FILES, &w.on_bob(&later)).await.is_none(), "later.txt reached bob");
    let on_bob = load(&w.two, &w.bob, &w.sid).await;
    assert!(!on_bob.active && on_bob.revoked_at.is_some());
    assert!(id_at(&w.bob, &w.tb, &format!("{SHARED}/a.txt")).await.is_some(), "bob keeps his copy");
}

/// Alice shares `/Other` (holding `b.txt`) with bob under the title "Second"; bob accepts.
async fn second_sharing(w: &World) -> String {
    let other = mkdir(&w.alice, &w.ta, ROOT, "Other").await;
    upload(&w.alice, &w.ta, &other, "b.txt", b"bravo").await;
    let rule = json!({"title": "Second", "doctype": FILES, "values": [other], "add": "sync", "update": "sync", "remove": "sync"});
    let rw = json!([{"instance": format!("http://{}", w.bob.domain)}]);
    let sid = create_sharing(&w.alice, &w.ta, json!([rule]), rw, json!([])).await;
    answer_invitation(&link(&w.one, &w.alice, &sid, 1).await, &w.bob, "accept").await;
    sid
}

/// The second sharing's root is at `at` on bob, out of the trash, with its content, and
/// "Shared with me" is back at the root; what it held when trashed stays in the trash.
async fn second_lands_out_of_the_trash(w: &World, at: &str) {
    eventually(WAIT, "b.txt reaches bob", || async { id_at(&w.bob, &w.tb, &format!("{at}/b.txt")).await.is_some() })
        .await;
    let root = attrs_at(&w.bob, &w.tb, at).await.expect("the second root is there");
    assert_ne!(root["attributes"]["trashed"], json!(true), "{root}");
    assert_eq!(root["attributes"]["path"], json!(at), "{root}");
    let swm = attrs_at(&w.bob, &w.tb, "/Shared with me").await.expect("Shared with me is back");
    assert_eq!(swm["id"], json!("io.cozy.files.shared-with-me-dir"), "{swm}");
    assert_eq!(swm["attributes"]["dir_id"], json!(ROOT), "{swm}");
    assert_ne!(swm["attributes"]["trashed"], json!(true), "{swm}");
    assert!(id_at(&w.bob, &w.tb, SHARED).await.is_none(), "the trashed Team stays in the trash");
    let path = format!("/files/download?Path={}", enc(&format!("{at}/b.txt")));
    eventually(WAIT, "b.txt's content reaches bob", || async {
        let resp = w.bob.req(Method::GET, &path, Some(&w.tb)).send().await.unwrap();
        resp.status() == 200 && resp.bytes().await.unwrap().as_ref() == b"bravo"
    })
    .await;
    // Emptying the trash leaves the second sharing's files alone.
    let (s, v) = w.bob.call(Method::DELETE, "/files/trash", Some(&w.tb), None).await;
    assert!(s == 200 || s == 204, "empty trash: {s} {v}");
    assert!(id_at(&w.bob, &w.tb, &format!("{at}/b.txt")).await.is_some(), "emptying the trash destroyed it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharing_accepted_after_shared_with_me_was_trashed_lands_outside_the_trash() {
    let w = World::new().await;
    trash(&w.bob, &w.tb, "io.cozy.files.shared-with-me-dir").await;
    eventually(WAIT, "bob's membership ends on both sides", || w.bob_left()).await;
    let sid = second_sharing(&w).await;
    second_lands_out_of_the_trash(&w, "/Shared with me/Second").await;
    assert!(load(&w.two, &w.bob, &sid).await.active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharing_accepted_after_a_directory_holding_shared_with_me_was_trashed_lands_outside_the_trash() {
    let w = World::new().await;
    // Bob moves "Shared with me" into his own directory, trashes that, then makes a directory
    // named "Shared with me" at the root: the one brought back takes the next free name.
    let mine = mkdir(&w.bob, &w.tb, ROOT, "Mine").await;
    let body = json!({"data": {"type": FILES, "attributes": {"dir_id": mine}}});
    let (s, v) = w.bob.call(Method::PATCH, "/files/io.cozy.files.shared-with-me-dir", Some(&w.tb), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    trash(&w.bob, &w.tb, &mine).await;
    eventually(WAIT, "bob's membership ends on both sides", || w.bob_left()).await;
    mkdir(&w.bob, &w.tb, ROOT, "Shared with me").await;
    second_sharing(&w).await;
    eventually(WAIT, "b.txt reaches bob", || async {
        id_at(&w.bob, &w.tb, "/Shared with me (2)/Second/b.txt").await.is_some()
    })
    .await;
    let swm = attrs_at(&w.bob, &w.tb, "/Shared with me (2)").await.expect("Shared with me is back");
    assert_eq!(swm["id"], json!("io.cozy.files.shared-with-me-dir"), "{swm}");
    assert_ne!(swm["attributes"]["trashed"], json!(true), "{swm}");
    let root = attrs_at(&w.bob, &w.tb, "/Shared with me (2)/Second").await.unwrap();
    assert_ne!(root["attributes"]["trashed"], json!(true), "{root}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharing_accepted_after_shared_with_me_was_destroyed_gets_it_made_again() {
    let w = World::new().await;
    trash(&w.bob, &w.tb, "io.cozy.files.shared-with-me-dir").await;
    eventually(WAIT, "bob's membership ends on both sides", || w.bob_left()).await;
    let (s, v) = w.bob.call(Method::DELETE, "/files/trash", Some(&w.tb), None).await;
    assert!(s == 200 || s == 204, "empty trash: {s} {v}");
    assert!(attrs_at(&w.bob, &w.tb, "/Shared with me").await.is_none());
    second_sharing(&w).await;
    second_lands_out_of_the_trash(&w, "/Shared with me/Second").await;
}

/// Bob holds two copies of alice's `a.txt` (the same folder shared twice): both name the same
/// content version. Destroying one copy (leaving the first sharing, emptying the trash) keeps
/// the other's bytes; they used to be deleted with the copy, and the other answered 409 for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroying_one_of_two_copies_of_a_file_keeps_the_bytes_of_the_other() {
    let w = World::new().await;
    let rule = json!({"title": "Again", "doctype": FILES, "values": [w.projects], "add": "sync", "update": "sync", "remove": "sync"});
    let rw = json!([{"instance": format!("http://{}", w.bob.domain)}]);
    let again = create_sharing(&w.alice, &w.ta, json!([rule]), rw, json!([])).await;
    answer_invitation(&link(&w.one, &w.alice, &again, 1).await, &w.bob, "accept").await;
    let bytes_at = |path: &'static str| {
        let w = &w;
        async move {
            let resp = w.bob.req(Method::GET, &format!("/files/download?Path={}", enc(path)), Some(&w.tb)).send().await;
            let resp = resp.unwrap();
            (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
        }
    };
    for path in ["/Shared with me/Team/a.txt", "/Shared with me/Again/a.txt"] {
        eventually(WAIT, path, || async { bytes_at(path).await == (200, b"alpha".to_vec()) }).await;
    }
    trash(&w.bob, &w.tb, &id_at(&w.bob, &w.tb, SHARED).await.unwrap()).await;
    let (s, v) = w.bob.call(Method::DELETE, "/files/trash", Some(&w.tb), None).await;
    assert!(s == 200 || s == 204, "empty trash: {s} {v}");
    assert!(id_at(&w.bob, &w.tb, SHARED).await.is_none(), "the first copy is destroyed");
    assert_eq!(bytes_at("/Shared with me/Again/a.txt").await, (200, b"alpha".to_vec()), "the other copy's bytes");
    assert!(load(&w.two, &w.bob, &again).await.active);
}

/// Two sharings with the same title, and a folder of bob's own of that name first: each lands
/// in "Shared with me" under a name of its own (`Team (2)`, `Team (3)`, as Cozy names them),
/// reachable by path, and keeps it as the owner's later changes arrive (found replaying
/// several sharings accepted by one recipient: three folders named `shared` side by side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharings_with_the_same_title_land_under_names_of_their_own() {
    let w = World::new().await;
    // Bob's own folder of the name the next sharing's title gives.
    let (s, v) = w
        .bob
        .call(Method::POST, "/files/io.cozy.files.shared-with-me-dir?Type=directory&Name=Team%20(2)", Some(&w.tb), None)
        .await;
    assert_eq!(s, 201, "{v}");
    let other = mkdir(&w.alice, &w.ta, ROOT, "Other").await;
    upload(&w.alice, &w.ta, &other, "b.txt", b"bravo").await;
    let rule = json!({"title": "Team", "doctype": FILES, "values": [other], "add": "sync", "update": "sync", "remove": "sync"});
    let rw = json!([{"instance": format!("http://{}", w.bob.domain)}]);
    let sid = create_sharing(&w.alice, &w.ta, json!([rule]), rw, json!([])).await;
    answer_invitation(&link(&w.one, &w.alice, &sid, 1).await, &w.bob, "accept").await;
    eventually(WAIT, "b.txt reaches bob under Team (3)", || async {
        id_at(&w.bob, &w.tb, "/Shared with me/Team (3)/b.txt").await.is_some()
    })
    .await;
    let root = attrs_at(&w.bob, &w.tb, "/Shared with me/Team (3)").await.unwrap();
    assert_eq!(root["attributes"]["path"], json!("/Shared with me/Team (3)"), "{root}");
    assert!(id_at(&w.bob, &w.tb, &format!("{SHARED}/a.txt")).await.is_some(), "the first sharing's Team is intact");
    // The owner renames her folder: bob's copy keeps its name here.
    let (s, v) = w
        .alice
        .call(
            Method::PATCH,
            &format!("/files/{other}"),
            Some(&w.ta),
            Some(json!({"data": {"type": FILES, "attributes": {"name": "Renamed"}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    upload(&w.alice, &w.ta, &other, "c.txt", b"charlie").await;
    eventually(WAIT, "c.txt reaches bob under Team (3)", || async {
        id_at(&w.bob, &w.tb, "/Shared with me/Team (3)/c.txt").await.is_some()
    })
    .await;
    assert_eq!(shared_with_me(&w).await, ["Team", "Team (2)", "Team (3)"]);
}

/// The names in bob's "Shared with me", sorted.
async fn shared_with_me(w: &World) -> Vec<String> {
    let (s, v) = w.bob.call(Method::GET, "/files/io.cozy.files.shared-with-me-dir", Some(&w.tb), None).await;
    assert_eq!(s, 200, "{v}");
    let mut names: Vec<String> = v["included"]
        .as_array()
        .or(v["data"]["relationships"]["contents"]["data"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|c| c["attributes"]["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Several sharings of one title accepted at once: their roots, received together, each take a
/// name of their own in "Shared with me" (each saw the title free and took it, when naming and
/// writing a root were apart).
#[actix_web::test]
async fn sharings_of_one_title_accepted_at_once_take_names_of_their_own() {
    let w = World::new().await;
    let rw = json!([{"instance": format!("http://{}", w.bob.domain)}]);
    let mut links = Vec::new();
    for n in 0..5 {
        let dir = mkdir(&w.alice, &w.ta, ROOT, &format!("Crew {n}")).await;
        upload(&w.alice, &w.ta, &dir, &format!("f{n}.txt"), format!("file {n}").as_bytes()).await;
        let rule = json!({"title": "Crew", "doctype": FILES, "values": [dir], "add": "sync", "update": "sync", "remove": "sync"});
        let sid = create_sharing(&w.alice, &w.ta, json!([rule]), rw.clone(), json!([])).await;
        links.push(link(&w.one, &w.alice, &sid, 1).await);
    }
    futures_util::future::join_all(links.iter().map(|l| answer_invitation(l, &w.bob, "accept"))).await;
    let names = || async { shared_with_me(&w).await.into_iter().filter(|n| n.starts_with("Crew")).collect::<Vec<_>>() };
    let roots = ["Crew", "Crew (2)", "Crew (3)", "Crew (4)", "Crew (5)"];
    eventually(WAIT, "five Crew roots reach bob", || async { names().await.len() >= 5 }).await;
    assert_eq!(names().await, roots);
    // Each file in one of them, reachable by its path.
    let w = &w;
    let found = |n: usize| async move {
        let mut found = 0;
        for root in roots {
            found += usize::from(id_at(&w.bob, &w.tb, &format!("/Shared with me/{root}/f{n}.txt")).await.is_some());
        }
        found
    };
    for n in 0..5 {
        eventually(WAIT, "the file reaches bob", || async { found(n).await > 0 }).await;
        assert_eq!(found(n).await, 1, "f{n}.txt is in one root");
    }
}

/// A sharing that ends takes back what it never delivered (`sharing::ended`): bob's copy keeps
/// every file whose bytes arrived, byte for byte, and the one whose bytes never came (his
/// quota refuses them) goes to his trash, restorable where it was, rather than stay in his
/// tree as a file that answers 404 for good. Once: restored by bob, it stays, a restart
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_moves_to_the_trash_only_the_files_whose_bytes_never_arrived() {
    let one = spawn_app().await;
    let mut two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let (ta, tb) = (one.token(&alice, FILES), two.token(&bob, FILES));
    // Bob's quota takes the small files, never the big one's bytes.
    hearth::files::set_instance_quota(two.instance(&bob.domain).store.as_ref(), Some(1_000_000)).await.unwrap();
    let team = mkdir(&alice, &ta, ROOT, "Team").await;
    let sub = mkdir(&alice, &ta, &team, "Sub").await;
    let small: Vec<(String, Vec<u8>)> = (0..3u8).map(|n| (format!("small-{n}.txt"), vec![b'a' + n; 20_000])).collect();
    upload(&alice, &ta, &team, &small[0].0, &small[0].1).await;
    upload(&alice, &ta, &team, &small[1].0, &small[1].1).await;
    upload(&alice, &ta, &sub, &small[2].0, &small[2].1).await;
    let big = vec![7u8; 3_000_000];
    upload(&alice, &ta, &team, "big.bin", &big).await;
    let sid = share((&one, &alice, &ta), &[(&two, &bob, &tb)], &team).await;
    let small_path =
        |n: usize| if n == 2 { format!("{SHARED}/Sub/{}", small[n].0) } else { format!("{SHARED}/{}", small[n].0) };
    eventually(WAIT, "the small files reach bob whole, the big one's document without its bytes", || async {
        for (n, (_, data)) in small.iter().enumerate() {
            if download(&bob, &tb, &small_path(n)).await != (200, data.clone()) {
                return false;
            }
        }
        download(&bob, &tb, &format!("{SHARED}/big.bin")).await.0 == 409
    })
    .await;
    let big_id = id_at(&bob, &tb, &format!("{SHARED}/big.bin")).await.unwrap();

    let ts = one.token(&alice, "io.cozy.sharings");
    let (s, v) = alice.call(Method::DELETE, &format!("/sharings/{sid}/recipients"), Some(&ts), None).await;
    assert!(s == 200 || s == 204, "revoke: {s} {v}");
    eventually(WAIT, "the big file goes to bob's trash", || async {
        trash_names(&bob, &tb).await == ["big.bin"] && attrs_at(&bob, &tb, &format!("{SHARED}/big.bin")).await.is_none()
    })
    .await;
    let (s, v) = bob.call(Method::GET, &format!("/files/{big_id}"), Some(&tb), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["attributes"]["trashed"], json!(true), "{v}");
    assert_eq!(v["data"]["attributes"]["restore_path"], json!(SHARED), "{v}");
    assert!(!load(&two, &bob, &sid).await.active);
    // What arrived stays, whole, and alice's own tree is untouched.
    for (n, (_, data)) in small.iter().enumerate() {
        assert_eq!(download(&bob, &tb, &small_path(n)).await, (200, data.clone()), "{}", small[n].0);
    }
    assert!(attrs_at(&bob, &tb, &format!("{SHARED}/Sub")).await.is_some());
    assert_eq!(download(&alice, &ta, "/Team/big.bin").await, (200, big.clone()));
    assert!(trash_names(&alice, &ta).await.is_empty());

    // Restored by bob, it stays where he put it, a restart included: the end is acted on once.
    let (s, v) = bob.call(Method::POST, &format!("/files/trash/{big_id}"), Some(&tb), None).await;
    assert_eq!(s, 200, "restore: {v}");
    two.restart().await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(id_at(&bob, &tb, &format!("{SHARED}/big.bin")).await.as_deref(), Some(big_id.as_str()));
    assert!(trash_names(&bob, &tb).await.is_empty());
}

/// On the owner, a member leaving takes back only what that member sent and never delivered:
/// bob's file whose bytes alice's quota refused goes to her trash when the sharing ends, while
/// her own file and bob's file whose bytes came stay; bob's copy loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_moves_to_the_owners_trash_only_its_files_whose_bytes_never_came() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let (ta, tb) = (app.token(&alice, FILES), app.token(&bob, FILES));
    hearth::files::set_instance_quota(app.instance(&alice.domain).store.as_ref(), Some(1_000_000)).await.unwrap();
    let mine = vec![b'm'; 30_000];
    let (_, _, sid) = team((&app, &alice, &ta), &[(&app, &bob, &tb)], "mine.txt", &mine).await;
    let bob_team = id_at(&bob, &tb, SHARED).await.unwrap();
    let (small, big) = (vec![b's'; 20_000], vec![9u8; 3_000_000]);
    upload(&bob, &tb, &bob_team, "small.txt", &small).await;
    upload(&bob, &tb, &bob_team, "big.bin", &big).await;
    eventually(WAIT, "bob's small file reaches alice whole, the big one's document without its bytes", || async {
        download(&alice, &ta, "/Team/small.txt").await == (200, small.clone())
            && download(&alice, &ta, "/Team/big.bin").await.0 == 409
    })
    .await;

    let tsb = app.token(&bob, "io.cozy.sharings");
    let (s, v) = bob.call(Method::DELETE, &format!("/sharings/{sid}/recipients/self"), Some(&tsb), None).await;
    assert!(s == 200 || s == 204, "leave: {s} {v}");
    eventually(WAIT, "bob's big file goes to alice's trash", || async {
        trash_names(&alice, &ta).await == ["big.bin"] && attrs_at(&alice, &ta, "/Team/big.bin").await.is_none()
    })
    .await;
    assert!(!load(&app, &alice, &sid).await.active);
    assert_eq!(download(&alice, &ta, "/Team/mine.txt").await, (200, mine.clone()));
    assert_eq!(download(&alice, &ta, "/Team/small.txt").await, (200, small.clone()));
    // Bob's copy: everything, whole, nothing in his trash.
    assert_eq!(download(&bob, &tb, &format!("{SHARED}/big.bin")).await, (200, big));
    assert_eq!(download(&bob, &tb, &format!("{SHARED}/mine.txt")).await, (200, mine));
    assert!(trash_names(&bob, &tb).await.is_empty());
}

/// The files whose content `i` refuses now of what `member` sends (its status, that member's
/// `refused_received`).
async fn refused_here(app: &TestApp, i: &TestInstance, sid: &str, member: usize) -> u64 {
    let t = app.token(i, "io.cozy.sharings");
    let (s, v) = i.call(Method::GET, &format!("/sharings/{sid}/status"), Some(&t), None).await;
    assert_eq!(s, 200, "{v}");
    v["data"]["attributes"]["members"][member]["refused_received"]["files"].as_u64().unwrap_or(0)
}

/// An edit whose bytes never came does not cost the file its bytes (`files::held`): bob's copy
/// of a.txt had its bytes when alice's edit of it came without them (bob's quota refuses
/// them); the revocation gives bob's a.txt back the bytes it had, in place, rather than move it
/// to the trash, sweeps and restarts included. An edit whose bytes do come keeps no previous
/// version behind. Bug replay: the bytes it had were deleted as soon as the edit's document was
/// written, and the file went to the trash unreadable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_gives_a_file_whose_edit_never_came_whole_the_bytes_it_had() {
    let one = spawn_app().await;
    let mut two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let (ta, tb) = (one.token(&alice, FILES), two.token(&bob, FILES));
    hearth::files::set_instance_quota(two.instance(&bob.domain).store.as_ref(), Some(1_000_000)).await.unwrap();
    let first = vec![b'a'; 20_000];
    let (_, a, sid) = team((&one, &alice, &ta), &[(&two, &bob, &tb)], "a.txt", &first).await;
    let path = format!("{SHARED}/a.txt");
    // An edit whose bytes come: the version it replaced goes.
    let second = vec![b'b'; 30_000];
    replace(&alice, &ta, &a, &second).await;
    eventually(WAIT, "the edit reaches bob whole, and only its bytes are kept", || async {
        download(&bob, &tb, &path).await == (200, second.clone()) && objects_after_sweep(&two, &bob).await == 1
    })
    .await;
    // An edit whose bytes never come: past bob's quota.
    replace(&alice, &ta, &a, &vec![9u8; 3_000_000]).await;
    eventually(WAIT, "the edit's document reaches bob without its bytes", || async {
        download(&bob, &tb, &path).await.0 == 409
    })
    .await;
    assert_eq!(objects_after_sweep(&two, &bob).await, 1, "the bytes bob had are kept while the edit's are awaited");
    // A restart in between (its sweep included) forgets nothing of it.
    two.restart().await;
    assert_eq!(download(&bob, &tb, &path).await.0, 409);
    assert_eq!(objects_after_sweep(&two, &bob).await, 1);

    let ts = one.token(&alice, "io.cozy.sharings");
    let (s, v) = alice.call(Method::DELETE, &format!("/sharings/{sid}/recipients"), Some(&ts), None).await;
    assert!(s == 200 || s == 204, "revoke: {s} {v}");
    eventually(WAIT, "bob's a.txt has the bytes it had again", || async {
        download(&bob, &tb, &path).await == (200, second.clone())
    })
    .await;
    let attrs = attrs_at(&bob, &tb, &path).await.unwrap();
    assert_eq!(attrs["attributes"]["md5sum"], json!(md5_b64(&second)), "{attrs}");
    assert_eq!(attrs["attributes"]["size"], json!("30000"), "{attrs}");
    assert!(trash_names(&bob, &tb).await.is_empty());
    two.restart().await;
    assert_eq!(download(&bob, &tb, &path).await, (200, second.clone()));
    assert_eq!(objects_after_sweep(&two, &bob).await, 1);
    assert!(trash_names(&bob, &tb).await.is_empty());
}

/// On the owner, the same for its own file: bob's edit of alice's file, whose bytes alice's
/// quota refuses, does not cost alice her file when bob leaves: it has her bytes again, in
/// place; bob keeps his edit. Bug replay: alice's file went to her trash, her bytes deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_gives_the_owners_file_whose_edit_never_came_her_bytes_back() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let (ta, tb) = (app.token(&alice, FILES), app.token(&bob, FILES));
    hearth::files::set_instance_quota(app.instance(&alice.domain).store.as_ref(), Some(1_000_000)).await.unwrap();
    let mine = vec![b'm'; 30_000];
    let (_, _, sid) = team((&app, &alice, &ta), &[(&app, &bob, &tb)], "mine.txt", &mine).await;
    let bobs = format!("{SHARED}/mine.txt");
    let big = vec![9u8; 3_000_000];
    replace(&bob, &tb, &id_at(&bob, &tb, &bobs).await.unwrap(), &big).await;
    eventually(WAIT, "bob's edit reaches alice without its bytes, refused by her quota", || async {
        download(&alice, &ta, "/Team/mine.txt").await.0 == 409 && refused_here(&app, &alice, &sid, 1).await == 1
    })
    .await;

    let tsb = app.token(&bob, "io.cozy.sharings");
    let (s, v) = bob.call(Method::DELETE, &format!("/sharings/{sid}/recipients/self"), Some(&tsb), None).await;
    assert!(s == 200 || s == 204, "leave: {s} {v}");
    eventually(WAIT, "alice's file has her bytes again", || async {
        download(&alice, &ta, "/Team/mine.txt").await == (200, mine.clone())
    })
    .await;
    assert!(trash_names(&alice, &ta).await.is_empty());
    assert_eq!(objects_after_sweep(&app, &alice).await, 1);
    assert_eq!(download(&bob, &tb, &bobs).await, (200, big));
    // Refused *now* no more: bob left, nothing of his can come (the new-user review saw an
    // ended sharing still say "refused here").
    assert_eq!(refused_here(&app, &alice, &sid, 1).await, 0);
}

/// A later upload of the owner's own is the version kept (review of `files::held`): bob's edit,
/// whose bytes alice's quota refuses, holds her first version; she then uploads a new one
/// herself, and bob edits again, his bytes refused again. When bob leaves, her file has her
/// upload back: the hold follows the last version whose bytes were here. It used to keep the
/// first hold, and her upload was deleted as soon as bob's second edit was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_given_back_is_the_last_one_whose_bytes_were_here() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let (ta, tb) = (app.token(&alice, FILES), app.token(&bob, FILES));
    hearth::files::set_instance_quota(app.instance(&alice.domain).store.as_ref(), Some(1_000_000)).await.unwrap();
    let v1 = vec![b'm'; 30_000];
    let (_, a, sid) = team((&app, &alice, &ta), &[(&app, &bob, &tb)], "mine.txt", &v1).await;
    let bobs = format!("{SHARED}/mine.txt");
    let on_bob = id_at(&bob, &tb, &bobs).await.unwrap();
    replace(&bob, &tb, &on_bob, &vec![9u8; 3_000_000]).await;
    eventually(WAIT, "bob's edit reaches alice without its bytes", || async {
        download(&alice, &ta, "/Team/mine.txt").await.0 == 409
    })
    .await;
    let v3 = vec![b'o'; 40_000];
    replace(&alice, &ta, &a, &v3).await;
    eventually(WAIT, "alice's upload reaches bob", || async { download(&bob, &tb, &bobs).await == (200, v3.clone()) })
        .await;
    replace(&bob, &tb, &on_bob, &vec![8u8; 3_100_000]).await;
    eventually(WAIT, "bob's second edit reaches alice without its bytes", || async {
        download(&alice, &ta, "/Team/mine.txt").await.0 == 409
    })
    .await;
    assert_eq!(objects_after_sweep(&app, &alice).await, 1, "only alice's upload is kept while bob's bytes are awaited");

    let t = app.token(&bob, "io.cozy.sharings");
    let (s, v) = bob.call(Method::DELETE, &format!("/sharings/{sid}/recipients/self"), Some(&t), None).await;
    assert!(s == 200 || s == 204, "leave: {s} {v}");
    eventually(WAIT, "alice's file has her upload back", || async {
        download(&alice, &ta, "/Team/mine.txt").await == (200, v3.clone())
    })
    .await;
    assert!(trash_names(&alice, &ta).await.is_empty());
}

/// The document of file `id` on `i` as a write of its next revision, and `i`'s files.
async fn next_revision(app: &TestApp, i: &TestInstance, id: &str) -> (DocWrite, std::sync::Arc<hearth::files::Files>) {
    let inst = app.instance(&i.domain);
    let files = app.files.of(&inst).await.unwrap();
    let doc_id = DocId::parse(id).unwrap();
    let view = inst.store.get(&hearth::files::doctype(), &doc_id, GetOptions::default()).await.unwrap();
    let w = DocWrite { id: doc_id, rev: Some(view.doc.rev), revisions: None, deleted: false, body: view.doc.body };
    (w, files)
}

/// `w` naming version `vfs` of `data`'s MD5 and size, as an edit received from a member does.
fn naming(mut w: DocWrite, vfs: &str, data: &[u8]) -> DocWrite {
    let mut m: serde_json::Map<String, Value> = serde_json::from_str(w.body.as_str()).unwrap();
    m.insert("internal_vfs_id".into(), json!(vfs));
    m.insert("md5sum".into(), json!(md5_b64(data)));
    m.insert("size".into(), json!(data.len().to_string()));
    w.body = Body::from_map(&m);
    w
}

async fn write(app: &TestApp, i: &TestInstance, w: DocWrite) {
    let inst = app.instance(&i.domain);
    let r = inst.store.bulk_docs(&hearth::files::doctype(), vec![w], true).await.unwrap();
    assert!(matches!(r[0], hearth::store::WriteResult::Ok { .. }), "{r:?}");
}

/// The steps of a received batch (`sharing::receive`) run by hand around a sweep (review of
/// `files::held`): a sweep between the hold and the write (another process's: the batch's
/// guard does not order it) must not take the hold for a moot one because the file still
/// names the held version; the version is kept through the write and the release that
/// follows, and given back when the sharing ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_between_a_hold_and_its_write_keeps_the_hold() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let ta = app.token(&alice, FILES);
    let v1 = vec![b'a'; 20_000];
    let id = common::bytes::upload(&alice, &ta, ROOT, "a.txt", &v1).await;
    let (w, files) = next_revision(&app, &alice, &id).await;
    let v1_id = files.get(&id).await.unwrap().ancestry[0].vfs_id.clone().unwrap();
    let edit = naming(w, "0123456789abcdef0123456789abcdef", b"x");
    drop(files.hold_replaced(std::slice::from_ref(&edit), true, None).await.unwrap());
    files.sweep(std::time::Duration::ZERO).await.unwrap();
    assert_eq!(files.held_files().await.unwrap(), HashSet::from([id.clone()]));
    let guard = files.hold_replaced(std::slice::from_ref(&edit), true, None).await.unwrap();
    write(&app, &alice, edit).await;
    assert_eq!(files.release_versions(&HashSet::from([v1_id])).await.unwrap(), 0);
    drop(guard);
    files.sweep(std::time::Duration::ZERO).await.unwrap();
    let taken = files.trash_contentless(std::slice::from_ref(&id), &[]).await.unwrap();
    assert_eq!(taken.reverted, std::slice::from_ref(&id), "{taken:?}");
    assert_eq!(download(&alice, &ta, "/a.txt").await, (200, v1));
    assert!(files.held_files().await.unwrap().is_empty());
}

/// Bytes of an edit committing while a batch with a later edit is under way (review of
/// `files::held`): the release that follows the commit waits for the batch, so the version
/// held for the first edit is not released while the second one, whose bytes are not here
/// either, relies on it; the file gets it back when the sharing ends. Both versions were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_committed_while_a_later_edit_is_written_cost_nothing() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let ta = app.token(&alice, FILES);
    let v1 = vec![b'a'; 20_000];
    let id = common::bytes::upload(&alice, &ta, ROOT, "a.txt", &v1).await;
    let (w, files) = next_revision(&app, &alice, &id).await;
    let v1_id = files.get(&id).await.unwrap().ancestry[0].vfs_id.clone().unwrap();
    let v2 = vec![b'b'; 1000];
    let v2_id = "1123456789abcdef0123456789abcdef";
    let e2 = naming(w, v2_id, &v2);
    let guard = files.hold_replaced(std::slice::from_ref(&e2), true, None).await.unwrap();
    write(&app, &alice, e2).await;
    files.release_versions(&HashSet::from([v1_id])).await.unwrap();
    drop(guard);

    let (w, _) = next_revision(&app, &alice, &id).await;
    let e3 = naming(w, "2123456789abcdef0123456789abcdef", b"c");
    let guard = files.hold_replaced(std::slice::from_ref(&e3), true, None).await.unwrap();
    // The second edit's bytes commit meanwhile (the content channel runs beside the batches).
    let mut r = files.begin_received(&id, v2_id).await.unwrap().unwrap();
    r.write(bytes::Bytes::from(v2.clone())).await.unwrap();
    let received = tokio::spawn({
        let files = files.clone();
        async move { files.finish_received(r).await.unwrap() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    write(&app, &alice, e3).await;
    files.release_versions(&HashSet::from([v2_id.to_owned()])).await.unwrap();
    drop(guard);
    assert_eq!(received.await.unwrap(), 1000);

    let taken = files.trash_contentless(std::slice::from_ref(&id), &[]).await.unwrap();
    assert_eq!(taken.reverted, std::slice::from_ref(&id), "{taken:?}");
    assert_eq!(download(&alice, &ta, "/a.txt").await, (200, v1));
}

/// A received edit naming a version that is no valid key (a peer's document may say anything)
/// is nothing to hold for, and no error: the batch goes on to be judged as any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_naming_an_invalid_version_holds_nothing_and_fails_nothing() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let ta = app.token(&alice, FILES);
    let id = common::bytes::upload(&alice, &ta, ROOT, "a.txt", b"alpha").await;
    let (w, files) = next_revision(&app, &alice, &id).await;
    for bad in ["../../etc/passwd", "", "a/b", "x"] {
        let edit = naming(w.clone(), bad, b"x");
        drop(files.hold_replaced(std::slice::from_ref(&edit), true, None).await.unwrap());
    }
    assert!(files.held_files().await.unwrap().is_empty());
}
