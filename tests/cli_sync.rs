//! `hearth sharings sync`: it reports "Up to date" only when every ready member's metadata and
//! content are at rest, says what is still pending when it gives up, and says plainly when no
//! member is ready to sync with. `hearth sharings revoke`: done by the running server when
//! there is one, here otherwise. Real `hearth serve` processes on loopback, the real CLI.

mod common;

use common::process::call;

use common::flow::answer_invitation;
use common::process::ServerProcess as Server;
use common::{browser, TestInstance};
use serde_json::{json, Value};

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_with_no_ready_member_says_so_and_fails() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Server::new("alice", root.path().join("a"), vec![]);
    alice.cli(&["instances", "add", &alice.domain(), "--passphrase", "pa"]);
    let token = alice.cli(&["instances", "token", &alice.domain(), "--scope", "io.cozy.notes"]).trim().to_owned();
    alice.start().await;
    call(&alice.domain(), reqwest::Method::PUT, "/data/io.cozy.notes/n1", &token, Some(json!({"t": 1}))).await;
    // Invited by email only: nobody has accepted.
    let body = json!({"data": {"type": "io.cozy.sharings", "attributes": {"description": "notes", "rules": [
        {"title": "n", "doctype": "io.cozy.notes", "values": ["n1"], "add": "sync", "update": "sync", "remove": "sync"}]},
        "relationships": {"recipients": {"data": [{"name": "Bob", "email": "bob@example.org"}]}}}});
    let created = call(&alice.domain(), reqwest::Method::POST, "/sharings/", &token, Some(body)).await;
    let sid = created["data"]["id"].as_str().unwrap().to_owned();
    let out = alice.cli_output(&["sharings", "sync", &alice.domain(), &sid, "--timeout", "60"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(!said.contains("Up to date"), "{said}");
    assert!(said.contains("no member of this sharing is ready"), "{said}");
}

/// The recipient's quota refuses the file's content: the metadata is delivered, the content
/// stays pending, and the sync must not say "Up to date".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_is_not_up_to_date_while_content_is_pending() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Server::new("alice", root.path().join("a"), vec![]);
    let mut bob = Server::new("bob", root.path().join("b"), vec![("HEARTH_FILES__QUOTA_BYTES", "50000".to_owned())]);
    alice.cli(&["instances", "add", &alice.domain(), "--passphrase", "pa"]);
    bob.cli(&["instances", "add", &bob.domain(), "--passphrase", "pb"]);
    let token = alice.cli(&["instances", "token", &alice.domain(), "--scope", "io.cozy.files"]).trim().to_owned();
    alice.start().await;
    bob.start().await;
    let dir = call(
        &alice.domain(),
        reqwest::Method::POST,
        "/files/io.cozy.files.root-dir?Type=directory&Name=Team",
        &token,
        None,
    )
    .await;
    let dir = dir["data"]["id"].as_str().unwrap().to_owned();
    let data = hearth::files::conformance::pattern(200_000, 7);
    let resp = browser()
        .post(format!("http://{}/files/{dir}?Type=file&Name=big.bin", alice.domain()))
        .bearer_auth(&token)
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body = json!({"data": {"type": "io.cozy.sharings", "attributes": {"description": "holiday notes", "rules": [
        {"title": "Team", "doctype": "io.cozy.files", "values": [dir], "add": "sync", "update": "sync", "remove": "sync"}]},
        "relationships": {"recipients": {"data": [{"instance": format!("http://{}", bob.domain())}]}}}});
    let created = call(&alice.domain(), reqwest::Method::POST, "/sharings/", &token, Some(body)).await;
    let sid = created["data"]["id"].as_str().unwrap().to_owned();
    let links = alice.cli(&["sharings", "invitations", &alice.domain(), &sid]);
    let link = links.split_whitespace().find(|w| w.starts_with("http")).unwrap().to_owned();
    let recipient = TestInstance { domain: bob.domain(), port: bob.port, client: browser() };
    bob.cli(&["instances", "passphrase", &bob.domain(), "--passphrase", common::flow::PASS]);
    answer_invitation(&link, &recipient, "accept").await;
    let out = alice.cli_output(&["sharings", "sync", &alice.domain(), &sid, "--timeout", "20"]);
    let said = text(&out);
    assert!(!said.contains("Up to date"), "{said}");
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("still pending") && said.contains("content: 1 file(s)"), "{said}");
    let status = alice.cli(&["sharings", "status", &alice.domain(), &sid, "--json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    let member = &status["data"]["attributes"]["members"][1];
    assert_eq!(member["replication"]["pending"], 0, "the metadata went: {status}");
    assert_eq!(member["content"]["files_pending"], 1, "{status}");
    // Bob refuses the bytes: the member's state is degraded, never healthy, in the table too.
    assert_eq!(member["health"], "degraded", "{status}");
    let table = alice.cli(&["sharings", "status", &alice.domain(), &sid]);
    let row = table.lines().find(|l| l.starts_with("1 ")).unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("degraded") && !row.contains("healthy"), "{table}");
    assert!(table.contains("quota"), "{table}");
}

/// The running server revokes (only it knows which bytes it is receiving, see
/// `sharing::ended`): its log says so, and the sharing is inactive as the server serves it.
/// With no server, the CLI revokes the next sharing itself, and the server finds it so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_goes_through_the_running_server_and_is_done_here_without_one() {
    let root = tempfile::tempdir().unwrap();
    let mut alice = Server::new("alice", root.path().join("a"), vec![]);
    alice.cli(&["instances", "add", &alice.domain(), "--passphrase", "pa"]);
    let token = alice
        .cli(&["instances", "token", &alice.domain(), "--scope", "io.cozy.notes", "--scope", "io.cozy.sharings"])
        .trim()
        .to_owned();
    alice.start().await;
    call(&alice.domain(), reqwest::Method::PUT, "/data/io.cozy.notes/n1", &token, Some(json!({"t": 1}))).await;
    let create = |member: &str| {
        json!({"data": {"type": "io.cozy.sharings", "attributes": {"description": "notes", "rules": [
            {"title": "n", "doctype": "io.cozy.notes", "values": ["n1"], "add": "sync", "update": "sync", "remove": "sync"}]},
            "relationships": {"recipients": {"data": [{"name": member, "email": format!("{member}@example.org")}]}}}})
    };
    let mut ids = Vec::new();
    for member in ["bob", "carol"] {
        let created = call(&alice.domain(), reqwest::Method::POST, "/sharings/", &token, Some(create(member))).await;
        ids.push(created["data"]["id"].as_str().unwrap().to_owned());
    }
    let domain = alice.domain();
    let revoked = async |sid: &str| {
        let s = call(&domain, reqwest::Method::GET, &format!("/sharings/{sid}"), &token, None).await;
        s["data"]["attributes"]["revoked_at"].is_string()
    };
    assert!(!revoked(&ids[0]).await && !revoked(&ids[1]).await, "not revoked yet");
    let out = alice.cli_output(&["sharings", "revoke", &alice.domain(), &ids[0]]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Revoked by the running server"), "{said}");
    let log = std::fs::read_to_string(alice.log_path()).unwrap();
    assert!(log.lines().any(|l| l.contains(&ids[0]) && l.contains("member revoked")), "the server revoked: {log}");
    assert!(revoked(&ids[0]).await, "the server serves the sharing as revoked");

    alice.kill();
    let out = alice.cli_output(&["sharings", "revoke", &alice.domain(), &ids[1]]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Revoked here"), "{said}");
    assert!(said.contains("inactive"), "{said}");
    alice.start().await;
    assert!(revoked(&ids[1]).await, "the revocation made by the CLI holds");
}
