//! InstanceNorm: GroupNorm with one channel per group (as Burn builds it).

use crate::context::Gpu;
use crate::error::Result;
use crate::norms::{setters, GroupNorm, InstanceNormOutput, InstanceNormPlan, Layout};
use crate::tensor::Tensor;

/// InstanceNorm, like PyTorch's `nn.InstanceNorm{1,2,3}d(channels)` (no running statistics;
/// affine optional) and ONNX `InstanceNormalization`: statistics per (sample, channel) over the
/// spatial dims, population variance, then an optional per-channel weight and bias. Default
/// eps 1e-5. The same kernels as a [`GroupNorm`] with `channels` groups.
///
/// ```no_run
/// use fused_norm::{Gpu, InstanceNorm, Layout, Tensor};
/// let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &vec![0.5; 2 * 3 * 8 * 8], &[2, 8, 8, 3])?;
/// let out = InstanceNorm::new(3).eps(1e-5).forward(&gpu, &x, Layout::ChannelsLast)?;
/// assert_eq!(out.rstd.shape(), &[2, 3]);
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug)]
pub struct InstanceNorm {
    channels: usize,
    eps: f32,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
}

setters!(
    InstanceNorm,
    "fused_norm::InstanceNorm::new(8)",
    "channel",
    bias
);

impl InstanceNorm {
    /// An InstanceNorm over `channels` channels (a zero count is refused by the calls).
    ///
    /// ```
    /// let inn = fused_norm::InstanceNorm::new(64);
    /// ```
    pub fn new(channels: usize) -> InstanceNorm {
        InstanceNorm {
            channels,
            eps: 1e-5,
            weight: None,
            bias: None,
        }
    }

    fn group(&self) -> Result<GroupNorm> {
        let mut g = GroupNorm::new(self.channels, self.channels)?.eps(self.eps);
        if let Some(w) = &self.weight {
            g = g.weight(w.clone());
        }
        if let Some(b) = &self.bias {
            g = g.bias(b.clone());
        }
        Ok(g)
    }

    /// The kernels a call on `shape` in `layout` runs, and why.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// println!("{}", InstanceNorm::new(64).plan(&gpu, &[32, 64, 56, 56], Layout::ChannelsFirst)?);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn plan(&self, gpu: &Gpu, shape: &[usize], layout: Layout) -> Result<InstanceNormPlan> {
        self.group()?.plan(gpu, shape, layout)
    }

    /// Runs InstanceNorm on `x`, allocating the outputs (`mean`, `rstd`: `[N, C]`). Blocks.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &vec![0.5; 2 * 4 * 9], &[2, 4, 9])?;
    /// let out = InstanceNorm::new(4).forward(&gpu, &x, Layout::ChannelsFirst)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, layout: Layout) -> Result<InstanceNormOutput> {
        self.group()?.forward(gpu, x, layout)
    }

    /// Records InstanceNorm into the caller's encoder with caller-provided outputs (`y` like
    /// x, `mean` and `rstd` with N x C values). No submit, no wait.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &vec![0.5; 2 * 4 * 9], &[2, 4, 9])?;
    /// let out = InstanceNormOutput {
    ///     y: Tensor::empty(&gpu, &[2, 4, 9])?,
    ///     mean: Tensor::empty(&gpu, &[2, 4])?,
    ///     rstd: Tensor::empty(&gpu, &[2, 4])?,
    /// };
    /// let mut enc = gpu.encoder();
    /// InstanceNorm::new(4).encode(&gpu, &mut enc, &x, Layout::ChannelsFirst, &out)?;
    /// gpu.submit_wait(enc)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        layout: Layout,
        out: &InstanceNormOutput,
    ) -> Result<()> {
        self.group()?.encode(gpu, encoder, x, layout, out)
    }
}
