//! Watches Patroni's leader and failover keys in etcd, through etcd's v3 JSON gateway as Patroni's
//! `etcd3` backend does, to re-check at once instead of waiting for the next poll. It only ever
//! triggers checks or holds new clients: the REST check still confirms `role` and `state` before
//! anything is routed. The proxy works without etcd.
//!
//! Layout: [`parse`] reads the gateway's bytes (sans-IO, bounded), [`follow`] decides what they
//! mean (sans-IO), and this module moves the bytes.
//!
//! **What is read.** The keys from `{prefix}failover` to `{prefix}leader` (with `failsafe`,
//! `history` and `initialize` between them, nothing else): a range read, then a watch from the
//! next revision. Not the whole prefix: member and status keys change every Patroni loop and would
//! only be read to be thrown away. Every read is bounded ([`parse::MAX_RANGE`],
//! [`parse::MAX_WATCH_LINE`]): a range answer is read chunk by chunk and given up past its cap,
//! the watch stream is split into lines by a decoder that holds at most one unfinished line and
//! never searches a byte twice.
//!
//! **Noticing a silent watch.** A watch stream that stops delivering (a frozen or partitioned
//! member, a stuck TCP connection) looks exactly like a quiet cluster, and a quiet cluster is the
//! usual case: Patroni writes the leader key once and then only renews its lease, which produces
//! no watch event. An idle-read timeout alone would therefore tear healthy watches down, unless
//! etcd could be made to speak regularly, and it cannot be made to through the gateway:
//! `progress_notify` (asked for, and counted as a sign of life) comes every 10 minutes by default
//! (`--experimental-watch-progress-notify-interval`, a server setting), and a `progress_request`
//! would have to be a second message in the request body of the same HTTP/1.1 exchange, which the
//! gateway does not dependably read once it has answered (etcd issue 8237). So the watcher
//! re-reads the keys on the same endpoint every [`RESYNC`] (a small range request):
//! - no answer within [`REQUEST_TIMEOUT`] (or any error): the endpoint is dead; the watch is
//!   given up and the next endpoint tried;
//! - the answer shows a change the watch had not shown, and the next resync finds it still not
//!   shown: the watch is not delivering although the endpoint answers; it is given up too;
//! - the answer is applied (older than what the watch showed: ignored), so a missed event is
//!   corrected within one period even before that.
//!
//! A silent endpoint is thus noticed within `RESYNC + REQUEST_TIMEOUT` (8 s), a deaf watch
//! within two periods, for one small request per period. The watch also asks etcd to cancel it
//! when its member loses the cluster leader (`Grpc-Metadata-hasleader`, etcd issue 10819), which
//! a minority member otherwise never does.
//!
//! Every failure moves to the next endpoint, after a backoff that doubles up to [`MAX_BACKOFF`]
//! and starts again once a watch is established; it is logged and counted by reason
//! (`patroni_proxy_etcd_watch_failures_total`).

pub mod follow;
pub mod parse;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::json;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub use follow::{Follower, Signal};
pub use parse::{
    is_immediate, parse_range, Change, DcsError, Keys, WatchDecoder, FAILURE_REASONS, MAX_RANGE,
    MAX_WATCH_LINE,
};

use crate::config::Etcd;

/// Where the watch sends what it sees, and counts its failures: the state owner's input and the
/// stats side's counters, behind a narrow handle (this module knows neither).
pub struct Sink {
    pub signal: Box<dyn Fn(Signal) + Send + Sync>,
    pub failures: Arc<Failures>,
}

/// Watches given up, by reason (in the order of [`FAILURE_REASONS`]); read by the metrics.
#[derive(Debug, Default)]
pub struct Failures([AtomicU64; FAILURE_REASONS.len()]);

impl Failures {
    fn count(&self, reason: &str) {
        if let Some(c) = FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.0.get(i))
        {
            c.fetch_add(1, Relaxed);
        }
    }

    /// `(reason, count)` for every reason.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FAILURE_REASONS
            .iter()
            .zip(&self.0)
            .map(|(r, c)| (*r, c.load(Relaxed)))
    }
}

/// How often the keys are re-read on the watched endpoint (see the module doc).
pub const RESYNC: Duration = Duration::from_secs(5);
/// The longest a range read (or the watch's answer head) may take. etcd answers a linearizable
/// read of a few keys in milliseconds; seconds mean the member is stuck or without a leader.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Between two attempts at most: endpoints rotate, so a dead one costs at most this much.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `stop` is cancelled.
pub async fn watch(cfg: Etcd, sink: Sink, stop: CancellationToken) {
    let watched = Watched::new(&cfg.prefix());
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "etcd watch disabled: cannot build an HTTP client");
            stop.cancelled().await;
            return;
        }
    };
    let endpoint = |i: usize| {
        cfg.endpoints
            .get(i.checked_rem(cfg.endpoints.len())?)
            .copied()
    };
    let mut follower = Follower::default();
    let mut backoff = MIN_BACKOFF;
    let mut attempt = 0usize;
    loop {
        let Some(here) = endpoint(attempt) else {
            // `check` refuses an empty list; nothing to watch then.
            tracing::error!("etcd watch disabled: no endpoint");
            stop.cancelled().await;
            return;
        };
        let mut established = false;
        let at = Attempt {
            client: &client,
            endpoint: here,
            watched: &watched,
            sink: &sink,
        };
        let e = tokio::select! {
            _ = stop.cancelled() => return,
            e = at.follow(&mut follower, &mut established) => e,
        };
        if established {
            backoff = MIN_BACKOFF;
        }
        sink.failures.count(e.reason());
        let next = endpoint(attempt.wrapping_add(1)).unwrap_or(here);
        tracing::warn!(etcd = %here, error = %e, reason = e.reason(), next = %next,
            retry_in_ms = backoff.as_millis() as u64,
            "etcd watch given up; trying the next endpoint (checks go on at their own pace)");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
        attempt = attempt.wrapping_add(1);
    }
}

/// The watched key range and its request bodies.
struct Watched {
    prefix: String,
    key: String,
    range_end: String,
}

impl Watched {
    fn new(prefix: &str) -> Self {
        let (key, range_end) = key_range(prefix);
        Self {
            prefix: prefix.to_string(),
            key: B64.encode(key),
            range_end: B64.encode(range_end),
        }
    }
}

/// `[{prefix}failover, {prefix}leader\0)`: etcd's range end is exclusive, and `failover` sorts
/// before `leader` (keys are compared as bytes).
fn key_range(prefix: &str) -> (String, String) {
    (format!("{prefix}failover"), format!("{prefix}leader\0"))
}

/// One endpoint's read-then-watch, until it fails.
struct Attempt<'a> {
    client: &'a reqwest::Client,
    endpoint: SocketAddr,
    watched: &'a Watched,
    sink: &'a Sink,
}

impl Attempt<'_> {
    async fn follow(&self, follower: &mut Follower, established: &mut bool) -> DcsError {
        match self.run(follower, established).await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn run(
        &self,
        follower: &mut Follower,
        established: &mut bool,
    ) -> Result<Infallible, DcsError> {
        let keys = self.range().await?;
        self.signal(follower.connected(&keys));
        let mut resp = self.open_watch(keys.revision).await?;
        tracing::info!(etcd = %self.endpoint, prefix = self.watched.prefix, revision = keys.revision,
            "watching Patroni's keys in etcd");
        *established = true;
        let mut decoder = WatchDecoder::new(&self.watched.prefix);
        let mut resync = tokio::time::interval_at(Instant::now() + RESYNC, RESYNC);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                chunk = resp.chunk() => {
                    let chunk = chunk.map_err(|e| http("watch stream", e))?.ok_or(DcsError::Closed)?;
                    for change in decoder.feed(&chunk)? {
                        self.signal(follower.change(change));
                    }
                }
                _ = resync.tick() => {
                    // The stream waits meanwhile (its bytes stay in the socket), so a read and
                    // the events around it are applied in the order they were received.
                    let keys = self.range().await?;
                    self.signal(follower.resync(&keys)?);
                }
            }
        }
    }

    /// Reads the keys, at most [`MAX_RANGE`] bytes of answer within [`REQUEST_TIMEOUT`].
    async fn range(&self) -> Result<Keys, DcsError> {
        let read = async {
            let mut resp = self
                .client
                .post(format!("http://{}/v3/kv/range", self.endpoint))
                .json(&json!({ "key": self.watched.key, "range_end": self.watched.range_end }))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| http("range request", e))?;
            if resp.content_length().unwrap_or(0) > MAX_RANGE as u64 {
                return Err(DcsError::RangeTooLarge(MAX_RANGE));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| http("range answer", e))? {
                if body.len().saturating_add(chunk.len()) > MAX_RANGE {
                    return Err(DcsError::RangeTooLarge(MAX_RANGE));
                }
                body.extend_from_slice(&chunk);
            }
            parse_range(&body, &self.watched.prefix)
        };
        timeout(REQUEST_TIMEOUT, read)
            .await
            .map_err(|_| DcsError::Timeout {
                what: "range request",
                after: REQUEST_TIMEOUT,
            })?
    }

    /// Starts the watch after `revision`; returns once etcd answered with the stream's head.
    async fn open_watch(&self, revision: u64) -> Result<reqwest::Response, DcsError> {
        let create = json!({ "create_request": {
            "key": self.watched.key,
            "range_end": self.watched.range_end,
            "start_revision": revision.saturating_add(1).to_string(),
            "progress_notify": true,
        }});
        let open = self
            .client
            .post(format!("http://{}/v3/watch", self.endpoint))
            // gRPC metadata through the gateway: cancel the watch if this member loses the leader.
            .header("Grpc-Metadata-hasleader", "true")
            .json(&create)
            .send();
        timeout(REQUEST_TIMEOUT, open)
            .await
            .map_err(|_| DcsError::Timeout {
                what: "watch request",
                after: REQUEST_TIMEOUT,
            })?
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| http("watch request", e))
    }

    fn signal(&self, signals: Vec<Signal>) {
        for s in signals {
            (self.sink.signal)(s);
        }
    }
}

fn http(what: &'static str, e: reqwest::Error) -> DcsError {
    DcsError::Http {
        what,
        error: parse::clip(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watched_range_holds_both_keys_and_no_member_key() {
        let cfg = Etcd {
            endpoints: vec![],
            namespace: "/db/".into(),
            scope: "postgres".into(),
        };
        assert_eq!(cfg.prefix(), "/db/postgres/");
        let (from, to) = key_range(&cfg.prefix());
        let inside = |k: &str| from.as_str() <= k && k < to.as_str();
        for k in ["failover", "failsafe", "history", "initialize", "leader"] {
            assert!(inside(&format!("/db/postgres/{k}")), "{k}");
        }
        for k in [
            "config",
            "members/postgresql0",
            "status",
            "sync",
            "0/leader",
        ] {
            assert!(!inside(&format!("/db/postgres/{k}")), "{k}");
        }
        assert!(!inside("/db/postgres2/leader"));
    }
}
