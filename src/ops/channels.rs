//! Statistics over strided data (`shaders/channels.wgsl`): BatchNorm's per-channel statistics in
//! both layouts, and GroupNorm / InstanceNorm channels-last, whose statistics are per (sample,
//! group of channels). Two deterministic stages (per-block partials read in memory order, then
//! a fixed-order merge per statistic) write per-(sample, channel) coefficients for the
//! elementwise pass in `apply`. The backward has the same shape: per-block sums of dy and
//! dy * xhat, a per-slot merge into dx's coefficients, a per-channel merge into dweight and
//! dbias, and the elementwise dx.

use crate::context::Gpu;
use crate::error::{NormError, Result};
use crate::norms::{ChannelsPlan, Plan};
use crate::ops::affine::Staging;
use crate::ops::apply::{Apply, ApplyKind};
use crate::ops::rows_bwd::BwdOut;
use crate::runtime::constants::{Flag, Overrides};
use crate::runtime::dispatch::{chunks, record_all, units_per_binding_of, view_of, Launch};
use crate::runtime::pipeline::Storage;
use crate::runtime::pipeline::{Kernel, Shader};
use crate::runtime::policy::{Policy, MAX_THREAD_ITERS};
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ChannelsParams {
    n: u32,
    c: u32,
    s: u32,
    runs: u32,
    run0: u32,
    x_off: u32,
    nbr: u32,
    seg: u32,
    ssegs: u32,
    nbt: u32,
    grid_x: u32,
    eps: f32,
    factor: f32,
    work: u32,
    spr: u32,
    groups: u32,
    cpg: u32,
    plane: u32,
    k0: u32,
    pad: u32,
}

/// Stage-1 blocking: `nbr` runs by `seg` elements of a run per block, `ssegs` blocks along a
/// run, `nbt` blocks per (sample, channel).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Blocks {
    pub nbr: u64,
    pub seg: u64,
    pub ssegs: u64,
    pub nbt: u64,
}

/// BatchNorm's running statistics and how a batch updates them.
#[derive(Clone, Copy)]
pub(crate) struct Running<'a> {
    pub mean: &'a Tensor,
    pub var: &'a Tensor,
    /// Weight of this batch (momentum, or 1 / batches seen).
    pub factor: f32,
    /// Running variance from the unbiased batch variance.
    pub unbiased: bool,
}

/// Where the statistics come from, and what the call writes.
pub(crate) enum Source<'a> {
    /// The batch: mean and invstd written per statistic, running statistics updated when given.
    Batch {
        mean: &'a Tensor,
        invstd: &'a Tensor,
        update: Option<Running<'a>>,
    },
    /// BatchNorm inference: the running statistics (mean, var).
    Running(&'a Tensor, &'a Tensor),
    /// SyncBatchNorm, first half: this part's (pivot, mean of x - pivot, m2, count) per
    /// statistic into the tensor; no output.
    Local(&'a Tensor),
    /// SyncBatchNorm, second half: given global statistics (see `channels_given_coef`).
    Given {
        stats: &'a Tensor,
        mean: &'a Tensor,
        invstd: &'a Tensor,
        update: Option<Running<'a>>,
    },
}

/// The statistics a backward call goes through, one per slot.
#[derive(Clone, Copy)]
pub(crate) enum Saved<'a> {
    /// The forward's batch statistics: mean and rstd (BatchNorm's invstd).
    Batch { mean: &'a Tensor, rstd: &'a Tensor },
    /// BatchNorm inference: the running mean and variance, constants of the backward.
    Running { mean: &'a Tensor, var: &'a Tensor },
}

/// What a backward call computes: everything; SyncBatchNorm's first half, this part's
/// per-channel sums (sum dy into dbias, sum dy * xhat into dweight) and nothing else; or its
/// second half, dx from the given global sums (per channel: sum dy, sum dy * xhat, count, -).
#[derive(Clone, Copy)]
pub(crate) enum BwdStage<'a> {
    Full,
    Sums,
    Given(&'a Tensor),
}

/// Stage 1 of a backward call: what `stage1` reads besides x.
#[derive(Clone, Copy)]
struct BwdInputs<'a> {
    dy: &'a Tensor,
    mean: &'a Tensor,
    spread: &'a Tensor,
    eval: bool,
}

/// The coefficient table of a call with `plane` entries per plane: four planes, then a vec4 per
/// entry (see apply.wgsl).
fn coef_table(gpu: &Gpu, plane: u64) -> Result<Tensor> {
    whole_binding(
        gpu,
        "coefficient table (32 bytes per sample and channel)",
        32 * plane,
    )?;
    Tensor::empty(gpu, &[(8 * plane) as usize])
}

/// The scratch of one call's statistics (its partials, `floats` f32 values).
fn partials_scratch(gpu: &Gpu, floats: u64) -> Result<Tensor> {
    whole_binding(gpu, "per-block partial statistics", 4 * floats)?;
    Tensor::empty(gpu, &[floats.max(4) as usize])
}

/// The coefficient table and the partials are bound whole, not chunked with x: on a device
/// whose binding limit is below them (channels-last with few positions per sample and very many
/// samples) the call is refused here, clearly, rather than by wgpu's validation. The device's
/// own limit decides (the context's chunking budget may be set lower, for tests).
fn whole_binding(gpu: &Gpu, what: &str, bytes: u64) -> Result<()> {
    let limit = gpu.limits().max_storage_buffer_binding_size;
    if bytes > limit {
        return Err(NormError::TooLarge(format!(
            "this shape's {what} needs one binding of {bytes} bytes, above the device's {limit}"
        )));
    }
    Ok(())
}

/// Threads merging `parts` partials per statistic: on CPU adapters one lane while it merges at
/// most 4096 (llvmpipe stops loops at 65535 iterations; Chan merges lose nothing over a few
/// thousand), so no shuffles or barriers; on GPUs ~16 partials per lane.
fn merge_threads(pol: Policy, parts: u64) -> u32 {
    let per_lane = if pol.cpu { 4 * MAX_THREAD_ITERS } else { 16 };
    (parts.div_ceil(per_lane).next_power_of_two() as u32).min(pol.wg)
}

/// One call of the channels family on x viewed as `[n, c, s]` runs (channels-last: s = 1, n =
/// all rows), `spr` runs per sample (BatchNorm: n), `groups` statistics per sample of `cpg`
/// channels each (BatchNorm: c and 1).
#[derive(Clone, Copy)]
pub(crate) struct Channels<'a> {
    pub n: u64,
    pub c: u64,
    pub s: u64,
    pub spr: u64,
    pub groups: u64,
    pub cpg: u64,
    pub eps: f32,
    pub weight: Option<&'a Tensor>,
    pub bias: Option<&'a Tensor>,
    /// How x and y are stored (x's dtype on this device).
    pub storage: Storage,
}

impl Channels<'_> {
    fn samples(&self) -> u64 {
        self.n / self.spr
    }

    /// Statistics slots: samples x groups.
    pub(crate) fn slots(&self) -> u64 {
        self.samples() * self.groups
    }

    /// The kernels and their blocking on `gpu`.
    pub(crate) fn plan(&self, gpu: &Gpu, batch: bool) -> Result<Plan> {
        let pol = Policy::of(gpu);
        let wg = pol.wg;
        // On CPU adapters reductions stay inside one subgroup (a barrier costs microseconds per
        // workgroup there); GPUs reduce a block with the whole workgroup.
        let part_tpr = if pol.cpu { pol.sg } else { wg };
        let slab = self.c * self.s;
        let elem = self.storage.elem_bytes();
        let runs_per_binding = units_per_binding_of(gpu, slab, elem);
        // Chunks hold whole samples when statistics are per sample, else whole blocks.
        let unit = if self.spr < self.n { self.spr } else { 1 };
        if runs_per_binding < unit {
            return Err(NormError::TooLarge(format!(
                "one sample of {} {} values exceeds a storage binding of {} bytes",
                unit * slab,
                self.storage,
                gpu.max_binding_bytes()
            )));
        }
        // Half chunks of an odd slab hold an even number of runs (an odd block is doubled
        // below): blocks of at most half a binding keep that double within one binding.
        let block_cap = match elem == 2 && slab % 2 == 1 {
            true => (runs_per_binding / 2).max(1),
            false => runs_per_binding,
        };
        let b = self.blocks(pol, u64::from(part_tpr), block_cap);
        let mut step = if unit > 1 { unit } else { b.nbr };
        // Half chunks start on a whole word: an even number of odd runs.
        if elem == 2 && slab % 2 == 1 && step % 2 == 1 {
            step *= 2;
        }
        let chunk_runs = runs_per_binding / step * step;
        if chunk_runs == 0 {
            return Err(NormError::TooLarge(format!(
                "{step} runs of {slab} {} values exceed a storage binding of {} bytes",
                self.storage,
                gpu.max_binding_bytes()
            )));
        }
        let fin_tpr = merge_threads(pol, self.cpg * b.nbt);
        let cl = self.s == 1;
        let apply = ApplyKind::of(self.c, self.s).in_storage(self.storage);
        let kernels = match (batch, cl) {
            (true, false) => vec![
                Kernel::ChannelsPivot,
                Kernel::ChannelsPartialCf,
                Kernel::ChannelsFinalize,
                apply.kernel(false),
            ],
            (true, true) => vec![
                Kernel::ChannelsPivot,
                Kernel::ChannelsPartialCl,
                Kernel::ChannelsFinalize,
                apply.kernel(false),
            ],
            (false, _) => vec![Kernel::ChannelsEvalCoef, apply.kernel(false)],
        };
        let reason = format!(
            "{} statistics over {} values each, read in memory order: {} blocks each, merged in \
             a fixed order",
            self.slots(),
            self.cpg * self.spr * self.s,
            self.cpg * b.nbt
        );
        let mut plan = Plan::new(
            gpu,
            &kernels,
            wg,
            reason,
            None,
            Some(ChannelsPlan {
                partial_threads: if cl { 1 } else { part_tpr },
                finalize_threads: fin_tpr,
                finalize_workgroups: (self.slots() as u32).div_ceil(wg / fin_tpr),
                channels_last: cl,
                apply,
                blocks: b,
                chunk_runs,
            }),
        );
        plan.storage = self.storage;
        Ok(plan)
    }

    /// Stage-1 blocking. Blocks are read twice (two-pass), so on CPU adapters they are sized to
    /// stay in a core's cache; on GPUs there are enough of them to fill the device. A thread
    /// never loops over more than MAX_THREAD_ITERS values per pass.
    fn blocks(&self, pol: Policy, tpr: u64, runs_per_chunk: u64) -> Blocks {
        if self.s == 1 {
            // Channels-last: a thread walks down nbr rows of one sample for 4 channels (or 1).
            let lanes = if self.c.is_multiple_of(4) {
                self.c / 4
            } else {
                self.c
            };
            let nbr = match pol.cpu {
                // A workgroup's 64 lanes x nbr rows: 64 rows of 1 KiB each stay in L1/L2.
                true => 64,
                false => (self.n * lanes).div_ceil(131072).max(self.n.div_ceil(4096)),
            };
            let nbr = nbr
                .min(MAX_THREAD_ITERS)
                .min(runs_per_chunk)
                .min(self.spr)
                .max(1);
            Blocks {
                nbr,
                seg: 1,
                ssegs: 1,
                nbt: self.spr.div_ceil(nbr),
            }
        } else {
            // Channels-first: a group of tpr threads per block of about `target` values.
            let per_channel = self.n * self.s;
            let target = match pol.cpu {
                true => 2048,
                false => (tpr * 16).max(per_channel.div_ceil(1024)),
            };
            let target = target.min(tpr * MAX_THREAD_ITERS).max(tpr);
            let mut seg = self.s.min(target);
            if self.s.is_multiple_of(4) {
                seg = seg.div_ceil(4) * 4;
            }
            let ssegs = self.s.div_ceil(seg);
            let nbr = if ssegs == 1 {
                (target / self.s).max(1)
            } else {
                1
            };
            let nbr = nbr.min(runs_per_chunk).max(1);
            Blocks {
                nbr,
                seg,
                ssegs,
                nbt: self.n.div_ceil(nbr) * ssegs,
            }
        }
    }

    /// Records the statistics (or BatchNorm's inference coefficients) and the apply pass.
    pub(crate) fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        y: &Tensor,
        source: Source<'_>,
    ) -> Result<()> {
        // Held until the call's temporaries (uniforms, scratch) are freed (see `Gpu::turn`).
        let _turn = gpu.turn();
        let mut st = Staging::default();
        let x = st.input(gpu, encoder, x)?;
        let w = self
            .weight
            .map(|t| st.input_f32(gpu, encoder, t))
            .transpose()?;
        let b = self
            .bias
            .map(|t| st.input_f32(gpu, encoder, t))
            .transpose()?;
        let y = match source {
            Source::Local(_) => x.clone(),
            _ => st.output(gpu, y)?,
        };
        let (m, v);
        let source = match source {
            Source::Batch {
                mean,
                invstd,
                update,
            } => {
                (m, v) = (st.output(gpu, mean)?, st.output(gpu, invstd)?);
                Source::Batch {
                    mean: &m,
                    invstd: &v,
                    update,
                }
            }
            Source::Given {
                stats,
                mean,
                invstd,
                update,
            } => {
                (m, v) = (st.output(gpu, mean)?, st.output(gpu, invstd)?);
                Source::Given {
                    stats,
                    mean: &m,
                    invstd: &v,
                    update,
                }
            }
            other => other,
        };
        let op = Channels {
            weight: w.as_ref(),
            bias: b.as_ref(),
            ..*self
        };
        op.encode_padded(gpu, encoder, &x, &y, source)?;
        st.finish(gpu, encoder)
    }

    fn encode_padded(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        y: &Tensor,
        source: Source<'_>,
    ) -> Result<()> {
        let from_x = matches!(source, Source::Batch { .. } | Source::Local(_));
        let plan = self.plan(gpu, from_x)?;
        let cp = plan.channels.expect("a channels plan");
        let wg = plan.workgroup_size;
        let b = cp.blocks;
        let (n, c, s) = (self.n, self.c, self.s);
        let samples = self.samples();
        let plane = samples * c.div_ceil(4) * 4;
        let (dummy, sink) = (gpu.placeholder()?, gpu.sink()?);
        let gamma = self.weight.unwrap_or(&dummy).buffer();
        let beta = self.bias.unwrap_or(&dummy).buffer();
        let coef = coef_table(gpu, plane)?;
        let partials = partials_scratch(gpu, 2 * samples * c * b.nbt)?;
        let update = match &source {
            Source::Batch { update, .. } | Source::Given { update, .. } => *update,
            _ => None,
        };
        let base = ChannelsParams {
            n: n as u32,
            c: c as u32,
            s: s as u32,
            nbr: b.nbr as u32,
            seg: b.seg as u32,
            ssegs: b.ssegs as u32,
            nbt: b.nbt as u32,
            eps: self.eps,
            factor: update.map_or(0.0, |u| u.factor),
            spr: self.spr as u32,
            groups: self.groups as u32,
            cpg: self.cpg as u32,
            plane: plane as u32,
            ..Default::default()
        };
        let (rm, rv) = update.map_or((&sink, &sink), |u| (u.mean, u.var));
        let coefs = Overrides::new(wg, cp.finalize_threads)
            .flag(Flag::HasWeight, self.weight.is_some())
            .flag(Flag::HasBias, self.bias.is_some())
            .flag(Flag::Update, update.is_some())
            .flag(Flag::Unbiased, update.is_none_or(|u| u.unbiased));
        let per_channel = (c as u32).div_ceil(wg);
        let launch = |kernel, o: &Overrides, groups| {
            Launch::new(gpu, Shader::Channels, kernel, o, groups, |g| {
                ChannelsParams { grid_x: g, ..base }
            })
        };
        let mut launches = Vec::new();
        if from_x {
            self.stage1(gpu, &cp, wg, base, x, &coef, &partials, None, &mut launches)?;
        }
        // The coefficient writers all bind the table, the affine parameters and the running
        // statistics (BatchNorm's, or the sink).
        fn coef_writer<'a>(
            l: Launch<'a>,
            coef: &'a Tensor,
            (gamma, beta): (&'a wgpu::Buffer, &'a wgpu::Buffer),
            (mean, var): (&'a Tensor, &'a Tensor),
        ) -> Launch<'a> {
            l.buf("coef_w", coef.buffer())
                .buf("gamma", gamma)
                .buf("beta", beta)
                .buf("running_mean", mean.buffer())
                .buf("running_var", var.buffer())
        }
        let affine = (gamma, beta);
        match source {
            Source::Batch { mean, invstd, .. } => launches.push(
                coef_writer(
                    launch(Kernel::ChannelsFinalize, &coefs, cp.finalize_workgroups)?,
                    &coef,
                    affine,
                    (rm, rv),
                )
                .buf("partials", partials.buffer())
                .buf("mean_out", mean.buffer())
                .buf("invstd_out", invstd.buffer()),
            ),
            Source::Local(out) => {
                let o = Overrides::new(wg, cp.finalize_threads);
                launches.push(
                    launch(Kernel::ChannelsLocalStats, &o, cp.finalize_workgroups)?
                        .buf("partials", partials.buffer())
                        .buf("coef_w", coef.buffer())
                        .buf("slot_stats", out.buffer()),
                );
                // Statistics only: no output pass.
                return record_all(gpu, encoder, &launches);
            }
            Source::Running(mean, var) => launches.push(coef_writer(
                launch(Kernel::ChannelsEvalCoef, &coefs, per_channel)?,
                &coef,
                affine,
                (mean, var),
            )),
            Source::Given {
                stats,
                mean,
                invstd,
                ..
            } => launches.push(
                coef_writer(
                    launch(Kernel::ChannelsGivenCoef, &coefs, per_channel)?,
                    &coef,
                    affine,
                    (rm, rv),
                )
                .buf("slot_stats", stats.buffer())
                .buf("mean_out", mean.buffer())
                .buf("invstd_out", invstd.buffer()),
            ),
        }
        let apply = Apply {
            n,
            c,
            s,
            spr: self.spr,
            plane,
            chunk_runs: cp.chunk_runs,
            wg,
            storage: self.storage,
        };
        launches.extend(apply.launches(gpu, x, None, y, &coef)?);
        record_all(gpu, encoder, &launches)
    }

    /// Records the backward: dx (and dweight / dbias when given) from x, dy and the statistics
    /// the forward normalized with.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        dy: &Tensor,
        saved: Saved<'_>,
        stage: BwdStage<'_>,
        out: BwdOut<'_>,
    ) -> Result<()> {
        let _turn = gpu.turn();
        let mut st = Staging::default();
        let x = st.input(gpu, encoder, x)?;
        let dy = st.input(gpu, encoder, dy)?;
        let (mean, spread, eval) = match saved {
            Saved::Batch { mean, rstd } => (mean, rstd, false),
            Saved::Running { mean, var } => (mean, var, true),
        };
        let mean = st.input(gpu, encoder, mean)?;
        let spread = st.input(gpu, encoder, spread)?;
        let w = self
            .weight
            .map(|t| st.input_f32(gpu, encoder, t))
            .transpose()?;
        let dx = st.output(gpu, out.dx)?;
        let dw = out.dweight.map(|t| st.output_f32(gpu, t)).transpose()?;
        let db = out.dbias.map(|t| st.output_f32(gpu, t)).transpose()?;
        let op = Channels {
            weight: w.as_ref(),
            ..*self
        };
        let inputs = BwdInputs {
            dy: &dy,
            mean: &mean,
            spread: &spread,
            eval,
        };
        let out = BwdOut {
            dx: &dx,
            dweight: dw.as_ref(),
            dbias: db.as_ref(),
        };
        op.encode_backward_padded(gpu, encoder, &x, inputs, stage, out)?;
        st.finish(gpu, encoder)
    }

    fn encode_backward_padded(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        bwd: BwdInputs<'_>,
        stage: BwdStage<'_>,
        out: BwdOut<'_>,
    ) -> Result<()> {
        // The forward's geometry: the same blocks, chunks and merge widths.
        let plan = self.plan(gpu, true)?;
        let cp = plan.channels.expect("a channels plan");
        let (wg, b) = (plan.workgroup_size, cp.blocks);
        let (c, samples) = (self.c, self.samples());
        let plane = samples * c.div_ceil(4) * 4;
        let (dummy, sink) = (gpu.placeholder()?, gpu.sink()?);
        let coef = coef_table(gpu, plane)?;
        let partials = partials_scratch(gpu, 2 * samples * c * b.nbt)?;
        let base = ChannelsParams {
            n: self.n as u32,
            c: c as u32,
            s: self.s as u32,
            nbr: b.nbr as u32,
            seg: b.seg as u32,
            ssegs: b.ssegs as u32,
            nbt: b.nbt as u32,
            eps: self.eps,
            spr: self.spr as u32,
            groups: self.groups as u32,
            cpg: self.cpg as u32,
            plane: plane as u32,
            ..Default::default()
        };
        let want = out.dweight.is_some() || out.dbias.is_some();
        // (stage 1, dx coefficients from its partials, dweight/dbias, dx)
        let (partial, finalize, params, dx) = match stage {
            // Inference's dx needs no sums: stage 1 only for dweight / dbias.
            BwdStage::Full => (!bwd.eval || want, true, want, true),
            BwdStage::Sums => (true, false, true, false),
            BwdStage::Given(_) => (false, false, false, true),
        };
        let mut launches = Vec::new();
        if partial {
            self.stage1(
                gpu,
                &cp,
                wg,
                base,
                x,
                &coef,
                &partials,
                Some(bwd),
                &mut launches,
            )?;
        }
        let launch = |kernel, o: &Overrides, groups| {
            Launch::new(gpu, Shader::Channels, kernel, o, groups, |g| {
                ChannelsParams { grid_x: g, ..base }
            })
        };
        let fin = Overrides::new(wg, cp.finalize_threads)
            .flag(Flag::HasWeight, self.weight.is_some())
            .flag(Flag::Eval, bwd.eval);
        let gamma = self.weight.unwrap_or(&dummy).buffer();
        if finalize {
            launches.push(
                launch(Kernel::ChannelsBwdFinalize, &fin, cp.finalize_workgroups)?
                    .buf("partials", partials.buffer())
                    .buf("mean_in", bwd.mean.buffer())
                    .buf("spread_in", bwd.spread.buffer())
                    .buf("gamma", gamma)
                    .buf("coef_w", coef.buffer()),
            );
        }
        if let BwdStage::Given(sums) = stage {
            let o = Overrides::new(wg, wg).flag(Flag::HasWeight, self.weight.is_some());
            launches.push(
                launch(Kernel::ChannelsBwdGiven, &o, (c as u32).div_ceil(wg))?
                    .buf("slot_stats", sums.buffer())
                    .buf("mean_in", bwd.mean.buffer())
                    .buf("spread_in", bwd.spread.buffer())
                    .buf("gamma", gamma)
                    .buf("coef_w", coef.buffer()),
            );
        }
        if params {
            let tpr = merge_threads(Policy::of(gpu), samples * b.nbt);
            let o = Overrides::new(wg, tpr)
                .flag(Flag::HasWeight, out.dweight.is_some())
                .flag(Flag::HasBias, out.dbias.is_some());
            launches.push(
                launch(Kernel::ChannelsBwdParams, &o, (c as u32).div_ceil(wg / tpr))?
                    .buf("partials", partials.buffer())
                    .buf("dweight", out.dweight.unwrap_or(&sink).buffer())
                    .buf("dbias", out.dbias.unwrap_or(&sink).buffer()),
            );
        }
        let apply = Apply {
            n: self.n,
            c,
            s: self.s,
            spr: self.spr,
            plane,
            chunk_runs: cp.chunk_runs,
            wg,
            storage: self.storage,
        };
        if dx {
            let dy = Some((bwd.dy, bwd.eval));
            launches.extend(apply.launches(gpu, x, dy, out.dx, &coef)?);
        }
        record_all(gpu, encoder, &launches)
    }

    /// Stage 1, per chunk of x: the pivots (per sample from each chunk's own samples; per
    /// channel from the first chunk), then the per-block partials. With `bwd`, the backward's
    /// partials (no pivots: the saved mean centres).
    #[allow(clippy::too_many_arguments)]
    fn stage1<'a>(
        &self,
        gpu: &Gpu,
        cp: &ChannelsPlan,
        wg: u32,
        base: ChannelsParams,
        x: &'a Tensor,
        coef: &'a Tensor,
        partials: &'a Tensor,
        bwd: Option<BwdInputs<'a>>,
        launches: &mut Vec<Launch<'a>>,
    ) -> Result<()> {
        let (c, s, b) = (self.c, self.s, cp.blocks);
        let slab = c * s;
        let per_sample = self.samples() > 1;
        let vec = match cp.channels_last {
            true => c.is_multiple_of(4),
            false => s.is_multiple_of(4),
        };
        let plain = Overrides::new(wg, wg);
        let o_part = Overrides::new(wg, cp.partial_threads)
            .flag(Flag::Vec, vec)
            .flag(Flag::Eval, bwd.is_some_and(|b| b.eval));
        for (i, (r0, r1)) in chunks(self.n, cp.chunk_runs).enumerate() {
            let runs = r1 - r0;
            let elem = x.dtype().size() as u64;
            let v = view_of(gpu, r0 * slab, r1 * slab, x.buffer().size(), elem);
            let chunk = ChannelsParams {
                runs: runs as u32,
                run0: r0 as u32,
                x_off: v.elem_off,
                ..base
            };
            let (k0, k1) = match per_sample {
                true => (r0 / self.spr * self.groups, r1 / self.spr * self.groups),
                false => (0, if i == 0 { self.groups } else { 0 }),
            };
            if k1 > k0 && bwd.is_none() {
                let work = (k1 - k0) as u32;
                let p = |g| ChannelsParams {
                    k0: k0 as u32,
                    work,
                    grid_x: g,
                    ..chunk
                };
                let groups = work.div_ceil(wg);
                launches.push(
                    Launch::new(
                        gpu,
                        Shader::Channels,
                        Kernel::ChannelsPivot,
                        &plain,
                        groups,
                        p,
                    )?
                    .storage(self.storage)
                    .bind("x", v.bind(x.buffer()))
                    .buf("coef_w", coef.buffer()),
                );
            }
            let (kernel, work, groups) = if cp.channels_last {
                let lanes = if vec { c / 4 } else { c };
                let blocks = match per_sample {
                    true => runs / self.spr * b.nbt,
                    false => runs.div_ceil(b.nbr),
                };
                let work = (blocks * lanes) as u32;
                let kernel = match bwd {
                    Some(_) => Kernel::ChannelsBwdPartialCl,
                    None => Kernel::ChannelsPartialCl,
                };
                (kernel, work, work.div_ceil(wg))
            } else {
                let groups = c * runs.div_ceil(b.nbr) * b.ssegs;
                let per_wg = u64::from(wg / cp.partial_threads);
                let kernel = match bwd {
                    Some(_) => Kernel::ChannelsBwdPartialCf,
                    None => Kernel::ChannelsPartialCf,
                };
                (kernel, 0, groups.div_ceil(per_wg) as u32)
            };
            let p = |g| ChannelsParams {
                grid_x: g,
                work,
                ..chunk
            };
            let l = Launch::new(gpu, Shader::Channels, kernel, &o_part, groups, p)?
                .storage(self.storage)
                .bind("x", v.bind(x.buffer()))
                .buf("partials", partials.buffer());
            launches.push(match bwd {
                Some(bw) => {
                    let dv = view_of(gpu, r0 * slab, r1 * slab, bw.dy.buffer().size(), elem);
                    l.bind("dy", dv.bind(bw.dy.buffer()))
                        .buf("mean_in", bw.mean.buffer())
                        .buf("spread_in", bw.spread.buffer())
                }
                None => l.buf("coef", coef.buffer()),
            });
        }
        Ok(())
    }
}

pub(crate) fn layout() -> crate::runtime::UniformLayout {
    crate::runtime::uniform_layout!(
        "channels",
        ChannelsParams,
        [
            n, c, s, runs, run0, x_off, nbr, seg, ssegs, nbt, grid_x, eps, factor, work, spr,
            groups, cpg, plane, k0
        ]
    )
}
