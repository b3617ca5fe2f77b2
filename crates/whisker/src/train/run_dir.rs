//! The run directory's life cycle: one writer at a time (a lock), no silent overwrite of an
//! earlier run, and a marker, `run.json`, written last: a run without it is incomplete
//! (interrupted, disk full) and readers refuse it instead of using half of it.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::weights::cache::{sha256_file, write_atomic};

/// The marker file, written last.
pub const MARKER: &str = "run.json";
const LOCK: &str = ".whisker.lock";
/// The format version of run directories this whisker writes.
pub const RUN_FORMAT_VERSION: u32 = 2;

/// Files a run writes (besides the marker): an earlier run's are removed by `--force`.
const RUN_FILES: &[&str] = &[
    "model.safetensors",
    "metrics.json",
    "split.json",
    "skipped.json",
    "summary.txt",
    "confusion.png",
    "curves.png",
    "checkpoint.safetensors",
];
const RUN_DIRS: &[&str] = &["checkpoint"];

/// `run.json`: what the run holds, with each file's sha256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunMarker {
    pub format: String,
    pub version: u32,
    /// File name → sha256.
    pub files: std::collections::BTreeMap<String, String>,
}

/// How a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run: the directory must hold no earlier run, unless `force` (its files are
    /// removed first).
    Fresh { force: bool },
    /// Continue an interrupted run from its checkpoint.
    Resume,
}

/// A run directory being written; the lock is held until this is dropped.
#[derive(Debug)]
pub struct RunWriter {
    pub dir: PathBuf,
    _lock: File,
}

fn has_run_files(dir: &Path) -> bool {
    std::iter::once(MARKER)
        .chain(RUN_FILES.iter().copied())
        .chain(RUN_DIRS.iter().copied())
        .any(|f| dir.join(f).exists())
}

impl RunWriter {
    /// Open `dir` for writing a run: create it, lock it (a second writer gets
    /// [`Error::Locked`]), check what it holds, and remove the completion marker so that
    /// readers see the run as incomplete until [`RunWriter::finish`].
    pub fn open(dir: &Path, start: Start) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                    reason: "another whisker process is writing to this run directory; wait for it to finish or choose another --out".into(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        match start {
            Start::Fresh { force } => {
                if has_run_files(dir) {
                    if !force {
                        return Err(Error::Invalid(format!(
                            "{} already holds a run: pass --force to replace it, --resume to continue it, or choose another --out",
                            dir.display()
                        )));
                    }
                    remove_run_files(dir)?;
                }
            }
            Start::Resume => {
                let m = dir.join(MARKER);
                if m.exists() {
                    fs::remove_file(&m).map_err(|e| Error::io(&m, e))?;
                }
            }
        }
        Ok(RunWriter {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// Mark the run complete: `run.json` with the sha256 of each file present, written last
    /// and atomically.
    pub fn finish(&self) -> Result<RunMarker> {
        let mut files = std::collections::BTreeMap::new();
        for f in RUN_FILES {
            let p = self.dir.join(f);
            if p.is_file() && *f != "checkpoint.safetensors" {
                files.insert(f.to_string(), sha256_file(&p)?);
            }
        }
        let m = RunMarker {
            format: "whisker-run".into(),
            version: RUN_FORMAT_VERSION,
            files,
        };
        let json = serde_json::to_vec_pretty(&m).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(&self.dir.join(MARKER), &json)?;
        Ok(m)
    }
}

fn remove_run_files(dir: &Path) -> Result<()> {
    // the marker first: a run half-removed is never taken for a complete one
    for f in std::iter::once(MARKER).chain(RUN_FILES.iter().copied()) {
        let p = dir.join(f);
        if p.exists() {
            fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    for d in RUN_DIRS {
        let p = dir.join(d);
        if p.exists() {
            fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with("eval-") && e.path().is_dir() {
                fs::remove_dir_all(e.path()).map_err(|err| Error::io(e.path(), err))?;
            }
        }
    }
    Ok(())
}

/// Check that `dir` holds a complete run before reading it: its marker exists and the
/// files it lists have the recorded sha256. A directory that is not a run directory (a
/// model file copied elsewhere, alone) passes.
pub fn check_complete(dir: &Path) -> Result<()> {
    let marker = dir.join(MARKER);
    if !marker.exists() {
        if dir.join("split.json").exists()
            || dir.join("metrics.json").exists()
            || dir.join(LOCK).exists()
        {
            return Err(Error::Invalid(format!(
                "{} is an incomplete run (no {MARKER}: training was interrupted or failed); train again with --force, or --resume",
                dir.display()
            )));
        }
        return Ok(());
    }
    let text = fs::read(&marker).map_err(|e| Error::io(&marker, e))?;
    let m: RunMarker = serde_json::from_slice(&text).map_err(|e| Error::NotACheckpoint {
        path: marker.clone(),
        reason: format!("not a whisker run marker: {e}"),
    })?;
    for (f, want) in &m.files {
        let p = dir.join(f);
        let got = sha256_file(&p)?;
        if &got != want {
            return Err(Error::Checksum {
                path: p,
                algorithm: "sha256",
                expected: want.clone(),
                actual: got,
            });
        }
    }
    Ok(())
}
