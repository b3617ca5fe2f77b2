//! Parquet shards (Arrow's Rust implementation): written a batch at a time (row groups of at
//! most 64 MiB of embeddings, so memory stays flat), merged into one file, read back.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::Float32Type;
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::{complete_record, read_manifest, Entry, FileFormat, Manifest, ShardWriter};
use crate::error::{Error, Result};

/// Embeddings per row group: 64 MiB of them.
fn rows_per_group(dim: usize) -> usize {
    ((64 << 20) / (dim.max(1) * 4)).max(1)
}

fn perr(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {e}", path.display()))
}

/// The file metadata: what produced the numbers.
fn metadata(m: &Manifest, shard: Option<usize>) -> HashMap<String, String> {
    let mut kv = HashMap::new();
    let mut put = |k: &str, v: String| {
        kv.insert(format!("whisker.{k}"), v);
    };
    put("version", m.whisker_version.clone());
    put("backbone", m.backbone.clone());
    put("weights_sha256", m.weights_sha256.clone());
    if let Some(s) = &m.finetuned_model_sha256 {
        put("finetuned_model_sha256", s.clone());
    }
    put("layer", m.layer.clone());
    put("pool", m.pool.clone());
    put("dim", m.dim.to_string());
    put(
        "preprocessing",
        serde_json::to_string(&m.preprocessing).unwrap_or_default(),
    );
    put("input", m.input.clone());
    put("listing_sha256", m.listing_sha256.clone());
    if let Some(c) = &m.classes {
        put("classes", serde_json::to_string(c).unwrap_or_default());
    }
    if let Some(s) = shard {
        put("shard", format!("{s}/{}", m.num_shards));
    }
    kv
}

/// The name of the vectors' column: `embedding`, or `probabilities` for predictions.
fn values_column(m: &Manifest) -> &'static str {
    match m.classes {
        Some(_) => "probabilities",
        None => "embedding",
    }
}

/// The schema of a shard (or of the merged table, `shard` `None`).
pub(super) fn schema(m: &Manifest, shard: Option<usize>) -> SchemaRef {
    let mut fields = vec![Field::new("path", DataType::Utf8, false)];
    if m.labelled {
        fields.push(Field::new("label", DataType::Utf8, true));
    }
    if m.classes.is_some() {
        fields.push(Field::new("prediction", DataType::Utf8, true));
        fields.push(Field::new("probability", DataType::Float32, true));
    }
    fields.push(Field::new(
        values_column(m),
        DataType::FixedSizeList(
            Arc::new(Field::new("item", DataType::Float32, true)),
            m.dim as i32,
        ),
        true,
    ));
    fields.push(Field::new("error", DataType::Utf8, true));
    Arc::new(Schema::new(fields).with_metadata(metadata(m, shard)))
}

fn properties(dim: usize) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        // embeddings do not repeat: a dictionary would only be tried and dropped
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(rows_per_group(dim)))
        .build()
}

/// One shard being written.
pub(super) struct PartWriter {
    tmp: tempfile::NamedTempFile,
    writer: ArrowWriter<fs::File>,
    schema: SchemaRef,
    dest: std::path::PathBuf,
    name: String,
    dim: usize,
    labelled: bool,
    classes: Option<Vec<String>>,
}

impl PartWriter {
    pub fn new(out: &Path, stem: &str, m: &Manifest, shard: usize, labelled: bool) -> Result<Self> {
        let tmp = super::temp(out, stem, "parquet")?;
        let schema = schema(m, Some(shard));
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(|e| Error::io(tmp.path(), e))?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(properties(m.dim)))
            .map_err(|e| perr(tmp.path(), e))?;
        let name = format!("{stem}.parquet");
        Ok(PartWriter {
            dest: out.join(&name),
            tmp,
            writer,
            schema,
            name,
            dim: m.dim,
            labelled,
            classes: m.classes.clone(),
        })
    }
}

/// A record batch of rows (an entry and its vector, or why it failed); with `classes`, the
/// vectors are class probabilities and the most probable class is written too.
pub(super) fn batch(
    schema: &SchemaRef,
    dim: usize,
    labelled: bool,
    classes: Option<&[String]>,
    rows: &[(&Entry, std::result::Result<&[f32], &str>)],
) -> Result<RecordBatch> {
    let mut prediction = StringBuilder::new();
    let mut probability = Vec::with_capacity(rows.len());
    let mut path = StringBuilder::new();
    let mut label = StringBuilder::new();
    let mut error = StringBuilder::new();
    let mut values = Vec::with_capacity(rows.len() * dim);
    let mut valid = Vec::with_capacity(rows.len());
    for (e, r) in rows {
        path.append_value(&e.rel);
        label.append_option(e.label.as_deref());
        match r {
            Ok(v) => {
                values.extend_from_slice(v);
                valid.push(true);
                error.append_null();
                if let Some(c) = classes {
                    // the first of equal maxima, as torch.argmax
                    let best = (0..v.len()).fold(0, |b, j| if v[j] > v[b] { j } else { b });
                    prediction.append_option(c.get(best));
                    probability.push(v.get(best).copied());
                }
            }
            Err(msg) => {
                values.extend(std::iter::repeat_n(0f32, dim));
                valid.push(false);
                error.append_value(msg);
                prediction.append_null();
                probability.push(None);
            }
        }
    }
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let emb = FixedSizeListArray::try_new(
        item,
        dim as i32,
        Arc::new(Float32Array::from(values)),
        Some(valid.into()),
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    let mut cols: Vec<ArrayRef> = vec![Arc::new(path.finish())];
    if labelled {
        cols.push(Arc::new(label.finish()));
    }
    if classes.is_some() {
        cols.push(Arc::new(prediction.finish()));
        cols.push(Arc::new(Float32Array::from(probability)));
    }
    cols.push(Arc::new(emb));
    cols.push(Arc::new(error.finish()));
    RecordBatch::try_new(schema.clone(), cols).map_err(|e| Error::Internal(e.to_string()))
}

impl ShardWriter for PartWriter {
    fn write(&mut self, rows: &[(&Entry, std::result::Result<&[f32], &str>)]) -> Result<()> {
        let b = batch(
            &self.schema,
            self.dim,
            self.labelled,
            self.classes.as_deref(),
            rows,
        )?;
        self.writer.write(&b).map_err(|e| perr(self.tmp.path(), e))
    }

    fn finish(self: Box<Self>) -> Result<Vec<String>> {
        let me = *self;
        me.writer.close().map_err(|e| perr(me.tmp.path(), e))?;
        crate::io::persist(me.tmp, &me.dest)?;
        Ok(vec![me.name])
    }
}

/// A Parquet table read back whole (for tests and small outputs).
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub paths: Vec<String>,
    pub labels: Option<Vec<Option<String>>>,
    /// The most probable class of each row (a table of predictions).
    pub predictions: Option<Vec<Option<String>>>,
    /// The `embedding` column, or a table of predictions' `probabilities`.
    pub embeddings: Vec<Option<Vec<f32>>>,
    pub errors: Vec<Option<String>>,
    pub dim: usize,
    pub metadata: HashMap<String, String>,
}

/// Read a table whisker wrote (or one with the same columns).
pub fn read_parquet_table(path: &Path) -> Result<Table> {
    let f = crate::io::open_regular(path)?;
    let b = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| perr(path, e))?;
    let schema = b.schema().clone();
    let mut t = Table {
        metadata: schema.metadata().clone().into(),
        labels: schema.index_of("label").ok().map(|_| Vec::new()),
        predictions: schema.index_of("prediction").ok().map(|_| Vec::new()),
        ..Default::default()
    };
    for batch in b.build().map_err(|e| perr(path, e))? {
        let batch = batch.map_err(|e| perr(path, e))?;
        let col = |n: &str| {
            batch
                .column_by_name(n)
                .ok_or_else(|| perr(path, format!("no `{n}` column")))
        };
        let strings = |n: &str| -> Result<Vec<Option<String>>> {
            let c = col(n)?;
            let s = c
                .as_string_opt::<i32>()
                .ok_or_else(|| perr(path, format!("`{n}` is not a string column")))?;
            Ok(s.iter().map(|v| v.map(str::to_string)).collect())
        };
        t.paths
            .extend(strings("path")?.into_iter().map(Option::unwrap_or_default));
        if let Some(l) = &mut t.labels {
            l.extend(strings("label")?);
        }
        if let Some(p) = &mut t.predictions {
            p.extend(strings("prediction")?);
        }
        t.errors.extend(strings("error")?);
        let emb = match batch.column_by_name("probabilities") {
            Some(c) => c,
            None => col("embedding")?,
        };
        let emb = emb
            .as_fixed_size_list_opt()
            .ok_or_else(|| perr(path, "`embedding` is not a fixed-size list"))?;
        t.dim = emb.value_length() as usize;
        for i in 0..emb.len() {
            if emb.is_null(i) {
                t.embeddings.push(None);
            } else {
                let v = emb.value(i);
                let v = v
                    .as_primitive_opt::<Float32Type>()
                    .ok_or_else(|| perr(path, "`embedding` does not hold float32"))?;
                t.embeddings.push(Some(v.values().to_vec()));
            }
        }
    }
    Ok(t)
}

/// What [`merge`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub rows: usize,
    pub failed: usize,
    pub files: Vec<std::path::PathBuf>,
}

/// Concatenate the shards of the complete extraction in `out` (in listing order) into `dest`
/// (Parquet: one file; NumPy: `dest` and its `.csv` index), atomically. Streams: memory holds
/// one row group at a time.
pub fn merge(out: &Path, dest: &Path) -> Result<Merged> {
    let m = read_manifest(out)?.ok_or_else(|| {
        Error::Invalid(format!(
            "{}: no whisker extraction here (no {})",
            out.display(),
            super::MANIFEST
        ))
    })?;
    let mut records = Vec::new();
    let mut missing = Vec::new();
    for id in 0..m.num_shards {
        match complete_record(out, id) {
            Some(r) => records.push(r),
            None => missing.push(id),
        }
    }
    if !missing.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: {} of {} shards are not complete yet ({}): run them first",
            out.display(),
            missing.len(),
            m.num_shards,
            missing
                .iter()
                .take(10)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let stem = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "merged".into());
    let rows = records.iter().map(|r| r.rows).sum();
    let failed = records.iter().map(|r| r.failed).sum();
    match m.format {
        FileFormat::Parquet => {
            let tmp = super::temp(dir, &stem, "parquet")?;
            let schema = schema(&m, None);
            let file = tmp.as_file().try_clone().map_err(|e| Error::io(dest, e))?;
            let mut w = ArrowWriter::try_new(file, schema.clone(), Some(properties(m.dim)))
                .map_err(|e| perr(dest, e))?;
            for r in &records {
                let p = out.join(&r.files[0]);
                let f = crate::io::open_regular(&p)?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(f)
                    .and_then(|b| b.build())
                    .map_err(|e| perr(&p, e))?;
                for b in reader {
                    let b = b.map_err(|e| perr(&p, e))?;
                    let b = RecordBatch::try_new(schema.clone(), b.columns().to_vec())
                        .map_err(|e| perr(&p, e))?;
                    w.write(&b).map_err(|e| perr(dest, e))?;
                }
            }
            w.close().map_err(|e| perr(dest, e))?;
            crate::io::persist(tmp, dest)?;
            Ok(Merged {
                rows,
                failed,
                files: vec![dest.to_path_buf()],
            })
        }
        FileFormat::Npy => {
            let files = super::npy::merge(out, &records, m.dim, dest)?;
            Ok(Merged {
                rows,
                failed,
                files,
            })
        }
    }
}
