//! Real disk faults, not an injected wrapper: the child server's data
//! directory lives on a file system of its own that the test makes full (a
//! small tmpfs) or read-only (an ext4 image on a loop device that the kernel
//! remounts read-only after an error, as it does for a failing disk).
//!
//! Both faults need root (mount, loop devices); `chmod` would not do, as
//! tests run as root and a running server's open files ignore it anyway.
//! Where the mechanism is missing, the test fails saying so, unless
//! `TOKENAUTH_SKIP_DISK_FAULT_TESTS=1` asks to skip it on purpose.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use tokenauth::proto::{
    CheckRequest, IssueTokenResponse, RevokeAllRequest, RevokeTokenRequest, TokenKind,
};
use tonic::Code;

use crate::{
    child::{ChildServer, ChildSetup},
    harness::{NOT_SERVING, SERVING, admin, service_token, status_of, wait_for_status},
};

const TOKEN_SERVICE: &str = "tokenauth.v1.TokenService";
const CHECK_SERVICE: &str = "tokenauth.v1.CheckService";

/// A file system mounted for one test, unmounted when dropped.
struct Mount {
    point: tempfile::TempDir,
    /// The ext4 image behind a loop mount.
    image: Option<PathBuf>,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Mount {
    fn path(&self) -> &Path {
        self.point.path()
    }

    fn tmpfs(size: &str) -> Result<Self, String> {
        let point = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = point.path().to_str().ok_or("path")?.to_owned();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &path],
        )?;
        Ok(Self { point, image: None })
    }

    /// An ext4 file system in an image file that the kernel remounts
    /// read-only at its first error (`errors=remount-ro`).
    fn ext4(megabytes: u64) -> Result<Self, String> {
        let point = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = tempfile::NamedTempFile::new()
            .map_err(|e| e.to_string())?
            .into_temp_path()
            .keep()
            .map_err(|e| e.to_string())?;
        std::fs::File::options()
            .write(true)
            .open(&image)
            .and_then(|f| f.set_len(megabytes << 20))
            .map_err(|e| e.to_string())?;
        let image_path = image.to_str().ok_or("path")?.to_owned();
        run("mkfs.ext4", &["-q", "-F", &image_path])?;
        let mount = Self {
            point,
            image: Some(image),
        };
        mount.mount_image()?;
        Ok(mount)
    }

    fn mount_image(&self) -> Result<(), String> {
        let image = self.image.as_ref().ok_or("no image")?;
        run(
            "mount",
            &[
                "-o",
                "loop,errors=remount-ro",
                image.to_str().ok_or("path")?,
                self.point.path().to_str().ok_or("path")?,
            ],
        )
    }

    /// Makes the ext4 file system fail as a bad disk would: the kernel logs
    /// the error and remounts it read-only, and every write gets EROFS.
    fn fail_ext4(&self) -> Result<(), String> {
        let output = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE"])
            .arg(self.path())
            .output()
            .map_err(|e| e.to_string())?;
        let source = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let device = source.rsplit('/').next().unwrap_or_default().to_owned();
        std::fs::write(
            format!("/sys/fs/ext4/{device}/trigger_fs_error"),
            "tokenauth disk fault test",
        )
        .map_err(|e| format!("/sys/fs/ext4/{device}/trigger_fs_error: {e}"))
    }

    /// Unmounts, repairs and mounts the ext4 image again, read-write (what
    /// an operator does once the disk is sound; the kernel keeps a file
    /// system that failed read-only until it is unmounted).
    fn repair_ext4(&self) -> Result<(), String> {
        let point = self.path().to_str().ok_or("path")?.to_owned();
        run("umount", &[&point])?;
        let image = self.image.as_ref().ok_or("no image")?;
        // fsck exits 1 when it fixed something: that is success here.
        let status = Command::new("fsck.ext4")
            .args(["-f", "-y"])
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if !matches!(status.code(), Some(0 | 1)) {
            return Err(format!("fsck.ext4 failed: {status}"));
        }
        self.mount_image()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazily: a child that failed an assertion may still hold files.
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}

/// Fails loudly when a fault cannot be made here, unless skipping was asked for.
fn mechanism_or_skip(mount: Result<Mount, String>, what: &str) -> Option<Mount> {
    match mount {
        Ok(mount) => Some(mount),
        Err(why) if std::env::var_os("TOKENAUTH_SKIP_DISK_FAULT_TESTS").is_some() => {
            eprintln!(
                "!!! SKIPPED: cannot make {what} here ({why}); TOKENAUTH_SKIP_DISK_FAULT_TESTS is set !!!"
            );
            None
        }
        Err(why) => panic!(
            "cannot make {what} here: {why}. This test needs root, mount(8), tmpfs, loop devices \
             and ext4. Set TOKENAUTH_SKIP_DISK_FAULT_TESTS=1 to skip it on purpose."
        ),
    }
}

/// A child server whose data directory is `data_dir`, probing its store often.
fn setup_on(data_dir: &Path) -> (ChildSetup, ChildSetup) {
    let base = ChildSetup::new("[health]\nprobe_interval = \"100ms\"\n");
    let on_mount = base.with_data_dir(data_dir);
    (base, on_mount)
}

async fn issue_on(child: &ChildServer, cp: &str) -> Result<IssueTokenResponse, tonic::Status> {
    child
        .tokens(cp)
        .issue_token(service_token("org-1", &["scim:read"]))
        .await
        .map(tonic::Response::into_inner)
}

async fn allowed(channel: &ChildServer, secret: &str) -> bool {
    channel
        .check()
        .check(CheckRequest {
            token: secret.to_owned(),
            permission: "scim:read".into(),
            org_id: "org-1".into(),
            workspace_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .allowed
}

/// Every management write is refused with UNAVAILABLE (never INTERNAL),
/// health says the token service is out while Check and readiness stay in,
/// and a token checked before the fault is still allowed.
async fn writes_are_refused_but_checks_go_on(
    child: &ChildServer,
    cp: &str,
    checked: &IssueTokenResponse,
    other: &IssueTokenResponse,
) {
    let status = issue_on(child, cp).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = child
        .tokens(cp)
        .revoke_token(RevokeTokenRequest {
            id: other.token.as_ref().unwrap().id.clone(),
            actor: admin("org-1"),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = child
        .tokens(cp)
        .revoke_all(RevokeAllRequest {
            org_id: "org-1".into(),
            kind: TokenKind::Service as i32,
            actor: admin("org-1"),
            ..RevokeAllRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    wait_for_status(&child.channel, TOKEN_SERVICE, NOT_SERVING).await;
    assert_eq!(status_of(&child.channel, CHECK_SERVICE).await, SERVING);
    assert_eq!(
        status_of(&child.channel, "").await,
        SERVING,
        "readiness keeps routing Checks"
    );
    assert!(allowed(child, &checked.secret).await);
}

/// After the restart: writes work, health is back, nothing acknowledged is lost.
async fn back_in_service(child: &ChildServer, cp: &str, checked: &IssueTokenResponse) {
    wait_for_status(&child.channel, TOKEN_SERVICE, SERVING).await;
    let fresh = issue_on(child, cp).await.unwrap();
    assert!(allowed(child, &fresh.secret).await);
    assert!(allowed(child, &checked.secret).await);
}

/// Fills the file system under `dir` with a file, until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 << 10];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_checks_and_recovers_with_a_restart() {
    let Some(mount) = mechanism_or_skip(Mount::tmpfs("24m"), "a full disk (tmpfs)") else {
        return;
    };
    let (_base, setup) = setup_on(&mount.path().join("data"));
    let cp = setup.control_plane.clone();
    let mut child = setup.start("info").await;
    let checked = issue_on(&child, &cp).await.unwrap();
    let other = issue_on(&child, &cp).await.unwrap();
    assert!(allowed(&child, &checked.secret).await);

    let filler = fill(mount.path());
    // sled writes into the log segment it has until it needs another one.
    let mut refused = None;
    for _ in 0..20_000 {
        if let Err(status) = issue_on(&child, &cp).await {
            refused = Some(status);
            break;
        }
    }
    let status = refused.expect("the disk is full, yet every issue was acknowledged");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    writes_are_refused_but_checks_go_on(&child, &cp, &checked, &other).await;

    // Space comes back. sled keeps its first I/O error until it is reopened,
    // so the server stops with a clear error for its supervisor to restart it.
    std::fs::remove_file(filler).unwrap();
    let code = child
        .exits_on_its_own("the disk takes writes again, yet the server did not stop for a restart")
        .await;
    assert_eq!(code, Some(1));
    let logs = std::sync::Arc::clone(&child.logs);
    drop(child);
    assert!(
        logs.lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("stopping so that a restart reopens the database")),
        "{:?}",
        logs.lock().unwrap()
    );
    let child = setup.start("info").await;
    back_in_service(&child, &cp, &checked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_disk_refuses_writes_keeps_checks_and_recovers_once_repaired() {
    let Some(mount) =
        mechanism_or_skip(Mount::ext4(32), "a read-only disk (ext4 on a loop device)")
    else {
        return;
    };
    let (_base, setup) = setup_on(&mount.path().join("data"));
    let cp = setup.control_plane.clone();
    let child = setup.start("info").await;
    let checked = issue_on(&child, &cp).await.unwrap();
    let other = issue_on(&child, &cp).await.unwrap();
    assert!(allowed(&child, &checked.secret).await);

    if let Err(why) = mount.fail_ext4() {
        mechanism_or_skip(Err(why), "a read-only disk (ext4 error trigger)");
        return;
    }
    writes_are_refused_but_checks_go_on(&child, &cp, &checked, &other).await;
    // The disk does not take writes, so the server stays up for Checks.
    assert!(allowed(&child, &checked.secret).await);

    // The operator stops the service, repairs and remounts the file system.
    child.signal("TERM");
    child.wait().await;
    mount.repair_ext4().unwrap();
    let child = setup.start("info").await;
    back_in_service(&child, &cp, &checked).await;
}
