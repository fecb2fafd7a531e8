//! One HTTP health check against a Patroni REST endpoint, with HAProxy's `option httpchk` semantics
//! (`haproxy-semantics.md` §1.1-1.7): a new TCP connection per check, connect bounded by
//! min(inter, timeout connect), the verdict taken from the status line alone, `timeout check` counted
//! from the established connection. Unlike HAProxy we then read the whole (small) body and close,
//! because Patroni's 5-thread REST server logs a traceback for every client that hangs up early and the
//! body carries the role, state and timeline routing needs. With `check.ssl` the TLS handshake
//! ([`super::tls`]) sits between the connect and the request, and counts against `timeout check`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::health::patroni::PatroniInfo;

/// HAProxy's check status vocabulary (`check.c check_statuses[]`), restricted to what an HTTP check
/// (over TLS with `check.ssl`) can produce, plus `INI` for "no check finished yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum CheckStatus {
    INI,
    SOCKERR,
    L4OK,
    L4TOUT,
    L4CON,
    L6TOUT,
    L6RSP,
    L7OK,
    L7STS,
    L7RSP,
    L7TOUT,
}

impl CheckStatus {
    /// Every status a finished check can have, for metrics that must exist from start-up.
    pub const FINISHED: [CheckStatus; 9] = [
        CheckStatus::SOCKERR,
        CheckStatus::L4TOUT,
        CheckStatus::L4CON,
        CheckStatus::L6TOUT,
        CheckStatus::L6RSP,
        CheckStatus::L7OK,
        CheckStatus::L7STS,
        CheckStatus::L7RSP,
        CheckStatus::L7TOUT,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::INI => "INI",
            CheckStatus::SOCKERR => "SOCKERR",
            CheckStatus::L4OK => "L4OK",
            CheckStatus::L4TOUT => "L4TOUT",
            CheckStatus::L4CON => "L4CON",
            CheckStatus::L6TOUT => "L6TOUT",
            CheckStatus::L6RSP => "L6RSP",
            CheckStatus::L7OK => "L7OK",
            CheckStatus::L7STS => "L7STS",
            CheckStatus::L7RSP => "L7RSP",
            CheckStatus::L7TOUT => "L7TOUT",
        }
    }

    /// HAProxy's long description (`check_desc`), used in logs and tooltips.
    pub fn description(self) -> &'static str {
        match self {
            CheckStatus::INI => "Initializing",
            CheckStatus::SOCKERR => "Socket error",
            CheckStatus::L4OK => "Layer4 check passed",
            CheckStatus::L4TOUT => "Layer4 timeout",
            CheckStatus::L4CON => "Layer4 connection problem",
            CheckStatus::L6TOUT => "Layer6 timeout",
            CheckStatus::L6RSP => "Layer6 invalid response",
            CheckStatus::L7OK => "Layer7 check passed",
            CheckStatus::L7STS => "Layer7 wrong status",
            CheckStatus::L7RSP => "Layer7 invalid response",
            CheckStatus::L7TOUT => "Layer7 timeout",
        }
    }

    pub fn passed(self) -> bool {
        matches!(self, CheckStatus::L4OK | CheckStatus::L7OK)
    }

    /// Layer-7 statuses print their HTTP code (`L7STS/503`); others do not.
    pub fn is_layer7(self) -> bool {
        matches!(
            self,
            CheckStatus::L7OK | CheckStatus::L7STS | CheckStatus::L7RSP | CheckStatus::L7TOUT
        )
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one finished check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    pub status: CheckStatus,
    /// HTTP status code when a status line was parsed.
    pub code: Option<u16>,
    /// From the start of the check to the verdict.
    #[serde(serialize_with = "ser_ms")]
    pub duration: Duration,
    /// The reason phrase of a wrong status, or the OS error text (`Connection refused`).
    pub info: Option<String>,
    /// What the body said, when it was a Patroni JSON document.
    pub patroni: Option<PatroniInfo>,
    #[serde(serialize_with = "crate::time::ser_epoch")]
    pub finished_at: SystemTime,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

impl CheckResult {
    /// HAProxy's LastChk cell: `L7STS/503 in 2ms`.
    pub fn summary(&self) -> String {
        match self.code {
            Some(c) if self.status.is_layer7() => {
                format!("{}/{c} in {}ms", self.status, self.duration.as_millis())
            }
            _ => format!("{} in {}ms", self.status, self.duration.as_millis()),
        }
    }
}

/// How to run a check; built once from the config.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    /// The exact request bytes, e.g. `GET / HTTP/1.0\r\n\r\n`.
    pub request: Vec<u8>,
    pub expect_status: u16,
    pub connect_timeout: Duration,
    /// `check.resolve_interval`: how long a host name's address is used before it is resolved
    /// again (read by the checker before each check, so that a reload applies it).
    pub resolve_interval: Duration,
    pub response_timeout: Duration,
    /// HEAD answers have no body to wait for.
    pub expect_body: bool,
    /// With `check.ssl`: the TLS client the check runs over.
    pub tls: Option<crate::config::tls::CheckTls>,
    /// With `[check.sql]`: the SQL check that follows the REST check when due.
    pub sql: Option<crate::config::sql::SqlSpec>,
}

impl CheckSpec {
    /// The check the configuration describes (built again by a reload).
    pub fn of(cfg: &crate::config::Config) -> Self {
        Self {
            tls: cfg.check_tls().cloned(),
            resolve_interval: cfg.check.resolve_interval,
            sql: cfg.sql_check().cloned(),
            ..Self::new(
                cfg.check.method.as_str(),
                &cfg.check.uri,
                cfg.check.version.as_str(),
                cfg.check.expect_status,
                cfg.check_connect_timeout(),
                cfg.check.timeout,
            )
        }
    }

    pub fn new(
        method: &str,
        uri: &str,
        version: &str,
        expect_status: u16,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        // Like HAProxy with HTTP/1.0: the request line alone. With HTTP/1.1 a Host header is
        // mandatory, and Connection: close keeps one request per connection.
        let request = if version == "HTTP/1.1" {
            format!("{method} {uri} {version}\r\nHost: patroni\r\nConnection: close\r\n\r\n")
        } else {
            format!("{method} {uri} {version}\r\n\r\n")
        };
        Self {
            request: request.into_bytes(),
            expect_status,
            connect_timeout,
            resolve_interval: Duration::from_secs(10),
            response_timeout,
            expect_body: method != "HEAD",
            tls: None,
            sql: None,
        }
    }
}

/// Largest response we read. Patroni's GET bodies are 1-3 KiB; anything past this is not Patroni.
const MAX_RESPONSE: usize = 64 * 1024;

/// How a check ended: with a verdict about the node, or with an error of our own (out of file
/// descriptors, memory or local ports) that says nothing about the node and must never be counted
/// against it.
#[derive(Debug)]
pub enum Outcome {
    Finished(Box<CheckResult>),
    Local(io::Error),
}

/// Runs one check to completion. Never panics and never takes longer than
/// `connect_timeout + response_timeout` (a TLS handshake is part of the second).
pub async fn run(target: SocketAddr, spec: &CheckSpec) -> Outcome {
    let start = Instant::now();
    let finish = |v: Verdict| {
        Outcome::Finished(Box::new(CheckResult {
            status: v.status,
            code: v.code,
            duration: start.elapsed(),
            info: v.info,
            patroni: v.patroni,
            finished_at: SystemTime::now(),
        }))
    };

    let connect_by = crate::time::deadline(start, spec.connect_timeout);
    let stream = match timeout_at(connect_by, TcpStream::connect(target)).await {
        Err(_) => return finish(Verdict::bare(CheckStatus::L4TOUT, None)),
        Ok(Err(e)) if crate::net::is_local_resource_error(&e) => return Outcome::Local(e),
        Ok(Err(e)) => return finish(Verdict::bare(CheckStatus::L4CON, Some(os_error_text(&e)))),
        Ok(Ok(s)) => s,
    };
    // `timeout check` runs from the established connection (tcpcheck.c resets the expiry there).
    let deadline = crate::time::deadline(Instant::now(), spec.response_timeout);
    let verdict = match &spec.tls {
        None => exchange(stream, spec, deadline).await,
        Some(tls) => match super::tls::handshake(stream, tls, target.ip(), deadline).await {
            Ok(stream) => exchange(stream, spec, deadline).await,
            Err(v) => v,
        },
    };
    finish(verdict)
}

/// Sends the request and reads the answer, until `deadline`. A TLS alert or error met here (with
/// TLS 1.3 a refused client certificate is only known after the handshake) is the TLS layer's
/// failure, `L6RSP`, not the HTTP answer's.
async fn exchange<S>(mut stream: S, spec: &CheckSpec, deadline: Instant) -> Verdict
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let failed = |e: io::Error| match super::tls::failure(&e) {
        Some(why) => Verdict::bare(CheckStatus::L6RSP, Some(why)),
        None => Verdict::bare(CheckStatus::SOCKERR, Some(os_error_text(&e))),
    };
    match timeout_at(deadline, stream.write_all(&spec.request)).await {
        Err(_) => return Verdict::bare(CheckStatus::L7TOUT, None),
        Ok(Err(e)) => return failed(e),
        Ok(Ok(())) => {}
    }

    // Read until the answer is complete: the status line and headers, and with a body-bearing
    // request the body too (Patroni's 5-thread REST server logs a traceback for every client that
    // hangs up early, and the body is what says role, state and timeline).
    let mut buf = Vec::with_capacity(2048);
    loop {
        let closed = match timeout_at(deadline, read_more(&mut stream, &mut buf)).await {
            Err(_) => return timed_out(&buf, spec.expect_status),
            // A TLS server that closes without close_notify (Python's ssl, so Patroni, does):
            // the end of the answer, as a plain close would be; the HTTP framing still decides
            // whether the answer is complete.
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => true,
            Ok(Err(e)) => return failed(e),
            Ok(Ok(n)) => n == 0,
        };
        if let Parse::Done(v) = parse_answer(&buf, closed, spec.expect_status, spec.expect_body) {
            return v;
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    Ok(n)
}

/// What a check's answer says, before timing is added.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: CheckStatus,
    pub code: Option<u16>,
    pub info: Option<String>,
    pub patroni: Option<PatroniInfo>,
}

impl Verdict {
    pub(super) fn bare(status: CheckStatus, info: Option<String>) -> Self {
        Self {
            status,
            code: None,
            info,
            patroni: None,
        }
    }
}

/// The state of an answer read so far.
// A return value consumed at once, never stored or sent: boxing the verdict would only add an
// allocation per check.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Parse {
    /// More bytes can change the verdict.
    NeedMore,
    Done(Verdict),
}

/// Decides a check from the bytes read so far (`closed`: the server has closed its side, nothing
/// more will come). Pure, and total on any input: every length and offset taken from the peer is
/// bounds-checked.
///
/// The status line decides pass or fail as in HAProxy (`haproxy-semantics.md` §1.2). Unlike HAProxy,
/// a body-bearing check (`expect_body`, i.e. GET) passes only when the body is Patroni's status
/// document (a JSON object with a `role`): an answer we cannot read confirms nothing, so a 200 with
/// a truncated, oversized or non-JSON body is `L7RSP`, a failed check, never a reason to route
/// (issue 11 item 10). Status-only checks (HEAD, OPTIONS) have no body and follow the status alone.
pub fn parse_answer(buf: &[u8], closed: bool, expect_status: u16, expect_body: bool) -> Parse {
    let head = match parse_head(buf) {
        Err(e) => return Parse::Done(Verdict::bare(CheckStatus::L7RSP, Some(e))),
        Ok(Some(head)) => head,
        Ok(None) if closed => {
            let info = if buf.is_empty() {
                "connection closed with no response"
            } else {
                "incomplete response"
            };
            return Parse::Done(Verdict::bare(CheckStatus::L7RSP, Some(info.into())));
        }
        Ok(None) if buf.len() >= MAX_RESPONSE => {
            return Parse::Done(Verdict::bare(
                CheckStatus::L7RSP,
                Some("response headers too large".into()),
            ))
        }
        Ok(None) => return Parse::NeedMore,
    };
    let passed = head.code == expect_status;
    let verdict = |status, info, patroni| {
        Parse::Done(Verdict {
            status,
            code: Some(head.code),
            info,
            patroni,
        })
    };
    // A wrong status is a wrong status whatever the body says (it is still read for the role it
    // shows on the dashboard).
    let failed = |patroni| verdict(CheckStatus::L7STS, Some(head.reason.clone()), patroni);
    if !expect_body {
        return if passed {
            verdict(CheckStatus::L7OK, None, None)
        } else {
            failed(None)
        };
    }
    let unreadable = |why: &str| {
        if passed {
            verdict(CheckStatus::L7RSP, Some(why.to_string()), None)
        } else {
            failed(None)
        }
    };
    let received = buf.get(head.body_start..).unwrap_or_default();
    let body = match head.content_length {
        Some(n) if n > MAX_RESPONSE => return unreadable("body over 64 KiB"),
        Some(n) => match received.get(..n) {
            Some(body) => body,
            None if closed => return unreadable("incomplete body"),
            None => return Parse::NeedMore,
        },
        None if received.len() > MAX_RESPONSE => return unreadable("body over 64 KiB"),
        None if closed => received,
        None => return Parse::NeedMore,
    };
    match PatroniInfo::parse(body) {
        Some(info) if passed && info.role.is_none() => {
            unreadable("body is not Patroni's status: no role")
        }
        Some(info) if passed => verdict(CheckStatus::L7OK, None, Some(info)),
        Some(info) => failed(Some(info)),
        None => unreadable("body is not Patroni's status: not a JSON object"),
    }
}

/// The verdict when `timeout check` expires with `buf` read: a wrong status already seen stays a
/// wrong status; anything else is `L7TOUT` (for a passing status, the body never completed).
pub fn timed_out(buf: &[u8], expect_status: u16) -> Verdict {
    match parse_head(buf) {
        Ok(Some(head)) if head.code != expect_status => Verdict {
            status: CheckStatus::L7STS,
            code: Some(head.code),
            info: Some(head.reason),
            patroni: None,
        },
        _ => Verdict::bare(CheckStatus::L7TOUT, None),
    }
}

#[derive(Debug)]
struct Head {
    code: u16,
    reason: String,
    body_start: usize,
    content_length: Option<usize>,
}

/// `Ok(None)` while incomplete; `Err` with a description when the bytes are not an HTTP response.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(body_start)) => {
            let code = resp.code.ok_or("no status code")?;
            let content_length = match resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            {
                None => None,
                // A length that is not a number, or does not fit, is not an answer we can frame.
                Some(h) => Some(
                    std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .ok_or("invalid Content-Length")?,
                ),
            };
            Ok(Some(Head {
                code,
                reason: resp.reason.unwrap_or("").to_string(),
                body_start,
                content_length,
            }))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("invalid HTTP response: {e}")),
    }
}

/// `Connection refused` rather than `Connection refused (os error 111)`, as HAProxy prints strerror.
pub(super) fn os_error_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.split_once(" (os error") {
        Some((text, _)) => text.to_string(),
        None => s,
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
