//! No circle of imports between source files: each folder's shared types
//! live in a file of their own that its other files import, and a parent
//! `mod.rs` only declares and re-exports (docs/develop/architecture.md).
//! The one circle allowed is `domain/secret.rs` <-> `domain/token.rs`: a
//! secret's text names its token kind, and a token record holds digests.
//!
//! Production code only: `#[cfg(test)]` modules, inline or in files, and
//! the modules behind a `testing`/`fuzzing` feature are left out. A path is
//! charged to the file of the longest module it names, so an item reached
//! through a re-export counts as a dependency on the re-exporting file: the
//! stricter of the two readings.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use super::{rust_files, tokens};

/// The module path of a file under `src/`: `lib.rs` [], `a.rs` and
/// `a/mod.rs` [a], `a/b.rs` [a, b].
fn module_of(relative: &str) -> Vec<String> {
    let mut parts: Vec<String> = relative.split('/').map(str::to_owned).collect();
    let last = parts.pop().unwrap_or_default();
    match last.as_str() {
        "lib.rs" | "mod.rs" => {}
        file => parts.push(file.trim_end_matches(".rs").to_owned()),
    }
    parts
}

/// Whether the attributes just before token `at` (a `mod`, after any
/// visibility) put the module behind a test or a feature.
fn gated(tokens: &[String], at: usize) -> bool {
    let mut i = at;
    // Skip `pub`, `pub(crate)`, `pub(super)`.
    while i > 0
        && matches!(
            tokens[i - 1].as_str(),
            "pub" | "(" | ")" | "crate" | "super"
        )
    {
        i -= 1;
    }
    let mut gated = false;
    while i > 0 && tokens[i - 1] == "]" {
        let mut k = i - 1;
        while k > 0 && tokens[k] != "[" {
            k -= 1;
        }
        let attribute = &tokens[k..i];
        // `cfg(test)`, or the test-only features; not `cfg(not(test))` nor
        // any other feature, which production builds may turn on.
        if attribute.iter().any(|t| t == "cfg")
            && !attribute.iter().any(|t| t == "not")
            && attribute
                .iter()
                .any(|t| t == "test" || t == "testing" || t == "fuzzing")
        {
            gated = true;
        }
        i = k.saturating_sub(1); // the `#`
    }
    gated
}

/// The tokens of a file without its gated inline modules, and the names of
/// the gated modules it declares in files of their own.
fn production_tokens(source: &str) -> (Vec<String>, Vec<String>) {
    // Feature names are string literals, which `tokens` drops: keep the
    // test-only ones as words.
    let source = source
        .replace("\"testing\"", "testing")
        .replace("\"fuzzing\"", "fuzzing");
    let all = tokens(&source);
    let mut kept = Vec::with_capacity(all.len());
    let mut gated_files = Vec::new();
    let mut i = 0;
    while i < all.len() {
        if all[i] == "mod" && gated(&all, i) {
            let name = all.get(i + 1).cloned().unwrap_or_default();
            if all.get(i + 2).map(String::as_str) == Some("{") {
                let mut depth = 0usize;
                i += 2;
                while i < all.len() {
                    match all[i].as_str() {
                        "{" => depth += 1,
                        "}" => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            } else {
                gated_files.push(name);
            }
        } else {
            kept.push(all[i].clone());
        }
        i += 1;
    }
    (kept, gated_files)
}

/// Every path a `use` tree or a path expression starting at `tokens[at]`
/// names, with `prefix` before it. Returns the paths and where it stopped.
fn paths(tokens: &[String], mut at: usize, prefix: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let mut path = prefix;
    loop {
        match tokens.get(at).map(String::as_str) {
            Some("{") => {
                let mut found = Vec::new();
                at += 1;
                while let Some(token) = tokens.get(at) {
                    match token.as_str() {
                        "}" => break,
                        "," => at += 1,
                        "self" => {
                            found.push(path.clone());
                            at += 1;
                        }
                        _ => {
                            let (inner, next) = paths(tokens, at, path.clone());
                            found.extend(inner);
                            // Skip an alias or anything else up to the separator.
                            at = next;
                            while !matches!(
                                tokens.get(at).map(String::as_str),
                                Some("," | "}") | None
                            ) {
                                at += 1;
                            }
                        }
                    }
                }
                return (found, at + 1);
            }
            Some("*") => return (vec![path], at + 1),
            Some(name) if name.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                path.push(name.to_owned());
                if tokens.get(at + 1).map(String::as_str) == Some("::") {
                    at += 2;
                } else {
                    return (vec![path], at + 1);
                }
            }
            _ => return (vec![path], at),
        }
    }
}

/// The files each production file imports, by name relative to `src/`.
fn imports(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules: BTreeMap<Vec<String>, String> = BTreeMap::new();
    let mut parsed = BTreeMap::new();
    let mut gated_modules = Vec::new();
    for (name, source) in files {
        let module = module_of(name);
        let (tokens, gated) = production_tokens(source);
        for child in gated {
            let mut path = module.clone();
            path.push(child);
            gated_modules.push(path);
        }
        modules.insert(module.clone(), name.clone());
        parsed.insert(name.clone(), (module, tokens));
    }
    let production = |module: &[String]| !gated_modules.iter().any(|g| module.starts_with(g));
    let mut graph = BTreeMap::new();
    for (name, (module, tokens)) in &parsed {
        if !production(module) {
            continue;
        }
        let mut to = BTreeSet::new();
        for (i, token) in tokens.iter().enumerate() {
            let starts_path = matches!(token.as_str(), "crate" | "super" | "self")
                && tokens.get(i + 1).map(String::as_str) == Some("::")
                && (i == 0 || tokens[i - 1] != "::");
            if !starts_path {
                continue;
            }
            for path in paths(tokens, i, Vec::new()).0 {
                let mut absolute = match path.first().map(String::as_str) {
                    Some("crate") => Vec::new(),
                    _ => module.clone(),
                };
                for segment in &path {
                    match segment.as_str() {
                        "crate" | "self" => {}
                        "super" => {
                            absolute.pop();
                        }
                        other => absolute.push(other.to_owned()),
                    }
                }
                // The longest module the path names is the file it depends on.
                while !absolute.is_empty() && !modules.contains_key(&absolute) {
                    absolute.pop();
                }
                if let Some(file) = modules.get(&absolute)
                    && file != name
                    && production(&absolute)
                {
                    to.insert(file.clone());
                }
            }
        }
        graph.insert(name.clone(), to);
    }
    graph
}

/// The circles of `graph`: its strongly connected components of more than
/// one file, each sorted.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reaches = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(file) = stack.pop() {
            for next in graph.get(&file).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|f| (f, reaches(f))).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for (file, reached) in &reach {
        if !reached.contains(*file) {
            continue;
        }
        let circle: Vec<String> = reached
            .iter()
            .filter(|other| reach.get(other).is_some_and(|r| r.contains(*file)))
            .cloned()
            .collect();
        found.insert(circle);
    }
    found.into_iter().collect()
}

fn source_tree() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .into_iter()
        .map(|path| {
            let relative = path
                .strip_prefix(&src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (relative, std::fs::read_to_string(&path).unwrap())
        })
        // main.rs is a crate of its own over the library.
        .filter(|(name, _)| name != "main.rs")
        .collect()
}

#[test]
fn no_two_source_files_import_each_other_but_secret_and_token() {
    let files = source_tree();
    let graph = imports(&files);
    assert!(graph.len() > 50, "the production files: {:?}", graph.keys());
    // The check sees the imports it is about.
    assert!(graph["service/manage.rs"].contains("service/authority.rs"));
    assert!(graph["server/mod.rs"].contains("server/grpc.rs"));
    let found = circles(&graph);
    let allowed = vec![vec![
        "domain/secret.rs".to_owned(),
        "domain/token.rs".to_owned(),
    ]];
    let described: Vec<String> = found
        .iter()
        .map(|circle| {
            let edges: Vec<String> = circle
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|to| circle.contains(to))
                        .map(move |to| format!("  {from} -> {to}"))
                })
                .collect();
            edges.join("\n")
        })
        .collect();
    assert_eq!(
        found,
        allowed,
        "import circles between source files (move the shared item into a file both import):\n{}",
        described.join("\n\n")
    );
}

/// The checker itself: it finds circles through `use` trees, globs, paths
/// in code and parent re-exports, and leaves test code out.
#[test]
fn the_circle_check_finds_each_kind_of_circle() {
    let tree = |files: &[(&str, &str)]| -> Vec<Vec<String>> {
        let files = files
            .iter()
            .map(|(name, source)| (name.to_string(), source.to_string()))
            .collect();
        circles(&imports(&files))
    };
    let lib = ("lib.rs", "pub mod a; pub mod b; pub mod x;");
    let b = ("b.rs", "pub struct X;");
    // Two siblings, through a group, a glob or a path in code.
    for a in [
        "use crate::{b::X, x};",
        "use super::b::*;",
        "fn f() { let _ = crate::b::X; }",
    ] {
        let found = tree(&[lib, ("a.rs", a), ("b.rs", "use crate::a::Y; pub struct X;")]);
        assert_eq!(
            found,
            vec![vec!["a.rs".to_owned(), "b.rs".to_owned()]],
            "{a}"
        );
    }
    // A parent that re-exports its child, which imports the parent.
    let found = tree(&[
        lib,
        ("x/mod.rs", "mod c; pub use self::c::Z; pub struct P;"),
        ("x/c.rs", "use super::{P, c2};"),
    ]);
    assert_eq!(
        found,
        vec![vec!["x/c.rs".to_owned(), "x/mod.rs".to_owned()]]
    );
    // A module behind `not(test)` or another feature is production code.
    for gate in ["#[cfg(not(test))]", "#[cfg(feature = \"postgres\")]"] {
        let found = tree(&[
            lib,
            ("a.rs", "use crate::b::X;"),
            ("b.rs", &format!("{gate}\nmod c;\npub use self::c::X;")),
            ("b/c.rs", "use crate::a::Y;"),
        ]);
        assert_eq!(found.len(), 1, "{gate}: {found:?}");
    }
    // Not circles: one way only; the way back only in tests or prose.
    assert!(tree(&[lib, ("a.rs", "use crate::b::X;"), b]).is_empty());
    assert!(
        tree(&[
            lib,
            ("a.rs", "use crate::b::X;"),
            (
                "b.rs",
                "#[cfg(test)]\nmod tests { use crate::a::Y; }\n// crate::a::Y\n"
            ),
        ])
        .is_empty()
    );
    assert!(
        tree(&[
            lib,
            ("a.rs", "use crate::b::X;"),
            ("b.rs", "#[cfg(test)]\nmod tests;"),
            ("b/tests.rs", "use crate::a::Y;"),
        ])
        .is_empty()
    );
    assert!(
        tree(&[
            lib,
            ("x/mod.rs", "mod c; pub use self::c::Z; pub struct P;"),
            ("x/c.rs", "use super::sibling::P;"),
            ("x/sibling.rs", "pub struct P;"),
        ])
        .is_empty()
    );
}
