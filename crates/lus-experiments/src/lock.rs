//! Advisory file locks that keep two processes off one cell, and off one POCUS ingest.
//!
//! Why: `lus run` is started several times on one experiment on purpose (Slurm job arrays,
//! `--shard`) and by accident (a resubmitted array task, a user who starts it twice). Without
//! a lock two processes can train the same cell into the same folder at once, and every shard
//! that starts at once ingests the POCUS frames into the same folder.
//!
//! The lock of a cell folder `<dir>` is the file `<dir>.lock` beside it (not inside it: a
//! superseded cell folder is moved away while its lock is held), locked with the operating
//! system's advisory whole-file lock (`flock` on Unix, through [`std::fs::File::try_lock`]).
//! The kernel releases it when the holder exits in any way, killed included, so a lock is
//! never stale: the next process takes it over. The lock files stay (removing one while
//! another process waits on it would let a third lock a new file of the same name); they are
//! empty. On NFS, Linux emulates `flock` with NFS byte-range locks, which hold across nodes
//! (NFSv4, or v3 with the lock manager running): the usual Slurm shared file system.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// How often a waiting process tries the lock again (and checks for a stop request).
const POLL: Duration = Duration::from_millis(500);

/// A held lock; dropped, it is released.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

/// The lock file of `target`: `<target>.lock` beside it.
pub fn lock_path(target: &Path) -> PathBuf {
    let mut name = target
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    target.with_file_name(name)
}

fn open(path: &Path) -> anyhow::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("{}: cannot open the lock file", path.display()))
}

impl Lock {
    /// Locks `target`, or `None` when another process holds its lock.
    pub fn try_acquire(target: &Path) -> anyhow::Result<Option<Lock>> {
        let path = lock_path(target);
        let file = open(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lock { _file: file, path })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("{}: cannot lock", path.display()))
            }
        }
    }

    /// Locks `target`, waiting while another process holds it. `waiting` is called once,
    /// when the lock is found busy; `keep_waiting` before each new try (an error from it, such
    /// as a stop request, ends the wait).
    pub fn acquire(
        target: &Path,
        waiting: impl FnOnce(),
        mut keep_waiting: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<Lock> {
        if let Some(lock) = Self::try_acquire(target)? {
            return Ok(lock);
        }
        waiting();
        loop {
            std::thread::sleep(POLL);
            keep_waiting()?;
            if let Some(lock) = Self::try_acquire(target)? {
                return Ok(lock);
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_busy_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cell = dir.path().join("pretrain").join("dense-seed0");
        let held = Lock::try_acquire(&cell).unwrap().expect("free at first");
        assert_eq!(held.path(), dir.path().join("pretrain/dense-seed0.lock"));
        // flock locks belong to the open file: a second open (as another process would) is
        // refused while the first is held.
        assert!(Lock::try_acquire(&cell).unwrap().is_none());
        let mut tries = 0;
        let err = Lock::acquire(
            &cell,
            || {},
            || {
                tries += 1;
                if tries == 2 {
                    anyhow::bail!("stop requested")
                }
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "stop requested");
        drop(held);
        let again = Lock::acquire(&cell, || panic!("not busy"), || Ok(())).unwrap();
        assert!(lock_path(&cell).is_file());
        drop(again);
    }
}
