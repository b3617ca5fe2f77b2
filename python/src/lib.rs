//! `whisker._native`: the library's models for Python. A `Model` takes a uint8 NumPy batch
//! (`N×H×W×3` or one `H×W×3` image, RGB), a list of paths, or a list of encoded image bytes,
//! and returns float32 NumPy arrays: features (the feature vector or a layer pooled) or class
//! probabilities. The GIL is released while images decode and the model runs; each model
//! computes on its own thread pool when given a thread count (a Ray or Spark worker's CPU
//! budget); a model pickles as the arguments that built it.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Mutex;

use image::RgbImage;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple};
use whisker::extract::Target;
use whisker::features::{Output, Pool};

fn py_err(e: whisker::Error) -> PyErr {
    use whisker::Error as E;
    let msg = e.to_string();
    match e {
        E::Io { .. } | E::WeightsNotCached { .. } | E::Download { .. } => PyOSError::new_err(msg),
        E::Invalid(_)
        | E::Dataset { .. }
        | E::Decode { .. }
        | E::UnknownBackbone { .. }
        | E::NotACheckpoint { .. }
        | E::KeyMismatch { .. }
        | E::ShapeMismatch { .. } => PyValueError::new_err(msg),
        _ => PyRuntimeError::new_err(msg),
    }
}

/// How a model was made: what pickling carries.
#[derive(Clone)]
enum Origin {
    Pretrained {
        name: String,
        weights: Option<PathBuf>,
    },
    Run(PathBuf),
}

/// One image given from Python.
enum Source {
    Path(PathBuf),
    Bytes(Vec<u8>),
    Pixels(RgbImage),
}

/// A zoo backbone (a feature extractor, with its ImageNet classifier when the checkpoint has
/// one) or a model trained with whisker.
#[pyclass(module = "whisker._native", frozen)]
struct Model {
    inner: whisker::model::Model,
    origin: Origin,
    threads: Option<usize>,
    pool: Option<rayon::ThreadPool>,
    /// Values per image of each layer target asked for so far.
    dims: Mutex<Vec<(Target, usize)>>,
}

fn thread_pool(threads: Option<usize>) -> PyResult<Option<rayon::ThreadPool>> {
    match threads {
        None => Ok(None),
        Some(0) | Some(4097..) => Err(PyValueError::new_err(
            "threads must be between 1 and 4096 (or None: all cores)",
        )),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map(Some)
            .map_err(|e| PyRuntimeError::new_err(e.to_string())),
    }
}

impl Model {
    fn make(py: Python<'_>, origin: Origin, threads: Option<usize>) -> PyResult<Self> {
        let pool = thread_pool(threads)?;
        let o = origin.clone();
        let build = move || -> whisker::Result<whisker::model::Model> {
            let device = whisker::default_device();
            Ok(match &o {
                Origin::Pretrained { name, weights } => {
                    whisker::model::Model::extractor(name, weights.as_deref(), &device)?
                }
                Origin::Run(p) => whisker::model::Model::load(p, &device)?,
            }
            .for_inference())
        };
        let inner = py
            .detach(|| match &pool {
                Some(p) => p.install(build),
                None => build(),
            })
            .map_err(py_err)?;
        Ok(Model {
            inner,
            origin,
            threads,
            pool,
            dims: Mutex::new(Vec::new()),
        })
    }

    fn install<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    fn target_dim(&self, target: &Target) -> whisker::Result<usize> {
        let mut dims = self.dims.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, d)) = dims.iter().find(|(t, _)| t == target) {
            return Ok(*d);
        }
        let d = target.dim(&self.inner)?;
        dims.push((target.clone(), d));
        Ok(d)
    }

    /// Decode, preprocess and run `sources` through `target`, `batch` at a time: row-major
    /// `[n, dim]` (failed rows NaN) and each image's error.
    fn compute(
        &self,
        sources: &[Source],
        target: &Target,
        batch: usize,
        cropped: bool,
    ) -> whisker::Result<(Vec<f32>, usize, Vec<Option<String>>)> {
        let dim = self.target_dim(target)?;
        let n = sources.len();
        let mut out = vec![f32::NAN; n * dim];
        let mut errors: Vec<Option<String>> = vec![None; n];
        let pre = self.inner.preprocess();
        let crop = pre.crop as u32;
        let decode = |i: usize| -> whisker::features::Decoded {
            // one way for every source: decode (paths and bytes), then either check the size
            // (`cropped`) or resize and crop as the weights expect
            let img: Cow<'_, RgbImage> = match &sources[i] {
                Source::Path(p) => {
                    Cow::Owned(whisker::data::decode::decode_file(p).map_err(|e| e.to_string())?)
                }
                Source::Bytes(b) => Cow::Owned(
                    whisker::data::decode::decode_bytes(b)
                        .map_err(|e| format!("image {i}: cannot decode image: {e}"))?,
                ),
                Source::Pixels(img) => Cow::Borrowed(img),
            };
            if !cropped {
                return Ok((pre.apply(&img), None));
            }
            if img.dimensions() != (crop, crop) {
                let name = match &sources[i] {
                    Source::Path(p) => p.display().to_string(),
                    _ => format!("image {i}"),
                };
                return Err(format!(
                    "{name}: {}×{} pixels, but cropped=True needs the model's input size {crop}×{crop}",
                    img.width(),
                    img.height()
                ));
            }
            Ok((img.into_owned(), None))
        };
        let order: Vec<usize> = (0..n).collect();
        let device = self.inner.backbone().device();
        let mut forward = |x| target.rows(&self.inner, x);
        whisker::features::stream(&device, &order, batch, &decode, &mut forward, &mut |b| {
            for (i, r) in &b.items {
                match r {
                    Ok((row, _)) => out[i * dim..(i + 1) * dim].copy_from_slice(b.row(*row)),
                    Err(e) => errors[*i] = Some(e.clone()),
                }
            }
            Ok(())
        })?;
        for (i, e) in errors.iter_mut().enumerate() {
            if e.is_none() && out[i * dim..(i + 1) * dim].iter().any(|v| !v.is_finite()) {
                *e = Some(format!(
                    "image {i}: the model's output is not finite (NaN or infinity)"
                ));
            }
        }
        Ok((out, dim, errors))
    }

    /// `images` → sources, and `compute` with the GIL released; the array (and errors).
    #[allow(clippy::too_many_arguments)]
    fn run<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        target: Target,
        batch_size: usize,
        cropped: bool,
        errors: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !(1..=4096).contains(&batch_size) {
            return Err(PyValueError::new_err(
                "batch_size must be between 1 and 4096",
            ));
        }
        let keep = match errors {
            "raise" => false,
            "return" => true,
            e => {
                return Err(PyValueError::new_err(format!(
                    "errors={e:?}: \"raise\" (the first failed image raises) or \"return\" (returns (array, errors), failed rows NaN)"
                )))
            }
        };
        let sources = sources(py, images)?;
        let (rows, dim, errs) = py
            .detach(|| self.install(|| self.compute(&sources, &target, batch_size, cropped)))
            .map_err(py_err)?;
        if !keep {
            if let Some(e) = errs.iter().flatten().next() {
                return Err(PyValueError::new_err(e.clone()));
            }
        }
        let array = to_numpy(py, &rows, sources.len(), dim)?;
        if keep {
            let list = PyList::new(py, errs)?;
            Ok(PyTuple::new(py, [array, list.into_any()])?.into_any())
        } else {
            Ok(array)
        }
    }
}

/// A writable float32 array `[n, dim]` over a copy of `rows`.
fn to_numpy<'py>(
    py: Python<'py>,
    rows: &[f32],
    n: usize,
    dim: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    let buf = PyByteArray::new(py, &bytes);
    let np = py.import("numpy")?;
    let a = np.call_method1("frombuffer", (buf, "<f4"))?;
    a.call_method1("reshape", ((n, dim),))
}

/// The images of a call: a uint8 array (`N×H×W×3` or `H×W×3`), a path, encoded bytes, or a
/// list of paths, encoded bytes and `H×W×3` arrays.
fn sources(py: Python<'_>, images: &Bound<'_, PyAny>) -> PyResult<Vec<Source>> {
    if images.hasattr("__array_interface__")? {
        let shape: Vec<usize> = images.getattr("shape")?.extract()?;
        return match shape[..] {
            [_, _, 3] => Ok(vec![Source::Pixels(pixels(images, 1)?.remove(0))]),
            [n, _, _, 3] => Ok(pixels(images, n)?.into_iter().map(Source::Pixels).collect()),
            _ => Err(PyValueError::new_err(format!(
                "an image array is N×H×W×3 or H×W×3 (RGB, uint8), not {shape:?}"
            ))),
        };
    }
    if images.is_instance_of::<PyString>()
        || images.is_instance_of::<PyBytes>()
        || images.hasattr("__fspath__")?
    {
        return Ok(vec![source(py, images, 0)?]);
    }
    let mut v = Vec::new();
    for (i, item) in images
        .try_iter()
        .map_err(|_| {
            PyTypeError::new_err("images: a uint8 array, or a list of paths, bytes or arrays")
        })?
        .enumerate()
    {
        v.push(source(py, &item?, i)?);
    }
    Ok(v)
}

fn source(py: Python<'_>, item: &Bound<'_, PyAny>, i: usize) -> PyResult<Source> {
    if let Ok(b) = item.cast::<PyBytes>() {
        return Ok(Source::Bytes(b.as_bytes().to_vec()));
    }
    if let Ok(b) = item.cast::<PyByteArray>() {
        return Ok(Source::Bytes(b.to_vec()));
    }
    if item.is_instance_of::<PyString>() {
        return Ok(Source::Path(PathBuf::from(item.extract::<String>()?)));
    }
    if item.hasattr("__fspath__")? {
        let p = py.import("os")?.call_method1("fspath", (item,))?;
        return Ok(Source::Path(PathBuf::from(p.extract::<String>()?)));
    }
    if item.hasattr("__array_interface__")? {
        let shape: Vec<usize> = item.getattr("shape")?.extract()?;
        if let [_, _, 3] = shape[..] {
            return Ok(Source::Pixels(pixels(item, 1)?.remove(0)));
        }
        return Err(PyValueError::new_err(format!(
            "images[{i}]: an image array is H×W×3 (RGB, uint8), not {shape:?}"
        )));
    }
    if let Ok(m) = item.call_method0("tobytes") {
        // a memoryview
        if let Ok(b) = m.cast::<PyBytes>() {
            return Ok(Source::Bytes(b.as_bytes().to_vec()));
        }
    }
    Err(PyTypeError::new_err(format!(
        "images[{i}]: {} is not a path, encoded image bytes or a uint8 array",
        item.get_type().name()?
    )))
}

/// `n` RGB images of a uint8 array `[n, H, W, 3]` (or `[H, W, 3]`).
fn pixels(a: &Bound<'_, PyAny>, n: usize) -> PyResult<Vec<RgbImage>> {
    let dtype = a.getattr("dtype")?.str()?.to_string();
    if dtype != "uint8" {
        return Err(PyTypeError::new_err(format!(
            "image arrays hold uint8 RGB values (0–255), not {dtype}: convert with .astype(numpy.uint8) after scaling"
        )));
    }
    let shape: Vec<usize> = a.getattr("shape")?.extract()?;
    let (h, w) = (shape[shape.len() - 3], shape[shape.len() - 2]);
    let limit = whisker::data::decode::max_pixels();
    if h == 0 || w == 0 || (h as u64).saturating_mul(w as u64) > limit {
        return Err(PyValueError::new_err(format!(
            "images of {w}×{h} pixels: each must have between 1 and {limit} pixels"
        )));
    }
    // C order whatever the array's strides
    let bytes = a.call_method0("tobytes")?;
    let bytes = bytes.cast::<PyBytes>()?.as_bytes();
    let per = h * w * 3;
    if bytes.len() != n * per {
        return Err(PyValueError::new_err(
            "the array's size does not match its shape",
        ));
    }
    Ok(bytes
        .chunks_exact(per)
        .map(|c| RgbImage::from_raw(w as u32, h as u32, c.to_vec()).expect("sized above"))
        .collect())
}

fn target(layer: Option<String>, pool: Option<&str>) -> PyResult<Target> {
    Ok(Target::Embedding(match layer {
        None if pool.is_some() => {
            return Err(PyValueError::new_err(
                "pool applies to a layer: give layer= too",
            ))
        }
        None => Output::Features,
        Some(layer) => Output::Layer {
            layer,
            pool: Pool::parse(pool.unwrap_or("avg")).map_err(py_err)?,
        },
    }))
}

#[pymethods]
impl Model {
    /// A zoo backbone with its pretrained weights: `weights` (a checkpoint file), else the
    /// cache (`whisker weights fetch NAME`). `threads`: the size of this model's thread pool
    /// (None: all cores).
    #[staticmethod]
    #[pyo3(signature = (name, weights=None, threads=None))]
    fn pretrained(
        py: Python<'_>,
        name: String,
        weights: Option<PathBuf>,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        Model::make(py, Origin::Pretrained { name, weights }, threads)
    }

    /// A model trained with whisker: a run directory or its model.safetensors.
    #[staticmethod]
    #[pyo3(signature = (run, threads=None))]
    fn load(py: Python<'_>, run: PathBuf, threads: Option<usize>) -> PyResult<Self> {
        Model::make(py, Origin::Run(run), threads)
    }

    /// Features of `images` as a float32 array `[N, dim]`: the feature vector, or the
    /// output of `layer` pooled (`pool`: "avg", "max", "cls" or "none"). `images`: a uint8
    /// array N×H×W×3 (or H×W×3), or a list of paths, encoded image bytes or H×W×3 arrays;
    /// `cropped=True`: arrays and images already at the model's input size (no resize and
    /// crop). `errors="return"` returns `(array, errors)`: failed rows NaN, `errors[i]` the
    /// reason (else None); by default the first failure raises.
    #[pyo3(signature = (images, layer=None, pool=None, batch_size=16, cropped=false, errors="raise"))]
    #[allow(clippy::too_many_arguments)]
    fn extract<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        layer: Option<String>,
        pool: Option<&str>,
        batch_size: usize,
        cropped: bool,
        errors: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = target(layer, pool)?;
        self.run(py, images, t, batch_size, cropped, errors)
    }

    /// Class probabilities of `images` as a float32 array `[N, len(classes)]` (the softmax
    /// of the logits); images as `extract` takes them.
    #[pyo3(signature = (images, batch_size=16, cropped=false, errors="raise"))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        batch_size: usize,
        cropped: bool,
        errors: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run(py, images, Target::Predictions, batch_size, cropped, errors)
    }

    /// Logits of `images` as a float32 array `[N, len(classes)]` (the run's head, or the
    /// backbone's ImageNet classifier); images as `extract` takes them.
    #[pyo3(signature = (images, batch_size=16, cropped=false, errors="raise"))]
    fn logits<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyAny>,
        batch_size: usize,
        cropped: bool,
        errors: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.run(py, images, Target::Logits, batch_size, cropped, errors)
    }

    /// The backbone's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.backbone().spec.name
    }

    /// Class names, in the order of `predict`'s columns (empty for a feature extractor
    /// without a classifier).
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.inner.labels().to_vec()
    }

    /// The size of the feature vector.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.backbone().spec.feature_dim
    }

    /// The sha256 of the pretrained weights.
    #[getter]
    fn weights_sha256(&self) -> &str {
        self.inner.weights_sha256()
    }

    /// The model's preprocessing: resize (shorter side), crop, interpolation, normalization.
    #[getter]
    fn preprocessing<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = self.inner.preprocess();
        let d = PyDict::new(py);
        d.set_item("resize", p.resize)?;
        d.set_item("crop", p.crop)?;
        d.set_item("interpolation", format!("{:?}", p.filter).to_lowercase())?;
        d.set_item("normalization", format!("{:?}", p.norm).to_lowercase())?;
        Ok(d)
    }

    /// The layers `extract(layer=…)` takes.
    fn layers(&self) -> Vec<String> {
        self.inner.backbone().layer_names()
    }

    /// This model's thread count (None: all cores).
    #[getter]
    fn threads(&self) -> Option<usize> {
        self.threads
    }

    fn __repr__(&self) -> String {
        match &self.origin {
            Origin::Pretrained {
                name,
                weights: None,
            } => format!("whisker.Model.pretrained({name:?})"),
            Origin::Pretrained {
                name,
                weights: Some(w),
            } => {
                format!(
                    "whisker.Model.pretrained({name:?}, weights={:?})",
                    w.display().to_string()
                )
            }
            Origin::Run(p) => format!("whisker.Model.load({:?})", p.display().to_string()),
        }
    }

    /// Pickled as the arguments that built it (the weights are read again where it is
    /// unpickled: a Ray or Spark worker).
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let restore = py.get_type::<Model>().getattr("_restore")?;
        let (kind, arg, weights) = match &self.origin {
            Origin::Pretrained { name, weights } => (
                "pretrained",
                name.clone(),
                weights.as_ref().map(|w| w.display().to_string()),
            ),
            Origin::Run(p) => ("load", p.display().to_string(), None),
        };
        let args = (kind, arg, weights, self.threads).into_pyobject(py)?;
        Ok(PyTuple::new(py, [restore, args.into_any()])?.into_any())
    }

    #[staticmethod]
    #[pyo3(name = "_restore")]
    fn restore(
        py: Python<'_>,
        kind: &str,
        arg: String,
        weights: Option<PathBuf>,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        match kind {
            "pretrained" => Model::make(py, Origin::Pretrained { name: arg, weights }, threads),
            "load" => Model::make(py, Origin::Run(PathBuf::from(arg)), threads),
            k => Err(PyValueError::new_err(format!("unknown model kind {k:?}"))),
        }
    }
}

/// The names of the zoo's backbones.
#[pyfunction]
fn models() -> Vec<&'static str> {
    whisker::models().iter().map(|m| m.name).collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(models, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
