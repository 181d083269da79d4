//! No request, however malformed, gets a 5xx: every route, every method, a range of broken
//! bodies and query strings, with no token, a garbage token and a valid one. The server must
//! still answer normally afterwards.

mod common;

use common::flow::{create_sharing, notes_rule, PASS};
use common::spawn_app;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_never_get_a_server_error() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let token = app.token(&alice, "io.cozy.notes io.cozy.sharings io.cozy.files");
    let sid =
        create_sharing(&alice, &token, json!([notes_rule(&["n1"])]), json!([{"email": "bob@example.net"}]), json!([]))
            .await;
    let paths = [
        "/status".to_owned(),
        "/data/".into(),
        "/data/io.cozy.notes/".into(),
        "/data/io.cozy.notes/n1".into(),
        "/data/io.cozy.notes/_all_docs".into(),
        "/data/io.cozy.notes/_changes".into(),
        "/data/io.cozy.notes/_revs_diff".into(),
        "/data/io.cozy.notes/_bulk_docs".into(),
        "/data/io.cozy.notes/_bulk_get".into(),
        "/data/io.cozy.notes/_local/x".into(),
        "/data/io.cozy.notes/_design/x".into(),
        "/data/%ff%fe/x".into(),
        "/auth/login".into(),
        "/auth/access_token".into(),
        "/auth/authorize/sharing".into(),
        "/auth/share-by-link/password".into(),
        "/sharings/".into(),
        format!("/sharings/{sid}"),
        format!("/sharings/{sid}/discovery"),
        format!("/sharings/{sid}/answer"),
        format!("/sharings/{sid}/recipients"),
        format!("/sharings/{sid}/recipients/1"),
        format!("/sharings/{sid}/recipients/99999999999999999999"),
        format!("/sharings/{sid}/recipients/self"),
        format!("/sharings/{sid}/recipients/delegated"),
        format!("/sharings/{sid}/recipients/1/readonly"),
        format!("/sharings/{sid}/credentials"),
        format!("/sharings/{sid}/_revs_diff"),
        format!("/sharings/{sid}/_bulk_docs"),
        format!("/sharings/{sid}/status"),
        format!("/sharings/{sid}/sync"),
        format!("/sharings/{sid}/invitations"),
        format!("/sharings/{sid}/discard"),
        "/sharings/not-hex!/answer".into(),
        "/permissions".into(),
        "/permissions/self".into(),
        "/permissions/x".into(),
        "/permissions/doctype/io.cozy.notes/shared-by-link".into(),
        "/invitations/x".into(),
        "/files/".into(),
        "/files/io.cozy.files.root-dir".into(),
        "/files/x".into(),
        "/files/metadata".into(),
        "/files/download".into(),
        "/files/download/x".into(),
        "/files/trash".into(),
        "/files/trash/x".into(),
        "/public/x".into(),
    ];
    let queries = [
        "",
        "?rev=1-",
        "?since=%ff",
        "?keys=%5B1%5D",
        "?open_revs=%7B%7D",
        "?state=&sharing_id=%00",
        "?limit=1e99",
        "?codes=,,",
        "?Type=file&Name=%00&Path=%2F..&page[cursor]=%ff&page[limit]=0&Tags=%00",
        "?Type=directory&Name=..&Path=/a%2Fb&page[limit]=99999999999999999999",
    ];
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"string\"".to_vec(),
        b"{\"data\": null}".to_vec(),
        b"{\"data\": {\"type\": \"io.cozy.sharings\", \"attributes\": {\"rules\": [{}], \"members\": [1]}}}".to_vec(),
        b"{\"docs\": [{\"_id\": \"a\", \"_revisions\": {\"start\": 18446744073709551615, \"ids\": [\"x\"]}}]}".to_vec(),
        b"{\"io.cozy.notes\": [{\"_id\": \"\"}], \"a/b\": [\"1-x\"]}".to_vec(),
        b"state=&url=http%3A%2F%2F%5B%3A%3A1%5D&passphrase=&grant_type=refresh_token".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        deep.into_bytes(),
    ];
    let methods = [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::HEAD];
    let tokens: [Option<&str>; 3] = [None, Some("garbage.token.here"), Some(&token)];
    let mut count = 0;
    for path in &paths {
        for (qi, q) in queries.iter().enumerate() {
            for method in &methods {
                for (bi, body) in bodies.iter().enumerate() {
                    // Every body on the bare path; the other query strings with a few bodies.
                    if qi > 0 && bi % 4 != 0 {
                        continue;
                    }
                    let t = tokens[(qi + bi) % tokens.len()];
                    let mut r = alice.req(method.clone(), &format!("{path}{q}"), t).body(body.clone());
                    if bi % 2 == 0 {
                        r = r.header("Content-Type", "application/x-www-form-urlencoded");
                    }
                    let resp = r.send().await.unwrap_or_else(|e| panic!("{method} {path}{q}: {e}"));
                    let status = resp.status().as_u16();
                    assert!(
                        status < 500,
                        "{method} {path}{q} body #{bi}: {status} {}",
                        resp.text().await.unwrap_or_default()
                    );
                    count += 1;
                }
            }
        }
    }
    assert!(count > 3000, "{count} requests");
    // Still serving.
    let (s, _) = alice.call(Method::PUT, "/data/io.cozy.notes/after", Some(&token), Some(json!({"ok": true}))).await;
    assert_eq!(s, 201);
}
