//! A damaged database refuses to start, saying why, rather than starting
//! with tokens or revocations missing. sled checksums its log, but it treats
//! a damaged record as the torn tail of a crash and drops it and everything
//! after it: without the flush watermark (`store::sled`), the server started
//! on every damage below, with acknowledged tokens gone.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use tokenauth::proto::CheckRequest;

use crate::{child::ChildSetup, harness::service_token};

/// Copies a directory tree (the data directory, before damaging the copy).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Runs `tokenauth serve` on `config`: its exit code and logs if it exits,
/// or `None` if it starts listening (it is then killed).
fn serve_until_exit_or_listening(config: &Path) -> Option<(Option<i32>, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokenauth"))
        .args(["serve", "--config"])
        .arg(config)
        .env("TOKENAUTH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut logs = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("tokenauth listening") {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        logs.push_str(&line);
        logs.push('\n');
    }
    Some((child.wait().unwrap().code(), logs))
}

/// Flips every byte of `len` bytes at `at` in `file`.
fn flip(file: &Path, at: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    let handle = std::fs::File::options()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut bytes = vec![0u8; len];
    handle.read_exact_at(&mut bytes, at).unwrap();
    for byte in &mut bytes {
        *byte ^= 0x5A;
    }
    handle.write_all_at(&bytes, at).unwrap();
}

/// Where the written part of sled's log ends (its segments are zero-padded).
fn end_of_log(file: &Path) -> u64 {
    let bytes = std::fs::read(file).unwrap();
    bytes.iter().rposition(|&b| b != 0).unwrap() as u64 + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_refuses_to_start_and_says_why() {
    let setup = ChildSetup::new("");
    let cp = setup.control_plane.clone();
    let child = setup.start("info").await;
    // Enough tokens for the log to span several of sled's segments.
    let mut last = None;
    for _ in 0..400 {
        let issued = child
            .tokens(&cp)
            .issue_token(service_token("org-1", &["scim:read"]))
            .await
            .unwrap()
            .into_inner();
        last = Some(issued.secret);
    }
    child.signal("TERM");
    assert_eq!(child.wait().await, Some(0));
    let log = |data: &Path| data.join("db").join("db");
    let size = std::fs::metadata(log(&setup.data_dir())).unwrap().len();
    let end = end_of_log(&log(&setup.data_dir()));

    type Damage = Box<dyn Fn(&Path)>;
    let damages: Vec<(&str, Damage)> = vec![
        (
            "bytes flipped early in the log",
            Box::new(move |d| flip(&log(d), 4096, 64)),
        ),
        (
            "bytes flipped mid-log",
            Box::new(move |d| flip(&log(d), size / 2, 64)),
        ),
        (
            "bytes flipped near the end of the log",
            Box::new(move |d| flip(&log(d), end - 300, 8)),
        ),
        (
            "the log truncated to half",
            Box::new(move |d| {
                std::fs::File::options()
                    .write(true)
                    .open(log(d))
                    .unwrap()
                    .set_len(size / 2)
                    .unwrap();
            }),
        ),
        (
            "the log replaced by garbage",
            Box::new(move |d| {
                let garbage: Vec<u8> = (0..size).map(|i| (i * 7919 % 251) as u8).collect();
                std::fs::write(log(d), garbage).unwrap();
            }),
        ),
        (
            "the log deleted",
            Box::new(move |d| std::fs::remove_file(log(d)).unwrap()),
        ),
    ];
    let mut started = Vec::new();
    for (name, damage) in &damages {
        let copy = tempfile::tempdir().unwrap();
        let data = copy.path().join("data");
        copy_dir(&setup.data_dir(), &data);
        damage(&data);
        let config = setup.with_data_dir(&data);
        match serve_until_exit_or_listening(&config.config) {
            None => started.push(*name),
            Some((code, logs)) => {
                eprintln!(
                    "DAMAGE {name}: {code:?} {}",
                    logs.lines()
                        .filter(|l| l.contains("damaged") || l.contains("lost"))
                        .collect::<Vec<_>>()
                        .join(" / ")
                );
                assert_eq!(code, Some(1), "{name}: {logs}");
                assert!(
                    logs.contains("is damaged") || logs.contains("lost acknowledged writes"),
                    "{name}: the refusal must name the damage: {logs}"
                );
            }
        }
    }
    assert!(
        started.is_empty(),
        "started on a damaged database: {started:?}"
    );

    // The undamaged database still starts, with the last token in it.
    let child = setup.start("info").await;
    let decision = child
        .check()
        .check(CheckRequest {
            token: last.unwrap(),
            permission: "scim:read".into(),
            org_id: "org-1".into(),
            workspace_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(decision.allowed, "{decision:?}");
}
