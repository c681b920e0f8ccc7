//! Files and directories that only their owner may read: the data
//! directory, what a restore writes into it, and backup files. Secrets are
//! stored as digests, but the data directory and a backup hold every token
//! record and audit event, and, by default, the pepper file beside them.
//!
//! Modes are set explicitly rather than left to the umask, which is often
//! 022 (directories 0755, files 0644).

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// The permission bits of group and others.
const GROUP_OR_OTHERS: u32 = 0o077;

/// Creates `path` and any missing parents with mode 0700. An existing
/// directory is left as it is (see [`tighten_dir`]).
pub fn create_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// Creates (or truncates) `path` for writing, mode 0600, also when a file
/// was already there with a wider mode.
pub fn create_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Sets every directory under `path` (itself included) to 0700 and every
/// file to 0600. Symbolic links are left alone, and not followed.
pub fn restrict_tree(path: &Path) -> io::Result<()> {
    let metadata = fs::symlink_metadata(path)?;
    if metadata.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
        for entry in fs::read_dir(path)? {
            restrict_tree(&entry?.path())?;
        }
    } else if metadata.is_file() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Makes the directory `path` private (0700) when group or others have any
/// access to it, and returns the mode it had then; `None` when it was
/// private already. Fails when the mode cannot be changed (another owner).
pub fn tighten_dir(path: &Path) -> io::Result<Option<u32>> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
    if mode & GROUP_OR_OTHERS == 0 {
        return Ok(None);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    Ok(Some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn what_is_created_or_restricted_is_the_owner_s_only() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_dir(&nested).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&nested), 0o700);

        let file = dir.path().join("f");
        fs::write(&file, b"old").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_file(&file).unwrap());
        assert_eq!(mode(&file), 0o600);
        assert_eq!(fs::read(&file).unwrap(), b"", "truncated");

        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("sub")).unwrap();
        fs::write(tree.join("sub/x"), b"x").unwrap();
        for (path, wide) in [(&tree, 0o755), (&tree.join("sub"), 0o755)] {
            fs::set_permissions(path, fs::Permissions::from_mode(wide)).unwrap();
        }
        fs::set_permissions(tree.join("sub/x"), fs::Permissions::from_mode(0o644)).unwrap();
        restrict_tree(&tree).unwrap();
        assert_eq!(mode(&tree), 0o700);
        assert_eq!(mode(&tree.join("sub")), 0o700);
        assert_eq!(mode(&tree.join("sub/x")), 0o600);
    }

    #[test]
    fn a_directory_others_can_read_is_made_private_and_its_old_mode_told() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(tighten_dir(&data).unwrap(), Some(0o750));
        assert_eq!(mode(&data), 0o700);
        assert_eq!(tighten_dir(&data).unwrap(), None);
    }
}
