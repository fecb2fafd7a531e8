//! One HAProxy line into its words, as HAProxy's parser reads it: words split at blanks, `#`
//! starts a comment, `\` escapes the next character, `"..."` keeps blanks and expands variables,
//! `'...'` keeps everything as written, and `${NAME}` (or `${NAME-default}`) is replaced by the
//! environment variable. A pure function: the environment is a lookup the caller passes, so
//! tests never touch the process's.

/// The words of a line, and the variables it expanded (names only: values may be secrets).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Words {
    pub(super) words: Vec<String>,
    pub(super) expanded: Vec<String>,
}

/// Splits `line`; an unset variable without a default, or an unclosed quote, is an error saying
/// which.
pub(super) fn words(line: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Words, String> {
    let mut out = Words::default();
    let mut word = String::new();
    // A word exists once a character or a quote was seen: `""` is an empty word.
    let mut started = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some('\''), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (_, '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                    started = true;
                }
            }
            (_, '$') if chars.peek() == Some(&'{') => {
                chars.next();
                let mut spec = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(ch) => spec.push(ch),
                        None => return Err(format!("unclosed `${{{spec}`")),
                    }
                }
                let (name, default) = match spec.split_once('-') {
                    Some((n, d)) => (n.to_string(), Some(d.to_string())),
                    None => (spec.clone(), None),
                };
                let value = env(&name).or(default).ok_or_else(|| {
                    format!(
                        "environment variable `{name}` is not set: HAProxy would read it from its \
                         environment; set it where you run the import, or write the value"
                    )
                })?;
                word.push_str(&value);
                started = true;
                if !out.expanded.contains(&name) {
                    out.expanded.push(name);
                }
            }
            (None, '#') => break,
            (None, c) if c.is_whitespace() => {
                if started {
                    out.words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (_, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unclosed {q} quote"));
    }
    if started {
        out.words.push(word);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "USER" => Some("ops".into()),
            "PASS" => Some("s3 cret".into()),
            "PORT" => Some("5001".into()),
            _ => None,
        }
    }

    fn split(line: &str) -> Result<Vec<String>, String> {
        words(line, &env).map(|w| w.words)
    }

    #[test]
    fn words_split_as_haproxy_reads_them() {
        assert_eq!(
            split("  server a 10.0.0.1:5432 check # a comment").unwrap(),
            ["server", "a", "10.0.0.1:5432", "check"]
        );
        assert_eq!(
            split("stats realm HAProxy\\ Statistics").unwrap(),
            ["stats", "realm", "HAProxy Statistics"]
        );
        assert_eq!(split("\tlog\tglobal\r").unwrap(), ["log", "global"]);
        assert_eq!(
            split("a '#x ${USER}' \"\"").unwrap(),
            ["a", "#x ${USER}", ""]
        );
    }

    #[test]
    fn variables_expand_from_the_lookup_and_an_unset_one_is_named() {
        // HAProxy: "${NAME}" is replaced by the environment variable, in double quotes too.
        let w = words("stats auth \"${USER}:${PASS}\" bind *:${PORT}", &env).unwrap();
        assert_eq!(w.words, ["stats", "auth", "ops:s3 cret", "bind", "*:5001"]);
        assert_eq!(w.expanded, ["USER", "PASS", "PORT"]);
        assert_eq!(split("x ${NOPE-7}").unwrap(), ["x", "7"]);
        let e = split("server a ${DB_HOST}:5432").unwrap_err();
        assert!(e.contains("`DB_HOST` is not set"), "{e}");
        assert!(split("a \"open").is_err());
    }
}
