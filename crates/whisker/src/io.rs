//! Generic file helpers used by every layer: atomic writes, file hashes, resumable
//! downloads, the `pip` command, `$WHISKER_HOME`. Nothing here knows about models.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::Sha256;

use crate::error::{Error, Result};

/// Progress of a long operation: (bytes done, bytes total if known).
pub type Progress<'a> = &'a dyn Fn(u64, Option<u64>);

/// `$WHISKER_HOME`, or the platform cache directory + `/whisker`.
pub fn whisker_home() -> PathBuf {
    if let Some(h) = std::env::var_os("WHISKER_HOME") {
        return PathBuf::from(h);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("whisker")
}

/// Open a file for reading, only if it is a regular file: a FIFO would block the reader
/// forever and a device (`/dev/zero`) never end. Every reader of user-named or on-disk files
/// goes through this. The file is opened non-blocking, so a FIFO put in its place after a
/// check cannot block the open either; the check is made on what was opened.
pub fn open_regular(path: &Path) -> Result<File> {
    let f = open_nonblocking(path).map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                if meta.is_dir() {
                    "it is a directory, not a file"
                } else {
                    "not a regular file (a FIFO, socket or device): not read"
                },
            ),
        ));
    }
    Ok(f)
}

/// Open `path` for reading without blocking on a FIFO that has no writer (`O_NONBLOCK`,
/// which does nothing to a regular file's reads): what is opened is then checked by its
/// handle's metadata, never by the path's (which could be replaced in between).
pub fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK);
    }
    o.open(path)
}

/// The whole content of a regular file ([`open_regular`]) of at most `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>> {
    let f = open_regular(path)?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let too_big = |n: u64| {
        Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the file is {n} bytes, more than the {max} bytes whisker reads here"),
            ),
        )
    };
    if len > max {
        return Err(too_big(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The most bytes whisker reads of a small file it keeps itself (JSON metadata, run
/// markers, checkpoints' side files): 64 MiB.
pub const MAX_SMALL_FILE: u64 = 64 << 20;

/// The most bytes whisker reads of a weights or model file: 16 GiB.
pub const MAX_WEIGHTS_FILE: u64 = 16 << 30;

/// `p` as a path inside some folder: relative, with only plain names (no root, no `..`);
/// `None` for a path that would leave the folder or names nothing.
pub fn safe_relative(p: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// The digest of a file with hash `D` (sha256, md5…), hex. Only a regular file is read.
pub fn hash_file<D: sha2::Digest>(path: &Path) -> Result<String> {
    let mut f = open_regular(path)?;
    let mut h = D::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    hash_file::<Sha256>(path)
}

/// Write `bytes` to `path` atomically (temporary file in the same directory, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.as_file_mut()
        .write_all(bytes)
        .map_err(|e| Error::io(path, e))?;
    persist(tmp, path)
}

/// Move a finished temporary file (in `dest`'s folder) to `dest`: synced, an ordinary 0644
/// file (temporary files are created 0600), renamed over whatever was there.
pub fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<()> {
    tmp.as_file().sync_all().map_err(|e| Error::io(dest, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp
            .as_file()
            .set_permissions(fs::Permissions::from_mode(0o644));
    }
    tmp.persist(dest).map_err(|e| Error::io(dest, e.error))?;
    Ok(())
}

/// The files under `dir`, recursively, sorted, appended to `out`: dot files and folders left
/// out; links to folders followed once (`seen` holds the canonical folders walked, across
/// calls) and only within `root` (canonical) — those outside are appended to `outside`, not
/// followed. More than `max` files in `out` is an error.
pub fn walk_files(
    dir: &Path,
    root: &Path,
    seen: &mut std::collections::HashSet<PathBuf>,
    out: &mut Vec<PathBuf>,
    outside: &mut Vec<PathBuf>,
    max: usize,
) -> Result<()> {
    let canon = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if !canon.starts_with(root) {
        outside.push(dir.to_path_buf());
        return Ok(());
    }
    if !seen.insert(canon) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk_files(&p, root, seen, out, outside, max)?;
        } else {
            out.push(p);
            if out.len() > max {
                return Err(Error::Invalid(format!(
                    "{}: more than {max} files",
                    root.display()
                )));
            }
        }
    }
    Ok(())
}

/// `WHISKER_PIP` (a command line, e.g. "/venv/bin/pip"), else `python3 -m pip`.
pub fn pip_command() -> (String, Vec<String>) {
    if let Ok(p) = std::env::var("WHISKER_PIP") {
        let mut it = p.split_whitespace().map(String::from);
        if let Some(prog) = it.next() {
            return (prog, it.collect());
        }
    }
    ("python3".into(), vec!["-m".into(), "pip".into()])
}

/// The body of `url`, at most `max` bytes (a small text: a checksum, a pointer).
pub fn download_small(url: &str, max: u64) -> Result<Vec<u8>> {
    let dl_err = |reason: String| Error::Download {
        url: url.to_string(),
        reason,
    };
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    let resp = match agent.get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            return Err(dl_err(format!("HTTP {code} {}", r.status_text())))
        }
        Err(e) => return Err(dl_err(e.to_string())),
    };
    let mut body = Vec::new();
    resp.into_reader()
        .take(max + 1)
        .read_to_end(&mut body)
        .map_err(|e| dl_err(e.to_string()))?;
    if body.len() as u64 > max {
        return Err(dl_err(format!("more than the {max} bytes expected")));
    }
    Ok(body)
}

/// Download `url` to `part`, resuming from its current length if it exists.
pub fn download_resumable(url: &str, part: &Path, progress: Progress<'_>) -> Result<()> {
    let dl_err = |reason: String| Error::Download {
        url: url.to_string(),
        reason,
    };
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    let mut req = agent.get(url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        // 416: the part file already holds everything
        Err(ureq::Error::Status(416, _)) if have > 0 => return Ok(()),
        Err(ureq::Error::Status(code, r)) => {
            return Err(dl_err(format!("HTTP {code} {}", r.status_text())))
        }
        Err(e) => return Err(dl_err(e.to_string())),
    };
    let resumed = resp.status() == 206;
    let len: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let (mut done, total) = if resumed {
        (have, len.map(|l| l + have))
    } else {
        (0, len)
    };
    let mut f = if resumed {
        OpenOptions::new().append(true).open(part)
    } else {
        File::create(part)
    }
    .map_err(|e| Error::io(part, e))?;
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    progress(done, total);
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| dl_err(format!("{e} (after {done} bytes; run again to resume)")))?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n]).map_err(|e| Error::io(part, e))?;
        done += n as u64;
        progress(done, total);
    }
    f.sync_all().map_err(|e| Error::io(part, e))?;
    if let Some(t) = total {
        if done < t {
            return Err(dl_err(format!(
                "connection closed after {done} of {t} bytes; run again to resume"
            )));
        }
    }
    Ok(())
}
