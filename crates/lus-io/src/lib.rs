//! Crash-safe file output, shared by every crate of lus: everything lus writes goes to a
//! temporary file in the destination's folder and is renamed into place, so a killed process
//! never leaves a half-written file under the final name; a folder of outputs is built under a
//! staging name and renamed when whole ([`StagedDir`]). One writer for the whole workspace, so
//! every temporary file has one name pattern and [`remove_stale_temp_files`] finds them all.
//!
//! Errors are [`IoError`]: the path and the operating system's reason. Each crate converts it
//! into its own error type.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file operation failed: which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct IoError {
    /// The file or folder the operation was about.
    pub path: PathBuf,
    /// The operating system's reason.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// An error about `path`.
    pub fn new(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IoError {
            path: path.into(),
            source,
        }
    }
}

/// The result type of this crate.
pub type Result<T> = std::result::Result<T, IoError>;

/// The temporary name used while `path` is being written: same folder (so the rename is
/// atomic on one file system), hidden, and unique per process and call (a counter, so two
/// threads writing the same file never share a temporary).
pub fn temp_path_for(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    let tmp = format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    match path.parent() {
        Some(parent) => parent.join(tmp),
        None => PathBuf::from(tmp),
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// Writes `path` atomically with a writer callback. On any error the temp file is removed and
/// `path` is left as it was.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_path_for(path);
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = fs::remove_file(&tmp);
        return Err(IoError::new(path, source));
    }
    Ok(())
}

/// Writes `path` atomically through a writer that insists on a path of its own (such as
/// candle's safetensors `save`): `write` gets the temporary path; the file is then flushed and
/// renamed into place. On any error the temporary file is removed, `path` is left as it was,
/// and the reason is returned for the caller to wrap in its own error type.
pub fn write_atomic_via_path(
    path: &Path,
    write: impl FnOnce(&Path) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let tmp = temp_path_for(path);
    let result = write(&tmp).and_then(|()| {
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .and_then(|()| fs::rename(&tmp, path))
            .map_err(|e| e.to_string())
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The writer's process id if `name` is a temporary name of [`temp_path_for`]
/// (`.<name>.<pid>-<n>.tmp`), or of the second writer lus-metrics had before this crate
/// (`.<name>.tmp-<pid>-<n>`: a run killed by an older build may have left one).
fn temp_file_writer(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let pid_and_counter = if let Some(inner) = rest.strip_suffix(".tmp") {
        inner.rsplit_once('.')?.1
    } else {
        rest.rsplit_once(".tmp-")?.1
    };
    let (pid, counter) = pid_and_counter.split_once('-')?;
    counter.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Removes the temporary files that atomic writes of dead processes left in `dir` (a process
/// killed between creating its temporary file and renaming it). A file whose writer may still
/// run is kept: ours, and on systems without `/proc` every one. Returns the removed paths; a
/// missing `dir` removes nothing.
pub fn remove_stale_temp_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(IoError::new(dir, e)),
    };
    let proc_fs = Path::new("/proc/self").exists();
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| IoError::new(dir, e))?;
        let Some(pid) = temp_file_writer(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        let alive = pid == std::process::id()
            || !proc_fs
            || Path::new("/proc").join(pid.to_string()).exists();
        if alive || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        fs::remove_file(&path).map_err(|e| IoError::new(&path, e))?;
        removed.push(path);
    }
    removed.sort();
    Ok(removed)
}

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| IoError::new(path, e))
}

/// Reads a whole UTF-8 text file, naming it in the error.
pub fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| IoError::new(path, e))
}

/// An output folder built under a temporary sibling name and renamed into place when complete,
/// so a folder under its final name is always whole. The staging folder survives a killed
/// process: a rerun that opens the same stage finds the files already written there (each of
/// them written atomically, so complete) and can skip them.
#[derive(Debug)]
pub struct StagedDir {
    final_path: PathBuf,
    staging: PathBuf,
}

impl StagedDir {
    /// Opens (creating if needed) the staging folder for `final_path`. The parent of
    /// `final_path` is created too.
    pub fn open(final_path: &Path) -> Result<Self> {
        let name = final_path
            .file_name()
            .ok_or_else(|| {
                IoError::new(
                    final_path,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "output path has no folder name",
                    ),
                )
            })?
            .to_string_lossy()
            .into_owned();
        let parent = final_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(|e| IoError::new(parent, e))?;
        let staging = parent.join(format!(".{name}.partial"));
        fs::create_dir_all(&staging).map_err(|e| IoError::new(&staging, e))?;
        Ok(StagedDir {
            final_path: final_path.to_path_buf(),
            staging,
        })
    }

    /// Like [`StagedDir::open`], but a staging folder left by an earlier, interrupted attempt
    /// is emptied first (for outputs that are always rebuilt whole, such as reports).
    pub fn open_fresh(final_path: &Path) -> Result<Self> {
        let stale = Self::open(final_path)?;
        fs::remove_dir_all(&stale.staging).map_err(|e| IoError::new(&stale.staging, e))?;
        Self::open(final_path)
    }

    /// Where files are written until [`StagedDir::commit`].
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The folder's final name.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Creates a subfolder of the staging folder.
    pub fn create_subdir(&self, rel: &str) -> Result<PathBuf> {
        let dir = self.staging.join(rel);
        fs::create_dir_all(&dir).map_err(|e| IoError::new(&dir, e))?;
        Ok(dir)
    }

    /// Renames the staging folder to its final name. An existing folder of that name is
    /// replaced only when `replace` is set (it is moved aside first and removed after the
    /// rename, so the final name never points at a half-made folder).
    pub fn commit(self, replace: bool) -> Result<PathBuf> {
        if self.final_path.exists() {
            // Never move a file (or anything but a folder) aside in a folder's place.
            if !self.final_path.is_dir() {
                return Err(IoError::new(
                    &self.final_path,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "exists and is not a folder; not replaced",
                    ),
                ));
            }
            if !replace {
                return Err(IoError::new(
                    &self.final_path,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "output folder already exists",
                    ),
                ));
            }
            let old = self.staging.with_extension("old");
            let _ = fs::remove_dir_all(&old);
            fs::rename(&self.final_path, &old).map_err(|e| IoError::new(&self.final_path, e))?;
            fs::rename(&self.staging, &self.final_path)
                .map_err(|e| IoError::new(&self.final_path, e))?;
            fs::remove_dir_all(&old).map_err(|e| IoError::new(&old, e))?;
        } else {
            fs::rename(&self.staging, &self.final_path)
                .map_err(|e| IoError::new(&self.final_path, e))?;
        }
        Ok(self.final_path)
    }

    /// Repairs what a [`StagedDir::commit`] with `replace` leaves when the process dies between
    /// its two renames: no folder under `final_path`, the previous one under the `.old` name.
    /// The previous folder is whole, so it is moved back (the newer staging folder may hold a
    /// mix of two attempts and is not trusted). A commit killed after its second rename leaves
    /// the `.old` folder beside the new one: it is removed. Returns whether a folder was moved
    /// back; a caller that resumes from `final_path` calls this first.
    pub fn recover_replaced(final_path: &Path) -> Result<bool> {
        let Some(name) = final_path.file_name() else {
            return Ok(false);
        };
        let parent = final_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let old = parent.join(format!(".{}.old", name.to_string_lossy()));
        if !old.is_dir() {
            return Ok(false);
        }
        if final_path.exists() {
            fs::remove_dir_all(&old).map_err(|e| IoError::new(&old, e))?;
            return Ok(false);
        }
        fs::rename(&old, final_path).map_err(|e| IoError::new(final_path, e))?;
        Ok(true)
    }

    /// Removes the staging folder (after an error that makes its contents useless).
    pub fn discard(self) {
        let _ = fs::remove_dir_all(&self.staging);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_files_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
    }

    #[test]
    fn failed_atomic_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"old").unwrap();
        let err =
            write_atomic_with(&path, |_| Err(std::io::Error::other("disk full"))).unwrap_err();
        assert!(err.to_string().contains("a.txt"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-folder").join("a.txt");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert_eq!(err.path, path);
        assert!(err.to_string().contains("no-such-folder"), "{err}");
        assert_eq!(err.source.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn staged_dir_appears_only_on_commit_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let stage = StagedDir::open(&out).unwrap();
        write_atomic(&stage.path().join("x"), b"1").unwrap();
        assert!(!out.exists());
        drop(stage); // a killed run: the stage stays
        let stage = StagedDir::open(&out).unwrap();
        assert!(
            stage.path().join("x").exists(),
            "a rerun finds the staged file"
        );
        stage.commit(false).unwrap();
        assert_eq!(fs::read(out.join("x")).unwrap(), b"1");

        let stage = StagedDir::open(&out).unwrap();
        write_atomic(&stage.path().join("y"), b"2").unwrap();
        assert!(stage.commit(false).is_err(), "no silent replace");
        let stage = StagedDir::open(&out).unwrap();
        stage.commit(true).unwrap();
        assert!(out.join("y").exists() && !out.join("x").exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temp_files_of_dead_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // Far above Linux's pid_max (2^22): no such process.
        let dead = 99_999_999;
        let ours = std::process::id();
        for name in [
            format!(".best.safetensors.{dead}-3.tmp"),
            format!(".metrics.csv.tmp-{dead}-0"),
            format!(".model.safetensors.{ours}-1.tmp"),
            "metrics.csv".to_string(),
            ".hidden".to_string(),
            format!(".x.{dead}-y.tmp"),
        ] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        let removed = remove_stale_temp_files(dir.path()).unwrap();
        if Path::new("/proc/self").exists() {
            assert_eq!(
                removed,
                vec![
                    dir.path().join(format!(".best.safetensors.{dead}-3.tmp")),
                    dir.path().join(format!(".metrics.csv.tmp-{dead}-0")),
                ]
            );
        }
        assert!(
            dir.path()
                .join(format!(".model.safetensors.{ours}-1.tmp"))
                .exists()
        );
        assert!(dir.path().join("metrics.csv").exists());
        assert!(dir.path().join(".hidden").exists());
        assert!(
            remove_stale_temp_files(&dir.path().join("absent"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_file_in_the_folders_place_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("last");
        fs::write(&out, b"not a folder").unwrap();
        let stage = StagedDir::open(&out).unwrap();
        write_atomic(&stage.path().join("x"), b"1").unwrap();
        let err = stage.commit(true).unwrap_err().to_string();
        assert!(
            err.contains("last") && err.contains("not a folder"),
            "{err}"
        );
        assert_eq!(fs::read(&out).unwrap(), b"not a folder");
    }

    #[test]
    fn a_commit_killed_between_its_renames_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("last");
        let stage = StagedDir::open(&out).unwrap();
        write_atomic(&stage.path().join("state"), b"epoch 1").unwrap();
        stage.commit(false).unwrap();
        // What `commit(true)` leaves when killed after moving the old folder aside: the old
        // folder under `.last.old`, the new one still staged, nothing under `last`.
        let stage = StagedDir::open(&out).unwrap();
        write_atomic(&stage.path().join("state"), b"epoch 2").unwrap();
        fs::rename(&out, dir.path().join(".last.old")).unwrap();
        assert!(StagedDir::recover_replaced(&out).unwrap());
        assert_eq!(fs::read(out.join("state")).unwrap(), b"epoch 1");
        assert!(!dir.path().join(".last.old").exists());
        assert!(
            !StagedDir::recover_replaced(&out).unwrap(),
            "nothing to do twice"
        );
        // Killed after the second rename: the new folder is in place, the old one beside it.
        fs::create_dir(dir.path().join(".last.old")).unwrap();
        assert!(!StagedDir::recover_replaced(&out).unwrap());
        assert!(!dir.path().join(".last.old").exists());
        assert_eq!(fs::read(out.join("state")).unwrap(), b"epoch 1");
        // The next save goes through as usual.
        let stage = StagedDir::open(&out).unwrap();
        write_atomic(&stage.path().join("state"), b"epoch 2").unwrap();
        stage.commit(true).unwrap();
        assert_eq!(fs::read(out.join("state")).unwrap(), b"epoch 2");
    }
}
