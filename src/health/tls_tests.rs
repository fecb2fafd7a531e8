//! Checks over TLS against a fake Patroni REST server (a tokio-rustls server) with a CA made in
//! the test by rcgen: each certificate problem is a failed check with HAProxy's `L6RSP` or
//! `L6TOUT` and a reason naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{Check, Verify};
use crate::health::check::{run, CheckSpec, Outcome};
use crate::health::{CheckResult, CheckStatus};

const PRIMARY: &str = r#"{"state": "running", "role": "primary", "timeline": 2}"#;

/// A CA and what it signs, as PEM.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.as_ref().pem()
    }

    /// A leaf for `names` (IP addresses become IP SANs), valid now unless `expired`.
    fn sign(&self, names: &[&str], expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// How the fake REST server ends its answer.
#[derive(Clone, Copy)]
enum Ending {
    /// `Content-Length`, then TLS close_notify.
    Framed,
    /// No length, and the socket closed without close_notify, as Python's `ssl` (Patroni) does.
    BareClose,
}

/// A fake REST server over TLS: answers every connection with Patroni's primary document; with
/// `client_ca`, it requires a client certificate signed by that CA, as `verify_client: required`.
async fn rest_server(leaf: &Leaf, client_ca: Option<&Ca>) -> SocketAddr {
    rest_server_ending(leaf, client_ca, Ending::Framed).await
}

async fn rest_server_ending(leaf: &Leaf, client_ca: Option<&Ca>, ending: Ending) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(certs(&ca.pem()).remove(0)).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(
            certs(&leaf.cert),
            PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut chunk = [0u8; 512];
                while !request.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                match ending {
                    Ending::Framed => {
                        let answer = format!(
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{PRIMARY}",
                            PRIMARY.len()
                        );
                        let _ = tls.write_all(answer.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                    Ending::BareClose => {
                        let answer = format!("HTTP/1.0 200 OK\r\n\r\n{PRIMARY}");
                        let _ = tls.write_all(answer.as_bytes()).await;
                        let _ = tls.flush().await;
                        // Dropped: a FIN with no close_notify before it.
                    }
                }
            });
        }
    });
    addr
}

/// PEM files in a temporary directory, for the config keys to name.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn put(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn tls_check(verify: Verify, ca_file: Option<&Path>) -> Check {
    Check {
        ssl: true,
        verify,
        ca_file: ca_file.map(Path::to_path_buf),
        ..Check::default()
    }
}

/// Runs one GET check with `check`'s TLS settings; `timeout` bounds the handshake and exchange.
async fn check_with(check: &Check, target: SocketAddr, timeout: Duration) -> CheckResult {
    let tls = crate::config::tls::load(check)
        .unwrap_or_else(|e| panic!("{}: {}", e.key, e.message))
        .expect("ssl is on");
    let spec = CheckSpec {
        tls: Some(tls),
        ..CheckSpec::new("GET", "/", "HTTP/1.0", 200, Duration::from_secs(2), timeout)
    };
    match run(target, &spec).await {
        Outcome::Finished(r) => *r,
        Outcome::Local(e) => panic!("local error: {e}"),
    }
}

async fn check(check: &Check, target: SocketAddr) -> CheckResult {
    check_with(check, target, Duration::from_secs(5)).await
}

fn info(r: &CheckResult) -> &str {
    r.info.as_deref().unwrap_or("")
}

#[tokio::test]
async fn a_certificate_from_the_ca_for_the_check_address_passes() {
    // "check-ssl ... verify required ca-file": a certificate the CA signed, naming the address.
    let (ca, files) = (Ca::new("test CA"), Files::new());
    let server = rest_server(&ca.sign(&["127.0.0.1"], false), None).await;
    let ca_file = files.put("ca.pem", &ca.pem());
    let r = check(&tls_check(Verify::Required, Some(&ca_file)), server).await;
    assert_eq!((r.status, r.code), (CheckStatus::L7OK, Some(200)), "{r:?}");
    assert_eq!(r.patroni.unwrap().timeline, Some(2));
}

#[tokio::test]
async fn an_expired_certificate_is_l6rsp_naming_the_expiry() {
    let (ca, files) = (Ca::new("test CA"), Files::new());
    let server = rest_server(&ca.sign(&["127.0.0.1"], true), None).await;
    let ca_file = files.put("ca.pem", &ca.pem());
    let r = check(&tls_check(Verify::Required, Some(&ca_file)), server).await;
    assert_eq!(r.status, CheckStatus::L6RSP, "{r:?}");
    assert!(info(&r).contains("server certificate expired"), "{r:?}");
    assert!(info(&r).contains("2001-01-01"), "{r:?}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_l6rsp_naming_both() {
    let (ca, files) = (Ca::new("test CA"), Files::new());
    let server = rest_server(&ca.sign(&["db1.example"], false), None).await;
    let ca_file = files.put("ca.pem", &ca.pem());
    let r = check(&tls_check(Verify::Required, Some(&ca_file)), server).await;
    assert_eq!(r.status, CheckStatus::L6RSP, "{r:?}");
    assert!(
        info(&r).contains("not valid for name 127.0.0.1") && info(&r).contains("db1.example"),
        "{r:?}"
    );
    // `sni` names what the certificate is for: the same server passes.
    let named = Check {
        sni: Some("db1.example".into()),
        ..tls_check(Verify::Required, Some(&ca_file))
    };
    assert_eq!(check(&named, server).await.status, CheckStatus::L7OK);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_an_unknown_issuer() {
    let (ca, other, files) = (Ca::new("test CA"), Ca::new("other CA"), Files::new());
    let server = rest_server(&other.sign(&["127.0.0.1"], false), None).await;
    let ca_file = files.put("ca.pem", &ca.pem());
    let r = check(&tls_check(Verify::Required, Some(&ca_file)), server).await;
    assert_eq!(r.status, CheckStatus::L6RSP, "{r:?}");
    assert!(info(&r).contains("unknown issuer"), "{r:?}");
}

#[tokio::test]
async fn verify_none_accepts_a_self_signed_certificate_for_any_name() {
    // HAProxy `verify none`: the certificate is not verified at all.
    let own = Ca::new("self-signed");
    let leaf = Leaf {
        cert: own.pem(),
        key: own.issuer.key().serialize_pem(),
    };
    let server = rest_server(&leaf, None).await;
    let r = check(&tls_check(Verify::None, None), server).await;
    assert_eq!(r.status, CheckStatus::L7OK, "{r:?}");
}

#[tokio::test]
async fn a_server_that_requires_a_client_certificate_refuses_a_check_without_one() {
    // Patroni `restapi.verify_client: required`.
    let (ca, files) = (Ca::new("test CA"), Files::new());
    let server = rest_server(&ca.sign(&["127.0.0.1"], false), Some(&ca)).await;
    let ca_file = files.put("ca.pem", &ca.pem());
    let r = check(&tls_check(Verify::Required, Some(&ca_file)), server).await;
    assert_eq!(r.status, CheckStatus::L6RSP, "{r:?}");
    assert!(info(&r).contains("requires a client certificate"), "{r:?}");

    // `crt` and `key` in two files, or the key appended to the certificate as HAProxy's `crt`.
    let client = ca.sign(&["patroni-proxy"], false);
    let separate = Check {
        crt: Some(files.put("client.crt", &client.cert)),
        key: Some(files.put("client.key", &client.key)),
        ..tls_check(Verify::Required, Some(&ca_file))
    };
    let r = check(&separate, server).await;
    assert_eq!(r.status, CheckStatus::L7OK, "{r:?}");
    let combined = Check {
        crt: Some(files.put("client.pem", &format!("{}{}", client.cert, client.key))),
        ..tls_check(Verify::Required, Some(&ca_file))
    };
    assert_eq!(check(&combined, server).await.status, CheckStatus::L7OK);

    // A client certificate from a CA the server does not trust is refused.
    let stranger = Ca::new("other CA").sign(&["patroni-proxy"], false);
    let refused = Check {
        crt: Some(files.put(
            "stranger.pem",
            &format!("{}{}", stranger.cert, stranger.key),
        )),
        ..tls_check(Verify::Required, Some(&ca_file))
    };
    let r = check(&refused, server).await;
    assert_eq!(r.status, CheckStatus::L6RSP, "{r:?}");
    assert!(info(&r).contains("refused our client certificate"), "{r:?}");
}

#[tokio::test]
async fn a_handshake_that_never_answers_is_l6tout_within_the_check_timeout() {
    // The handshake counts against `timeout check`, as the HTTP exchange does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        // Accepts, then reads the ClientHello and never answers it.
        let (mut s, _) = listener.accept().await.unwrap();
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink).await;
    });
    let r = check_with(
        &tls_check(Verify::None, None),
        server,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(r.status, CheckStatus::L6TOUT, "{r:?}");
    assert!(r.duration >= Duration::from_millis(300), "{r:?}");
    held.abort();
}

#[tokio::test]
async fn a_plain_http_server_is_not_a_tls_answer() {
    // `check.ssl` against a REST API without `restapi.certfile`.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut chunk = [0u8; 512];
        let _ = s.read(&mut chunk).await;
        let _ = s
            .write_all(b"HTTP/1.0 400 Bad request\r\nContent-Length: 0\r\n\r\n")
            .await;
    });
    let r = check(&tls_check(Verify::None, None), server).await;
    assert_eq!(r.status, CheckStatus::L6RSP, "{r:?}");
    assert!(info(&r).contains("not a TLS answer"), "{r:?}");
}

#[tokio::test]
async fn a_close_without_close_notify_ends_the_answer() {
    // Python's ssl closes without close_notify: the end of the answer, as a plain close is; the
    // body without a length then ends there and is read whole.
    let (ca, files) = (Ca::new("test CA"), Files::new());
    let leaf = ca.sign(&["127.0.0.1"], false);
    let server = rest_server_ending(&leaf, None, Ending::BareClose).await;
    let ca_file = files.put("ca.pem", &ca.pem());
    let r = check(&tls_check(Verify::Required, Some(&ca_file)), server).await;
    assert_eq!(r.status, CheckStatus::L7OK, "{r:?}");
    assert_eq!(r.patroni.unwrap().timeline, Some(2));
}
