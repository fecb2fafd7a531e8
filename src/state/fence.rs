//! Timeline fencing (issue 14 item 1): a node whose timeline is lower than the highest timeline
//! seen from a routable primary is never routed again until it reports that timeline or a higher
//! one. A timeline only grows with each promotion, so a node claiming the primary role on an older
//! one is a demoted primary that came back without `pg_rewind` (or a stale answer): routing to it
//! would send writes to a diverged history. The floor is kept in [`Snapshot::max_timeline`] and
//! only rises, for the life of the process (a cluster re-created from scratch, whose timelines
//! start again at 1, needs a restart of the proxy).

use std::time::SystemTime;

use super::core::{say, Effect, Level, Topic};
use super::{EventKind, Snapshot};
use crate::config::Config;
use crate::health::patroni::Answer;
use crate::routing::Claim;

/// Whether `claim` is a primary claim on a timeline below `floor`. A claim without a timeline (a
/// body-less answer) cannot be compared and is not fenced.
pub fn fenced(claim: &Claim, floor: Option<u64>) -> bool {
    match (claim, floor) {
        (
            Claim::Primary {
                timeline: Some(t), ..
            },
            Some(floor),
        ) => *t < floor,
        _ => false,
    }
}

/// Raises the floor to the routed primary's timeline (after routing chose it: it is routable).
pub fn record(snap: &mut Snapshot) {
    let Some(p) = snap.primary else { return };
    if let Some(Claim::Primary {
        timeline: Some(t), ..
    }) = snap.nodes.get(p).map(|n| &n.claim)
    {
        snap.max_timeline = snap.max_timeline.max(Some(*t));
    }
}

/// What to say when the check of `node` finds it claiming the role on a fenced timeline while
/// its previous answer (`before`) did not: once per such claim, not at every check.
pub fn on_check(
    cfg: &Config,
    snap: &Snapshot,
    node: usize,
    before: Option<&Answer>,
    wall: SystemTime,
) -> Option<Effect> {
    let n = snap.nodes.get(node)?;
    let floor = snap.max_timeline;
    let was = match before {
        Some(Answer::Primary { timeline }) => floor.is_some() && *timeline < floor,
        _ => false,
    };
    if was || !matches!(n.last_answer, Some(Answer::Primary { .. })) || !fenced(&n.claim, floor) {
        return None;
    }
    let Claim::Primary {
        timeline: Some(t), ..
    } = n.claim
    else {
        return None;
    };
    Some(say(
        Level::Warn,
        Topic::Routing,
        Some((EventKind::Suspect, Some(node))),
        wall,
        format!(
            "Server {}/{} claims the primary role on timeline {t}, below timeline {} already \
             seen from a routed primary (a demoted primary back without a rewind?): not routed \
             until it reports timeline {} or higher.",
            cfg.listen.name,
            n.server.name,
            floor.unwrap_or_default(),
            floor.unwrap_or_default(),
        ),
    ))
}
