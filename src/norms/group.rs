//! GroupNorm: statistics per (sample, group of channels). Channels-first, a group's values are
//! contiguous: the rows family with a per-channel affine. Channels-last, they are strided: the
//! channels family, per sample.

use crate::context::Gpu;
use crate::error::{NormError, Result};
use crate::norms::{
    setters, BwdCall, BwdOp, Call, Gradients, GroupNormOutput, GroupNormPlan, Layout, LnVariant, Op,
};
use crate::ops::affine::{check_affine, check_dtypes, check_eps, check_u32_elems, ncs};
use crate::ops::channels::Channels;
use crate::ops::rows::{ChannelAffine, Rows};
use crate::ops::rows_bwd::RowsBwd;
use crate::runtime::pipeline::Storage;
use crate::tensor::Tensor;

/// GroupNorm, like PyTorch's `nn.GroupNorm(groups, channels)` and ONNX `GroupNormalization`
/// (opset 21): statistics per (sample, group) over the group's `channels / groups` channels and
/// every spatial position, population variance; weight and bias per channel, optional and
/// independent. Default eps 1e-5. Input `[N, C, *spatial]` (also `[N, C]`) or, with
/// [`Layout::ChannelsLast`], `[N, *spatial, C]`, read in place.
///
/// ```no_run
/// use fused_norm::{GroupNorm, Gpu, Layout, Tensor};
/// let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &vec![0.5; 2 * 8 * 4 * 4], &[2, 8, 4, 4])?;
/// let out = GroupNorm::new(4, 8)?.eps(1e-5).forward(&gpu, &x, Layout::ChannelsFirst)?;
/// assert_eq!(out.mean.shape(), &[2, 4]);
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug)]
pub struct GroupNorm {
    groups: usize,
    channels: usize,
    // 2 for GroupNorm ([N, C] allowed), 3 for InstanceNorm (statistics need spatial dims).
    min_rank: usize,
    pub(crate) eps: f32,
    pub(crate) weight: Option<Tensor>,
    pub(crate) bias: Option<Tensor>,
}

setters!(
    GroupNorm,
    "fused_norm::GroupNorm::new(2, 8)?",
    "channel",
    bias
);

impl GroupNorm {
    /// `groups` groups of `channels / groups` channels each; an error unless both are at least
    /// 1 and `groups` divides `channels`.
    ///
    /// ```
    /// assert!(fused_norm::GroupNorm::new(32, 512).is_ok());
    /// assert!(fused_norm::GroupNorm::new(3, 512).is_err());
    /// ```
    pub fn new(groups: usize, channels: usize) -> Result<GroupNorm> {
        let g = GroupNorm::unchecked(groups, channels, 2);
        g.check_groups()?;
        Ok(g)
    }

    /// For InstanceNorm, whose constructor cannot fail: the counts are checked by each call.
    pub(crate) fn unchecked(groups: usize, channels: usize, min_rank: usize) -> GroupNorm {
        GroupNorm {
            groups,
            channels,
            min_rank,
            eps: 1e-5,
            weight: None,
            bias: None,
        }
    }

    fn check_groups(&self) -> Result<()> {
        let (groups, channels) = (self.groups, self.channels);
        if groups == 0 || channels == 0 || !channels.is_multiple_of(groups) {
            return Err(NormError::InvalidArgument(format!(
                "needs groups >= 1 dividing channels >= 1, got {groups} groups of {channels} \
                 channels"
            )));
        }
        Ok(())
    }

    /// The call on `shape`: its family, and (N, groups) for the statistics' shape.
    /// The call on x: channels-first the rows family, channels-last the channels family.
    fn call<'a>(&'a self, gpu: &Gpu, x: &'a Tensor, layout: Layout) -> Result<Call<'a>> {
        x.check_device(gpu, "x")?;
        let shape = x.shape();
        self.check_groups()?;
        check_eps(self.eps)?;
        let what = if self.min_rank > 2 {
            "InstanceNorm"
        } else {
            "GroupNorm"
        };
        let (n, c, s) = ncs(shape, layout, what)?;
        if shape.len() < self.min_rank {
            return Err(NormError::Shape(format!(
                "{what} needs x of rank >= {} ([N, C, spatial...]), got {shape:?}: with no spatial \
                 dims each instance is one value",
                self.min_rank
            )));
        }
        if c != self.channels {
            return Err(NormError::Shape(format!(
                "x {shape:?} has {c} channels in layout {layout:?}, the norm has {}",
                self.channels
            )));
        }
        let (w, b) = (self.weight.as_ref(), self.bias.as_ref());
        check_affine(gpu, w, b, c, "channel")?;
        check_dtypes(x, w, b, true, what)?;
        check_u32_elems(n * c * s)?;
        let (g, cpg) = (self.groups, c / self.groups);
        let op = match layout {
            Layout::ChannelsFirst => Op::Rows(Rows {
                rows: n * g,
                d: cpg * s,
                center: true,
                channel: Some(ChannelAffine {
                    groups: g as u32,
                    cpg: cpg as u32,
                    run: s as u32,
                }),
                eps: self.eps,
                weight: w,
                bias: b,
                variant: LnVariant::Auto,
                storage: Storage::of(gpu, x.dtype()),
            }),
            Layout::ChannelsLast => Op::Channels(Channels {
                n: (n * s) as u64,
                c: c as u64,
                s: 1,
                spr: s as u64,
                groups: g as u64,
                cpg: cpg as u64,
                eps: self.eps,
                weight: w,
                bias: b,
                storage: Storage::of(gpu, x.dtype()),
            }),
        };
        Ok(Call {
            op,
            stats: vec![n, g],
            reads: vec![("the input", Some(x)), ("weight", w), ("bias", b)],
        })
    }

    /// The kernels a call on `shape` in `layout` runs, and why.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// let plan = GroupNorm::new(32, 512)?.plan(&gpu, &[8, 512, 64, 64], Layout::ChannelsFirst)?;
    /// println!("{plan}");
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn plan(&self, gpu: &Gpu, shape: &[usize], layout: Layout) -> Result<GroupNormPlan> {
        self.call(gpu, &Tensor::shape_only(gpu, shape)?, layout)?
            .plan(gpu)
    }

    /// Runs GroupNorm on `x`, allocating the outputs (`mean`, `rstd`: `[N, groups]`). Blocks.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &vec![0.5; 2 * 6 * 5], &[2, 5, 6])?;
    /// let out = GroupNorm::new(3, 6)?.forward(&gpu, &x, Layout::ChannelsLast)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, layout: Layout) -> Result<GroupNormOutput> {
        self.call(gpu, x, layout)?.forward_stats(gpu, x)
    }

    /// Records GroupNorm into the caller's encoder with caller-provided outputs (`y` like x,
    /// `mean` and `rstd` with N x groups values). No submit, no wait.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &vec![0.5; 2 * 6 * 5], &[2, 6, 5])?;
    /// let out = GroupNormOutput {
    ///     y: Tensor::empty(&gpu, &[2, 6, 5])?,
    ///     mean: Tensor::empty(&gpu, &[2, 3])?,
    ///     rstd: Tensor::empty(&gpu, &[2, 3])?,
    /// };
    /// let mut enc = gpu.encoder();
    /// GroupNorm::new(3, 6)?.encode(&gpu, &mut enc, &x, Layout::ChannelsFirst, &out)?;
    /// gpu.submit_wait(enc)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        layout: Layout,
        out: &GroupNormOutput,
    ) -> Result<()> {
        let (y, m, r) = (&out.y, Some(&out.mean), &out.rstd);
        self.call(gpu, x, layout)?.encode(gpu, encoder, x, y, m, r)
    }

    /// The backward call on x: channels-first the rows family with per-channel weights,
    /// channels-last the channels family, like the forward.
    fn backward_call<'a>(
        &'a self,
        gpu: &Gpu,
        x: &'a Tensor,
        layout: Layout,
    ) -> Result<BwdCall<'a>> {
        let (op, bias) = match self.call(gpu, x, layout)?.op {
            Op::Rows(r) => (
                RowsBwd {
                    rows: r.rows,
                    d: r.d,
                    center: true,
                    weight: r.weight,
                    channel: r.channel,
                    storage: r.storage,
                }
                .into(),
                r.bias,
            ),
            Op::Channels(c) => (BwdOp::Channels { op: c, eval: false }, c.bias),
        };
        Ok(BwdCall {
            op,
            bias,
            what: "(sample, group)",
            spread: "rstd",
        })
    }

    /// The backward from the forward's saved `mean` and `rstd` (`[N, G]`; PyTorch's
    /// `native_group_norm_backward`): dx through the group statistics, dweight and dbias per
    /// channel (when the norm has them), summed over samples and positions in a fixed order.
    /// InstanceNorm's is this with one channel per group. Both layouts.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0; 16], &[2, 4, 2])?;
    /// # let dy = x.clone();
    /// let gn = GroupNorm::new(2, 4)?;
    /// let out = gn.forward(&gpu, &x, Layout::ChannelsFirst)?;
    /// let g = gn.backward(&gpu, &x, &dy, &out.mean, &out.rstd, Layout::ChannelsFirst)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn backward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        dy: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        layout: Layout,
    ) -> Result<Gradients> {
        self.backward_call(gpu, x, layout)?
            .run(gpu, x, dy, Some(mean), rstd)
    }

    /// [`GroupNorm::backward`] recorded into the caller's encoder, writing caller-provided
    /// gradients (`g.dx` like x; `g.dweight` / `g.dbias` exactly when the norm has them).
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0; 16], &[2, 4, 2])?;
    /// # let dy = x.clone();
    /// let (gn, cf) = (GroupNorm::new(2, 4)?, Layout::ChannelsFirst);
    /// let out = gn.forward(&gpu, &x, cf)?;
    /// let g = Gradients { dx: Tensor::empty(&gpu, &[2, 4, 2])?, dweight: None, dbias: None };
    /// let mut enc = gpu.encoder();
    /// gn.encode_backward(&gpu, &mut enc, &x, &dy, &out.mean, &out.rstd, cf, &g)?;
    /// gpu.submit_wait(enc)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn encode_backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        dy: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        layout: Layout,
        g: &Gradients,
    ) -> Result<()> {
        self.backward_call(gpu, x, layout)?
            .encode(gpu, encoder, x, dy, Some(mean), rstd, g)
    }
}
