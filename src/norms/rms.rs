//! RMSNorm: the rows family over a sample's trailing dims without the mean.

use crate::context::Gpu;
use crate::error::Result;
use crate::norms::layer::Trailing;
use crate::norms::{setters, Call, Gradients, LnVariant, RmsNormPlan};
use crate::ops::affine::Normalized;
use crate::tensor::{DType, Tensor};

/// RMSNorm over the trailing dims, like PyTorch's `nn.RMSNorm(normalized_shape)` and ONNX
/// `RMSNormalization(axis)` (opset 23): `y = x / sqrt(mean(x^2) + eps) * weight`, no mean
/// subtraction, no bias. The default eps follows each: [`RmsNorm::new`] uses PyTorch's
/// (`eps=None`: `f32::EPSILON` for f32), [`RmsNorm::from_axis`] ONNX's 1e-5.
///
/// ```no_run
/// use fused_norm::{Gpu, RmsNorm, Tensor};
/// let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &vec![0.5; 4 * 768], &[4, 768])?;
/// let w = Tensor::from_slice(&gpu, &vec![1.0; 768], &[768])?;
/// let out = RmsNorm::new(&[768]).eps(1e-6).weight(w).forward(&gpu, &x)?;
/// assert_eq!(out.rstd.shape(), &[4, 1]);
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug)]
pub struct RmsNorm {
    t: Trailing,
}

setters!(
    RmsNorm in t,
    "fused_norm::RmsNorm::new(&[8])",
    "element of a normalized row"
);

/// Outputs of [`RmsNorm::forward_add`].
///
/// ```no_run
/// # use fused_norm::*;
/// # let gpu = Gpu::new()?;
/// # let x = Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?;
/// let out: RmsNormAddOutput = RmsNorm::new(&[4]).forward_add(&gpu, &x, &x.cast(&gpu, DType::F32)?)?;
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug)]
pub struct RmsNormAddOutput {
    /// `x + residual`, rounded to x's dtype.
    pub sum: Tensor,
    /// RMSNorm of `sum`.
    pub y: Tensor,
    /// `1 / sqrt(mean(sum^2) + eps)` of each row (f32).
    pub rstd: Tensor,
}

/// Outputs of [`RmsNorm::forward`].
#[derive(Clone, Debug)]
pub struct RmsNormOutput {
    /// Normalized tensor, same shape as x.
    pub y: Tensor,
    /// `1 / sqrt(mean(x^2) + eps)` of each row, shaped `x.shape[..axis] ++ [1; trailing]`.
    pub rstd: Tensor,
}

impl RmsNorm {
    /// Normalizes over the trailing dims equal to `normalized_shape` (PyTorch; eps
    /// `f32::EPSILON` until set).
    ///
    /// ```
    /// let rms = fused_norm::RmsNorm::new(&[4096]);
    /// ```
    pub fn new(normalized_shape: &[usize]) -> RmsNorm {
        RmsNorm::with(Normalized::Shape(normalized_shape.to_vec()), f32::EPSILON)
    }

    /// ONNX `RMSNormalization(axis)`: normalizes over dims `axis..`, negative from the end;
    /// eps 1e-5 until set.
    ///
    /// ```
    /// let rms = fused_norm::RmsNorm::from_axis(-1);
    /// ```
    pub fn from_axis(axis: isize) -> RmsNorm {
        RmsNorm::with(Normalized::Axis(axis), 1e-5)
    }

    fn with(normalized: Normalized, eps: f32) -> RmsNorm {
        RmsNorm {
            t: Trailing::new(normalized, eps),
        }
    }

    /// Forces a kernel variant instead of the policy's choice.
    ///
    /// ```
    /// use fused_norm::{LnVariant, RmsNorm};
    /// let rms = RmsNorm::new(&[4096]).variant(LnVariant::SplitRow);
    /// ```
    pub fn variant(mut self, variant: LnVariant) -> RmsNorm {
        self.t.variant = variant;
        self
    }

    fn call<'a>(&'a self, gpu: &Gpu, x: &'a Tensor) -> Result<Call<'a>> {
        self.t.call(gpu, x, false)
    }

    /// The kernels a call on `x_shape` runs on `gpu`, and why.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// println!("{}", fused_norm::RmsNorm::new(&[4096]).plan(&gpu, &[8, 4096])?);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn plan(&self, gpu: &Gpu, x_shape: &[usize]) -> Result<RmsNormPlan> {
        self.plan_dtype(gpu, x_shape, DType::F32)
    }

    /// [`RmsNorm::plan`] for x of `dtype` (`plan.storage`: native f16 or packed words).
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let plan = fused_norm::RmsNorm::new(&[7]).plan_dtype(&gpu, &[8, 7], fused_norm::DType::F16)?;
    /// assert!(plan.kernels.contains(&"rows_apply_pair")); // odd rows: one word per thread
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn plan_dtype(&self, gpu: &Gpu, x_shape: &[usize], dtype: DType) -> Result<RmsNormPlan> {
        self.t.plan_dtype(gpu, x_shape, dtype, false)
    }

    /// The fused residual add of a pre-norm block (vLLM's `fused_add_rms_norm`): `sum = x +
    /// residual`, rounded to the storage type (as an unfused add would store it), then RMSNorm
    /// of `sum`; one pass reads x and the residual once and writes sum and y (rows whose length
    /// is a multiple of 4; others add first, then normalize). sum and y have x's dtype.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::from_slice(&gpu, &[half::bf16::ONE; 8], &[2, 4])?;
    /// let h = Tensor::from_slice(&gpu, &[half::bf16::ONE; 8], &[2, 4])?;
    /// let out = RmsNorm::new(&[4]).forward_add(&gpu, &x, &h)?;
    /// assert_eq!(out.sum.to_vec(&gpu)?, vec![2.0; 8]);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn forward_add(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        residual: &Tensor,
    ) -> Result<RmsNormAddOutput> {
        let (sum, y, _, rstd) = self.t.forward_add(gpu, x, residual, false)?;
        Ok(RmsNormAddOutput { sum, y, rstd })
    }

    /// [`RmsNorm::forward_add`] into the caller's encoder and outputs; `out.sum` may be the
    /// residual itself (updated in place).
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?;
    /// # let residual = Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?;
    /// let out = RmsNormAddOutput {
    ///     sum: residual.clone(),
    ///     y: Tensor::empty(&gpu, &[2, 4])?,
    ///     rstd: Tensor::empty(&gpu, &[2, 1])?,
    /// };
    /// let mut enc = gpu.encoder();
    /// RmsNorm::new(&[4]).encode_add(&gpu, &mut enc, &x, &residual, &out)?;
    /// gpu.submit_wait(enc)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn encode_add(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        residual: &Tensor,
        out: &RmsNormAddOutput,
    ) -> Result<()> {
        let (s, y, r) = (&out.sum, &out.y, &out.rstd);
        self.call(gpu, x)?
            .encode_add(gpu, encoder, x, residual, s, y, None, r)
    }

    /// Runs RMSNorm on `x`, allocating the outputs. Blocks until the device is done.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let x = fused_norm::Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?;
    /// let out = fused_norm::RmsNorm::new(&[4]).forward(&gpu, &x)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<RmsNormOutput> {
        let (y, _, rstd) = self.call(gpu, x)?.forward(gpu, x, false)?;
        Ok(RmsNormOutput { y, rstd })
    }

    /// Records RMSNorm into the caller's encoder, writing caller-provided outputs (`out.y`
    /// shaped like x, `out.rstd` one value per row). No submit, no wait.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?;
    /// let out = RmsNormOutput { y: Tensor::empty(&gpu, &[2, 4])?, rstd: Tensor::empty(&gpu, &[2, 1])? };
    /// let mut enc = gpu.encoder();
    /// RmsNorm::new(&[4]).encode(&gpu, &mut enc, &x, &out)?;
    /// gpu.submit_wait(enc)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        out: &RmsNormOutput,
    ) -> Result<()> {
        let call = self.call(gpu, x)?;
        call.encode(gpu, encoder, x, &out.y, None, &out.rstd)
    }

    /// The backward from the forward's saved `rstd` (RMSNorm's autograd): dx through the
    /// statistic, `dx = rstd * (g - xhat * mean(g * xhat))` with `g = dy * w`, `xhat = x * rstd`;
    /// dweight when the norm has a weight; dbias always `None`.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
    /// # let dy = x.clone();
    /// let rms = RmsNorm::new(&[2]);
    /// let out = rms.forward(&gpu, &x)?;
    /// let g = rms.backward(&gpu, &x, &dy, &out.rstd)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn backward(&self, gpu: &Gpu, x: &Tensor, dy: &Tensor, rstd: &Tensor) -> Result<Gradients> {
        self.t.backward(gpu, x, dy, None, rstd, false)
    }

    /// [`RmsNorm::backward`] recorded into the caller's encoder, writing caller-provided
    /// gradients (`g.dx` like x; `g.dweight` exactly when the norm has a weight; `g.dbias` None).
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
    /// # let dy = x.clone();
    /// let rms = RmsNorm::new(&[2]);
    /// let out = rms.forward(&gpu, &x)?;
    /// let g = Gradients { dx: Tensor::empty(&gpu, &[2, 2])?, dweight: None, dbias: None };
    /// let mut enc = gpu.encoder();
    /// rms.encode_backward(&gpu, &mut enc, &x, &dy, &out.rstd, &g)?;
    /// gpu.submit_wait(enc)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn encode_backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        dy: &Tensor,
        rstd: &Tensor,
        g: &Gradients,
    ) -> Result<()> {
        self.t
            .encode_backward(gpu, encoder, x, dy, None, rstd, false, g)
    }
}
