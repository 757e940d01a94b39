//! Host wrapper for `shaders/batch_norm.wgsl`.

use crate::error::{NormError, Result};
use crate::gpu::{record_all, units_per_binding, view, Constants, Family, Gpu, Step};
use crate::layer_norm::MAX_THREAD_ITERS;
use crate::tensor::Tensor;

/// Where the channel dim sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[N, C]`, `[N, C, L]`, `[N, C, H, W]`, `[N, C, D, H, W]` (PyTorch's default, NCHW).
    ChannelsFirst,
    /// `[N, ..., C]` (NHWC): channels contiguous.
    ChannelsLast,
}

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

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct BnParams {
    n: u32,
    c: u32,
    s: u32,
    runs: u32,
    run0: u32,
    x_off: u32,
    y_off: u32,
    nbr: u32,
    seg: u32,
    ssegs: u32,
    nbt: u32,
    grid_x: u32,
    eps: f32,
    factor: f32,
    work: u32,
    pad: u32,
}

/// A tensor viewed as `[n, c, s]` runs.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: u64,
    c: u64,
    s: u64,
}

/// Blocking of stage 1: `nbr` runs (rows) by `seg` elements of a run per block.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Blocks {
    nbr: u64,
    seg: u64,
    ssegs: u64,
    nbt: u64,
}

/// The kernels a BatchNorm call runs and their parameters (see [`BatchNorm::plan`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnPlan {
    /// Threads per workgroup.
    pub workgroup_size: u32,
    /// Threads reducing one stage-1 block (1 for channels-last: a thread per 4 channels).
    pub partial_threads: u32,
    /// Threads merging one channel's partials.
    pub finalize_threads: u32,
    /// Workgroups of the finalize dispatch: one group of `finalize_threads` per channel, packed
    /// `workgroup_size / finalize_threads` channels to a workgroup.
    pub finalize_workgroups: u32,
    /// Whether the reductions use subgroup shuffles (else workgroup memory; see
    /// [`Gpu::subgroup_note`]).
    pub subgroups: bool,
    /// Stage 1 reads rows of channels (`batch_norm_partial_cl`), else runs of one channel.
    pub channels_last: bool,
    blocks: Blocks,
    apply_mode: u32,
    chunk_runs: u64,
}

impl BnPlan {
    /// The elementwise pass's layout: "scalar", "vec4-cf" or "vec4-cl".
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// let plan = BatchNorm::new(&gpu, 64)?.plan(&gpu, &[8, 64, 7, 7], Layout::ChannelsFirst)?;
    /// assert_eq!(plan.apply_name(), "scalar"); // 7 * 7 is not a multiple of 4
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn apply_name(&self) -> &'static str {
        ["scalar", "vec4-cf", "vec4-cl"][self.apply_mode as usize]
    }
}

impl std::fmt::Display for BnPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.blocks;
        let stage1 = if self.channels_last {
            format!("partial_cl({} rows/thread)", b.nbr)
        } else {
            format!(
                "partial_cf({}x{} per {} threads)",
                b.nbr, b.seg, self.partial_threads
            )
        };
        let apply = self.apply_name();
        let lanes = if self.subgroups { "" } else { ", shared" };
        write!(
            f,
            "{stage1}, {} blocks/channel, finalize {} threads/channel, apply {apply}, wg={}{lanes}",
            b.nbt, self.finalize_threads, self.workgroup_size
        )
    }
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

    fn check(&self, gpu: &Gpu, x: &Tensor, layout: Layout) -> Result<Dims> {
        x.check_device(gpu, "x")?;
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(NormError::InvalidArgument(format!(
                "eps must be finite and >= 0, got {}",
                self.eps
            )));
        }
        if let Some(m) = self.momentum {
            if !(0.0..=1.0).contains(&m) {
                return Err(NormError::InvalidArgument(format!(
                    "momentum must be in [0, 1] (or None), got {m}"
                )));
            }
        }
        let shape = x.shape();
        if shape.len() < 2 {
            return Err(NormError::Shape(format!(
                "BatchNorm needs x of rank >= 2 ([N, C, ...] or [N, ..., C]), got {shape:?}"
            )));
        }
        let (c, dims) = match layout {
            Layout::ChannelsFirst => {
                let s: usize = shape[2..].iter().product();
                (
                    shape[1],
                    Dims {
                        n: shape[0] as u64,
                        c: shape[1] as u64,
                        s: s as u64,
                    },
                )
            }
            Layout::ChannelsLast => {
                let c = shape[shape.len() - 1];
                let n = x.numel() / c;
                (
                    c,
                    Dims {
                        n: n as u64,
                        c: c as u64,
                        s: 1,
                    },
                )
            }
        };
        if c != self.channels {
            return Err(NormError::Shape(format!(
                "x {shape:?} has {c} channels in layout {layout:?}, the BatchNorm has {}",
                self.channels
            )));
        }
        let mut named = vec![
            ("weight", self.weight.as_ref()),
            ("bias", self.bias.as_ref()),
            ("running_mean", Some(&self.running_mean)),
            ("running_var", Some(&self.running_var)),
        ];
        if let Some((m, v)) = &self.pending_init {
            named.push(("running_stats mean", Some(m)));
            named.push(("running_stats var", Some(v)));
        }
        for (name, t) in named {
            if let Some(t) = t {
                t.check_device(gpu, name)?;
                if t.numel() != c {
                    return Err(NormError::Shape(format!(
                        "{name} has {} values, the BatchNorm has {c} channels",
                        t.numel()
                    )));
                }
            }
        }
        if x.numel() > u32::MAX as usize / 2 {
            return Err(NormError::TooLarge(format!("{} values", x.numel())));
        }
        Ok(dims)
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
            y: Tensor::empty(gpu, x.shape())?,
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
        let y = Tensor::empty(gpu, x.shape())?;
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
        let dims = self.check(gpu, x, layout)?;
        if dims.n * dims.s < 2 {
            return Err(NormError::Shape(format!(
                "expected more than 1 value per channel when training, got x {:?}",
                x.shape()
            )));
        }
        for (name, t, n) in [
            ("y", &out.y, x.numel()),
            ("mean", &out.mean, self.channels),
            ("invstd", &out.invstd, self.channels),
        ] {
            t.check_device(gpu, name)?;
            t.check_no_alias(name, x)?;
            if t.numel() != n {
                return Err(NormError::Shape(format!(
                    "output {name} has {} values, needs {n}",
                    t.numel()
                )));
            }
        }
        let update = self.track_running_stats;
        let factor = match self.momentum {
            Some(m) => m,
            None => 1.0 / (self.num_batches_tracked + 1) as f32,
        };
        let stats = Some((&out.mean, &out.invstd, update, factor));
        self.encode(gpu, encoder, x, dims, &out.y, stats)?;
        Ok(TrainCommit { counted: update })
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
        let dims = self.check(gpu, x, layout)?;
        y.check_device(gpu, "y")?;
        y.check_no_alias("y", x)?;
        if y.numel() != x.numel() {
            return Err(NormError::Shape(format!(
                "output y has {} values, needs {}",
                y.numel(),
                x.numel()
            )));
        }
        if self.track_running_stats {
            self.encode(gpu, encoder, x, dims, y, None)
        } else {
            if dims.n * dims.s < 2 {
                return Err(NormError::Shape(
                    "expected more than 1 value per channel (batch statistics)".into(),
                ));
            }
            let c = self.channels;
            let (m, v) = (Tensor::empty(gpu, &[c])?, Tensor::empty(gpu, &[c])?);
            self.encode(gpu, encoder, x, dims, y, Some((&m, &v, false, 0.0)))
        }
    }

    /// The kernels a call on `shape` in `layout` runs on `gpu`, with their parameters.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// let bn = BatchNorm::new(&gpu, 64)?;
    /// println!("{}", bn.plan(&gpu, &[32, 64, 56, 56], Layout::ChannelsFirst)?);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn plan(&self, gpu: &Gpu, shape: &[usize], layout: Layout) -> Result<BnPlan> {
        let x = Tensor::shape_only(gpu, shape)?;
        Self::plan_dims(gpu, self.check(gpu, &x, layout)?)
    }

    fn plan_dims(gpu: &Gpu, d: Dims) -> Result<BnPlan> {
        let caps = gpu.capabilities();
        let cpu = gpu.is_cpu();
        let max_wg = gpu.max_wg();
        let wg = if cpu { 64 } else { 256 }
            .min(max_wg)
            .max(caps.subgroup_max_size.min(max_wg));
        // On CPU adapters reductions stay inside one subgroup (a barrier costs microseconds per
        // workgroup there); GPUs reduce a block with the whole workgroup.
        let sg = if caps.subgroups {
            caps.subgroup_min_size.min(max_wg)
        } else {
            1
        };
        let part_tpr = if cpu { sg } else { wg };
        let slab = d.c * d.s; // elements per run of all channels
        let runs_per_chunk = units_per_binding(gpu, slab);
        if runs_per_chunk == 0 {
            return Err(NormError::TooLarge(format!(
                "one batch item of {slab} f32 values exceeds a storage binding of {} bytes",
                gpu.max_binding_bytes()
            )));
        }
        let blocks = Self::blocks(gpu, d, u64::from(part_tpr), runs_per_chunk);
        // Finalize: on CPU adapters one lane per channel while it merges at most 4096 partials
        // (llvmpipe stops loops at 65535 iterations; Chan merges lose nothing over a few
        // thousand), so no shuffles or barriers; on GPUs ~16 partials per lane.
        let per_lane = if cpu { 4 * MAX_THREAD_ITERS } else { 16 };
        let fin_tpr = (blocks.nbt.div_ceil(per_lane).next_power_of_two() as u32).min(wg);
        let cl = d.s == 1;
        let apply_mode = match () {
            _ if cl && d.c.is_multiple_of(4) => 2,
            _ if !cl && d.s.is_multiple_of(4) => 1,
            _ => 0,
        };
        Ok(BnPlan {
            workgroup_size: wg,
            partial_threads: if cl { 1 } else { part_tpr },
            finalize_threads: fin_tpr,
            finalize_workgroups: (d.c as u32).div_ceil(wg / fin_tpr),
            subgroups: caps.subgroups,
            channels_last: cl,
            blocks,
            apply_mode,
            // Chunks hold whole blocks, so no block straddles two bindings.
            chunk_runs: runs_per_chunk / blocks.nbr * blocks.nbr,
        })
    }

    /// Stage-1 blocking. Blocks are read twice (two-pass), so on CPU adapters they are sized
    /// to stay in a core's cache; on GPUs there are enough of them to fill the device. A
    /// thread never loops over more than MAX_THREAD_ITERS values per pass.
    fn blocks(gpu: &Gpu, d: Dims, tpr: u64, runs_per_chunk: u64) -> Blocks {
        let cpu = gpu.is_cpu();
        if d.s == 1 {
            // Channels-last: a thread walks down nbr rows for 4 channels (or 1).
            let lanes = if d.c.is_multiple_of(4) { d.c / 4 } else { d.c };
            let nbr = if cpu {
                // A workgroup's 64 lanes x nbr rows: 64 rows of 1 KiB each stay in L1/L2.
                64
            } else {
                (d.n * lanes).div_ceil(131072).max(d.n.div_ceil(4096))
            };
            let nbr = nbr.min(MAX_THREAD_ITERS).min(runs_per_chunk).max(1);
            Blocks {
                nbr,
                seg: 1,
                ssegs: 1,
                nbt: d.n.div_ceil(nbr),
            }
        } else {
            // Channels-first: a group of tpr threads per block of about `target` values.
            let per_channel = d.n * d.s;
            let target = if cpu {
                2048
            } else {
                (tpr * 16).max(per_channel.div_ceil(1024))
            };
            let target = target.min(tpr * MAX_THREAD_ITERS).max(tpr);
            let mut seg = d.s.min(target);
            if d.s.is_multiple_of(4) {
                seg = seg.div_ceil(4) * 4;
            }
            let ssegs = d.s.div_ceil(seg);
            let nbr = if ssegs == 1 { (target / d.s).max(1) } else { 1 };
            let nbr = nbr.min(runs_per_chunk).max(1);
            Blocks {
                nbr,
                seg,
                ssegs,
                nbt: d.n.div_ceil(nbr) * ssegs,
            }
        }
    }

    /// Records pivot/partial/finalize/apply (stats = Some: training outputs, update flag and
    /// factor) or eval_coef/apply (stats = None).
    fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        d: Dims,
        y: &Tensor,
        stats: Option<(&Tensor, &Tensor, bool, f32)>,
    ) -> Result<()> {
        // Held until the call's temporaries (uniforms, scratch) are freed (see `Gpu::turn`).
        let _turn = gpu.turn();
        let plan = Self::plan_dims(gpu, d)?;
        let BnPlan {
            workgroup_size: wg,
            partial_threads: part_tpr,
            finalize_threads: fin_tpr,
            ..
        } = plan;
        let (wg, part_tpr, fin_tpr) = (u64::from(wg), u64::from(part_tpr), u64::from(fin_tpr));
        let b = plan.blocks;
        let apply_mode = plan.apply_mode;
        let slab = d.c * d.s;
        let chunk = plan.chunk_runs;
        let cl = d.s == 1;
        let vec = if cl {
            d.c.is_multiple_of(4)
        } else {
            d.s.is_multiple_of(4)
        };
        let on = |v: bool| if v { 1.0 } else { 0.0 };
        let (update, factor) = stats.map_or((false, 0.0), |s| (s.2, s.3));
        let consts = |entry: &str| -> Constants {
            let tpr = match entry {
                "batch_norm_partial_cf" => part_tpr,
                "batch_norm_finalize" => fin_tpr,
                _ => wg,
            };
            let mut c = vec![("WG", wg as f64), ("TPR", tpr as f64)];
            match entry {
                "batch_norm_apply" => c.push(("APPLY_MODE", f64::from(apply_mode))),
                "batch_norm_apply_scalar" => {}
                "batch_norm_partial_cf" | "batch_norm_partial_cl" => c.push(("VEC", on(vec))),
                "batch_norm_finalize" | "batch_norm_eval_coef" => {
                    c.push(("HAS_W", on(self.weight.is_some())));
                    c.push(("HAS_B", on(self.bias.is_some())));
                    c.push(("UPDATE", on(update)));
                    c.push(("UNBIASED", on(self.unbiased)));
                }
                _ => {}
            }
            c
        };
        let cp = d.c.div_ceil(4) * 4;
        // Three planes of cp values, then a vec4 per channel (see batch_norm.wgsl).
        let coef = Tensor::empty(gpu, &[(3 * cp + 4 * d.c) as usize])?;
        let partials = Tensor::empty(gpu, &[(2 * d.c * b.nbt.max(1)) as usize])?;
        let dummy = gpu.placeholder()?;
        let base = BnParams {
            n: d.n as u32,
            c: d.c as u32,
            s: d.s as u32,
            nbr: b.nbr as u32,
            seg: b.seg as u32,
            ssegs: b.ssegs as u32,
            nbt: b.nbt as u32,
            eps: self.eps,
            factor,
            ..Default::default()
        };
        let chan_grid = gpu.grid((d.c as u32).div_ceil(wg as u32))?;
        let mut steps: Vec<Step> = Vec::new();
        let chunks: Vec<(u64, u64)> = (0..d.n.div_ceil(chunk))
            .map(|i| (i * chunk, ((i + 1) * chunk).min(d.n)))
            .collect();
        let xv = |n0: u64, n1: u64| view(gpu, n0 * slab, n1 * slab, x.buffer().size());
        let yv = |n0: u64, n1: u64| view(gpu, n0 * slab, n1 * slab, y.buffer().size());
        if stats.is_some() {
            let (n0, n1) = chunks[0];
            let p = BnParams {
                x_off: xv(n0, n1).elem_off,
                grid_x: chan_grid.0,
                ..base
            };
            steps.push(Step::new(
                gpu,
                "batch_norm_pivot",
                chan_grid,
                &p,
                &[1, 11],
                (n0, n1),
            ));
            for &(n0, n1) in &chunks {
                let runs = n1 - n0;
                let mut p = BnParams {
                    runs: runs as u32,
                    run0: n0 as u32,
                    x_off: xv(n0, n1).elem_off,
                    ..base
                };
                let (entry, groups) = if cl {
                    let lanes = if vec { d.c / 4 } else { d.c };
                    p.work = (runs.div_ceil(b.nbr) * lanes) as u32;
                    ("batch_norm_partial_cl", p.work.div_ceil(wg as u32))
                } else {
                    (
                        "batch_norm_partial_cf",
                        (d.c * runs.div_ceil(b.nbr) * b.ssegs) as u32,
                    )
                };
                let grid = gpu.grid(groups)?;
                p.grid_x = grid.0;
                steps.push(Step::new(gpu, entry, grid, &p, &[1, 3, 4], (n0, n1)));
            }
            let grid = gpu.grid(plan.finalize_workgroups)?;
            let p = BnParams {
                grid_x: grid.0,
                ..base
            };
            let binds = &[3, 5, 6, 7, 8, 9, 10, 11];
            steps.push(Step::new(
                gpu,
                "batch_norm_finalize",
                grid,
                &p,
                binds,
                (0, 0),
            ));
        } else {
            let p = BnParams {
                grid_x: chan_grid.0,
                ..base
            };
            let binds = &[5, 6, 7, 8, 11];
            steps.push(Step::new(
                gpu,
                "batch_norm_eval_coef",
                chan_grid,
                &p,
                binds,
                (0, 0),
            ));
        }
        for &(n0, n1) in &chunks {
            let elems = (n1 - n0) * slab;
            let work = if apply_mode == 0 { elems } else { elems / 4 } as u32;
            let grid = gpu.grid(work.div_ceil(wg as u32))?;
            let p = BnParams {
                run0: (n0 * d.c) as u32,
                runs: ((n1 - n0) * d.c) as u32,
                x_off: xv(n0, n1).elem_off,
                y_off: yv(n0, n1).elem_off,
                work,
                grid_x: grid.0,
                ..base
            };
            let (entry, binds): (_, &'static [u32]) = match apply_mode {
                0 => ("batch_norm_apply_scalar", &[1, 4, 12]),
                _ => ("batch_norm_apply", &[1, 2, 4]),
            };
            steps.push(Step::new(gpu, entry, grid, &p, binds, (n0, n1)));
        }

        let (rm, rv) = (&self.running_mean, &self.running_var);
        let (mean_out, invstd_out) = stats.map_or((&dummy, &dummy), |s| (s.0, s.1));
        let resource = |bnd: u32, (n0, n1): (u64, u64)| match bnd {
            1 => xv(n0, n1).bind(x.buffer()),
            2 | 12 => yv(n0, n1).bind(y.buffer()),
            3 => partials.buffer().as_entire_binding(),
            4 | 11 => coef.buffer().as_entire_binding(),
            5 => self
                .weight
                .as_ref()
                .unwrap_or(&dummy)
                .buffer()
                .as_entire_binding(),
            6 => self
                .bias
                .as_ref()
                .unwrap_or(&dummy)
                .buffer()
                .as_entire_binding(),
            7 => rm.buffer().as_entire_binding(),
            8 => rv.buffer().as_entire_binding(),
            9 => mean_out.buffer().as_entire_binding(),
            10 => invstd_out.buffer().as_entire_binding(),
            b => unreachable!("batch_norm.wgsl has no binding {b}"),
        };
        let mut launches = Vec::with_capacity(steps.len());
        for s in &steps {
            let pipeline = gpu.pipeline(Family::BatchNorm, s.entry, &consts(s.entry))?;
            launches.push(s.launch(pipeline, resource));
        }
        if let Some((m, v)) = &self.pending_init {
            let bytes = (self.channels * 4) as u64;
            gpu.scoped(|_| {
                encoder.copy_buffer_to_buffer(m.buffer(), 0, rm.buffer(), 0, bytes);
                encoder.copy_buffer_to_buffer(v.buffer(), 0, rv.buffer(), 0, bytes);
            })?;
        }
        record_all(gpu, encoder, &launches)
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
