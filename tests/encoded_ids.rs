//! Ids in paths are percent-decoded exactly once, as CouchDB does: documents, `_local`
//! documents, sharings, members, permissions and invitations, over real HTTP. Ids holding
//! `/ + % ? # space é 😀` go through PUT, GET, DELETE, `_bulk_get`, `_all_docs?keys=` and
//! `_revs_diff`, and come back exactly as written; malformed escapes get a clear 400.

mod common;

use common::flow::{create_sharing, load, notes_rule, PASS};
use common::{spawn_app, TestInstance};
use hearth::sharing::MemberStatus;
use hearth::store::{DocId, Doctype, GetOptions, StoreError};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Method;
use serde_json::{json, Map, Value};

const NOTES: &str = "/data/io.cozy.notes";

/// Ids a client may pick, each with characters that a path must carry encoded.
const IDS: &[&str] = &[
    "notes/2026",
    "a+b",
    "50%off",
    "what?",
    "c#sharp",
    "two words",
    "été",
    "😀",
    "all of /+%?# é😀 at once",
    "x%2Fy",
    "%25",
    "/leading",
    "trailing/",
    "a//b",
];

/// What JavaScript's `encodeURIComponent` leaves alone (PouchDB encodes ids with it).
const COMPONENT: &AsciiSet =
    &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'!').remove(b'~').remove(b'*').remove(b'\'');

/// The id as PouchDB puts it in a path.
fn enc(id: &str) -> String {
    utf8_percent_encode(id, COMPONENT).to_string()
}

/// The id with every byte escaped, letters included: the same id to a server that decodes once.
fn enc_all(id: &str) -> String {
    id.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn doc_path(id: &str) -> String {
    format!("{NOTES}/{}", enc(id))
}

fn notes() -> Doctype {
    Doctype::parse("io.cozy.notes").unwrap()
}

async fn update_seq(inst: &TestInstance, token: &str) -> u64 {
    let (s, info) = inst.call(Method::GET, &format!("{NOTES}/"), Some(token), None).await;
    assert_eq!(s, 200, "{info}");
    info["update_seq"].as_u64().expect("update_seq")
}

/// The ids of the live documents, sorted, from the changes feed. (Not from an unbounded
/// `_all_docs`: PouchDB Server, the CouchDB of the test suite, leaves out ids that start above
/// U+FFFF there, such as `😀`.)
async fn live_ids(inst: &TestInstance, token: &str) -> Vec<String> {
    let (s, feed) = inst.call(Method::GET, &format!("{NOTES}/_changes"), Some(token), None).await;
    assert_eq!(s, 200, "{feed}");
    let mut ids: Vec<String> = feed["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["deleted"] != true)
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn ids_with_reserved_characters_go_through_every_document_route_unchanged() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", "x");
    let t = app.token(&alice, "io.cozy.notes");
    let store = app.instance(&alice.domain).store.clone();

    let mut revs = Vec::new();
    for (k, id) in IDS.iter().enumerate() {
        let (s, v) = alice.call(Method::PUT, &doc_path(id), Some(&t), Some(json!({"k": k}))).await;
        assert_eq!(s, 201, "PUT {id}: {v}");
        assert_eq!((v["id"].as_str(), v["data"]["_id"].as_str()), (Some(*id), Some(*id)), "{v}");
        revs.push(v["rev"].as_str().unwrap().to_owned());
        // The same id however it is encoded.
        for path in [doc_path(id), format!("{NOTES}/{}", enc_all(id))] {
            let (s, doc) = alice.call(Method::GET, &path, Some(&t), None).await;
            assert_eq!(s, 200, "GET {path}: {doc}");
            assert_eq!((doc["_id"].as_str(), &doc["k"]), (Some(*id), &json!(k)), "GET {path}");
        }
        // Stored under the id as written, not under some encoding of it.
        let stored = store.get(&notes(), &DocId::parse(id).unwrap(), GetOptions::default()).await;
        assert_eq!(stored.map(|v| v.doc.rev.to_string()).ok().as_ref(), Some(&revs[k]), "{id} in the store");
    }
    let mut expected: Vec<String> = IDS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(live_ids(&alice, &t).await, expected, "exactly these ids");

    // _all_docs?keys= (GET, the JSON in the query string) and its POST form.
    let keys = json!(IDS).to_string();
    let (s, by_get) = alice.call(Method::GET, &format!("{NOTES}/_all_docs?keys={}", enc(&keys)), Some(&t), None).await;
    assert_eq!(s, 200, "{by_get}");
    let (s, by_post) =
        alice.call(Method::POST, &format!("{NOTES}/_all_docs"), Some(&t), Some(json!({"keys": IDS}))).await;
    assert_eq!(s, 200, "{by_post}");
    for answer in [&by_get, &by_post] {
        let rows = answer["rows"].as_array().unwrap();
        assert_eq!(rows.len(), IDS.len(), "{answer}");
        for (k, row) in rows.iter().enumerate() {
            assert_eq!((row["id"].as_str(), row["key"].as_str()), (Some(IDS[k]), Some(IDS[k])), "{row}");
            assert_eq!(row["value"]["rev"].as_str(), Some(revs[k].as_str()), "{row}");
        }
    }

    // _bulk_get.
    let docs: Vec<Value> = IDS.iter().map(|id| json!({"id": id})).collect();
    let (s, got) =
        alice.call(Method::POST, &format!("{NOTES}/_bulk_get?revs=true"), Some(&t), Some(json!({"docs": docs}))).await;
    assert_eq!(s, 200, "{got}");
    for (k, result) in got["results"].as_array().unwrap().iter().enumerate() {
        assert_eq!(result["id"].as_str(), Some(IDS[k]), "{result}");
        let doc = &result["docs"][0]["ok"];
        assert_eq!((doc["_id"].as_str(), doc["_rev"].as_str()), (Some(IDS[k]), Some(revs[k].as_str())), "{result}");
    }

    // _revs_diff: each id's own revision is known, a made-up one is missing.
    let unknown = "2-0123456789abcdef0123456789abcdef";
    let asked: Map<String, Value> =
        IDS.iter().enumerate().map(|(k, id)| (id.to_string(), json!([revs[k], unknown]))).collect();
    let (s, diff) =
        alice.call(Method::POST, &format!("{NOTES}/_revs_diff"), Some(&t), Some(Value::Object(asked))).await;
    assert_eq!(s, 200, "{diff}");
    assert_eq!(diff.as_object().unwrap().len(), IDS.len(), "{diff}");
    for id in IDS {
        assert_eq!(diff[*id]["missing"], json!([unknown]), "{id}: {diff}");
    }

    // DELETE, then each id reads as deleted.
    for (k, id) in IDS.iter().enumerate() {
        let (s, v) = alice.call(Method::DELETE, &format!("{}?rev={}", doc_path(id), revs[k]), Some(&t), None).await;
        assert_eq!((s, v["id"].as_str()), (200, Some(*id)), "DELETE {id}: {v}");
        let (s, v) = alice.call(Method::GET, &doc_path(id), Some(&t), None).await;
        assert_eq!(s, 404, "GET {id} after its deletion: {v}");
    }
    assert!(live_ids(&alice, &t).await.is_empty());
}

#[tokio::test]
async fn an_escape_in_an_id_is_decoded_once_never_twice() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", "x");
    let t = app.token(&alice, "io.cozy.notes");
    // `x%2Fy` in a path is the id `x/y` (the issue: it used to be stored as `x%2Fy`).
    let (s, v) = alice.call(Method::PUT, &format!("{NOTES}/x%2Fy"), Some(&t), Some(json!({"v": "slash"}))).await;
    assert_eq!((s, v["id"].as_str()), (201, Some("x/y")), "{v}");
    // `x%252Fy` is the id `x%2Fy`: a different document.
    let (s, v) = alice.call(Method::PUT, &format!("{NOTES}/x%252Fy"), Some(&t), Some(json!({"v": "escape"}))).await;
    assert_eq!((s, v["id"].as_str()), (201, Some("x%2Fy")), "{v}");
    for (path, v) in [("x%2Fy", "slash"), ("x/y", "slash"), ("x%252Fy", "escape"), ("x%25%32Fy", "escape")] {
        let (s, doc) = alice.call(Method::GET, &format!("{NOTES}/{path}"), Some(&t), None).await;
        assert_eq!((s, doc["v"].as_str()), (200, Some(v)), "GET {path}: {doc}");
    }
    // `%2B` is `+`, and a literal `+` stays `+` (a path is not a form).
    let (s, v) = alice.call(Method::PUT, &format!("{NOTES}/a%2Bb"), Some(&t), Some(json!({}))).await;
    assert_eq!((s, v["id"].as_str()), (201, Some("a+b")), "{v}");
    let (s, doc) = alice.call(Method::GET, &format!("{NOTES}/a+b"), Some(&t), None).await;
    assert_eq!((s, doc["_id"].as_str()), (200, Some("a+b")), "{doc}");
    let (s, _) = alice.call(Method::GET, &format!("{NOTES}/a%20b"), Some(&t), None).await;
    assert_eq!(s, 404, "a b is another id");
    assert_eq!(live_ids(&alice, &t).await, ["a+b", "x%2Fy", "x/y"]);
}

#[tokio::test]
async fn local_documents_are_reached_through_an_encoded_slash_as_in_couchdb() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", "x");
    let t = app.token(&alice, "io.cozy.notes");
    let store = app.instance(&alice.domain).store.clone();
    let (s, v) =
        alice.call(Method::PUT, &format!("{NOTES}/_local%2Fcheckpoint"), Some(&t), Some(json!({"seq": 7}))).await;
    assert_eq!((s, v["id"].as_str()), (201, Some("_local/checkpoint")), "{v}");
    for path in ["_local/checkpoint", "_local%2Fcheckpoint", "%5Flocal%2Fcheckpoint"] {
        let (s, doc) = alice.call(Method::GET, &format!("{NOTES}/{path}"), Some(&t), None).await;
        assert_eq!((s, doc["_id"].as_str(), &doc["seq"]), (200, Some("_local/checkpoint"), &json!(7)), "{path}");
    }
    assert_eq!(store.get_local(&notes(), "checkpoint").await.unwrap().body.get("seq"), Some(serde_json::json!(7)));

    for (k, id) in IDS.iter().enumerate() {
        let (s, v) =
            alice.call(Method::PUT, &format!("{NOTES}/_local/{}", enc(id)), Some(&t), Some(json!({"k": k}))).await;
        assert_eq!((s, v["id"].as_str()), (201, Some(format!("_local/{id}").as_str())), "PUT _local/{id}: {v}");
        let (s, doc) = alice.call(Method::GET, &format!("{NOTES}/_local%2F{}", enc(id)), Some(&t), None).await;
        assert_eq!((s, &doc["k"]), (200, &json!(k)), "GET _local%2F{id}: {doc}");
        assert_eq!(
            store.get_local(&notes(), id).await.unwrap().body.get("k"),
            Some(serde_json::json!(k)),
            "{id} in the store"
        );
        // The current revision, as CouchDB needs to delete a `_local` document.
        let path = format!("{NOTES}/_local%2F{}?rev=0-1", enc_all(id));
        let (s, v) = alice.call(Method::DELETE, &path, Some(&t), None).await;
        assert_eq!(s, 200, "DELETE _local/{id}: {v}");
        assert!(matches!(store.get_local(&notes(), id).await, Err(StoreError::NotFound)), "{id} deleted");
    }
    assert!(live_ids(&alice, &t).await.is_empty(), "local documents are not documents");
}

#[tokio::test]
async fn reserved_and_control_character_ids_stay_refused_however_they_are_encoded() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", "x");
    let t = app.token(&alice, "io.cozy.notes");
    let seq = update_seq(&alice, &t).await;
    let refused =
        ["_design/x", "_design%2Fx", "%5Fdesign%2Fx", "_x", "%5Fx", "_local", "_local/", "_local%2F", "a%0Ab"];
    for path in refused {
        for method in [Method::PUT, Method::GET, Method::DELETE] {
            let (s, v) =
                alice.call(method.clone(), &format!("{NOTES}/{path}?rev=1-a"), Some(&t), Some(json!({}))).await;
            assert_eq!((s, v["error"].as_str()), (400, Some("bad_request")), "{method} {path}: {v}");
        }
    }
    assert_eq!(update_seq(&alice, &t).await, seq, "nothing written");
}

#[tokio::test]
async fn malformed_escapes_in_a_path_get_a_clear_400_and_change_nothing() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let t = app.token(&alice, "io.cozy.notes io.cozy.sharings");
    let sid =
        create_sharing(&alice, &t, json!([notes_rule(&["n1"])]), json!([{"email": "bob@example.net"}]), json!([]))
            .await;
    let seq = update_seq(&alice, &t).await;
    let doc_paths = ["50%off", "%FF", "%C3", "a%2", "%", "%%341", "_local/50%off", "_local%2F%FE", "%ED%A0%80"];
    for p in doc_paths {
        for method in [Method::PUT, Method::GET, Method::DELETE] {
            let (s, v) = alice.call(method.clone(), &format!("{NOTES}/{p}?rev=1-a"), Some(&t), Some(json!({}))).await;
            assert_eq!((s, v["error"].as_str()), (400, Some("bad_request")), "{method} {p}: {v}");
            let reason = v["reason"].as_str().unwrap();
            assert!(reason.contains("percent-encoding") || reason.contains("UTF-8"), "{reason}");
        }
    }
    assert_eq!(update_seq(&alice, &t).await, seq, "nothing written");
    assert!(live_ids(&alice, &t).await.is_empty());
    assert!(matches!(app.instance(&alice.domain).store.get_local(&notes(), "50%off").await, Err(StoreError::NotFound)));
    // The other routes that carry a name or an id.
    let others = [
        (Method::GET, "/data/io.cozy.notes%zz/_all_docs".to_owned()),
        (Method::GET, format!("/sharings/{sid}%zz")),
        (Method::GET, "/sharings/%FF/status".to_owned()),
        (Method::DELETE, format!("/sharings/{sid}/recipients/1%")),
        (Method::DELETE, format!("/sharings/{sid}/invitations/%C3")),
        (Method::GET, "/permissions/50%off".to_owned()),
        (Method::GET, "/permissions/doctype/io.cozy.notes%FF/shared-by-link".to_owned()),
        (Method::GET, "/invitations/50%off".to_owned()),
    ];
    for (method, path) in others {
        let (s, v) = alice.call(method.clone(), &path, Some(&t), None).await;
        assert_eq!((s, v["error"].as_str()), (400, Some("bad_request")), "{method} {path}: {v}");
    }
    assert_eq!(load(&app, &alice, &sid).await.members[1].status, MemberStatus::MailNotSent, "member untouched");
}

#[tokio::test]
async fn sharing_member_permission_and_invitation_ids_are_decoded_once() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let t = app.token(&alice, "io.cozy.notes io.cozy.sharings");
    let sid =
        create_sharing(&alice, &t, json!([notes_rule(&["n1"])]), json!([{"email": "bob@example.net"}]), json!([]))
            .await;

    // A sharing, by its id with every byte escaped; an encoded `/` is part of the id.
    let (s, v) = alice.call(Method::GET, &format!("/sharings/{}", enc_all(&sid)), Some(&t), None).await;
    assert_eq!((s, v["data"]["id"].as_str()), (200, Some(sid.as_str())), "{v}");
    let (s, v) = alice.call(Method::GET, &format!("/sharings/{}/status", enc_all(&sid)), Some(&t), None).await;
    assert_eq!(s, 200, "{v}");
    for garbage in [format!("{sid}%2Fstatus"), "%F0%9F%98%80".to_owned(), format!("{sid}%20")] {
        let (s, v) = alice.call(Method::GET, &format!("/sharings/{garbage}"), Some(&t), None).await;
        assert_eq!((s, v["error"].as_str()), (400, Some("bad_request")), "{garbage}: {v}");
    }

    // An invitation link, by its code and its id, escaped.
    let (s, created) = alice
        .call(Method::POST, &format!("/sharings/{sid}/invitations"), Some(&t), Some(json!({"permissions": ["read"]})))
        .await;
    assert_eq!(s, 201, "{created}");
    let inv = created["data"]["id"].as_str().unwrap().to_owned();
    let link = created["data"]["attributes"]["link"].as_str().unwrap();
    let code = link.split("invitation=").nth(1).unwrap().to_owned();
    let (s, v) = alice.call(Method::GET, &format!("/invitations/{}", enc_all(&code)), None, None).await;
    assert_eq!((s, v["data"]["attributes"]["description"].as_str()), (200, Some("holiday notes")), "{v}");
    let (s, _) = alice.call(Method::GET, &format!("/invitations/{code}%2F"), None, None).await;
    assert_eq!(s, 404, "the code followed by a slash is another code");
    let (s, v) = alice
        .call(Method::DELETE, &format!("/sharings/{}/invitations/{}", enc_all(&sid), enc_all(&inv)), Some(&t), None)
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = alice.call(Method::GET, &format!("/invitations/{code}"), None, None).await;
    assert_eq!(s, 404, "the link was revoked through its escaped id");

    // A member, by its index escaped.
    let (s, v) = alice.call(Method::DELETE, &format!("/sharings/{sid}/recipients/1%2F0"), Some(&t), None).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("bad_request")), "{v}");
    assert_eq!(load(&app, &alice, &sid).await.members[1].status, MemberStatus::MailNotSent);
    let (s, v) = alice.call(Method::DELETE, &format!("/sharings/{sid}/recipients/%31"), Some(&t), None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(load(&app, &alice, &sid).await.members[1].status, MemberStatus::Revoked);

    // A link permission, by its id escaped.
    let body = json!({"data": {"type": "io.cozy.permissions", "attributes": {"permissions":
        {"notes": {"type": "io.cozy.notes", "verbs": ["GET"], "values": ["n1"]}}}}});
    let (s, p) = alice.call(Method::POST, "/permissions?codes=bob", Some(&t), Some(body)).await;
    assert_eq!(s, 200, "{p}");
    let pid = p["data"]["id"].as_str().unwrap().to_owned();
    let (s, v) = alice.call(Method::GET, &format!("/permissions/{}", enc_all(&pid)), Some(&t), None).await;
    assert_eq!((s, v["data"]["id"].as_str()), (200, Some(pid.as_str())), "{v}");
    let (s, v) = alice.call(Method::GET, &format!("/permissions/{pid}%2Fx"), Some(&t), None).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = alice.call(Method::GET, "/permissions/doctype/io%2Ecozy%2Enotes/shared-by-link", Some(&t), None).await;
    assert_eq!((s, v["data"][0]["id"].as_str()), (200, Some(pid.as_str())), "{v}");
}
