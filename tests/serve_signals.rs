//! Stopping `hearth serve` by signal (README, "Commands"): Ctrl-C (SIGINT) and SIGTERM (what a
//! service manager sends) both stop it gracefully. A request in flight when the signal comes
//! gets its answer (an upload still sending its body: 201, and its file is there after a
//! restart), and the process exits with status 0. actix's own signal handlers used to take
//! SIGINT as a forced stop, which cut the upload.

mod common;

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use common::process::ServerProcess as Server;
use md5::Digest;
use serde_json::Value;

const ROOT: &str = "io.cozy.files.root-dir";
const CHUNK: usize = 256 * 1024;
const CHUNKS: usize = 6;

/// Uploads `name` into the root with its body sent in [`CHUNKS`] chunks 200 ms apart, telling
/// `sent_first` once the first two chunks went (the server has the request by then: told at the
/// first chunk, a loaded machine could signal before the server accepted the connection, which
/// a stop then refuses: no request was in flight); the answer's status and JSON.
async fn slow_upload(
    domain: &str,
    token: &str,
    name: &str,
    data: Bytes,
    sent_first: tokio::sync::oneshot::Sender<()>,
) -> (u16, Value) {
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&data));
    let mut sent_first = Some(sent_first);
    let chunks = futures_util::stream::unfold(0usize, move |i| {
        let data = data.clone();
        let first = if i == 2 { sent_first.take() } else { None };
        async move {
            if i == CHUNKS {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if let Some(tx) = first {
                // Told once the chunks before were taken by the connection, just before this
                // one is handed over: the signal comes while the body is still on its way.
                let _ = tx.send(());
            }
            Some((Ok::<_, std::io::Error>(data.slice(i * CHUNK..(i + 1) * CHUNK)), i + 1))
        }
    });
    let resp = common::browser()
        .post(format!("http://{domain}/files/{ROOT}?Type=file&Name={name}"))
        .bearer_auth(token)
        .header("Content-Length", (CHUNK * CHUNKS).to_string())
        .header("Content-MD5", md5)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await;
    match resp {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, Value::String(format!("{e}"))),
    }
}

async fn stops_gracefully_on(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new("alice", dir.path().to_path_buf(), vec![]);
    server.cli(&["instances", "add", &server.domain(), "--passphrase", "x"]);
    let token = server.cli(&["instances", "token", &server.domain(), "--scope", "io.cozy.files"]).trim().to_owned();
    server.start().await;
    let data = Bytes::from((0..CHUNK * CHUNKS).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let upload = tokio::spawn({
        let (domain, token, data) = (server.domain(), token.clone(), data.clone());
        async move { slow_upload(&domain, &token, "during-stop.bin", data, tx).await }
    });
    rx.await.expect("the upload began");
    server.signal(signal);
    let (status, body) = upload.await.unwrap();
    assert_eq!(status, 201, "the upload in flight at SIG{signal} is answered: {body}");
    let exit = tokio::task::spawn_blocking(move || {
        let exit = server.wait_exit(Duration::from_secs(45));
        (server, exit)
    });
    let (mut server, exit) = exit.await.unwrap();
    let exit = exit.unwrap_or_else(|| panic!("hearth serve still runs 45 s after SIG{signal}"));
    assert!(exit.success(), "hearth serve exits with status 0 after SIG{signal}: {exit}");

    // What was answered 201 is there, byte for byte, once it runs again.
    server.start().await;
    let resp = common::browser()
        .get(format!("http://{}/files/download?Path=/during-stop.bin", server.domain()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.bytes().await.unwrap() == data, "the file uploaded during the stop came back different");
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_lets_a_request_in_flight_finish_and_exits_with_status_0() {
    stops_gracefully_on("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish_and_exits_with_status_0() {
    stops_gracefully_on("TERM").await;
}
