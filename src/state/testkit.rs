//! The rule tests' driver (`core_tests.rs`, `ride_tests.rs`, `servers_tests.rs`, `sql_tests.rs`):
//! the pure core fed check results and inputs over a configuration, with a clock of its own. Each
//! test file adds the steps its rules need (as an extension trait) on top of these.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::core::{on_check, on_input, Effect, Io};
use super::{Input, Snapshot, Unobserved};
use crate::config::Config;
use crate::health::patroni::PatroniInfo;
use crate::health::{CheckResult, CheckStatus};

/// A run of the pure core over a configuration.
pub(crate) struct Run {
    pub cfg: Config,
    pub snap: Snapshot,
    pub io: Io,
    pub now: Instant,
}

impl Run {
    /// Over a whole configuration, every node without sessions or queue.
    pub fn from_toml(toml: &str) -> Self {
        let cfg = Config::from_toml(toml).unwrap();
        let snap = (*super::new(Arc::new(cfg.clone()), Arc::new(Unobserved))
            .0
            .current())
        .clone();
        let n = cfg.servers.len();
        Self {
            cfg,
            snap,
            io: Io {
                sessions: vec![0; n],
                queued: vec![0; n],
                ..Io::default()
            },
            now: Instant::now(),
        }
    }

    /// `extra` (whole tables) and `n` servers `a`, `b`, `c`... at 127.0.0.11:5432 and up, each with
    /// the lines `server(i)` adds to its table.
    pub fn nodes(extra: &str, n: usize, server: impl Fn(usize) -> String) -> Self {
        let mut toml = format!("{extra}\n");
        for i in 0..n {
            toml.push_str(&format!(
                "[[server]]\nname = \"{}\"\naddress = \"127.0.0.{}:5432\"\n{}",
                char::from(b'a' + i as u8),
                11 + i,
                server(i)
            ));
        }
        Self::from_toml(&toml)
    }

    /// A check of `node` ending `after` the last step: its effects, and when the node's next
    /// check is due.
    pub fn step_check(
        &mut self,
        after: Duration,
        node: usize,
        result: CheckResult,
    ) -> (Vec<Effect>, Duration) {
        self.now += after;
        let (step, next) = on_check(
            &self.cfg,
            &self.snap,
            &self.io,
            node,
            result,
            self.now,
            SystemTime::now(),
        );
        self.snap = step.snapshot;
        (step.effects, next)
    }

    /// An input now: its effects, or `None` when it changes nothing. The IO side grows with the
    /// nodes (a reload's `AddBackend`).
    pub fn step_input(&mut self, input: Input) -> Option<Vec<Effect>> {
        let step = on_input(
            &self.cfg,
            &self.snap,
            &self.io,
            input,
            self.now,
            SystemTime::now(),
        )?;
        self.snap = step.snapshot;
        self.io.sessions.resize(self.snap.nodes.len(), 0);
        self.io.queued.resize(self.snap.nodes.len(), 0);
        Some(step.effects)
    }
}

/// A REST check's result: `code` `None` is a check that got no HTTP answer.
pub(crate) fn result(
    status: CheckStatus,
    code: Option<u16>,
    role: &str,
    timeline: u64,
) -> CheckResult {
    CheckResult {
        status,
        code,
        duration: Duration::from_millis(2),
        info: None,
        patroni: code.map(|_| PatroniInfo {
            role: Some(role.into()),
            state: Some("running".into()),
            timeline: Some(timeline),
            ..Default::default()
        }),
        finished_at: SystemTime::now(),
    }
}

/// Patroni's answer on `/primary` for a running member with `role`: 200 for the primary, else 503.
pub(crate) fn answer(role: &str, timeline: u64) -> CheckResult {
    if role == "primary" {
        result(CheckStatus::L7OK, Some(200), role, timeline)
    } else {
        result(CheckStatus::L7STS, Some(503), role, timeline)
    }
}
