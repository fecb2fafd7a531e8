//! Where in the TOML text an error is, from the parser's own spans (`toml_edit` keeps the byte range
//! of every key, value and table): the dotted key a serde error happened at, and the line and column
//! of the key a validation error names. Both work for any way of writing a key: `[check]` then
//! `inter = ..`, `check.inter = ..`, `check = { inter = .. }`, `[[server]]` entries.

use std::ops::Range;

use toml_edit::{ImDocument, Item, TableLike, Value};

use super::{limits, ConfigError, KeyError};

/// The parsed file, kept for its spans.
pub(super) type Document<'a> = ImDocument<&'a str>;

/// Formats a serde error with the dotted key it happened at, keeping the line/column and snippet
/// the parser prints.
pub(super) fn describe_serde_error(doc: &Document<'_>, e: &toml_edit::de::Error) -> ConfigError {
    let key = e.span().and_then(|span| key_at(doc, span.start));
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

/// Adds the line/column of a validation error's key.
pub(super) fn locate(doc: &Document<'_>, e: KeyError) -> ConfigError {
    let position = span_of(doc, &e.key)
        .map(|span| {
            let (line, column) = line_column(doc.raw(), span.start);
            format!(" (line {line}, column {column})")
        })
        .unwrap_or_default();
    ConfigError::Invalid(format!("key `{}`{position}: {}", e.key, e.message))
}

/// The dotted key (`check.inter`, `server[1].address`) whose key, value or table covers byte
/// `offset`; the innermost one when they nest.
fn key_at(doc: &Document<'_>, offset: usize) -> Option<String> {
    find(doc.as_table(), offset, "")
}

fn find(table: &dyn TableLike, offset: usize, prefix: &str) -> Option<String> {
    for (name, item) in table.iter() {
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        };
        if let Some(inner) = item.as_table_like() {
            if let Some(found) = find(inner, offset, &path) {
                return Some(found);
            }
        }
        for (i, (entry, span)) in (0..).map_while(|i| entry(item, i)).enumerate() {
            let path = format!("{path}[{i}]");
            if let Some(found) = find(entry, offset, &path) {
                return Some(found);
            }
            if covers(span, offset) {
                return Some(path);
            }
        }
        let key_span = table.get_key_value(name).and_then(|(key, _)| key.span());
        if covers(key_span, offset) || covers(item.span(), offset) {
            return Some(path);
        }
    }
    None
}

/// The span of a dotted key as validation names it: the key itself (`check.uri`,
/// `server[1].name`), or the header of an array entry (`server[1]`).
fn span_of(doc: &Document<'_>, key: &str) -> Option<Range<usize>> {
    let mut table: &dyn TableLike = doc.as_table();
    let mut segments = key.split('.').peekable();
    while let Some(segment) = segments.next() {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, Some(rest.strip_suffix(']')?.parse().ok()?)),
            None => (segment, None),
        };
        let (k, item) = table.get_key_value(name)?;
        let (inner, span) = match index {
            Some(i) => entry(item, i).map(|(t, span)| (Some(t), span))?,
            None => (item.as_table_like(), k.span()),
        };
        if segments.peek().is_none() {
            return span;
        }
        table = inner?;
    }
    None
}

/// Entry `i` of an array of tables, written `[[name]]` or `name = [{ .. }]`, and its span.
fn entry(item: &Item, i: usize) -> Option<(&dyn TableLike, Option<Range<usize>>)> {
    match item {
        Item::ArrayOfTables(array) => array.get(i).map(|t| (t as &dyn TableLike, t.span())),
        Item::Value(Value::Array(array)) => {
            let value = array.get(i)?;
            let table = value.as_inline_table()?;
            Some((table as &dyn TableLike, value.span()))
        }
        _ => None,
    }
}

fn covers(span: Option<Range<usize>>, offset: usize) -> bool {
    // An empty span (at the end of the text) still marks its own position.
    span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# a comment with [brackets]\n\
        listen.retries = 200\n\
        stats = { auth = \"x\" }\n\
        [check] # x\n\
        \"inter\" = \"0s\"\n\
        [[server]]\n\
        name = \"a\"\n\
        [[server]]\n\
        name = \"b\"\n\
        address = \"db1\"\n";

    fn doc() -> Document<'static> {
        ImDocument::parse(TEXT).unwrap()
    }

    fn position(key: &str) -> Option<(usize, usize)> {
        span_of(&doc(), key).map(|s| line_column(TEXT, s.start))
    }

    #[test]
    fn keys_are_found_however_they_are_written() {
        // The hand-written locator this replaces read `[check] # x` as a table named
        // `check] # x`, and found neither dotted keys nor inline tables.
        assert_eq!(position("check.inter"), Some((5, 1)));
        assert_eq!(position("listen.retries"), Some((2, 8)));
        assert_eq!(position("stats.auth"), Some((3, 11)));
        assert_eq!(position("server[1].name"), Some((9, 1)));
        assert_eq!(position("server[1]"), Some((8, 1)));
        assert_eq!(position("server[0].address"), None);
        assert_eq!(position("server[2].name"), None);
        assert_eq!(position("global.maxconn"), None);
    }

    #[test]
    fn an_offset_names_the_innermost_key() {
        let at = |needle: &str| key_at(&doc(), TEXT.find(needle).unwrap());
        assert_eq!(at("\"0s\"").as_deref(), Some("check.inter"));
        assert_eq!(at("200").as_deref(), Some("listen.retries"));
        assert_eq!(at("\"x\" }").as_deref(), Some("stats.auth"));
        assert_eq!(at("\"db1\"").as_deref(), Some("server[1].address"));
        assert_eq!(at("[[server]]\nname = \"b\"").as_deref(), Some("server[1]"));
        assert_eq!(at("# a comment"), None);
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_column("é = 1\nab", 8), (2, 2));
        assert_eq!(line_column("", 0), (1, 1));
        assert_eq!(line_column("abc", 99), (1, 4));
    }
}
