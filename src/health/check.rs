//! One HTTP health check against a Patroni REST endpoint, with HAProxy's `option httpchk` semantics
//! (`haproxy-semantics.md` §1.1-1.7): a new TCP connection per check, connect bounded by
//! min(inter, timeout connect), the verdict taken from the status line alone, `timeout check` counted
//! from the established connection. Unlike HAProxy we then read the whole (small) body and close,
//! because Patroni's 5-thread REST server logs a traceback for every client that hangs up early and the
//! body carries the role, state and timeline routing needs.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use crate::patroni::PatroniInfo;

/// HAProxy's check status vocabulary (`check.c check_statuses[]`), restricted to what an HTTP check
/// can produce, plus `INI` for "no check finished yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum CheckStatus {
    INI,
    SOCKERR,
    L4OK,
    L4TOUT,
    L4CON,
    L7OK,
    L7STS,
    L7RSP,
    L7TOUT,
}

impl CheckStatus {
    /// Every status a finished check can have, for metrics that must exist from start-up.
    pub const FINISHED: [CheckStatus; 7] = [
        CheckStatus::SOCKERR,
        CheckStatus::L4TOUT,
        CheckStatus::L4CON,
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
    #[serde(serialize_with = "ser_epoch")]
    pub finished_at: SystemTime,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn ser_epoch<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
    )
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
    pub response_timeout: Duration,
    /// HEAD answers have no body to wait for.
    pub expect_body: bool,
}

impl CheckSpec {
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
            response_timeout,
            expect_body: method != "HEAD",
        }
    }
}

/// Largest response we read. Patroni's GET bodies are 1-3 KiB; anything past this is not Patroni.
const MAX_RESPONSE: usize = 64 * 1024;

/// Runs one check to completion. Never panics and never takes longer than
/// `connect_timeout + response_timeout`.
pub async fn run(target: SocketAddr, spec: &CheckSpec) -> CheckResult {
    let start = Instant::now();
    let finish = |status, code, info: Option<String>, patroni| CheckResult {
        status,
        code,
        duration: start.elapsed(),
        info,
        patroni,
        finished_at: SystemTime::now(),
    };

    let mut stream =
        match timeout_at(start + spec.connect_timeout, TcpStream::connect(target)).await {
            Err(_) => return finish(CheckStatus::L4TOUT, None, None, None),
            Ok(Err(e)) => return finish(CheckStatus::L4CON, None, Some(os_error_text(&e)), None),
            Ok(Ok(s)) => s,
        };
    // `timeout check` runs from the established connection (tcpcheck.c resets the expiry there).
    let deadline = Instant::now() + spec.response_timeout;

    match timeout_at(deadline, stream.write_all(&spec.request)).await {
        Err(_) => return finish(CheckStatus::L7TOUT, None, None, None),
        Ok(Err(e)) => return finish(CheckStatus::SOCKERR, None, Some(os_error_text(&e)), None),
        Ok(Ok(())) => {}
    }

    let mut buf = Vec::with_capacity(2048);
    // Phase 1: read until the status line and headers parse.
    let head = loop {
        match timeout_at(deadline, read_more(&mut stream, &mut buf)).await {
            Err(_) => return finish(CheckStatus::L7TOUT, None, None, None),
            Ok(Err(e)) => {
                return finish(CheckStatus::SOCKERR, None, Some(os_error_text(&e)), None);
            }
            Ok(Ok(0)) => {
                // Closed before a complete status line and headers: HAProxy's L7RSP.
                let code = parse_head(&buf).ok().flatten().map(|h| h.code);
                return finish(
                    CheckStatus::L7RSP,
                    code,
                    Some(if buf.is_empty() {
                        "connection closed with no response".into()
                    } else {
                        "incomplete response".into()
                    }),
                    None,
                );
            }
            Ok(Ok(_)) => {}
        }
        match parse_head(&buf) {
            Ok(Some(head)) => break head,
            Ok(None) if buf.len() < MAX_RESPONSE => continue,
            Ok(None) => {
                return finish(
                    CheckStatus::L7RSP,
                    None,
                    Some("response headers too large".into()),
                    None,
                )
            }
            Err(e) => return finish(CheckStatus::L7RSP, None, Some(e), None),
        }
    };
    // The verdict is the status line; HAProxy does not wait for the body.
    let verdict_duration = start.elapsed();
    let (status, info) = if head.code == spec.expect_status {
        (CheckStatus::L7OK, None)
    } else {
        (CheckStatus::L7STS, Some(head.reason.clone()))
    };

    // Phase 2: read the rest of the body (bounded by the same deadline and size) so the server sees
    // an orderly close, then look for Patroni's JSON.
    let mut patroni = None;
    if spec.expect_body {
        let body_done = loop {
            if head
                .content_length
                .is_some_and(|n| buf.len() >= head.body_start + n)
            {
                break true;
            }
            if buf.len() >= MAX_RESPONSE {
                break false;
            }
            match timeout_at(deadline, read_more(&mut stream, &mut buf)).await {
                Ok(Ok(0)) => break true,
                Ok(Ok(_)) => continue,
                Ok(Err(_)) | Err(_) => break false,
            }
        };
        if body_done {
            let end = head
                .content_length
                .map_or(buf.len(), |n| (head.body_start + n).min(buf.len()));
            patroni = PatroniInfo::parse(&buf[head.body_start..end]);
        }
    }
    let mut result = finish(status, Some(head.code), info, patroni);
    result.duration = verdict_duration;
    result
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
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
            let content_length = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse().ok());
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
fn os_error_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_request_is_the_request_line_only() {
        // haproxy-semantics.md §1.1: `OPTIONS / HTTP/1.0\r\n\r\n`, no headers. We default to GET
        // (same answer from Patroni, plus the JSON body).
        let spec = CheckSpec::new(
            "OPTIONS",
            "/",
            "HTTP/1.0",
            200,
            Duration::from_secs(3),
            Duration::from_secs(5),
        );
        assert_eq!(spec.request, b"OPTIONS / HTTP/1.0\r\n\r\n");
        assert_eq!(spec.request.len(), 22);
    }

    #[test]
    fn head_parsing_needs_the_blank_line() {
        assert!(parse_head(b"HTTP/1.0 200 OK\r\n").unwrap().is_none());
        let h = parse_head(b"HTTP/1.0 503 Service Unavailable\r\n\r\n{")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.code, h.reason.as_str(), h.body_start),
            (503, "Service Unavailable", 36)
        );
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn summary_matches_haproxy_lastchk() {
        let r = CheckResult {
            status: CheckStatus::L7STS,
            code: Some(503),
            duration: Duration::from_millis(2),
            info: Some("Service Unavailable".into()),
            patroni: None,
            finished_at: SystemTime::now(),
        };
        assert_eq!(r.summary(), "L7STS/503 in 2ms");
        let r = CheckResult {
            status: CheckStatus::L4CON,
            code: None,
            ..r
        };
        assert_eq!(r.summary(), "L4CON in 2ms");
    }
}
