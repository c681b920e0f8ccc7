//! The pepper file: the secret keys that token digests are made with.
//!
//! One key per line, `<key id> <64 hex digits>`; `#` starts a comment. The
//! newest (highest) id digests new tokens; older keys keep verifying the tokens
//! issued under them, so `tokenauth pepper rotate` adds a key without
//! invalidating anything.
//!
//! The file is created with mode 0600 on first start, and only then: if the
//! database already holds tokens, a missing pepper means every token is
//! unverifiable, and a fresh one would hide that, so start-up refuses. The
//! database keeps a check value (an HMAC of a fixed label) per key id, which
//! catches a pepper file from another installation or a damaged one; a
//! database that holds tokens but no check value refuses any pepper.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use crate::{
    domain::secret::{Keyring, PepperKey},
    store::{Store, StoreError},
};

const KEY_BYTES: usize = 32;
const CHECK_LABEL: &str = "tokenauth pepper check v1";
const HEADER: &str = "# tokenauth pepper: the keys token digests are made with. SECRET.\n\
# Keep it private (mode 0600) and back it up with the database: without it no token verifies.\n\
# Never edit or remove a key line; add keys with `tokenauth pepper rotate`.\n";

/// Why the pepper could not be loaded. Messages name the file, never a key.
#[derive(Debug, thiserror::Error)]
pub enum PepperError {
    #[error("pepper file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("pepper file {path}, line {line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("pepper file {path} holds no key")]
    Empty { path: PathBuf },
    #[error(
        "pepper file {path} is missing, but the database already holds tokens: they can only be \
         verified with the pepper they were issued under. Restore the pepper file from your backup; \
         a new pepper is never created over an existing database"
    )]
    MissingForExistingDatabase { path: PathBuf },
    #[error(
        "pepper file {path} does not match the database: {reason}. Restore the pepper file that \
         belongs with this database"
    )]
    Mismatch { path: PathBuf, reason: String },
    #[error(
        "pepper file {path} is missing. With a shared (PostgreSQL) store every replica must be \
         given the same pepper file: create one with `tokenauth pepper create --file <path>` \
         and distribute it as a secret"
    )]
    MissingForSharedStore { path: PathBuf },
    #[error(
        "pepper file {path} cannot be verified: the database holds tokens but no pepper check \
         values. An interrupted `tokenauth migrate` leaves a database so (run it again to \
         complete the copy); otherwise the database is damaged (restore it from a backup)"
    )]
    Unverifiable { path: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PepperError + '_ {
    move |source| PepperError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The value the database keeps to recognise a key.
pub fn check_value(key: &PepperKey) -> [u8; 32] {
    key.digest(CHECK_LABEL).0
}

/// Reads the keys of a pepper file.
pub fn read(path: &Path) -> Result<Keyring, PepperError> {
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    let mode = fs::metadata(path)
        .map_err(io_error(path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", mode & 0o777),
            "the pepper file is readable by other users; it should be mode 0600"
        );
    }
    let parse_error = |line: usize, reason: &str| PepperError::Parse {
        path: path.to_owned(),
        line,
        reason: reason.to_owned(),
    };
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, hex) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| parse_error(index + 1, "expected `<key id> <64 hex digits>`"))?;
        let id: u32 = id
            .parse()
            .ok()
            .filter(|&id| id > 0)
            .ok_or_else(|| parse_error(index + 1, "the key id must be a positive integer"))?;
        let key = decode_hex(hex.trim())
            .ok_or_else(|| parse_error(index + 1, "the key must be 64 hex digits"))?;
        keys.push(PepperKey::new(id, &key));
    }
    if keys.is_empty() {
        return Err(PepperError::Empty {
            path: path.to_owned(),
        });
    }
    Keyring::new(keys).ok_or_else(|| parse_error(0, "a key id appears twice"))
}

fn decode_hex(hex: &str) -> Option<[u8; KEY_BYTES]> {
    if hex.len() != KEY_BYTES * 2 || !hex.is_ascii() {
        return None;
    }
    let mut key = [0u8; KEY_BYTES];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

fn random_key() -> io::Result<[u8; KEY_BYTES]> {
    let mut key = [0u8; KEY_BYTES];
    getrandom::fill(&mut key).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(key)
}

fn key_line(id: u32, key: &[u8; KEY_BYTES]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("{id} {hex}\n")
}

/// Writes `contents` to `path` atomically, mode 0600, durable on return.
fn write_private(path: &Path, contents: &str) -> Result<(), PepperError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error(&tmp))?;
    file.write_all(contents.as_bytes())
        .map_err(io_error(&tmp))?;
    file.sync_all().map_err(io_error(&tmp))?;
    fs::rename(&tmp, path).map_err(io_error(path))?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))?;
    }
    Ok(())
}

/// Adds a new key (the highest id plus one) to an existing pepper file.
/// Tokens issued afterwards use it; existing tokens keep working.
pub fn rotate(path: &Path) -> Result<u32, PepperError> {
    let keyring = read(path)?;
    let id = keyring
        .current()
        .id()
        .checked_add(1)
        .ok_or_else(|| PepperError::Parse {
            path: path.to_owned(),
            line: 0,
            reason: "no key id is left".into(),
        })?;
    let mut text = fs::read_to_string(path).map_err(io_error(path))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&key_line(id, &random_key().map_err(io_error(path))?));
    write_private(path, &text)?;
    Ok(id)
}

/// Fails unless every key id the database knows is in `keyring` with the same value.
fn verify(path: &Path, keyring: &Keyring, known: &[(u32, [u8; 32])]) -> Result<(), PepperError> {
    for (id, expected) in known {
        let key = keyring.get(*id).ok_or_else(|| PepperError::Mismatch {
            path: path.to_owned(),
            reason: format!("the database uses key id {id}, which the file lacks"),
        })?;
        if check_value(key) != *expected {
            return Err(PepperError::Mismatch {
                path: path.to_owned(),
                reason: format!("key id {id} differs from the one the database was used with"),
            });
        }
    }
    Ok(())
}

/// Creates a new pepper file with one key; refuses to replace an existing one.
pub fn create(path: &Path) -> Result<(), PepperError> {
    if path.exists() {
        return Err(PepperError::Io {
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "already exists; not replaced"),
        });
    }
    let text = format!(
        "{HEADER}{}",
        key_line(1, &random_key().map_err(io_error(path))?)
    );
    write_private(path, &text)
}

/// Loads the pepper for `store`, creating it only for a new database, and
/// verifies that it is the pepper the database's tokens were issued under.
///
/// `may_create` is false for a store that several replicas share: each must
/// be given the same pepper file, and one made up here would differ.
pub async fn open(
    path: &Path,
    store: &dyn Store,
    may_create: bool,
) -> Result<Keyring, PepperError> {
    let keyring = if path.exists() {
        read(path)?
    } else if !may_create {
        return Err(PepperError::MissingForSharedStore {
            path: path.to_owned(),
        });
    } else if store.is_empty().await? {
        create(path)?;
        tracing::info!(path = %path.display(), "created a new pepper file");
        read(path)?
    } else {
        return Err(PepperError::MissingForExistingDatabase {
            path: path.to_owned(),
        });
    };
    // Asked before the check values are read: a start records its check
    // values before it serves, so tokens seen here imply check values there
    // (also while another replica is starting on the same new database).
    let new_database = store.is_empty().await?;
    let known = store.pepper_checks().await?;
    if !new_database && known.is_empty() {
        // Any pepper would pass `verify`, and its check values would then be
        // recorded as the database's: refuse rather than guess.
        return Err(PepperError::Unverifiable {
            path: path.to_owned(),
        });
    }
    verify(path, &keyring, &known)?;
    let mut added = false;
    for key in keyring.keys() {
        if !known.iter().any(|(id, _)| *id == key.id()) {
            store.add_pepper_check(key.id(), check_value(key)).await?;
            added = true;
        }
    }
    if added {
        // Another replica may have recorded a different key under the same
        // id at the same moment: only one of the two values was kept.
        verify(path, &keyring, &store.pepper_checks().await?)?;
    }
    store.durable().await?;
    Ok(keyring)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_private_and_rotation_keeps_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pepper");
        write_private(&path, &format!("{HEADER}{}", key_line(1, &[7; 32]))).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let before = read(&path).unwrap();
        assert_eq!(rotate(&path).unwrap(), 2);
        let after = read(&path).unwrap();
        assert_eq!(after.current().id(), 2);
        let old = after.get(1).unwrap();
        assert_eq!(old.digest("t"), before.current().digest("t"));
    }

    #[test]
    fn damaged_files_are_refused_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pepper");
        let cases: [(String, &str); 4] = [
            ("1 abc\n".into(), "line 1"),
            ("# only a comment\n".into(), "holds no key"),
            (format!("0 {}\n", "ab".repeat(32)), "positive integer"),
            (
                format!("1 {}\n1 {}\n", "ab".repeat(32), "cd".repeat(32)),
                "twice",
            ),
        ];
        for (text, needle) in cases {
            fs::write(&path, text).unwrap();
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            assert!(
                !err.contains(&"ab".repeat(32)),
                "an error must not print a key"
            );
        }
    }
}
