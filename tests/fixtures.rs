//! The seed's wire shapes (`fixtures/cozy-sharing/`, from Cozy's sharing documentation) sent to
//! real instances: hearth accepts the requests as written and answers with at least the fields
//! the seed shows.

mod common;

use common::flow::{answer_invitation, create_sharing, link, load, PASS};
use common::spawn_app;
use reqwest::Method;
use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cozy-sharing").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Every object key of `expected` (recursively, arrays compared element by element) is in
/// `actual`.
fn has_shape(expected: &Value, actual: &Value, path: &str) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                let inner = a.get(k).unwrap_or_else(|| panic!("{path}.{k} missing in {actual}"));
                has_shape(v, inner, &format!("{path}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert!(a.len() >= e.len(), "{path}: {} items, the seed shows {}", a.len(), e.len());
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                has_shape(ev, av, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn the_seed_sharing_requests_are_accepted_and_answered_in_its_shape() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let token = app.token(&alice, "io.cozy.files io.cozy.contacts");
    let contact = json!({"fullname": "Bob", "email": [{"address": "bob@example.net", "primary": true}]});
    let (s, _) = alice
        .call(Method::PUT, "/data/io.cozy.contacts/2a31ce0128b5f89e40fd90da3f014087", Some(&token), Some(contact))
        .await;
    assert_eq!(s, 201);
    let (s, created) = alice.call(Method::POST, "/sharings/", Some(&token), Some(fixture("create-request.json"))).await;
    assert_eq!(s, 201, "{created}");
    has_shape(&fixture("create-response.json"), &created, "");
    assert_eq!(created["data"]["attributes"]["members"][1]["name"], "Bob");
    assert_eq!(created["data"]["attributes"]["rules"], fixture("create-request.json")["data"]["attributes"]["rules"]);

    // The seed's request to a recipient, as written, is refused: nothing proves it comes from
    // the owner (see `hearth::sharing::request`).
    let mut put = fixture("put-request.json");
    put["data"]["attributes"]["members"][0]["instance"] = json!(format!("http://{}", alice.domain));
    put["data"]["attributes"]["members"][1]["instance"] = json!(format!("http://{}", bob.domain));
    let seed_id = put["data"]["id"].as_str().unwrap().to_owned();
    let (s, v) = bob.call(Method::PUT, &format!("/sharings/{seed_id}"), None, Some(put.clone())).await;
    assert_eq!(s, 400, "{v}");
    // The owner's notice goes through (discovery), and the request bob fetches back from alice
    // is in the seed's shape.
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let inst = app.instance(&alice.domain);
    let state =
        hearth::sharing::service::member_state(&inst, &load(&app, &alice, &id).await, hearth::sharing::MemberIndex(1))
            .unwrap();
    let resp = common::browser()
        .post(alice.url(&format!("/sharings/{id}/discovery")))
        .header("Accept", "application/json")
        .form(&[("state", state), ("url", format!("http://{}", bob.domain))])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let owned = load(&app, &alice, &id).await;
    let token = hearth::sharing::request::request_token(&inst, &owned, hearth::sharing::MemberIndex(1)).unwrap();
    let (s, fetched) = alice.call(Method::GET, &format!("/sharings/{id}/request"), Some(&token), None).await;
    assert_eq!(s, 200, "{fetched}");
    has_shape(&put, &fetched, "");
    assert_eq!(fetched["data"]["attributes"]["members"][1]["instance"], json!(format!("http://{}", bob.domain)));
    // The notice sent again is answered in the seed's shape.
    let notice = hearth::sharing::request::notice(&inst, &owned, hearth::sharing::MemberIndex(1)).unwrap();
    let (s, answer) = bob.call(Method::PUT, &format!("/sharings/{id}"), None, Some(notice)).await;
    assert_eq!(s, 200, "{answer}");
    let mut expected = put.clone();
    expected["data"]["meta"] = json!({"rev": "1-x"});
    expected["data"]["links"] = json!({"self": ""});
    has_shape(&expected, &answer, "");
    assert_eq!(answer["data"]["attributes"]["owner"], false, "on the recipient, the sharing is not its own");
    assert_eq!(answer["data"]["attributes"]["rules"], fetched["data"]["attributes"]["rules"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_replication_requests_are_understood() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let token = app.token(&alice, "io.cozy.files");
    let rule = json!({"title": "Hawaii", "doctype": "io.cozy.files", "values": ["612acf1c-1d72-11e8-b043-ef239d3074dd"],
        "add": "sync", "update": "sync", "remove": "sync"});
    let id = create_sharing(&alice, &token, json!([rule]), json!([{"email": "bob@example.net"}]), json!([])).await;
    answer_invitation(&link(&app, &alice, &id, 1).await, &bob, "accept").await;
    let s = hearth::sharing::load(
        app.instance(&bob.domain).store.as_ref(),
        &hearth::sharing::SharingId::parse(&id).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let peer = s.members[0].outbound.clone().unwrap().access_token;
    let request = fixture("revs-diff-request.json");
    let (status, diff) =
        alice.call(Method::POST, &format!("/sharings/{id}/_revs_diff"), Some(&peer), Some(request.clone())).await;
    assert_eq!(status, 200, "{diff}");
    for (key, revs) in request.as_object().unwrap() {
        assert_eq!(&diff[key]["missing"], revs, "unknown documents miss every revision");
    }
    // The seed's document matches no rule of this sharing: refused, reported, nothing written.
    let (status, refused) = alice
        .call(Method::POST, &format!("/sharings/{id}/_bulk_docs"), Some(&peer), Some(fixture("bulk-docs-request.json")))
        .await;
    assert_eq!(status, 200, "{refused}");
    assert_eq!(refused.as_array().unwrap().len(), 1);
    assert_eq!(refused[0]["error"], "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_sharing_answer_lists_its_shared_documents() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let token = app.token(&alice, "io.cozy.files");
    let seed = fixture("get-response.json");
    let shared: Vec<String> = seed["data"]["relationships"]["shared_docs"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    // `/data/io.cozy.files` is read-only (files change through `/files`, with generated ids):
    // the seed's ids go straight into the store, as a peer's documents would.
    let store = app.instance(&alice.domain).store.clone();
    let writes = shared
        .iter()
        .map(|id| hearth::store::DocWrite {
            id: hearth::store::DocId::parse(id).unwrap(),
            rev: None,
            revisions: None,
            deleted: false,
            body: hearth::store::Body::parse("{}").unwrap(),
        })
        .collect();
    let results = store.bulk_docs(&hearth::files::doctype(), writes, true).await.unwrap();
    assert!(results.iter().all(|r| matches!(r, hearth::store::WriteResult::Ok { .. })));
    let mut rule = seed["data"]["attributes"]["rules"][0].clone();
    rule["values"] = json!(shared);
    let body = json!({"data": {"type": "io.cozy.sharings",
        "attributes": {"description": "holiday notes", "app_slug": "drive", "rules": [rule]},
        "relationships": {"recipients": {"data": [{"name": "Bob", "email": "bob@example.net"}]}}}});
    let (s, created) = alice.call(Method::POST, "/sharings/", Some(&token), Some(body)).await;
    assert_eq!(s, 201, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    answer_invitation(&link(&app, &alice, &id, 1).await, &bob, "accept").await;
    let (s, got) = alice.call(Method::GET, &format!("/sharings/{id}"), Some(&token), None).await;
    assert_eq!(s, 200, "{got}");
    // Everything the seed shows (`preview_path` only when the sharing has one).
    let mut expected = seed.clone();
    expected["data"]["attributes"].as_object_mut().unwrap().remove("preview_path");
    has_shape(&expected, &got, "");
    let listed: Vec<&str> = got["data"]["relationships"]["shared_docs"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["type"], "io.cozy.files");
            d["id"].as_str().unwrap()
        })
        .collect();
    assert_eq!(listed, shared);
}
