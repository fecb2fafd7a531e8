//! `patroni-proxy ctl ...`: runtime control from a shell, as a client of the stats listener's admin
//! API ([`crate::stats::admin`]). It reads the same configuration file as the proxy for where the
//! stats listener is and the admin user; the password comes from `PATRONI_PROXY_ADMIN_PASSWORD`
//! when set, else from the file. What to ask and how to explain an answer are pure functions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::config::Config;
use crate::routing::AdminState;
use crate::stats::admin::path_segment;

/// The environment variable that overrides `[stats] admin_password` for `ctl`.
pub const PASSWORD_ENV: &str = "PATRONI_PROXY_ADMIN_PASSWORD";

/// Longest wait for the proxy's answer (it applies an order at once).
const TIMEOUT: Duration = Duration::from_secs(10);

/// What to ask the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Set a server's administrative state.
    Set { server: String, state: AdminState },
    /// Every server's state.
    Show,
}

/// Why `ctl` failed, already worded for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CtlError(pub String);

/// Where to reach the stats listener: its bound address, with an unspecified one (`*:7000`) taken
/// as this host's loopback.
pub fn stats_address(config: &Config) -> SocketAddr {
    let bind = config.stats.bind;
    let ip = match bind.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

/// The URL and method of a request.
pub fn endpoint(address: SocketAddr, request: &Request) -> (reqwest::Method, String) {
    match request {
        Request::Set { server, state } => (
            reqwest::Method::POST,
            format!(
                "http://{address}/admin/servers/{}/{}",
                path_segment(server),
                state.as_str()
            ),
        ),
        Request::Show => (reqwest::Method::GET, format!("http://{address}/admin/show")),
    }
}

/// The admin user and password: the user from the file, the password from `env_password` (the
/// environment's) when set and not empty, else from the file.
pub fn credentials(
    config: &Config,
    env_password: Option<String>,
) -> Result<(String, String), CtlError> {
    let Some(user) = config.stats.admin_user.clone() else {
        return Err(CtlError(
            "runtime control is off in this configuration: set [stats] admin_user and \
             admin_password (and reload or restart the proxy)"
                .into(),
        ));
    };
    let password = env_password
        .filter(|p| !p.is_empty())
        .or_else(|| config.stats.admin_password.clone())
        .ok_or_else(|| CtlError(format!("no admin password: set {PASSWORD_ENV}")))?;
    Ok((user, password))
}

/// The body of a 200 answer; any other status is an error that says what it means.
async fn ok_body(answer: reqwest::Response, address: SocketAddr) -> Result<String, CtlError> {
    let status = answer.status().as_u16();
    let body = answer
        .text()
        .await
        .map_err(|e| CtlError(format!("reading the answer from {address}: {e}")))?;
    if status != 200 {
        return Err(CtlError(explain(address, status, &body)));
    }
    Ok(body)
}

/// What an answer other than 200 means, for the operator.
pub fn explain(address: SocketAddr, status: u16, body: &str) -> String {
    let said = body.trim();
    match status {
        401 => format!(
            "the proxy at {address} refused the admin credentials (401): check [stats] \
             admin_user, admin_password or {PASSWORD_ENV}"
        ),
        404 => format!("{said} (404 from {address})"),
        _ => format!("the proxy at {address} answered {status}: {said}"),
    }
}

/// Sends `request` and returns the answer's JSON, pretty-printed.
pub async fn run(
    config: &Config,
    request: &Request,
    env_password: Option<String>,
) -> Result<String, CtlError> {
    let (user, password) = credentials(config, env_password)?;
    let address = stats_address(config);
    let (method, url) = endpoint(address, request);
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| CtlError(format!("cannot build an HTTP client: {e}")))?;
    let answer = client
        .request(method, &url)
        .basic_auth(user, Some(password))
        .send()
        .await
        .map_err(|e| {
            let why = if e.is_connect() {
                "connection refused or unreachable; is patroni-proxy running, and is this its \
                 configuration (stats.bind)?"
                    .to_string()
            } else if e.is_timeout() {
                format!("no answer within {}s", TIMEOUT.as_secs())
            } else {
                e.to_string()
            };
            CtlError(format!(
                "cannot reach the stats listener at {address}: {why}"
            ))
        })?;
    let body = ok_body(answer, address).await?;
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(v) => Ok(serde_json::to_string_pretty(&v).unwrap_or(body)),
        Err(_) => Ok(body),
    }
}

/// What `patroni-proxy reload` reads of `/stats.json`, before and after signalling.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ReloadState {
    pub pid: u32,
    pub config_path: Option<String>,
    pub config_sha256: Option<String>,
    pub reloads: ReloadCounts,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ReloadCounts {
    pub ok: u64,
    pub failed: u64,
    pub last_error: Option<String>,
}

/// What the proxy did with the SIGHUP, once its counts moved: `None` while they have not.
pub fn reload_outcome(before: &ReloadState, after: &ReloadState) -> Option<Result<String, String>> {
    let (b, a) = (&before.reloads, &after.reloads);
    if a.failed > b.failed {
        Some(Err(format!(
            "the proxy (pid {}) refused the reload: {}",
            after.pid,
            a.last_error.as_deref().unwrap_or("(no reason given)")
        )))
    } else if a.ok > b.ok {
        Some(Ok(format!(
            "reloaded: pid {} runs {} (sha256 {})",
            after.pid,
            after.config_path.as_deref().unwrap_or("?"),
            after.config_sha256.as_deref().unwrap_or("?")
        )))
    } else {
        None
    }
}

/// `patroni-proxy reload`: finds the running proxy through its stats listener (the pid in
/// `/stats.json`: no pid file to go stale, and it is the process that serves this very
/// configuration's stats.bind), sends it SIGHUP, and waits for its reload counts to move.
/// Sending the signal needs the right to signal that process (its user, or root), as
/// `systemctl reload` does; run it on the proxy's host, in its PID namespace.
pub async fn reload(config: &Config, sha256: &str, pid: Option<u32>) -> Result<String, CtlError> {
    let address = stats_address(config);
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| CtlError(format!("cannot build an HTTP client: {e}")))?;
    let before = match (reload_state(&client, config, address).await, pid) {
        (Ok(before), Some(pid)) if before.pid != pid => {
            return Err(CtlError(format!(
                "the proxy at {address} is pid {}, not {pid}: not signalling either",
                before.pid
            )))
        }
        (Ok(before), _) => Some(before),
        // The file may move stats.bind: its new address answers once the reload is applied.
        (Err(_), Some(_)) => None,
        (Err(e), None) => {
            return Err(CtlError(format!(
                "{e} (if this file moves stats.bind, give the proxy's pid: --pid)"
            )))
        }
    };
    let target = before.as_ref().map_or(pid.unwrap_or(0), |b| b.pid);
    let signalled = i32::try_from(target)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .filter(|_| target != std::process::id())
        .ok_or_else(|| CtlError(format!("pid {target} cannot be signalled")))?;
    rustix::process::kill_process(signalled, rustix::process::Signal::HUP).map_err(|e| {
        CtlError(format!(
            "cannot signal pid {target} (the proxy of {address}): {e}; run this as the proxy's \
             user or root, on its host"
        ))
    })?;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        // Polled: the reload itself takes a file read, well under a poll's interval.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let outcome = match (&before, reload_state(&client, config, address).await) {
            (Some(before), after) => reload_outcome(before, &after?),
            // Without a "before", only the new file's hash at the new address says it applied.
            (None, Ok(after)) if after.pid == target => moved_outcome(&after, sha256),
            (None, _) => None,
        };
        if let Some(outcome) = outcome {
            return outcome.map_err(CtlError);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CtlError(match before {
                Some(_) => format!(
                    "sent SIGHUP to pid {target}, but its reload counts did not move within {}s",
                    TIMEOUT.as_secs()
                ),
                None => format!(
                    "sent SIGHUP to pid {target}, but nothing answered at {address} within {}s \
                     with this file loaded: if the reload was refused, the proxy listens where \
                     it did (its log says why)",
                    TIMEOUT.as_secs()
                ),
            }));
        }
    }
}

/// The outcome of a reload that moved the stats listener (no "before" to compare with): applied
/// once the proxy at the new address runs the file of hash `sha256`.
pub fn moved_outcome(after: &ReloadState, sha256: &str) -> Option<Result<String, String>> {
    (after.config_sha256.as_deref() == Some(sha256)).then(|| {
        Ok(format!(
            "reloaded: pid {} runs {} (sha256 {sha256})",
            after.pid,
            after.config_path.as_deref().unwrap_or("?"),
        ))
    })
}

async fn reload_state(
    client: &reqwest::Client,
    config: &Config,
    address: SocketAddr,
) -> Result<ReloadState, CtlError> {
    let mut request = client.get(format!("http://{address}/stats.json"));
    if let Some((user, password)) = config.stats_credentials() {
        request = request.basic_auth(user, Some(password));
    }
    let answer = request.send().await.map_err(|e| {
        CtlError(format!(
            "cannot reach the stats listener at {address}: {e}; is patroni-proxy running, and \
             is this its configuration (stats.bind)?"
        ))
    })?;
    let body = ok_body(answer, address).await?;
    serde_json::from_str(&body).map_err(|e| {
        CtlError(format!(
            "the answer of {address}/stats.json is not a patroni-proxy's: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_is_told_by_the_counts_that_moved() {
        let state = |ok, failed, last_error: Option<&str>| ReloadState {
            pid: 42,
            config_path: Some("/etc/patroni-proxy/proxy.toml".into()),
            config_sha256: Some("ab12".into()),
            reloads: ReloadCounts {
                ok,
                failed,
                last_error: last_error.map(str::to_string),
            },
        };
        let before = state(1, 1, Some("old"));
        assert_eq!(reload_outcome(&before, &before), None, "not yet");
        assert_eq!(
            reload_outcome(&before, &state(2, 1, Some("old"))),
            Some(Ok(
                "reloaded: pid 42 runs /etc/patroni-proxy/proxy.toml (sha256 ab12)".into()
            ))
        );
        let refused = reload_outcome(&before, &state(1, 2, Some("listen.bind: ..."))).unwrap();
        assert!(refused.unwrap_err().contains("listen.bind"));
    }

    fn config(stats: &str) -> Config {
        Config::from_toml(&format!(
            "[stats]\n{stats}\n[[server]]\nname = \"a/1\"\naddress = \"127.0.0.11:5432\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn the_stats_listener_is_reached_on_loopback_when_bound_to_any() {
        assert_eq!(
            stats_address(&config("")),
            "127.0.0.1:7000".parse().unwrap()
        );
        assert_eq!(
            stats_address(&config("bind = \"[::]:7001\"")),
            "[::1]:7001".parse().unwrap()
        );
        assert_eq!(
            stats_address(&config("bind = \"127.0.0.31:7000\"")),
            "127.0.0.31:7000".parse().unwrap()
        );
    }

    #[test]
    fn requests_name_the_server_as_one_segment() {
        let a: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let set = Request::Set {
            server: "a/1".into(),
            state: AdminState::Drain,
        };
        assert_eq!(
            endpoint(a, &set),
            (
                reqwest::Method::POST,
                "http://127.0.0.1:7000/admin/servers/a%2F1/drain".into()
            )
        );
        assert_eq!(
            endpoint(a, &Request::Show).1,
            "http://127.0.0.1:7000/admin/show"
        );
    }

    #[test]
    fn the_environments_password_wins_and_no_user_means_off() {
        let c = config("admin_user = \"ops\"\nadmin_password = \"file\"");
        let got = |env: Option<&str>| credentials(&c, env.map(str::to_string)).unwrap();
        assert_eq!(got(None), ("ops".into(), "file".into()));
        assert_eq!(got(Some("env")), ("ops".into(), "env".into()));
        assert_eq!(got(Some("")), ("ops".into(), "file".into()));
        let off = credentials(&config(""), Some("x".into())).unwrap_err();
        assert!(off.0.contains("runtime control is off"), "{off}");
    }

    #[test]
    fn answers_are_explained() {
        let a: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert!(explain(a, 401, "").contains(PASSWORD_ENV));
        assert_eq!(
            explain(a, 404, "no server named \"x\" in [[server]]\n"),
            "no server named \"x\" in [[server]] (404 from 127.0.0.1:7000)"
        );
    }
}
