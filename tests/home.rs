//! The owner's home page (`GET /`) and the app token its session gets
//! (`POST /auth/session/token`), over HTTP. The page in a real browser: tests/browser.rs.

mod common;

use common::flow::{hidden, PASS};
use common::{browser, spawn_app, TestInstance};
use reqwest::Method;
use serde_json::{json, Value};

/// Logs in with a fresh client; answers it with the home page's HTML.
async fn logged_in(inst: &TestInstance) -> (reqwest::Client, String) {
    let b = browser();
    let resp = b.post(format!("http://{}/auth/login", inst.domain)).form(&[("passphrase", PASS)]).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/", "after login, the owner lands on the home page");
    let home = b.get(format!("http://{}/", inst.domain)).send().await.unwrap();
    assert_eq!(home.status(), 200);
    (b, home.text().await.unwrap())
}

fn csrf_of(html: &str) -> String {
    let marker = "name=\"hearth-csrf\" content=\"";
    let start = html.find(marker).expect("the CSRF meta tag") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn strangers_are_sent_to_the_login_page_and_back() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    // An API client asking for JSON only is told there is no such route, as before the page
    // existed.
    for accept in ["application/json", "application/vnd.api+json, application/json;q=0.5"] {
        let resp = alice.req(Method::GET, "/", None).header("Accept", accept).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{accept}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["reason"], "no such route", "{accept}");
    }
    // Any other client (curl's `*/*`, no Accept at all, a browser) is sent to log in and back.
    for accept in ["*/*", "text/html", "application/json, */*;q=0.1", "text/plain"] {
        let resp = browser().get(format!("http://{}/", alice.domain)).header("Accept", accept).send().await.unwrap();
        assert_eq!(resp.status(), 303, "{accept}");
        assert_eq!(resp.headers()["location"], "/auth/login?redirect=%2F", "{accept}");
    }
    // No Accept header at all (reqwest always sends one: raw HTTP/1.1).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", alice.port)).await.unwrap();
        let request = format!("GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", alice.domain);
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("location: /auth/login?redirect=%2f"), "{answer}");
    }
    let resp = browser()
        .get(format!("http://{}/?dir=abc", alice.domain))
        .header("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/auth/login?redirect=%2F%3Fdir%3Dabc");
    let login = browser().get(format!("http://{}/auth/login?redirect=%2F%3Fdir%3Dabc", alice.domain)).send().await;
    assert_eq!(hidden(&login.unwrap().text().await.unwrap(), "redirect"), "/?dir=abc");
}

#[tokio::test]
async fn the_home_page_has_a_strict_csp_no_inline_script_and_escapes_what_it_shows() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let evil = "<script>alert(1)</script>\"'&";
    let body = json!({"data": {"type": "io.cozy.sharings",
        "attributes": {"description": evil, "rules": [{"title": "<b>t</b>", "doctype": "io.cozy.notes",
            "values": ["n1"], "add": "sync", "update": "sync", "remove": "sync"}]},
        "relationships": {"recipients": {"data": [{"email": "bob@example.net"}]}}}});
    let (s, v) = alice.call(Method::POST, "/sharings/", Some(&token), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    let b = browser();
    let resp =
        b.post(format!("http://{}/auth/login", alice.domain)).form(&[("passphrase", PASS)]).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let home = b.get(format!("http://{}/", alice.domain)).send().await.unwrap();
    assert_eq!(home.status(), 200);
    let csp = home.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(home.headers()["x-frame-options"], "DENY");
    assert_eq!(home.headers()["cache-control"], "no-store");
    let html = home.text().await.unwrap();
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;"), "{html}");
    assert!(!html.contains("<script>alert") && !html.contains("<b>t</b>"), "{html}");
    // The only script is the file, no inline code or handler attribute.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(html.contains("<script src=\"/web/app.js\" defer></script>"), "{html}");
    assert!(!html.contains(" onclick=") && !html.contains(" style="), "{html}");

    for (path, kind) in [("/web/app.js", "text/javascript; charset=utf-8"), ("/web/app.css", "text/css; charset=utf-8")]
    {
        let resp = b.get(format!("http://{}{path}", alice.domain)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], kind);
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        assert!(resp.text().await.unwrap().len() > 1000, "{path} is the embedded asset");
    }
}

#[tokio::test]
async fn the_page_token_needs_the_session_and_its_csrf_token_and_works_on_the_api() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let (b, html) = logged_in(&alice).await;
    let csrf = csrf_of(&html);
    let url = format!("http://{}/auth/session/token", alice.domain);

    // Without the session: 401; with the session but no or a wrong CSRF token: 403.
    let resp = browser().post(&url).header("X-CSRF-Token", &csrf).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = b.post(&url).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert!(v["reason"].as_str().is_some_and(|r| r.contains("CSRF")), "{v}");
    let resp = b.post(&url).header("X-CSRF-Token", "0".repeat(csrf.len())).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    // Bob's page's CSRF token is no good for alice's session.
    let (_, bob_html) = logged_in(&bob).await;
    let resp = b.post(&url).header("X-CSRF-Token", csrf_of(&bob_html)).send().await.unwrap();
    assert_eq!(resp.status(), 403);

    let resp = b.post(&url).header("X-CSRF-Token", &csrf).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["expires_in"], 600);
    let token = v["access_token"].as_str().unwrap();
    let (s, list) = alice.call(Method::GET, "/sharings/", Some(token), None).await;
    assert_eq!(s, 200, "{list}");
    let (s, files) = alice.call(Method::GET, "/files/io.cozy.files.root-dir", Some(token), None).await;
    assert_eq!(s, 200, "{files}");
    // It is alice's token: bob's instance refuses it.
    let (s, _) = bob.call(Method::GET, "/sharings/", Some(token), None).await;
    assert_eq!(s, 401);

    // Logging out ends the session: no more tokens.
    let resp = b.post(format!("http://{}/auth/logout", alice.domain)).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    let resp = b.post(&url).header("X-CSRF-Token", &csrf).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn the_files_section_lists_a_folder_and_falls_back_to_the_root() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let token = app.token(&alice, "io.cozy.files");
    let (s, v) = alice
        .call(Method::POST, "/files/io.cozy.files.root-dir?Type=directory&Name=Photos%20%3Cb%3E", Some(&token), None)
        .await;
    assert_eq!(s, 201, "{v}");
    let dir = v["data"]["id"].as_str().unwrap().to_owned();
    let resp = alice
        .req(Method::POST, &format!("/files/{dir}?Type=file&Name=cat.txt"), Some(&token))
        .body("meow")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let (b, root) = logged_in(&alice).await;
    assert!(root.contains("Photos &lt;b&gt;"), "{root}");
    assert!(!root.contains(".cozy_trash"), "the trash is not listed as a folder: {root}");
    let inside = b.get(format!("http://{}/?dir={dir}", alice.domain)).send().await.unwrap().text().await.unwrap();
    assert!(inside.contains("data-name=\"cat.txt\"") && inside.contains("4 B"), "{inside}");
    // An unknown or file id shows the root.
    let unknown = b.get(format!("http://{}/?dir=nope", alice.domain)).send().await.unwrap();
    assert_eq!(unknown.status(), 200);
    assert!(unknown.text().await.unwrap().contains("Photos &lt;b&gt;"));
}

#[tokio::test]
async fn the_sessions_event_stream_starts_with_ready_and_ends_when_the_owner_logs_out() {
    use futures_util::StreamExt;
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let (b, _) = logged_in(&alice).await;
    let resp = b.get(format!("http://{}/realtime/events", alice.domain)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first =
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(first.starts_with("event: ready\ndata: "), "{first}");
    assert!(first.contains("io.cozy.files"), "the owner's page hears of its files: {first}");

    let resp = b.post(format!("http://{}/auth/logout", alice.domain)).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    // The stream ends at the next keepalive (15 s at most).
    let ended = tokio::time::timeout(std::time::Duration::from_secs(25), async {
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream went on after logging out");
    // And a new one is refused.
    let resp = b.get(format!("http://{}/realtime/events", alice.domain)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}
