//! What one proxy's clients saw during a scenario, from its probe, its long session, the direct
//! watcher and the proxy's own events: the [`Report`].

use std::collections::BTreeMap;

use super::*;

const NOTICE_EVENTS: [&str; 4] = ["down", "primary_lost", "suspect", "primary_changed"];

#[allow(clippy::too_many_arguments)]
pub(super) async fn analyze(
    scenario: &str,
    iteration: usize,
    proxy: &Proxy,
    d: Done,
    watcher: &Watcher,
    event: f64,
    old: &Node,
    new: Option<&Node>,
    check_writes_on: Option<&Node>,
) -> Report {
    let rel = |t: f64| t - event;
    let server = old.server();
    let after_event = |t: &f64| *t > event;
    let status_change = d
        .changes
        .iter()
        .find(|c| c.at > event && c.server == server && c.status != "UP")
        .map(|c| c.at);
    let event_notice = d
        .events
        .iter()
        .find(|e| e.at > event && NOTICE_EVENTS.contains(&e.kind.as_str()))
        .map(|e| e.at);
    let noticed = [status_change, event_notice]
        .into_iter()
        .flatten()
        .filter(after_event)
        .min_by(f64::total_cmp);
    let down = d
        .events
        .iter()
        .find(|e| e.at > event && e.kind == "down" && e.server.as_deref() == Some(&server))
        .map(|e| e.at)
        .or_else(|| {
            d.changes
                .iter()
                .find(|c| c.at > event && c.server == server && c.status.starts_with("DOWN"))
                .map(|c| c.at)
        });
    let first_timeout = d
        .changes
        .iter()
        .find(|c| c.at > event && c.server == server && c.check.as_deref() == Some("L7TOUT"))
        .map(|c| c.at);
    let target = new.unwrap_or(old);
    let promoted = new
        .filter(|n| *n != old)
        .and_then(|n| watcher.promoted_at(&n.name, event));

    let a = &d.attempts;
    let first_bad = a
        .iter()
        .filter(|x| x.end > event && !x.outcome.is_ok())
        .map(|x| x.start)
        .min_by(f64::total_cmp);
    let recovered = first_bad.and_then(|fb| {
        a.iter()
            .filter(|x| x.start >= fb && x.outcome.is_ok())
            .map(|x| x.end)
            .min_by(f64::total_cmp)
    });
    let outage = match (first_bad, recovered) {
        (Some(fb), Some(r)) => r - fb,
        (Some(fb), None) => a.iter().map(|x| x.end).fold(fb, f64::max) - fb,
        _ => 0.0,
    };
    let is_on = |x: &Attempt, node: &Node| {
        x.outcome
            == Outcome::Primary {
                node: node.name.clone(),
            }
    };
    let first_good = if target != old {
        a.iter()
            .filter(|x| x.end > event && is_on(x, target))
            .map(|x| x.end)
            .min_by(f64::total_cmp)
    } else {
        recovered
    };
    let first_on_new = (target != old)
        .then(|| {
            a.iter()
                .filter(|x| is_on(x, target))
                .map(|x| x.end)
                .min_by(f64::total_cmp)
        })
        .flatten();
    let two_primaries = first_on_new.map_or(0, |t| {
        a.iter().filter(|x| x.start > t && is_on(x, old)).count()
    });
    let mut errors = BTreeMap::new();
    let mut patient = BTreeMap::new();
    for x in a {
        if x.patient && x.end > event {
            *patient.entry(x.outcome.label()).or_insert(0) += 1;
        }
        if !matches!(x.outcome, Outcome::Primary { .. } | Outcome::Replica { .. }) {
            *errors.entry(x.outcome.label()).or_insert(0) += 1;
        }
    }
    let resets = |from: f64| {
        a.iter()
            .filter(|x| x.start >= from && matches!(x.outcome, Outcome::Reset { .. }))
            .count()
    };
    let acked: Vec<i32> = a
        .iter()
        .filter(|x| x.outcome.is_ok())
        .map(|x| x.n as i32)
        .collect();
    let lost_writes = match check_writes_on {
        Some(p) => match stored_attempts(p, &d.run).await {
            Ok(stored) => acked
                .iter()
                .copied()
                .filter(|n| !stored.contains(n))
                .collect(),
            Err(e) => {
                eprintln!("could not read back the writes of {}: {e:#}", d.run);
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let (session_node, cut) = match d.session {
        Some((n, c)) => (Some(n), c),
        None => (None, None),
    };
    Report {
        scenario: scenario.to_string(),
        proxy: proxy.label().to_string(),
        iteration,
        run: d.run,
        event_at: event,
        old_primary: old.name.clone(),
        new_primary: new.map(|n| n.name.clone()),
        promoted_s: promoted.map(rel),
        noticed_s: noticed.map(rel),
        down_s: down.map(rel),
        first_timeout_s: first_timeout.map(rel),
        first_good_s: first_good.map(rel),
        promotion_to_first_good_s: promoted.zip(first_good).map(|(p, g)| g - p),
        outage_s: outage,
        longest_wait_s: a
            .iter()
            .filter(|x| x.end > event)
            .map(|x| x.end - x.start)
            .fold(0.0, f64::max),
        attempts: a.len(),
        ok: a.iter().filter(|x| x.outcome.is_ok()).count(),
        replica_routings: a
            .iter()
            .filter(|x| matches!(x.outcome, Outcome::Replica { .. }))
            .count(),
        two_primaries,
        client_errors: errors.values().sum(),
        errors,
        bare_resets: resets(f64::MIN),
        bare_resets_after_notice: noticed.map_or(0, resets),
        patient,
        session_node,
        session_cut_s: cut.as_ref().map(|c| rel(c.0)),
        session_cut: cut.map(|c| c.1),
        acked_writes: acked.len(),
        lost_writes,
        old_primary_writes_after_event: a
            .iter()
            .filter(|x| x.start > event && is_on(x, old))
            .count(),
        rejoined_as_replica: None,
        proxy_events: d
            .events
            .into_iter()
            .filter(|e| e.at > event - 5.0)
            .collect(),
        server_changes: d
            .changes
            .into_iter()
            .filter(|c| c.at > event - 5.0)
            .collect(),
        watcher: watcher.changes(),
        proxy_log: d.log.into_iter().filter(|l| l.0 > event - 5.0).collect(),
        attempt_log: d.attempts,
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn analyze_all(
    scenario: &str,
    iteration: usize,
    proxies: &[&Proxy],
    done: Vec<Done>,
    watcher: &Watcher,
    event: f64,
    old: &Node,
    new: Option<&Node>,
    check_writes_on: Option<&Node>,
) -> Vec<Report> {
    let mut out = Vec::new();
    for (p, d) in proxies.iter().zip(done) {
        let r = analyze(
            scenario,
            iteration,
            p,
            d,
            watcher,
            event,
            old,
            new,
            check_writes_on,
        )
        .await;
        println!("{}", r.summary());
        out.push(r);
    }
    out
}
