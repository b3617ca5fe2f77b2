//! Throughput of one dense convolution as a fraction of the machine's FMA peak.
//!
//!     cargo run --release -p whisker-kernels --example conv_peak -- [--threads 2] [--batch 16]
//!         [--ghz 3.0] [--size 56] [--cin 64] [--cout 64] [--k 3]
//!
//! For a 3×3 kernel it also times the Winograd F(2×2, 3×3) path and reports its "effective"
//! rate: the direct convolution's flops over Winograd's time.
//!
//! Peak = threads × 2 FMA units × lanes (16 on AVX-512, 8 on AVX2, 4 portable) × 2 flops ×
//! clock. The clock is given (`--ghz`, default: the "cpu MHz" of /proc/cpuinfo).

use std::time::Instant;

use whisker_kernels::*;

fn main() {
    let mut threads = 2usize;
    let (mut batch, mut size, mut cin, mut cout, mut k) =
        (16usize, 56usize, 64usize, 64usize, 3usize);
    let mut ghz: Option<f64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_default();
        match a.as_str() {
            "--threads" => threads = v.parse().unwrap_or(threads),
            "--batch" => batch = v.parse().unwrap_or(batch),
            "--size" => size = v.parse().unwrap_or(size),
            "--cin" => cin = v.parse().unwrap_or(cin),
            "--cout" => cout = v.parse().unwrap_or(cout),
            "--k" => k = v.parse().unwrap_or(k),
            "--ghz" => ghz = v.parse().ok(),
            _ => {
                eprintln!("unknown option {a}");
                std::process::exit(2);
            }
        }
    }
    let ghz = ghz.unwrap_or_else(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("cpu MHz"))
                    .and_then(|l| l.split(':').nth(1))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .map(|mhz| mhz / 1000.0)
            .unwrap_or(3.0)
    });
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .unwrap();
    let isa = Isa::current();
    let lanes = match isa.kind() {
        IsaKind::Avx512 => 16.0,
        IsaKind::Avx2 => 8.0,
        IsaKind::Portable => 4.0,
    };
    let peak = threads as f64 * 2.0 * lanes * 2.0 * ghz * 1e9;
    let s = ConvShape::symmetric(batch, size, size, 1, k / 2);
    let x: Vec<f32> = (0..batch * size * size * cin)
        .map(|i| (i % 97) as f32 / 97.0)
        .collect();
    let w: Vec<f32> = (0..cout * cin * k * k)
        .map(|i| (i % 89) as f32 / 890.0)
        .collect();
    let p = PackedConv::from_oihw(&w, None, cout, cin, k, k).unwrap();
    let (oh, ow) = s.out_hw(k, k).unwrap();
    let mut out = vec![0f32; batch * oh * ow * cout];
    conv2d(isa, &p, &x, &s, None, Act::Relu, &mut out).unwrap();
    let measured = measured_peak(isa, threads);
    let iters = 10;
    let t = Instant::now();
    for _ in 0..iters {
        conv2d(isa, &p, &x, &s, None, Act::Relu, &mut out).unwrap();
    }
    let secs = t.elapsed().as_secs_f64() / iters as f64;
    let flops = 2.0 * (batch * oh * ow * cout * cin * k * k) as f64;
    let winograd = if k == 3 {
        let p = PackedConv::winograd_from_oihw(&w, None, cout, cin).unwrap();
        conv2d(isa, &p, &x, &s, None, Act::Relu, &mut out).unwrap();
        let t = Instant::now();
        for _ in 0..iters {
            conv2d(isa, &p, &x, &s, None, Act::Relu, &mut out).unwrap();
        }
        let ws = t.elapsed().as_secs_f64() / iters as f64;
        format!(", \"winograd_effective_gflops\": {:.1}", flops / ws / 1e9)
    } else {
        String::new()
    };
    // the weight gradient of the same layer (fine-tuning), the same FLOPs
    let g: Vec<f32> = (0..batch * oh * ow * cout)
        .map(|i| (i % 83) as f32 / 83.0 - 0.5)
        .collect();
    let mut dw = vec![0f32; w.len()];
    conv2d_weight_grad(isa, &x, &s, cin, &g, cout, k, k, &mut dw, None).unwrap();
    let t = Instant::now();
    for _ in 0..iters {
        conv2d_weight_grad(isa, &x, &s, cin, &g, cout, k, k, &mut dw, None).unwrap();
    }
    let wg = flops / (t.elapsed().as_secs_f64() / iters as f64) / 1e9;
    let winograd = format!("{winograd}, \"weight_grad_gflops\": {wg:.1}");
    println!(
        "{{\"isa\": \"{}\", \"threads\": {threads}, \"shape\": \"{batch}x{size}x{size}x{cin} -> {cout}, {k}x{k}\", \"gflops\": {:.1}{winograd}, \"peak_gflops\": {:.1}, \"fraction_of_peak\": {:.3}, \"measured_fma_peak_gflops\": {:.1}, \"fraction_of_measured_peak\": {:.3}, \"cpu\": \"{}\"}}",
        isa.name(),
        flops / secs / 1e9,
        peak / 1e9,
        flops / secs / peak,
        measured / 1e9,
        flops / secs / measured,
        cpu_description()
    );
}

/// FLOP/s of a loop of independent FMAs on every thread: what the cores sustain at the clock
/// they actually run (turbo, AVX-512 licence), the ceiling any kernel can reach.
fn measured_peak(isa: Isa, threads: usize) -> f64 {
    use rayon::prelude::*;
    let iters = 20_000_000u64;
    let t = Instant::now();
    let lanes: f64 = (0..threads)
        .into_par_iter()
        .map(|_| fma_loop(isa, iters))
        .sum();
    lanes * 2.0 * iters as f64 / t.elapsed().as_secs_f64()
}

/// Runs `iters` rounds of 16 independent vector FMAs; returns the lanes computed per round.
fn fma_loop(isa: Isa, iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        // 16 independent FMA chains in registers (written in assembly so that no compiler
        // spills them), on zeros (no denormal slow path).
        macro_rules! fma_asm {
            ($iters:expr, $zero:literal, $fma:literal, $($r:literal),*) => {
                std::arch::asm!(
                    $(concat!($zero, " ", $r, ", ", $r, ", ", $r),)*
                    "2:",
                    $(concat!($fma, " ", $r, ", ", $r, ", ", $r),)*
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) $iters => _,
                    out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                    out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
                    out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                    out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
                    options(nostack),
                )
            };
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn zmm(iters: u64) {
            fma_asm!(
                iters,
                "vxorps",
                "vfmadd231ps",
                "zmm0",
                "zmm1",
                "zmm2",
                "zmm3",
                "zmm4",
                "zmm5",
                "zmm6",
                "zmm7",
                "zmm8",
                "zmm9",
                "zmm10",
                "zmm11",
                "zmm12",
                "zmm13",
                "zmm14",
                "zmm15"
            );
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn ymm(iters: u64) {
            fma_asm!(
                iters,
                "vxorps",
                "vfmadd231ps",
                "ymm0",
                "ymm1",
                "ymm2",
                "ymm3",
                "ymm4",
                "ymm5",
                "ymm6",
                "ymm7",
                "ymm8",
                "ymm9",
                "ymm10",
                "ymm11",
                "ymm12",
                "ymm13",
                "ymm14",
                "ymm15"
            );
        }
        match isa.kind() {
            IsaKind::Avx512 => {
                unsafe { zmm(iters) };
                return 16.0 * 16.0;
            }
            IsaKind::Avx2 => {
                unsafe { ymm(iters) };
                return 16.0 * 8.0;
            }
            IsaKind::Portable => {}
        }
    }
    let mut a = [1f32; 32];
    for _ in 0..iters {
        for v in a.iter_mut() {
            *v = *v * 0.999_999 + 1e-7;
        }
    }
    std::hint::black_box(a);
    32.0
}
