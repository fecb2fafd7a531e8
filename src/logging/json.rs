//! The `log.format = "json"` line: one JSON object per event, on one line, with the fields in a
//! fixed order: `timestamp` (RFC 3339, UTC, microseconds), `level` (`ERROR`, `WARN`, `INFO`,
//! `DEBUG`, `TRACE`), `target` (the module, e.g. `patroni_proxy::session`), `message`, then the
//! event's own fields flattened (numbers and booleans as JSON numbers and booleans, anything else
//! as a string). Those names are the contract documented in docs/operations.md; tracing-subscriber's
//! own JSON layer nests or renames them with its options and adds span lists, so the few lines here
//! are ours.
//!
//! JSON escapes every control character, so no colour code or raw newline from a logged value (a
//! client's bytes, an error text) can reach the output: one event is always one line.

use std::fmt;
use std::time::SystemTime;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The names every line starts with; an event field of the same name is written with a `_` added.
const RESERVED: [&str; 4] = ["timestamp", "level", "target", "message"];

/// The [`FormatEvent`] for `log.format = "json"`.
pub struct Json;

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let target = fields.log_target.take();
        let target = target.as_deref().unwrap_or(meta.target());
        writer.write_str(&line(SystemTime::now(), *meta.level(), target, fields))
    }
}

/// An event's message and fields, as recorded.
#[derive(Default)]
pub(super) struct Fields {
    message: Option<String>,
    /// A `log` crate record's target (bridged events carry it as a field).
    log_target: Option<String>,
    values: Vec<(String, Value)>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = Some(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else if name == "log.target" {
            self.log_target = value.as_str().map(str::to_string);
        } else if name.starts_with("log.") {
            // `log.module_path`, `log.file`, `log.line` of a bridged `log` record: noise here.
        } else if RESERVED.contains(&name) {
            self.values.push((format!("{name}_"), value));
        } else {
            self.values.push((name.to_string(), value));
        }
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` fields come here too, wrapped so that Debug prints their Display.
        self.push(field, Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Value::String(value.to_string()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::Bool(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // NaN and infinities have no JSON form: `null`.
        self.push(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push(field, Value::String(value.to_string()));
    }
}

/// One event as its JSON line, newline included.
pub(super) fn line(at: SystemTime, level: Level, target: &str, fields: Fields) -> String {
    let mut out = String::with_capacity(160);
    let mut put = |key: &str, value: &Value| {
        out.push(if out.is_empty() { '{' } else { ',' });
        // Serialising a string or a `Value` into a `String` cannot fail.
        out.push_str(&serde_json::to_string(key).unwrap_or_default());
        out.push(':');
        out.push_str(&serde_json::to_string(value).unwrap_or_default());
    };
    put(
        "timestamp",
        &Value::String(humantime::format_rfc3339_micros(at).to_string()),
    );
    put("level", &Value::String(level.to_string()));
    put("target", &Value::String(target.to_string()));
    put(
        "message",
        &Value::String(fields.message.unwrap_or_default()),
    );
    for (key, value) in &fields.values {
        put(key, value);
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    /// The lines a closure logs through the JSON format.
    fn logged(f: impl FnOnce()) -> Vec<serde_json::Map<String, Value>> {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Sink(sink.clone()))
            .with_ansi(false)
            .with_max_level(Level::DEBUG)
            .event_format(Json)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| match serde_json::from_str(l) {
                Ok(Value::Object(m)) => m,
                other => panic!("not a JSON object: {l:?} ({other:?})"),
            })
            .collect()
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_line_has_the_documented_fields_in_order() {
        let fields = Fields {
            message: Some("hello".into()),
            log_target: None,
            values: vec![("n".into(), Value::from(3u64))],
        };
        let at = UNIX_EPOCH + Duration::from_micros(1_764_656_632_123_456);
        let l = line(at, Level::WARN, "patroni_proxy::x", fields);
        assert_eq!(
            l,
            "{\"timestamp\":\"2025-12-02T06:23:52.123456Z\",\"level\":\"WARN\",\
             \"target\":\"patroni_proxy::x\",\"message\":\"hello\",\"n\":3}\n"
        );
    }

    #[test]
    fn fields_keep_their_types_and_every_event_is_one_line() {
        let lines = logged(|| {
            tracing::info!(port = 5432u16, ok = true, delta = -2i64, ratio = 0.5, name = %"pg0",
                "first\nsecond \u{1b}[31mred");
            tracing::debug!(level = "mine", "clash");
        });
        assert_eq!(lines.len(), 2, "{lines:?}");
        let l = &lines[0];
        let keys: Vec<&str> = l.keys().map(String::as_str).collect();
        for k in ["timestamp", "level", "target", "message"] {
            assert!(keys.contains(&k), "{keys:?}");
        }
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["target"], module_path!());
        assert_eq!(l["message"], "first\nsecond \u{1b}[31mred");
        assert_eq!(l["port"], 5432);
        assert_eq!(l["ok"], true);
        assert_eq!(l["delta"], -2);
        assert_eq!(l["ratio"], 0.5);
        assert_eq!(l["name"], "pg0");
        let ts = l["timestamp"].as_str().unwrap();
        assert!(
            humantime::parse_rfc3339(ts).is_ok() && ts.ends_with('Z'),
            "{ts}"
        );
        // A field named like a reserved key does not overwrite it.
        assert_eq!(lines[1]["level"], "DEBUG");
        assert_eq!(lines[1]["level_"], "mine");
    }

    #[test]
    fn no_raw_control_character_is_written() {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Sink(sink.clone()))
            .event_format(Json)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(peer = "\u{1b}[2J\r\n", "a \u{7} bell");
        });
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text:?}");
        assert!(!text.trim_end().chars().any(char::is_control), "{text:?}");
    }
}
