//! The backend state: one immutable [`Snapshot`] of every node (health counter, last check, Patroni
//! answer, routed primary), replaced as a whole by the single task that applies check results. The
//! accept path, the stats page and the metrics only read it. Applying a result is where HAProxy's
//! transitions happen: log lines in its wording, `on-marked-down shutdown-sessions`, and closing the
//! sessions of a primary that lost the role.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::config::{Config, OnMarkedDown};
use crate::health::{CheckResult, HealthCounter, Transition};
use crate::patroni::Answer;
use crate::routing::{self, Candidate, Claim};

/// Everything known about one node at one moment.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub counter: HealthCounter,
    /// `None` until the first check finishes (HAProxy's `INI`).
    pub last_check: Option<CheckResult>,
    /// The answer of the last check, definitive or not.
    pub last_answer: Option<Answer>,
    pub claim: Claim,
    /// `chkfail`: failed checks that moved the counter.
    pub chkfail: u64,
    /// `chkdown`: UP to DOWN transitions.
    pub chkdown: u64,
    /// When the operational state (UP/DOWN) last changed, or start-up.
    pub last_change: Instant,
    pub last_change_wall: SystemTime,
    /// Time spent DOWN in finished DOWN periods; add `now - last_change` while DOWN.
    pub downtime: Duration,
    /// Set when Patroni announced a switchover away from this node (the DCS `failover` key): no
    /// new connections go to it, whatever its checks say, until the switchover ends.
    pub leaving_since: Option<Instant>,
}

impl NodeState {
    fn new(rise: u32, fall: u32, now: Instant) -> Self {
        Self {
            counter: HealthCounter::new(rise, fall),
            last_check: None,
            last_answer: None,
            claim: Claim::Unconfirmed,
            chkfail: 0,
            chkdown: 0,
            last_change: now,
            last_change_wall: SystemTime::now(),
            downtime: Duration::ZERO,
            leaving_since: None,
        }
    }

    /// Routable only if not leaving and the counter and claim allow it.
    pub fn candidate(&self) -> Candidate<'_> {
        Candidate {
            up: self.counter.is_up() && self.leaving_since.is_none(),
            claim: &self.claim,
        }
    }

    /// Total downtime including the current DOWN period.
    pub fn downtime_at(&self, now: Instant) -> Duration {
        if self.counter.is_up() {
            self.downtime
        } else {
            self.downtime + now.saturating_duration_since(self.last_change)
        }
    }
}

/// The one published view of all backends.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Increments with every applied check.
    pub seq: u64,
    pub nodes: Vec<NodeState>,
    /// The node new connections go to.
    pub primary: Option<usize>,
    /// How many times the routed primary moved to another node than the last one that had the role,
    /// also through a period without any (a failover usually has one); losing it is not a change.
    pub primary_changes: u64,
    /// The last node that was the routed primary, kept through periods without one.
    pub last_primary: Option<usize>,
    /// When `primary` last changed (to a node or to none).
    pub primary_since: Instant,
    /// Completed periods without a routable primary (the current one is `now - primary_since`).
    pub no_primary_total: Duration,
    /// Every node is checked at `failover_inter`: no primary is routable, or the routed one's last
    /// check did not confirm it.
    pub fast: bool,
}

impl Snapshot {
    pub fn no_primary_total_at(&self, now: Instant) -> Duration {
        match self.primary {
            Some(_) => self.no_primary_total,
            None => self.no_primary_total + now.saturating_duration_since(self.primary_since),
        }
    }
}

/// A line of the dashboard's event timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(serialize_with = "ser_epoch")]
    pub at: SystemTime,
    pub kind: EventKind,
    pub server: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Up,
    Down,
    PrimaryChanged,
    PrimaryLost,
    /// Something outside the checks (a backend's startup reply, the DCS) put the primary in doubt.
    Suspect,
}

fn ser_epoch<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
    )
}

/// The recent events, newest last, bounded.
#[derive(Debug, Default)]
pub struct Events(Mutex<VecDeque<Event>>);

impl Events {
    const KEEP: usize = 200;

    pub fn push(&self, kind: EventKind, server: Option<&str>, message: String) {
        self.push_at(SystemTime::now(), kind, server, message)
    }

    /// An event that happened at `at`, recorded now.
    pub fn push_at(&self, at: SystemTime, kind: EventKind, server: Option<&str>, message: String) {
        let mut q = self.0.lock().expect("events lock");
        if q.len() == Self::KEEP {
            q.pop_front();
        }
        q.push_back(Event {
            at,
            kind,
            server: server.map(str::to_string),
            message,
        });
    }

    pub fn recent(&self) -> Vec<Event> {
        self.0
            .lock()
            .expect("events lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// Shared, read-mostly handles: config, the snapshot channel, IO counters, events.
#[derive(Debug)]
pub struct Shared {
    pub config: Arc<Config>,
    pub snapshot: watch::Sender<Arc<Snapshot>>,
    pub backends: Vec<Backend>,
    pub frontend: crate::backend::Frontend,
    pub events: Events,
    pub started: SystemTime,
    pub started_at: Instant,
    /// The stats side of this instance: its own Prometheus recorder (no global one: tests run many
    /// proxies in one process) and what the dashboard shows about the process.
    pub stats: crate::stats::Stats,
    /// Inputs to the state owner (check results, suspicions, DCS events).
    inputs: mpsc::UnboundedSender<Input>,
    inputs_rx: Mutex<Option<mpsc::UnboundedReceiver<Input>>>,
    /// One per node: cuts the wait before its next check short (it never starts a second check).
    pub wake: Vec<Notify>,
}

impl Shared {
    pub fn new(config: Arc<Config>) -> Arc<Self> {
        let now = Instant::now();
        let nodes = config
            .servers
            .iter()
            .map(|_| NodeState::new(config.check.rise.get(), config.check.fall.get(), now))
            .collect();
        let backends = config
            .servers
            .iter()
            .map(|s| Backend::new(s.maxconn.get()))
            .collect();
        let (snapshot, _) = watch::channel(Arc::new(Snapshot {
            seq: 0,
            nodes,
            primary: None,
            last_primary: None,
            primary_changes: 0,
            primary_since: now,
            no_primary_total: Duration::ZERO,
            // Start-up: find the primary at the fast pace too.
            fast: true,
        }));
        let (inputs, rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            stats: crate::stats::Stats::new(&config),
            wake: config.servers.iter().map(|_| Notify::new()).collect(),
            config,
            snapshot,
            backends,
            frontend: Default::default(),
            events: Events::default(),
            started: SystemTime::now(),
            started_at: now,
            inputs,
            inputs_rx: Mutex::new(Some(rx)),
        })
    }

    /// The current snapshot (cheap: one `Arc` clone).
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub fn server_name(&self, i: usize) -> &str {
        &self.config.servers[i].name
    }

    /// Sends an input to the state owner. Inputs sent after it stopped (shutdown) are dropped.
    pub fn send(&self, input: Input) {
        let _ = self.inputs.send(input);
    }

    /// A session saw evidence that `node` is not (or no longer) a primary it may route to.
    /// `recheck_now` re-checks it at once too (otherwise at the failover pace).
    pub fn suspect(&self, node: usize, reason: String, recheck_now: bool) {
        self.send(Input::Suspect {
            node,
            reason,
            recheck_now,
        });
    }

    /// Cuts every checker's wait short, except `skip`'s.
    fn wake_all_but(&self, skip: Option<usize>) {
        for (i, w) in self.wake.iter().enumerate() {
            if Some(i) != skip {
                w.notify_one();
            }
        }
    }
}

/// What the state owner acts on.
#[derive(Debug)]
pub enum Input {
    /// A finished check; the reply carries the delay before the node's next check.
    Check {
        node: usize,
        result: CheckResult,
        reply: oneshot::Sender<Duration>,
    },
    /// `node` must not get new connections until a check confirms it again.
    Suspect {
        node: usize,
        reason: String,
        recheck_now: bool,
    },
    /// Patroni's leader key changed (new value, or deleted): re-check every node now.
    LeaderChanged { leader: Option<String> },
    /// A switchover/failover was requested (DCS `failover` key): the routed primary is leaving.
    SwitchoverRequested,
    /// The `failover` key is gone: the switchover finished or was cancelled.
    SwitchoverEnded,
}

/// Longest a node stays "leaving" after a switchover request, in case the end is never seen.
const LEAVING_LIMIT: Duration = Duration::from_secs(60);

/// The state owner: applies inputs one at a time until cancelled.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut inputs = shared
        .inputs_rx
        .lock()
        .expect("inputs lock")
        .take()
        .expect("one state owner per Shared");
    loop {
        let input = tokio::select! {
            _ = stop.cancelled() => return,
            r = inputs.recv() => match r { Some(r) => r, None => return },
        };
        match input {
            Input::Check {
                node,
                result,
                reply,
            } => {
                let next = apply(&shared, node, result);
                // A checker that stopped waiting is shutting down; nothing to do.
                let _ = reply.send(next);
            }
            other => apply_event(&shared, other),
        }
    }
}

/// Applies a suspicion or DCS event.
pub fn apply_event(shared: &Shared, input: Input) {
    let now = Instant::now();
    let mut snap = (*shared.current()).clone();
    snap.seq += 1;
    let routed = snap.primary;
    // The suspected node itself is re-checked at the failover pace, not at once: a leader whose
    // PostgreSQL restarts under a held lock answers 200 while refusing clients, and re-checking it
    // on every refusal would spin.
    let mut skip = None;
    let message = match input {
        Input::Check { .. } => unreachable!("checks go through apply()"),
        Input::Suspect {
            node,
            reason,
            recheck_now,
        } => {
            skip = (!recheck_now).then_some(node);
            snap.nodes[node].claim = Claim::Denied {
                reason: reason.clone(),
            };
            format!(
                "Server {}/{} is not routable: {reason}; re-checking every node now.",
                shared.config.listen.name,
                shared.server_name(node)
            )
        }
        Input::LeaderChanged { leader } => {
            // Every "primary" answer predates the change: the REST check must confirm the new
            // state before anything is routed again.
            for n in &mut snap.nodes {
                if matches!(n.claim, Claim::Primary { .. }) {
                    n.claim = Claim::Unconfirmed;
                }
            }
            format!(
                "Leader key changed to {}; re-checking every node now.",
                leader.as_deref().unwrap_or("(none)")
            )
        }
        Input::SwitchoverRequested => {
            let Some(p) = routed else { return };
            snap.nodes[p].leaving_since = Some(now);
            format!(
                "Switchover requested: {} is leaving; new clients are held for the next primary.",
                shared.server_name(p)
            )
        }
        Input::SwitchoverEnded => {
            if snap.nodes.iter().all(|n| n.leaving_since.is_none()) {
                return;
            }
            for n in &mut snap.nodes {
                if n.leaving_since.take().is_some() {
                    // Whatever it answered before the switchover, ask again.
                    n.claim = Claim::Unconfirmed;
                }
            }
            "Switchover request cleared.".to_string()
        }
    };
    tracing::warn!(target: "patroni_proxy::routing", "{message}");
    shared.events.push(EventKind::Suspect, None, message);
    reroute(shared, &mut snap, now, "primary in doubt");
    snap.fast = true;
    shared.snapshot.send_replace(Arc::new(snap));
    shared.wake_all_but(skip);
}

/// Applies one check result: counter step, transitions and their side effects, routing decision,
/// new snapshot. Returns the interval before the node's next check.
pub fn apply(shared: &Shared, node: usize, result: CheckResult) -> Duration {
    let cfg = &shared.config;
    let px = &cfg.listen.name;
    let name = shared.server_name(node);
    let now = Instant::now();
    let mut snap = (*shared.current()).clone();
    snap.seq += 1;

    let answer = Answer::of(&result);
    let n = &mut snap.nodes[node];
    match &answer {
        Answer::Primary { timeline } => {
            n.claim = Claim::Primary {
                timeline: *timeline,
                seq: snap.seq,
            }
        }
        Answer::NotPrimary { reason } => {
            n.claim = Claim::Denied {
                reason: reason.clone(),
            }
        }
        Answer::Unknown => {}
    }
    if n.leaving_since
        .is_some_and(|t| now.saturating_duration_since(t) > LEAVING_LIMIT)
    {
        n.leaving_since = None;
    }
    let step = n.counter.observe(result.status.passed());
    if step.counted_failure {
        n.chkfail += 1;
    }
    let reason = describe(&result);
    shared
        .stats
        .metrics
        .observe_check(node, &result, step.transition);
    n.last_check = Some(result);
    n.last_answer = Some(answer);

    match step.transition {
        Some(Transition::WentDown) => {
            n.chkdown += 1;
            n.last_change = now;
            n.last_change_wall = SystemTime::now();
        }
        Some(Transition::WentUp) => {
            n.downtime += now.saturating_duration_since(n.last_change);
            n.last_change = now;
            n.last_change_wall = SystemTime::now();
        }
        None => {}
    }
    let normal = cfg.interval_for(n.counter.is_fully_up(), n.counter.is_fully_down());
    let active = snap.nodes.iter().filter(|n| n.counter.is_up()).count();
    let backend = &shared.backends[node];

    match step.transition {
        Some(Transition::WentDown) => {
            // The event carries the moment the node was marked DOWN, taken before its sessions are
            // shut down: a client on another relay thread sees its session end at once, and must
            // never see it end before the DOWN it is the consequence of.
            let marked = snap.nodes[node].last_change_wall;
            let sessions = if cfg.listen.on_marked_down == OnMarkedDown::ShutdownSessions {
                backend.kill_sessions()
            } else {
                backend.counters.scur.load(Relaxed)
            };
            let queued = backend.counters.qcur.load(Relaxed);
            let msg = format!(
                "Server {px}/{name} is DOWN, {reason}. {active} active and 0 backup servers left. \
                 {sessions} sessions active, 0 requeued, {queued} remaining in queue."
            );
            tracing::warn!(target: "patroni_proxy::health", server = name, "{msg}");
            shared
                .events
                .push_at(marked, EventKind::Down, Some(name), msg);
            if active == 0 {
                tracing::error!(target: "patroni_proxy::health", "proxy '{px}' has no server available!");
            }
        }
        Some(Transition::WentUp) => {
            let msg = format!(
                "Server {px}/{name} is UP, {reason}. {active} active and 0 backup servers online. \
                 0 sessions requeued, 0 total in queue."
            );
            tracing::info!(target: "patroni_proxy::health", server = name, "{msg}");
            shared.events.push(EventKind::Up, Some(name), msg);
        }
        None => {}
    }

    reroute(shared, &mut snap, now, &reason);

    // Fast pace while the primary is unknown or in doubt: every node, until one is confirmed.
    let was_fast = snap.fast;
    snap.fast = match snap.primary {
        None => true,
        Some(p) => {
            let n = &snap.nodes[p];
            let confirmed = n.last_check.as_ref().is_some_and(|r| r.status.passed())
                && matches!(n.last_answer, Some(Answer::Primary { .. }));
            !confirmed
        }
    };
    let enter_fast = snap.fast && !was_fast;
    // The routed primary itself keeps HAProxy's pace even in doubt: an unanswered check says
    // nothing about its role, and counting `fall` at the fast pace would cut its sessions within a
    // second of a Patroni restart (issue 3: DOWN after fall x inter).
    let next = if snap.fast && snap.primary != Some(node) {
        normal.min(cfg.check.failover_inter)
    } else {
        normal
    };
    shared.snapshot.send_replace(Arc::new(snap));
    if enter_fast {
        // Everyone else is checked now; `node` has just been, and goes on at `next`.
        shared.wake_all_but(Some(node));
    }
    next
}

/// Recomputes the routed primary; on a change, logs it, records the event and closes the sessions of
/// the previous primary when another node takes over.
fn reroute(shared: &Shared, snap: &mut Snapshot, now: Instant, reason: &str) {
    let px = &shared.config.listen.name;
    let candidates: Vec<Candidate<'_>> = snap.nodes.iter().map(NodeState::candidate).collect();
    let chosen = routing::choose(snap.primary, &candidates);
    if chosen == snap.primary {
        return;
    }
    let old = snap.primary;
    if old.is_none() {
        snap.no_primary_total += now.saturating_duration_since(snap.primary_since);
    }
    snap.primary = chosen;
    // How long the previous state (a primary, or none) lasted.
    let gap = now.saturating_duration_since(snap.primary_since);
    snap.primary_since = now;
    match chosen {
        Some(new) => {
            snap.primary_changes += u64::from(snap.last_primary.is_some_and(|l| l != new));
            snap.last_primary = Some(new);
            let new_name = shared.server_name(new);
            let timeline = match &snap.nodes[new].claim {
                Claim::Primary {
                    timeline: Some(t), ..
                } => format!(" (timeline {t})"),
                _ => String::new(),
            };
            let msg = match old {
                Some(old) => {
                    // Never two primaries: sessions opened on the previous one go now, whatever
                    // its health counter says.
                    let closed = shared.backends[old].kill_sessions();
                    format!(
                        "Routed primary of {px} is now {new_name}{timeline}, was {}; \
                         {closed} sessions to {} closed.",
                        shared.server_name(old),
                        shared.server_name(old)
                    )
                }
                None => {
                    // The end of a failover as clients saw it: how long there was no primary, and
                    // how many clients are being released to the new one.
                    let held = shared.frontend.holding.load(Relaxed);
                    let timeouts = shared.frontend.hold_timeouts.load(Relaxed);
                    format!(
                        "Routed primary of {px} is now {new_name}{timeline}, after {:.3} s without \
                         one; {held} held clients released ({timeouts} hold timeouts so far).",
                        gap.as_secs_f64()
                    )
                }
            };
            tracing::warn!(target: "patroni_proxy::routing", primary = new_name, "{msg}");
            shared
                .events
                .push(EventKind::PrimaryChanged, Some(new_name), msg);
        }
        None => {
            let old_name = old.map(|o| shared.server_name(o)).unwrap_or("?");
            let msg = format!(
                "Routed primary of {px} lost: {old_name} is no longer routable ({reason}); \
                 new clients are held until a primary is confirmed."
            );
            tracing::warn!(target: "patroni_proxy::routing", "{msg}");
            shared
                .events
                .push(EventKind::PrimaryLost, Some(old_name), msg);
        }
    }
}

/// HAProxy's `reason: ..., code: ..., info: "...", check duration: Nms` fragment.
fn describe(r: &CheckResult) -> String {
    let mut s = format!("reason: {}", r.status.description());
    if let (Some(code), true) = (r.code, r.status.is_layer7()) {
        s.push_str(&format!(", code: {code}"));
    }
    if let Some(info) = &r.info {
        s.push_str(&format!(", info: \"{info}\""));
    }
    s.push_str(&format!(", check duration: {}ms", r.duration.as_millis()));
    s
}
