//! Every command example in the documentation runs, in order, as the
//! walkthrough an operator would follow: with the real `tokenauth`, the real
//! grpcurl (1.8.6, from scripts/tools) and, where the docs name one, a real
//! PostgreSQL; and every output the docs show is compared with what the
//! command printed. So the examples cannot drift from the code.
//!
//! The conventions the documents follow, so that this works:
//! - Examples are ```sh blocks. A ```json or ```text block right after one
//!   (blank lines only between) is what its last command prints. JSON is
//!   compared by shape: the same keys at every level, arrays of the same
//!   length, the same values, except a string ending in `...` (any longer
//!   string that starts the same) and a time (any time). Text is compared
//!   line by line; a shown `ERROR:` is grpcurl's report of a refused call,
//!   and a shown `error:` tokenauth's (stderr, failing exit status).
//! - Only these placeholders are filled in: `cargo run --release --` is the
//!   built `tokenauth`; `localhost:50051` and `127.0.0.1:50051` get the port
//!   of the server started last (servers listen on `127.0.0.1:0`, through
//!   `TOKENAUTH_LISTEN`, and `0.0.0.0:50051` becomes `127.0.0.1:0`);
//!   `<id of NAME>` and `<secret of NAME>` are those of the token named NAME
//!   (its latest secret); `<FIELD above>` is that field of the latest output
//!   that had it; `postgres://tokenauth@db.internal:5432/tokenauth` is a
//!   throwaway PostgreSQL; `pepper.from-your-secret-store` is `data/pepper`;
//!   absolute paths under `/etc`, `/run` and `/var` are inside the
//!   walkthrough's directory (their parents exist; a file under
//!   `/run/secrets/` holds a placeholder password).
//! - A `tokenauth serve` runs in the background until the next one, or
//!   until a part that needs the server stopped; commands of programs one
//!   machine cannot run (`walkthrough::NOT_RUN`: docker, kubectl...) are
//!   left out, and the test lists them.
//!
//! The Markdown files are a list (`DOCUMENTS`): README.md and every file
//! under docs/ (a test keeps the list whole), and the walkthroughs name the
//! sections of them they run. `links` checks that every relative link
//! between them resolves.

mod config_blocks;
mod links;
pub(crate) mod markdown;
pub(crate) mod walkthrough;

use std::path::{Path, PathBuf};

use markdown::{Example, examples, inline_commands};
use walkthrough::Walkthrough;

/// The documents whose examples run.
const DOCUMENTS: &[&str] = &[
    "README.md",
    "docs/SUMMARY.md",
    "docs/concepts.md",
    "docs/api.md",
    "docs/api-json.md",
    "docs/guarantees.md",
    "docs/operate/configuration.md",
    "docs/operate/cli.md",
    "docs/operate/observability.md",
    "docs/operate/webhooks.md",
    "docs/operate/tls.md",
    "docs/operate/backup-restore.md",
    "docs/operate/pepper.md",
    "docs/operate/limits-and-shutdown.md",
    "docs/operate/memory.md",
    "docs/operate/security.md",
    "docs/deploy/envoy-istio.md",
    "docs/deploy/kubernetes.md",
    "docs/deploy/replicas-postgres.md",
    "docs/deploy/secret-scanning.md",
    "docs/develop/architecture.md",
    "docs/develop/check-path.md",
    "docs/develop/revocation.md",
    "docs/develop/testing.md",
    "docs/develop/benchmark-history.md",
    "docs/develop/decisions/0001-sled-default.md",
    "docs/develop/decisions/0002-group-commit.md",
    "docs/develop/decisions/0003-pepper-file.md",
    "docs/develop/decisions/0004-revocation-log.md",
];

/// A section of a document (its subsections with it, unless a part names
/// them), run as one step of a walkthrough.
struct Part {
    file: &'static str,
    section: &'static str,
    /// Whether the section's examples need the server stopped first.
    server_stopped: bool,
}

const fn part(file: &'static str, section: &'static str) -> Part {
    Part {
        file,
        section,
        server_stopped: false,
    }
}

/// From a fresh machine to a server with tokens, its backup and restore,
/// the pepper rotated, and its data moved to PostgreSQL.
const OPERATOR: &[Part] = &[
    part("README.md", "Quick start"),
    part("docs/api.md", "API, with grpcurl"),
    part("docs/operate/cli.md", "The command line"),
    part("docs/deploy/envoy-istio.md", "Envoy and Istio (ext_authz)"),
    part("docs/deploy/kubernetes.md", "Deploying on Kubernetes"),
    part("docs/operate/configuration.md", "Configuration"),
    part("docs/operate/backup-restore.md", "Backup and restore"),
    part("docs/operate/pepper.md", "The pepper"),
    Part {
        file: "docs/deploy/replicas-postgres.md",
        section: "Moving from sled",
        server_stopped: true,
    },
];

/// A fresh deployment of replicas on PostgreSQL.
const REPLICAS: &[Part] = &[part(
    "docs/deploy/replicas-postgres.md",
    "Running several replicas",
)];

const WALKTHROUGHS: &[&[Part]] = &[OPERATOR, REPLICAS];

fn path(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
}

/// The part an example belongs to: of the parts naming one of its
/// headings, the one naming the innermost.
fn part_of(example: &Example) -> Option<(usize, usize)> {
    let mut best: Option<(usize, (usize, usize))> = None;
    for (w, parts) in WALKTHROUGHS.iter().enumerate() {
        for (p, part) in parts.iter().enumerate() {
            if path(part.file) != example.block.file {
                continue;
            }
            if let Some(depth) = example
                .block
                .headings
                .iter()
                .position(|h| h == part.section)
                && best.is_none_or(|(d, _)| depth > d)
            {
                best = Some((depth, (w, p)));
            }
        }
    }
    best.map(|(_, at)| at)
}

/// Pages whose examples a test of their own runs, since they need more
/// than a walkthrough starts: JSON over HTTP needs Envoy in front, and
/// a secret-scanning report a signature made by the test's key.
const RUN_BY_THEIR_OWN_TEST: &[(&str, &str)] = &[
    (
        crate::envoy::transcoder::DOCUMENT,
        "envoy::transcoder::the_documented_curl_examples_run_as_shown",
    ),
    (
        crate::secret_scanning::DOCUMENT,
        "secret_scanning::the_documented_example_runs_as_shown",
    ),
    (
        crate::webhooks::docs::DOCUMENT,
        "webhooks::docs::the_documented_examples_run_against_a_real_delivery",
    ),
];

fn all_examples() -> Vec<Example> {
    DOCUMENTS.iter().flat_map(|f| examples(&path(f))).collect()
}

/// Runs walkthrough `index`; returns what ran, for the failure messages.
fn run_walkthrough(index: usize) -> Vec<String> {
    let examples = all_examples();
    let mut walkthrough = Walkthrough::new();
    let mut ran = 0;
    for (p, part) in WALKTHROUGHS[index].iter().enumerate() {
        if part.server_stopped {
            walkthrough.stop_server();
        }
        for example in examples.iter().filter(|e| part_of(e) == Some((index, p))) {
            walkthrough.run(example);
            ran += 1;
        }
        assert!(ran > 0, "no example in {} {:?}", part.file, part.section);
    }
    walkthrough.stop_server();
    walkthrough.transcript.clone()
}

#[test]
fn every_example_belongs_to_a_walkthrough() {
    let examples = all_examples();
    assert!(examples.len() >= 20, "{}", examples.len());
    let lost: Vec<String> = examples
        .iter()
        .filter(|e| part_of(e).is_none())
        .filter(|e| {
            !RUN_BY_THEIR_OWN_TEST
                .iter()
                .any(|(file, _)| path(file) == e.block.file)
        })
        .map(|e| format!("{} under {:?}", e.block.place(), e.block.headings))
        .collect();
    assert!(
        lost.is_empty(),
        "examples no walkthrough runs (add their section to a walkthrough in tests/it/docs): {lost:#?}"
    );
    // Each shown output follows an example whose last command prints it.
    for document in DOCUMENTS {
        for block in markdown::blocks(&path(document)) {
            if block.lang == "json"
                || block.lang == "json-stream"
                || (block.lang == "text"
                    && (block.text.starts_with("ERROR:") || block.text.starts_with("error:")))
            {
                assert!(
                    examples
                        .iter()
                        .any(|e| e.output.as_ref().is_some_and(|o| o.line == block.line)),
                    "{}: an output shown after no example",
                    block.place()
                );
            }
        }
    }
}

#[test]
fn the_operator_walkthrough_runs_as_documented() {
    let transcript = run_walkthrough(0);
    // The examples that need what one machine lacks, named.
    let skipped: Vec<&String> = transcript
        .iter()
        .filter(|l| l.contains(": not run ("))
        .collect();
    assert!(
        skipped
            .iter()
            .all(|l| l.contains("docker") || l.contains("kubectl") || l.contains("scripts/test")),
        "{skipped:#?}"
    );
    let ran = |needle: &str| transcript.iter().any(|l| l.contains(needle));
    for command in [
        "tokenauth serve",
        "tokenauth credential generate",
        "grpcurl",
        "tokenauth config check",
        "tokenauth backup",
        "tokenauth restore",
        "tokenauth pepper rotate",
        "tokenauth migrate",
        "tokenauth token issue",
        "tokenauth token list",
        "tokenauth token rotate",
        "tokenauth token revoke",
        "tokenauth audit list",
        "tokenauth events watch",
    ] {
        assert!(ran(command), "{command} never ran: {transcript:#?}");
    }
}

#[test]
fn the_replicas_walkthrough_runs_as_documented() {
    let transcript = run_walkthrough(1);
    for command in [
        "tokenauth pepper create",
        "tokenauth serve --listen 127.0.0.1:0",
    ] {
        assert!(
            transcript.iter().any(|l| l.contains(command)),
            "{command} never ran: {transcript:#?}"
        );
    }
}

#[test]
fn every_tokenauth_command_in_prose_is_one_the_binary_knows() {
    let mut seen = 0;
    for document in DOCUMENTS {
        for (line, span) in inline_commands(&path(document)) {
            let args: Vec<&str> = span.split_whitespace().skip(1).collect();
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_tokenauth"))
                .args(&args)
                .arg("--help")
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{document}:{line}: `{span}`: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            seen += 1;
        }
    }
    assert!(seen >= 5, "{seen}");
}

#[test]
fn a_shown_output_that_differs_is_reported() {
    use std::os::unix::process::ExitStatusExt;
    let printed = |stdout: &str, code: i32| std::process::Output {
        status: std::process::ExitStatus::from_raw(code << 8),
        stdout: stdout.as_bytes().to_vec(),
        stderr: Vec::new(),
    };
    let shown =
        r#"{"revokedCount": "1", "token": {"id": "tok_...", "createdAt": "2026-12-03T11:34:06Z"}}"#;
    let same = r#"{"revokedCount": "1", "token": {"id": "tok_01ABC", "createdAt": "2027-01-01T00:00:00.5Z"}}"#;
    assert_eq!(
        walkthrough::compare("json", shown, &printed(same, 0)),
        Vec::<String>::new()
    );
    for (differs, why) in [
        (
            r#"{"revoked_count": "1", "token": {"id": "tok_1", "createdAt": "2026-12-03T11:34:06Z"}}"#,
            "proto field names",
        ),
        (
            r#"{"revokedCount": "2", "token": {"id": "tok_1", "createdAt": "2026-12-03T11:34:06Z"}}"#,
            "another value",
        ),
        (
            r#"{"token": {"id": "tok_1", "createdAt": "2026-12-03T11:34:06Z"}}"#,
            "a zero value left out",
        ),
        (
            r#"{"revokedCount": "1", "token": {"id": "evt_1", "createdAt": "2026-12-03T11:34:06Z"}}"#,
            "another kind of id",
        ),
        (
            r#"{"revokedCount": "1", "token": {"id": "tok_1", "createdAt": "soon"}}"#,
            "not a time",
        ),
    ] {
        assert!(
            !walkthrough::compare("json", shown, &printed(differs, 0)).is_empty(),
            "{why}"
        );
    }
    assert!(!walkthrough::compare("json", shown, &printed(same, 1)).is_empty());
    assert!(
        !walkthrough::compare("text", "ERROR:\n  Code: NotFound\n", &printed("", 0)).is_empty()
    );

    // A stream: every message in order, ended by `-max-time` or not at all.
    let deadline = |stdout: &str| std::process::Output {
        stderr: b"ERROR:\n  Code: DeadlineExceeded\n".to_vec(),
        ..printed(stdout, 1)
    };
    let stream = r#"{"cursor": "fc1_..."} {"cursor": "fc1_..."}"#;
    let two = "{\"cursor\": \"fc1_1\"}\n{\"cursor\": \"fc1_2\"}\n";
    assert_eq!(
        walkthrough::compare("json-stream", stream, &deadline(two)),
        Vec::<String>::new()
    );
    assert_eq!(
        walkthrough::compare("json-stream", stream, &printed(two, 0)),
        Vec::<String>::new()
    );
    for (differs, why) in [
        (deadline("{\"cursor\": \"fc1_1\"}"), "a message missing"),
        (
            deadline(&format!("{two}{{\"cursor\": \"fc1_3\"}}")),
            "one more",
        ),
        (printed(two, 1), "another failure than the deadline"),
    ] {
        assert!(
            !walkthrough::compare("json-stream", stream, &differs).is_empty(),
            "{why}"
        );
    }
}
