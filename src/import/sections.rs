//! The first pass over an HAProxy file: its lines into words (`lex`), grouped into sections
//! (`global`, `defaults`, `listen`, `frontend`, `backend`, `userlist`, ...), each with its
//! directive lines.

use super::lex;
use super::{err, ImportError, Note};

/// A directive: its line number and words.
#[derive(Debug, Clone)]
pub(super) struct Line {
    pub(super) line: usize,
    pub(super) w: Vec<String>,
}

/// One section of the file: its header line, keyword, name, and directive lines.
pub(super) struct Block {
    pub(super) line: usize,
    pub(super) kind: String,
    pub(super) name: Option<String>,
    pub(super) body: Vec<Line>,
}

const PROXIES: [&str; 4] = ["defaults", "listen", "frontend", "backend"];
/// Sections that route nothing and are reported as such.
const OTHER: [&str; 9] = [
    "global",
    "userlist",
    "resolvers",
    "peers",
    "mailers",
    "ring",
    "http-errors",
    "cache",
    "program",
];

/// Splits the text into sections; notes which lines expanded environment variables.
pub(super) fn split_sections(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    notes: &mut Vec<Note>,
) -> Result<Vec<Block>, ImportError> {
    let mut blocks: Vec<Block> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let lexed = lex::words(raw, env).map_err(|m| err(line, raw.trim(), &m))?;
        let words = lexed.words;
        let Some(kw) = words.first() else { continue };
        if !lexed.expanded.is_empty() {
            let names: Vec<String> = lexed.expanded.iter().map(|n| format!("${{{n}}}")).collect();
            notes.push(Note::new(
                line,
                &words[0],
                &format!(
                    "{} expanded from the environment of this import: the output holds the values",
                    names.join(", ")
                ),
            ));
        }
        if PROXIES.contains(&kw.as_str()) || OTHER.contains(&kw.as_str()) {
            if kw != "defaults" && kw != "global" && words.len() < 2 {
                return Err(err(line, kw, "this section needs a name"));
            }
            if words.len() > 2 && kw != "defaults" {
                return Err(err(
                    line,
                    kw,
                    "an address on the section line is not supported: put it on a `bind` line",
                ));
            }
            blocks.push(Block {
                line,
                kind: kw.clone(),
                name: words.get(1).cloned(),
                body: Vec::new(),
            });
            continue;
        }
        match blocks.last_mut() {
            Some(b) => b.body.push(Line { line, w: words }),
            None => return Err(err(line, kw, "directive outside any section")),
        }
    }
    Ok(blocks)
}
