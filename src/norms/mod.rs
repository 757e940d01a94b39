//! The norms, each a thin configuration of the reductions in `crate::ops`: LayerNorm and
//! RMSNorm over a sample's trailing dims, GroupNorm and InstanceNorm over a sample's groups of
//! channels, BatchNorm over the batch. What they share lives here: the layout, the output and
//! plan types, and the builder setters.

mod batch;
mod group;
mod instance;
mod layer;
mod rms;

pub use batch::{BatchNorm, BatchNormOutput, TrainCommit};
pub use group::GroupNorm;
pub use instance::InstanceNorm;
pub use layer::{gpu_layer_norm, LayerNorm, LayerNormAddOutput};
pub use rms::{RmsNorm, RmsNormAddOutput, RmsNormOutput};

use crate::context::Gpu;
use crate::ops::apply::ApplyKind;
use crate::ops::channels::Blocks;
use crate::ops::channels::{BwdStage, Saved};
use crate::ops::rows_bwd::{BwdOut, RowsBwd};
use crate::runtime::pipeline::Kernel;
use crate::tensor::Tensor;

/// Where the channel dim sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[N, C]`, `[N, C, L]`, `[N, C, H, W]`, `[N, C, D, H, W]` (PyTorch's default, NCHW).
    ChannelsFirst,
    /// `[N, ..., C]` (NHWC): channels contiguous, read in place.
    ChannelsLast,
}

/// Outputs of a norm with a mean and a reciprocal standard deviation per statistic:
/// [`LayerNorm`] (one per row), [`GroupNorm`] (`[N, G]`), [`InstanceNorm`] (`[N, C]`).
///
/// ```no_run
/// # use fused_norm::*;
/// # let gpu = Gpu::new()?;
/// # let x = Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?;
/// let out: NormOutput = LayerNorm::new(&[4]).forward(&gpu, &x)?;
/// let (y, mean, rstd) = (out.y, out.mean, out.rstd);
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug)]
pub struct NormOutput {
    /// Normalized tensor, same shape as x.
    pub y: Tensor,
    /// Mean of each statistic's values.
    pub mean: Tensor,
    /// `1 / sqrt(var + eps)` of each statistic (biased variance), same shape as `mean`.
    pub rstd: Tensor,
}

/// The gradients of a norm's backward, for every norm: `dx` shaped like x, `dweight` and
/// `dbias` present exactly when the norm has that parameter, shaped like it.
///
/// ```no_run
/// # use fused_norm::*;
/// # let gpu = Gpu::new()?;
/// # let x = Tensor::from_slice(&gpu, &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
/// # let dy = Tensor::from_slice(&gpu, &[1.0, 0.0, 0.0, 1.0], &[2, 2])?;
/// let ln = LayerNorm::new(&[2]);
/// let out = ln.forward(&gpu, &x)?;
/// let g: Gradients = ln.backward(&gpu, &x, &dy, &out.mean, &out.rstd)?;
/// assert!(g.dweight.is_none() && g.dbias.is_none());
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Gradients {
    /// Gradient with respect to x, same shape.
    pub dx: Tensor,
    /// Gradient with respect to the weight, when the norm has one.
    pub dweight: Option<Tensor>,
    /// Gradient with respect to the bias, when the norm has one.
    pub dbias: Option<Tensor>,
}

impl Gradients {
    /// Empty gradients for x and the given parameters: dx in x's dtype, each parameter's
    /// gradient in that parameter's dtype.
    pub(crate) fn like(
        gpu: &Gpu,
        x: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
    ) -> crate::Result<Gradients> {
        let like = |t: &Tensor| Tensor::empty_dtype(gpu, t.shape(), t.dtype());
        Ok(Gradients {
            dx: like(x)?,
            dweight: weight.map(like).transpose()?,
            dbias: bias.map(like).transpose()?,
        })
    }
}

/// [`LayerNorm`]'s outputs: mean and rstd shaped `x.shape[..axis] ++ [1; trailing]` (ONNX's
/// Mean and InvStdDev, PyTorch's `native_layer_norm`).
pub type LayerNormOutput = NormOutput;
/// [`GroupNorm`]'s outputs: mean and rstd of shape `[N, G]`.
pub type GroupNormOutput = NormOutput;
/// [`InstanceNorm`]'s outputs: mean and rstd of shape `[N, C]`.
pub type InstanceNormOutput = NormOutput;

/// Which rows-family kernel a LayerNorm or RMSNorm runs. `Auto` lets the policy choose from
/// the shape and the adapter (see `plan()`); the others force a kernel (tests and benchmarks
/// run each one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LnVariant {
    /// Chosen by the policy.
    #[default]
    Auto,
    /// `rows_norm`: `threads_per_row` threads (a power of two, at most the workgroup size)
    /// reduce one row; statistics and output in one dispatch, x read once for rows that fit
    /// the threads' registers.
    Rows {
        /// Threads cooperating on one row.
        threads_per_row: u32,
    },
    /// `rows_partial` + `rows_merge` + `rows_apply`: rows split into segments, so few long rows
    /// still fill the device; reads x twice.
    SplitRow,
}

/// The rows family's choice (LayerNorm, RMSNorm, GroupNorm/InstanceNorm channels-first).
#[derive(Clone, Debug, PartialEq)]
pub struct RowsPlan {
    /// The resolved variant (never `Auto`).
    pub variant: LnVariant,
    /// Threads cooperating on one reduction: per row (rows) or per segment (split-row).
    pub group_threads: u32,
    /// Split-row: segments per row and vec4s per segment (0 for the rows kernel).
    pub segments: (u32, u32),
    /// Rows kernel: vec4s of its row each thread keeps in registers (a power of two up to 16,
    /// the fewest that hold its share of the row; 0 for split-row).
    pub row_cache: u32,
    /// Rows kernel: statistics from one read of x (exact two-pass per chunk of 8 vec4s per
    /// thread, Chan merges), then the output from a second; else x is read up to three times
    /// (the two-pass, then the output), re-reads from cache.
    pub one_read: bool,
    /// Rows kernel with one read: rows each group of threads normalizes, loading each vec4 of a
    /// per-element weight and bias once for all of them (1 otherwise).
    pub rows_per_group: u32,
}

/// The channels family's choice (BatchNorm, GroupNorm/InstanceNorm channels-last).
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelsPlan {
    /// Threads reducing one stage-1 block (1 for channels-last: a thread per 4 channels).
    pub partial_threads: u32,
    /// Threads merging one statistic's partials.
    pub finalize_threads: u32,
    /// Workgroups of the finalize dispatch: one group of `finalize_threads` per statistic,
    /// packed `workgroup_size / finalize_threads` statistics to a workgroup.
    pub finalize_workgroups: u32,
    /// Stage 1 reads rows of channels, else runs of one channel.
    pub channels_last: bool,
    pub(crate) apply: ApplyKind,
    pub(crate) blocks: Blocks,
    pub(crate) chunk_runs: u64,
}

impl ChannelsPlan {
    /// The elementwise pass's layout: "scalar", "vec4-cf" or "vec4-cl".
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// let plan = BatchNorm::new(&gpu, 64)?.plan(&gpu, &[8, 64, 7, 7], Layout::ChannelsFirst)?;
    /// assert_eq!(plan.channels.unwrap().apply_name(), "scalar"); // 7 * 7 is not a multiple of 4
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn apply_name(&self) -> &'static str {
        self.apply.name()
    }
}

/// What a norm's call runs on a given shape and device, and why: the same shape for every norm
/// (`LayerNormPlan`, `BatchNormPlan`, ... are this type).
///
/// ```no_run
/// # let gpu = fused_norm::Gpu::new()?;
/// let plan = fused_norm::LayerNorm::new(&[768]).plan(&gpu, &[4096, 768])?;
/// println!("{plan}"); // kernels, workgroup size, lanes, and the reason
/// assert!(!plan.kernels.is_empty());
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Entry points, in dispatch order (per chunk of a tensor larger than a binding).
    pub kernels: Vec<&'static str>,
    /// Threads per workgroup.
    pub workgroup_size: u32,
    /// Whether reductions use subgroup shuffles (else workgroup memory; see
    /// [`Gpu::subgroup_note`]).
    pub subgroups: bool,
    /// Why the policy chose these kernels.
    pub reason: String,
    /// Rows-family details, when that family runs.
    pub rows: Option<RowsPlan>,
    /// Channels-family details, when that family runs.
    pub channels: Option<ChannelsPlan>,
    /// How x and y are stored: f32, native f16 (SHADER_F16), or half precision packed two to a
    /// `u32` word (bf16 always; f16 without SHADER_F16 or with
    /// [`GpuOptions::disable_shader_f16`](crate::GpuOptions::disable_shader_f16)).
    pub storage: crate::Storage,
}

/// [`LayerNorm::plan`]'s result.
pub type LayerNormPlan = Plan;
/// [`RmsNorm::plan`]'s result.
pub type RmsNormPlan = Plan;
/// [`GroupNorm::plan`]'s result.
pub type GroupNormPlan = Plan;
/// The result of `plan` on an [`InstanceNorm`] (through its [`GroupNorm`]).
pub type InstanceNormPlan = Plan;
/// [`BatchNorm::plan`]'s result.
pub type BatchNormPlan = Plan;

impl Plan {
    pub(crate) fn new(
        gpu: &Gpu,
        kernels: &[Kernel],
        workgroup_size: u32,
        reason: String,
        rows: Option<RowsPlan>,
        channels: Option<ChannelsPlan>,
    ) -> Plan {
        let subgroups = gpu.capabilities().subgroups;
        let reason = match subgroups {
            true => reason,
            false => format!(
                "{reason}; workgroup-memory reductions: {}",
                gpu.subgroup_note()
            ),
        };
        Plan {
            kernels: kernels.iter().map(|k| k.entry()).collect(),
            workgroup_size,
            subgroups,
            reason,
            rows,
            channels,
            storage: crate::Storage::F32,
        }
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(r) = &self.rows {
            match r.variant {
                LnVariant::Rows { threads_per_row } => {
                    let one = match (r.one_read, r.rows_per_group) {
                        (false, _) => String::new(),
                        (true, 1) => ", one read".to_string(),
                        (true, k) => format!(", one read, {k} rows per group"),
                    };
                    write!(f, "rows(tpr={threads_per_row}{one})")?
                }
                _ => write!(
                    f,
                    "split-row(segs={}, tps={})",
                    r.segments.0, r.group_threads
                )?,
            }
        }
        if let Some(c) = &self.channels {
            let b = c.blocks;
            match c.channels_last {
                true => write!(f, "partial_cl({} rows/thread)", b.nbr)?,
                false => write!(
                    f,
                    "partial_cf({}x{} per {} threads)",
                    b.nbr, b.seg, c.partial_threads
                )?,
            }
            write!(
                f,
                ", {} blocks, finalize {} threads, apply {}",
                b.nbt,
                c.finalize_threads,
                c.apply_name()
            )?;
        }
        let lanes = if self.subgroups { "subgroup" } else { "shared" };
        if self.storage != crate::Storage::F32 {
            write!(f, " {}", self.storage)?;
        }
        write!(
            f,
            " wg={} {lanes} [{}]: {}",
            self.workgroup_size,
            self.kernels.join(", "),
            self.reason
        )
    }
}

/// The setters every norm has: `eps`, and `weight` / `bias` where it has them. The norm's
/// struct (or its field named after `in`) keeps them in fields of those names.
macro_rules! setters {
    ($norm:ident $(in $f:ident)?, $ex:literal, $per:literal) => {
        crate::norms::setters!(@eps $norm $(in $f)?, $ex);
        crate::norms::setters!(@param $norm $(in $f)?, $ex, $per, weight, "Scale (gamma)", "1");
    };
    ($norm:ident $(in $f:ident)?, $ex:literal, $per:literal, bias) => {
        crate::norms::setters!($norm $(in $f)?, $ex, $per);
        crate::norms::setters!(@param $norm $(in $f)?, $ex, $per, bias, "Shift (beta)", "0");
    };
    (@eps $norm:ident $(in $f:ident)?, $ex:literal) => {
        impl $norm {
            #[doc = concat!("Sets eps, added to the variance; finite and >= 0.\n\n```no_run\n# let gpu = fused_norm::Gpu::new()?;\nlet n = ", $ex, ".eps(1e-6);\n# Ok::<(), fused_norm::NormError>(())\n```")]
            pub fn eps(mut self, eps: f32) -> $norm {
                self$(.$f)?.eps = eps;
                self
            }
        }
    };
    (@param $norm:ident $(in $f:ident)?, $ex:literal, $per:literal, $field:ident, $what:literal, $none:literal) => {
        impl $norm {
            #[doc = concat!($what, ", one value per ", $per, "; optional (as if all ", $none, ").\n\n```no_run\n# let gpu = fused_norm::Gpu::new()?;\n# let t = fused_norm::Tensor::from_slice(&gpu, &[1.0; 8], &[8])?;\nlet n = ", $ex, ".", stringify!($field), "(t);\n# Ok::<(), fused_norm::NormError>(())\n```")]
            pub fn $field(mut self, $field: Tensor) -> $norm {
                self$(.$f)?.$field = Some($field);
                self
            }
        }
    };
}
pub(crate) use setters;

/// A validated call of a norm on a shape: its reduction, the shape of its statistics, and the
/// tensors it reads (which no output may share a buffer with). Every norm's `plan`, `forward`
/// and `encode` go through one.
pub(crate) struct Call<'a> {
    pub op: Op<'a>,
    pub stats: Vec<usize>,
    pub reads: Vec<(&'static str, Option<&'a Tensor>)>,
}

/// The reduction a call runs.
pub(crate) enum Op<'a> {
    Rows(crate::ops::rows::Rows<'a>),
    Channels(crate::ops::channels::Channels<'a>),
}

impl Call<'_> {
    pub(crate) fn plan(&self, gpu: &Gpu) -> crate::Result<Plan> {
        match &self.op {
            Op::Rows(r) => Ok(r.plan(gpu)),
            Op::Channels(c) => c.plan(gpu, true),
        }
    }

    /// Checks the caller's outputs (y like x; mean, when wanted, and rstd one per statistic)
    /// and records the call.
    pub(crate) fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        y: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
    ) -> crate::Result<()> {
        let k = self.stats.iter().product();
        let mut outputs = vec![("y", y, x.numel()), ("rstd", rstd, k)];
        outputs.extend(mean.map(|m| ("mean", m, k)));
        crate::ops::affine::check_outputs(gpu, &self.reads, &outputs)?;
        Self::check_output_dtypes(x, y, mean, rstd)?;
        match &self.op {
            Op::Rows(r) => r.encode(gpu, encoder, x, y, mean, rstd),
            Op::Channels(c) => {
                let source = crate::ops::channels::Source::Batch {
                    mean: mean.expect("channels-family norms have a mean"),
                    invstd: rstd,
                    update: None,
                };
                c.encode(gpu, encoder, x, y, source)
            }
        }
    }

    /// y has x's dtype; statistics are f32.
    fn check_output_dtypes(
        x: &Tensor,
        y: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
    ) -> crate::Result<()> {
        use crate::DType;
        crate::ops::affine::check_each_dtype(&[
            ("output y", Some(y), x.dtype()),
            ("output mean", mean, DType::F32),
            ("output rstd", Some(rstd), DType::F32),
        ])
    }

    /// Records x + residual normalized (LayerNorm, RMSNorm): checks the residual (x's shape and
    /// dtype, not x's buffer) and the outputs, of which `sum` may be the residual itself (in
    /// place) and nothing else may share a buffer.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_add(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        residual: &Tensor,
        sum: &Tensor,
        y: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
    ) -> crate::Result<()> {
        residual.check_device(gpu, "residual")?;
        if residual.shape() != x.shape() || residual.dtype() != x.dtype() {
            return Err(crate::NormError::Shape(format!(
                "residual is {} {:?}, x {} {:?}: they must match",
                residual.dtype(),
                residual.shape(),
                x.dtype(),
                x.shape()
            )));
        }
        residual.check_no_alias("residual", "the input", x)?;
        let in_place = sum.same_buffer(residual);
        let k = self.stats.iter().product();
        let mut outputs = vec![("y", y, x.numel()), ("rstd", rstd, k)];
        outputs.extend(mean.map(|m| ("mean", m, k)));
        let mut reads = self.reads.clone();
        if !in_place {
            reads.push(("residual", Some(residual)));
            outputs.push(("sum", sum, x.numel()));
        } else {
            for (name, t, _) in &outputs {
                t.check_no_alias(name, "residual", residual)?;
            }
        }
        crate::ops::affine::check_outputs(gpu, &reads, &outputs)?;
        // In place, sum is the residual: checked above against every other output and read.
        for &(other, r) in &self.reads {
            if let (true, Some(r)) = (in_place, r) {
                sum.check_no_alias("sum", other, r)?;
            }
        }
        Self::check_output_dtypes(x, y, mean, rstd)?;
        sum.check_dtype("output sum", x.dtype())?;
        let Op::Rows(r) = &self.op else {
            return Err(crate::NormError::InvalidArgument(
                "forward_add is a LayerNorm / RMSNorm call".into(),
            ));
        };
        let add = crate::ops::rows::Residual {
            res: residual,
            sum: (!in_place).then_some(sum),
        };
        r.encode_add(gpu, encoder, x, Some(add), y, mean, rstd)
    }

    /// Allocates the outputs (the mean when `with_mean`), records, submits and waits.
    pub(crate) fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        with_mean: bool,
    ) -> crate::Result<(Tensor, Option<Tensor>, Tensor)> {
        let y = Tensor::empty_dtype(gpu, x.shape(), x.dtype())?;
        let mean = match with_mean {
            true => Some(Tensor::empty(gpu, &self.stats)?),
            false => None,
        };
        let rstd = Tensor::empty(gpu, &self.stats)?;
        let mut enc = gpu.encoder();
        self.encode(gpu, &mut enc, x, &y, mean.as_ref(), &rstd)?;
        gpu.submit_wait(enc)?;
        Ok((y, mean, rstd))
    }

    /// [`Call::forward`] with the mean, as a [`NormOutput`].
    pub(crate) fn forward_stats(&self, gpu: &Gpu, x: &Tensor) -> crate::Result<NormOutput> {
        let (y, mean, rstd) = self.forward(gpu, x, true)?;
        let mean = mean.ok_or_else(|| crate::NormError::Wgpu("internal: no mean".into()))?;
        Ok(NormOutput { y, mean, rstd })
    }
}

/// The reduction a backward call runs.
pub(crate) enum BwdOp<'a> {
    Rows(RowsBwd<'a>),
    /// BatchNorm (both layouts), GroupNorm / InstanceNorm channels-last; `eval`: through
    /// constant running statistics, given as (mean, var) in place of (mean, rstd).
    Channels {
        op: crate::ops::channels::Channels<'a>,
        eval: bool,
    },
}

impl<'a> From<RowsBwd<'a>> for BwdOp<'a> {
    fn from(r: RowsBwd<'a>) -> BwdOp<'a> {
        BwdOp::Rows(r)
    }
}

impl BwdOp<'_> {
    /// Statistics the saved mean and rstd hold.
    fn stats(&self) -> usize {
        match self {
            BwdOp::Rows(r) => r.rows,
            BwdOp::Channels { op, .. } => op.slots() as usize,
        }
    }

    fn weight(&self) -> Option<&Tensor> {
        match self {
            BwdOp::Rows(r) => r.weight,
            BwdOp::Channels { op, .. } => op.weight,
        }
    }
}

/// A backward call with the norm's parameters: checks the inputs (dy like x, the mean when
/// centred and rstd one per statistic) and the caller's gradients (dweight and dbias exactly
/// when the norm has that parameter, shaped like it).
pub(crate) struct BwdCall<'a> {
    pub op: BwdOp<'a>,
    pub bias: Option<&'a Tensor>,
    /// What one statistic is of ("row", "(sample, group)").
    pub what: &'static str,
    /// The name of the second statistic in errors ("rstd", BatchNorm's "invstd").
    pub spread: &'static str,
}

impl BwdCall<'_> {
    pub(crate) fn check_inputs(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        dy: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
    ) -> crate::Result<()> {
        dy.check_device(gpu, "dy")?;
        // x in any storage dtype, dy in x's (its gradient), the saved statistics in f32 (as the
        // forward returns them), the parameters f32 or x's dtype.
        crate::ops::affine::check_dtypes(x, self.op.weight(), self.bias, true, "")?;
        dy.check_dtype("dy", x.dtype())?;
        for (name, t) in [("mean", mean), (self.spread, Some(rstd))] {
            if let Some(t) = t {
                t.check_dtype(name, crate::DType::F32)?;
            }
        }
        if dy.shape() != x.shape() {
            return Err(crate::NormError::Shape(format!(
                "dy has shape {:?}, x {:?}: they must match",
                dy.shape(),
                x.shape()
            )));
        }
        for (name, t) in [("mean", mean), (self.spread, Some(rstd))] {
            if let Some(t) = t {
                t.check_device(gpu, name)?;
                if t.numel() != self.op.stats() {
                    return Err(crate::NormError::Shape(format!(
                        "{name} has {} values, needs {} (one per {})",
                        t.numel(),
                        self.op.stats(),
                        self.what
                    )));
                }
            }
        }
        Ok(())
    }

    /// Checks the inputs and the caller's gradients (sizes, buffers, dtypes) without recording
    /// anything, so a call that records other work first can fail with the encoder untouched.
    pub(crate) fn check(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        dy: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
        g: &Gradients,
    ) -> crate::Result<()> {
        self.check_inputs(gpu, x, dy, mean, rstd)?;
        let mut outputs = vec![("dx", &g.dx, x.numel())];
        for (name, param, grad) in [
            ("dweight", self.op.weight(), &g.dweight),
            ("dbias", self.bias, &g.dbias),
        ] {
            match (param, grad) {
                (Some(p), Some(t)) => outputs.push((name, t, p.numel())),
                (None, None) => {}
                (p, _) => {
                    return Err(crate::NormError::InvalidArgument(format!(
                        "{name} must be given exactly when the norm has that parameter (it {})",
                        if p.is_some() { "has" } else { "has not" }
                    )))
                }
            }
        }
        let reads = [
            ("the input", Some(x)),
            ("dy", Some(dy)),
            ("mean", mean),
            (self.spread, Some(rstd)),
            ("weight", self.op.weight()),
        ];
        crate::ops::affine::check_outputs(gpu, &reads, &outputs)?;
        // dx in x's dtype, each parameter's gradient in that parameter's.
        g.dx.check_dtype("dx", x.dtype())?;
        for (name, param, grad) in [
            ("dweight", self.op.weight(), &g.dweight),
            ("dbias", self.bias, &g.dbias),
        ] {
            if let (Some(p), Some(t)) = (param, grad) {
                t.check_dtype(name, p.dtype())?;
            }
        }
        Ok(())
    }

    /// Checks everything and records the backward into `encoder`, writing `g`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        dy: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
        g: &Gradients,
    ) -> crate::Result<()> {
        self.check(gpu, x, dy, mean, rstd, g)?;
        let out = BwdOut {
            dx: &g.dx,
            dweight: g.dweight.as_ref(),
            dbias: g.dbias.as_ref(),
        };
        match &self.op {
            BwdOp::Rows(r) => r.encode(gpu, encoder, x, dy, mean, rstd, out),
            BwdOp::Channels { op, eval } => {
                let mean = mean.expect("channels-family norms have a mean");
                let saved = match eval {
                    true => Saved::Running { mean, var: rstd },
                    false => Saved::Batch { mean, rstd },
                };
                op.encode_backward(gpu, encoder, x, dy, saved, BwdStage::Full, out)
            }
        }
    }

    /// Allocates the gradients, records the backward, submits and waits.
    pub(crate) fn run(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        dy: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
    ) -> crate::Result<Gradients> {
        self.check_inputs(gpu, x, dy, mean, rstd)?;
        let g = Gradients::like(gpu, x, self.op.weight(), self.bias)?;
        let mut enc = gpu.encoder();
        self.encode(gpu, &mut enc, x, dy, mean, rstd, &g)?;
        gpu.submit_wait(enc)?;
        Ok(g)
    }
}
