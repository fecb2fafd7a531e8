//! The TLS layer of a check (HAProxy's `check-ssl`): the handshake between the connect and the
//! HTTP request, and what a TLS failure says, in HAProxy's vocabulary (`L6RSP` for a handshake
//! that failed, `L6TOUT` for one that did not finish within `timeout check`) with the
//! certificate problem named (expired, unknown issuer, name mismatch, client certificate
//! required or refused). The client configuration itself is built with the config
//! ([`crate::config::tls`]).

use std::io;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::check::{os_error_text, Verdict};
use super::CheckStatus;
use crate::config::tls::CheckTls;

/// Runs the handshake on `stream` until `deadline`; a failure is the check's verdict.
pub async fn handshake(
    stream: TcpStream,
    tls: &CheckTls,
    target: IpAddr,
    deadline: Instant,
) -> Result<TlsStream<TcpStream>, Verdict> {
    let connector = TlsConnector::from(tls.client.clone());
    match timeout_at(deadline, connector.connect(tls.server_name(target), stream)).await {
        Ok(Ok(s)) => Ok(s),
        Err(_) => Err(Verdict::bare(CheckStatus::L6TOUT, None)),
        Ok(Err(e)) => Err(Verdict::bare(
            CheckStatus::L6RSP,
            Some(failure(&e).unwrap_or_else(|| handshake_io_text(&e))),
        )),
    }
}

/// A socket error in the middle of the handshake: the server hung up on it, or reset it.
fn handshake_io_text(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        "connection closed during the TLS handshake".into()
    } else {
        format!("TLS handshake: {}", os_error_text(e))
    }
}

/// The reason of a TLS failure carried by an IO error (tokio-rustls wraps rustls' error in it),
/// or `None` when `e` is a plain socket error.
pub fn failure(e: &io::Error) -> Option<String> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map(reason)
}

/// What went wrong, for the check's info: the certificate problem, or what the server said.
pub fn reason(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => certificate(c),
        rustls::Error::AlertReceived(alert) => alert_received(*alert),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "not a TLS answer ({e}): is the REST API served over HTTPS (Patroni's \
             `restapi.certfile`)?"
        ),
        other => format!("TLS error: {other}"),
    }
}

fn certificate(c: &CertificateError) -> String {
    let server = "server certificate";
    match c {
        CertificateError::Expired => format!("{server} expired"),
        CertificateError::ExpiredContext { not_after, .. } => {
            format!("{server} expired (not after {})", when(*not_after))
        }
        CertificateError::NotValidYet => format!("{server} not valid yet"),
        CertificateError::NotValidYetContext { not_before, .. } => {
            format!("{server} not valid yet (not before {})", when(*not_before))
        }
        CertificateError::UnknownIssuer => {
            format!("{server} signed by an unknown issuer: not by a CA in check.ca_file")
        }
        CertificateError::NotValidForName => {
            format!("{server} not valid for the name checked (check.sni or the check address)")
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "{server} not valid for name {} (it names {}): set check.sni to a name it has",
            name(expected),
            if presented.is_empty() {
                "nothing".into()
            } else {
                presented.join(", ")
            }
        ),
        CertificateError::BadSignature => format!("{server} has a bad signature"),
        CertificateError::Revoked => format!("{server} revoked"),
        other => format!("{server} refused: {other:?}"),
    }
}

fn alert_received(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::CertificateRequired => {
            "the server requires a client certificate: set check.crt (Patroni's \
             `restapi.verify_client`)"
                .into()
        }
        AlertDescription::BadCertificate
        | AlertDescription::UnknownCA
        | AlertDescription::CertificateExpired
        | AlertDescription::CertificateRevoked
        | AlertDescription::CertificateUnknown
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::AccessDenied => {
            format!("the server refused our client certificate (check.crt): alert {alert:?}")
        }
        AlertDescription::HandshakeFailure => "the server ended the handshake (alert \
             HandshakeFailure): it may require a client certificate (check.crt) or share no \
             cipher with us"
            .into(),
        other => format!("the server sent TLS alert {other:?}"),
    }
}

fn name(n: &ServerName<'_>) -> String {
    match n {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

fn when(t: UnixTime) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(t.as_secs());
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
