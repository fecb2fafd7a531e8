//! `/metrics` scraped by a real Prometheus (Debian package `prometheus`, installed by
//! `scripts/install-test-deps`; without it this test fails, it does not skip). The test starts
//! Prometheus on a free loopback port with a generated config (1 s scrape interval, Basic auth as
//! the proxy's `[stats] auth` requires) and checks through its HTTP API that the target is up and
//! the node series say what the proxy knows, before and after a primary flip; then that every query
//! of the Grafana dashboard (`dashboard/grafana/patroni-proxy.json`), its template variables given
//! concrete values, runs and returns data. Real time.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Cluster, Mode};
use serde_json::Value;
use tokio::time::Instant;

fn require(binary: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            p.to_str()?
                .split(':')
                .map(|d| Path::new(d).join(binary))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "`{binary}` is not installed: run `scripts/install-test-deps` (Debian package \
                 prometheus) before `cargo test`"
            )
        })
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Prometheus this test started; killed by its own handle when the test ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Prometheus {
    _process: Process,
    api: String,
    http: reqwest::Client,
    log: PathBuf,
}

impl Prometheus {
    /// Instant query; `server` label (or "" when absent) -> value.
    async fn query(&self, promql: &str) -> BTreeMap<String, f64> {
        self.query_raw(promql)
            .await
            .iter()
            .map(|s| {
                let server = s["metric"]["server"].as_str().unwrap_or("").to_string();
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (server, value)
            })
            .collect()
    }

    /// Instant query: the result's series, after asserting that Prometheus says `success`.
    async fn query_raw(&self, promql: &str) -> Vec<Value> {
        let r: Value = self
            .http
            .get(format!("{}/api/v1/query", self.api))
            .query(&[("query", promql)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "success", "{promql}: {r}");
        r["data"]["result"].as_array().unwrap().clone()
    }

    /// Polls a query until `ok` holds for its result.
    async fn until(
        &self,
        promql: &str,
        limit: Duration,
        ok: impl Fn(&BTreeMap<String, f64>) -> bool,
    ) -> BTreeMap<String, f64> {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.query(promql).await;
            if ok(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out on {promql}: last {r:?}; prometheus log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn by_server(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Prometheus: scripts/test installs it and runs it"]
async fn prometheus_scrapes_the_node_series() {
    let binary = require("prometheus");
    let c = Cluster::start(
        vec![Mode::Primary { timeline: 1 }, Mode::Replica, Mode::Replica],
        "[check]\ninter = \"100ms\"\n[stats]\nauth = \"prom:scrape-only\"\n",
    )
    .await;
    c.nodes[2].rest.stop();

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: patroni-proxy\n    basic_auth:\n      username: prom\n      \
             password: scrape-only\n    static_configs:\n      - targets: ['{}']\n",
            c.stats
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.path().join("prometheus.log");
    let process = Process(
        Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus starts"),
    );
    let prom = Prometheus {
        _process: process,
        api: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = prom.http.get(format!("{}/-/ready", prom.api)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus not ready: {}",
            std::fs::read_to_string(&prom.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The target is scraped successfully (through Basic auth).
    let limit = Duration::from_secs(30);
    prom.until("up{job=\"patroni-proxy\"}", limit, |r| {
        r.get("") == Some(&1.0)
    })
    .await;

    // The node series, as the proxy sees the cluster: node0 routed primary, node1 a replica,
    // node2 unreachable.
    prom.until("patroni_proxy_server_routed_primary", limit, |r| {
        *r == by_server(&[("node0", 1.0), ("node1", 0.0), ("node2", 0.0)])
    })
    .await;
    prom.until("patroni_proxy_server_up", limit, |r| {
        *r == by_server(&[("node0", 1.0), ("node1", 0.0), ("node2", 0.0)])
    })
    .await;
    prom.until("patroni_proxy_server_role{role=\"replica\"}", limit, |r| {
        *r == by_server(&[("node0", 0.0), ("node1", 1.0), ("node2", 0.0)])
    })
    .await;
    prom.until(
        "patroni_proxy_server_checks_total{result=\"L4CON\"}",
        limit,
        |r| r.get("node2").is_some_and(|v| *v >= 1.0) && r.get("node0") == Some(&0.0),
    )
    .await;
    prom.until(
        "patroni_proxy_server_check_duration_seconds_count",
        limit,
        |r| r.len() == 3 && r.values().all(|v| *v >= 1.0),
    )
    .await;
    prom.until("patroni_proxy_primary_routable", limit, |r| {
        r.get("") == Some(&1.0)
    })
    .await;
    let sessions = prom.query("patroni_proxy_server_sessions_current").await;
    assert_eq!(sessions.len(), 3, "one series per node from start-up");

    // Flip the primary; Prometheus sees the change and counts it.
    c.nodes[0].rest.set(Mode::Replica);
    c.nodes[1].rest.set(Mode::Primary { timeline: 2 });
    prom.until("patroni_proxy_server_routed_primary", limit, |r| {
        *r == by_server(&[("node0", 0.0), ("node1", 1.0), ("node2", 0.0)])
    })
    .await;
    prom.until("patroni_proxy_primary_changes_total", limit, |r| {
        r.get("") == Some(&1.0)
    })
    .await;
    prom.until(
        "patroni_proxy_server_transitions_total{to=\"up\"}",
        limit,
        |r| r.get("node1") == Some(&1.0),
    )
    .await;

    // The Grafana dashboard: every query runs and returns data, and the role timeline's values
    // say what the proxy knows (2 routed primary, 1 replica, 0 down or unknown).
    let instance = c.stats.to_string();
    dashboard_queries_return_data(&prom, &instance, limit).await;
    let queries = grafana_queries(&instance);
    let mut timeline = queries.iter().filter(|(title, _)| title == "Role timeline");
    let (_, role) = timeline.next().unwrap();
    prom.until(role, limit, |r| {
        *r == by_server(&[("node0", 1.0), ("node1", 2.0), ("node2", 0.0)])
    })
    .await;
    // Its last band: 5 while a primary is routable (4 while none is).
    let (_, routable) = timeline.next().unwrap();
    prom.until(routable, limit, |r| r.get("") == Some(&5.0))
        .await;
}

/// Every query of the Grafana dashboard (its panels' `expr`), with Grafana's variables replaced
/// as Grafana would for this proxy (`instance`) and all its servers.
fn grafana_queries(instance: &str) -> Vec<(String, String)> {
    let d: Value =
        serde_json::from_str(include_str!("../dashboard/grafana/patroni-proxy.json")).unwrap();
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace("$instance", instance)
                .replace("$server", "(node0|node1|node2)");
            assert!(!expr.contains('$'), "a variable left: {expr}");
            out.push((p["title"].as_str().unwrap().to_string(), expr));
        }
    }
    out
}

/// Runs every dashboard query until it returns data (a `rate` needs two scrapes in its window).
async fn dashboard_queries_return_data(prom: &Prometheus, instance: &str, limit: Duration) {
    let queries = grafana_queries(instance);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    for (title, expr) in &queries {
        let deadline = Instant::now() + limit;
        loop {
            if !prom.query_raw(expr).await.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "panel {title:?}: no data for {expr}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The template variables' `label_values(SELECTOR, LABEL)`: the selector finds the label.
    let d: Value =
        serde_json::from_str(include_str!("../dashboard/grafana/patroni-proxy.json")).unwrap();
    for v in d["templating"]["list"].as_array().unwrap() {
        let q = v["query"]["query"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap();
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let selector = selector.replace("$instance", instance);
        let values: std::collections::BTreeSet<String> = prom
            .query_raw(&selector)
            .await
            .iter()
            .filter_map(|s| s["metric"][label.trim()].as_str().map(String::from))
            .collect();
        let expect: &[&str] = match v["name"].as_str().unwrap() {
            "instance" => &[instance],
            "server" => &["node0", "node1", "node2"],
            other => panic!("unexpected variable {other}"),
        };
        assert_eq!(
            values.iter().map(String::as_str).collect::<Vec<_>>(),
            expect,
            "variable {}",
            v["name"]
        );
    }
}
