//! Where in the TOML text an error is: the dotted key of a serde error, the line and column of a
//! validation error's key.

use super::{limits, ConfigError, KeyError};

/// Formats a TOML/serde error with the dotted key it happened at, keeping the line/column and snippet
/// the `toml` crate prints.
pub(super) fn describe_toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let key = e.span().and_then(|span| key_at(text, span.start));
    // A number too large for its type, or a duration far too long, is refused before validation
    // sees it: still say what the key allows.
    let range = key
        .as_deref()
        .and_then(limits::limit_of)
        .map(|limit| format!("\nallowed: {limit}"))
        .unwrap_or_default();
    let key = key.map(|k| format!("key `{k}`: ")).unwrap_or_default();
    ConfigError::Invalid(format!("{key}{}{range}", e.to_string().trim_end()))
}

/// Finds the dotted key whose value or table header covers byte `offset`: the last `[table]` header
/// above it plus the `key =` on its line.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let mut table = None;
    for l in before[..line_start].lines() {
        let t = l.trim();
        if t.starts_with('[') {
            table = Some(t.trim_matches(|c| c == '[' || c == ']').trim().to_string());
        }
    }
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        return Some(
            trimmed
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string(),
        );
    }
    let key = trimmed.split_once('=').map(|(k, _)| k.trim().to_string());
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// Adds the line/column of a validation error's key, found by searching the text.
pub(super) fn locate(text: &str, e: KeyError) -> ConfigError {
    let position = position_of_key(text, &e.key)
        .map(|(line, col)| format!(" (line {line}, column {col})"))
        .unwrap_or_default();
    ConfigError::Invalid(format!("key `{}`{position}: {}", e.key, e.message))
}

/// Line and column (1-based) of a dotted key such as `check.uri` or `server[1].name`.
fn position_of_key(text: &str, key: &str) -> Option<(usize, usize)> {
    let (table, index, leaf) = match key.split_once('.') {
        Some((t, leaf)) => match t.split_once('[') {
            Some((t, rest)) => (
                t.to_string(),
                rest.trim_end_matches(']').parse::<usize>().ok(),
                Some(leaf),
            ),
            None => (t.to_string(), None, Some(leaf)),
        },
        None => (key.to_string(), None, None),
    };
    let mut seen = 0usize;
    let mut in_table = false;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = name == table && {
                let hit = index.is_none_or(|i| i == seen);
                if name == table && t.starts_with("[[") {
                    seen += 1;
                }
                hit
            };
            if in_table && leaf.is_none() {
                return Some((n + 1, line.find('[').unwrap_or(0) + 1));
            }
            continue;
        }
        if in_table {
            if let Some(leaf) = leaf {
                if let Some((k, _)) = t.split_once('=') {
                    if k.trim() == leaf {
                        return Some((n + 1, line.find(leaf).unwrap_or(0) + 1));
                    }
                }
            }
        }
    }
    None
}
