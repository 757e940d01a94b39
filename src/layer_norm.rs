//! Host wrapper for `shaders/layer_norm.wgsl`.

use crate::error::{NormError, Result};
use crate::gpu::{record_all, units_per_binding, view, Constants, Family, Gpu, Step};
use crate::tensor::Tensor;

/// Most vec4s each thread keeps in registers in `layer_norm_rows` (the shader's ROW_CACHE,
/// sized per call from the row length up to this).
const ROW_CACHE: u32 = 16;

/// Fewer rows than this leave a large GPU's compute units idle with several rows per
/// workgroup (an H100 has 132 SMs): the GPU policy then gives each row a whole workgroup.
const GPU_FEW_ROWS: u64 = 256;

/// With few rows, rows of at least this many values take the split path: one workgroup per row
/// would leave most of the device idle while each streams 64 KiB or more.
const GPU_SPLIT_FEW_ROWS_D: usize = 16384;

/// Most loop iterations one thread runs over a row. llvmpipe stops loops after 65535
/// iterations per invocation, and a long sequential Welford loses precision (its error grows
/// with the count, while the tree merges grow with its log): 1024 keeps both far away.
pub(crate) const MAX_THREAD_ITERS: u64 = 1024;

/// Fewest workgroups the rows kernel may leave a CPU adapter (a few per core); fewer rows
/// than that take the split-row path.
const CPU_MIN_WORKGROUPS: u64 = 16;

/// Most workgroups a CPU-adapter rows kernel may run when its reduction needs barriers.
const CPU_MAX_BARRIER_WORKGROUPS: u64 = 256;

/// Which LayerNorm kernel runs. `Auto` lets [`LayerNorm::plan`] choose from the shape and
/// the adapter; the others force a kernel (tests and benchmarks run each one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LnVariant {
    /// Chosen by the policy in [`LayerNorm::plan`].
    #[default]
    Auto,
    /// `layer_norm_rows`: `threads_per_row` threads (a power of two, at most the workgroup
    /// size) reduce one row; statistics and output in one dispatch, x read once for rows that
    /// fit the threads' registers.
    Rows {
        /// Threads cooperating on one row.
        threads_per_row: u32,
    },
    /// `layer_norm_partial` + `layer_norm_merge` + `layer_norm_apply`: rows split into
    /// segments, so few long rows still fill the device; reads x twice.
    SplitRow,
}

/// The kernel a [`LayerNorm`] call runs on a given shape and device, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct LnPlan {
    /// The resolved variant (never `Auto`).
    pub variant: LnVariant,
    /// Threads per workgroup.
    pub workgroup_size: u32,
    /// Threads cooperating on one reduction: per row (rows) or per segment (split-row).
    pub group_threads: u32,
    /// Split-row: segments per row and vec4s per segment (0 for the rows kernel).
    pub segments: (u32, u32),
    /// Rows kernel: vec4s of its row each thread keeps in registers (a power of two up to 16,
    /// the fewest that hold its share of the row; 0 for split-row).
    pub row_cache: u32,
    /// Whether the reductions use subgroup shuffles.
    pub subgroups: bool,
    /// Why the policy chose it.
    pub reason: String,
}

impl std::fmt::Display for LnPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = match self.variant {
            LnVariant::Rows { threads_per_row } => format!("rows(tpr={threads_per_row})"),
            LnVariant::SplitRow => format!(
                "split-row(segs={}, tps={})",
                self.segments.0, self.group_threads
            ),
            LnVariant::Auto => "auto".to_string(),
        };
        let sg = if self.subgroups { "subgroup" } else { "shared" };
        write!(f, "{v} wg={} {sg}: {}", self.workgroup_size, self.reason)
    }
}

#[derive(Clone, Debug)]
enum Normalized {
    Shape(Vec<usize>),
    Axis(isize),
}

/// LayerNorm over the trailing dims, like `torch.nn.LayerNorm(normalized_shape)` and ONNX
/// `LayerNormalization(axis)`: `y = (x - mean) / sqrt(var + eps) * weight + bias`, with the
/// biased variance. Weight and bias are optional and independent.
///
/// ```no_run
/// use fused_norm::{Gpu, LayerNorm, Tensor};
/// let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &vec![0.5; 4 * 768], &[4, 768])?;
/// let w = Tensor::from_slice(&gpu, &vec![1.0; 768], &[768])?;
/// let b = Tensor::from_slice(&gpu, &vec![0.0; 768], &[768])?;
/// let out = LayerNorm::new(&[768]).eps(1e-5).weight(w).bias(b).forward(&gpu, &x)?;
/// assert_eq!(out.mean.numel(), 4);
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug)]
pub struct LayerNorm {
    normalized: Normalized,
    eps: f32,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    variant: LnVariant,
}

/// Outputs of [`LayerNorm::forward`].
#[derive(Clone, Debug)]
pub struct LayerNormOutput {
    /// Normalized tensor, same shape as x.
    pub y: Tensor,
    /// Mean of each normalized row, shape `x.shape[..axis] ++ [1; trailing]` (as ONNX's Mean
    /// output and PyTorch's `native_layer_norm`).
    pub mean: Tensor,
    /// `1 / sqrt(var + eps)` of each row (ONNX's InvStdDev), same shape as `mean`.
    pub rstd: Tensor,
}

/// LayerNorm over the last dim of `x`, eps 1e-5, no weight or bias.
///
/// ```no_run
/// use fused_norm::{gpu_layer_norm, Gpu, Tensor};
/// let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
/// let y = gpu_layer_norm(&gpu, &x)?.to_vec(&gpu)?;
/// assert!((y[0] + 1.0).abs() < 1e-3);
/// # Ok::<(), fused_norm::NormError>(())
/// ```
pub fn gpu_layer_norm(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    let d = *x.shape().last().unwrap_or(&0);
    Ok(LayerNorm::new(&[d]).forward(gpu, x)?.y)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LnParams {
    rows: u32,
    d: u32,
    x_off: u32,
    y_off: u32,
    stat_off: u32,
    grid_x: u32,
    eps: f32,
    segs: u32,
    seg_v4: u32,
    pad: [u32; 3],
}

/// Validated geometry of one call.
struct Geometry {
    rows: usize,
    d: usize,
    axis: usize,
}

impl LayerNorm {
    /// Normalizes over the trailing dims equal to `normalized_shape`.
    ///
    /// ```
    /// let ln = fused_norm::LayerNorm::new(&[16, 16]); // the last two dims
    /// ```
    pub fn new(normalized_shape: &[usize]) -> LayerNorm {
        LayerNorm {
            normalized: Normalized::Shape(normalized_shape.to_vec()),
            eps: 1e-5,
            weight: None,
            bias: None,
            variant: LnVariant::Auto,
        }
    }

    /// ONNX `LayerNormalization(axis)`: normalizes over dims `axis..`; negative counts from
    /// the end (-1, the default in ONNX, is the last dim).
    ///
    /// ```
    /// let ln = fused_norm::LayerNorm::from_axis(1); // [N, C, H, W] -> over C, H, W
    /// ```
    pub fn from_axis(axis: isize) -> LayerNorm {
        LayerNorm {
            normalized: Normalized::Axis(axis),
            ..LayerNorm::new(&[])
        }
    }

    /// Sets eps (default 1e-5); must be finite and >= 0.
    ///
    /// ```
    /// let ln = fused_norm::LayerNorm::new(&[8]).eps(1e-6);
    /// ```
    pub fn eps(mut self, eps: f32) -> LayerNorm {
        self.eps = eps;
        self
    }

    /// Per-element scale (gamma), with as many values as a normalized row.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let w = fused_norm::Tensor::from_slice(&gpu, &[1.0; 8], &[8])?;
    /// let ln = fused_norm::LayerNorm::new(&[8]).weight(w);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn weight(mut self, weight: Tensor) -> LayerNorm {
        self.weight = Some(weight);
        self
    }

    /// Per-element shift (beta), with as many values as a normalized row.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let b = fused_norm::Tensor::from_slice(&gpu, &[0.0; 8], &[8])?;
    /// let ln = fused_norm::LayerNorm::new(&[8]).bias(b);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn bias(mut self, bias: Tensor) -> LayerNorm {
        self.bias = Some(bias);
        self
    }

    /// Forces a kernel variant instead of the policy's choice.
    ///
    /// ```
    /// use fused_norm::{LayerNorm, LnVariant};
    /// let ln = LayerNorm::new(&[4096]).variant(LnVariant::SplitRow);
    /// ```
    pub fn variant(mut self, variant: LnVariant) -> LayerNorm {
        self.variant = variant;
        self
    }

    fn geometry(&self, gpu: &Gpu, shape: &[usize]) -> Result<Geometry> {
        crate::tensor::check_shape(shape)?;
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(NormError::InvalidArgument(format!(
                "eps must be finite and >= 0, got {}",
                self.eps
            )));
        }
        let axis = match &self.normalized {
            Normalized::Shape(ns) => {
                crate::tensor::check_shape(ns)
                    .map_err(|e| NormError::Shape(format!("normalized_shape {ns:?}: {e}")))?;
                if ns.len() > shape.len() || shape[shape.len() - ns.len()..] != ns[..] {
                    return Err(NormError::Shape(format!(
                        "normalized_shape {ns:?} does not match the trailing dims of x {shape:?}"
                    )));
                }
                shape.len() - ns.len()
            }
            Normalized::Axis(a) => {
                let r = shape.len() as isize;
                let ax = if *a < 0 { a + r } else { *a };
                if !(0..r).contains(&ax) {
                    return Err(NormError::Shape(format!(
                        "axis {a} is out of range for x of rank {r}"
                    )));
                }
                ax as usize
            }
        };
        let d: usize = shape[axis..].iter().product();
        let rows: usize = shape[..axis].iter().product();
        for (name, t) in [("weight", &self.weight), ("bias", &self.bias)] {
            if let Some(t) = t {
                t.check_device(gpu, name)?;
                if t.numel() != d {
                    return Err(NormError::Shape(format!(
                        "{name} has {} values ({:?}) but a normalized row has {d} ({:?})",
                        t.numel(),
                        t.shape(),
                        &shape[axis..]
                    )));
                }
            }
        }
        if d > u32::MAX as usize / 2 || rows > u32::MAX as usize / 2 {
            return Err(NormError::TooLarge(format!("{rows} rows of {d} values")));
        }
        Ok(Geometry { rows, d, axis })
    }

    /// The kernel this call would run for `x_shape` on `gpu`, and why.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let plan = fused_norm::LayerNorm::new(&[768]).plan(&gpu, &[4096, 768])?;
    /// println!("{plan}");
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn plan(&self, gpu: &Gpu, x_shape: &[usize]) -> Result<LnPlan> {
        let g = self.geometry(gpu, x_shape)?;
        Ok(self.plan_for(gpu, &g))
    }

    fn plan_for(&self, gpu: &Gpu, g: &Geometry) -> LnPlan {
        let caps = gpu.capabilities();
        let max_wg = gpu.max_wg();
        let cpu = gpu.is_cpu();
        // Smallest subgroup, or 1: the widest group that reduces without a barrier.
        let sg = if caps.subgroups {
            caps.subgroup_min_size.min(max_wg)
        } else {
            1
        };
        // On CPU adapters a workgroup that meets a barrier costs microseconds (lavapipe runs
        // its subgroups as coroutines), so reductions there stay inside one subgroup. GPUs
        // want 256 threads per workgroup to hide memory latency.
        let wg = if cpu { 64 } else { 256 }
            .min(max_wg)
            .max(caps.subgroup_max_size.min(max_wg));
        let d4 = g.d.div_ceil(4) as u32;
        // Loop iterations of one thread over a row of `tpr` threads.
        let iters = |tpr: u32| {
            let per = if g.d.is_multiple_of(4) {
                d4
            } else {
                g.d as u32
            };
            u64::from(per.div_ceil(tpr))
        };
        let (variant, reason) = match self.variant {
            LnVariant::Auto if cpu => {
                // One thread per row while a thread's loop stays short: lanes never exchange
                // data. Longer rows take the fewest threads that keep loops short; few rows
                // split so every core gets workgroups.
                let need = iters(1).div_ceil(MAX_THREAD_ITERS).max(1) as u32;
                let tpr = need.next_power_of_two();
                let groups = (g.rows as u64).div_ceil(u64::from(wg / tpr.min(wg)));
                // Without subgroups wide enough, a row's threads meet at barriers: worth it only
                // for a few workgroups (microseconds each) and rows that stay in a core's cache
                // between the passes (measured: 512 x 16384 2.0x copy this way, 3.0x split).
                let barrier_ok = groups <= CPU_MAX_BARRIER_WORKGROUPS && g.d <= 16384;
                if (tpr <= sg.max(1) || barrier_ok) && tpr <= wg && groups >= CPU_MIN_WORKGROUPS {
                    let how = if tpr <= sg.max(1) {
                        "no barriers"
                    } else {
                        "few workgroups"
                    };
                    let why = format!(
                        "CPU adapter, {} values per row: {tpr} thread(s) per row, {how}",
                        g.d
                    );
                    (
                        LnVariant::Rows {
                            threads_per_row: tpr,
                        },
                        why,
                    )
                } else {
                    let why = format!(
                        "CPU adapter, {} rows of {}: split rows into segments reduced without \
                         barriers, so every core gets work",
                        g.rows, g.d
                    );
                    (LnVariant::SplitRow, why)
                }
            }
            LnVariant::Auto => {
                // About four vec4s per thread, at least a subgroup's worth of rows sharing a
                // subgroup for short rows, at most a workgroup per row. With few rows (decoding)
                // each row gets a workgroup, and long ones are split, so the device fills.
                let few = (g.rows as u64) < GPU_FEW_ROWS;
                let mut tpr = d4.div_ceil(4).next_power_of_two().clamp(1, wg);
                if few {
                    tpr = wg;
                }
                if few && g.d >= GPU_SPLIT_FEW_ROWS_D {
                    let why = format!(
                        "{} rows of {} values: too few rows to fill a GPU with a workgroup each; \
                         split rows into segments",
                        g.rows, g.d
                    );
                    (LnVariant::SplitRow, why)
                } else if d4 <= tpr * ROW_CACHE {
                    let why = format!(
                        "{} values per row: {tpr} threads per row, {} rows per workgroup, x \
                         read once from memory",
                        g.d,
                        wg / tpr
                    );
                    (
                        LnVariant::Rows {
                            threads_per_row: tpr,
                        },
                        why,
                    )
                } else {
                    let why = format!(
                        "{} values per row do not fit {tpr} threads' registers: split rows so \
                         every workgroup has a segment",
                        g.d
                    );
                    (LnVariant::SplitRow, why)
                }
            }
            LnVariant::Rows { threads_per_row } => {
                let tpr = threads_per_row.clamp(1, wg).next_power_of_two().min(wg);
                let need = (iters(1).div_ceil(MAX_THREAD_ITERS) as u32).next_power_of_two();
                if need > wg {
                    let why = format!("forced rows, but {} values per row need split rows", g.d);
                    (LnVariant::SplitRow, why)
                } else if need > tpr {
                    let why = format!(
                        "forced rows(tpr={threads_per_row}), raised to {need} threads per row \
                         so no thread loops over more than {MAX_THREAD_ITERS} values"
                    );
                    (
                        LnVariant::Rows {
                            threads_per_row: need,
                        },
                        why,
                    )
                } else {
                    (
                        LnVariant::Rows {
                            threads_per_row: tpr,
                        },
                        "forced".to_string(),
                    )
                }
            }
            LnVariant::SplitRow => (LnVariant::SplitRow, "forced".to_string()),
        };
        let (group_threads, segments) = match variant {
            LnVariant::Rows { threads_per_row } => (threads_per_row, (0, 0)),
            _ => {
                // A segment per group of `tps` threads, read twice (two-pass) while it is in
                // cache. CPU adapters: 1024-value (4 KiB) segments, so a workgroup's segments
                // stay in L1. GPUs: enough segments to fill the device. Always at least 4 and at
                // most MAX_THREAD_ITERS vec4s per thread.
                let tps = if cpu { sg } else { wg };
                let lo = u64::from(tps) * 4;
                let hi = u64::from(tps) * MAX_THREAD_ITERS;
                let seg_v4 = if cpu {
                    256
                } else {
                    (u64::from(d4) * g.rows as u64).div_ceil(4096)
                };
                let seg_v4 = seg_v4.clamp(lo, hi).min(u64::from(d4).max(1));
                (tps, (u64::from(d4).div_ceil(seg_v4) as u32, seg_v4 as u32))
            }
        };
        let row_cache = match variant {
            LnVariant::Rows { threads_per_row } => d4
                .div_ceil(threads_per_row)
                .next_power_of_two()
                .clamp(1, ROW_CACHE),
            _ => 0,
        };
        let mut reason = reason;
        if !caps.subgroups {
            reason = format!(
                "{reason}; workgroup-memory reductions: {}",
                gpu.subgroup_note()
            );
        }
        LnPlan {
            variant,
            workgroup_size: wg,
            group_threads,
            segments,
            row_cache,
            subgroups: caps.subgroups,
            reason,
        }
    }

    /// Runs LayerNorm on `x`, allocating the outputs. Blocks until the device is done.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let x = fused_norm::Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?;
    /// let out = fused_norm::LayerNorm::new(&[4]).forward(&gpu, &x)?;
    /// let y = out.y.to_vec(&gpu)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<LayerNormOutput> {
        x.check_device(gpu, "x")?;
        let g = self.geometry(gpu, x.shape())?;
        let mut stat_shape = x.shape()[..g.axis].to_vec();
        stat_shape.extend(std::iter::repeat_n(1, x.shape().len() - g.axis));
        let out = LayerNormOutput {
            y: Tensor::empty(gpu, x.shape())?,
            mean: Tensor::empty(gpu, &stat_shape)?,
            rstd: Tensor::empty(gpu, &stat_shape)?,
        };
        let mut enc = gpu.encoder();
        self.encode(gpu, &mut enc, x, &out)?;
        gpu.submit_wait(enc)?;
        Ok(out)
    }

    /// Records the LayerNorm into the caller's encoder, writing into caller-provided outputs
    /// (`out.y` shaped like x, `out.mean` and `out.rstd` with one value per row). No submit,
    /// no readback: a renderer can put it in its own frame.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?;
    /// let out = LayerNormOutput {
    ///     y: Tensor::empty(&gpu, &[2, 4])?,
    ///     mean: Tensor::empty(&gpu, &[2, 1])?,
    ///     rstd: Tensor::empty(&gpu, &[2, 1])?,
    /// };
    /// let mut enc = gpu.device().create_command_encoder(&Default::default());
    /// LayerNorm::new(&[4]).encode(&gpu, &mut enc, &x, &out)?;
    /// gpu.queue().submit([enc.finish()]);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        out: &LayerNormOutput,
    ) -> Result<()> {
        // Held until the call's temporaries (uniforms, scratch) are freed (see `Gpu::turn`).
        let _turn = gpu.turn();
        x.check_device(gpu, "x")?;
        let g = self.geometry(gpu, x.shape())?;
        for (name, t, n) in [
            ("y", &out.y, x.numel()),
            ("mean", &out.mean, g.rows),
            ("rstd", &out.rstd, g.rows),
        ] {
            t.check_device(gpu, name)?;
            t.check_no_alias(name, x)?;
            if t.numel() != n {
                return Err(NormError::Shape(format!(
                    "output {name} has {} values, needs {n}",
                    t.numel()
                )));
            }
        }
        let plan = self.plan_for(gpu, &g);
        let (rows, d) = (g.rows as u64, g.d as u64);
        let wg = plan.workgroup_size;
        let tpr = plan.group_threads;
        let split = plan.variant == LnVariant::SplitRow;
        let (segs, seg_v4) = (u64::from(plan.segments.0), u64::from(plan.segments.1));
        let mut per_chunk = units_per_binding(gpu, d);
        if split {
            per_chunk = per_chunk.min(units_per_binding(gpu, 4 * (segs + 1)));
        }
        if per_chunk == 0 {
            return Err(NormError::TooLarge(format!(
                "one row of {d} f32 values exceeds a storage binding of {} bytes",
                gpu.max_binding_bytes()
            )));
        }
        let constants: Constants = vec![
            ("WG", f64::from(wg)),
            ("TPR", f64::from(tpr)),
            ("VEC", if g.d % 4 == 0 { 1.0 } else { 0.0 }),
            ("HAS_W", if self.weight.is_some() { 1.0 } else { 0.0 }),
            ("HAS_B", if self.bias.is_some() { 1.0 } else { 0.0 }),
        ];
        // The context's placeholder binds where weight or bias is absent; never read.
        let dummy = gpu.placeholder()?;
        let gamma = self.weight.as_ref().unwrap_or(&dummy).buffer();
        let beta = self.bias.as_ref().unwrap_or(&dummy).buffer();
        let scratch = match split {
            true => Some(Tensor::empty(
                gpu,
                &[(per_chunk.min(rows) * (segs + 1) * 4) as usize],
            )?),
            false => None,
        };

        // Steps per chunk of rows that fits one binding.
        let mut steps = Vec::new();
        let mut r0 = 0u64;
        while r0 < rows {
            let r1 = (r0 + per_chunk).min(rows);
            let n = r1 - r0;
            let params = |grid_x: u32| LnParams {
                rows: n as u32,
                d: d as u32,
                x_off: view(gpu, r0 * d, r1 * d, x.buffer().size()).elem_off,
                y_off: view(gpu, r0 * d, r1 * d, out.y.buffer().size()).elem_off,
                stat_off: view(gpu, r0, r1, out.mean.buffer().size()).elem_off,
                grid_x,
                eps: self.eps,
                segs: segs as u32,
                seg_v4: seg_v4 as u32,
                pad: [0; 3],
            };
            let step = |entry, grid: (u32, u32), binds| {
                Step::new(gpu, entry, grid, &params(grid.0), binds, (r0, r1))
            };
            if split {
                let pgrid = gpu.grid(((n * segs) as u32).div_ceil(wg / tpr))?;
                let mgrid = gpu.grid((n as u32).div_ceil(wg))?;
                let per_row = if g.d % 4 == 0 { d / 4 } else { d };
                let agrid = gpu.grid(((n * per_row) as u32).div_ceil(wg))?;
                steps.push(step("layer_norm_partial", pgrid, &[1, 7]));
                steps.push(step("layer_norm_merge", mgrid, &[1, 5, 6, 7]));
                steps.push(match g.d % 4 {
                    0 => step("layer_norm_apply", agrid, &[1, 2, 3, 4, 7]),
                    _ => step("layer_norm_apply_scalar", agrid, &[1, 3, 4, 7, 8]),
                });
            } else {
                let grid = gpu.grid((n as u32).div_ceil(wg / tpr))?;
                steps.push(match g.d % 4 {
                    0 => step("layer_norm_rows", grid, &[1, 2, 3, 4, 5, 6]),
                    _ => step("layer_norm_rows_scalar", grid, &[1, 3, 4, 5, 6, 8]),
                });
            }
            r0 = r1;
        }
        let resource = |b: u32, (r0, r1): (u64, u64)| match b {
            1 => view(gpu, r0 * d, r1 * d, x.buffer().size()).bind(x.buffer()),
            2 | 8 => view(gpu, r0 * d, r1 * d, out.y.buffer().size()).bind(out.y.buffer()),
            3 => gamma.as_entire_binding(),
            4 => beta.as_entire_binding(),
            5 => view(gpu, r0, r1, out.mean.buffer().size()).bind(out.mean.buffer()),
            6 => view(gpu, r0, r1, out.rstd.buffer().size()).bind(out.rstd.buffer()),
            7 => scratch
                .as_ref()
                .expect("split-row scratch")
                .buffer()
                .as_entire_binding(),
            b => unreachable!("layer_norm.wgsl has no binding {b}"),
        };
        let mut launches = Vec::with_capacity(steps.len());
        for s in &steps {
            let family = Family::LayerNorm {
                row_cache: plan.row_cache.max(1),
            };
            let pipeline = gpu.pipeline(family, s.entry, &constants)?;
            launches.push(s.launch(pipeline, resource));
        }
        record_all(gpu, encoder, &launches)
    }
}
