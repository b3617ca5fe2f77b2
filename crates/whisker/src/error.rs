//! Typed errors of the whisker library. Every error that concerns a file names it.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in whisker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written. (The I/O error is in the message and not
    /// also chained as a source, so that reports do not say it twice.)
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A file is not an image whisker can decode (corrupt, truncated, or an unsupported format).
    #[error("{}: cannot decode image: {reason}", path.display())]
    Decode { path: PathBuf, reason: String },
    /// A file is not a checkpoint (neither a torch pickle, a torch zip archive nor safetensors).
    #[error("{}: not a checkpoint whisker can read: {reason}", path.display())]
    NotACheckpoint { path: PathBuf, reason: String },
    /// A checkpoint's keys do not match the architecture.
    #[error(
        "{}: checkpoint does not fit {model}:{}{}",
        source_name,
        fmt_keys("missing", missing),
        fmt_keys("unexpected", unexpected)
    )]
    KeyMismatch {
        source_name: String,
        model: String,
        missing: Vec<String>,
        unexpected: Vec<String>,
    },
    /// A tensor in a checkpoint has the wrong shape.
    #[error("{source_name}: tensor `{key}` has shape {found:?}, but {model} expects {expected:?}")]
    ShapeMismatch {
        source_name: String,
        model: String,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor in a checkpoint has a data type whisker cannot use.
    #[error("{source_name}: tensor `{key}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        source_name: String,
        key: String,
        dtype: String,
    },
    /// A backbone name is not in the zoo.
    #[error("unknown backbone `{name}`; known backbones: {known}")]
    UnknownBackbone { name: String, known: String },
    /// Weights are not in the cache.
    #[error("no cached weights for {name} in {}; fetch them with `whisker weights fetch {name}` or import a file with `whisker weights fetch {name} --from FILE`", cache.display())]
    WeightsNotCached { name: String, cache: PathBuf },
    /// A download failed.
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    /// A file's checksum is not the expected one.
    #[error("{}: {algorithm} {actual} does not match the expected {expected}", path.display())]
    Checksum {
        path: PathBuf,
        /// `sha256`, `md5`…
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    /// An external command failed.
    #[error("`{command}` failed: {reason}")]
    Command { command: String, reason: String },
    /// A bad argument or setting given by the caller (out of range, unknown name).
    #[error("{0}")]
    Invalid(String),
    /// A dataset that cannot be used as it is (no images, fewer than two classes, an empty
    /// class, a malformed annotation file, an archive entry escaping its folder).
    #[error("{}: {reason}", path.display())]
    Dataset { path: PathBuf, reason: String },
    /// A file whisker reads is damaged or not what it should be (besides checkpoints and
    /// images, which have their own variants).
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// The state on disk conflicts with the request: a run or cached weights already there
    /// (`--force` replaces them), an incomplete run.
    #[error("{}: {reason}", path.display())]
    Conflict { path: PathBuf, reason: String },
    /// A computation produced NaN or infinity (diverged training, broken weights).
    #[error("{0}")]
    NonFinite(String),
    /// An image declares more pixels than allowed (a decompression bomb, or a huge scan).
    #[error("{}: the image is {width}×{height} = {pixels} pixels, more than the limit of {limit} (a decompression bomb?); raise the limit with --max-pixels or WHISKER_MAX_PIXELS if the file is trusted", path.display())]
    TooLarge {
        path: PathBuf,
        width: u64,
        height: u64,
        pixels: u64,
        limit: u64,
    },
    /// Another process holds a lock (a run directory being written).
    #[error("{}: {reason}", path.display())]
    Locked { path: PathBuf, reason: String },
    /// A compute device that this build lacks, or that cannot be opened (no GPU, no driver).
    #[error("device `{device}`: {reason}")]
    Device { device: String, reason: String },
    /// The caller asked for the work to stop (a cancelled dream in `whisker serve`).
    #[error("cancelled")]
    Cancelled,
    /// A bug in whisker: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

fn fmt_keys(what: &str, keys: &[String]) -> String {
    if keys.is_empty() {
        return String::new();
    }
    const SHOW: usize = 20;
    let mut s = format!(" {} {what} key(s): ", keys.len());
    s.push_str(
        &keys
            .iter()
            .take(SHOW)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
    );
    if keys.len() > SHOW {
        s.push_str(&format!(", … ({} more)", keys.len() - SHOW));
    }
    s.push(';');
    s
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }
}
