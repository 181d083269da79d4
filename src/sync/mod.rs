//! Background work between instances, executing what the layers below decide: the replication
//! workers (`manager`, running `replication` per link on the schedule of
//! `hearth_replicator::schedule`) and the delivery of the sharing layer's outbox (`outbox`).

pub mod content;
pub mod manager;
pub mod outbox;
pub mod replication;

use hearth_replicator::schedule::Backoff;

use crate::config::Config;

/// The retry schedule of links and outbox entries (`replication.retry_base_ms`, `retry_max_ms`):
/// see `hearth_replicator::schedule`.
pub fn backoff(config: &Config) -> Backoff {
    Backoff { base_ms: config.replication.retry_base_ms, max_ms: config.replication.retry_max_ms }
}
