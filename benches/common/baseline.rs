//! The benchmarks' reference kernels (`baseline.wgsl`), with plain wgpu host code: a vec4 copy
//! (the bandwidth roofline of a kernel that reads x once and writes y once) and the naive
//! multi-pass LayerNorm and BatchNorm that composite implementations run (mean, variance and
//! normalize dispatches), and the naive multi-pass backward. For measuring the fused kernels
//! against, not for use: the naive ones compute `sum(x) / n` in f32 and take tensors within one
//! binding only.

use std::collections::HashMap;
use std::sync::Mutex;

use fused_norm::{Gpu, Tensor};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct BaseParams {
    work: u32,
    d: u32,
    c: u32,
    s: u32,
    n: u32,
    grid_x: u32,
    eps: f32,
    groups: u32,
}

/// Statistics scratch and parameters of a naive norm.
pub struct Naive {
    /// Mean per row (LayerNorm) or channel (BatchNorm); for BatchNorm eval, the running mean.
    pub mean: Tensor,
    /// Variance per row or channel; for BatchNorm eval, the running variance.
    pub var: Tensor,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub eps: f32,
}

/// The baseline module and its pipelines on one device.
pub struct Baselines {
    gpu: Gpu,
    module: wgpu::ShaderModule,
    pipelines: Mutex<HashMap<(&'static str, [u32; 4]), wgpu::ComputePipeline>>,
    dummy: wgpu::Buffer,
}

impl Baselines {
    pub fn new(gpu: &Gpu) -> Baselines {
        let d = gpu.device();
        let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("baseline"),
            source: wgpu::ShaderSource::Wgsl(include_str!("baseline.wgsl").into()),
        });
        let dummy = d.create_buffer(&wgpu::BufferDescriptor {
            label: Some("baseline dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Baselines {
            gpu: gpu.clone(),
            module,
            pipelines: Mutex::new(HashMap::new()),
            dummy,
        }
    }

    /// `k`: HAS_W, HAS_B, MODE, CENTER.
    fn pipeline(&self, entry: &'static str, k: [u32; 4]) -> wgpu::ComputePipeline {
        let mut cache = self.pipelines.lock().unwrap();
        cache
            .entry((entry, k))
            .or_insert_with(|| {
                let constants = [
                    ("WG", f64::from(WG)),
                    ("HAS_W", f64::from(k[0])),
                    ("HAS_B", f64::from(k[1])),
                    ("MODE", f64::from(k[2])),
                    ("CENTER", f64::from(k[3])),
                ];
                self.gpu
                    .device()
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(entry),
                        layout: None,
                        module: &self.module,
                        entry_point: Some(entry),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: &constants,
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    })
            })
            .clone()
    }

    /// One dispatch of `groups` workgroups (a 2-D grid past 65535) with these bindings.
    fn dispatch(
        &self,
        enc: &mut wgpu::CommandEncoder,
        entry: &'static str,
        affine: (bool, bool),
        params: BaseParams,
        groups: u32,
        bindings: &[(u32, &wgpu::Buffer)],
    ) {
        let k = [u32::from(affine.0), u32::from(affine.1), 0, 1];
        self.dispatch_k(enc, entry, k, params, groups, bindings);
    }

    fn dispatch_k(
        &self,
        enc: &mut wgpu::CommandEncoder,
        entry: &'static str,
        k: [u32; 4],
        params: BaseParams,
        groups: u32,
        bindings: &[(u32, &wgpu::Buffer)],
    ) {
        use wgpu::util::DeviceExt;
        let gx = groups.clamp(1, 65535);
        let gy = groups.div_ceil(gx);
        let params = BaseParams {
            grid_x: gx,
            ..params
        };
        let d = self.gpu.device();
        let uniform = d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("baseline params"),
            contents: bytemuck::bytes_of(&params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let pipeline = self.pipeline(entry, k);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: uniform.as_entire_binding(),
        }];
        entries.extend(bindings.iter().map(|(binding, buf)| wgpu::BindGroupEntry {
            binding: *binding,
            resource: buf.as_entire_binding(),
        }));
        let bg = d.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(gx, gy, 1);
    }

    /// Records `y = x` with vec4 loads and stores.
    pub fn copy(&self, enc: &mut wgpu::CommandEncoder, x: &Tensor, y: &Tensor) {
        let work = x.numel().div_ceil(4) as u32;
        let p = BaseParams {
            work,
            ..Default::default()
        };
        let binds = [(1, x.buffer()), (2, y.buffer())];
        self.dispatch(
            enc,
            "copy_vec4",
            (false, false),
            p,
            work.div_ceil(WG),
            &binds,
        );
    }

    /// Mean, then variance (a workgroup per statistic with a binary tree), then normalize.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        &self,
        enc: &mut wgpu::CommandEncoder,
        x: &Tensor,
        y: &Tensor,
        n: &Naive,
        entries: [&'static str; 3],
        stats: Option<u32>,
        p: BaseParams,
    ) {
        let affine = (n.weight.is_some(), n.bias.is_some());
        let (m, v) = (n.mean.buffer(), n.var.buffer());
        if let Some(groups) = stats {
            self.dispatch(
                enc,
                entries[0],
                affine,
                p,
                groups,
                &[(1, x.buffer()), (3, m)],
            );
            self.dispatch(
                enc,
                entries[1],
                affine,
                p,
                groups,
                &[(1, x.buffer()), (3, m), (4, v)],
            );
        }
        let w = n.weight.as_ref().map_or(&self.dummy, |t| t.buffer());
        let b = n.bias.as_ref().map_or(&self.dummy, |t| t.buffer());
        let work = x.numel() as u32;
        let p = BaseParams { work, ..p };
        let binds = [
            (1, x.buffer()),
            (3, m),
            (4, v),
            (5, w),
            (6, b),
            (7, y.buffer()),
        ];
        self.dispatch(enc, entries[2], affine, p, work.div_ceil(WG), &binds);
    }

    /// The naive LayerNorm over rows of `d` values (`n.mean`, `n.var`: one per row).
    pub fn layer_norm(
        &self,
        enc: &mut wgpu::CommandEncoder,
        x: &Tensor,
        d: usize,
        y: &Tensor,
        n: &Naive,
    ) {
        let rows = (x.numel() / d) as u32;
        let p = BaseParams {
            work: rows,
            d: d as u32,
            eps: n.eps,
            ..Default::default()
        };
        let entries = ["naive_ln_mean", "naive_ln_var", "naive_ln_apply"];
        self.naive(enc, x, y, n, entries, Some(rows), p);
    }

    /// The naive BatchNorm of x viewed as `[runs, c, s]`: statistics dispatches when training
    /// (a workgroup per channel walking its values), then the normalize pass; in eval only the
    /// normalize pass, `n.mean`/`n.var` holding the running statistics.
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm(
        &self,
        enc: &mut wgpu::CommandEncoder,
        x: &Tensor,
        c: usize,
        s: usize,
        y: &Tensor,
        n: &Naive,
        train: bool,
    ) {
        let p = BaseParams {
            c: c as u32,
            s: s as u32,
            n: (x.numel() / (c * s)) as u32,
            eps: n.eps,
            ..Default::default()
        };
        let entries = ["naive_bn_mean", "naive_bn_var", "naive_bn_apply"];
        self.naive(enc, x, y, n, entries, train.then_some(c as u32), p);
    }

    /// The naive backward (`naive_bwd_*`): per-statistic sums, dx, then dweight/dbias, each
    /// pass reading x and dy. `shape` says which statistics; `mean` and `rstd` are the
    /// forward's saved ones (BatchNorm: mean and invstd; `eval`: the running mean and
    /// 1 / sqrt(running_var + eps), constants, so no per-statistic sums).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        enc: &mut wgpu::CommandEncoder,
        shape: NaiveBwdShape,
        x: &Tensor,
        dy: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        weight: Option<&Tensor>,
        dx: &Tensor,
        scratch: &NaiveBwdScratch,
        eval: bool,
    ) {
        let (mode, p, stats, params) = shape.params(x.numel());
        let center = u32::from(!matches!(shape, NaiveBwdShape::Rms { .. }));
        let k = [u32::from(weight.is_some()), 0, mode, center];
        let w = weight.map_or(&self.dummy, |t| t.buffer());
        let (m, r) = (mean.buffer(), rstd.buffer());
        let common = [(1, x.buffer()), (3, m), (4, r), (5, w), (8, dy.buffer())];
        let mut b = common.to_vec();
        b.push((9, scratch.sums.buffer()));
        if eval {
            // Constant statistics: no sums, dx = rstd * dy * w.
            enc.clear_buffer(scratch.sums.buffer(), 0, None);
        } else {
            let sp = BaseParams { work: stats, ..p };
            self.dispatch_k(enc, "naive_bwd_sums", k, sp, stats, &b);
        }
        b.push((7, dx.buffer()));
        let work = x.numel() as u32;
        let dp = BaseParams { work, ..p };
        self.dispatch_k(enc, "naive_bwd_dx", k, dp, work.div_ceil(WG), &b);
        // The parameter sums do not read the weight.
        let mut b: Vec<_> = common.iter().filter(|(n, _)| *n != 5).copied().collect();
        b.push((10, scratch.params.buffer()));
        let pp = BaseParams { work: params, ..p };
        match shape {
            NaiveBwdShape::Layer { .. } | NaiveBwdShape::Rms { .. } => {
                let groups = params.div_ceil(WG);
                self.dispatch_k(enc, "naive_bwd_cols", k, pp, groups, &b);
            }
            _ => self.dispatch_k(enc, "naive_bwd_params", k, pp, params, &b),
        }
    }
}

/// Which statistics a naive backward runs over.
#[derive(Clone, Copy, Debug)]
pub enum NaiveBwdShape {
    /// LayerNorm: rows of `d`.
    Layer { d: usize },
    /// RMSNorm: rows of `d`, no mean.
    Rms { d: usize },
    /// BatchNorm on `[n, c, s]` (channels-last: `s = 1`, n = rows).
    Batch { c: usize, s: usize },
    /// GroupNorm on `[n, c, s]` channels-first.
    GroupCf { c: usize, s: usize, groups: usize },
    /// GroupNorm on `[n, s, c]` channels-last.
    GroupCl { c: usize, s: usize, groups: usize },
}

impl NaiveBwdShape {
    /// (MODE, parameters, statistics, parameter count) for x of `numel` values.
    fn params(self, numel: usize) -> (u32, BaseParams, u32, u32) {
        let u = |v: usize| v as u32;
        match self {
            NaiveBwdShape::Layer { d } | NaiveBwdShape::Rms { d } => {
                let rows = numel / d;
                let p = BaseParams {
                    d: u(d),
                    n: u(rows),
                    s: 1,
                    ..Default::default()
                };
                (0, p, u(rows), u(d))
            }
            NaiveBwdShape::Batch { c, s } => {
                let p = BaseParams {
                    c: u(c),
                    s: u(s),
                    n: u(numel / (c * s)),
                    ..Default::default()
                };
                (1, p, u(c), u(c))
            }
            NaiveBwdShape::GroupCf { c, s, groups } => {
                let n = numel / (c * s);
                let p = BaseParams {
                    d: u(c / groups * s),
                    c: u(c),
                    s: u(s),
                    n: u(n),
                    ..Default::default()
                };
                (0, p, u(n * groups), u(c))
            }
            NaiveBwdShape::GroupCl { c, s, groups } => {
                let n = numel / (c * s);
                let p = BaseParams {
                    c: u(c),
                    s: u(s),
                    n: u(n),
                    groups: u(groups),
                    ..Default::default()
                };
                (2, p, u(n * groups), u(c))
            }
        }
    }
}

/// Scratch of a naive backward: per-statistic and per-parameter sums.
pub struct NaiveBwdScratch {
    sums: Tensor,
    params: Tensor,
}

impl NaiveBwdScratch {
    pub fn new(gpu: &Gpu, stats: usize, params: usize) -> fused_norm::Result<NaiveBwdScratch> {
        Ok(NaiveBwdScratch {
            sums: Tensor::empty(gpu, &[2 * stats.max(2)])?,
            params: Tensor::empty(gpu, &[2 * params.max(2)])?,
        })
    }
}
