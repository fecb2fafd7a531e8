//! Runtime control on the stats listener (HAProxy's `stats admin` and `set server ... state`):
//! `POST /admin/servers/{name}/{drain|maint|ready}` and `GET /admin/show`. Off unless `[stats]
//! admin_user` and `admin_password` are set; every request needs those credentials (HTTP Basic).
//! Changes are POST only, and a POST that comes from a browser (it carries an `Origin`, a
//! `Referer`, a `Sec-Fetch-*` header or a body) must also be same-origin and carry this process's
//! CSRF token in its form body: browsers resend Basic credentials to any site's form, so they alone
//! do not show the operator meant it. The order itself goes to the state owner
//! ([`crate::state::Input::Admin`]), which logs it with who gave it and puts it on the timeline.
//!
//! The paths say the scope (`servers/{name}`); issue 13's listeners add
//! `/admin/listeners/{listener}/servers/{name}/...` beside it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Json, Response};
use serde::Serialize;

use super::export::{self, ServerView};
use super::{authorized, closing, App};
use crate::routing::AdminState;
use crate::state::{AdminOrder, Input, Scope};

/// The realm of the admin challenge: another realm than the read-only pages', so a browser that
/// holds read-only credentials asks for the admin ones instead of resending those.
pub const ADMIN_REALM: &str = "patroni-proxy admin";

/// Largest form body read (the dashboard's form sends `csrf=` and 32 hex digits).
const MAX_FORM: usize = 1024;
/// Time allowed to send that body.
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the state owner to apply an order (it applies one input at a time, at once).
const APPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The admin side of the stats listener, when it is configured.
#[derive(Debug)]
pub struct Admin {
    /// `user:password`, as HTTP Basic carries them.
    credentials: Vec<u8>,
    user: String,
    /// This process's CSRF token (32 hex digits from the kernel's random source), embedded in the
    /// dashboard's forms and required in every browser POST.
    token: String,
}

impl Admin {
    /// `None` when the API is off (no credentials configured) or no random token could be made
    /// (then it stays off, and says so).
    pub fn new(user: &str, password: &str) -> Option<Self> {
        let mut random = [0u8; 16];
        let filled = rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty());
        if filled.ok() != Some(random.len()) {
            tracing::error!(
                "no random bytes for the admin API's CSRF token; runtime control is off"
            );
            return None;
        }
        let mut token = String::with_capacity(32);
        for b in random {
            let _ = write!(token, "{b:02x}");
        }
        Some(Self {
            credentials: format!("{user}:{password}").into_bytes(),
            user: user.to_string(),
            token,
        })
    }

    /// True when `headers` carry the admin credentials.
    pub fn authorized(&self, headers: &HeaderMap) -> bool {
        authorized(headers, &self.credentials)
    }

    /// The CSRF token the dashboard embeds in its forms.
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// How a POST must prove it was meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A program (`ctl`, curl): no body and none of the headers every browser adds to a POST.
    /// Basic credentials are enough: a page in a browser cannot send a POST without `Origin`.
    Api,
    /// A browser, or anything with a body: same-origin and the CSRF token are required.
    Browser,
}

/// Tells a browser's POST from a program's.
pub fn caller(headers: &HeaderMap) -> Caller {
    let browser_headers = [
        header::ORIGIN.as_str(),
        header::REFERER.as_str(),
        "sec-fetch-site",
        "sec-fetch-mode",
    ];
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers.contains_key(header::CONTENT_TYPE)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if has_body || browser_headers.iter().any(|h| headers.contains_key(*h)) {
        Caller::Browser
    } else {
        Caller::Api
    }
}

/// A browser POST is same-origin when its `Origin` (or, without one, its `Referer`) names the host
/// it was sent to (`Host`). A missing or unreadable header fails.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let from = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Uri>().ok());
    match from.as_ref().and_then(Uri::authority) {
        Some(a) => a.as_str().eq_ignore_ascii_case(host),
        None => false,
    }
}

/// The `csrf` field of an `application/x-www-form-urlencoded` body (the token is hex: nothing to
/// decode).
pub fn form_token(body: &[u8]) -> Option<&[u8]> {
    body.split(|b| *b == b'&')
        .find_map(|pair| pair.strip_prefix(b"csrf="))
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn off() -> Response {
    text(
        StatusCode::NOT_FOUND,
        "runtime control is off: set [stats] admin_user and admin_password to turn it on\n".into(),
    )
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed here (allowed: {allow}); nothing was changed\n"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    closing(r)
}

fn unauthorized() -> Response {
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "admin credentials required ([stats] admin_user)\n".into(),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&format!("Basic realm=\"{ADMIN_REALM}\"")).expect("ASCII"),
    );
    r
}

/// `POST /admin/servers/{name}/{action}`.
pub(super) async fn action(
    State(app): State<App>,
    Path((name, action)): Path<(String, String)>,
    req: Request,
) -> Response {
    let Some(admin) = &app.admin else {
        return off();
    };
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "?".to_string(), |c| c.0.ip().to_string());
    let headers = req.headers();
    if !admin.authorized(headers) {
        // Debug only: a browser's first request is always a 401 (then it asks for credentials).
        tracing::debug!(target: "patroni_proxy::admin", client = %peer, "admin request without valid credentials");
        return closing(unauthorized());
    }
    let Some(state) = AdminState::parse(&action) else {
        return closing(text(
            StatusCode::NOT_FOUND,
            format!("unknown action {action:?}: use drain, maint or ready\n"),
        ));
    };
    // Among the configured servers: a node a reload removed takes no orders.
    let snap = app.shared.current();
    let found = snap.nodes.iter().position(|n| n.server.name == name);
    let Some(node) = found.filter(|&i| snap.nodes[i].removed.is_none()) else {
        return closing(text(
            StatusCode::NOT_FOUND,
            format!("no server named {name:?} in [[server]]\n"),
        ));
    };
    let caller = caller(headers);
    if caller == Caller::Browser {
        if !same_origin(headers) {
            // Valid credentials from another origin: a cross-site form, what CSRF looks like.
            tracing::warn!(target: "patroni_proxy::admin", client = %peer, server = name,
                action, "admin POST refused: not from this dashboard (Origin/Referer)");
            return closing(text(
                StatusCode::FORBIDDEN,
                "refused: a browser's POST must come from this dashboard (Origin or Referer)\n"
                    .into(),
            ));
        }
        let body = match read_form(req.into_body()).await {
            Ok(body) => body,
            Err(r) => return r,
        };
        let given = form_token(&body).unwrap_or_default();
        if !super::constant_time_eq(given, admin.token.as_bytes()) {
            tracing::warn!(target: "patroni_proxy::admin", client = %peer, server = name,
                action, "admin POST refused: missing or wrong CSRF token");
            return closing(text(
                StatusCode::FORBIDDEN,
                "refused: missing or wrong CSRF token; use the dashboard's buttons\n".into(),
            ));
        }
    }
    let via = match caller {
        Caller::Api => "api",
        Caller::Browser => "dashboard",
    };
    let who = format!("{}@{peer} via {via}", admin.user);
    let mut snapshots = app.shared.subscribe();
    app.shared.send(Input::Admin(AdminOrder {
        scope: Scope::Server(node),
        state,
        who,
    }));
    let applied = tokio::time::timeout(
        APPLY_TIMEOUT,
        snapshots.wait_for(|s| s.nodes.get(node).is_some_and(|n| n.admin == state)),
    )
    .await;
    if !matches!(applied, Ok(Ok(_))) {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the order was sent but not applied in time (shutting down?)\n".into(),
        );
    }
    match caller {
        // HAProxy's stats page answers its form with `303 See Other` to the page.
        Caller::Browser => {
            let mut r = StatusCode::SEE_OTHER.into_response();
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/"));
            r
        }
        Caller::Api => {
            let mut view = export::view(&app.shared);
            if node < view.servers.len() {
                Json(view.servers.swap_remove(node)).into_response()
            } else {
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

/// Reads a form body of at most [`MAX_FORM`] bytes within [`BODY_TIMEOUT`].
async fn read_form(body: axum::body::Body) -> Result<Bytes, Response> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_FORM)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(closing(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("form bodies are at most {MAX_FORM} bytes\n"),
        ))),
        Err(_) => Err(closing(text(
            StatusCode::REQUEST_TIMEOUT,
            "the form body was not sent in time\n".into(),
        ))),
    }
}

/// What `GET /admin/show` answers: every server's state, the administrative one included.
#[derive(Debug, Serialize)]
pub struct Show {
    pub proxy: String,
    pub primary: Option<String>,
    pub servers: Vec<ServerView>,
}

/// `GET /admin/show`.
pub(super) async fn show(State(app): State<App>, req: Request) -> Response {
    let Some(admin) = &app.admin else {
        return off();
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return method_not_allowed("GET, HEAD");
    }
    if !admin.authorized(req.headers()) {
        return unauthorized();
    }
    let view = export::view(&app.shared);
    Json(Show {
        proxy: view.proxy,
        primary: view.primary,
        servers: view.servers,
    })
    .into_response()
}

/// A server name as one path segment: everything but RFC 3986's unreserved characters
/// percent-encoded (names may hold `/`, `?`, `%`...); the router decodes it back.
pub fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The dashboard's runtime-control section: per server, a form with the CSRF token and one button
/// per state (HAProxy's "Set state to READY/DRAIN/MAINT").
pub fn forms(names: &[&str], token: &str) -> String {
    let mut out = String::from(
        "<section class=\"admin\" id=\"admin\">\n  <h2>Runtime control <small>(drain: no new \
         sessions; maint: down, sessions cut; ready: checks decide)</small></h2>\n",
    );
    for name in names {
        let n = super::dashboard::esc(name);
        let _ = write!(
            out,
            "  <form method=\"post\" class=\"admin-server\" data-server=\"{n}\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{token}\"><span class=\"name\">{n}</span>"
        );
        for state in AdminState::ALL {
            let _ = write!(
                out,
                " <button type=\"submit\" formaction=\"/admin/servers/{p}/{a}\">{w}</button>",
                p = path_segment(name),
                a = state.as_str(),
                w = state.as_str()
            );
        }
        out.push_str("</form>\n");
    }
    out.push_str("</section>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_post_with_a_body_or_browser_headers_is_a_browsers() {
        assert_eq!(caller(&headers(&[("host", "x")])), Caller::Api);
        assert_eq!(caller(&headers(&[("content-length", "0")])), Caller::Api);
        for h in [
            ("origin", "http://evil"),
            ("referer", "http://evil/"),
            ("sec-fetch-site", "cross-site"),
            ("content-type", "text/plain"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
        ] {
            assert_eq!(caller(&headers(&[h])), Caller::Browser, "{h:?}");
        }
    }

    #[test]
    fn same_origin_compares_origin_or_referer_with_host() {
        let host = ("host", "127.0.0.1:7000");
        assert!(same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:7000")
        ])));
        assert!(same_origin(&headers(&[
            host,
            ("referer", "http://127.0.0.1:7000/?x")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://evil:7000")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        // Origin wins over a matching Referer.
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://evil"),
            ("referer", "http://127.0.0.1:7000/")
        ])));
        assert!(!same_origin(&headers(&[host])));
        assert!(!same_origin(&headers(&[(
            "origin",
            "http://127.0.0.1:7000"
        )])));
    }

    #[test]
    fn names_are_one_path_segment() {
        assert_eq!(path_segment("pg-1.a_b~"), "pg-1.a_b~");
        assert_eq!(path_segment("a/b?%#é"), "a%2Fb%3F%25%23%C3%A9");
    }

    #[test]
    fn the_token_is_the_csrf_field() {
        assert_eq!(form_token(b"csrf=ab12"), Some(&b"ab12"[..]));
        assert_eq!(form_token(b"x=1&csrf=ab12&y"), Some(&b"ab12"[..]));
        assert_eq!(form_token(b"xcsrf=ab12"), None);
        assert_eq!(form_token(b""), None);
    }

    #[test]
    fn tokens_are_random_per_process() {
        let (a, b) = (Admin::new("u", "p").unwrap(), Admin::new("u", "p").unwrap());
        assert_eq!(a.token().len(), 32);
        assert_ne!(a.token(), b.token());
    }

    #[test]
    fn forms_carry_the_token_and_escape_names() {
        let f = forms(&["a<b"], "t0k");
        assert!(f.contains(r#"name="csrf" value="t0k""#));
        assert!(f.contains(r#"formaction="/admin/servers/a%3Cb/drain""#));
        assert!(f.contains(r#"<span class="name">a&lt;b</span>"#));
        assert_eq!(f.matches("<button").count(), 3);
    }
}
