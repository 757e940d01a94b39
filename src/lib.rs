//! Fused LayerNorm and BatchNorm compute kernels in WGSL, run through wgpu on any adapter.
//!
//! ```no_run
//! use fused_norm::{gpu_layer_norm, Gpu, Tensor};
//! let gpu = Gpu::new()?;
//! let x = Tensor::from_slice(&gpu, &vec![1.0; 4 * 768], &[4, 768])?;
//! let y = gpu_layer_norm(&gpu, &x)?.to_vec(&gpu)?;
//! # Ok::<(), fused_norm::NormError>(())
//! ```

pub mod baseline;
mod batch_norm;
pub mod bench;
mod error;
mod gpu;
mod layer_norm;
pub mod reference;
mod tensor;

pub use batch_norm::{BatchNorm, BatchNormOutput, BnPlan, Layout, TrainCommit};
pub use error::{NormError, Result};
pub use gpu::{module_source, Capabilities, Gpu, GpuOptions, Tuning};
pub use layer_norm::{gpu_layer_norm, LayerNorm, LayerNormOutput, LnPlan, LnVariant};
pub use tensor::Tensor;
