//! Reading Patroni's REST answer: the JSON body's `role`, `state`, `timeline`, WAL positions,
//! `replication_state` and `noloadbalance` tag (`patroni-and-peers.md` §1.5), and what a check
//! result says about "is this node the primary".

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
                if let Some(role) = info.role.as_deref().filter(|r| *r != "primary") {
                    return Answer::NotPrimary {
                        reason: format!("role is {role}"),
                    };
                }
                if let Some(state) = info.state.as_deref().filter(|s| *s != "running") {
                    return Answer::NotPrimary {
                        reason: format!("state is {state}"),
                    };
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
}
