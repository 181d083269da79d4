//! The outbox worker: sends the due entries of every open instance's durable outbox (written
//! by the sharing operations, see `sharing::outbox`), deletes them once delivered, and
//! reschedules failures with exponential backoff and jitter. A transient failure (the peer
//! unreachable, a 5xx, 408, 429) is retried forever; a peer answering 409 (between two
//! states) a few times, then the entry is dropped; a peer that forgot the sharing or cut our
//! credentials (404, 410, 401, 403) needs no more telling. Each drop is logged.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::manager::SyncManager;
use crate::federation::client::FederationError;
use crate::instance::{Instance, Registry};
use crate::sharing::outbox::{self as entries, Entry};
use crate::sharing::{self, Context};
use crate::store::{json, StoreError};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

enum Outcome {
    Delivered,
    /// Sent again later; `expected` when the peer is setting up what the notice is about (503,
    /// see `Sharing::accepting_here`): logged as such rather than as a failure.
    Retry {
        reason: String,
        expected: bool,
    },
    Drop(String),
}

impl Outcome {
    fn retry(reason: impl ToString) -> Outcome {
        Outcome::Retry { reason: reason.to_string(), expected: false }
    }
}

/// How many times a peer answering 503 is retried as expected (logged at INFO) before it is
/// logged as a failure.
const NOT_YET_RETRIES: u32 = 3;

async fn deliver(cx: &Context, inst: &Instance, entry: &Entry) -> Outcome {
    let sid = &entry.sharing_id;
    let sharing = match sharing::load(inst.store.as_ref(), sid).await {
        Ok(Some(s)) => s,
        Ok(None) => return Outcome::Drop("sharing no longer exists".into()),
        Err(e) => return Outcome::retry(e.to_string()),
    };
    let Some(member) = sharing.member(entry.member_index) else {
        return Outcome::Drop("no such member".into());
    };
    let (Some(mut creds), Some(base)) = (member.outbound.clone(), member.instance.clone()) else {
        return Outcome::Drop("no credentials for this member".into());
    };
    let Ok(base) = Url::parse(&base) else {
        return Outcome::Drop("invalid member address".into());
    };
    let Ok(method) = Method::from_bytes(entry.method.as_bytes()) else {
        return Outcome::Drop("invalid method".into());
    };
    let before = creds.clone();
    let result = cx.federation.call_peer(&mut creds, &base, method, &entry.path, entry.body.as_ref()).await;
    if creds != before {
        // The access token was refreshed: keep it for the next calls.
        let idx = entry.member_index.get();
        let _ = sharing::update(inst.store.as_ref(), sid, |s| {
            if let Some(m) = s.members.get_mut(idx) {
                if m.outbound.is_some() {
                    m.outbound = Some(creds.clone());
                }
            }
            Ok(())
        })
        .await;
    }
    match result {
        Ok(_) => Outcome::Delivered,
        // The peer no longer knows this sharing, or already cut our credentials: there is
        // nobody left to tell.
        Err(e @ FederationError::Status { status: 404 | 410 | 401 | 403, .. }) => {
            tracing::info!(sharing = %sid, error = %e, "peer already forgot the sharing");
            Outcome::Delivered
        }
        Err(e @ FederationError::Refresh { .. }) => {
            tracing::info!(sharing = %sid, error = %e, "peer refused our credentials");
            Outcome::Delivered
        }
        Err(e @ FederationError::Status { status: 503, .. }) if entry.attempts < NOT_YET_RETRIES => {
            Outcome::Retry { reason: e.to_string(), expected: true }
        }
        Err(e) if e.is_transient() => Outcome::retry(e.to_string()),
        // A peer between two states may answer 409 for a moment (a recipient still recording
        // its acceptance answers 503, above): retried a few times (with the backoff), then
        // dropped.
        Err(e @ FederationError::Status { status: 409, .. }) if entry.attempts < CONFLICT_RETRIES => {
            Outcome::retry(e.to_string())
        }
        Err(e @ FederationError::Guard(_)) => Outcome::retry(e.to_string()),
        Err(e) => Outcome::Drop(e.to_string()),
    }
}

/// How many times a notice answered 409 is sent again before it is dropped.
const CONFLICT_RETRIES: u32 = 6;

/// Sends every due entry of one instance. Returns the earliest time a remaining entry is due.
pub async fn process(cx: &Context, inst: &Instance) -> Result<Option<u64>, StoreError> {
    let mut next: Option<u64> = None;
    for rec in json::list(inst.store.as_ref(), &entries::doctype()).await? {
        // An entry stored with an invalid sharing id (by an older build) is unreadable too.
        let mut entry = match serde_json::from_value::<Entry>(Value::Object(rec.body.clone())) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::error!(instance = %inst.domain, entry = %rec.id, error = %e, "unreadable outbox entry dropped");
                let _ = json::delete(inst.store.as_ref(), &entries::doctype(), &rec.id, &rec.rev).await;
                continue;
            }
        };
        if entry.next_at_ms > now_ms() {
            next = Some(next.map_or(entry.next_at_ms, |n: u64| n.min(entry.next_at_ms)));
            continue;
        }
        match deliver(cx, inst, &entry).await {
            Outcome::Delivered => {
                // Credentials go first: a crash in between leaves an entry that is dropped for
                // lack of credentials, never credentials kept after the last message.
                if entry.forget_credentials {
                    let idx = entry.member_index.get();
                    let _ = sharing::update(inst.store.as_ref(), &entry.sharing_id, |s| {
                        if let Some(m) = s.members.get_mut(idx) {
                            m.outbound = None;
                        }
                        Ok(())
                    })
                    .await;
                }
                json::delete(inst.store.as_ref(), &entries::doctype(), &rec.id, &rec.rev).await?;
                tracing::info!(instance = %inst.domain, sharing = %entry.sharing_id, path = %entry.path, "notification delivered");
            }
            Outcome::Drop(reason) => {
                tracing::warn!(instance = %inst.domain, sharing = %entry.sharing_id, %reason, "notification dropped");
                json::delete(inst.store.as_ref(), &entries::doctype(), &rec.id, &rec.rev).await?;
            }
            Outcome::Retry { reason, expected } => {
                let delay = super::backoff(&cx.config).delay_ms(entry.attempts, rand::random());
                entry.attempts += 1;
                entry.next_at_ms = now_ms() + delay;
                entry.last_error = Some(reason.clone());
                if expected {
                    tracing::info!(instance = %inst.domain, sharing = %entry.sharing_id, attempts = entry.attempts, %reason, "peer not ready yet; notification will be retried");
                } else {
                    tracing::warn!(instance = %inst.domain, sharing = %entry.sharing_id, attempts = entry.attempts, %reason, "notification will be retried");
                }
                let body = match serde_json::to_value(&entry) {
                    Ok(Value::Object(m)) => m,
                    _ => Map::new(),
                };
                match json::put(inst.store.as_ref(), &entries::doctype(), &rec.id, Some(&rec.rev), body).await {
                    Ok(_) | Err(StoreError::Conflict) => {}
                    Err(e) => return Err(e),
                }
                next = Some(next.map_or(entry.next_at_ms, |n: u64| n.min(entry.next_at_ms)));
            }
        }
    }
    Ok(next)
}

/// The worker: sends due entries of every open instance, sleeping until the next one is due,
/// the sweep interval passes, or a new entry wakes it.
pub async fn run(registry: Arc<Registry>, cx: Arc<Context>, manager: Arc<SyncManager>, cancel: CancellationToken) {
    let sweep = Duration::from_millis(cx.config.replication.sweep_ms.max(10));
    loop {
        let mut wait = sweep;
        for inst in registry.opened() {
            // Stopped with the workers, even in the middle of a delivery: an entry delivered
            // but not yet marked so is sent again later (each notice may be received twice;
            // the member list and the credentials, where only the newest counts, are kept one
            // per member, so an older one never follows a newer one).
            let processed = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                processed = process(&cx, &inst) => processed,
            };
            match processed {
                Ok(Some(due)) => {
                    let until = Duration::from_millis(due.saturating_sub(now_ms()));
                    wait = wait.min(until.max(Duration::from_millis(10)));
                }
                Ok(None) => {}
                Err(e) => tracing::error!(instance = %inst.domain, error = ?e, "outbox processing failed"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = manager.outbox_added() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
