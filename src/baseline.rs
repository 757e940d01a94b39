//! Benchmark baselines (`shaders/baseline.wgsl`): a vec4 copy, the memory-bandwidth roofline for
//! a kernel that reads x once and writes y once, and the naive multi-pass LayerNorm and
//! BatchNorm that composite implementations run (mean, variance and normalize dispatches).
//! They are for measuring the fused kernels against, not for use: the naive ones compute
//! `sum(x) / n` in f32 and have no chunking for tensors over one binding.

use crate::context::Gpu;
use crate::error::{NormError, Result};
use crate::runtime::constants::{Flag, Overrides};
use crate::runtime::dispatch::{record_all, Launch};
use crate::runtime::pipeline::{Kernel, Shader};
use crate::tensor::Tensor;
use crate::Layout;

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
    pad: u32,
}

fn wg(gpu: &Gpu) -> u32 {
    // What a typical composite implementation uses, independent of the adapter.
    256u32.min(gpu.max_wg())
}

fn fits(gpu: &Gpu, t: &Tensor) -> Result<()> {
    if t.numel() as u64 * 4 > gpu.max_binding_bytes() {
        return Err(NormError::TooLarge(
            "baselines run on tensors within one binding".into(),
        ));
    }
    Ok(())
}

/// Records `y = x` with vec4 loads and stores (y needs as many values as x).
///
/// ```no_run
/// # use fused_norm::*;
/// # let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &[1.0; 1024], &[1024])?;
/// let y = Tensor::empty(&gpu, &[1024])?;
/// let mut enc = gpu.encoder();
/// baseline::encode_copy(&gpu, &mut enc, &x, &y)?;
/// gpu.submit_wait(enc)?;
/// # Ok::<(), fused_norm::NormError>(())
/// ```
pub fn encode_copy(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    x: &Tensor,
    y: &Tensor,
) -> Result<()> {
    let _turn = gpu.turn();
    x.check_device(gpu, "x")?;
    y.check_device(gpu, "y")?;
    fits(gpu, x)?;
    if y.numel() < x.numel() {
        return Err(NormError::Shape("copy: y is smaller than x".into()));
    }
    let w = wg(gpu);
    let work = x.numel().div_ceil(4) as u32;
    let params = |grid_x| BaseParams {
        work,
        grid_x,
        ..Default::default()
    };
    let o = Overrides::new(w, w);
    let launch = Launch::new(
        gpu,
        Shader::Baseline,
        Kernel::Copy,
        &o,
        work.div_ceil(w),
        params,
    )?
    .buf("src", x.buffer())
    .buf("dst", y.buffer());
    record_all(gpu, enc, &[launch])
}

/// Scratch and parameters of a naive norm: statistics buffers and the affine terms.
#[derive(Clone, Debug)]
pub struct Naive {
    /// Mean per row (LayerNorm) or channel (BatchNorm); for BatchNorm eval, the running mean.
    pub mean: Tensor,
    /// Variance per row or channel; for BatchNorm eval, the running variance.
    pub var: Tensor,
    /// Optional scale.
    pub weight: Option<Tensor>,
    /// Optional shift.
    pub bias: Option<Tensor>,
    /// eps.
    pub eps: f32,
}

/// Records a naive norm: statistics (mean, then variance) when `stats`, then the normalize pass.
#[allow(clippy::too_many_arguments)]
fn encode_naive(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    x: &Tensor,
    y: &Tensor,
    n: &Naive,
    kernels: [Kernel; 3],
    groups_stats: u32,
    stats: bool,
    p: BaseParams,
) -> Result<()> {
    let _turn = gpu.turn();
    for (name, t) in [("x", x), ("y", y), ("mean", &n.mean), ("var", &n.var)] {
        t.check_device(gpu, name)?;
    }
    fits(gpu, x)?;
    let w = wg(gpu);
    let dummy = gpu.placeholder()?;
    let o = Overrides::new(w, w)
        .flag(Flag::HasWeight, n.weight.is_some())
        .flag(Flag::HasBias, n.bias.is_some());
    let mut launches = Vec::new();
    if stats {
        for k in [kernels[0], kernels[1]] {
            let sp = |grid_x| BaseParams { grid_x, ..p };
            launches.push(
                Launch::new(gpu, Shader::Baseline, k, &o, groups_stats, sp)?
                    .buf("src", x.buffer())
                    .buf("stat_mean", n.mean.buffer()),
            );
        }
        let l = launches.pop().expect("the variance pass");
        launches.push(l.buf("stat_var", n.var.buffer()));
    }
    let ap = |grid_x| BaseParams {
        grid_x,
        work: x.numel() as u32,
        ..p
    };
    let groups = (x.numel() as u32).div_ceil(w);
    launches.push(
        Launch::new(gpu, Shader::Baseline, kernels[2], &o, groups, ap)?
            .buf("src", x.buffer())
            .buf("dst1", y.buffer())
            .buf("stat_mean", n.mean.buffer())
            .buf("stat_var", n.var.buffer())
            .buf("w", n.weight.as_ref().unwrap_or(&dummy).buffer())
            .buf("b", n.bias.as_ref().unwrap_or(&dummy).buffer()),
    );
    record_all(gpu, enc, &launches)
}

/// Records the naive LayerNorm over the last `d` values of each row: a mean dispatch, a
/// variance dispatch (both a workgroup per row with a binary tree), then an elementwise pass.
/// `n.mean` and `n.var` need one value per row.
///
/// ```no_run
/// # use fused_norm::*;
/// # let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &[1.0; 1024], &[4, 256])?;
/// let y = Tensor::empty(&gpu, &[4, 256])?;
/// let n = baseline::Naive {
///     mean: Tensor::empty(&gpu, &[4])?, var: Tensor::empty(&gpu, &[4])?,
///     weight: None, bias: None, eps: 1e-5,
/// };
/// let mut enc = gpu.encoder();
/// baseline::encode_naive_layer_norm(&gpu, &mut enc, &x, 256, &y, &n)?;
/// gpu.submit_wait(enc)?;
/// # Ok::<(), fused_norm::NormError>(())
/// ```
pub fn encode_naive_layer_norm(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    x: &Tensor,
    d: usize,
    y: &Tensor,
    n: &Naive,
) -> Result<()> {
    let rows = x.numel() / d;
    let p = BaseParams {
        work: rows as u32,
        d: d as u32,
        eps: n.eps,
        ..Default::default()
    };
    let kernels = [
        Kernel::NaiveLnMean,
        Kernel::NaiveLnVar,
        Kernel::NaiveLnApply,
    ];
    encode_naive(gpu, enc, x, y, n, kernels, rows as u32, true, p)
}

/// Records the naive BatchNorm: in training, per-channel mean and variance dispatches (a
/// workgroup per channel walking its values), then the normalize pass; in eval, only the
/// normalize pass with `n.mean`/`n.var` holding the running statistics.
///
/// ```no_run
/// # use fused_norm::*;
/// # let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &[1.0; 1024], &[4, 16, 16])?;
/// let y = Tensor::empty(&gpu, &[4, 16, 16])?;
/// let n = baseline::Naive {
///     mean: Tensor::empty(&gpu, &[16])?, var: Tensor::empty(&gpu, &[16])?,
///     weight: None, bias: None, eps: 1e-5,
/// };
/// let mut enc = gpu.encoder();
/// baseline::encode_naive_batch_norm(&gpu, &mut enc, &x, Layout::ChannelsFirst, &y, &n, true)?;
/// gpu.submit_wait(enc)?;
/// # Ok::<(), fused_norm::NormError>(())
/// ```
pub fn encode_naive_batch_norm(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    x: &Tensor,
    layout: Layout,
    y: &Tensor,
    n: &Naive,
    train: bool,
) -> Result<()> {
    let shape = x.shape();
    if shape.len() < 2 {
        return Err(NormError::Shape("BatchNorm needs rank >= 2".into()));
    }
    let (c, s) = match layout {
        Layout::ChannelsFirst => (shape[1], shape[2..].iter().product::<usize>()),
        Layout::ChannelsLast => (shape[shape.len() - 1], 1),
    };
    let runs = x.numel() / (c * s);
    let p = BaseParams {
        c: c as u32,
        s: s as u32,
        n: runs as u32,
        eps: n.eps,
        ..Default::default()
    };
    let kernels = [
        Kernel::NaiveBnMean,
        Kernel::NaiveBnVar,
        Kernel::NaiveBnApply,
    ];
    encode_naive(gpu, enc, x, y, n, kernels, c as u32, train, p)
}
