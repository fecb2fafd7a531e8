//! What the stats listener says of each listener's relay (`listen.relay`): what the file asks,
//! what runs, and why `auto` fell back to user space (`/stats.json` `relay`, and the metric
//! `patroni_proxy_relay_mode` the supervisor sets from it).

use serde::Serialize;

use crate::state::Shared;

/// One listener's relay: what the file asks and what runs, with the reason when `auto` fell
/// back to user space.
#[derive(Debug, Clone, Serialize)]
pub struct RelayView {
    pub listener: String,
    /// `user`, `kernel` or `auto`.
    pub configured: &'static str,
    /// `user` or `kernel`.
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not_kernel: Option<String>,
}

/// Who relays each listener's sessions.
pub fn views(shared: &Shared) -> Vec<RelayView> {
    let cfg = shared.config();
    cfg.listen
        .all()
        .iter()
        .map(|l| RelayView {
            listener: l.name.clone(),
            configured: l.relay.as_str(),
            mode: shared.sockmap.mode_of(l.relay),
            why_not_kernel: match (&shared.sockmap, l.relay) {
                (_, crate::config::RelayMode::User) => None,
                (crate::sockmap::Availability::Unavailable(why), _) => Some(why.clone()),
                _ => None,
            },
        })
        .collect()
}
