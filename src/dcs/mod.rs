//! Watches Patroni's leader and failover keys in etcd, through etcd's v3 JSON gateway as Patroni's
//! `etcd3` backend does, to re-check at once instead of waiting for the next poll, and reads the
//! leader key's lease with it. It only ever triggers checks or holds new clients: the REST check
//! still confirms `role` and `state` before anything is routed. The proxy works without etcd, and
//! goes on routing from the REST checks alone while etcd is unreachable (so a primary that
//! Patroni's failsafe mode keeps running stays routed: docs/health-checking.md).
//!
//! Layout: [`parse`] and [`answers`] read the gateway's bytes (sans-IO, bounded), [`follow`]
//! decides what they mean (sans-IO), [`client`] reaches etcd (TLS, authentication), [`status`] is
//! what the stats side sees, and this module moves the bytes.
//!
//! **What is read.** The keys from `{prefix}failover` to `{prefix}leader` (with `failsafe`,
//! `history` and `initialize` between them, nothing else): a range read, then a watch from the
//! next revision. Not the whole prefix: member and status keys change every Patroni loop and would
//! only be read to be thrown away. Every read is bounded ([`parse::MAX_RANGE`],
//! [`parse::MAX_WATCH_LINE`]): a range answer is read chunk by chunk and given up past its cap,
//! the watch stream is split into lines by a decoder that holds at most one unfinished line and
//! never searches a byte twice. After every range read that finds a leader, the leader key's
//! lease is read (`/v3/lease/timetolive`) and sent to the state owner as [`Signal::Lease`]:
//! Patroni writes the leader key once and then only renews its lease, which makes no watch event,
//! so this read is the only way to know the lease is being renewed.
//!
//! **Noticing a silent watch.** A watch stream that stops delivering (a frozen or partitioned
//! member, a stuck TCP connection) looks exactly like a quiet cluster, and a quiet cluster is the
//! usual case. An idle-read timeout alone would therefore tear healthy watches down, unless
//! etcd could be made to speak regularly, and it cannot be made to through the gateway:
//! `progress_notify` (asked for, and counted as a sign of life) comes every 10 minutes by default
//! (`--experimental-watch-progress-notify-interval`, a server setting), and a `progress_request`
//! would have to be a second message in the request body of the same HTTP/1.1 exchange, which the
//! gateway does not dependably read once it has answered (etcd issue 8237). So the watcher
//! re-reads the keys (and the lease) on the same endpoint every `etcd.resync` (default
//! [`RESYNC`], 5 s), on every watch (re)start, and at once after a leader change:
//! - no answer within [`REQUEST_TIMEOUT`] (or any error): the endpoint is dead; the watch is
//!   given up and the next endpoint tried;
//! - the answer shows a change the watch had not shown, and the next resync finds it still not
//!   shown: the watch is not delivering although the endpoint answers; it is given up too;
//! - the answer is applied (older than what the watch showed: ignored), so a missed event is
//!   corrected within one period even before that.
//!
//! A silent endpoint is thus noticed within `resync + REQUEST_TIMEOUT` (8 s by default), a deaf
//! watch within two periods, for one small request per period. The watch also asks etcd to cancel
//! it when its member loses the cluster leader (`Grpc-Metadata-hasleader`, etcd issue 10819),
//! which a minority member otherwise never does.
//!
//! **Endpoints and retries.** The endpoints are tried in turn, starting with the first; the one
//! that works is kept until it fails (it is logged, shown in `/stats.json` and as
//! `patroni_proxy_etcd_endpoint_in_use`). A failure moves to the next endpoint, except two that
//! are not the endpoint's fault and are retried on it: a compacted revision (etcd cancels a watch
//! whose start revision it compacted away: the keys are read again and the watch restarted from
//! the current revision) and a refused token (authentication again). Every retry waits a backoff
//! that doubles up to [`MAX_BACKOFF`] and starts again only once a watch has run that long, so
//! a watch that etcd ends or cancels at once is never retried in a tight loop. Failures are
//! logged and counted by reason (`patroni_proxy_etcd_watch_failures_total`).
//!
//! **Authentication and TLS.** With `username`/`password`, a token from `/v3/auth/authenticate`
//! goes in the `Authorization` header of every request; etcd's "invalid auth token" (tokens
//! expire) drops it and the same endpoint is tried again with a new one. Any other failure drops
//! it too (the next attempt authenticates first), since a stale token can make etcd stall rather
//! than refuse.
//! `https://` endpoints trust only `ca_file` and present `cert_file` when set.

pub mod answers;
pub mod client;
pub mod follow;
pub mod parse;
pub mod status;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::json;
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

pub use answers::{LeaderLease, Lease};
pub use follow::{Follower, Signal};
pub use parse::{
    is_immediate, parse_range, Change, DcsError, Keys, WatchDecoder, FAILURE_REASONS, MAX_RANGE,
    MAX_WATCH_LINE,
};
pub use status::{Status, StatusView};

use crate::config::{Etcd, EtcdEndpoint as Endpoint};
use answers::{parse_lease, MAX_SMALL_ANSWER};
use client::{http, read_capped, Client};

/// Where the watch sends what it sees, and what it tells the stats side: the state owner's input
/// and the stats side's status, behind narrow handles (this module knows neither).
pub struct Sink {
    pub signal: Box<dyn Fn(Signal) + Send + Sync>,
    pub status: Arc<Status>,
}

/// The default period of the re-reads (`etcd.resync`; see the module doc).
pub const RESYNC: Duration = crate::config::DEFAULT_ETCD_RESYNC;
/// The longest a range read, a lease read, an authentication or the watch's answer head may
/// take. etcd answers a linearizable read of a few keys in milliseconds; seconds mean the member
/// is stuck or without a leader.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Between two attempts at most: endpoints rotate, so a dead one costs at most this much. A watch
/// must also have run this long for the backoff to start again from its minimum: one that etcd
/// ends at once, again and again, is retried ever more slowly, never in a tight loop.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs until `stop` is cancelled.
pub async fn watch(cfg: Etcd, sink: Sink, stop: CancellationToken) {
    let watched = Watched::new(&cfg.prefix());
    let client = match Client::new(&cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "etcd watch disabled");
            sink.status.failed(format!("watch disabled: {e}"));
            stop.cancelled().await;
            return;
        }
    };
    let n = cfg.endpoints.len();
    if n == 0 {
        // `check` refuses an empty list; nothing to watch then.
        tracing::error!("etcd watch disabled: no endpoint");
        stop.cancelled().await;
        return;
    }
    let mut follower = Follower::default();
    let mut backoff = MIN_BACKOFF;
    let mut index = 0usize;
    loop {
        let here = &cfg.endpoints[index];
        sink.status.trying(index);
        let mut established = None;
        let at = Attempt {
            client: &client,
            endpoint: here,
            watched: &watched,
            sink: &sink,
            resync: cfg.resync,
        };
        let e = tokio::select! {
            _ = stop.cancelled() => return,
            e = at.follow(&mut follower, &mut established) => e,
        };
        if established.is_some_and(|t: Instant| t.elapsed() >= MAX_BACKOFF) {
            backoff = MIN_BACKOFF;
        }
        sink.status.count(e.reason());
        sink.status.failed(e.to_string());
        // A new attempt authenticates again: not only after etcd refused the token, but after
        // any failure, since a token can also make etcd stall rather than refuse (a simple
        // token names a raft index, and etcd waits for that index: an etcd restored from an
        // older snapshot would hang every request) and a new token costs one request.
        if !matches!(e, DcsError::Compacted(_)) {
            client.forget_token();
        }
        // The same endpoint again when it is not to blame (see `DcsError::stays`).
        let next = if e.stays() { index } else { (index + 1) % n };
        let retry = &cfg.endpoints[next];
        tracing::warn!(etcd = %here, error = %e, reason = e.reason(), next = %retry,
            retry_in_ms = backoff.as_millis() as u64,
            "etcd watch given up; trying again (checks go on at their own pace)");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
        index = next;
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
    client: &'a Client,
    endpoint: &'a Endpoint,
    watched: &'a Watched,
    sink: &'a Sink,
    resync: Duration,
}

impl Attempt<'_> {
    async fn follow(&self, follower: &mut Follower, established: &mut Option<Instant>) -> DcsError {
        match self.run(follower, established).await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn run(
        &self,
        follower: &mut Follower,
        established: &mut Option<Instant>,
    ) -> Result<Infallible, DcsError> {
        let keys = self.range().await?;
        self.signal(follower.connected(&keys));
        self.lease(&keys).await?;
        let mut resp = self.open_watch(keys.revision).await?;
        tracing::info!(etcd = %self.endpoint, prefix = self.watched.prefix, revision = keys.revision,
            "watching Patroni's keys in etcd");
        *established = Some(Instant::now());
        self.sink.status.watching(true);
        let mut decoder = WatchDecoder::new(&self.watched.prefix);
        let mut resync = tokio::time::interval_at(Instant::now() + self.resync, self.resync);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                chunk = resp.chunk() => {
                    let chunk = chunk.map_err(|e| http("watch stream", e))?.ok_or(DcsError::Closed)?;
                    for change in decoder.feed(&chunk)? {
                        let out = follower.change(change);
                        // A new leader's lease is read at once: the re-read comes now.
                        if out.iter().any(|s| matches!(s, Signal::Leader(Some(_)))) {
                            resync.reset_immediately();
                        }
                        self.signal(out);
                    }
                }
                _ = resync.tick() => {
                    // The stream waits meanwhile (its bytes stay in the socket), so a read and
                    // the events around it are applied in the order they were received.
                    let keys = self.range().await?;
                    self.signal(follower.resync(&keys)?);
                    self.lease(&keys).await?;
                }
            }
        }
    }

    /// Reads the keys, at most [`MAX_RANGE`] bytes of answer within [`REQUEST_TIMEOUT`].
    async fn range(&self) -> Result<Keys, DcsError> {
        const WHAT: &str = "range request";
        let read = async {
            let body = json!({ "key": self.watched.key, "range_end": self.watched.range_end });
            let resp = self
                .client
                .post(self.endpoint, "/v3/kv/range", &body, &[], WHAT)
                .await?;
            let body = read_capped(resp, MAX_RANGE, "range answer").await?;
            parse_range(&body, &self.watched.prefix)
        };
        timeout(REQUEST_TIMEOUT, read)
            .await
            .map_err(|_| DcsError::Timeout {
                what: WHAT,
                after: REQUEST_TIMEOUT,
            })?
    }

    /// Reads the leader key's lease (`/v3/lease/timetolive`) and tells the owner and the stats.
    async fn lease(&self, keys: &Keys) -> Result<(), DcsError> {
        const WHAT: &str = "lease request";
        let Some(leader) = &keys.leader else {
            self.sink.status.lease(None);
            return Ok(());
        };
        let lease = match keys.leader_lease {
            None => Lease::Unleased,
            Some(id) => {
                let read = async {
                    // etcd's int64 as the gateway writes it: a decimal string.
                    let body = json!({ "ID": id.to_string() });
                    let resp = self
                        .client
                        .post(self.endpoint, "/v3/lease/timetolive", &body, &[], WHAT)
                        .await?;
                    let body = read_capped(resp, MAX_SMALL_ANSWER, "lease answer").await?;
                    parse_lease(&body, id)
                };
                timeout(REQUEST_TIMEOUT, read)
                    .await
                    .map_err(|_| DcsError::Timeout {
                        what: WHAT,
                        after: REQUEST_TIMEOUT,
                    })??
            }
        };
        let seen = LeaderLease {
            leader: leader.clone(),
            lease,
        };
        self.sink.status.lease(Some(seen.clone()));
        (self.sink.signal)(Signal::Lease(seen));
        Ok(())
    }

    /// Starts the watch after `revision`; returns once etcd answered with the stream's head.
    async fn open_watch(&self, revision: u64) -> Result<reqwest::Response, DcsError> {
        let create = json!({ "create_request": {
            "key": self.watched.key,
            "range_end": self.watched.range_end,
            "start_revision": revision.saturating_add(1).to_string(),
            "progress_notify": true,
        }});
        // gRPC metadata through the gateway: cancel the watch if this member loses the leader.
        let open = self.client.post(
            self.endpoint,
            "/v3/watch",
            &create,
            &[("Grpc-Metadata-hasleader", "true")],
            "watch request",
        );
        timeout(REQUEST_TIMEOUT, open)
            .await
            .map_err(|_| DcsError::Timeout {
                what: "watch request",
                after: REQUEST_TIMEOUT,
            })?
    }

    fn signal(&self, signals: Vec<Signal>) {
        for s in signals {
            (self.sink.signal)(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watched_range_holds_both_keys_and_no_member_key() {
        let cfg: Etcd =
            toml::from_str("endpoints = []\nnamespace = \"/db/\"\nscope = \"postgres\"").unwrap();
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
