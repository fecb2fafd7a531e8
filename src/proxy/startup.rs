//! The startup inspection of a session: the PostgreSQL startup conversation passed through while
//! its replies are read, until the backend's first ReadyForQuery, to see what only this moment
//! shows: a server that is shutting down (replay elsewhere), one that vanished before answering,
//! a standby, or the server's own answer to this client (passed on, never held against the server).

use std::io;
use std::sync::atomic::Ordering::Relaxed;

use tokio::net::TcpStream;

use super::relay::{self, Meters};
use super::termination::Termination;
use crate::pgwire::{self, FirstMessage};

/// How the startup phase ended.
pub(super) enum Startup {
    /// ReadyForQuery passed, TLS was negotiated, or this is not PostgreSQL: relay the rest as bytes.
    Relay,
    /// The server answered 57P01/57P02/57P03 before authentication: replay elsewhere.
    Leaving(String),
    /// The server reported `in_hot_standby = on`.
    Standby,
    /// The server closed or reset the connection before any reply to the StartupMessage: replay
    /// elsewhere.
    Vanished,
    Done(Termination),
}

/// Where the startup conversation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) the client's first message.
    ClientFirst,
    /// SSLRequest/GSSENCRequest sent; the server answers one byte.
    Negotiation,
    /// StartupMessage sent; no server reply yet: still replayable.
    Sent,
    /// Authentication under way; watch for ParameterStatus and ReadyForQuery.
    Authenticating,
}

/// Passes the startup conversation through, reading the server's replies until ReadyForQuery.
pub(super) async fn startup(
    client: &TcpStream,
    server: &TcpStream,
    pending: &mut Pending,
    meters: &Meters<'_>,
) -> Startup {
    let up = |n: usize| {
        for m in meters.up {
            m.fetch_add(n as u64, Relaxed);
        }
    };
    let down = |n: usize| {
        for m in meters.down {
            m.fetch_add(n as u64, Relaxed);
        }
    };
    // What was read during the hold (or a previous attempt) goes first.
    if !pending.buf.is_empty() {
        if write_all(server, &pending.buf).await.is_err() {
            return Startup::Done(Termination::ServerError);
        }
        up(pending.buf.len());
    }
    let mut phase = Phase::ClientFirst;
    let mut from_server: Vec<u8> = Vec::new();
    // Any byte of an answer to the StartupMessage: after it, a close is an answer to this client
    // (a FATAL it was already sent), not a server going away.
    let mut answered = false;
    loop {
        // Re-derive the phase from what the client has sent so far.
        if phase == Phase::ClientFirst {
            match pgwire::classify(&pending.buf) {
                FirstMessage::Incomplete => {}
                FirstMessage::SslRequest | FirstMessage::GssEncRequest => {
                    phase = Phase::Negotiation
                }
                FirstMessage::Startup { len } if pending.buf.len() >= len => phase = Phase::Sent,
                FirstMessage::Startup { .. } => {}
                FirstMessage::CancelRequest | FirstMessage::Other => return Startup::Relay,
            }
        }
        tokio::select! {
            r = client.readable() => {
                if r.is_err() {
                    return Startup::Done(Termination::ClientError);
                }
                let mut chunk = [0u8; 4096];
                // A short read clears readiness: no `recv` that only says `EAGAIN` (relay.rs).
                let n = match relay::try_read_drained(client, &mut chunk) {
                    Ok(Some(0)) | Err(_) => return Startup::Done(Termination::ClientError),
                    Ok(Some(n)) => n,
                    Ok(None) => continue,
                };
                if write_all(server, &chunk[..n]).await.is_err() {
                    return Startup::Done(Termination::ServerError);
                }
                up(n);
                if !pending.committed {
                    pending.buf.extend_from_slice(&chunk[..n]);
                }
            }
            r = server.readable() => {
                // Closed or reset after our StartupMessage and before any reply (a postmaster
                // exiting with connections in its backlog): nothing reached the client, replay.
                let vanished = || match phase == Phase::Sent && !answered {
                    true => Startup::Vanished,
                    false => Startup::Done(Termination::ServerError),
                };
                if r.is_err() {
                    return vanished();
                }
                let mut chunk = [0u8; 4096];
                let n = match relay::try_read_drained(server, &mut chunk) {
                    Ok(Some(0)) | Err(_) => return vanished(),
                    Ok(Some(n)) => n,
                    Ok(None) => continue,
                };
                from_server.extend_from_slice(chunk.get(..n).unwrap_or_default());
                answered |= matches!(phase, Phase::Sent | Phase::Authenticating);
                match phase {
                    // The server spoke first: not PostgreSQL.
                    Phase::ClientFirst => {
                        return forward_rest(client, &from_server, &down, pending).await;
                    }
                    Phase::Negotiation => {
                        if from_server[0] == b'N' && from_server.len() == 1 {
                            // TLS declined: the StartupMessage follows in clear.
                            if write_all(client, b"N").await.is_err() {
                                return Startup::Done(Termination::ClientError);
                            }
                            down(1);
                            from_server.clear();
                            pending.buf.clear();
                            phase = Phase::ClientFirst;
                        } else {
                            // TLS (or something unexpected): opaque from here on.
                            return forward_rest(client, &from_server, &down, pending).await;
                        }
                    }
                    Phase::Sent | Phase::Authenticating => {
                        // Inspect every complete message read, then pass them on in one write: a
                        // server's answer to the StartupMessage is a dozen and a half messages in one
                        // packet, and a `send` each cost 22 `sendto` per connection (HAProxy: 7).
                        let mut inspected = 0;
                        let verdict = loop {
                            let (kind, len) = match pgwire::frame(from_server.get(inspected..).unwrap_or_default()) {
                                Ok(Some(f)) => f,
                                Ok(None) => break None,
                                Err(pgwire::NotPostgres) => break Some(Startup::Relay),
                            };
                            let Some(msg) = inspected.checked_add(len).and_then(|end| from_server.get(inspected..end)) else {
                                break None;
                            };
                            match kind {
                                b'E' => {
                                    if let Some(code) = pgwire::sqlstate(msg).filter(|c| phase == Phase::Sent && pgwire::is_server_leaving(c)) {
                                        break Some(Startup::Leaving(code.to_string()));
                                    }
                                    // The server's answer to this client (wrong password, pg_hba
                                    // reject, too many connections): passed on as it is, never
                                    // replayed, never held against the server.
                                    break Some(Startup::Relay);
                                }
                                b'S' if pgwire::parameter_status(msg) == Some((b"in_hot_standby", b"on")) => {
                                    break Some(Startup::Standby);
                                }
                                b'R' => {
                                    phase = Phase::Authenticating;
                                    pending.committed = true;
                                    pending.buf = Vec::new();
                                }
                                // ReadyForQuery: everything from here on is relayed as bytes.
                                b'Z' => break Some(Startup::Relay),
                                _ => {}
                            }
                            inspected += len;
                        };
                        if let Some(Startup::Relay) = verdict {
                            return forward_rest(client, &from_server, &down, pending).await;
                        }
                        // Pass on the messages inspected: all complete ones, or those before a
                        // Leaving/Standby verdict, exactly what a write per message would have sent.
                        if inspected > 0 {
                            if write_all(client, from_server.get(..inspected).unwrap_or_default()).await.is_err() {
                                return Startup::Done(Termination::ClientError);
                            }
                            down(inspected);
                            from_server.drain(..inspected.min(from_server.len()));
                        }
                        if let Some(v) = verdict {
                            return v;
                        }
                    }
                }
            }
        }
    }
}

/// Forwards what was read from the server and switches to the plain relay.
async fn forward_rest(
    client: &TcpStream,
    bytes: &[u8],
    down: &impl Fn(usize),
    pending: &mut Pending,
) -> Startup {
    pending.committed = true;
    pending.buf = Vec::new();
    if write_all(client, bytes).await.is_err() {
        return Startup::Done(Termination::ClientError);
    }
    down(bytes.len());
    Startup::Relay
}

/// The client's bytes that the current server has not acknowledged yet: its first message(s), kept
/// so they can be forwarded after a hold and replayed on another server.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) buf: Vec<u8>,
    /// The server answered something other than a negotiation byte: nothing may be replayed.
    pub(super) committed: bool,
}

impl Pending {
    /// True while the first message is incomplete (worth reading more of during a hold).
    pub(super) fn wants_more(&self) -> bool {
        match pgwire::classify(&self.buf) {
            FirstMessage::Incomplete => true,
            FirstMessage::Startup { len } => self.buf.len() < len,
            FirstMessage::CancelRequest => self.buf.len() < 16,
            _ => false,
        }
    }
}

pub(super) async fn write_all(s: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        s.writable().await?;
        match s.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
