//! Reading Patroni's REST answer: the JSON body's `role`, `state`, `timeline`, WAL positions,
//! `replication_state`, `noloadbalance` tag and the cluster-wide flags `pause`, `failsafe_mode_is_active` and `cluster_unlocked` (`patroni-and-peers.md` §1.5),
//! and what a check result says about "is this node the primary".
//!
//! **Roles** (Patroni 4.1's `PostgresqlRole`, `postgresql/misc.py`; Patroni 3 wrote `master`). With
//! PostgreSQL answering SQL the body says `primary` or `replica` (from `pg_is_in_recovery()`), or
//! `standby_leader` for the leader of a standby cluster; when the SQL query fails, Patroni's cached
//! role is sent instead, which may also be `demoted`, `promoted` or `uninitialized`. Only `primary`
//! (and `master`) may be routed on the primary listener: every other role, and a role this proxy
//! does not know, is "not the primary" whatever the status code says ([`role_rule`]).
//!
//! **States** (Patroni 4.1's `PostgresqlState`, plus `unknown`, which the REST API reports when
//! the state is `running` but its SQL query failed). Only `running` may be routed; every other state
//! is a transition or a failure ([`state_rule`]).
//!
//! **`pause: true`** (maintenance mode): Patroni stops managing roles (no failover, no demotion),
//! but its REST API keeps answering from the leader lock, or, paused with the DCS unreachable, from
//! PostgreSQL's own role (`patroni-and-peers.md` §1.4 rows 7 and 8). We keep following the REST
//! checks exactly as unpaused: the flag is read and shown, never a reason to route or not.
//!
//! **`failsafe_mode_is_active: true`**: the DCS is unreachable and the primary stays primary because
//! every member acknowledged it (Patroni's `docs/dcs_failsafe_mode.rst`); its `/primary` stays 200.
//! The flag is read and shown: nothing in this proxy stops routing because etcd is unreachable (the
//! etcd watch only ever triggers re-checks), so a failsafe primary stays routed as long as its REST
//! check says so.

use serde::Serialize;

use crate::health::{CheckResult, CheckStatus};

/// The fields of a Patroni health body that routing uses. Missing fields stay `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PatroniInfo {
    /// `primary`, `replica`, `standby_leader`, `demoted`, ...; Patroni < 4.0's `master` is stored as
    /// `primary`.
    pub role: Option<String>,
    /// `running`, `starting`, `stopping`, `restarting`, `crashed`, ...
    pub state: Option<String>,
    pub timeline: Option<u64>,
    /// `xlog`: on a primary its flush position (`location`), on a replica what it received and
    /// replayed, in bytes.
    #[serde(skip_serializing_if = "Wal::is_empty")]
    pub wal: Wal,
    /// `streaming` or `in archive recovery` (replicas only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    /// The `noloadbalance` tag: Patroni's `/replica` answers 503 for this node.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub noloadbalance: bool,
    /// `pause: true`: the cluster is in maintenance mode (Patroni manages no roles).
    pub pause: bool,
    /// `failsafe_mode_is_active: true`: the DCS is unreachable and this primary runs on in
    /// Patroni's failsafe mode.
    pub failsafe_mode_is_active: bool,
    /// `cluster_unlocked: true`: Patroni sees no leader lock (or no DCS).
    pub cluster_unlocked: bool,
    /// `sync_standby: true`: the node is in the DCS `/sync` key (synchronous mode), what
    /// Patroni's `/sync` answers 200 for (`patroni-and-peers.md` §1.5).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sync_standby: bool,
    /// `quorum_standby: true`: a quorum-commit member (`/quorum`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub quorum_standby: bool,
    /// `patroni.name`: the member's name (the leader key's value when it leads), sent by Patroni 4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}

/// The WAL positions of a Patroni body (`xlog`), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Wal {
    /// The primary's flush position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<u64>,
    /// Replay paused (`pg_wal_replay_pause()`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

impl Wal {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl PatroniInfo {
    /// Parses a body; `None` when it is not a JSON object (HEAD/OPTIONS answers have no body).
    pub fn parse(body: &[u8]) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let obj = v.as_object()?;
        let text = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let role = text("role").map(|r| if r == "master" { "primary".into() } else { r });
        let xlog = obj.get("xlog").and_then(|v| v.as_object());
        let position = |k: &str| xlog.and_then(|x| x.get(k)).and_then(|v| v.as_u64());
        let truthy = |v: Option<&serde_json::Value>| match v {
            Some(serde_json::Value::Bool(b)) => *b,
            // Patroni's tags come from YAML as written: `noloadbalance: true` or a string.
            Some(serde_json::Value::String(s)) => {
                matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "1")
            }
            _ => false,
        };
        // Patroni writes these flags only when true; anything but JSON `true` counts as absent.
        let flag = |k: &str| obj.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        Some(Self {
            role,
            state: text("state"),
            timeline: obj.get("timeline").and_then(|v| v.as_u64()),
            wal: Wal {
                location: position("location"),
                received: position("received_location"),
                replayed: position("replayed_location"),
                paused: truthy(xlog.and_then(|x| x.get("paused"))),
            },
            replication_state: text("replication_state"),
            noloadbalance: truthy(
                obj.get("tags")
                    .and_then(|t| t.as_object())
                    .and_then(|t| t.get("noloadbalance")),
            ),
            pause: flag("pause"),
            failsafe_mode_is_active: flag("failsafe_mode_is_active"),
            cluster_unlocked: flag("cluster_unlocked"),
            sync_standby: flag("sync_standby"),
            quorum_standby: flag("quorum_standby"),
            member: (obj.get("patroni").and_then(|p| p.get("name")))
                .and_then(|n| n.as_str())
                .filter(|n| !n.is_empty() && n.len() <= 256)
                .map(str::to_string),
        })
    }
}

/// What one finished check says about the node being the primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Answer {
    /// Status 200 and the body (if any) does not contradict it.
    Primary { timeline: Option<u64> },
    /// Patroni answered and said "not the leader": a wrong status, or a 200 whose body shows another
    /// role or a state other than `running` (the old leader during CHECKPOINT/shutdown, the new leader
    /// still promoting: `patroni-and-peers.md` §0 item 1).
    NotPrimary { reason: String },
    /// No answer (timeout, refused, reset, garbage): says nothing about the role.
    Unknown,
}

impl Answer {
    pub fn of(result: &CheckResult) -> Self {
        match result.status {
            CheckStatus::L7OK | CheckStatus::L4OK => {
                let Some(info) = &result.patroni else {
                    return Answer::Primary { timeline: None };
                };
                if let Some(reason) = info.role.as_deref().and_then(role_rule) {
                    return Answer::NotPrimary { reason };
                }
                if let Some(reason) = info.state.as_deref().and_then(state_rule) {
                    return Answer::NotPrimary { reason };
                }
                Answer::Primary {
                    timeline: info.timeline,
                }
            }
            CheckStatus::L7STS => Answer::NotPrimary {
                reason: match result.code {
                    Some(c) => format!("HTTP {c}"),
                    None => "wrong status".into(),
                },
            },
            _ => Answer::Unknown,
        }
    }
}

/// Why a body's `role` rules the node out as the primary, `None` when it does not (`primary`;
/// `master` is stored as `primary` by [`PatroniInfo::parse`]). Each role is named so that a new
/// Patroni role is a deliberate decision here, not a silent fall-through.
pub fn role_rule(role: &str) -> Option<String> {
    let why = match role {
        "primary" | "master" => return None,
        // Recovery still on (a replica, or a leader still promoting: §1.4 row 12).
        "replica" => "role is replica",
        // The leader of a standby cluster replicates from elsewhere and is read-only; Patroni's
        // `/leader` answers 200 for it (§1.4 row 13), which must not route it as a primary.
        "standby_leader" => "role is standby_leader (standby cluster)",
        // Patroni's cached role while its SQL query fails: it released the lock and is stopping
        // or restarting as a replica (§1.4 row 11).
        "demoted" => "role is demoted",
        // Cached role while `pg_ctl promote` runs and SQL fails: not yet accepting writes.
        "promoted" => "role is promoted (promotion not finished)",
        // Before bootstrap or after a failed one: no PostgreSQL to route to.
        "uninitialized" => "role is uninitialized",
        other => return Some(format!("role is {other} (unknown to this proxy)")),
    };
    Some(why.to_string())
}

/// Why a body's `state` rules the node out as the primary, `None` for `running`. Every other
/// state of Patroni 4.1 (`PostgresqlState`) is a transition (`starting`, `stopping`, `restarting`,
/// `starting after custom bootstrap`, `creating replica`, `initializing new cluster`, `running
/// custom bootstrap script`), a failure (`crashed`, `stopped`, `start failed`, `restart failed`,
/// `stop failed`, `initdb failed`, `custom bootstrap failed`) or `unknown` (the REST API's word
/// for "running, but my SQL query failed"): none accepts writes dependably.
pub fn state_rule(state: &str) -> Option<String> {
    match state {
        "running" => None,
        other => Some(format!("state is {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn result(status: CheckStatus, code: Option<u16>, body: Option<&str>) -> CheckResult {
        CheckResult {
            status,
            code,
            duration: Duration::ZERO,
            info: None,
            patroni: body.and_then(|b| PatroniInfo::parse(b.as_bytes())),
            finished_at: SystemTime::now(),
        }
    }

    #[test]
    fn the_member_name_is_read_from_patronis_own_object() {
        // Patroni 4.1.5's GET / body ends with `"patroni": {"version", "scope", "name"}`: the name
        // is what the leader key holds when this node leads (the ride-through's mapping).
        let body = br#"{"state":"running","role":"primary","timeline":3,
            "patroni":{"version":"4.1.5","scope":"postgres","name":"postgresql1"}}"#;
        let info = PatroniInfo::parse(body).unwrap();
        assert_eq!(info.member.as_deref(), Some("postgresql1"));
        for odd in [
            r#"{"patroni":{"version":"3.0.0"}}"#,
            r#"{"patroni":{"name":""}}"#,
            r#"{"patroni":{"name":7}}"#,
            r#"{"patroni":"x"}"#,
        ] {
            assert_eq!(
                PatroniInfo::parse(odd.as_bytes()).unwrap().member,
                None,
                "{odd}"
            );
        }
    }

    #[test]
    fn accepts_master_and_primary() {
        // patroni-and-peers.md §0 item 10: `master` before 4.0, `primary` since.
        for role in ["master", "primary"] {
            let body = format!(r#"{{"state":"running","role":"{role}","timeline":3}}"#);
            let r = result(CheckStatus::L7OK, Some(200), Some(&body));
            assert_eq!(Answer::of(&r), Answer::Primary { timeline: Some(3) });
        }
    }

    #[test]
    fn a_200_from_a_promoting_or_stopping_leader_is_not_primary() {
        // patroni-and-peers.md §1.4 rows 10 and 12.
        let promoting = result(
            CheckStatus::L7OK,
            Some(200),
            Some(r#"{"state":"running","role":"replica","timeline":2}"#),
        );
        assert!(matches!(Answer::of(&promoting), Answer::NotPrimary { .. }));
        let stopping = result(
            CheckStatus::L7OK,
            Some(200),
            Some(r#"{"state":"stopping","role":"primary","timeline":2}"#),
        );
        assert_eq!(
            Answer::of(&stopping),
            Answer::NotPrimary {
                reason: "state is stopping".into()
            }
        );
    }

    #[test]
    fn status_only_answers_follow_the_status() {
        // HEAD/OPTIONS: `HTTP/1.0 200 OK\r\n\r\n` with no body (patroni-and-peers.md §0 item 2).
        assert_eq!(
            Answer::of(&result(CheckStatus::L7OK, Some(200), None)),
            Answer::Primary { timeline: None }
        );
        assert!(matches!(
            Answer::of(&result(CheckStatus::L7STS, Some(503), None)),
            Answer::NotPrimary { .. }
        ));
        for s in [
            CheckStatus::L4CON,
            CheckStatus::L4TOUT,
            CheckStatus::L7TOUT,
            CheckStatus::L7RSP,
            CheckStatus::SOCKERR,
        ] {
            assert_eq!(Answer::of(&result(s, None, None)), Answer::Unknown, "{s}");
        }
    }

    #[test]
    fn wal_positions_replication_state_and_tags_are_read() {
        // patroni-and-peers.md §1.5: `xlog` is `{location}` on a primary and `{received_location,
        // replayed_location, replayed_timestamp, paused}` on a replica.
        let primary = PatroniInfo::parse(
            br#"{"state":"running","role":"primary","timeline":3,"xlog":{"location":50331648}}"#,
        )
        .unwrap();
        assert_eq!(primary.wal.location, Some(50_331_648));
        let replica = PatroniInfo::parse(
            br#"{"state":"running","role":"replica","replication_state":"streaming",
                "xlog":{"received_location":50331648,"replayed_location":50331000,
                "replayed_timestamp":null,"paused":true},"tags":{"noloadbalance":true}}"#,
        )
        .unwrap();
        assert_eq!(
            replica.wal,
            Wal {
                location: None,
                received: Some(50_331_648),
                replayed: Some(50_331_000),
                paused: true
            }
        );
        assert_eq!(replica.replication_state.as_deref(), Some("streaming"));
        assert!(replica.noloadbalance);
        let string_tag =
            PatroniInfo::parse(br#"{"role":"replica","tags":{"noloadbalance":"false"}}"#).unwrap();
        assert!(!string_tag.noloadbalance);
    }

    #[test]
    fn non_json_bodies_are_ignored() {
        assert_eq!(PatroniInfo::parse(b"<html>"), None);
        assert_eq!(PatroniInfo::parse(b"[1,2]"), None);
        let info = PatroniInfo::parse(br#"{"role": 5, "timeline": "x"}"#).unwrap();
        assert_eq!((info.role, info.timeline), (None, None));
    }

    fn answer(code: u16, body: &str) -> Answer {
        let status = if code == 200 {
            CheckStatus::L7OK
        } else {
            CheckStatus::L7STS
        };
        Answer::of(&result(status, Some(code), Some(body)))
    }

    fn not_primary(reason: &str) -> Answer {
        Answer::NotPrimary {
            reason: reason.into(),
        }
    }

    #[test]
    fn the_shared_clusters_primary_and_replica_bodies() {
        // Captured read-only from the shared cluster (Patroni 4.1.5, `GET /` on :8008).
        let primary = r#"{"state": "running", "postmaster_start_time": "2026-12-02 10:09:29.551717+00:00", "role": "primary", "server_version": 150018, "xlog": {"location": 67624696}, "timeline": 3, "replication": [{"usename": "replicator", "application_name": "postgresql0", "client_addr": "127.0.0.1", "state": "streaming", "sync_state": "async", "sync_priority": 0}], "dcs_last_seen": 1796206830, "database_system_identifier": "7714642264685124808", "patroni": {"version": "4.1.5", "scope": "postgres", "name": "postgresql2"}}"#;
        assert_eq!(answer(200, primary), Answer::Primary { timeline: Some(3) });
        let info = PatroniInfo::parse(primary.as_bytes()).unwrap();
        assert!(!info.pause && !info.failsafe_mode_is_active && !info.cluster_unlocked);
        let replica = r#"{"state": "running", "postmaster_start_time": "2026-12-02 10:09:31.931702+00:00", "role": "replica", "server_version": 150018, "xlog": {"received_location": 67624696, "replayed_location": 67624696, "replayed_timestamp": "2026-12-02 10:09:40.586093+00:00", "paused": false}, "timeline": 3, "replication_state": "streaming", "dcs_last_seen": 1796206829, "database_system_identifier": "7714642264685124808", "patroni": {"version": "4.1.5", "scope": "postgres", "name": "postgresql0"}}"#;
        assert_eq!(answer(503, replica), not_primary("HTTP 503"));
    }

    #[test]
    fn a_standby_leader_is_never_a_primary_even_with_a_200() {
        // Issue 14 item 4: "a standby cluster (`standby_leader` is never routed on a primary
        // listener)". Patroni's `/leader` answers 200 for it (§1.4 row 13).
        let body = r#"{"state":"running","role":"standby_leader","timeline":4}"#;
        assert_eq!(
            answer(200, body),
            not_primary("role is standby_leader (standby cluster)")
        );
    }

    #[test]
    fn a_demoted_node_is_not_primary() {
        // Patroni's cached role after releasing the lock, sent while its SQL query fails.
        let body = r#"{"state":"stopping","role":"demoted"}"#;
        assert_eq!(answer(200, body), not_primary("role is demoted"));
    }

    #[test]
    fn a_promoted_node_is_not_primary_until_it_says_primary() {
        // `promoted` is the cached role while `pg_ctl promote` runs and SQL fails; once SQL
        // answers, the body says `primary` (from pg_is_in_recovery()) and the node is routable.
        let body = r#"{"state":"running","role":"promoted"}"#;
        assert_eq!(
            answer(200, body),
            not_primary("role is promoted (promotion not finished)")
        );
    }

    #[test]
    fn an_uninitialized_node_is_not_primary() {
        // Before bootstrap, or after a failed one: nothing to route to.
        let body = r#"{"state":"stopped","role":"uninitialized"}"#;
        assert_eq!(answer(200, body), not_primary("role is uninitialized"));
    }

    #[test]
    fn a_replica_is_not_primary() {
        // Recovery is still on: a replica, or a leader still promoting (§1.4 row 12).
        let body = r#"{"state":"running","role":"replica","timeline":2}"#;
        assert_eq!(answer(200, body), not_primary("role is replica"));
        assert_eq!(answer(503, body), not_primary("HTTP 503"));
    }

    #[test]
    fn a_role_this_proxy_does_not_know_is_not_primary() {
        // A future Patroni role is a decision to make, not a silent "primary".
        let body = r#"{"state":"running","role":"witness"}"#;
        assert_eq!(
            answer(200, body),
            not_primary("role is witness (unknown to this proxy)")
        );
    }

    #[test]
    fn only_the_running_state_is_routable() {
        // PostgresqlState of Patroni 4.1 plus the REST API's `unknown`: only `running` accepts
        // writes dependably (§1.4 rows 5, 10, 11).
        let routable = r#"{"state":"running","role":"primary","timeline":7}"#;
        assert_eq!(answer(200, routable), Answer::Primary { timeline: Some(7) });
        for state in [
            "starting",
            "stopping",
            "restarting",
            "crashed",
            "unknown",
            "stopped",
            "start failed",
            "restart failed",
            "stop failed",
            "creating replica",
            "initializing new cluster",
            "initdb failed",
            "running custom bootstrap script",
            "custom bootstrap failed",
            "starting after custom bootstrap",
        ] {
            let body = format!(r#"{{"state":"{state}","role":"primary","timeline":7}}"#);
            assert_eq!(
                answer(200, &body),
                not_primary(&format!("state is {state}")),
                "{state}"
            );
        }
    }

    #[test]
    fn a_paused_cluster_is_followed_as_an_unpaused_one() {
        // docs/health-checking.md: "pause: true ... we keep following the REST checks; Patroni
        // stops managing roles." The flag is read, and decides nothing.
        let primary = r#"{"state":"running","role":"primary","timeline":3,"pause":true}"#;
        assert_eq!(answer(200, primary), Answer::Primary { timeline: Some(3) });
        let info = PatroniInfo::parse(primary.as_bytes()).unwrap();
        assert!(info.pause);
        let replica = r#"{"state":"running","role":"replica","timeline":3,"pause":true}"#;
        assert_eq!(answer(503, replica), not_primary("HTTP 503"));
    }

    #[test]
    fn a_failsafe_primary_stays_primary_and_says_so() {
        // Issue 14 item 3: "etcd unreachable while the primary's REST answer shows failsafe
        // active is not a reason to stop routing." The body of a Patroni 4.1 primary whose DCS
        // is down, in failsafe mode (api.py get_postgresql_status).
        let body = r#"{"state": "running", "postmaster_start_time": "2026-12-02 09:12:01.1+00:00",
            "role": "primary", "server_version": 150018, "xlog": {"location": 67108864},
            "timeline": 5, "cluster_unlocked": true, "failsafe_mode_is_active": true,
            "dcs_last_seen": 1796203921, "database_system_identifier": "7400000000000000001",
            "patroni": {"version": "4.1.5", "scope": "postgres", "name": "postgresql0"}}"#;
        assert_eq!(answer(200, body), Answer::Primary { timeline: Some(5) });
        let info = PatroniInfo::parse(body.as_bytes()).unwrap();
        assert!(info.failsafe_mode_is_active && info.cluster_unlocked && !info.pause);
        // Flags other than JSON `true` are absent, not errors.
        let odd = PatroniInfo::parse(br#"{"role":"primary","pause":"yes"}"#).unwrap();
        assert!(!odd.pause && !odd.failsafe_mode_is_active);
    }
}
