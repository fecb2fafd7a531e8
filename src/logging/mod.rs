//! Process-wide logging to stderr that can never stall the proxy. Lines go through a bounded queue
//! to a writer thread (`tracing-appender`); when stderr blocks (a full pipe nobody reads, a stuck
//! journald), lines are dropped and counted instead of blocking the runtime that runs the state
//! owner, the checks, the stats listener and the sessions (issue 11 item 4). Colour codes are only
//! written to a terminal.
//!
//! The subscriber is global by nature, so its drop counter is too: the metrics read it through
//! [`dropped_lines`].

mod json;

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Lines queued for the writer thread before new ones are dropped: a burst of a busy
/// `RUST_LOG=debug` (one line per session), about 100-200 KiB at most.
const QUEUE_LINES: usize = 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Flushes what is queued when dropped (for at most about a second: a blocked stderr cannot hold
/// up the exit).
#[must_use = "dropping the guard stops the log writer"]
pub struct Guard(#[allow(dead_code)] WorkerGuard);

/// Installs the subscriber: `RUST_LOG` filter (default `info`), non-blocking lossy stderr, lines
/// in `format`.
pub fn init(format: LogFormat) -> Guard {
    let (filter, bad) = filter(std::env::var("RUST_LOG").ok().as_deref());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("pp-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(tracing::Level::TRACE);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(filter)
            .init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .event_format(json::Json)
            .finish()
            .with(filter)
            .init(),
    }
    if let Some(e) = bad {
        tracing::warn!("RUST_LOG ignored, logging at info: {e}");
    }
    Guard(guard)
}

/// The log filter `RUST_LOG` says (`LEVEL` and `TARGET=LEVEL` directives, comma-separated), or
/// `info` and why when it says nothing valid. `Targets`, not `EnvFilter`: `EnvFilter`'s span and
/// field directives need a regex engine, 0.3 MB of the binary's text for what nobody sets here.
fn filter(var: Option<&str>) -> (Targets, Option<String>) {
    let info = || Targets::new().with_default(LevelFilter::INFO);
    match var.map(str::trim).filter(|v| !v.is_empty()) {
        None => (info(), None),
        Some(v) => match v.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (info(), Some(format!("{v:?}: {e}"))),
        },
    }
}

/// Log lines dropped because stderr did not keep up (0 when logging was never initialised, as in
/// tests that run the proxy in-process).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_the_default_and_per_target_levels() {
        let (t, bad) = filter(Some("warn,patroni_proxy::session=debug"));
        assert!(bad.is_none());
        assert_eq!(t.default_level(), Some(LevelFilter::WARN));
        assert!(t.would_enable("patroni_proxy::session", &tracing::Level::DEBUG));
        assert!(!t.would_enable("patroni_proxy::state", &tracing::Level::INFO));
    }

    #[test]
    fn no_or_an_empty_rust_log_is_info() {
        for v in [None, Some(""), Some("  ")] {
            let (t, bad) = filter(v);
            assert!(bad.is_none());
            assert_eq!(t.default_level(), Some(LevelFilter::INFO));
        }
    }

    #[test]
    fn an_invalid_rust_log_is_info_and_says_why() {
        let (t, bad) = filter(Some("patroni_proxy=loud"));
        assert_eq!(t.default_level(), Some(LevelFilter::INFO));
        let bad = bad.expect("a reason");
        assert!(bad.contains("patroni_proxy=loud"), "{bad}");
    }
}
