//! Canary scan (security reference T3): during a full flow — a sharing with a preview accepted
//! in a browser, links with codes and a password, invitation links, a re-share, revocations,
//! failed guesses — every log line of the process (a global tracing subscriber writing to a
//! buffer, at TRACE) and every response body are captured; then no issued sharecode, preview
//! code, invitation code, state, token, client secret, session or password may appear in any
//! log line, and in a response body only if the request itself carried it (a page echoing its
//! own link's secret into its form) or if that response is the one that issues it, once.
//!
//! This file holds a single test: the subscriber is global to the test binary. Captured: every
//! target at TRACE (hearth, actix, hyper, reqwest, rustls...), except `cookie_store`, the test
//! browsers' cookie jar.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{browser, spawn_app, TestApp, TestInstance};
use hearth::sharing::{self, service, Sharing, SharingId};
use reqwest::{Client, Method, RequestBuilder};
use serde_json::{json, Value};

const PASS: &str = "correct horse battery";
const LINK_PASSWORD: &str = "open sesame 42";
const WRONG_PASSWORD: &str = "wrong guess 17";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Buf {
        self.clone()
    }
}

struct Exchange {
    request: String,
    status: u16,
    body: String,
    issues: bool,
}

/// Sends requests and keeps every exchange.
#[derive(Default)]
struct Recorder {
    exchanges: Mutex<Vec<Exchange>>,
    secrets: Mutex<BTreeSet<String>>,
}

impl Recorder {
    async fn send(&self, rb: RequestBuilder, issues: bool) -> (u16, reqwest::header::HeaderMap, String) {
        let (client, req) = rb.build_split();
        let req = req.expect("request");
        let body = req.body().and_then(|b| b.as_bytes()).map(|b| String::from_utf8_lossy(b).into_owned());
        let request = format!("{} {} {:?} {}", req.method(), req.url(), req.headers(), body.unwrap_or_default());
        let resp = client.execute(req).await.expect("send");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        for c in headers.get_all("set-cookie") {
            // Cookie values (sessions, link passwords) are secrets too.
            if let Some(v) = c.to_str().ok().and_then(|c| c.split(';').next()).and_then(|kv| kv.split_once('=')) {
                self.secret(v.1);
            }
        }
        let body = resp.text().await.expect("body");
        self.exchanges.lock().unwrap().push(Exchange { request, status, body: body.clone(), issues });
        (status, headers, body)
    }

    async fn call(
        &self,
        client: &Client,
        method: Method,
        url: String,
        token: Option<&str>,
        body: Option<Value>,
        issues: bool,
    ) -> (u16, Value) {
        let mut rb = client.request(method, url);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let (status, _, text) = self.send(rb, issues).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn secret(&self, s: &str) {
        if s.len() >= 8 {
            self.secrets.lock().unwrap().insert(s.to_owned());
        }
    }
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no {name} in {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

fn query_param(url: &str, name: &str) -> String {
    url::Url::parse(url).unwrap().query_pairs().find(|(k, _)| k == name).unwrap().1.into_owned()
}

/// Every credential stored in the sharings of an instance (OAuth tokens and client secrets,
/// and on the owner the states and request tokens of its members).
async fn stored_secrets(rec: &Recorder, app: &TestApp, inst: &TestInstance) {
    let i = app.instance(&inst.domain);
    for s in sharing::list(i.store.as_ref()).await.unwrap() {
        for (index, m) in s.members.iter().enumerate() {
            if let Some(c) = &m.outbound {
                for v in [&c.client_secret, &c.access_token, &c.refresh_token] {
                    rec.secret(v);
                }
            }
            if let Some(state) = service::member_state(&i, &s, hearth::sharing::MemberIndex(index)) {
                rec.secret(&state);
            }
            if let Some(token) = hearth::sharing::request::request_token(&i, &s, hearth::sharing::MemberIndex(index)) {
                rec.secret(&token);
            }
        }
    }
}

/// A person in a browser from the discovery page on: types their address, logs in on their
/// instance, presses Accept.
async fn finish_in_browser(rec: &Recorder, b: &Client, html: &str, action: &str, fields: &[&str], who: &TestInstance) {
    let mut form: Vec<(String, String)> = fields.iter().map(|f| (f.to_string(), hidden(html, f))).collect();
    form.push(("url".into(), format!("http://{}", who.domain)));
    let (s, h, _) = rec.send(b.post(action).form(&form), false).await;
    assert_eq!(s, 302);
    let authorize = h["location"].to_str().unwrap().to_owned();
    let (s, h, _) = rec.send(b.get(&authorize), false).await;
    assert_eq!(s, 302);
    let login = h["location"].to_str().unwrap().to_owned();
    let (_, _, page) = rec.send(b.get(format!("http://{}{login}", who.domain)), false).await;
    let redirect = hidden(&page, "redirect").replace("&amp;", "&");
    let (s, h, _) = rec
        .send(
            b.post(format!("http://{}/auth/login", who.domain)).form(&[("passphrase", PASS), ("redirect", &redirect)]),
            false,
        )
        .await;
    assert_eq!(s, 303);
    let back = h["location"].to_str().unwrap().to_owned();
    let (_, _, html) = rec.send(b.get(format!("http://{}{back}", who.domain)), false).await;
    let form = [
        ("sharing_id", hidden(&html, "sharing_id")),
        ("state", hidden(&html, "state")),
        ("csrf_token", hidden(&html, "csrf_token")),
        ("action", "accept".to_owned()),
        ("digest", hidden(&html, "digest")),
    ];
    let (s, _, text) =
        rec.send(b.post(format!("http://{}/auth/authorize/sharing", who.domain)).form(&form), false).await;
    assert_eq!(s, 200, "{text}");
}

async fn load(app: &TestApp, inst: &TestInstance, id: &str) -> Sharing {
    sharing::load(app.instance(&inst.domain).store.as_ref(), &SharingId::parse(id).unwrap()).await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_or_a_response_that_should_not_carry_it() {
    let logs = Buf::default();
    tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        // Everything, except the test browsers' own cookie jar (a dev-dependency hearth never
        // uses), which logs the cookies it stores.
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace,cookie_store=off"))
        .init();
    tracing::info!("capture started");

    let rec = Recorder::default();
    for s in [PASS, LINK_PASSWORD, WRONG_PASSWORD] {
        rec.secret(s);
    }
    let one = spawn_app().await;
    let two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let [bob, carol, dave] = ["bob", "carol", "dave"].map(|n| two.add_instance(n, PASS));
    let token = one.token(&alice, "io.cozy.notes");
    rec.secret(&token);
    let api = browser();
    let data = |path: &str| alice.url(&format!("/data/io.cozy.notes/{path}"));
    for (id, title) in [("n1", "Groceries"), ("n2", "Diary")] {
        rec.call(&api, Method::PUT, data(id), Some(&token), Some(json!({"title": title})), false).await;
    }

    // 1. A sharing with a preview, accepted by bob in a browser.
    let body = json!({"data": {"type": "io.cozy.sharings", "attributes": {"description": "holiday notes",
        "preview_path": "/preview", "rules": [{"title": "Notes", "doctype": "io.cozy.notes", "values": ["n1"],
        "add": "sync", "update": "sync", "remove": "sync"}]},
        "relationships": {"recipients": {"data": [{"email": "bob@example.net"}]}}}});
    let (s, v) = rec.call(&api, Method::POST, alice.url("/sharings/"), Some(&token), Some(body), false).await;
    assert_eq!(s, 201, "{v}");
    let id = v["data"]["id"].as_str().unwrap().to_owned();
    let inst = one.instance(&alice.domain);
    let preview =
        service::invitation_link(&one.sharing, &inst, &load(&one, &alice, &id).await, hearth::sharing::MemberIndex(1))
            .unwrap();
    let preview_code = query_param(&preview, "sharecode");
    rec.secret(&preview_code);
    stored_secrets(&rec, &one, &alice).await;
    let b = browser();
    let (s, _, _) = rec.send(b.get(&preview), false).await;
    assert_eq!(s, 302);
    rec.send(b.get(alice.url("/public/preview")), false).await;
    rec.send(b.get(data("n1")), false).await;
    let discovery = alice.url(&format!("/sharings/{id}/discovery"));
    let (_, _, html) = rec.send(b.get(&discovery), false).await;
    finish_in_browser(&rec, &b, &html, &discovery, &[], &bob).await;
    rec.call(&api, Method::GET, alice.url("/permissions/self"), Some(&preview_code), None, false).await;

    // 2. Links: codes, a password, changes, a public page, revocation, failed guesses.
    let link = json!({"data": {"type": "io.cozy.permissions", "attributes": {"password": LINK_PASSWORD,
        "permissions": {"n": {"type": "io.cozy.notes", "verbs": ["GET"], "values": ["n1"]}}}}});
    let (s, v) = rec
        .call(&api, Method::POST, alice.url("/permissions?codes=bob,jane&ttl=1h"), Some(&token), Some(link), true)
        .await;
    assert_eq!(s, 200, "{v}");
    let perm = v["data"]["id"].as_str().unwrap().to_owned();
    let codes: Vec<String> =
        ["bob", "jane"].iter().map(|n| v["data"]["attributes"]["codes"][n].as_str().unwrap().to_owned()).collect();
    codes.iter().for_each(|c| rec.secret(c));
    let lb = browser();
    assert_eq!(rec.call(&lb, Method::GET, data("n1"), Some(&codes[0]), None, false).await.0, 401);
    let pw = |p: &str| {
        lb.post(alice.url("/auth/share-by-link/password")).form(&[("perm_id", perm.as_str()), ("password", p)])
    };
    assert_eq!(rec.send(pw(WRONG_PASSWORD), false).await.0, 403);
    assert_eq!(rec.send(pw(LINK_PASSWORD), false).await.0, 200);
    assert_eq!(rec.call(&lb, Method::GET, data("n1"), Some(&codes[0]), None, false).await.0, 200);
    rec.call(&lb, Method::GET, alice.url("/permissions/self"), Some(&codes[1]), None, false).await;
    assert_eq!(rec.call(&lb, Method::PUT, data("n1"), Some(&codes[0]), Some(json!({"x": 1})), false).await.0, 403);
    let (s, v) = rec
        .call(&api, Method::PATCH, alice.url(&format!("/permissions/{perm}?codes=extra")), Some(&token), None, true)
        .await;
    assert_eq!(s, 200, "{v}");
    let extra = v["data"]["attributes"]["codes"]["extra"].as_str().unwrap().to_owned();
    rec.secret(&extra);
    let patch = json!({"data": {"attributes": {"remove_codes": ["jane"], "password": ""}}});
    rec.call(&api, Method::PATCH, alice.url(&format!("/permissions/{perm}")), Some(&token), Some(patch), false).await;
    assert_eq!(rec.call(&api, Method::GET, data("n1"), Some(&codes[1]), None, false).await.0, 401);
    let pb = browser();
    let (s, _, _) = rec.send(pb.get(alice.url(&format!("/public/notes?sharecode={extra}"))), false).await;
    assert_eq!(s, 302);
    rec.send(pb.get(alice.url("/public/notes")), false).await;
    rec.call(&api, Method::GET, alice.url(&format!("/permissions/{perm}")), Some(&token), None, false).await;
    rec.call(
        &api,
        Method::GET,
        alice.url("/permissions/doctype/io.cozy.notes/shared-by-link"),
        Some(&token),
        None,
        false,
    )
    .await;
    rec.call(&api, Method::DELETE, alice.url(&format!("/permissions/{perm}")), Some(&token), None, false).await;
    assert_eq!(rec.call(&api, Method::GET, data("n1"), Some(&extra), None, false).await.0, 401);
    rec.send(browser().get(alice.url(&format!("/public/notes?sharecode={}", codes[0]))), false).await;

    // 3. Invitation links: carol in a browser, a re-share by carol, dave through it.
    let body = json!({"permissions": ["read", "share"], "max_accepted_users": 3});
    let invitations = alice.url(&format!("/sharings/{id}/invitations"));
    let (s, v) = rec.call(&api, Method::POST, invitations.clone(), Some(&token), Some(body), true).await;
    assert_eq!(s, 201, "{v}");
    let link1 = v["data"]["attributes"]["link"].as_str().unwrap().to_owned();
    let code1 = query_param(&link1, "invitation");
    rec.secret(&code1);
    let cb = browser();
    let (_, _, html) = rec.send(cb.get(&link1), false).await;
    finish_in_browser(&rec, &cb, &html, &discovery, &["invitation"], &carol).await;
    rec.call(&api, Method::GET, alice.url(&format!("/invitations/{code1}")), None, None, false).await;
    stored_secrets(&rec, &one, &alice).await;
    stored_secrets(&rec, &two, &carol).await;
    let carol_app = two.token(&carol, "io.cozy.notes");
    rec.secret(&carol_app);
    let carol_api = carol.url(&format!("/sharings/{id}/invitations"));
    let (s, _) = rec
        .call(&api, Method::POST, carol_api.clone(), Some(&carol_app), Some(json!({"permissions": ["write"]})), false)
        .await;
    assert_eq!(s, 400);
    let (s, v) =
        rec.call(&api, Method::POST, carol_api, Some(&carol_app), Some(json!({"permissions": ["read"]})), true).await;
    assert_eq!(s, 201, "{v}");
    let link2 = v["data"]["attributes"]["link"].as_str().unwrap().to_owned();
    let code2 = query_param(&link2, "invitation");
    rec.secret(&code2);
    let form = [("invitation", code2.as_str()), ("url", &format!("http://{}", dave.domain))];
    let (s, _, text) =
        rec.send(browser().post(&discovery).header("Accept", "application/json").form(&form), true).await;
    assert_eq!(s, 200, "{text}");
    let redirect: Value = serde_json::from_str(&text).unwrap();
    let state = query_param(redirect["redirect"].as_str().unwrap(), "state");
    rec.secret(&state);
    common::flow::accept_request(&two, &dave, &id, &state).await;
    stored_secrets(&rec, &one, &alice).await;
    stored_secrets(&rec, &two, &dave).await;
    stored_secrets(&rec, &two, &bob).await;
    rec.call(&api, Method::GET, invitations.clone(), Some(&token), None, false).await;
    rec.call(&api, Method::GET, alice.url("/sharings/?direction=outgoing"), Some(&token), None, false).await;
    rec.call(&api, Method::GET, alice.url(&format!("/sharings/{id}")), Some(&token), None, false).await;
    // Revoke carol: her re-share dies; the link with its members.
    let s = load(&one, &alice, &id).await;
    let carol_index =
        s.members.iter().position(|m| m.instance.as_deref() == Some(&format!("http://{}", carol.domain))).unwrap();
    rec.call(
        &api,
        Method::DELETE,
        alice.url(&format!("/sharings/{id}/recipients/{carol_index}")),
        Some(&token),
        None,
        false,
    )
    .await;
    assert_eq!(
        rec.call(&api, Method::GET, alice.url(&format!("/invitations/{code2}")), None, None, false).await.0,
        404
    );
    let inv1 = s.invitations[0].id.clone();
    rec.call(&api, Method::DELETE, format!("{invitations}/{inv1}?revoke_members=true"), Some(&token), None, false)
        .await;
    let (s, _, _) = rec.send(browser().get(&link1), false).await;
    assert_eq!(s, 403);
    // The preview of a revoked member, an old token, guesses up to the rate limit.
    rec.call(&api, Method::DELETE, alice.url(&format!("/sharings/{id}/recipients/1")), Some(&token), None, false).await;
    assert_eq!(
        rec.call(&api, Method::GET, alice.url("/permissions/self"), Some(&preview_code), None, false).await.0,
        401
    );
    for i in 0..25 {
        rec.call(&api, Method::GET, data("n1"), Some(&format!("guess{i}")), None, false).await;
    }
    assert_eq!(rec.call(&api, Method::GET, data("n1"), Some(&codes[0]), None, false).await.0, 429);
    stored_secrets(&rec, &two, &bob).await;

    // Let the outbox deliver and the last log lines land.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let secrets = rec.secrets.lock().unwrap().clone();
    assert!(secrets.len() >= 15, "the flow issued secrets: {}", secrets.len());
    let log = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(log.contains("invitation link used") && log.contains("link permission created"), "logs were captured");
    let leaks: Vec<&str> = log.lines().filter(|l| secrets.iter().any(|s| l.contains(s.as_str()))).collect();
    let targets: BTreeSet<&str> = leaks.iter().filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert!(
        leaks.is_empty(),
        "secrets in {} log lines, targets {targets:?}; first: {}",
        leaks.len(),
        leaks.first().unwrap_or(&"")
    );
    let exchanges = rec.exchanges.lock().unwrap();
    let mut issued_in: Vec<(String, usize)> = Vec::new();
    for (i, ex) in exchanges.iter().enumerate() {
        for s in secrets.iter().filter(|s| ex.body.contains(s.as_str()) && !ex.request.contains(s.as_str())) {
            assert!(
                ex.issues && ex.status < 300,
                "a secret in a response that does not issue it: {} -> {} {}",
                ex.request,
                ex.status,
                ex.body
            );
            if let Some((_, first)) = issued_in.iter().find(|(x, _)| x == s) {
                panic!("a secret issued twice (exchanges {first} and {i}): {}", ex.request);
            }
            issued_in.push((s.clone(), i));
        }
    }
    assert!(exchanges.iter().any(|e| e.status >= 400), "error bodies were scanned too");
}
