//! `dashboard/grafana/patroni-proxy.json` (issue 16 item 3) checked against the code, without
//! Grafana: it parses, every panel has the importable datasource and at least one query, and every
//! metric a query or a template variable names is one this proxy exports (so renaming a metric
//! fails here, not on the user's dashboard). The role timeline's colours are the dashboard's tones. That
//! every query runs against a real Prometheus scraping a real proxy is `tests/prometheus.rs`.

use std::collections::BTreeSet;

use patroni_proxy::stats::families::{families, FAMILIES};
use serde_json::Value;

const DASHBOARD: &str = include_str!("../dashboard/grafana/patroni-proxy.json");
const STYLE: &str = include_str!("../dashboard/style.css");
const DATASOURCE: &str = "${DS_PROMETHEUS}";

fn dashboard() -> Value {
    serde_json::from_str(DASHBOARD).expect("the dashboard is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// The metric names in a PromQL expression: every `patroni_proxy_...` identifier.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("patroni_proxy_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The family a series name belongs to (a histogram's `_bucket`, `_sum` and `_count`).
fn family_of(series: &str) -> Option<&'static str> {
    let exported: BTreeSet<&str> = families().map(|(name, _, _)| name).collect();
    if let Some(f) = exported.get(series) {
        return Some(f);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = series.strip_suffix(suffix)?;
        FAMILIES
            .iter()
            .find(|f| f.name == base && f.kind == patroni_proxy::stats::families::Kind::Histogram)
            .map(|f| f.name)
    })
}

#[test]
fn the_family_lookup_knows_histogram_series_and_rejects_strangers() {
    assert!(family_of("patroni_proxy_server_up").is_some());
    assert!(family_of("patroni_proxy_server_check_duration_seconds_bucket").is_some());
    assert!(
        family_of("patroni_proxy_server_up_bucket").is_none(),
        "not a histogram"
    );
    assert!(family_of("patroni_proxy_server_upp").is_none());
    assert_eq!(
        metric_names("rate(patroni_proxy_a_total{x=\"y\"}[1m]) / patroni_proxy_b"),
        ["patroni_proxy_a_total", "patroni_proxy_b"]
    );
}

#[test]
fn every_panel_queries_the_importable_datasource_and_known_metrics() {
    let d = dashboard();
    assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert_eq!(d["__inputs"][0]["pluginId"], "prometheus");
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut queries = 0;
    for p in panels(&d) {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id: {title}"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], DATASOURCE, "{title}");
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], DATASOURCE, "{title}");
            let expr = t["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{title}: {expr} names no metric");
            for n in names {
                let f = family_of(&n).unwrap_or_else(|| {
                    panic!("{title}: {n} is not exported (src/stats/families.rs)")
                });
                used.insert(f);
            }
            queries += 1;
        }
    }
    for v in d["templating"]["list"].as_array().expect("variables") {
        assert_eq!(v["datasource"]["uid"], DATASOURCE);
        let q = v["query"]["query"].as_str().expect("variable query");
        for n in metric_names(q) {
            assert!(family_of(&n).is_some(), "variable {}: {n}", v["name"]);
        }
    }
    assert!(queries >= 20, "{queries} queries");
    // What the issue asks the dashboard to show.
    for f in [
        "patroni_proxy_server_routed_primary",
        "patroni_proxy_server_role",
        "patroni_proxy_server_sessions_current",
        "patroni_proxy_frontend_bytes_in_total",
        "patroni_proxy_server_check_duration_seconds",
        "patroni_proxy_primary_changes_total",
        "patroni_proxy_no_primary_seconds",
        "patroni_proxy_frontend_held_total",
        "patroni_proxy_frontend_hold_released_total",
        "patroni_proxy_frontend_refusals_total",
        "patroni_proxy_server_connection_errors_total",
    ] {
        assert!(used.contains(f), "no panel shows {f}");
    }
}

/// The value of a CSS custom property in the light theme (its first definition).
fn css_var(name: &str) -> String {
    let at = STYLE
        .find(&format!("--{name}:"))
        .unwrap_or_else(|| panic!("--{name} in style.css"));
    let rest = &STYLE[at + name.len() + 3..];
    rest[..rest.find(';').unwrap()].trim().to_string()
}

#[test]
fn the_role_timeline_is_a_state_timeline_in_the_dashboards_tones() {
    let d = dashboard();
    let timeline = panels(&d)
        .into_iter()
        .find(|p| p["type"] == "state-timeline")
        .expect("a state timeline panel");
    let mapping = &timeline["fieldConfig"]["defaults"]["mappings"][0]["options"];
    let expect = [
        ("0", "down / unknown", "down-edge"),
        ("1", "replica", "replica-edge"),
        ("2", "routed primary", "primary-edge"),
        ("3", "primary, not routed", "amber-edge"),
        ("4", "no primary", "down-edge"),
        ("5", "primary routable", "primary-edge"),
    ];
    for (value, text, tone) in expect {
        assert_eq!(mapping[value]["text"], text, "value {value}");
        assert_eq!(
            mapping[value]["color"].as_str().unwrap(),
            css_var(tone),
            "value {value} is painted as --{tone}"
        );
    }
    assert_eq!(timeline["targets"][0]["legendFormat"], "{{server}}");
}
