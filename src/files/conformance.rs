//! The conformance suite every [`ContentStore`] backend passes: run on the filesystem always,
//! and on S3 when a test server is given (`tests/files_content.rs`). Each check panics with
//! what went wrong.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::TryStreamExt;

use super::content::{Block, ContentError, ContentKey, ContentStore};

fn key(s: &str) -> ContentKey {
    ContentKey::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

async fn read_all(store: &dyn ContentStore, k: &ContentKey, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let stream = store.read(k, range).await.unwrap_or_else(|e| panic!("read {k}: {e:?}"));
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap_or_else(|e| panic!("read {k}: {e:?}"));
    chunks.concat()
}

pub use super::sample::pattern;

async fn write(store: &dyn ContentStore, k: &ContentKey, data: &[u8], chunk: usize) {
    let mut w = store.create(k).await.unwrap_or_else(|e| panic!("create {k}: {e:?}"));
    for c in data.chunks(chunk.max(1)) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap_or_else(|e| panic!("write {k}: {e:?}"));
    }
    w.commit().await.unwrap_or_else(|e| panic!("commit {k}: {e:?}"));
}

/// Runs every check on `store` (which must be empty under `files/` and `other/`).
pub async fn run(store: &dyn ContentStore) {
    written_objects_read_back_byte_for_byte(store).await;
    ranges_read_the_bytes_asked_for(store).await;
    nothing_is_visible_before_commit_nor_after_abort(store).await;
    deleting_is_idempotent_and_unknown_keys_are_not_found(store).await;
    listing_finds_committed_objects_by_prefix(store).await;
    sizes_of_many_keys_answer_each_in_order(store).await;
    objects_larger_than_one_part_stream_through(store).await;
    sizes_around_block_and_alignment_edges_read_back(store).await;
    objects_put_whole_are_written_only_once_verified(store).await;
}

/// [`ContentStore::put_verified`]: the check sees every byte, in order; refused, nothing is
/// readable (and nothing is left to list); accepted, the object reads back byte for byte, at
/// sizes on both sides of the direct-I/O threshold.
pub async fn objects_put_whole_are_written_only_once_verified(store: &dyn ContentStore) {
    for (i, len) in [0usize, 1, 4097, 300_000, 1024 * 1024].into_iter().enumerate() {
        let data = pattern(len, 40 + i as u64);
        let mut block = Block::default();
        for c in data.chunks(8192) {
            block.push(Bytes::copy_from_slice(c));
        }
        let refused = key(&format!("files/ee/whole-refused{i}"));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let saw = seen.clone();
        let verdict = store
            .put_verified(
                &refused,
                block.clone(),
                Box::new(move |chunks| {
                    saw.lock().unwrap().extend(chunks.iter().flat_map(|c| c.iter().copied()));
                    Err("no".into())
                }),
            )
            .await
            .unwrap_or_else(|e| panic!("put_verified {refused}: {e:?}"));
        assert_eq!(verdict, Err("no".to_owned()), "the check's refusal comes back");
        assert!(*seen.lock().unwrap() == data, "the check saw the {len} bytes, in order");
        assert_eq!(store.size(&refused).await.unwrap(), None, "a refused object of {len} bytes is not there");
        let accepted = key(&format!("files/ee/whole{i}"));
        let verdict = store.put_verified(&accepted, block, Box::new(|_| Ok(()))).await;
        assert_eq!(verdict.unwrap_or_else(|e| panic!("put_verified {accepted}: {e:?}")), Ok(()));
        assert_eq!(read_all(store, &accepted, None).await, data, "object of {len} bytes put whole");
        store.delete(&accepted).await.unwrap();
    }
    assert!(store.list("files/ee/").await.unwrap().is_empty(), "nothing is left of the objects put whole");
}

pub async fn written_objects_read_back_byte_for_byte(store: &dyn ContentStore) {
    for (i, len) in [0usize, 1, 4095, 65_537, 300_000].into_iter().enumerate() {
        let k = key(&format!("files/aa/roundtrip{i}"));
        let data = pattern(len, i as u64);
        write(store, &k, &data, 7919).await;
        assert_eq!(read_all(store, &k, None).await, data, "object of {len} bytes");
        assert_eq!(store.size(&k).await.unwrap(), Some(len as u64));
        store.delete(&k).await.unwrap();
    }
}

pub async fn sizes_of_many_keys_answer_each_in_order(store: &dyn ContentStore) {
    let (a, b, absent) = (key("files/ab/sizes-a"), key("files/ab/sizes-b"), key("files/ab/sizes-none"));
    write(store, &a, &pattern(10, 1), 10).await;
    write(store, &b, &pattern(70_000, 2), 65_536).await;
    let asked = [b.clone(), absent.clone(), a.clone(), b.clone()];
    let got = store.sizes(&asked).await.unwrap_or_else(|e| panic!("sizes: {e:?}"));
    assert_eq!(got, vec![Some(70_000), None, Some(10), Some(70_000)], "sizes of {asked:?}");
    assert_eq!(store.sizes(&[]).await.unwrap(), Vec::<Option<u64>>::new(), "no key, no size");
    store.delete(&a).await.unwrap();
    store.delete(&b).await.unwrap();
    assert_eq!(store.sizes(&[a, b]).await.unwrap(), vec![None, None], "deleted objects have no size");
}

pub async fn ranges_read_the_bytes_asked_for(store: &dyn ContentStore) {
    let k = key("files/bb/ranges");
    let data = pattern(100_000, 7);
    write(store, &k, &data, 10_000).await;
    for (start, end) in [(0u64, 1u64), (0, 100_000), (99_999, 100_000), (12_345, 67_890), (50_000, 200_000)] {
        let got = read_all(store, &k, Some(start..end)).await;
        let want = &data[start as usize..(end as usize).min(data.len())];
        assert_eq!(got, want, "range {start}..{end}");
    }
    assert!(
        matches!(store.read(&k, Some(100_000..100_010)).await, Err(ContentError::BadRange)),
        "a range past the end is refused"
    );
    store.delete(&k).await.unwrap();
}

pub async fn nothing_is_visible_before_commit_nor_after_abort(store: &dyn ContentStore) {
    let k = key("files/cc/pending");
    let mut w = store.create(&k).await.unwrap();
    w.write(Bytes::from(pattern(10_000, 3))).await.unwrap();
    assert_eq!(store.size(&k).await.unwrap(), None, "an object is not visible before its commit");
    assert!(matches!(store.read(&k, None).await, Err(ContentError::NotFound)));
    w.abort().await;
    assert_eq!(store.size(&k).await.unwrap(), None, "an aborted object is not visible");
    // A writer dropped midway (a cut connection) leaves nothing either.
    let mut w = store.create(&k).await.unwrap();
    w.write(Bytes::from(pattern(10_000, 4))).await.unwrap();
    drop(w);
    assert_eq!(store.size(&k).await.unwrap(), None, "a dropped writer leaves nothing visible");
    let listed = store.list("files/cc/").await.unwrap();
    assert!(listed.is_empty(), "nothing listed: {listed:?}");
    // Leftovers of interrupted writes go with a sweep.
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.sweep_incomplete(SystemTime::now()).await.unwrap();
}

pub async fn deleting_is_idempotent_and_unknown_keys_are_not_found(store: &dyn ContentStore) {
    let k = key("files/dd/gone");
    assert!(matches!(store.read(&k, None).await, Err(ContentError::NotFound)));
    assert_eq!(store.size(&k).await.unwrap(), None);
    store.delete(&k).await.expect("deleting an absent object is fine");
    write(store, &k, b"x", 1).await;
    store.delete(&k).await.unwrap();
    store.delete(&k).await.unwrap();
    assert_eq!(store.size(&k).await.unwrap(), None);
}

pub async fn listing_finds_committed_objects_by_prefix(store: &dyn ContentStore) {
    let keys = [key("files/ee/one"), key("files/ef/two"), key("other/ee/three")];
    for (i, k) in keys.iter().enumerate() {
        write(store, k, &pattern(10 + i, i as u64), 3).await;
    }
    let mut listed: Vec<(String, u64)> =
        store.list("files/").await.unwrap().into_iter().map(|o| (o.key.as_str().to_owned(), o.size)).collect();
    listed.sort();
    assert_eq!(listed, vec![("files/ee/one".to_owned(), 10), ("files/ef/two".to_owned(), 11)]);
    let others = store.list("other/").await.unwrap();
    assert_eq!(others.len(), 1);
    assert!(others[0].modified <= SystemTime::now() + Duration::from_secs(60), "modification times are sane");
    for k in &keys {
        store.delete(k).await.unwrap();
    }
    assert!(store.list("files/").await.unwrap().is_empty());
}

pub async fn objects_larger_than_one_part_stream_through(store: &dyn ContentStore) {
    // Past the S3 backend's part size, so a multipart upload with several parts is used.
    let len = super::content::S3_PART_BYTES * 2 + 12_345;
    let k = key("files/ff/large");
    let data = pattern(len, 11);
    write(store, &k, &data, 1 << 20).await;
    assert_eq!(store.size(&k).await.unwrap(), Some(len as u64));
    let got = read_all(store, &k, None).await;
    assert!(got == data, "the large object came back different");
    let tail = read_all(store, &k, Some(len as u64 - 10..len as u64)).await;
    assert_eq!(tail, &data[len - 10..]);
    // An upload of several parts aborted midway leaves nothing.
    let k2 = key("files/ff/large-aborted");
    let mut w = store.create(&k2).await.unwrap();
    for c in data.chunks(1 << 20) {
        w.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
    w.abort().await;
    assert_eq!(store.size(&k2).await.unwrap(), None);
    store.delete(&k).await.unwrap();
}

/// Objects whose sizes fall on and beside the edges of 4 KiB units (direct I/O's, on the
/// filesystem) and of 1 MiB blocks, written as blocks of odd chunks, single chunks before and
/// between them, and read back whole and from the edges.
pub async fn sizes_around_block_and_alignment_edges_read_back(store: &dyn ContentStore) {
    const MIB: usize = 1024 * 1024;
    let sizes = [0, 1, 4095, 4096, 4097, MIB - 1, MIB, MIB + 1, 2 * MIB + 4097];
    for (i, len) in sizes.into_iter().enumerate() {
        let k = key(&format!("files/gg/edge{i}"));
        let data = pattern(len, 20 + i as u64);
        let mut w = store.create(&k).await.unwrap_or_else(|e| panic!("create {k}: {e:?}"));
        // A first chunk alone, then blocks of 8,191-byte chunks (up to 128 of them), with a
        // lone chunk of 100 bytes after every block.
        let first = len.min(777);
        w.write(Bytes::copy_from_slice(&data[..first])).await.unwrap();
        let mut at = first;
        while at < len {
            let mut block = Block::default();
            for _ in 0..128 {
                let n = (len - at).min(8191);
                block.push(Bytes::copy_from_slice(&data[at..at + n]));
                at += n;
                if at == len {
                    break;
                }
            }
            w.write_block(block).await.unwrap_or_else(|e| panic!("write_block {k}: {e:?}"));
            let n = (len - at).min(100);
            w.write(Bytes::copy_from_slice(&data[at..at + n])).await.unwrap();
            at += n;
        }
        w.commit().await.unwrap_or_else(|e| panic!("commit {k}: {e:?}"));
        assert_eq!(store.size(&k).await.unwrap(), Some(len as u64), "size of {len} bytes");
        assert!(read_all(store, &k, None).await == data, "object of {len} bytes");
        for start in [4096, MIB, len.saturating_sub(1)] {
            if start < len {
                let got = read_all(store, &k, Some(start as u64..len as u64)).await;
                assert!(got == data[start..], "object of {len} bytes from {start}");
            }
        }
        store.delete(&k).await.unwrap();
    }
}
