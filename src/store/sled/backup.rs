//! The sled store's backup file: every tree, every entry, framed and
//! checksummed, and its restore into an empty directory.
//!
//! Layout: `TKABAK1\n`, then per tree `T` + name, then per entry `E` + key +
//! value (each a u32 big-endian length and the bytes), then `Z`, the number
//! of entries (u64) and a CRC32 of everything before it. A truncated or
//! damaged file is refused whole: a restore never yields half a database.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::Path,
};

use crate::store::StoreError;

const MAGIC: &[u8; 8] = b"TKABAK1\n";

fn io(error: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("backup file: {error}"))
}

/// Writes and checksums what passes through it.
struct Checked<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Checked<W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.crc.update(bytes);
        self.inner.write_all(bytes).map_err(io)
    }

    fn put_framed(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| StoreError::Corrupt("an entry larger than 4 GiB".into()))?;
        self.put(&len.to_be_bytes())?;
        self.put(bytes)
    }
}

/// Writes every tree of `db` to `path`; returns how many entries. The caller
/// keeps writers out for the duration, so that the file is one moment's state.
pub fn write(db: &sled::Db, path: &Path) -> Result<u64, StoreError> {
    let file = crate::private_fs::create_file(path).map_err(io)?;
    let mut out = Checked {
        inner: BufWriter::new(file),
        crc: crc32fast::Hasher::new(),
    };
    out.put(MAGIC)?;
    let mut entries = 0u64;
    for name in db.tree_names() {
        out.put(b"T")?;
        out.put_framed(&name)?;
        for entry in db.open_tree(&name)?.iter() {
            let (key, value) = entry?;
            out.put(b"E")?;
            out.put_framed(&key)?;
            out.put_framed(&value)?;
            entries += 1;
        }
    }
    out.put(b"Z")?;
    out.put(&entries.to_be_bytes())?;
    let crc = out.crc.clone().finalize();
    let mut file = out.inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.write_all(&crc.to_be_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(entries)
}

/// Reads with a running checksum.
struct Reading<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Reading<R> {
    fn take(&mut self, len: usize) -> Result<Vec<u8>, StoreError> {
        let mut buf = vec![0u8; len];
        self.inner
            .read_exact(&mut buf)
            .map_err(|_| StoreError::Corrupt("the backup file is truncated".into()))?;
        self.crc.update(&buf);
        Ok(buf)
    }

    fn take_framed(&mut self) -> Result<Vec<u8>, StoreError> {
        let len: [u8; 4] = self
            .take(4)?
            .try_into()
            .map_err(|_| StoreError::Corrupt("length".into()))?;
        let len = u32::from_be_bytes(len) as usize;
        // Entries are small (a token record is a few hundred bytes); a huge
        // length is damage, not data, and must not allocate.
        if len > 64 * 1024 * 1024 {
            return Err(StoreError::Corrupt("an entry length is implausible".into()));
        }
        self.take(len)
    }
}

/// Restores `backup` into a new database at `dir`, which must not exist or
/// be empty. Everything is verified before the database is flushed.
pub fn restore(backup: &Path, dir: &Path) -> Result<u64, StoreError> {
    if dir.exists() && std::fs::read_dir(dir).map_err(io)?.next().is_some() {
        return Err(StoreError::Unavailable(format!(
            "{} is not empty: restore only into a new directory",
            dir.display()
        )));
    }
    let mut input = Reading {
        inner: BufReader::new(File::open(backup).map_err(io)?),
        crc: crc32fast::Hasher::new(),
    };
    if input.take(MAGIC.len())? != MAGIC {
        return Err(StoreError::Corrupt("not a tokenauth backup file".into()));
    }
    // Private from the start, and everything in it once written (sled
    // creates its files as the umask says).
    crate::private_fs::create_dir(dir).map_err(io)?;
    let db = sled::Config::new().path(dir).open()?;
    let mut tree: Option<sled::Tree> = None;
    let mut entries = 0u64;
    loop {
        match input.take(1)?[0] {
            b'T' => tree = Some(db.open_tree(input.take_framed()?)?),
            b'E' => {
                let key = input.take_framed()?;
                let value = input.take_framed()?;
                tree.as_ref()
                    .ok_or_else(|| StoreError::Corrupt("an entry before any tree".into()))?
                    .insert(key, value)?;
                entries += 1;
            }
            b'Z' => break,
            other => return Err(StoreError::Corrupt(format!("unknown record {other}"))),
        }
    }
    let count: [u8; 8] = input
        .take(8)?
        .try_into()
        .map_err(|_| StoreError::Corrupt("count".into()))?;
    let expected = input.crc.clone().finalize();
    let mut crc = [0u8; 4];
    input
        .inner
        .read_exact(&mut crc)
        .map_err(|_| StoreError::Corrupt("the backup file is truncated".into()))?;
    if u64::from_be_bytes(count) != entries || u32::from_be_bytes(crc) != expected {
        drop(db);
        let _ = std::fs::remove_dir_all(dir);
        return Err(StoreError::Corrupt(
            "the backup file's checksum does not match: it is damaged".into(),
        ));
    }
    db.flush()?;
    drop(db);
    crate::private_fs::restrict_tree(dir).map_err(io)?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_restores_every_tree_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        db.open_tree("tokens")
            .unwrap()
            .insert(b"k1", b"v1")
            .unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert(b"k2", &[0u8; 300][..])
            .unwrap();
        let file = dir.path().join("backup");
        assert_eq!(write(&db, &file).unwrap(), 2);

        let restored_dir = dir.path().join("restored");
        assert_eq!(restore(&file, &restored_dir).unwrap(), 2);
        crate::store::sled::wait_until_closed(&restored_dir);
        let restored = sled::Config::new().path(&restored_dir).open().unwrap();
        assert_eq!(
            restored
                .open_tree("tokens")
                .unwrap()
                .get(b"k1")
                .unwrap()
                .unwrap()
                .as_ref(),
            b"v1"
        );
        drop(restored);
        crate::store::sled::wait_until_closed(&restored_dir);
        assert!(
            restore(&file, &restored_dir).is_err(),
            "never over existing data"
        );

        let mut bytes = std::fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        let damaged = dir.path().join("damaged");
        assert!(restore(&file, &damaged).is_err());
        assert!(!damaged.exists(), "a refused restore leaves nothing behind");
        std::fs::write(&file, &bytes[..bytes.len() - 10]).unwrap();
        assert!(restore(&file, &dir.path().join("truncated")).is_err());
    }
}
