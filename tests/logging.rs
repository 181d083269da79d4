//! A malformed request is the client's fault: actix's ERROR about it is logged as DEBUG by the
//! server's real subscriber (`hearth::logging`), over a real socket.

mod common;

use common::logs::Captured;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::test]
async fn malformed_requests_are_logged_at_debug_not_error() {
    let out = Captured::default();
    let writer = out.clone();
    tracing_subscriber::registry()
        .with(hearth::logging::layer("info,actix_http::h1::dispatcher=debug", move || writer.clone(), false))
        .init();
    let app = common::spawn_app().await;
    let requests: [&[u8]; 2] =
        [b"GET / HTTP/1.1\r\nHost alice.localhost\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n"];
    for request in requests {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));
    }
    common::eventually(10, "actix's report of the malformed request", || {
        let text = out.text();
        async move { text.contains("DEBUG actix_http::h1::dispatcher") }
    })
    .await;
    let text = out.text();
    assert!(!text.contains("ERROR"), "{text}");
}
