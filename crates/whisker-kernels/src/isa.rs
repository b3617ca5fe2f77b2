//! Which instruction set the kernels use, chosen at run time.

use std::sync::OnceLock;

/// The name of an instruction-set path (what `WHISKER_ISA` and the benchmark tables say).
/// A name proves nothing about the CPU: kernels take an [`Isa`], which only a successful
/// feature check produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IsaKind {
    /// Plain Rust, correct on every target (what the compiler vectorises for the baseline).
    Portable,
    /// x86-64 AVX2 with FMA (256-bit vectors).
    Avx2,
    /// x86-64 AVX-512F (512-bit vectors).
    Avx512,
}

impl IsaKind {
    /// The name used by `WHISKER_ISA` and in benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            IsaKind::Portable => "portable",
            IsaKind::Avx2 => "avx2",
            IsaKind::Avx512 => "avx512",
        }
    }

    /// Parse a `WHISKER_ISA` value.
    pub fn parse(s: &str) -> Option<IsaKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "generic" => Some(IsaKind::Portable),
            "avx2" => Some(IsaKind::Avx2),
            "avx512" | "avx512f" | "avx-512" => Some(IsaKind::Avx512),
            _ => None,
        }
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            IsaKind::Portable => true,
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            IsaKind::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// A checked instruction-set path of the kernels: a token that only a successful CPU feature
/// check makes ([`Isa::new`], [`Isa::current`], [`Isa::best`], [`Isa::available`]), or the
/// portable path ([`Isa::PORTABLE`]). Its field is private, so a kernel call on a path this
/// CPU lacks (AVX-512 code on an AVX2 machine: undefined behaviour) cannot be written in
/// safe code; the kernels' `unsafe` SIMD calls rest on this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Isa(IsaKind);

impl Isa {
    /// The portable path: every CPU runs it.
    pub const PORTABLE: Isa = Isa(IsaKind::Portable);
    /// Within this crate only, for matching: never constructed but by [`Isa::new`].
    pub(crate) const AVX2: Isa = Isa(IsaKind::Avx2);
    pub(crate) const AVX512: Isa = Isa(IsaKind::Avx512);

    /// The path `kind`, if this CPU runs it.
    pub fn new(kind: IsaKind) -> Option<Isa> {
        kind.supported().then_some(Isa(kind))
    }

    /// Which path this is.
    pub fn kind(self) -> IsaKind {
        self.0
    }

    /// The name used by `WHISKER_ISA` and in benchmark tables.
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    /// Every path this CPU supports, lowest first (what the tests run).
    pub fn available() -> Vec<Isa> {
        [IsaKind::Portable, IsaKind::Avx2, IsaKind::Avx512]
            .into_iter()
            .filter_map(Isa::new)
            .collect()
    }

    /// The best path this CPU supports.
    pub fn best() -> Isa {
        *Isa::available().last().unwrap_or(&Isa::PORTABLE)
    }

    /// The path to use: the best one, or the one `WHISKER_ISA` asks for when the CPU has it
    /// (a request the CPU cannot honour falls back to the best path below it; a value that
    /// names no path is reported once on stderr and ignored). Read once.
    pub fn current() -> Isa {
        static CURRENT: OnceLock<Isa> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let asked = std::env::var("WHISKER_ISA").ok();
            match asked.as_deref().map(|v| (v, IsaKind::parse(v))) {
                Some((_, Some(want))) => Isa::available()
                    .into_iter()
                    .rfind(|i| i.kind() <= want)
                    .unwrap_or(Isa::PORTABLE),
                Some((v, None)) if !v.trim().is_empty() => {
                    let best = Isa::best();
                    eprintln!(
                        "whisker: WHISKER_ISA={v:?} is not one of avx512, avx2, portable; using {}",
                        best.name()
                    );
                    best
                }
                _ => Isa::best(),
            }
        })
    }

    /// Output pixels per register tile (rows of the GEMM micro-kernel).
    pub(crate) fn rows(self) -> usize {
        match self.0 {
            IsaKind::Portable => 4,
            IsaKind::Avx2 => 6,
            IsaKind::Avx512 => 6,
        }
    }
}

/// The CPU's model name and the SIMD flags that matter here (for benchmark tables).
pub fn cpu_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let mut flags = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("avx512f", is_x86_feature_detected!("avx512f")),
            ("avx512bw", is_x86_feature_detected!("avx512bw")),
            ("avx512vnni", is_x86_feature_detected!("avx512vnni")),
            ("avx512bf16", is_x86_feature_detected!("avx512bf16")),
        ] {
            if on {
                flags.push(name);
            }
        }
    }
    format!("{model} [{}]", flags.join(" "))
}
