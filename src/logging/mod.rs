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
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("pp-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.with_ansi(false).event_format(json::Json).init(),
    }
    Guard(guard)
}

/// Log lines dropped because stderr did not keep up (0 when logging was never initialised, as in
/// tests that run the proxy in-process).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
