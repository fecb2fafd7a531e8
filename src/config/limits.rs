//! The accepted range of every duration and count in the config file, and the guard that keeps
//! duration parsing from panicking.
//!
//! Why ranges: a value that parses is not yet a value the program can run with. `1e19s`-sized
//! durations overflow `Instant + Duration` at run time, and a `rise` near `u32::MAX` wraps the health
//! counter. Each key gets the range an operator of a Patroni cluster could mean, documented in
//! `docs/configuration.md` (a test checks the page against [`LIMITS`]).

use std::fmt;
use std::time::Duration;

/// An inclusive range a key's value must lie in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Duration {
        min: Duration,
        max: Duration,
        /// The kernel counts TCP keepalive times in whole seconds: `1500ms` would silently become
        /// `1s`, so it is refused.
        whole_seconds: bool,
    },
    Count {
        min: u64,
        max: u64,
    },
}

/// A value to check against its key's [`Limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    Duration(Duration),
    Count(u64),
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
const HOUR: u64 = 3600;

const fn span(min: Duration, max: Duration) -> Limit {
    Limit::Duration {
        min,
        max,
        whole_seconds: false,
    }
}
const fn count(min: u64, max: u64) -> Limit {
    Limit::Count { min, max }
}

/// Check intervals: under 10 ms a node's REST API is polled faster than Patroni answers; over an
/// hour a failure goes unseen too long to call it a health check.
const INTERVAL: Limit = span(ms(10), secs(HOUR));
/// Connect, queue, check and hold timeouts: waits that a client or a check sits through.
const TIMEOUT: Limit = span(ms(1), secs(HOUR));
/// Inactivity timeouts: sessions may idle for days (keepalive catches dead peers), not forever.
const IDLE: Limit = span(ms(1), secs(7 * 24 * HOUR));
/// Connection limits: beyond a million the descriptor limit is reached first.
const CONNECTIONS: Limit = count(1, 1_000_000);

/// Every ranged key (servers as `server.KEY`) and its range.
pub const LIMITS: &[(&str, Limit)] = &[
    ("global.maxconn", CONNECTIONS),
    (
        "global.threads",
        count(1, crate::config::MAX_THREADS as u64),
    ),
    ("global.shutdown_grace", TIMEOUT),
    ("listen.retries", count(0, 100)),
    ("listen.timeout_connect", TIMEOUT),
    ("listen.timeout_client", IDLE),
    ("listen.timeout_server", IDLE),
    ("listen.timeout_queue", TIMEOUT),
    ("listen.hold_timeout", TIMEOUT),
    // A pebibyte: beyond it no replica could be too far behind.
    ("listen.max_lag", count(0, 1 << 50)),
    // Linux caps TCP_KEEPIDLE/TCP_KEEPINTVL at 32767 s and TCP_KEEPCNT at 127; past 2 h idle the
    // kernel's own default applies and keepalive stops being a dead-peer detector.
    (
        "listen.keepalive_idle",
        Limit::Duration {
            min: secs(1),
            max: secs(2 * HOUR),
            whole_seconds: true,
        },
    ),
    (
        "listen.keepalive_interval",
        Limit::Duration {
            min: secs(1),
            max: secs(600),
            whole_seconds: true,
        },
    ),
    ("listen.keepalive_count", count(1, 100)),
    ("listen.kernel_after", count(0, 1_000_000)),
    ("check.expect_status", count(100, 599)),
    ("check.inter", INTERVAL),
    ("check.fastinter", INTERVAL),
    ("check.downinter", INTERVAL),
    ("check.rise", count(1, 1000)),
    ("check.fall", count(1, 1000)),
    ("check.timeout", TIMEOUT),
    ("check.failover_inter", INTERVAL),
    ("check.resolve_interval", INTERVAL),
    ("check.sql.timeout", TIMEOUT),
    ("server.maxconn", CONNECTIONS),
    // Under a second the re-reads add load on etcd for nothing (Patroni's own loop is 10 s);
    // over ten minutes a lapsed leader lease or a deaf watch goes unseen too long.
    ("etcd.resync", span(secs(1), secs(600))),
];

/// The [`Limit`] of a dotted key; `server[2].maxconn` is looked up as `server.maxconn`.
pub fn limit_of(key: &str) -> Option<Limit> {
    let general = match (key.find('['), key.find(']')) {
        (Some(open), Some(close)) if open < close => {
            format!("{}{}", &key[..open], &key[close + 1..])
        }
        _ => key.to_string(),
    };
    LIMITS
        .iter()
        .find(|(k, _)| *k == general)
        .map(|(_, limit)| *limit)
}

/// Checks `value` against the range of `key`; the error names the value and the range.
pub fn check(key: &str, value: Value) -> Result<(), String> {
    let Some(limit) = limit_of(key) else {
        // A key validate() passes without a table entry: a bug here, not in the file.
        return Err(format!(
            "no range is defined for `{key}` (a bug: please report it)"
        ));
    };
    match (limit, value) {
        (
            Limit::Duration {
                min,
                max,
                whole_seconds,
            },
            Value::Duration(d),
        ) => {
            if d < min || d > max {
                return Err(format!(
                    "{} is out of range: use {limit}",
                    super::format_duration(d)
                ));
            }
            if whole_seconds && d.subsec_nanos() != 0 {
                return Err(format!(
                    "{} is not a whole number of seconds: the kernel counts keepalive times in \
                     seconds; use {limit}",
                    super::format_duration(d)
                ));
            }
            Ok(())
        }
        (Limit::Count { min, max }, Value::Count(n)) => {
            if n < min || n > max {
                return Err(format!("{n} is out of range: use {limit}"));
            }
            Ok(())
        }
        _ => Err(format!(
            "`{key}` was checked as the wrong kind of value (a bug: please report it)"
        )),
    }
}

impl fmt::Display for Limit {
    /// `10ms to 1h`, `1 to 1000`: the form used in errors and in the docs' range column.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Duration { min, max, .. } => write!(
                f,
                "{} to {}",
                super::format_duration(*min),
                super::format_duration(*max)
            ),
            Limit::Count { min, max } => write!(f, "{min} to {max}"),
        }
    }
}

/// Anything a duration string could mean beyond this is refused before `humantime` reads it: no
/// key allows more than 7 days, and `humantime` 2.4 panics instead of failing on sums that reach
/// `u64::MAX` seconds (e.g. `"18446744073709551615s 1000000000ns"`, chronotope/humantime#66).
const PARSE_CEILING: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// An upper bound of the duration `humantime` would read from `s`, in nanoseconds (saturating).
///
/// `humantime` reads a sequence of `NUMBER[.FRACTION] UNIT` terms and ignores whitespace inside a
/// number, so whitespace is dropped first; each term counts as (NUMBER + 1) units, an unknown
/// unit as a year (the largest). Exact enough to tell "a few days" from "beyond u64 seconds".
pub fn upper_bound_nanos(s: &str) -> u128 {
    const NS_PER_S: u128 = 1_000_000_000;
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let mut rest = compact.as_str();
    let mut total: u128 = 0;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        rest = &rest[start..];
        let int_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        // More than 38 digits does not fit u128: saturate, the bound is "huge" either way.
        let int: u128 = rest[..int_end].parse().unwrap_or(u128::MAX);
        rest = &rest[int_end..];
        if let Some(frac) = rest.strip_prefix('.') {
            // The fraction adds less than one unit, already counted by the `+ 1` below.
            rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
        }
        let unit_end = rest
            .find(|c: char| !(c.is_ascii_alphabetic() || c == 'µ'))
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let per_unit: u128 = match unit {
            "nanos" | "nsec" | "ns" => 1,
            "usec" | "us" | "µs" => 1_000,
            "millis" | "msec" | "ms" => 1_000_000,
            "seconds" | "second" | "secs" | "sec" | "s" => NS_PER_S,
            "minutes" | "minute" | "min" | "mins" | "m" => 60 * NS_PER_S,
            "hours" | "hour" | "hr" | "hrs" | "h" => 3600 * NS_PER_S,
            "days" | "day" | "d" => 86_400 * NS_PER_S,
            "weeks" | "week" | "wk" | "wks" | "w" => 7 * 86_400 * NS_PER_S,
            "months" | "month" | "M" => 2_630_016 * NS_PER_S,
            _ => 31_557_600 * NS_PER_S,
        };
        total = total.saturating_add(int.saturating_add(1).saturating_mul(per_unit));
    }
    total
}

/// Refuses a duration string whose value could be beyond [`PARSE_CEILING`], before it is parsed.
pub fn precheck_duration(s: &str) -> Result<(), String> {
    if upper_bound_nanos(s) > PARSE_CEILING.as_nanos() {
        return Err(format!(
            "duration {s:?} is far too large: no key allows more than 7 days \
             (docs/configuration.md lists each key's range)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_like_the_docs() {
        assert_eq!(limit_of("check.inter").unwrap().to_string(), "10ms to 1h");
        assert_eq!(
            limit_of("listen.timeout_client").unwrap().to_string(),
            "1ms to 7days"
        );
        assert_eq!(
            limit_of("server[7].maxconn").unwrap().to_string(),
            "1 to 1000000"
        );
        assert_eq!(limit_of("server[7].name"), None);
    }

    #[test]
    fn out_of_range_names_value_and_range() {
        let e = check("check.rise", Value::Count(u32::MAX as u64)).unwrap_err();
        assert_eq!(e, "4294967295 is out of range: use 1 to 1000");
        let e = check("check.inter", Value::Duration(ms(5))).unwrap_err();
        assert_eq!(e, "5ms is out of range: use 10ms to 1h");
        assert!(check("check.inter", Value::Duration(ms(10))).is_ok());
        assert!(check("check.inter", Value::Duration(secs(HOUR))).is_ok());
        assert!(check("listen.retries", Value::Count(0)).is_ok());
        let e = check("listen.keepalive_idle", Value::Duration(ms(1500))).unwrap_err();
        assert!(e.contains("whole number of seconds"), "{e}");
        assert!(check("nope", Value::Count(1)).is_err());
        assert!(check("check.inter", Value::Count(1)).is_err());
    }

    #[test]
    fn upper_bound_covers_what_humantime_reads() {
        for s in [
            "3s",
            "250ms",
            "1h30m",
            "1.5h",
            "7days",
            "1 2 s",
            "604800000000000ns",
            "2 weeks 3d",
            "1µs",
        ] {
            let d = humantime::parse_duration(s).unwrap();
            assert!(upper_bound_nanos(s) >= d.as_nanos(), "{s}");
            assert!(precheck_duration(s).is_ok(), "{s}");
        }
    }

    #[test]
    fn humantime_panics_are_refused_before_parsing() {
        // chronotope/humantime#66: these panic inside `humantime::parse_duration`.
        for s in [
            "18446744073709551615s 1000000000ns",
            "18446744073709551615s 999999999ns 1ns",
            "18446744073709551615s1000ms",
            "99999999999999999999h",
            "584542046090y 26w",
        ] {
            let e = precheck_duration(s).unwrap_err();
            assert!(e.contains("far too large"), "{s}: {e}");
        }
    }
}
