//! The sharing flow in a real browser: headless Chromium (Debian's `chromium`, which `.ci/run`
//! installs), driven by `tests/node/browser.js` through playwright-core, opens alice's
//! invitation link, types bob's address, logs in on bob, presses Accept; then the sharing is
//! `ready` and active on both instances. Needs `npm ci` in tests/node (the test script does it).
//! A missing browser is a failure, not a skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::spawn_app;
use hearth::sharing::{self, service, MemberStatus, SharingId};
use reqwest::Method;
use serde_json::{json, Value};

const PASS: &str = "correct horse";

fn chromium() -> PathBuf {
    let path = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()));
    assert!(
        path.exists(),
        "no Chromium at {}: the browser test needs Debian's `chromium` package \
         (`apt-get install chromium`, as .ci/run does) or CHROMIUM pointing at a Chromium binary",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_accepts_a_sharing_in_headless_chromium() {
    let browser = chromium();
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        node_dir.join("node_modules/playwright-core").exists(),
        "run `npm ci --ignore-scripts` in tests/node first (scripts/test does it)"
    );

    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let body = json!({"data": {"type": "io.cozy.sharings",
        "attributes": {"description": "holiday notes", "rules": [{"title": "Notes", "doctype": "io.cozy.notes",
            "values": ["n1"], "add": "sync", "update": "sync", "remove": "sync"}]},
        "relationships": {"recipients": {"data": [{"email": "bob@example.net"}]}, "read_only_recipients": {"data": []}}}});
    let (s, v) = alice.call(Method::POST, "/sharings/", Some(&token), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let id = SharingId::parse(v["data"]["id"].as_str().unwrap()).unwrap();

    let alice_inst = app.instance(&alice.domain);
    let bob_inst = app.instance(&bob.domain);
    let created = sharing::load(alice_inst.store.as_ref(), &id).await.unwrap().unwrap();
    assert_eq!(created.members[1].status, MemberStatus::MailNotSent);
    let link = service::invitation_link(&app.sharing, &alice_inst, &created, hearth::sharing::MemberIndex(1)).unwrap();
    assert!(link.starts_with(&format!("http://{}/sharings/", alice.domain)), "{link}");

    let screenshots = std::env::var("SCREENSHOT_DIR")
        .unwrap_or_else(|_| format!("{}/browser-screenshots", env!("CARGO_TARGET_TMPDIR")));
    let started = Instant::now();
    let run = tokio::process::Command::new("node")
        .arg(node_dir.join("browser.js"))
        .env("INVITATION_URL", &link)
        .env("RECIPIENT_URL", format!("http://{}", bob.domain))
        .env("PASSPHRASE", PASS)
        .env("CHROMIUM", &browser)
        .env("SCREENSHOT_DIR", &screenshots)
        .env("TIMEOUT_MS", "60000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed");
    // The script stops itself after 60 s (75 s at the most); this is only a backstop.
    let out = tokio::time::timeout(Duration::from_secs(120), run.wait_with_output())
        .await
        .expect("the browser run took more than 2 minutes")
        .expect("node run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("no JSON summary from browser.js; stdout: {stdout}\nstderr: {stderr}"));
    assert!(
        out.status.success() && summary["ok"] == true,
        "the browser flow failed ({}): {summary}\nscreenshots in {screenshots}\nstderr tail:\n{}",
        out.status,
        stderr.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    eprintln!("browser flow done in {:?}: {summary}", started.elapsed());
    let final_text = summary["final_text"].as_str().unwrap_or_default();
    assert!(final_text.contains("You accepted"), "final page: {summary}");
    assert_eq!(summary["description"], "holiday notes", "{summary}");

    // Both sides: bob is a ready member and the sharing is active.
    let owner_side = sharing::load(alice_inst.store.as_ref(), &id).await.unwrap().unwrap();
    assert!(owner_side.active && owner_side.owner);
    assert_eq!(owner_side.members[1].status, MemberStatus::Ready);
    assert!(owner_side.members[1].outbound.is_some(), "alice holds credentials for bob");
    let bob_side = sharing::load(bob_inst.store.as_ref(), &id).await.unwrap().unwrap();
    assert!(bob_side.active && !bob_side.owner);
    assert_eq!(bob_side.members[1].status, MemberStatus::Ready);
    assert!(bob_side.members[0].outbound.is_some(), "bob holds credentials for alice");

    // The invitation can't be used twice: the link now shows a page, not a form.
    let html = common::browser().get(&link).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("already accepted"), "{html}");
}

/// The owner's web app (`GET /`), driven by `tests/node/home.js`: a request appears live on
/// bob's page, bob accepts it with the keyboard only, alice's page shows the first sync done,
/// alice switches bob read-only and back, alice's new invitation link opens in another browser
/// context, alice revokes bob and bob's page shows it, alice uploads a file and downloads it
/// back, shares the folder with an email and by a link with a password (both opened in other
/// contexts), renames, moves and trashes the file; no console error, no CSP
/// violation. Screenshots at 375 px and 1280 px go to `target/screenshots` (or SCREENSHOT_DIR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_page_shows_a_request_live_and_manages_the_sharing_in_headless_chromium() {
    let browser = chromium();
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        node_dir.join("node_modules/playwright-core").exists(),
        "run `npm ci --ignore-scripts` in tests/node first (scripts/test does it)"
    );
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let (s, v) =
        alice.call(Method::PUT, "/data/io.cozy.notes/n1", Some(&token), Some(json!({"title": "packing list"}))).await;
    assert_eq!(s, 201, "{v}");
    let body = json!({"data": {"type": "io.cozy.sharings",
        "attributes": {"description": "holiday notes", "rules": [{"title": "Notes", "doctype": "io.cozy.notes",
            "values": ["n1"], "add": "sync", "update": "sync", "remove": "sync"}]},
        "relationships": {"recipients": {"data": [{"email": "bob@example.net"}]}, "read_only_recipients": {"data": []}}}});
    let (s, v) = alice.call(Method::POST, "/sharings/", Some(&token), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let id = SharingId::parse(v["data"]["id"].as_str().unwrap()).unwrap();
    let alice_inst = app.instance(&alice.domain);
    let bob_inst = app.instance(&bob.domain);
    let created = sharing::load(alice_inst.store.as_ref(), &id).await.unwrap().unwrap();
    let link = service::invitation_link(&app.sharing, &alice_inst, &created, hearth::sharing::MemberIndex(1)).unwrap();

    let screenshots = std::env::var("SCREENSHOT_DIR")
        .unwrap_or_else(|_| format!("{}/target/screenshots", env!("CARGO_MANIFEST_DIR")));
    let run = tokio::process::Command::new("node")
        .arg(node_dir.join("home.js"))
        .env("ALICE_URL", format!("http://{}", alice.domain))
        .env("BOB_URL", format!("http://{}", bob.domain))
        .env("PASSPHRASE", PASS)
        .env("INVITATION_URL", &link)
        .env("SHARING_ID", id.as_str())
        .env("CHROMIUM", &browser)
        .env("SCREENSHOT_DIR", &screenshots)
        .env("TIMEOUT_MS", "90000")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed");
    let out = tokio::time::timeout(Duration::from_secs(150), run.wait_with_output())
        .await
        .expect("the browser run took more than 150 s")
        .expect("node run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|_| panic!("no JSON summary from home.js; stdout: {stdout}\nstderr: {stderr}"));
    assert!(
        out.status.success() && summary["ok"] == true,
        "the owner's page flow failed ({}): {summary}\nscreenshots in {screenshots}\nstderr tail:\n{}",
        out.status,
        stderr.lines().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    eprintln!("owner's page flow: {summary}");
    assert!(summary["syncText"].as_str().is_some_and(|t| t.contains("healthy")), "{summary}");
    assert_eq!(summary["progress"], "100", "{summary}");
    assert_eq!(summary["offered"], true, "the invitation page shows the sharing: {summary}");

    // What the pages did is what the instances hold.
    let owner_side = sharing::load(alice_inst.store.as_ref(), &id).await.unwrap().unwrap();
    assert_eq!(owner_side.members[1].status, MemberStatus::Revoked);
    assert_eq!(owner_side.invitations.iter().filter(|i| i.is_active()).count(), 1, "the link alice made");
    let bob_side = sharing::load(bob_inst.store.as_ref(), &id).await.unwrap().unwrap();
    assert!(bob_side.revoked_at.is_some() && !bob_side.active);
    assert_eq!(summary["folderOffered"], true, "the folder invitation shows the folder: {summary}");
    let files = app.files.of(&alice_inst).await.unwrap();
    let photos = files.by_path("/Photos").await.expect("the folder made");
    // Uploaded into Photos, renamed, moved to the root, trashed.
    let uploaded = files.get(summary["fileId"].as_str().unwrap()).await.expect("the uploaded file");
    assert_eq!(uploaded.size(), 23 + 200_000);
    assert_eq!(uploaded.name(), "notes.txt");
    assert!(uploaded.trashed(), "the file is in the trash");
    assert!(files.by_path("/Photos/hello.txt").await.is_err());
    // The folder is shared with carol's email, and by a link with a password.
    let folder_sharing = sharing::list(alice_inst.store.as_ref())
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.rules.iter().any(|r| r.doctype == "io.cozy.files" && r.values == [photos.id.clone()]))
        .expect("a sharing of the folder");
    assert_eq!(folder_sharing.members[1].email.as_deref(), Some("carol@example.net"));
    let scope = hearth::auth::PermissionSet::parse("io.cozy.files").unwrap();
    let links = sharing::links::list_covered(&alice_inst, &scope).await.unwrap();
    assert!(links.iter().any(|l| l.to_api(None)["attributes"]["password"] == true), "a link with a password");
}
