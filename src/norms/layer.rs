//! LayerNorm: the rows family over a sample's trailing dims, centred, per-element affine.

use crate::context::Gpu;
use crate::error::Result;
use crate::norms::{
    setters, BwdCall, Call, Gradients, LayerNormOutput, LayerNormPlan, LnVariant, Op,
};
use crate::ops::affine::{
    check_affine, check_dtypes, check_eps, check_u32_elems, stat_shape, Normalized,
};
use crate::ops::rows::Rows;
use crate::ops::rows_bwd::RowsBwd;
use crate::runtime::pipeline::Storage;
use crate::tensor::{DType, Tensor};

/// LayerNorm over the trailing dims, like `torch.nn.LayerNorm(normalized_shape)` and ONNX
/// `LayerNormalization(axis)`: `y = (x - mean) / sqrt(var + eps) * weight + bias`, with the
/// biased variance. Weight and bias are optional and independent. Default eps 1e-5.
///
/// ```no_run
/// use fused_norm::{Gpu, LayerNorm, Tensor};
/// let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &vec![0.5; 4 * 768], &[4, 768])?;
/// let w = Tensor::from_slice(&gpu, &vec![1.0; 768], &[768])?;
/// let b = Tensor::from_slice(&gpu, &vec![0.0; 768], &[768])?;
/// let out = LayerNorm::new(&[768]).eps(1e-5).weight(w).bias(b).forward(&gpu, &x)?;
/// assert_eq!(out.mean.numel(), 4);
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug)]
pub struct LayerNorm {
    t: Trailing,
}

setters!(
    LayerNorm in t,
    "fused_norm::LayerNorm::new(&[8])",
    "element of a normalized row",
    bias
);

/// LayerNorm over the last dim of `x`, eps 1e-5, no weight or bias.
///
/// ```no_run
/// use fused_norm::{gpu_layer_norm, Gpu, Tensor};
/// let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
/// let y = gpu_layer_norm(&gpu, &x)?.to_vec(&gpu)?;
/// assert!((y[0] + 1.0).abs() < 1e-3);
/// # Ok::<(), fused_norm::NormError>(())
/// ```
pub fn gpu_layer_norm(gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
    Ok(LayerNorm::from_axis(-1).forward(gpu, x)?.y)
}

/// [`LayerNorm::forward_add`]'s outputs.
///
/// ```no_run
/// # use fused_norm::*;
/// # let gpu = Gpu::new()?;
/// # let x = Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?;
/// let out: LayerNormAddOutput = LayerNorm::new(&[4]).forward_add(&gpu, &x, &x.cast(&gpu, DType::F32)?)?;
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug)]
pub struct LayerNormAddOutput {
    /// `x + residual`, rounded to x's dtype: the next block's residual stream.
    pub sum: Tensor,
    /// LayerNorm of `sum`.
    pub y: Tensor,
    /// Mean of each row of `sum` (f32).
    pub mean: Tensor,
    /// `1 / sqrt(var + eps)` of each row of `sum` (f32).
    pub rstd: Tensor,
}

/// What LayerNorm and RMSNorm share: the normalized dims, eps, the affine parameters (RMSNorm
/// has no bias) and the kernel variant.
#[derive(Clone, Debug)]
pub(crate) struct Trailing {
    pub normalized: Normalized,
    pub eps: f32,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub variant: LnVariant,
}

impl Trailing {
    pub(crate) fn new(normalized: Normalized, eps: f32) -> Trailing {
        Trailing {
            normalized,
            eps,
            weight: None,
            bias: None,
            variant: LnVariant::Auto,
        }
    }

    /// The rows-family call on x: centred (LayerNorm) or not (RMSNorm).
    pub(crate) fn call<'a>(&'a self, gpu: &Gpu, x: &'a Tensor, center: bool) -> Result<Call<'a>> {
        x.check_device(gpu, "x")?;
        check_eps(self.eps)?;
        let shape = x.shape();
        let axis = self.normalized.axis(shape)?;
        let d: usize = shape[axis..].iter().product();
        let rows: usize = shape[..axis].iter().product();
        let (weight, bias) = (self.weight.as_ref(), self.bias.as_ref());
        check_affine(gpu, weight, bias, d, "element of a normalized row")?;
        check_dtypes(x, weight, bias, true, "")?;
        check_u32_elems(d * rows)?;
        let op = Rows {
            rows,
            d,
            center,
            channel: None,
            eps: self.eps,
            weight,
            bias,
            variant: self.variant,
            storage: Storage::of(gpu, x.dtype()),
        };
        Ok(Call {
            op: Op::Rows(op),
            stats: stat_shape(shape, axis),
            reads: vec![("the input", Some(x)), ("weight", weight), ("bias", bias)],
        })
    }
}

impl Trailing {
    /// The kernels a call on `shape` of `dtype` runs (LayerNorm when `center`).
    pub(crate) fn plan_dtype(
        &self,
        gpu: &Gpu,
        shape: &[usize],
        dtype: DType,
        center: bool,
    ) -> Result<crate::Plan> {
        let x = Tensor::shape_only_dtype(gpu, shape, dtype)?;
        self.call(gpu, &x, center)?.plan(gpu)
    }

    /// forward_add: allocates sum and y (x's dtype) and the statistics, records, waits.
    pub(crate) fn forward_add(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        residual: &Tensor,
        center: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>, Tensor)> {
        let call = self.call(gpu, x, center)?;
        let sum = Tensor::empty_dtype(gpu, x.shape(), x.dtype())?;
        let y = Tensor::empty_dtype(gpu, x.shape(), x.dtype())?;
        let mean = center
            .then(|| Tensor::empty(gpu, &call.stats))
            .transpose()?;
        let rstd = Tensor::empty(gpu, &call.stats)?;
        let mut enc = gpu.encoder();
        call.encode_add(gpu, &mut enc, x, residual, &sum, &y, mean.as_ref(), &rstd)?;
        gpu.submit_wait(enc)?;
        Ok((sum, y, mean, rstd))
    }

    /// The backward call on x: centred (LayerNorm) or not (RMSNorm).
    fn backward_call<'a>(&'a self, gpu: &Gpu, x: &'a Tensor, center: bool) -> Result<BwdCall<'a>> {
        let Op::Rows(r) = self.call(gpu, x, center)?.op else {
            unreachable!("a trailing-dims norm is a rows call")
        };
        Ok(BwdCall {
            op: RowsBwd {
                rows: r.rows,
                d: r.d,
                center,
                weight: self.weight.as_ref(),
                channel: None,
                storage: r.storage,
            }
            .into(),
            bias: self.bias.as_ref(),
            what: "row",
            spread: "rstd",
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        dy: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
        center: bool,
        g: &Gradients,
    ) -> Result<()> {
        self.backward_call(gpu, x, center)?
            .encode(gpu, encoder, x, dy, mean, rstd, g)
    }

    pub(crate) fn backward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        dy: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
        center: bool,
    ) -> Result<Gradients> {
        self.backward_call(gpu, x, center)?
            .run(gpu, x, dy, mean, rstd)
    }
}

impl LayerNorm {
    /// Normalizes over the trailing dims equal to `normalized_shape` (PyTorch).
    ///
    /// ```
    /// let ln = fused_norm::LayerNorm::new(&[16, 16]); // the last two dims
    /// ```
    pub fn new(normalized_shape: &[usize]) -> LayerNorm {
        LayerNorm::with(Normalized::Shape(normalized_shape.to_vec()))
    }

    /// ONNX `LayerNormalization(axis)`: normalizes over dims `axis..`; negative counts from
    /// the end (-1, the default in ONNX, is the last dim).
    ///
    /// ```
    /// let ln = fused_norm::LayerNorm::from_axis(1); // [N, C, H, W] -> over C, H, W
    /// ```
    pub fn from_axis(axis: isize) -> LayerNorm {
        LayerNorm::with(Normalized::Axis(axis))
    }

    fn with(normalized: Normalized) -> LayerNorm {
        LayerNorm {
            t: Trailing::new(normalized, 1e-5),
        }
    }

    /// Forces a kernel variant instead of the policy's choice.
    ///
    /// ```
    /// use fused_norm::{LayerNorm, LnVariant};
    /// let ln = LayerNorm::new(&[4096]).variant(LnVariant::SplitRow);
    /// ```
    pub fn variant(mut self, variant: LnVariant) -> LayerNorm {
        self.t.variant = variant;
        self
    }

    fn call<'a>(&'a self, gpu: &Gpu, x: &'a Tensor) -> Result<Call<'a>> {
        self.t.call(gpu, x, true)
    }

    /// The kernels a call on `x_shape` runs on `gpu`, and why.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let plan = fused_norm::LayerNorm::new(&[768]).plan(&gpu, &[4096, 768])?;
    /// println!("{plan}");
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn plan(&self, gpu: &Gpu, x_shape: &[usize]) -> Result<LayerNormPlan> {
        self.plan_dtype(gpu, x_shape, DType::F32)
    }

    /// [`LayerNorm::plan`] for x of `dtype`: `plan.storage` says how the kernels store it
    /// (native f16, or packed in `u32` words).
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let plan = fused_norm::LayerNorm::new(&[768]).plan_dtype(&gpu, &[8, 768], fused_norm::DType::BF16)?;
    /// assert_eq!(plan.storage, fused_norm::Storage::Bf16Packed);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn plan_dtype(&self, gpu: &Gpu, x_shape: &[usize], dtype: DType) -> Result<LayerNormPlan> {
        self.t.plan_dtype(gpu, x_shape, dtype, true)
    }

    /// The residual add of a pre-norm transformer block, fused: `sum = x + residual`, then
    /// LayerNorm of `sum`, in one pass that reads x and the residual once and writes the sum and
    /// y (rows whose length is a multiple of 4; others run an add pass, then the norm). The sum
    /// is rounded to the storage type before it is normalized, exactly as an unfused add would
    /// store it, so `y` equals `forward(sum)` bit for bit. x and the residual have one shape and
    /// dtype; sum and y have x's dtype, mean and rstd are f32.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::from_slice(&gpu, &[half::f16::ONE; 8], &[2, 4])?;
    /// let h = Tensor::from_slice(&gpu, &[half::f16::ZERO; 8], &[2, 4])?;
    /// let out = LayerNorm::new(&[4]).forward_add(&gpu, &x, &h)?;
    /// let (sum, y, mean, rstd) = (out.sum, out.y, out.mean, out.rstd);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn forward_add(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        residual: &Tensor,
    ) -> Result<LayerNormAddOutput> {
        let (sum, y, mean, rstd) = self.t.forward_add(gpu, x, residual, true)?;
        let mean = mean.ok_or_else(|| crate::NormError::Wgpu("internal: no mean".into()))?;
        Ok(LayerNormAddOutput { sum, y, mean, rstd })
    }

    /// [`LayerNorm::forward_add`] recorded into the caller's encoder with caller-provided
    /// outputs. `out.sum` may be the residual itself: the sum then overwrites it in place (as
    /// vLLM's `fused_add_rms_norm` does); no other output may share a buffer with an input.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?;
    /// let residual = Tensor::from_slice(&gpu, &[0.5; 8], &[2, 4])?;
    /// let out = LayerNormAddOutput {
    ///     sum: residual.clone(), // in place: the residual stream becomes x + residual
    ///     y: Tensor::empty(&gpu, &[2, 4])?,
    ///     mean: Tensor::empty(&gpu, &[2, 1])?,
    ///     rstd: Tensor::empty(&gpu, &[2, 1])?,
    /// };
    /// let mut enc = gpu.encoder();
    /// LayerNorm::new(&[4]).encode_add(&gpu, &mut enc, &x, &residual, &out)?;
    /// gpu.submit_wait(enc)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn encode_add(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        residual: &Tensor,
        out: &LayerNormAddOutput,
    ) -> Result<()> {
        let (s, y, m, r) = (&out.sum, &out.y, Some(&out.mean), &out.rstd);
        self.call(gpu, x)?
            .encode_add(gpu, encoder, x, residual, s, y, m, r)
    }

    /// Runs LayerNorm on `x`, allocating the outputs. Blocks until the device is done.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let x = fused_norm::Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?;
    /// let out = fused_norm::LayerNorm::new(&[4]).forward(&gpu, &x)?;
    /// let y = out.y.to_vec(&gpu)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<LayerNormOutput> {
        self.call(gpu, x)?.forward_stats(gpu, x)
    }

    /// Records the LayerNorm into the caller's encoder, writing into caller-provided outputs
    /// (`out.y` shaped like x, `out.mean` and `out.rstd` with one value per row). No submit,
    /// no readback, no wait: a renderer can put it in its own frame.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?;
    /// let out = LayerNormOutput {
    ///     y: Tensor::empty(&gpu, &[2, 4])?,
    ///     mean: Tensor::empty(&gpu, &[2, 1])?,
    ///     rstd: Tensor::empty(&gpu, &[2, 1])?,
    /// };
    /// let mut enc = gpu.device().create_command_encoder(&Default::default());
    /// LayerNorm::new(&[4]).encode(&gpu, &mut enc, &x, &out)?;
    /// gpu.queue().submit([enc.finish()]);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        out: &LayerNormOutput,
    ) -> Result<()> {
        let (y, m, r) = (&out.y, Some(&out.mean), &out.rstd);
        self.call(gpu, x)?.encode(gpu, encoder, x, y, m, r)
    }

    /// The backward from the forward's saved `mean` and `rstd` (PyTorch's
    /// `native_layer_norm_backward`): dx, and dweight / dbias when the norm has them. dx flows
    /// through the statistics; the column sums are two-stage and bit-identical run to run.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
    /// # let dy = Tensor::from_slice(&gpu, &[1.0, 0.0, 0.0, 1.0], &[2, 2])?;
    /// let ln = LayerNorm::new(&[2]).weight(Tensor::from_slice(&gpu, &[1.0, 2.0], &[2])?);
    /// let out = ln.forward(&gpu, &x)?;
    /// let g = ln.backward(&gpu, &x, &dy, &out.mean, &out.rstd)?;
    /// assert!(g.dweight.is_some() && g.dbias.is_none());
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn backward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        dy: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
    ) -> Result<Gradients> {
        self.t.backward(gpu, x, dy, Some(mean), rstd, true)
    }

    /// [`LayerNorm::backward`] recorded into the caller's encoder, writing caller-provided
    /// gradients (`g.dx` like x; `g.dweight` / `g.dbias` exactly when the norm has them).
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0, 2.0, 3.0, 4.0], &[2, 2])?;
    /// # let dy = x.clone();
    /// let ln = LayerNorm::new(&[2]);
    /// let out = ln.forward(&gpu, &x)?;
    /// let g = Gradients { dx: Tensor::empty(&gpu, &[2, 2])?, dweight: None, dbias: None };
    /// let mut enc = gpu.encoder();
    /// ln.encode_backward(&gpu, &mut enc, &x, &dy, &out.mean, &out.rstd, &g)?;
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
        g: &Gradients,
    ) -> Result<()> {
        self.t
            .encode_backward(gpu, encoder, x, dy, Some(mean), rstd, true, g)
    }
}
