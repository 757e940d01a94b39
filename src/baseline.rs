//! Benchmark baselines (`shaders/baseline.wgsl`): a vec4 copy, the memory-bandwidth roofline for
//! a kernel that reads x once and writes y once, and the naive multi-pass LayerNorm and
//! BatchNorm that composite implementations run (mean, variance and normalize dispatches).
//! They are for measuring the fused kernels against, not for use: the naive ones compute
//! `sum(x) / n` in f32 and have no chunking for tensors over one binding.

use crate::error::{NormError, Result};
use crate::gpu::{record_all, Constants, Family, Gpu, Step};
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
    let grid = gpu.grid(work.div_ceil(w))?;
    let p = BaseParams {
        work,
        grid_x: grid.0,
        ..Default::default()
    };
    let step = Step::new(gpu, "copy_vec4", grid, &p, &[1, 2], (0, 0));
    let c: Constants = vec![("WG", f64::from(w)), ("TPR", f64::from(w))];
    let pipeline = gpu.pipeline(Family::Baseline, "copy_vec4", &c)?;
    let launch = step.launch(pipeline, |b, _| match b {
        1 => x.buffer().as_entire_binding(),
        _ => y.buffer().as_entire_binding(),
    });
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

fn affine(n: &Naive) -> Constants {
    vec![
        ("HAS_W", if n.weight.is_some() { 1.0 } else { 0.0 }),
        ("HAS_B", if n.bias.is_some() { 1.0 } else { 0.0 }),
    ]
}

/// Records a naive norm: statistics (mean, then variance) when `stats`, then the normalize pass.
#[allow(clippy::too_many_arguments)]
fn encode_naive(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    x: &Tensor,
    y: &Tensor,
    n: &Naive,
    names: [&'static str; 3],
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
    let mut consts = affine(n);
    consts.push(("WG", f64::from(w)));
    consts.push(("TPR", f64::from(w)));
    let sgrid = gpu.grid(groups_stats)?;
    let agrid = gpu.grid((x.numel() as u32).div_ceil(w))?;
    let mut steps = Vec::new();
    if stats {
        let sp = BaseParams {
            grid_x: sgrid.0,
            ..p
        };
        steps.push(Step::new(gpu, names[0], sgrid, &sp, &[1, 3], (0, 0)));
        steps.push(Step::new(gpu, names[1], sgrid, &sp, &[1, 3, 4], (0, 0)));
    }
    let ap = BaseParams {
        grid_x: agrid.0,
        work: x.numel() as u32,
        ..p
    };
    steps.push(Step::new(
        gpu,
        names[2],
        agrid,
        &ap,
        &[1, 3, 4, 5, 6, 7],
        (0, 0),
    ));
    let resource = |b: u32, _| match b {
        1 => x.buffer().as_entire_binding(),
        2 | 7 => y.buffer().as_entire_binding(),
        3 => n.mean.buffer().as_entire_binding(),
        4 => n.var.buffer().as_entire_binding(),
        5 => n
            .weight
            .as_ref()
            .unwrap_or(&dummy)
            .buffer()
            .as_entire_binding(),
        _ => n
            .bias
            .as_ref()
            .unwrap_or(&dummy)
            .buffer()
            .as_entire_binding(),
    };
    let mut launches = Vec::new();
    for s in &steps {
        let pipeline = gpu.pipeline(Family::Baseline, s.entry, &consts)?;
        launches.push(s.launch(pipeline, resource));
    }
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
    let names = ["naive_ln_mean", "naive_ln_var", "naive_ln_apply"];
    encode_naive(gpu, enc, x, y, n, names, rows as u32, true, p)
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
    let names = ["naive_bn_mean", "naive_bn_var", "naive_bn_apply"];
    encode_naive(gpu, enc, x, y, n, names, c as u32, train, p)
}
