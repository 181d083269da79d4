//! A shared folder seen through `/files`: what the folder-sharing tests ask of each instance
//! (an item's attributes, a download, the trash), and alice's `/Team` shared with members.

use reqwest::Method;
use serde_json::{json, Value};

use super::bytes::{enc, mkdir, upload};
use super::flow::{answer_invitation, create_sharing, link, load};
use super::{eventually, TestApp, TestInstance};

pub const ROOT: &str = "io.cozy.files.root-dir";
pub const FILES: &str = "io.cozy.files";
/// Where a member finds alice's `/Team` (the rule's title) once accepted.
pub const SHARED: &str = "/Shared with me/Team";
/// Seconds a test waits for the members to converge.
pub const WAIT: u64 = 90;

/// `GET /files/metadata?Path=`: the item's attributes, if there is one.
pub async fn attrs_at(i: &TestInstance, token: &str, path: &str) -> Option<Value> {
    let (s, v) = i.call(Method::GET, &format!("/files/metadata?Path={}", enc(path)), Some(token), None).await;
    (s == 200).then(|| v["data"].clone())
}

pub async fn id_at(i: &TestInstance, token: &str, path: &str) -> Option<String> {
    attrs_at(i, token, path).await.map(|d| d["id"].as_str().unwrap().to_owned())
}

/// `GET /files/download?Path=`: the status and the body.
pub async fn download(i: &TestInstance, token: &str, path: &str) -> (u16, Vec<u8>) {
    let resp = i.req(Method::GET, &format!("/files/download?Path={}", enc(path)), Some(token)).send().await.unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

/// The trash: (name, id) of each item, sorted by name.
pub async fn trash(i: &TestInstance, token: &str) -> Vec<(String, String)> {
    let (s, v) = i.call(Method::GET, "/files/trash?page%5Blimit%5D=1000", Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    let mut n: Vec<(String, String)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["attributes"]["name"].as_str().unwrap().to_owned(), d["id"].as_str().unwrap().to_owned()))
        .collect();
    n.sort();
    n
}

/// The names of the items in the trash, sorted.
pub async fn trash_names(i: &TestInstance, token: &str) -> Vec<String> {
    trash(i, token).await.into_iter().map(|(n, _)| n).collect()
}

/// `who` leaves sharing `sid` (`DELETE /sharings/:id/recipients/self`).
pub async fn leave(app: &TestApp, who: &TestInstance, sid: &str) {
    let t = app.token(who, "io.cozy.sharings");
    let (s, v) = who.call(Method::DELETE, &format!("/sharings/{sid}/recipients/self"), Some(&t), None).await;
    assert!(s == 200 || s == 204, "leave: {s} {v}");
}

/// The owner revokes sharing `sid` for everyone (`DELETE /sharings/:id/recipients`).
pub async fn revoke_all(app: &TestApp, owner: &TestInstance, sid: &str) {
    let t = app.token(owner, "io.cozy.sharings");
    let (s, v) = owner.call(Method::DELETE, &format!("/sharings/{sid}/recipients"), Some(&t), None).await;
    assert!(s == 200 || s == 204, "revoke: {s} {v}");
}

/// The content objects of `i`'s files, after a sweep that takes every unnamed one at once.
pub async fn objects_after_sweep(app: &TestApp, i: &TestInstance) -> usize {
    let files = app.files.of(&app.instance(&i.domain)).await.unwrap();
    files.sweep(std::time::Duration::ZERO).await.unwrap();
    files.content.list("files/").await.unwrap().len()
}

/// Alice (on `owner`, with her token) shares her directory `dir` as "Team", sync both ways,
/// with every one of `members` (each on its app, with its token), who all accept: the
/// sharing's id.
pub async fn share(
    owner: (&TestApp, &TestInstance, &str),
    members: &[(&TestApp, &TestInstance, &str)],
    dir: &str,
) -> String {
    let (app, alice, ta) = owner;
    let rule =
        json!({"title": "Team", "doctype": FILES, "values": [dir], "add": "sync", "update": "sync", "remove": "sync"});
    let to: Vec<Value> = members.iter().map(|(_, m, _)| json!({"instance": format!("http://{}", m.domain)})).collect();
    let sid = create_sharing(alice, ta, json!([rule]), json!(to), json!([])).await;
    let s = load(app, alice, &sid).await;
    for (i, m) in s.members.iter().enumerate().skip(1) {
        let who =
            members.iter().find(|(_, r, _)| m.instance.as_deref() == Some(&format!("http://{}", r.domain))).unwrap().1;
        answer_invitation(&link(app, alice, &sid, i).await, who, "accept").await;
    }
    sid
}

/// Alice's `/Team` holding file `name` (`data`), shared with `members` ([`share`]), once the
/// file reached every member whole: (the directory's id, the file's id, the sharing's id).
pub async fn team(
    owner: (&TestApp, &TestInstance, &str),
    members: &[(&TestApp, &TestInstance, &str)],
    name: &str,
    data: &[u8],
) -> (String, String, String) {
    let (_, alice, ta) = owner;
    let dir = mkdir(alice, ta, ROOT, "Team").await;
    let file = upload(alice, ta, &dir, name, data).await;
    let sid = share(owner, members, &dir).await;
    let path = format!("{SHARED}/{name}");
    for (_, m, tm) in members {
        eventually(WAIT, &format!("{name} reaches {} whole", m.domain), || async {
            download(m, tm, &path).await == (200, data.to_vec())
        })
        .await;
    }
    (dir, file, sid)
}
