//! The measurements behind `why_layernorm/report.md`, shared by the example (which runs them at
//! report size and draws the figures) and `tests/why_layernorm.rs` (which runs them at small
//! sizes and asserts the report's claims). Everything here runs the crate's GPU kernels; nothing
//! is computed on the CPU except the inputs and the comparisons.
//!
//! Which crate norm realizes which [`Norm`] is decided in one place, `prepare`, and used only by
//! [`normalize`] (every norm output of the report, with the plan that ran) and [`costs`] (every
//! timing); experiment 3 also drives a `BatchNorm`'s running statistics directly.

use crate::bench::baseline::Baselines;
use crate::bench::{pseudo_random, GpuTimer, Record};
use fused_norm::{
    BatchNorm, BatchNormOutput, Gpu, GroupNorm, InstanceNorm, LayerNorm, Layout, NormOutput, Plan,
    Result, RmsNorm, RmsNormOutput, Tensor,
};

/// eps of every norm in the report (PyTorch's default for BatchNorm, LayerNorm and GroupNorm).
pub const EPS: f32 = 1e-5;
/// BatchNorm's running-statistics momentum (PyTorch's default).
pub const MOMENTUM: f32 = 0.1;

/// The norms compared. All without affine parameters: weight and bias act after the statistics
/// and change none of the report's claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Batch,
    Layer,
    Instance,
    Group { groups: usize },
    Rms,
}

impl Norm {
    /// The five norms of figure 1, GroupNorm with `groups` groups.
    pub fn all(groups: usize) -> [Norm; 5] {
        [
            Norm::Batch,
            Norm::Layer,
            Norm::Instance,
            Norm::Group { groups },
            Norm::Rms,
        ]
    }

    pub fn name(self) -> String {
        match self {
            Norm::Batch => "BatchNorm".into(),
            Norm::Layer => "LayerNorm".into(),
            Norm::Instance => "InstanceNorm".into(),
            Norm::Group { groups } => format!("GroupNorm (G={groups})"),
            Norm::Rms => "RMSNorm".into(),
        }
    }

    /// True for the norms whose statistics come from one sample alone.
    pub fn per_sample(self) -> bool {
        self != Norm::Batch
    }
}

/// Training or inference forward (only BatchNorm differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// A norm ready to record on one input.
struct Prepared<'a> {
    /// The plan that runs, without the policy's reason.
    kernel: String,
    record: Box<Record<'a>>,
}

/// `kind` on `x` in `layout`, writing `y` (its statistics go to buffers allocated here), as the
/// crate's own struct for it. `Layout::ChannelsFirst` is images `[N, C, spatial...]`: LayerNorm
/// and RMSNorm per sample over dims 1.. (ONNX axis 1). `Layout::ChannelsLast` is sequences
/// `[tokens..., C]`: LayerNorm and RMSNorm per token over the last dim. BatchNorm, InstanceNorm
/// and GroupNorm take the layout as it is (their sample is dim 0 in both).
fn prepare<'a>(
    gpu: &'a Gpu,
    kind: Norm,
    mode: Mode,
    x: &'a Tensor,
    layout: Layout,
    y: &'a Tensor,
) -> Result<Prepared<'a>> {
    let shape = x.shape();
    let (axis, c) = match layout {
        Layout::ChannelsFirst => (1, shape[1]),
        Layout::ChannelsLast => (-1, shape[shape.len() - 1]),
    };
    let rows = match layout {
        Layout::ChannelsFirst => shape[0],
        Layout::ChannelsLast => x.numel() / c,
    };
    let stats = |k: usize| Tensor::empty(gpu, &[k]);
    let norm_output = |k: usize| -> Result<NormOutput> {
        Ok(NormOutput {
            y: y.clone(),
            mean: stats(k)?,
            rstd: stats(k)?,
        })
    };
    let (plan, record): (Plan, Box<Record<'a>>) = match kind {
        Norm::Batch => {
            let bn = BatchNorm::new(gpu, c)?.eps(EPS);
            let out = BatchNormOutput {
                y: y.clone(),
                mean: stats(c)?,
                invstd: stats(c)?,
            };
            let plan = bn.plan(gpu, shape, layout)?;
            if mode == Mode::Eval {
                // plan() describes training; inference runs the coefficients and the same apply.
                let apply = plan.kernels.last().copied().unwrap_or_default();
                return Ok(Prepared {
                    kernel: format!("[channels_eval_coef, {apply}]"),
                    record: Box::new(move |e| bn.encode_eval(gpu, e, x, layout, &out.y)),
                });
            }
            // Never committed: the batch counter stays, momentum is fixed.
            let record = move |e: &mut _| bn.encode_train(gpu, e, x, layout, &out).map(drop);
            (plan, Box::new(record))
        }
        Norm::Layer => {
            let ln = LayerNorm::from_axis(axis).eps(EPS);
            let out = norm_output(rows)?;
            (
                ln.plan(gpu, shape)?,
                Box::new(move |e| ln.encode(gpu, e, x, &out)),
            )
        }
        Norm::Instance | Norm::Group { .. } => {
            // An InstanceNorm dereferences to its GroupNorm, a group per channel.
            let (gn, groups) = match kind {
                Norm::Group { groups } => (GroupNorm::new(groups, c)?.eps(EPS), groups),
                _ => ((*InstanceNorm::new(c).eps(EPS)).clone(), c),
            };
            let out = norm_output(shape[0] * groups)?;
            (
                gn.plan(gpu, shape, layout)?,
                Box::new(move |e| gn.encode(gpu, e, x, layout, &out)),
            )
        }
        Norm::Rms => {
            let rms = RmsNorm::from_axis(axis).eps(EPS);
            let out = RmsNormOutput {
                y: y.clone(),
                rstd: stats(rows)?,
            };
            (
                rms.plan(gpu, shape)?,
                Box::new(move |e| rms.encode(gpu, e, x, &out)),
            )
        }
    };
    let text = plan.to_string();
    Ok(Prepared {
        kernel: text.split_once(": ").map_or(&*text, |(k, _)| k).to_string(),
        record,
    })
}

/// `kind` applied to `x` of `shape` on the GPU in training mode (BatchNorm: batch statistics):
/// the output, and the plan that ran (without its reason).
pub fn normalize(
    gpu: &Gpu,
    kind: Norm,
    x: &[f32],
    shape: &[usize],
    layout: Layout,
) -> Result<(Vec<f32>, String)> {
    let xt = Tensor::from_slice(gpu, x, shape)?;
    let y = Tensor::empty(gpu, shape)?;
    let mut p = prepare(gpu, kind, Mode::Train, &xt, layout, &y)?;
    let mut enc = gpu.encoder();
    (p.record)(&mut enc)?;
    gpu.submit_wait(enc)?;
    Ok((y.to_vec(gpu)?, p.kernel))
}

/// The fastest of `samples` timings of `a` and of `b`, taken in turns (after one warm-up of
/// each) so that both see the same load: on a CPU adapter, other work on the machine only ever
/// adds time.
fn alternate(
    timer: &GpuTimer,
    samples: usize,
    a: &mut Record,
    b: &mut Record,
) -> Result<(f64, f64)> {
    timer.sample_ms(1, a)?;
    timer.sample_ms(1, b)?;
    let (mut a_ms, mut b_ms) = (f64::MAX, f64::MAX);
    for _ in 0..samples.max(1) {
        a_ms = a_ms.min(timer.sample_ms(1, a)?);
        b_ms = b_ms.min(timer.sample_ms(1, b)?);
    }
    Ok((a_ms, b_ms))
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// `n` images of `c` channels and `s` pixels, NCHW: channel k has mean 1 + k/2 and std
/// 0.5 + k/8 (so normalizing matters), uniform noise from `seed`.
pub fn images(n: usize, c: usize, s: usize, seed: u64) -> Vec<f32> {
    let mut x = pseudo_random(n * c * s, seed, 0.0, 1.0);
    for (i, v) in x.iter_mut().enumerate() {
        let k = (i / s % c) as f32;
        *v = 1.0 + k / 2.0 + (0.5 + k / 8.0) * *v;
    }
    x
}

fn mean_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .sum();
    s / a.len().max(1) as f64
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .fold(0.0, f64::max)
}

fn bitwise_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// How one sample's output of a per-sample norm compares across contexts (batch sizes, or with
/// and without padding), each context recorded with the kernel that ran.
#[derive(Clone, Debug)]
pub struct Invariance {
    /// The kernel per context (the CPU-adapter policy picks by the number of rows).
    pub kernels: Vec<String>,
    /// Bitwise the same in every context.
    pub bitwise: bool,
    /// Bitwise the same between every two contexts that ran the same kernel.
    pub bitwise_same_kernel: bool,
    /// Largest |difference| between any context and the first.
    pub max_diff: f64,
}

impl Invariance {
    pub fn of(outputs: &[(String, Vec<f32>)]) -> Invariance {
        let y0 = &outputs[0].1;
        let mut inv = Invariance {
            kernels: outputs.iter().map(|(k, _)| k.clone()).collect(),
            bitwise: true,
            bitwise_same_kernel: true,
            max_diff: 0.0,
        };
        for (i, (k, y)) in outputs.iter().enumerate() {
            inv.bitwise &= bitwise_eq(y, y0);
            inv.max_diff = inv.max_diff.max(max_abs_diff(y, y0));
            let first_same = outputs.iter().position(|(k2, _)| k2 == k).unwrap_or(i);
            inv.bitwise_same_kernel &= bitwise_eq(y, &outputs[first_same].1);
        }
        inv
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Which elements share statistics

/// An `[N, C, H*W]` grid of cells (index `(n * C + c) * HW + s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl Grid {
    pub fn len(self) -> usize {
        self.n * self.c * self.hw
    }

    pub fn index(self, n: usize, c: usize, s: usize) -> usize {
        (n * self.c + c) * self.hw + s
    }
}

/// Perturbs element `at = (n, c, s)` of an `[N, C, H*W]` input by +1 and returns, per element,
/// whether `kind`'s GPU output changed (any bit).
pub fn sharing(gpu: &Gpu, kind: Norm, g: Grid, at: (usize, usize, usize)) -> Result<Vec<bool>> {
    let shape = [g.n, g.c, g.hw];
    let x = images(g.n, g.c, g.hw, 11);
    let mut xp = x.clone();
    xp[g.index(at.0, at.1, at.2)] += 1.0;
    let run = |x: &[f32]| normalize(gpu, kind, x, &shape, Layout::ChannelsFirst);
    let (y, yp) = (run(&x)?.0, run(&xp)?.0);
    Ok(y.iter()
        .zip(&yp)
        .map(|(a, b)| a.to_bits() != b.to_bits())
        .collect())
}

/// The textbook set of elements that share statistics with `at` (Wu & He, Group Normalization,
/// figure 2): what [`sharing`] must measure.
pub fn definition(kind: Norm, g: Grid, at: (usize, usize, usize)) -> Vec<bool> {
    let mut v = Vec::with_capacity(g.len());
    for n in 0..g.n {
        for c in 0..g.c {
            for _ in 0..g.hw {
                v.push(match kind {
                    Norm::Batch => c == at.1,
                    Norm::Layer | Norm::Rms => n == at.0,
                    Norm::Instance => n == at.0 && c == at.1,
                    Norm::Group { groups } => {
                        let per = g.c / groups;
                        n == at.0 && c / per == at.1 / per
                    }
                });
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------------------------
// 2. Batch dependence

/// Sample 0's output inside batches of growing size drawn from one pool.
#[derive(Clone, Debug)]
pub struct BatchDependence {
    pub sizes: Vec<usize>,
    /// Per batch size: mean |BN output of sample 0 - its output in the largest batch|.
    pub bn_mean_err: Vec<f64>,
    /// Per batch size: the max of the same difference.
    pub bn_max_err: Vec<f64>,
    /// Per per-sample norm: sample 0's output across the batch sizes.
    pub per_sample: Vec<(Norm, Invariance)>,
}

impl BatchDependence {
    /// The largest change of any per-sample norm across the batch sizes.
    pub fn per_sample_max_diff(&self) -> f64 {
        self.per_sample
            .iter()
            .map(|(_, i)| i.max_diff)
            .fold(0.0, f64::max)
    }
}

/// Batches are the first `b` images of one pool of `max(sizes)` images `[C, H*W]`; the
/// reference is sample 0's output in the largest batch.
pub fn batch_dependence(
    gpu: &Gpu,
    c: usize,
    hw: usize,
    groups: usize,
    sizes: &[usize],
) -> Result<BatchDependence> {
    let full = *sizes.iter().max().expect("batch sizes");
    let pool = images(full, c, hw, 21);
    let sample = c * hw;
    // (the kernel that ran, sample 0's output)
    let sample0 = |kind, b: usize| -> Result<(String, Vec<f32>)> {
        let shape = [b, c, hw];
        let (mut y, kernel) = normalize(
            gpu,
            kind,
            &pool[..b * sample],
            &shape,
            Layout::ChannelsFirst,
        )?;
        y.truncate(sample);
        Ok((kernel, y))
    };
    let reference = sample0(Norm::Batch, full)?.1;
    let mut out = BatchDependence {
        sizes: sizes.to_vec(),
        bn_mean_err: Vec::new(),
        bn_max_err: Vec::new(),
        per_sample: Vec::new(),
    };
    for &b in sizes {
        let y = sample0(Norm::Batch, b)?.1;
        out.bn_mean_err.push(mean_abs_diff(&y, &reference));
        out.bn_max_err.push(max_abs_diff(&y, &reference));
    }
    for kind in Norm::all(groups).into_iter().filter(|k| k.per_sample()) {
        let outputs = sizes
            .iter()
            .map(|&b| sample0(kind, b))
            .collect::<Result<Vec<_>>>()?;
        out.per_sample.push((kind, Invariance::of(&outputs)));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 3. The train/eval gap

/// BatchNorm's output with batch statistics against running statistics during training.
#[derive(Clone, Debug)]
pub struct TrainEvalGap {
    /// Training steps after which the gap is measured (0: the initial running statistics).
    pub steps: Vec<usize>,
    pub batch_sizes: Vec<usize>,
    /// `[batch size][checkpoint]`: mean |train-mode output - eval-mode output| over
    /// `eval_batches` held-out batches of that size.
    pub gap: Vec<Vec<f64>>,
    pub eval_batches: usize,
}

/// Trains a BatchNorm (momentum 0.1) on fresh batches of `[b, C, H*W]` images and, at each of
/// `steps`, compares training-mode output (the batch's own statistics) with eval-mode output
/// (the running statistics) on held-out batches of the same size.
pub fn train_eval_gap(
    gpu: &Gpu,
    c: usize,
    hw: usize,
    batch_sizes: &[usize],
    steps: &[usize],
    eval_batches: usize,
) -> Result<TrainEvalGap> {
    let mut gap = Vec::new();
    for &b in batch_sizes {
        let shape = [b, c, hw];
        let held_out: Vec<Vec<f32>> = (0..eval_batches)
            .map(|i| images(b, c, hw, 1_000_000 + i as u64))
            .collect();
        let mut bn = BatchNorm::new(gpu, c)?.eps(EPS).momentum(Some(MOMENTUM));
        let mut row = Vec::new();
        let mut done = 0;
        for &k in steps {
            while done < k {
                let x = images(b, c, hw, 1000 * b as u64 + done as u64);
                bn.forward_train(
                    gpu,
                    &Tensor::from_slice(gpu, &x, &shape)?,
                    Layout::ChannelsFirst,
                )?;
                done += 1;
            }
            let mut sum = 0.0;
            for x in &held_out {
                let train = normalize(gpu, Norm::Batch, x, &shape, Layout::ChannelsFirst)?.0;
                let xt = Tensor::from_slice(gpu, x, &shape)?;
                let eval = bn
                    .forward_eval(gpu, &xt, Layout::ChannelsFirst)?
                    .to_vec(gpu)?;
                sum += mean_abs_diff(&train, &eval);
            }
            row.push(sum / eval_batches as f64);
        }
        gap.push(row);
    }
    Ok(TrainEvalGap {
        steps: steps.to_vec(),
        batch_sizes: batch_sizes.to_vec(),
        gap,
        eval_batches,
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Padding in NLP batches

/// `b` sequence lengths in `1..=t_max`, skewed towards short ones: the first is `t_max` (the
/// batch's longest), the others `ceil(t_max * u^alpha)` for u uniform in [0, 1) from `seed`.
/// A larger `alpha` gives shorter sequences and more padding.
pub fn skewed_lengths(b: usize, t_max: usize, alpha: f64, seed: u64) -> Vec<usize> {
    let u = pseudo_random(b, seed, 0.5, 1.0 / 3.46);
    (0..b)
        .map(|i| match i {
            0 => t_max,
            _ => ((t_max as f64 * f64::from(u[i]).clamp(0.0, 1.0).powf(alpha)).ceil() as usize)
                .clamp(1, t_max),
        })
        .collect()
}

/// One padded batch: BatchNorm and LayerNorm on `[B, T, D]` with zero padding against the same
/// norm on the real tokens alone.
#[derive(Clone, Debug)]
pub struct PaddingPoint {
    /// Padding tokens / all tokens.
    pub pad_fraction: f64,
    /// Mean |BN output - BN over the real tokens only| over the real tokens.
    pub bn_err: f64,
    pub bn_max_err: f64,
    /// The real tokens' LayerNorm outputs with padding against without.
    pub ln: Invariance,
}

/// Runs one batch of sequences with `lengths`, `d` features per token (feature k has mean
/// 1 + k/16, as embeddings do not average to zero), padded with zeros to the longest.
pub fn padding(gpu: &Gpu, lengths: &[usize], d: usize, seed: u64) -> Result<PaddingPoint> {
    let (b, t) = (lengths.len(), *lengths.iter().max().expect("lengths"));
    let real: usize = lengths.iter().sum();
    let mut tokens = pseudo_random(real * d, seed, 0.0, 1.0);
    for (i, v) in tokens.iter_mut().enumerate() {
        let k = (i % d) as f32;
        *v = 1.0 + k / 16.0 + (0.5 + k / 64.0) * *v;
    }
    let mut padded = vec![0.0f32; b * t * d];
    let mut at = 0;
    for (s, &len) in lengths.iter().enumerate() {
        padded[s * t * d..(s * t + len) * d].copy_from_slice(&tokens[at..at + len * d]);
        at += len * d;
    }
    // Real tokens' outputs, in the packed order.
    let real_rows = |y: Vec<f32>| -> Vec<f32> {
        let mut out = Vec::with_capacity(real * d);
        for (s, &len) in lengths.iter().enumerate() {
            out.extend_from_slice(&y[s * t * d..(s * t + len) * d]);
        }
        out
    };
    let run =
        |kind, x: &[f32], shape: &[usize]| normalize(gpu, kind, x, shape, Layout::ChannelsLast);
    let bn_pad = real_rows(run(Norm::Batch, &padded, &[b, t, d])?.0);
    let bn_real = run(Norm::Batch, &tokens, &[real, d])?.0;
    let (ln_pad, pad_kernel) = run(Norm::Layer, &padded, &[b, t, d])?;
    let (ln_real, real_kernel) = run(Norm::Layer, &tokens, &[real, d])?;
    Ok(PaddingPoint {
        pad_fraction: 1.0 - real as f64 / (b * t) as f64,
        bn_err: mean_abs_diff(&bn_pad, &bn_real),
        bn_max_err: max_abs_diff(&bn_pad, &bn_real),
        ln: Invariance::of(&[(pad_kernel, real_rows(ln_pad)), (real_kernel, ln_real)]),
    })
}

// ---------------------------------------------------------------------------------------------
// 5. Cost

/// One norm's time at one shape against the copy of the same bytes.
#[derive(Clone, Debug)]
pub struct Cost {
    pub label: String,
    pub ms: f64,
    /// The copy of the same bytes, timed in turns with the norm.
    pub copy_ms: f64,
    /// The plan that ran, without its reason.
    pub kernel: String,
}

impl Cost {
    pub fn ratio(&self) -> f64 {
        self.ms / self.copy_ms
    }
}

/// Times `norms` (label, kind, mode) on one input of `shape` against a vec4 copy of the same
/// bytes: the fastest of `samples` submits of each, norm and copy in turns.
pub fn costs(
    gpu: &Gpu,
    timer: &GpuTimer,
    shape: &[usize],
    layout: Layout,
    norms: &[(&str, Norm, Mode)],
    samples: usize,
) -> Result<Vec<Cost>> {
    let numel: usize = shape.iter().product();
    let x = Tensor::from_slice(gpu, &pseudo_random(numel, 5, 0.5, 1.0), shape)?;
    let (y, y_copy) = (Tensor::empty(gpu, shape)?, Tensor::empty(gpu, shape)?);
    let base = Baselines::new(gpu);
    let mut copy = |e: &mut wgpu::CommandEncoder| {
        base.copy(e, &x, &y_copy);
        Ok(())
    };
    let mut out = Vec::new();
    for &(label, kind, mode) in norms {
        let mut p = prepare(gpu, kind, mode, &x, layout, &y)?;
        let (ms, copy_ms) = alternate(timer, samples, &mut *p.record, &mut copy)?;
        out.push(Cost {
            label: label.to_string(),
            ms,
            copy_ms,
            kernel: p.kernel,
        });
    }
    Ok(out)
}
