//! Errors that say where the fault is: a peer address refused by the SSRF guard is the caller's
//! 400 (no connection is made, nothing failed upstream), a full disk is a 507 that leaves
//! reads working, also after a restart on that full disk, and an instance whose store a newer
//! hearth wrote is a 503 saying so, its file untouched.

mod common;

use std::net::ToSocketAddrs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::flow::{create_sharing, link, notes_rule, state_of, PASS};
use common::{browser, spawn_app_with};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn peer_addresses_refused_by_policy_answer_400_with_the_reason_and_connect_nowhere() {
    // A listener that counts connections: every refused address below points at it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let app = spawn_app_with(|c| c.federation.allow_private_addresses = false).await;
    let alice = app.add_instance("alice", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let id =
        create_sharing(&alice, &token, json!([notes_rule(&["n1"])]), json!([{"email": "bob@example.net"}]), json!([]))
            .await;
    let l = link(&app, &alice, &id, 1).await;
    let mut urls =
        vec![format!("http:/\\127.0.0.1:{port}"), format!("http://localhost:{port}"), format!("127.0.0.1:{port}")];
    // `vm` names this machine in /etc/hosts here: a name that resolves to a refused address.
    if ("vm", port).to_socket_addrs().is_ok_and(|mut a| a.all(|a| a.ip().is_loopback())) {
        urls.push(format!("http://vm:{port}"));
    }
    let b = browser();
    for url in &urls {
        let resp = b
            .post(l.split('?').next().unwrap())
            .header("Accept", "application/json")
            .form(&[("state", state_of(&l).as_str()), ("url", url.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{url}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "bad_request", "{url}: {body}");
        assert!(body["reason"].as_str().unwrap().contains("not allowed"), "{url}: {body}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 0, "a refused address is never connected to");
}

/// A tmpfs of `size` mounted on `dir` (root only), unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_507_keeps_reads_working_and_the_server_starts_read_only() {
    let mount_point = tempfile::tempdir().unwrap();
    let Some(_disk) = SmallDisk::mount(mount_point.path(), "6m") else {
        // Mounting needs root (CI and the development machines run as root).
        eprintln!("cannot mount a tmpfs here: the full-disk test needs root");
        return;
    };
    let data = mount_point.path().to_path_buf();
    let tweak = {
        let data = data.clone();
        move |c: &mut hearth::Config| {
            c.data_dir = data;
            c.store = hearth::config::StoreKind::Sqlite;
        }
    };
    let mut app = spawn_app_with(tweak).await;
    let alice = app.add_instance("alice", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    // Space to give back at the end.
    std::fs::write(data.join("reserve"), vec![7u8; 1 << 20]).unwrap();
    let (s, first) =
        alice.call(Method::PUT, "/data/io.cozy.notes/first", Some(&token), Some(json!({"kept": true}))).await;
    assert_eq!(s, 201, "{first}");
    let filler = "x".repeat(256 * 1024);
    let mut full = None;
    for i in 0..200 {
        let (s, body) = alice
            .call(Method::PUT, &format!("/data/io.cozy.notes/n{i}"), Some(&token), Some(json!({"f": filler})))
            .await;
        match s {
            201 => continue,
            507 => {
                full = Some(body);
                break;
            }
            other => panic!("write {i} answered {other}: {body}"),
        }
    }
    let body = full.expect("the disk never filled");
    assert_eq!(body["error"], "insufficient_storage", "{body}");
    assert!(body["reason"].as_str().unwrap().contains("disk is full"), "{body}");
    // Reads keep working.
    let (s, doc) = alice.call(Method::GET, "/data/io.cozy.notes/first", Some(&token), None).await;
    assert_eq!((s, &doc["kept"]), (200, &json!(true)), "{doc}");
    let (s, _) = alice.call(Method::GET, "/data/io.cozy.notes/_changes", Some(&token), None).await;
    assert_eq!(s, 200);

    // Restarted on the full disk, the server serves reads and refuses writes with 507.
    app.restart().await;
    let (s, doc) = alice.call(Method::GET, "/data/io.cozy.notes/first", Some(&token), None).await;
    assert_eq!((s, &doc["kept"]), (200, &json!(true)), "{doc}");
    let (s, body) = alice.call(Method::PUT, "/data/io.cozy.notes/more", Some(&token), Some(json!({"f": filler}))).await;
    assert_eq!(s, 507, "{body}");

    // Once space is freed, writes work again, without a restart.
    std::fs::remove_file(data.join("reserve")).unwrap();
    let (s, body) = alice.call(Method::PUT, "/data/io.cozy.notes/after", Some(&token), Some(json!({"ok": 1}))).await;
    assert_eq!(s, 201, "{body}");
    app.stop().await;
}

/// The `user_version` (schema) of an SQLite file.
fn schema_of(path: &Path) -> i64 {
    rusqlite::Connection::open(path).unwrap().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn an_instance_a_newer_hearth_wrote_answers_503_saying_so_and_its_file_is_left_as_it_is() {
    let mut app = common::spawn_app_with(|c| c.store = hearth::config::StoreKind::Sqlite).await;
    let alice = app.add_instance("alice", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let (s, body) = alice.call(Method::PUT, "/data/io.cozy.notes/kept", Some(&token), Some(json!({"n": 1}))).await;
    assert_eq!(s, 201, "{body}");
    app.stop().await;
    let file = app.registry.instance_db_path(&hearth::instance::Domain::parse(&alice.domain).unwrap());
    let current = schema_of(&file);
    let newer = current + 1;
    rusqlite::Connection::open(&file).unwrap().pragma_update(None, "user_version", newer).unwrap();

    app.restart().await;
    for (method, body) in [(Method::GET, None), (Method::PUT, Some(json!({"n": 2})))] {
        let (s, answer) = alice.call(method.clone(), "/data/io.cozy.notes/kept", Some(&token), body).await;
        assert_eq!((s, answer["error"].as_str()), (503, Some("service_unavailable")), "{method}: {answer}");
        let reason = answer["reason"].as_str().unwrap();
        assert!(reason.contains("newer version of hearth") && reason.contains(&format!("schema {newer}")), "{reason}");
        assert!(!reason.contains(app.dir.path().to_str().unwrap()), "the path stays out: {reason}");
    }
    app.stop().await;
    assert_eq!(schema_of(&file), newer, "not upgraded, nor written down");

    // Given back the schema this hearth reads, the instance serves its data again, the write
    // refused above not in it.
    rusqlite::Connection::open(&file).unwrap().pragma_update(None, "user_version", current).unwrap();
    app.restart().await;
    let (s, doc) = alice.call(Method::GET, "/data/io.cozy.notes/kept", Some(&token), None).await;
    assert_eq!((s, &doc["n"]), (200, &json!(1)), "{doc}");
    app.stop().await;
}
