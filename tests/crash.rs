//! Crash safety: two `hearth serve` processes replicate a 20,000-document sharing while the
//! test kills the sending or the receiving process with SIGKILL at random moments and restarts
//! it. The sync must complete with both stores identical (every document's revisions, winner
//! and body), and the receiver must have been sent at most one batch again per kill.

mod common;

use common::process::call;

use std::path::Path;
use std::time::{Duration, Instant};

use common::flow::answer_invitation;
use common::process::ServerProcess as Server;
use common::{browser, TestInstance};
use hearth::sharing::{self, SharingId};
use hearth::store::sqlite::SqliteStore;
use hearth::store::{AllDocsQuery, AllDocsRow, DocId, Doctype, OpenRevs, Store};
use serde_json::{json, Value};

const DOCS: usize = 20_000;
const BATCH: usize = 500;
const KILLS: usize = 6;

/// A small deterministic PRNG (the seed is printed, so a failing run can be replayed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The store of a server's instance, opened beside it.
fn store(s: &Server) -> SqliteStore {
    let file = s.dir.join("instances").join(format!("{}.sqlite", s.domain().replace(':', "_")));
    SqliteStore::open(&file, 1000).unwrap()
}

/// Documents the receiver accepted, summed over every run of it (from its logs).
fn received(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("received documents"))
        .filter_map(|l| l.split("accepted=").nth(1)?.split_whitespace().next()?.parse::<usize>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_survives_sigkill_of_either_side_and_resends_at_most_a_batch_per_kill() {
    let seed = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("crash test seed: {seed} (CRASH_SEED={seed} replays the kill schedule)");
    let mut rng = Rng(seed);
    let root = tempfile::tempdir().unwrap();
    let batch = vec![("HEARTH_REPLICATION__BATCH_SIZE", BATCH.to_string())];
    let mut alice = Server::new("alice", root.path().join("a"), batch.clone());
    let mut bob = Server::new("bob", root.path().join("b"), batch);
    alice.cli(&["instances", "add", &alice.domain(), "--passphrase", "pa"]);
    bob.cli(&["instances", "add", &bob.domain(), "--passphrase", "pb"]);
    let token = alice.cli(&["instances", "token", &alice.domain(), "--scope", "io.cozy.todos"]).trim().to_owned();
    alice.start().await;
    bob.start().await;

    for chunk in 0..DOCS / 1000 {
        let docs: Vec<Value> = (0..1000)
            .map(|i| json!({"_id": format!("{:032x}", chunk * 1000 + i), "list_id": "big", "n": chunk * 1000 + i, "text": "x".repeat(64)}))
            .collect();
        call(
            &alice.domain(),
            reqwest::Method::POST,
            "/data/io.cozy.todos/_bulk_docs",
            &token,
            Some(json!({"docs": docs})),
        )
        .await;
    }
    let body = json!({"data": {"type": "io.cozy.sharings", "attributes": {"description": "holiday notes", "rules": [
        {"title": "big", "doctype": "io.cozy.todos", "selector": "list_id", "values": ["big"], "add": "sync", "update": "sync", "remove": "sync"}]},
        "relationships": {"recipients": {"data": [{"instance": format!("http://{}", bob.domain())}]}}}});
    let created = call(&alice.domain(), reqwest::Method::POST, "/sharings/", &token, Some(body)).await;
    let sid = created["data"]["id"].as_str().unwrap().to_owned();
    let links = alice.cli(&["sharings", "invitations", &alice.domain(), &sid]);
    let link = links.split_whitespace().find(|w| w.starts_with("http")).unwrap().to_owned();
    let recipient = TestInstance { domain: bob.domain(), port: bob.port, client: browser() };
    // answer_invitation logs in with the test passphrase.
    bob.cli(&["instances", "passphrase", &bob.domain(), "--passphrase", common::flow::PASS]);
    answer_invitation(&link, &recipient, "accept").await;

    // Kill one side or the other at random moments during the initial sync.
    let bob_token = bob.cli(&["instances", "token", &bob.domain(), "--scope", "io.cozy.todos"]).trim().to_owned();
    let mut kills = 0;
    while kills < KILLS {
        tokio::time::sleep(Duration::from_millis(50 + rng.below(400))).await;
        let count = call(&bob.domain(), reqwest::Method::GET, "/data/io.cozy.todos/", &bob_token, None).await
            ["doc_count"]
            .as_u64()
            .unwrap() as usize;
        if count >= DOCS && kills > 0 {
            println!("sync finished after {kills} kills");
            break;
        }
        let victim = if rng.below(2) == 0 { &mut alice } else { &mut bob };
        println!("killing {} at {count} documents received", victim.name);
        victim.kill();
        tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
        victim.start().await;
        kills += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let info = call(&bob.domain(), reqwest::Method::GET, "/data/io.cozy.todos/", &bob_token, None).await;
        if info["doc_count"].as_u64() == Some(DOCS as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "sync did not complete: {info}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the echo (bob's _revs_diff back to alice) settle, then stop both and compare stores.
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice.kill();
    bob.kill();
    let total_received = received(&bob.log_path());
    println!("kills: {kills}, documents received by bob over all runs: {total_received}");
    assert!(
        total_received <= DOCS + kills * BATCH,
        "{total_received} documents received for {DOCS}: more than one batch re-sent per kill ({kills} kills)"
    );

    let (a, b) = (store(&alice), store(&bob));
    let s = sharing::load(&a, &SharingId::parse(&sid).unwrap()).await.unwrap().unwrap();
    let key = hearth::sharing::xor::parse_key(s.members[1].xor_key.as_deref().unwrap()).unwrap();
    let todos = Doctype::parse("io.cozy.todos").unwrap();
    let all = a.all_docs(&todos, &AllDocsQuery { inclusive_end: true, ..Default::default() }).await.unwrap();
    assert_eq!(all.rows.len(), DOCS);
    assert_eq!(b.db_info(&todos).await.unwrap().doc_count, DOCS as u64);
    for row in all.rows {
        let AllDocsRow::Doc { id, .. } = row else { panic!("missing row") };
        let other = DocId::parse(&hearth::sharing::xor::xor_id(id.as_str(), &key)).unwrap();
        let mine = a.open_revs(&todos, &id, OpenRevs::All, false).await.unwrap();
        let theirs = b.open_revs(&todos, &other, OpenRevs::All, false).await.unwrap();
        // Bodies compared as text: the same revision must carry the same bytes everywhere.
        let strip = |list: Vec<hearth::store::OpenRev>| -> Vec<(String, bool, String, Option<Vec<String>>)> {
            list.into_iter()
                .map(|r| match r {
                    hearth::store::OpenRev::Found(d) => (
                        d.rev.to_string(),
                        d.deleted,
                        d.body.as_str().to_owned(),
                        d.revisions.map(|v| v.iter().map(|r| r.to_string()).collect()),
                    ),
                    hearth::store::OpenRev::Missing(r) => panic!("missing {r}"),
                })
                .collect()
        };
        assert_eq!(strip(mine), strip(theirs), "document {id} differs");
    }
    assert!(alice.runs + bob.runs >= 2 + kills);
}
