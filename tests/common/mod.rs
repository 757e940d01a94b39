//! Shared test helpers: the adapters under test, inputs, and the one tolerance.
#![allow(dead_code)]

pub mod grouped;

use std::sync::OnceLock;

use fused_norm::{Gpu, GpuOptions, Tuning};

/// The tolerance for every GPU-vs-f64 comparison: |gpu - ref| <= TOL * max(1, |ref|) for outputs
/// and statistics; gradients scale it by what they are computed from (`assert_close_bounded`).
///
/// Why this value: each f32 operation rounds by up to 6e-8 relative; a Welford/Chan reduction
/// over n values accumulates about log2(n) such roundings (17 for D = 65537), the normalization
/// adds a few more, and WGSL's inverseSqrt may be 2 ulp off on GPUs. That puts the expected
/// error near 1e-6 of the output's scale; 1e-5 keeps a 10x margin. Because statistics are of
/// x - pivot, this holds for rows with means of 1e4 and 1e6 too, where E[x^2] - E[x]^2 in f32
/// errs by O(1) and fails it by five orders of magnitude.
pub const TOL: f64 = 1e-5;

/// The default adapter (Vulkan lavapipe in CI, or whatever WGPU_BACKEND picks), shared.
pub fn gpu() -> &'static Gpu {
    static G: OnceLock<Gpu> = OnceLock::new();
    G.get_or_init(|| Gpu::new().expect("a wgpu adapter (see README: mesa-vulkan-drivers)"))
}

/// The same adapter without subgroups: the portable workgroup-memory reductions.
pub fn gpu_no_subgroups() -> &'static Gpu {
    static G: OnceLock<Gpu> = OnceLock::new();
    G.get_or_init(|| {
        Gpu::with_options(GpuOptions {
            disable_subgroups: true,
            ..Default::default()
        })
        .unwrap()
    })
}

/// The default adapter with storage bindings capped at 64 KiB (and no subgroups when the
/// default has none), so the chunked path runs on small tensors.
pub fn gpu_small_bindings() -> &'static Gpu {
    static G: OnceLock<Gpu> = OnceLock::new();
    G.get_or_init(|| {
        Gpu::with_options(GpuOptions {
            max_binding_bytes: Some(64 << 10),
            ..Default::default()
        })
        .unwrap()
    })
}

/// The same adapter running the kernel choices made for discrete GPUs (whole-workgroup
/// reductions with barriers, GPU block sizes), whatever the adapter is.
pub fn gpu_gpu_tuning() -> &'static Gpu {
    static G: OnceLock<Gpu> = OnceLock::new();
    G.get_or_init(|| {
        Gpu::with_options(GpuOptions {
            tuning: Tuning::Gpu,
            ..Default::default()
        })
        .unwrap()
    })
}

/// The same adapter with the CPU-adapter kernel choices, whatever the adapter is.
pub fn gpu_cpu_tuning() -> &'static Gpu {
    static G: OnceLock<Gpu> = OnceLock::new();
    G.get_or_init(|| {
        Gpu::with_options(GpuOptions {
            tuning: Tuning::Cpu,
            ..Default::default()
        })
        .unwrap()
    })
}

/// Every reduction path and kernel-selection table the adapter can run: workgroup memory,
/// subgroups (when present), and both the CPU and the GPU tuning.
pub fn gpus() -> Vec<(&'static str, &'static Gpu)> {
    let mut v = vec![("shared", gpu_no_subgroups())];
    if gpu().capabilities().subgroups {
        v.push(("subgroup", gpu()));
    }
    v.push(("cpu-tuned", gpu_cpu_tuning()));
    v.push(("gpu-tuned", gpu_gpu_tuning()));
    v
}

/// Deterministic pseudo-random numbers (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    /// `n` values of mean + std * N(0, 1), as f32.
    pub fn normals(&mut self, n: usize, mean: f64, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (mean + std * self.normal()) as f32)
            .collect()
    }
}

/// Asserts every value is within TOL of the reference; NaN must meet NaN, and +-Inf its equal.
pub fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    let bound: Vec<f64> = want.iter().map(|w| w.abs().max(1.0)).collect();
    assert_close_bounded(what, got, want, &bound);
}

/// Bitwise equality of two runs.
pub fn assert_bits_eq(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(
            x.to_bits(),
            y.to_bits(),
            "{what}[{i}] differs between runs: {x} vs {y}"
        );
    }
}

/// The `[N, C, *spatial]` (channels-first) or `[N, *spatial, C]` (channels-last) shape.
pub fn layout_shape(
    n: usize,
    c: usize,
    spatial: &[usize],
    layout: fused_norm::Layout,
) -> Vec<usize> {
    match layout {
        fused_norm::Layout::ChannelsFirst => [&[n, c][..], spatial].concat(),
        fused_norm::Layout::ChannelsLast => [&[n][..], spatial, &[c]].concat(),
    }
}

/// (N, C, spatial size) of a shape in a layout.
pub fn ncs(shape: &[usize], layout: fused_norm::Layout) -> (usize, usize, usize) {
    let c = match layout {
        fused_norm::Layout::ChannelsFirst => shape[1],
        fused_norm::Layout::ChannelsLast => shape[shape.len() - 1],
    };
    let n = shape[0];
    (n, c, shape.iter().product::<usize>() / (n * c))
}

/// `x` viewed as `[n, c, s]` (channels-first), reordered to `[n, s, c]` (channels-last).
pub fn to_channels_last<T: Copy>(x: &[T], n: usize, c: usize, s: usize) -> Vec<T> {
    assert_eq!(x.len(), n * c * s);
    let mut out = Vec::with_capacity(x.len());
    for ni in 0..n {
        for si in 0..s {
            for ci in 0..c {
                out.push(x[(ni * c + ci) * s + si]);
            }
        }
    }
    out
}

/// `x` viewed as `[n, s, c]` (channels-last), reordered to `[n, c, s]` (channels-first).
pub fn to_channels_first<T: Copy>(x: &[T], n: usize, c: usize, s: usize) -> Vec<T> {
    assert_eq!(x.len(), n * c * s);
    let mut out = Vec::with_capacity(x.len());
    for ni in 0..n {
        for ci in 0..c {
            for si in 0..s {
                out.push(x[(ni * s + si) * c + ci]);
            }
        }
    }
    out
}

/// Channels-first data `[n, c, s]` of std 1 whose groups (of `c / groups` channels) have means
/// alternating around +-offset, each channel a little apart within its group (0.1 per channel):
/// group statistics stay O(1) however large the offset.
pub fn grouped_data(
    rng: &mut Rng,
    n: usize,
    c: usize,
    s: usize,
    groups: usize,
    offset: f64,
) -> Vec<f32> {
    let cpg = c / groups;
    let mut x = Vec::with_capacity(n * c * s);
    for ni in 0..n {
        for ci in 0..c {
            let g = ni * groups + ci / cpg;
            let m = if g.is_multiple_of(2) { offset } else { -offset } + 0.1 * (ci % cpg) as f64;
            x.extend(rng.normals(s, m, 1.0));
        }
    }
    x
}

/// The (sample, group) statistic index of element `i` of `[n, c, s]` / `[n, s, c]` data.
pub fn group_index(i: usize, c: usize, s: usize, groups: usize, channels_last: bool) -> usize {
    let (ni, ci) = if channels_last {
        (i / (s * c), i % c)
    } else {
        (i / (c * s), (i / s) % c)
    };
    ni * groups + ci / (c / groups)
}

/// The channel of element `i` of `[n, c, s]` / `[n, s, c]` data.
pub fn channel_index(i: usize, c: usize, s: usize, channels_last: bool) -> usize {
    if channels_last {
        i % c
    } else {
        (i / s) % c
    }
}

/// None when `a` and `b` are bitwise equal, else where and how they differ: the number of
/// differing values, the first one, and the largest distance in ulps (for failure reports
/// that cover several cases at once).
pub fn bits_mismatch(a: &[f32], b: &[f32]) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!("lengths {} vs {}", a.len(), b.len()));
    }
    let ulps =
        |x: f32, y: f32| (i64::from(x.to_bits() as i32) - i64::from(y.to_bits() as i32)).abs();
    let diff: Vec<usize> = (0..a.len())
        .filter(|&i| a[i].to_bits() != b[i].to_bits())
        .collect();
    let &first = diff.first()?;
    let worst = diff.iter().map(|&i| ulps(a[i], b[i])).max().unwrap_or(0);
    Some(format!(
        "{} of {} values differ, first [{first}]: {} vs {}, at most {worst} ulp",
        diff.len(),
        a.len(),
        a[first],
        b[first]
    ))
}

/// A tensor of `(i % 7) - 3` values: small inputs for the bad-input and aliasing checks.
pub fn t(gpu: &Gpu, shape: &[usize]) -> fused_norm::Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
    fused_norm::Tensor::from_slice(gpu, &v, shape).unwrap()
}

/// A tensor on a caller's buffer of exactly `data.len() * 4` bytes (no padding to 16 bytes),
/// holding `data`.
pub fn exact_tensor(gpu: &Gpu, data: &[f32], shape: &[usize]) -> fused_norm::Tensor {
    let buf = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller buffer, exact size"),
        size: (data.len() * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    gpu.queue()
        .write_buffer(&buf, 0, bytemuck::cast_slice(data));
    fused_norm::Tensor::from_buffer(gpu, buf, shape).unwrap()
}

/// An output tensor on a caller's buffer of exactly `numel * 4` bytes, filled with NaN.
pub fn exact_empty(gpu: &Gpu, shape: &[usize]) -> fused_norm::Tensor {
    exact_tensor(gpu, &vec![f32::NAN; shape.iter().product()], shape)
}

/// Asserts `|got - want| <= TOL * bound[i]` for every value; NaN must meet NaN, and +-Inf its
/// equal. [`assert_close`] bounds by `max(1, |want|)`.
///
/// For gradients, `bound` is the magnitude of what the value is computed from, not of the value:
/// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) subtracts two f32 sums from g, so its
/// rounding error scales with rstd * (|g| + mean|g| + |xhat| * mean|g * xhat|) even where the
/// terms cancel to a small dx; and a column sum (dweight, dbias) errs by a fraction of the sum
/// of its terms' magnitudes, not of its (cancelled) value. The reasoning behind TOL is the
/// same: a few roundings per operation times the log or the square root of the terms summed.
pub fn assert_close_bounded(what: &str, got: &[f32], want: &[f64], bound: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() || g.is_nan() {
            assert!(w.is_nan() && g.is_nan(), "{what}[{i}]: got {g}, want {w}");
            continue;
        }
        if w.is_infinite() || g.is_infinite() {
            assert_eq!(f64::from(g), w, "{what}[{i}]");
            continue;
        }
        let err = (f64::from(g) - w).abs() / bound[i].max(f64::MIN_POSITIVE);
        if err > worst.0 {
            worst = (err, i);
        }
    }
    assert!(
        worst.0 <= TOL,
        "{what}: error {:.3e} (of bound {:e}) at [{}]: got {}, want {} (tolerance {TOL:e})",
        worst.0,
        bound[worst.1],
        worst.1,
        got[worst.1],
        want[worst.1]
    );
}

/// The adapter with f16 packed in u32 words (also what GL runs).
pub fn gpu_packed() -> &'static Gpu {
    static G: OnceLock<Gpu> = OnceLock::new();
    G.get_or_init(|| {
        Gpu::with_options(GpuOptions {
            disable_shader_f16: true,
            ..Default::default()
        })
        .unwrap()
    })
}

/// The same without subgroups, GPU tuning: the workgroup-barrier reductions with half loads.
pub fn gpu_packed_gpu_tuned() -> &'static Gpu {
    static G: OnceLock<Gpu> = OnceLock::new();
    G.get_or_init(|| {
        Gpu::with_options(GpuOptions {
            disable_shader_f16: true,
            disable_subgroups: true,
            tuning: Tuning::Gpu,
            ..Default::default()
        })
        .unwrap()
    })
}

/// The half-precision storage paths this adapter has: native f16 (when SHADER_F16) and packed, plus the
/// packed path with the GPU kernel tables and workgroup-memory reductions (whole-workgroup
/// rows, barriers, the GPU split policy).
pub fn paths() -> Vec<(&'static str, &'static Gpu)> {
    let mut v = Vec::new();
    if gpu().capabilities().shader_f16 {
        v.push(("native", gpu()));
    }
    v.push(("packed", gpu_packed()));
    v.push(("packed gpu-tuned", gpu_packed_gpu_tuned()));
    v
}

/// A device of the default adapter whose storage bindings are really limited to 64 KiB
/// (`max_storage_buffer_binding_size`, which wgpu validates every bind group against), with the
/// adapter's features (less SHADER_F16 when `packed`): unlike `gpu_small_bindings`, whose cap is
/// the crate's own budget on a device that accepts more, a scratch buffer bound past the limit
/// is an error here. Same features as `gpu()` / `gpu_packed()`, so the same reductions run.
pub fn gpu_small_limits(packed: bool) -> &'static Gpu {
    static NATIVE: OnceLock<Gpu> = OnceLock::new();
    static PACKED: OnceLock<Gpu> = OnceLock::new();
    let cell = if packed { &PACKED } else { &NATIVE };
    cell.get_or_init(|| {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter =
            pollster::block_on(instance.request_adapter(&Default::default())).expect("an adapter");
        let mut limits = adapter.limits();
        limits.max_storage_buffer_binding_size = 64 << 10;
        let mut features = adapter.features();
        if packed {
            features = features - wgpu::Features::SHADER_F16;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            required_limits: limits,
            required_features: features,
            ..Default::default()
        }))
        .expect("a device with 64 KiB bindings");
        pollster::block_on(Gpu::from_wgpu_async(device, queue))
    })
}

/// The half storage paths of [`paths`] on devices with 64 KiB bindings ([`gpu_small_limits`]),
/// each with the full-size device it must agree with bit for bit.
pub fn small_limit_paths() -> Vec<(&'static str, &'static Gpu, &'static Gpu)> {
    let mut v = Vec::new();
    if gpu().capabilities().shader_f16 {
        v.push(("native 64 KiB", gpu_small_limits(false), gpu()));
    }
    v.push(("packed 64 KiB", gpu_small_limits(true), gpu_packed()));
    v
}
