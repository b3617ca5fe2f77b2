//! Labelled image datasets: Oxford-IIIT Pet (official split, breed or species labels),
//! Microsoft Cats-vs-Dogs (`PetImages/Cat`, `PetImages/Dog`), and any folder with one
//! sub-folder per class. Files are recognised by content, not extension; files that are
//! not images (`Thumbs.db`, empty files, text…) are skipped and reported with the reason.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Dataset layouts whisker understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `images/*.jpg` + `annotations/{list,trainval,test}.txt`.
    OxfordPets,
    /// `PetImages/Cat/*.jpg`, `PetImages/Dog/*.jpg` (the root or `PetImages` itself).
    CatsVsDogs,
    /// One sub-folder per class.
    ImageFolder,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "oxford-pets" | "oxford" | "pets" => Ok(Format::OxfordPets),
            "cats-vs-dogs" | "petimages" => Ok(Format::CatsVsDogs),
            "image-folder" | "folder" => Ok(Format::ImageFolder),
            _ => Err(Error::Invalid(format!(
                "unknown dataset format `{s}` (oxford-pets, cats-vs-dogs, image-folder)"
            ))),
        }
    }
}

/// Which labels of Oxford-IIIT Pet to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Labels {
    /// The 37 breeds.
    #[default]
    Breed,
    /// Cat or dog.
    Species,
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub path: PathBuf,
    pub label: usize,
}

/// A file that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// A scanned dataset.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dataset {
    pub root: PathBuf,
    pub format: Format,
    pub classes: Vec<String>,
    pub items: Vec<Item>,
    pub skipped: Vec<Skipped>,
    /// Indices into `items` of the official test split, when the dataset has one.
    pub official_test: Option<Vec<usize>>,
}

/// What the first bytes of a file say it is: `Ok(())` for an image format whisker decodes,
/// else the reason it is not one.
pub fn sniff_image(path: &Path) -> std::result::Result<(), String> {
    let mut f = crate::io::open_regular(path).map_err(|e| e.to_string())?;
    let mut head = [0u8; 32];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(e.to_string()),
        }
    }
    let h = &head[..n];
    if n == 0 {
        return Err("empty file".into());
    }
    let ok = h.starts_with(&[0xFF, 0xD8, 0xFF])
        || h.starts_with(b"\x89PNG\r\n\x1a\n")
        || h.starts_with(b"GIF87a")
        || h.starts_with(b"GIF89a")
        || h.starts_with(b"BM")
        || (h.starts_with(b"RIFF") && n >= 12 && &h[8..12] == b"WEBP")
        || crate::data::tiff::looks_like_tiff(h)
        || (n >= 3 && h[0] == b'P' && (b'1'..=b'6').contains(&h[1]) && h[2].is_ascii_whitespace())
        || h.starts_with(&[0, 0, 1, 0])
        || crate::data::bmp::looks_like_dib(h)
        || crate::data::pfm::looks_like_pfm(h)
        || crate::data::decode::looks_like_tga(h);
    if ok {
        Ok(())
    } else if h.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
        Err("not an image (an OLE file such as Thumbs.db)".into())
    } else {
        Err("not an image (unrecognised content)".into())
    }
}

/// Guess the layout of `root`.
pub fn detect(root: &Path) -> Result<Format> {
    if !root.is_dir() {
        return Err(Error::Dataset {
            path: root.to_path_buf(),
            reason: "not a directory".into(),
        });
    }
    if root.join("annotations/list.txt").is_file() && root.join("images").is_dir() {
        return Ok(Format::OxfordPets);
    }
    let pi = if root.join("PetImages").is_dir() {
        root.join("PetImages")
    } else {
        root.to_path_buf()
    };
    if pi.join("Cat").is_dir() && pi.join("Dog").is_dir() {
        return Ok(Format::CatsVsDogs);
    }
    Ok(Format::ImageFolder)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// What a scan has seen: directories (by their canonical path) so that symbolic links that
/// loop are not followed again, and files, so that a file reached twice (through a link) is
/// counted once.
#[derive(Default)]
struct Seen {
    /// The dataset's root, canonical: folders (links) outside it are not followed.
    root: PathBuf,
    dirs: std::collections::HashSet<PathBuf>,
    /// A file's canonical path → where it was first found, and in which class.
    files: std::collections::HashMap<PathBuf, (PathBuf, usize)>,
    /// Where files that are also in another class (through links) were first found: left
    /// out of both classes.
    conflicts: std::collections::HashSet<PathBuf>,
}

/// Folders nested deeper than this inside a class are not scanned (a path that deep is a
/// mistake or an attack; its walk cost grew with the square of the depth).
pub const MAX_DEPTH: usize = 32;

/// What entering a folder finds.
#[derive(PartialEq)]
enum Entry {
    New,
    /// Entered before (a link loop or a second link to it).
    Again,
    /// A folder (a link) outside the dataset's root, or one whose real place is unknown.
    Outside,
}

impl Seen {
    /// Enter `dir`, with one look at where it really is.
    fn enter(&mut self, dir: &Path) -> Entry {
        match fs::canonicalize(dir) {
            Ok(c) if c.starts_with(&self.root) => {
                if self.dirs.insert(c) {
                    Entry::New
                } else {
                    Entry::Again
                }
            }
            _ => Entry::Outside,
        }
    }
}

/// A name whisker can record (split files, reports are UTF-8), or the reason it cannot.
fn utf8_name(p: &Path) -> std::result::Result<(), String> {
    match p.file_name().map(|n| n.to_str().is_some()) {
        Some(false) => Err("the file name is not valid UTF-8 (rename the file to use it)".into()),
        _ => Ok(()),
    }
}

/// Scan one class folder (recursively, `depth` folders below the class) into items /
/// skipped.
fn scan_class(
    dir: &Path,
    label: usize,
    depth: usize,
    seen: &mut Seen,
    items: &mut Vec<Item>,
    skipped: &mut Vec<Skipped>,
) -> Result<()> {
    for p in sorted_entries(dir)? {
        if p.is_dir() {
            if let Err(reason) = utf8_name(&p) {
                skipped.push(Skipped { path: p, reason });
            } else if depth >= MAX_DEPTH {
                skipped.push(Skipped {
                    path: p,
                    reason: format!(
                        "a folder nested more than {MAX_DEPTH} deep in its class: not scanned"
                    ),
                });
            } else {
                match seen.enter(&p) {
                    Entry::New => scan_class(&p, label, depth + 1, seen, items, skipped)?,
                    Entry::Outside => skipped.push(Skipped {
                        path: p,
                        reason: "a link to a folder outside the dataset: not followed".into(),
                    }),
                    Entry::Again => skipped.push(Skipped {
                        path: p,
                        reason: "a link to a folder already scanned (not followed twice)".into(),
                    }),
                }
            }
        } else if p.is_file() {
            if let Err(reason) = utf8_name(&p) {
                skipped.push(Skipped { path: p, reason });
                continue;
            }
            let canon = fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
            if let Some((first, first_label)) = seen.files.get(&canon) {
                let reason = if *first_label == label {
                    format!(
                        "the same file as {} (a link): counted once",
                        first.display()
                    )
                } else {
                    // which class is it? the dataset does not say: in neither
                    seen.conflicts.insert(first.clone());
                    format!(
                        "the same file as {} (a link) in another class: a file in two classes is left out of both",
                        first.display()
                    )
                };
                skipped.push(Skipped { reason, path: p });
                continue;
            }
            seen.files.insert(canon, (p.clone(), label));
            match sniff_image(&p) {
                Ok(()) => items.push(Item { path: p, label }),
                Err(reason) => skipped.push(Skipped { path: p, reason }),
            }
        } else {
            let reason = if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                "a link whose target does not exist"
            } else {
                "not a regular file (a FIFO, socket or device)"
            };
            skipped.push(Skipped {
                path: p,
                reason: reason.into(),
            });
        }
    }
    Ok(())
}

impl Dataset {
    /// Open a dataset, detecting its layout unless `format` is given.
    pub fn open(root: &Path, format: Option<Format>, labels: Labels) -> Result<Self> {
        let format = match format {
            Some(f) => f,
            None => detect(root)?,
        };
        let ds = match format {
            Format::OxfordPets => Self::oxford(root, labels)?,
            Format::CatsVsDogs => {
                let pi = if root.join("PetImages").is_dir() {
                    root.join("PetImages")
                } else {
                    root.to_path_buf()
                };
                Self::folders(root, &pi, Format::CatsVsDogs, Some(&["Cat", "Dog"]))?
            }
            Format::ImageFolder => Self::folders(root, root, Format::ImageFolder, None)?,
        };
        ds.check()?;
        Ok(ds)
    }

    fn folders(root: &Path, dir: &Path, format: Format, only: Option<&[&str]>) -> Result<Self> {
        let mut classes = Vec::new();
        let mut items = Vec::new();
        let mut skipped = Vec::new();
        let mut seen = Seen {
            root: fs::canonicalize(root).map_err(|e| Error::io(root, e))?,
            ..Seen::default()
        };
        seen.enter(root);
        seen.enter(dir);
        for p in sorted_entries(dir)? {
            if !p.is_dir() {
                if p.is_file() {
                    skipped.push(Skipped {
                        path: p,
                        reason: "not in a class folder".into(),
                    });
                }
                continue;
            }
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if name.starts_with('.') || only.is_some_and(|o| !o.contains(&name.as_str())) {
                continue;
            }
            if let Err(reason) = utf8_name(&p) {
                skipped.push(Skipped { path: p, reason });
                continue;
            }
            match seen.enter(&p) {
                Entry::New => {}
                Entry::Outside => {
                    skipped.push(Skipped {
                        path: p,
                        reason: "a link to a folder outside the dataset: not used as a class"
                            .into(),
                    });
                    continue;
                }
                Entry::Again => {
                    skipped.push(Skipped {
                        path: p,
                        reason: "a link to a folder already scanned (not used as a class)".into(),
                    });
                    continue;
                }
            }
            let label = classes.len();
            classes.push(name);
            scan_class(&p, label, 0, &mut seen, &mut items, &mut skipped)?;
        }
        items.retain(|it| {
            let conflict = seen.conflicts.contains(&it.path);
            if conflict {
                skipped.push(Skipped {
                    path: it.path.clone(),
                    reason: "the same file is linked into another class: a file in two classes is left out of both".into(),
                });
            }
            !conflict
        });
        Ok(Dataset {
            root: root.to_path_buf(),
            format,
            classes,
            items,
            skipped,
            official_test: None,
        })
    }

    fn oxford(root: &Path, labels: Labels) -> Result<Self> {
        let read = |name: &str| -> Result<Vec<(String, usize, usize)>> {
            let p = root.join("annotations").join(name);
            let bytes = crate::io::read_regular(&p, crate::io::MAX_SMALL_FILE)?;
            let text = String::from_utf8(bytes).map_err(|_| Error::Dataset {
                path: p.clone(),
                reason: "not UTF-8 text".into(),
            })?;
            let mut out = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let f: Vec<&str> = line.split_whitespace().collect();
                let parse = |s: Option<&&str>| s.and_then(|s| s.parse::<usize>().ok());
                match (f.first(), parse(f.get(1)), parse(f.get(2))) {
                    (Some(n), Some(c), Some(s)) if c >= 1 && (1..=2).contains(&s) => {
                        out.push((n.to_string(), c - 1, s - 1))
                    }
                    _ => {
                        return Err(Error::Dataset {
                            path: p.clone(),
                            reason: format!(
                            "line {}: expected `NAME CLASS_ID SPECIES BREED_ID`, found `{line}`",
                            i + 1
                        ),
                        })
                    }
                }
            }
            Ok(out)
        };
        let list = read("list.txt")?;
        // class names: the image name without its trailing _NUMBER, in class-id order
        let mut names: BTreeMap<usize, String> = BTreeMap::new();
        for (n, c, _) in &list {
            let breed = n.rsplit_once('_').map(|(b, _)| b).unwrap_or(n).to_string();
            names.entry(*c).or_insert(breed);
        }
        let classes: Vec<String> = match labels {
            Labels::Breed => names.values().cloned().collect(),
            Labels::Species => vec!["cat".into(), "dog".into()],
        };
        let test_names: std::collections::HashSet<String> =
            if root.join("annotations/test.txt").is_file() {
                read("test.txt")?.into_iter().map(|(n, _, _)| n).collect()
            } else {
                Default::default()
            };
        let mut items = Vec::new();
        let mut skipped = Vec::new();
        let mut test = Vec::new();
        for (n, c, s) in list {
            let p = root.join("images").join(format!("{n}.jpg"));
            if !p.is_file() {
                skipped.push(Skipped {
                    path: p,
                    reason: "listed in annotations/list.txt but missing".into(),
                });
                continue;
            }
            if let Err(reason) = sniff_image(&p) {
                skipped.push(Skipped { path: p, reason });
                continue;
            }
            if test_names.contains(&n) {
                test.push(items.len());
            }
            let label = match labels {
                Labels::Breed => names.keys().position(|k| *k == c).unwrap_or(0),
                Labels::Species => s,
            };
            items.push(Item { path: p, label });
        }
        Ok(Dataset {
            root: root.to_path_buf(),
            format: Format::OxfordPets,
            classes,
            items,
            skipped,
            official_test: if test_names.is_empty() {
                None
            } else {
                Some(test)
            },
        })
    }

    /// A dataset needs images, and every class needs at least one.
    fn check(&self) -> Result<()> {
        if self.items.is_empty() {
            return Err(Error::Dataset {
                path: self.root.clone(),
                reason: format!("no images found ({} file(s) skipped)", self.skipped.len()),
            });
        }
        if self.classes.len() < 2 {
            return Err(Error::Dataset {
                path: self.root.clone(),
                reason: format!(
                    "found {} class folder(s); a classifier needs at least 2",
                    self.classes.len()
                ),
            });
        }
        let counts = self.class_counts();
        let empty: Vec<&str> = self
            .classes
            .iter()
            .zip(&counts)
            .filter(|(_, &c)| c == 0)
            .map(|(n, _)| n.as_str())
            .collect();
        if !empty.is_empty() {
            return Err(Error::Dataset {
                path: self.root.clone(),
                reason: format!("class(es) with no usable image: {}", empty.join(", ")),
            });
        }
        Ok(())
    }

    /// Images per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes.len()];
        for it in &self.items {
            c[it.label] += 1;
        }
        c
    }

    /// Seeded, stratified split into train / val / test (indices into `items`). The
    /// official test split is used when the dataset has one; `val_frac` of the rest (per
    /// class) becomes validation.
    pub fn split(&self, val_frac: f64, test_frac: f64, seed: u64) -> Split {
        let mut rng = SplitMix64(seed);
        let mut train = Vec::new();
        let mut val = Vec::new();
        let mut test = Vec::new();
        let official: std::collections::HashSet<usize> =
            self.official_test.iter().flatten().copied().collect();
        for class in 0..self.classes.len() {
            let mut idx: Vec<usize> = (0..self.items.len())
                .filter(|&i| self.items[i].label == class && !official.contains(&i))
                .collect();
            rng.shuffle(&mut idx);
            let n = idx.len();
            let n_test = if self.official_test.is_some() {
                0
            } else {
                (n as f64 * test_frac).round() as usize
            };
            let n_val = ((n as f64 * val_frac).round() as usize).min(n.saturating_sub(n_test + 1));
            test.extend_from_slice(&idx[..n_test.min(n)]);
            val.extend_from_slice(&idx[n_test.min(n)..(n_test + n_val).min(n)]);
            train.extend_from_slice(&idx[(n_test + n_val).min(n)..]);
        }
        test.extend(official.iter().copied());
        train.sort_unstable();
        val.sort_unstable();
        test.sort_unstable();
        Split {
            train,
            val,
            test,
            seed,
        }
    }
}

/// Indices of a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
    pub seed: u64,
}

/// A small, fixed PRNG (SplitMix64), so that a seed gives the same split on every
/// platform and whisker version.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}
