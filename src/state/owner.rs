//! The state owner: the one task that changes the snapshot. It takes check reports from the
//! checkers and inputs from sessions and the etcd watch, one at a time, asks the pure [`core`]
//! what follows, and carries the effects out in the order given (published first, then sessions
//! shut down). Sessions may also ask for a node to be re-checked at once; that is rate-limited
//! here and changes nothing about routing.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::core::{self, Decision, Effect, Io, Level, Topic};
use super::{Input, Observer, Shared, Snapshot};
use crate::health::checker::{self, Link, Report};
use crate::health::resolve;
use crate::health::CheckSpec;
use arc_swap::ArcSwap;

/// The owner and its private ends of the channels.
pub struct Owner {
    shared: Arc<Shared>,
    publish: watch::Sender<Arc<Snapshot>>,
    inputs: mpsc::UnboundedReceiver<Input>,
    reports: mpsc::UnboundedReceiver<Report>,
    reporter: mpsc::UnboundedSender<Report>,
    /// One per node: cuts the wait before its next check short (it never starts a second check).
    wake: Vec<Arc<Notify>>,
    observer: Arc<dyn Observer>,
    /// When each node's re-check was last hastened by a session.
    hastened: Vec<Option<Instant>>,
    /// The check every checker runs, replaced on a reload.
    spec: Arc<ArcSwap<CheckSpec>>,
    /// The checkers (one per configured node), each with its own stop switch: a reload stops a
    /// removed node's and starts an added one's. A checker that ends by itself ends the owner,
    /// which the supervisor treats as a failure.
    checkers: JoinSet<usize>,
    checker_stops: Vec<Option<CancellationToken>>,
    /// Removed nodes' `shutdown_grace` timers.
    timers: JoinSet<()>,
    /// The owner's own stop (set by [`Owner::run`]): checkers and timers stop with it.
    stop: CancellationToken,
}

impl Owner {
    pub(super) fn new(
        shared: Arc<Shared>,
        publish: watch::Sender<Arc<Snapshot>>,
        inputs: mpsc::UnboundedReceiver<Input>,
        observer: Arc<dyn Observer>,
    ) -> Self {
        let config = shared.config();
        let n = config.servers.len();
        let (reporter, reports) = mpsc::unbounded_channel();
        Self {
            shared,
            publish,
            inputs,
            reports,
            reporter,
            wake: (0..n).map(|_| Arc::new(Notify::new())).collect(),
            observer,
            hastened: vec![None; n],
            spec: Arc::new(ArcSwap::from_pointee(CheckSpec::of(&config))),
            checkers: JoinSet::new(),
            checker_stops: vec![None; n],
            timers: JoinSet::new(),
            stop: CancellationToken::new(),
        }
    }

    /// What the checker of `node` needs: where to report, and its wake-up.
    pub fn link(&self, node: usize) -> Link {
        Link {
            node,
            reports: self.reporter.clone(),
            wake: self.wake[node].clone(),
            spec: self.spec.clone(),
        }
    }

    /// Starts the checkers (HAProxy's staggered first checks), then applies reports and inputs
    /// one at a time until cancelled, or until a checker ends by itself.
    pub async fn run(mut self, stop: CancellationToken) {
        self.stop = stop.clone();
        let snap = self.shared.current();
        let inter = self.shared.config().check.inter;
        let n = snap.nodes.len();
        for i in 0..n {
            if snap.nodes[i].removed.is_none() {
                self.start_checker(i, checker::first_delay(i, n, inter));
            }
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(ended) = self.checkers.join_next() => {
                    let node = ended.as_ref().ok().copied();
                    let stopped = node
                        .and_then(|i| self.checker_stops.get(i).cloned().flatten())
                        .is_none_or(|t| t.is_cancelled());
                    if !stopped || node.is_none() {
                        tracing::error!(?ended, "a health checker ended by itself");
                        return;
                    }
                }
                Some(_) = self.timers.join_next() => {}
                r = self.reports.recv() => match r {
                    Some(r) => self.report(r),
                    None => return,
                },
                i = self.inputs.recv() => match i {
                    Some(i) => self.input(i),
                    None => return,
                },
            }
        }
    }

    /// Runs the checker of `node` from now on, its first check after `first`.
    fn start_checker(&mut self, node: usize, first: std::time::Duration) {
        let Some(n) = self.shared.current().nodes.get(node).cloned() else {
            return;
        };
        let cfg = self.shared.config();
        let target = resolve::Target {
            host: n.server.address.host.clone(),
            port: n.server.address.port(),
            check_ip: n.server.check_addr,
            check_port: cfg.check_port_of(&n.server),
            // A restarted checker (a reload) keeps the address the node's state was checked at.
            resolved: n.resolved.map(|ip| (ip, Instant::now())),
            every: cfg.check.resolve_interval,
            lookup: resolve::system(),
        };
        let stop = self.stop.child_token();
        if let Some(old) = self.checker_stops[node].replace(stop.clone()) {
            old.cancel();
        }
        let link = self.link(node);
        self.checkers.spawn(async move {
            checker::run(target, first, link, stop).await;
            node
        });
    }

    fn report(&mut self, report: Report) {
        match report {
            Report::Check {
                node,
                result,
                resolved,
                reply,
            } => {
                let removed = self
                    .shared
                    .current()
                    .nodes
                    .get(node)
                    .is_none_or(|n| n.removed.is_some());
                if removed {
                    // A check that finished as its node was removed: its checker is stopping.
                    let _ = reply.send(self.shared.config().check.inter);
                    return;
                }
                if let Some(ip) = resolved {
                    // The address first: the check is then applied to the node at that address.
                    self.input(Input::Resolved { node, ip });
                }
                let (step, next) = core::on_check(
                    &self.shared.config(),
                    &self.shared.current(),
                    &self.io(),
                    node,
                    *result,
                    Instant::now(),
                    SystemTime::now(),
                );
                self.carry_out(step);
                // A checker that stopped waiting is shutting down; nothing to do.
                let _ = reply.send(next);
            }
            // The same road as every other input: on_input hands it to `state::sql`.
            Report::Sql { node, result } => self.input(Input::Sql { node, result }),
            Report::Local => {
                self.shared.frontend.local_errors.fetch_add(1, Relaxed);
            }
        }
    }

    fn input(&mut self, input: Input) {
        if let Input::Recheck { node, reason } = &input {
            let now = Instant::now();
            let pace = self.shared.config().check.failover_inter;
            if let Some(last) = self.hastened.get_mut(*node) {
                if recheck_allowed(*last, now, pace) {
                    *last = Some(now);
                    tracing::info!(target: "patroni_proxy::routing",
                        server = &*self.shared.server_name(*node),
                        "{reason}; re-checking it now (routing unchanged)");
                    self.wake[*node].notify_one();
                }
            }
            return;
        }
        if let Input::Reloaded { .. } = &input {
            // The shared config is already the new one: the next check of each node runs it.
            self.spec
                .store(Arc::new(CheckSpec::of(&self.shared.config())));
        }
        let step = core::on_input(
            &self.shared.config(),
            &self.shared.current(),
            &self.io(),
            input,
            Instant::now(),
            SystemTime::now(),
        );
        if let Some(step) = step {
            self.carry_out(step);
        }
    }

    /// The IO layer's counts that messages quote.
    fn io(&self) -> Io {
        let s = &self.shared;
        let backends = s.backends();
        Io {
            sessions: backends
                .iter()
                .map(|b| b.counters.scur.load(Relaxed))
                .collect(),
            queued: backends
                .iter()
                .map(|b| b.counters.qcur.load(Relaxed))
                .collect(),
            holding: s.frontend.holding.load(Relaxed),
            hold_timeouts: s.frontend.hold_timeouts.load(Relaxed),
        }
    }

    fn carry_out(&mut self, step: Decision) {
        let snapshot = Arc::new(step.snapshot);
        for effect in step.effects {
            self.effect(&snapshot, effect);
        }
    }

    /// Carries out one effect; `snapshot` is what [`Effect::Publish`] publishes.
    pub(super) fn effect(&mut self, snapshot: &Arc<Snapshot>, effect: Effect) {
        let s = &self.shared.clone();
        match effect {
            Effect::Observe {
                node,
                result,
                transition,
            } => self.observer.check(node, &result, transition),
            Effect::ObserveSql { node, result } => self.observer.sql(node, &result),
            Effect::Say {
                level,
                topic,
                event,
                at,
                message,
            } => {
                // From the snapshot being carried out: it may name a node added by this decision.
                let server = event
                    .and_then(|(_, n)| n)
                    .and_then(|n| snapshot.nodes.get(n))
                    .map(|n| n.server.name.as_str());
                log(level, topic, server, &message);
                if let Some((kind, _)) = event {
                    s.events.push_at(at, kind, server, message);
                }
            }
            Effect::Publish => {
                self.publish.send_replace(snapshot.clone());
            }
            Effect::Kill(node) => {
                s.backend(node).kill_sessions();
            }
            Effect::AddBackend { node, maxconn } => {
                let added = s.add_backend(maxconn);
                debug_assert_eq!(added, node, "backends and snapshot nodes share indices");
                if let Some(n) = snapshot.nodes.get(node) {
                    self.observer.node_added(node, &n.server.name);
                }
                self.wake.push(Arc::new(Notify::new()));
                self.hastened.push(None);
                self.checker_stops.push(None);
            }
            Effect::SetMaxconn { node, maxconn } => {
                for b in s.backends_of(node) {
                    b.set_maxconn(maxconn);
                }
            }
            Effect::KillSet { set, node } => {
                if let Some(io) = s.set_io.get(set) {
                    io.backend(node).kill_sessions();
                }
            }
            Effect::StartChecker(node) => self.start_checker(node, Duration::ZERO),
            Effect::StopChecker(node) => {
                if let Some(t) = self.checker_stops.get_mut(node).and_then(Option::take) {
                    t.cancel();
                }
            }
            Effect::GraceTimer {
                node,
                removed_at,
                after,
            } => {
                let (shared, stop) = (s.clone(), self.stop.clone());
                self.timers.spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(after) => {
                            shared.send(Input::RemovedGraceOver { node, removed_at });
                        }
                    }
                });
            }
            Effect::Probe(node) => {
                // A TCP connect and close, no startup packet: PostgreSQL accepting connections
                // is all the ride-through asks (bounded like a session's connect).
                let Some(address) = snapshot.nodes.get(node).and_then(|n| n.address()) else {
                    return;
                };
                let config = s.config();
                let limit = config.listen.timeout_connect.min(config.check.inter);
                let (shared, stop) = (s.clone(), self.stop.clone());
                self.timers.spawn(async move {
                    let connect =
                        tokio::time::timeout(limit, tokio::net::TcpStream::connect(address));
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        r = connect => {
                            let accepted = matches!(r, Ok(Ok(_)));
                            shared.send(Input::PgProbe { node, accepted });
                        }
                    }
                });
            }
            Effect::WakeAll { except } => {
                for (i, w) in self.wake.iter().enumerate() {
                    if Some(i) != except {
                        w.notify_one();
                    }
                }
            }
        }
    }
}

fn log(level: Level, topic: Topic, server: Option<&str>, message: &str) {
    let server = server.unwrap_or("");
    // `tracing` wants literal targets.
    match (level, topic) {
        (Level::Info, Topic::Health) => {
            tracing::info!(target: "patroni_proxy::health", server, "{message}")
        }
        (Level::Warn, Topic::Health) => {
            tracing::warn!(target: "patroni_proxy::health", server, "{message}")
        }
        (Level::Error, Topic::Health) => {
            tracing::error!(target: "patroni_proxy::health", server, "{message}")
        }
        (Level::Info, Topic::Routing) => {
            tracing::info!(target: "patroni_proxy::routing", server, "{message}")
        }
        (Level::Warn, Topic::Routing) => {
            tracing::warn!(target: "patroni_proxy::routing", server, "{message}")
        }
        (Level::Error, Topic::Routing) => {
            tracing::error!(target: "patroni_proxy::routing", server, "{message}")
        }
        // An operator's action is never an error: it is what they asked for.
        (Level::Info | Level::Error, Topic::Admin) => {
            tracing::info!(target: "patroni_proxy::admin", server, "{message}")
        }
        (Level::Warn, Topic::Admin) => {
            tracing::warn!(target: "patroni_proxy::admin", server, "{message}")
        }
    }
}

/// Sessions may hasten a node's re-check at most once per `pace`, however many clients see a sign:
/// a flood of clients that provoke one cannot turn into a flood of checks on Patroni's REST API.
pub fn recheck_allowed(last: Option<Instant>, now: Instant, pace: Duration) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= pace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::health::patroni::PatroniInfo;
    use crate::health::{CheckResult, CheckStatus};

    fn two_nodes() -> (Arc<Shared>, Owner) {
        super::super::new(
            Arc::new(
                Config::from_toml(
                    "[[server]]\nname = \"a\"\naddress = \"127.0.0.11:5432\"\n\
                     [[server]]\nname = \"b\"\naddress = \"127.0.0.12:5432\"\n",
                )
                .unwrap(),
            ),
            Arc::new(super::super::Unobserved),
        )
    }

    fn primary(timeline: u64) -> CheckResult {
        CheckResult {
            status: CheckStatus::L7OK,
            code: Some(200),
            duration: Duration::from_millis(1),
            info: None,
            patroni: Some(PatroniInfo {
                role: Some("primary".into()),
                state: Some("running".into()),
                timeline: Some(timeline),
                ..Default::default()
            }),
            finished_at: SystemTime::now(),
        }
    }

    fn decide(owner: &Owner, node: usize, result: CheckResult) -> Decision {
        core::on_check(
            &owner.shared.config(),
            &owner.shared.current(),
            &owner.io(),
            node,
            result,
            Instant::now(),
            SystemTime::now(),
        )
        .0
    }

    #[tokio::test]
    async fn no_session_is_admitted_where_the_kill_cannot_reach_it() {
        // Issue 11 item 3: "a session that read the old snapshot and took its slot after the kill
        // relays to the DOWN node. Make it impossible by construction (publish, then kill ...)".
        // Every interleaving of a session's admission (`ticket_on`: ticket, then snapshot) with
        // the effects of the decision that moves the primary away from node a: the session is
        // either refused or reached by the kill.
        let len = {
            let (_, mut owner) = two_nodes();
            owner.carry_out(decide(&owner, 0, primary(1)));
            decide(&owner, 1, primary(2)).effects.len()
        };
        for split in 0..=len {
            let (shared, mut owner) = two_nodes();
            owner.carry_out(decide(&owner, 0, primary(1)));
            assert_eq!(shared.current().primary, Some(0));
            let step = decide(&owner, 1, primary(2));
            assert!(
                step.effects.contains(&Effect::Kill(0)),
                "old primary's sessions go"
            );
            let snapshot = Arc::new(step.snapshot);
            let mut effects = step.effects.into_iter();
            for e in effects.by_ref().take(split) {
                owner.effect(&snapshot, e);
            }
            let admitted = shared.ticket_on(super::super::Route::PRIMARY, 0);
            for e in effects {
                owner.effect(&snapshot, e);
            }
            if let Some(ticket) = admitted {
                assert!(
                    shared.backend(0).is_killed(ticket),
                    "split {split}: admitted to the old primary and never reached by its kill"
                );
            }
            assert_eq!(shared.current().primary, Some(1));
        }
    }

    #[test]
    fn sessions_hasten_a_recheck_at_most_once_per_failover_inter() {
        // Issue 11 item 2: what a client can provoke may hasten a re-check, never flood Patroni.
        let pace = Duration::from_millis(200);
        let t = Instant::now();
        assert!(recheck_allowed(None, t, pace));
        assert!(!recheck_allowed(
            Some(t),
            t + Duration::from_millis(199),
            pace
        ));
        assert!(recheck_allowed(Some(t), t + pace, pace));
    }
}
