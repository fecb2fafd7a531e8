//! How requests reach etcd: one HTTP client for every endpoint (rustls for `https://` ones,
//! trusting only `ca_file`, presenting `cert_file` when set), etcd's authentication token sent
//! with every request and fetched again when etcd refuses it, and every answer read within a size
//! cap. Time limits are the caller's (`super::REQUEST_TIMEOUT` around each exchange).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use super::answers::{classify_error, parse_token, MAX_SMALL_ANSWER};
use super::parse::{clip, DcsError};
use crate::config::{Etcd, EtcdEndpoint as Endpoint};

pub struct Client {
    http: reqwest::Client,
    /// `(username, password)` when etcd's authentication is configured.
    credentials: Option<(String, String)>,
    /// The token of the last authentication; `None` until the first request, and again after
    /// etcd refused it.
    token: Mutex<Option<String>>,
}

impl Client {
    /// Builds the client, reading the certificate files. The error names the key and the file.
    pub fn new(cfg: &Etcd) -> Result<Self, String> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .use_rustls_tls()
            // etcd's CA is a private one: trust it alone, never the public roots.
            .tls_built_in_root_certs(false);
        if let Some(ca) = &cfg.ca_file {
            let pem = read("etcd.ca_file", ca)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                format!(
                    "etcd.ca_file: {} is not a PEM certificate: {e}",
                    ca.display()
                )
            })?;
            if certs.is_empty() {
                return Err(format!(
                    "etcd.ca_file: {} holds no PEM certificate",
                    ca.display()
                ));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            let mut pem = read("etcd.cert_file", cert)?;
            pem.push(b'\n');
            pem.extend(read("etcd.key_file", key)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                format!(
                    "etcd.cert_file/key_file: {} and {} are not a PEM certificate and its key: {e}",
                    cert.display(),
                    key.display()
                )
            })?;
            b = b.identity(id);
        }
        let http = b
            .build()
            .map_err(|e| format!("etcd: cannot build the HTTP client: {e}"))?;
        Ok(Self {
            http,
            credentials: cfg.username.clone().zip(cfg.password.clone()),
            token: Mutex::new(None),
        })
    }

    /// POSTs `body` to `path` on `endpoint`, with the token when authentication is on
    /// (authenticating first when there is none). A non-2xx answer is an error that says what
    /// etcd said; a refused token is forgotten, so the next request authenticates again.
    pub async fn post(
        &self,
        endpoint: &Endpoint,
        path: &str,
        body: &Value,
        headers: &[(&'static str, &'static str)],
        what: &'static str,
    ) -> Result<reqwest::Response, DcsError> {
        let token = match &self.credentials {
            None => None,
            Some(creds) => Some(self.token_for(endpoint, creds).await?),
        };
        let mut req = self
            .http
            .post(format!("{}{path}", endpoint.url()))
            .json(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = token {
            req = req.header(reqwest::header::AUTHORIZATION, t);
        }
        let resp = req.send().await.map_err(|e| http(what, e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_capped(resp, MAX_SMALL_ANSWER, what)
            .await
            .unwrap_or_default();
        let e = classify_error(what, status.as_u16(), &body);
        if matches!(e, DcsError::Auth(_)) {
            self.forget_token();
        }
        Err(e)
    }

    /// Drops the token (etcd refused it in a watch stream, say): the next request authenticates.
    pub fn forget_token(&self) {
        if let Ok(mut t) = self.token.lock() {
            *t = None;
        }
    }

    async fn token_for(
        &self,
        endpoint: &Endpoint,
        (name, password): &(String, String),
    ) -> Result<String, DcsError> {
        if let Some(t) = self.token.lock().ok().and_then(|t| t.clone()) {
            return Ok(t);
        }
        const WHAT: &str = "authentication";
        let resp = self
            .http
            .post(format!("{}/v3/auth/authenticate", endpoint.url()))
            .json(&json!({ "name": name, "password": password }))
            .send()
            .await
            .map_err(|e| http(WHAT, e))?;
        let status = resp.status();
        let body = read_capped(resp, MAX_SMALL_ANSWER, WHAT).await?;
        if !status.is_success() {
            // Whatever etcd said, a new token is not what fixes a failed authentication.
            return Err(match classify_error(WHAT, status.as_u16(), &body) {
                DcsError::Auth(m) => DcsError::Credentials(m),
                DcsError::Http { error, .. } => DcsError::Credentials(error),
                other => other,
            });
        }
        let token = parse_token(&body)?;
        tracing::info!(etcd = %endpoint, user = name.as_str(), "authenticated to etcd");
        if let Ok(mut t) = self.token.lock() {
            *t = Some(token.clone());
        }
        Ok(token)
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))
}

/// Reads a whole answer, refusing it past `cap` bytes without reading further.
pub async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
    what: &'static str,
) -> Result<Vec<u8>, DcsError> {
    if resp.content_length().unwrap_or(0) > cap as u64 {
        return Err(DcsError::TooLarge { what, cap });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| http(what, e))? {
        if body.len().saturating_add(chunk.len()) > cap {
            return Err(DcsError::TooLarge { what, cap });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub fn http(what: &'static str, e: reqwest::Error) -> DcsError {
    // reqwest's Display hides the cause ("error sending request"); the chain says what failed
    // (refused, TLS certificate unknown, ...).
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    DcsError::Http {
        what,
        error: clip(text),
    }
}
