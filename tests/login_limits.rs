//! Login limits under concurrency, over real HTTP: the per-address budget holds however many
//! attempts arrive at once (counted with the instance's real verification counter), guessing
//! from many addresses is slowed without walling the owner out, and sessions are per login,
//! end on logout and end everywhere when the passphrase changes (through the real CLI).
//!
//! Clients are bound to different 127.0.0.x source addresses (reqwest's `local_address`), which
//! is what the server sees: it trusts no forwarding header.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{spawn_app_with, TestApp, TestInstance};
use reqwest::{Client, StatusCode};

/// A browser (cookies, no redirects followed) connecting from 127.0.0.`last`.
fn browser_from(inst: &TestInstance, last: u8) -> Client {
    let host = inst.domain.split(':').next().unwrap_or_default().to_owned();
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        // A fresh connection per request: no race with the server closing an idle one.
        .pool_max_idle_per_host(0)
        .resolve(&host, SocketAddr::from(([127, 0, 0, 1], inst.port)))
        .no_proxy()
        .build()
        .unwrap()
}

async fn login(client: &Client, inst: &TestInstance, passphrase: &str) -> reqwest::Response {
    client.post(inst.url("/auth/login")).form(&[("passphrase", passphrase), ("redirect", "/")]).send().await.unwrap()
}

fn checks(app: &TestApp, inst: &TestInstance) -> u64 {
    app.instance(&inst.domain).passphrase_checks.load(Ordering::SeqCst)
}

const OWNER_PAGE: &str = "/auth/authorize/sharing?sharing_id=0123456789abcdef0123456789abcdef&state=x";

/// Whether the browser's session is live: the owner's page to accept a sharing sends anyone
/// else to the login page.
async fn logged_in(client: &Client, inst: &TestInstance) -> bool {
    let resp = client.get(inst.url(OWNER_PAGE)).send().await.unwrap();
    let to_login =
        resp.headers().get("location").and_then(|l| l.to_str().ok()).is_some_and(|l| l.starts_with("/auth/login"));
    !to_login
}

#[tokio::test]
async fn two_hundred_concurrent_wrong_logins_from_one_address_verify_at_most_the_limit() {
    let app = spawn_app_with(|c| c.login_max_failures = 10).await;
    let alice = app.add_instance("alice", "correct horse");
    let guesser = browser_from(&alice, 7);
    let attempts = (0..200).map(|i| {
        let (guesser, alice) = (guesser.clone(), &alice);
        async move { login(&guesser, alice, &format!("guess {i}")).await.status() }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    let verified = checks(&app, &alice);
    assert!(verified <= 10, "{verified} passphrases verified for a budget of 10");
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count() as u64, verified);
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count() as u64,
        200 - verified,
        "{statuses:?}"
    );
    // The address stays limited, even with the right passphrase; the owner elsewhere is not.
    assert_eq!(login(&guesser, &alice, "correct horse").await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(checks(&app, &alice), verified, "a limited attempt verifies nothing");
    let owner = browser_from(&alice, 8);
    assert_eq!(login(&owner, &alice, "correct horse").await.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn guessing_from_many_addresses_is_spaced_out_and_the_owner_still_logs_in() {
    let spacing = Duration::from_millis(100);
    let app = spawn_app_with(|c| {
        c.login_max_failures = 5;
        c.login_slowdown_ms = spacing.as_millis() as u64;
        c.login_max_wait_secs = 2;
    })
    .await;
    let alice = app.add_instance("alice", "correct horse");
    let started = Instant::now();
    let attempts = (0..10u8).flat_map(|a| {
        let guesser = browser_from(&alice, 20 + a);
        let alice = &alice;
        (0..10).map(move |i| {
            let guesser = guesser.clone();
            async move { login(&guesser, alice, &format!("guess {a} {i}")).await }
        })
    });
    let answers = futures_util::future::join_all(attempts).await;
    let elapsed = started.elapsed();
    let verified = checks(&app, &alice);
    assert!(verified <= 50, "{verified} verified: each address has a budget of 5");
    // Past the instance's 5 free failures, verifications came at most one per spacing.
    assert!(elapsed >= spacing * (verified.saturating_sub(5 + 1) as u32), "{verified} verified in {elapsed:?}");
    let retry_after: Vec<u64> = answers
        .iter()
        .filter_map(|r| r.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()))
        .collect();
    assert!(!retry_after.is_empty(), "attempts past the longest wait are told when to come back");
    assert!(retry_after.iter().all(|s| (1..=60).contains(s)), "{retry_after:?}");
    // The owner, on an address of their own that never guessed, logs in: no 300 s wall.
    let owner = browser_from(&alice, 99);
    let resp = login(&owner, &alice, "correct horse").await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(logged_in(&owner, &alice).await);
}

#[tokio::test]
async fn a_browser_that_logged_in_before_is_not_slowed_by_other_peoples_guesses() {
    let app = spawn_app_with(|c| {
        c.login_max_failures = 3;
        c.login_slowdown_ms = 600_000;
        c.login_max_wait_secs = 1;
    })
    .await;
    let alice = app.add_instance("alice", "correct horse");
    let owner = browser_from(&alice, 30);
    assert_eq!(login(&owner, &alice, "correct horse").await.status(), StatusCode::SEE_OTHER);
    // Guessers from six addresses: 3 free failures, then one verification per 10 minutes.
    let attempts = (0..6u8).map(|a| {
        let guesser = browser_from(&alice, 40 + a);
        let alice = &alice;
        async move { login(&guesser, alice, "guess").await.status() }
    });
    let guesses = futures_util::future::join_all(attempts).await;
    assert_eq!(checks(&app, &alice), 1 + 4, "3 free guesses, then one turn: {guesses:?}");
    let stranger = browser_from(&alice, 50);
    let refused = login(&stranger, &alice, "correct horse").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "a new browser waits its turn");
    assert!(refused.headers().contains_key("retry-after"));
    let again = login(&owner, &alice, "correct horse").await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER, "the owner's usual browser goes straight in");
}

#[tokio::test]
async fn every_login_is_its_own_session_ended_by_logout_or_a_passphrase_change() {
    let app = spawn_app_with(|_| {}).await;
    let alice = app.add_instance("alice", "correct horse");
    let (laptop, phone) = (browser_from(&alice, 60), browser_from(&alice, 61));
    let (a, b) = tokio::join!(login(&laptop, &alice, "correct horse"), login(&phone, &alice, "correct horse"));
    let cookie = |r: &reqwest::Response| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with("hearth_session="))
            .map(str::to_owned)
            .expect("session cookie")
    };
    let (ca, cb) = (cookie(&a), cookie(&b));
    assert_ne!(ca, cb, "two logins in the same second get different sessions");
    assert!(logged_in(&laptop, &alice).await && logged_in(&phone, &alice).await);
    let out = laptop.post(alice.url("/auth/logout")).send().await.unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert!(!logged_in(&laptop, &alice).await, "logging out ends that session");
    assert!(logged_in(&phone, &alice).await, "and only that one");
    // Replaying the ended session's cookie does not bring it back.
    let session_value = ca.split(';').next().unwrap().to_owned();
    let replay = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(alice.domain.split(':').next().unwrap(), SocketAddr::from(([127, 0, 0, 1], alice.port)))
        .no_proxy()
        .build()
        .unwrap();
    let resp = replay.get(alice.url(OWNER_PAGE)).header("cookie", session_value).send().await.unwrap();
    assert!(resp.headers()["location"].to_str().unwrap().starts_with("/auth/login"));
    // The CLI changes the passphrase (on the data dir of the running server): every session ends.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["instances", "passphrase", &alice.domain, "--passphrase", "battery staple"])
        .env("HEARTH_DATA_DIR", app.dir.path())
        .env("HEARTH_STORE", "sqlite")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!logged_in(&phone, &alice).await, "a passphrase change ends every session");
    assert_eq!(login(&phone, &alice, "battery staple").await.status(), StatusCode::SEE_OTHER);
    assert!(logged_in(&phone, &alice).await);
}
