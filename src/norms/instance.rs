//! InstanceNorm: GroupNorm with one channel per group (as Burn builds it).

use crate::norms::{setters, GroupNorm};
use crate::tensor::Tensor;

/// InstanceNorm, like PyTorch's `nn.InstanceNorm{1,2,3}d(channels)` (no running statistics;
/// affine optional) and ONNX `InstanceNormalization`: statistics per (sample, channel) over the
/// spatial dims, population variance, then an optional per-channel weight and bias. Default
/// eps 1e-5. It is a [`GroupNorm`] with `channels` groups: `plan`, `forward` and `encode` are
/// GroupNorm's (through `Deref`), with statistics of shape `[N, C]`.
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
    g: GroupNorm,
}

impl InstanceNorm {
    /// An InstanceNorm over `channels` channels (a zero count is refused by the calls, and so
    /// is x without spatial dims, as ONNX does).
    ///
    /// ```
    /// let inn = fused_norm::InstanceNorm::new(64);
    /// ```
    pub fn new(channels: usize) -> InstanceNorm {
        InstanceNorm {
            g: GroupNorm::unchecked(channels, channels, 3),
        }
    }
}

impl std::ops::Deref for InstanceNorm {
    type Target = GroupNorm;

    fn deref(&self) -> &GroupNorm {
        &self.g
    }
}

setters!(InstanceNorm in g, "fused_norm::InstanceNorm::new(8)", "channel", bias);
