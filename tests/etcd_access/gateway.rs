//! The fake etcd gateway of `etcd_access.rs`: keys with their lease, leases with a TTL,
//! optional authentication (tokens etcd can forget), a watch that can be compacted or closed at
//! once, over plain TCP or TLS; and a test PKI made by rcgen. Its JSON has the shapes captured
//! from etcd 3.4 (src/dcs/answers.rs quotes them).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

/// A fake etcd gateway: keys (with their lease), leases with a TTL, optional authentication.
pub struct Gateway {
    pub addr: SocketAddr,
    pub s: Arc<State>,
    stop: CancellationToken,
}

#[derive(Default)]
pub struct State {
    /// Key, value, mod_revision, lease.
    keys: Mutex<Vec<(String, String, u64, u64)>>,
    revision: AtomicU64,
    /// Lease id -> (remaining, granted) seconds.
    leases: Mutex<Vec<(u64, i64, i64)>>,
    events: Option<broadcast::Sender<String>>,
    /// Requests by path, with their `Authorization` header.
    requests: Mutex<Vec<(String, Option<String>)>>,
    /// With authentication: the user and password, and the tokens handed out.
    auth: Mutex<Option<(String, String)>>,
    tokens: Mutex<HashSet<String>>,
    issued: AtomicU64,
    /// The next watch is cancelled as compacted.
    pub compact_next: AtomicBool,
    /// Every watch is closed right after its creation answer.
    pub close_watches: AtomicBool,
    /// The watch requests' bodies.
    pub watch_bodies: Mutex<Vec<Value>>,
}

impl Gateway {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    pub async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = Arc::new(State {
            revision: AtomicU64::new(1),
            events: Some(broadcast::channel(64).0),
            ..State::default()
        });
        let stop = CancellationToken::new();
        let (state, stopped) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = stopped.cancelled() => return, // the listener goes: connections are refused
                    c = listener.accept() => c.unwrap().0,
                };
                let (state, stopped) = (state.clone(), stopped.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve(conn, state, stopped).await,
                        Some(cfg) => {
                            if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(conn).await {
                                serve(s, state, stopped).await
                            }
                        }
                    }
                });
            }
        });
        Self { addr, s, stop }
    }

    /// Stops the fake as a killed member stops: open watches end, new connections are refused.
    pub fn kill(&self) {
        self.stop.cancel();
    }

    pub fn count(&self, path: &str) -> usize {
        let r = self.s.requests.lock().unwrap();
        r.iter().filter(|(p, _)| p == path).count()
    }

    pub fn requests(&self) -> Vec<(String, Option<String>)> {
        self.s.requests.lock().unwrap().clone()
    }

    /// Writes `key` attached to `lease` (0: none), as Patroni writes its leader key.
    pub fn put(&self, key: &str, value: &str, lease: u64) {
        let rev = self.s.revision.fetch_add(1, SeqCst) + 1;
        let mut keys = self.s.keys.lock().unwrap();
        keys.retain(|(k, ..)| k != key);
        keys.push((key.into(), value.into(), rev, lease));
        let line = format!(
            r#"{{"result":{{"header":{{"revision":"{rev}"}},"events":[{{"kv":{{"key":"{}","create_revision":"{rev}","mod_revision":"{rev}","version":"1","value":"{}","lease":"{lease}"}}}}]}}}}"#,
            B64.encode(key),
            B64.encode(value)
        );
        let _ = self.s.events.as_ref().unwrap().send(line);
    }

    pub fn grant(&self, id: u64, remaining: i64, granted: i64) {
        let mut l = self.s.leases.lock().unwrap();
        l.retain(|(i, ..)| *i != id);
        l.push((id, remaining, granted));
    }

    pub fn require_auth(&self, user: &str, password: &str) {
        *self.s.auth.lock().unwrap() = Some((user.into(), password.into()));
    }

    /// Every token is forgotten, as when they expire (`--auth-token-ttl`).
    pub fn forget_tokens(&self) {
        self.s.tokens.lock().unwrap().clear();
    }
}

async fn write_chunk<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> std::io::Result<()> {
    s.write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .await?;
    s.write_all(data).await?;
    s.write_all(b"\r\n").await?;
    s.flush().await
}

async fn answer<S: AsyncWrite + Unpin>(s: &mut S, status: &str, json: &str) {
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.flush().await;
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    s: S,
    state: Arc<State>,
    stop: CancellationToken,
) {
    let mut r = BufReader::new(s);
    let mut head = String::new();
    if r.read_line(&mut head).await.unwrap_or(0) == 0 {
        return;
    }
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let (mut len, mut token) = (0, None);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await.unwrap_or(0) == 0 {
            return;
        }
        if h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        if lower.starts_with("authorization:") {
            token = Some(h["authorization:".len()..].trim().to_string());
        }
    }
    let mut body = vec![0u8; len];
    if r.read_exact(&mut body).await.is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut s = r.into_inner();
    state
        .requests
        .lock()
        .unwrap()
        .push((path.clone(), token.clone()));
    let header = format!(
        r#"{{"cluster_id":"7787459613783441930","member_id":"2402861812076439189","revision":"{}","raft_term":"2"}}"#,
        state.revision.load(SeqCst)
    );
    let auth = state.auth.lock().unwrap().clone();
    if path == "/v3/auth/authenticate" {
        let Some((user, password)) = auth else {
            return answer(&mut s, "400 Bad Request", r#"{"error":"etcdserver: authentication is not enabled","message":"etcdserver: authentication is not enabled","code":9}"#).await;
        };
        if body["name"] != user.as_str() || body["password"] != password.as_str() {
            return answer(&mut s, "400 Bad Request", r#"{"error":"etcdserver: authentication failed, invalid user ID or password","message":"etcdserver: authentication failed, invalid user ID or password","code":3}"#).await;
        }
        let t = {
            let mut tokens = state.tokens.lock().unwrap();
            let t = format!(
                "VEZBmDjDcOQoxXzi.{}",
                state.issued.fetch_add(1, SeqCst) + 14
            );
            tokens.insert(t.clone());
            t
        };
        return answer(
            &mut s,
            "200 OK",
            &format!(r#"{{"header":{header},"token":"{t}"}}"#),
        )
        .await;
    }
    // With authentication on, a missing or unknown token is refused as etcd 3.4 refuses it.
    let known = token
        .as_ref()
        .is_some_and(|t| state.tokens.lock().unwrap().contains(t));
    let refused = match (&auth, &token) {
        (None, _) => None,
        (Some(_), None) => Some((
            "400 Bad Request",
            "rpc error: code = InvalidArgument desc = etcdserver: user name is empty",
            r#"{"error":"etcdserver: user name is empty","message":"etcdserver: user name is empty","code":3}"#,
        )),
        (Some(_), Some(_)) if !known => Some((
            "401 Unauthorized",
            "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token",
            r#"{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}"#,
        )),
        _ => None,
    };
    match path.as_str() {
        "/v3/kv/range" | "/v3/lease/timetolive" if refused.is_some() => {
            let (status, _, json) = refused.unwrap();
            answer(&mut s, status, json).await
        }
        "/v3/kv/range" => {
            let kvs: Vec<String> = state
                .keys
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v, rev, lease)| {
                    let lease = match lease {
                        0 => String::new(),
                        l => format!(r#","lease":"{l}""#),
                    };
                    format!(
                        r#"{{"key":"{}","create_revision":"{rev}","mod_revision":"{rev}","version":"1","value":"{}"{lease}}}"#,
                        B64.encode(k),
                        B64.encode(v)
                    )
                })
                .collect();
            let json = format!(
                r#"{{"header":{header},"kvs":[{}],"count":"{}"}}"#,
                kvs.join(","),
                kvs.len()
            );
            answer(&mut s, "200 OK", &json).await
        }
        "/v3/lease/timetolive" => {
            let id: u64 = body["ID"]
                .as_str()
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            let lease = state
                .leases
                .lock()
                .unwrap()
                .iter()
                .find(|(i, ..)| *i == id)
                .copied();
            let json = match lease {
                Some((_, ttl, granted)) if ttl >= 0 => format!(
                    r#"{{"header":{header},"ID":"{id}","TTL":"{ttl}","grantedTTL":"{granted}"}}"#
                ),
                _ => format!(r#"{{"header":{header},"ID":"{id}","TTL":"-1"}}"#),
            };
            answer(&mut s, "200 OK", &json).await
        }
        "/v3/watch" => {
            state.watch_bodies.lock().unwrap().push(body);
            let mut rx = state.events.as_ref().unwrap().subscribe();
            let chunked = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
            if s.write_all(chunked.as_bytes()).await.is_err() {
                return;
            }
            if let Some((_, reason, _)) = refused {
                let line = format!(
                    r#"{{"result":{{"header":{header},"watch_id":"-1","created":true,"canceled":true,"cancel_reason":"{reason}"}}}}"#
                );
                let _ = write_chunk(&mut s, format!("{line}\n").as_bytes()).await;
                let _ = s.write_all(b"0\r\n\r\n").await;
                return;
            }
            let created = format!(r#"{{"result":{{"header":{header},"created":true}}}}"#);
            let _ = write_chunk(&mut s, format!("{created}\n").as_bytes()).await;
            if state.compact_next.swap(false, SeqCst) {
                // Writes elsewhere in the store (member keys) moved the revision on meanwhile.
                let rev = state.revision.fetch_add(5, SeqCst) + 5;
                let line = format!(
                    r#"{{"result":{{"header":{{"cluster_id":"7787459613783441930","member_id":"2402861812076439189","raft_term":"2"}},"canceled":true,"compact_revision":"{rev}"}}}}"#
                );
                let _ = write_chunk(&mut s, format!("{line}\n").as_bytes()).await;
                std::future::pending::<()>().await;
            }
            if state.close_watches.load(SeqCst) {
                let _ = s.write_all(b"0\r\n\r\n").await;
                return;
            }
            loop {
                let line = tokio::select! {
                    _ = stop.cancelled() => return,
                    l = rx.recv() => match l { Ok(l) => l, Err(_) => return },
                };
                if line.is_empty() {
                    return;
                }
                if write_chunk(&mut s, format!("{line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        _ => answer(&mut s, "404 Not Found", r#"{"error":"Not Found","code":5}"#).await,
    }
}

/// A test CA, a server certificate for 127.0.0.1 and a client certificate, all by rcgen.
pub struct Pki {
    dir: tempfile::TempDir,
    pub server: Arc<rustls::ServerConfig>,
}

impl Pki {
    pub fn new(require_client_cert: bool) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "etcd test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = CertificateParams::new(vec!["patroni-proxy".to_string()])
            .unwrap()
            .signed_by(&client_key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
        std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into());
        let builder = rustls::ServerConfig::builder();
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca_cert.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let server = builder
            .with_single_cert(vec![server.der().clone()], key)
            .unwrap();
        Self {
            dir,
            server: Arc::new(server),
        }
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

// Real time: with a paused clock the runtime jumps forward whenever every task waits on a
// socket, and the TLS round trips then met the 3 s request timeout before their answer.
