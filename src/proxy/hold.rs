//! The hold phase of a session: waiting for a routable primary while there is none (HAProxy would
//! refuse), reading the client's first message meanwhile so it can be forwarded or answered, and
//! answering a client that cannot be served with a PostgreSQL error of our own.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::startup::write_all;
use super::termination::Termination;
use crate::backend::setup::{Phase, SetupGuard};
use crate::backend::{Borrowed, GaugeGuard};
use crate::pgwire::{
    self,
    startup::{Pending, Refusal},
};
use crate::routing::Claim;
use crate::state::{Route, Shared};

const FAILOVER_MESSAGE: &str =
    "failover in progress: no primary is available right now (patroni-proxy), retry";
const NO_MEMBER_MESSAGE: &str =
    "no server this listener routes to is available right now (patroni-proxy), retry";
const SHUTDOWN_MESSAGE: &str = "patroni-proxy is shutting down, retry";

/// Waits for a routable primary (not `avoid.0` unless confirmed again after snapshot `avoid.1`).
/// Meanwhile reads the client's first message so it can be forwarded, or answered on timeout.
pub(super) async fn hold(
    shared: &Shared,
    route: Route,
    client: &TcpStream,
    deadline: Instant,
    pending: &mut Pending,
    avoid: Option<(usize, u64)>,
    phase: &SetupGuard<'_>,
) -> Result<usize, Termination> {
    let fe = shared.frontend_of(route);
    let mut rx = shared.subscribe();
    let mut holding: Option<GaugeGuard<Borrowed<'_>>> = None;
    loop {
        let usable = {
            let snap = rx.borrow_and_update();
            match route.set() {
                None => snap.primary.filter(|&p| match avoid {
                    Some((a, seq)) if a == p => {
                        matches!(snap.nodes[p].claim, Claim::Primary { seq: s, .. } if s > seq)
                    }
                    _ => true,
                }),
                // Another member than the one that failed this client, while there is one.
                Some(_) => shared.pick(&snap, route, avoid.map(|(a, _)| a)),
            }
        };
        if let Some(p) = usable {
            if holding.is_some() {
                fe.hold_released.fetch_add(1, Relaxed);
            }
            return Ok(p);
        }
        if holding.is_none() {
            if avoid.is_none() {
                fe.no_server.fetch_add(1, Relaxed);
            }
            fe.held.fetch_add(1, Relaxed);
            holding = Some(GaugeGuard::new(&fe.holding, None));
            phase.set(Phase::Holding, None);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                fe.hold_timeouts.fetch_add(1, Relaxed);
                let message = match route.set() {
                    None => FAILOVER_MESSAGE,
                    Some(_) => NO_MEMBER_MESSAGE,
                };
                refuse(client, pending, "57P03", message).await;
                return Err(Termination::HoldTimeout);
            }
            // Shutting down: the checks have stopped, no primary will be confirmed for it.
            _ = shared.draining.cancelled() => {
                refuse(client, pending, "57P03", SHUTDOWN_MESSAGE).await;
                return Err(Termination::Killed);
            }
            // The state owner is gone: the proxy is stopping, no primary will be confirmed.
            r = rx.changed() => if r.is_err() {
                refuse(client, pending, "57P03", SHUTDOWN_MESSAGE).await;
                return Err(Termination::Killed);
            },
            r = client.readable(), if pending.wants_more() => {
                if r.is_err() || !read_into(client, pending)? {
                    return Err(Termination::ClientError);
                }
            }
            // A client that gives up while held must not keep its maxconn place until the hold
            // times out, nor open a backend connection for nobody when it is released.
            _ = hung_up(client), if !pending.wants_more() => return Err(Termination::ClientError),
        }
    }
}

/// Resolves when a held client whose first message is complete closes its side. A PostgreSQL client
/// sends nothing more before the server answers; if one does, its bytes stay in the socket for the
/// server and the watch stops here (peeking again would spin).
async fn hung_up(s: &TcpStream) {
    let mut b = [0u8; 1];
    match s.peek(&mut b).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
}

/// Reads what the socket has into `pending`. `Ok(false)` on end-of-stream.
fn read_into(s: &TcpStream, pending: &mut Pending) -> Result<bool, Termination> {
    let mut chunk = [0u8; 4096];
    match s.try_read(&mut chunk) {
        Ok(0) => Ok(false),
        Ok(n) => {
            pending.push(chunk.get(..n).unwrap_or_default());
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
        Err(_) => Err(Termination::ClientError),
    }
}

/// Answers a client we cannot serve with a PostgreSQL FATAL error (`code`, e.g. 57P03), declining
/// TLS first if it asked for it, so drivers report "failover in progress" rather than a reset.
pub(super) async fn refuse(client: &TcpStream, pending: &mut Pending, code: &str, message: &str) {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        match pending.refusal() {
            Refusal::Decline => {
                if write_all(client, b"N").await.is_err() {
                    return;
                }
                pending.decline();
            }
            Refusal::Close => return,
            Refusal::Answer => break,
            Refusal::NeedMore => {
                // Wait (briefly) for the rest of the startup message; answer anyway after that.
                let more = tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    r = client.readable() => r.is_ok() && matches!(read_into(client, pending), Ok(true)),
                };
                if !more {
                    return;
                }
            }
        }
    }
    let _ = write_all(client, &pgwire::error_response(code, message)).await;
}
