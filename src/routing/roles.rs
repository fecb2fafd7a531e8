//! Which nodes a listener may hand a new session to, by its role, from the one check answer per
//! node (Patroni's `GET /` body): the rule each role applies, pure. One answer feeds every listener,
//! so a node is checked once per interval however many listeners there are (Patroni's REST API has
//! 5 threads and a backlog of 5). `docs/health-checking.md` compares each rule with the Patroni
//! endpoint of the same purpose (`patroni-and-peers.md` §1.2-1.4).

use crate::health::patroni::PatroniInfo;

/// What a listener routes to (the configuration's `role`).
pub use crate::config::Role;

/// What a non-primary listener asks of a node, beyond its role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rule {
    pub role: Role,
    /// Replicas further behind the primary than this many bytes are left out.
    pub max_lag: Option<u64>,
}

/// Whether `info` (the node's last Patroni body, `None` without one) qualifies it under `rule`;
/// `Err` says why not, for the log and the dashboard. `primary_wal` is the routed primary's flush
/// position from its own last check, the reference for lag (Patroni's `/replica?lag=` compares
/// with the leader's position in the DCS, written about every `loop_wait`: ours is at most one
/// check interval old). `is_routed_primary`: the node is the primary listener's routed primary.
pub fn admits(
    rule: Rule,
    info: Option<&PatroniInfo>,
    primary_wal: Option<u64>,
    is_routed_primary: bool,
) -> Result<(), String> {
    match rule.role {
        // The primary listener has its own machinery (claims, timelines, one primary).
        Role::Primary => match is_routed_primary {
            true => Ok(()),
            false => Err("not the routed primary".into()),
        },
        Role::Any if is_routed_primary => Ok(()),
        Role::Any | Role::Replica => replica(rule, info, primary_wal),
        // Patroni's `/sync` and `/async`: `/replica`'s rule, then the standby's kind from the
        // same body (Patroni reads it from the DCS `/sync` key).
        Role::Sync => {
            replica(rule, info, primary_wal)?;
            match info.is_some_and(|i| i.sync_standby) {
                true => Ok(()),
                false => Err("not a synchronous standby".into()),
            }
        }
        Role::Async => {
            replica(rule, info, primary_wal)?;
            match info.is_some_and(|i| i.sync_standby || i.quorum_standby) {
                false => Ok(()),
                true => Err("a synchronous or quorum standby".into()),
            }
        }
        Role::StandbyLeader => {
            let info = body(info)?;
            running(info)?;
            match info.role.as_deref() {
                Some("standby_leader") => Ok(()),
                other => Err(format!("role is {}", other.unwrap_or("unknown"))),
            }
        }
    }
}

fn body(info: Option<&PatroniInfo>) -> Result<&PatroniInfo, String> {
    // A check answer with no JSON body (a timeout, HEAD/OPTIONS) says nothing about the role.
    info.ok_or_else(|| "no Patroni answer (check.method must be GET)".to_string())
}

fn running(info: &PatroniInfo) -> Result<(), String> {
    match info.state.as_deref() {
        Some("running") => Ok(()),
        other => Err(format!("state is {}", other.unwrap_or("unknown"))),
    }
}

/// Patroni's `/replica` (`role == replica`, `state == running`, no `noloadbalance` tag, within
/// `?lag`), and streaming: a replica replaying from the archive passes `/replica` and flaps in and
/// out while it catches up (patroni#3491); a stream that is running is what users mean.
fn replica(rule: Rule, info: Option<&PatroniInfo>, primary_wal: Option<u64>) -> Result<(), String> {
    let info = body(info)?;
    match info.role.as_deref() {
        Some("replica") => {}
        other => return Err(format!("role is {}", other.unwrap_or("unknown"))),
    }
    running(info)?;
    match info.replication_state.as_deref() {
        Some("streaming") => {}
        Some(other) => return Err(format!("replication is {other}, not streaming")),
        None => return Err("not streaming (no replication_state)".into()),
    }
    if info.noloadbalance {
        return Err("tagged noloadbalance".into());
    }
    if let (Some(max), Some(primary)) = (rule.max_lag, primary_wal) {
        // Patroni measures against the replayed position: what a read sees.
        let replayed = info.wal.replayed.unwrap_or(0);
        let lag = primary.saturating_sub(replayed);
        if lag > max {
            return Err(format!("{lag} bytes behind the primary (max_lag {max})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(body: &str) -> PatroniInfo {
        PatroniInfo::parse(body.as_bytes()).expect("a JSON body")
    }

    const STREAMING: &str = r#"{"state":"running","role":"replica","replication_state":"streaming",
        "xlog":{"received_location":1000,"replayed_location":900,"paused":false},"timeline":2}"#;
    const PRIMARY: &str =
        r#"{"state":"running","role":"primary","xlog":{"location":1000},"timeline":2}"#;
    const REPLICA: Rule = Rule {
        role: Role::Replica,
        max_lag: None,
    };

    #[test]
    fn a_streaming_running_replica_is_a_replica_member() {
        // patroni-and-peers.md §1.3: `/replica` is 200 when "role == replica, state == running, no
        // noloadbalance tag, not lagging".
        assert_eq!(
            admits(REPLICA, Some(&info(STREAMING)), Some(1000), false),
            Ok(())
        );
    }

    #[test]
    fn a_primary_or_a_promoting_node_is_never_a_replica_member() {
        // Issue 13 item 1: "a new connection is never sent to a node that is not in recovery".
        let why = admits(REPLICA, Some(&info(PRIMARY)), None, true).unwrap_err();
        assert_eq!(why, "role is primary");
        for body in [
            r#"{"state":"running","role":"demoted"}"#,
            r#"{"state":"running","role":"promoted"}"#,
            r#"{"state":"running","role":"standby_leader","replication_state":"streaming"}"#,
        ] {
            assert!(
                admits(REPLICA, Some(&info(body)), None, false).is_err(),
                "{body}"
            );
        }
    }

    #[test]
    fn only_a_running_streaming_replica_qualifies() {
        // patroni-and-peers.md §1.4 rows 3-6: starting, restarting, stopped, crashed are 503 on
        // `/replica`; archive recovery passes it and flaps (patroni#3491): we leave it out.
        for (body, why) in [
            (
                r#"{"state":"starting","role":"replica","replication_state":"streaming"}"#,
                "state is starting",
            ),
            (
                r#"{"state":"running","role":"replica","replication_state":"in archive recovery"}"#,
                "replication is in archive recovery, not streaming",
            ),
            (
                r#"{"state":"running","role":"replica"}"#,
                "not streaming (no replication_state)",
            ),
            (
                r#"{"state":"running","role":"replica","replication_state":"streaming",
                   "tags":{"noloadbalance":true}}"#,
                "tagged noloadbalance",
            ),
        ] {
            assert_eq!(
                admits(REPLICA, Some(&info(body)), None, false),
                Err(why.to_string())
            );
        }
        assert!(admits(REPLICA, None, None, false).is_err(), "no answer");
    }

    #[test]
    fn max_lag_compares_the_replayed_position_with_the_primarys() {
        // patroni-and-peers.md §1.3 notes: "Lag is max(DCS last_lsn, latest_end_lsn) -
        // replayed_location", bytes only.
        let rule = Rule {
            role: Role::Replica,
            max_lag: Some(100),
        };
        let replica = info(STREAMING);
        assert_eq!(admits(rule, Some(&replica), Some(1000), false), Ok(()));
        assert_eq!(
            admits(rule, Some(&replica), Some(1001), false),
            Err("101 bytes behind the primary (max_lag 100)".into())
        );
        // No primary position known: nothing to measure against, as Patroni without a DCS value.
        assert_eq!(admits(rule, Some(&replica), None, false), Ok(()));
    }

    #[test]
    fn any_takes_the_routed_primary_or_a_replica() {
        // Patroni's `/read-only`: "/primary or /standby-leader would return 200; otherwise same as
        // /replica".
        let any = Rule {
            role: Role::Any,
            max_lag: None,
        };
        assert_eq!(admits(any, Some(&info(PRIMARY)), None, true), Ok(()));
        assert_eq!(admits(any, Some(&info(STREAMING)), None, false), Ok(()));
        // A node saying primary that is not the routed one (a second claimant): no.
        assert!(admits(any, Some(&info(PRIMARY)), None, false).is_err());
    }

    #[test]
    fn standby_leader_is_a_standby_clusters_leader_only() {
        let rule = Rule {
            role: Role::StandbyLeader,
            max_lag: None,
        };
        let leader = info(r#"{"state":"running","role":"standby_leader"}"#);
        assert_eq!(admits(rule, Some(&leader), None, false), Ok(()));
        assert!(admits(rule, Some(&info(PRIMARY)), None, true).is_err());
        assert!(admits(rule, Some(&info(STREAMING)), None, false).is_err());
    }

    #[test]
    fn sync_and_async_split_the_streaming_replicas_by_the_bodys_sync_standby() {
        // patroni-and-peers.md §1.4: `/sync` is 200 for a node "in the `/sync` key ... and
        // `replica_code == 200`", `/async` for one that "is neither sync nor quorum"; the GET body
        // says which with `sync_standby: true` / `quorum_standby: true` (§1.5).
        let rule = |role| Rule {
            role,
            max_lag: None,
        };
        let sync = STREAMING.replacen('{', r#"{"sync_standby":true,"#, 1);
        let quorum = STREAMING.replacen('{', r#"{"quorum_standby":true,"#, 1);
        let ok = |role, body: &str| admits(rule(role), Some(&info(body)), Some(1000), false);
        assert_eq!(ok(Role::Sync, &sync), Ok(()));
        assert_eq!(
            ok(Role::Sync, STREAMING),
            Err("not a synchronous standby".into())
        );
        assert_eq!(
            ok(Role::Sync, &quorum),
            Err("not a synchronous standby".into())
        );
        assert_eq!(ok(Role::Async, STREAMING), Ok(()));
        assert!(ok(Role::Async, &sync).is_err());
        assert!(ok(Role::Async, &quorum).is_err());
        // Both are replicas first: never the primary, never a lagging one past max_lag.
        assert!(ok(Role::Sync, PRIMARY).is_err());
        assert!(ok(Role::Async, PRIMARY).is_err());
        let lagging = Rule {
            role: Role::Sync,
            max_lag: Some(10),
        };
        assert!(admits(lagging, Some(&info(&sync)), Some(1000), false).is_err());
    }
}
