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
    service::invitation_link(&app.sharing, &inst, &s, hearth::sharing::MemberIndex(index)).unwrap()
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
    let digest = service::pending_digest(&app.sharing, &inst, &id).await.expect("a pending request");
    service::accept(&app.sharing, &inst, &id, state, &digest).await.expect("accept");
}

pub fn peer_token(s: &Sharing, index: usize) -> String {
    s.members[index].outbound.as_ref().expect("credentials").access_token.clone()
}

/// A rule on `doctype` with the given `add`, `update` and `remove`.
pub fn rule_with(doctype: &str, selector: Option<&str>, values: &[&str], policy: (&str, &str, &str)) -> Value {
    let mut r = json!({"title": "shared", "doctype": doctype, "values": values,
        "add": policy.0, "update": policy.1, "remove": policy.2});
    if let Some(s) = selector {
        r["selector"] = json!(s);
    }
    r
}

/// Sets up a sharing from `owner` with `rules`, every recipient accepting (read-only for
/// those marked `true`); returns its id.
pub async fn share(
    owner_app: &TestApp,
    owner: &TestInstance,
    rules: Value,
    recipients: &[(&TestInstance, bool)],
) -> String {
    let token = owner_app.token(owner, "io.cozy.notes io.cozy.todos");
    let inline = |ro: bool| -> Vec<Value> {
        recipients
            .iter()
            .filter(|(_, r)| *r == ro)
            .map(|(r, _)| json!({"instance": format!("http://{}", r.domain)}))
            .collect()
    };
    let id = create_sharing(owner, &token, rules, json!(inline(false)), json!(inline(true))).await;
    let s = load(owner_app, owner, &id).await;
    for (i, m) in s.members.iter().enumerate().skip(1) {
        let who =
            recipients.iter().find(|(r, _)| m.instance.as_deref() == Some(&format!("http://{}", r.domain))).unwrap().0;
        answer_invitation(&link(owner_app, owner, &id, i).await, who, "accept").await;
    }
    id
}

/// A document's id on member `member`'s instance (ids travel XOR-ed with the member's key;
/// the same function maps the member's ids back).
pub async fn id_on(owner_app: &TestApp, owner: &TestInstance, sid: &str, member: usize, id: &str) -> String {
    let s = load(owner_app, owner, sid).await;
    let key = hearth::sharing::xor::parse_key(s.members[member].xor_key.as_deref().unwrap()).unwrap();
    hearth::sharing::xor::xor_id(id, &key)
}

/// The winning revision and body of a document in an instance's store (`None`: absent or
/// deleted).
pub async fn winner(app: &TestApp, inst: &TestInstance, doctype: &str, id: &str) -> Option<(String, Value)> {
    use hearth::store::{DocId, Doctype, GetOptions, StoreError};
    let store = app.instance(&inst.domain).store.clone();
    match store.get(&Doctype::parse(doctype).unwrap(), &DocId::parse(id).unwrap(), GetOptions::default()).await {
        Ok(v) => Some((v.doc.rev.to_string(), Value::Object(v.doc.body.to_map().expect("a stored body")))),
        Err(StoreError::NotFound | StoreError::Deleted) => None,
        Err(e) => panic!("{e}"),
    }
}

/// Every leaf revision of a document in an instance's store (empty when it has none).
pub async fn leaves(app: &TestApp, inst: &TestInstance, doctype: &str, id: &str) -> Vec<String> {
    use hearth::store::{DocId, Doctype};
    let store = app.instance(&inst.domain).store.clone();
    let id = DocId::parse(id).unwrap();
    let found = store.doc_leaves(&Doctype::parse(doctype).unwrap(), std::slice::from_ref(&id)).await.unwrap();
    found.get(&id).map(|l| l.iter().map(|(r, _)| r.to_string()).collect()).unwrap_or_default()
}

/// `PUT /data/:doctype/:id`; returns the new revision.
pub async fn put_doc(inst: &TestInstance, token: &str, doctype: &str, id: &str, body: Value) -> String {
    let (s, v) = inst.call(Method::PUT, &format!("/data/{doctype}/{id}"), Some(token), Some(body)).await;
    assert_eq!(s, 201, "{v}");
    v["rev"].as_str().unwrap().to_owned()
}

/// The `replication` state of member `member` in `GET /sharings/:id/status` (Null when this
/// instance does not replicate to it).
pub async fn replication_state(inst: &TestInstance, token: &str, sid: &str, member: usize) -> Value {
    let (s, v) = inst.call(Method::GET, &format!("/sharings/{sid}/status"), Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    v["data"]["attributes"]["members"][member]["replication"].clone()
}

/// Shares a new folder `Team` of `owner` (`token` covering `io.cozy.files`) with `recipient`,
/// `sync` both ways, and has the recipient accept: the folder's id and the sharing's id.
pub async fn share_team_folder(
    app: &TestApp,
    owner: &TestInstance,
    token: &str,
    recipient: &TestInstance,
) -> (String, String) {
    let (s, v) =
        owner.call(Method::POST, "/files/io.cozy.files.root-dir?Type=directory&Name=Team", Some(token), None).await;
    assert_eq!(s, 201, "{v}");
    let team = v["data"]["id"].as_str().unwrap().to_owned();
    let rule = json!({"title": "Team", "doctype": "io.cozy.files", "values": [team], "add": "sync", "update": "sync", "remove": "sync"});
    let to = json!([{"instance": format!("http://{}", recipient.domain)}]);
    let sid = create_sharing(owner, token, json!([rule]), to, json!([])).await;
    answer_invitation(&link(app, owner, &sid, 1).await, recipient, "accept").await;
    (team, sid)
}

/// The id of the shared folder on `member` (`token` covering `io.cozy.files`), once it has
/// reached it under "Shared with me/Team".
pub async fn shared_team(member: &TestInstance, token: &str) -> String {
    let team_path = format!("/files/metadata?Path={}", super::bytes::enc("/Shared with me/Team"));
    super::eventually(90, "the shared folder reaches the member", || async {
        member.call(Method::GET, &team_path, Some(token), None).await.0 == 200
    })
    .await;
    member.call(Method::GET, &team_path, Some(token), None).await.1["data"]["id"].as_str().unwrap().to_owned()
}
