//! TLS for the SQL check's PostgreSQL connection: tokio-postgres negotiates it (`SSLRequest`,
//! `sslmode`) and hands the socket to this connector, which runs the rustls handshake with the
//! client built from `[check.sql]` (`config::sql`). Ours rather than a crate's: it is the small
//! adapter between two crates already here (tokio-rustls, tokio-postgres), and it notes what the
//! check shows (whether TLS was used, why a handshake failed).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};

/// What happened to TLS on one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seen {
    /// Not tried: `disable`, or the server declined it under `prefer`.
    #[default]
    Plain,
    Encrypted,
    /// The handshake failed (the reason, in words).
    Failed(String),
}

/// One connection's connector (tokio-postgres takes it by value).
pub struct Connect {
    pub config: Arc<ClientConfig>,
    /// Verified against the certificate when the config verifies (`ca_file`).
    pub name: ServerName<'static>,
    pub seen: Arc<Mutex<Seen>>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            let outcome = connector.connect(self.name, stream).await;
            let seen = match &outcome {
                Ok(_) => Seen::Encrypted,
                Err(e) => Seen::Failed(
                    super::tls::failure(e).unwrap_or_else(|| format!("TLS handshake: {e}")),
                ),
            };
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
            outcome.map(Stream)
        })
    }
}

/// The encrypted stream tokio-postgres runs the protocol over.
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    /// None: SCRAM-SHA-256 without `-PLUS`. The check's role proves little worth binding to the
    /// channel, and tokio-postgres falls back to plain SCRAM when the stream offers no binding.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
