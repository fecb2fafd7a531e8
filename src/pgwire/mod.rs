//! Just enough of the PostgreSQL wire protocol (v3) to fail nicely and to see a standby: classifying a
//! client's first message, framing backend messages during startup, reading an ErrorResponse's
//! SQLSTATE and a ParameterStatus, and writing an ErrorResponse of our own; [`startup`] is the
//! startup inspector built on them. Nothing here allocates per message on the steady-state path: it
//! is only used until the backend's first ReadyForQuery.
//!
//! Why not the `postgres-protocol` crate: its backend parser consumes a `BytesMut` into owned,
//! decoded messages, where the proxy must pass the server's bytes on exactly as they came, in one
//! write, and only needs a message's type, length, SQLSTATE and one ParameterStatus. Framing in
//! place is a dozen lines; the crate would bring its authentication dependencies for nothing.

pub mod startup;

/// Request codes of the untyped first messages (protocol.html "Message Formats").
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// What a client's first message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstMessage {
    /// Fewer bytes than the 8-byte header so far.
    Incomplete,
    /// `SSLRequest`: the server answers one byte, `S` or `N`.
    SslRequest,
    /// `GSSENCRequest`: the server answers `G` or `N`.
    GssEncRequest,
    /// `CancelRequest`: forwarded, no answer.
    CancelRequest,
    /// A protocol 3.x `StartupMessage` of this total length.
    Startup { len: usize },
    /// Not PostgreSQL: relay as opaque bytes.
    Other,
}

/// Largest startup packet PostgreSQL itself accepts (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP: usize = 10_000;

pub fn classify(buf: &[u8]) -> FirstMessage {
    if buf.len() < 8 {
        return FirstMessage::Incomplete;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let code = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    match (len, code) {
        (8, SSL_REQUEST) => FirstMessage::SslRequest,
        (8, GSSENC_REQUEST) => FirstMessage::GssEncRequest,
        (16, CANCEL_REQUEST) => FirstMessage::CancelRequest,
        (9..=MAX_STARTUP, c) if c >> 16 == 3 => FirstMessage::Startup { len },
        _ => FirstMessage::Other,
    }
}

/// The bytes are not a PostgreSQL message stream (an impossible length field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotPostgres;

/// One complete typed backend message at the start of `buf`: its type byte and total length
/// (type byte included). `None` while incomplete.
pub fn frame(buf: &[u8]) -> Result<Option<(u8, usize)>, NotPostgres> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=1 << 24).contains(&len) {
        return Err(NotPostgres);
    }
    Ok((buf.len() > len).then_some((buf[0], len + 1)))
}

/// Iterates the NUL-terminated `code`+`value` fields of an ErrorResponse/NoticeResponse body.
fn fields(body: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = body;
    std::iter::from_fn(move || {
        let (&code, tail) = rest.split_first()?;
        if code == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        let value = &tail[..end];
        rest = &tail[end + 1..];
        Some((code, value))
    })
}

/// The SQLSTATE (`C` field) of an ErrorResponse message (`msg` includes the type byte and length).
pub fn sqlstate(msg: &[u8]) -> Option<&str> {
    fields(msg.get(5..)?)
        .find(|(c, _)| *c == b'C')
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// Name and value of a ParameterStatus message.
pub fn parameter_status(msg: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = msg.get(5..)?;
    let n = body.iter().position(|&b| b == 0)?;
    let rest = &body[n + 1..];
    let v = rest.iter().position(|&b| b == 0)?;
    Some((&body[..n], &rest[..v]))
}

/// An ErrorResponse with severity FATAL, SQLSTATE `code` and `message`, as a server would send it.
pub fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + message.len());
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(tag);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = Vec::with_capacity(body.len() + 5);
    msg.push(b'E');
    msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// SQLSTATEs meaning "this server cannot take connections now": `57P01` admin_shutdown,
/// `57P02` crash_shutdown, `57P03` cannot_connect_now (starting up or shutting down).
pub fn is_server_leaving(code: &str) -> bool {
    Leaving::from_sqlstate(code).is_some()
}

/// Why a server cannot take connections now, as its SQLSTATE says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// `57P01` admin_shutdown.
    AdminShutdown,
    /// `57P02` crash_shutdown.
    CrashShutdown,
    /// `57P03` cannot_connect_now: starting up, shutting down, or in recovery.
    CannotConnectNow,
}

impl Leaving {
    pub fn from_sqlstate(code: &str) -> Option<Self> {
        match code {
            "57P01" => Some(Leaving::AdminShutdown),
            "57P02" => Some(Leaving::CrashShutdown),
            "57P03" => Some(Leaving::CannotConnectNow),
            _ => None,
        }
    }

    pub fn sqlstate(self) -> &'static str {
        match self {
            Leaving::AdminShutdown => "57P01",
            Leaving::CrashShutdown => "57P02",
            Leaving::CannotConnectNow => "57P03",
        }
    }
}

impl std::fmt::Display for Leaving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.sqlstate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn classifies_first_messages() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(classify(&ssl), FirstMessage::SslRequest);
        assert_eq!(classify(&ssl[..5]), FirstMessage::Incomplete);
        let s = startup(&[("user", "postgres")]);
        assert_eq!(classify(&s), FirstMessage::Startup { len: s.len() });
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), FirstMessage::Other);
        let mut gss = ssl;
        gss[7] = 0x30;
        assert_eq!(classify(&gss), FirstMessage::GssEncRequest);
    }

    #[test]
    fn error_response_round_trips() {
        let e = error_response("57P03", "failover in progress");
        assert_eq!(
            frame(&e[..e.len() - 1]).unwrap(),
            None,
            "needs the full message"
        );
        let mut buf = e.clone();
        buf.push(b'Z');
        assert_eq!(frame(&buf).unwrap(), Some((b'E', e.len())));
        assert_eq!(sqlstate(&e), Some("57P03"));
        assert!(is_server_leaving("57P03") && !is_server_leaving("28P01"));
        for code in ["57P01", "57P02", "57P03"] {
            assert_eq!(
                Leaving::from_sqlstate(code).map(Leaving::sqlstate),
                Some(code)
            );
        }
    }

    #[test]
    fn reads_parameter_status() {
        let mut m = vec![b'S'];
        let body = b"in_hot_standby\0on\0";
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        assert_eq!(
            parameter_status(&m),
            Some((&b"in_hot_standby"[..], &b"on"[..]))
        );
    }

    #[test]
    fn rejects_impossible_lengths() {
        assert!(frame(&[b'E', 0, 0, 0, 1]).is_err());
    }
}
