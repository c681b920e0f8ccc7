//! The examples of docs/operate/webhooks.md, run: the grpcurl calls that
//! list and redeliver a parked delivery, against a real server, and the
//! Python and shell verifiers, against the delivery the receiver then got
//! (and against it tampered, which they must refuse); and the payload it
//! shows has the shape of that delivery.

use std::{path::Path, process::Command, time::Duration};

use super::receiver::{Received, Receiver, Reply, SECRET, endpoint};
use crate::{
    docs::{
        markdown::{blocks, examples},
        walkthrough::{compare, same_shape},
    },
    harness::{TestServer, issue, service_token},
    tools::tool,
};

pub const DOCUMENT: &str = "docs/operate/webhooks.md";

fn document() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(DOCUMENT)
}

/// Runs `program` with the delivery's headers in the environment and its
/// body on stdin and in `body.json`.
async fn verify(program: Vec<String>, delivery: &Received) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("body.json"), &delivery.body).unwrap();
    let delivery = delivery.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(&program[0])
            .args(&program[1..])
            .current_dir(dir.path())
            .env("WEBHOOK_SECRET", SECRET)
            .env("WEBHOOK_ID", &delivery.id)
            .env("WEBHOOK_TIMESTAMP", &delivery.timestamp)
            .env("WEBHOOK_SIGNATURE", &delivery.signature)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&delivery.body)
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_documented_examples_run_against_a_real_delivery() {
    let receiver = Receiver::start(Reply::Status(500)).await;
    let secrets = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(|config| {
        let mut hook = endpoint(secrets.path(), "secrets-manager", &receiver.url);
        hook.max_age = Duration::ZERO;
        config.webhooks = vec![hook];
    })
    .await;
    issue(&server, service_token("acme", &["scim:read"])).await;
    let deadline = tokio::time::Instant::now() + super::receiver::PATIENCE;
    while receiver.received().is_empty() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Parked at once (max_age 0s): wait for the write, then fix the receiver.
    tokio::time::sleep(Duration::from_millis(300)).await;
    receiver.answer(Reply::Ok);

    let found = examples(&document());
    assert_eq!(found.len(), 3, "two grpcurl calls and the shell verifier");
    let grpcurl = tool("grpcurl");
    let (calls, verifiers): (Vec<_>, Vec<_>) = found
        .iter()
        .partition(|e| e.block.text.starts_with("grpcurl "));
    assert_eq!((calls.len(), verifiers.len()), (2, 1));
    for example in calls {
        let script = example
            .block
            .text
            .replace("grpcurl ", &format!("{} ", grpcurl.display()))
            .replace("localhost:50051", &server.addr().to_string());
        let cp = format!("authorization: Bearer {}", server.control_plane);
        let output = tokio::task::spawn_blocking(move || {
            Command::new("sh")
                .arg("-c")
                .arg(&script)
                .env("CP", cp)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let shown = example.output.as_ref().expect("the answer is shown");
        let problems = compare(&shown.lang, &shown.text, &output);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}\nstdout: {}\nstderr: {}",
            example.block.place(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let delivered = receiver.wait_for_count(1).await;
    let delivery = &delivered[0];
    let payload = blocks(&document())
        .into_iter()
        .find(|b| b.lang == "jsonc")
        .expect("the payload example");
    let shown: serde_json::Value = serde_json::from_str(&payload.text).unwrap();
    let mut problems = Vec::new();
    same_shape("", &shown, &delivery.json(), &mut problems);
    assert!(problems.is_empty(), "{}: {problems:#?}", payload.place());
    let mut tampered = delivery.clone();
    tampered.body = String::from_utf8(tampered.body)
        .unwrap()
        .replace("token.issued", "token.revoked")
        .into_bytes();

    let python = blocks(&document())
        .into_iter()
        .find(|b| b.lang == "python")
        .expect("a Python verifier");
    let shell = verifiers[0];
    let runs: [(&str, Vec<String>); 2] = [
        (
            "python",
            vec!["python3".into(), "-c".into(), python.text.clone()],
        ),
        (
            "shell",
            vec!["sh".into(), "-c".into(), shell.block.text.clone()],
        ),
    ];
    for (name, program) in runs {
        let output = verify(program.clone(), delivery).await;
        assert!(
            output.status.success() && output.stdout == b"valid\n",
            "{name}: {output:?}"
        );
        if name == "shell" {
            let shown = shell.output.as_ref().expect("the answer is shown");
            assert!(compare(&shown.lang, &shown.text, &output).is_empty());
        }
        let output = verify(program, &tampered).await;
        assert!(
            !output.status.success() && output.stdout == b"invalid\n",
            "{name} accepted a tampered body: {output:?}"
        );
    }
}
