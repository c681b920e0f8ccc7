//! Reads the examples out of Markdown: fenced code blocks with the section
//! they sit in, the output block shown right after a ```sh block, inline
//! `tokenauth ...` spans, and the commands of a shell block.

use std::path::{Path, PathBuf};

/// A fenced code block.
#[derive(Clone, Debug)]
pub struct Block {
    pub file: PathBuf,
    /// 1-based line of the opening fence.
    pub line: usize,
    /// The info string: `sh`, `json`, `text`, `toml`...
    pub lang: String,
    pub text: String,
    /// The headings above the block, outermost first.
    pub headings: Vec<String>,
}

impl Block {
    pub fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// A ```sh block and the output shown for its last command, if any.
#[derive(Clone, Debug)]
pub struct Example {
    pub block: Block,
    pub output: Option<Block>,
}

/// The fenced blocks of `file`, in order. Fences may be indented (inside a
/// list item); the indentation is removed from their lines.
pub fn blocks(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut blocks = Vec::new();
    let mut headings: Vec<(usize, String)> = Vec::new();
    let mut open: Option<(usize, usize, String, Vec<String>)> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some((start, fence_indent, lang, lines)) = &mut open {
            if trimmed.starts_with("```") {
                blocks.push(Block {
                    file: file.to_owned(),
                    line: *start,
                    lang: std::mem::take(lang),
                    text: lines.join("\n") + "\n",
                    headings: headings.iter().map(|(_, h)| h.clone()).collect(),
                });
                open = None;
            } else {
                let cut = line.len().min(*fence_indent);
                lines.push(line[cut..].to_owned());
            }
            continue;
        }
        if let Some(lang) = trimmed.strip_prefix("```") {
            open = Some((index + 1, indent, lang.trim().to_owned(), Vec::new()));
        } else if let Some(heading) = line.strip_prefix('#') {
            let level = 1 + heading.chars().take_while(|c| *c == '#').count();
            let title = heading.trim_start_matches('#').trim().to_owned();
            headings.retain(|(l, _)| *l < level);
            headings.push((level, title));
        }
    }
    assert!(open.is_none(), "{}: an unclosed code block", file.display());
    blocks
}

/// The ```sh examples of `file`, each with the output block that directly
/// follows it (```json or ```text, nothing but blank lines between).
pub fn examples(file: &Path) -> Vec<Example> {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let all = blocks(file);
    let mut examples = Vec::new();
    for (i, block) in all.iter().enumerate() {
        if block.lang != "sh" {
            continue;
        }
        // Past the closing fence (0-based: opening + lines + 1), blank lines,
        // then the next block's opening fence.
        let after = block.line + block.text.lines().count() + 1;
        let output = all.get(i + 1).filter(|next| {
            ["json", "json-stream", "text"].contains(&next.lang.as_str())
                && lines[after..next.line - 1]
                    .iter()
                    .all(|l| l.trim().is_empty())
        });
        examples.push(Example {
            block: block.clone(),
            output: output.cloned(),
        });
    }
    examples
}

/// The inline code spans of `file` that are a `tokenauth` command.
pub fn inline_commands(file: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut found = Vec::new();
    let mut in_block = false;
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 1 && span.starts_with("tokenauth ") {
                found.push((index + 1, span.to_owned()));
            }
        }
    }
    found
}

/// The commands of a shell block: split at newlines outside quotes and
/// `$(...)`, with `\` continuations kept and comments dropped.
pub fn commands(script: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut current = String::new();
    let mut chars = script.chars().peekable();
    let (mut single, mut double, mut depth) = (false, false, 0usize);
    while let Some(c) = chars.next() {
        match c {
            '\\' if !single => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            '\'' if !double => {
                single = !single;
                current.push(c);
            }
            '"' if !single => {
                double = !double;
                current.push(c);
            }
            '$' if !single && chars.peek() == Some(&'(') => {
                depth += 1;
                current.push(c);
            }
            ')' if !single && depth > 0 => {
                depth -= 1;
                current.push(c);
            }
            '#' if !single
                && !double
                && depth == 0
                && current.chars().last().is_none_or(char::is_whitespace) =>
            {
                // A comment: to the end of the line.
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            '\n' if !single && !double && depth == 0 => {
                if !current.trim().is_empty() {
                    commands.push(current.trim().to_owned());
                }
                current.clear();
            }
            c => current.push(c),
        }
    }
    assert!(
        !single && !double && depth == 0,
        "unbalanced quotes in:\n{script}"
    );
    if !current.trim().is_empty() {
        commands.push(current.trim().to_owned());
    }
    commands
}

/// The words of a command up to its first quote or `$`, with leading
/// `NAME=value` assignments (and `export`) left out: enough to know which
/// program it runs.
pub fn program_words(command: &str) -> Vec<&str> {
    command
        .split_whitespace()
        .skip_while(|w| *w == "export" || is_assignment(w))
        .collect()
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Whether the command only sets variables (`NAME=...`, `export NAME=...`).
pub fn only_assigns(command: &str) -> bool {
    let first = command.split_whitespace().next().unwrap_or("");
    (first == "export" || is_assignment(first))
        && !command.contains("&&")
        && !command.contains(';')
        && match first {
            "export" => true,
            _ => {
                // NAME=value with the value quoted or a single word.
                let value = &command[first.find('=').unwrap() + 1..];
                value.starts_with('"') || value.starts_with('\'') || !value.contains(' ')
            }
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_at_unquoted_newlines_only() {
        let script = "A='x y'\ngrpcurl -d \"{$A,\n  \\\"b\\\": 1}\" \\\n  host # a comment\n\n# alone\nB=\"$(date -u -d '+1 day')\"\ncmd 'a # b'\n";
        assert_eq!(
            commands(script),
            [
                "A='x y'",
                "grpcurl -d \"{$A,\n  \\\"b\\\": 1}\" \\\n  host",
                "B=\"$(date -u -d '+1 day')\"",
                "cmd 'a # b'",
            ]
        );
        assert!(only_assigns("A='x y'"));
        assert!(only_assigns("export X=$PWD/pepper"));
        assert!(!only_assigns("X=1 tokenauth config check"));
        assert_eq!(
            program_words("X=1 tokenauth config check f"),
            ["tokenauth", "config", "check", "f"]
        );
    }
}
