//! Reads etcd's answers besides the keys, without IO: a lease's remaining time
//! (`/v3/lease/timetolive`), an authentication token (`/v3/auth/authenticate`), and the error
//! bodies that say a token is missing or no longer valid. Nothing here panics on any input.
//!
//! The shapes quoted in the tests were captured from etcd 3.4 (Debian's) through its gateway.

use std::time::Duration;

use serde::Deserialize;

use super::parse::{clip, DcsError};

/// What the leader key's lease says, read with the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The lease exists: `remaining` of the `granted` TTL are left (etcd counts whole seconds).
    /// Patroni renews it every `loop_wait`, so `remaining` stays near `granted` while the leader
    /// runs its HA loop, and falls towards zero when it stops.
    Live {
        id: u64,
        remaining: Duration,
        granted: Duration,
    },
    /// etcd no longer knows the lease (`TTL: -1`): it expired or was revoked. The key goes with
    /// it; the watch shows its deletion.
    Lapsed { id: u64 },
    /// The key carries no lease (not Patroni's way: its leader key always has one).
    Unleased,
}

/// The leader key's holder and its lease, as of one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderLease {
    pub leader: String,
    pub lease: Lease,
}

#[derive(Deserialize)]
struct TimeToLive {
    #[serde(rename = "TTL")]
    ttl: Option<NumText>,
    #[serde(rename = "grantedTTL")]
    granted: Option<NumText>,
}

#[derive(Deserialize)]
struct Token {
    token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: Option<i64>,
    message: Option<String>,
    error: Option<String>,
}

/// A signed 64-bit number as the gateway writes it (a string), or a plain JSON number.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumText {
    Text(String),
    Number(i64),
}

impl NumText {
    fn get(&self) -> Option<i64> {
        match self {
            NumText::Text(s) => s.parse().ok(),
            NumText::Number(n) => Some(*n),
        }
    }
}

/// The most a lease, token or error answer may hold: a few hundred bytes in practice.
pub const MAX_SMALL_ANSWER: usize = 64 << 10;

/// Reads a `/v3/lease/timetolive` answer for lease `id`.
pub fn parse_lease(body: &[u8], id: u64) -> Result<Lease, DcsError> {
    let a: TimeToLive =
        serde_json::from_slice(body).map_err(|e| DcsError::AnswerNotJson("lease", clip(e)))?;
    let ttl = a
        .ttl
        .as_ref()
        .and_then(NumText::get)
        .ok_or_else(|| DcsError::AnswerNotJson("lease", "no TTL".into()))?;
    if ttl < 0 {
        return Ok(Lease::Lapsed { id });
    }
    let secs = |n: i64| Duration::from_secs(n.unsigned_abs());
    let granted = a.granted.as_ref().and_then(NumText::get).unwrap_or(0);
    Ok(Lease::Live {
        id,
        remaining: secs(ttl),
        granted: secs(granted),
    })
}

/// Reads a `/v3/auth/authenticate` answer: the token to send in `Authorization`.
pub fn parse_token(body: &[u8]) -> Result<String, DcsError> {
    let a: Token =
        serde_json::from_slice(body).map_err(|e| DcsError::AnswerNotJson("token", clip(e)))?;
    match a.token {
        // A token goes into a header: refuse what a header cannot carry.
        Some(t) if !t.is_empty() && t.len() <= 4096 && t.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(t)
        }
        _ => Err(DcsError::AnswerNotJson(
            "token",
            "no usable token in the answer".into(),
        )),
    }
}

/// What an error answer (a non-2xx status) means. etcd's gateway maps gRPC codes: 16
/// `Unauthenticated` (HTTP 401, "invalid auth token") when the token expired or etcd restarted
/// (simple tokens live in memory); 3 `InvalidArgument` (HTTP 400) with "user name is empty" when
/// no token was sent to an etcd with authentication on, and "authentication failed" for a wrong
/// user or password.
pub fn classify_error(what: &'static str, status: u16, body: &[u8]) -> DcsError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|b| b.message.clone().or_else(|| b.error.clone()))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let code = parsed.as_ref().and_then(|b| b.code);
    if code == Some(16) || status == 401 || is_token_problem(&message) {
        return DcsError::Auth(clip(message));
    }
    DcsError::Http {
        what,
        error: clip(format!("HTTP {status}: {message}")),
    }
}

/// Whether etcd's message says the request lacked a valid token, which a new token fixes (as
/// opposed to a wrong password, which it does not).
pub fn is_token_problem(message: &str) -> bool {
    message.contains("invalid auth token")
        || message.contains("user name is empty")
        || message.contains("Unauthenticated")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from etcd 3.4.23 (`curl -X POST http://127.0.0.25:2379/v3/...`).
    const LIVE: &str = r#"{"header":{"cluster_id":"7787459613783441930","member_id":"2402861812076439189","revision":"3","raft_term":"2"},"ID":"7391992716809808648","TTL":"29","grantedTTL":"30"}"#;
    const REVOKED: &str = r#"{"header":{"cluster_id":"7787459613783441930","member_id":"2402861812076439189","revision":"4","raft_term":"2"},"ID":"7391992716809808648","TTL":"-1"}"#;
    const TOKEN: &str = r#"{"header":{"cluster_id":"7787459613783441930","member_id":"2402861812076439189","revision":"4","raft_term":"2"},"token":"VEZBmDjDcOQoxXzi.14"}"#;
    const BAD_TOKEN: &str = r#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#;
    const NO_TOKEN: &str = r#"{"error":"etcdserver: user name is empty","message":"etcdserver: user name is empty","code":3}"#;
    const WRONG_PASSWORD: &str = r#"{"error":"etcdserver: authentication failed, invalid user ID or password","message":"etcdserver: authentication failed, invalid user ID or password","code":3}"#;

    #[test]
    fn a_live_lease_gives_its_remaining_and_granted_ttl() {
        // Issue 14 item 3: "lease TTL read with the key" — the state must know whether the leader
        // lease is live.
        assert_eq!(
            parse_lease(LIVE.as_bytes(), 7391992716809808648),
            Ok(Lease::Live {
                id: 7391992716809808648,
                remaining: Duration::from_secs(29),
                granted: Duration::from_secs(30),
            })
        );
    }

    #[test]
    fn the_shared_clusters_leader_lease_is_live() {
        // Read-only from the shared cluster (127.0.0.21), Patroni's fast profile (ttl 20): the
        // lease renewed every loop_wait stays near its granted TTL.
        let body = r#"{"header":{"cluster_id":"13674968475109074175","member_id":"409246840924747667","revision":"136","raft_term":"3"},"ID":"4004722847464439045","TTL":"19","grantedTTL":"20"}"#;
        assert_eq!(
            parse_lease(body.as_bytes(), 4004722847464439045),
            Ok(Lease::Live {
                id: 4004722847464439045,
                remaining: Duration::from_secs(19),
                granted: Duration::from_secs(20),
            })
        );
    }

    #[test]
    fn a_lease_etcd_no_longer_knows_has_lapsed() {
        // etcd answers TTL -1 for an expired, revoked or unknown lease.
        assert_eq!(
            parse_lease(REVOKED.as_bytes(), 7),
            Ok(Lease::Lapsed { id: 7 })
        );
        assert_eq!(
            parse_lease(
                br#"{"header":{"revision":"3"},"ID":"12345","TTL":"-1"}"#,
                12345
            ),
            Ok(Lease::Lapsed { id: 12345 })
        );
    }

    #[test]
    fn a_lease_answer_without_ttl_or_json_is_an_error_not_a_panic() {
        for body in [
            &b"{}"[..],
            b"<html>",
            b"",
            br#"{"TTL":"x"}"#,
            br#"{"TTL":[1]}"#,
        ] {
            assert!(matches!(
                parse_lease(body, 1),
                Err(DcsError::AnswerNotJson("lease", _))
            ));
        }
    }

    #[test]
    fn a_token_is_read_and_a_header_unsafe_one_refused() {
        assert_eq!(
            parse_token(TOKEN.as_bytes()).unwrap(),
            "VEZBmDjDcOQoxXzi.14"
        );
        for body in [
            r#"{"token":""}"#,
            r#"{"token":"a\r\nX-Injected: 1"}"#,
            r#"{"header":{}}"#,
            "nope",
        ] {
            assert!(parse_token(body.as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn token_errors_ask_for_a_new_token_and_a_wrong_password_does_not() {
        // A token etcd forgot (restart, expiry) or never got: authenticate again. A wrong
        // password is reported as it is: a new token would not help.
        assert!(matches!(
            classify_error("range request", 401, BAD_TOKEN.as_bytes()),
            DcsError::Auth(m) if m == "etcdserver: invalid auth token"
        ));
        assert!(matches!(
            classify_error("range request", 400, NO_TOKEN.as_bytes()),
            DcsError::Auth(_)
        ));
        let wrong = classify_error("authentication", 400, WRONG_PASSWORD.as_bytes());
        assert!(matches!(&wrong, DcsError::Http { .. }), "{wrong:?}");
        assert!(
            wrong.to_string().contains("invalid user ID or password"),
            "{wrong}"
        );
        let other = classify_error("range request", 503, b"upstream down");
        assert_eq!(other.to_string(), "range request: HTTP 503: upstream down");
    }
}
