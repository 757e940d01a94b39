//! BatchNorm: the channels family with one statistic per channel over (N, spatial), running
//! statistics, and the train/eval difference.

use crate::context::Gpu;
use crate::error::{NormError, Result};
use crate::norms::{BatchNormPlan, BwdCall, BwdOp, Gradients, Layout};
use crate::ops::affine::{check_affine, check_eps, check_outputs, check_u32_elems, ncs};
use crate::ops::channels::{Channels, Running, Source};
use crate::runtime::pipeline::Storage;
use crate::tensor::Tensor;

mod sync;

/// Outputs of [`BatchNorm::forward_train`].
#[derive(Clone, Debug)]
pub struct BatchNormOutput {
    /// Normalized tensor, same shape as x.
    pub y: Tensor,
    /// Batch mean per channel, shape `[C]`.
    pub mean: Tensor,
    /// `1 / sqrt(biased batch variance + eps)` per channel, shape `[C]` (PyTorch's save_invstd).
    pub invstd: Tensor,
}

/// BatchNorm over the channel dim, like `torch.nn.BatchNorm1d/2d/3d` and ONNX
/// `BatchNormalization`.
///
/// Training normalizes with the batch mean and biased variance and updates the running
/// statistics on the GPU: `running = (1 - momentum) * running + momentum * batch`, with the
/// unbiased batch variance for `running_var` (PyTorch). ONNX and Burn feed the biased variance
/// instead (`.running_var_unbiased(false)`), and ONNX's momentum `m` is PyTorch's `1 - m`:
/// ONNX `momentum = 0.9` is `.momentum(Some(0.1))` here.
///
/// ```no_run
/// use fused_norm::{BatchNorm, Gpu, Layout, Tensor};
/// let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &vec![0.5; 8 * 3 * 4 * 4], &[8, 3, 4, 4])?;
/// let mut bn = BatchNorm::new(&gpu, 3)?.eps(1e-5).momentum(Some(0.1));
/// let out = bn.forward_train(&gpu, &x, Layout::ChannelsFirst)?; // batch statistics
/// let y = bn.forward_eval(&gpu, &x, Layout::ChannelsFirst)?;    // running statistics
/// let running_mean = bn.running_mean().to_vec(&gpu)?;
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug)]
pub struct BatchNorm {
    channels: usize,
    eps: f32,
    momentum: Option<f32>,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running_mean: Tensor,
    running_var: Tensor,
    // Caller-given starting statistics, copied into the module's own buffers on the next call
    // so the caller's tensors are never written.
    pending_init: Option<(Tensor, Tensor)>,
    track_running_stats: bool,
    unbiased: bool,
    num_batches_tracked: u64,
}

impl BatchNorm {
    /// A BatchNorm over `channels` channels with running_mean = 0, running_var = 1 on `gpu`,
    /// eps 1e-5, momentum 0.1, no weight or bias, tracking running statistics.
    ///
    /// ```no_run
    /// let gpu = fused_norm::Gpu::new()?;
    /// let bn = fused_norm::BatchNorm::new(&gpu, 64)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn new(gpu: &Gpu, channels: usize) -> Result<BatchNorm> {
        if channels == 0 {
            return Err(NormError::Shape(
                "BatchNorm needs at least one channel".into(),
            ));
        }
        Ok(BatchNorm {
            channels,
            eps: 1e-5,
            momentum: Some(0.1),
            weight: None,
            bias: None,
            running_mean: Tensor::from_slice(gpu, &vec![0.0; channels], &[channels])?,
            running_var: Tensor::from_slice(gpu, &vec![1.0; channels], &[channels])?,
            pending_init: None,
            track_running_stats: true,
            unbiased: true,
            num_batches_tracked: 0,
        })
    }

    /// Sets eps (default 1e-5); must be finite and >= 0.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let bn = fused_norm::BatchNorm::new(&gpu, 8)?.eps(1e-3);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn eps(mut self, eps: f32) -> BatchNorm {
        self.eps = eps;
        self
    }

    /// PyTorch momentum in [0, 1] (default `Some(0.1)`); `None` is the cumulative moving
    /// average over the batches seen so far.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let bn = fused_norm::BatchNorm::new(&gpu, 8)?.momentum(None);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn momentum(mut self, momentum: Option<f32>) -> BatchNorm {
        self.momentum = momentum;
        self
    }

    /// Per-channel scale (gamma), `C` values.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let w = fused_norm::Tensor::from_slice(&gpu, &[1.0; 8], &[8])?;
    /// let bn = fused_norm::BatchNorm::new(&gpu, 8)?.weight(w);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn weight(mut self, weight: Tensor) -> BatchNorm {
        self.weight = Some(weight);
        self
    }

    /// Per-channel shift (beta), `C` values.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let b = fused_norm::Tensor::from_slice(&gpu, &[0.0; 8], &[8])?;
    /// let bn = fused_norm::BatchNorm::new(&gpu, 8)?.bias(b);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn bias(mut self, bias: Tensor) -> BatchNorm {
        self.bias = Some(bias);
        self
    }

    /// Starts from the given running statistics (`C` values each). They are copied on the next
    /// forward call; the tensors passed here are never modified.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let m = fused_norm::Tensor::from_slice(&gpu, &[0.0; 8], &[8])?;
    /// let v = fused_norm::Tensor::from_slice(&gpu, &[1.0; 8], &[8])?;
    /// let bn = fused_norm::BatchNorm::new(&gpu, 8)?.running_stats(m, v);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn running_stats(mut self, mean: Tensor, var: Tensor) -> BatchNorm {
        self.pending_init = Some((mean, var));
        self
    }

    /// `true` (default, PyTorch): running_var takes the unbiased batch variance. `false`:
    /// the biased one (ONNX, Burn).
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// // ONNX BatchNormalization(momentum = 0.9), training mode:
    /// let bn = fused_norm::BatchNorm::new(&gpu, 8)?.momentum(Some(1.0 - 0.9)).running_var_unbiased(false);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn running_var_unbiased(mut self, unbiased: bool) -> BatchNorm {
        self.unbiased = unbiased;
        self
    }

    /// `false` is PyTorch's `track_running_stats=False`: batch statistics in both modes and
    /// no running statistics updates.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let bn = fused_norm::BatchNorm::new(&gpu, 8)?.track_running_stats(false);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn track_running_stats(mut self, track: bool) -> BatchNorm {
        self.track_running_stats = track;
        self
    }

    /// The running mean (`[C]`), updated on the GPU by [`BatchNorm::forward_train`].
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let bn = fused_norm::BatchNorm::new(&gpu, 8)?;
    /// let m = bn.running_mean().to_vec(&gpu)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn running_mean(&self) -> &Tensor {
        self.pending_init
            .as_ref()
            .map_or(&self.running_mean, |p| &p.0)
    }

    /// The running variance (`[C]`).
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let bn = fused_norm::BatchNorm::new(&gpu, 8)?;
    /// let v = bn.running_var().to_vec(&gpu)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn running_var(&self) -> &Tensor {
        self.pending_init
            .as_ref()
            .map_or(&self.running_var, |p| &p.1)
    }

    /// Training batches seen (PyTorch's `num_batches_tracked`).
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let bn = fused_norm::BatchNorm::new(&gpu, 8)?;
    /// assert_eq!(bn.num_batches_tracked(), 0);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn num_batches_tracked(&self) -> u64 {
        self.num_batches_tracked
    }

    /// The channels-family call on `shape` in `layout`, checked like every BatchNorm call.
    /// Dtypes: x f32, f16 or bf16, y like x; weight and bias f32 or x's dtype; the running
    /// statistics and the batch mean / invstd (`stats`) f32.
    fn check_dtypes(&self, x: &Tensor, y: &Tensor, stats: &[&Tensor]) -> Result<()> {
        let (w, b) = (self.weight.as_ref(), self.bias.as_ref());
        crate::ops::affine::check_dtypes(x, w, b, true, "BatchNorm")?;
        y.check_dtype("output y", x.dtype())?;
        let f32s = [Some(&self.running_mean), Some(&self.running_var)];
        for t in f32s.into_iter().flatten().chain(stats.iter().copied()) {
            t.check_dtype("a BatchNorm statistic", crate::DType::F32)?;
        }
        Ok(())
    }

    fn op(&self, gpu: &Gpu, shape: &[usize], layout: Layout) -> Result<Channels<'_>> {
        check_eps(self.eps)?;
        if let Some(m) = self.momentum {
            if !(0.0..=1.0).contains(&m) {
                return Err(NormError::InvalidArgument(format!(
                    "momentum must be in [0, 1] (or None), got {m}"
                )));
            }
        }
        let (n, c, s) = ncs(shape, layout, "BatchNorm")?;
        if c != self.channels {
            return Err(NormError::Shape(format!(
                "x {shape:?} has {c} channels in layout {layout:?}, the BatchNorm has {}",
                self.channels
            )));
        }
        check_affine(gpu, self.weight.as_ref(), self.bias.as_ref(), c, "channel")?;
        let mut running = vec![Some(&self.running_mean), Some(&self.running_var)];
        if let Some((m, v)) = &self.pending_init {
            running.extend([Some(m), Some(v)]);
        }
        for pair in running.chunks(2) {
            check_affine(
                gpu,
                pair[0],
                pair[1],
                c,
                "channel of the running statistics",
            )?;
        }
        check_u32_elems(n * c * s)?;
        // Channels-last (and [N, C]) tensors are rows of channels: [rows, C, 1].
        let (runs, s) = match layout {
            Layout::ChannelsFirst if s > 1 => (n, s),
            _ => (n * s, 1),
        };
        Ok(Channels {
            n: runs as u64,
            c: c as u64,
            s: s as u64,
            spr: runs as u64,
            groups: c as u64,
            cpg: 1,
            eps: self.eps,
            weight: self.weight.as_ref(),
            bias: self.bias.as_ref(),
            storage: Storage::F32,
        })
    }

    /// Training forward: normalizes with batch statistics and (unless tracking is off)
    /// updates the running statistics on the GPU. Blocks until done. On error nothing changes.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &vec![0.5; 64], &[16, 4])?;
    /// let mut bn = BatchNorm::new(&gpu, 4)?;
    /// let out = bn.forward_train(&gpu, &x, Layout::ChannelsLast)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn forward_train(
        &mut self,
        gpu: &Gpu,
        x: &Tensor,
        layout: Layout,
    ) -> Result<BatchNormOutput> {
        let c = self.channels;
        let out = BatchNormOutput {
            y: Tensor::empty_dtype(gpu, x.shape(), x.dtype())?,
            mean: Tensor::empty(gpu, &[c])?,
            invstd: Tensor::empty(gpu, &[c])?,
        };
        let mut enc = gpu.encoder();
        let done = self.encode_train(gpu, &mut enc, x, layout, &out)?;
        gpu.submit_wait(enc)?;
        done.commit(self);
        Ok(out)
    }

    /// Inference forward: normalizes with the running statistics (batch statistics when
    /// tracking is off), folded into one scale and shift per channel. Blocks until done.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &vec![0.5; 64], &[16, 4])?;
    /// let bn = BatchNorm::new(&gpu, 4)?;
    /// let y = bn.forward_eval(&gpu, &x, Layout::ChannelsLast)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn forward_eval(&self, gpu: &Gpu, x: &Tensor, layout: Layout) -> Result<Tensor> {
        let y = Tensor::empty_dtype(gpu, x.shape(), x.dtype())?;
        let mut enc = gpu.encoder();
        self.encode_eval(gpu, &mut enc, x, layout, &y)?;
        gpu.submit_wait(enc)?;
        Ok(y)
    }

    /// Records a training forward into the caller's encoder, writing caller-provided outputs.
    /// The returned [`TrainCommit`] must be committed once the work is submitted, to advance
    /// the batch counter (and adopt pending running statistics).
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &vec![0.5; 64], &[16, 4])?;
    /// let mut bn = BatchNorm::new(&gpu, 4)?;
    /// let out = BatchNormOutput {
    ///     y: Tensor::empty(&gpu, &[16, 4])?,
    ///     mean: Tensor::empty(&gpu, &[4])?,
    ///     invstd: Tensor::empty(&gpu, &[4])?,
    /// };
    /// let mut enc = gpu.device().create_command_encoder(&Default::default());
    /// let done = bn.encode_train(&gpu, &mut enc, &x, Layout::ChannelsLast, &out)?;
    /// gpu.queue().submit([enc.finish()]);
    /// done.commit(&mut bn);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn encode_train(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        layout: Layout,
        out: &BatchNormOutput,
    ) -> Result<TrainCommit> {
        x.check_device(gpu, "x")?;
        self.check_dtypes(x, &out.y, &[&out.mean, &out.invstd])?;
        let mut op = self.op(gpu, x.shape(), layout)?;
        op.storage = Storage::of(gpu, x.dtype());
        Self::check_batch(&op, x)?;
        let c = self.channels;
        let outputs = [
            ("y", &out.y, x.numel()),
            ("mean", &out.mean, c),
            ("invstd", &out.invstd, c),
        ];
        check_outputs(gpu, &self.reads(x), &outputs)?;
        let update = self.track_running_stats;
        let factor = self.factor();
        let _turn = gpu.turn();
        self.adopt_pending(gpu, encoder)?;
        let source = Source::Batch {
            mean: &out.mean,
            invstd: &out.invstd,
            update: update.then_some(self.running(factor)),
        };
        op.encode(gpu, encoder, x, &out.y, source)?;
        Ok(TrainCommit { counted: update })
    }

    /// What a call reads, which no output may share a buffer with.
    fn reads<'a>(&'a self, x: &'a Tensor) -> [(&'static str, Option<&'a Tensor>); 7] {
        let pending = self.pending_init.as_ref();
        [
            ("the input", Some(x)),
            ("weight", self.weight.as_ref()),
            ("bias", self.bias.as_ref()),
            ("running_mean", Some(&self.running_mean)),
            ("running_var", Some(&self.running_var)),
            ("the given running mean", pending.map(|p| &p.0)),
            ("the given running var", pending.map(|p| &p.1)),
        ]
    }

    /// The running statistics, updated with weight `factor`.
    fn running(&self, factor: f32) -> Running<'_> {
        Running {
            mean: &self.running_mean,
            var: &self.running_var,
            factor,
            unbiased: self.unbiased,
        }
    }

    /// The weight of this batch in the running statistics: the momentum, or 1 / batches seen.
    fn factor(&self) -> f32 {
        match self.momentum {
            Some(m) => m,
            None => 1.0 / (self.num_batches_tracked + 1) as f32,
        }
    }

    /// Batch statistics need two values per channel (PyTorch refuses one too).
    fn check_batch(op: &Channels<'_>, x: &Tensor) -> Result<()> {
        if op.n * op.s < 2 {
            return Err(NormError::Shape(format!(
                "expected more than 1 value per channel when using batch statistics, got x {:?}",
                x.shape()
            )));
        }
        Ok(())
    }

    /// Copies caller-given starting statistics into the module's own buffers, first in the
    /// encoder, so the caller's tensors are never written.
    fn adopt_pending(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        if let Some((m, v)) = &self.pending_init {
            let bytes = (self.channels * 4) as u64;
            let (rm, rv) = (self.running_mean.buffer(), self.running_var.buffer());
            gpu.scoped(|_| {
                encoder.copy_buffer_to_buffer(m.buffer(), 0, rm, 0, bytes);
                encoder.copy_buffer_to_buffer(v.buffer(), 0, rv, 0, bytes);
            })?;
        }
        Ok(())
    }

    /// Records an inference forward into the caller's encoder, writing `y` (shaped like x).
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &vec![0.5; 64], &[16, 4])?;
    /// let bn = BatchNorm::new(&gpu, 4)?;
    /// let y = Tensor::empty(&gpu, &[16, 4])?;
    /// let mut enc = gpu.device().create_command_encoder(&Default::default());
    /// bn.encode_eval(&gpu, &mut enc, &x, Layout::ChannelsLast, &y)?;
    /// gpu.queue().submit([enc.finish()]);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn encode_eval(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        layout: Layout,
        y: &Tensor,
    ) -> Result<()> {
        x.check_device(gpu, "x")?;
        self.check_dtypes(x, y, &[])?;
        let mut op = self.op(gpu, x.shape(), layout)?;
        op.storage = Storage::of(gpu, x.dtype());
        check_outputs(gpu, &self.reads(x), &[("y", y, x.numel())])?;
        let _turn = gpu.turn();
        if self.track_running_stats {
            let (rm, rv) = match &self.pending_init {
                Some((m, v)) => (m, v),
                None => (&self.running_mean, &self.running_var),
            };
            op.encode(gpu, encoder, x, y, Source::Running(rm, rv))
        } else {
            Self::check_batch(&op, x)?;
            let c = self.channels;
            let (mean, invstd) = (Tensor::empty(gpu, &[c])?, Tensor::empty(gpu, &[c])?);
            let source = Source::Batch {
                mean: &mean,
                invstd: &invstd,
                update: None,
            };
            op.encode(gpu, encoder, x, y, source)
        }
    }

    /// The backward call on x: through the batch statistics, or (`eval`) the running ones.
    pub(crate) fn backward_call<'a>(
        &'a self,
        gpu: &Gpu,
        x: &'a Tensor,
        layout: Layout,
        eval: bool,
    ) -> Result<BwdCall<'a>> {
        x.check_device(gpu, "x")?;
        let mut op = self.op(gpu, x.shape(), layout)?;
        op.storage = Storage::of(gpu, x.dtype());
        Ok(BwdCall {
            op: BwdOp::Channels { op, eval },
            bias: self.bias.as_ref(),
            what: "channel",
            spread: if eval { "running_var" } else { "invstd" },
        })
    }

    /// The training backward (PyTorch's `native_batch_norm_backward` with `train=True`): dx
    /// through the batch statistics `mean` and `invstd` that [`BatchNorm::forward_train`]
    /// returned (biased variance), dweight and dbias per channel when the norm has them, all
    /// sums in a fixed order (bit-identical reruns). The running statistics are not touched.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[0.5, 1.0, 2.0, 4.0], &[2, 2])?;
    /// # let dy = x.clone();
    /// let mut bn = BatchNorm::new(&gpu, 2)?;
    /// let t = bn.forward_train(&gpu, &x, Layout::ChannelsFirst)?;
    /// let g = bn.backward(&gpu, &x, &dy, &t.mean, &t.invstd, Layout::ChannelsFirst)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn backward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        dy: &Tensor,
        mean: &Tensor,
        invstd: &Tensor,
        layout: Layout,
    ) -> Result<Gradients> {
        self.backward_call(gpu, x, layout, false)?
            .run(gpu, x, dy, Some(mean), invstd)
    }

    /// [`BatchNorm::backward`] recorded into the caller's encoder, writing caller-provided
    /// gradients (`g.dx` like x; `g.dweight` / `g.dbias` exactly when the norm has them).
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[0.5, 1.0, 2.0, 4.0], &[2, 2])?;
    /// # let dy = x.clone();
    /// let mut bn = BatchNorm::new(&gpu, 2)?;
    /// let t = bn.forward_train(&gpu, &x, Layout::ChannelsLast)?;
    /// let g = Gradients { dx: Tensor::empty(&gpu, &[2, 2])?, dweight: None, dbias: None };
    /// let mut enc = gpu.encoder();
    /// bn.encode_backward(&gpu, &mut enc, &x, &dy, &t.mean, &t.invstd, Layout::ChannelsLast, &g)?;
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
        invstd: &Tensor,
        layout: Layout,
        g: &Gradients,
    ) -> Result<()> {
        self.backward_call(gpu, x, layout, false)?.encode(
            gpu,
            encoder,
            x,
            dy,
            Some(mean),
            invstd,
            g,
        )
    }

    /// The inference backward (`native_batch_norm_backward` with `train=False`): the running
    /// statistics are constants, so dx = dy * weight / sqrt(running_var + eps); dweight =
    /// sum(dy * xhat) and dbias = sum(dy) with xhat from the running statistics. With
    /// `track_running_stats(false)` inference normalizes with batch statistics, so this is
    /// the training backward through them (computed here first, as the forward does).
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[0.5, 1.0, 2.0, 4.0], &[2, 2])?;
    /// # let dy = x.clone();
    /// let bn = BatchNorm::new(&gpu, 2)?;
    /// let g = bn.backward_eval(&gpu, &x, &dy, Layout::ChannelsFirst)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn backward_eval(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        dy: &Tensor,
        layout: Layout,
    ) -> Result<Gradients> {
        let g = Gradients::like(gpu, x, self.weight.as_ref(), self.bias.as_ref())?;
        let mut enc = gpu.encoder();
        self.encode_backward_eval(gpu, &mut enc, x, dy, layout, &g)?;
        gpu.submit_wait(enc)?;
        Ok(g)
    }

    /// [`BatchNorm::backward_eval`] recorded into the caller's encoder, writing caller-provided
    /// gradients.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[0.5, 1.0, 2.0, 4.0], &[2, 2])?;
    /// # let dy = x.clone();
    /// let bn = BatchNorm::new(&gpu, 2)?;
    /// let g = Gradients { dx: Tensor::empty(&gpu, &[2, 2])?, dweight: None, dbias: None };
    /// let mut enc = gpu.encoder();
    /// bn.encode_backward_eval(&gpu, &mut enc, &x, &dy, Layout::ChannelsFirst, &g)?;
    /// gpu.submit_wait(enc)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn encode_backward_eval(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        dy: &Tensor,
        layout: Layout,
        g: &Gradients,
    ) -> Result<()> {
        let call = self.backward_call(gpu, x, layout, self.track_running_stats)?;
        let _turn = gpu.turn();
        if self.track_running_stats {
            let (rm, rv) = match &self.pending_init {
                Some((m, v)) => (m, v),
                None => (&self.running_mean, &self.running_var),
            };
            return call.encode(gpu, encoder, x, dy, Some(rm), rv, g);
        }
        // Batch statistics, as encode_eval normalizes with (its y is not needed here).
        let BwdOp::Channels { op, .. } = &call.op else {
            unreachable!("BatchNorm is a channels call")
        };
        Self::check_batch(op, x)?;
        let c = self.channels;
        let (mean, invstd) = (Tensor::empty(gpu, &[c])?, Tensor::empty(gpu, &[c])?);
        // Everything the backward will check, before the statistics pass is recorded.
        call.check(gpu, x, dy, Some(&mean), &invstd, g)?;
        // y is written in x's storage (and then dropped): a half y halves that scratch.
        let y = Tensor::empty_dtype(gpu, x.shape(), x.dtype())?;
        let source = Source::Batch {
            mean: &mean,
            invstd: &invstd,
            update: None,
        };
        op.encode(gpu, encoder, x, &y, source)?;
        call.encode(gpu, encoder, x, dy, Some(&mean), &invstd, g)
    }

    /// The kernels a call on `shape` in `layout` runs on `gpu` (training's, when statistics
    /// come from the batch), with their parameters.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// let bn = BatchNorm::new(&gpu, 64)?;
    /// println!("{}", bn.plan(&gpu, &[32, 64, 56, 56], Layout::ChannelsFirst)?);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn plan(&self, gpu: &Gpu, shape: &[usize], layout: Layout) -> Result<BatchNormPlan> {
        self.plan_dtype(gpu, shape, layout, crate::DType::F32)
    }

    /// [`BatchNorm::plan`] for x of `dtype` (`plan.storage`: native f16 or packed words).
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// let bn = BatchNorm::new(&gpu, 3)?;
    /// let plan = bn.plan_dtype(&gpu, &[8, 3, 5, 5], Layout::ChannelsFirst, DType::F16)?;
    /// assert_eq!(plan.channels.unwrap().apply_name(), "pair"); // 25-value runs: whole words
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn plan_dtype(
        &self,
        gpu: &Gpu,
        shape: &[usize],
        layout: Layout,
        dtype: crate::DType,
    ) -> Result<BatchNormPlan> {
        let mut op = self.op(gpu, shape, layout)?;
        op.storage = Storage::of(gpu, dtype);
        op.plan(gpu, true)
    }
}

/// Returned by [`BatchNorm::encode_train`]: apply it after submitting, to count the batch.
#[must_use = "commit after submitting, or the batch counter (momentum None) falls behind"]
#[derive(Debug)]
pub struct TrainCommit {
    counted: bool,
}

impl TrainCommit {
    /// Advances the batch counter and adopts pending running statistics.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # fn f(done: TrainCommit, bn: &mut BatchNorm) {
    /// done.commit(bn);
    /// # }
    /// ```
    pub fn commit(self, bn: &mut BatchNorm) {
        bn.pending_init = None;
        if self.counted {
            bn.num_batches_tracked += 1;
        }
    }
}
