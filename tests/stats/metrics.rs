//! `/metrics` parsed as Prometheus exposition text: every series from start-up, following checks,
//! sessions and refusals, and docs/metrics.md describing every family.

use super::*;

/// A parsed exposition: `name{labels}` -> value, and `name` -> TYPE.
struct Exposition {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let (mut samples, mut types) = (BTreeMap::new(), BTreeMap::new());
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            samples.insert(Self::canonical(series), value);
        }
        Self { samples, types }
    }

    /// `name{b="2",a="1"}` -> `name{a="1",b="2"}`.
    fn canonical(series: &str) -> String {
        let Some((name, labels)) = series.split_once('{') else {
            return series.to_string();
        };
        let mut l: Vec<&str> = labels
            .trim_end_matches('}')
            .split(',')
            .filter(|s| !s.is_empty())
            .collect();
        l.sort();
        format!("{name}{{{}}}", l.join(","))
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .samples
            .get(&Self::canonical(series))
            .unwrap_or_else(|| panic!("no series {series}"))
    }
}

async fn scrape(c: &Cluster) -> Exposition {
    Exposition::parse(&get(c, "/metrics").await.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_exists_from_start_up() {
    // Issue 4: "Bounded labels; every series present from start-up." Slow answers keep every
    // check from finishing before the scrape.
    let slow = |m| Mode::Delayed(Duration::from_secs(30), Box::new(m));
    // With an [etcd] section (its endpoint dead) and a replica listener, so that their series
    // exist too.
    let etcd = "[etcd]\nendpoints = [\"127.0.0.1:9\"]\nscope = \"postgres\"\n\
                [[listen]]\nname = \"rw\"\nbind = \"127.0.0.1:0\"\n\
                [[listen]]\nname = \"ro\"\nbind = \"127.0.0.1:0\"\nrole = \"replica\"\n";
    let c = Cluster::start(vec![slow(PRIMARY), slow(Mode::Replica)], etcd).await;
    let m = scrape(&c).await;
    for (name, kind, _) in patroni_proxy::stats::families::families() {
        assert_eq!(m.types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    assert_eq!(m.get("patroni_proxy_primary_routable"), 0.0);
    // Issue 17: who relays each listener, from start-up (the test's mode when it sets one).
    let kernel = c.shared().sockmap.ready().is_some();
    for l in ["rw", "ro"] {
        let mode = |mode: &str| {
            m.get(&format!(
                "patroni_proxy_relay_mode{{listener=\"{l}\",mode=\"{mode}\"}}"
            ))
        };
        assert_eq!(mode("user"), if kernel { 0.0 } else { 1.0 });
        assert_eq!(mode("kernel"), if kernel { 1.0 } else { 0.0 });
    }
    // And the dashboard's process line says it.
    let page = get(&c, "/").await.text().await.unwrap();
    let said = if kernel {
        "relay in the kernel"
    } else {
        "relay in user space"
    };
    assert!(page.contains(said), "{said} not on the page");
    assert_eq!(
        m.get(&format!(
            "patroni_proxy_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    for reason in ["no_primary", "queue_timeout", "connect_failed", "standby"] {
        assert_eq!(
            m.get(&format!(
                "patroni_proxy_frontend_refusals_total{{reason=\"{reason}\"}}"
            )),
            0.0
        );
    }
    for server in ["node0", "node1"] {
        for result in [
            "L4CON", "L4TOUT", "L6RSP", "L6TOUT", "L7OK", "L7STS", "L7RSP", "L7TOUT", "SOCKERR",
        ] {
            let s = format!(
                "patroni_proxy_server_checks_total{{server=\"{server}\",result=\"{result}\"}}"
            );
            assert_eq!(m.get(&s), 0.0, "{s}");
        }
        for role in ["primary", "replica", "unknown"] {
            m.get(&format!(
                "patroni_proxy_server_role{{server=\"{server}\",role=\"{role}\"}}"
            ));
        }
        // Every server starts check-driven (`ready`), with a series for each admin state.
        for (state, v) in [("ready", 1.0), ("drain", 0.0), ("maint", 0.0)] {
            assert_eq!(
                m.get(&format!(
                    "patroni_proxy_server_admin_state{{server=\"{server}\",state=\"{state}\"}}"
                )),
                v
            );
        }
        for to in ["up", "down"] {
            m.get(&format!(
                "patroni_proxy_server_transitions_total{{server=\"{server}\",to=\"{to}\"}}"
            ));
        }
        assert_eq!(
            m.get(&format!(
                "patroni_proxy_server_check_duration_seconds_count{{server=\"{server}\"}}"
            )),
            0.0
        );
        assert_eq!(
            m.get(&format!("patroni_proxy_server_check_duration_seconds_bucket{{server=\"{server}\",le=\"+Inf\"}}")),
            0.0
        );
        assert_eq!(
            m.get(&format!(
                "patroni_proxy_server_sessions_total{{server=\"{server}\"}}"
            )),
            0.0
        );
        assert_eq!(
            m.get(&format!(
                "patroni_proxy_server_sessions_limit{{server=\"{server}\"}}"
            )),
            100.0
        );
    }
    // Bounded: every label is one of these, and every server label is a configured name.
    for series in m.samples.keys() {
        let Some((_, labels)) = series.split_once('{') else {
            continue;
        };
        for pair in labels.trim_end_matches('}').split(',') {
            let (k, v) = pair.split_once('=').unwrap();
            assert!(
                [
                    "server", "role", "state", "result", "to", "reason", "version", "le",
                    "endpoint", "listener", "mode"
                ]
                .contains(&k),
                "{series}"
            );
            // `relay_mode` names every listener; the other listener series the non-primary ones.
            if k == "listener" && series.starts_with("patroni_proxy_relay_mode") {
                assert!(
                    v == "\"rw\"" || v == "\"ro\"",
                    "a configured listener: {series}"
                );
            } else if k == "listener" {
                assert_eq!(v, "\"ro\"", "a configured listener: {series}");
            }
            if k == "mode" {
                assert!(v == "\"user\"" || v == "\"kernel\"", "{series}");
            }
            if k == "server" {
                assert!(v == "\"node0\"" || v == "\"node1\"", "{series}");
            }
            if k == "endpoint" {
                assert_eq!(v, "\"127.0.0.1:9\"", "a configured etcd endpoint");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_checks_sessions_and_refusals() {
    let c = settled().await;
    let (_, mut session) = connect(c.addr).await.unwrap();
    assert!(session.alive().await);
    let m = scrape(&c).await;
    let s = |name: &str, server: &str| m.get(&format!("{name}{{server=\"{server}\"}}"));
    assert_eq!(m.get("patroni_proxy_primary_routable"), 1.0);
    assert_eq!(
        [
            s("patroni_proxy_server_routed_primary", "node0"),
            s("patroni_proxy_server_routed_primary", "node1")
        ],
        [1.0, 0.0]
    );
    assert_eq!(
        [
            s("patroni_proxy_server_up", "node0"),
            s("patroni_proxy_server_up", "node1"),
            s("patroni_proxy_server_up", "node2")
        ],
        [1.0, 0.0, 0.0]
    );
    assert_eq!(
        m.get("patroni_proxy_server_role{server=\"node0\",role=\"primary\"}"),
        1.0
    );
    assert_eq!(
        m.get("patroni_proxy_server_role{server=\"node0\",role=\"replica\"}"),
        0.0
    );
    assert_eq!(
        m.get("patroni_proxy_server_role{server=\"node1\",role=\"replica\"}"),
        1.0
    );
    assert_eq!(
        m.get("patroni_proxy_server_role{server=\"node2\",role=\"unknown\"}"),
        1.0
    );
    assert_eq!(s("patroni_proxy_server_sessions_current", "node0"), 1.0);
    assert_eq!(s("patroni_proxy_server_sessions_total", "node0"), 1.0);
    assert!(
        s("patroni_proxy_server_bytes_in_total", "node0") >= 5.0,
        "ping\\n"
    );
    assert!(s("patroni_proxy_server_bytes_out_total", "node0") >= 16.0);
    assert_eq!(m.get("patroni_proxy_frontend_connections_total"), 1.0);
    assert_eq!(m.get("patroni_proxy_frontend_sessions_current"), 1.0);
    assert!(m.get("patroni_proxy_server_checks_total{server=\"node0\",result=\"L7OK\"}") >= 1.0);
    assert!(m.get("patroni_proxy_server_checks_total{server=\"node1\",result=\"L7STS\"}") >= 1.0);
    assert!(m.get("patroni_proxy_server_checks_total{server=\"node2\",result=\"L4CON\"}") >= 1.0);
    assert_eq!(
        m.get("patroni_proxy_server_transitions_total{server=\"node1\",to=\"down\"}"),
        1.0
    );
    assert!(s("patroni_proxy_server_check_duration_seconds_count", "node0") >= 1.0);
    let checks: f64 = [
        "L7OK", "L7STS", "L4CON", "L4TOUT", "L6RSP", "L6TOUT", "L7RSP", "L7TOUT", "SOCKERR",
    ]
    .iter()
    .map(|r| {
        m.get(&format!(
            "patroni_proxy_server_checks_total{{server=\"node0\",result=\"{r}\"}}"
        ))
    })
    .sum();
    // Both are recorded by one call in state::apply; a check applied while the render reads the
    // counters and then the histogram can put them one apart.
    let count = s("patroni_proxy_server_check_duration_seconds_count", "node0");
    assert!(
        checks >= 1.0 && (checks - count).abs() <= 1.0,
        "{checks} results, {count} durations"
    );

    // No primary: the demoted primary's session is cut when it goes DOWN; the "no primary" time
    // grows.
    c.nodes[0].rest.set(Mode::Replica);
    c.wait_for(Duration::from_secs(5), "no primary", |c| {
        c.primary().is_none()
    })
    .await;
    assert!(
        session.closed_within(Duration::from_secs(5)).await,
        "the demoted primary's session is cut"
    );
    c.wait_for(Duration::from_secs(5), "node0 DOWN", |c| {
        c.status(0) == "DOWN"
    })
    .await;
    let m = scrape(&c).await;
    assert_eq!(m.get("patroni_proxy_primary_routable"), 0.0);
    assert_eq!(
        m.get("patroni_proxy_server_routed_primary{server=\"node0\"}"),
        0.0
    );
    assert_eq!(
        m.get("patroni_proxy_server_role{server=\"node0\",role=\"replica\"}"),
        1.0
    );
    assert_eq!(
        m.get("patroni_proxy_server_transitions_total{server=\"node0\",to=\"down\"}"),
        1.0
    );
    assert!(m.get("patroni_proxy_no_primary_seconds") > 0.0);
    assert!(m.get("patroni_proxy_server_sessions_killed_total{server=\"node0\"}") >= 1.0);
    let r = get(&c, "/ready").await;
    assert_eq!(r.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_by_reason() {
    // node0 is the primary but its PostgreSQL port refuses: after the retries the client is held
    // for another primary and, none coming within hold_timeout, answered 57P03.
    let extra = format!("{FAST}[listen]\nhold_timeout = \"1s\"\n");
    let c = Cluster::start_custom(vec![PRIMARY], &extra, "", &[0]).await;
    c.wait_for(Duration::from_secs(5), "routed", |c| c.primary() == Some(0))
        .await;
    assert!(
        matches!(outcome(c.addr).await, Outcome::PgError(code, _) if code == "57P03"),
        "57P03 after the retries and the hold"
    );
    let m = scrape(&c).await;
    assert_eq!(
        m.get("patroni_proxy_frontend_refusals_total{reason=\"connect_failed\"}"),
        1.0
    );
    assert_eq!(
        m.get("patroni_proxy_frontend_refusals_total{reason=\"no_primary\"}"),
        1.0
    );
    assert_eq!(
        m.get("patroni_proxy_server_connection_errors_total{server=\"node0\"}"),
        1.0
    );
    assert_eq!(
        m.get("patroni_proxy_server_retries_total{server=\"node0\"}"),
        2.0
    );
    let text = get(&c, "/;csv").await.text().await.unwrap();
    let node0 = text
        .lines()
        .find(|l| l.starts_with("postgres,node0,"))
        .unwrap();
    let econ = node0.split(',').nth(13).unwrap();
    let wretr = node0.split(',').nth(15).unwrap();
    assert_eq!((econ, wretr), ("1", "2"));
}

#[test]
fn docs_metrics_md_describes_every_metric() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    for (name, kind, _) in patroni_proxy::stats::families::families() {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("docs/metrics.md has no row for {name}"));
        assert!(
            row.contains(&format!("| {kind} |")),
            "{name} is a {kind}: {row}"
        );
    }
}
