//! Reload: read and validate the configuration file again and, when every difference applies
//! live, make it the running one without dropping a session. What differs is decided by the pure
//! [`plan`]; this module reads the file, keeps the running configuration when the new one is
//! invalid or needs a restart (logged, counted in `patroni_proxy_config_reloads_total`, shown in
//! `/stats.json`), and otherwise swaps the shared configuration and tells the state owner
//! ([`crate::state::Input::Reloaded`]), which rebuilds the checks' request, re-reads rise/fall and
//! applies the servers (`state::servers`: kept ones keep their state, added ones start
//! fail-closed, removed ones drain).
//!
//! What a swap changes is read where it is used: sessions read the configuration when they start
//! (timeouts, retries, hold, keepalive), the state owner at each decision (intervals, rise/fall,
//! `on_marked_down`), the drain when it begins (`shutdown_grace`). A reload is all or nothing, so
//! the hash on the dashboard always names the one file the process runs.

pub mod plan;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::state::{Input, Shared};
use crate::stats::loaded::Loaded;
use crate::stats::Stats;

/// Most node slots a process holds: a removed server keeps its slot (its counters) until the
/// process restarts, so a long run of reloads that add new names must end somewhere.
pub const MAX_SLOTS: usize = 1024;

/// Reads and validates `path`, hashing the bytes it validated (one read: the hash always matches
/// what was parsed).
pub fn read(path: &Path) -> Result<(Config, Loaded), ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let config = Config::from_toml(&text).map_err(|e| match e {
        ConfigError::Invalid(msg) => ConfigError::Invalid(format!("{}: {msg}", path.display())),
        other => other,
    })?;
    // For the dashboard: where the file is, whatever directory the proxy was started from.
    let shown = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let loaded = Loaded {
        path: shown,
        sha256: sha256_hex(&bytes),
        at: SystemTime::now(),
    };
    Ok((config, loaded))
}

/// A listening socket on `addr`, as tokio's `TcpListener::bind` makes one (address reuse, a
/// backlog of 1024), left blocking for the accept loops to register.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A new listening socket for `key` when its address changed (`None` when it did not).
fn rebind(
    key: &str,
    running: std::net::SocketAddr,
    new: std::net::SocketAddr,
) -> Result<Option<Arc<std::net::TcpListener>>, String> {
    if new == running {
        return Ok(None);
    }
    bind(new).map(|l| Some(Arc::new(l))).map_err(|e| {
        format!("{key}: cannot listen on {new}: {e}; the running configuration is unchanged")
    })
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new file is the running configuration; these keys changed (maybe none).
    Applied(plan::Plan),
    /// The running configuration is unchanged, for this reason.
    Refused(String),
}

/// What a reload needs: the file, the state to swap the configuration in, the stats to record it,
/// and where to send a moved primary-port socket.
pub struct Reloader {
    pub path: PathBuf,
    pub shared: Arc<Shared>,
    pub stats: Arc<Stats>,
    pub move_to: Arc<watch::Sender<Option<Arc<std::net::TcpListener>>>>,
    /// Where to send a moved stats socket.
    pub stats_move_to: Arc<watch::Sender<Option<Arc<std::net::TcpListener>>>>,
}

impl Reloader {
    /// Reloads now (a small file read on the caller's thread). Never panics on the file's bytes.
    pub fn reload(&self) -> Outcome {
        let outcome = match read(&self.path) {
            Err(e) => Outcome::Refused(format!("{e}; the running configuration is unchanged")),
            Ok((new, loaded)) => self.apply(new, loaded),
        };
        if let Outcome::Refused(why) = &outcome {
            tracing::error!(target: "patroni_proxy::reload", "reload refused: {why}");
            self.stats.config.failed(why.clone());
        }
        outcome
    }

    fn apply(&self, new: Config, loaded: Loaded) -> Outcome {
        let p = plan::plan(&self.shared.config(), &new);
        let snap = self.shared.current();
        let new_slots = (p.added.iter())
            .filter(|name| !snap.nodes.iter().any(|n| &n.server.name == *name))
            .count();
        if snap.nodes.len() + new_slots > MAX_SLOTS {
            return Outcome::Refused(format!(
                "{} servers added: with the {} this process has held since it started (removed \
                 ones keep their slot and counters), that is over {MAX_SLOTS}; restart the \
                 service to apply this file",
                p.added.len(),
                snap.nodes.len()
            ));
        }
        if !p.applies_live() {
            return Outcome::Refused(format!(
                "these changes need a restart: {}; the running configuration is unchanged \
                 (restart the service, or put them back and reload)",
                p.restart.join("; ")
            ));
        }
        // New sockets are bound and listening before anything changes: if one cannot be, the
        // reload is refused and the proxy keeps listening where it did.
        let running = self.shared.config();
        let moved = match rebind(
            "listen.bind",
            running.listen.bind.first(),
            new.listen.bind.first(),
        ) {
            Ok(l) => l,
            Err(why) => return Outcome::Refused(why),
        };
        let stats_moved = match rebind("stats.bind", running.stats.bind, new.stats.bind) {
            Ok(l) => l,
            Err(why) => return Outcome::Refused(why),
        };
        let message = format!(
            "Configuration reloaded from {} (sha256 {}); changed: {}; {} servers unchanged.",
            loaded.path.display(),
            loaded.sha256.get(..12).unwrap_or(&loaded.sha256),
            p.live_text(),
            p.kept.len(),
        );
        let previous = self.shared.config();
        self.shared.replace_config(Arc::new(new));
        if let Some(l) = moved {
            // Each accept loop takes it and closes the old socket after `MOVE_LINGER`.
            self.move_to.send_replace(Some(l));
        }
        if let Some(l) = stats_moved {
            // The stats loop takes it, serves what is queued on the old one, then closes it.
            self.stats_move_to.send_replace(Some(l));
        }
        self.stats.config.reloaded(loaded);
        // The owner logs it (target patroni_proxy::admin) and puts it on the dashboard's events.
        self.shared.send(Input::Reloaded { message, previous });
        Outcome::Applied(p)
    }
}
