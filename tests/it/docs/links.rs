//! The documents hold together: every relative link in README.md and docs/
//! points at a file that exists, and a `#fragment` at a heading of it (as
//! GitHub names headings), so that moving a page or renaming a heading
//! cannot leave a dead link; every page under docs/ is in `DOCUMENTS` (so
//! its examples run) and in docs/SUMMARY.md (so a reader can find it).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use super::{DOCUMENTS, path};

/// The `(line, target)` of every inline link `[text](target)` outside
/// fenced blocks and code spans.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut fenced = false;
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Outside code spans only: the even pieces between backticks.
        for prose in line.split('`').step_by(2) {
            let mut rest = prose;
            while let Some(at) = rest.find("](") {
                rest = &rest[at + 2..];
                let end = rest.find(')').unwrap_or(rest.len());
                let target = rest[..end].split_whitespace().next().unwrap_or("");
                found.push((index + 1, target.to_owned()));
                rest = &rest[end..];
            }
        }
    }
    found
}

/// GitHub's anchor for a heading: lower case, spaces as `-`, and nothing
/// but letters, digits, `-` and `_` kept.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The anchors of a document's headings (outside fenced blocks); a repeated
/// heading gets `-1`, `-2`... as on GitHub.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let title = line.trim_start_matches('#');
        if fenced || title.len() == line.len() || !title.starts_with(' ') {
            continue;
        }
        let base = slug(title);
        let mut anchor = base.clone();
        let mut n = 0;
        while anchors.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        anchors.insert(anchor);
    }
    anchors
}

/// Where a relative `target` of a link in `file` leads, and its anchor.
fn resolve(file: &Path, target: &str) -> (PathBuf, Option<String>) {
    let (to, anchor) = match target.split_once('#') {
        Some((to, anchor)) => (to, Some(anchor.to_owned())),
        None => (target, None),
    };
    let resolved = if to.is_empty() {
        file.to_owned()
    } else {
        file.parent().unwrap().join(to)
    };
    (resolved, anchor)
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

/// The relative links of `file` (whose text is `text`) that lead nowhere,
/// and how many it has in all.
fn dead_links(file: &Path, text: &str) -> (Vec<String>, usize) {
    let mut dead = Vec::new();
    let mut relative = 0;
    for (line, target) in links(text) {
        if is_external(&target) {
            continue;
        }
        relative += 1;
        let place = format!("{}:{line}: {target}", file.display());
        let (to, anchor) = resolve(file, &target);
        if target.is_empty() || !to.exists() {
            dead.push(format!("{place}: no such file"));
            continue;
        }
        if let Some(anchor) = anchor {
            let headings = std::fs::read_to_string(&to)
                .map(|t| anchors(&t))
                .unwrap_or_default();
            if !headings.contains(&anchor) {
                dead.push(format!("{place}: no heading #{anchor} in {}", to.display()));
            }
        }
    }
    (dead, relative)
}

#[test]
fn every_relative_link_leads_to_a_file_and_heading_that_exist() {
    let mut dead = Vec::new();
    let mut relative = 0;
    for document in DOCUMENTS {
        let file = path(document);
        let text = std::fs::read_to_string(&file).unwrap();
        let (found, count) = dead_links(&file, &text);
        dead.extend(found);
        relative += count;
    }
    assert!(dead.is_empty(), "dead links: {dead:#?}");
    assert!(relative >= 40, "only {relative} relative links found");
}

#[test]
fn a_dead_link_or_anchor_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let page = dir.path().join("sub/page.md");
    std::fs::write(
        &page,
        "# A page\n\n## Errors and limits\n\n## Errors and limits\n",
    )
    .unwrap();
    let index = dir.path().join("index.md");
    let text = "# Index (the start)\n\n\
        [ok](sub/page.md), [ok](sub/page.md#errors-and-limits-1), [ok](#index-the-start),\n\
        [web](https://example.com/x.md) `[not a link](gone.md)`\n\n\
        ```sh\n[not a link](gone.md)\n```\n\n\
        [gone](sub/gone.md) and [no heading](sub/page.md#limits) and [self](#nowhere)\n";
    std::fs::write(&index, text).unwrap();
    let (dead, relative) = dead_links(&index, text);
    assert_eq!(relative, 6, "{dead:#?}");
    assert_eq!(dead.len(), 3, "{dead:#?}");
    assert!(dead[0].contains("sub/gone.md: no such file"), "{dead:#?}");
    assert!(dead[1].contains("no heading #limits"), "{dead:#?}");
    assert!(dead[2].contains("no heading #nowhere"), "{dead:#?}");
    assert_eq!(
        slug(" Envoy and Istio (ext_authz)"),
        "envoy-and-istio-ext_authz"
    );
    assert_eq!(slug(" API, with grpcurl"), "api-with-grpcurl");
}

/// Every Markdown file under `dir`, relative to the repository.
fn pages_under(dir: &Path, found: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap().path();
        if entry.is_dir() {
            pages_under(&entry, found);
        } else if entry.extension().is_some_and(|e| e == "md") {
            let relative = entry.strip_prefix(path("")).unwrap();
            found.insert(relative.to_str().unwrap().to_owned());
        }
    }
}

#[test]
fn every_page_is_listed_and_in_the_table_of_contents() {
    let mut pages = BTreeSet::new();
    pages_under(&path("docs"), &mut pages);
    let listed: BTreeSet<String> = DOCUMENTS
        .iter()
        .filter(|d| d.starts_with("docs/"))
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        pages, listed,
        "docs/ and DOCUMENTS (tests/it/docs/mod.rs) differ"
    );

    let summary = path("docs/SUMMARY.md");
    let contents: BTreeSet<PathBuf> = links(&std::fs::read_to_string(&summary).unwrap())
        .into_iter()
        .filter(|(_, target)| !is_external(target))
        .map(|(_, target)| resolve(&summary, &target).0.canonicalize().unwrap())
        .collect();
    let missing: Vec<&String> = pages
        .iter()
        .filter(|p| p.as_str() != "docs/SUMMARY.md")
        .filter(|p| !contents.contains(&path(p).canonicalize().unwrap()))
        .collect();
    assert!(missing.is_empty(), "not in docs/SUMMARY.md: {missing:?}");
}
