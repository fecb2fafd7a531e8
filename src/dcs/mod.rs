//! Watches Patroni's leader and failover keys in etcd, through etcd's v3 JSON gateway as Patroni's
//! `etcd3` backend does, to re-check at once instead of waiting for the next poll. It only ever
//! triggers checks or holds new clients: the REST check still confirms `role` and `state` before
//! anything is routed. A broken watch is re-established with backoff; the proxy works without etcd.

pub mod follow;
pub mod parse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::config::Etcd;
use crate::state::{Input, Shared};

/// What we last saw of the two keys; events are sent only on changes.
#[derive(Debug, Default)]
struct Seen {
    leader: Option<String>,
    failover: bool,
}

/// Runs until `stop` is cancelled.
pub async fn watch(cfg: Etcd, shared: Arc<Shared>, stop: CancellationToken) {
    let prefix = cfg.prefix();
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "etcd watch disabled: cannot build an HTTP client");
            stop.cancelled().await;
            return;
        }
    };
    let mut seen = Seen::default();
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0usize;
    loop {
        let endpoint = cfg.endpoints[attempt % cfg.endpoints.len()];
        let r = tokio::select! {
            _ = stop.cancelled() => return,
            r = watch_once(&client, endpoint, &prefix, &mut seen, &shared, &mut backoff) => r,
        };
        let e = r.unwrap_err();
        tracing::warn!(etcd = %endpoint, error = %e, retry_in_ms = backoff.as_millis() as u64,
            "etcd watch interrupted; checks go on at their own pace");
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
        attempt += 1;
    }
}

/// Reads the current keys, then follows changes until the stream breaks (always returns `Err`).
async fn watch_once(
    client: &reqwest::Client,
    endpoint: SocketAddr,
    prefix: &str,
    seen: &mut Seen,
    shared: &Shared,
    backoff: &mut Duration,
) -> Result<(), String> {
    let key = B64.encode(prefix);
    let range_end = B64.encode(prefix_end(prefix));
    let range: Value = client
        .post(format!("http://{endpoint}/v3/kv/range"))
        .json(&json!({ "key": key, "range_end": range_end }))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("range request: {e}"))?
        .error_for_status()
        .map_err(|e| format!("range request: {e}"))?
        .json()
        .await
        .map_err(|e| format!("range answer: {e}"))?;
    let revision: u64 = range["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .ok_or("range answer without a revision")?;
    let mut leader = None;
    let mut failover = false;
    for kv in range["kvs"].as_array().into_iter().flatten() {
        match (decode(&kv["key"]).as_deref(), decode(&kv["value"])) {
            (Some(k), v) if k == format!("{prefix}leader") => leader = v,
            (Some(k), v) if k == format!("{prefix}failover") => {
                failover = is_immediate(v.as_deref())
            }
            _ => {}
        }
    }
    // Changes that happened while we were not watching count too (not on the first read).
    update(seen, shared, Some(leader), Some(failover));

    let mut resp = client
        .post(format!("http://{endpoint}/v3/watch"))
        .json(&json!({ "create_request": {
            "key": key, "range_end": range_end, "start_revision": (revision + 1).to_string()
        }}))
        .send()
        .await
        .map_err(|e| format!("watch request: {e}"))?
        .error_for_status()
        .map_err(|e| format!("watch request: {e}"))?;
    tracing::info!(etcd = %endpoint, prefix, revision, "watching Patroni's keys in etcd");
    *backoff = Duration::from_millis(100);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = resp
            .chunk()
            .await
            .map_err(|e| format!("watch stream: {e}"))?
            .ok_or("watch stream closed by etcd")?;
        buf.extend_from_slice(&chunk);
        // The gateway streams one JSON object per line.
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let msg: Value = match serde_json::from_slice(&line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if msg.get("error").is_some() {
                return Err(format!("watch error: {}", msg["error"]));
            }
            for ev in msg["result"]["events"].as_array().into_iter().flatten() {
                let deleted = ev["type"].as_str() == Some("DELETE");
                let k = decode(&ev["kv"]["key"]).unwrap_or_default();
                let v = if deleted {
                    None
                } else {
                    decode(&ev["kv"]["value"])
                };
                if k == format!("{prefix}leader") {
                    update(seen, shared, Some(v), None);
                } else if k == format!("{prefix}failover") {
                    update(seen, shared, None, Some(is_immediate(v.as_deref())));
                }
            }
        }
    }
}

/// Sends the events implied by new values of the keys.
fn update(
    seen: &mut Seen,
    shared: &Shared,
    leader: Option<Option<String>>,
    failover: Option<bool>,
) {
    if let Some(failover) = failover {
        if failover != seen.failover {
            seen.failover = failover;
            shared.send(if failover {
                Input::SwitchoverRequested
            } else {
                Input::SwitchoverEnded
            });
        }
    }
    if let Some(leader) = leader {
        if leader != seen.leader {
            seen.leader = leader.clone();
            shared.send(Input::LeaderChanged { leader });
        }
    }
}

/// A `failover` key asks for an immediate switchover when it names a leader or a candidate
/// (`member`) and carries no `scheduled_at` time. Patroni clears the request by writing `{}`, not by
/// deleting the key (its `Failover` is empty without leader and member).
fn is_immediate(value: Option<&str>) -> bool {
    let named = |j: &Value, k: &str| {
        j.get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    match value.map(str::trim) {
        None | Some("") => false,
        Some(v) => match serde_json::from_str::<Value>(v) {
            Ok(j) if j.is_object() => {
                (named(&j, "leader") || named(&j, "member"))
                    && j.get("scheduled_at").is_none_or(Value::is_null)
            }
            Ok(_) => false,
            // Patroni's legacy "leader:candidate" text.
            Err(_) => true,
        },
    }
}

fn decode(v: &Value) -> Option<String> {
    let bytes = B64.decode(v.as_str()?).ok()?;
    String::from_utf8(bytes).ok()
}

/// etcd's range end for "every key with this prefix": the prefix with its last byte incremented.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_range_end() {
        let cfg = Etcd {
            endpoints: vec![],
            namespace: "/db/".into(),
            scope: "postgres".into(),
        };
        assert_eq!(cfg.prefix(), "/db/postgres/");
        assert_eq!(prefix_end("/db/postgres/"), b"/db/postgres0");
    }

    #[test]
    fn scheduled_switchovers_are_not_immediate() {
        assert!(is_immediate(Some(
            r#"{"leader":"postgresql0","member":"postgresql1"}"#
        )));
        assert!(!is_immediate(Some(
            r#"{"leader":"postgresql0","scheduled_at":"2026-11-25T22:00:00+00:00"}"#
        )));
        assert!(!is_immediate(None));
    }

    #[test]
    fn a_cleared_failover_key_is_no_request() {
        // Patroni does not delete the key after a switchover: it writes `{}` (seen on the real
        // cluster, tests/e2e.rs). Read as a request, it left the watch believing a switchover was
        // pending forever, so the next real request changed nothing and went unnoticed.
        assert!(!is_immediate(Some("{}")));
        assert!(!is_immediate(Some("")));
        assert!(!is_immediate(Some(r#"{"leader":"","member":null}"#)));
        assert!(is_immediate(Some(r#"{"member":"postgresql1"}"#)));
        // Patroni's legacy "leader:candidate" form.
        assert!(is_immediate(Some("postgresql0:postgresql1")));
    }
}
