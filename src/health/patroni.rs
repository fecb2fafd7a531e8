//! Reading Patroni's REST answer: the JSON body's `role`, `state` and `timeline`
//! (`patroni-and-peers.md` §1.5), and what a check result says about "is this node the primary".

use serde::Serialize;

use crate::health::{CheckResult, CheckStatus};

/// The fields of a Patroni health body that routing uses. Missing fields stay `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatroniInfo {
    /// `primary`, `replica`, `standby_leader`, `demoted`, ...; Patroni < 4.0's `master` is stored as
    /// `primary`.
    pub role: Option<String>,
    /// `running`, `starting`, `stopping`, `restarting`, `crashed`, ...
    pub state: Option<String>,
    pub timeline: Option<u64>,
}

impl PatroniInfo {
    /// Parses a body; `None` when it is not a JSON object (HEAD/OPTIONS answers have no body).
    pub fn parse(body: &[u8]) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let obj = v.as_object()?;
        let text = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let role = text("role").map(|r| if r == "master" { "primary".into() } else { r });
        Some(Self {
            role,
            state: text("state"),
            timeline: obj.get("timeline").and_then(|v| v.as_u64()),
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
    fn non_json_bodies_are_ignored() {
        assert_eq!(PatroniInfo::parse(b"<html>"), None);
        assert_eq!(PatroniInfo::parse(b"[1,2]"), None);
        let info = PatroniInfo::parse(br#"{"role": 5, "timeline": "x"}"#).unwrap();
        assert_eq!((info.role, info.timeline), (None, None));
    }
}
