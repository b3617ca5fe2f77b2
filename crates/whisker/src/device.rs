//! The compute device, by name: `cpu` (burn-flex, with whisker's CPU engine), `cuda` /
//! `cuda:N` (NVIDIA GPUs, the `cuda` feature), `wgpu` / `wgpu:N` (Vulkan on Linux and
//! Windows, Metal on macOS, the `wgpu` feature).
//!
//! A device this build lacks is an error naming the feature to build with; a GPU device is
//! opened and checked with a small computation before it is used ([`open_device`]), so that
//! a missing driver or GPU is a clear error instead of a panic deep inside the runtime.

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};

static DEVICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();

/// The device names this build accepts, for messages.
pub fn device_names() -> &'static str {
    match (cfg!(feature = "cuda"), cfg!(feature = "wgpu")) {
        (true, true) => "cpu, cuda, cuda:N, wgpu, wgpu:N",
        (true, false) => "cpu, cuda, cuda:N",
        (false, true) => "cpu, wgpu, wgpu:N",
        (false, false) => "cpu",
    }
}

/// A device by name, not yet opened. `cuda` is `cuda:0`; `wgpu` is the adapter wgpu prefers
/// (a discrete GPU first), `wgpu:N` the N-th discrete GPU.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    let err = |reason: String| Error::Device {
        device: spec.to_string(),
        reason,
    };
    let (kind, index) = match spec.split_once(':') {
        Some((k, n)) => {
            let n: usize = n
                .parse()
                .map_err(|_| err(format!("`{n}` is not a device index (a number)")))?;
            (k, Some(n))
        }
        None => (spec, None),
    };
    match kind {
        "cpu" if index.is_none() => Ok(Device::flex()),
        "cuda" => cuda(index.unwrap_or(0)).ok_or_else(|| {
            err("this whisker was built without CUDA; build it with `tools/setup-gpu.sh && cargo build --release --features cuda`".into())
        }),
        "wgpu" => wgpu(index).ok_or_else(|| {
            err("this whisker was built without wgpu (Vulkan / Metal); build it with `cargo build --release --features wgpu`".into())
        }),
        _ => Err(err(format!(
            "unknown device (this build has: {})",
            device_names()
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Option<Device> {
    Some(Device::cuda(index))
}
#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Option<Device> {
    None
}

#[cfg(feature = "wgpu")]
fn wgpu(index: Option<usize>) -> Option<Device> {
    use burn::tensor::DeviceKind;
    Some(Device::wgpu(match index {
        Some(n) => DeviceKind::DiscreteGpu(n),
        None => DeviceKind::DefaultDevice,
    }))
}
#[cfg(not(feature = "wgpu"))]
fn wgpu(_index: Option<usize>) -> Option<Device> {
    None
}

/// A device by name, opened: a GPU device runs a small computation first, and a missing
/// driver, GPU or adapter is an [`Error::Device`] that says so (the runtimes panic there).
pub fn open_device(spec: &str) -> Result<Device> {
    let device = parse_device(spec)?;
    if device == Device::flex() {
        return Ok(device);
    }
    pin_gpu_cache();
    let d = device.clone();
    let probe = move || {
        let x = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [3]), &d);
        (x.clone() * x).sum().into_data().try_to_vec::<f32>()
    };
    // the runtimes report a missing driver by panicking, often on their own device thread
    // (then this one sees a closed channel): catch it, keep the first message instead of
    // printing it, and say what it means
    static FIRST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the runtime failed".into());
        if let Ok(mut first) = FIRST.lock() {
            first.get_or_insert(msg);
        }
    }));
    let got = std::panic::catch_unwind(probe);
    std::panic::set_hook(hook);
    let first = FIRST.lock().ok().and_then(|mut f| f.take());
    let why = match got {
        Ok(Ok(v)) if v == [14.0] => {
            return check_precision(spec.trim(), &device, gpu_precision()).map(|_| device)
        }
        Ok(Ok(v)) => format!("a test computation gave {v:?} instead of [14.0]"),
        Ok(Err(e)) => format!("cannot read a result back: {e:?}"),
        Err(_) => first.unwrap_or_else(|| "the runtime failed".into()),
    };
    let hint = if spec.trim().starts_with("cuda") {
        "CUDA needs an NVIDIA GPU and its driver (libcuda.so.1, driver 570 or newer); `nvidia-smi` lists the GPUs"
    } else {
        "wgpu needs a GPU with a Vulkan driver and the Vulkan loader (libvulkan.so.1), or Metal on macOS; `vulkaninfo --summary` lists the adapters"
    };
    Err(Error::Device {
        device: spec.trim().to_string(),
        reason: format!("cannot be opened: {}. {hint}", first_line(&why)),
    })
}

/// Where the GPU runtime keeps what it learns (autotune choices, compiled kernels): cubecl's
/// configuration (a `cubecl.toml` or `burn.toml` found from the working directory up, and
/// `CUBECL_*` variables) where it names a place, else the user's cache directory
/// (`~/.cache/cubecl` on Linux). cubecl's own default is the `target/` folder of the outermost
/// Cargo project above the working directory: a run inside some other project would tune again
/// and write into that project.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub fn pin_gpu_cache() {
    use burn::cubecl::config::{cache::CacheConfig, CubeClRuntimeConfig, RuntimeConfig};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut cfg = CubeClRuntimeConfig::from_current_dir().override_from_env();
        if matches!(cfg.environment.path, CacheConfig::Target) {
            cfg.environment.path = CacheConfig::Global;
        }
        // false when the configuration was read already (a library user's own choice): kept
        let _ = CubeClRuntimeConfig::try_set(cfg);
    });
}
/// Without a GPU backend there is no GPU cache to place.
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
pub fn pin_gpu_cache() {}

/// `device` when it computes in the chosen precision's reduced type (bf16 / f16), else an
/// error: a GPU without the type (bf16 through Vulkan, f16 on some adapters) would give wrong
/// numbers, not an error.
fn check_precision(spec: &str, device: &Device, p: GpuPrecision) -> Result<()> {
    match p.reduced_dtype() {
        Some(dt) if !device.supports_dtype(dt) => Err(Error::Device {
            device: spec.to_string(),
            reason: format!(
                "{} does not compute in {}: choose another --precision (fp32{})",
                gpu_identity(device)
                    .map(|(name, _)| name)
                    .unwrap_or_else(|| format!("{device:?}")),
                format!("{p:?}").to_lowercase(),
                if p == GpuPrecision::Bf16 && device.supports_dtype(burn::tensor::FloatDType::F16) {
                    ", or f16"
                } else {
                    ""
                }
            ),
        }),
        _ => Ok(()),
    }
}

fn first_line(s: &str) -> &str {
    let s = s.lines().next().unwrap_or(s).trim();
    // cudarc lists every library name it searched; the first sentence says enough
    s.split(" - ").next().unwrap_or(s)
}

/// Choose the device [`default_device`] returns for the rest of the process: opened (see
/// [`open_device`]) and set once; choosing another one later is an error.
pub fn set_device(spec: &str) -> Result<()> {
    let d = open_device(spec)?;
    match DEVICE.set(d.clone()) {
        Ok(()) => Ok(()),
        Err(_) if DEVICE.get() == Some(&d) => Ok(()),
        Err(_) => Err(Error::Device {
            device: spec.to_string(),
            reason: format!(
                "the device was already chosen ({}): choose it once, before its first use",
                DEVICE.get().map(describe).unwrap_or_default()
            ),
        }),
    }
}

/// The compute device: the one chosen with [`set_device`], else `WHISKER_DEVICE` (opened on
/// first use; one that cannot be opened is reported on stderr once and the CPU is used),
/// else the CPU (burn-flex, with whisker's CPU engine).
pub fn default_device() -> Device {
    DEVICE
        .get_or_init(|| match std::env::var("WHISKER_DEVICE") {
            Ok(v) if !v.trim().is_empty() => open_device(&v).unwrap_or_else(|e| {
                eprintln!("whisker: warning: WHISKER_DEVICE: {e}; using the CPU");
                Device::flex()
            }),
            _ => Device::flex(),
        })
        .clone()
}

/// The GPU's name as its runtime reports it (`NVIDIA H200`, `llvmpipe (LLVM 19.1.7, 256
/// bits)`), and whether it is a real card (not a CPU or a software rasterizer); `None` on the
/// CPU.
pub fn gpu_identity(device: &Device) -> Option<(String, bool)> {
    if is_cpu(device) {
        return None;
    }
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    {
        device
            .identity()
            .map(|id| (id.name.clone(), id.physical.is_some()))
    }
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    None
}

/// A device's name for people: `cpu`, or the GPU's name with burn's description of the device.
pub fn describe(device: &Device) -> String {
    if is_cpu(device) {
        return "cpu".into();
    }
    match gpu_identity(device) {
        Some((name, _)) => format!("{name} ({device:?})"),
        None => format!("{device:?}"),
    }
}

/// How a GPU multiplies in convolutions and matrix products. NVIDIA tensor cores (and
/// burn's fastest CUDA kernels with them) round f32 operands to TF32, a 10-bit mantissa: about
/// 1e-3 relative error per product, as PyTorch's default for convolutions on Ampere and newer.
/// The CPU always computes in f32 (its engine); `bf16` / `f16` there apply only to burn's
/// operations (`WHISKER_ENGINE=burn`), an emulation to measure their effect without a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuPrecision {
    /// f32 results (the default): each operand is split into a TF32-exact high part and the
    /// rest, and three TF32 products are summed (hi·hi + hi·lo + lo·hi): errors ~1e-6, three
    /// times the tensor-core work.
    Fp32,
    /// One TF32 product: faster, ~1e-3 relative error.
    Tf32,
    /// Mixed precision with bfloat16 (as PyTorch's autocast): convolutions and matrix products
    /// take bf16 operands (8-bit mantissa) and give bf16 results, converted back to f32;
    /// weights, BatchNorm, activations, the loss and the optimizer stay f32 (f32 master
    /// weights). Twice the tensor-core rate of TF32, half the memory traffic; no loss scaling
    /// needed (bf16 has f32's exponent range).
    Bf16,
    /// Mixed precision with IEEE half (10-bit mantissa, largest value 65504): as `bf16`, more
    /// precise but with a narrow range, so training scales the loss (dynamically, as PyTorch's
    /// `GradScaler`) to keep small gradients from vanishing. For GPUs without bf16 (V100, T4).
    F16,
}

impl GpuPrecision {
    /// The reduced float type of a mixed-precision mode; `None` for the f32 modes.
    pub fn reduced_dtype(self) -> Option<burn::tensor::FloatDType> {
        match self {
            GpuPrecision::Fp32 | GpuPrecision::Tf32 => None,
            GpuPrecision::Bf16 => Some(burn::tensor::FloatDType::BF16),
            GpuPrecision::F16 => Some(burn::tensor::FloatDType::F16),
        }
    }
}

impl std::str::FromStr for GpuPrecision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "fp32" | "f32" => Ok(GpuPrecision::Fp32),
            "tf32" => Ok(GpuPrecision::Tf32),
            "bf16" => Ok(GpuPrecision::Bf16),
            "f16" | "fp16" => Ok(GpuPrecision::F16),
            other => Err(Error::Invalid(format!(
                "unknown GPU precision `{other}` (fp32, tf32, bf16, f16)"
            ))),
        }
    }
}

static PRECISION: std::sync::OnceLock<GpuPrecision> = std::sync::OnceLock::new();

/// Choose the GPU precision for the rest of the process (once; a different later choice is an
/// error, as is a reduced type the device already chosen cannot compute in).
pub fn set_gpu_precision(p: GpuPrecision) -> Result<()> {
    if let Some(d) = DEVICE.get() {
        check_precision(&describe(d), d, p)?;
    }
    match PRECISION.set(p) {
        Ok(()) => Ok(()),
        Err(_) if PRECISION.get() == Some(&p) => Ok(()),
        Err(_) => Err(Error::Invalid(format!(
            "the GPU precision was already chosen ({:?})",
            PRECISION.get()
        ))),
    }
}

/// The GPU precision: the one set with [`set_gpu_precision`], else `WHISKER_GPU_PRECISION`
/// (fp32 | tf32 | bf16 | f16), else fp32.
pub fn gpu_precision() -> GpuPrecision {
    *PRECISION.get_or_init(|| match std::env::var("WHISKER_GPU_PRECISION") {
        Ok(v) if !v.trim().is_empty() => v.parse().unwrap_or_else(|e| {
            eprintln!("whisker: warning: WHISKER_GPU_PRECISION: {e}; using fp32");
            GpuPrecision::Fp32
        }),
        _ => GpuPrecision::Fp32,
    })
}

/// Whether f32 convolutions and matrix products on `device` must be split to stay f32: a CUDA
/// device (whose tensor-core kernels take TF32) with [`GpuPrecision::Fp32`].
pub fn split_for_f32(device: &Device) -> bool {
    cfg!(feature = "cuda")
        && !is_cpu(device)
        && gpu_precision() == GpuPrecision::Fp32
        && format!("{device:?}").contains("Cuda(")
}

/// Whether `device` is the CPU (burn-flex), plain or with autodiff: there whisker's CPU
/// engine runs; elsewhere burn's kernels do.
pub fn is_cpu(device: &Device) -> bool {
    *device == Device::flex() || *device == Device::flex().autodiff()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(matches!(parse_device("cpu"), Ok(d) if d == Device::flex()));
        assert!(matches!(open_device(" cpu "), Ok(d) if d == Device::flex()));
        for bad in ["gpu", "cpu:1", "cuda:x", "wgpu:-1", ""] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("device `{}`", bad.trim())), "{e}");
        }
        if !cfg!(feature = "cuda") {
            let e = parse_device("cuda:1").unwrap_err().to_string();
            assert!(
                e.contains("--features cuda") && e.contains("setup-gpu"),
                "{e}"
            );
        }
        if !cfg!(feature = "wgpu") {
            let e = parse_device("wgpu").unwrap_err().to_string();
            assert!(e.contains("--features wgpu"), "{e}");
        }
    }

    #[test]
    fn precisions() {
        use burn::tensor::FloatDType;
        for (s, p, dt) in [
            ("fp32", GpuPrecision::Fp32, None),
            ("tf32", GpuPrecision::Tf32, None),
            ("bf16", GpuPrecision::Bf16, Some(FloatDType::BF16)),
            ("fp16", GpuPrecision::F16, Some(FloatDType::F16)),
            (" f16", GpuPrecision::F16, Some(FloatDType::F16)),
        ] {
            let got: GpuPrecision = s.parse().unwrap();
            assert_eq!((got, got.reduced_dtype()), (p, dt), "{s}");
        }
        let e = "half".parse::<GpuPrecision>().unwrap_err().to_string();
        assert!(e.contains("`half`") && e.contains("bf16, f16"), "{e}");
        // the CPU computes every reduced type (burn-flex): opening it never refuses one
        for p in [GpuPrecision::Bf16, GpuPrecision::F16] {
            assert!(check_precision("cpu", &Device::flex(), p).is_ok());
        }
    }
}

/// Which implementation runs forward-only passes on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// whisker's kernels on the CPU (the default), burn elsewhere.
    Auto,
    /// burn's operations everywhere (the reference path).
    Burn,
}

static ENGINE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Choose the forward engine for the whole process (overrides `WHISKER_ENGINE`).
pub fn set_engine(e: Engine) {
    ENGINE.store(
        match e {
            Engine::Auto => 1,
            Engine::Burn => 2,
        },
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// The engine in use: [`set_engine`]'s choice, else `WHISKER_ENGINE=burn|auto`, else auto.
pub fn engine() -> Engine {
    match ENGINE.load(std::sync::atomic::Ordering::Relaxed) {
        1 => Engine::Auto,
        2 => Engine::Burn,
        _ => {
            let e = match std::env::var("WHISKER_ENGINE")
                .ok()
                .as_deref()
                .map(str::trim)
            {
                Some("burn") => Engine::Burn,
                None | Some("" | "auto" | "engine") => Engine::Auto,
                Some(v) => {
                    eprintln!("whisker: WHISKER_ENGINE={v:?} is not one of auto, burn; using auto");
                    Engine::Auto
                }
            };
            set_engine(e);
            e
        }
    }
}
