//! Directives that `defaults` and the TCP listen share (retries, timeouts, TCP keepalive) and
//! HAProxy's time format. Numbers too large to represent are errors: HAProxy values must never wrap
//! into different, plausible ones (`307445734561825861m` once became `44s`).

use std::time::Duration;

use super::{directive_name, err, note, unknown, ImportError, Origins};
use crate::config::{self, Listen};

/// Settings that may appear in `defaults` and be overridden in a `listen`.
#[derive(Debug, Default, Clone)]
pub(super) struct Timeouts {
    pub(super) retries: Option<u32>,
    pub(super) client: Option<Duration>,
    pub(super) server: Option<Duration>,
    pub(super) connect: Option<Duration>,
    pub(super) check: Option<Duration>,
    pub(super) queue: Option<Duration>,
    /// `timeout tunnel`: in TCP mode it replaces both idle timeouts once the session is
    /// established, as HAProxy applies it.
    pub(super) tunnel: Option<Duration>,
    /// `option clitcpka` / `no option clitcpka` (and `tcpka` for both sides).
    cli_ka: Option<bool>,
    srv_ka: Option<bool>,
    /// `clitcpka-*` / `srvtcpka-*` values with the line that set them: both sides share one
    /// setting in `proxy.toml`, so differing values are an error naming the second line.
    cli_idle: Option<(usize, Duration)>,
    srv_idle: Option<(usize, Duration)>,
    cli_intvl: Option<(usize, Duration)>,
    srv_intvl: Option<(usize, Duration)>,
    cli_cnt: Option<(usize, u32)>,
    srv_cnt: Option<(usize, u32)>,
}

/// Keepalive: on/off per side, and one shared idle/interval/count (both sides' values must agree).
pub(super) fn apply_keepalive(
    t: &Timeouts,
    listen: &mut Listen,
    origins: &mut Origins,
) -> Result<(), ImportError> {
    // An HAProxy file without `option *tcpka` has keepalive off; patroni-proxy keeps its default
    // (on) rather than write `false`: docs/configuration.md says why.
    if let Some(on) = t.cli_ka {
        listen.client_keepalive = on;
    }
    if let Some(on) = t.srv_ka {
        listen.server_keepalive = on;
    }
    let keys = [
        ("listen.keepalive_idle", "tcpka-idle"),
        ("listen.keepalive_interval", "tcpka-intvl"),
    ];
    let values = [
        (t.cli_idle, t.srv_idle, &mut listen.keepalive_idle),
        (t.cli_intvl, t.srv_intvl, &mut listen.keepalive_interval),
    ];
    for ((key, what), (cli, srv, slot)) in keys.into_iter().zip(values) {
        if let Some((line, directive, d)) = shared(cli, srv, what)? {
            *slot = d;
            note(origins, key, line, &directive);
        }
    }
    if let Some((line, directive, n)) = shared(t.cli_cnt, t.srv_cnt, "tcpka-cnt")? {
        listen.keepalive_count = n;
        note(origins, "listen.keepalive_count", line, &directive);
    }
    Ok(())
}

/// The one value both sides' settings agree on, with the line and directive that set it.
fn shared<T: PartialEq + Copy>(
    cli: Option<(usize, T)>,
    srv: Option<(usize, T)>,
    what: &str,
) -> Result<Option<(usize, String, T)>, ImportError> {
    let named = |side: &str, (line, v): (usize, T)| (line, format!("{side}{what}"), v);
    match (cli.map(|c| named("cli", c)), srv.map(|s| named("srv", s))) {
        (Some(c), Some(s)) if c.2 != s.2 => {
            let later = if c.0 > s.0 { c } else { s };
            Err(err(
                later.0,
                &later.1,
                &format!(
                    "cli{what} and srv{what} differ: patroni-proxy has one keepalive setting for \
                     both sides (listen.keepalive_*); give them the same value"
                ),
            ))
        }
        (Some(v), _) | (None, Some(v)) => Ok(Some(v)),
        (None, None) => Ok(None),
    }
}

impl Timeouts {
    /// `self` (a listen's own settings) over `defaults`, field by field.
    pub(super) fn over(self, d: Timeouts) -> Timeouts {
        Timeouts {
            retries: self.retries.or(d.retries),
            client: self.client.or(d.client),
            server: self.server.or(d.server),
            connect: self.connect.or(d.connect),
            check: self.check.or(d.check),
            queue: self.queue.or(d.queue),
            tunnel: self.tunnel.or(d.tunnel),
            cli_ka: self.cli_ka.or(d.cli_ka),
            srv_ka: self.srv_ka.or(d.srv_ka),
            cli_idle: self.cli_idle.or(d.cli_idle),
            srv_idle: self.srv_idle.or(d.srv_idle),
            cli_intvl: self.cli_intvl.or(d.cli_intvl),
            srv_intvl: self.srv_intvl.or(d.srv_intvl),
            cli_cnt: self.cli_cnt.or(d.cli_cnt),
            srv_cnt: self.srv_cnt.or(d.srv_cnt),
        }
    }
}

/// Directives allowed both in `defaults` and in the TCP listen: retries, timeouts, TCP keepalive.
pub(super) fn parse_shared(
    line: usize,
    w: &[String],
    t: &mut Timeouts,
    in_defaults: bool,
    origins: &mut Origins,
) -> Result<(), ImportError> {
    let word = |i: usize| w.get(i).map(String::as_str);
    match (w[0].as_str(), word(1), word(2)) {
        ("log", Some("global"), _) if in_defaults => Ok(()),
        ("mode", ..) if in_defaults => match word(1) {
            Some("tcp") => Ok(()),
            _ => Err(err(line, "mode", "defaults must be `mode tcp`")),
        },
        ("retries", ..) => {
            t.retries = Some(count(line, w)?);
            note(origins, "listen.retries", line, "retries");
            Ok(())
        }
        ("timeout", which, _) => {
            let which = which.unwrap_or("");
            let directive = format!("timeout {which}");
            let value = w
                .get(2)
                .ok_or_else(|| err(line, &directive, "missing duration"))?;
            let d = haproxy_duration(value, Unit::Millis).map_err(|m| err(line, &directive, &m))?;
            let (slot, key) = match which {
                "client" => (&mut t.client, "listen.timeout_client"),
                "server" => (&mut t.server, "listen.timeout_server"),
                "connect" => (&mut t.connect, "listen.timeout_connect"),
                "check" => (&mut t.check, "check.timeout"),
                "queue" => (&mut t.queue, "listen.timeout_queue"),
                "tunnel" => (&mut t.tunnel, "listen.timeout_client"),
                _ => {
                    return Err(err(
                        line,
                        &directive,
                        "supported timeouts: client, server, connect, check, queue, tunnel",
                    ))
                }
            };
            *slot = Some(d);
            note(origins, key, line, &directive);
            Ok(())
        }
        // `no option X` turns off what `option X` (here or in `defaults`) turned on.
        ("option", Some(opt @ ("clitcpka" | "srvtcpka" | "tcpka")), None)
        | ("no", Some("option"), Some(opt @ ("clitcpka" | "srvtcpka" | "tcpka")))
            if w.len() <= 3 =>
        {
            let on = w[0] == "option";
            let directive = directive_name(w);
            if opt != "srvtcpka" {
                t.cli_ka = Some(on);
                note(origins, "listen.client_keepalive", line, &directive);
            }
            if opt != "clitcpka" {
                t.srv_ka = Some(on);
                note(origins, "listen.server_keepalive", line, &directive);
            }
            Ok(())
        }
        (kw @ ("clitcpka-idle" | "srvtcpka-idle" | "clitcpka-intvl" | "srvtcpka-intvl"), ..) => {
            let value = w
                .get(1)
                .filter(|_| w.len() == 2)
                .ok_or_else(|| err(line, kw, "expected one time, e.g. 60s"))?;
            // HAProxy reads these in seconds by default and rounds up to whole seconds (the
            // kernel's unit), as `parse_time_err(.., TIME_UNIT_S)` does.
            let d = haproxy_duration(value, Unit::Seconds)
                .and_then(whole_seconds_up)
                .map_err(|m| err(line, kw, &m))?;
            let slot = match kw {
                "clitcpka-idle" => &mut t.cli_idle,
                "srvtcpka-idle" => &mut t.srv_idle,
                "clitcpka-intvl" => &mut t.cli_intvl,
                _ => &mut t.srv_intvl,
            };
            *slot = Some((line, d));
            Ok(())
        }
        (kw @ ("clitcpka-cnt" | "srvtcpka-cnt"), ..) => {
            let n = count(line, w)?;
            if kw == "clitcpka-cnt" {
                t.cli_cnt = Some((line, n));
            } else {
                t.srv_cnt = Some((line, n));
            }
            Ok(())
        }
        _ => Err(unknown(
            line,
            &directive_name(w),
            if in_defaults {
                "defaults"
            } else {
                "the TCP listen"
            },
        )),
    }
}

/// `DIRECTIVE N`: a count that fits a u32 (no wrap: a larger number is an error).
fn count(line: usize, w: &[String]) -> Result<u32, ImportError> {
    w.get(1)
        .filter(|_| w.len() == 2)
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or_else(|| {
            err(
                line,
                &w[0],
                &format!("expected one count from 0 to {}, e.g. 2", u32::MAX),
            )
        })
}

/// The unit of an HAProxy time written without one.
#[derive(Debug, Clone, Copy)]
pub(super) enum Unit {
    /// Timeouts and check intervals.
    Millis,
    /// `clitcpka-idle`, `srvtcpka-intvl` and the like.
    Seconds,
}

/// HAProxy time format: a number with an optional unit (us, ms, s, m, h, d); without a unit, the
/// directive's default (`Unit`). A value too large to represent is an error, never a wrapped one.
pub(super) fn haproxy_duration(s: &str, default: Unit) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let too_large =
        || format!("time {s:?} is too large to represent: no setting allows more than 7d");
    let n: u64 = match num.parse() {
        Ok(n) => n,
        // Only digits, so the one way to fail is overflow.
        Err(_) if !num.is_empty() => return Err(too_large()),
        Err(_) => {
            return Err(format!(
                "invalid time {s:?}: expected a number with an optional unit (us, ms, s, m, h, d)"
            ))
        }
    };
    let secs = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(too_large)
    };
    let d = match (unit, default) {
        ("", Unit::Millis) | ("ms", _) => Duration::from_millis(n),
        ("", Unit::Seconds) | ("s", _) => Duration::from_secs(n),
        ("us", _) => Duration::from_micros(n),
        ("m", _) => secs(60)?,
        ("h", _) => secs(3600)?,
        ("d", _) => secs(86400)?,
        _ => {
            return Err(format!(
                "invalid time unit in {s:?}: use us, ms, s, m, h or d"
            ))
        }
    };
    if d.is_zero() {
        return Err(format!("time {s:?} is zero"));
    }
    Ok(d)
}

/// Rounds up to whole seconds, as HAProxy does for times it hands the kernel in seconds.
fn whole_seconds_up(d: Duration) -> Result<Duration, String> {
    if d.subsec_nanos() == 0 {
        return Ok(d);
    }
    d.as_secs()
        .checked_add(1)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            format!(
                "time {} is too large to represent",
                config::format_duration(d)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_durations() {
        let ms = |s| haproxy_duration(s, Unit::Millis);
        assert_eq!(ms("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(ms("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(ms("4000").unwrap(), Duration::from_secs(4));
        assert_eq!(ms("1500us").unwrap(), Duration::from_micros(1500));
        assert!(ms("3x").is_err());
        assert!(ms("0s").is_err());
        assert!(ms("").is_err());
        // `*tcpka-*` times are in seconds without a unit.
        assert_eq!(
            haproxy_duration("60", Unit::Seconds).unwrap(),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn haproxy_durations_too_large_are_errors_not_wrapped() {
        // Issue 11 item 12: 307445734561825861m wrapped to 44s. Every unit's overflow is an error.
        for s in [
            "307445734561825861m",
            "5124095576030432h",
            "213503982334602d",
            "18446744073709551616",
            "99999999999999999999999s",
        ] {
            let e = haproxy_duration(s, Unit::Millis).unwrap_err();
            assert!(e.contains("too large"), "{s}: {e}");
        }
        assert!(whole_seconds_up(Duration::new(u64::MAX, 1)).is_err());
        assert_eq!(
            whole_seconds_up(Duration::from_millis(1500)).unwrap(),
            Duration::from_secs(2)
        );
    }
}
