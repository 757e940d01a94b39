//! Benchmark support shared by `benches/norms.rs` (criterion) and `examples/bench.rs` (the
//! table printer): a GPU timer, the shape grid, and one prepared case per (op, shape): the
//! fused kernel, a vec4 copy of the same bytes, the naive multi-pass baseline and the f64
//! reference, all on the same adapter, measured in the same run. Not part of the library.
#![allow(dead_code)]

pub mod baseline;

use std::sync::Arc;
use std::time::Instant;

use baseline::{Baselines, Naive};
use fused_norm::{
    reference, BatchNorm, BatchNormOutput, Gpu, GpuOptions, GroupNorm, InstanceNorm, LayerNorm,
    Layout, LnVariant, NormError, NormOutput, Result, RmsNorm, RmsNormOutput, Tensor,
};

/// The adapter the benchmarks run on (honours WGPU_BACKEND), with timestamp queries.
pub fn gpu() -> Result<Gpu> {
    Gpu::with_options(GpuOptions {
        timestamps: true,
        ..Default::default()
    })
}

/// How GPU time was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKind {
    /// Timestamp queries written in the command stream around the work: device time only.
    Timestamp,
    /// Host wall clock around submit + wait, divided by the repetitions in the submit.
    Wall,
}

impl TimerKind {
    pub fn name(self) -> &'static str {
        match self {
            TimerKind::Timestamp => "timestamp",
            TimerKind::Wall => "wall",
        }
    }
}

/// Times recorded GPU work: timestamps where the device has them, else wall clock.
pub struct GpuTimer {
    gpu: Gpu,
    query: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
}

pub type Record<'a> = dyn FnMut(&mut wgpu::CommandEncoder) -> Result<()> + 'a;

impl GpuTimer {
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

    pub fn kind(&self) -> TimerKind {
        match self.query {
            Some(_) => TimerKind::Timestamp,
            None => TimerKind::Wall,
        }
    }

    /// Milliseconds per repetition of one submit holding `iters` repetitions of `record`.
    pub fn sample_ms(&self, iters: usize, record: &mut Record<'_>) -> Result<f64> {
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
        read.map_async(wgpu::MapMode::Read, .., |_| {});
        gpu.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| NormError::Readback(e.to_string()))?;
        let ticks: Vec<u64> = {
            let view = read
                .get_mapped_range(..)
                .map_err(|e| NormError::Readback(e.to_string()))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        read.unmap();
        let ns = ticks[1].saturating_sub(ticks[0]) as f64
            * f64::from(gpu.queue().get_timestamp_period());
        Ok(ns / 1e6 / iters as f64)
    }

    /// Median over `samples` submits (after one warm-up) of milliseconds per repetition.
    pub fn median_ms(&self, samples: usize, iters: usize, record: &mut Record<'_>) -> Result<f64> {
        self.sample_ms(1, record)?;
        let mut v = Vec::with_capacity(samples);
        for _ in 0..samples.max(1) {
            v.push(self.sample_ms(iters.max(1), record)?);
        }
        Ok(median(&mut v))
    }
}

/// Median of `v` (sorted in place).
/// Median times of several works, their samples taken in turn (copy, kernel, baseline, copy,
/// ...), so a change in the machine's load during the run moves all of them alike and their
/// ratios stay comparable.
pub fn interleaved_medians(
    timer: &GpuTimer,
    samples: usize,
    iters: usize,
    works: &mut [&mut Work],
) -> Result<Vec<f64>> {
    let mut times = vec![Vec::with_capacity(samples); works.len()];
    for w in works.iter_mut() {
        timer.sample_ms(1, &mut **w)?; // warm-up
    }
    for _ in 0..samples {
        for (w, t) in works.iter_mut().zip(&mut times) {
            t.push(timer.sample_ms(iters, &mut **w)?);
        }
    }
    Ok(times.iter_mut().map(|t| median(t)).collect())
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Milliseconds an empty submit + wait takes (the floor under every wall-clock number).
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

/// `n` deterministic pseudo-random values, uniform in [mean - 1.73 std, mean + 1.73 std)
/// (xorshift64): reproducible without a random-number crate.
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

/// Which norm a benchmark row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// LayerNorm over the last dim, with weight and bias.
    LayerNorm,
    /// RMSNorm over the last dim, with weight.
    RmsNorm,
    /// GroupNorm with this many groups, weight and bias.
    GroupNorm(usize),
    /// InstanceNorm with weight and bias.
    InstanceNorm,
    /// BatchNorm training (batch statistics, running statistics update).
    BatchNormTrain,
    /// BatchNorm inference (running statistics).
    BatchNormEval,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::LayerNorm => "layer_norm",
            Op::RmsNorm => "rms_norm",
            Op::GroupNorm(_) => "group_norm",
            Op::InstanceNorm => "instance_norm",
            Op::BatchNormTrain => "batch_norm_train",
            Op::BatchNormEval => "batch_norm_eval",
        }
    }
}

/// One benchmark case.
#[derive(Clone, Debug)]
pub struct Case {
    pub op: Op,
    pub shape: Vec<usize>,
    /// Channel layout (BatchNorm, GroupNorm, InstanceNorm); rows ops use ChannelsLast.
    pub layout: Layout,
}

impl Case {
    pub fn layout_name(&self) -> &'static str {
        match (self.op, self.layout) {
            (Op::LayerNorm | Op::RmsNorm, _) => "rows",
            (_, Layout::ChannelsFirst) => "NCHW",
            (_, Layout::ChannelsLast) => "NHWC",
        }
    }

    /// (channels, spatial size) as the op sees them: the last dim for rows ops.
    fn cs(&self) -> (usize, usize) {
        let s = &self.shape;
        match (self.op, self.layout) {
            (Op::LayerNorm | Op::RmsNorm, _) | (_, Layout::ChannelsLast) => {
                let c = s[s.len() - 1];
                (c, s.iter().product::<usize>() / (s[0] * c))
            }
            (_, Layout::ChannelsFirst) => (s[1], s[2..].iter().product()),
        }
    }
}

/// The shape grid: LayerNorm and RMSNorm rows x D from many short rows to few long ones;
/// BatchNorm on image batches (NCHW, NHWC) and an [N, C] activation; GroupNorm (32 groups) and
/// InstanceNorm at CNN and diffusion shapes in both layouts.
pub fn grid() -> Vec<Case> {
    let mut v = Vec::new();
    let rows = [
        (65536, 64),
        (16384, 256),
        (16384, 768),
        (4096, 1024),
        (2048, 4096),
        (512, 16384),
        (256, 65536),
        (64, 65536),
        (8, 65536),
    ];
    for op in [Op::LayerNorm, Op::RmsNorm] {
        for (r, d) in rows {
            v.push(Case {
                op,
                shape: vec![r, d],
                layout: Layout::ChannelsLast,
            });
        }
    }
    for (shape, layout) in [
        (vec![32, 64, 56, 56], Layout::ChannelsFirst),
        (vec![256, 256, 14, 14], Layout::ChannelsFirst),
        (vec![256, 14, 14, 256], Layout::ChannelsLast),
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
    let images = [
        (Op::GroupNorm(32), [32, 64, 56, 56]),
        (Op::GroupNorm(32), [8, 512, 64, 64]),
        (Op::GroupNorm(32), [1, 512, 64, 64]),
        (Op::InstanceNorm, [32, 64, 56, 56]),
        (Op::InstanceNorm, [1, 64, 512, 512]),
    ];
    for (op, [n, c, h, w]) in images {
        v.push(Case {
            op,
            shape: vec![n, c, h, w],
            layout: Layout::ChannelsFirst,
        });
        v.push(Case {
            op,
            shape: vec![n, h, w, c],
            layout: Layout::ChannelsLast,
        });
    }
    v
}

pub type Work = Box<dyn FnMut(&mut wgpu::CommandEncoder) -> Result<()>>;

/// A case ready to time: closures recording the fused kernel, the copy and the naive baseline
/// (where a composite implementation exists), and running the f64 reference.
pub struct Prepared {
    /// Bytes the op must move at least: x read once, y written once.
    pub bytes: u64,
    /// The plan's description.
    pub plan: String,
    pub fused: Work,
    pub copy: Work,
    pub naive: Option<Work>,
    pub cpu: Box<dyn FnMut()>,
}

fn affine(gpu: &Gpu, c: usize) -> Result<(Vec<f32>, Vec<f32>, Tensor, Tensor)> {
    let wh = pseudo_random(c, 8, 1.0, 0.3);
    let bh = pseudo_random(c, 9, 0.0, 0.3);
    let w = Tensor::from_slice(gpu, &wh, &[c])?;
    let b = Tensor::from_slice(gpu, &bh, &[c])?;
    Ok((wh, bh, w, b))
}

fn plan_text(p: fused_norm::Plan) -> String {
    p.to_string().split(" [").next().unwrap_or("").to_string()
}

/// Prepares one case on `gpu`; `variant` forces a rows kernel (LayerNorm, RMSNorm).
pub fn prepare(
    gpu: &Gpu,
    base: &Arc<Baselines>,
    case: &Case,
    variant: Option<LnVariant>,
) -> Result<Prepared> {
    let shape = case.shape.clone();
    let numel: usize = shape.iter().product();
    let xh = Arc::new(pseudo_random(numel, 7, 0.25, 0.87));
    let x = Tensor::from_slice(gpu, &xh, &shape)?;
    let y = Tensor::empty(gpu, &shape)?;
    let (c, s) = case.cs();
    let (wh, bh, w, b) = affine(gpu, c)?;
    let copy: Work = {
        let (base, x, y) = (base.clone(), x.clone(), y.clone());
        Box::new(move |e| {
            base.copy(e, &x, &y);
            Ok(())
        })
    };
    let naive_of = |stats: usize, weight: Option<Tensor>, bias: Option<Tensor>| -> Result<Naive> {
        Ok(Naive {
            mean: Tensor::empty(gpu, &[stats])?,
            var: Tensor::from_slice(gpu, &vec![1.0; stats], &[stats])?,
            weight,
            bias,
            eps: 1e-5,
        })
    };
    let (g, layout, xn) = (gpu.clone(), case.layout, x.clone());
    let rows = numel / c;
    let (plan, fused, naive, cpu): (String, Work, Option<Work>, Box<dyn FnMut()>) = match case.op {
        Op::LayerNorm | Op::RmsNorm => {
            let v = variant.unwrap_or_default();
            let n = naive_of(rows, Some(w.clone()), Some(b.clone()))?;
            let (bs, yn) = (base.clone(), y.clone());
            let naive: Work = Box::new(move |e| {
                bs.layer_norm(e, &xn, c, &yn, &n);
                Ok(())
            });
            let xr = xh.clone();
            if case.op == Op::LayerNorm {
                let ln = LayerNorm::new(&[c]).weight(w).bias(b).variant(v);
                let out = NormOutput {
                    y: y.clone(),
                    mean: Tensor::empty(gpu, &[rows])?,
                    rstd: Tensor::empty(gpu, &[rows])?,
                };
                let plan = plan_text(ln.plan(gpu, &shape)?);
                let fused: Work = Box::new(move |e| ln.encode(&g, e, &x, &out));
                let cpu = Box::new(move || {
                    std::hint::black_box(reference::layer_norm(&xr, c, Some(&wh), Some(&bh), 1e-5));
                });
                (plan, fused, Some(naive), cpu)
            } else {
                let rms = RmsNorm::new(&[c]).weight(w).variant(v);
                let out = RmsNormOutput {
                    y: y.clone(),
                    rstd: Tensor::empty(gpu, &[rows])?,
                };
                let plan = plan_text(rms.plan(gpu, &shape)?);
                let fused: Work = Box::new(move |e| rms.encode(&g, e, &x, &out));
                let cpu = Box::new(move || {
                    std::hint::black_box(reference::rms_norm(&xr, c, Some(&wh), 1e-5));
                });
                (plan, fused, Some(naive), cpu)
            }
        }
        Op::GroupNorm(_) | Op::InstanceNorm => {
            let (groups, gn) = match case.op {
                Op::GroupNorm(groups) => (groups, GroupNorm::new(groups, c)?),
                _ => (c, GroupNorm::new(c, c)?),
            };
            let gn = gn.weight(w).bias(b);
            let plan = match case.op {
                Op::GroupNorm(_) => gn.plan(gpu, &shape, layout)?,
                _ => InstanceNorm::new(c).plan(gpu, &shape, layout)?,
            };
            let n0 = shape[0];
            let out = NormOutput {
                y: y.clone(),
                mean: Tensor::empty(gpu, &[n0, groups])?,
                rstd: Tensor::empty(gpu, &[n0, groups])?,
            };
            let fused: Work = Box::new(move |e| gn.encode(&g, e, &x, layout, &out));
            // A composite implementation of the channels-first form: the naive LayerNorm over
            // each (sample, group)'s contiguous values, without the per-channel affine.
            let naive: Option<Work> = match layout {
                Layout::ChannelsFirst => {
                    let d = numel / (n0 * groups);
                    let n = naive_of(n0 * groups, None, None)?;
                    let (bs, yn) = (base.clone(), y.clone());
                    Some(Box::new(move |e| {
                        bs.layer_norm(e, &xn, d, &yn, &n);
                        Ok(())
                    }))
                }
                Layout::ChannelsLast => None,
            };
            let xr = xh.clone();
            let cl = layout == Layout::ChannelsLast;
            let cpu = Box::new(move || {
                let r = reference::group_norm(&xr, c, s, groups, cl, Some(&wh), Some(&bh), 1e-5);
                std::hint::black_box(r);
            });
            (plan_text(plan), fused, naive, cpu)
        }
        Op::BatchNormTrain | Op::BatchNormEval => {
            let train = case.op == Op::BatchNormTrain;
            let bn = BatchNorm::new(gpu, c)?.weight(w.clone()).bias(b.clone());
            let plan = match train {
                true => plan_text(bn.plan(gpu, &shape, layout)?),
                false => "eval_coef + apply".to_string(),
            };
            let out = BatchNormOutput {
                y: y.clone(),
                mean: Tensor::empty(gpu, &[c])?,
                invstd: Tensor::empty(gpu, &[c])?,
            };
            let fused: Work = Box::new(move |e| match train {
                // The batch counter is not advanced: momentum is fixed here.
                true => bn.encode_train(&g, e, &x, layout, &out).map(drop),
                false => bn.encode_eval(&g, e, &x, layout, &out.y),
            });
            let n = naive_of(c, Some(w), Some(b))?;
            let (bs, yn) = (base.clone(), y.clone());
            let naive: Work = Box::new(move |e| {
                bs.batch_norm(e, &xn, c, s, &yn, &n, train);
                Ok(())
            });
            let xr = xh.clone();
            let cpu = Box::new(move || {
                let st = reference::batch_stats(&xr, c, s);
                let r = reference::batch_norm_apply(
                    &xr,
                    c,
                    s,
                    &st.mean,
                    &st.var,
                    Some(&wh),
                    Some(&bh),
                    1e-5,
                );
                std::hint::black_box(r);
            });
            (plan, fused, Some(naive), cpu)
        }
    };
    Ok(Prepared {
        bytes: 2 * numel as u64 * 4,
        plan,
        fused,
        copy,
        naive,
        cpu,
    })
}

/// One measured row: the fused kernel, and on the same adapter, bytes and run, a vec4 copy,
/// the naive multi-pass baseline and the f64 reference.
#[derive(Clone, Debug)]
pub struct Row {
    pub case: Case,
    pub variant: String,
    pub bytes: u64,
    pub median_ms: f64,
    pub copy_ms: f64,
    pub naive_ms: Option<f64>,
    pub cpu_ms: f64,
    pub timer: TimerKind,
}

impl Row {
    /// Effective bandwidth of the fused kernel, GB/s.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 / (self.median_ms * 1e6)
    }

    /// Fused time over copy time (1.0 is the bandwidth limit).
    pub fn ratio_to_copy(&self) -> f64 {
        self.median_ms / self.copy_ms
    }

    /// Naive time over fused time.
    pub fn speedup_vs_naive(&self) -> Option<f64> {
        self.naive_ms.map(|n| n / self.median_ms)
    }
}

/// Measures one case: `samples` submits of `iters` repetitions per GPU number (median).
pub fn run_case(
    gpu: &Gpu,
    base: &Arc<Baselines>,
    timer: &GpuTimer,
    case: &Case,
    variant: Option<LnVariant>,
    samples: usize,
    iters: usize,
) -> Result<Row> {
    let mut p = prepare(gpu, base, case, variant)?;
    let mut works: Vec<&mut Work> = vec![&mut p.copy, &mut p.fused];
    works.extend(p.naive.as_mut());
    let t = interleaved_medians(timer, samples, iters, &mut works)?;
    let (copy_ms, median_ms, naive_ms) = (t[0], t[1], t.get(2).copied());
    let t = Instant::now();
    (p.cpu)();
    let cpu_ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(Row {
        case: case.clone(),
        variant: p.plan,
        bytes: p.bytes,
        median_ms,
        copy_ms,
        naive_ms,
        cpu_ms,
        timer: timer.kind(),
    })
}
