//! Reads what etcd's v3 JSON gateway sends, without IO: a range answer ([`parse_range`]) and the
//! watch stream ([`WatchDecoder`]), both bounded in size. Nothing here panics on any input: every
//! byte comes from the network.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

/// The most a range answer may hold. The range covers only Patroni's `failover` .. `leader` keys
/// (with `failsafe`, `history` and `initialize` between them): a few KiB even with a long timeline
/// history. A megabyte is far above that and small enough to hold without a thought.
pub const MAX_RANGE: usize = 1 << 20;

/// The most one watch message (one line) may hold. A watch response carries the events of one
/// revision (one PUT or DELETE of a small key, or a small transaction), a few hundred bytes; the
/// same megabyte as a range answer is far above that.
pub const MAX_WATCH_LINE: usize = 1 << 20;

/// What went wrong with etcd; each one ends the current watch. [`DcsError::stays`] says whether
/// the same endpoint is tried again or the next one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DcsError {
    #[error("range answer over {}", size(*.0))]
    RangeTooLarge(usize),
    #[error("{what} over {}", size(*.cap))]
    TooLarge { what: &'static str, cap: usize },
    #[error("range answer is not the JSON etcd sends: {0}")]
    RangeNotJson(String),
    #[error("range answer without a revision")]
    NoRevision,
    #[error("{0} is not base64")]
    NotBase64(&'static str),
    #[error("watch message longer than {}", size(*.0))]
    LineTooLong(usize),
    #[error("watch message is not the JSON etcd sends: {0}")]
    WatchNotJson(String),
    #[error("etcd answered the watch with an error: {0}")]
    WatchError(String),
    #[error("etcd canceled the watch: {0}")]
    Canceled(String),
    #[error("etcd compacted the revisions the watch needs (compact revision {0})")]
    Compacted(u64),
    #[error("watch stream already failed")]
    Broken,
    #[error("{what}: {error}")]
    Http { what: &'static str, error: String },
    #[error("no answer to the {what} within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("watch stream closed by etcd")]
    Closed,
    #[error("the watch did not show a change etcd reports (revision {0}) within a resync period")]
    Lagging(u64),
    #[error("{0} answer is not the JSON etcd sends: {1}")]
    AnswerNotJson(&'static str, String),
    #[error("etcd refused the token (authenticating again): {0}")]
    Auth(String),
    #[error("etcd refused the user name or password (etcd.username, etcd.password): {0}")]
    Credentials(String),
}

/// The `reason` label of `patroni_proxy_etcd_watch_failures_total`, in the order of
/// [`DcsError::reason`]'s answers.
pub const FAILURE_REASONS: [&str; 8] = [
    "unreachable",
    "silent",
    "oversized",
    "invalid",
    "canceled",
    "closed",
    "compacted",
    "auth",
];

impl DcsError {
    /// A bounded label for the metric (one of [`FAILURE_REASONS`]).
    pub fn reason(&self) -> &'static str {
        use DcsError::*;
        match self {
            Http { .. } => "unreachable",
            Timeout { .. } | Lagging(_) => "silent",
            RangeTooLarge(_) | TooLarge { .. } | LineTooLong(_) => "oversized",
            RangeNotJson(_) | NoRevision | NotBase64(_) | WatchNotJson(_) | Broken
            | AnswerNotJson(..) => "invalid",
            WatchError(_) | Canceled(_) => "canceled",
            Closed => "closed",
            Compacted(_) => "compacted",
            Auth(_) | Credentials(_) => "auth",
        }
    }

    /// Whether the same endpoint is tried again (after the backoff) rather than the next one:
    /// a compacted revision is the watch's problem, not the endpoint's (a fresh read and a watch
    /// from the current revision fix it), and a refused token is fixed by authenticating again.
    pub fn stays(&self) -> bool {
        matches!(self, DcsError::Compacted(_) | DcsError::Auth(_))
    }
}

fn size(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// Peer text in an error message, cut short: serde's messages quote the offending value, which
/// may be a megabyte.
pub(crate) fn clip(text: impl std::fmt::Display) -> String {
    const MAX: usize = 200;
    let text = text.to_string();
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", text.get(..at).unwrap_or_default()),
        None => text,
    }
}

/// What a range read of Patroni's keys says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Keys {
    /// The leader key's value (the leader's member name), `None` without a key.
    pub leader: Option<String>,
    /// The `failover` key asks for an immediate switchover ([`is_immediate`]).
    pub failover: bool,
    /// The store's revision this answer reflects (its header).
    pub revision: u64,
    /// The newest `mod_revision` among the keys read (0 without keys): a watch of the same keys
    /// must show a change at least this recent.
    pub mod_revision: u64,
    /// The leader key's lease (etcd's `lease` field), when it has one.
    pub leader_lease: Option<u64>,
}

// The gateway's JSON (protobuf's JSON mapping: 64-bit numbers are strings, default values are
// left out). Unknown fields are ignored; a known field of the wrong type is an error.
#[derive(Deserialize)]
struct RangeAnswer {
    header: Option<Header>,
    #[serde(default)]
    kvs: Option<Vec<Kv>>,
}

#[derive(Deserialize)]
struct Header {
    revision: Option<Num>,
}

#[derive(Deserialize)]
struct Kv {
    key: Option<String>,
    value: Option<String>,
    mod_revision: Option<Num>,
    lease: Option<Num>,
}

#[derive(Deserialize)]
struct WatchMessage {
    result: Option<WatchResult>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WatchResult {
    header: Option<Header>,
    events: Option<Vec<Event>>,
    canceled: Option<bool>,
    cancel_reason: Option<String>,
    compact_revision: Option<Num>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: Option<String>,
    kv: Option<Kv>,
}

/// A 64-bit number as the gateway writes it (a string), or as a plain JSON number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Num {
    Text(String),
    Number(u64),
}

impl Num {
    fn get(&self) -> Option<u64> {
        match self {
            Num::Text(s) => s.parse().ok(),
            Num::Number(n) => Some(*n),
        }
    }
}

fn revision_of(n: &Option<Num>) -> Option<u64> {
    n.as_ref().and_then(Num::get)
}

/// The key names this watcher cares about, as bytes (etcd keys are bytes, not text).
#[derive(Debug, Clone)]
struct Names {
    leader: Vec<u8>,
    failover: Vec<u8>,
}

impl Names {
    fn new(prefix: &str) -> Self {
        Self {
            leader: format!("{prefix}leader").into_bytes(),
            failover: format!("{prefix}failover").into_bytes(),
        }
    }
}

fn key_of(kv: &Kv) -> Result<Vec<u8>, DcsError> {
    B64.decode(kv.key.as_deref().unwrap_or_default())
        .map_err(|_| DcsError::NotBase64("a key"))
}

/// A value as text; Patroni writes UTF-8, anything else is shown lossily rather than refused (one
/// odd value must not stop the watch for good).
fn value_of(kv: &Kv) -> Result<Option<String>, DcsError> {
    kv.value
        .as_deref()
        .map(|v| {
            B64.decode(v)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .map_err(|_| DcsError::NotBase64("a value"))
        })
        .transpose()
}

/// Reads a `/v3/kv/range` answer over the keys from `{prefix}failover` to `{prefix}leader`.
pub fn parse_range(body: &[u8], prefix: &str) -> Result<Keys, DcsError> {
    if body.len() > MAX_RANGE {
        return Err(DcsError::RangeTooLarge(MAX_RANGE));
    }
    let answer: RangeAnswer =
        serde_json::from_slice(body).map_err(|e| DcsError::RangeNotJson(clip(e)))?;
    let revision = answer
        .header
        .as_ref()
        .and_then(|h| revision_of(&h.revision))
        .ok_or(DcsError::NoRevision)?;
    let names = Names::new(prefix);
    let mut keys = Keys {
        revision,
        ..Keys::default()
    };
    for kv in answer.kvs.iter().flatten() {
        let key = key_of(kv)?;
        keys.mod_revision = keys
            .mod_revision
            .max(revision_of(&kv.mod_revision).unwrap_or(0));
        if key == names.leader {
            keys.leader = value_of(kv)?;
            keys.leader_lease = revision_of(&kv.lease).filter(|l| *l != 0);
        } else if key == names.failover {
            keys.failover = is_immediate(value_of(kv)?.as_deref());
        }
    }
    Ok(keys)
}

/// What the watch stream said, in the order it said it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The leader key was written (`Some` member name) or deleted (`None`), at `revision` (the
    /// event's `mod_revision`, when etcd gave one).
    Leader {
        leader: Option<String>,
        revision: Option<u64>,
    },
    /// The `failover` key was written or deleted: `immediate` when it now asks for an immediate
    /// switchover.
    Failover {
        immediate: bool,
        revision: Option<u64>,
    },
    /// A message was read: the watch is alive and has shown everything up to `revision` (its
    /// header's; 0 without one). Every message ends with one, so a progress notification (a
    /// header and no events) and the creation answer are one too.
    Progress { revision: u64 },
}

/// Splits the watch stream into lines (the gateway writes one JSON message per line) and reads
/// each one, holding at most one unfinished line of at most `max_line` bytes.
#[derive(Debug)]
pub struct WatchDecoder {
    names: Names,
    max_line: usize,
    /// The start of an unfinished line. Its bytes were already searched for a line end, so the
    /// search only ever looks at new bytes: feeding costs the size of the chunk, not of the line.
    partial: Vec<u8>,
    broken: bool,
}

impl WatchDecoder {
    pub fn new(prefix: &str) -> Self {
        Self::with_max_line(prefix, MAX_WATCH_LINE)
    }

    /// With another cap on one line (tests use a small one).
    pub fn with_max_line(prefix: &str, max_line: usize) -> Self {
        Self {
            names: Names::new(prefix),
            max_line,
            partial: Vec::new(),
            broken: false,
        }
    }

    /// Bytes held for an unfinished line (never over the cap).
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Reads the next bytes of the stream. An error ends the stream: the decoder drops what it
    /// holds and answers [`DcsError::Broken`] from then on, and the changes read before the error
    /// in the same chunk are not returned (the next watch starts with a fresh read of the keys).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Change>, DcsError> {
        if self.broken {
            return Err(DcsError::Broken);
        }
        let r = self.lines(chunk);
        if r.is_err() {
            self.broken = true;
            self.partial = Vec::new();
        }
        r
    }

    fn lines(&mut self, chunk: &[u8]) -> Result<Vec<Change>, DcsError> {
        let mut changes = Vec::new();
        let mut rest = chunk;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let (head, tail) = rest.split_at(end);
            rest = tail.get(1..).unwrap_or_default();
            if self.partial.len().saturating_add(head.len()) > self.max_line {
                return Err(DcsError::LineTooLong(self.max_line));
            }
            if self.partial.is_empty() {
                self.message(head, &mut changes)?;
            } else {
                self.partial.extend_from_slice(head);
                let line = std::mem::take(&mut self.partial);
                self.message(&line, &mut changes)?;
            }
        }
        if self.partial.len().saturating_add(rest.len()) > self.max_line {
            return Err(DcsError::LineTooLong(self.max_line));
        }
        self.partial.extend_from_slice(rest);
        Ok(changes)
    }

    fn message(&self, line: &[u8], changes: &mut Vec<Change>) -> Result<(), DcsError> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let msg: WatchMessage =
            serde_json::from_slice(line).map_err(|e| DcsError::WatchNotJson(clip(e)))?;
        if let Some(e) = msg.error {
            let text = e.get("message").and_then(Value::as_str).map(clip);
            return Err(DcsError::WatchError(text.unwrap_or_else(|| clip(e))));
        }
        let Some(result) = msg.result else {
            return Err(DcsError::WatchNotJson(
                "neither a result nor an error".into(),
            ));
        };
        if let Some(c) = revision_of(&result.compact_revision).filter(|c| *c > 0) {
            return Err(DcsError::Compacted(c));
        }
        if result.canceled == Some(true) {
            let reason = result.cancel_reason.as_deref().unwrap_or("no reason given");
            // etcd with authentication cancels a watch whose token it does not know:
            // "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token".
            if super::answers::is_token_problem(reason) {
                return Err(DcsError::Auth(clip(reason)));
            }
            return Err(DcsError::Canceled(clip(reason)));
        }
        for ev in result.events.iter().flatten() {
            let Some(kv) = &ev.kv else { continue };
            let key = key_of(kv)?;
            let deleted = ev.kind.as_deref() == Some("DELETE");
            let value = if deleted { None } else { value_of(kv)? };
            let revision = revision_of(&kv.mod_revision);
            if key == self.names.leader {
                changes.push(Change::Leader {
                    leader: value,
                    revision,
                });
            } else if key == self.names.failover {
                changes.push(Change::Failover {
                    immediate: is_immediate(value.as_deref()),
                    revision,
                });
            }
        }
        let revision = result
            .header
            .as_ref()
            .and_then(|h| revision_of(&h.revision))
            .unwrap_or(0);
        changes.push(Change::Progress { revision });
        Ok(())
    }
}

/// A `failover` key asks for an immediate switchover when it names a leader or a candidate
/// (`member`) and carries no `scheduled_at` time. Patroni clears the request by writing `{}`, not by
/// deleting the key (its `Failover` is empty without leader and member).
pub fn is_immediate(value: Option<&str>) -> bool {
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

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
