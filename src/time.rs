//! Time conversions in one place: deadline arithmetic that cannot overflow, and wall-clock times as
//! Unix seconds (JSON, CSV, metrics). Config validation bounds every duration, but a deadline is
//! `now + duration`, and `Instant + Duration` panics on overflow: a deadline too far away to
//! represent is simply "never" (tokio's own timers treat it the same way).

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// About 30 years: further than any deadline of this program, near enough to add to any `Instant`.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `from + d`, or a moment about 30 years after `from` when that does not fit.
pub fn deadline(from: Instant, d: Duration) -> Instant {
    from.checked_add(d)
        .or_else(|| from.checked_add(FAR))
        .unwrap_or(from)
}

/// Seconds since the Unix epoch (0 for a time before it).
pub fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// `#[serde(serialize_with = "crate::time::ser_epoch")]`: a wall-clock time as Unix seconds.
pub fn ser_epoch<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(epoch_secs(*t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        // Issue 11 item 8: `1e19s` overflowed `Instant + Duration` in checks, hold and idle timers.
        let now = Instant::now();
        assert_eq!(
            deadline(now, Duration::from_secs(3)),
            now + Duration::from_secs(3)
        );
        let far = deadline(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(86_400 * 365 * 10));
        assert!(deadline(now, Duration::from_secs(u64::MAX)) >= far);
    }
}
