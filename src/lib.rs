//! Fused normalization kernels in WGSL, run through wgpu on any adapter: LayerNorm, RMSNorm,
//! GroupNorm, InstanceNorm and BatchNorm as configurations of two reductions (over contiguous
//! rows, over strided channels) and one elementwise pass. Tensors hold f32, f16 or bf16
//! ([`DType`]); the math is f32, and half outputs are rounded once, to nearest even.
//!
//! ```no_run
//! use fused_norm::{gpu_layer_norm, Gpu, Tensor};
//! let gpu = Gpu::new()?;
//! let x = Tensor::from_slice(&gpu, &vec![1.0; 4 * 768], &[4, 768])?;
//! let y = gpu_layer_norm(&gpu, &x)?.to_vec(&gpu)?;
//! # Ok::<(), fused_norm::NormError>(())
//! ```

mod context;
#[cfg(feature = "mpi")]
pub mod dist;
mod error;
mod norms;
mod ops;
pub mod reference;
mod runtime;
mod stats;
mod tensor;

pub use context::{Capabilities, Gpu, GpuOptions, Tuning};
pub use error::{NormError, Result};
pub use norms::{
    gpu_layer_norm, BatchNorm, BatchNormOutput, BatchNormPlan, ChannelsPlan, Gradients, GroupNorm,
    GroupNormOutput, GroupNormPlan, InstanceNorm, InstanceNormOutput, InstanceNormPlan, LayerNorm,
    LayerNormAddOutput, LayerNormOutput, LayerNormPlan, Layout, LnVariant, NormOutput, Plan,
    RmsNorm, RmsNormAddOutput, RmsNormOutput, RmsNormPlan, RowsPlan, TrainCommit,
};
#[doc(hidden)]
pub use runtime::pipeline::Storage;
#[doc(hidden)]
pub use runtime::{
    pipeline::{module_source, module_source_storage},
    uniform_layouts,
};
pub use stats::{ChannelStats, StatsReducer, ThreadReducer};
pub use tensor::{DType, Element, Tensor};
