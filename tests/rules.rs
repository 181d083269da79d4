//! The rules' `add`, `update` and `remove` enforced at both ends, over real HTTP between two
//! instances: every combination, on documents of the initial set (named by an id rule, or
//! selected by a field when the sharing starts) and on documents that begin to match later,
//! in both directions. In a consistent sharing nothing is ever refused, so every combination
//! also checks that both ends report their link healthy. Then Cozy's single-note rule, a
//! member accepting later, and refusals as the owner's status API and CLI show them.

mod common;

use std::process::{Command, Stdio};

use common::flow::*;
use common::{eventually, spawn_app, TestApp, TestInstance};
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

const WAIT: u64 = 60;
const POLICIES: [&str; 3] = ["none", "push", "sync"];

/// Whether changes under `policy` travel from the owner to a recipient (`from_owner`) or
/// back: `push` from the owner only, `sync` both ways, `none` (and `revoke`) never.
fn flows(policy: &str, from_owner: bool) -> bool {
    policy == "sync" || (policy == "push" && from_owner)
}

/// One sharing between alice and bob with one combination of `add`, `update`, `remove`: an
/// id rule naming one note, and a selector rule taking the todos of the case's own list.
struct Case {
    add: &'static str,
    update: &'static str,
    remove: &'static str,
    sid: String,
    /// alice's ids: the note (id rule), the todo of the initial set, a todo alice adds later.
    note: String,
    todo: String,
    later: String,
    /// bob's id of a todo bob adds later.
    bobs: String,
}

impl Case {
    fn name(&self) -> String {
        format!("add {}, update {}, remove {}", self.add, self.update, self.remove)
    }

    fn list(&self) -> String {
        format!("list-{}-{}-{}", self.add, self.update, self.remove)
    }
}

struct World {
    app: TestApp,
    alice: TestInstance,
    bob: TestInstance,
    a: String,
    b: String,
}

impl World {
    async fn new() -> World {
        let app = spawn_app().await;
        let alice = app.add_instance("alice", PASS);
        let bob = app.add_instance("bob", PASS);
        let a = app.token(&alice, "io.cozy.notes io.cozy.todos io.cozy.sharings");
        let b = app.token(&bob, "io.cozy.notes io.cozy.todos io.cozy.sharings");
        World { app, alice, bob, a, b }
    }

    /// Bob's id of one of alice's documents in the case's sharing (and back).
    async fn on_bob(&self, case: &Case, id: &str) -> String {
        id_on(&self.app, &self.alice, &case.sid, 1, id).await
    }

    /// Waits until neither end has anything left to send, then checks that neither end had a
    /// document refused.
    async fn settle(&self, case: &Case) {
        let idle = |r: &Value| r.is_null() || (r["pending"] == 0 && r["running"] == false);
        eventually(WAIT, &format!("{}: replication settles", case.name()), || async {
            idle(&replication_state(&self.alice, &self.a, &case.sid, 1).await)
                && idle(&replication_state(&self.bob, &self.b, &case.sid, 0).await)
        })
        .await;
        for (who, r) in [
            ("alice", replication_state(&self.alice, &self.a, &case.sid, 1).await),
            ("bob", replication_state(&self.bob, &self.b, &case.sid, 0).await),
        ] {
            if r.is_null() {
                continue;
            }
            assert_eq!(
                (r["health"].as_str(), r["refused_docs"].as_u64(), r["doc_write_failures"].as_u64()),
                (Some("healthy"), Some(0), Some(0)),
                "{}: {who}'s link: {r}",
                case.name()
            );
        }
    }
}

fn hex_id(prefix: &str, n: usize) -> String {
    format!("{prefix}{n:08x}")
}

/// Every combination of `add` and `update` with one `remove` policy, all the phases of the
/// flow run for every combination at once.
async fn combinations_flow_as_their_rules_say(remove: &'static str) {
    let w = World::new().await;
    let mut cases = Vec::new();
    for (n, add) in POLICIES.into_iter().enumerate() {
        for (m, update) in POLICIES.into_iter().enumerate() {
            let k = n * 3 + m;
            cases.push(Case {
                add,
                update,
                remove,
                sid: String::new(),
                note: hex_id("5e1f0c2ab8d34f6e9a7b1c0d", k),
                todo: hex_id("7c2e1d3fa9b84c5d8e6f0a1b", k),
                later: hex_id("3a4b5c6d7e8f90a1b2c3d4e5", k),
                bobs: hex_id("0f1e2d3c4b5a69788796a5b4", k),
            });
        }
    }
    // The initial set: alice's note and a todo of the case's list, before the sharing.
    for c in &cases {
        put_doc(&w.alice, &w.a, "io.cozy.notes", &c.note, json!({"title": "note"})).await;
        put_doc(&w.alice, &w.a, "io.cozy.todos", &c.todo, json!({"list_id": c.list(), "text": "initial"})).await;
    }
    let w = &w;
    let sids = join_all(cases.iter().map(|c| {
        let policy = (c.add, c.update, c.remove);
        let rules = json!([
            rule_with("io.cozy.notes", None, &[&c.note], policy),
            rule_with("io.cozy.todos", Some("list_id"), &[&c.list()], policy),
        ]);
        async move { share(&w.app, &w.alice, rules, &[(&w.bob, false)]).await }
    }))
    .await;
    for (c, sid) in cases.iter_mut().zip(sids) {
        c.sid = sid;
    }
    join_all(cases.iter().map(|c| phases(w, c))).await;
}

async fn phases(w: &World, c: &Case) {
    let name = c.name();
    let (note_b, todo_b, later_b) =
        (w.on_bob(c, &c.note).await, w.on_bob(c, &c.todo).await, w.on_bob(c, &c.later).await);
    let bobs_a = w.on_bob(c, &c.bobs).await;

    // 1. The initial set reaches bob whatever `add` says.
    eventually(WAIT, &format!("{name}: the initial set reaches bob"), || async {
        winner(&w.app, &w.bob, "io.cozy.notes", &note_b).await.is_some()
            && winner(&w.app, &w.bob, "io.cozy.todos", &todo_b).await.is_some()
    })
    .await;
    w.settle(c).await;

    // 2. Documents that begin to match later: `add` decides, in each direction.
    put_doc(&w.alice, &w.a, "io.cozy.todos", &c.later, json!({"list_id": c.list(), "text": "alice's later"})).await;
    put_doc(&w.bob, &w.b, "io.cozy.todos", &c.bobs, json!({"list_id": c.list(), "text": "bob's later"})).await;
    w.settle(c).await;
    let later_on_bob = winner(&w.app, &w.bob, "io.cozy.todos", &later_b).await.is_some();
    let bobs_on_alice = winner(&w.app, &w.alice, "io.cozy.todos", &bobs_a).await.is_some();
    assert_eq!(later_on_bob, flows(c.add, true), "{name}: alice's later todo on bob");
    assert_eq!(bobs_on_alice, flows(c.add, false), "{name}: bob's later todo on alice");

    // 3. Alice updates the initial documents: `update`, owner to recipient.
    let mut initial_revs = Vec::new();
    for (doctype, id, on_bob) in [("io.cozy.notes", &c.note, &note_b), ("io.cozy.todos", &c.todo, &todo_b)] {
        let (rev, mut body) = winner(&w.app, &w.alice, doctype, id).await.unwrap();
        initial_revs.push(winner(&w.app, &w.bob, doctype, on_bob).await.unwrap().0);
        body["_rev"] = json!(rev);
        body["edited_by"] = json!("alice");
        put_doc(&w.alice, &w.a, doctype, id, body).await;
    }
    w.settle(c).await;
    for ((doctype, id, on_bob), initial) in
        [("io.cozy.notes", &c.note, &note_b), ("io.cozy.todos", &c.todo, &todo_b)].into_iter().zip(&initial_revs)
    {
        let alices = winner(&w.app, &w.alice, doctype, id).await.unwrap().0;
        let bobs = winner(&w.app, &w.bob, doctype, on_bob).await.unwrap().0;
        let expected = if flows(c.update, true) { &alices } else { initial };
        assert_eq!(&bobs, expected, "{name}: alice's update of {doctype} on bob");
    }

    // 4. Bob updates his copies: `update`, recipient to owner.
    let mut bob_revs = Vec::new();
    for (doctype, on_bob) in [("io.cozy.notes", &note_b), ("io.cozy.todos", &todo_b)] {
        let (rev, mut body) = winner(&w.app, &w.bob, doctype, on_bob).await.unwrap();
        body["_rev"] = json!(rev);
        body["edited_by"] = json!("bob");
        bob_revs.push(put_doc(&w.bob, &w.b, doctype, on_bob, body).await);
    }
    w.settle(c).await;
    for ((doctype, id), bobs) in [("io.cozy.notes", &c.note), ("io.cozy.todos", &c.todo)].into_iter().zip(&bob_revs) {
        let on_alice = leaves(&w.app, &w.alice, doctype, id).await.contains(bobs);
        assert_eq!(on_alice, flows(c.update, false), "{name}: bob's update of {doctype} on alice");
    }

    // 5. Removals.
    if c.remove == "revoke" {
        // Alice deletes the note: the sharing ends on both sides, bob keeps his copy.
        let rev = winner(&w.app, &w.alice, "io.cozy.notes", &c.note).await.unwrap().0;
        let (s, _) =
            w.alice.call(Method::DELETE, &format!("/data/io.cozy.notes/{}?rev={rev}", c.note), Some(&w.a), None).await;
        assert_eq!(s, 200);
        eventually(WAIT, &format!("{name}: the deletion revokes the sharing"), || async {
            !load(&w.app, &w.alice, &c.sid).await.active && !load(&w.app, &w.bob, &c.sid).await.active
        })
        .await;
        assert!(winner(&w.app, &w.bob, "io.cozy.notes", &note_b).await.is_some(), "{name}: bob keeps his copy");
        return;
    }
    let delete = |inst: &'static str, doctype: &'static str, id: String| async move {
        let (inst, token, app) = if inst == "alice" { (&w.alice, &w.a, &w.app) } else { (&w.bob, &w.b, &w.app) };
        let rev = winner(app, inst, doctype, &id).await.unwrap().0;
        let (s, v) = inst.call(Method::DELETE, &format!("/data/{doctype}/{id}?rev={rev}"), Some(token), None).await;
        assert_eq!(s, 200, "{v}");
        v["rev"].as_str().unwrap().to_owned()
    };
    // Alice deletes the note and moves her later todo (when bob has it) out of the list; bob
    // deletes his copy of the initial todo, and his later todo (when alice has it).
    let note_tombstone = delete("alice", "io.cozy.notes", c.note.clone()).await;
    if later_on_bob {
        let (rev, _) = winner(&w.app, &w.alice, "io.cozy.todos", &c.later).await.unwrap();
        let body = json!({"_rev": rev, "list_id": "private", "text": "secret"});
        put_doc(&w.alice, &w.a, "io.cozy.todos", &c.later, body).await;
    }
    let todo_tombstone = delete("bob", "io.cozy.todos", todo_b.clone()).await;
    if bobs_on_alice {
        delete("bob", "io.cozy.todos", c.bobs.clone()).await;
    }
    w.settle(c).await;
    let on_bob = leaves(&w.app, &w.bob, "io.cozy.notes", &note_b).await.contains(&note_tombstone);
    assert_eq!(on_bob, flows(c.remove, true), "{name}: alice's deletion on bob");
    if later_on_bob {
        let copy = winner(&w.app, &w.bob, "io.cozy.todos", &later_b).await;
        assert_eq!(copy.is_none(), flows(c.remove, true), "{name}: the todo alice moved out, on bob: {copy:?}");
        assert!(copy.is_none_or(|(_, body)| body["text"] == "alice's later"), "{name}: nothing of the new content");
    }
    let on_alice = leaves(&w.app, &w.alice, "io.cozy.todos", &c.todo).await.contains(&todo_tombstone);
    assert_eq!(on_alice, flows(c.remove, false), "{name}: bob's deletion on alice");
    if bobs_on_alice {
        let copy = winner(&w.app, &w.alice, "io.cozy.todos", &bobs_a).await;
        assert_eq!(copy.is_none(), flows(c.remove, false), "{name}: bob's deletion of his later todo on alice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_add_and_update_combination_flows_as_its_rule_says_with_remove_none() {
    combinations_flow_as_their_rules_say("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_add_and_update_combination_flows_as_its_rule_says_with_remove_push() {
    combinations_flow_as_their_rules_say("push").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_add_and_update_combination_flows_as_its_rule_says_with_remove_sync() {
    combinations_flow_as_their_rules_say("sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_add_and_update_combination_flows_as_its_rule_says_with_remove_revoke() {
    combinations_flow_as_their_rules_say("revoke").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cozys_single_note_rule_reaches_the_recipient_and_both_links_stay_healthy() {
    let w = World::new().await;
    const NOTE: &str = "9d5a1c2e3f4b4a6c8d7e9f0a1b2c3d4e";
    put_doc(&w.alice, &w.a, "io.cozy.notes", NOTE, json!({"title": "minutes"})).await;
    let rules = json!([{"title": "note", "doctype": "io.cozy.notes", "values": [NOTE],
        "add": "none", "update": "sync", "remove": "revoke"}]);
    let sid = share(&w.app, &w.alice, rules, &[(&w.bob, false)]).await;
    let on_bob = id_on(&w.app, &w.alice, &sid, 1, NOTE).await;
    eventually(WAIT, "the note reaches bob", || async {
        winner(&w.app, &w.bob, "io.cozy.notes", &on_bob).await.is_some()
    })
    .await;
    // Edits travel both ways.
    let (rev, _) = winner(&w.app, &w.bob, "io.cozy.notes", &on_bob).await.unwrap();
    let bobs = put_doc(&w.bob, &w.b, "io.cozy.notes", &on_bob, json!({"_rev": rev, "title": "bob's"})).await;
    eventually(WAIT, "bob's edit reaches alice", || async {
        winner(&w.app, &w.alice, "io.cozy.notes", NOTE).await.is_some_and(|(r, _)| r == bobs)
    })
    .await;
    let alices = put_doc(&w.alice, &w.a, "io.cozy.notes", NOTE, json!({"_rev": bobs, "title": "alice's"})).await;
    eventually(WAIT, "alice's edit reaches bob", || async {
        winner(&w.app, &w.bob, "io.cozy.notes", &on_bob).await.is_some_and(|(r, _)| r == alices)
    })
    .await;
    let case = Case {
        add: "none",
        update: "sync",
        remove: "revoke",
        sid: sid.clone(),
        note: NOTE.into(),
        todo: String::new(),
        later: String::new(),
        bobs: String::new(),
    };
    w.settle(&case).await;
    let r = replication_state(&w.alice, &w.a, &sid, 1).await;
    assert!(r["docs_written"].as_u64().unwrap() >= 2, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_accepting_later_gets_the_initial_set_but_not_what_add_kept_out() {
    let w = World::new().await;
    let carol = w.app.add_instance("carol", PASS);
    let c = w.app.token(&carol, "io.cozy.todos io.cozy.sharings");
    put_doc(&w.alice, &w.a, "io.cozy.todos", "0123456789abcdef0123456789abcdef", json!({"list_id": "l1"})).await;
    let token = w.app.token(&w.alice, "io.cozy.todos");
    let rules = json!([rule_with("io.cozy.todos", Some("list_id"), &["l1"], ("none", "sync", "sync"))]);
    let recipients =
        json!([{"instance": format!("http://{}", w.bob.domain)}, {"instance": format!("http://{}", carol.domain)}]);
    let sid = create_sharing(&w.alice, &token, rules, recipients, json!([])).await;
    answer_invitation(&link(&w.app, &w.alice, &sid, 1).await, &w.bob, "accept").await;
    let initial_on_bob = id_on(&w.app, &w.alice, &sid, 1, "0123456789abcdef0123456789abcdef").await;
    eventually(WAIT, "the initial todo reaches bob", || async {
        winner(&w.app, &w.bob, "io.cozy.todos", &initial_on_bob).await.is_some()
    })
    .await;
    // A todo that begins to match later stays out (add: none), even when carol accepts.
    put_doc(&w.alice, &w.a, "io.cozy.todos", "fedcba9876543210fedcba9876543210", json!({"list_id": "l1"})).await;
    answer_invitation(&link(&w.app, &w.alice, &sid, 2).await, &carol, "accept").await;
    let initial_on_carol = id_on(&w.app, &w.alice, &sid, 2, "0123456789abcdef0123456789abcdef").await;
    let later_on_carol = id_on(&w.app, &w.alice, &sid, 2, "fedcba9876543210fedcba9876543210").await;
    eventually(WAIT, "the initial todo reaches carol, marked as such", || async {
        winner(&w.app, &carol, "io.cozy.todos", &initial_on_carol).await.is_some()
    })
    .await;
    for (member, inst, token) in [(1, &w.bob, &w.b), (2, &carol, &c)] {
        eventually(WAIT, "both links settle", || async {
            let r = replication_state(&w.alice, &w.a, &sid, member).await;
            r["pending"] == 0 && r["running"] == false
        })
        .await;
        let r = replication_state(&w.alice, &w.a, &sid, member).await;
        assert_eq!((r["health"].as_str(), r["refused_docs"].as_u64()), (Some("healthy"), Some(0)), "{r}");
        let (_, listed) = inst.call(Method::GET, &format!("/sharings/{sid}"), Some(token), None).await;
        assert_eq!(listed["data"]["relationships"]["shared_docs"]["data"].as_array().unwrap().len(), 1, "{listed}");
    }
    assert!(winner(&w.app, &carol, "io.cozy.todos", &later_on_carol).await.is_none());
}

/// Runs the `hearth` CLI against the test app's server and data.
fn cli(app: &TestApp, args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
    cmd.env("HEARTH_DATA_DIR", app.dir.path()).env("HEARTH_LISTEN", &app.config.listen).env("HEARTH_LOG", "warn");
    if let Some(url) = &app.config.couchdb.url {
        cmd.env("HEARTH_STORE", "couchdb").env("HEARTH_COUCHDB__URL", url);
        for (var, value) in [
            ("HEARTH_COUCHDB__USER", app.config.couchdb.user.clone()),
            ("HEARTH_COUCHDB__PREFIX", app.config.couchdb.prefix.clone()),
            ("HEARTH_COUCHDB__PASSWORD", std::env::var("HEARTH_TEST_COUCHDB_PASSWORD").ok()),
        ] {
            if let Some(v) = value {
                cmd.env(var, v);
            }
        }
    }
    let out = cmd.args(args).stdin(Stdio::null()).output().expect("hearth cli");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_refusing_documents_is_reported_degraded_with_the_reason_by_the_api_and_the_cli() {
    let mut w = World::new().await;
    const CLASH: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    const FINE: &str = "0918273645abcdef0918273645abcdef";
    put_doc(&w.alice, &w.a, "io.cozy.notes", CLASH, json!({"title": "shared"})).await;
    put_doc(&w.alice, &w.a, "io.cozy.notes", FINE, json!({"title": "fine"})).await;
    let token = w.app.token(&w.alice, "io.cozy.notes");
    let rules = json!([rule_with("io.cozy.notes", None, &[CLASH, FINE], ("sync", "sync", "sync"))]);
    let recipients = json!([{"instance": format!("http://{}", w.bob.domain)}]);
    let sid = create_sharing(&w.alice, &token, rules, recipients, json!([])).await;
    // Before accepting, bob happens to have a document of his own under the id the note
    // will have on his instance: he refuses the note (it exists there outside the sharing).
    let clash_on_bob = id_on(&w.app, &w.alice, &sid, 1, CLASH).await;
    let own = put_doc(&w.bob, &w.b, "io.cozy.notes", &clash_on_bob, json!({"title": "bob's own"})).await;
    answer_invitation(&link(&w.app, &w.alice, &sid, 1).await, &w.bob, "accept").await;
    let fine_on_bob = id_on(&w.app, &w.alice, &sid, 1, FINE).await;
    eventually(WAIT, "alice reports bob's refusal", || async {
        replication_state(&w.alice, &w.a, &sid, 1).await["refused_docs"] == 1
    })
    .await;
    assert!(winner(&w.app, &w.bob, "io.cozy.notes", &fine_on_bob).await.is_some(), "the rest of the batch applied");
    assert_eq!(winner(&w.app, &w.bob, "io.cozy.notes", &clash_on_bob).await.unwrap().0, own, "bob's own is untouched");
    let check = |r: &Value| {
        assert_eq!(r["health"], "degraded", "{r}");
        assert_eq!((r["refused_docs"].as_u64(), r["doc_write_failures"].as_u64()), (Some(1), Some(1)), "{r}");
        assert_eq!(r["last_refusal"]["doc"], format!("io.cozy.notes/{CLASH}"), "alice's id: {r}");
        assert!(r["last_refusal"]["reason"].as_str().unwrap().contains("exists here outside this sharing"), "{r}");
        assert_eq!(r["pending"], 0, "{r}");
    };
    check(&replication_state(&w.alice, &w.a, &sid, 1).await);
    // More successful runs do not make the link healthy: bob's copy is still incomplete.
    let (rev, _) = winner(&w.app, &w.alice, "io.cozy.notes", FINE).await.unwrap();
    let edit = put_doc(&w.alice, &w.a, "io.cozy.notes", FINE, json!({"_rev": rev, "title": "edited"})).await;
    eventually(WAIT, "the edit reaches bob", || async {
        winner(&w.app, &w.bob, "io.cozy.notes", &fine_on_bob).await.is_some_and(|(r, _)| r == edit)
    })
    .await;
    eventually(WAIT, "the run is over", || async {
        let r = replication_state(&w.alice, &w.a, &sid, 1).await;
        r["running"] == false && r["pending"] == 0
    })
    .await;
    let r = replication_state(&w.alice, &w.a, &sid, 1).await;
    check(&r);
    assert!(r["docs_written"].as_u64().unwrap() >= 2, "{r}");
    // The command line says the same, with the reason.
    let text = cli(&w.app, &["sharings", "status", &w.alice.domain, &sid]);
    let row = text.lines().find(|l| l.starts_with("1 ")).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("degraded"), "{text}");
    assert!(text.contains("exists here outside this sharing") && text.contains(CLASH), "{text}");
    let json: Value =
        serde_json::from_str(&cli(&w.app, &["sharings", "status", &w.alice.domain, &sid, "--json"])).unwrap();
    check(&json["data"]["attributes"]["members"][1]["replication"]);
    // And after a restart: the refusal is kept with the checkpoint.
    w.app.restart().await;
    check(&replication_state(&w.alice, &w.a, &sid, 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sharing_lists_the_shared_documents_page_by_page_in_each_instances_ids() {
    let w = World::new().await;
    let mut todos: Vec<String> = (0..5).map(|i| hex_id("c0ffee00c0ffee00c0ffee00", i)).collect();
    for t in &todos {
        put_doc(&w.alice, &w.a, "io.cozy.todos", t, json!({"list_id": "l1"})).await;
    }
    put_doc(&w.alice, &w.a, "io.cozy.todos", "00000000000000000000000000000000", json!({"list_id": "l2"})).await;
    const NOTE: &str = "feedfacefeedfacefeedfacefeedface";
    put_doc(&w.alice, &w.a, "io.cozy.notes", NOTE, json!({"title": "n"})).await;
    let rules = json!([
        rule_with("io.cozy.todos", Some("list_id"), &["l1"], ("sync", "sync", "sync")),
        rule_with("io.cozy.notes", None, &[NOTE], ("sync", "sync", "sync")),
    ]);
    let sid = share(&w.app, &w.alice, rules, &[(&w.bob, false)]).await;
    // A deleted document is no longer listed.
    let gone = todos.pop().unwrap();
    let rev = winner(&w.app, &w.alice, "io.cozy.todos", &gone).await.unwrap().0;
    let (s, _) = w.alice.call(Method::DELETE, &format!("/data/io.cozy.todos/{gone}?rev={rev}"), Some(&w.a), None).await;
    assert_eq!(s, 200);
    let mut expected: Vec<(String, String)> = todos.iter().map(|t| ("io.cozy.todos".to_owned(), t.clone())).collect();
    expected.push(("io.cozy.notes".into(), NOTE.into()));
    expected.sort();
    let list_all = |inst: &TestInstance, token: String| {
        let inst = TestInstance { domain: inst.domain.clone(), port: inst.port, client: inst.client.clone() };
        let sid = sid.clone();
        async move {
            let mut out = Vec::new();
            let mut url = format!("/sharings/{sid}?page[limit]=2");
            loop {
                let (s, v) = inst.call(Method::GET, &url, Some(&token), None).await;
                assert_eq!(s, 200, "{v}");
                let page = &v["data"]["relationships"]["shared_docs"];
                let data = page["data"].as_array().unwrap();
                assert!(data.len() <= 2, "{v}");
                out.extend(
                    data.iter().map(|d| (d["type"].as_str().unwrap().to_owned(), d["id"].as_str().unwrap().to_owned())),
                );
                match page["links"]["next"].as_str() {
                    Some(next) => url = next.to_owned(),
                    None => return out,
                }
            }
        }
    };
    assert_eq!(list_all(&w.alice, w.a.clone()).await, expected, "alice's ids");
    // Bob lists his own ids, once his copies are there (and so is bob's instance, calling
    // alice's with its credentials).
    let mut on_bob = Vec::new();
    for (t, id) in &expected {
        on_bob.push((t.clone(), id_on(&w.app, &w.alice, &sid, 1, id).await));
    }
    on_bob.sort();
    eventually(WAIT, "bob lists what he received", || {
        let list = list_all(&w.bob, w.b.clone());
        let on_bob = on_bob.clone();
        async move { list.await == on_bob }
    })
    .await;
    let creds = load(&w.app, &w.bob, &sid).await.members[0].outbound.clone().unwrap();
    let mut as_peer = list_all(&w.alice, creds.access_token.clone()).await;
    as_peer.sort();
    assert_eq!(as_peer, on_bob, "a member's instance gets its own ids");
    for bad in ["page[limit]=0", "page[limit]=1001", "page[limit]=x", "page[cursor]=nope", "page[cursor]=Bad/x"] {
        let (s, v) = w.alice.call(Method::GET, &format!("/sharings/{sid}?{bad}"), Some(&w.a), None).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
}
