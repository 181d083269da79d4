//! Documents exactly as written, feeds that tell the truth (issue 9): every path a body takes
//! (interactive writes, `_bulk_docs` with `new_edits` true and false, `_bulk_get`, `open_revs`,
//! `_changes` and `_all_docs` with `include_docs`, `_local`, replication between two instances
//! over real HTTP) gives back the body's text as the client sent it, minus insignificant
//! whitespace; `_changes` reports the real `pending`; `If-None-Match` answers 304. The HTTP
//! tests run on SQLite, and on CouchDB when `HEARTH_TEST_COUCHDB_URL` is set (scripts/test).

mod common;

use std::sync::Arc;

use common::flow::{self, PASS};
use common::{eventually, spawn_app, TestInstance};
use hearth::sharing::xor;
use hearth::store::doc::{parse_doc, render};
use hearth::store::sqlite::SqliteStore;
use hearth::store::{DocId, Doctype, GetOptions, OpenRev, OpenRevs, Store, WriteResult};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqwest::Method;
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// Issue 9's input: keys out of order at two depths, integers beyond `u64` and `i64`.
const ISSUE: &str =
    r#"{"zeta":1,"alpha":{"yak":2,"bee":3},"big":123456789012345678901234567890,"neg":-9223372036854775809}"#;
/// Floats that must keep their spelling, escapes and non-ASCII text, integer-like keys (which
/// JavaScript would move first), an empty key.
const MIXED: &str = r#"{"f":0.1,"g":1.5e+300,"h":-0.0,"e":1E-7,"i":10.50,"s":"\u00e9 é \"q\" \ud83d\ude00 😀\n","z":[3,{"b":1,"a":[]}],"9":"nine","10":"ten","":null}"#;

const NOTES: &str = "/data/io.cozy.notes";

/// The members of a document's text after `_id` and `_rev`, up to any later `_` member: what
/// the body reads as in a rendered document.
fn body_of(doc: &str) -> String {
    let v: Value = serde_json::from_str(doc).unwrap_or_else(|e| panic!("{e}: {doc}"));
    let rev = v["_rev"].as_str().expect("_rev");
    let head = format!("{{\"_id\":{},\"_rev\":\"{rev}\"", serde_json::to_string(&v["_id"]).unwrap());
    let rest = doc.strip_prefix(&head).unwrap_or_else(|| panic!("{doc} does not start with {head}"));
    let rest = rest.strip_prefix(',').unwrap_or(rest);
    // The body ends where the trailing `_` members start (`_deleted`, `_revisions`...).
    let end = ["\"_deleted\":", "\"_revisions\":", "\"_conflicts\":"]
        .iter()
        .filter_map(|m| rest.find(&format!(",{m}")).or_else(|| rest.starts_with(m).then_some(0)))
        .min()
        .unwrap_or(rest.len() - 1);
    format!("{{{}}}", &rest[..end])
}

/// Sends raw JSON text and returns status and the answer's text.
async fn send(inst: &TestInstance, method: Method, path: &str, token: &str, text: &str) -> (u16, String) {
    let resp = inst
        .req(method, path, Some(token))
        .header("Content-Type", "application/json")
        .body(text.to_owned())
        .send()
        .await
        .expect("request");
    (resp.status().as_u16(), resp.text().await.expect("answer"))
}

async fn get_text(inst: &TestInstance, path: &str, token: &str) -> (u16, String) {
    let resp = inst.req(Method::GET, path, Some(token)).send().await.expect("request");
    (resp.status().as_u16(), resp.text().await.expect("answer"))
}

/// A JSON text with `_id` (and `_rev`) members spliced in front of a body.
fn with_meta(meta: &str, body: &str) -> String {
    format!("{{{meta},{}", &body[1..])
}

/// Every occurrence of `needle`'s members in `haystack`, as the text of each document in it.
fn docs_in(answer: &str, key: &str) -> Vec<String> {
    // Documents are found by their `"_id"`: each is the JSON object starting there.
    let mut out = Vec::new();
    let mut rest = answer;
    while let Some(i) = rest.find(key) {
        let start = rest[..i].rfind('{').expect("object start");
        let tail = &rest[start..];
        let mut de = serde_json::Deserializer::from_str(tail);
        let raw: &RawValue = serde::Deserialize::deserialize(&mut de).expect("a document");
        out.push(raw.get().to_owned());
        rest = &tail[raw.get().len()..];
    }
    out
}

#[tokio::test]
async fn a_body_comes_back_as_written_through_every_data_route() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let t = app.token(&alice, "io.cozy.notes");

    // Interactive PUT, with spaces and newlines the server drops.
    let spaced = ISSUE.replace(',', " ,\n ").replace(':', " : ");
    let (s, put) = send(&alice, Method::PUT, &format!("{NOTES}/x"), &t, &spaced).await;
    assert_eq!(s, 201, "{put}");
    let put: Value = serde_json::from_str(&put).unwrap();
    let rev = put["rev"].as_str().unwrap().to_owned();
    let (s, doc) = get_text(&alice, &format!("{NOTES}/x"), &t).await;
    assert_eq!(s, 200);
    assert_eq!(doc, with_meta(&format!(r#""_id":"x","_rev":"{rev}""#), ISSUE), "GET answers the body as written");

    // POST, `_bulk_docs` with new_edits true (generated and given ids) and false.
    let (s, created) = send(&alice, Method::POST, &format!("{NOTES}/"), &t, MIXED).await;
    assert_eq!(s, 201, "{created}");
    assert!(created.contains(&MIXED[1..MIXED.len() - 1]), "the answer's data is the body as written: {created}");
    let posted = serde_json::from_str::<Value>(&created).unwrap()["id"].as_str().unwrap().to_owned();
    let bulk = format!(
        r#"{{"docs":[{},{}]}}"#,
        with_meta(r#""_id":"b1""#, MIXED),
        ISSUE // no _id: one is generated
    );
    let (s, answer) = send(&alice, Method::POST, &format!("{NOTES}/_bulk_docs"), &t, &bulk).await;
    assert_eq!(s, 201, "{answer}");
    let generated = serde_json::from_str::<Value>(&answer).unwrap()[1]["id"].as_str().unwrap().to_owned();
    let replicated = format!(
        r#"{{"new_edits":false,"docs":[{}]}}"#,
        with_meta(r#""_id":"r1","_rev":"2-bbb","_revisions":{"start":2,"ids":["bbb","aaa"]}"#, ISSUE)
    );
    let (s, answer) = send(&alice, Method::POST, &format!("{NOTES}/_bulk_docs"), &t, &replicated).await;
    assert_eq!((s, answer.as_str()), (201, "[]"));
    let (s, answer) = send(
        &alice,
        Method::PUT,
        &format!("{NOTES}/r2?new_edits=false"),
        &t,
        &with_meta(r#""_id":"r2","_rev":"1-ccc""#, MIXED),
    )
    .await;
    assert_eq!(s, 201, "{answer}");

    let expected = [
        ("x", ISSUE),
        (posted.as_str(), MIXED),
        ("b1", MIXED),
        (generated.as_str(), ISSUE),
        ("r1", ISSUE),
        ("r2", MIXED),
    ];
    for (id, body) in expected {
        let (s, doc) = get_text(&alice, &format!("{NOTES}/{id}?revs=true&conflicts=true"), &t).await;
        assert_eq!(s, 200, "{doc}");
        assert_eq!(body_of(&doc), body, "GET {id}");
        let (s, list) = get_text(&alice, &format!("{NOTES}/{id}?open_revs=all"), &t).await;
        assert_eq!(s, 200);
        let docs = docs_in(&list, "\"_id\"");
        assert_eq!(docs.len(), 1, "{list}");
        assert_eq!(body_of(&docs[0]), body, "open_revs of {id}");
    }
    let wanted: Vec<Value> = expected.iter().map(|(id, _)| json!({"id": id})).collect();
    let (s, got) =
        send(&alice, Method::POST, &format!("{NOTES}/_bulk_get?revs=true"), &t, &json!({"docs": wanted}).to_string())
            .await;
    assert_eq!(s, 200, "{got}");
    let docs = docs_in(&got, "\"_id\"");
    assert_eq!(docs.iter().map(|d| body_of(d)).collect::<Vec<_>>(), expected.map(|(_, b)| b.to_owned()), "_bulk_get");

    // The feed and `_all_docs`, each document once.
    let (s, feed) = get_text(&alice, &format!("{NOTES}/_changes?include_docs=true"), &t).await;
    assert_eq!(s, 200);
    let mut fed: Vec<(String, String)> = docs_in(&feed, "\"_id\"")
        .iter()
        .map(|d| (serde_json::from_str::<Value>(d).unwrap()["_id"].as_str().unwrap().to_owned(), body_of(d)))
        .collect();
    fed.sort();
    let mut all_expected: Vec<(String, String)> =
        expected.iter().map(|(i, b)| (i.to_string(), b.to_string())).collect();
    all_expected.sort();
    assert_eq!(fed, all_expected, "_changes?include_docs");
    for (path, n) in [("_all_docs?include_docs=true", 6), ("_all_docs?include_docs=true&keys=[\"x\",\"r1\",\"b1\"]", 3)]
    {
        let (s, all) = get_text(&alice, &format!("{NOTES}/{path}"), &t).await;
        assert_eq!(s, 200, "{all}");
        let docs = docs_in(&all, "\"_id\"");
        assert_eq!(docs.len(), n, "{all}");
        for d in docs {
            let id = serde_json::from_str::<Value>(&d).unwrap()["_id"].as_str().unwrap().to_owned();
            let want = &all_expected.iter().find(|(i, _)| *i == id).expect("listed").1;
            assert_eq!(&body_of(&d), want, "{path}: {id}");
        }
    }

    // `_local` documents.
    let (s, _) = send(&alice, Method::PUT, &format!("{NOTES}/_local/cp"), &t, &with_meta(r#""_id":"x""#, ISSUE)).await;
    assert_eq!(s, 201);
    let (s, local) = get_text(&alice, &format!("{NOTES}/_local/cp"), &t).await;
    assert_eq!((s, local), (200, with_meta(r#""_id":"_local/cp","_rev":"0-1""#, ISSUE)));
}

#[tokio::test]
async fn if_none_match_with_the_current_etag_answers_304() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let t = app.token(&alice, "io.cozy.notes");
    let (s, put) = send(&alice, Method::PUT, &format!("{NOTES}/n"), &t, ISSUE).await;
    assert_eq!(s, 201, "{put}");
    let rev1 = serde_json::from_str::<Value>(&put).unwrap()["rev"].as_str().unwrap().to_owned();
    let url = format!("{NOTES}/n");
    let ask = |method: Method, etag: String| {
        let r = alice.req(method, &url, Some(&t)).header("If-None-Match", etag);
        async move { r.send().await.unwrap() }
    };
    for method in [Method::GET, Method::HEAD] {
        let resp = ask(method.clone(), format!("\"{rev1}\"")).await;
        assert_eq!(resp.status(), 304, "{method}");
        assert_eq!(resp.headers()["etag"], format!("\"{rev1}\"").as_str());
        assert!(resp.bytes().await.unwrap().is_empty());
    }
    // Lists, weak tags and `*` (RFC 9110), and an old revision's tag, which does not match.
    assert_eq!(ask(Method::GET, format!("\"1-other\", W/\"{rev1}\"")).await.status(), 304);
    assert_eq!(ask(Method::GET, "*".into()).await.status(), 304);
    let (s, put) = send(&alice, Method::PUT, &url, &t, &with_meta(&format!(r#""_rev":"{rev1}""#), r#"{"v":2}"#)).await;
    assert_eq!(s, 201, "{put}");
    let stale = ask(Method::GET, format!("\"{rev1}\"")).await;
    assert_eq!(stale.status(), 200);
    let rev2 = serde_json::from_str::<Value>(&put).unwrap()["rev"].as_str().unwrap().to_owned();
    assert_eq!(stale.headers()["etag"], format!("\"{rev2}\"").as_str());
    assert_eq!(stale.text().await.unwrap(), format!(r#"{{"_id":"n","_rev":"{rev2}","v":2}}"#));
    // A specific revision has its own tag.
    let resp = alice
        .req(Method::GET, &format!("{url}?rev={rev2}"), Some(&t))
        .header("If-None-Match", format!("\"{rev2}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
}

#[tokio::test]
async fn documents_nested_too_deep_are_refused_on_every_write_route_and_change_nothing() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let t = app.token(&alice, "io.cozy.notes");
    let nested = |levels: usize| format!(r#"{{"a":{}1{}}}"#, "[".repeat(levels - 1), "]".repeat(levels - 1));
    let deep = nested(129);
    let routes = [
        (Method::PUT, format!("{NOTES}/d"), deep.clone()),
        (Method::POST, format!("{NOTES}/"), deep.clone()),
        (Method::POST, format!("{NOTES}/_bulk_docs"), format!(r#"{{"docs":[{}]}}"#, with_meta(r#""_id":"d""#, &deep))),
        (Method::PUT, format!("{NOTES}/_local/d"), deep.clone()),
    ];
    for (method, path, body) in routes {
        let (s, answer) = send(&alice, method.clone(), &path, &t, &body).await;
        assert_eq!(s, 400, "{method} {path}: {answer}");
        assert!(answer.contains("deeper than 128"), "{answer}");
    }
    let (s, info) = get_text(&alice, &format!("{NOTES}/"), &t).await;
    assert_eq!(s, 200);
    assert_eq!(serde_json::from_str::<Value>(&info).unwrap()["doc_count"], 0);
    // 128 levels are fine.
    let (s, answer) = send(&alice, Method::PUT, &format!("{NOTES}/d"), &t, &nested(128)).await;
    assert_eq!(s, 201, "{answer}");
}

#[tokio::test]
async fn changes_report_what_is_pending_for_filters_and_limited_scopes() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let t = app.token(&alice, "io.cozy.notes");
    for i in 0..10 {
        let (s, v) = send(&alice, Method::PUT, &format!("{NOTES}/n{i}"), &t, &format!(r#"{{"i":{i}}}"#)).await;
        assert_eq!(s, 201, "{v}");
    }
    let page = |path: String, token: String| {
        let alice = &alice;
        async move {
            let (s, v) = alice.call(Method::GET, &path, Some(&token), None).await;
            assert_eq!(s, 200, "{v}");
            let ids: Vec<String> =
                v["results"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
            (ids, v["pending"].as_u64().expect("pending"), v["last_seq"].as_u64().expect("last_seq"))
        }
    };
    let (ids, pending, last) = page(format!("{NOTES}/_changes?limit=3"), t.clone()).await;
    assert_eq!((ids.len(), pending), (3, 7));
    let (_, pending, last) = page(format!("{NOTES}/_changes?limit=3&since={last}"), t.clone()).await;
    assert_eq!(pending, 4);
    let (ids, pending, _) = page(format!("{NOTES}/_changes?limit=10&since={last}"), t.clone()).await;
    assert_eq!((ids.len(), pending), (4, 0));
    let (ids, pending, _) =
        page(format!("{NOTES}/_changes?filter=_doc_ids&doc_ids=[\"n1\",\"n4\",\"n8\"]&limit=1"), t.clone()).await;
    assert_eq!((ids, pending), (vec!["n1".to_owned()], 2));
    // A token limited to some documents sees only them, and counts only them.
    let some = app.token(&alice, "io.cozy.notes:GET:n2,n3,n9");
    let (ids, pending, last) = page(format!("{NOTES}/_changes?limit=2"), some.clone()).await;
    assert_eq!((ids, pending), (vec!["n2".to_owned(), "n3".to_owned()], 1));
    let (ids, pending, _) = page(format!("{NOTES}/_changes?since={last}"), some).await;
    assert_eq!((ids, pending), (vec!["n9".to_owned()], 0));
}

/// The text of a document on an instance.
async fn doc_text(inst: &TestInstance, id: &str, token: &str) -> (u16, String) {
    get_text(inst, &format!("{NOTES}/{id}"), token).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_documents_arrive_on_the_peer_and_come_back_exactly_as_written() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let bob = app.add_instance("bob", PASS);
    let ta = app.token(&alice, "io.cozy.notes");
    let tb = app.token(&bob, "io.cozy.notes");
    let (s, v) = send(&alice, Method::PUT, &format!("{NOTES}/shared"), &ta, ISSUE).await;
    assert_eq!(s, 201, "{v}");
    let id = flow::create_sharing(
        &alice,
        &ta,
        json!([flow::notes_rule(&["shared"])]),
        json!([{"instance": format!("http://{}", bob.domain)}]),
        json!([]),
    )
    .await;
    let link = flow::link(&app, &alice, &id, 1).await;
    flow::answer_invitation(&link, &bob, "accept").await;
    // Ids travel XOR-ed with the member's key (Cozy's scheme).
    let s = flow::load(&app, &alice, &id).await;
    let key = xor::parse_key(s.members[1].xor_key.as_deref().unwrap()).unwrap();
    let on_bob = xor::xor_id("shared", &key);

    eventually(20, "bob receives the document", || async { doc_text(&bob, &on_bob, &tb).await.0 == 200 }).await;
    let (_, at_alice) = doc_text(&alice, "shared", &ta).await;
    let (_, at_bob) = doc_text(&bob, &on_bob, &tb).await;
    let rev = |text: &str| serde_json::from_str::<Value>(text).unwrap()["_rev"].as_str().unwrap().to_owned();
    assert_eq!(rev(&at_bob), rev(&at_alice));
    assert_eq!(at_bob, at_alice.replacen("\"shared\"", &format!("\"{on_bob}\""), 1), "same revision, same text");
    assert_eq!(body_of(&at_bob), ISSUE);

    // Bob edits it with other exact values; alice gets them as bob wrote them.
    let edit = with_meta(&format!(r#""_rev":"{}""#, rev(&at_bob)), MIXED);
    let (s, v) = send(&bob, Method::PUT, &format!("{NOTES}/{on_bob}"), &tb, &edit).await;
    assert_eq!(s, 201, "{v}");
    eventually(20, "alice receives bob's edit", || async {
        body_of(&doc_text(&alice, "shared", &ta).await.1) == MIXED
    })
    .await;
    let (_, at_alice) = doc_text(&alice, "shared", &ta).await;
    let (_, at_bob) = doc_text(&bob, &on_bob, &tb).await;
    assert_eq!(at_bob, at_alice.replacen("\"shared\"", &format!("\"{on_bob}\""), 1));
}

/// JSON values as a tree, written out compactly or with whitespace everywhere it may go.
#[derive(Clone, Debug)]
enum J {
    Null,
    Bool(bool),
    /// A number as written.
    Num(String),
    /// A string's content as written (escapes included).
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn write(&self, out: &mut String, ws: &str) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => {
                out.push('"');
                out.push_str(s);
                out.push('"');
            }
            J::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    out.push_str(if i > 0 { "," } else { "" });
                    out.push_str(ws);
                    v.write(out, ws);
                }
                out.push_str(ws);
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    out.push_str(if i > 0 { "," } else { "" });
                    out.push_str(ws);
                    out.push('"');
                    out.push_str(k);
                    out.push('"');
                    out.push_str(ws);
                    out.push(':');
                    out.push_str(ws);
                    v.write(out, ws);
                }
                out.push_str(ws);
                out.push('}');
            }
        }
    }

    fn text(&self, ws: &str) -> String {
        let mut out = String::new();
        self.write(&mut out, ws);
        out
    }
}

/// Numbers of any size and precision, spelled every way JSON allows.
fn number() -> impl Strategy<Value = String> {
    ("-?", "0|[1-9][0-9]{0,40}", proptest::option::of("\\.[0-9]{1,25}"), proptest::option::of("[eE][+-]?[0-9]{1,3}"))
        .prop_map(|(sign, int, frac, exp)| {
            format!("{sign}{int}{}{}", frac.unwrap_or_default(), exp.unwrap_or_default())
        })
}

/// String contents: any characters, escaped where JSON requires, and escapes JSON allows.
fn string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<char>()
            .prop_filter("needs an escape", |c| *c != '"' && *c != '\\' && (*c as u32) >= 0x20)
            .prop_map(String::from),
        prop::sample::select(vec![
            "\\\"",
            "\\\\",
            "\\/",
            "\\b",
            "\\f",
            "\\n",
            "\\r",
            "\\t",
            "\\u00e9",
            "\\u0000",
            "\\ud83d\\ude00",
            "\\u005f"
        ])
        .prop_map(str::to_owned),
        (0x20u32..0xd7ff).prop_map(|c| format!("\\u{c:04X}")),
    ];
    prop::collection::vec(piece, 0..8).prop_map(|p| p.concat())
}

fn value() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        number().prop_map(J::Num),
        string().prop_map(J::Str),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            prop::collection::vec((string(), inner), 0..6).prop_map(J::Obj),
        ]
    })
}

/// A document body: top-level keys never start with `_` (those are CouchDB's), in any order.
fn document() -> impl Strategy<Value = J> {
    prop::collection::vec((string().prop_map(|k| format!("k{k}")), value()), 0..8).prop_map(J::Obj)
}

#[test]
fn random_documents_round_trip_exactly_through_the_sqlite_store() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("p.sqlite"), 1000).unwrap());
    let t = Doctype::parse("io.hearth.random").unwrap();
    let counter = std::sync::atomic::AtomicU64::new(0);
    let mut runner = TestRunner::new(Config { failure_persistence: None, ..Config::default() });
    runner
        .run(&document(), |doc| {
            let compact = doc.text("");
            let spaced = doc.text(" \n\t ");
            let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // As a client sends it: spaced out, with `_id` among the members.
            let sent = if compact == "{}" {
                format!(r#"{{ "_id" : "d{i}" }}"#)
            } else {
                format!(r#"{{ "_id" : "d{i}" ,{}"#, &spaced[1..])
            };
            let raw = RawValue::from_string(sent.clone()).map_err(|e| TestCaseError::fail(format!("{e}: {sent}")))?;
            let w = parse_doc(&raw, None, true).map_err(TestCaseError::fail)?;
            prop_assert_eq!(w.body.as_str(), compact.as_str());
            let mut replica = parse_doc(&raw, None, true).map_err(TestCaseError::fail)?;
            replica.id = DocId::parse(&format!("r{i}")).unwrap();
            replica.revisions = Some(vec!["1-abc".parse().unwrap()]);
            replica.rev = replica.revisions.as_ref().and_then(|r| r.first().cloned());
            let (store, t, id) = (store.clone(), t.clone(), w.id.clone());
            let (edited, replicated) = rt.block_on(async move {
                let rev = match store.bulk_docs(&t, vec![w], true).await.unwrap().pop() {
                    Some(WriteResult::Ok { rev, .. }) => rev,
                    other => panic!("{other:?}"),
                };
                assert!(store.bulk_docs(&t, vec![replica.clone()], false).await.unwrap().is_empty());
                let edited = store.get(&t, &id, GetOptions::default()).await.unwrap().doc;
                assert_eq!(edited.rev, rev);
                let replicated = match store.open_revs(&t, &replica.id, OpenRevs::All, false).await.unwrap().pop() {
                    Some(OpenRev::Found(d)) => d,
                    other => panic!("{other:?}"),
                };
                (edited, replicated)
            });
            prop_assert_eq!(edited.body.as_str(), compact.as_str());
            prop_assert_eq!(replicated.body.as_str(), compact.as_str());
            let rendered = render(&edited).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let expected = if compact == "{}" {
                format!(r#"{{"_id":"d{i}","_rev":"{}"}}"#, edited.rev)
            } else {
                format!(r#"{{"_id":"d{i}","_rev":"{}",{}"#, edited.rev, &compact[1..])
            };
            prop_assert_eq!(rendered.get(), expected.as_str());
            // Whitespace aside, the text means what was sent (where serde_json can read it).
            if let (Ok(a), Ok(b)) = (serde_json::from_str::<Value>(&compact), serde_json::from_str::<Value>(&spaced)) {
                prop_assert_eq!(a, b);
            }
            Ok(())
        })
        .unwrap();
}
