//! `whisker extract`: features of many images written to files other tools read — Parquet
//! (pyarrow, DuckDB, polars, Spark) or NumPy — in shards that several processes (a job array,
//! a cluster) can share.
//!
//! The sorted listing of the input is cut into `num_shards` contiguous shards; shard `i` is
//! written to `part-0000i.parquet` (a temporary file renamed when complete), then its
//! completion record `_part-0000i.json`. A rerun skips every shard with its record, so a run
//! killed at any point resumes where it stopped and gives the same files. The output folder's
//! `_extract.json` holds the settings: a rerun with other settings (another backbone, layer,
//! input…) is refused before anything is written. Files whose name begins with `_` or `.`
//! are skipped by Parquet dataset readers (`pyarrow.dataset`, Spark), so the folder reads as
//! one table.
//!
//! Parquet columns: `path` (relative to the input's root), `label` (a dataset's class),
//! `embedding` (a fixed-size list of float32; null when the image failed) and `error` (why
//! it failed, naming the file; null when it did not). The file metadata says what produced
//! it: `whisker.backbone`, `whisker.weights_sha256`, `whisker.layer`, `whisker.pool`,
//! `whisker.preprocessing`…

pub mod input;
mod npy;
mod parquet_io;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::features::{stream, Output};
use crate::model::Model;

/// A temporary file `.STEM.XXXX.EXT.tmp` in `dir`, renamed into place when complete (the
/// leading dot keeps it out of pyarrow's, Spark's and Hive's readings of the folder).
fn temp(dir: &Path, stem: &str, ext: &str) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&format!(".{stem}."))
        .suffix(&format!(".{ext}.tmp"))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))
}

pub use input::{Entry, Input};
pub use parquet_io::Merged;
pub use parquet_io::{merge, read_parquet_table, Table};

/// The settings file of an output folder.
pub const MANIFEST: &str = "_extract.json";

/// The file format of the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// `part-IIIII.parquet`: one row per image.
    Parquet,
    /// `part-IIIII.npy` (float32 `[rows, dim]`, the images that succeeded) with
    /// `part-IIIII.csv` (`row,path,label,error`: every image, `row` empty when it failed).
    Npy,
}

impl FileFormat {
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Parquet => "parquet",
            FileFormat::Npy => "npy",
        }
    }
}

/// What is written per image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Features (the feature vector, or a layer's output pooled): the `embedding` column.
    Embedding(Output),
    /// The model's class probabilities (the softmax of its logits): the columns
    /// `prediction` (the most probable class), `probability` (its probability) and
    /// `probabilities` (every class's, in the order of the metadata's `whisker.classes`).
    Predictions,
    /// The model's logits (the Python package's `Model.logits`; written like an embedding).
    Logits,
}

impl Target {
    /// The values per image (checking the target: a layer the model has, a pooling the
    /// layer can take, a classifier to predict with); a layer's is measured on one image of
    /// the input size.
    pub fn dim(&self, model: &Model) -> Result<usize> {
        let b = model.backbone();
        match self {
            Target::Embedding(o) => {
                o.check(b)?;
                match o {
                    Output::Features => Ok(b.spec.feature_dim),
                    Output::Layer { .. } => {
                        let s = model.preprocess().crop;
                        let x = burn::tensor::Tensor::<4>::zeros([1, 3, s, s], &b.device());
                        Ok(o.rows(b, x)?.1)
                    }
                }
            }
            Target::Predictions | Target::Logits => {
                if model.labels().is_empty() {
                    return Err(Error::Invalid(format!(
                        "{} has no classifier to predict with: train one (`whisker train DIR -b {}`) and use its run",
                        b.spec.name, b.spec.name
                    )));
                }
                Ok(model.labels().len())
            }
        }
    }

    /// One row per image of pixels `[N, 3, H, W]` in [0, 1]: `(rows, dim)`, row-major.
    pub fn rows(
        &self,
        model: &Model,
        pixels: burn::tensor::Tensor<4>,
    ) -> Result<(Vec<f32>, usize)> {
        let b = model.backbone();
        match self {
            Target::Embedding(o) => o.rows(b, pixels),
            Target::Predictions => {
                let f = crate::tensor::to_vec(b.features(pixels))?;
                let k = model.labels().len();
                Ok((softmax_rows(&model.logits_of_features(&f)?, k), k))
            }
            Target::Logits => {
                let f = crate::tensor::to_vec(b.features(pixels))?;
                Ok((model.logits_of_features(&f)?, model.labels().len()))
            }
        }
    }
}

/// How [`run`] works.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// What is written per image.
    pub target: Target,
    pub format: FileFormat,
    /// Images per forward pass.
    pub batch_size: usize,
    /// How many shards the listing is cut into (the same for every process sharing the
    /// output).
    pub num_shards: usize,
    /// The shards this process computes (`None`: all of them).
    pub shard_id: Option<usize>,
}

/// What produced an output folder: a rerun must match it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub whisker_version: String,
    pub backbone: String,
    /// The sha256 of the pretrained weights the backbone stands on.
    pub weights_sha256: String,
    /// The sha256 of the trained model file whose fine-tuned backbone ran (`--model`), if
    /// any.
    pub finetuned_model_sha256: Option<String>,
    pub layer: String,
    pub pool: String,
    pub dim: usize,
    /// The classes of `probabilities`, when the files hold predictions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    pub preprocessing: Preprocessing,
    pub format: FileFormat,
    pub num_shards: usize,
    /// The input as given, and what it was read as.
    pub input: String,
    pub input_kind: String,
    pub entries: usize,
    pub labelled: bool,
    /// sha256 of the sorted listing (names, labels).
    pub listing_sha256: String,
}

/// The preprocessing images went through, as written in the files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preprocessing {
    pub resize: usize,
    pub crop: usize,
    pub interpolation: String,
    pub normalization: String,
}

/// A shard's completion record (`_part-IIIII.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub shard: usize,
    /// Its slice of the sorted listing.
    pub first: usize,
    pub rows: usize,
    pub failed: usize,
    pub files: Vec<String>,
    /// Size in bytes of each of `files`.
    pub bytes: Vec<u64>,
    /// The images that failed, each with the reason.
    pub errors: Vec<FailedImage>,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedImage {
    pub path: String,
    pub error: String,
}

/// What [`run`] did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub manifest: Manifest,
    /// Shards computed by this run, and those found complete.
    pub computed: Vec<usize>,
    pub skipped: Vec<usize>,
    /// The records of every shard this run was asked for, computed or found.
    pub records: Vec<ShardRecord>,
    /// Images computed per second by this run.
    pub images_per_s: f64,
    /// Whether every shard of the folder is complete now.
    pub complete: bool,
}

/// The slice of a sorted listing of `n` images that shard `id` of `num` holds: contiguous,
/// sizes differing by at most one, in order (the shards' concatenation is the listing).
pub fn shard_range(n: usize, num: usize, id: usize) -> std::ops::Range<usize> {
    let num = num.max(1);
    let at = |i: usize| (n as u128 * i as u128 / num as u128) as usize;
    at(id)..at(id + 1)
}

/// `part-00003` for shard 3.
pub fn shard_stem(id: usize) -> String {
    format!("part-{id:05}")
}

fn record_path(out: &Path, id: usize) -> PathBuf {
    out.join(format!("_{}.json", shard_stem(id)))
}

/// The settings of extracting `input` with `model` under `opts` (probing the model once for
/// the output's size when it is a layer's).
pub fn manifest(model: &Model, input: &Input, opts: &ExtractOptions) -> Result<Manifest> {
    let b = model.backbone();
    let pre = model.preprocess();
    let dim = opts.target.dim(model)?;
    let (layer, pool, classes) = match &opts.target {
        Target::Embedding(o) => (o.layer_name(), o.pool_name(), None),
        Target::Predictions => ("logits", "softmax", Some(model.labels().to_vec())),
        Target::Logits => ("logits", "none", None),
    };
    Ok(Manifest {
        whisker_version: env!("CARGO_PKG_VERSION").to_string(),
        backbone: b.spec.name.to_string(),
        weights_sha256: model.weights_sha256().to_string(),
        finetuned_model_sha256: model.finetuned_sha256().map(str::to_string),
        layer: layer.to_string(),
        pool: pool.to_string(),
        dim,
        classes,
        preprocessing: Preprocessing {
            resize: pre.resize,
            crop: pre.crop,
            interpolation: format!("{:?}", pre.filter).to_lowercase(),
            normalization: format!("{:?}", pre.norm).to_lowercase(),
        },
        format: opts.format,
        num_shards: opts.num_shards,
        input: input.source.display().to_string(),
        input_kind: input.kind.name().to_string(),
        entries: input.entries.len(),
        labelled: input.labelled,
        listing_sha256: input.fingerprint(),
    })
}

/// The manifest of an output folder, if it has one.
pub fn read_manifest(out: &Path) -> Result<Option<Manifest>> {
    let p = out.join(MANIFEST);
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::Invalid(format!(
                "{}: not a whisker extract manifest: {e}",
                p.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// Refuse an output folder that holds something else: another extraction's shards (other
/// settings or another input), or files that are not whisker's.
fn check_out(out: &Path, m: &Manifest) -> Result<()> {
    match read_manifest(out)? {
        Some(old) => {
            // (the version may differ: the numbers do not depend on it; nor the input's
            // spelling: a relative path from another folder, the same listing)
            let mut old = old;
            old.whisker_version = m.whisker_version.clone();
            old.input = m.input.clone();
            if old == *m {
                return Ok(());
            }
            let a = serde_json::to_value(&old).unwrap_or_default();
            let b = serde_json::to_value(m).unwrap_or_default();
            let differ: Vec<String> = a
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| b.get(k.as_str()) != Some(v))
                .map(|(k, v)| {
                    format!(
                        "{k}: {v} then, {} now",
                        b.get(k.as_str()).cloned().unwrap_or_default()
                    )
                })
                .collect();
            Err(Error::Invalid(format!(
                "{} holds an extraction with other settings ({}): give another --out, or delete it to start again",
                out.display(),
                differ.join("; ")
            )))
        }
        None => {
            let foreign: Vec<String> = match fs::read_dir(out) {
                Ok(d) => d
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .filter(|n| !n.starts_with('.'))
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(Error::io(out, e)),
            };
            if foreign.is_empty() {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "{} is not empty and holds no whisker extraction ({}{}): give an empty or new folder",
                    out.display(),
                    foreign.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                    if foreign.len() > 3 { ", …" } else { "" }
                )))
            }
        }
    }
}

/// The record of shard `id` when the shard is complete: its record is there and its files
/// have the sizes it gives.
pub fn complete_record(out: &Path, id: usize) -> Option<ShardRecord> {
    let r: ShardRecord = serde_json::from_slice(&fs::read(record_path(out, id)).ok()?).ok()?;
    let ok = r.shard == id
        && r.files.len() == r.bytes.len()
        && r.files
            .iter()
            .zip(&r.bytes)
            .all(|(f, &b)| fs::metadata(out.join(f)).is_ok_and(|m| m.len() == b));
    ok.then_some(r)
}

/// Extract `input` with `model` into the folder `out`: the shards `opts` asks for that are
/// not complete yet. `progress(done, total)` counts images of this run.
pub fn run(
    model: &Model,
    input: &Input,
    out: &Path,
    opts: &ExtractOptions,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Summary> {
    if opts.num_shards == 0 || opts.num_shards > input.entries.len().max(1) {
        return Err(Error::Invalid(format!(
            "--num-shards {} must be between 1 and the number of images ({})",
            opts.num_shards,
            input.entries.len()
        )));
    }
    if let Some(id) = opts.shard_id {
        if id >= opts.num_shards {
            return Err(Error::Invalid(format!(
                "--shard-id {id} must be below --num-shards {}",
                opts.num_shards
            )));
        }
    }
    let m = manifest(model, input, opts)?;
    check_out(out, &m)?;
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    if read_manifest(out)?.is_none() {
        let json = serde_json::to_vec_pretty(&m).map_err(|e| Error::Internal(e.to_string()))?;
        crate::io::write_atomic(&out.join(MANIFEST), &json)?;
    }
    let ids: Vec<usize> = match opts.shard_id {
        Some(i) => vec![i],
        None => (0..opts.num_shards).collect(),
    };
    let mut computed = Vec::new();
    let mut skipped = Vec::new();
    let mut records = Vec::new();
    let mut todo = Vec::new();
    for &id in &ids {
        match complete_record(out, id) {
            Some(r) => {
                skipped.push(id);
                records.push(r);
            }
            None => todo.push(id),
        }
    }
    let total: usize = todo
        .iter()
        .map(|&id| shard_range(input.entries.len(), opts.num_shards, id).len())
        .sum();
    let done = std::sync::atomic::AtomicUsize::new(0);
    progress(0, total);
    let start = Instant::now();
    for id in todo {
        let r = run_shard(model, input, out, opts, &m, id, &|k| {
            let d = done.fetch_add(k, std::sync::atomic::Ordering::Relaxed) + k;
            progress(d, total)
        })?;
        computed.push(id);
        records.push(r);
    }
    records.sort_by_key(|r| r.shard);
    let secs = start.elapsed().as_secs_f64();
    let complete = (0..opts.num_shards).all(|id| complete_record(out, id).is_some());
    Ok(Summary {
        manifest: m,
        computed,
        skipped,
        records,
        images_per_s: if secs > 0.0 { total as f64 / secs } else { 0.0 },
        complete,
    })
}

/// The softmax of each row of `k` logits (in f64, as `torch.softmax` of f32 to ~1 ulp).
fn softmax_rows(logits: &[f32], k: usize) -> Vec<f32> {
    logits
        .chunks_exact(k.max(1))
        .flat_map(|row| {
            let lse = crate::train::metrics::log_sum_exp(row);
            row.iter().map(move |&v| (v as f64 - lse).exp() as f32)
        })
        .collect()
}

/// Where a shard's rows go, batch by batch.
trait ShardWriter {
    /// Rows in listing order: an entry and its embedding, or why it failed.
    fn write(&mut self, rows: &[(&Entry, std::result::Result<&[f32], &str>)]) -> Result<()>;
    /// Flush, and move the files into place (atomically, one by one); their names.
    fn finish(self: Box<Self>) -> Result<Vec<String>>;
}

#[allow(clippy::too_many_arguments)]
fn run_shard(
    model: &Model,
    input: &Input,
    out: &Path,
    opts: &ExtractOptions,
    m: &Manifest,
    id: usize,
    progress: &dyn Fn(usize),
) -> Result<ShardRecord> {
    let start = Instant::now();
    let range = shard_range(input.entries.len(), opts.num_shards, id);
    let entries = &input.entries[range.clone()];
    let stem = shard_stem(id);
    // what a killed run of this shard left behind
    if let Ok(d) = fs::read_dir(out) {
        let prefix = format!(".{stem}.");
        for e in d.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let mut writer: Box<dyn ShardWriter> = match opts.format {
        FileFormat::Parquet => Box::new(parquet_io::PartWriter::new(
            out,
            &stem,
            m,
            id,
            input.labelled,
        )?),
        FileFormat::Npy => Box::new(npy::PartWriter::new(out, &stem, m.dim)?),
    };
    let b = model.backbone();
    let pre = model.preprocess();
    let decode = |i: usize| -> crate::features::Decoded {
        let e = &entries[i];
        if let Some(err) = &e.error {
            return Err(err.clone());
        }
        pre.load(&e.path)
            .map(|img| (img, None))
            .map_err(|e| e.to_string())
    };
    let order: Vec<usize> = (0..entries.len()).collect();
    let mut errors = Vec::new();
    let mut forward = |x| opts.target.rows(model, x);
    let dim = m.dim;
    stream(
        &b.device(),
        &order,
        opts.batch_size,
        &decode,
        &mut forward,
        &mut |batch| {
            if batch.dim != 0 && batch.dim != dim {
                return Err(Error::Internal(format!(
                    "{} values per image, {dim} expected",
                    batch.dim
                )));
            }
            // why each image failed (`None`: it did not)
            let why: Vec<Option<String>> = batch
                .items
                .iter()
                .map(|(i, r)| match r {
                    Ok((row, _)) => (!batch.row(*row).iter().all(|v| v.is_finite())).then(|| {
                        format!(
                            "{}: the model's output is not finite (NaN or infinity)",
                            entries[*i].path.display()
                        )
                    }),
                    Err(e) => Some(e.clone()),
                })
                .collect();
            let mut rows = Vec::with_capacity(batch.items.len());
            for ((i, r), w) in batch.items.iter().zip(&why) {
                let e = &entries[*i];
                let r = match (w, r) {
                    (None, Ok((row, _))) => Ok(batch.row(*row)),
                    (Some(w), _) => Err(w.as_str()),
                    (None, Err(w)) => Err(w.as_str()),
                };
                if let Err(w) = r {
                    errors.push(FailedImage {
                        path: e.rel.clone(),
                        error: w.to_string(),
                    });
                }
                rows.push((e, r));
            }
            writer.write(&rows)?;
            progress(batch.items.len());
            Ok(())
        },
    )?;
    let files = writer.finish()?;
    let bytes = files
        .iter()
        .map(|f| {
            let p = out.join(f);
            fs::metadata(&p)
                .map(|m| m.len())
                .map_err(|e| Error::io(&p, e))
        })
        .collect::<Result<Vec<u64>>>()?;
    let record = ShardRecord {
        shard: id,
        first: range.start,
        rows: entries.len(),
        failed: errors.len(),
        files,
        bytes,
        errors,
        seconds: start.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| Error::Internal(e.to_string()))?;
    crate::io::write_atomic(&record_path(out, id), &json)?;
    Ok(record)
}
