//! How a session ended, in HAProxy's two-letter termination codes (`haproxy-semantics.md` §2.8),
//! plus ours: the session's log line and counters use it.

/// HAProxy's two-letter termination states (`haproxy-semantics.md` §2.8), plus ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// Normal close by either end.
    Normal,
    /// Retries exhausted after refusals (`SC`) or timeouts (`sC`).
    ConnectRefused,
    ConnectTimeout,
    /// `timeout queue` while waiting for a server slot.
    QueueTimeout,
    /// Closed because the server was marked DOWN or lost the primary role (`D-`), or forced shutdown.
    Killed,
    /// No primary within `hold_timeout`: answered with 57P03 (`SH`).
    HoldTimeout,
    /// The backend reported `in_hot_standby = on`: answered with 57P03 (`SS`).
    Standby,
    /// Idle timeouts (`cD`, `sD`).
    ClientIdle,
    ServerIdle,
    /// Aborted by an error or close on that side (`CD`, `SD`).
    ClientError,
    ServerError,
    /// The proxy ran out of a local resource connecting to the server (`RC`), answered with 53000.
    LocalResource,
}

impl Termination {
    pub fn code(self) -> &'static str {
        match self {
            Termination::Normal => "--",
            Termination::ConnectRefused => "SC",
            Termination::ConnectTimeout => "sC",
            Termination::QueueTimeout => "sQ",
            Termination::Killed => "D-",
            Termination::HoldTimeout => "SH",
            Termination::Standby => "SS",
            Termination::ClientIdle => "cD",
            Termination::ServerIdle => "sD",
            Termination::ClientError => "CD",
            Termination::ServerError => "SD",
            Termination::LocalResource => "RC",
        }
    }
}
