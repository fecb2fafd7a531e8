//! The rise/fall health counter: a pure state machine with HAProxy's exact arithmetic
//! (`check.c set_server_check_status`, `haproxy-semantics.md` §1.3). Inputs are check outcomes; outputs
//! are transitions returned as values. No clocks, no IO.

use std::fmt;

/// One integer `health` in `0 ..= rise+fall-1`; the server is UP iff `health >= rise`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCounter {
    health: u32,
    rise: u32,
    fall: u32,
}

/// What one check outcome did to the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// `Some` when the operational state flipped.
    pub transition: Option<Transition>,
    /// The failure moved the counter (HAProxy's `chkfail`: "only counts checks failed when the server
    /// is up", i.e. while health > 0).
    pub counted_failure: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Reached `rise`: marked UP.
    WentUp,
    /// Reached 0: marked DOWN (this is when `on-marked-down shutdown-sessions` fires).
    WentDown,
}

/// The status as HAProxy prints it (`UP`, `UP 2/3`, `DOWN 1/2`, `DOWN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Up,
    /// UP but not at full health: `UP n/fall` ("going down").
    GoingDown {
        remaining: u32,
        fall: u32,
    },
    /// DOWN with some successes seen: `DOWN n/rise` ("going up").
    GoingUp {
        seen: u32,
        rise: u32,
    },
    Down,
}

impl HealthCounter {
    /// A server at start: UP with `health = rise` ("health: up, but will fall down at first failure",
    /// `server.c srv_settings_cpy`). Routing does not trust this: see `routing`.
    pub fn new(rise: u32, fall: u32) -> Self {
        assert!(
            rise >= 1 && fall >= 1,
            "rise and fall are validated non-zero"
        );
        Self {
            health: rise,
            rise,
            fall,
        }
    }

    /// The same counter under new thresholds (a reload): the operational state is kept, and so is
    /// the position within it, clamped to the new range. An UP server stays UP with as many
    /// failures to go as before, at most `fall`; a DOWN one stays DOWN with its successes so far,
    /// fewer than `rise`. A reload never marks a server UP or DOWN by itself.
    pub fn with_thresholds(&self, rise: u32, fall: u32) -> Self {
        let mut next = Self::new(rise, fall);
        next.health = if self.is_up() {
            // Failures it can still take before DOWN, minus one: `health - rise`.
            let margin = self.health.saturating_sub(self.rise);
            rise.saturating_add(margin.min(fall.saturating_sub(1)))
        } else {
            self.health.min(rise.saturating_sub(1))
        };
        next
    }

    fn max(&self) -> u32 {
        // Saturating: `rise + fall` of two large validated counts must not wrap (issue 11 item 8).
        self.rise.saturating_add(self.fall) - 1
    }

    pub fn health(&self) -> u32 {
        self.health
    }

    pub fn is_up(&self) -> bool {
        self.health >= self.rise
    }

    pub fn is_fully_up(&self) -> bool {
        self.health == self.max()
    }

    pub fn is_fully_down(&self) -> bool {
        self.health == 0
    }

    /// Applies one check outcome.
    pub fn observe(&mut self, passed: bool) -> Step {
        let was_up = self.is_up();
        let mut counted_failure = false;
        if passed {
            if self.health < self.max() {
                self.health += 1;
                if self.health >= self.rise {
                    self.health = self.max();
                }
            }
        } else if self.health > 0 {
            counted_failure = true;
            self.health -= 1;
            if self.health < self.rise {
                self.health = 0;
            }
        }
        let transition = match (was_up, self.is_up()) {
            (false, true) => Some(Transition::WentUp),
            (true, false) => Some(Transition::WentDown),
            _ => None,
        };
        Step {
            transition,
            counted_failure,
        }
    }

    pub fn status(&self) -> Status {
        if self.is_fully_up() {
            Status::Up
        } else if self.is_up() {
            Status::GoingDown {
                remaining: self.health - self.rise + 1,
                fall: self.fall,
            }
        } else if self.health == 0 {
            Status::Down
        } else {
            Status::GoingUp {
                seen: self.health,
                rise: self.rise,
            }
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Up => f.write_str("UP"),
            Status::GoingDown { remaining, fall } => write!(f, "UP {remaining}/{fall}"),
            Status::GoingUp { seen, rise } => write!(f, "DOWN {seen}/{rise}"),
            Status::Down => f.write_str("DOWN"),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each test quotes the line of the checklist in `haproxy-semantics.md` it covers.
    use super::*;

    #[test]
    fn new_thresholds_keep_the_state_and_its_position() {
        // Issue 15 item 1: "unchanged servers keep their health state"; rise/fall apply from the
        // next check. Fully UP at rise 2 fall 3 stays fully UP at rise 3 fall 2.
        let mut up = HealthCounter::new(2, 3);
        up.observe(true);
        assert!(up.is_fully_up());
        let r = up.with_thresholds(3, 2);
        assert!(r.is_fully_up(), "{r:?}");
        // UP with one failure to go stays one failure from DOWN, however large the new fall.
        let mut edge = HealthCounter::new(2, 3).with_thresholds(5, 5);
        assert!(edge.is_up());
        assert_eq!(edge.observe(false).transition, Some(Transition::WentDown));
        // DOWN with one success seen stays DOWN: a reload to rise 1 does not mark it UP.
        let mut down = HealthCounter::new(2, 1);
        down.observe(false);
        down.observe(true);
        assert!(!down.is_up());
        assert!(!down.with_thresholds(1, 1).is_up());
        assert_eq!(down.with_thresholds(3, 1).health(), 1);
    }

    const PASS: bool = true;
    const FAIL: bool = false;

    fn seed() -> HealthCounter {
        HealthCounter::new(2, 3)
    }

    fn fully_up() -> HealthCounter {
        let mut h = seed();
        h.observe(PASS);
        h
    }

    fn fully_down() -> HealthCounter {
        let mut h = seed();
        h.observe(FAIL);
        h
    }

    #[test]
    fn at_startup_server_is_up_with_health_rise() {
        // "At startup every checked server is UP with health = rise, status `UP 1/3`"
        let h = seed();
        assert_eq!(h.health(), 2);
        assert!(h.is_up());
        assert_eq!(h.status().to_string(), "UP 1/3");
    }

    #[test]
    fn at_startup_one_failure_marks_down_and_one_success_fully_up() {
        // "At startup a single failed check marks a server DOWN; a single success makes it fully UP."
        let mut h = seed();
        let s = h.observe(FAIL);
        assert_eq!(s.transition, Some(Transition::WentDown));
        assert_eq!(h.status(), Status::Down);

        let mut h = seed();
        let s = h.observe(PASS);
        assert_eq!(s.transition, None, "already UP, just healthier");
        assert_eq!(h.status(), Status::Up);
        assert_eq!(h.health(), 4);
    }

    #[test]
    fn fully_up_server_goes_down_after_three_failures() {
        // "A fully UP server shows `UP`, then `UP 2/3`, `UP 1/3`, `DOWN` after 1, 2, 3 consecutive failures."
        let mut h = fully_up();
        let mut seen = vec![h.status().to_string()];
        let mut transitions = vec![];
        for _ in 0..3 {
            transitions.push(h.observe(FAIL).transition);
            seen.push(h.status().to_string());
        }
        assert_eq!(seen, ["UP", "UP 2/3", "UP 1/3", "DOWN"]);
        assert_eq!(transitions, [None, None, Some(Transition::WentDown)]);
    }

    #[test]
    fn fully_down_server_goes_up_after_two_successes() {
        // "A fully DOWN server shows `DOWN 1/2` after 1 success and `UP` after the 2nd."
        let mut h = fully_down();
        let s1 = h.observe(PASS);
        assert_eq!(h.status().to_string(), "DOWN 1/2");
        assert_eq!(s1.transition, None);
        let s2 = h.observe(PASS);
        assert_eq!(h.status().to_string(), "UP");
        assert_eq!(s2.transition, Some(Transition::WentUp));
    }

    #[test]
    fn health_stays_within_bounds_and_snaps() {
        // "health ranges 0..rise+fall-1 (0..4); a failure with health>0 decrements it and snaps to 0
        // below rise; a success increments it and snaps to rise+fall-1 at or above rise."
        let mut h = fully_up();
        for _ in 0..10 {
            h.observe(PASS);
            assert_eq!(h.health(), 4);
        }
        h.observe(FAIL); // 3
        h.observe(FAIL); // 2
        h.observe(FAIL); // 1 < rise -> 0
        assert_eq!(h.health(), 0);
        for _ in 0..10 {
            h.observe(FAIL);
            assert_eq!(h.health(), 0);
        }
        h.observe(PASS); // 1
        assert_eq!(h.health(), 1);
        h.observe(FAIL); // back to 0, no transition: it was never UP
        assert_eq!(h.health(), 0);
        h.observe(PASS);
        h.observe(PASS); // 2 >= rise -> 4
        assert_eq!(h.health(), 4);
    }

    #[test]
    fn a_success_in_going_down_restores_full_health() {
        // A pass at UP 1/3 (h=2): h=3 >= rise, snaps to 4 (haproxy-semantics.md §1.3 "Passed check").
        let mut h = fully_up();
        h.observe(FAIL);
        h.observe(FAIL);
        assert_eq!(h.status().to_string(), "UP 1/3");
        h.observe(PASS);
        assert_eq!(h.status(), Status::Up);
    }

    #[test]
    fn chkfail_counts_only_failures_that_move_the_counter() {
        // "chkfail increments only on failures that decrement health (not while already DOWN)"
        let mut h = fully_up();
        let counted: Vec<bool> = (0..5).map(|_| h.observe(FAIL).counted_failure).collect();
        assert_eq!(counted, [true, true, true, false, false]);
        // DOWN 1/2 -> a failure moves health 1 -> 0, so it counts, as in HAProxy (health > 0).
        h.observe(PASS);
        assert!(h.observe(FAIL).counted_failure);
    }

    #[test]
    fn chkdown_is_one_went_down_per_up_to_down() {
        // "chkdown increments on each UP->DOWN"
        let mut h = fully_up();
        let mut downs = 0;
        for round in 0..3 {
            for _ in 0..4 {
                if h.observe(FAIL).transition == Some(Transition::WentDown) {
                    downs += 1;
                }
            }
            h.observe(PASS);
            h.observe(PASS);
            assert_eq!(downs, round + 1);
        }
    }

    #[test]
    fn other_thresholds_follow_the_same_formulas() {
        // "While UP the numbers are health-rise+1 / fall; while DOWN they are health / rise."
        let mut h = HealthCounter::new(4, 2); // max 5
        assert_eq!(h.status().to_string(), "UP 1/2");
        h.observe(FAIL);
        assert_eq!(h.status().to_string(), "DOWN");
        for expect in ["DOWN 1/4", "DOWN 2/4", "DOWN 3/4", "UP"] {
            h.observe(PASS);
            assert_eq!(h.status().to_string(), expect);
        }
        h.observe(FAIL);
        assert_eq!(h.status().to_string(), "UP 1/2");
        let s = h.observe(FAIL);
        assert_eq!(s.transition, Some(Transition::WentDown));

        // rise 1, fall 1: every outcome flips the state.
        let mut h = HealthCounter::new(1, 1);
        assert_eq!(h.observe(FAIL).transition, Some(Transition::WentDown));
        assert_eq!(h.observe(PASS).transition, Some(Transition::WentUp));
    }

    #[test]
    fn the_largest_counts_do_not_wrap() {
        // Issue 11 item 8: `rise`/`fall` of `u32::MAX` wrapped `rise + fall - 1`. Validation now
        // bounds both (1..=1000); the counter itself never panics or wraps whatever it is given.
        let mut c = HealthCounter::new(u32::MAX, u32::MAX);
        for passed in [true, false, false, true, true] {
            c.observe(passed);
        }
        // The largest validated counts follow the formulas exactly.
        let mut c = HealthCounter::new(1000, 1000);
        c.observe(true);
        assert!(c.is_fully_up());
        for _ in 0..999 {
            assert_eq!(c.observe(false).transition, None);
        }
        assert_eq!(c.observe(false).transition, Some(Transition::WentDown));
    }
}
