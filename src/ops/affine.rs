//! What every norm checks the same way: eps, the affine parameters, the outputs a caller gives
//! `encode`, and the trailing-dims and [N, C, *] geometries.

use crate::context::Gpu;
use crate::error::{NormError, Result};
use crate::norms::Layout;
use crate::tensor::{word_bytes, DType, Tensor};

/// eps must be a finite number >= 0.
pub(crate) fn check_eps(eps: f32) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(NormError::InvalidArgument(format!(
            "eps must be finite and >= 0, got {eps}"
        )))
    }
}

/// Weight and bias (when given) are on `gpu` and hold `n` values, one per `what`.
pub(crate) fn check_affine(
    gpu: &Gpu,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    n: usize,
    what: &str,
) -> Result<()> {
    for (name, t) in [("weight", weight), ("bias", bias)] {
        if let Some(t) = t {
            t.check_device(gpu, name)?;
            if t.numel() != n {
                return Err(NormError::Shape(format!(
                    "{name} has {} values ({:?}), needs {n} (one per {what})",
                    t.numel(),
                    t.shape()
                )));
            }
        }
    }
    Ok(())
}

/// The dtypes a call accepts: x f32, or half (f16, bf16) where the call has half kernels
/// (`half_ok`, else `why_not` says what lacks them); weight and bias f32 or x's dtype.
pub(crate) fn check_dtypes(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    half_ok: bool,
    why_not: &str,
) -> Result<()> {
    if x.dtype().is_half() && !half_ok {
        return Err(NormError::InvalidArgument(format!(
            "x is {}: {why_not} takes f32 only for now (cast with x.cast(&gpu, DType::F32))",
            x.dtype()
        )));
    }
    for (name, t) in [("weight", weight), ("bias", bias)] {
        if let Some(t) = t {
            if t.dtype() != DType::F32 && t.dtype() != x.dtype() {
                return Err(NormError::InvalidArgument(format!(
                    "{name} is {} but x is {}: parameters are f32 or x's dtype",
                    t.dtype(),
                    x.dtype()
                )));
            }
        }
    }
    Ok(())
}

/// Each tensor holds the named dtype (outputs of a call, statistics).
pub(crate) fn check_each_dtype(tensors: &[(&str, Option<&Tensor>, DType)]) -> Result<()> {
    for &(name, t, dtype) in tensors {
        if let Some(t) = t {
            t.check_dtype(name, dtype)?;
        }
    }
    Ok(())
}

/// Outputs given to an `encode`: on `gpu`, of the right sizes, sharing no buffer with each
/// other or with a tensor the call reads (x first, then weight, bias, running statistics).
pub(crate) fn check_outputs(
    gpu: &Gpu,
    reads: &[(&str, Option<&Tensor>)],
    outputs: &[(&str, &Tensor, usize)],
) -> Result<()> {
    for (i, &(name, t, n)) in outputs.iter().enumerate() {
        t.check_device(gpu, "output")?;
        if t.numel() != n {
            return Err(NormError::Shape(format!(
                "output {name} has {} values, needs {n}",
                t.numel()
            )));
        }
        for &(other, r) in reads {
            if let Some(r) = r {
                t.check_no_alias(name, other, r)?;
            }
        }
        for &(other, o, _) in &outputs[..i] {
            t.check_no_alias(name, &format!("output {other}"), o)?;
        }
    }
    Ok(())
}

/// The dims a LayerNorm or RMSNorm normalizes: a trailing shape (PyTorch) or an axis (ONNX).
#[derive(Clone, Debug)]
pub(crate) enum Normalized {
    Shape(Vec<usize>),
    Axis(isize),
}

impl Normalized {
    /// The first normalized axis of `shape`.
    pub(crate) fn axis(&self, shape: &[usize]) -> Result<usize> {
        crate::tensor::check_shape(shape)?;
        match self {
            Normalized::Shape(ns) => {
                crate::tensor::check_shape(ns)
                    .map_err(|e| NormError::Shape(format!("normalized_shape {ns:?}: {e}")))?;
                if ns.len() > shape.len() || shape[shape.len() - ns.len()..] != ns[..] {
                    return Err(NormError::Shape(format!(
                        "normalized_shape {ns:?} does not match the trailing dims of x {shape:?}"
                    )));
                }
                Ok(shape.len() - ns.len())
            }
            Normalized::Axis(a) => {
                let r = shape.len() as isize;
                let ax = if *a < 0 { a + r } else { *a };
                if !(0..r).contains(&ax) {
                    return Err(NormError::Shape(format!(
                        "axis {a} is out of range for x of rank {r}"
                    )));
                }
                Ok(ax as usize)
            }
        }
    }
}

/// Shape of per-row statistics: `x.shape[..axis]` then ones (ONNX's Mean and InvStdDev,
/// PyTorch's `native_layer_norm`).
pub(crate) fn stat_shape(shape: &[usize], axis: usize) -> Vec<usize> {
    let mut s = shape[..axis].to_vec();
    s.extend(std::iter::repeat_n(1, shape.len() - axis));
    s
}

/// A `[N, C, *spatial]` (channels-first) or `[N, *spatial, C]` (channels-last) tensor as
/// (N, C, spatial size).
pub(crate) fn ncs(shape: &[usize], layout: Layout, what: &str) -> Result<(usize, usize, usize)> {
    crate::tensor::check_shape(shape)?;
    if shape.len() < 2 {
        return Err(NormError::Shape(format!(
            "{what} needs x of rank >= 2 ([N, C, ...] or [N, ..., C]), got {shape:?}"
        )));
    }
    let c = match layout {
        Layout::ChannelsFirst => shape[1],
        Layout::ChannelsLast => shape[shape.len() - 1],
    };
    let n = shape[0];
    Ok((n, c, shape.iter().product::<usize>() / (n * c)))
}

/// Refuses tensors whose element indices would not fit the kernels' u32 arithmetic.
pub(crate) fn check_u32_elems(numel: usize) -> Result<()> {
    if numel > u32::MAX as usize / 2 {
        return Err(NormError::TooLarge(format!(
            "{numel} values: the kernels index at most 2^31 elements"
        )));
    }
    Ok(())
}

/// Tensors whose buffers hold exactly `numel * 4` bytes (not a multiple of 16) pass through
/// padded copies, since the kernels bind whole vec4s: inputs are copied in before the kernels,
/// outputs copied back after them.
#[derive(Default)]
pub(crate) struct Staging {
    back: Vec<(Tensor, Tensor)>,
    /// Half outputs the kernels wrote in f32: (the caller's tensor, the f32 temporary).
    narrow: Vec<(Tensor, Tensor)>,
}

impl Staging {
    /// What the kernels read for `t`: itself, or a padded copy recorded into `encoder`.
    pub(crate) fn input(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        t: &Tensor,
    ) -> Result<Tensor> {
        if t.is_padded() {
            return Ok(t.clone());
        }
        Self::copyable(t, wgpu::BufferUsages::COPY_SRC, "read")?;
        let padded = Tensor::empty_dtype(gpu, t.shape(), t.dtype())?;
        let bytes = word_bytes(t.numel(), t.dtype());
        gpu.scoped(|_| encoder.copy_buffer_to_buffer(t.buffer(), 0, padded.buffer(), 0, bytes))?;
        Ok(padded)
    }

    /// A tensor the kernels read and write (the residual of an in-place add): itself, or a
    /// padded copy that [`Staging::finish`] copies back.
    pub(crate) fn in_out(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        t: &Tensor,
    ) -> Result<Tensor> {
        if t.is_padded() {
            return Ok(t.clone());
        }
        Self::copyable(t, wgpu::BufferUsages::COPY_DST, "written")?;
        let padded = self.input(gpu, encoder, t)?;
        self.back.push((t.clone(), padded.clone()));
        Ok(padded)
    }

    /// What the kernels read for a weight or bias: f32 values (a half one is widened into a
    /// temporary, exactly: the kernels' parameters are f32).
    pub(crate) fn input_f32(
        &mut self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        t: &Tensor,
    ) -> Result<Tensor> {
        if t.dtype() == DType::F32 {
            return self.input(gpu, encoder, t);
        }
        let wide = Tensor::empty(gpu, t.shape())?;
        crate::ops::elementwise::cast(gpu, encoder, t, &wide)?;
        Ok(wide)
    }

    /// Where the kernels write `t`: itself, or a padded temporary that [`Staging::finish`]
    /// copies back.
    pub(crate) fn output(&mut self, gpu: &Gpu, t: &Tensor) -> Result<Tensor> {
        if t.is_padded() {
            return Ok(t.clone());
        }
        Self::copyable(t, wgpu::BufferUsages::COPY_DST, "written")?;
        let padded = Tensor::empty_dtype(gpu, t.shape(), t.dtype())?;
        self.back.push((t.clone(), padded.clone()));
        Ok(padded)
    }

    /// Where the kernels write a parameter's gradient (f32 sums): `t` itself when it is f32,
    /// else an f32 temporary that [`Staging::finish`] rounds into `t` once (to nearest even).
    pub(crate) fn output_f32(&mut self, gpu: &Gpu, t: &Tensor) -> Result<Tensor> {
        if t.dtype() == DType::F32 {
            return self.output(gpu, t);
        }
        if !t.is_padded() {
            // The rounding cast at `finish` writes it through a padded copy: refuse now, before
            // the kernels are recorded, not then.
            Self::copyable(t, wgpu::BufferUsages::COPY_DST, "written")?;
        }
        let wide = Tensor::empty(gpu, t.shape())?;
        self.narrow.push((t.clone(), wide.clone()));
        Ok(wide)
    }

    /// Records the copies of staged outputs into the caller's tensors (after the kernels).
    pub(crate) fn finish(self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        gpu.scoped(|_| {
            for (t, padded) in &self.back {
                let bytes = word_bytes(t.numel(), t.dtype());
                encoder.copy_buffer_to_buffer(padded.buffer(), 0, t.buffer(), 0, bytes);
            }
        })?;
        for (t, wide) in &self.narrow {
            crate::ops::elementwise::cast(gpu, encoder, wide, t)?;
        }
        Ok(())
    }

    fn copyable(t: &Tensor, usage: wgpu::BufferUsages, how: &str) -> Result<()> {
        if t.buffer().usage().contains(usage) {
            return Ok(());
        }
        Err(NormError::Buffer(format!(
            "a buffer of {} bytes for {} values is {how} through a padded copy, which needs \
             {usage:?} usage; or give it a size rounded up to 16 bytes",
            t.buffer().size(),
            t.numel()
        )))
    }
}
