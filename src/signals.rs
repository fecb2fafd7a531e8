//! What the process does on a signal, and the wait for one: SIGTERM or SIGINT start the drain and a
//! second one during the drain closes every session at once; SIGHUP reloads the configuration file
//! ([`crate::reload`]; ignored during the drain, and when the proxy runs without a file). An
//! unexpected end of the proxy itself ends the wait too, with an error, so the process exits
//! non-zero.

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::reload::Reloader;
use crate::supervisor::Running;

/// The signals the proxy handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP.
    Hangup,
}

/// Where the process is when a signal arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Serving,
    Draining,
}

/// What to do about a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stop accepting and drain for up to `shutdown_grace`.
    Drain,
    /// Close every remaining session now.
    CloseAll,
    /// Read the configuration file again and apply it if it can be.
    Reload,
    /// Log that it was ignored.
    Ignore,
}

/// The rule, as a value.
pub fn action(phase: Phase, signal: Received) -> Action {
    match (phase, signal) {
        (Phase::Serving, Received::Hangup) => Action::Reload,
        // The process is on its way out: a new configuration would serve nothing.
        (Phase::Draining, Received::Hangup) => Action::Ignore,
        (Phase::Serving, Received::Stop) => Action::Drain,
        (Phase::Draining, Received::Stop) => Action::CloseAll,
    }
}

/// The handlers, installed once: from then on these signals no longer have their default action.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn recv(&mut self) -> Received {
        tokio::select! {
            _ = self.term.recv() => Received::Stop,
            _ = self.int.recv() => Received::Stop,
            _ = self.hup.recv() => Received::Hangup,
        }
    }
}

/// Serves until the proxy stops: after a signal's drain (`Ok`), or by itself (`Err`).
/// `reloader` is what SIGHUP runs (`None`: the proxy has no file to read again).
pub async fn serve_until_stopped(
    mut running: Running,
    mut signals: Signals,
    reloader: Option<Reloader>,
) -> anyhow::Result<()> {
    let mut phase = Phase::Serving;
    loop {
        let received = tokio::select! {
            r = running.finished() => {
                return match (phase, r) {
                    (Phase::Serving, Ok(())) => Err(anyhow::anyhow!("the proxy stopped by itself")),
                    (_, r) => r,
                };
            }
            s = signals.recv() => s,
        };
        match action(phase, received) {
            Action::Reload => match &reloader {
                // The outcome is logged, counted and shown by the reloader itself.
                Some(r) => {
                    tracing::info!(target: "patroni_proxy::reload", path = %r.path.display(),
                        "SIGHUP: reloading the configuration");
                    r.reload();
                }
                None => tracing::warn!("SIGHUP ignored: this proxy was not started from a file"),
            },
            Action::Ignore => tracing::warn!(
                "SIGHUP ignored during the drain: the running configuration is unchanged"
            ),
            Action::Drain => {
                tracing::info!(
                    "shutting down: no new connections; draining sessions \
                     (a second SIGTERM or SIGINT closes them at once)"
                );
                running.begin_shutdown();
                phase = Phase::Draining;
            }
            Action::CloseAll => {
                tracing::warn!("second stop signal: closing every remaining session now");
                running.force_close();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::state::Shared;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn the_proxy_ending_by_itself_ends_the_process_with_an_error() {
        // Issue 11 item 1: a checker panicked, the supervisor drained and closed the listeners,
        // and `main` went on waiting for a signal: a live process serving nothing, which no
        // service manager restarts. Now the wait ends with the supervisor, as an error.
        let shared = Shared::detached(Arc::new(
            Config::from_toml("[[server]]\nname = \"a\"\naddress = \"127.0.0.1:5432\"\n").unwrap(),
        ));
        for done in [
            tokio::spawn(async { Err(anyhow::anyhow!("a long-lived task exited unexpectedly")) }),
            tokio::spawn(async { Ok(()) }),
        ] {
            let running = Running::for_test(shared.clone(), done);
            let waited = tokio::time::timeout(
                Duration::from_secs(5),
                serve_until_stopped(running, Signals::install().unwrap(), None),
            )
            .await
            .expect("returns without a signal");
            assert!(waited.is_err());
        }
    }

    #[test]
    fn the_signal_rules() {
        // Issue 11 item 9: SIGHUP never ends the process; the first SIGTERM/SIGINT drains, a
        // second one during the drain closes everything at once. Issue 15: SIGHUP reloads.
        assert_eq!(action(Phase::Serving, Received::Hangup), Action::Reload);
        assert_eq!(action(Phase::Draining, Received::Hangup), Action::Ignore);
        assert_eq!(action(Phase::Serving, Received::Stop), Action::Drain);
        assert_eq!(action(Phase::Draining, Received::Stop), Action::CloseAll);
    }
}
