//! Benchmark support shared by `examples/bench.rs` (the table printer) and `benches/norms.rs`
//! (criterion): a GPU timer, the shape grid, and one measured row per (op, shape): the fused
//! kernel against a vec4 copy of the same bytes, the naive multi-pass baseline and the CPU
//! reference, all in the same run on the same adapter.

use std::time::Instant;

use crate::baseline::{self, Naive};
use crate::error::Result;
use crate::{
    reference, BatchNorm, BatchNormOutput, Gpu, LayerNorm, LayerNormOutput, Layout, LnVariant,
    Tensor,
};

/// How GPU time was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKind {
    /// Timestamp queries written in the command stream around the work: device time only.
    Timestamp,
    /// Host wall clock around submit + wait, divided by the repetitions in the submit.
    Wall,
}

impl TimerKind {
    /// "timestamp" or "wall".
    ///
    /// ```
    /// assert_eq!(fused_norm::bench::TimerKind::Wall.name(), "wall");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            TimerKind::Timestamp => "timestamp",
            TimerKind::Wall => "wall",
        }
    }
}

/// Times recorded GPU work: timestamps where the device has them, else wall clock.
///
/// ```no_run
/// # use fused_norm::*;
/// let gpu = Gpu::new()?;
/// let timer = bench::GpuTimer::new(&gpu);
/// let x = Tensor::from_slice(&gpu, &vec![1.0; 1 << 20], &[1 << 20])?;
/// let y = Tensor::empty(&gpu, &[1 << 20])?;
/// let ms = timer.median_ms(5, 2, |enc| baseline::encode_copy(&gpu, enc, &x, &y))?;
/// # Ok::<(), fused_norm::NormError>(())
/// ```
pub struct GpuTimer {
    gpu: Gpu,
    query: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
}

impl GpuTimer {
    /// A timer for `gpu`.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let t = fused_norm::bench::GpuTimer::new(&gpu);
    /// println!("{}", t.kind().name());
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn new(gpu: &Gpu) -> GpuTimer {
        let query = gpu.capabilities().timestamps.then(|| {
            let d = gpu.device();
            let qs = d.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("bench"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            });
            let mk = |usage| {
                d.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("bench timestamps"),
                    size: 16,
                    usage,
                    mapped_at_creation: false,
                })
            };
            let resolve = mk(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
            let read = mk(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
            (qs, resolve, read)
        });
        GpuTimer {
            gpu: gpu.clone(),
            query,
        }
    }

    /// Which clock this timer reads.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let kind = fused_norm::bench::GpuTimer::new(&gpu).kind();
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn kind(&self) -> TimerKind {
        if self.query.is_some() {
            TimerKind::Timestamp
        } else {
            TimerKind::Wall
        }
    }

    /// Milliseconds per repetition of one submit holding `iters` repetitions of `record`.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0; 64], &[64])?;
    /// # let y = Tensor::empty(&gpu, &[64])?;
    /// let t = bench::GpuTimer::new(&gpu);
    /// let ms = t.sample_ms(3, &mut |enc: &mut wgpu::CommandEncoder| baseline::encode_copy(&gpu, enc, &x, &y))?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn sample_ms(
        &self,
        iters: usize,
        record: &mut dyn FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
    ) -> Result<f64> {
        let gpu = &self.gpu;
        let mut enc = gpu.encoder();
        if let Some((qs, _, _)) = &self.query {
            enc.write_timestamp(qs, 0);
        }
        for _ in 0..iters {
            record(&mut enc)?;
        }
        let start = Instant::now();
        let Some((qs, resolve, read)) = &self.query else {
            gpu.submit_wait(enc)?;
            return Ok(start.elapsed().as_secs_f64() * 1e3 / iters as f64);
        };
        enc.write_timestamp(qs, 1);
        enc.resolve_query_set(qs, 0..2, resolve, 0);
        enc.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
        gpu.submit_wait(enc)?;
        let bytes = gpu.read_mapped(read)?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let ns = ticks[1].saturating_sub(ticks[0]) as f64
            * f64::from(gpu.queue().get_timestamp_period());
        Ok(ns / 1e6 / iters as f64)
    }

    /// Median over `samples` submits (after one warm-up) of milliseconds per repetition.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0; 64], &[64])?;
    /// # let y = Tensor::empty(&gpu, &[64])?;
    /// let ms = bench::GpuTimer::new(&gpu).median_ms(5, 1, |e| baseline::encode_copy(&gpu, e, &x, &y))?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn median_ms(
        &self,
        samples: usize,
        iters: usize,
        mut record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
    ) -> Result<f64> {
        self.sample_ms(1, &mut record)?;
        let mut v = Vec::with_capacity(samples);
        for _ in 0..samples.max(1) {
            v.push(self.sample_ms(iters.max(1), &mut record)?);
        }
        Ok(median(&mut v))
    }
}

/// Median of `v` (sorted in place).
///
/// ```
/// assert_eq!(fused_norm::bench::median(&mut [3.0, 1.0, 2.0]), 2.0);
/// ```
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Milliseconds an empty submit + wait takes (the floor under every wall-clock number).
///
/// ```no_run
/// # let gpu = fused_norm::Gpu::new()?;
/// let ms = fused_norm::bench::submit_overhead_ms(&gpu, 20)?;
/// # Ok::<(), fused_norm::NormError>(())
/// ```
pub fn submit_overhead_ms(gpu: &Gpu, samples: usize) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..samples.max(1) {
        let enc = gpu.encoder();
        let s = Instant::now();
        gpu.submit_wait(enc)?;
        v.push(s.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(&mut v))
}

/// Which norm a benchmark row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// LayerNorm forward over the last dim, with weight and bias.
    LayerNorm,
    /// BatchNorm training forward (batch statistics, running statistics update).
    BatchNormTrain,
    /// BatchNorm inference forward (running statistics).
    BatchNormEval,
}

impl Op {
    /// The name used in tables and JSON.
    ///
    /// ```
    /// assert_eq!(fused_norm::bench::Op::LayerNorm.name(), "layer_norm");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Op::LayerNorm => "layer_norm",
            Op::BatchNormTrain => "batch_norm_train",
            Op::BatchNormEval => "batch_norm_eval",
        }
    }
}

/// One benchmark case.
#[derive(Clone, Debug)]
pub struct Case {
    /// The operation.
    pub op: Op,
    /// Tensor shape.
    pub shape: Vec<usize>,
    /// Channel layout (BatchNorm); LayerNorm rows use ChannelsLast, the normalized dim last.
    pub layout: Layout,
}

/// The shape grid users run: LayerNorm rows x D from many short rows to few long ones, and
/// BatchNorm on image batches (NCHW, NHWC) and a [N, C] activation.
///
/// ```
/// assert!(fused_norm::bench::grid().len() >= 15);
/// ```
pub fn grid() -> Vec<Case> {
    let mut v = Vec::new();
    for (rows, d) in [
        (65536, 64),
        (16384, 256),
        (16384, 768),
        (4096, 1024),
        (2048, 4096),
        (512, 16384),
        (64, 65536),
    ] {
        v.push(Case {
            op: Op::LayerNorm,
            shape: vec![rows, d],
            layout: Layout::ChannelsLast,
        });
    }
    for (shape, layout) in [
        (vec![32, 64, 56, 56], Layout::ChannelsFirst),
        (vec![256, 256, 14, 14], Layout::ChannelsFirst),
        (vec![4096, 1024], Layout::ChannelsFirst),
        (vec![32, 56, 56, 64], Layout::ChannelsLast),
    ] {
        for op in [Op::BatchNormTrain, Op::BatchNormEval] {
            v.push(Case {
                op,
                shape: shape.clone(),
                layout,
            });
        }
    }
    v
}

/// One measured row: the fused kernel, and on the same adapter, bytes and run, a vec4 copy,
/// the naive multi-pass baseline and the f64 CPU reference.
#[derive(Clone, Debug)]
pub struct Row {
    /// The case.
    pub case: Case,
    /// The kernel variant that ran (the plan's description for LayerNorm).
    pub variant: String,
    /// Bytes the op must move at least: x read once, y written once.
    pub bytes: u64,
    /// Median milliseconds of the fused kernel.
    pub median_ms: f64,
    /// Median milliseconds of the copy of the same bytes.
    pub copy_ms: f64,
    /// Median milliseconds of the naive baseline.
    pub naive_ms: f64,
    /// Milliseconds of the CPU reference (one run).
    pub cpu_ms: f64,
    /// Clock used for the GPU numbers.
    pub timer: TimerKind,
}

impl Row {
    /// Effective bandwidth of the fused kernel, GB/s.
    ///
    /// ```no_run
    /// # fn f(r: fused_norm::bench::Row) { println!("{:.1}", r.gbps()); }
    /// ```
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / (self.median_ms * 1e6)
    }

    /// Fused time over copy time (1.0 is the bandwidth limit).
    ///
    /// ```no_run
    /// # fn f(r: fused_norm::bench::Row) { println!("{:.2}", r.ratio_to_copy()); }
    /// ```
    pub fn ratio_to_copy(&self) -> f64 {
        self.median_ms / self.copy_ms
    }

    /// Naive time over fused time.
    ///
    /// ```no_run
    /// # fn f(r: fused_norm::bench::Row) { println!("{:.2}", r.speedup_vs_naive()); }
    /// ```
    pub fn speedup_vs_naive(&self) -> f64 {
        self.naive_ms / self.median_ms
    }
}

/// `n` deterministic pseudo-random values, uniform in [mean - 1.73 std, mean + 1.73 std)
/// (xorshift64), for benchmarks and demos: reproducible without a random-number crate.
///
/// ```
/// let v = fused_norm::bench::pseudo_random(1000, 7, 1.0, 2.0);
/// let mean = v.iter().sum::<f32>() / 1000.0;
/// assert!((mean - 1.0).abs() < 0.2);
/// ```
pub fn pseudo_random(n: usize, seed: u64, mean: f32, std: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            mean + std * ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.46
        })
        .collect()
}

/// Measures one case: `samples` submits of `iters` repetitions per GPU number (median).
/// `variant` forces a LayerNorm variant (None: the policy's choice).
///
/// ```no_run
/// # use fused_norm::*;
/// let gpu = Gpu::new()?;
/// let timer = bench::GpuTimer::new(&gpu);
/// let case = &bench::grid()[0];
/// let row = bench::run_case(&gpu, &timer, case, None, 3, 1)?;
/// println!("{:.2}x copy", row.ratio_to_copy());
/// # Ok::<(), fused_norm::NormError>(())
/// ```
pub fn run_case(
    gpu: &Gpu,
    timer: &GpuTimer,
    case: &Case,
    variant: Option<LnVariant>,
    samples: usize,
    iters: usize,
) -> Result<Row> {
    let shape = &case.shape;
    let numel: usize = shape.iter().product();
    let xh = pseudo_random(numel, 7, 0.25, 0.87);
    let x = Tensor::from_slice(gpu, &xh, shape)?;
    let y = Tensor::empty(gpu, shape)?;
    let copy_ms = timer.median_ms(samples, iters, |e| baseline::encode_copy(gpu, e, &x, &y))?;
    let bytes = 2 * numel as u64 * 4;
    let (c, s) = match case.layout {
        Layout::ChannelsFirst if case.op != Op::LayerNorm => {
            (shape[1], shape[2..].iter().product::<usize>())
        }
        _ => (shape[shape.len() - 1], 1),
    };
    let wh = pseudo_random(c, 8, 0.25, 0.87);
    let bh = pseudo_random(c, 9, 0.25, 0.87);
    let w = Tensor::from_slice(gpu, &wh, &[c])?;
    let b = Tensor::from_slice(gpu, &bh, &[c])?;
    let stat_len = if case.op == Op::LayerNorm {
        numel / c
    } else {
        c
    };
    let naive = Naive {
        mean: Tensor::empty(gpu, &[stat_len])?,
        var: Tensor::from_slice(gpu, &vec![1.0; stat_len], &[stat_len])?,
        weight: Some(w.clone()),
        bias: Some(b.clone()),
        eps: 1e-5,
    };
    let (median_ms, naive_ms, cpu_ms, variant) = match case.op {
        Op::LayerNorm => {
            let mut ln = LayerNorm::new(&[c]).weight(w).bias(b);
            if let Some(v) = variant {
                ln = ln.variant(v);
            }
            let plan = ln.plan(gpu, shape)?;
            let out = LayerNormOutput {
                y: y.clone(),
                mean: Tensor::empty(gpu, &[stat_len])?,
                rstd: Tensor::empty(gpu, &[stat_len])?,
            };
            let fused = timer.median_ms(samples, iters, |e| ln.encode(gpu, e, &x, &out))?;
            let naive_ms = timer.median_ms(samples, iters, |e| {
                baseline::encode_naive_layer_norm(gpu, e, &x, c, &y, &naive)
            })?;
            let t = Instant::now();
            let r = reference::layer_norm(&xh, c, Some(&wh), Some(&bh), 1e-5);
            let cpu_ms = t.elapsed().as_secs_f64() * 1e3;
            drop(r);
            let v = plan.to_string();
            let v = v.split(':').next().unwrap_or("").to_string();
            (fused, naive_ms, cpu_ms, v)
        }
        Op::BatchNormTrain | Op::BatchNormEval => {
            let train = case.op == Op::BatchNormTrain;
            let bn = BatchNorm::new(gpu, c)?.weight(w).bias(b);
            let out = BatchNormOutput {
                y: y.clone(),
                mean: Tensor::empty(gpu, &[c])?,
                invstd: Tensor::empty(gpu, &[c])?,
            };
            let fused = timer.median_ms(samples, iters, |e| {
                if train {
                    // The batch counter is not advanced: momentum is fixed here.
                    bn.encode_train(gpu, e, &x, case.layout, &out).map(drop)
                } else {
                    bn.encode_eval(gpu, e, &x, case.layout, &y)
                }
            })?;
            let naive_ms = timer.median_ms(samples, iters, |e| {
                baseline::encode_naive_batch_norm(gpu, e, &x, case.layout, &y, &naive, train)
            })?;
            let t = Instant::now();
            let st = reference::batch_stats(&xh, c, s);
            let r = reference::batch_norm_apply(
                &xh,
                c,
                s,
                &st.mean,
                &st.var,
                Some(&wh),
                Some(&bh),
                1e-5,
            );
            let cpu_ms = t.elapsed().as_secs_f64() * 1e3;
            drop(r);
            let plan = bn.plan(gpu, shape, case.layout)?;
            let apply = plan.channels.as_ref().map_or("", |c| c.apply_name());
            let v = match train {
                true => plan.to_string(),
                false => format!("eval_coef + apply {apply}, wg={}", plan.workgroup_size),
            };
            let v = v.split(':').next().unwrap_or("").to_string();
            (fused, naive_ms, cpu_ms, v)
        }
    };
    Ok(Row {
        case: case.clone(),
        variant,
        bytes,
        median_ms,
        copy_ms,
        naive_ms,
        cpu_ms,
        timer: timer.kind(),
    })
}
