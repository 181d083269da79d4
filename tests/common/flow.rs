//! The sharing flow as tests drive it: create a sharing, get invitation links, and answer an
//! invitation the way a person does in a browser (discovery form, login, Accept/Refuse).
#![allow(dead_code)]

use hearth::sharing::{self, service, Sharing, SharingId};
use reqwest::Method;
use serde_json::{json, Value};

use super::{browser, TestApp, TestInstance};

pub const PASS: &str = "correct horse";

pub fn notes_rule(values: &[&str]) -> Value {
    json!({"title": "Notes", "doctype": "io.cozy.notes", "values": values, "add": "sync", "update": "sync", "remove": "sync"})
}

pub async fn create_sharing(
    owner: &TestInstance,
    token: &str,
    rules: Value,
    recipients: Value,
    read_only: Value,
) -> String {
    let body = json!({"data": {"type": "io.cozy.sharings",
        "attributes": {"description": "holiday notes", "rules": rules},
        "relationships": {"recipients": {"data": recipients}, "read_only_recipients": {"data": read_only}}}});
    let (s, v) = owner.call(Method::POST, "/sharings/", Some(token), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    v["data"]["id"].as_str().unwrap().to_owned()
}

pub async fn load(app: &TestApp, inst: &TestInstance, id: &str) -> Sharing {
    sharing::load(app.instance(&inst.domain).store.as_ref(), &SharingId::parse(id).unwrap()).await.unwrap().unwrap()
}

pub async fn link(app: &TestApp, owner: &TestInstance, id: &str, index: usize) -> String {
    let inst = app.instance(&owner.domain);
    let s = sharing::load(inst.store.as_ref(), &SharingId::parse(id).unwrap()).await.unwrap().unwrap();
    service::invitation_link(&app.services, &inst, &s, index).unwrap()
}

pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap_or_else(|| panic!("no {name} in {html}")) + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

pub fn state_of(link: &str) -> String {
    link.split("state=").nth(1).unwrap().to_owned()
}

/// What a person does in a browser: opens the invitation, types their instance address, logs
/// in on their instance, and presses Accept or Refuse. Returns the final page.
pub async fn answer_invitation(link: &str, recipient: &TestInstance, action: &str) -> String {
    let b = browser();
    let page = b.get(link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"url\""), "{html}");
    let state = hidden(&html, "state");
    let action_url = link.split("?").next().unwrap().to_owned();
    let resp = b
        .post(&action_url)
        .form(&[("state", state.as_str()), ("url", &format!("http://{}", recipient.domain))])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302, "{}", resp.text().await.unwrap());
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    let authorize = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(authorize.starts_with(&format!("http://{}/auth/authorize/sharing?", recipient.domain)), "{authorize}");
    let html = log_in_and_open(&b, recipient, &authorize).await;
    assert!(html.contains("holiday notes") && html.contains("id=\"accept\""), "{html}");
    let form = [
        ("sharing_id", hidden(&html, "sharing_id")),
        ("state", hidden(&html, "state")),
        ("csrf_token", hidden(&html, "csrf_token")),
        ("action", action.to_owned()),
        ("digest", hidden(&html, "digest")),
    ];
    // Without the CSRF token the form is refused.
    let forged_form =
        [form[0].clone(), form[1].clone(), ("csrf_token", "x".to_owned()), form[3].clone(), form[4].clone()];
    let forged =
        b.post(format!("http://{}/auth/authorize/sharing", recipient.domain)).form(&forged_form).send().await.unwrap();
    assert_eq!(forged.status(), 403);
    let done = b.post(format!("http://{}/auth/authorize/sharing", recipient.domain)).form(&form).send().await.unwrap();
    let status = done.status();
    let text = done.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    text
}

/// Opens the recipient's acceptance page: sent to its login page first, logs in with
/// [`PASS`], comes back. Returns the acceptance page.
pub async fn log_in_and_open(b: &reqwest::Client, recipient: &TestInstance, authorize: &str) -> String {
    let resp = b.get(authorize).send().await.unwrap();
    assert_eq!(resp.status(), 302, "not logged in yet: sent to the login page");
    let login = resp.headers()["location"].to_str().unwrap().to_owned();
    let login_page = b.get(format!("http://{}{login}", recipient.domain)).send().await.unwrap().text().await.unwrap();
    let redirect = hidden(&login_page, "redirect").replace("&amp;", "&");
    let resp = b
        .post(format!("http://{}/auth/login", recipient.domain))
        .form(&[("passphrase", PASS), ("redirect", &redirect)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let back = resp.headers()["location"].to_str().unwrap().to_owned();
    let page = b.get(format!("http://{}{back}", recipient.domain)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    page.text().await.unwrap()
}

/// The acceptance a recipient's owner makes on the page, through the service layer: with the
/// digest of the request as stored (what the page would show).
pub async fn accept_request(app: &TestApp, recipient: &TestInstance, id: &str, state: &str) {
    let inst = app.instance(&recipient.domain);
    let id = SharingId::parse(id).unwrap();
    let digest = service::pending_digest(&app.services, &inst, &id).await.expect("a pending request");
    service::accept(&app.services, &inst, &id, state, &digest).await.expect("accept");
}

pub fn peer_token(s: &Sharing, index: usize) -> String {
    s.members[index].outbound.as_ref().expect("credentials").access_token.clone()
}
