//! The startup phase of a session: the IO around [`crate::pgwire::startup::Inspector`], which decides. The
//! PostgreSQL startup conversation is passed through, each side's bytes shown to the inspector,
//! until it says to relay, replay the client's startup elsewhere, or refuse a standby.

use std::io;
use std::sync::atomic::Ordering::Relaxed;

use tokio::net::TcpStream;

use super::relay::{self, Meters};
use super::termination::Termination;
use crate::pgwire::startup::{Closed, Inspector, Pending, Then, Verdict};
use crate::pgwire::Leaving;

/// How the startup phase ended.
pub(super) enum Startup {
    /// ReadyForQuery passed, TLS was negotiated, or this is not PostgreSQL: relay the rest as bytes.
    Relay,
    /// The server answered 57P01/57P02/57P03 before authentication: replay elsewhere.
    Leaving(Leaving),
    /// The server reported `in_hot_standby = on`.
    Standby,
    /// The server closed or reset the connection before any reply to the StartupMessage: replay
    /// elsewhere.
    Vanished,
    Done(Termination),
}

/// Passes the startup conversation through, reading the server's replies until ReadyForQuery.
pub(super) async fn startup(
    client: &TcpStream,
    server: &TcpStream,
    pending: &mut Pending,
    meters: &Meters<'_>,
    want_standby: Option<bool>,
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
    let mut inspector = Inspector::new(pending).expecting(want_standby);
    // What was read during the hold (or a previous attempt) goes first.
    let Verdict { pass, then } = inspector.start();
    if !pass.is_empty() {
        if write_all(server, pass).await.is_err() {
            return Startup::Done(Termination::ServerError);
        }
        up(pass.len());
    }
    if then == Then::Relay {
        return Startup::Relay;
    }
    loop {
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
                let bytes = chunk.get(..n).unwrap_or_default();
                if write_all(server, bytes).await.is_err() {
                    return Startup::Done(Termination::ServerError);
                }
                up(n);
                if inspector.client(bytes) == Then::Relay {
                    return Startup::Relay;
                }
            }
            r = server.readable() => {
                // Closed or reset after our StartupMessage and before any reply (a postmaster
                // exiting with connections in its backlog): nothing reached the client, replay.
                let closed = |inspector: &Inspector<'_>| match inspector.server_closed() {
                    Closed::Vanished => Startup::Vanished,
                    Closed::Aborted => Startup::Done(Termination::ServerError),
                };
                if r.is_err() {
                    return closed(&inspector);
                }
                let mut chunk = [0u8; 4096];
                let n = match relay::try_read_drained(server, &mut chunk) {
                    Ok(Some(0)) | Err(_) => return closed(&inspector),
                    Ok(Some(n)) => n,
                    Ok(None) => continue,
                };
                let Verdict { pass, then } = inspector.server(chunk.get(..n).unwrap_or_default());
                if !pass.is_empty() {
                    if write_all(client, pass).await.is_err() {
                        return Startup::Done(Termination::ClientError);
                    }
                    down(pass.len());
                }
                match then {
                    Then::Inspect => inspector.passed_on(),
                    Then::Relay => return Startup::Relay,
                    Then::Replay(code) => return Startup::Leaving(code),
                    Then::Standby => return Startup::Standby,
                }
            }
        }
    }
}

pub(super) async fn write_all(s: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        s.writable().await?;
        match s.try_write(bytes) {
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
