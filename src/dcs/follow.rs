//! What the watcher believes about Patroni's keys, as a pure state machine: fed range reads and
//! watch changes, it answers the signals for the state owner (only on changes) and whether the
//! watch has fallen silent.

use super::answers::LeaderLease;
use super::parse::{Change, DcsError, Keys};

/// What the state owner is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    Leader(Option<String>),
    SwitchoverRequested,
    SwitchoverEnded,
    /// The leader key's holder and its lease, sent after every read of the keys that found a
    /// leader (each resync, each watch (re)start, each leader change), whether or not it changed:
    /// a renewed lease makes no watch event, so this is how a live lease is known to be live.
    Lease(LeaderLease),
}

/// The keys as last seen, and how far the watch has shown the store's history.
#[derive(Debug, Default)]
pub struct Follower {
    leader: Option<String>,
    failover: bool,
    /// The revision the two values above reflect: news older than this is stale (a watch event
    /// that a resync read already covered, or a resync read overtaken by a watch event).
    applied: u64,
    /// The newest revision the current watch has shown (its events and message headers).
    shown: u64,
    /// A change that a resync read found and the watch had not shown yet: if the next resync
    /// finds it still unshown, the watch is not delivering.
    pending: Option<u64>,
}

impl Follower {
    /// The first read on an endpoint, just before its watch starts at `keys.revision + 1`. It is
    /// the truth whatever came before (another endpoint's revisions, an etcd restored from a
    /// snapshot): changes missed while no watch ran count too.
    pub fn connected(&mut self, keys: &Keys) -> Vec<Signal> {
        self.applied = keys.revision;
        self.shown = keys.revision;
        self.pending = None;
        let mut out = self.set_failover(keys.failover);
        out.extend(self.set_leader(keys.leader.clone()));
        out
    }

    /// One change read from the watch.
    pub fn change(&mut self, change: Change) -> Vec<Signal> {
        match change {
            Change::Progress { revision } => {
                self.shown = self.shown.max(revision);
                Vec::new()
            }
            Change::Leader { leader, revision } => {
                if self.fresh(revision) {
                    self.set_leader(leader)
                } else {
                    Vec::new()
                }
            }
            Change::Failover {
                immediate,
                revision,
            } => {
                if self.fresh(revision) {
                    self.set_failover(immediate)
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// A periodic read on the endpoint being watched. Its answer proves the endpoint alive, and
    /// corrects what a watch may have missed; an error says the watch is not delivering: a change
    /// read by the previous resync is still not shown by it, a whole resync period later.
    pub fn resync(&mut self, keys: &Keys) -> Result<Vec<Signal>, DcsError> {
        if let Some(p) = self.pending.filter(|p| self.shown < *p) {
            return Err(DcsError::Lagging(p));
        }
        self.pending = (keys.mod_revision > self.shown).then_some(keys.mod_revision);
        if keys.revision < self.applied {
            return Ok(Vec::new());
        }
        self.applied = keys.revision;
        let mut out = self.set_failover(keys.failover);
        out.extend(self.set_leader(keys.leader.clone()));
        Ok(out)
    }

    /// Whether an event at `revision` is news (an event without a revision always is).
    fn fresh(&mut self, revision: Option<u64>) -> bool {
        let Some(r) = revision else { return true };
        self.shown = self.shown.max(r);
        if r <= self.applied {
            return false;
        }
        self.applied = r;
        true
    }

    fn set_leader(&mut self, leader: Option<String>) -> Vec<Signal> {
        if leader == self.leader {
            return Vec::new();
        }
        self.leader = leader.clone();
        vec![Signal::Leader(leader)]
    }

    fn set_failover(&mut self, failover: bool) -> Vec<Signal> {
        if failover == self.failover {
            return Vec::new();
        }
        self.failover = failover;
        vec![if failover {
            Signal::SwitchoverRequested
        } else {
            Signal::SwitchoverEnded
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(leader: Option<&str>, failover: bool, revision: u64, mod_revision: u64) -> Keys {
        Keys {
            leader: leader.map(str::to_string),
            failover,
            revision,
            mod_revision,
            leader_lease: None,
        }
    }

    fn leader_at(name: &str, revision: u64) -> Change {
        Change::Leader {
            leader: Some(name.into()),
            revision: Some(revision),
        }
    }

    fn lead(name: &str) -> Signal {
        Signal::Leader(Some(name.into()))
    }

    #[test]
    fn signals_only_on_changes() {
        let mut f = Follower::default();
        assert_eq!(f.connected(&keys(Some("pg0"), false, 10, 8)), [lead("pg0")]);
        assert_eq!(f.change(Change::Progress { revision: 12 }), []);
        assert_eq!(f.change(leader_at("pg0", 13)), [], "same value rewritten");
        assert_eq!(f.change(leader_at("pg1", 14)), [lead("pg1")]);
        let request = Change::Failover {
            immediate: true,
            revision: Some(15),
        };
        assert_eq!(f.change(request), [Signal::SwitchoverRequested]);
        let cleared = Change::Failover {
            immediate: false,
            revision: Some(16),
        };
        assert_eq!(f.change(cleared), [Signal::SwitchoverEnded]);
        let deleted = Change::Leader {
            leader: None,
            revision: Some(17),
        };
        assert_eq!(f.change(deleted), [Signal::Leader(None)]);
        // A new endpoint's first read reports what was missed in between, failover first.
        assert_eq!(
            f.connected(&keys(Some("pg2"), true, 30, 29)),
            [Signal::SwitchoverRequested, lead("pg2")]
        );
        assert_eq!(f.connected(&keys(Some("pg2"), true, 31, 29)), []);
    }

    #[test]
    fn stale_news_is_ignored_in_both_directions() {
        let mut f = Follower::default();
        f.connected(&keys(Some("pg0"), false, 10, 8));
        // A resync read at 20 already saw pg1; the watch's event for it (19) arrives after.
        assert_eq!(
            f.resync(&keys(Some("pg1"), false, 20, 19)),
            Ok(vec![lead("pg1")])
        );
        assert_eq!(f.change(leader_at("pg1", 19)), []);
        // An older event arriving late must not bring the old value back.
        assert_eq!(f.change(leader_at("pg0", 18)), []);
        // The watch shows pg2 at 25 while a resync read served at 24 was on its way.
        assert_eq!(f.change(leader_at("pg2", 25)), [lead("pg2")]);
        assert_eq!(f.resync(&keys(Some("pg1"), false, 24, 19)), Ok(vec![]));
        // Events without a revision (not etcd's, but possible) are taken as news.
        let unversioned = Change::Leader {
            leader: Some("pg3".into()),
            revision: None,
        };
        assert_eq!(f.change(unversioned), [lead("pg3")]);
    }

    #[test]
    fn a_watch_that_does_not_show_a_change_within_a_resync_period_is_dead() {
        let mut f = Follower::default();
        f.connected(&keys(Some("pg0"), false, 10, 8));
        // Nothing changed: an idle watch is healthy however long it stays quiet.
        for rev in 11..20 {
            assert_eq!(f.resync(&keys(Some("pg0"), false, rev, 8)), Ok(vec![]));
        }
        // A change at 25 the watch has not shown: read, applied, and remembered.
        assert_eq!(
            f.resync(&keys(Some("pg1"), false, 26, 25)),
            Ok(vec![lead("pg1")])
        );
        // The watch shows it before the next resync: all is well.
        assert_eq!(f.change(leader_at("pg1", 25)), []);
        assert_eq!(f.resync(&keys(Some("pg1"), false, 27, 25)), Ok(vec![]));
        // Another change the watch never shows: the next resync gives the watch up.
        assert_eq!(
            f.resync(&keys(Some("pg2"), false, 30, 29)),
            Ok(vec![lead("pg2")])
        );
        assert_eq!(f.change(Change::Progress { revision: 28 }), []);
        assert_eq!(
            f.resync(&keys(Some("pg2"), false, 31, 29)),
            Err(DcsError::Lagging(29))
        );
        // A progress notification past the change is as good as the event.
        let mut f = Follower::default();
        f.connected(&keys(None, false, 10, 0));
        f.resync(&keys(Some("pg0"), false, 12, 11)).unwrap();
        f.change(Change::Progress { revision: 12 });
        assert_eq!(f.resync(&keys(Some("pg0"), false, 13, 11)), Ok(vec![]));
    }

    #[test]
    fn a_new_endpoint_starts_a_new_account() {
        let mut f = Follower::default();
        f.connected(&keys(Some("pg0"), false, 10, 8));
        f.resync(&keys(Some("pg1"), false, 20, 19)).unwrap();
        // The old watch never showed 19; the new one starts after it and owes nothing.
        f.connected(&keys(Some("pg1"), false, 21, 19));
        assert_eq!(f.resync(&keys(Some("pg1"), false, 22, 19)), Ok(vec![]));
        // An etcd restored from an older snapshot: its revisions are the truth now.
        assert_eq!(f.connected(&keys(Some("pg0"), false, 5, 4)), [lead("pg0")]);
        assert_eq!(f.change(leader_at("pg1", 6)), [lead("pg1")]);
    }
}
