//! What `whisker extract` reads: a dataset folder (each image with its class), a folder of
//! images (searched recursively), or a list of paths (`.txt` one a line, `.csv` or
//! `.parquet` with a `path` column and an optional `label` column). The listing is sorted, so
//! that every process of a job array assigns the same images to the same shard.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::data::datasets::{detect, Dataset, Format, Labels};
use crate::error::{Error, Result};

/// Lists longer than this are refused (a list file is read whole).
pub const MAX_ENTRIES: usize = 100_000_000;

/// A `.txt` list larger than this is refused (it is read whole).
pub const MAX_LIST_BYTES: u64 = 2 << 30;

/// One image to extract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where to read it.
    pub path: PathBuf,
    /// Its name in the output: relative to the input's root (`/`-separated), or as a list
    /// file wrote it.
    pub rel: String,
    /// Its class, when the input is a dataset (or a list with a `label` column).
    pub label: Option<String>,
    /// Why it is not an image, when the listing already knows (a dataset scan's verdict).
    pub error: Option<String>,
}

/// What kind of input it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dataset(Format),
    Folder,
    List,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dataset(Format::OxfordPets) => "dataset (Oxford-IIIT Pet)",
            Kind::Dataset(Format::CatsVsDogs) => "dataset (Cats vs Dogs)",
            Kind::Dataset(Format::ImageFolder) => "dataset (a folder per class)",
            Kind::Folder => "folder of images",
            Kind::List => "list of paths",
        }
    }
}

/// A sorted listing.
#[derive(Debug, Clone)]
pub struct Input {
    /// The folder names are relative to (a list file's folder for a list).
    pub root: PathBuf,
    /// What was given.
    pub source: PathBuf,
    pub kind: Kind,
    pub entries: Vec<Entry>,
    /// Whether entries have labels (a `label` column is written).
    pub labelled: bool,
}

impl Input {
    /// List `source`: a folder (a dataset when it has a layout whisker knows or holds only
    /// class folders, else a folder of images) or a list file.
    pub fn open(source: &Path) -> Result<Self> {
        let meta = fs::metadata(source).map_err(|e| Error::io(source, e))?;
        let mut input = if meta.is_dir() {
            Self::folder(source)?
        } else {
            Self::list(source)?
        };
        // stable: equal names (a list that names a file twice) keep their order
        input.entries.sort_by(|a, b| a.rel.cmp(&b.rel));
        if input.entries.is_empty() {
            return Err(Error::Dataset {
                path: source.to_path_buf(),
                reason: "no images to extract".into(),
            });
        }
        Ok(input)
    }

    /// A fingerprint of the listing (names, labels and known errors, in order): a rerun into
    /// the same output must see the same listing, or its shards would hold other images.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for e in &self.entries {
            h.update(e.rel.as_bytes());
            h.update(b"\t");
            h.update(e.label.as_deref().unwrap_or("\u{0}").as_bytes());
            h.update(b"\t");
            h.update(e.error.as_deref().unwrap_or("").as_bytes());
            h.update(b"\n");
        }
        hex::encode(h.finalize())
    }

    fn folder(dir: &Path) -> Result<Self> {
        let format = detect(dir)?;
        let dataset = match format {
            Format::OxfordPets | Format::CatsVsDogs => true,
            // a folder of class folders (two or more, and no images beside them)
            Format::ImageFolder => {
                let mut folders = 0;
                let mut files = 0;
                for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
                    let e = e.map_err(|e| Error::io(dir, e))?;
                    if e.file_name().to_string_lossy().starts_with('.') {
                        continue;
                    }
                    match e.path().is_dir() {
                        true => folders += 1,
                        false => files += 1,
                    }
                }
                folders >= 2 && files == 0
            }
        };
        if dataset {
            let ds = Dataset::open(dir, Some(format), Labels::Breed)?;
            let mut entries: Vec<Entry> = ds
                .items
                .iter()
                .map(|it| Entry {
                    rel: relative(&ds.root, &it.path),
                    path: it.path.clone(),
                    label: Some(ds.classes[it.label].clone()),
                    error: None,
                })
                .collect();
            // what the scan left out is listed with its reason (and its class folder's
            // label), never dropped
            entries.extend(ds.skipped.iter().map(|s| {
                let rel = relative(&ds.root, &s.path);
                let mut parts: Vec<&str> = rel.split('/').collect();
                parts.pop();
                Entry {
                    label: parts
                        .iter()
                        .find(|p| ds.classes.iter().any(|c| c == *p))
                        .map(|p| p.to_string()),
                    rel,
                    path: s.path.clone(),
                    error: Some(format!("{}: {}", s.path.display(), s.reason)),
                }
            }));
            return Ok(Input {
                root: ds.root.clone(),
                source: dir.to_path_buf(),
                kind: Kind::Dataset(format),
                entries,
                labelled: true,
            });
        }
        let mut files = Vec::new();
        let root = fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
        // (links to folders outside it are not followed)
        crate::io::walk_files(
            dir,
            &root,
            &mut Default::default(),
            &mut files,
            &mut Vec::new(),
            MAX_ENTRIES,
        )?;
        Ok(Input {
            root: dir.to_path_buf(),
            source: dir.to_path_buf(),
            kind: Kind::Folder,
            entries: files
                .into_iter()
                .map(|p| Entry {
                    rel: relative(dir, &p),
                    path: p,
                    label: None,
                    error: None,
                })
                .collect(),
            labelled: false,
        })
    }

    fn list(file: &Path) -> Result<Self> {
        let ext = file
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let rows: Vec<(String, Option<String>)> = match ext.as_str() {
            "csv" => read_csv(file)?,
            "parquet" => read_parquet(file)?,
            "txt" | "lst" | "list" => read_txt(file)?,
            _ => {
                return Err(Error::Invalid(format!(
                    "{}: not a folder or a list whisker reads (.txt one path a line, .csv or \
                     .parquet with a `path` column)",
                    file.display()
                )))
            }
        };
        if rows.len() > MAX_ENTRIES {
            return Err(Error::Dataset {
                path: file.to_path_buf(),
                reason: format!("{} entries: more than {MAX_ENTRIES}", rows.len()),
            });
        }
        let root = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let labelled = rows.iter().any(|(_, l)| l.is_some());
        let entries = rows
            .into_iter()
            .map(|(rel, label)| Entry {
                path: root.join(&rel),
                rel,
                label,
                error: None,
            })
            .collect();
        Ok(Input {
            root,
            source: file.to_path_buf(),
            kind: Kind::List,
            entries,
            labelled,
        })
    }
}

/// `p` relative to `root`, `/`-separated (as given when it is not under `root`).
fn relative(root: &Path, p: &Path) -> String {
    let r = p.strip_prefix(root).unwrap_or(p);
    r.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn bad(file: &Path, reason: impl Into<String>) -> Error {
    Error::Dataset {
        path: file.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_txt(file: &Path) -> Result<Vec<(String, Option<String>)>> {
    // (a regular file only: a FIFO would block for ever)
    let text = crate::io::read_regular(file, MAX_LIST_BYTES)?;
    let text = String::from_utf8(text).map_err(|_| bad(file, "not UTF-8 text"))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| (l.to_string(), None))
        .collect())
}

fn read_csv(file: &Path) -> Result<Vec<(String, Option<String>)>> {
    // (a regular file only: a FIFO would block for ever)
    let mut r = csv::ReaderBuilder::new().from_reader(crate::io::open_regular(file)?);
    let headers = r.headers().map_err(|e| bad(file, e.to_string()))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let path = col("path").ok_or_else(|| {
        bad(
            file,
            format!(
                "no `path` column (its columns: {})",
                headers.iter().collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    let label = col("label");
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| bad(file, format!("row {}: {e}", i + 2)))?;
        let p = rec.get(path).unwrap_or("").trim();
        if p.is_empty() {
            return Err(bad(file, format!("row {}: an empty path", i + 2)));
        }
        let l = label
            .and_then(|c| rec.get(c))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        rows.push((p.to_string(), l));
        if rows.len() > MAX_ENTRIES {
            break;
        }
    }
    Ok(rows)
}

fn read_parquet(file: &Path) -> Result<Vec<(String, Option<String>)>> {
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    use arrow_schema::DataType;
    let f = crate::io::open_regular(file)?;
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| bad(file, e.to_string()))?;
    let schema = builder.schema().clone();
    let path = schema.index_of("path").map_err(|_| {
        bad(
            file,
            format!(
                "no `path` column (its columns: {})",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let label = schema.index_of("label").ok();
    let mask = parquet::arrow::ProjectionMask::roots(
        builder.parquet_schema(),
        std::iter::once(path).chain(label),
    );
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| bad(file, e.to_string()))?;
    let strings = |a: &dyn Array, name: &str| -> Result<Vec<Option<String>>> {
        match a.data_type() {
            DataType::Utf8 => Ok(a
                .as_string::<i32>()
                .iter()
                .map(|s| s.map(str::to_string))
                .collect()),
            DataType::LargeUtf8 => Ok(a
                .as_string::<i64>()
                .iter()
                .map(|s| s.map(str::to_string))
                .collect()),
            DataType::Utf8View => Ok(a
                .as_string_view()
                .iter()
                .map(|s| s.map(str::to_string))
                .collect()),
            t => Err(bad(file, format!("column `{name}` holds {t}, not strings"))),
        }
    };
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(file, e.to_string()))?;
        let paths = strings(
            batch.column_by_name("path").expect("projected").as_ref(),
            "path",
        )?;
        let labels = match batch.column_by_name("label") {
            Some(c) => strings(c.as_ref(), "label")?,
            None => vec![None; paths.len()],
        };
        for (p, l) in paths.into_iter().zip(labels) {
            let Some(p) = p.filter(|p| !p.trim().is_empty()) else {
                return Err(bad(file, format!("row {}: no path", rows.len() + 1)));
            };
            rows.push((p, l));
        }
        if rows.len() > MAX_ENTRIES {
            break;
        }
    }
    Ok(rows)
}
