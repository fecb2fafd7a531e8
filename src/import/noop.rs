//! The HAProxy directives that change nothing for a TCP proxy of PostgreSQL sessions like this
//! one: accepted, each reported once (a warning on stderr, a comment in the output) with the
//! reason it has no equivalent. Never silently dropped: a reader of the new file sees what the
//! old one said.

/// Why `w` (a directive in a section of kind `section`) changes nothing here, or `None` when it
/// is not one of these.
pub(super) fn no_effect(section: &str, w: &[String]) -> Option<&'static str> {
    let word = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    let logs = "patroni-proxy logs to stderr (RUST_LOG sets the level, [log] the format); \
                send it to syslog with your service manager";
    Some(match (section, word(0)) {
        ("global", "daemon" | "master-worker" | "quiet" | "nbproc") => {
            "patroni-proxy runs in the foreground under a service manager (systemd, a container)"
        }
        ("global", "user" | "group" | "uid" | "gid" | "chroot") => {
            "patroni-proxy runs as the user its service manager starts it as; confine it there"
        }
        ("global", "pidfile") => "no pid file: the service manager tracks the process",
        ("global", "stats")
            if matches!(word(1), "socket" | "timeout" | "maxconn" | "bind-process") =>
        {
            "the runtime API is the stats listener's admin API ([stats] admin_user / \
             admin_password, `patroni-proxy ctl`), not a socket"
        }
        ("global", "ca-base" | "crt-base") => {
            "relative `ca-file`/`crt` paths are resolved against it in the output; the key itself \
             has no equivalent"
        }
        ("global", kw) if kw.starts_with("ssl-default-") || kw.starts_with("tune.") => {
            "TLS defaults of bind/server lines and HAProxy buffer tuning: patroni-proxy relays \
             PostgreSQL's own TLS untouched and its check's TLS uses rustls' safe defaults"
        }
        ("global", "spread-checks") => "checks are already spread: each node has its own schedule",
        ("global", "node" | "description" | "hard-stop-after" | "server-state-file") => {
            "a process-level setting with no equivalent (shutdown is [global] shutdown_grace)"
        }
        (_, "log" | "log-format" | "log-tag") => logs,
        (_, "errorfile" | "errorloc" | "errorloc302" | "errorloc303") => {
            "HTTP error pages: patroni-proxy answers PostgreSQL clients with PostgreSQL errors"
        }
        (_, "description") => "a label of HAProxy's stats page",
        (_, "option" | "no")
            if matches!(
                if word(0) == "no" { word(2) } else { word(1) },
                "tcplog"
                    | "httplog"
                    | "dontlognull"
                    | "log-health-checks"
                    | "logasap"
                    | "log-separate-errors"
            ) =>
        {
            logs
        }
        (_, "option" | "no")
            if matches!(
                if word(0) == "no" { word(2) } else { word(1) },
                "splice-auto"
                    | "splice-request"
                    | "splice-response"
                    | "tcp-smart-accept"
                    | "tcp-smart-connect"
                    | "nolinger"
                    | "contstats"
                    | "independent-streams"
                    | "socket-stats"
            ) =>
        {
            "a socket-level optimisation of HAProxy's, with no effect on what is routed where"
        }
        (_, "option") if word(1) == "allbackups" => {
            "backup servers are not kept apart here (see `backup`)"
        }
        (_, "option") if word(1) == "redispatch" => {
            "a failed connect is retried on the node routing chooses again (listen.retries)"
        }
        (_, "option")
            if matches!(
                word(1),
                "http-server-close"
                    | "http-keep-alive"
                    | "forwardfor"
                    | "httpclose"
                    | "http-buffer-request"
                    | "abortonclose"
            ) =>
        {
            "an HTTP option: it has no effect on a TCP (PostgreSQL) section"
        }
        (_, "timeout")
            if matches!(
                word(1),
                "http-request" | "http-keep-alive" | "tarpit" | "client-fin" | "server-fin"
            ) =>
        {
            "HTTP and half-close timeouts: a session's idle limits are listen.timeout_client / \
             timeout_server"
        }
        (_, "stick-table" | "stick") => {
            "stickiness: new sessions go to the node the listener's role and balance pick"
        }
        (_, "acl") => "an ACL routes nothing by itself (conditional rules using it are refused)",
        (_, "hash-type" | "fullconn" | "id") => "has no effect without HAProxy's algorithms",
        (_, "monitor-uri") => "patroni-proxy's liveness is the stats listener (`/metrics`)",
        _ => return None,
    })
}
