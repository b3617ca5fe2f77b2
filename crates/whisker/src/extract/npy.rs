//! NumPy shards: `part-IIIII.npy` (float32 `[rows, dim]`, little-endian, C order: the images
//! that succeeded, in listing order) and `part-IIIII.csv` (`row,path,label,error` for every
//! image; `row` is the image's row in the `.npy`, empty when it failed). The `.npy` header is
//! written with room for any row count and completed when the shard ends, so rows stream to
//! disk.

use std::fs;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{Entry, ShardRecord, ShardWriter};
use crate::error::{Error, Result};
use crate::io::persist;

/// The header's size: magic, version, length and the padded dictionary (a multiple of 64).
const HEADER: usize = 128;

/// The `.npy` header for float32 `[rows, dim]`.
pub fn header(rows: usize, dim: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    let len = HEADER - 10;
    h.extend_from_slice(&(len as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(HEADER - 1, b' ');
    h.push(b'\n');
    h
}

/// A CSV field, quoted when needed; line breaks become spaces (one line per image).
fn csv_field(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " ");
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// A `.npy` and its `.csv` index being written.
pub(super) struct PartWriter {
    npy: tempfile::NamedTempFile,
    csv: tempfile::NamedTempFile,
    npy_w: BufWriter<fs::File>,
    csv_w: BufWriter<fs::File>,
    out: PathBuf,
    stem: String,
    rows: usize,
    dim: usize,
}

impl PartWriter {
    pub fn new(out: &Path, stem: &str, dim: usize) -> Result<Self> {
        let npy = super::temp(out, stem, "npy")?;
        let csv = super::temp(out, stem, "csv")?;
        let clone = |t: &tempfile::NamedTempFile| {
            t.as_file().try_clone().map_err(|e| Error::io(t.path(), e))
        };
        let mut npy_w = BufWriter::new(clone(&npy)?);
        let mut csv_w = BufWriter::new(clone(&csv)?);
        npy_w
            .write_all(&header(0, dim))
            .map_err(|e| Error::io(npy.path(), e))?;
        csv_w
            .write_all(b"row,path,label,error\n")
            .map_err(|e| Error::io(csv.path(), e))?;
        Ok(PartWriter {
            npy,
            csv,
            npy_w,
            csv_w,
            out: out.to_path_buf(),
            stem: stem.to_string(),
            rows: 0,
            dim,
        })
    }
}

impl ShardWriter for PartWriter {
    fn write(&mut self, rows: &[(&Entry, std::result::Result<&[f32], &str>)]) -> Result<()> {
        for (e, r) in rows {
            let (row, err) = match r {
                Ok(v) => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    self.npy_w
                        .write_all(&bytes)
                        .map_err(|e| Error::io(self.npy.path(), e))?;
                    self.rows += 1;
                    ((self.rows - 1).to_string(), String::new())
                }
                Err(m) => (String::new(), csv_field(m)),
            };
            writeln!(
                self.csv_w,
                "{row},{},{},{err}",
                csv_field(&e.rel),
                csv_field(e.label.as_deref().unwrap_or(""))
            )
            .map_err(|e| Error::io(self.csv.path(), e))?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<Vec<String>> {
        let me = *self;
        let mut f = me
            .npy_w
            .into_inner()
            .map_err(|e| Error::io(me.npy.path(), e.into_error()))?;
        f.seek(SeekFrom::Start(0))
            .and_then(|_| f.write_all(&header(me.rows, me.dim)))
            .map_err(|e| Error::io(me.npy.path(), e))?;
        me.csv_w
            .into_inner()
            .map_err(|e| Error::io(me.csv.path(), e.into_error()))?;
        let npy = format!("{}.npy", me.stem);
        let csv = format!("{}.csv", me.stem);
        // the index last: a shard's `.csv` is there only with its complete `.npy`
        persist(me.npy, &me.out.join(&npy))?;
        persist(me.csv, &me.out.join(&csv))?;
        Ok(vec![npy, csv])
    }
}

/// Concatenate complete NumPy shards into `dest` (`.npy`) and its index (`dest` with `.csv`).
pub(super) fn merge(
    out: &Path,
    records: &[ShardRecord],
    dim: usize,
    dest: &Path,
) -> Result<Vec<PathBuf>> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let stem = dest
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "merged".into());
    let index = dest.with_extension("csv");
    let npy = super::temp(dir, &stem, "npy")?;
    let csv = super::temp(dir, &stem, "csv")?;
    let clone =
        |t: &tempfile::NamedTempFile| t.as_file().try_clone().map_err(|e| Error::io(t.path(), e));
    let mut nw = BufWriter::new(clone(&npy)?);
    let mut cw = BufWriter::new(clone(&csv)?);
    let total: usize = records.iter().map(|r| r.rows - r.failed).sum();
    nw.write_all(&header(total, dim))
        .and_then(|_| cw.write_all(b"row,path,label,error\n"))
        .map_err(|e| Error::io(dest, e))?;
    let mut base = 0usize;
    for r in records {
        let p = out.join(&r.files[0]);
        let mut f = crate::io::open_regular(&p)?;
        f.seek(SeekFrom::Start(HEADER as u64))
            .map_err(|e| Error::io(&p, e))?;
        let n = std::io::copy(&mut f, &mut nw).map_err(|e| Error::io(&p, e))?;
        if n != ((r.rows - r.failed) * dim * 4) as u64 {
            return Err(Error::Invalid(format!(
                "{}: {n} bytes of rows, {} expected",
                p.display(),
                (r.rows - r.failed) * dim * 4
            )));
        }
        let c = out.join(&r.files[1]);
        let text = fs::read_to_string(&c).map_err(|e| Error::io(&c, e))?;
        for line in text.lines().skip(1) {
            let (row, rest) = line.split_once(',').unwrap_or(("", line));
            match row.parse::<usize>() {
                Ok(k) => writeln!(cw, "{},{rest}", base + k),
                Err(_) => writeln!(cw, ",{rest}"),
            }
            .map_err(|e| Error::io(dest, e))?;
        }
        base += r.rows - r.failed;
    }
    nw.into_inner()
        .map_err(|e| Error::io(dest, e.into_error()))?;
    cw.into_inner()
        .map_err(|e| Error::io(&index, e.into_error()))?;
    persist(npy, dest)?;
    persist(csv, &index)?;
    Ok(vec![dest.to_path_buf(), index])
}
