//! Replays of public bug reports about a file whose new content was still on its way when
//! something else happened to it (a second edit, a rename, a deletion, the sharing ending, a
//! restart), against real servers over HTTP (`files::held`). A quota keeps a big edit's bytes
//! from ever arriving; each test names the report it replays.

mod common;

use common::bytes::{enc, md5_b64, replace};
use common::flow::{load, PASS};
use common::folder::{
    attrs_at, download, id_at, leave, objects_after_sweep, revoke_all, team, trash, trash_names, FILES, SHARED, WAIT,
};
use common::{eventually, spawn_app, TestInstance};
use reqwest::Method;
use serde_json::json;

async fn rename(i: &TestInstance, token: &str, id: &str, name: &str) {
    let body = json!({"data": {"type": "io.cozy.files", "id": id, "attributes": {"name": name}}});
    let (s, v) = i.call(Method::PATCH, &format!("/files/{}", enc(id)), Some(token), Some(body)).await;
    assert_eq!(s, 200, "rename: {v}");
}

/// Replays syncthing/syncthing#3998 ("Is it possible that syncthing may have reverted a file
/// back to an earlier version?": a file worked on and saved came back as its original version)
/// and syncthing/syncthing#2584 (a file modified twice in quick succession before the first
/// change was acknowledged). Here: alice edits a.txt four times; bob's quota refuses the bytes
/// of the first, third and fourth edits, the second's arrive; bob's server restarts in between.
/// Expected: when alice revokes, bob's a.txt has the bytes of the *second* edit (the last
/// version whose bytes bob had), not the original and not an unreadable file; nothing in his
/// trash, and no other version's bytes kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_whose_bytes_never_came_give_back_the_last_version_bob_had_not_an_earlier_one() {
    let one = spawn_app().await;
    let mut two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let (ta, tb) = (one.token(&alice, FILES), two.token(&bob, FILES));
    hearth::files::set_instance_quota(two.instance(&bob.domain).store.as_ref(), Some(1_000_000)).await.unwrap();
    let first = vec![b'a'; 20_000];
    let (_, a, sid) = team((&one, &alice, &ta), &[(&two, &bob, &tb)], "a.txt", &first).await;
    let path = format!("{SHARED}/a.txt");
    let r409 = || async { download(&bob, &tb, &path).await.0 == 409 };

    replace(&alice, &ta, &a, &vec![1u8; 3_000_000]).await;
    eventually(WAIT, "edit 1 reaches bob without its bytes", r409).await;
    let second = vec![b'b'; 30_000];
    replace(&alice, &ta, &a, &second).await;
    eventually(WAIT, "edit 2 reaches bob whole", || async {
        download(&bob, &tb, &path).await == (200, second.clone())
    })
    .await;
    assert_eq!(objects_after_sweep(&two, &bob).await, 1, "the original's bytes go once edit 2's came");

    replace(&alice, &ta, &a, &vec![3u8; 3_000_000]).await;
    eventually(WAIT, "edit 3 reaches bob without its bytes", r409).await;
    two.restart().await;
    replace(&alice, &ta, &a, &vec![4u8; 3_100_000]).await;
    eventually(WAIT, "edit 4's document reaches bob", || async {
        attrs_at(&bob, &tb, &path).await.is_some_and(|d| d["attributes"]["size"] == json!("3100000"))
    })
    .await;
    assert_eq!(download(&bob, &tb, &path).await.0, 409);
    assert_eq!(objects_after_sweep(&two, &bob).await, 1, "edit 2's bytes are kept while 3's and 4's are awaited");

    revoke_all(&one, &alice, &sid).await;
    eventually(WAIT, "bob's a.txt has edit 2's bytes again", || async {
        download(&bob, &tb, &path).await == (200, second.clone())
    })
    .await;
    let attrs = attrs_at(&bob, &tb, &path).await.unwrap();
    assert_eq!(attrs["attributes"]["md5sum"], json!(md5_b64(&second)), "{attrs}");
    assert_eq!(attrs["attributes"]["size"], json!("30000"), "{attrs}");
    assert!(trash_names(&bob, &tb).await.is_empty());
    two.restart().await;
    assert_eq!(download(&bob, &tb, &path).await, (200, second));
    assert_eq!(objects_after_sweep(&two, &bob).await, 1);
}

/// Replays owncloud/client#3275 ("Renaming at Web Interface while syncing cause data to be
/// lost": items renamed while a sync was transferring them came out zero-byte). Here: bob
/// edits alice's mine.txt (bytes alice's quota refuses) and, while they are in flight,
/// renames it to renamed.txt; then bob leaves. Expected: alice's file is at its new name
/// (bob's rename arrived whole) with alice's bytes, readable; no mine.txt, nothing in alice's
/// trash; bob keeps his edit under the new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_made_while_an_edits_bytes_are_in_flight_keeps_the_owners_bytes_when_the_member_leaves() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let (ta, tb) = (app.token(&alice, FILES), app.token(&bob, FILES));
    hearth::files::set_instance_quota(app.instance(&alice.domain).store.as_ref(), Some(1_000_000)).await.unwrap();
    let mine = vec![b'm'; 30_000];
    let (_, _, sid) = team((&app, &alice, &ta), &[(&app, &bob, &tb)], "mine.txt", &mine).await;
    let bobs = id_at(&bob, &tb, &format!("{SHARED}/mine.txt")).await.unwrap();
    let big = vec![9u8; 3_000_000];
    replace(&bob, &tb, &bobs, &big).await;
    eventually(WAIT, "bob's edit reaches alice without its bytes", || async {
        download(&alice, &ta, "/Team/mine.txt").await.0 == 409
    })
    .await;
    rename(&bob, &tb, &bobs, "renamed.txt").await;
    eventually(WAIT, "bob's rename reaches alice", || async {
        attrs_at(&alice, &ta, "/Team/renamed.txt").await.is_some()
    })
    .await;
    assert_eq!(download(&alice, &ta, "/Team/renamed.txt").await.0, 409);

    leave(&app, &bob, &sid).await;
    eventually(WAIT, "alice's renamed.txt has her bytes again", || async {
        download(&alice, &ta, "/Team/renamed.txt").await == (200, mine.clone())
    })
    .await;
    assert!(attrs_at(&alice, &ta, "/Team/mine.txt").await.is_none());
    assert!(trash_names(&alice, &ta).await.is_empty());
    assert_eq!(objects_after_sweep(&app, &alice).await, 1);
    assert_eq!(download(&bob, &tb, &format!("{SHARED}/renamed.txt")).await, (200, big));
}

/// Replays syncthing/syncthing#2792 ("Syncthing resurrects deleted files (as 128-byte empty
/// files)": files deleted before they finished synchronizing came back, empty). Here: alice
/// edits a.txt (bytes bob's quota refuses), then, while they are in flight, moves a.txt to her
/// trash; bob's copy follows it to his trash; alice then revokes. Expected: bob's a.txt is not
/// brought back into his tree by the end of the sharing; restored by bob from his trash, it
/// is readable, with the bytes bob had before the edit (nothing bob had is lost, as
/// `files::held` promises), not an unreadable file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_deleted_while_an_edits_bytes_are_in_flight_is_restored_with_the_bytes_it_had() {
    let one = spawn_app().await;
    let two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let (ta, tb) = (one.token(&alice, FILES), two.token(&bob, FILES));
    hearth::files::set_instance_quota(two.instance(&bob.domain).store.as_ref(), Some(1_000_000)).await.unwrap();
    let first = vec![b'a'; 20_000];
    let (_, a, sid) = team((&one, &alice, &ta), &[(&two, &bob, &tb)], "a.txt", &first).await;
    let path = format!("{SHARED}/a.txt");
    replace(&alice, &ta, &a, &vec![9u8; 3_000_000]).await;
    eventually(WAIT, "the edit reaches bob without its bytes", || async { download(&bob, &tb, &path).await.0 == 409 })
        .await;
    let (s, v) = alice.call(Method::DELETE, &format!("/files/{}", enc(&a)), Some(&ta), None).await;
    assert_eq!(s, 200, "trash: {v}");
    eventually(WAIT, "bob's a.txt follows alice's to the trash", || async {
        attrs_at(&bob, &tb, &path).await.is_none() && trash_names(&bob, &tb).await == ["a.txt"]
    })
    .await;
    let _ = objects_after_sweep(&two, &bob).await;

    revoke_all(&one, &alice, &sid).await;
    eventually(WAIT, "the sharing ends on bob", || async { !load(&two, &bob, &sid).await.active }).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(attrs_at(&bob, &tb, &path).await.is_none(), "the end of the sharing brought a.txt back");
    let trashed = trash(&bob, &tb).await;
    assert_eq!(trashed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["a.txt"]);
    let (s, v) = bob.call(Method::POST, &format!("/files/trash/{}", enc(&trashed[0].1)), Some(&tb), None).await;
    assert_eq!(s, 200, "restore: {v}");
    let restored = v["data"]["attributes"]["path"].as_str().map(str::to_owned).unwrap_or(path.clone());
    let (status, body) = download(&bob, &tb, &restored).await;
    assert_eq!(
        (status, body == first),
        (200, true),
        "a.txt restored from bob's trash after the sharing ended: {} {}",
        String::from_utf8_lossy(&body[..body.len().min(300)]),
        attrs_at(&bob, &tb, &restored).await.unwrap_or_default()
    );
}

/// Replays nextcloud/android#15496 ("Leaving share is not the same as deleting a file": user B
/// leaving a shared folder cost user A, the owner, a file). Here: alice shares /Team with bob
/// and carol; bob edits alice's mine.txt with bytes alice's quota refuses (so neither alice nor
/// carol, who gets them through alice, ever has them); alice's server restarts; then bob
/// leaves while the sharing goes on with carol. Expected: alice's own mine.txt has her bytes
/// again (as when bob was her only member), readable, not left answering 409 for good; carol
/// gets them back too; nothing in alice's trash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_while_others_stay_gives_the_owners_file_whose_edit_never_came_her_bytes_back() {
    let mut one = spawn_app().await;
    let two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let carol = two.add_instance("carol", PASS);
    let (ta, tb, tc) = (one.token(&alice, FILES), two.token(&bob, FILES), two.token(&carol, FILES));
    hearth::files::set_instance_quota(one.instance(&alice.domain).store.as_ref(), Some(1_000_000)).await.unwrap();
    let mine = vec![b'm'; 30_000];
    let (_, _, sid) = team((&one, &alice, &ta), &[(&two, &bob, &tb), (&two, &carol, &tc)], "mine.txt", &mine).await;
    let path = format!("{SHARED}/mine.txt");
    let big = vec![9u8; 3_000_000];
    replace(&bob, &tb, &id_at(&bob, &tb, &path).await.unwrap(), &big).await;
    eventually(WAIT, "bob's edit reaches alice and carol without its bytes", || async {
        download(&alice, &ta, "/Team/mine.txt").await.0 == 409 && download(&carol, &tc, &path).await.0 == 409
    })
    .await;
    one.restart().await;
    assert_eq!(download(&alice, &ta, "/Team/mine.txt").await.0, 409);

    leave(&two, &bob, &sid).await;
    eventually(WAIT, "bob's leaving is known to alice", || async {
        let s = load(&one, &alice, &sid).await;
        s.active && s.members.iter().filter(|m| m.status == hearth::sharing::MemberStatus::Ready).count() == 1
    })
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(WAIT);
    while std::time::Instant::now() < deadline && download(&alice, &ta, "/Team/mine.txt").await != (200, mine.clone()) {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let (status, body) = download(&alice, &ta, "/Team/mine.txt").await;
    assert_eq!(
        (status, body == mine),
        (200, true),
        "alice's own mine.txt after bob left: {} {}",
        String::from_utf8_lossy(&body[..body.len().min(300)]),
        attrs_at(&alice, &ta, "/Team/mine.txt").await.unwrap_or_default()
    );
    eventually(WAIT, "carol's mine.txt has alice's bytes again", || async {
        download(&carol, &tc, &path).await == (200, mine.clone())
    })
    .await;
    assert!(trash_names(&alice, &ta).await.is_empty());
    assert_eq!(download(&bob, &tb, &path).await, (200, big));
}
