//! Sharing by link over real HTTP: creating a link permission with sharecodes, reading through
//! a code (Bearer, or the cookie a public page swaps `?sharecode=` for), what a read-only code
//! may not do, expiry, passwords, changing and revoking links, listings, and the rate limit on
//! failed codes.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::{browser, spawn_app, spawn_app_with, TestApp, TestInstance};
use reqwest::Method;
use serde_json::{json, Value};

const NOTES: &str = "/data/io.cozy.notes";

fn link_body(rules: Value) -> Value {
    json!({"data": {"type": "io.cozy.permissions", "attributes": {"permissions": rules}}})
}

fn notes_rule(verbs: &[&str], values: &[&str]) -> Value {
    json!({"notes": {"type": "io.cozy.notes", "verbs": verbs, "values": values}})
}

/// Creates a link and answers its id and name -> code.
async fn create_link(inst: &TestInstance, token: &str, query: &str, body: Value) -> (String, Value) {
    let (s, v) = inst.call(Method::POST, &format!("/permissions?{query}"), Some(token), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    (v["data"]["id"].as_str().unwrap().to_owned(), v["data"]["attributes"]["codes"].clone())
}

async fn put_note(inst: &TestInstance, token: &str, id: &str, title: &str) -> String {
    let (s, v) = inst.call(Method::PUT, &format!("{NOTES}/{id}"), Some(token), Some(json!({"title": title}))).await;
    assert_eq!(s, 201, "{v}");
    v["rev"].as_str().unwrap().to_owned()
}

async fn setup() -> (TestApp, TestInstance, String) {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", "x");
    let token = app.token(&alice, "io.cozy.notes");
    put_note(&alice, &token, "n1", "Groceries").await;
    put_note(&alice, &token, "n2", "Diary").await;
    (app, alice, token)
}

#[tokio::test]
async fn a_read_only_code_reads_its_documents_and_nothing_else() {
    let (_app, alice, token) = setup().await;
    let (perm_id, codes) =
        create_link(&alice, &token, "codes=bob,jane", link_body(notes_rule(&["GET"], &["n1"]))).await;
    let bob = codes["bob"].as_str().unwrap().to_owned();
    let jane = codes["jane"].as_str().unwrap().to_owned();
    assert!(bob.len() >= 32 && bob != jane, "codes carry at least 128 random bits");

    let (s, doc) = alice.call(Method::GET, &format!("{NOTES}/n1"), Some(&bob), None).await;
    assert_eq!((s, doc["title"].as_str()), (200, Some("Groceries")));
    assert_eq!(alice.call(Method::GET, &format!("{NOTES}/n1"), Some(&jane), None).await.0, 200);
    // Only the listed document, only reads, only that doctype.
    assert_eq!(alice.call(Method::GET, &format!("{NOTES}/n2"), Some(&bob), None).await.0, 403);
    // An existing id outside the link and one that names nothing answer alike: no probing.
    let (s2, v2) = alice.call(Method::GET, &format!("{NOTES}/n2"), Some(&bob), None).await;
    let (s9, v9) = alice.call(Method::GET, &format!("{NOTES}/n9"), Some(&bob), None).await;
    assert_eq!((s2, v2.to_string().replace("n2", "n9")), (s9, v9.to_string()));
    let (s, v) = alice.call(Method::PUT, &format!("{NOTES}/n1"), Some(&bob), Some(json!({"title": "hacked"}))).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(alice.call(Method::DELETE, &format!("{NOTES}/n1?rev=1-x"), Some(&bob), None).await.0, 403);
    assert_eq!(alice.call(Method::POST, &format!("{NOTES}/"), Some(&bob), Some(json!({"t": 1}))).await.0, 403);
    assert_eq!(alice.call(Method::GET, "/data/io.cozy.todos/_all_docs", Some(&bob), None).await.0, 403);
    let (s, all) = alice.call(Method::GET, &format!("{NOTES}/_all_docs"), Some(&bob), None).await;
    assert_eq!(s, 200);
    assert_eq!(all["rows"].as_array().unwrap().len(), 1, "only n1 is listed: {all}");
    // A code is not an app token: no management.
    assert_eq!(
        alice
            .call(Method::POST, "/permissions?codes=x", Some(&bob), Some(link_body(notes_rule(&["GET"], &["n1"]))))
            .await
            .0,
        401
    );
    assert_eq!(alice.call(Method::GET, &format!("/permissions/{perm_id}"), Some(&bob), None).await.0, 401);

    // The holder sees the set, never the codes.
    let (s, me) = alice.call(Method::GET, "/permissions/self", Some(&bob), None).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["data"]["id"], perm_id.as_str());
    assert_eq!(me["data"]["attributes"]["type"], "share");
    assert_eq!(me["data"]["attributes"]["permissions"]["notes"]["values"], json!(["n1"]));
    assert!(!me.to_string().contains(&bob) && !me.to_string().contains(&jane));
    // The owner sees the names, never the codes again.
    let (s, p) = alice.call(Method::GET, &format!("/permissions/{perm_id}"), Some(&token), None).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["data"]["attributes"]["code_names"], json!(["bob", "jane"]));
    assert!(p["data"]["attributes"].get("codes").is_none());
    assert!(!p.to_string().contains(&bob));
    // A token's own permissions.
    let (s, me) = alice.call(Method::GET, "/permissions/self", Some(&token), None).await;
    assert_eq!(s, 200);
    assert_eq!(me["data"]["attributes"]["permissions"]["rule0"]["type"], "io.cozy.notes");
}

#[tokio::test]
async fn a_write_code_writes_only_its_documents() {
    let (_app, alice, token) = setup().await;
    let (_, codes) = create_link(&alice, &token, "codes=editor", link_body(notes_rule(&["GET", "PUT"], &["n1"]))).await;
    let code = codes["editor"].as_str().unwrap();
    let (_, doc) = alice.call(Method::GET, &format!("{NOTES}/n1"), Some(code), None).await;
    let (s, v) = alice
        .call(
            Method::PUT,
            &format!("{NOTES}/n1"),
            Some(code),
            Some(json!({"_rev": doc["_rev"], "title": "Groceries!"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(alice.call(Method::GET, &format!("{NOTES}/n1"), Some(&token), None).await.1["title"], "Groceries!");
    assert_eq!(alice.call(Method::PUT, &format!("{NOTES}/n2"), Some(code), Some(json!({"title": "x"}))).await.0, 403);
    assert_eq!(
        alice.call(Method::DELETE, &format!("{NOTES}/n1?rev={}", v["rev"].as_str().unwrap()), Some(code), None).await.0,
        403
    );
}

#[tokio::test]
async fn links_must_stay_within_the_callers_permissions() {
    let (app, alice, _) = setup().await;
    let narrow = app.token(&alice, "io.cozy.notes:GET:n1");
    let cases = [
        (notes_rule(&["GET"], &["n2"]), 403),
        (notes_rule(&["GET", "PUT"], &["n1"]), 403),
        (notes_rule(&["GET"], &[]), 403),
        (json!({"r": {"type": "io.cozy.todos", "verbs": ["GET"]}}), 403),
        (json!({"r": {"type": "io.cozy.permissions", "verbs": ["GET"]}}), 400),
        (json!({"r": {"type": "io.cozy.notes", "verbs": ["STEAL"], "values": ["n1"]}}), 400),
        (json!({}), 400),
    ];
    for (rules, want) in cases {
        let (s, v) =
            alice.call(Method::POST, "/permissions?codes=a", Some(&narrow), Some(link_body(rules.clone()))).await;
        assert_eq!(s, want, "{rules}: {v}");
        assert!(v["error"].is_string());
    }
    assert_eq!(
        alice
            .call(
                Method::POST,
                "/permissions?codes=a&ttl=soon",
                Some(&narrow),
                Some(link_body(notes_rule(&["GET"], &["n1"])))
            )
            .await
            .0,
        400
    );
    assert_eq!(
        alice.call(Method::POST, "/permissions?codes=a", None, Some(link_body(notes_rule(&["GET"], &["n1"])))).await.0,
        401
    );
    let (s, _) = alice
        .call(Method::POST, "/permissions?codes=a", Some(&narrow), Some(link_body(notes_rule(&["GET"], &["n1"]))))
        .await;
    assert_eq!(s, 200);
    // Someone else's link (not covered by the token) cannot be read, changed or revoked.
    let full = app.token(&alice, "io.cozy.notes");
    let (other, _) = create_link(&alice, &full, "codes=b", link_body(notes_rule(&["GET"], &["n2"]))).await;
    assert_eq!(alice.call(Method::GET, &format!("/permissions/{other}"), Some(&narrow), None).await.0, 403);
    assert_eq!(alice.call(Method::DELETE, &format!("/permissions/{other}"), Some(&narrow), None).await.0, 403);
    assert_eq!(alice.call(Method::PATCH, &format!("/permissions/{other}?codes=c"), Some(&narrow), None).await.0, 403);
    assert_eq!(alice.call(Method::GET, "/permissions/nope", Some(&full), None).await.0, 404);
}

#[tokio::test]
async fn unknown_expired_and_revoked_codes_get_the_same_401() {
    let (_app, alice, token) = setup().await;
    let (_, short) = create_link(&alice, &token, "codes=a&ttl=1s", link_body(notes_rule(&["GET"], &["n1"]))).await;
    let (revoked_id, revoked) = create_link(&alice, &token, "codes=a", link_body(notes_rule(&["GET"], &["n1"]))).await;
    let short = short["a"].as_str().unwrap().to_owned();
    let revoked = revoked["a"].as_str().unwrap().to_owned();
    let url = format!("{NOTES}/n1");
    assert_eq!(alice.call(Method::GET, &url, Some(&short), None).await.0, 200);
    assert_eq!(alice.call(Method::GET, &url, Some(&revoked), None).await.0, 200);

    let (s, _) = alice.call(Method::DELETE, &format!("/permissions/{revoked_id}"), Some(&token), None).await;
    assert_eq!(s, 204);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let body = |code: String| {
        let alice = &alice;
        let url = url.clone();
        async move {
            let resp = alice.req(Method::GET, &url, Some(&code)).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let unknown = body("0123456789abcdef0123456789abcdef01234567".into()).await;
    let expired = body(short.clone()).await;
    let gone = body(revoked.clone()).await;
    assert_eq!(unknown.0, 401);
    assert_eq!(unknown, expired, "expired looks unknown");
    assert_eq!(unknown, gone, "revoked looks unknown");
    assert!(!expired.1.contains(&short));
    // /permissions/self too.
    assert_eq!(alice.call(Method::GET, "/permissions/self", Some(&short), None).await.0, 401);
    // The owner can still see the expired link, and extend it.
    let (s, v) = alice.call(Method::GET, "/permissions/doctype/io.cozy.notes/shared-by-link", Some(&token), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "the revoked one is gone: {v}");
    let expired_id = v["data"][0]["id"].as_str().unwrap().to_owned();
    let (s, v) = alice.call(Method::PATCH, &format!("/permissions/{expired_id}?ttl=1h"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(alice.call(Method::GET, &url, Some(&short), None).await.0, 200);
}

#[tokio::test]
async fn codes_are_added_and_removed_and_stop_at_once() {
    let (_app, alice, token) = setup().await;
    let (id, codes) = create_link(&alice, &token, "codes=bob", link_body(notes_rule(&["GET"], &["n1"]))).await;
    let bob = codes["bob"].as_str().unwrap().to_owned();
    let (s, v) = alice.call(Method::PATCH, &format!("/permissions/{id}?codes=jane"), Some(&token), None).await;
    assert_eq!(s, 200, "{v}");
    let jane = v["data"]["attributes"]["codes"]["jane"].as_str().unwrap().to_owned();
    assert!(v["data"]["attributes"]["codes"].get("bob").is_none(), "existing codes are not shown again");
    assert_eq!(v["data"]["attributes"]["code_names"], json!(["bob", "jane"]));
    assert_eq!(alice.call(Method::GET, &format!("{NOTES}/n1"), Some(&jane), None).await.0, 200);
    let body = json!({"data": {"attributes": {"remove_codes": ["bob"]}}});
    let (s, v) = alice.call(Method::PATCH, &format!("/permissions/{id}"), Some(&token), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(alice.call(Method::GET, &format!("{NOTES}/n1"), Some(&bob), None).await.0, 401);
    assert_eq!(alice.call(Method::GET, &format!("{NOTES}/n1"), Some(&jane), None).await.0, 200);
    // An expiry in the past stops the link; removing it restores it.
    let past = json!({"data": {"attributes": {"expires_at": "2001-01-01T00:00:00Z"}}});
    assert_eq!(alice.call(Method::PATCH, &format!("/permissions/{id}"), Some(&token), Some(past)).await.0, 200);
    assert_eq!(alice.call(Method::GET, &format!("{NOTES}/n1"), Some(&jane), None).await.0, 401);
    let none = json!({"data": {"attributes": {"expires_at": ""}}});
    assert_eq!(alice.call(Method::PATCH, &format!("/permissions/{id}"), Some(&token), Some(none)).await.0, 200);
    assert_eq!(alice.call(Method::GET, &format!("{NOTES}/n1"), Some(&jane), None).await.0, 200);
    // Deleting the link: every code stops.
    assert_eq!(alice.call(Method::DELETE, &format!("/permissions/{id}"), Some(&token), None).await.0, 204);
    assert_eq!(alice.call(Method::GET, &format!("{NOTES}/n1"), Some(&jane), None).await.0, 401);
    assert_eq!(alice.call(Method::GET, &format!("/permissions/{id}"), Some(&token), None).await.0, 404);
}

#[tokio::test]
async fn a_password_protected_link_needs_the_password_cookie() {
    let (_app, alice, token) = setup().await;
    let mut body = link_body(notes_rule(&["GET"], &["n1"]));
    body["data"]["attributes"]["password"] = json!("open sesame");
    let (s, v) = alice.call(Method::POST, "/permissions?codes=bob", Some(&token), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"]["attributes"]["password"], true, "only whether there is one");
    assert!(!v.to_string().contains("open sesame") && !v.to_string().contains("argon2"));
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    let code = v["data"]["attributes"]["codes"]["bob"].as_str().unwrap().to_owned();

    let b = browser();
    let get = |b: &reqwest::Client| b.get(alice.url(&format!("{NOTES}/n1"))).bearer_auth(&code).send();
    let resp = get(&b).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await.unwrap().contains("password"));
    let wrong = b
        .post(alice.url("/auth/share-by-link/password"))
        .form(&[("perm_id", id.as_str()), ("password", "guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    assert_eq!(get(&b).await.unwrap().status(), 401);
    // From the page's form, a wrong password goes back to the page, which says so.
    let wrong = b
        .post(alice.url("/auth/share-by-link/password"))
        .form(&[("perm_id", id.as_str()), ("password", "guess"), ("redirect", "/public/notes")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 303);
    assert_eq!(wrong.headers()["location"], "/public/notes?wrong_password=1");
    assert!(wrong.headers().get("set-cookie").is_none());
    assert_eq!(get(&b).await.unwrap().status(), 401);
    let right = b
        .post(alice.url("/auth/share-by-link/password"))
        .form(&[("perm_id", id.as_str()), ("password", "open sesame")])
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let cookie = right.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    assert_eq!(get(&b).await.unwrap().status(), 200);
    // Another browser without the cookie still needs it.
    assert_eq!(get(&browser()).await.unwrap().status(), 401);
    // Changing the password logs every browser out.
    let change = json!({"data": {"attributes": {"password": "new secret"}}});
    assert_eq!(alice.call(Method::PATCH, &format!("/permissions/{id}"), Some(&token), Some(change)).await.0, 200);
    assert_eq!(get(&b).await.unwrap().status(), 401);
}

#[tokio::test]
async fn a_public_page_swaps_the_code_in_its_url_for_a_cookie() {
    let (_app, alice, token) = setup().await;
    let (_, codes) = create_link(&alice, &token, "codes=bob", link_body(notes_rule(&["GET"], &["n1"]))).await;
    let code = codes["bob"].as_str().unwrap();
    let b = browser();
    let resp = b.get(alice.url(&format!("/public/notes?view=list&sharecode={code}"))).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()["location"], "/public/notes?view=list", "the code leaves the URL");
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("hearth_sharecode=") && cookie.contains("HttpOnly"), "{cookie}");
    let page = b.get(alice.url("/public/notes?view=list")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
    let html = page.text().await.unwrap();
    assert!(html.contains("Groceries") && !html.contains("Diary"), "{html}");
    assert!(!html.contains(code));
    // The cookie reads (only reads) through /data.
    assert_eq!(b.get(alice.url(&format!("{NOTES}/n1"))).send().await.unwrap().status(), 200);
    assert_eq!(b.get(alice.url(&format!("{NOTES}/n2"))).send().await.unwrap().status(), 403);
    let put = b.put(alice.url(&format!("{NOTES}/n1"))).json(&json!({"title": "x"})).send().await.unwrap();
    assert_eq!(put.status(), 401, "a cookie never authorises writes");
    // A bad code on a page gets the page version of the same 401, and no cookie.
    let resp = browser().get(alice.url("/public/notes?sharecode=nope")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn links_on_a_doctype_are_listed_by_pages() {
    let (app, alice, token) = setup().await;
    for i in 0..3 {
        create_link(&alice, &token, &format!("codes=c{i}"), link_body(notes_rule(&["GET"], &["n1"]))).await;
    }
    create_link(
        &alice,
        &app.token(&alice, "io.cozy.todos"),
        "codes=t",
        link_body(json!({"t": {"type": "io.cozy.todos"}})),
    )
    .await;
    let url = "/permissions/doctype/io.cozy.notes/shared-by-link";
    let (s, p1) = alice.call(Method::GET, &format!("{url}?page[limit]=2"), Some(&token), None).await;
    assert_eq!(s, 200, "{p1}");
    assert_eq!(p1["data"].as_array().unwrap().len(), 2);
    let next = p1["links"]["next"].as_str().unwrap().to_owned();
    let (_, p2) = alice.call(Method::GET, &next, Some(&token), None).await;
    assert_eq!(p2["data"].as_array().unwrap().len(), 1);
    assert!(p2["links"]["next"].is_null());
    assert!(!p1.to_string().contains("\"codes\""), "listings never show codes");
    // Only with GET on the whole doctype.
    let narrow = app.token(&alice, "io.cozy.notes:GET:n1");
    assert_eq!(alice.call(Method::GET, url, Some(&narrow), None).await.0, 403);
}

fn client_from(ip: Ipv4Addr, domain: &str) -> reqwest::Client {
    let host = domain.split(':').next().unwrap();
    reqwest::Client::builder()
        .local_address(IpAddr::V4(ip))
        .resolve(host, SocketAddr::from(([127, 0, 0, 1], 0)))
        .no_proxy()
        .build()
        .unwrap()
}

#[tokio::test]
async fn failed_codes_are_rate_limited_per_address_without_slowing_valid_codes() {
    let app = spawn_app_with(|c| c.links.max_failures = 5).await;
    let alice = app.add_instance("alice", "x");
    let token = app.token(&alice, "io.cozy.notes");
    put_note(&alice, &token, "n1", "Groceries").await;
    let (_, codes) = create_link(&alice, &token, "codes=bob", link_body(notes_rule(&["GET"], &["n1"]))).await;
    let code = codes["bob"].as_str().unwrap();
    let url = alice.url(&format!("{NOTES}/n1"));
    let here = client_from(Ipv4Addr::new(127, 0, 0, 1), &alice.domain);
    let status = |c: &reqwest::Client, code: String| {
        let req = c.get(&url).bearer_auth(code);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // Valid codes never count.
    for _ in 0..20 {
        assert_eq!(status(&here, code.to_owned()).await, 200);
    }
    for i in 0..5 {
        assert_eq!(status(&here, format!("guess{i}")).await, 401);
    }
    assert_eq!(status(&here, "guess5".into()).await, 429);
    let resp = here.get(&url).bearer_auth("guess6").send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    // The limited address waits even with the right code (else guessing would go on).
    assert_eq!(status(&here, code.to_owned()).await, 429);
    // Another address is not affected.
    let elsewhere = client_from(Ipv4Addr::new(127, 0, 0, 2), &alice.domain);
    assert_eq!(status(&elsewhere, code.to_owned()).await, 200);
    assert_eq!(status(&elsewhere, "guess".into()).await, 401);
    // App tokens are not sharecodes: never limited by them.
    assert_eq!(status(&here, token.clone()).await, 200);
}
