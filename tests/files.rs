//! The files API (`/files`) on one instance, over real HTTP, on the configured store (SQLite,
//! or CouchDB when `HEARTH_TEST_COUCHDB_URL` is set): uploads and downloads byte for byte,
//! names, moves, the trash, quotas, ranges, scopes, links, and the tree index following
//! documents that arrive by replication.
//!
//! One file, over 800 lines: each integration test file is its own binary, linked against the
//! whole crate (about a minute of link time per binary here, on both test passes); these tests
//! share one fixture set, so they stay one binary.

mod common;

use base64::Engine;
use common::{browser, spawn_app, spawn_app_with, TestApp, TestInstance};
use hearth::files::conformance::pattern;
use hearth::store::{Body, DocId, DocWrite, Doctype};
use md5::Digest;
use reqwest::Method;
use serde_json::{json, Value};

const ROOT: &str = "io.cozy.files.root-dir";
const TRASH: &str = "io.cozy.files.trash-dir";

fn md5_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn upload(i: &TestInstance, token: &str, dir: &str, name: &str, data: &[u8]) -> (u16, Value) {
    let resp = i
        .req(Method::POST, &format!("/files/{}?Type=file&Name={}", enc(dir), enc(name)), Some(token))
        .header("Content-MD5", md5_b64(data))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    json_of(resp).await
}

async fn mkdir(i: &TestInstance, token: &str, dir: &str, name: &str) -> (u16, Value) {
    let resp = i
        .req(Method::POST, &format!("/files/{}?Type=directory&Name={}", enc(dir), enc(name)), Some(token))
        .send()
        .await
        .unwrap();
    json_of(resp).await
}

async fn download(i: &TestInstance, token: &str, id: &str) -> (u16, Vec<u8>) {
    let resp = i.req(Method::GET, &format!("/files/download/{}", enc(id)), Some(token)).send().await.unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

fn id_of(v: &Value) -> String {
    v["data"]["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_owned()
}

/// A link (sharecode) for `holder` reading the files or directories `values`: the answer of
/// `POST /permissions?codes=holder` (status and body) and the code when it was made.
async fn file_link(i: &TestInstance, token: &str, holder: &str, values: &[&str]) -> (u16, Value, Option<String>) {
    let (status, v) = i
        .call(
            Method::POST,
            &format!("/permissions?codes={holder}"),
            Some(token),
            Some(json!({"data": {"type": "io.cozy.permissions", "attributes": {"permissions": {
                "files": {"type": "io.cozy.files", "verbs": ["GET"], "values": values}}}}})),
        )
        .await;
    let code = v["data"]["attributes"]["codes"][holder].as_str().map(str::to_owned);
    (status, v, code)
}

async fn setup() -> (TestApp, TestInstance, String) {
    let app = spawn_app().await;
    let alice = app.add_instance("alice", "pa");
    let token = app.token(&alice, "io.cozy.files");
    (app, alice, token)
}

/// Every child of a directory, following `links.next`.
async fn children(i: &TestInstance, token: &str, dir: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut url = format!("/files/{}?page[limit]={limit}", enc(dir));
    loop {
        let (status, v) = i.call(Method::GET, &url, Some(token), None).await;
        assert_eq!(status, 200, "{v}");
        let page = v["included"].as_array().cloned().unwrap_or_default();
        assert!(page.len() <= limit);
        out.extend(page);
        match v["links"]["next"].as_str() {
            Some(next) => url = next.to_owned(),
            None => return out,
        }
    }
}

#[tokio::test]
async fn a_folder_tree_uploads_and_every_file_downloads_back_byte_identical() {
    let (_app, alice, token) = setup().await;
    let (status, docs) = mkdir(&alice, &token, ROOT, "Documents").await;
    assert_eq!(status, 201, "{docs}");
    assert_eq!(docs["data"]["attributes"]["path"], "/Documents");
    let docs_id = id_of(&docs);
    let (_, photos) = mkdir(&alice, &token, &docs_id, "Photos").await;
    let photos_id = id_of(&photos);
    let (_, deep) = mkdir(&alice, &token, &photos_id, "2026 été").await;
    assert_eq!(deep["data"]["attributes"]["path"], "/Documents/Photos/2026 été");
    let mut files = Vec::new();
    for (n, (dir, len)) in
        [(&docs_id, 0usize), (&docs_id, 1), (&photos_id, 65_537), (&id_of(&deep), 3 * 1024 * 1024 + 7)]
            .iter()
            .enumerate()
    {
        let data = pattern(*len, n as u64);
        let (status, v) = upload(&alice, &token, dir, &format!("file {n}.bin"), &data).await;
        assert_eq!(status, 201, "{v}");
        let a = &v["data"]["attributes"];
        assert_eq!(a["type"], "file");
        assert_eq!(a["size"], len.to_string(), "Cozy's form: a decimal string");
        assert_eq!(a["md5sum"], md5_b64(&data));
        assert_eq!(a["trashed"], false);
        assert_eq!(v["data"]["relationships"]["parent"]["data"]["id"], dir.as_str());
        files.push((id_of(&v), data));
    }
    for (id, data) in &files {
        let (status, got) = download(&alice, &token, id).await;
        assert_eq!(status, 200);
        assert!(got == *data, "{id} came back different ({} bytes, {} expected)", got.len(), data.len());
    }
    // By path, metadata and content.
    let (status, v) =
        alice.call(Method::GET, "/files/metadata?Path=/Documents/Photos/file%202.bin", Some(&token), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(id_of(&v), files[2].0);
    let resp =
        alice.req(Method::GET, "/files/download?Path=%2FDocuments%2Ffile%201.bin", Some(&token)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), files[1].1);
    // The directory lists its children, sub-directory included.
    let names: Vec<String> = children(&alice, &token, &docs_id, 30)
        .await
        .iter()
        .map(|c| c["attributes"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["Photos", "file 0.bin", "file 1.bin"]);
}

#[tokio::test]
async fn hostile_names_and_paths_get_clear_4xx_and_change_nothing() {
    let (_app, alice, token) = setup().await;
    let long = "x".repeat(256);
    // Blank names and names that display as something else (nextcloud/server#10030) too.
    for name in [
        "",
        ".",
        "..",
        "a/b",
        "/",
        "a\0b",
        "line\nbreak",
        "\u{7f}",
        long.as_str(),
        " ",
        "  \t",
        "a\u{202E}txt.exe",
        "\u{FEFF}",
        // Only invisible characters: blank too.
        "\u{200B}",
        "\u{200C}\u{200D}",
        "\u{2060}",
        "\u{00AD}",
        "\u{180E}",
        "\u{200E}",
        " \u{200B} ",
    ] {
        for kind in ["file", "directory"] {
            let resp = alice
                .req(Method::POST, &format!("/files/{ROOT}?Type={kind}&Name={}", enc(name)), Some(&token))
                .body("x")
                .send()
                .await
                .unwrap();
            let (status, v) = json_of(resp).await;
            assert_eq!(status, 400, "{kind} {name:?}: {v}");
            assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
        }
    }
    // `%2F` in a name is a slash once decoded; a raw %00 too.
    for query in ["Type=file&Name=a%2Fb", "Type=file&Name=%2E%2E", "Type=file&Name=a%00", "Type=file", "Name=x"] {
        let (status, v) = alice.call(Method::POST, &format!("/files/{ROOT}?{query}"), Some(&token), None).await;
        assert_eq!(status, 400, "{query}: {v}");
    }
    for path in ["a/b", "/../etc/passwd", "/a/../b", "/./a", "//a", "", "/a%00b"] {
        let (status, v) =
            alice.call(Method::GET, &format!("/files/metadata?Path={}", enc(path)), Some(&token), None).await;
        assert!((400..500).contains(&status), "{path:?}: {status} {v}");
        let resp =
            alice.req(Method::GET, &format!("/files/download?Path={}", enc(path)), Some(&token)).send().await.unwrap();
        assert!((400..500).contains(&resp.status().as_u16()), "{path:?}");
    }
    let (status, _) = alice.call(Method::GET, "/files/%zz", Some(&token), None).await;
    assert_eq!(status, 400);
    // Hostile ids, on every route that takes one.
    let long_id = "a".repeat(10_000);
    for id in ["..", "%2E%2E", "..%2F..%2Fetc%2Fpasswd", "a%00b", "%2F", long_id.as_str()] {
        for (method, path) in [
            (Method::GET, format!("/files/{id}")),
            (Method::GET, format!("/files/download/{id}")),
            (Method::PUT, format!("/files/{id}")),
            (Method::PATCH, format!("/files/{id}")),
            (Method::DELETE, format!("/files/{id}")),
            (Method::POST, format!("/files/{id}?Type=directory&Name=x")),
            (Method::POST, format!("/files/trash/{id}")),
            (Method::DELETE, format!("/files/trash/{id}")),
        ] {
            // An API client asking for JSON (`/files/..` is `/` once the client resolves the dot
            // segment: the home, which sends other clients to log in).
            let resp = alice
                .req(method.clone(), &path, Some(&token))
                .header("Accept", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let (is_json, text) = (
                resp.headers().get("content-type").is_some_and(|c| c.to_str().unwrap().contains("json")),
                resp.text().await.unwrap(),
            );
            assert!(matches!(status, 400 | 404 | 405), "{method} {}: {status} {text}", &path[..path.len().min(80)]);
            if status != 405 {
                assert!(is_json && text.contains("\"reason\""), "{method} {path:.80}: {text}");
            }
        }
    }
    let long_path = format!("/{}", ["x"; 5000].join("/"));
    for path in [long_path.as_str(), &format!("/{}", "y".repeat(300)), "/a\0"] {
        let (status, v) =
            alice.call(Method::GET, &format!("/files/metadata?Path={}", enc(path)), Some(&token), None).await;
        assert!((400..500).contains(&status), "{path:.40}: {status} {v}");
    }
    // Renames to hostile names are refused too.
    let (_, d) = mkdir(&alice, &token, ROOT, "victim").await;
    let victim = id_of(&d);
    for name in ["", ".", "..", "a/b", "a\0b", long.as_str(), "../../etc"] {
        let body = json!({"data": {"attributes": {"name": name}}});
        let (status, v) = alice.call(Method::PATCH, &format!("/files/{victim}"), Some(&token), Some(body)).await;
        assert_eq!(status, 400, "rename to {name:?}: {v}");
    }
    let (_, v) = alice.call(Method::DELETE, &format!("/files/{victim}"), Some(&token), None).await;
    let (status, _) = alice.call(Method::DELETE, &format!("/files/trash/{}", id_of(&v)), Some(&token), None).await;
    assert_eq!(status, 204);
    // Nothing was created.
    assert!(children(&alice, &token, ROOT, 30).await.iter().all(|c| c["id"] == TRASH), "only the trash is in the root");
    // A 255-byte name is fine.
    let (status, v) = mkdir(&alice, &token, ROOT, &"é".repeat(127)).await;
    assert_eq!(status, 201, "{v}");
}

/// Every Unicode `Default_Ignorable_Code_Point` range (DerivedCoreProperties.txt), both ends,
/// and the blank-drawn U+2800 and U+3000: a name made only of them is blank (400) by POST and by
/// PATCH; with a visible character beside them it is a name (201).
#[tokio::test]
async fn names_made_only_of_invisible_characters_are_refused_by_class() {
    let (_app, alice, token) = setup().await;
    let blanks: Vec<char> = [
        ('\u{00AD}', '\u{00AD}'),
        ('\u{034F}', '\u{034F}'),
        ('\u{061C}', '\u{061C}'),
        ('\u{115F}', '\u{1160}'),
        ('\u{17B4}', '\u{17B5}'),
        ('\u{180B}', '\u{180F}'),
        ('\u{200B}', '\u{200F}'),
        ('\u{202A}', '\u{202E}'),
        ('\u{2060}', '\u{206F}'),
        ('\u{3164}', '\u{3164}'),
        ('\u{FE00}', '\u{FE0F}'),
        ('\u{FEFF}', '\u{FEFF}'),
        ('\u{FFA0}', '\u{FFA0}'),
        ('\u{FFF0}', '\u{FFF8}'),
        ('\u{1BCA0}', '\u{1BCA3}'),
        ('\u{1D173}', '\u{1D17A}'),
        ('\u{E0000}', '\u{E0001}'),
        ('\u{E0FFE}', '\u{E0FFF}'),
        ('\u{2800}', '\u{2800}'),
        ('\u{3000}', '\u{3000}'),
    ]
    .into_iter()
    .flat_map(|(a, b)| {
        // Both ends and one in the middle of each range.
        let mid = char::from_u32((a as u32 + b as u32) / 2).unwrap();
        [a, mid, b]
    })
    .collect();
    let (_, d) = mkdir(&alice, &token, ROOT, "victim").await;
    let victim = id_of(&d);
    let patch = |name: &str| json!({"data": {"attributes": {"name": name}}});
    for c in &blanks {
        for name in [c.to_string(), format!("{c}{c}"), format!(" {c} ")] {
            for kind in ["file", "directory"] {
                let resp = alice
                    .req(Method::POST, &format!("/files/{ROOT}?Type={kind}&Name={}", enc(&name)), Some(&token))
                    .body("x")
                    .send()
                    .await
                    .unwrap();
                let (status, v) = json_of(resp).await;
                assert_eq!(status, 400, "{kind} U+{:04X}: {v}", *c as u32);
                assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
            }
            let (status, v) =
                alice.call(Method::PATCH, &format!("/files/{victim}"), Some(&token), Some(patch(&name))).await;
            assert_eq!(status, 400, "rename to U+{:04X}: {v}", *c as u32);
        }
    }
    // Only the victim and the trash: nothing was created, nothing renamed.
    let names: Vec<String> = children(&alice, &token, ROOT, 50)
        .await
        .iter()
        .map(|c| c["attributes"]["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"victim".to_owned()), "{names:?}");
    // A visible character beside them makes a name (those that are not bidi controls).
    for (n, name) in ["a\u{3164}", "\u{2800}b", "c\u{FE0F}", "\u{115F}d", "e\u{034F}f", "g\u{E0001}", "h\u{00AD}i"]
        .into_iter()
        .enumerate()
    {
        let (status, v) = mkdir(&alice, &token, ROOT, name).await;
        assert_eq!(status, 201, "{name:?}: {v}");
        assert_eq!(v["data"]["attributes"]["name"], name);
        let renamed = format!("{name}{n}");
        let (status, v) =
            alice.call(Method::PATCH, &format!("/files/{}", id_of(&v)), Some(&token), Some(patch(&renamed))).await;
        assert_eq!(status, 200, "{renamed:?}: {v}");
        assert_eq!(v["data"]["attributes"]["name"], renamed.as_str());
    }
}

#[tokio::test]
async fn names_are_unique_within_a_directory() {
    let (_app, alice, token) = setup().await;
    let (_, a) = mkdir(&alice, &token, ROOT, "a").await;
    let a = id_of(&a);
    assert_eq!(upload(&alice, &token, &a, "x.txt", b"1").await.0, 201);
    let (status, v) = upload(&alice, &token, &a, "x.txt", b"2").await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(mkdir(&alice, &token, &a, "x.txt").await.0, 409);
    assert_eq!(mkdir(&alice, &token, ROOT, "a").await.0, 409);
    // Same name elsewhere, or differing in case, is fine (names are case sensitive, as in Cozy).
    assert_eq!(upload(&alice, &token, ROOT, "x.txt", b"3").await.0, 201);
    assert_eq!(upload(&alice, &token, &a, "X.txt", b"4").await.0, 201);
    // Renaming onto a taken name is refused too.
    let (_, y) = upload(&alice, &token, &a, "y.txt", b"5").await;
    let (status, _) = alice
        .call(
            Method::PATCH,
            &format!("/files/{}", id_of(&y)),
            Some(&token),
            Some(json!({"data": {"attributes": {"name": "x.txt"}}})),
        )
        .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn items_are_renamed_moved_trashed_and_restored() {
    let (_app, alice, token) = setup().await;
    let (_, a) = mkdir(&alice, &token, ROOT, "a").await;
    let a = id_of(&a);
    let (_, b) = mkdir(&alice, &token, &a, "b").await;
    let b = id_of(&b);
    let (_, c) = mkdir(&alice, &token, &b, "c").await;
    let c = id_of(&c);
    let data = pattern(10_000, 1);
    let (_, f) = upload(&alice, &token, &c, "f.txt", &data).await;
    let f = id_of(&f);
    let patch = |attrs: Value| json!({"data": {"type": "io.cozy.files", "attributes": attrs}});
    // Rename, with tags.
    let (status, v) = alice
        .call(Method::PATCH, &format!("/files/{f}"), Some(&token), Some(patch(json!({"name": "g.txt", "tags": ["t"]}))))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["attributes"]["name"], "g.txt");
    assert_eq!(v["data"]["attributes"]["tags"], json!(["t"]));
    // Moving a directory into itself or below it is refused.
    for target in [&a, &b, &c] {
        let (status, v) = alice
            .call(Method::PATCH, &format!("/files/{a}"), Some(&token), Some(patch(json!({"dir_id": target}))))
            .await;
        assert_eq!(status, 400, "{v}");
    }
    // Moving `c` to the root: its path and its file's follow.
    let (status, v) =
        alice.call(Method::PATCH, &format!("/files/{c}"), Some(&token), Some(patch(json!({"dir_id": ROOT})))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["attributes"]["path"], "/c");
    let (status, v) = alice.call(Method::GET, "/files/metadata?Path=/c/g.txt", Some(&token), None).await;
    assert_eq!((status, id_of(&v)), (200, f.clone()));
    // A stale If-Match is refused.
    let resp = alice
        .req(Method::PATCH, &format!("/files/{f}"), Some(&token))
        .header("If-Match", "1-00000000000000000000000000000000")
        .json(&patch(json!({"name": "h.txt"})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 412);

    // Trash `a` (with `b` in it): both are trashed, `b` through its parent.
    let (status, v) = alice.call(Method::DELETE, &format!("/files/{a}"), Some(&token), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["attributes"]["trashed"], true);
    assert_eq!(v["data"]["attributes"]["path"], "/.cozy_trash/a");
    let (_, v) = alice.call(Method::GET, &format!("/files/{b}"), Some(&token), None).await;
    assert_eq!(v["data"]["attributes"]["trashed"], true);
    let (status, list) = alice.call(Method::GET, "/files/trash", Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    // Uploading into the trash is refused.
    assert_eq!(upload(&alice, &token, &b, "x", b"x").await.0, 400);
    // Restored, with its path made again since a new `a` took its place meanwhile? No: the
    // root is free, so it comes back as it was.
    let (status, v) = alice.call(Method::POST, &format!("/files/trash/{a}"), Some(&token), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["attributes"]["path"], "/a");
    assert_eq!(v["data"]["attributes"]["trashed"], false);
    assert!(v["data"]["attributes"].get("restore_path").is_none());

    // Trash the file, then trash and destroy its directory: restoring the file recreates it.
    let (status, _) = alice.call(Method::DELETE, &format!("/files/{f}"), Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(alice.call(Method::DELETE, &format!("/files/{c}"), Some(&token), None).await.0, 200);
    assert_eq!(alice.call(Method::DELETE, &format!("/files/trash/{c}"), Some(&token), None).await.0, 204);
    assert_eq!(alice.call(Method::GET, &format!("/files/{c}"), Some(&token), None).await.0, 404);
    let (status, v) = alice.call(Method::POST, &format!("/files/trash/{f}"), Some(&token), None).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = alice.call(Method::GET, "/files/metadata?Path=/c/g.txt", Some(&token), None).await;
    assert_eq!((status, id_of(&v)), (200, f.clone()), "{v}");
    assert_ne!(v["data"]["relationships"]["parent"]["data"]["id"], c.as_str(), "a new directory was made");
    assert_eq!(download(&alice, &token, &f).await.1, data);
    // A name taken at restore time gets a suffix.
    assert_eq!(alice.call(Method::DELETE, &format!("/files/{f}"), Some(&token), None).await.0, 200);
    let (_, c2) = alice.call(Method::GET, "/files/metadata?Path=/c", Some(&token), None).await;
    assert_eq!(upload(&alice, &token, &id_of(&c2), "g.txt", b"other").await.0, 201);
    let (_, v) = alice.call(Method::POST, &format!("/files/trash/{f}"), Some(&token), None).await;
    assert_eq!(v["data"]["attributes"]["name"], "g (2).txt");
    // The root and the trash cannot be trashed or moved.
    assert_eq!(alice.call(Method::DELETE, &format!("/files/{ROOT}"), Some(&token), None).await.0, 403);
    assert_eq!(alice.call(Method::DELETE, &format!("/files/{TRASH}"), Some(&token), None).await.0, 403);
    // Emptying the trash destroys everything in it, content included.
    assert_eq!(alice.call(Method::DELETE, &format!("/files/{a}"), Some(&token), None).await.0, 200);
    assert_eq!(alice.call(Method::DELETE, &format!("/files/{f}"), Some(&token), None).await.0, 200);
    assert_eq!(alice.call(Method::DELETE, "/files/trash", Some(&token), None).await.0, 204);
    let (_, list) = alice.call(Method::GET, "/files/trash", Some(&token), None).await;
    assert_eq!(list["data"], json!([]));
    assert_eq!(alice.call(Method::GET, &format!("/files/{b}"), Some(&token), None).await.0, 404);
    assert_eq!(download(&alice, &token, &f).await.0, 404);
}

#[tokio::test]
async fn children_are_listed_page_by_page_in_name_order() {
    let (_app, alice, token) = setup().await;
    let (_, d) = mkdir(&alice, &token, ROOT, "many").await;
    let d = id_of(&d);
    let mut names: Vec<String> = (0..45).map(|i| format!("n{i:03}")).collect();
    for n in names.iter().rev() {
        assert_eq!(mkdir(&alice, &token, &d, n).await.0, 201);
    }
    let (_, first) = alice.call(Method::GET, &format!("/files/{d}?page[limit]=20"), Some(&token), None).await;
    assert_eq!(first["meta"]["count"], 45);
    assert_eq!(first["data"]["relationships"]["contents"]["data"].as_array().unwrap().len(), 20);
    assert!(first["links"]["next"].is_string());
    let listed: Vec<String> = children(&alice, &token, &d, 20)
        .await
        .iter()
        .map(|c| c["attributes"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(listed, names);
    let (status, _) = alice.call(Method::GET, &format!("/files/{d}?page[limit]=0"), Some(&token), None).await;
    assert_eq!(status, 400);
    let (status, _) = alice.call(Method::GET, &format!("/files/{d}?page[cursor]=nope"), Some(&token), None).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn downloads_answer_ranges_etags_and_content_disposition() {
    let (_app, alice, token) = setup().await;
    let data = pattern(100_000, 5);
    let (_, v) = upload(&alice, &token, ROOT, "rapport été.pdf", &data).await;
    let id = id_of(&v);
    let url = format!("/files/download/{id}");
    let resp = alice.req(Method::GET, &url, Some(&token)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    let etag = h["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{}\"", md5_b64(&data)));
    assert_eq!(h["content-type"], "application/pdf");
    assert_eq!(h["content-length"], "100000");
    let cd = h["content-disposition"].to_str().unwrap();
    assert!(cd.starts_with("inline; filename=\"rapport _t_.pdf\""), "{cd}");
    assert!(cd.contains("filename*=UTF-8''rapport%20%C3%A9t%C3%A9%2Epdf"), "{cd}");
    let resp = alice.req(Method::GET, &format!("{url}?Dl=1"), Some(&token)).send().await.unwrap();
    assert!(resp.headers()["content-disposition"].to_str().unwrap().starts_with("attachment;"));
    // If-None-Match with the ETag: 304, no body.
    let resp = alice.req(Method::GET, &url, Some(&token)).header("If-None-Match", &etag).send().await.unwrap();
    assert_eq!(resp.status(), 304);
    assert!(resp.bytes().await.unwrap().is_empty());
    let resp = alice.req(Method::GET, &url, Some(&token)).header("If-None-Match", "\"other\"").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Ranges.
    for (header, start, end) in [
        ("bytes=0-0", 0, 1),
        ("bytes=10-19", 10, 20),
        ("bytes=99990-", 99_990, 100_000),
        ("bytes=-5", 99_995, 100_000),
        ("bytes=50000-999999", 50_000, 100_000),
    ] {
        let resp = alice.req(Method::GET, &url, Some(&token)).header("Range", header).send().await.unwrap();
        assert_eq!(resp.status(), 206, "{header}");
        assert_eq!(resp.headers()["content-range"], format!("bytes {start}-{}/100000", end - 1).as_str(), "{header}");
        assert_eq!(resp.bytes().await.unwrap().to_vec(), &data[start..end], "{header}");
    }
    let resp = alice.req(Method::GET, &url, Some(&token)).header("Range", "bytes=100000-").send().await.unwrap();
    assert_eq!(resp.status(), 416);
    assert_eq!(resp.headers()["content-range"], "bytes */100000");
    // A range with a stale If-Range gets the whole content.
    let resp = alice
        .req(Method::GET, &url, Some(&token))
        .header("Range", "bytes=0-9")
        .header("If-Range", "\"x\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 100_000);
}

#[tokio::test]
async fn a_content_md5_mismatch_is_refused_and_leaves_nothing() {
    let (app, alice, token) = setup().await;
    let resp = alice
        .req(Method::POST, &format!("/files/{ROOT}?Type=file&Name=bad.txt"), Some(&token))
        .header("Content-MD5", md5_b64(b"something else"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 412);
    assert_eq!(alice.call(Method::GET, "/files/metadata?Path=/bad.txt", Some(&token), None).await.0, 404);
    let resp = alice
        .req(Method::POST, &format!("/files/{ROOT}?Type=file&Name=bad.txt"), Some(&token))
        .header("Content-MD5", "not base64!")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // No content object was kept.
    let files = app.files.of(&app.instance(&alice.domain)).await.unwrap();
    assert!(files.content.list("files/").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_trailing_slash_after_a_file_path_finds_nothing() {
    let (_app, alice, token) = setup().await;
    // A trailing slash names a directory; a file is not one (404), a directory still is.
    let (status, v) = upload(&alice, &token, ROOT, "case.txt", b"case").await;
    assert_eq!(status, 201, "{v}");
    for route in ["metadata", "download"] {
        let resp = alice
            .req(Method::GET, &format!("/files/{route}?Path={}", enc("/case.txt/")), Some(&token))
            .send()
            .await
            .unwrap();
        let (status, v) = json_of(resp).await;
        assert_eq!(status, 404, "{route} /case.txt/: {v}");
    }
    let (status, v) = mkdir(&alice, &token, ROOT, "casedir").await;
    assert_eq!(status, 201, "{v}");
    let (status, v) =
        alice.call(Method::GET, &format!("/files/metadata?Path={}", enc("/casedir/")), Some(&token), None).await;
    assert_eq!(status, 200, "{v}");
}

#[tokio::test]
async fn content_is_replaced_with_if_match_and_the_old_version_goes() {
    let (app, alice, token) = setup().await;
    let (_, v) = upload(&alice, &token, ROOT, "doc.txt", b"version 1").await;
    let id = id_of(&v);
    let rev1 = v["data"]["meta"]["rev"].as_str().unwrap().to_owned();
    let put = |body: &'static [u8], rev: &str| {
        alice
            .req(Method::PUT, &format!("/files/{id}"), Some(&token))
            .header("If-Match", rev)
            .header("Content-MD5", md5_b64(body))
            .body(body)
            .send()
    };
    let (status, v2) = json_of(put(b"version 2, longer", &rev1).await.unwrap()).await;
    assert_eq!(status, 200, "{v2}");
    assert_eq!(v2["data"]["attributes"]["size"], "17");
    assert_eq!(v2["data"]["attributes"]["name"], "doc.txt");
    assert_eq!(download(&alice, &token, &id).await.1, b"version 2, longer");
    // The stale revision is refused; the content stays.
    let (status, _) = json_of(put(b"version 3", &rev1).await.unwrap()).await;
    assert_eq!(status, 412);
    assert_eq!(download(&alice, &token, &id).await.1, b"version 2, longer");
    // A weak tag never matches (RFC 9110 strong comparison): 412, even the current revision's.
    let rev2 = v2["data"]["meta"]["rev"].as_str().unwrap().to_owned();
    let (status, v) = json_of(put(b"version 3", &format!("W/\"{rev2}\"")).await.unwrap()).await;
    assert_eq!(status, 412, "{v}");
    assert_eq!(download(&alice, &token, &id).await.1, b"version 2, longer");
    // `*` matches any current representation: the replacement goes through.
    let (status, v) = json_of(put(b"version *", "*").await.unwrap()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(download(&alice, &token, &id).await.1, b"version *");
    // One version is kept.
    let files = app.files.of(&app.instance(&alice.domain)).await.unwrap();
    assert_eq!(files.content.list("files/").await.unwrap().len(), 1);
    // A directory has no content to replace.
    let (_, d) = mkdir(&alice, &token, ROOT, "d").await;
    let resp = alice.req(Method::PUT, &format!("/files/{}", id_of(&d)), Some(&token)).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn the_quota_refuses_uploads_beyond_it_with_413_and_writes_nothing() {
    let app = spawn_app_with(|c| c.files.quota_bytes = 100_000).await;
    let alice = app.add_instance("alice", "pa");
    let token = app.token(&alice, "io.cozy.files");
    assert_eq!(upload(&alice, &token, ROOT, "a", &pattern(60_000, 1)).await.0, 201);
    // Declared length over what is left: refused before the body is read.
    let (status, v) = upload(&alice, &token, ROOT, "b", &pattern(60_000, 2)).await;
    assert_eq!(status, 413, "{v}");
    // A chunked body: refused once it passes the quota.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        pattern(60_000, 3).chunks(8192).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    let resp = alice
        .req(Method::POST, &format!("/files/{ROOT}?Type=file&Name=c"), Some(&token))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // Neither is there; what fits still goes in; a chunked body that fits is taken.
    for name in ["/b", "/c"] {
        assert_eq!(alice.call(Method::GET, &format!("/files/metadata?Path={name}"), Some(&token), None).await.0, 404);
    }
    let files = app.files.of(&app.instance(&alice.domain)).await.unwrap();
    assert_eq!(files.content.list("files/").await.unwrap().len(), 1);
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        pattern(30_000, 4).chunks(8192).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    let resp = alice
        .req(Method::POST, &format!("/files/{ROOT}?Type=file&Name=d"), Some(&token))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // An instance's own quota overrides the default.
    hearth::files::set_instance_quota(app.instance(&alice.domain).store.as_ref(), Some(200_000)).await.unwrap();
    assert_eq!(upload(&alice, &token, ROOT, "e", &pattern(60_000, 5)).await.0, 201);
    assert_eq!(files.used().await.unwrap(), 150_000);
}

/// A 413 says what is true: the file's size and the bytes that were free, for a new file, a
/// replacement and a body of unknown length.
#[tokio::test]
async fn a_file_that_does_not_fit_is_refused_with_its_size_and_the_room_left() {
    let app = spawn_app_with(|c| c.files.quota_bytes = 100_000).await;
    let alice = app.add_instance("alice", "pa");
    let token = app.token(&alice, "io.cozy.files");
    let (_, a) = upload(&alice, &token, ROOT, "a", &pattern(60_000, 1)).await;
    let a = id_of(&a);
    // A new file: 70,000 bytes with 40,000 free.
    let (status, v) = upload(&alice, &token, ROOT, "b", &pattern(70_000, 2)).await;
    assert_eq!(status, 413, "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("does not fit") && reason.contains("it is 70000 bytes"), "{v}");
    assert!(reason.contains("40000 bytes are free") && reason.contains("nothing was written"), "{v}");
    // A replacement: the old content's room counts as free (100,000), the new one is 150,000.
    let data = pattern(150_000, 3);
    let resp = alice
        .req(Method::PUT, &format!("/files/{a}"), Some(&token))
        .header("Content-MD5", md5_b64(&data))
        .body(data)
        .send()
        .await
        .unwrap();
    let (status, v) = json_of(resp).await;
    assert_eq!(status, 413, "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("it is 150000 bytes") && reason.contains("100000 bytes are free"), "{v}");
    // A chunked body: what had arrived when it passed the room left.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        pattern(60_000, 4).chunks(8192).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    let resp = alice
        .req(Method::POST, &format!("/files/{ROOT}?Type=file&Name=c"), Some(&token))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    let (status, v) = json_of(resp).await;
    assert_eq!(status, 413, "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("its body passed") && reason.contains("40000 bytes are free"), "{v}");
}

/// A query parameter given twice on `/files` is a 400: no value silently wins.
#[tokio::test]
async fn a_files_query_parameter_given_twice_is_refused() {
    let (_app, alice, token) = setup().await;
    for query in ["Type=file&Name=a&Name=b", "Type=file&Type=directory&Name=c", "Name=d&Type=directory&Type=directory"]
    {
        let resp =
            alice.req(Method::POST, &format!("/files/{ROOT}?{query}"), Some(&token)).body("x").send().await.unwrap();
        let (status, v) = json_of(resp).await;
        assert_eq!(status, 400, "{query}: {v}");
        assert!(v["reason"].as_str().unwrap().contains("more than once"), "{v}");
    }
    let (status, v) = alice.call(Method::GET, "/files/metadata?Path=/&Path=/x", Some(&token), None).await;
    assert_eq!(status, 400, "{v}");
    // Nothing was created.
    assert!(children(&alice, &token, ROOT, 30).await.iter().all(|c| c["id"] == TRASH), "only the trash is in the root");
}

#[tokio::test]
async fn data_io_cozy_files_is_read_only_and_scopes_apply_to_files() {
    let (app, alice, token) = setup().await;
    let (_, d) = mkdir(&alice, &token, ROOT, "shared").await;
    let d = id_of(&d);
    let (_, inside) = upload(&alice, &token, &d, "in.txt", b"inside").await;
    let (_, outside) = upload(&alice, &token, ROOT, "out.txt", b"outside").await;
    let (inside, outside) = (id_of(&inside), id_of(&outside));
    // /data reads work, writes are refused with a reason.
    let (status, v) = alice.call(Method::GET, &format!("/data/io.cozy.files/{inside}"), Some(&token), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["name"], "in.txt");
    for (method, path, body) in [
        (Method::PUT, format!("/data/io.cozy.files/{inside}"), Some(json!({"name": "x"}))),
        (Method::POST, "/data/io.cozy.files/".to_owned(), Some(json!({"type": "file", "name": "y"}))),
        (Method::DELETE, format!("/data/io.cozy.files/{inside}?rev={}", v["_rev"].as_str().unwrap()), None),
        (Method::POST, "/data/io.cozy.files/_bulk_docs".to_owned(), Some(json!({"docs": [{"name": "z"}]}))),
    ] {
        let (status, v) = alice.call(method.clone(), &path, Some(&token), body).await;
        assert_eq!(status, 403, "{method} {path}: {v}");
        assert!(v["reason"].as_str().unwrap().contains("/files"), "{v}");
    }
    assert_eq!(alice.call(Method::GET, "/data/io.cozy.files/_changes", Some(&token), None).await.0, 200);
    // A read-only token reads, and writes nothing.
    let reader = app.token(&alice, "io.cozy.files:GET");
    assert_eq!(download(&alice, &reader, &inside).await, (200, b"inside".to_vec()));
    assert_eq!(upload(&alice, &reader, &d, "new.txt", b"x").await.0, 403);
    assert_eq!(alice.call(Method::DELETE, &format!("/files/{inside}"), Some(&reader), None).await.0, 403);
    // A scope on a directory covers what is under it, nothing else.
    let scoped = app.token(&alice, &format!("io.cozy.files:GET,POST:{d}"));
    assert_eq!(download(&alice, &scoped, &inside).await.0, 200);
    assert_eq!(download(&alice, &scoped, &outside).await.0, 403);
    assert_eq!(alice.call(Method::GET, &format!("/files/{d}"), Some(&scoped), None).await.0, 200);
    assert_eq!(alice.call(Method::GET, &format!("/files/{ROOT}"), Some(&scoped), None).await.0, 403);
    assert_eq!(upload(&alice, &scoped, &d, "new.txt", b"x").await.0, 201);
    assert_eq!(upload(&alice, &scoped, ROOT, "new.txt", b"x").await.0, 403);
    // No token: 401.
    assert_eq!(alice.call(Method::GET, &format!("/files/{d}"), None, None).await.0, 401);
    // Another doctype's token: 403.
    let notes = app.token(&alice, "io.cozy.notes");
    assert_eq!(alice.call(Method::GET, &format!("/files/{d}"), Some(&notes), None).await.0, 403);
}

#[tokio::test]
async fn a_link_on_a_directory_reads_its_subtree_only_until_revoked() {
    let (_app, alice, token) = setup().await;
    let (_, d) = mkdir(&alice, &token, ROOT, "album").await;
    let d = id_of(&d);
    let (_, sub) = mkdir(&alice, &token, &d, "sub").await;
    let (_, photo) = upload(&alice, &token, &id_of(&sub), "p.jpg", b"jpeg bytes").await;
    let (_, secret) = upload(&alice, &token, ROOT, "secret.txt", b"no").await;
    let (photo, secret) = (id_of(&photo), id_of(&secret));
    // Links on files are read-only.
    let (status, v) = alice
        .call(
            Method::POST,
            "/permissions?codes=bob",
            Some(&token),
            Some(json!({"data": {"type": "io.cozy.permissions", "attributes": {"permissions": {
                "album": {"type": "io.cozy.files", "verbs": ["GET", "POST"], "values": [d]}}}}})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let (status, v, code) = file_link(&alice, &token, "bob", &[&d]).await;
    assert_eq!(status, 200, "{v}");
    let code = code.unwrap();
    let perm = id_of(&v);
    // The code lists the directory and its sub-directory, and downloads what is in them.
    let listed = children(&alice, &code, &d, 10).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["attributes"]["name"], "sub");
    assert_eq!(download(&alice, &code, &photo).await, (200, b"jpeg bytes".to_vec()));
    // Nothing outside, and no write inside.
    assert_eq!(download(&alice, &code, &secret).await.0, 404);
    assert_eq!(alice.call(Method::GET, &format!("/files/{ROOT}"), Some(&code), None).await.0, 404);
    assert_eq!(upload(&alice, &code, &d, "new.txt", b"x").await.0, 403);
    assert_eq!(alice.call(Method::DELETE, &format!("/files/{photo}"), Some(&code), None).await.0, 403);
    let (status, _) = alice
        .call(
            Method::PATCH,
            &format!("/files/{photo}"),
            Some(&code),
            Some(json!({"data": {"attributes": {"name": "q"}}})),
        )
        .await;
    assert_eq!(status, 403);
    // A file moved out of the directory is out of the link's reach.
    let (status, _) = alice
        .call(
            Method::PATCH,
            &format!("/files/{photo}"),
            Some(&token),
            Some(json!({"data": {"attributes": {"dir_id": ROOT}}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(download(&alice, &code, &photo).await.0, 404);
    // Revoked: the code stops at once.
    assert_eq!(alice.call(Method::DELETE, &format!("/permissions/{perm}"), Some(&token), None).await.0, 204);
    assert_eq!(alice.call(Method::GET, &format!("/files/{d}"), Some(&code), None).await.0, 401);
    assert_eq!(download(&alice, &code, &id_of(&sub)).await.0, 401);
}

/// A link holder cannot tell which ids exist outside the link: every files route (metadata,
/// HEAD, children, download, by id and by path, and the write verbs) answers an existing id
/// outside its scope exactly as an id that names nothing (the same 404, the same body).
#[tokio::test]
async fn outside_a_link_every_files_route_answers_as_for_an_id_that_does_not_exist() {
    let (_app, alice, token) = setup().await;
    let (_, parent) = mkdir(&alice, &token, ROOT, "parent").await;
    let parent = id_of(&parent);
    let (_, sub1) = mkdir(&alice, &token, &parent, "sub1").await;
    let sub1 = id_of(&sub1);
    let (_, inside) = upload(&alice, &token, &sub1, "in.txt", b"inside").await;
    let (_, beside) = upload(&alice, &token, &parent, "beside.txt", b"beside").await;
    let (_, other) = mkdir(&alice, &token, ROOT, "other").await;
    let (_, trashed) = upload(&alice, &token, ROOT, "gone.txt", b"gone").await;
    let (inside, beside, other, trashed) = (id_of(&inside), id_of(&beside), id_of(&other), id_of(&trashed));
    assert_eq!(alice.call(Method::DELETE, &format!("/files/{trashed}"), Some(&token), None).await.0, 200);
    let (status, v, code) = file_link(&alice, &token, "bob", &[&sub1]).await;
    assert_eq!(status, 200, "{v}");
    let code = code.unwrap();
    // Inside: read.
    assert_eq!(download(&alice, &code, &inside).await, (200, b"inside".to_vec()));
    let answer = |method: Method, path: String| {
        let (alice, code) = (&alice, &code);
        async move {
            let body = if method == Method::PATCH { r#"{"data": {"attributes": {"name": "y"}}}"# } else { "{}" };
            let resp = alice.req(method, &path, Some(code)).body(body).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let made_up = "0123456789abcdef0123456789abcdef";
    for outside in [parent.as_str(), beside.as_str(), other.as_str(), trashed.as_str(), ROOT, TRASH] {
        for (method, route) in [
            (Method::GET, "/files/{}"),
            (Method::HEAD, "/files/{}"),
            (Method::GET, "/files/{}?page[limit]=5"),
            (Method::GET, "/files/download/{}"),
            (Method::HEAD, "/files/download/{}"),
            (Method::PATCH, "/files/{}"),
            (Method::DELETE, "/files/{}"),
            (Method::PUT, "/files/{}"),
            (Method::POST, "/files/{}?Type=directory&Name=x"),
        ] {
            let got = answer(method.clone(), route.replace("{}", &enc(outside))).await;
            let none = answer(method.clone(), route.replace("{}", made_up)).await;
            assert_eq!(got.0, 404, "{method} {route} on {outside}: {got:?}");
            assert_eq!(got, (none.0, none.1.replace(made_up, outside)), "{method} {route} on {outside}");
        }
    }
    // By path: what lies outside answers as a path where nothing is.
    for path in ["/parent", "/parent/beside.txt", "/other", "/"] {
        for route in ["/files/metadata?Path=", "/files/download?Path="] {
            let got = answer(Method::GET, format!("{route}{}", enc(path))).await;
            let none = answer(Method::GET, format!("{route}{}", enc("/parent/nothing-here"))).await;
            assert_eq!(got.0, 404, "{route}{path}: {got:?}");
            assert_eq!(got, none, "{route}{path}");
        }
    }
}

#[tokio::test]
async fn a_link_on_one_file_downloads_that_file() {
    let (_app, alice, token) = setup().await;
    let (_, f) = upload(&alice, &token, ROOT, "f.txt", b"file bytes").await;
    let (_, g) = upload(&alice, &token, ROOT, "g.txt", b"other").await;
    let (f, g) = (id_of(&f), id_of(&g));
    let (status, v, code) = file_link(&alice, &token, "x", &[&f]).await;
    assert_eq!(status, 200, "{v}");
    let code = code.unwrap();
    assert_eq!(download(&alice, &code, &f).await, (200, b"file bytes".to_vec()));
    assert_eq!(alice.call(Method::GET, &format!("/files/{f}"), Some(&code), None).await.0, 200);
    assert_eq!(download(&alice, &code, &g).await.0, 404);
    // Trashing the linked file cuts the link (seafile#1024, ocis#3269); restoring it brings the
    // link back, while the owner reads it in the trash all along.
    let (status, _) = alice.call(Method::DELETE, &format!("/files/{f}"), Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(download(&alice, &code, &f).await.0, 404);
    assert_eq!(alice.call(Method::GET, &format!("/files/{f}"), Some(&code), None).await.0, 404);
    assert_eq!(download(&alice, &token, &f).await, (200, b"file bytes".to_vec()));
    let (status, _) = alice.call(Method::POST, &format!("/files/trash/{f}"), Some(&token), None).await;
    assert_eq!(status, 200);
    assert_eq!(download(&alice, &code, &f).await, (200, b"file bytes".to_vec()));
}

/// A file a browser would run (HTML, SVG, XML, script), whatever its declared type, is served
/// as an attachment; every download carries `nosniff` and a sandboxing policy, so an uploaded
/// page never runs on the instance's origin (cozy-stack#3435).
#[tokio::test]
async fn downloads_never_run_uploaded_pages_on_the_instances_origin() {
    let (_app, alice, token) = setup().await;
    let page = b"<script>fetch('/auth/session/token')</script>";
    for (name, content_type) in
        [("x.html", None), ("x.svg", None), ("ct.jpg", Some("text/html")), ("x.xhtml", Some("application/xhtml+xml"))]
    {
        let mut req = alice
            .req(Method::POST, &format!("/files/{ROOT}?Type=file&Name={}", enc(name)), Some(&token))
            .header("Content-MD5", md5_b64(page));
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        let (status, v) = json_of(req.body(page.to_vec()).send().await.unwrap()).await;
        assert_eq!(status, 201, "{v}");
        let resp =
            alice.req(Method::GET, &format!("/files/download/{}", id_of(&v)), Some(&token)).send().await.unwrap();
        let h = resp.headers();
        let disposition = h["content-disposition"].to_str().unwrap();
        assert!(disposition.starts_with("attachment;"), "{name}: {disposition}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{name}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("sandbox") && csp.contains("default-src 'none'"), "{name}: {csp}");
    }
    // Plain text and images still display inline, under the same policy.
    let (_, v) = upload(&alice, &token, ROOT, "notes.txt", b"hello").await;
    let resp = alice.req(Method::GET, &format!("/files/download/{}", id_of(&v)), Some(&token)).send().await.unwrap();
    assert!(resp.headers()["content-disposition"].to_str().unwrap().starts_with("inline;"));
    assert!(resp.headers()["content-security-policy"].to_str().unwrap().contains("sandbox"));
}

/// Documents written with `new_edits=false`, as the replicator writes what a peer sends,
/// enter the tree like those made through `/files`: listed in their directory, with their path,
/// their names counted for uniqueness, and their deletion seen.
#[tokio::test]
async fn documents_arriving_by_replication_enter_the_tree() {
    let (app, alice, token) = setup().await;
    let store = app.instance(&alice.domain).store.clone();
    let dt = Doctype::parse("io.cozy.files").unwrap();
    let doc = |id: &str, rev: &str, body: Value| DocWrite {
        id: DocId::parse(id).unwrap(),
        rev: Some(rev.parse().unwrap()),
        revisions: Some(vec![rev.parse().unwrap()]),
        deleted: false,
        body: Body::parse(&body.to_string()).unwrap(),
    };
    let writes = vec![
        doc(
            "remote-dir",
            "1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            json!({"type": "directory", "name": "From Bob", "dir_id": ROOT, "path": "/elsewhere/From Bob"}),
        ),
        doc(
            "remote-sub",
            "1-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            json!({"type": "directory", "name": "sub", "dir_id": "remote-dir"}),
        ),
        doc(
            "remote-file",
            "1-cccccccccccccccccccccccccccccccc",
            json!({"type": "file", "name": "notes.txt", "dir_id": "remote-sub", "size": "5"}),
        ),
    ];
    store.bulk_docs(&dt, writes, false).await.unwrap();
    let (status, v) = alice.call(Method::GET, "/files/metadata?Path=/From%20Bob/sub", Some(&token), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(id_of(&v), "remote-sub");
    assert_eq!(v["data"]["attributes"]["path"], "/From Bob/sub");
    assert_eq!(v["included"][0]["id"], "remote-file");
    let (_, dir) = alice.call(Method::GET, "/files/remote-dir", Some(&token), None).await;
    assert_eq!(dir["data"]["attributes"]["path"], "/From Bob", "the path comes from the tree, not the document");
    // Its names count for uniqueness.
    assert_eq!(mkdir(&alice, &token, ROOT, "From Bob").await.0, 409);
    // A replicated move and a replicated deletion are followed.
    let moved = DocWrite {
        revisions: Some(vec![
            "2-dddddddddddddddddddddddddddddddd".parse().unwrap(),
            "1-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".parse().unwrap(),
        ]),
        ..doc(
            "remote-sub",
            "2-dddddddddddddddddddddddddddddddd",
            json!({"type": "directory", "name": "moved", "dir_id": ROOT}),
        )
    };
    store.bulk_docs(&dt, vec![moved], false).await.unwrap();
    let (status, v) = alice.call(Method::GET, "/files/metadata?Path=/moved", Some(&token), None).await;
    assert_eq!((status, v["included"][0]["id"].as_str()), (200, Some("remote-file")));
    let gone = DocWrite {
        deleted: true,
        revisions: Some(vec![
            "2-eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee".parse().unwrap(),
            "1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".parse().unwrap(),
        ]),
        ..doc("remote-dir", "2-eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", json!({}))
    };
    store.bulk_docs(&dt, vec![gone], false).await.unwrap();
    assert_eq!(alice.call(Method::GET, "/files/remote-dir", Some(&token), None).await.0, 404);
    assert_eq!(mkdir(&alice, &token, ROOT, "From Bob").await.0, 201);
}

#[tokio::test]
async fn the_tree_index_is_rebuilt_from_the_store_after_a_restart_without_it() {
    let (mut app, alice, token) = setup().await;
    let (_, d) = mkdir(&alice, &token, ROOT, "kept").await;
    let (_, f) = upload(&alice, &token, &id_of(&d), "f.bin", &pattern(5000, 9)).await;
    app.stop().await;
    let index_dir = app.dir.path().join("files").join("index");
    std::fs::remove_dir_all(&index_dir).unwrap();
    app.restart().await;
    let (status, v) = alice.call(Method::GET, "/files/metadata?Path=/kept/f.bin", Some(&token), None).await;
    assert_eq!((status, id_of(&v)), (200, id_of(&f)));
    assert_eq!(download(&alice, &token, &id_of(&f)).await.1, pattern(5000, 9));
    assert_eq!(mkdir(&alice, &token, ROOT, "kept").await.0, 409);
}

/// A link on a directory opened in a browser (`/public/?sharecode=`) lists what it reaches with
/// working downloads, and its sub-directories (`?dir=`), never anything outside it; paths
/// outside the link answer exactly as paths that do not exist.
#[tokio::test]
async fn a_directory_link_opened_in_a_browser_lists_and_downloads_its_files_only() {
    let (_app, alice, token) = setup().await;
    let (_, album) = mkdir(&alice, &token, ROOT, "album").await;
    let album = id_of(&album);
    let (_, sub) = mkdir(&alice, &token, &album, "2026 <trip>").await;
    let sub = id_of(&sub);
    let (_, photo) = upload(&alice, &token, &sub, "beach.jpg", b"jpeg bytes").await;
    let (_, cover) = upload(&alice, &token, &album, "cover.png", b"png bytes").await;
    let (_, secret) = mkdir(&alice, &token, ROOT, "Private").await;
    let secret = id_of(&secret);
    let (status, v, code) = file_link(&alice, &token, "friend", &[&album]).await;
    assert_eq!(status, 200, "{v}");
    let code = code.unwrap();
    let b = browser();
    let resp = b.get(alice.url(&format!("/public/?sharecode={code}"))).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let html = b.get(alice.url("/public/")).send().await.unwrap().text().await.unwrap();
    let cover_link = format!("/files/download/{}?Dl=1", enc(&id_of(&cover)));
    assert!(html.contains(&cover_link), "{html}");
    assert!(html.contains("2026 &lt;trip&gt;/") && !html.contains("<trip>"), "names are escaped: {html}");
    // The download link works with the page's cookie alone.
    let resp = b.get(alice.url(&cover_link)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"png bytes");
    // Into the sub-directory, and not outside the link.
    let html = b.get(alice.url(&format!("/public/?dir={}", enc(&sub)))).send().await.unwrap().text().await.unwrap();
    assert!(html.contains(&format!("/files/download/{}?Dl=1", enc(&id_of(&photo)))), "{html}");
    let resp = b.get(alice.url(&format!("/public/?dir={}", enc(&secret)))).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert!(!resp.text().await.unwrap().contains("Private"));
    // Outside the link, a path that exists answers as one that does not.
    let (exists, v1) = alice.call(Method::GET, "/files/metadata?Path=/Private", Some(&code), None).await;
    let (missing, v2) = alice.call(Method::GET, "/files/metadata?Path=/Nothing", Some(&code), None).await;
    assert_eq!((exists, missing), (404, 404), "{v1} {v2}");
    assert_eq!(v1, v2);
    let resp = alice.req(Method::GET, "/files/download?Path=/Private", Some(&code)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // Inside, by path, it reads.
    let (status, v) = alice.call(Method::GET, "/files/metadata?Path=/album/cover.png", Some(&code), None).await;
    assert_eq!(status, 200, "{v}");
}

/// Malformed input that actix itself refuses, or that is not UTF-8 once decoded, still gets a
/// JSON error and changes nothing.
#[tokio::test]
async fn every_refusal_is_a_json_error_even_for_methods_and_bytes_actix_refuses() {
    let (_app, alice, token) = setup().await;
    // A name that is not UTF-8 is refused, not rewritten to U+FFFD.
    let (status, v) =
        alice.call(Method::POST, &format!("/files/{ROOT}?Type=file&Name=%FF%FE"), Some(&token), None).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("UTF-8"), "{v}");
    assert!(children(&alice, &token, ROOT, 30).await.iter().all(|c| c["id"] == TRASH), "nothing was created");
    // A method a route does not take: 405 with a JSON body and its Allow header kept.
    let (_, f) = upload(&alice, &token, ROOT, "f.txt", b"x").await;
    for (method, path) in
        [(Method::OPTIONS, format!("/files/{}", id_of(&f))), (Method::GET, format!("/files/trash/{}", id_of(&f)))]
    {
        let resp = alice.req(method.clone(), &path, Some(&token)).send().await.unwrap();
        let status = resp.status().as_u16();
        assert_eq!(status, 405, "{method} {path}");
        let v: Value = resp.json().await.unwrap_or_else(|e| panic!("{method} {path}: not JSON: {e}"));
        assert_eq!(v["error"], "method_not_allowed", "{v}");
        assert!(v["reason"].is_string());
    }
}

/// An upload whose body stalls (`Content-Length: 100`, 10 bytes sent, the socket kept open) is
/// ended with a 408 after `files.body_idle_secs`, and leaves no file and no quota used.
#[tokio::test]
async fn a_stalled_upload_body_ends_with_a_408_and_leaves_nothing() {
    let app = spawn_app_with(|c| c.files.body_idle_secs = 1).await;
    let alice = app.add_instance("alice", "pa");
    let token = app.token(&alice, "io.cozy.files");
    let head = format!(
        "POST /files/{ROOT}?Type=file&Name=stalled.bin HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 100\r\n\r\n0123456789",
        alice.domain
    );
    let text = common::raw_answer(app.port, &head, 20).await.expect("an answer to a stalled body");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert!(children(&alice, &token, ROOT, 30).await.iter().all(|c| c["id"] == TRASH), "nothing was created");
    let resp = alice.req(Method::GET, "/files/download?Path=/stalled.bin", Some(&token)).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

/// Cozy's free-form `metadata` of a file is kept as written (key order, numbers of any size)
/// and a metadata that is not an object is a 400 that changes nothing.
#[tokio::test]
async fn file_metadata_is_kept_exactly_as_written() {
    let (_app, alice, token) = setup().await;
    let (_, f) = upload(&alice, &token, ROOT, "photo.jpg", b"jpeg").await;
    let id = id_of(&f);
    let metadata = r#"{"zeta":1,"alpha":{"yak":2,"bee":3},"big":123456789012345678901234567890}"#;
    let body = format!(r#"{{"data": {{"attributes": {{"metadata": {metadata}}}}}}}"#);
    let resp = alice.req(Method::PATCH, &format!("/files/{id}"), Some(&token)).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text =
        alice.req(Method::GET, &format!("/files/{id}"), Some(&token)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains(&format!(r#""metadata":{metadata}"#)), "{text}");
    let (status, v) = alice
        .call(
            Method::PATCH,
            &format!("/files/{id}"),
            Some(&token),
            Some(json!({"data": {"attributes": {"metadata": [1]}}})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    let again =
        alice.req(Method::GET, &format!("/files/{id}"), Some(&token)).send().await.unwrap().text().await.unwrap();
    assert!(again.contains(&format!(r#""metadata":{metadata}"#)), "{again}");
}

/// `HEAD` on an item, its metadata by path and its content answers as `GET` does: the same
/// status and headers (`Content-Length`, `Content-Type`, `ETag`, `Content-Range`...), no body.
#[tokio::test]
async fn head_answers_with_the_headers_of_get_and_no_body() {
    let (_app, alice, token) = setup().await;
    let data = pattern(70_000, 9);
    let (_, v) = upload(&alice, &token, ROOT, "notes été.txt", &data).await;
    let id = id_of(&v);
    let path = enc("/notes été.txt");
    let cases = [
        (format!("/files/{id}"), None),
        (format!("/files/metadata?Path={path}"), None),
        (format!("/files/download/{id}"), None),
        (format!("/files/download?Path={path}"), None),
        (format!("/files/download/{id}"), Some("bytes=10-19")),
    ];
    for (url, range) in cases {
        let send = |method: Method| {
            let mut r = alice.req(method, &url, Some(&token));
            if let Some(range) = range {
                r = r.header("Range", range);
            }
            r.send()
        };
        let get = send(Method::GET).await.unwrap();
        let head = send(Method::HEAD).await.unwrap();
        assert_eq!(head.status(), get.status(), "{url}");
        assert!(head.status().is_success(), "{url}: {}", head.status());
        for h in ["content-type", "content-length", "etag", "content-range", "content-disposition", "accept-ranges"] {
            assert_eq!(head.headers().get(h), get.headers().get(h), "{url}: {h}");
        }
        let get_len = get.headers()["content-length"].to_str().unwrap().parse::<usize>().unwrap();
        assert_eq!(get.bytes().await.unwrap().len(), get_len, "{url}");
        assert!(head.bytes().await.unwrap().is_empty(), "{url}: HEAD has no body");
    }
    let resp = alice.req(Method::HEAD, &format!("/files/download/{id}"), Some(&token)).send().await.unwrap();
    assert_eq!(resp.headers()["content-length"], "70000");
    assert_eq!(resp.headers()["etag"], format!("\"{}\"", md5_b64(&data)).as_str());
    // Whatever GET refuses, HEAD refuses with the same status.
    for url in ["/files/nope".to_owned(), "/files/download/nope".to_owned(), format!("/files/download/{ROOT}")] {
        let get = alice.req(Method::GET, &url, Some(&token)).send().await.unwrap().status();
        let head = alice.req(Method::HEAD, &url, Some(&token)).send().await.unwrap().status();
        assert_eq!((head, head.is_client_error()), (get, true), "{url}");
    }
    let other = alice.req(Method::HEAD, &format!("/files/{id}"), None).send().await.unwrap().status();
    assert_eq!(other, 401, "HEAD needs the same token as GET");
}

/// Two names that differ only by Unicode normalization (`é` precomposed, NFC, as most systems
/// write it; decomposed, NFD, as macOS does) are one name in a directory: the second is a
/// conflict (409), as for identical names, and a path in either form finds the item. The name
/// is kept as written.
#[tokio::test]
async fn names_that_differ_only_by_unicode_normalization_are_one_name() {
    let (_app, alice, token) = setup().await;
    let (nfc, nfd) = ("caf\u{e9}.txt", "cafe\u{301}.txt");
    assert_ne!(nfc, nfd);
    let (status, v) = upload(&alice, &token, ROOT, nfc, b"one").await;
    assert_eq!(status, 201, "{v}");
    let id = id_of(&v);
    let (status, v) = upload(&alice, &token, ROOT, nfd, b"two").await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(mkdir(&alice, &token, ROOT, nfd).await.0, 409);
    // Found by either form of its path, named as it was written.
    for name in [nfc, nfd] {
        let (status, v) =
            alice.call(Method::GET, &format!("/files/metadata?Path=/{}", enc(name)), Some(&token), None).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            (v["data"]["id"].as_str(), v["data"]["attributes"]["name"].as_str()),
            (Some(id.as_str()), Some(nfc))
        );
    }
    // Renaming another item onto the other form is refused; the item itself may take it.
    let (_, other) = upload(&alice, &token, ROOT, "other.txt", b"3").await;
    let rename = |id: String, name: &str| {
        let body = json!({"data": {"attributes": {"name": name}}});
        let alice = &alice;
        let token = &token;
        async move { alice.call(Method::PATCH, &format!("/files/{id}"), Some(token), Some(body)).await }
    };
    assert_eq!(rename(id_of(&other), nfd).await.0, 409);
    let (status, v) = rename(id.clone(), nfd).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["attributes"]["name"], nfd, "kept as written");
    // Directories too: a folder and a file of one name in two forms cannot sit side by side.
    let (status, d) = mkdir(&alice, &token, ROOT, "\u{C5}rhus").await;
    assert_eq!(status, 201, "{d}");
    assert_eq!(upload(&alice, &token, ROOT, "A\u{30A}rhus", b"4").await.0, 409);
    let names: Vec<String> = children(&alice, &token, ROOT, 30)
        .await
        .iter()
        .filter_map(|c| c["attributes"]["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names.len(), 4, "the trash, café, other and Århus: {names:?}");
}

/// A chain of `n` nested directories under `dir`, named `{prefix}1`…: the first and the last.
async fn chain(i: &TestInstance, token: &str, dir: &str, prefix: &str, n: usize) -> (String, String) {
    let (mut first, mut last) = (String::new(), dir.to_owned());
    for k in 1..=n {
        let (status, v) = mkdir(i, token, &last, &format!("{prefix}{k}")).await;
        assert_eq!(status, 201, "{prefix}{k}: {v}");
        last = id_of(&v);
        if k == 1 {
            first = last.clone();
        }
    }
    (first, last)
}

/// A move may not take a tree past the depth a new directory may have (512 levels): two trees
/// of 300 levels joined by one move made nodes that no walk from the root or from the trash
/// reached, so emptying the trash left them behind, still counted in the quota (found by
/// replaying ownCloud's ocis#1077, "trashbin cannot delete a deep tree").
#[tokio::test]
async fn a_move_that_would_nest_items_too_deep_is_refused_and_the_trash_empties_whole() {
    let (_app, alice, token) = setup().await;
    let patch = |dir: &str| json!({"data": {"type": "io.cozy.files", "attributes": {"dir_id": dir}}});
    let (a1, a300) = chain(&alice, &token, ROOT, "a", 300).await;
    let (b1, b300) = chain(&alice, &token, ROOT, "b", 300).await;
    let (status, leaf) = upload(&alice, &token, &b300, "leaf.bin", b"deep").await;
    assert_eq!(status, 201, "{leaf}");
    let (status, v) = alice.call(Method::PATCH, &format!("/files/{b1}"), Some(&token), Some(patch(&a300))).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["reason"].as_str().unwrap().contains("at most 512 levels"), "{v}");
    let (status, v) = alice.call(Method::GET, &format!("/files/{b1}"), Some(&token), None).await;
    assert_eq!((status, v["data"]["attributes"]["dir_id"].as_str()), (200, Some(ROOT)), "stayed where it was: {v}");
    // Within the limit the move is made: b1 (300 levels with the leaf under it) under a200.
    let (status, v) = alice
        .call(
            Method::GET,
            &format!("/files/metadata?Path={}", enc(&(1..=200).map(|k| format!("/a{k}")).collect::<String>())),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let a200 = id_of(&v);
    let (status, v) = alice.call(Method::PATCH, &format!("/files/{b1}"), Some(&token), Some(patch(&a200))).await;
    assert_eq!(status, 200, "{v}");
    // Trashed and emptied, nothing of either tree is left.
    let (status, v) = alice.call(Method::DELETE, &format!("/files/{a1}"), Some(&token), None).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = alice.call(Method::DELETE, "/files/trash", Some(&token), None).await;
    assert_eq!(status, 204, "{v}");
    for id in [a1, a300, b1, b300, id_of(&leaf)] {
        let (status, v) = alice.call(Method::GET, &format!("/files/{id}"), Some(&token), None).await;
        assert_eq!(status, 404, "{id}: {v}");
    }
}
