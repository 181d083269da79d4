//! Invitation mails through SMTP: with `mail.smtp_url` set, each recipient with an email gets
//! the invitation link and becomes `pending`; when the server fails, the member stays
//! `mail-not-sent` and the sharing is still created.

mod common;

use std::sync::{Arc, Mutex};

use common::flow::{create_sharing, link, notes_rule, PASS};
use common::spawn_app_with;
use hearth::sharing::{self, MemberStatus, SharingId};
use secrecy::SecretString;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A minimal SMTP server on 127.0.0.1 that records each message's DATA.
async fn smtp_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails = Arc::new(Mutex::new(Vec::new()));
    let store = mails.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 sink ESMTP\r\n").await.ok();
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(d) = data.as_mut() {
                        if line == "." {
                            store.lock().unwrap().push(std::mem::take(d));
                            data = None;
                            w.write_all(b"250 queued\r\n").await.ok();
                        } else {
                            d.push_str(&line);
                            d.push('\n');
                        }
                        continue;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250-sink\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("DATA") {
                        data = Some(String::new());
                        b"354 go ahead\r\n"
                    } else if upper.starts_with("QUIT") {
                        w.write_all(b"221 bye\r\n").await.ok();
                        break;
                    } else {
                        b"250 ok\r\n"
                    };
                    w.write_all(reply).await.ok();
                }
            });
        }
    });
    (port, mails)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_are_mailed_and_members_become_pending() {
    let (port, mails) = smtp_sink().await;
    let app = spawn_app_with(|c| {
        c.mail.smtp_url = Some(SecretString::from(format!("smtp://127.0.0.1:{port}")));
        c.mail.from = Some("hearth <hearth@example.net>".into());
    })
    .await;
    let alice = app.add_instance("alice", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let id = create_sharing(
        &alice,
        &token,
        json!([notes_rule(&["n1"])]),
        json!([{"email": "bob@example.net"}, {"instance": "https://carol.example.net"}]),
        json!([]),
    )
    .await;
    let s = sharing::load(app.instance(&alice.domain).store.as_ref(), &SharingId::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.members[1].status, MemberStatus::Pending, "mailed");
    assert_eq!(s.members[2].status, MemberStatus::MailNotSent, "no email address");
    let sent = mails.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let expected = link(&app, &alice, &id, 1).await;
    // Quoted-printable may fold long lines: compare without soft line breaks.
    let text = sent[0].replace("=\n", "").replace("=3D", "=");
    assert!(text.contains(&expected), "the mail carries the invitation link: {text}");
    assert!(text.contains("To: bob@example.net"));
}

#[tokio::test]
async fn a_failing_smtp_server_leaves_members_mail_not_sent() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app =
        spawn_app_with(|c| c.mail.smtp_url = Some(SecretString::from(format!("smtp://127.0.0.1:{closed}")))).await;
    let alice = app.add_instance("alice", PASS);
    let token = app.token(&alice, "io.cozy.notes");
    let id =
        create_sharing(&alice, &token, json!([notes_rule(&["n1"])]), json!([{"email": "bob@example.net"}]), json!([]))
            .await;
    let s = sharing::load(app.instance(&alice.domain).store.as_ref(), &SharingId::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.members[1].status, MemberStatus::MailNotSent);
}
