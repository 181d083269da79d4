//! Shared folders converge (issue 13, items 1, 3 and 4): three instances on two servers (alice
//! the owner and carol on one, bob on the other), real HTTP between them. Membership follows
//! moves of whole subtrees; concurrent changes end in the same tree on every member by the
//! rules of `files::shared`; every sharing rule holds for files. Concurrency is made for real:
//! bob's server is stopped while alice changes something, then bob changes the same thing as
//! soon as it is back, before alice's retry (which backs off at least 2 s) reaches him.
//!
//! One file, over 800 lines: one binary (each integration test file is linked apart, about a
//! minute each on both test passes) for one three-instance fixture and its helpers.

mod common;

use std::collections::BTreeMap;

use common::bytes::{enc, md5_b64 as md5_of, mkdir, upload};
use common::flow::{answer_invitation, create_sharing, link, load, replication_state, winner, PASS};
use common::{eventually, spawn_app, spawn_app_with, TestApp, TestInstance};
use reqwest::Method;
use serde_json::{json, Value};

const ROOT: &str = "io.cozy.files.root-dir";
/// Seconds to wait for convergence: generous, since CI runs these three-instance tests on two
/// cores beside every other test (a wait returns as soon as the trees agree).
const WAIT: u64 = 90;
const FILES: &str = "io.cozy.files";

/// `PUT /files/:id`: new content for a file; answers the status.
async fn replace(i: &TestInstance, token: &str, id: &str, data: &[u8]) -> u16 {
    let resp = i
        .req(Method::PUT, &format!("/files/{}", enc(id)), Some(token))
        .header("Content-MD5", md5_of(data))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert!(status == 200 || status == 403, "replace: {status} {}", resp.text().await.unwrap_or_default());
    status
}

/// Replaces file `id`'s content on `i` in-process, past `/files`: a write `/files` no longer
/// takes from a read-only member (403, see `http::files`), yet one its instance may hold
/// (made before the member became read-only, or by a client beside hearth's API).
async fn replace_past_files_api(app: &TestApp, i: &TestInstance, id: &str, data: &[u8]) {
    let files = app.files.of(&app.instance(&i.domain)).await.unwrap();
    let target = hearth::files::UploadTarget::Replace { id: id.to_owned(), if_match: None };
    let mut up = files.begin_upload(target, hearth::files::UploadSpec::default()).await.unwrap();
    up.write(bytes::Bytes::copy_from_slice(data)).await.unwrap();
    files.finish_upload(up).await.unwrap();
}

async fn patch(i: &TestInstance, token: &str, id: &str, attrs: Value) {
    let body = json!({"data": {"type": FILES, "attributes": attrs.clone()}});
    let (s, v) = i.call(Method::PATCH, &format!("/files/{}", enc(id)), Some(token), Some(body)).await;
    assert_eq!(s, 200, "patch {id} {attrs}: {v}");
}

async fn trash(i: &TestInstance, token: &str, id: &str) {
    let (s, v) = i.call(Method::DELETE, &format!("/files/{}", enc(id)), Some(token), None).await;
    assert_eq!(s, 200, "trash: {v}");
}

/// `GET /files/metadata?Path=`: the item's id, if there is one.
async fn at_path(i: &TestInstance, token: &str, path: &str) -> Option<String> {
    let (s, v) = i.call(Method::GET, &format!("/files/metadata?Path={}", enc(path)), Some(token), None).await;
    (s == 200).then(|| v["data"]["id"].as_str().unwrap().to_owned())
}

/// `GET /files/metadata?Path=`: the item's attributes, if there is one.
async fn attrs_at(i: &TestInstance, token: &str, path: &str) -> Option<Value> {
    let (s, v) = i.call(Method::GET, &format!("/files/metadata?Path={}", enc(path)), Some(token), None).await;
    (s == 200).then(|| v["data"]["attributes"].clone())
}

/// Runs the `hearth` command line against `app`'s data directory and server.
fn cli(app: &TestApp, args: &[&str]) -> String {
    use std::process::{Command, Stdio};
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

/// How many live (not deleted) leaves a document's revision tree has on an instance.
async fn live_leaves(app: &TestApp, i: &TestInstance, id: &str) -> usize {
    use hearth::store::{DocId, Doctype};
    let store = app.instance(&i.domain).store.clone();
    let id = DocId::parse(id).unwrap();
    let found = store.doc_leaves(&Doctype::parse(FILES).unwrap(), std::slice::from_ref(&id)).await.unwrap();
    found.get(&id).map_or(0, |l| l.iter().filter(|(_, deleted)| !deleted).count())
}

/// One member's view of a shared tree: relative path → (id in alice's id space, md5sum).
type Tree = BTreeMap<String, (String, Value)>;

/// The tree under `root` on `i`, ids mapped back into the owner's space with `key`.
async fn tree(i: &TestInstance, token: &str, root: &str, key: Option<&[u8]>) -> Tree {
    let mut out = Tree::new();
    let Some(root_id) = at_path(i, token, root).await else { return out };
    let mut stack = vec![(root_id, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let (s, v) = i.call(Method::GET, &format!("/files/{}?page[limit]=1000", enc(&dir)), Some(token), None).await;
        if s == 404 {
            // Removed while walked: the tree is changing; a marker keeps it from matching.
            out.insert(format!("{prefix} (removed while read)"), (dir, Value::Null));
            continue;
        }
        assert_eq!(s, 200, "{v}");
        for c in v["included"].as_array().cloned().unwrap_or_default() {
            let id = c["id"].as_str().unwrap().to_owned();
            let path = format!("{prefix}/{}", c["attributes"]["name"].as_str().unwrap());
            let owner_id = key.map_or(id.clone(), |k| hearth::sharing::xor::xor_id(&id, k));
            out.insert(path.clone(), (owner_id, c["attributes"]["md5sum"].clone()));
            if c["attributes"]["type"] == "directory" {
                stack.push((id, path));
            }
        }
    }
    out
}

/// Names in an instance's trash (top level), with their attributes.
async fn trash_list(i: &TestInstance, token: &str) -> BTreeMap<String, Value> {
    let (s, v) = i.call(Method::GET, "/files/trash", Some(token), None).await;
    assert_eq!(s, 200, "{v}");
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["attributes"]["name"].as_str().unwrap().to_owned(), c["attributes"].clone()))
        .collect()
}

fn files_rule(value: &str, policy: (&str, &str, &str)) -> Value {
    json!({"title": "Team", "doctype": FILES, "values": [value], "add": policy.0, "update": policy.1, "remove": policy.2})
}

const SYNC: (&str, &str, &str) = ("sync", "sync", "sync");
const SHARED: &str = "/Shared with me/Team";

/// Alice and carol on `one`, bob on `two`; alice's retries back off 2 to 4 s, so a change
/// made on bob right after his server comes back is concurrent with what alice did meanwhile.
struct World {
    one: TestApp,
    two: TestApp,
    alice: TestInstance,
    bob: TestInstance,
    carol: TestInstance,
    ta: String,
    tb: String,
    tc: String,
    sid: String,
    /// Bob's and carol's id transforms.
    keys: [Vec<u8>; 2],
    /// Whether bob, carol are read-only members.
    read_only: [bool; 2],
    /// Whether carol has accepted (see [`World::with_late_carol`]).
    carol_in: std::cell::Cell<bool>,
}

impl World {
    /// Alice shares the directory `/Projects` that `fill` made, bob and carol accept (read-only
    /// for those named in `read_only`), everything arrives.
    async fn new(
        policy: (&str, &str, &str),
        read_only: &[&str],
        fill: impl AsyncFnOnce(&TestInstance, &str, &str),
    ) -> (World, String) {
        Self::build(policy, read_only, false, fill).await
    }

    /// [`World::new`], but carol does not answer her invitation yet
    /// ([`World::carol_accepts`]).
    async fn with_late_carol(
        policy: (&str, &str, &str),
        read_only: &[&str],
        fill: impl AsyncFnOnce(&TestInstance, &str, &str),
    ) -> (World, String) {
        Self::build(policy, read_only, true, fill).await
    }

    async fn build(
        policy: (&str, &str, &str),
        read_only: &[&str],
        late_carol: bool,
        fill: impl AsyncFnOnce(&TestInstance, &str, &str),
    ) -> (World, String) {
        let one = spawn_app_with(|c| {
            c.replication.retry_base_ms = 4000;
            c.replication.retry_max_ms = 8000;
        })
        .await;
        let two = spawn_app().await;
        let alice = one.add_instance("alice", PASS);
        let carol = one.add_instance("carol", PASS);
        let bob = two.add_instance("bob", PASS);
        let (ta, tb, tc) = (one.token(&alice, FILES), two.token(&bob, FILES), one.token(&carol, FILES));
        let projects = mkdir(&alice, &ta, ROOT, "Projects").await;
        fill(&alice, &ta, &projects).await;
        let entry = |i: &TestInstance| json!({"instance": format!("http://{}", i.domain)});
        let (rw, ro): (Vec<_>, Vec<_>) =
            [("bob", &bob), ("carol", &carol)].into_iter().partition(|(n, _)| !read_only.contains(n));
        let rw: Vec<Value> = rw.iter().map(|(_, i)| entry(i)).collect();
        let ro: Vec<Value> = ro.iter().map(|(_, i)| entry(i)).collect();
        let sid = create_sharing(&alice, &ta, json!([files_rule(&projects, policy)]), json!(rw), json!(ro)).await;
        let s = load(&one, &alice, &sid).await;
        let mut keys = [Vec::new(), Vec::new()];
        for (i, m) in s.members.iter().enumerate().skip(1) {
            let is_bob = m.instance.as_deref() == Some(&format!("http://{}", bob.domain));
            if is_bob || !late_carol {
                answer_invitation(&link(&one, &alice, &sid, i).await, if is_bob { &bob } else { &carol }, "accept")
                    .await;
            }
        }
        let s = load(&one, &alice, &sid).await;
        for m in s.members.iter().skip(1) {
            let key = hearth::sharing::xor::parse_key(m.xor_key.as_deref().unwrap()).unwrap();
            let is_bob = m.instance.as_deref() == Some(&format!("http://{}", bob.domain));
            keys[usize::from(!is_bob)] = key;
        }
        let read_only = [read_only.contains(&"bob"), read_only.contains(&"carol")];
        let carol_in = std::cell::Cell::new(!late_carol);
        let w = World { one, two, alice, bob, carol, ta, tb, tc, sid, keys, read_only, carol_in };
        w.converged("the shared folder reaches bob and carol").await;
        (w, projects)
    }

    /// Carol accepts her invitation now (see [`World::with_late_carol`]).
    async fn carol_accepts(&self) {
        let index = 3 - self.bob_index().await;
        answer_invitation(&link(&self.one, &self.alice, &self.sid, index).await, &self.carol, "accept").await;
        self.carol_in.set(true);
    }

    fn on_bob(&self, id: &str) -> String {
        hearth::sharing::xor::xor_id(id, &self.keys[0])
    }

    fn on_carol(&self, id: &str) -> String {
        hearth::sharing::xor::xor_id(id, &self.keys[1])
    }

    /// Bob's member index on alice.
    async fn bob_index(&self) -> usize {
        let s = load(&self.one, &self.alice, &self.sid).await;
        s.members.iter().position(|m| m.instance.as_deref() == Some(&format!("http://{}", self.bob.domain))).unwrap()
    }

    /// Alice's, bob's and carol's trees (before carol accepts, alice's stands for hers).
    async fn trees(&self) -> [Tree; 3] {
        let a = tree(&self.alice, &self.ta, "/Projects", None).await;
        let c = if self.carol_in.get() {
            tree(&self.carol, &self.tc, SHARED, Some(&self.keys[1])).await
        } else {
            a.clone()
        };
        [a, tree(&self.bob, &self.tb, SHARED, Some(&self.keys[0])).await, c]
    }

    /// Waits until the three trees are the same (and alice's is not empty) while every link
    /// is at rest (nothing running, nothing pending), and stay so on a second read: a moment
    /// where the trees happen to agree halfway through settling a conflict does not count.
    /// Answers that tree.
    async fn converged(&self, what: &str) -> Tree {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(WAIT);
        loop {
            let [a, b, c] = self.trees().await;
            if !a.is_empty() && a == b && b == c && self.at_rest().await {
                let again = self.trees().await;
                if again.iter().all(|t| *t == a) {
                    return a;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                // What was seen last, to tell a tree that never converged from a link that
                // never came to rest.
                panic!(
                    "timed out waiting for: {what}\nalice: {a:?}\nbob: {b:?}\ncarol: {c:?}\nlinks: {:#?}",
                    self.link_states().await
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// No link of the sharing is running or has documents pending. (A read-only member's own
    /// link is left out: what it would send is refused, and stays pending.)
    async fn at_rest(&self) -> bool {
        let states = self.link_states().await;
        states.iter().all(|st| st.is_null() || (st["running"] != json!(true) && st["pending"].as_u64() == Some(0)))
    }

    /// The replication state of every link [`World::at_rest`] looks at.
    async fn link_states(&self) -> Vec<Value> {
        let index = self.bob_index().await;
        let mut states = vec![
            replication_state(&self.alice, &self.ta, &self.sid, index).await,
            replication_state(&self.alice, &self.ta, &self.sid, 3 - index).await,
        ];
        if !self.read_only[0] {
            states.push(replication_state(&self.bob, &self.tb, &self.sid, 0).await);
        }
        if !self.read_only[1] && self.carol_in.get() {
            states.push(replication_state(&self.carol, &self.tc, &self.sid, 0).await);
        }
        states
    }

    /// Waits until the three trees are the same and `want` holds for them; answers the tree.
    async fn converged_to(&self, what: &str, want: impl Fn(&Tree) -> bool) -> Tree {
        eventually(WAIT, what, || async {
            let [a, b, c] = self.trees().await;
            want(&a) && a == b && b == c
        })
        .await;
        self.trees().await[0].clone()
    }

    /// Stops bob's server, lets alice's attempt to reach him fail (so her retry backs off).
    async fn cut_bob(&mut self, change_on_alice: impl AsyncFnOnce(&World)) {
        self.two.stop().await;
        change_on_alice(self).await;
        let index = self.bob_index().await;
        eventually(WAIT, "alice's replication to bob fails", || async {
            let health = replication_state(&self.alice, &self.ta, &self.sid, index).await["health"].clone();
            health == "retrying" || health == "down"
        })
        .await;
    }

    /// Makes `change_on_bob` concurrent with what alice did, then lets them meet: bob's server
    /// comes back while alice's is down, bob makes his change, and only then does alice's server
    /// come back (and is asked to replicate now). The order is explicit, not a race against
    /// alice's retry timer: under load her retry could reach bob before his change, and bob
    /// would then make it knowing hers, which is not what these tests are about.
    async fn heal_bob(&mut self, change_on_bob: impl AsyncFnOnce(&World)) {
        self.one.stop().await;
        self.two.restart().await;
        change_on_bob(self).await;
        self.one.restart().await;
        let (s, v) = self.alice.call(Method::POST, &format!("/sharings/{}/sync", self.sid), Some(&self.ta), None).await;
        assert_eq!(s, 202, "{v}");
    }

    /// No member's link reports refused documents (`refused_docs` is a count).
    async fn no_refusals(&self) {
        let index = self.bob_index().await;
        for member in [index, 3 - index] {
            let st = replication_state(&self.alice, &self.ta, &self.sid, member).await;
            assert_eq!(st["refused_docs"].as_u64().unwrap_or(0), 0, "{st}");
            assert_ne!(st["health"], "degraded", "{st}");
        }
        let st = replication_state(&self.bob, &self.tb, &self.sid, 0).await;
        assert_eq!(st["refused_docs"].as_u64().unwrap_or(0), 0, "{st}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_directory_out_takes_its_whole_subtree_out_and_moving_one_in_brings_its_subtree() {
    let (w, projects) = World::new(SYNC, &[], async |alice, ta, projects| {
        let sub = mkdir(alice, ta, projects, "sub").await;
        let deep = mkdir(alice, ta, &sub, "deep").await;
        upload(alice, ta, &deep, "a.txt", b"alpha").await;
        upload(alice, ta, projects, "stays.txt", b"stays").await;
    })
    .await;
    let sub = at_path(&w.alice, &w.ta, "/Projects/sub").await.unwrap();
    let a = at_path(&w.alice, &w.ta, "/Projects/sub/deep/a.txt").await.unwrap();

    // Out: the directory and everything under it leave bob's and carol's shared trees.
    patch(&w.alice, &w.ta, &sub, json!({"dir_id": ROOT})).await;
    let t = w.converged("sub leaves every tree").await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["/stays.txt"], "{t:?}");
    for (i, tok, id) in [(&w.bob, &w.tb, w.on_bob(&a)), (&w.carol, &w.tc, w.on_carol(&a))] {
        eventually(WAIT, "the shared a.txt is gone, a copy kept", || async {
            winner(w.two_or_one(i), i, FILES, &id).await.is_none()
                && at_path(i, tok, "/.cozy_trash/sub/deep/a.txt").await.is_some()
        })
        .await;
        // Each keeps a dissociated copy of the subtree, in its trash, with new ids.
        let copy = attrs_at(i, tok, "/.cozy_trash/sub/deep/a.txt").await.expect("a dissociated copy");
        assert_eq!(copy["md5sum"], json!(md5_of(b"alpha")));
        let copy_id = at_path(i, tok, "/.cozy_trash/sub/deep/a.txt").await.unwrap();
        assert_ne!(copy_id, id);
        assert_eq!(trash_list(i, tok).await["sub"]["restore_path"], json!(SHARED));
    }
    // What alice does to it now is hers alone.
    patch(&w.alice, &w.ta, &a, json!({"name": "private.txt"})).await;
    upload(&w.alice, &w.ta, &projects, "later.txt", b"later").await;
    let t = w.converged("a later file reaches everyone").await;
    assert!(t.contains_key("/later.txt") && !t.keys().any(|k| k.contains("private")), "{t:?}");

    // In: a directory moved into the shared folder brings its whole subtree.
    let incoming = mkdir(&w.alice, &w.ta, ROOT, "incoming").await;
    let inner = mkdir(&w.alice, &w.ta, &incoming, "inner").await;
    let x = upload(&w.alice, &w.ta, &inner, "x.txt", b"x").await;
    patch(&w.alice, &w.ta, &incoming, json!({"dir_id": projects})).await;
    let t = w.converged("incoming arrives whole").await;
    assert_eq!(t.get("/incoming/inner/x.txt"), Some(&(x.clone(), json!(md5_of(b"x")))), "{t:?}");
    w.no_refusals().await;
}

impl World {
    /// The app serving `i`.
    fn two_or_one(&self, i: &TestInstance) -> &TestApp {
        if i.domain == self.bob.domain {
            &self.two
        } else {
            &self.one
        }
    }
}

/// `GET /files/download?Path=`: the bytes, once they are there.
async fn content_at(i: &TestInstance, token: &str, path: &str) -> Option<Vec<u8>> {
    let resp = i.req(Method::GET, &format!("/files/download?Path={}", enc(path)), Some(token)).send().await.unwrap();
    (resp.status().as_u16() == 200).then_some(())?;
    Some(resp.bytes().await.unwrap().to_vec())
}

/// Every member can read the bytes of `path` (relative to the shared folder) as `data`.
async fn content_everywhere(w: &World, path: &str, data: &[u8]) {
    for (i, tok, root) in [(&w.alice, &w.ta, "/Projects"), (&w.bob, &w.tb, SHARED), (&w.carol, &w.tc, SHARED)] {
        let full = format!("{root}{path}");
        eventually(WAIT, &format!("{full} is readable on {}", i.domain), || async {
            content_at(i, tok, &full).await.as_deref() == Some(data)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_moved_out_and_back_brings_its_whole_subtree_back_at_any_depth() {
    let (w, projects) = World::new(SYNC, &[], async |alice, ta, projects| {
        let sub = mkdir(alice, ta, projects, "sub").await;
        let deep = mkdir(alice, ta, &sub, "deep").await;
        upload(alice, ta, &deep, "a.txt", b"alpha").await;
        upload(alice, ta, &sub, "b.txt", b"beta").await;
        upload(alice, ta, projects, "stays.txt", b"stays").await;
    })
    .await;
    let sub = at_path(&w.alice, &w.ta, "/Projects/sub").await.unwrap();
    let deep = at_path(&w.alice, &w.ta, "/Projects/sub/deep").await.unwrap();
    let a = at_path(&w.alice, &w.ta, "/Projects/sub/deep/a.txt").await.unwrap();
    let b = at_path(&w.alice, &w.ta, "/Projects/sub/b.txt").await.unwrap();

    // Out, then back: the directory and everything it holds are shared again, bytes included.
    patch(&w.alice, &w.ta, &sub, json!({"dir_id": ROOT})).await;
    let t = w.converged("sub leaves every tree").await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["/stays.txt"], "{t:?}");
    patch(&w.alice, &w.ta, &sub, json!({"dir_id": projects})).await;
    let t = w
        .converged_to("sub comes back whole", |t| t.contains_key("/sub/deep/a.txt") && t.contains_key("/sub/b.txt"))
        .await;
    assert_eq!(t.get("/sub/deep/a.txt"), Some(&(a.clone(), json!(md5_of(b"alpha")))), "{t:?}");
    assert_eq!(t.get("/sub/b.txt"), Some(&(b.clone(), json!(md5_of(b"beta")))), "{t:?}");
    content_everywhere(&w, "/sub/deep/a.txt", b"alpha").await;
    content_everywhere(&w, "/sub/b.txt", b"beta").await;

    // Deeper: sub leaves again, and only its inner directory comes back, elsewhere.
    patch(&w.alice, &w.ta, &sub, json!({"dir_id": ROOT})).await;
    let t = w.converged("sub leaves again").await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["/stays.txt"], "{t:?}");
    let landing = mkdir(&w.alice, &w.ta, &projects, "landing").await;
    patch(&w.alice, &w.ta, &deep, json!({"dir_id": landing})).await;
    let t = w.converged_to("deep comes back under landing", |t| t.contains_key("/landing/deep/a.txt")).await;
    assert_eq!(t.get("/landing/deep/a.txt"), Some(&(a.clone(), json!(md5_of(b"alpha")))), "{t:?}");
    assert!(!t.keys().any(|k| k.contains("b.txt")), "b.txt stayed out: {t:?}");
    content_everywhere(&w, "/landing/deep/a.txt", b"alpha").await;

    // From the trash: a directory trashed and restored comes back whole too.
    trash(&w.alice, &w.ta, &landing).await;
    let t = w.converged("landing leaves").await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["/stays.txt"], "{t:?}");
    let (s, v) = w.alice.call(Method::POST, &format!("/files/trash/{}", enc(&landing)), Some(&w.ta), None).await;
    assert_eq!(s, 200, "restore: {v}");
    let t = w.converged_to("landing comes back whole", |t| t.contains_key("/landing/deep/a.txt")).await;
    assert_eq!(t.get("/landing/deep/a.txt"), Some(&(a.clone(), json!(md5_of(b"alpha")))), "{t:?}");
    content_everywhere(&w, "/landing/deep/a.txt", b"alpha").await;
    w.no_refusals().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_a_sync_member_moves_out_and_back_comes_back_whole_everywhere() {
    let (w, _) = World::new(SYNC, &[], async |alice, ta, projects| {
        let sub = mkdir(alice, ta, projects, "sub").await;
        let deep = mkdir(alice, ta, &sub, "deep").await;
        upload(alice, ta, &deep, "a.txt", b"alpha").await;
        upload(alice, ta, projects, "stays.txt", b"stays").await;
    })
    .await;
    let a = at_path(&w.alice, &w.ta, "/Projects/sub/deep/a.txt").await.unwrap();
    let bob_projects = at_path(&w.bob, &w.tb, SHARED).await.unwrap();
    let bob_sub = at_path(&w.bob, &w.tb, &format!("{SHARED}/sub")).await.unwrap();
    patch(&w.bob, &w.tb, &bob_sub, json!({"dir_id": ROOT})).await;
    let t = w.converged("sub leaves every tree").await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["/stays.txt"], "{t:?}");
    patch(&w.bob, &w.tb, &bob_sub, json!({"dir_id": bob_projects})).await;
    let t = w.converged_to("sub comes back whole", |t| t.contains_key("/sub/deep/a.txt")).await;
    assert_eq!(t.get("/sub/deep/a.txt"), Some(&(a.clone(), json!(md5_of(b"alpha")))), "{t:?}");
    content_everywhere(&w, "/sub/deep/a.txt", b"alpha").await;
    w.no_refusals().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_member_moving_a_directory_out_takes_its_subtree_out_of_every_tree() {
    let (w, _) = World::new(SYNC, &[], async |alice, ta, projects| {
        let sub = mkdir(alice, ta, projects, "sub").await;
        upload(alice, ta, &sub, "b.txt", b"beta").await;
        upload(alice, ta, projects, "stays.txt", b"stays").await;
    })
    .await;
    let b = at_path(&w.alice, &w.ta, "/Projects/sub/b.txt").await.unwrap();
    let bob_sub = at_path(&w.bob, &w.tb, &format!("{SHARED}/sub")).await.unwrap();
    patch(&w.bob, &w.tb, &bob_sub, json!({"dir_id": ROOT})).await;
    let t = w.converged("sub leaves every tree").await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["/stays.txt"], "{t:?}");
    // Bob's own copy is where he put it; alice and carol keep theirs in the trash.
    assert_eq!(attrs_at(&w.bob, &w.tb, "/sub/b.txt").await.unwrap()["md5sum"], json!(md5_of(b"beta")));
    eventually(WAIT, "alice and carol keep their copies", || async {
        winner(&w.one, &w.alice, FILES, &b).await.is_none()
            && attrs_at(&w.alice, &w.ta, "/.cozy_trash/sub/b.txt").await.is_some()
            && attrs_at(&w.carol, &w.tc, "/.cozy_trash/sub/b.txt").await.is_some()
    })
    .await;
    w.no_refusals().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_moved_out_leaves_every_tree_and_members_keep_a_dissociated_copy() {
    let (w, _) = World::new(SYNC, &[], async |alice, ta, projects| {
        upload(alice, ta, projects, "a.txt", b"alpha").await;
        upload(alice, ta, projects, "stays.txt", b"stays").await;
    })
    .await;
    let a = at_path(&w.alice, &w.ta, "/Projects/a.txt").await.unwrap();
    patch(&w.alice, &w.ta, &a, json!({"dir_id": ROOT})).await;
    let t = w.converged("a.txt leaves every tree").await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["/stays.txt"]);
    for (i, tok) in [(&w.bob, &w.tb), (&w.carol, &w.tc)] {
        eventually(WAIT, "the copy is kept", || async { trash_list(i, tok).await.contains_key("a.txt") }).await;
        let copy = &trash_list(i, tok).await["a.txt"];
        assert_eq!((copy["md5sum"].clone(), copy["restore_path"].clone()), (json!(md5_of(b"alpha")), json!(SHARED)));
    }
    assert_eq!(at_path(&w.alice, &w.ta, "/a.txt").await, Some(a), "alice's file is where she put it");
    w.no_refusals().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_end_with_the_same_winner_and_the_same_conflict_copy_on_all_three() {
    let (mut w, _) = World::new(SYNC, &[], async |alice, ta, projects| {
        upload(alice, ta, projects, "report.txt", b"v1").await;
    })
    .await;
    let report = at_path(&w.alice, &w.ta, "/Projects/report.txt").await.unwrap();
    w.cut_bob(async |w| assert_eq!(replace(&w.alice, &w.ta, &report, b"alice's edit").await, 200)).await;
    w.heal_bob(async |w| assert_eq!(replace(&w.bob, &w.tb, &w.on_bob(&report), b"bob's edit").await, 200)).await;
    let t = w.converged("the conflict is settled the same way everywhere").await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["/report (2).txt", "/report.txt"], "{t:?}");
    // The winner keeps the id; the copy's id derives from it and the losing revision.
    let (id, winner_md5) = t["/report.txt"].clone();
    assert_eq!(id, report);
    let (copy_id, copy_md5) = t["/report (2).txt"].clone();
    let mut both = [winner_md5.clone(), copy_md5];
    both.sort_by_key(|v| v.to_string());
    let mut edits = [json!(md5_of(b"alice's edit")), json!(md5_of(b"bob's edit"))];
    edits.sort_by_key(|v| v.to_string());
    assert_eq!(both, edits, "both edits are kept");
    // CouchDB's winner (highest revision hash at the same generation) on every member, with
    // no conflict left in any tree.
    let (rev, _) = winner(&w.one, &w.alice, FILES, &report).await.unwrap();
    for (app, i, id) in [
        (&w.one, &w.alice, report.clone()),
        (&w.two, &w.bob, w.on_bob(&report)),
        (&w.one, &w.carol, w.on_carol(&report)),
    ] {
        eventually(WAIT, "one live leaf left, the same winner", || async {
            live_leaves(app, i, &id).await == 1 && winner(app, i, FILES, &id).await.unwrap().0 == rev
        })
        .await;
        assert_eq!(winner(app, i, FILES, &id).await.unwrap().1["md5sum"], winner_md5);
    }
    let copy_rev = winner(&w.one, &w.alice, FILES, &copy_id).await.unwrap().0;
    assert_eq!(winner(&w.two, &w.bob, FILES, &w.on_bob(&copy_id)).await.unwrap().0, copy_rev);
    w.no_refusals().await;
}

/// Bob's edit loses to alice's, which is a generation ahead, before its bytes reached her (her
/// quota refuses them for now): her conflict copy of it comes back to bob, who alone holds the
/// bytes, and keeps them until they reach her. They used to be deleted on bob as soon as
/// alice's version won there, and the copy answered 409 everywhere for good (found replaying
/// cozy-stack#2559 with three writers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_losing_edit_keeps_its_bytes_for_the_owners_conflict_copy() {
    let (mut w, _) = World::new(SYNC, &[], async |alice, ta, projects| {
        upload(alice, ta, projects, "report.txt", b"v1").await;
    })
    .await;
    let report = at_path(&w.alice, &w.ta, "/Projects/report.txt").await.unwrap();
    let alice_store = w.one.instance(&w.alice.domain).store.clone();
    let used = w.one.files.of(&w.one.instance(&w.alice.domain)).await.unwrap().used().await.unwrap();
    // Room on alice for her own small edits, not for bob's 100 kB.
    hearth::files::set_instance_quota(alice_store.as_ref(), Some(used + 10_000)).await.unwrap();
    let bobs = vec![b'b'; 100_000];
    w.cut_bob(async |w| {
        assert_eq!(replace(&w.alice, &w.ta, &report, b"alice 2").await, 200);
        assert_eq!(replace(&w.alice, &w.ta, &report, b"alice 3").await, 200);
    })
    .await;
    w.heal_bob(async |w| assert_eq!(replace(&w.bob, &w.tb, &w.on_bob(&report), &bobs).await, 200)).await;
    // Alice's version wins everywhere; bob's is her conflict copy, on bob too.
    let copy_on_bob = format!("{SHARED}/report (2).txt");
    eventually(WAIT, "the copy of bob's edit reaches bob, and alice's version wins there", || async {
        at_path(&w.bob, &w.tb, &copy_on_bob).await.is_some()
            && content_at(&w.bob, &w.tb, &format!("{SHARED}/report.txt")).await.as_deref()
                == Some(b"alice 3".as_slice())
    })
    .await;
    assert!(content_at(&w.alice, &w.ta, "/Projects/report (2).txt").await.is_none(), "no room on alice yet");
    hearth::files::set_instance_quota(alice_store.as_ref(), None).await.unwrap();
    for (i, tok, path) in [(&w.alice, &w.ta, "/Projects/report (2).txt".to_owned()), (&w.bob, &w.tb, copy_on_bob)] {
        eventually(WAIT, &format!("{}: {path} holds bob's edit", i.domain), || async {
            content_at(i, tok, &path).await.as_deref() == Some(bobs.as_slice())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_name_made_on_two_sides_keeps_the_owners_item_and_renames_the_other_everywhere() {
    let (mut w, projects) = World::new(SYNC, &[], async |alice, ta, projects| {
        upload(alice, ta, projects, "stays.txt", b"stays").await;
    })
    .await;
    let mut alices = String::new();
    w.cut_bob(async |w| {
        alices = upload(&w.alice, &w.ta, &projects, "notes.txt", b"alice's notes").await;
    })
    .await;
    let mut bobs = String::new();
    w.heal_bob(async |w| {
        let dir = w.on_bob(&projects);
        bobs = upload(&w.bob, &w.tb, &dir, "notes.txt", b"bob's notes").await;
    })
    .await;
    let t = w.converged("the name clash is settled the same way everywhere").await;
    assert_eq!(t.get("/notes.txt"), Some(&(alices, json!(md5_of(b"alice's notes")))), "{t:?}");
    assert_eq!(t.get("/notes (2).txt"), Some(&(w.on_bob(&bobs), json!(md5_of(b"bob's notes")))), "{t:?}");
    w.no_refusals().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_added_to_a_directory_deleted_meanwhile_is_restored_into_the_shared_folder() {
    let (mut w, _) = World::new(SYNC, &[], async |alice, ta, projects| {
        let d = mkdir(alice, ta, projects, "drafts").await;
        upload(alice, ta, &d, "old.txt", b"old").await;
    })
    .await;
    let drafts = at_path(&w.alice, &w.ta, "/Projects/drafts").await.unwrap();
    w.cut_bob(async |w| trash(&w.alice, &w.ta, &drafts).await).await;
    let mut new = String::new();
    w.heal_bob(async |w| {
        new = upload(&w.bob, &w.tb, &w.on_bob(&drafts), "new.txt", b"bob's new file").await;
    })
    .await;
    let t = w.converged("bob's file is restored into the shared folder everywhere").await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["/new.txt"], "{t:?}");
    assert_eq!(t["/new.txt"].0, w.on_bob(&new));
    // Alice's trashed directory stays in her trash, as she left it; carol keeps her copy.
    assert!(attrs_at(&w.alice, &w.ta, "/.cozy_trash/drafts/old.txt").await.is_some());
    eventually(WAIT, "carol keeps her copy", || async {
        attrs_at(&w.carol, &w.tc, "/.cozy_trash/drafts/old.txt").await.is_some()
    })
    .await;
}

/// Alice's `/Projects` holding plan.txt ("v1") and stays.txt, shared with sync rules: the
/// world, the folder's id, plan.txt's id.
async fn plan_and_stays() -> (World, String, String) {
    let (w, projects) = World::new(SYNC, &[], async |alice, ta, projects| {
        upload(alice, ta, projects, "plan.txt", b"v1").await;
        upload(alice, ta, projects, "stays.txt", b"stays").await;
    })
    .await;
    let plan = at_path(&w.alice, &w.ta, "/Projects/plan.txt").await.unwrap();
    (w, projects, plan)
}

/// Alice trashes `plan` while bob, cut off, replaces its content with "bob's edit"; then they
/// meet.
async fn trashed_by_alice_edited_by_bob(w: &mut World, plan: &str) {
    w.cut_bob(async |w| trash(&w.alice, &w.ta, plan).await).await;
    w.heal_bob(async |w| assert_eq!(replace(&w.bob, &w.tb, &w.on_bob(plan), b"bob's edit").await, 200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_trashed_on_one_side_and_edited_on_the_other_leaves_the_folder_and_the_editor_keeps_the_edit() {
    let (mut w, _, plan) = plan_and_stays().await;
    trashed_by_alice_edited_by_bob(&mut w, &plan).await;
    let t = w.converged("the trash wins the shared tree").await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["/stays.txt"], "{t:?}");
    // Bob's edit is kept, in his trash; alice's trash has her version.
    eventually(WAIT, "bob keeps his edit", || async {
        trash_list(&w.bob, &w.tb).await.get("plan.txt").is_some_and(|c| c["md5sum"] == json!(md5_of(b"bob's edit")))
    })
    .await;
    assert_eq!(trash_list(&w.alice, &w.ta).await["plan.txt"]["md5sum"], json!(md5_of(b"v1")));
    eventually(WAIT, "carol keeps her copy", || async {
        trash_list(&w.carol, &w.tc).await.get("plan.txt").is_some_and(|c| c["md5sum"] == json!(md5_of(b"v1")))
    })
    .await;
    w.no_refusals().await;
}

/// A file trashed on alice's side and edited on bob's, then restored by alice: it is shared
/// again, and stays. (Bob deleted his edit once he had kept it in his copy; that deletion,
/// taken by alice for a removal once the file was back, removed her restored file, and the
/// removal went back to bob. After a bug replay of syncthing/syncthing#2077's
/// delete-against-modify.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_restored_after_a_trash_against_an_edit_is_shared_again_and_stays() {
    let (mut w, _, plan) = plan_and_stays().await;
    trashed_by_alice_edited_by_bob(&mut w, &plan).await;
    w.converged_to("the trash wins the shared tree", |t| !t.contains_key("/plan.txt")).await;
    eventually(WAIT, "bob keeps his edit", || async {
        trash_list(&w.bob, &w.tb).await.get("plan.txt").is_some_and(|c| c["md5sum"] == json!(md5_of(b"bob's edit")))
    })
    .await;
    let (s, v) = w.alice.call(Method::POST, &format!("/files/trash/{}", enc(&plan)), Some(&w.ta), None).await;
    assert_eq!(s, 200, "{v}");
    w.converged_to("plan.txt is shared again", |t| t.contains_key("/plan.txt")).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let t = w.converged("everything settled").await;
    assert!(t.contains_key("/plan.txt"), "{t:?}");
    assert_eq!(at_path(&w.alice, &w.ta, "/Projects/plan.txt").await.as_deref(), Some(plan.as_str()));
    w.no_refusals().await;
}

/// A file that left the folder once (bob keeps a copy of it), came back, and is trashed by
/// alice while bob edits it: bob keeps his edit too, in a second copy. (The copy's id was
/// derived from the file's alone: the second dissociation found the first copy, made none, and
/// deleted the edit; its bytes were in no document anywhere. After a bug replay of
/// syncthing/syncthing#2077's delete-against-modify.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_dissociated_before_and_trashed_against_an_edit_keeps_the_edit_in_a_second_copy() {
    let (mut w, projects, plan) = plan_and_stays().await;
    // Out (bob keeps a copy of v1), then back in.
    patch(&w.alice, &w.ta, &plan, json!({"dir_id": "io.cozy.files.root-dir"})).await;
    eventually(WAIT, "bob keeps a copy of v1", || async {
        trash_list(&w.bob, &w.tb).await.get("plan.txt").is_some_and(|c| c["md5sum"] == json!(md5_of(b"v1")))
    })
    .await;
    patch(&w.alice, &w.ta, &plan, json!({"dir_id": projects})).await;
    w.converged_to("plan.txt is back", |t| t.contains_key("/plan.txt")).await;
    trashed_by_alice_edited_by_bob(&mut w, &plan).await;
    let t = w.converged("the trash wins the shared tree").await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["/stays.txt"], "{t:?}");
    eventually(WAIT, "bob keeps his edit and his first copy", || async {
        let md5s: Vec<Value> = trash_list(&w.bob, &w.tb).await.into_values().map(|c| c["md5sum"].clone()).collect();
        md5s.contains(&json!(md5_of(b"bob's edit"))) && md5s.contains(&json!(md5_of(b"v1")))
    })
    .await;
    w.no_refusals().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_members_file_edits_stay_on_its_instance_and_a_forced_push_is_refused() {
    let (w, _) = World::new(SYNC, &["bob"], async |alice, ta, projects| {
        upload(alice, ta, projects, "r.txt", b"v1").await;
    })
    .await;
    let r = at_path(&w.alice, &w.ta, "/Projects/r.txt").await.unwrap();
    let before = winner(&w.one, &w.alice, FILES, &r).await.unwrap().0;
    // What bob received is not refused back: nothing of his has been sent yet.
    let st = replication_state(&w.bob, &w.tb, &w.sid, 0).await;
    assert_eq!(st["refused_docs"].as_u64().unwrap_or(0), 0, "{st}");
    assert_eq!(replace(&w.bob, &w.tb, &w.on_bob(&r), b"bob's edit").await, 403, "read-only: /files refuses");
    replace_past_files_api(&w.two, &w.bob, &w.on_bob(&r), b"bob's edit").await;
    let (bob_rev, bob_body) = winner(&w.two, &w.bob, FILES, &w.on_bob(&r)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(winner(&w.one, &w.alice, FILES, &r).await.unwrap().0, before, "alice's file is unchanged");
    // Sent by hand with bob's credentials, alice refuses it too.
    // Bob's instance tries, alice refuses, and bob's status says so: the link is degraded
    // with the refused file and alice's reason (not retrying, not down, not healthy).
    eventually(WAIT, "bob's status shows the refusal", || async {
        let st = replication_state(&w.bob, &w.tb, &w.sid, 0).await;
        st["health"] == "degraded" && st["refused_docs"] == 1
    })
    .await;
    let st = replication_state(&w.bob, &w.tb, &w.sid, 0).await;
    assert_eq!(st["last_refusal"]["doc"], json!(format!("{FILES}/{}", w.on_bob(&r))), "{st}");
    let reason = st["last_refusal"]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("may only read"), "{st}");
    assert!(st["last_error"].is_null(), "a refusal, not a failure: {st}");
    // The command line says the same.
    let text = cli(&w.two, &["sharings", "status", &w.bob.domain, &w.sid]);
    let row = text.lines().find(|l| l.starts_with("0 ")).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("degraded"), "{text}");
    assert!(text.contains("may only read") && text.contains(&w.on_bob(&r)), "{text}");
    let json: Value =
        serde_json::from_str(&cli(&w.two, &["sharings", "status", &w.bob.domain, &w.sid, "--json"])).unwrap();
    let members = json["data"]["attributes"]["members"].as_array().cloned().unwrap_or_default();
    assert!(
        members.iter().any(|m| m["replication"]["health"] == "degraded" && m["replication"]["refused_docs"] == 1),
        "{json}"
    );
    // The owner's status says it too: what it refused of what bob sent, and why.
    eventually(WAIT, "alice's status shows what she refused of bob's", || async {
        let (_, v) = w.alice.call(Method::GET, &format!("/sharings/{}/status", w.sid), Some(&w.ta), None).await;
        v["data"]["attributes"]["members"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["read_only"] == true && m["refused_received"]["docs"].as_u64().unwrap_or(0) >= 1)
    })
    .await;
    let (_, v) = w.alice.call(Method::GET, &format!("/sharings/{}/status", w.sid), Some(&w.ta), None).await;
    let members = v["data"]["attributes"]["members"].as_array().cloned().unwrap_or_default();
    let bob_there = members.iter().find(|m| m["refused_received"]["docs"].as_u64().unwrap_or(0) >= 1).unwrap();
    let last = &bob_there["refused_received"]["last"];
    assert!(last["reason"].as_str().is_some_and(|r| r.contains("may only read")), "{v}");
    assert_eq!(last["doc"], json!(format!("{FILES}/{}", w.on_bob(&r))), "as bob names it: {v}");
    let text = cli(&w.one, &["sharings", "status", &w.alice.domain, &w.sid]);
    assert!(text.contains("refused here") && text.contains("may only read"), "{text}");
    let creds = load(&w.two, &w.bob, &w.sid).await.members[0].outbound.clone().unwrap();
    let mut doc = bob_body.clone();
    doc["_id"] = json!(w.on_bob(&r));
    doc["_rev"] = json!(bob_rev);
    let (s, v) = w
        .alice
        .call(
            Method::POST,
            &format!("/sharings/{}/_bulk_docs", w.sid),
            Some(&creds.access_token),
            Some(json!({FILES: [doc]})),
        )
        .await;
    // Let in, and refused document by document (as a member's replicator reads it).
    assert!((200..300).contains(&s), "{v}");
    let refused = v.as_array().cloned().unwrap_or_default();
    assert_eq!(refused.len(), 1, "{v}");
    assert!(refused[0]["reason"].as_str().is_some_and(|r| r.contains("may only read")), "{v}");
    assert_eq!(winner(&w.one, &w.alice, FILES, &r).await.unwrap().0, before);
    // Alice's edit still reaches bob (over his).
    assert_eq!(replace(&w.alice, &w.ta, &r, b"alice's v2").await, 200);
    eventually(WAIT, "alice's edit reaches carol", || async {
        winner(&w.one, &w.carol, FILES, &w.on_carol(&r))
            .await
            .is_some_and(|(_, b)| b["md5sum"] == json!(md5_of(b"alice's v2")))
    })
    .await;
}

/// Whether the bytes of content version `vfs_id` are in `i`'s content store.
async fn version_stored(app: &TestApp, i: &TestInstance, vfs_id: &str) -> bool {
    let files = app.files.of(&app.instance(&i.domain)).await.unwrap();
    let key = hearth::files::version_key(vfs_id).unwrap();
    files.content.size(&key).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_members_losing_version_is_deleted_when_the_owners_version_wins_there() {
    let (w, _) = World::new(SYNC, &["bob"], async |alice, ta, projects| {
        upload(alice, ta, projects, "r.txt", b"v1").await;
    })
    .await;
    let r = at_path(&w.alice, &w.ta, "/Projects/r.txt").await.unwrap();
    let on_bob = w.on_bob(&r);
    assert_eq!(replace(&w.bob, &w.tb, &on_bob, b"bob's edit").await, 403, "read-only: /files refuses");
    replace_past_files_api(&w.two, &w.bob, &on_bob, b"bob's edit").await;
    let (_, mine) = winner(&w.two, &w.bob, FILES, &on_bob).await.unwrap();
    let bobs_version = mine["internal_vfs_id"].as_str().expect("a version").to_owned();
    assert!(version_stored(&w.two, &w.bob, &bobs_version).await, "bob's edit is stored on bob");
    eventually(WAIT, "alice refuses bob's edit", || async {
        replication_state(&w.bob, &w.tb, &w.sid, 0).await["refused_docs"] == 1
    })
    .await;
    // Two edits on alice: her version is a generation ahead of bob's, so it wins on bob.
    assert_eq!(replace(&w.alice, &w.ta, &r, b"alice's v2").await, 200);
    assert_eq!(replace(&w.alice, &w.ta, &r, b"alice's v3").await, 200);
    eventually(WAIT, "alice's version is bob's file, bytes included", || async {
        content_at(&w.bob, &w.tb, &format!("{SHARED}/r.txt")).await.as_deref() == Some(b"alice's v3".as_slice())
    })
    .await;
    // Bob may not keep his losing version (only the owner makes conflict copies): its bytes
    // are gone at once, not at the next sweep or restart.
    eventually(WAIT, "bob's losing version is deleted", || async {
        !version_stored(&w.two, &w.bob, &bobs_version).await
    })
    .await;
    assert_eq!(winner(&w.two, &w.bob, FILES, &on_bob).await.unwrap().1["md5sum"], json!(md5_of(b"alice's v3")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_rules_send_files_from_the_owner_only_and_none_keeps_each_action_home() {
    // add: push, update: none, remove: push.
    let (w, projects) = World::new(("push", "none", "push"), &[], async |alice, ta, projects| {
        upload(alice, ta, projects, "f.txt", b"v1").await;
    })
    .await;
    let f = at_path(&w.alice, &w.ta, "/Projects/f.txt").await.unwrap();
    // add: push: alice's new file reaches both; bob's new file stays on bob.
    upload(&w.alice, &w.ta, &projects, "new.txt", b"new").await;
    let bobs = upload(&w.bob, &w.tb, &w.on_bob(&projects), "bobs.txt", b"bob's").await;
    eventually(WAIT, "alice's new file arrives", || async {
        at_path(&w.bob, &w.tb, &format!("{SHARED}/new.txt")).await.is_some()
            && at_path(&w.carol, &w.tc, &format!("{SHARED}/new.txt")).await.is_some()
    })
    .await;
    // update: none: alice's edit stays on alice.
    assert_eq!(replace(&w.alice, &w.ta, &f, b"v2").await, 200);
    // remove: push: alice's removal (moved out) reaches them.
    let new = at_path(&w.alice, &w.ta, "/Projects/new.txt").await.unwrap();
    patch(&w.alice, &w.ta, &new, json!({"dir_id": ROOT})).await;
    eventually(WAIT, "the removal arrives", || async {
        at_path(&w.bob, &w.tb, &format!("{SHARED}/new.txt")).await.is_none()
            && at_path(&w.carol, &w.tc, &format!("{SHARED}/new.txt")).await.is_none()
    })
    .await;
    let on_bob = winner(&w.two, &w.bob, FILES, &w.on_bob(&f)).await.unwrap().1;
    assert_eq!(on_bob["md5sum"], json!(md5_of(b"v1")), "update: none");
    assert!(winner(&w.one, &w.alice, FILES, &w.on_bob(&bobs)).await.is_none(), "add: push");
    assert!(winner(&w.one, &w.alice, FILES, &bobs).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_remove_revoke_a_file_leaving_the_folder_revokes_and_members_keep_their_files() {
    let (w, _) = World::new(("sync", "sync", "revoke"), &[], async |alice, ta, projects| {
        upload(alice, ta, projects, "a.txt", b"alpha").await;
        upload(alice, ta, projects, "b.txt", b"beta").await;
    })
    .await;
    let a = at_path(&w.alice, &w.ta, "/Projects/a.txt").await.unwrap();
    patch(&w.alice, &w.ta, &a, json!({"dir_id": ROOT})).await;
    eventually(WAIT, "the sharing is revoked everywhere", || async {
        !load(&w.one, &w.alice, &w.sid).await.active
            && !load(&w.two, &w.bob, &w.sid).await.active
            && !load(&w.one, &w.carol, &w.sid).await.active
    })
    .await;
    // The members keep their files, and nothing flows any more.
    for (i, tok) in [(&w.bob, &w.tb), (&w.carol, &w.tc)] {
        for name in ["a.txt", "b.txt"] {
            assert!(at_path(i, tok, &format!("{SHARED}/{name}")).await.is_some(), "{name}");
        }
    }
    let b = at_path(&w.alice, &w.ta, "/Projects/b.txt").await.unwrap();
    assert_eq!(replace(&w.alice, &w.ta, &b, b"after").await, 200);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let on_bob = winner(&w.two, &w.bob, FILES, &w.on_bob(&b)).await.unwrap().1;
    assert_eq!(on_bob["md5sum"], json!(md5_of(b"beta")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_leaving_or_revocation_members_keep_their_files_and_nothing_flows() {
    let (w, projects) = World::new(SYNC, &[], async |alice, ta, projects| {
        let sub = mkdir(alice, ta, projects, "sub").await;
        upload(alice, ta, &sub, "a.txt", b"alpha").await;
    })
    .await;
    let before = w.converged("everything arrived").await;
    // Bob leaves: he keeps the folder; alice's later file does not reach him, carol's tree goes on.
    let (s, v) = w.bob.call(Method::DELETE, &format!("/sharings/{}/recipients/self", w.sid), Some(&w.tb), None).await;
    assert_eq!(s, 200, "{v}");
    upload(&w.alice, &w.ta, &projects, "later.txt", b"later").await;
    eventually(WAIT, "carol gets the later file", || async {
        at_path(&w.carol, &w.tc, &format!("{SHARED}/later.txt")).await.is_some()
    })
    .await;
    assert_eq!(tree(&w.bob, &w.tb, SHARED, Some(&w.keys[0])).await, before, "bob keeps what he had");
    // Alice revokes: carol keeps hers; a later edit reaches no one.
    let (s, v) = w.alice.call(Method::DELETE, &format!("/sharings/{}/recipients", w.sid), Some(&w.ta), None).await;
    assert_eq!(s, 200, "{v}");
    eventually(WAIT, "carol learns the revocation", || async { !load(&w.one, &w.carol, &w.sid).await.active }).await;
    let kept = tree(&w.carol, &w.tc, SHARED, Some(&w.keys[1])).await;
    assert!(kept.contains_key("/later.txt") && kept.contains_key("/sub/a.txt"), "{kept:?}");
    upload(&w.alice, &w.ta, &projects, "private.txt", b"private").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(tree(&w.carol, &w.tc, SHARED, Some(&w.keys[1])).await, kept);
    assert_eq!(tree(&w.bob, &w.tb, SHARED, Some(&w.keys[0])).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_member_is_not_degraded_by_the_owners_moves_out_and_back() {
    let (w, projects) = World::new(SYNC, &["carol"], async |alice, ta, projects| {
        let s = mkdir(alice, ta, projects, "S").await;
        upload(alice, ta, &s, "f.txt", b"f").await;
    })
    .await;
    let s = at_path(&w.alice, &w.ta, "/Projects/S").await.unwrap();
    // Carol wrote nothing: whatever her instance hands back of alice's changes (the echo of
    // alice's removals) must not show as refused.
    let carol_at_rest_and_clean = async |what: &str| {
        // Her instance replicates at once after receiving: give it the time to try.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        eventually(WAIT, what, || async {
            let st = replication_state(&w.carol, &w.tc, &w.sid, 0).await;
            st["running"] != json!(true) && st["pending"].as_u64() == Some(0)
        })
        .await;
        let st = replication_state(&w.carol, &w.tc, &w.sid, 0).await;
        assert_ne!(st["health"], "degraded", "{st}");
        assert_eq!(st["refused_docs"].as_u64().unwrap_or(0), 0, "{st}");
    };
    patch(&w.alice, &w.ta, &s, json!({"dir_id": ROOT})).await;
    eventually(WAIT, "S leaves carol's tree", || async {
        at_path(&w.carol, &w.tc, &format!("{SHARED}/S")).await.is_none()
    })
    .await;
    carol_at_rest_and_clean("carol's link at rest after the move out").await;
    patch(&w.alice, &w.ta, &s, json!({"dir_id": projects})).await;
    eventually(WAIT, "S comes back to carol with its file", || async {
        at_path(&w.carol, &w.tc, &format!("{SHARED}/S/f.txt")).await.is_some()
    })
    .await;
    carol_at_rest_and_clean("carol's link at rest after the move back").await;
}

/// Every link of `links` (instance, token, sharing, member) is at rest: nothing running,
/// nothing pending.
async fn links_at_rest(links: &[(&TestInstance, &str, &str, usize)]) -> bool {
    for (i, tok, sid, member) in links {
        let st = replication_state(i, tok, sid, *member).await;
        if !(st.is_null() || (st["running"] != json!(true) && st["pending"].as_u64() == Some(0))) {
            return false;
        }
    }
    true
}

/// Waits until `links` are at rest twice in a row, two seconds apart (a link that goes on
/// replicating what the first rest left, say a member's deletion, is caught by the second).
async fn settled(what: &str, links: &[(&TestInstance, &str, &str, usize)]) {
    for _ in 0..2 {
        eventually(WAIT, what, || links_at_rest(links)).await;
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    eventually(WAIT, what, || links_at_rest(links)).await;
}

/// The status of `links` shows no refusal and nothing degraded.
async fn healthy(links: &[(&TestInstance, &str, &str, usize)]) {
    for (i, tok, sid, member) in links {
        let st = replication_state(i, tok, sid, *member).await;
        assert_eq!(st["refused_docs"].as_u64().unwrap_or(0), 0, "{} member {member}: {st}", i.domain);
        assert_ne!(st["health"], "degraded", "{} member {member}: {st}", i.domain);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sharing_of_a_folder_a_member_moved_out_and_back_loses_nothing() {
    let (w, projects) = World::new(SYNC, &["carol"], async |alice, ta, projects| {
        let s = mkdir(alice, ta, projects, "S").await;
        upload(alice, ta, &s, "f.txt", b"f").await;
        upload(alice, ta, projects, "stays.txt", b"stays").await;
    })
    .await;
    let s = at_path(&w.alice, &w.ta, "/Projects/S").await.unwrap();
    let f = at_path(&w.alice, &w.ta, "/Projects/S/f.txt").await.unwrap();
    // Bob moves S out of the folder and back.
    let bob_projects = at_path(&w.bob, &w.tb, SHARED).await.unwrap();
    patch(&w.bob, &w.tb, &w.on_bob(&s), json!({"dir_id": ROOT})).await;
    let t = w.converged("S leaves every tree").await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["/stays.txt"], "{t:?}");
    patch(&w.bob, &w.tb, &w.on_bob(&s), json!({"dir_id": bob_projects})).await;
    w.converged_to("S comes back whole", |t| t.contains_key("/S/f.txt")).await;
    content_everywhere(&w, "/S/f.txt", b"f").await;

    // Alice shares the same folder a second time, with carol, who may write in this one.
    let rule = json!({"title": "Again", "doctype": FILES, "values": [projects],
        "add": "sync", "update": "sync", "remove": "sync"});
    let rw = json!([{"instance": format!("http://{}", w.carol.domain)}]);
    let again = create_sharing(&w.alice, &w.ta, json!([rule]), rw, json!([])).await;
    answer_invitation(&link(&w.one, &w.alice, &again, 1).await, &w.carol, "accept").await;
    eventually(WAIT, "the second sharing brings S/f.txt to carol", || async {
        content_at(&w.carol, &w.tc, "/Shared with me/Again/S/f.txt").await.as_deref() == Some(b"f".as_slice())
    })
    .await;
    let index = w.bob_index().await;
    let links = [
        (&w.alice, w.ta.as_str(), w.sid.as_str(), index),
        (&w.alice, w.ta.as_str(), w.sid.as_str(), 3 - index),
        (&w.bob, w.tb.as_str(), w.sid.as_str(), 0),
        (&w.alice, w.ta.as_str(), again.as_str(), 1),
        (&w.carol, w.tc.as_str(), again.as_str(), 0),
    ];
    settled("both sharings at rest", &links).await;
    // Nothing was lost anywhere: alice's S is the same item, and every tree holds it.
    assert_eq!(at_path(&w.alice, &w.ta, "/Projects/S").await, Some(s.clone()));
    assert_eq!(at_path(&w.alice, &w.ta, "/Projects/S/f.txt").await, Some(f.clone()));
    let t = w.converged("the first sharing's trees still agree").await;
    assert_eq!(t.get("/S/f.txt"), Some(&(f.clone(), json!(md5_of(b"f")))), "{t:?}");
    content_everywhere(&w, "/S/f.txt", b"f").await;
    assert_eq!(content_at(&w.carol, &w.tc, "/Shared with me/Again/S/f.txt").await.as_deref(), Some(b"f".as_slice()));
    healthy(&links).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_accepting_after_a_folder_went_out_and_back_gets_all_of_it() {
    let (w, _) = World::with_late_carol(SYNC, &["carol"], async |alice, ta, projects| {
        let s = mkdir(alice, ta, projects, "S").await;
        upload(alice, ta, &s, "f.txt", b"f").await;
        let deep = mkdir(alice, ta, &s, "deep").await;
        upload(alice, ta, &deep, "g.txt", b"g").await;
        upload(alice, ta, projects, "stays.txt", b"stays").await;
    })
    .await;
    let s = at_path(&w.alice, &w.ta, "/Projects/S").await.unwrap();
    let bob_projects = at_path(&w.bob, &w.tb, SHARED).await.unwrap();
    patch(&w.bob, &w.tb, &w.on_bob(&s), json!({"dir_id": ROOT})).await;
    let t = w.converged("S leaves every tree").await;
    assert_eq!(t.keys().collect::<Vec<_>>(), ["/stays.txt"], "{t:?}");
    patch(&w.bob, &w.tb, &w.on_bob(&s), json!({"dir_id": bob_projects})).await;
    w.converged_to("S comes back whole", |t| t.contains_key("/S/deep/g.txt")).await;

    // Carol accepts only now: she gets the whole tree, S included, bytes and all.
    w.carol_accepts().await;
    let t = w.converged_to("carol gets the whole tree", |t| t.contains_key("/S/deep/g.txt")).await;
    assert!(t.contains_key("/S/f.txt") && t.contains_key("/stays.txt"), "{t:?}");
    content_everywhere(&w, "/S/f.txt", b"f").await;
    content_everywhere(&w, "/S/deep/g.txt", b"g").await;
    let index = w.bob_index().await;
    let links = [
        (&w.alice, w.ta.as_str(), w.sid.as_str(), index),
        (&w.alice, w.ta.as_str(), w.sid.as_str(), 3 - index),
        (&w.bob, w.tb.as_str(), w.sid.as_str(), 0),
        (&w.carol, w.tc.as_str(), w.sid.as_str(), 0),
    ];
    settled("every link at rest", &links).await;
    let t = w.converged("the trees still agree").await;
    assert!(t.contains_key("/S/f.txt") && t.contains_key("/S/deep/g.txt"), "{t:?}");
    healthy(&links).await;
    assert!(trash_list(&w.carol, &w.tc).await.is_empty(), "carol's trash holds nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_the_owner_moves_out_or_trashes_stays_whole_in_each_members_dissociated_copy() {
    let (w, projects) = World::new(SYNC, &["carol"], async |alice, ta, projects| {
        let d = mkdir(alice, ta, projects, "D").await;
        upload(alice, ta, &d, "f.txt", b"f").await;
        upload(alice, ta, &d, "g.txt", b"g").await;
        let e = mkdir(alice, ta, &d, "E").await;
        upload(alice, ta, &e, "h.txt", b"h").await;
        let t = mkdir(alice, ta, projects, "T").await;
        upload(alice, ta, &t, "t.txt", b"t").await;
        upload(alice, ta, projects, "stays.txt", b"stays").await;
    })
    .await;
    let _ = projects;
    // (Right after the documents arrived: some bytes may still be on their way.)
    let d = at_path(&w.alice, &w.ta, "/Projects/D").await.unwrap();
    let t = at_path(&w.alice, &w.ta, "/Projects/T").await.unwrap();
    // D is moved out, T trashed: each member keeps each directory whole, in its trash.
    patch(&w.alice, &w.ta, &d, json!({"dir_id": ROOT})).await;
    trash(&w.alice, &w.ta, &t).await;
    let tr = w.converged("D and T leave every tree").await;
    assert_eq!(tr.keys().collect::<Vec<_>>(), ["/stays.txt"], "{tr:?}");
    for (i, tok) in [(&w.bob, &w.tb), (&w.carol, &w.tc)] {
        let seen = std::cell::RefCell::new(Tree::new());
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(WAIT);
        loop {
            let mut all = true;
            let mut wrong = Vec::new();
            for (path, data) in [
                ("/.cozy_trash/D/f.txt", b"f".as_slice()),
                ("/.cozy_trash/D/g.txt", b"g"),
                ("/.cozy_trash/D/E/h.txt", b"h"),
                ("/.cozy_trash/T/t.txt", b"t"),
            ] {
                let got = content_at(i, tok, path).await;
                if got.as_deref() != Some(data) {
                    all = false;
                    wrong.push((path, got));
                }
            }
            if all {
                break;
            }
            let mut t = tree(i, tok, "/.cozy_trash", None).await;
            t.insert(format!("unreadable: {wrong:?}"), (String::new(), Value::Null));
            *seen.borrow_mut() = t;
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: each directory's copy holds what it held; the trash holds {:#?}",
                i.domain,
                seen.borrow()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let top = trash_list(i, tok).await;
        assert_eq!(top.keys().collect::<Vec<_>>(), ["D", "T"], "only the directories at the top: {top:?}");
        assert_eq!(top["D"]["restore_path"], json!(SHARED), "{top:?}");
    }
    w.no_refusals().await;
}

/// Alice and Bob on two servers, with their files tokens; bob's quota has no room (one byte),
/// so the documents shared with him arrive and their bytes are refused until it is lifted
/// (`set_instance_quota(bob_store, None)`).
struct NoRoom {
    one: TestApp,
    _two: TestApp,
    alice: TestInstance,
    bob: TestInstance,
    ta: String,
    tb: String,
    bob_store: std::sync::Arc<dyn hearth::store::Store>,
}

async fn bob_without_room() -> NoRoom {
    let one = spawn_app().await;
    let two = spawn_app().await;
    let alice = one.add_instance("alice", PASS);
    let bob = two.add_instance("bob", PASS);
    let (ta, tb) = (one.token(&alice, FILES), two.token(&bob, FILES));
    let bob_store = two.instance(&bob.domain).store.clone();
    hearth::files::set_instance_quota(bob_store.as_ref(), Some(1)).await.unwrap();
    NoRoom { one, _two: two, alice, bob, ta, tb, bob_store }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_left_before_its_files_bytes_arrived_gets_them_in_the_members_copy() {
    let NoRoom { one, _two, alice, bob, ta, tb, bob_store } = bob_without_room().await;
    let projects = mkdir(&alice, &ta, ROOT, "Projects").await;
    let d = mkdir(&alice, &ta, &projects, "D").await;
    upload(&alice, &ta, &d, "f.txt", b"f-bytes").await;
    let e = mkdir(&alice, &ta, &d, "E").await;
    upload(&alice, &ta, &e, "h.txt", b"h-bytes").await;
    upload(&alice, &ta, &projects, "stays.txt", b"stays").await;
    let rw = json!([{"instance": format!("http://{}", bob.domain)}]);
    let sid = create_sharing(&alice, &ta, json!([files_rule(&projects, SYNC)]), rw, json!([])).await;
    answer_invitation(&link(&one, &alice, &sid, 1).await, &bob, "accept").await;
    eventually(WAIT, "the documents reach bob", || async {
        at_path(&bob, &tb, &format!("{SHARED}/D/E/h.txt")).await.is_some()
            && at_path(&bob, &tb, &format!("{SHARED}/stays.txt")).await.is_some()
    })
    .await;
    assert!(content_at(&bob, &tb, &format!("{SHARED}/D/f.txt")).await.is_none(), "no room for the bytes yet");
    // D leaves before its bytes reached bob: bob keeps a copy of it, whole.
    patch(&alice, &ta, &d, json!({"dir_id": ROOT})).await;
    eventually(WAIT, "bob keeps a copy of D", || async {
        at_path(&bob, &tb, "/.cozy_trash/D/E/h.txt").await.is_some()
            && at_path(&bob, &tb, &format!("{SHARED}/D")).await.is_none()
    })
    .await;
    // Room again: the copy gets the bytes of what left, as the shared folder gets its own.
    hearth::files::set_instance_quota(bob_store.as_ref(), None).await.unwrap();
    for (path, data) in [
        ("/.cozy_trash/D/f.txt".to_owned(), b"f-bytes".as_slice()),
        ("/.cozy_trash/D/E/h.txt".to_owned(), b"h-bytes"),
        (format!("{SHARED}/stays.txt"), b"stays"),
    ] {
        eventually(WAIT, &format!("bob can read {path}"), || async {
            content_at(&bob, &tb, &path).await.as_deref() == Some(data)
        })
        .await;
    }
    // Alice's D is hers, where she put it.
    assert_eq!(at_path(&alice, &ta, "/D").await, Some(d));
}

/// A member moves a file out of the shared folder before its bytes reached it: the file is
/// its own now, outside the sharing, and still gets the bytes of the version it names (they
/// used to be answered `stale` for good, the file 409 forever: found by replaying a crash of
/// the sender during such a move).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_a_member_moved_out_before_its_bytes_arrived_gets_them() {
    let NoRoom { one, _two, alice, bob, ta, tb, bob_store } = bob_without_room().await;
    let projects = mkdir(&alice, &ta, ROOT, "Projects").await;
    upload(&alice, &ta, &projects, "f.txt", b"f-bytes").await;
    upload(&alice, &ta, &projects, "stays.txt", b"stays").await;
    let rw = json!([{"instance": format!("http://{}", bob.domain)}]);
    let sid = create_sharing(&alice, &ta, json!([files_rule(&projects, SYNC)]), rw, json!([])).await;
    answer_invitation(&link(&one, &alice, &sid, 1).await, &bob, "accept").await;
    let f_path = format!("{SHARED}/f.txt");
    eventually(WAIT, "the documents reach bob", || async { at_path(&bob, &tb, &f_path).await.is_some() }).await;
    assert!(content_at(&bob, &tb, &f_path).await.is_none(), "no room for the bytes yet");
    // Bob moves f.txt out, to his root: it leaves the sharing everywhere.
    let f = at_path(&bob, &tb, &f_path).await.unwrap();
    patch(&bob, &tb, &f, json!({"dir_id": ROOT})).await;
    eventually(WAIT, "f.txt leaves alice's folder", || async {
        at_path(&alice, &ta, "/Projects/f.txt").await.is_none()
    })
    .await;
    // Room again: bob's own f.txt gets the bytes of the version it names.
    hearth::files::set_instance_quota(bob_store.as_ref(), None).await.unwrap();
    let stays = format!("{SHARED}/stays.txt");
    for (path, data) in [("/f.txt", b"f-bytes".as_slice()), (stays.as_str(), b"stays")] {
        eventually(WAIT, &format!("bob can read {path}"), || async {
            content_at(&bob, &tb, path).await.as_deref() == Some(data)
        })
        .await;
    }
    assert_eq!(at_path(&bob, &tb, "/f.txt").await, Some(f), "the file bob moved keeps its id");
    // Every received batch's follow-ups ran: no journal entry is left on either side.
    let journal = hearth::store::Doctype::parse(hearth::sharing::receive::JOURNAL_DOCTYPE).unwrap();
    for (app, i) in [(&one, &alice), (&_two, &bob)] {
        let left = app.instance(&i.domain).store.local_docs(&journal).await.unwrap();
        assert!(left.is_empty(), "{:?}", left.iter().map(|d| &d.id).collect::<Vec<_>>());
    }
}

/// What a sender offers of a file gone from it (a member moved it out; it keeps a dissociated
/// copy): the version its copy names while the copy is as it was made, with its bytes here;
/// nothing once the copy changed (it is its owner's own file then: what it holds after it left
/// must never reach a member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_version_a_file_had_when_it_left_is_offered_for_it() {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", PASS);
    let ta = app.token(&alice, FILES);
    let f = upload(&alice, &ta, ROOT, "f.txt", b"f-bytes").await;
    let files = app.files.of(&app.instance(&alice.domain)).await.unwrap();
    let (v1, _, _) = files.current_version(&f).await.unwrap().unwrap();
    let copy = files.dissociate(&f, None).await.unwrap().expect("a copy is kept");
    assert_eq!(copy, hearth::files::shared::dissociated_id(&f));
    assert_eq!(files.current_version(&f).await.unwrap(), None, "the file is gone");
    let left = files.left_versions(std::slice::from_ref(&f)).await.unwrap();
    assert_eq!(left[0].as_ref().map(|(v, size, _)| (v.as_str(), *size)), Some((v1.as_str(), 7)));
    // Restored, the copy is its owner's file: nothing is offered for the file any more.
    let (st, v) = alice.call(Method::POST, &format!("/files/trash/{}", enc(&copy)), Some(&ta), None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(files.left_versions(std::slice::from_ref(&f)).await.unwrap(), vec![None]);
    // A file that never left has nothing of the kind.
    let g = upload(&alice, &ta, ROOT, "g.txt", b"g").await;
    assert_eq!(files.left_versions(&[g]).await.unwrap(), vec![None]);
}

/// What the owner offers of files it moved out of the shared folder itself (live here, their
/// rows in the sharing's feed removed), to a member whose content checkpoint is before those
/// rows: a file still as it left, its version (the member's copy of it, without its bytes,
/// gets them); a file edited after it left, nothing. Its new content was offered before, and
/// a member answering `missing` for it (whatever its copy names) would have been sent bytes
/// made after the file left the sharing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_the_owner_moved_out_is_offered_only_as_it_was_when_it_left() {
    let NoRoom { one, _two, alice, bob, ta, tb, bob_store } = bob_without_room().await;
    let projects = mkdir(&alice, &ta, ROOT, "Projects").await;
    let edited = upload(&alice, &ta, &projects, "edited.txt", b"as it left").await;
    let kept = upload(&alice, &ta, &projects, "kept.txt", b"kept-bytes").await;
    let rw = json!([{"instance": format!("http://{}", bob.domain)}]);
    let sid = create_sharing(&alice, &ta, json!([files_rule(&projects, SYNC)]), rw, json!([])).await;
    answer_invitation(&link(&one, &alice, &sid, 1).await, &bob, "accept").await;
    eventually(WAIT, "the documents reach bob", || async {
        at_path(&bob, &tb, &format!("{SHARED}/edited.txt")).await.is_some()
            && at_path(&bob, &tb, &format!("{SHARED}/kept.txt")).await.is_some()
    })
    .await;
    assert!(content_at(&bob, &tb, &format!("{SHARED}/kept.txt")).await.is_none(), "no room for the bytes yet");
    // Alice moves both out (bob keeps copies, without their bytes), then edits one.
    patch(&alice, &ta, &edited, json!({"dir_id": ROOT})).await;
    patch(&alice, &ta, &kept, json!({"dir_id": ROOT})).await;
    eventually(WAIT, "bob keeps copies of both", || async {
        let trash = trash_list(&bob, &tb).await;
        trash.contains_key("edited.txt") && trash.contains_key("kept.txt")
    })
    .await;
    // Bob's content checkpoint is held before the rows of both (he refuses their bytes).
    let inst = one.instance(&alice.domain);
    let member = hearth::sharing::MemberIndex(1);
    let checkpoint = hearth::sync::content::read_record(&inst, &sid, member).await.unwrap().last_seq;
    assert_eq!(replace(&alice, &ta, &edited, b"made after it left").await, 200);

    let files = one.files.of(&inst).await.unwrap();
    let (after, _, _) = files.current_version(&edited).await.unwrap().unwrap();
    let (kept_version, _, _) = files.current_version(&kept).await.unwrap().unwrap();
    let sharing = hearth::sharing::SharingId::parse(&sid).unwrap();
    let rows: Vec<_> = inst
        .store
        .shared_changes(&sharing, checkpoint, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| [&edited, &kept].contains(&&r.id.to_string()))
        .collect();
    assert_eq!(rows.len(), 2, "both rows are past bob's content checkpoint: {rows:?}");
    assert!(rows.iter().all(|r| r.removed), "{rows:?}");
    let offered: BTreeMap<String, Option<String>> = rows
        .iter()
        .map(|r| r.id.to_string())
        .zip(files.offered_versions(&rows).await.unwrap().into_iter().map(|v| v.map(|(v, _, _)| v)))
        .collect();
    assert_eq!(offered[&edited], None, "the version made after edited.txt left is never offered (it is {after})");
    assert_eq!(offered[&kept], Some(kept_version), "kept.txt is offered as it left");
    // Room again: bob's copy of kept.txt gets its bytes; his copy of edited.txt names a version
    // whose bytes are gone from alice (replaced), and gets nothing.
    hearth::files::set_instance_quota(bob_store.as_ref(), None).await.unwrap();
    eventually(WAIT, "bob's copy of kept.txt gets its bytes", || async {
        content_at(&bob, &tb, "/.cozy_trash/kept.txt").await.as_deref() == Some(b"kept-bytes".as_slice())
    })
    .await;
    assert_eq!(content_at(&bob, &tb, "/.cozy_trash/edited.txt").await, None);
}

/// A read-only member's change through `/files` at or below the shared root: the status and
/// the reason of the refusal.
async fn refused_read_only(i: &TestInstance, token: &str, method: Method, path: &str, body: Option<Vec<u8>>) {
    let mut r = i.req(method.clone(), path, Some(token));
    if let Some(b) = body {
        r = r.header("Content-MD5", md5_of(&b)).body(b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 403, "{method} {path}: {text}");
    assert!(text.contains("this folder is shared with you read-only"), "{method} {path}: {text}");
}

async fn refused_patch(i: &TestInstance, token: &str, id: &str, attrs: Value) {
    let body = json!({"data": {"type": FILES, "attributes": attrs.clone()}});
    let (s, v) = i.call(Method::PATCH, &format!("/files/{}", enc(id)), Some(token), Some(body)).await;
    assert_eq!(s, 403, "patch {attrs}: {v}");
    assert!(v.to_string().contains("this folder is shared with you read-only"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_members_writes_in_the_shared_folder_are_refused_and_its_tree_stays_the_owners() {
    let (w, _) = World::new(SYNC, &["carol"], async |alice, ta, projects| {
        let d = mkdir(alice, ta, projects, "d").await;
        upload(alice, ta, &d, "f.txt", b"f").await;
        upload(alice, ta, projects, "r.txt", b"r").await;
        upload(alice, ta, projects, "gone.txt", b"gone").await;
    })
    .await;
    let before = w.converged("everything arrived").await;
    let (c, tc) = (&w.carol, &w.tc);
    let root = at_path(c, tc, SHARED).await.unwrap();
    let d = at_path(c, tc, &format!("{SHARED}/d")).await.unwrap();
    let r = at_path(c, tc, &format!("{SHARED}/r.txt")).await.unwrap();
    let f = at_path(c, tc, &format!("{SHARED}/d/f.txt")).await.unwrap();
    // Upload into the root and into a subdirectory, a new directory, new content.
    for dir in [&root, &d] {
        let path = format!("/files/{}?Type=file&Name=mine.txt", enc(dir));
        refused_read_only(c, tc, Method::POST, &path, Some(b"mine".to_vec())).await;
        let path = format!("/files/{}?Type=directory&Name=mine", enc(dir));
        refused_read_only(c, tc, Method::POST, &path, None).await;
    }
    refused_read_only(c, tc, Method::PUT, &format!("/files/{}", enc(&r)), Some(b"carol's".to_vec())).await;
    // Rename, tags, executable, moves within, out of and into the shared folder.
    refused_patch(c, tc, &r, json!({"name": "renamed.txt"})).await;
    refused_patch(c, tc, &r, json!({"tags": ["mine"]})).await;
    refused_patch(c, tc, &f, json!({"executable": true})).await;
    refused_patch(c, tc, &f, json!({"dir_id": root})).await;
    refused_patch(c, tc, &r, json!({"dir_id": ROOT})).await;
    refused_patch(c, tc, &d, json!({"name": "dd"})).await;
    let own = upload(c, tc, ROOT, "own.txt", b"own").await;
    refused_patch(c, tc, &own, json!({"dir_id": d})).await;
    // The root itself: not renamed nor moved (the sharing goes on), only trashed (it ends).
    refused_patch(c, tc, &root, json!({"name": "Mine now"})).await;
    refused_read_only(c, tc, Method::DELETE, &format!("/files/{}", enc(&r)), None).await;
    refused_read_only(c, tc, Method::DELETE, &format!("/files/{}", enc(&d)), None).await;
    // The owner trashes gone.txt: carol keeps a dissociated copy in her trash, which does not
    // go back into the shared folder.
    let gone = at_path(&w.alice, &w.ta, "/Projects/gone.txt").await.unwrap();
    trash(&w.alice, &w.ta, &gone).await;
    eventually(WAIT, "carol's copy of gone.txt is in her trash", || async {
        trash_list(c, tc).await.contains_key("gone.txt")
    })
    .await;
    let (s, v) = c.call(Method::GET, "/files/trash", Some(tc), None).await;
    assert_eq!(s, 200);
    let copy = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["attributes"]["name"] == "gone.txt")
        .and_then(|e| e["id"].as_str())
        .unwrap()
        .to_owned();
    refused_read_only(c, tc, Method::POST, &format!("/files/trash/{}", enc(&copy)), None).await;
    // Carol's tree is alice's; her link has nothing refused, nothing pending.
    let after = w.converged_to("gone.txt left every tree", |t| !t.contains_key("/gone.txt")).await;
    let mut expected = before.clone();
    expected.remove("/gone.txt");
    assert_eq!(after, expected);
    let st = replication_state(c, tc, &w.sid, 0).await;
    assert_eq!(st["refused_docs"].as_u64().unwrap_or(0), 0, "{st}");
    assert_ne!(st["health"], "degraded", "{st}");
    assert!(at_path(c, tc, "/own.txt").await.is_some(), "carol's own file stays hers");
    // Bob (read-write) is unaffected: his file and rename reach alice and carol.
    let b = at_path(&w.bob, &w.tb, SHARED).await.unwrap();
    upload(&w.bob, &w.tb, &b, "bobs.txt", b"bob's").await;
    let r_bob = at_path(&w.bob, &w.tb, &format!("{SHARED}/r.txt")).await.unwrap();
    patch(&w.bob, &w.tb, &r_bob, json!({"name": "r2.txt"})).await;
    w.converged_to("bob's changes reach alice and carol", |t| {
        t.contains_key("/bobs.txt") && t.contains_key("/r2.txt") && !t.contains_key("/r.txt")
    })
    .await;
    assert!(at_path(&w.alice, &w.ta, "/Projects/bobs.txt").await.is_some());
    // Trashing the root itself is carol's to do: she leaves the sharing.
    trash(c, tc, &root).await;
    assert!(!load(&w.one, c, &w.sid).await.active);
}
