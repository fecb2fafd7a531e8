//! Starts every long-lived task on already-bound listeners, supervises them, and drains on shutdown:
//! stop accepting, wait for sessions up to the grace period, then close the rest and say how many.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::state::{self, Input, Owner, Shared};
use crate::{dcs, proxy, stats};

/// The bound sockets the proxy serves on. Binding is the caller's job so tests can use port 0.
pub struct Listeners {
    pub proxy: TcpListener,
    /// The primary port's other bind addresses (`listen.bind` with several): the same listener.
    pub proxy_more: Vec<TcpListener>,
    pub stats: Option<TcpListener>,
    /// The sockets of the listeners that are not the primary port, each with its set's index
    /// (`state::sets::specs`; a listener with several binds has several).
    pub sets: Vec<(usize, TcpListener)>,
}

/// A running proxy: its state and stats handles (for tests and the binary) and its stop switches.
pub struct Running {
    pub shared: Arc<Shared>,
    pub stats: Arc<stats::Stats>,
    /// Moves the primary port to a new socket (a reload of `listen.bind`).
    pub move_to: Arc<tokio::sync::watch::Sender<Option<Arc<std::net::TcpListener>>>>,
    /// Moves the stats listener to a new socket (a reload of `stats.bind`).
    pub stats_move_to: Arc<tokio::sync::watch::Sender<Option<Arc<std::net::TcpListener>>>>,
    stop: CancellationToken,
    force: CancellationToken,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Begins a graceful shutdown and waits for it to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        self.finished().await
    }

    /// Stops accepting and starts draining (held clients are answered at once); [`Running::finished`]
    /// resolves when the drain is over.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Ends the drain now: every remaining session is closed without waiting for `shutdown_grace`.
    pub fn force_close(&self) {
        self.stop.cancel();
        self.force.cancel();
    }

    /// Resolves when the proxy has stopped: after a requested shutdown's drain (`Ok`), or, without
    /// one, because a long-lived task ended by itself, after the drain that follows (`Err`: the
    /// process must exit non-zero so that a service manager restarts it). Call it once more only
    /// after it was cancelled by a `select!`, never after it resolved.
    pub async fn finished(&mut self) -> anyhow::Result<()> {
        match (&mut self.done).await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("the supervisor itself failed: {e}")),
        }
    }
}

#[cfg(test)]
impl Running {
    /// A `Running` whose supervisor is `done`, for tests of what waits on it.
    pub(crate) fn for_test(
        shared: Arc<Shared>,
        done: tokio::task::JoinHandle<anyhow::Result<()>>,
    ) -> Self {
        Self {
            stats: Arc::new(stats::Stats::new(&shared.config())),
            move_to: Arc::new(tokio::sync::watch::channel(None).0),
            stats_move_to: Arc::new(tokio::sync::watch::channel(None).0),
            shared,
            stop: CancellationToken::new(),
            force: CancellationToken::new(),
            done,
        }
    }
}

/// Starts the proxy in the background; see [`run`].
pub fn start(config: Arc<Config>, listeners: Listeners) -> Running {
    let stats = Arc::new(stats::Stats::new(&config));
    let (shared, owner) = state::new(config, stats.clone());
    let stop = CancellationToken::new();
    let force = CancellationToken::new();
    let (move_to, moves) = tokio::sync::watch::channel(None);
    let (stats_move_to, stats_moves) = tokio::sync::watch::channel(None);
    let done = tokio::spawn(run(
        Parts {
            shared: shared.clone(),
            owner,
            stats: stats.clone(),
            moves,
            stats_moves,
        },
        listeners,
        stop.clone(),
        force.clone(),
    ));
    Running {
        shared,
        stats,
        move_to: Arc::new(move_to),
        stats_move_to: Arc::new(stats_move_to),
        stop,
        force,
        done,
    }
}

/// Says once at start who relays each listener's sessions; refuses to start when a listener asks
/// for `relay = "kernel"` and the kernel relay cannot be loaded (`auto` falls back, saying why).
fn relay_said(shared: &Shared) -> anyhow::Result<()> {
    use crate::config::RelayMode;
    for v in crate::stats::relay::views(shared) {
        let l = &v.listener;
        match (v.configured, v.mode, v.why_not_kernel) {
            (_, "kernel", _) => tracing::info!("listener {l}: sessions relayed in the kernel (BPF sockmap, listen.relay = \"{}\")", v.configured),
            (c, _, Some(why)) if c == RelayMode::Kernel.as_str() => anyhow::bail!(
                "listener {l}: listen.relay = \"kernel\" but the kernel relay cannot be used: {why} \
                 (it needs CAP_BPF and CAP_NET_ADMIN and a kernel with BPF sockmap; relay = \"auto\" falls back to user space)"
            ),
            (_, _, Some(why)) => tracing::warn!("listener {l}: listen.relay = \"auto\" relays in user space: the kernel relay cannot be used: {why}"),
            _ => {}
        }
    }
    Ok(())
}

/// What [`run`] wires together: the state and its owner, and the stats side.
pub struct Parts {
    pub shared: Arc<Shared>,
    pub owner: Owner,
    pub stats: Arc<stats::Stats>,
    /// Where a reload sends a moved primary-port socket.
    pub moves: proxy::Moves,
    /// Where a reload sends a moved stats socket.
    pub stats_moves: crate::net::Moves,
}

/// Runs until `stop` is cancelled, then drains for up to `shutdown_grace`, or until `force` is
/// cancelled. An unexpected exit of any long-lived task is an error (and stops the others), never a
/// silent degradation.
pub async fn run(
    parts: Parts,
    listeners: Listeners,
    stop: CancellationToken,
    force: CancellationToken,
) -> anyhow::Result<()> {
    let Parts {
        shared,
        owner,
        stats,
        moves,
        stats_moves,
    } = parts;
    let cfg = shared.config();
    relay_said(&shared)?;
    let tasks = TaskTracker::new();
    let sessions = TaskTracker::new();
    let internal_stop = stop.child_token();

    let mut supervised = tokio::task::JoinSet::new();
    // The owner runs the checkers (a reload adds and removes them).
    supervised.spawn(tasks.track_future(owner.run(internal_stop.clone())));
    supervised.spawn(tasks.track_future(stats::history::sampler::run(
        shared.clone(),
        stats.history.clone(),
        internal_stop.clone(),
    )));
    if let Some(etcd) = cfg.etcd.clone() {
        if etcd.ride_through {
            let unnamed: Vec<&str> = (cfg.servers.iter())
                .filter(|s| s.member.is_none())
                .map(|s| s.name.as_str())
                .collect();
            tracing::info!(target: "patroni_proxy::routing",
            "REST outage ride-through on (etcd.ride_through){}",
            if unnamed.is_empty() {
                String::new()
            } else {
                format!(
                    "; Patroni member names of {} will be read from their REST answers \
                     (patroni.name): without one, no ride-through for that server (set \
                     `member` in its [[server]])",
                    unnamed.join(", ")
                )
            });
        }
        let to_owner = shared.clone();
        let sink = dcs::Sink {
            signal: Box::new(move |s| {
                to_owner.send(match s {
                    dcs::Signal::Leader(leader) => Input::LeaderChanged { leader },
                    dcs::Signal::SwitchoverRequested => Input::SwitchoverRequested,
                    dcs::Signal::SwitchoverEnded => Input::SwitchoverEnded,
                    dcs::Signal::Lease(lease) => Input::LeaderLease(lease),
                })
            }),
            status: stats.etcd.clone(),
        };
        supervised.spawn(tasks.track_future(dcs::watch(etcd, sink, internal_stop.clone())));
    }
    // `global.maxconn`: one count of client sessions for every listener, as HAProxy's.
    let slots = Arc::new(tokio::sync::Semaphore::new(
        shared.config().global.maxconn.get() as usize,
    ));
    supervised.spawn(tasks.track_future(proxy::serve(
        listeners.proxy,
        moves,
        shared.clone(),
        (state::Route::PRIMARY, slots.clone()),
        sessions.clone(),
        internal_stop.clone(),
    )));
    for l in listeners.proxy_more {
        // A listener with several addresses changes them at a restart: nothing moves them.
        let (_, moves) = tokio::sync::watch::channel(None);
        supervised.spawn(tasks.track_future(proxy::serve(
            l,
            moves,
            shared.clone(),
            (state::Route::PRIMARY, slots.clone()),
            sessions.clone(),
            internal_stop.clone(),
        )));
    }
    for (i, l) in listeners.sets {
        // Their `bind` changes at a restart: nothing moves them.
        let (_, moves) = tokio::sync::watch::channel(None);
        supervised.spawn(tasks.track_future(proxy::serve(
            l,
            moves,
            shared.clone(),
            (state::Route::of_set(i), slots.clone()),
            sessions.clone(),
            internal_stop.clone(),
        )));
    }
    if let Some(l) = listeners.stats {
        supervised.spawn(tasks.track_future(stats::serve_moving(
            l,
            stats_moves,
            shared.clone(),
            stats.clone(),
            stats::Limits::default(),
            internal_stop.clone(),
        )));
    }

    let failure = tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        // Tasks also end when `stop` fires (their token is its child): only an exit before that is
        // a failure.
        r = supervised.join_next() => (!stop.is_cancelled()).then_some(r),
    };
    internal_stop.cancel();
    // Held clients are answered now: with the checks stopped no primary can be confirmed for them.
    shared.draining.cancel();
    if let Some(r) = &failure {
        tracing::error!(?r, "a long-lived task exited unexpectedly; shutting down");
    }
    tasks.close();
    tasks.wait().await;

    sessions.close();
    // Read now, not at start-up: a reload may have changed it.
    let grace = shared.config().global.shutdown_grace;
    let open = shared.frontend.scur.load(Relaxed);
    if open > 0 {
        tracing::info!(open, grace = ?grace, "draining sessions");
    }
    let drained = tokio::select! {
        r = tokio::time::timeout(grace, sessions.wait()) => r.is_ok(),
        _ = force.cancelled() => false,
    };
    if !drained {
        let left = shared.frontend.scur.load(Relaxed);
        let why = if force.is_cancelled() {
            "asked to stop at once"
        } else {
            "grace period over"
        };
        tracing::warn!(left, "{why}; closing remaining sessions");
        for b in shared.backends() {
            b.close();
        }
        for set in &shared.set_io {
            for b in set.backends() {
                b.close();
            }
        }
        sessions.wait().await;
    }
    match failure {
        Some(r) => anyhow::bail!("a long-lived task exited unexpectedly: {r:?}"),
        None => Ok(()),
    }
}
