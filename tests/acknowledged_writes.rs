//! "Acknowledged implies readable", as a property of the real SQLite store: random interactive
//! and replicated writes, parsed from the JSON a client sends (`parse_doc`, as the API does),
//! with every numeric field at its edges (generations 0, 1, limit - 1, limit, limit + 1,
//! u64::MAX...; history lengths; body numbers from i64::MIN to u64::MAX and f64's extremes).
//!
//! After every write the store answers for, the revision it acknowledged must be known to the
//! store, and readable with the body and deleted flag acknowledged (unless a later write made it
//! an ancestor, whose body CouchDB drops too). A write that is refused must change nothing, and a
//! generation past the limit must be refused with the limit named.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use hearth::store::doc::parse_doc;
use hearth::store::sqlite::SqliteStore;
use hearth::store::{DocId, Doctype, OpenRev, OpenRevs, Store, WriteResult};
use hearth_replicator::rev::{Rev, MAX_POS};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const DOCS: [&str; 3] = ["a", "b", "c"];

fn generation() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0,
            1,
            2,
            MAX_POS - 2,
            MAX_POS - 1,
            MAX_POS,
            MAX_POS + 1,
            1 << 63,
            9_999_999_999_999_999_999,
            10_000_000_000_000_000_000,
            u64::MAX - 1,
            u64::MAX,
        ]),
        1 => any::<u64>(),
        1 => 1..20u64,
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(MAX_POS),
            json!(MAX_POS + 2),
            json!(f64::MAX),
            json!(f64::MIN),
            json!(f64::MIN_POSITIVE),
            json!(f64::EPSILON),
            json!(0.1),
            json!(-0.0),
        ]),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
    ]
}

fn body() -> impl Strategy<Value = Map<String, Value>> {
    (number(), prop::collection::vec(number(), 0..3), "[a-z]{0,6}").prop_map(|(n, list, s)| {
        let mut m = Map::new();
        m.insert("n".into(), n);
        m.insert("list".into(), Value::Array(list));
        m.insert("s".into(), Value::String(s));
        m
    })
}

#[derive(Debug, Clone)]
enum Parent {
    None,
    /// One of the document's current leaves (by index, modulo their number).
    Leaf(usize),
    Given(u64, String),
}

#[derive(Debug, Clone)]
enum Op {
    Edit {
        doc: usize,
        parent: Parent,
        deleted: bool,
        body: Map<String, Value>,
    },
    /// A replicated revision: `_revisions` with `start` and `len` hashes, or only `_rev`.
    Replicate {
        doc: usize,
        start: u64,
        hashes: Vec<String>,
        with_revisions: bool,
        deleted: bool,
        body: Map<String, Value>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let hash = "[a-d]{1,2}";
    let parent = prop_oneof![
        1 => Just(Parent::None),
        3 => any::<usize>().prop_map(Parent::Leaf),
        1 => (generation(), hash).prop_map(|(g, h)| Parent::Given(g, h)),
    ];
    prop_oneof![
        (0..DOCS.len(), parent, prop::bool::weighted(0.2), body()).prop_map(|(doc, parent, deleted, body)| Op::Edit {
            doc,
            parent,
            deleted,
            body
        }),
        (
            0..DOCS.len(),
            generation(),
            prop::collection::vec(hash, 1..4),
            any::<bool>(),
            prop::bool::weighted(0.2),
            body()
        )
            .prop_map(|(doc, start, hashes, with_revisions, deleted, body)| Op::Replicate {
                doc,
                start,
                hashes,
                with_revisions,
                deleted,
                body
            }),
    ]
}

/// What the client sends for an operation, and the generations it names.
fn request(op: &Op, leaves: &[Rev]) -> (Value, bool, Vec<u64>) {
    match op {
        Op::Edit { doc, parent, deleted, body } => {
            let mut v = body.clone();
            v.insert("_id".into(), json!(DOCS[*doc]));
            let rev = match parent {
                Parent::None => None,
                Parent::Leaf(i) => leaves.get(i % leaves.len().max(1)).cloned().map(|r| r.to_string()),
                Parent::Given(g, h) => Some(format!("{g}-{h}")),
            };
            let gens = match parent {
                Parent::Given(g, _) => vec![*g],
                _ => vec![],
            };
            if let Some(r) = rev {
                v.insert("_rev".into(), json!(r));
            }
            if *deleted {
                v.insert("_deleted".into(), json!(true));
            }
            (Value::Object(v), true, gens)
        }
        Op::Replicate { doc, start, hashes, with_revisions, deleted, body } => {
            let mut v = body.clone();
            v.insert("_id".into(), json!(DOCS[*doc]));
            if *with_revisions {
                v.insert("_revisions".into(), json!({"start": start, "ids": hashes}));
            } else {
                v.insert("_rev".into(), json!(format!("{start}-{}", hashes[0])));
            }
            if *deleted {
                v.insert("_deleted".into(), json!(true));
            }
            (Value::Object(v), false, vec![*start])
        }
    }
}

struct Model {
    /// The first body and deleted flag acknowledged for each revision of each document.
    acknowledged: HashMap<(usize, Rev), (bool, Map<String, Value>)>,
}

async fn leaves(store: &SqliteStore, t: &Doctype, doc: usize) -> Vec<Rev> {
    match store.open_revs(t, &DocId::parse(DOCS[doc]).unwrap(), OpenRevs::All, false).await {
        Ok(found) => found
            .into_iter()
            .filter_map(|r| match r {
                OpenRev::Found(d) => Some(d.rev),
                OpenRev::Missing(_) => None,
            })
            .collect(),
        Err(hearth::store::StoreError::NotFound) => Vec::new(),
        Err(e) => panic!("open_revs: {e}"),
    }
}

/// The acknowledged revision is known, and reads back as acknowledged while it is a leaf.
async fn check_readable(store: &SqliteStore, t: &Doctype, model: &Model, doc: usize, rev: &Rev, must_be_leaf: bool) {
    let id = DocId::parse(DOCS[doc]).unwrap();
    let diff = store.revs_diff(t, [(id.clone(), vec![rev.clone()])].into()).await.expect("revs_diff");
    assert!(diff.get(&id).is_none_or(|d| d.missing.is_empty()), "acknowledged {rev} of {} is unknown", DOCS[doc]);
    let found = store.open_revs(t, &id, OpenRevs::Some(vec![rev.clone()]), false).await.expect("open_revs");
    match found.as_slice() {
        [OpenRev::Found(d)] => {
            let (deleted, body) = &model.acknowledged[&(doc, rev.clone())];
            assert_eq!(
                (&d.deleted, &d.body.to_map().expect("stored body")),
                (deleted, body),
                "{rev} of {} reads back changed",
                DOCS[doc]
            );
        }
        [OpenRev::Missing(_)] => {
            assert!(!must_be_leaf, "acknowledged edit {rev} of {} is not readable", DOCS[doc]);
            let below = store.open_revs(t, &id, OpenRevs::Some(vec![rev.clone()]), true).await.expect("latest");
            assert!(
                below.iter().any(|r| matches!(r, OpenRev::Found(d) if d.rev != *rev)),
                "{rev} of {} is neither readable nor an ancestor of a leaf",
                DOCS[doc]
            );
        }
        other => panic!("open_revs answered {other:?}"),
    }
}

async fn run(store: &SqliteStore, t: &Doctype, ops: Vec<Op>) {
    let mut model = Model { acknowledged: HashMap::new() };
    for op in ops {
        let doc = match &op {
            Op::Edit { doc, .. } | Op::Replicate { doc, .. } => *doc,
        };
        let before = leaves(store, t, doc).await;
        let (value, new_edits, gens) = request(&op, &before);
        let sent_body = match &value {
            Value::Object(m) => {
                m.iter().filter(|(k, _)| !k.starts_with('_')).map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            _ => unreachable!(),
        };
        let over_limit = gens.iter().any(|&g| g > MAX_POS);
        let raw = serde_json::value::to_raw_value(&value).expect("a JSON value");
        let w = match parse_doc(&raw, None, new_edits) {
            Ok(w) => w,
            Err(reason) => {
                if over_limit {
                    assert!(reason.contains("9007199254740991"), "refusal does not name the limit: {reason}");
                }
                assert_eq!(leaves(store, t, doc).await, before, "a refused write changed the document");
                continue;
            }
        };
        assert!(!over_limit, "a generation past the limit was accepted: {op:?}");
        let deleted = w.deleted;
        let results = store.bulk_docs(t, vec![w.clone()], new_edits).await.expect("bulk_docs");
        if new_edits {
            match results.as_slice() {
                [WriteResult::Ok { rev, .. }] => {
                    assert!(rev.pos <= MAX_POS, "acknowledged {rev} past the limit");
                    model.acknowledged.entry((doc, rev.clone())).or_insert((deleted, sent_body));
                    check_readable(store, t, &model, doc, rev, true).await;
                }
                [WriteResult::Conflict { .. }] => {
                    assert_eq!(leaves(store, t, doc).await, before, "a conflict changed the document");
                }
                [WriteResult::Rejected { reason, .. }] => {
                    assert!(reason.contains("9007199254740991"), "unexpected refusal: {reason}");
                    let parent_at_limit = match &w.rev {
                        Some(r) => r.pos == MAX_POS,
                        None => before.iter().any(|r| r.pos == MAX_POS),
                    };
                    assert!(parent_at_limit, "refused below the limit: {op:?}");
                    assert_eq!(leaves(store, t, doc).await, before, "a refused edit changed the document");
                }
                other => panic!("bulk_docs answered {other:?}"),
            }
        } else {
            assert!(results.is_empty(), "a valid replicated write was refused: {results:?}");
            let head = w.rev.clone().expect("replicated revision");
            // The first body of a revision is final: a re-sent one changes nothing.
            model.acknowledged.entry((doc, head.clone())).or_insert((deleted, sent_body));
            check_readable(store, t, &model, doc, &head, false).await;
        }
    }
    // Once everything is written, every acknowledged revision still holds.
    for (doc, rev) in model.acknowledged.keys() {
        check_readable(store, t, &model, *doc, rev, false).await;
    }
}

static CASE: AtomicUsize = AtomicUsize::new(0);

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_acknowledged_write_is_readable_as_acknowledged(ops in prop::collection::vec(op(), 1..24)) {
        thread_local! {
            static STORE: (tempfile::TempDir, SqliteStore, tokio::runtime::Runtime) = {
                let dir = tempfile::tempdir().unwrap();
                let store = SqliteStore::open(&dir.path().join("p.sqlite"), 1000).unwrap();
                (dir, store, tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
            };
        }
        // Each case in a doctype of its own, so the store starts empty for it.
        let t = Doctype::parse(&format!("io.hearth.ack{}", CASE.fetch_add(1, Ordering::Relaxed))).unwrap();
        STORE.with(|(_, store, rt)| rt.block_on(run(store, &t, ops)));
    }
}
