//! Downloading the public datasets: Oxford-IIIT Pet (images + annotations tarballs, from
//! the University of Oxford's current server) and Microsoft's Cats-vs-Dogs (a zip holding
//! `PetImages/`). Downloads resume after an interruption; archives are checked (MD5, the
//! checksum the publishers and torchvision give) when known, and extracted without letting
//! any entry escape the target directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use md5::Md5;

use crate::error::{Error, Result};
use crate::io::{download_resumable, safe_relative, Progress};

/// One archive of a dataset.
#[derive(Debug, Clone, Copy)]
pub struct Archive {
    pub url: &'static str,
    pub md5: Option<&'static str>,
}

/// The archives of a public dataset.
pub fn archives(name: &str) -> Result<&'static [Archive]> {
    const PETS: &[Archive] = &[
        Archive {
            url: "https://thor.robots.ox.ac.uk/~vgg/data/pets/images.tar.gz",
            md5: Some("5c4f3ee8e5d25df40f4fd59a7f44e54c"),
        },
        Archive {
            url: "https://thor.robots.ox.ac.uk/~vgg/data/pets/annotations.tar.gz",
            md5: Some("95a8c909bbe2e81eed6a22bccdf3f68f"),
        },
    ];
    const CATS_DOGS: &[Archive] = &[Archive {
        url: "https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip",
        md5: None,
    }];
    match name {
        "oxford-pets" => Ok(PETS),
        "cats-vs-dogs" => Ok(CATS_DOGS),
        _ => Err(Error::Invalid(format!(
            "unknown dataset `{name}` (oxford-pets, cats-vs-dogs)"
        ))),
    }
}

fn md5_file(path: &Path) -> Result<String> {
    crate::io::hash_file::<Md5>(path)
}

/// The file's MD5 must be `want` (when the publisher gives one).
fn check_md5(path: &Path, want: Option<&str>) -> Result<()> {
    let Some(want) = want else { return Ok(()) };
    let got = md5_file(path)?;
    if got != want {
        return Err(Error::Checksum {
            path: path.to_path_buf(),
            algorithm: "md5",
            expected: want.to_string(),
            actual: got,
        });
    }
    Ok(())
}

/// Extract `archive` into a temporary folder inside `dest`, then move its entries into
/// `dest`: an archive refused half-way (an entry escaping, a corrupt stream) leaves nothing.
pub fn extract_atomically(archive: &Path, dest: &Path) -> Result<usize> {
    fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(dest)
        .map_err(|e| Error::io(dest, e))?;
    let n = extract_archive(archive, tmp.path())?;
    move_tree(tmp.path(), dest)?;
    Ok(n)
}

/// Move every entry of `from` into `to`, merging folders that exist in both.
fn move_tree(from: &Path, to: &Path) -> Result<()> {
    for e in fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let e = e.map_err(|err| Error::io(from, err))?;
        let target = to.join(e.file_name());
        let is_dir = e
            .file_type()
            .map_err(|err| Error::io(e.path(), err))?
            .is_dir();
        if is_dir && target.is_dir() {
            move_tree(&e.path(), &target)?;
        } else {
            if is_dir && target.exists() {
                fs::remove_file(&target).map_err(|err| Error::io(&target, err))?;
            }
            fs::rename(e.path(), &target).map_err(|err| Error::io(&target, err))?;
        }
    }
    Ok(())
}

/// Extract a `.tar.gz` or `.zip` into `dest`. Entries that would land outside `dest`
/// (absolute paths, `..`) and links are refused with an error naming them.
pub fn extract_archive(archive: &Path, dest: &Path) -> Result<usize> {
    fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    let bad = |entry: &str| Error::Dataset {
        path: archive.to_path_buf(),
        reason: format!("entry `{entry}` would escape the target directory"),
    };
    let mut n = 0;
    let name = archive.to_string_lossy().to_lowercase();
    if name.ends_with(".zip") {
        let f = crate::io::open_regular(archive)?;
        let mut z = zip::ZipArchive::new(f).map_err(|e| Error::Corrupt {
            path: archive.to_path_buf(),
            reason: e.to_string(),
        })?;
        for i in 0..z.len() {
            let mut e = z.by_index(i).map_err(|e| Error::Corrupt {
                path: archive.to_path_buf(),
                reason: e.to_string(),
            })?;
            let raw = e.name().to_string();
            let rel = safe_relative(Path::new(&raw)).ok_or_else(|| bad(&raw))?;
            let out = dest.join(rel);
            if e.is_dir() {
                fs::create_dir_all(&out).map_err(|err| Error::io(&out, err))?;
                continue;
            }
            if e.is_symlink() {
                return Err(bad(&raw));
            }
            if let Some(p) = out.parent() {
                fs::create_dir_all(p).map_err(|err| Error::io(p, err))?;
            }
            let mut w = File::create(&out).map_err(|err| Error::io(&out, err))?;
            std::io::copy(&mut e, &mut w).map_err(|err| Error::io(&out, err))?;
            n += 1;
        }
    } else {
        let f = crate::io::open_regular(archive)?;
        let mut t = tar::Archive::new(flate2::read::GzDecoder::new(f));
        for entry in t.entries().map_err(|e| Error::io(archive, e))? {
            let mut e = entry.map_err(|e| Error::io(archive, e))?;
            let raw = e.path().map_err(|e| Error::io(archive, e))?.to_path_buf();
            let shown = raw.display().to_string();
            let rel = safe_relative(&raw).ok_or_else(|| bad(&shown))?;
            let out = dest.join(rel);
            let kind = e.header().entry_type();
            if kind.is_dir() {
                fs::create_dir_all(&out).map_err(|err| Error::io(&out, err))?;
            } else if kind.is_file() {
                if let Some(p) = out.parent() {
                    fs::create_dir_all(p).map_err(|err| Error::io(p, err))?;
                }
                let mut w = File::create(&out).map_err(|err| Error::io(&out, err))?;
                std::io::copy(&mut e, &mut w).map_err(|err| Error::io(&out, err))?;
                w.flush().map_err(|err| Error::io(&out, err))?;
                n += 1;
            } else if kind.is_symlink() || kind.is_hard_link() {
                return Err(bad(&shown));
            }
            // other entry kinds (pax headers…) carry no files
        }
    }
    Ok(n)
}

/// Download (resumably) and extract a public dataset into `dest`. `mirror` replaces the
/// publisher's host: `MIRROR/<file name>`. Archives are kept in `dest/.downloads` until
/// extracted, so an interrupted run continues where it stopped.
pub fn download(
    name: &str,
    dest: &Path,
    mirror: Option<&str>,
    progress: Progress<'_>,
) -> Result<usize> {
    download_archives(archives(name)?, dest, mirror, progress)
}

/// Download (resumably), check and extract `archives` into `dest`.
pub fn download_archives(
    archives: &[Archive],
    dest: &Path,
    mirror: Option<&str>,
    progress: Progress<'_>,
) -> Result<usize> {
    let dl = dest.join(".downloads");
    fs::create_dir_all(&dl).map_err(|e| Error::io(&dl, e))?;
    let mut files = 0;
    for a in archives {
        let file = a.url.rsplit('/').next().unwrap_or("archive");
        let url = match mirror {
            Some(m) => format!("{}/{file}", m.trim_end_matches('/')),
            None => a.url.to_string(),
        };
        let done = dl.join(file);
        // An archive left by an earlier run is checked like a fresh one: a wrong one is
        // removed and downloaded again.
        if done.exists() && check_md5(&done, a.md5).is_err() {
            fs::remove_file(&done).map_err(|e| Error::io(&done, e))?;
        }
        if !done.exists() {
            let part = dl.join(format!("{file}.part"));
            download_resumable(&url, &part, progress)?;
            if let Err(e) = check_md5(&part, a.md5) {
                let _ = fs::remove_file(&part);
                return Err(e);
            }
            fs::rename(&part, &done).map_err(|e| Error::io(&done, e))?;
        }
        files += extract_atomically(&done, dest)?;
        fs::remove_file(&done).map_err(|e| Error::io(&done, e))?;
    }
    let _ = fs::remove_dir(&dl);
    Ok(files)
}
