//! The dependency rule, checked on the source: `src/domain/` is pure. No
//! file under it names the crate outside `domain` (`crate::` followed by
//! anything but `domain`, or a `super::` chain that climbs out of it), nor
//! tokio, sled, tokio_postgres, tonic, `std::fs` or `std::net::TcpStream`.
//! The use cases that need those live in `src/service/`, above the domain.
//!
//! The files are read as tokens with comments and string literals removed,
//! so prose may name what code may not.

mod cycles;

use std::path::{Path, PathBuf};

/// Names the domain must not use: crates that do I/O or serve RPCs, and the
/// socket type.
const FORBIDDEN_NAMES: [&str; 5] = ["tokio", "sled", "tokio_postgres", "tonic", "TcpStream"];

/// `std` modules the domain must not name (file I/O).
const FORBIDDEN_STD: [&str; 1] = ["fs"];

/// Every way `source` (a file whose module is `depth` levels below the
/// crate root: 1 for `domain/mod.rs`, 2 for `domain/x.rs`) breaks the rule.
fn violations(source: &str, depth: usize) -> Vec<String> {
    let tokens = tokens(source);
    let mut found = Vec::new();
    // Brace depth at which each inline `mod name {` opened.
    let mut inline_mods: Vec<usize> = Vec::new();
    let mut braces = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i].as_str();
        let next = |k: usize| tokens.get(i + k).map(String::as_str).unwrap_or("");
        match token {
            "{" => {
                if i >= 2 && tokens[i - 2] == "mod" {
                    inline_mods.push(braces);
                }
                braces += 1;
            }
            "}" => {
                braces = braces.saturating_sub(1);
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
            }
            "crate" if next(1) == "::" && next(2) != "domain" => {
                found.push(format!(
                    "crate::{} (only crate::domain:: may be named)",
                    next(2)
                ));
            }
            "super" if i == 0 || tokens[i - 1] != "::" => {
                let mut climbs = 0;
                while tokens.get(i + 2 * climbs).map(String::as_str) == Some("super")
                    && tokens.get(i + 2 * climbs + 1).map(String::as_str) == Some("::")
                {
                    climbs += 1;
                }
                // From the module at this point, `depth - 1` climbs reach `domain`.
                let here = depth + inline_mods.len();
                if climbs >= here {
                    found.push(format!("{} super:: climb out of domain", climbs));
                }
            }
            name if FORBIDDEN_NAMES.contains(&name) => {
                found.push(format!("{name} (the domain does no I/O)"));
            }
            "std" if next(1) == "::" => {
                // `std::fs`, also inside a `std::{…}` group.
                let mut k = i + 2;
                let mut open = 0usize;
                while let Some(t) = tokens.get(k) {
                    match t.as_str() {
                        "{" => open += 1,
                        "}" if open == 0 => break,
                        "}" => open -= 1,
                        ";" | "," if open == 0 => break,
                        name if FORBIDDEN_STD.contains(&name) => {
                            found.push(format!("std::…::{name} (I/O in the domain)"));
                        }
                        _ => {}
                    }
                    k += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The tokens of Rust `source` that matter here: identifiers, `::` and
/// single punctuation; comments and string and char literals are dropped.
pub(super) fn tokens(source: &str) -> Vec<String> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let at = |k: usize| chars.get(i + k).copied().unwrap_or('\0');
        if c == '/' && at(1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(1) == '*' {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (at(1) == '"' || (at(1) == '#' && matches!(at(2), '"' | '#'))) {
            // A raw string: r"…" or r#"…"#.
            let mut hashes = 0;
            i += 1;
            while chars.get(i) == Some(&'#') {
                hashes += 1;
                i += 1;
            }
            i += 1;
            loop {
                if i >= chars.len() {
                    break;
                }
                if chars[i] == '"' && (1..=hashes).all(|h| chars.get(i + h) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' && (at(1) == '\\' || at(2) == '\'') {
            // A char literal ('x', '\n', '\''); a lifetime ('a) is skipped below.
            i += if at(1) == '\\' { 2 } else { 1 };
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(chars[start..i].iter().collect());
        } else if c == ':' && at(1) == ':' {
            out.push("::".to_owned());
            i += 2;
        } else if c.is_whitespace() || c == '\'' {
            i += 1;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

pub(super) fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// How many modules below the crate root the file `path` (relative to
/// `src/`) is: `domain/mod.rs` 1, `domain/x.rs` 2, `domain/x/y.rs` 3.
fn module_depth(relative: &Path) -> usize {
    let parts = relative.components().count();
    if relative.file_name().is_some_and(|n| n == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

#[test]
fn the_domain_imports_nothing_outside_itself_and_does_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join("domain"), &mut files);
    files.sort();
    assert!(files.len() > 10, "src/domain/ holds the domain: {files:?}");
    let mut broken = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let source = std::fs::read_to_string(file).unwrap();
        for violation in violations(&source, module_depth(relative)) {
            broken.push(format!("src/{}: {violation}", relative.display()));
        }
    }
    assert!(
        broken.is_empty(),
        "src/domain/ must stay pure (move the code that needs these into src/service/):\n{}",
        broken.join("\n")
    );
}

/// The checker itself: it catches each kind of escape, and lets comments,
/// strings and in-domain paths through.
#[test]
fn the_purity_check_catches_each_kind_of_escape() {
    let caught = |source: &str, depth: usize| !violations(source, depth).is_empty();
    assert!(caught("use crate::store::TokenQuery;", 2));
    assert!(caught(
        "use crate::{domain::ids::TokenId, metrics::Metrics};",
        2
    ));
    assert!(caught("fn f() { tokio::spawn(async {}); }", 2));
    assert!(caught("use tonic::Status;", 2));
    assert!(caught("use sled::Db;", 2));
    assert!(caught("use tokio_postgres::Client;", 2));
    assert!(caught("fn f() { let _ = std::fs::read(\"x\"); }", 2));
    assert!(caught("use std::{collections::HashMap, fs};", 2));
    assert!(caught("use std::net::{SocketAddr, TcpStream};", 2));
    assert!(caught("use super::super::store::Store;", 2));
    assert!(caught("use super::cache;", 1));
    assert!(caught("mod tests { use super::super::super::x; }", 2));

    assert!(!caught("use crate::domain::ids::TokenId;", 2));
    assert!(!caught("use super::{Error, ids::TokenId};", 2));
    assert!(!caught("use super::super::Error;", 3));
    assert!(!caught("mod tests { use super::super::Error; }", 2));
    assert!(!caught("use std::net::SocketAddr;", 2));
    assert!(!caught("// tokio and crate::store, in prose\nfn f() {}", 2));
    assert!(!caught(
        "/// see `crate::store`\nconst S: &str = \"tokio::spawn\";",
        2
    ));
    assert!(!caught("fn f<'a>(x: &'a str) -> char { 'x' }", 2));
    assert!(!caught("const R: &str = r#\"sled::Db \"quoted\"\"#;", 2));
}
