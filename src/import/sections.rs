//! The first pass over an HAProxy file: split into sections (`global`, `defaults`, `listen`), each
//! with its directive lines as words, comments and blank lines dropped. Sections outside the
//! Patroni template's subset are refused here, by line.

use super::{err, ImportError};

/// One section of the file: its header line, keyword, name, and directive lines.
pub(super) struct Block {
    pub(super) line: usize,
    pub(super) kind: String,
    pub(super) name: Option<String>,
    pub(super) body: Vec<(usize, Vec<String>)>,
}

/// Splits the text into sections, dropping comments and blank lines.
pub(super) fn split_sections(text: &str) -> Result<Vec<Block>, ImportError> {
    let mut blocks: Vec<Block> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let words: Vec<String> = raw
            .split('#')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let Some(kw) = words.first() else { continue };
        match kw.as_str() {
            "global" | "defaults" | "listen" => {
                if words.len() > 2 || (kw == "defaults" && words.len() > 1) {
                    return Err(err(
                        line,
                        kw,
                        "section options are not supported: put the address on a `bind` line",
                    ));
                }
                if kw == "listen" && words.len() < 2 {
                    return Err(err(line, kw, "a listen section needs a name"));
                }
                blocks.push(Block {
                    line,
                    kind: kw.clone(),
                    name: words.get(1).cloned(),
                    body: Vec::new(),
                });
            }
            "frontend" | "backend" | "resolvers" | "peers" | "userlist" | "program" | "cache"
            | "mailers" | "ring" => {
                return Err(err(
                    line,
                    kw,
                    "this section is outside the Patroni template's subset: use one `listen` with \
                     `server` lines",
                ))
            }
            _ => match blocks.last_mut() {
                Some(b) => b.body.push((line, words)),
                None => return Err(err(line, kw, "directive outside any section")),
            },
        }
    }
    Ok(blocks)
}
