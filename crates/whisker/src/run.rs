//! The run directory: what a training run leaves, as typed files, and its life cycle.
//!
//! - `model.safetensors`: the trained model ([`crate::train::model_file`]);
//! - `split.json` ([`SplitFile`]): the seeded split, each image by its path *relative to the
//!   dataset root*, so that `eval RUN ./ds` and `eval RUN /abs/ds` find the same images;
//! - `metrics.json` ([`RunMetrics`]) and `history.csv` (one row per epoch);
//! - `skipped.json`: the files left out, with the reason;
//! - `summary.txt`, `confusion.png`, `curves.png`;
//! - `report.html`: everything on one page, drawn after the run is complete (not in the
//!   marker: `whisker report` draws it again);
//! - `run.json` ([`RunMarker`]), written last: the sha256 of every file. A run without it is
//!   incomplete (interrupted, disk full) and readers refuse it instead of using half of it.
//!
//! One process writes a run directory at a time (a lock), and an earlier run is never
//! overwritten silently ([`Start`]).

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{sha256_file, write_atomic};

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
    "history.csv",
    "summary.txt",
    "confusion.png",
    "curves.png",
    "checkpoint.safetensors",
    "report.html",
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
                        return Err(Error::Conflict {
                            path: dir.to_path_buf(),
                            reason: "already holds a run: pass --force to replace it, --resume to continue it, or choose another --out".into(),
                        });
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
            // the checkpoint is a means, the report a view that `whisker report` redraws
            if p.is_file() && *f != "checkpoint.safetensors" && *f != "report.html" {
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
            return Err(Error::Conflict {
                path: dir.to_path_buf(),
                reason: format!("an incomplete run (no {MARKER}: training was interrupted or failed, or an older whisker made it); train again with --force, or --resume"),
            });
        }
        return Ok(());
    }
    let text = crate::io::read_regular(&marker, crate::io::MAX_SMALL_FILE)?;
    let m: RunMarker = serde_json::from_slice(&text).map_err(|e| Error::NotACheckpoint {
        path: marker.clone(),
        reason: format!("not a whisker run marker: {e}"),
    })?;
    for (f, want) in &m.files {
        // the marker lists files of the run: a path that leaves it is not one of them
        let Some(rel) = crate::io::safe_relative(Path::new(f)) else {
            return Err(Error::NotACheckpoint {
                path: marker.clone(),
                reason: format!(
                    "it lists `{f}`, a path outside the run directory: not a marker whisker writes"
                ),
            });
        };
        let p = dir.join(rel);
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

/// One image of a split: its path relative to the dataset root (`/`-separated) and label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitEntry {
    pub path: String,
    pub label: usize,
}

/// `split.json`: the seeded split a run was trained and evaluated on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitFile {
    pub format_version: u32,
    pub seed: u64,
    pub classes: Vec<String>,
    pub train: Vec<SplitEntry>,
    pub val: Vec<SplitEntry>,
    pub test: Vec<SplitEntry>,
}

/// A part of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Train,
    Val,
    Test,
}

impl std::str::FromStr for Part {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Part::Train),
            "val" => Ok(Part::Val),
            "test" => Ok(Part::Test),
            _ => Err(Error::Invalid(format!(
                "unknown split part `{s}` (train, val, test)"
            ))),
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Train => "train",
            Part::Val => "val",
            Part::Test => "test",
        })
    }
}

/// The key of a dataset file in `split.json`: its path relative to the dataset root, with
/// `/` separators. `None` for a file outside the root.
///
/// ```
/// use std::path::Path;
/// use whisker::run::relative_key;
/// let k = relative_key(Path::new("/data/pets"), Path::new("/data/pets/cat/1.jpg"));
/// assert_eq!(k.as_deref(), Some("cat/1.jpg"));
/// assert_eq!(relative_key(Path::new("/data/pets"), Path::new("/elsewhere/1.jpg")), None);
/// ```
pub fn relative_key(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl SplitFile {
    /// The split of `ds` by item indices.
    pub fn new(ds: &crate::data::datasets::Dataset, split: &crate::data::datasets::Split) -> Self {
        let entries = |idx: &[usize]| -> Vec<SplitEntry> {
            idx.iter()
                .map(|&i| SplitEntry {
                    path: relative_key(&ds.root, &ds.items[i].path)
                        .unwrap_or_else(|| ds.items[i].path.to_string_lossy().into_owned()),
                    label: ds.items[i].label,
                })
                .collect()
        };
        SplitFile {
            format_version: RUN_FORMAT_VERSION,
            seed: split.seed,
            classes: ds.classes.clone(),
            train: entries(&split.train),
            val: entries(&split.val),
            test: entries(&split.test),
        }
    }

    pub fn part(&self, p: Part) -> &[SplitEntry] {
        match p {
            Part::Train => &self.train,
            Part::Val => &self.val,
            Part::Test => &self.test,
        }
    }

    /// Indices of the items of `ds` in part `p` (matched by relative path), in dataset order.
    pub fn indices(&self, ds: &crate::data::datasets::Dataset, p: Part) -> Vec<usize> {
        let wanted: std::collections::HashSet<&str> =
            self.part(p).iter().map(|e| e.path.as_str()).collect();
        (0..ds.items.len())
            .filter(|&i| {
                relative_key(&ds.root, &ds.items[i].path)
                    .is_some_and(|k| wanted.contains(k.as_str()))
            })
            .collect()
    }
}

/// A file left out of a run (`skipped.json`), and why. The path is shown lossily when it
/// is not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    pub path: String,
    pub reason: String,
}

impl From<&crate::data::datasets::Skipped> for SkippedFile {
    fn from(s: &crate::data::datasets::Skipped) -> Self {
        SkippedFile {
            path: s.path.to_string_lossy().into_owned(),
            reason: s.reason.clone(),
        }
    }
}

/// What a training run measured (`metrics.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    /// On the test split (absent when it is empty).
    pub test: Option<crate::train::metrics::Metrics>,
    pub n_train: usize,
    pub n_val: usize,
    pub n_test: usize,
    pub skipped: usize,
    pub extraction_seconds: f64,
    pub extraction_images_per_s: f64,
    pub features_from_cache: usize,
    pub fit_seconds: f64,
}

/// Read a JSON file of the run directory.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = crate::io::read_regular(path, crate::io::MAX_SMALL_FILE)?;
    serde_json::from_slice(&text).map_err(|e| Error::NotACheckpoint {
        path: path.to_path_buf(),
        reason: format!("not the file whisker writes there: {e}"),
    })
}

/// Write a JSON file of the run directory, atomically.
pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
    write_atomic(path, &text)
}

/// The run directory of a model path (a run directory, or a `model.safetensors` in one).
pub fn model_file(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("model.safetensors")
    } else {
        p.to_path_buf()
    }
}

/// `history.csv`: one row per epoch.
pub fn history_csv(history: &[crate::train::head::EpochStats]) -> String {
    let mut s = String::from("epoch,train_loss,val_loss,val_accuracy,lr\n");
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    for h in history {
        s.push_str(&format!(
            "{},{},{},{},{}\n",
            h.epoch,
            h.train_loss,
            opt(h.val_loss),
            opt(h.val_accuracy),
            h.lr
        ));
    }
    s
}
