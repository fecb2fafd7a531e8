//! The typed view of one snapshot plus the IO counters, shared by every export.

use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;
use tokio::time::Instant;

use crate::health::CheckResult;
use crate::patroni::Answer;
use crate::routing::Claim;
use crate::state::{Event, Shared};

#[derive(Debug, Serialize)]
pub struct View {
    pub proxy: String,
    pub version: &'static str,
    pub uptime_s: u64,
    pub primary: Option<String>,
    pub primary_changes: u64,
    pub no_primary_total_s: f64,
    pub frontend: FrontendView,
    pub servers: Vec<ServerView>,
    pub events: Vec<Event>,
}

#[derive(Debug, Serialize)]
pub struct FrontendView {
    pub scur: u64,
    pub smax: u64,
    pub slim: u32,
    pub stot: u64,
    pub bin: u64,
    pub bout: u64,
    pub no_server: u64,
    pub queue_timeout: u64,
    pub connect_failed: u64,
}

#[derive(Debug, Serialize)]
pub struct ServerView {
    pub name: String,
    pub address: String,
    pub check_address: String,
    pub status: String,
    pub up: bool,
    pub routed_primary: bool,
    pub role: Option<String>,
    pub patroni_state: Option<String>,
    pub timeline: Option<u64>,
    pub claim: Claim,
    pub last_answer: Option<Answer>,
    pub last_check: Option<CheckResult>,
    pub check_health: u32,
    pub chkfail: u64,
    pub chkdown: u64,
    pub lastchg_s: u64,
    pub downtime_s: u64,
    pub scur: u64,
    pub smax: u64,
    pub slim: u32,
    pub stot: u64,
    pub qcur: u64,
    pub qmax: u64,
    pub bin: u64,
    pub bout: u64,
    pub econ: u64,
    pub wretr: u64,
    pub killed: u64,
}

pub fn view(shared: &Shared) -> View {
    let snap = shared.current();
    let now = Instant::now();
    let fe = &shared.frontend;
    let servers = snap
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let s = &shared.config.servers[i];
            let c = &shared.backends[i].counters;
            let info = n.last_check.as_ref().and_then(|r| r.patroni.as_ref());
            ServerView {
                name: s.name.clone(),
                address: s.address.to_string(),
                check_address: shared.config.check_target(i).to_string(),
                status: n.counter.status().to_string(),
                up: n.counter.is_up(),
                routed_primary: snap.primary == Some(i),
                role: info.and_then(|p| p.role.clone()),
                patroni_state: info.and_then(|p| p.state.clone()),
                timeline: info.and_then(|p| p.timeline),
                claim: n.claim.clone(),
                last_answer: n.last_answer.clone(),
                last_check: n.last_check.clone(),
                check_health: n.counter.health(),
                chkfail: n.chkfail,
                chkdown: n.chkdown,
                lastchg_s: now.saturating_duration_since(n.last_change).as_secs(),
                downtime_s: n.downtime_at(now).as_secs(),
                scur: c.scur.load(Relaxed),
                smax: c.smax.load(Relaxed),
                slim: s.maxconn.get(),
                stot: c.stot.load(Relaxed),
                qcur: c.qcur.load(Relaxed),
                qmax: c.qmax.load(Relaxed),
                bin: c.bin.load(Relaxed),
                bout: c.bout.load(Relaxed),
                econ: c.econ.load(Relaxed),
                wretr: c.wretr.load(Relaxed),
                killed: c.killed.load(Relaxed),
            }
        })
        .collect();
    View {
        proxy: shared.config.listen.name.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: shared.started_at.elapsed().as_secs(),
        primary: snap.primary.map(|i| shared.server_name(i).to_string()),
        primary_changes: snap.primary_changes,
        no_primary_total_s: snap.no_primary_total_at(now).as_secs_f64(),
        frontend: FrontendView {
            scur: fe.scur.load(Relaxed),
            smax: fe.smax.load(Relaxed),
            slim: shared.config.global.maxconn.get(),
            stot: fe.stot.load(Relaxed),
            bin: fe.bin.load(Relaxed),
            bout: fe.bout.load(Relaxed),
            no_server: fe.no_server.load(Relaxed),
            queue_timeout: fe.queue_timeout.load(Relaxed),
            connect_failed: fe.connect_failed.load(Relaxed),
        },
        servers,
        events: shared.events.recent(),
    }
}
