//! The listeners that are not the primary port, as the stats side shows them (issue 13 item 4):
//! per listener its role, its members now, its frontend counters, and each node as that listener
//! sees it (its own UP/DOWN from the listener's rule, why it is out, its own session counters),
//! as HAProxy's stats page shows one section per proxy.

use serde::Serialize;
use std::time::SystemTime;
use tokio::time::Instant;

use super::export::{frontend_view, server_view, FrontendView, ServerView};
use crate::state::{Shared, Snapshot};

#[derive(Debug, Serialize)]
pub struct ListenerView {
    pub name: String,
    /// `replica`, `any` or `standby_leader`.
    pub role: &'static str,
    pub balance: crate::routing::balance::Balance,
    /// With no member, new sessions go to the routed primary.
    pub fallback: bool,
    pub max_lag: Option<u64>,
    /// The nodes new sessions may go to now.
    pub members: Vec<String>,
    pub frontend: FrontendView,
    /// Every node, with this listener's counters and its own status.
    pub servers: Vec<ServerView>,
    /// Why each node that is not a member is out (by name), from the listener's rule.
    pub out: Vec<(String, String)>,
}

pub fn views(shared: &Shared, snap: &Snapshot) -> Vec<ListenerView> {
    let cfg = shared.config();
    let (now, wall) = (Instant::now(), SystemTime::now());
    (snap.sets.iter().zip(&shared.set_io))
        .map(|(set, io)| {
            let backends = io.backends();
            let servers: Vec<ServerView> = (snap.nodes.iter().zip(&backends).enumerate())
                .map(|(i, (n, b))| {
                    let mut v = server_view(&cfg, snap, n, b, false, now, wall);
                    if let Some(m) = set.nodes.get(i) {
                        // This listener's own rise/fall over its rule.
                        v.up = m.counter.is_up() && set.members.contains(&i);
                        if n.removed.is_none() {
                            v.status = match &m.verdict {
                                None => "INI".to_string(),
                                Some(_) => m.counter.status().to_string(),
                            };
                        }
                    }
                    v
                })
                .collect();
            let name = |i: usize| snap.nodes.get(i).map(|n| n.server.name.clone());
            ListenerView {
                name: set.name.clone(),
                role: set.rule.role.as_str(),
                balance: set.balance,
                fallback: set.fallback,
                max_lag: set.rule.max_lag,
                members: set.members.iter().filter_map(|&i| name(i)).collect(),
                frontend: frontend_view(&io.frontend, cfg.global.maxconn.get(), &servers),
                out: (set.nodes.iter().enumerate())
                    .filter(|(i, _)| !set.members.contains(i))
                    .filter_map(|(i, m)| {
                        let why = match &m.verdict {
                            None => "not checked yet".to_string(),
                            Some(Err(why)) => why.clone(),
                            Some(Ok(())) if !m.counter.is_up() => "DOWN (fall)".to_string(),
                            Some(Ok(())) => "drained, in maintenance, removed or routed".into(),
                        };
                        Some((name(i)?, why))
                    })
                    .collect(),
                servers,
            }
        })
        .collect()
}
