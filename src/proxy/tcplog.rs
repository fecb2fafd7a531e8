//! The per-session log line (`log.sessions = true`): HAProxy's `tcplog` fields, built as a value
//! from what the session has at its end (instants it noted on the way, and its sockets, which the
//! kernel counts bytes on), so nothing is added to the data path. The field names are a documented
//! contract (docs/operations.md, Logs), stable across releases, and the same in both log formats.

use std::net::SocketAddr;

use tokio::time::Instant;

use super::termination::Termination;
use crate::state::{Route, Shared};

/// The `tracing` target of the line, so `RUST_LOG` can select it.
pub const TARGET: &str = "patroni_proxy::session";

/// When a session reached its phases, as it went (overwritten by each attempt at a server).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A slot under the server's `maxconn` was obtained (after holding for a primary and queueing).
    pub slot: Option<Instant>,
    /// The TCP connection to the server was established.
    pub connected: Option<Instant>,
}

/// The milliseconds a [`Timing`] says, kept in a relaying session's task: 8 bytes where the two
/// instants are 32 (the relay task's size is a tested figure). `u32::MAX` is "not reached".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    queue_ms: u32,
    connect_ms: u32,
}

const NOT_REACHED: u32 = u32::MAX;

impl Phases {
    pub fn new(start: Instant, t: Timing) -> Self {
        let ms = |from: Instant, to: Option<Instant>| {
            to.map_or(NOT_REACHED, |to| {
                u32::try_from(to.saturating_duration_since(from).as_millis())
                    .unwrap_or(NOT_REACHED - 1)
                    .min(NOT_REACHED - 1)
            })
        };
        let queue_ms = ms(start, t.slot);
        let connect_ms = match t.slot {
            Some(slot) => ms(slot, t.connected),
            None => NOT_REACHED,
        };
        Self {
            queue_ms,
            connect_ms,
        }
    }
}

/// One session's line, every field present (HAProxy writes `-1` for a phase not reached, and so do
/// we; a count the kernel did not give is `-1` too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLine<'a> {
    pub client: SocketAddr,
    /// `listen.name`.
    pub listener: &'a str,
    /// The server of the last attempt, `<NOSRV>` if none was chosen.
    pub server: &'a str,
    /// The local port of the proxy's connection to PostgreSQL (`pg_stat_activity.client_port`);
    /// 0 when the session ended before relaying.
    pub backend_port: u16,
    /// HAProxy's `Tw`: accept to the server slot, holding for a primary included.
    pub time_queue_ms: i64,
    /// HAProxy's `Tc`: slot to the TCP connection established, retries included.
    pub time_connect_ms: i64,
    /// HAProxy's `Tt`: accept to the end.
    pub time_total_ms: i64,
    /// Bytes received from the client (the kernel's count, `tcpi_bytes_received`).
    pub bytes_from_client: i64,
    /// Bytes received from the server; `-1` when the session ended before relaying.
    pub bytes_from_server: i64,
    pub termination: Termination,
}

/// What the sockets said at the end (`None`: not known).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sockets {
    pub backend_port: Option<u16>,
    pub bytes_from_client: Option<u64>,
    pub bytes_from_server: Option<u64>,
}

impl<'a> SessionLine<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: SocketAddr,
        listener: &'a str,
        server: Option<&'a str>,
        start: Instant,
        end: Instant,
        phases: Phases,
        sockets: Sockets,
        termination: Termination,
    ) -> Self {
        let phase = |ms: u32| {
            if ms == NOT_REACHED {
                -1
            } else {
                i64::from(ms)
            }
        };
        let count = |n: Option<u64>| n.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        Self {
            client,
            listener,
            server: server.unwrap_or("<NOSRV>"),
            backend_port: sockets.backend_port.unwrap_or(0),
            time_queue_ms: phase(phases.queue_ms),
            time_connect_ms: phase(phases.connect_ms),
            time_total_ms: i64::try_from(end.saturating_duration_since(start).as_millis())
                .unwrap_or(i64::MAX),
            bytes_from_client: count(sockets.bytes_from_client),
            bytes_from_server: count(sockets.bytes_from_server),
            termination,
        }
    }

    /// Writes the line at `info`.
    pub fn emit(&self) {
        tracing::info!(
            target: TARGET,
            client_addr = %self.client.ip(),
            client_port = self.client.port(),
            listener = self.listener,
            server = self.server,
            backend_port = self.backend_port,
            time_queue_ms = self.time_queue_ms,
            time_connect_ms = self.time_connect_ms,
            time_total_ms = self.time_total_ms,
            bytes_from_client = self.bytes_from_client,
            bytes_from_server = self.bytes_from_server,
            termination = self.termination.code(),
            "session"
        );
    }
}

/// The session's end in the log: with `log.sessions`, the `tcplog` line at info (its socket facts
/// asked of the kernel only then); otherwise the short line at debug.
#[allow(clippy::too_many_arguments)]
pub fn log_end(
    shared: &Shared,
    route: Route,
    peer: SocketAddr,
    node: Option<usize>,
    start: Instant,
    t: Termination,
    phases: Phases,
    sockets: impl FnOnce() -> Sockets,
) {
    let cfg = shared.config();
    // HAProxy's frontend and backend names: a `listen` section's own name for both.
    let px = &route.listen(&cfg).name;
    if cfg.log.sessions {
        let server = node.map(|n| shared.server_name(n));
        let now = Instant::now();
        let server = server.as_deref();
        SessionLine::new(peer, px, server, start, now, phases, sockets(), t).emit();
        return;
    }
    let server = node.map(|n| shared.server_name(n));
    let server = server.as_deref().unwrap_or("<NOSRV>");
    tracing::debug!(
        target: "patroni_proxy::session",
        "{peer} {px} {px}/{server} Tt={}ms {}",
        start.elapsed().as_millis(),
        t.code()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn times_are_haproxys_tw_tc_tt_with_minus_one_for_a_phase_not_reached() {
        let t0 = Instant::now();
        let relayed = Timing {
            slot: Some(t0 + 7 * MS),
            connected: Some(t0 + 10 * MS),
        };
        let sockets = Sockets {
            backend_port: Some(40001),
            bytes_from_client: Some(120),
            bytes_from_server: Some(4000),
        };
        let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let l = SessionLine::new(
            peer,
            "postgres",
            Some("pg0"),
            t0,
            t0 + 2500 * MS,
            Phases::new(t0, relayed),
            sockets,
            Termination::Normal,
        );
        assert_eq!(
            (
                l.time_queue_ms,
                l.time_connect_ms,
                l.time_total_ms,
                l.backend_port
            ),
            (7, 3, 2500, 40001)
        );
        assert_eq!((l.bytes_from_client, l.bytes_from_server), (120, 4000));

        // Held until `hold_timeout`: no server, no slot, no connection, nothing from a server.
        let l = SessionLine::new(
            peer,
            "postgres",
            None,
            t0,
            t0 + 10_000 * MS,
            Phases::new(t0, Timing::default()),
            Sockets {
                bytes_from_client: Some(8),
                ..Sockets::default()
            },
            Termination::HoldTimeout,
        );
        assert_eq!(l.server, "<NOSRV>");
        assert_eq!(
            (l.time_queue_ms, l.time_connect_ms, l.time_total_ms),
            (-1, -1, 10_000)
        );
        assert_eq!(
            (l.backend_port, l.bytes_from_client, l.bytes_from_server),
            (0, 8, -1)
        );

        // A slot, then retries exhausted: Tw known, Tc not.
        let p = Phases::new(
            t0,
            Timing {
                slot: Some(t0 + MS),
                connected: None,
            },
        );
        let l = SessionLine::new(
            peer,
            "postgres",
            Some("pg0"),
            t0,
            t0 + 9 * MS,
            p,
            Sockets::default(),
            Termination::ConnectRefused,
        );
        assert_eq!((l.time_queue_ms, l.time_connect_ms), (1, -1));
    }

    #[test]
    fn absurd_values_saturate_instead_of_wrapping() {
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(60 * 24 * 3600);
        let p = Phases::new(
            t0,
            Timing {
                slot: Some(far),
                connected: Some(far),
            },
        );
        let l = SessionLine::new(
            "127.0.0.1:1".parse().unwrap(),
            "x",
            Some("s"),
            t0,
            far,
            p,
            Sockets {
                bytes_from_client: Some(u64::MAX),
                ..Sockets::default()
            },
            Termination::Normal,
        );
        // 60 days of queueing is more than u32 milliseconds: shown as the largest, never -1.
        assert_eq!(l.time_queue_ms, i64::from(u32::MAX - 1));
        assert_eq!(l.time_connect_ms, 0);
        assert_eq!(l.time_total_ms, 60 * 24 * 3600 * 1000);
        assert_eq!(l.bytes_from_client, i64::MAX);
    }
}
