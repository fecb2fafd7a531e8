//! The side-by-side Markdown table of `scripts/failover-compare`.

use std::collections::BTreeMap;

use super::*;

fn range(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if (hi - lo).abs() < 0.005 {
        format!("{lo:.2} s")
    } else {
        format!("{lo:.2}-{hi:.2} s")
    }
}

/// One Markdown table: a row per scenario and proxy; several iterations are summed (counts) or
/// shown as min-max (times).
pub fn markdown_table(reports: &[Report]) -> String {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in reports {
        let k = (r.scenario.clone(), r.proxy.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut out = String::from(
        "| scenario | proxy | runs | outage | promotion → first good write | first L7TOUT | marked DOWN | \
         replica routings | client errors | bare resets (after notice) | longest wait | session cut | \
         lost acked writes |\n\
         |---|---|---:|---|---|---|---|---:|---:|---|---|---|---:|\n",
    );
    for (scenario, proxy) in keys {
        let rs: Vec<&Report> = reports
            .iter()
            .filter(|r| r.scenario == scenario && r.proxy == proxy)
            .collect();
        let times = |f: &dyn Fn(&Report) -> Option<f64>| -> String {
            let v: Vec<f64> = rs.iter().filter_map(|r| f(r)).collect();
            let missing = rs.len() - v.len();
            match (v.is_empty(), missing) {
                (true, _) => "-".into(),
                (false, 0) => range(&v),
                (false, m) => format!("{} ({m} none)", range(&v)),
            }
        };
        let sum = |f: &dyn Fn(&Report) -> usize| -> usize { rs.iter().map(|r| f(r)).sum() };
        let mut errs: BTreeMap<String, usize> = BTreeMap::new();
        for r in &rs {
            for (k, v) in &r.errors {
                *errs.entry(k.clone()).or_insert(0) += v;
            }
        }
        let errs_text = if errs.is_empty() {
            "0".to_string()
        } else {
            let detail: Vec<String> = errs.iter().map(|(k, v)| format!("{v} {k}")).collect();
            format!("{} ({})", errs.values().sum::<usize>(), detail.join(", "))
        };
        let promo = if scenario == "restart" {
            times(&|r| r.first_good_s).replace(" s", " s from start")
        } else {
            times(&|r| r.promotion_to_first_good_s)
        };
        out += &format!(
            "| {scenario} | {proxy} | {} | {} | {promo} | {} | {} | {} | {errs_text} | {} ({}) | {} | {} | {} |\n",
            rs.len(),
            times(&|r| Some(r.outage_s)),
            times(&|r| r.first_timeout_s),
            times(&|r| r.down_s),
            sum(&|r| r.replica_routings),
            sum(&|r| r.bare_resets),
            sum(&|r| r.bare_resets_after_notice),
            times(&|r| Some(r.longest_wait_s)),
            times(&|r| r.session_cut_s),
            sum(&|r| r.lost_writes.len()),
        );
    }
    out
}
