//! The startup inspector: PostgreSQL's startup conversation seen from the middle, as a state machine
//! fed the bytes each side sent and answering what to do with them (sans-IO: no socket, no clock;
//! `proxy::startup` is its driver). It watches the server's replies until the first ReadyForQuery for
//! what only that moment shows: a server that is shutting down or starting up (the client's startup
//! is replayed on another server), one that closed before answering (replayed too), a standby
//! (refused), and the server's own answer to this client (passed on, never held against the server).
//!
//! The rules, in the order a conversation meets them:
//! - The client's first message decides: an SSLRequest or GSSENCRequest waits for the server's one
//!   byte, a complete StartupMessage starts the inspection, a CancelRequest or anything that is not
//!   PostgreSQL is relayed as it is.
//! - A lone `N` declines encryption: passed on, and the StartupMessage follows in clear. Any other
//!   answer (`S`, `G`, ...) starts TLS or GSS: relayed from there on.
//! - The server's replies are read message by message; all the complete ones read so far are passed
//!   on in one write (a server's answer to a StartupMessage is a dozen and a half messages in one
//!   packet, and a write each cost 22 `sendto` per connection where HAProxy makes 7).
//! - 57P01/57P02/57P03 before any Authentication message: the server is leaving, replay elsewhere.
//! - Any other ErrorResponse is the server's answer to this client (wrong password, pg_hba reject,
//!   too many connections): passed on, and the session ends by itself.
//! - `in_hot_standby = on`: refuse, the server is a standby.
//! - The first Authentication message commits the client to this server: nothing is replayed after.
//! - ReadyForQuery, or bytes that are not PostgreSQL: relay from here.
//! - A close before any byte of an answer to the StartupMessage is a server that vanished (replay);
//!   after one, it is that server's answer to this client.

use super::{classify, frame, parameter_status, sqlstate, FirstMessage, Leaving, NotPostgres};

/// The client's bytes that the current server has not acknowledged yet: its first message(s), kept
/// so they can be forwarded after a hold and replayed on another server.
#[derive(Debug, Default)]
pub struct Pending {
    buf: Vec<u8>,
    /// The server answered something other than a negotiation byte: nothing may be replayed.
    committed: bool,
}

/// What refusing a client takes next, before any server answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Decline its SSLRequest/GSSENCRequest with `N`, then [`Pending::decline`].
    Decline,
    /// A CancelRequest or not PostgreSQL: close without a word.
    Close,
    /// The StartupMessage is complete: answer with the ErrorResponse now.
    Answer,
    /// Wait (briefly) for the rest of the StartupMessage.
    NeedMore,
}

impl Pending {
    /// What the client sent that the server has not acknowledged.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes the client sent while no server was there to take them (a hold).
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Forgets the bytes once a server has them and nothing will be replayed.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// True once a server answered: nothing may be replayed.
    pub fn is_committed(&self) -> bool {
        self.committed
    }

    /// True while the first message is incomplete (worth reading more of during a hold).
    pub fn wants_more(&self) -> bool {
        match classify(&self.buf) {
            FirstMessage::Incomplete => true,
            FirstMessage::Startup { len } => self.buf.len() < len,
            FirstMessage::CancelRequest => self.buf.len() < 16,
            _ => false,
        }
    }

    /// The next step of answering this client with an error of our own.
    pub fn refusal(&self) -> Refusal {
        match classify(&self.buf) {
            FirstMessage::SslRequest | FirstMessage::GssEncRequest => Refusal::Decline,
            FirstMessage::CancelRequest | FirstMessage::Other => Refusal::Close,
            FirstMessage::Startup { len } if self.buf.len() >= len => Refusal::Answer,
            FirstMessage::Incomplete | FirstMessage::Startup { .. } => Refusal::NeedMore,
        }
    }

    /// The encryption request was declined: what follows is the StartupMessage.
    pub fn decline(&mut self) {
        self.buf.drain(..self.buf.len().min(8));
    }

    fn commit(&mut self) {
        self.committed = true;
        self.buf = Vec::new();
    }
}

/// What to do with the bytes the inspector was just given, and what comes next.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict<'a> {
    /// Pass these on first (to the server from [`Inspector::start`], to the client from
    /// [`Inspector::server`]); possibly none.
    pub pass: &'a [u8],
    pub then: Then,
}

/// What comes after a verdict's bytes are passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Keep inspecting; after a [`Inspector::server`] verdict, call [`Inspector::passed_on`].
    Inspect,
    /// Relay the rest of the session as opaque bytes.
    Relay,
    /// The server is leaving (57P01/57P02/57P03 before authentication): replay the client's
    /// startup ([`Pending`]) on another server.
    Replay(Leaving),
    /// The server reported `in_hot_standby = on`: refuse the client.
    Standby,
}

/// What a server's close (or a read error) during the startup means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Before any byte of an answer to the StartupMessage: nothing reached the client, replay.
    Vanished,
    /// The session ends, as the client saw it end.
    Aborted,
}

/// Where the startup conversation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) the client's first message.
    ClientFirst,
    /// SSLRequest/GSSENCRequest sent; the server answers one byte.
    Negotiation,
    /// StartupMessage sent; no Authentication message yet: still replayable.
    Sent,
    /// Authentication under way; watch for ParameterStatus and ReadyForQuery.
    Authenticating,
    /// A verdict other than [`Then::Inspect`] was given: everything is opaque from here.
    Over,
}

/// What passing on the last verdict's bytes changes, applied by [`Inspector::passed_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Passing {
    Nothing,
    /// This many bytes at the front of `from_server`.
    Messages(usize),
    /// The `N` that declined encryption: the client's next message is its StartupMessage.
    Declined,
}

/// One attempt's startup conversation with one server. `pending` outlives it: it carries the
/// client's bytes from a hold to the attempt, and from an attempt to the next one.
#[derive(Debug)]
pub struct Inspector<'p> {
    pending: &'p mut Pending,
    phase: Phase,
    /// The server's bytes read and not yet passed on (an incomplete message), after those of the
    /// last verdict until [`Inspector::passed_on`].
    from_server: Vec<u8>,
    passing: Passing,
    /// Any byte of an answer to the StartupMessage: after it, a close is an answer to this client
    /// (a FATAL it was already sent), not a server going away.
    answered: bool,
    /// What `in_hot_standby` must be: `off` on the primary port (the default), `on` on a replica
    /// listener, either (`None`) on an `any` listener. The other value is [`Then::Standby`].
    want_standby: Option<bool>,
}

impl<'p> Inspector<'p> {
    pub fn new(pending: &'p mut Pending) -> Self {
        Self {
            pending,
            phase: Phase::ClientFirst,
            from_server: Vec::new(),
            passing: Passing::Nothing,
            answered: false,
            want_standby: Some(false),
        }
    }

    /// The same, expecting `in_hot_standby` to be `on` (`Some(true)`), `off`, or either (`None`).
    pub fn expecting(mut self, want_standby: Option<bool>) -> Self {
        self.want_standby = want_standby;
        self
    }

    /// A ParameterStatus `in_hot_standby` that is not what this listener routes to.
    fn wrong_role(&self, msg: &[u8]) -> bool {
        match (parameter_status(msg), self.want_standby) {
            (Some((b"in_hot_standby", value)), Some(want)) => {
                value != if want { &b"on"[..] } else { &b"off"[..] }
            }
            _ => false,
        }
    }

    /// The attempt begins: what the client sent before it (during a hold, or to a server that was
    /// leaving) goes to the server first.
    pub fn start(&mut self) -> Verdict<'_> {
        let then = self.client_first();
        Verdict {
            pass: &self.pending.buf,
            then,
        }
    }

    /// `bytes` from the client, once they were passed on to the server: recorded for a replay
    /// until the server commits the client.
    pub fn client(&mut self, bytes: &[u8]) -> Then {
        self.passed_on();
        if self.phase == Phase::Over {
            return Then::Relay;
        }
        if !self.pending.committed {
            self.pending.buf.extend_from_slice(bytes);
        }
        self.client_first()
    }

    /// `bytes` from the server: what to pass on to the client, and what then.
    pub fn server(&mut self, bytes: &[u8]) -> Verdict<'_> {
        self.passed_on();
        self.from_server.extend_from_slice(bytes);
        self.answered |= matches!(self.phase, Phase::Sent | Phase::Authenticating);
        match self.phase {
            // The server spoke first: not PostgreSQL.
            Phase::ClientFirst | Phase::Over => self.relay(),
            Phase::Negotiation if self.from_server == b"N" => {
                // Encryption declined: the StartupMessage follows in clear.
                self.from_server.clear();
                self.passing = Passing::Declined;
                Verdict {
                    pass: b"N",
                    then: Then::Inspect,
                }
            }
            // TLS or GSS accepted (or something unexpected): opaque from here on.
            Phase::Negotiation => self.relay(),
            Phase::Sent | Phase::Authenticating => self.inspect(),
        }
    }

    /// The verdict's bytes were passed on: drop them, and after a declined encryption request, what
    /// may be replayed is what the client sends next. Called by the driver right after the write,
    /// so that a session abandoned later replays the right bytes; harmless to call twice.
    pub fn passed_on(&mut self) {
        match std::mem::replace(&mut self.passing, Passing::Nothing) {
            Passing::Nothing => {}
            Passing::Messages(n) => {
                self.from_server.drain(..n.min(self.from_server.len()));
            }
            Passing::Declined => {
                self.pending.buf.clear();
                self.phase = Phase::ClientFirst;
            }
        }
    }

    /// The server closed the connection, or reading from it failed.
    pub fn server_closed(&self) -> Closed {
        match self.phase == Phase::Sent && !self.answered {
            true => Closed::Vanished,
            false => Closed::Aborted,
        }
    }

    /// Re-derives the phase from what the client has sent so far.
    fn client_first(&mut self) -> Then {
        if self.phase != Phase::ClientFirst {
            return Then::Inspect;
        }
        match classify(&self.pending.buf) {
            FirstMessage::SslRequest | FirstMessage::GssEncRequest => {
                self.phase = Phase::Negotiation
            }
            FirstMessage::Startup { len } if self.pending.buf.len() >= len => {
                self.phase = Phase::Sent
            }
            FirstMessage::Incomplete | FirstMessage::Startup { .. } => {}
            FirstMessage::CancelRequest | FirstMessage::Other => {
                self.phase = Phase::Over;
                return Then::Relay;
            }
        }
        Then::Inspect
    }

    /// Everything read from the server goes to the client, and the relay takes over.
    fn relay(&mut self) -> Verdict<'_> {
        self.pending.commit();
        self.phase = Phase::Over;
        self.passing = Passing::Messages(self.from_server.len());
        Verdict {
            pass: &self.from_server,
            then: Then::Relay,
        }
    }

    /// Reads every complete message, up to the first one that decides.
    fn inspect(&mut self) -> Verdict<'_> {
        let mut inspected = 0;
        let decided = loop {
            let rest = self.from_server.get(inspected..).unwrap_or_default();
            let (kind, len) = match frame(rest) {
                Ok(Some(f)) => f,
                Ok(None) => break None,
                Err(NotPostgres) => break Some(Then::Relay),
            };
            let Some(msg) = rest.get(..len) else {
                break None;
            };
            match kind {
                b'E' => {
                    let leaving = sqlstate(msg)
                        .filter(|_| self.phase == Phase::Sent)
                        .and_then(Leaving::from_sqlstate);
                    // Otherwise the server's answer to this client: passed on as it is, never
                    // replayed, never held against the server.
                    break Some(leaving.map_or(Then::Relay, Then::Replay));
                }
                b'S' if self.wrong_role(msg) => break Some(Then::Standby),
                b'R' => {
                    self.phase = Phase::Authenticating;
                    self.pending.commit();
                }
                b'Z' => break Some(Then::Relay),
                _ => {}
            }
            inspected = inspected.saturating_add(len);
        };
        match decided {
            Some(Then::Relay) => self.relay(),
            // The messages before the verdict, exactly what a write per message would have sent.
            then => {
                if then.is_some() {
                    self.phase = Phase::Over;
                }
                let pass = self.from_server.get(..inspected).unwrap_or_default();
                self.passing = Passing::Messages(pass.len());
                Verdict {
                    pass,
                    then: then.unwrap_or(Then::Inspect),
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "startup_tests.rs"]
mod tests;
