//! GroupNorm: statistics per (sample, group of channels). Channels-first, a group's values are
//! contiguous: the rows family with a per-channel affine. Channels-last, they are strided: the
//! channels family, per sample.

use crate::context::Gpu;
use crate::error::{NormError, Result};
use crate::norms::{setters, GroupNormOutput, GroupNormPlan, Layout, LnVariant};
use crate::ops::affine::{check_affine, check_eps, check_outputs, check_u32_elems, ncs};
use crate::ops::channels::{Channels, Source};
use crate::ops::rows::{ChannelAffine, Rows};
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
    eps: f32,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
}

setters!(
    GroupNorm,
    "fused_norm::GroupNorm::new(2, 8)?",
    "channel",
    bias
);

/// The family a call runs in.
pub(crate) enum Call<'a> {
    Rows(Rows<'a>),
    Channels(Channels<'a>),
}

impl GroupNorm {
    /// `groups` groups of `channels / groups` channels each; an error unless both are at least
    /// 1 and `groups` divides `channels`.
    ///
    /// ```
    /// assert!(fused_norm::GroupNorm::new(32, 512).is_ok());
    /// assert!(fused_norm::GroupNorm::new(3, 512).is_err());
    /// ```
    pub fn new(groups: usize, channels: usize) -> Result<GroupNorm> {
        if groups == 0 || channels == 0 || !channels.is_multiple_of(groups) {
            return Err(NormError::InvalidArgument(format!(
                "GroupNorm needs groups >= 1 dividing channels >= 1, got {groups} groups of \
                 {channels} channels"
            )));
        }
        Ok(GroupNorm {
            groups,
            channels,
            eps: 1e-5,
            weight: None,
            bias: None,
        })
    }

    /// The call on `shape`: its family, and (N, groups) for the statistics' shape.
    pub(crate) fn call(
        &self,
        gpu: &Gpu,
        shape: &[usize],
        layout: Layout,
    ) -> Result<(Call<'_>, usize)> {
        check_eps(self.eps)?;
        let (n, c, s) = ncs(shape, layout, "GroupNorm")?;
        if c != self.channels {
            return Err(NormError::Shape(format!(
                "x {shape:?} has {c} channels in layout {layout:?}, the norm has {}",
                self.channels
            )));
        }
        let (w, b) = (self.weight.as_ref(), self.bias.as_ref());
        check_affine(gpu, w, b, c, "channel")?;
        check_u32_elems(n * c * s)?;
        let (g, cpg) = (self.groups, c / self.groups);
        let call = match layout {
            Layout::ChannelsFirst => Call::Rows(Rows {
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
            }),
            Layout::ChannelsLast => Call::Channels(Channels {
                n: (n * s) as u64,
                c: c as u64,
                s: 1,
                spr: s as u64,
                groups: g as u64,
                cpg: cpg as u64,
                eps: self.eps,
                weight: w,
                bias: b,
            }),
        };
        Ok((call, n))
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
        match self.call(gpu, shape, layout)?.0 {
            Call::Rows(r) => Ok(r.plan(gpu)),
            Call::Channels(c) => c.plan(gpu, true),
        }
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
        x.check_device(gpu, "x")?;
        let (_, n) = self.call(gpu, x.shape(), layout)?;
        let stats = [n, self.groups];
        let out = GroupNormOutput {
            y: Tensor::empty(gpu, x.shape())?,
            mean: Tensor::empty(gpu, &stats)?,
            rstd: Tensor::empty(gpu, &stats)?,
        };
        let mut enc = gpu.encoder();
        self.encode(gpu, &mut enc, x, layout, &out)?;
        gpu.submit_wait(enc)?;
        Ok(out)
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
        x.check_device(gpu, "x")?;
        let (call, n) = self.call(gpu, x.shape(), layout)?;
        let k = n * self.groups;
        let outputs = [
            ("y", &out.y, x.numel()),
            ("mean", &out.mean, k),
            ("rstd", &out.rstd, k),
        ];
        let reads = [
            ("the input", Some(x)),
            ("weight", self.weight.as_ref()),
            ("bias", self.bias.as_ref()),
        ];
        check_outputs(gpu, &reads, &outputs)?;
        match call {
            Call::Rows(r) => r.encode(gpu, encoder, x, &out.y, Some(&out.mean), &out.rstd),
            Call::Channels(c) => {
                let source = Source::Batch {
                    mean: &out.mean,
                    invstd: &out.rstd,
                    update: None,
                };
                c.encode(gpu, encoder, x, &out.y, source)
            }
        }
    }
}
