//! Weight files: reading checkpoints (torch zip, legacy torch pickle, safetensors) into a
//! [`StateDict`], strict loading into modules ([`Loader`]), checkpoint key mapping (timm →
//! torchvision / lukemelas names), deterministic formula weights for tests. The weights
//! cache, which needs the backbones, is [`crate::cache`].

pub mod formula;
pub mod keymap;

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::Path;

use burn::module::{Param, ParamId};
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};

/// One tensor of a checkpoint, converted to f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The tensors of a checkpoint, by key.
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    /// Where the tensors came from (a path, or a description), for error messages.
    pub source: String,
    pub tensors: BTreeMap<String, RawTensor>,
}

/// Which container a checkpoint file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    TorchZip,
    TorchLegacy,
    Safetensors,
}

/// Detect the container of a checkpoint from its first bytes.
pub fn sniff(path: &Path) -> Result<FileKind> {
    let mut f = crate::io::open_regular(path)?;
    let mut head = [0u8; 16];
    let mut n = 0;
    while n < head.len() {
        let r = f.read(&mut head[n..]).map_err(|e| Error::io(path, e))?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let not = |reason: &str| Error::NotACheckpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if n == 0 {
        return Err(not("the file is empty"));
    }
    if n >= 4 && &head[..4] == b"PK\x03\x04" {
        return Ok(FileKind::TorchZip);
    }
    if head[0] == 0x80 && n >= 2 && head[1] <= 5 {
        return Ok(FileKind::TorchLegacy);
    }
    if n >= 9 {
        let len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if head[8] == b'{' && len > 1 && len < 100 << 20 {
            return Ok(FileKind::Safetensors);
        }
    }
    Err(not(
        "it is neither a PyTorch checkpoint (zip or legacy pickle) nor a safetensors file",
    ))
}

impl StateDict {
    /// Read a checkpoint file. The container is detected from the content, not the extension.
    /// Reading a torch pickle never runs code: only tensors, dicts, lists, tuples and
    /// primitives are understood; anything else is refused.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_file_as(path, path)
    }

    /// [`StateDict::from_file`] of `path`, with errors and the source naming `shown` (the
    /// user's file, when `path` is a temporary copy of it).
    ///
    /// Every size the file declares (zip entries, tensor storages) is checked against the
    /// file's real size before anything of that size is allocated: a 4 MB file declaring
    /// 4 GB is refused, not allocated.
    pub fn from_file_as(path: &Path, shown: &Path) -> Result<Self> {
        let rename = |e: Error| rename_in_error(e, path, shown);
        Self::read(path, shown).map_err(rename)
    }

    fn read(path: &Path, shown: &Path) -> Result<Self> {
        let kind = sniff(path)?;
        let source = shown.display().to_string();
        let file_len = crate::io::open_regular(path)?
            .metadata()
            .map_err(|e| Error::io(path, e))?
            .len();
        let not = |reason: String| Error::NotACheckpoint {
            path: path.to_path_buf(),
            reason,
        };
        let mut tensors = BTreeMap::new();
        match kind {
            FileKind::Safetensors => {
                let bytes = crate::io::read_regular(path, crate::io::MAX_WEIGHTS_FILE)?;
                let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
                    Error::NotACheckpoint {
                        path: path.to_path_buf(),
                        reason: format!("invalid safetensors: {e}"),
                    }
                })?;
                verify_checksum(path, &st, &bytes)?;
                for (name, view) in st.tensors() {
                    let data = safetensors_to_f32(&source, &name, &view)?;
                    tensors.insert(
                        name.to_string(),
                        RawTensor {
                            shape: view.shape().to_vec(),
                            data,
                        },
                    );
                }
            }
            FileKind::TorchZip | FileKind::TorchLegacy => {
                if kind == FileKind::TorchZip {
                    check_zip_sizes(path, file_len).map_err(not)?;
                }
                // (kept alive while the tensors are read from it)
                let mut _repacked = None;
                let reader = match pytorch_reader::PytorchReader::new(path) {
                    Ok(r) => r,
                    // The zip reader of PyTorch's loader misreads some well-formed archives
                    // PyTorch writes (an archive folder name of 21 characters: a file
                    // `convnext_tiny_formula.pth` — the folder is the file's stem when saved);
                    // the same entries under another folder name read.
                    Err(pytorch_reader::PytorchError::Zip(first)) if kind == FileKind::TorchZip => {
                        let tmp = repack_torch_zip(path).map_err(|e| {
                            not(format!("zip archive error: {first}; rewriting it: {e}"))
                        })?;
                        let r = pytorch_reader::PytorchReader::new(tmp.path()).map_err(|e| {
                            not(format!("zip archive error: {first}; rewritten: {e}"))
                        })?;
                        _repacked = Some(tmp);
                        r
                    }
                    Err(e) => return Err(not(e.to_string())),
                };
                for (name, t) in reader.tensors() {
                    if name.ends_with("num_batches_tracked") {
                        continue;
                    }
                    // its storage lies in the file: no larger than the file
                    let declared = t
                        .shape()
                        .iter()
                        .try_fold(t.dtype().size() as u64, |a, &d| a.checked_mul(d as u64));
                    if declared.is_none_or(|n| n > file_len) {
                        return Err(not(format!(
                            "tensor `{name}` declares shape {:?} of {:?}, more bytes than the whole file ({file_len}): a damaged or hostile file",
                            t.shape(),
                            t.dtype()
                        )));
                    }
                    let bytes = t.read().map_err(|e| Error::NotACheckpoint {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })?;
                    let data = torch_to_f32(&source, name, t.dtype(), &bytes)?;
                    tensors.insert(
                        name.clone(),
                        RawTensor {
                            shape: t.shape().to_vec(),
                            data,
                        },
                    );
                }
            }
        }
        tensors.retain(|k, _| !k.ends_with("num_batches_tracked"));
        if tensors.is_empty() {
            return Err(Error::NotACheckpoint {
                path: path.to_path_buf(),
                reason: "it holds no tensors".into(),
            });
        }
        if let Some(reason) = non_finite(&tensors) {
            return Err(Error::NotACheckpoint {
                path: path.to_path_buf(),
                reason,
            });
        }
        let mut sd = StateDict { source, tensors };
        sd.strip_wrapper_prefixes();
        Ok(sd)
    }

    /// Checkpoints saved as `{"state_dict": ...}`, `{"model": ...}` or from a
    /// `DataParallel` module carry a common prefix: remove it.
    fn strip_wrapper_prefixes(&mut self) {
        for prefix in ["state_dict.", "model_state_dict.", "model.", "module."] {
            if self.tensors.keys().all(|k| k.starts_with(prefix)) {
                self.tensors = std::mem::take(&mut self.tensors)
                    .into_iter()
                    .map(|(k, v)| (k[prefix.len()..].to_string(), v))
                    .collect();
            }
        }
    }

    /// Write the tensors as a safetensors file (f32), atomically.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), f32_to_le(&t.data), t.shape.clone()))
            .collect();
        let out = serialize_f32(&bytes, None)?;
        crate::io::write_atomic(path, &out)
    }

    /// Total number of scalar values.
    pub fn num_values(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }
}

/// The entries of the PyTorch zip archive `path`, copied as they are (stored, not
/// recompressed) into a new archive in the temporary directory under the folder name
/// `archive/` instead of the one PyTorch gave them.
fn repack_torch_zip(path: &Path) -> std::result::Result<tempfile::NamedTempFile, String> {
    let f = crate::io::open_regular(path).map_err(|e| e.to_string())?;
    let mut z = zip::ZipArchive::new(f).map_err(|e| format!("not a readable zip archive: {e}"))?;
    let tmp = tempfile::Builder::new()
        .prefix("whisker-checkpoint-")
        .suffix(".pth")
        .tempfile()
        .map_err(|e| format!("a temporary file: {e}"))?;
    let out = tmp.reopen().map_err(|e| format!("a temporary file: {e}"))?;
    let mut w = zip::ZipWriter::new(std::io::BufWriter::new(out));
    // entries that share their bytes (a hostile archive) would make the copy larger than the
    // file: what is copied stays within the file's length
    let file_len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let mut copied = 0u64;
    for i in 0..z.len() {
        let e = z
            .by_index_raw(i)
            .map_err(|e| format!("zip entry {i}: {e}"))?;
        copied = copied.saturating_add(e.compressed_size());
        if copied > file_len {
            return Err(format!(
                "its entries declare more bytes than the whole file ({file_len}): entries overlap"
            ));
        }
        let rest = match e.name().split_once('/') {
            Some((_, rest)) => rest.to_string(),
            None => e.name().to_string(),
        };
        w.raw_copy_file_rename(e, format!("archive/{rest}"))
            .map_err(|e| format!("copying zip entry {i}: {e}"))?;
    }
    w.finish()
        .map_err(|e| format!("writing the temporary archive: {e}"))?;
    Ok(tmp)
}

/// Every entry of a PyTorch zip archive declares no more bytes than the archive holds
/// (PyTorch stores its entries uncompressed): a small archive declaring gigabytes is a zip
/// bomb, refused before any entry is read.
fn check_zip_sizes(path: &Path, file_len: u64) -> std::result::Result<(), String> {
    let f = crate::io::open_regular(path).map_err(|e| e.to_string())?;
    let mut z = zip::ZipArchive::new(f).map_err(|e| format!("not a readable zip archive: {e}"))?;
    for i in 0..z.len() {
        let e = z
            .by_index_raw(i)
            .map_err(|e| format!("zip entry {i}: {e}"))?;
        if e.size() > file_len {
            return Err(format!(
                "zip entry `{}` declares {} bytes, more than the whole file ({file_len} bytes): a zip bomb?",
                e.name(),
                e.size()
            ));
        }
    }
    Ok(())
}

/// An error about `from` (a temporary copy) made to name `to` (the user's file).
fn rename_in_error(e: Error, from: &Path, to: &Path) -> Error {
    if from == to {
        return e;
    }
    let (fs, ts) = (from.display().to_string(), to.display().to_string());
    let fix = |p: std::path::PathBuf| if p == from { to.to_path_buf() } else { p };
    match e {
        Error::NotACheckpoint { path, reason } => Error::NotACheckpoint {
            path: fix(path),
            reason: reason.replace(&fs, &ts),
        },
        Error::Io { path, error } => Error::Io {
            path: fix(path),
            error,
        },
        Error::Corrupt { path, reason } => Error::Corrupt {
            path: fix(path),
            reason: reason.replace(&fs, &ts),
        },
        Error::Checksum {
            path,
            algorithm,
            expected,
            actual,
        } => Error::Checksum {
            path: fix(path),
            algorithm,
            expected,
            actual,
        },
        other => other,
    }
}

/// A description of the first tensor holding NaN or infinity, if any: such weights make
/// every output NaN, so they are refused when read.
pub fn non_finite(tensors: &BTreeMap<String, RawTensor>) -> Option<String> {
    tensors
        .iter()
        .find_map(|(k, t)| non_finite_tensor(k, &t.data))
}

/// The same check for one tensor's values.
pub fn non_finite_tensor(key: &str, data: &[f32]) -> Option<String> {
    let bad = data.iter().filter(|v| !v.is_finite()).count();
    (bad > 0).then(|| {
        format!(
            "tensor `{key}` holds {bad} non-finite value(s) (NaN or infinity) of {}",
            data.len()
        )
    })
}

/// The floating-point element types checkpoints store.
#[derive(Debug, Clone, Copy)]
enum Float {
    F32,
    F64,
    F16,
    BF16,
}

/// Little-endian values of `kind` as f32.
fn floats_to_f32(kind: Float, bytes: &[u8]) -> Vec<f32> {
    match kind {
        Float::F32 => f32_from_le(bytes),
        Float::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Float::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Float::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

fn unsupported(source: &str, key: &str, dtype: impl std::fmt::Debug) -> Error {
    Error::UnsupportedDtype {
        source_name: source.to_string(),
        key: key.to_string(),
        dtype: format!("{dtype:?}"),
    }
}

fn torch_to_f32(
    source: &str,
    key: &str,
    dtype: pytorch_reader::DType,
    bytes: &[u8],
) -> Result<Vec<f32>> {
    use pytorch_reader::DType as D;
    let kind = match dtype {
        D::F32 => Float::F32,
        D::F64 => Float::F64,
        D::F16 => Float::F16,
        D::BF16 => Float::BF16,
        other => return Err(unsupported(source, key, other)),
    };
    Ok(floats_to_f32(kind, bytes))
}

fn safetensors_to_f32(
    source: &str,
    key: &str,
    view: &safetensors::tensor::TensorView<'_>,
) -> Result<Vec<f32>> {
    use safetensors::Dtype as D;
    let kind = match view.dtype() {
        D::F32 => Float::F32,
        D::F64 => Float::F64,
        D::F16 => Float::F16,
        D::BF16 => Float::BF16,
        D::I64 if key.ends_with("num_batches_tracked") => return Ok(Vec::new()),
        other => return Err(unsupported(source, key, other)),
    };
    Ok(floats_to_f32(kind, view.data()))
}

/// f32 values as little-endian bytes.
pub fn f32_to_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Little-endian bytes as f32 values.
pub fn f32_from_le(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The metadata key of whisker's content checksum in the safetensors files it writes.
pub const CHECKSUM_KEY: &str = "whisker.sha256";

/// sha256 over a safetensors file's metadata (sorted, without the checksum itself) and its
/// tensors (sorted by name: name, shape, bytes). Independent of the header's layout.
fn content_digest<'a>(
    metadata: impl Iterator<Item = (&'a String, &'a String)>,
    tensors: &mut [(&'a str, &'a [usize], &'a [u8])],
) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut md: Vec<(&String, &String)> = metadata.filter(|(k, _)| *k != CHECKSUM_KEY).collect();
    md.sort();
    for (k, v) in md {
        for part in [k.as_bytes(), &[0], v.as_bytes(), &[0]] {
            h.update(part);
        }
    }
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    for (name, shape, data) in tensors.iter() {
        h.update(name.as_bytes());
        h.update([0]);
        for d in shape.iter() {
            h.update((*d as u64).to_le_bytes());
        }
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    hex::encode(h.finalize())
}

/// Serialise f32 tensors `(name, little-endian bytes, shape)` as safetensors, with optional
/// metadata and always a content checksum ([`CHECKSUM_KEY`]), so that a file with flipped or
/// missing bytes is refused when read back ([`verify_checksum`]).
pub fn serialize_f32(
    tensors: &[(String, Vec<u8>, Vec<usize>)],
    metadata: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut metadata = metadata.unwrap_or_default();
    let mut parts: Vec<(&str, &[usize], &[u8])> = tensors
        .iter()
        .map(|(k, b, s)| (k.as_str(), s.as_slice(), b.as_slice()))
        .collect();
    let digest = content_digest(metadata.iter(), &mut parts);
    metadata.insert(CHECKSUM_KEY.to_string(), digest);
    let views = tensors
        .iter()
        .map(|(k, b, s)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (k.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(format!("safetensors: {e}")))?;
    safetensors::serialize(views, &Some(metadata))
        .map_err(|e| Error::Internal(format!("safetensors: {e}")))
}

/// Check the content checksum of a safetensors file written by whisker. `Ok(true)`: present
/// and right; `Ok(false)`: the file has none (not written by whisker, or by an older version);
/// an error naming the file when it does not match (corrupt bytes).
pub fn verify_checksum(
    path: &Path,
    st: &safetensors::SafeTensors<'_>,
    bytes: &[u8],
) -> Result<bool> {
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::NotACheckpoint {
            path: path.to_path_buf(),
            reason: format!("invalid safetensors: {e}"),
        })?;
    let Some(md) = header.metadata() else {
        return Ok(false);
    };
    let Some(want) = md.get(CHECKSUM_KEY) else {
        return Ok(false);
    };
    let tensors = st.tensors();
    let mut parts: Vec<(&str, &[usize], &[u8])> = tensors
        .iter()
        .map(|(k, v)| (k.as_str(), v.shape(), v.data()))
        .collect();
    let got = content_digest(md.iter(), &mut parts);
    if &got != want {
        return Err(Error::NotACheckpoint {
            path: path.to_path_buf(),
            reason: "its content checksum does not match: the file is corrupt (changed or damaged bytes)".into(),
        });
    }
    Ok(true)
}

enum Source {
    Dict(StateDict),
    /// Formula weights, except the tensors given.
    Formula(StateDict),
}

/// Strict, key-by-key loading of a checkpoint into an architecture.
///
/// An architecture asks for each tensor by its checkpoint key and expected shape; the
/// loader checks the shape, records missing keys (all of them, not just the first) and, in
/// [`Loader::finish`], reports the keys the checkpoint has that nobody asked for.
pub struct Loader {
    src: Source,
    model: String,
    device: Device,
    used: HashSet<String>,
    missing: Vec<String>,
    count: usize,
    unit: usize,
    /// Every parameter handed out, in loading order.
    pub params: Vec<ParamInfo>,
    /// Names of the units (stem, blocks, head…) in network order.
    pub units: Vec<String>,
}

/// Where a parameter came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    pub id: ParamId,
    /// Its checkpoint key.
    pub key: String,
    /// Index into [`Loader::units`].
    pub unit: usize,
    /// Stored transposed (a linear weight: checkpoint `[out, in]`, burn `[in, out]`).
    pub transposed: bool,
    /// A BatchNorm running statistic: never trained.
    pub buffer: bool,
}

/// The parameter id of a checkpoint key: a hash of the model name and the key, so that the
/// same architecture always gets the same ids (optimiser state saved with a checkpoint then
/// matches the parameters of a reloaded model).
pub fn param_id(model: &str, key: &str) -> ParamId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in model.bytes().chain([0u8]).chain(key.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    ParamId::from(h)
}

impl Loader {
    /// Load from a state dict.
    pub fn new(sd: StateDict, model: &str, device: &Device) -> Self {
        Loader {
            src: Source::Dict(sd),
            model: model.to_string(),
            device: device.clone(),
            used: HashSet::new(),
            missing: Vec::new(),
            count: 0,
            unit: 0,
            params: Vec::new(),
            units: vec!["stem".into()],
        }
    }

    /// Start a new unit (a block of the network): the parameters loaded from now on belong
    /// to it. Fine-tuning unfreezes the last units first.
    pub fn begin_unit(&mut self, name: &str) {
        self.units.push(name.to_string());
        self.unit = self.units.len() - 1;
    }

    /// Deterministic formula weights (see [`formula`]), the same values the Python reference
    /// generator computes.
    pub fn formula(model: &str, device: &Device) -> Self {
        let none = StateDict {
            source: "formula weights".into(),
            tensors: BTreeMap::new(),
        };
        Self::formula_except(model, none, device)
    }

    /// Formula weights, except the tensors of `given` (BatchNorm statistics measured on real
    /// images, say): each must be asked for, with its shape ([`Loader::finish`] checks).
    pub fn formula_except(model: &str, given: StateDict, device: &Device) -> Self {
        Loader {
            src: Source::Formula(given),
            model: model.to_string(),
            device: device.clone(),
            used: HashSet::new(),
            missing: Vec::new(),
            count: 0,
            unit: 0,
            params: Vec::new(),
            units: vec!["stem".into()],
        }
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of scalar parameters handed out so far (BatchNorm running statistics excluded).
    pub fn num_params(&self) -> usize {
        self.count
    }

    /// Whether the checkpoint holds `key` (formula weights hold every key): for parts a
    /// checkpoint may leave out (DINOv2's ImageNet linear head).
    pub fn has(&self, key: &str) -> bool {
        match &self.src {
            Source::Formula(_) => true,
            Source::Dict(sd) => sd.tensors.contains_key(key),
        }
    }

    /// The values of `key`, checked against `shape`, in checkpoint (row-major) layout.
    pub fn values(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        match &mut self.src {
            Source::Formula(given) if !given.tensors.contains_key(key) => {
                Ok(formula::formula(key, shape))
            }
            Source::Dict(sd) | Source::Formula(sd) => match sd.tensors.get(key) {
                None => {
                    self.missing.push(key.to_string());
                    Ok(vec![0.0; n])
                }
                Some(t) => {
                    // A 1x1 conv saved as a linear (or the reverse) is still a mismatch: be strict.
                    if t.shape != shape {
                        return Err(Error::ShapeMismatch {
                            source_name: sd.source.clone(),
                            model: self.model.clone(),
                            key: key.to_string(),
                            expected: shape.to_vec(),
                            found: t.shape.clone(),
                        });
                    }
                    self.used.insert(key.to_string());
                    Ok(t.data.clone())
                }
            },
        }
    }

    /// A tensor of rank `D`.
    pub fn tensor<const D: usize>(&mut self, key: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let v = self.values(key, &shape)?;
        if !key.ends_with("running_mean") && !key.ends_with("running_var") {
            self.count += v.len();
        }
        Ok(Tensor::from_data(TensorData::new(v, shape), &self.device))
    }

    /// A trainable parameter.
    pub fn param<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
    ) -> Result<Param<Tensor<D>>> {
        let t = self.tensor(key, shape)?;
        Ok(self.register(key, t, false, false))
    }

    fn register<const D: usize>(
        &mut self,
        key: &str,
        t: Tensor<D>,
        transposed: bool,
        buffer: bool,
    ) -> Param<Tensor<D>> {
        let id = param_id(&self.model, key);
        self.params.push(ParamInfo {
            id,
            key: key.to_string(),
            unit: self.unit,
            transposed,
            buffer,
        });
        Param::initialized(id, t)
    }

    /// A buffer (BatchNorm running statistics): never trained.
    pub fn buffer<const D: usize>(
        &mut self,
        key: &str,
        shape: [usize; D],
    ) -> Result<Param<Tensor<D>>> {
        let t = self.tensor(key, shape)?;
        Ok(self.register(key, t, false, true).set_require_grad(false))
    }

    /// A linear layer's weight: checked in torch's `[out, in]` layout, returned as burn's
    /// `[in, out]`.
    pub fn linear_weight(&mut self, key: &str, out: usize, inp: usize) -> Result<Param<Tensor<2>>> {
        let t = self.tensor(key, [out, inp])?;
        Ok(self.register(key, t.transpose(), true, false))
    }

    /// Finish: fail if keys were missing or the checkpoint holds keys nobody asked for.
    pub fn finish(self) -> Result<()> {
        let (Source::Dict(sd) | Source::Formula(sd)) = self.src;
        let unexpected: Vec<String> = sd
            .tensors
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect();
        if !self.missing.is_empty() || !unexpected.is_empty() {
            return Err(Error::KeyMismatch {
                source_name: sd.source,
                model: self.model,
                missing: self.missing,
                unexpected,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn u16_at(b: &[u8], i: usize) -> usize {
        u16::from_le_bytes([b[i], b[i + 1]]) as usize
    }

    fn u32_at(b: &[u8], i: usize) -> usize {
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize
    }

    /// A hostile archive whose central directory lists eight entries at the same bytes (each
    /// 4 KiB, the file ~5 KiB): rewriting it (the 21-character folder name's repack) stops at
    /// the second entry instead of copying 8× the file, and says why.
    #[test]
    fn a_repack_refuses_entries_that_share_their_bytes() {
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            w.start_file("abcdefghijklmnopqrstu/data/0", opts).unwrap();
            w.write_all(&[7u8; 4096]).unwrap();
            w.finish().unwrap();
        }
        let z = buf.into_inner();
        let eocd = z.len() - 22;
        assert_eq!(u32_at(&z, eocd), 0x0605_4b50, "end of central directory");
        let (cd_size, cd_off) = (u32_at(&z, eocd + 12), u32_at(&z, eocd + 16));
        let record = &z[cd_off..cd_off + cd_size];
        assert_eq!(
            u32_at(record, 0),
            0x0201_4b50,
            "one central directory record"
        );
        let k = 8;
        let mut out = z[..cd_off].to_vec();
        for i in 0..k {
            // another name of the same length, the same local header
            let mut r = record.to_vec();
            let name_end = 46 + u16_at(&r, 28);
            r[name_end - 1] = b'0' + i as u8;
            out.extend_from_slice(&r);
        }
        let mut end = z[eocd..].to_vec();
        end[8..10].copy_from_slice(&(k as u16).to_le_bytes());
        end[10..12].copy_from_slice(&(k as u16).to_le_bytes());
        end[12..16].copy_from_slice(&((cd_size * k) as u32).to_le_bytes());
        out.extend_from_slice(&end);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shared.pth");
        std::fs::write(&p, &out).unwrap();
        let err = repack_torch_zip(&p).unwrap_err();
        assert!(err.contains("entries overlap"), "{err}");
        // the same archive with one entry is rewritten
        let one = dir.path().join("one.pth");
        std::fs::write(&one, &z).unwrap();
        let tmp = repack_torch_zip(&one).unwrap();
        let names: Vec<String> = zip::ZipArchive::new(std::fs::File::open(tmp.path()).unwrap())
            .unwrap()
            .file_names()
            .map(str::to_string)
            .collect();
        assert_eq!(names, ["archive/data/0"]);
    }
}
