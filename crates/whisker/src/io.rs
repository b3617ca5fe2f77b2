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

/// The digest of a file with hash `D` (sha256, md5…), hex.
pub fn hash_file<D: sha2::Digest>(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
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
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // temporary files are created 0600; results are ordinary files
        let _ = tmp
            .as_file()
            .set_permissions(fs::Permissions::from_mode(0o644));
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
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
