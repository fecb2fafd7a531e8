//! The checker task of one node: at most one check in flight, a new connection per check, the first
//! check staggered by `i * inter / N` (HAProxy's `start_check_task`), and each next check `interval`
//! after the previous one *completes* (`process_chk_conn`), the interval chosen by the state owner
//! from the node's health (`srv_getinter`) and the failover pace. The state owner can cut a wait
//! short (`Link::wake`) to re-check at once; it never starts a second check in parallel. With
//! `[check.sql]`, the SQL check ([`super::sql`]) follows the REST check when due, on the same
//! task (so at most one of either in flight per node), its time taken from the wait that follows.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::check::{self, CheckResult, CheckSpec, CheckStatus};
use super::resolve::Target;

/// What a checker sends to the state owner.
#[derive(Debug)]
pub enum Report {
    /// A finished check; the reply carries the delay before the node's next check.
    Check {
        node: usize,
        result: Box<CheckResult>,
        /// The address the server's host name resolved to for this check (`None` for a server
        /// written with an IP address).
        resolved: Option<IpAddr>,
        reply: oneshot::Sender<Duration>,
    },
    /// A finished SQL check, sent after the REST check it followed.
    Sql {
        node: usize,
        result: Box<super::sql::SqlResult>,
    },
    /// A check that could not run for want of a local resource: counted, never held against the
    /// node.
    Local,
}

/// A checker's handle on the state owner: where its reports go, and the wake-up the owner uses to
/// cut its wait short.
#[derive(Debug, Clone)]
pub struct Link {
    pub node: usize,
    pub reports: mpsc::UnboundedSender<Report>,
    pub wake: Arc<Notify>,
    /// The check to run, read before each one: a reload replaces it (the state owner does).
    pub spec: Arc<ArcSwap<CheckSpec>>,
}

/// Runs checks for `link.node` until `stop` is cancelled or the state owner is gone.
pub async fn run(mut target: Target, first_delay: Duration, link: Link, stop: CancellationToken) {
    let node = link.node;
    let mut delay = first_delay;
    let mut last_sql: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
            _ = link.wake.notified() => {}
        }
        // Read per check: a reload's new request applies from the next check.
        let spec = link.spec.load_full();
        target.every = spec.resolve_interval;
        let address = tokio::select! {
            _ = stop.cancelled() => return,
            a = target.next(spec.connect_timeout) => a,
        };
        let resolved = address.as_ref().ok().and_then(|a| a.server_ip);
        // The SQL check goes to the PostgreSQL this REST check was about.
        let postgres = address.as_ref().ok().map(|a| a.postgres);
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = async {
                match address {
                    Ok(a) => check::run(a.check, &spec).await,
                    Err(why) => unresolved(why),
                }
            } => match r {
                check::Outcome::Finished(r) => r,
                check::Outcome::Local(e) => {
                    // Our own shortage says nothing about the node: no result goes to the state
                    // owner, and the check is tried again after the same delay.
                    let _ = link.reports.send(Report::Local);
                    tracing::error!(target: "patroni_proxy::health", node, error = %e,
                        "health check not run: the proxy is out of a local resource (file descriptors, memory or ports); not counted against the server");
                    continue;
                }
            },
        };
        let claims = matches!(
            super::patroni::Answer::of(&result),
            super::patroni::Answer::Primary { .. }
        );
        let (reply, next) = oneshot::channel();
        if link
            .reports
            .send(Report::Check {
                node,
                result,
                resolved,
                reply,
            })
            .is_err()
        {
            return;
        }
        delay = match next.await {
            Ok(d) => d,
            Err(_) => return,
        };
        let (Some(sql), Some(postgres)) = (&spec.sql, postgres) else {
            continue;
        };
        let now = tokio::time::Instant::now();
        if !super::sql::due(claims, last_sql, now, sql.every) {
            continue;
        }
        last_sql = Some(now);
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = super::sql::run(postgres, sql) => r,
        };
        // The REST check keeps its pace: the SQL check's time comes out of the wait.
        delay = delay.saturating_sub(now.elapsed());
        let report = match result {
            Ok(result) => Report::Sql {
                node,
                result: Box::new(result),
            },
            Err(e) => {
                tracing::error!(target: "patroni_proxy::health", node, error = %e,
                    "SQL check not run: the proxy is out of a local resource; not counted against the server");
                Report::Local
            }
        };
        if link.reports.send(report).is_err() {
            return;
        }
    }
}

/// A check that could not connect for want of an address: HAProxy's connect failure (`L4CON`),
/// counted against the node like a refused connect, with the resolver's reason.
fn unresolved(why: String) -> check::Outcome {
    check::Outcome::Finished(Box::new(CheckResult {
        status: CheckStatus::L4CON,
        code: None,
        duration: Duration::ZERO,
        info: Some(why),
        patroni: None,
        finished_at: SystemTime::now(),
    }))
}

/// HAProxy's start offsets: node `i` of `n` first checks at `i * inter / n`.
pub fn first_delay(i: usize, n: usize, inter: Duration) -> Duration {
    inter.mul_f64(i as f64 / n.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_checks_are_spread_over_inter() {
        // "First checks of N checked servers start at i x inter / N (0, 1 s, 2 s for 3 servers at 3 s)."
        let inter = Duration::from_secs(3);
        let d: Vec<_> = (0..3).map(|i| first_delay(i, 3, inter)).collect();
        assert_eq!(
            d,
            [
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(2)
            ]
        );
    }
}
