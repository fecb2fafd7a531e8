//! The stats listener (HAProxy's `listen stats` on :7000): the live dashboard, the exports of the one
//! snapshot (`/;csv` in HAProxy's layout, `/stats.json`, `/metrics`), the open sessions
//! (`/sessions`, `/sessions.json`), and `/healthz` / `/ready`.
//!
//! It is read-only and deliberately small: GET and HEAD only, unknown paths are 404 (HAProxy's
//! `stats uri /` answers every path, which hides typos in monitoring URLs), optional Basic auth
//! (`[stats] auth`, HAProxy's `stats auth`) on everything but the two probes, and requests that are
//! malformed, slow or oversized are answered with a 4xx or cut by a timeout in [`server`] so they
//! can never take resources from the primary port. The one exception is `/admin/` (runtime
//! control, [`admin`]): off unless configured, with credentials, checks and small bodies of its own.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{any, get};
use axum::Router;
use base64::Engine as _;

use crate::config::Config;
use crate::dcs::Status as EtcdStatus;
use crate::health::{CheckResult, Transition};
use crate::state::{Observer, Shared};

pub mod admin;
pub mod cells;
pub mod csv;
pub mod dashboard;
pub mod export;
pub mod families;
pub mod history;
pub mod listeners;
pub mod loaded;
pub mod metrics;
pub mod relay;
mod server;
pub mod sessions;
pub mod signals;

pub use server::{serve, serve_moving, Limits, Refusal};

/// The realm of the Basic-auth challenge.
pub const REALM: &str = "patroni-proxy";

/// What the stats side keeps per proxy instance.
#[derive(Debug)]
pub struct Stats {
    /// The Prometheus recorder of this instance and its series (no global one: tests run many
    /// proxies in one process).
    pub metrics: metrics::Metrics,
    /// The configuration file, when the binary loaded one, and the reloads (shown on the
    /// dashboard and in `/stats.json`).
    pub config: loaded::ConfigInfo,
    /// The etcd watch's state: endpoint in use, the leader's lease, failures (written by `dcs`).
    pub etcd: Arc<EtcdStatus>,
    /// The last hour, one sample per second, for the dashboard's pictures (fed by
    /// [`history::sampler`]).
    pub history: Arc<Mutex<history::History>>,
}

impl Stats {
    pub fn new(config: &Config) -> Self {
        Self {
            metrics: metrics::Metrics::new(config),
            config: Default::default(),
            etcd: Arc::new(EtcdStatus::new(config.etcd.as_ref())),
            history: {
                let (nodes, listeners) = history::sampler::names(config);
                Arc::new(Mutex::new(history::History::new(&nodes, &listeners)))
            },
        }
    }
}

/// The state owner tells the metrics of every finished check.
impl Observer for Stats {
    fn check(&self, node: usize, result: &CheckResult, transition: Option<Transition>) {
        self.metrics.observe_check(node, result, transition);
    }

    fn sql(&self, node: usize, result: &crate::health::sql::SqlResult) {
        self.metrics.observe_sql(node, result);
    }

    fn node_added(&self, node: usize, name: &str) {
        self.metrics.add_node(node, name);
    }
}

/// Everything the stats endpoints need.
#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    /// `user:password` from `[stats] auth`, if set.
    credentials: Option<Arc<[u8]>>,
    /// Runtime control, when `[stats] admin_user` is set.
    admin: Option<Arc<admin::Admin>>,
    limits: Limits,
}

/// The stats endpoints.
pub fn router(shared: Arc<Shared>, stats: Arc<Stats>, limits: Limits) -> Router {
    let app = App {
        admin: shared
            .config()
            .admin_credentials()
            .and_then(|(u, p)| admin::Admin::new(u, p))
            .map(Arc::new),
        stats,
        credentials: shared
            .config()
            .stats
            .auth
            .as_deref()
            .map(|a| Arc::from(a.as_bytes())),
        shared,
        limits,
    };
    Router::new()
        .route("/", get(root))
        .route("/stats.json", get(stats_json))
        .route("/metrics", get(prometheus))
        .route("/dashboard/data.json", get(dashboard_data))
        .route("/sessions.json", get(sessions_json))
        .route("/sessions", get(sessions_page))
        .route("/dashboard/pictures", get(dashboard_pictures))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/admin/servers/{name}/{action}", any(admin::action))
        .route("/admin/show", any(admin::show))
        .route(
            "/dashboard/style.css",
            get(|| asset("text/css; charset=utf-8", dashboard::STYLE_CSS)),
        )
        .route(
            "/dashboard/app.js",
            get(|| asset("text/javascript; charset=utf-8", dashboard::APP_JS)),
        )
        .route(
            "/dashboard/favicon.svg",
            get(|| asset("image/svg+xml", dashboard::FAVICON_SVG)),
        )
        .fallback(modifiers)
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Paths that stay open with `[stats] auth`: load balancers and orchestrators probe them without
/// credentials, and they reveal no more than "up" and the primary's name.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/ready"];

/// Read-only, bounded, authenticated: checked before any handler runs.
async fn guard(State(app): State<App>, req: Request, next: Next) -> Response {
    if req.uri().to_string().len() > app.limits.max_uri {
        return closing(plain(StatusCode::URI_TOO_LONG, "URI too long\n"));
    }
    if req.uri().path().starts_with("/admin/") {
        // Runtime control checks its own methods, credentials and bodies (`admin`).
        return with_headers(next.run(req).await);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "read-only: only GET and HEAD are allowed\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return closing(r);
    }
    let headers = req.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body {
        // Never read it: answering and closing is cheaper than draining a slow or huge upload.
        return closing(plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "requests to the stats listener carry no body\n",
        ));
    }
    if let Some(expected) = &app.credentials {
        // The admin credentials open the read-only pages too: one login for the dashboard and
        // its buttons.
        let admin = app.admin.as_ref().is_some_and(|a| a.authorized(headers));
        if !OPEN_PATHS.contains(&req.uri().path()) && !authorized(headers, expected) && !admin {
            let mut r = plain(StatusCode::UNAUTHORIZED, "authentication required\n");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(&format!("Basic realm=\"{REALM}\"")).expect("ASCII"),
            );
            return r;
        }
    }
    with_headers(next.run(req).await)
}

fn with_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// True when the request carries `Authorization: Basic` with exactly the configured credentials.
fn authorized(headers: &axum::http::HeaderMap, expected: &[u8]) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    match base64::engine::general_purpose::STANDARD.decode(encoded.trim()) {
        Ok(given) => constant_time_eq(&given, expected),
        Err(_) => false,
    }
}

/// Compares without an early exit, so the time taken says nothing about how much matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn plain(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// Asks hyper to close the connection after this answer (it will not wait for an unread body).
fn closing(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// HAProxy's URL modifiers, searched in the path (`/;csv`) and, as HAProxy also finds them after
/// the prefix, in the query (`/?;csv`).
#[derive(Debug, Default, PartialEq)]
struct Modifiers {
    csv: bool,
    up: bool,
}

impl Modifiers {
    /// Reads `;`-separated tokens. `strict` (the path) refuses unknown tokens, so a mistyped URL is
    /// a 404 rather than a page that silently is not what was asked for; in the query, unknown
    /// tokens are ignored (cache busters, HAProxy-style `?stats`).
    fn parse(tokens: &str, strict: bool) -> Option<Self> {
        let mut m = Modifiers::default();
        for t in tokens.split(';').filter(|t| !t.is_empty()) {
            match t {
                "csv" => m.csv = true,
                "up" => m.up = true,
                // Only meaningful with HAProxy's `stats refresh`; accepted so old links work.
                "norefresh" => {}
                _ if strict => return None,
                _ => {}
            }
        }
        Some(m)
    }
}

async fn root(State(app): State<App>, uri: Uri) -> Response {
    let m = Modifiers::parse(uri.query().unwrap_or(""), false).unwrap_or_default();
    stats_page(&app, m).await
}

/// `/;csv`, `/;up`, `/;csv;norefresh`...; anything else is 404.
async fn modifiers(State(app): State<App>, uri: Uri) -> Response {
    match uri
        .path()
        .strip_prefix("/;")
        .and_then(|t| Modifiers::parse(t, true))
    {
        Some(m) => stats_page(&app, m).await,
        None => not_found().await,
    }
}

async fn not_found() -> Response {
    plain(
        StatusCode::NOT_FOUND,
        "not found; the stats listener serves /, /;csv, /stats.json, /metrics, /sessions, /sessions.json, /healthz and /ready\n",
    )
}

/// The export model of this instance, with what only the stats side knows.
fn view_of(app: &App) -> export::View {
    let mut view = export::view(&app.shared);
    let info = &app.stats.config;
    if let Some(l) = info.loaded() {
        view.config_path = Some(l.path.display().to_string());
        view.config_sha256 = Some(l.sha256);
        view.config_loaded_at = Some(crate::time::epoch_secs(l.at));
    }
    if app.shared.config().etcd.is_some() {
        view.etcd = Some(app.stats.etcd.view());
    }
    view.reloads = export::Reloads {
        ok: info.reloads_ok.load(std::sync::atomic::Ordering::Relaxed),
        failed: info
            .reloads_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        last_error: info.last_error(),
    };
    view
}

async fn stats_page(app: &App, m: Modifiers) -> Response {
    let mut view = view_of(app);
    if m.csv {
        // HAProxy answers `text/plain` too; spreadsheets and scripts do not need `text/csv`.
        return (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            csv::render(&view, m.up),
        )
            .into_response();
    }
    if m.up {
        view.servers.retain(|s| s.up);
    }
    let forms = app.admin.as_ref().map(|a| {
        let names: Vec<&str> = (view.servers.iter())
            .filter(|s| !s.removed)
            .map(|s| s.name.as_str())
            .collect();
        admin::forms(&names, a.token())
    });
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        dashboard::render_page(
            &view,
            &pictures_of(app, &view).await,
            forms.as_deref().unwrap_or(""),
        ),
    )
        .into_response()
}

/// The timeline and sparklines of the history, as of now. Drawn on the blocking pool from a copy
/// of the rings (their fixed size, ~0.4 MB for 3 nodes): a full hour takes a few milliseconds to
/// draw (2.4 ms in the release build, docs/dashboard.md), and this thread also relays sessions,
/// which must not wait for a dashboard; nor must the sampler wait for the lock.
async fn pictures_of(app: &App, view: &export::View) -> String {
    let now = history::sampler::wall_ms(&app.shared, tokio::time::Instant::now());
    let h = app
        .stats
        .history
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let events = view.events.clone();
    tokio::task::spawn_blocking(move || history::pictures::render(&h, &events, now))
        .await
        .unwrap_or_default()
}

/// `/dashboard/pictures`: the same fragment as on the page, which `app.js` swaps in every second.
async fn dashboard_pictures(State(app): State<App>) -> Response {
    let html = pictures_of(&app, &view_of(&app)).await;
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn stats_json(State(app): State<App>) -> Response {
    Json(view_of(&app)).into_response()
}

async fn dashboard_data(State(app): State<App>) -> Response {
    Json(dashboard::data(&view_of(&app))).into_response()
}

async fn sessions_json(State(app): State<App>, uri: Uri) -> Response {
    match sessions::limit_of(uri.query()) {
        Ok(limit) => Json(sessions::collect(&app.shared, limit)).into_response(),
        Err(e) => plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

async fn sessions_page(State(app): State<App>, uri: Uri) -> Response {
    let limit = match sessions::limit_of(uri.query()) {
        Ok(limit) => limit,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let s = sessions::collect(&app.shared, limit);
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        sessions::html(&s),
    )
        .into_response()
}

async fn prometheus(State(app): State<App>) -> Response {
    let view = view_of(&app);
    let text = app.stats.metrics.render(&view, &app.stats.etcd);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        Body::from(text),
    )
        .into_response()
}

async fn ready(State(app): State<App>) -> Response {
    let shared = &app.shared;
    match shared.current().primary {
        Some(i) => (
            StatusCode::OK,
            format!("primary {}\n", shared.server_name(i)),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no routable primary\n".to_string(),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modifiers_are_haproxys_and_nothing_else() {
        assert_eq!(Modifiers::parse("", true), Some(Modifiers::default()));
        assert_eq!(
            Modifiers::parse("csv;norefresh", true),
            Some(Modifiers {
                csv: true,
                up: false
            })
        );
        assert_eq!(
            Modifiers::parse("up;csv", true),
            Some(Modifiers {
                csv: true,
                up: true
            })
        );
        assert_eq!(Modifiers::parse("json", true), None);
        assert_eq!(Modifiers::parse("csv;x", true), None);
        assert_eq!(
            Modifiers::parse("t=1;csv", false),
            Some(Modifiers {
                csv: true,
                up: false
            })
        );
    }

    #[test]
    fn credentials_must_match_exactly() {
        let mut h = axum::http::HeaderMap::new();
        assert!(!authorized(&h, b"admin:secret"));
        // base64("admin:secret")
        h.insert(
            header::AUTHORIZATION,
            "Basic YWRtaW46c2VjcmV0".parse().unwrap(),
        );
        assert!(authorized(&h, b"admin:secret"));
        h.insert(
            header::AUTHORIZATION,
            "basic  YWRtaW46c2VjcmV0 ".parse().unwrap(),
        );
        assert!(authorized(&h, b"admin:secret"));
        assert!(!authorized(&h, b"admin:secreT"));
        h.insert(
            header::AUTHORIZATION,
            "Bearer YWRtaW46c2VjcmV0".parse().unwrap(),
        );
        assert!(!authorized(&h, b"admin:secret"));
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(!authorized(&h, b"admin:secret"));
    }
}
