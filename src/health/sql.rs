//! The SQL check (issue 14 item 1): `SELECT pg_is_in_recovery()` as the `[check.sql]` role, on a
//! connection of its own to a node's PostgreSQL `address`, with TLS when the server offers it
//! (`sslmode`). It is what PostgreSQL itself says about the role, for clients whose sessions the
//! proxy cannot read (TLS), where HAProxy's `pgsql-check` stops at the authentication request.
//! One check per node per `check.inter` at most, run by the node's checker after its REST check
//! ([`due`]); what the answer does to routing is decided in `state::sql`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

use super::pgtls::{self, Seen};
use crate::config::sql::{SqlSpec, SslMode as SqlMode};

/// What one SQL check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verdict {
    /// `pg_is_in_recovery()` = false: PostgreSQL is a primary.
    Primary,
    /// `pg_is_in_recovery()` = true: a standby (or a primary still promoting).
    Standby,
    /// No answer: refused, timed out, closed, or the server cannot take a session now (57P03
    /// starting up or shutting down, 53300 too many connections). Says nothing about the role.
    Failed { info: String },
    /// The server answered but refused *our* login (wrong password, no `pg_hba.conf` line, unknown
    /// role or database), or TLS is required and not offered, or its certificate does not verify:
    /// `[check.sql]` needs fixing, and says nothing about the role either.
    Refused { info: String },
}

impl Verdict {
    /// Every result, in the order of the metric's `result` label values.
    pub const LABELS: [&'static str; 4] = ["primary", "standby", "failed", "refused"];

    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Primary => "primary",
            Verdict::Standby => "standby",
            Verdict::Failed { .. } => "failed",
            Verdict::Refused { .. } => "refused",
        }
    }

    /// `Some(in recovery)` when PostgreSQL answered the query.
    pub fn in_recovery(&self) -> Option<bool> {
        match self {
            Verdict::Primary => Some(false),
            Verdict::Standby => Some(true),
            _ => None,
        }
    }

    /// The words for logs and the dashboard.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Primary => "pg_is_in_recovery() = false".into(),
            Verdict::Standby => "pg_is_in_recovery() = true".into(),
            Verdict::Failed { info } => format!("no answer ({info})"),
            Verdict::Refused { info } => format!("refused ({info}): fix [check.sql]"),
        }
    }
}

/// A finished SQL check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SqlResult {
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Whether the connection was encrypted.
    pub tls: bool,
    #[serde(serialize_with = "ser_ms", rename = "duration_ms")]
    pub duration: Duration,
    #[serde(serialize_with = "crate::time::ser_epoch")]
    pub finished_at: SystemTime,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// Whether a SQL check follows this REST check: always after an answer that claims the primary
/// role (it must not be routed on REST's word alone, nor stay routed against PostgreSQL's), else
/// once `every` (`check.inter`) has passed since the last one, so that the failover pace
/// (`failover_inter`) does not multiply logins on every node.
pub fn due(claims_primary: bool, last: Option<Instant>, now: Instant, every: Duration) -> bool {
    claims_primary || last.is_none_or(|t| now.saturating_duration_since(t) >= every)
}

/// Runs one SQL check against `address`, within `spec.timeout` all told. `Err`: the proxy is out
/// of a local resource (file descriptors, ports), which says nothing about the node.
pub async fn run(address: SocketAddr, spec: &SqlSpec) -> Result<SqlResult, std::io::Error> {
    let start = Instant::now();
    let deadline = crate::time::deadline(start, spec.timeout);
    let seen = Arc::new(Mutex::new(Seen::Plain));
    let verdict = match timeout_at(deadline, exchange(address, spec, seen.clone(), deadline)).await
    {
        Err(_) => Verdict::Failed {
            info: format!(
                "no answer within {}",
                crate::config::format_duration(spec.timeout)
            ),
        },
        Ok(Err(Local(e))) => return Err(e),
        Ok(Ok(v)) => v,
    };
    let tls = *seen.lock().unwrap_or_else(|p| p.into_inner()) == Seen::Encrypted;
    Ok(SqlResult {
        verdict,
        tls,
        duration: start.elapsed(),
        finished_at: SystemTime::now(),
    })
}

/// A local resource error: not the node's fault.
struct Local(std::io::Error);

async fn exchange(
    address: SocketAddr,
    spec: &SqlSpec,
    seen: Arc<Mutex<Seen>>,
    deadline: Instant,
) -> Result<Verdict, Local> {
    let stream = match TcpStream::connect(address).await {
        Ok(s) => s,
        Err(e) if crate::net::is_local_resource_error(&e) => return Err(Local(e)),
        Err(e) => {
            return Ok(Verdict::Failed {
                info: super::check::os_error_text(&e),
            })
        }
    };
    let _ = stream.set_nodelay(true);
    let mut config = tokio_postgres::Config::new();
    config
        .user(&spec.user)
        .dbname(&spec.dbname)
        .application_name("patroni-proxy SQL check")
        .ssl_mode(match spec.sslmode {
            SqlMode::Disable => tokio_postgres::config::SslMode::Disable,
            SqlMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SqlMode::Require => tokio_postgres::config::SslMode::Require,
        });
    if let Some(p) = &spec.password {
        config.password(p.as_bytes());
    }
    let tls = pgtls::Connect {
        config: spec.tls.clone(),
        name: ServerName::IpAddress(address.ip().into()),
        seen: seen.clone(),
    };
    let (client, connection) = match config.connect_raw(stream, tls).await {
        Ok(pair) => pair,
        Err(e) => {
            let tls = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
            return Ok(failure(&e, &tls));
        }
    };
    // The connection does the socket IO: poll it while the query runs, then let it send
    // Terminate and close (dropping the client ends it), so PostgreSQL logs no broken connection.
    let mut connection = std::pin::pin!(connection);
    let answer = tokio::select! {
        r = client.simple_query("SELECT pg_is_in_recovery()") => r,
        ended = &mut connection => {
            let why = ended.err().map_or("closed".into(), |e| e.to_string());
            return Ok(Verdict::Failed { info: format!("connection ended: {why}") });
        }
    };
    drop(client);
    let _ = timeout_at(deadline, connection).await;
    Ok(match answer {
        Err(e) => failure(&e, &Seen::Plain),
        Ok(messages) => read_answer(&messages),
    })
}

/// The one row's one value: `t` or `f`.
fn read_answer(messages: &[SimpleQueryMessage]) -> Verdict {
    let value = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
        _ => None,
    });
    match value.flatten().as_deref() {
        Some("f") => Verdict::Primary,
        Some("t") => Verdict::Standby,
        other => Verdict::Failed {
            info: format!("unexpected answer {other:?} to SELECT pg_is_in_recovery()"),
        },
    }
}

/// Whose problem a failed connection is: ours (`Refused`: fix the config) or the node's.
fn failure(e: &tokio_postgres::Error, tls: &Seen) -> Verdict {
    if let Seen::Failed(why) = tls {
        return Verdict::Refused {
            info: why.replace("check.ca_file", "check.sql.ca_file"),
        };
    }
    if let Some(db) = e.as_db_error() {
        let info = format!("{} ({})", db.message(), db.code().code());
        let ours = [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INVALID_CATALOG_NAME,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ];
        return if ours.contains(db.code()) {
            Verdict::Refused { info }
        } else {
            Verdict::Failed { info }
        };
    }
    let text = e.to_string();
    // tokio-postgres' own words when `sslmode = "require"` meets a server without TLS, and when
    // the server asks for a password none of `password*` gave.
    if text.contains("server does not support TLS") {
        return Verdict::Refused {
            info: "the server does not offer TLS and sslmode is \"require\"".into(),
        };
    }
    if text.contains("password missing") {
        return Verdict::Refused {
            info: "the server asks for a password: set check.sql.password, password_file or \
                   password_env"
                .into(),
        };
    }
    Verdict::Failed { info: text }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_always_checked_and_other_answers_once_per_inter() {
        // Issue 14: "run before a newly promoted node is routed and on the check schedule";
        // "one SQL check per node per interval at most".
        let every = Duration::from_secs(3);
        let t = Instant::now();
        assert!(due(false, None, t, every), "the first check of a node");
        assert!(due(true, Some(t), t, every), "a primary claim, at once");
        assert!(!due(false, Some(t), t + Duration::from_millis(200), every));
        assert!(due(false, Some(t), t + every, every));
    }

    #[test]
    fn only_t_and_f_are_answers() {
        assert_eq!(read_answer(&[]).label(), "failed");
        assert_eq!(Verdict::Standby.in_recovery(), Some(true));
        assert_eq!(
            Verdict::Refused { info: "x".into() }.describe(),
            "refused (x): fix [check.sql]"
        );
    }
}
