//! Statistics over contiguous rows and the normalized output (`shaders/rows.wgsl`): LayerNorm,
//! RMSNorm, and GroupNorm / InstanceNorm channels-first. The policy here picks the kernel: one
//! dispatch reading each row once where a row fits its threads, else the split-row path.

use crate::context::Gpu;
use crate::error::{NormError, Result};
use crate::norms::{LnVariant, Plan, RowsPlan};
use crate::ops::affine::Staging;
use crate::runtime::constants::{Divisor, Flag, Overrides};
use crate::runtime::dispatch::{
    record_all, units_per_binding, units_per_binding_of, view, view_of, Launch,
};
use crate::runtime::pipeline::{Kernel, Shader, Storage};
use crate::runtime::policy::{Policy, MAX_THREAD_ITERS};
use crate::tensor::Tensor;

/// Most vec4s each thread keeps in registers in `rows_norm` (its ROW_CACHE, sized per call from
/// the row length up to this).
const ROW_CACHE: u32 = 16;

/// Most rows a group of threads normalizes in `rows_norm` with one-read statistics (its
/// MAX_PER_LANE).
const MAX_ROWS_PER_LANE: u32 = 4;

/// Fewest workgroups the rows kernel may leave a CPU adapter (a few per core); fewer rows than
/// that take the split-row path.
const CPU_MIN_WORKGROUPS: u64 = 16;

/// Fewest rows (or groups of rows) for long rows at a subgroup each, in workgroups shrunk to
/// keep that many (see `Rows::plan`); fewer take the split path, which spreads a row over
/// every core.
const CPU_MIN_LONG_ROWS: u64 = 8;

/// Most workgroups a CPU-adapter rows kernel may run when its reduction needs barriers.
const CPU_MAX_BARRIER_WORKGROUPS: u64 = 256;

/// Fewer rows than this leave a large GPU's compute units idle with several rows per
/// workgroup (an H100 has 132 SMs): the GPU policy then gives each row a whole workgroup.
const GPU_FEW_ROWS: u64 = 256;

/// With few rows, rows of at least this many values take the split path: one workgroup per row
/// would leave most of the device idle while each streams 64 KiB or more.
const GPU_SPLIT_FEW_ROWS_D: usize = 16384;

/// Weight and bias per channel: element i of global row r belongs to channel
/// (r % groups) * cpg + i / run (GroupNorm: a row is one (sample, group), run = spatial size).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChannelAffine {
    pub groups: u32,
    pub cpg: u32,
    pub run: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct RowsParams {
    rows: u32,
    d: u32,
    x_off: u32,
    y_off: u32,
    stat_off: u32,
    grid_x: u32,
    eps: f32,
    segs: u32,
    seg_v4: u32,
    groups: u32,
    cpg: u32,
    run: u32,
    row0: u32,
    pad: [u32; 3],
}

/// One call of the rows family.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub rows: usize,
    pub d: usize,
    /// Subtract the mean (off: RMSNorm).
    pub center: bool,
    /// Per-channel weight and bias (else one per element of a row).
    pub channel: Option<ChannelAffine>,
    pub eps: f32,
    pub weight: Option<&'a Tensor>,
    pub bias: Option<&'a Tensor>,
    pub variant: LnVariant,
    /// How x and y are stored (x's dtype on this device).
    pub storage: Storage,
}

/// forward_add's extra tensors: the residual, and where the sum goes (None: into the residual).
#[derive(Clone, Copy)]
pub(crate) struct Residual<'a> {
    pub res: &'a Tensor,
    pub sum: Option<&'a Tensor>,
}

impl Rows<'_> {
    /// Whole vec4s: the row is a multiple of 4 (a channel's run need not be: the affine then
    /// looks each component's channel up), so the kernel, and with it the summation order,
    /// depends on the row alone: a GroupNorm of one group sums as the LayerNorm of its rows.
    fn vec4(&self) -> bool {
        self.d.is_multiple_of(4)
    }

    /// Half rows that do not fill whole vec4s start mid-word: only the split path's pair pass
    /// writes them without two threads sharing a word.
    fn pairs(&self) -> bool {
        self.storage.is_half() && !self.vec4()
    }

    /// Which kernel runs, and why.
    pub(crate) fn plan(&self, gpu: &Gpu) -> Plan {
        self.plan_for(gpu, false)
    }

    /// [`Rows::plan`], for a call with a residual (`add`: forward_add) or without.
    fn plan_for(&self, gpu: &Gpu, add: bool) -> Plan {
        let Policy { cpu, mut wg, sg } = Policy::of(gpu);
        let d4 = self.d.div_ceil(4) as u32;
        // Loop iterations of one thread over a row of `tpr` threads.
        let per = if self.vec4() { d4 } else { self.d as u32 };
        let iters = |tpr: u32| u64::from(per.div_ceil(tpr));
        let rows = self.rows as u64;
        // CPU adapters' long rows at a subgroup each (their workgroups shrink below).
        let mut long_rows = false;
        let (variant, reason) = match self.variant {
            LnVariant::Auto if cpu => {
                // One thread per row while a thread's loop stays short: lanes never exchange
                // data. Longer rows take the fewest threads that keep loops short; few rows
                // split so every core gets workgroups.
                let mut tpr =
                    (iters(1).div_ceil(MAX_THREAD_ITERS).max(1) as u32).next_power_of_two();
                // Long rows that one subgroup covers with up to 4 * MAX_THREAD_ITERS vec4s per
                // lane take a subgroup each, as the backward does: no barriers and x read twice
                // from a core's cache, where the split path re-reads it from memory plus the
                // weight and bias per row (lavapipe, 2 threads, one sitting: [64, 65536] 3.27 ->
                // 2.24x copy, [256, 65536] 5.17 -> 2.41-2.57x). Rows whose statistics come from
                // one read (below) sum chunks of 32 values and merge them (Chan), not one long
                // sequential sum, so they may be 4x longer: InstanceNorm [1, 64, 512, 512] NCHW,
                // 64 rows of 65536 vec4s.
                let one_read_rows = self.vec4() && !add;
                let most = if one_read_rows { 16 } else { 4 } * MAX_THREAD_ITERS;
                let long_ok = sg > 1 && iters(sg) <= most && rows >= CPU_MIN_LONG_ROWS;
                if tpr > sg && long_ok {
                    tpr = sg;
                }
                let long = tpr == sg && iters(tpr) > MAX_THREAD_ITERS;
                long_rows = long;
                let groups = rows.div_ceil(u64::from(wg / tpr.min(wg)));
                // Without subgroups wide enough, a row's threads meet at barriers: worth it only
                // for a few workgroups (microseconds each) and rows that stay in a core's cache
                // between the passes (measured: 512 x 16384 2.0x copy this way, 3.0x split).
                let barrier_ok = groups <= CPU_MAX_BARRIER_WORKGROUPS && self.d <= 16384;
                let enough = groups >= CPU_MIN_WORKGROUPS || long;
                if (tpr <= sg || barrier_ok) && tpr <= wg && enough {
                    let how = if tpr <= sg {
                        "no barriers"
                    } else {
                        "few workgroups"
                    };
                    let why = format!(
                        "CPU adapter, {} values per row: {tpr} thread(s) per row, {how}",
                        self.d
                    );
                    (
                        LnVariant::Rows {
                            threads_per_row: tpr,
                        },
                        why,
                    )
                } else {
                    let why = format!(
                        "CPU adapter, {} rows of {}: split rows into segments reduced without \
                         barriers, so every core gets work",
                        self.rows, self.d
                    );
                    (LnVariant::SplitRow, why)
                }
            }
            LnVariant::Auto => {
                // About four vec4s per thread, at least a subgroup's worth of rows sharing a
                // subgroup for short rows, at most a workgroup per row. With few rows (decoding)
                // each row gets a workgroup, and long ones are split, so the device fills.
                let few = rows < GPU_FEW_ROWS;
                let tpr = match few {
                    true => wg,
                    false => d4.div_ceil(4).next_power_of_two().clamp(1, wg),
                };
                if few && self.d >= GPU_SPLIT_FEW_ROWS_D {
                    let why = format!(
                        "{} rows of {} values: too few rows to fill a GPU with a workgroup \
                         each; split rows into segments",
                        self.rows, self.d
                    );
                    (LnVariant::SplitRow, why)
                } else if d4 <= tpr * ROW_CACHE {
                    let why = format!(
                        "{} values per row: {tpr} threads per row, {} rows per workgroup, x \
                         read once from memory",
                        self.d,
                        wg / tpr
                    );
                    (
                        LnVariant::Rows {
                            threads_per_row: tpr,
                        },
                        why,
                    )
                } else {
                    let why = format!(
                        "{} values per row do not fit {tpr} threads' registers: split rows so \
                         every workgroup has a segment",
                        self.d
                    );
                    (LnVariant::SplitRow, why)
                }
            }
            LnVariant::Rows { threads_per_row } => {
                let tpr = threads_per_row.clamp(1, wg).next_power_of_two().min(wg);
                let need = (iters(1).div_ceil(MAX_THREAD_ITERS) as u32).next_power_of_two();
                if need > wg {
                    let why = format!("forced rows, but {} values per row need split rows", self.d);
                    (LnVariant::SplitRow, why)
                } else if need > tpr {
                    let why = format!(
                        "forced rows(tpr={threads_per_row}), raised to {need} threads per row \
                         so no thread loops over more than {MAX_THREAD_ITERS} values"
                    );
                    (
                        LnVariant::Rows {
                            threads_per_row: need,
                        },
                        why,
                    )
                } else {
                    (
                        LnVariant::Rows {
                            threads_per_row: tpr,
                        },
                        "forced".to_string(),
                    )
                }
            }
            LnVariant::SplitRow => (LnVariant::SplitRow, "forced".to_string()),
        };
        let (variant, reason) = match variant {
            LnVariant::Rows { .. } if self.pairs() => (
                LnVariant::SplitRow,
                format!(
                    "{} {} values per row start mid-word: statistics per row, then one word \
                     per thread",
                    self.d, self.storage
                ),
            ),
            _ => (variant, reason),
        };
        // CPU adapters, centred rows too long for a lane's registers: the statistics from one
        // read of x (lavapipe's time follows the loads per lane: three reads of x, the weight,
        // the bias and y were 6 per vec4, now 5). RMSNorm's sum of squares only for long rows
        // at a subgroup each (lavapipe, 2 threads, one sitting: [256, 65536] 1.84-1.91 ->
        // 1.63-1.71x copy, [64, 65536] 1.44-1.50 -> 1.35x; shorter rows were up to 16% slower,
        // [4096, 1024] 1.46 -> 1.70x: the chunked two-pass costs more than its plain sum). Not
        // with a residual (its sum is stored while the statistics read it) nor rows that are not
        // whole vec4s.
        let one_read = |tpr: u32| {
            cpu && (self.center || long_rows)
                && self.vec4()
                && !add
                && u64::from(d4.div_ceil(tpr)) > u64::from(ROW_CACHE)
        };
        // One-read rows with a weight or bias per element: several rows per group of threads,
        // which load each vec4 of them once (lavapipe, 2 threads: 2 of the 5 loads and stores
        // per vec4). As many as leave CPU_MIN_WORKGROUPS workgroups (long rows:
        // CPU_MIN_LONG_ROWS groups, each may get a workgroup below).
        let per_lane = |tpr: u32| {
            let shared = self.channel.is_none() && (self.weight.is_some() || self.bias.is_some());
            let mut r = if shared { MAX_ROWS_PER_LANE } else { 1 };
            let enough = |r: u32| match long_rows {
                true => rows.div_ceil(u64::from(r)) >= CPU_MIN_LONG_ROWS,
                false => rows.div_ceil(u64::from(wg / tpr * r)) >= CPU_MIN_WORKGROUPS,
            };
            while r > 1 && !enough(r) {
                r /= 2;
            }
            r
        };
        let (group_threads, segments, row_cache, one_read) = match variant {
            LnVariant::Rows { threads_per_row } if one_read(threads_per_row) => {
                (threads_per_row, (0, 0), 1, Some(per_lane(threads_per_row)))
            }
            LnVariant::Rows { threads_per_row } => {
                let cache = d4.div_ceil(threads_per_row).next_power_of_two();
                (threads_per_row, (0, 0), cache.clamp(1, ROW_CACHE), None)
            }
            _ => {
                // A segment per group of `tps` threads, read twice (two-pass) while it is in
                // cache. CPU adapters: 1024-value (4 KiB) segments, so a workgroup's segments
                // stay in L1. GPUs: enough segments to fill the device. Always at least 4 and at
                // most MAX_THREAD_ITERS vec4s per thread.
                let tps = if cpu { sg } else { wg };
                let lo = u64::from(tps) * 4;
                let hi = u64::from(tps) * MAX_THREAD_ITERS;
                let seg_v4 = match cpu {
                    true => 256,
                    false => (u64::from(d4) * rows).div_ceil(4096),
                };
                let seg_v4 = seg_v4.clamp(lo, hi).min(u64::from(d4).max(1));
                let segs = u64::from(d4).div_ceil(seg_v4) as u32;
                (tps, (segs, seg_v4 as u32), 0, None)
            }
        };
        // Long rows still at a subgroup each (not half rows that start mid-word, split above):
        // workgroups of as few as one (the widest) subgroup, so 8 groups of rows make 8
        // workgroups where subgroups are all one width, and reach every core (lavapipe: 8 rows
        // in one workgroup of 64 ran 3.6x copy, the split path 3.1x, a workgroup per row
        // 1.8-1.9x).
        if long_rows && matches!(variant, LnVariant::Rows { .. }) {
            let groups = rows.div_ceil(u64::from(one_read.unwrap_or(1)));
            let per_wg = (groups / CPU_MIN_LONG_ROWS).clamp(1, u64::from(wg / sg)) as u32;
            let widest = gpu.capabilities().subgroup_max_size.max(sg);
            wg = wg.min((1 << per_wg.ilog2()) * sg).max(widest.min(wg));
        }
        let vec = self.vec4();
        let kernels = match (variant, vec) {
            (LnVariant::Rows { .. }, true) => vec![Kernel::RowsNorm],
            (LnVariant::Rows { .. }, false) => vec![Kernel::RowsNormScalar],
            (_, true) => vec![Kernel::RowsPartial, Kernel::RowsMerge, Kernel::RowsApply],
            (_, false) => vec![
                Kernel::RowsPartial,
                Kernel::RowsMerge,
                match self.pairs() {
                    true => Kernel::RowsApplyPair,
                    false => Kernel::RowsApplyScalar,
                },
            ],
        };
        let mut plan = Plan::new(
            gpu,
            &kernels,
            wg,
            reason,
            Some(RowsPlan {
                variant,
                group_threads,
                segments,
                row_cache,
                one_read: one_read.is_some(),
                rows_per_group: one_read.unwrap_or(1),
            }),
            None,
        );
        plan.storage = self.storage;
        plan
    }

    /// Records the call: y shaped like x, one mean (when centred) and rstd per row.
    pub(crate) fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        y: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
    ) -> Result<()> {
        self.encode_add(gpu, encoder, x, None, y, mean, rstd)
    }

    /// [`Rows::encode`] of x + residual (forward_add), storing the sum too. Rows of whole vec4s
    /// run fused (one pass reads x and the residual, writes the sum and y); others add first,
    /// then normalize the stored sum, which is the same arithmetic.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_add(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        add: Option<Residual<'_>>,
        y: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
    ) -> Result<()> {
        // Held until the call's temporaries (uniforms, scratch) are freed (see `Gpu::turn`).
        let _turn = gpu.turn();
        if let Some(a) = add.filter(|_| !self.vec4()) {
            crate::ops::elementwise::add(gpu, encoder, x, a.res, a.sum)?;
            let sum = a.sum.unwrap_or(a.res);
            return self.encode_add(gpu, encoder, sum, None, y, mean, rstd);
        }
        let mut st = Staging::default();
        let x = st.input(gpu, encoder, x)?;
        let (w, b) = (self.weight, self.bias);
        let w = w.map(|t| st.input_f32(gpu, encoder, t)).transpose()?;
        let b = b.map(|t| st.input_f32(gpu, encoder, t)).transpose()?;
        let add = match add {
            Some(a) => Some(match a.sum {
                Some(s) => (st.input(gpu, encoder, a.res)?, Some(st.output(gpu, s)?)),
                None => (st.in_out(gpu, encoder, a.res)?, None),
            }),
            None => None,
        };
        let y = st.output(gpu, y)?;
        let mean = mean.map(|t| st.output(gpu, t)).transpose()?;
        let rstd = st.output(gpu, rstd)?;
        let op = Rows {
            weight: w.as_ref(),
            bias: b.as_ref(),
            ..*self
        };
        let add = add.as_ref().map(|(r, s)| Residual {
            res: r,
            sum: s.as_ref(),
        });
        op.encode_padded(gpu, encoder, &x, add, &y, mean.as_ref(), &rstd)?;
        st.finish(gpu, encoder)
    }

    #[allow(clippy::too_many_arguments)]
    fn encode_padded(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        add: Option<Residual<'_>>,
        y: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
    ) -> Result<()> {
        let plan = self.plan_for(gpu, add.is_some());
        let rp = plan.rows.expect("a rows plan");
        let (rows, d) = (self.rows as u64, self.d as u64);
        let wg = plan.workgroup_size;
        let split = rp.variant == LnVariant::SplitRow;
        let (segs, seg_v4) = (u64::from(rp.segments.0), u64::from(rp.segments.1));
        let elem = x.dtype().size() as u64;
        let mut per_chunk = units_per_binding_of(gpu, d, elem);
        if split {
            per_chunk = per_chunk.min(units_per_binding(gpu, 4 * (segs + 1)));
        }
        // Half chunks start on a whole word: an even number of odd rows.
        if elem == 2 && d % 2 == 1 {
            per_chunk = per_chunk / 2 * 2;
        }
        if per_chunk == 0 {
            return Err(NormError::TooLarge(format!(
                "one row of {d} {} values exceeds a storage binding of {} bytes",
                x.dtype(),
                gpu.max_binding_bytes()
            )));
        }
        let shader = Shader::Rows {
            row_cache: rp.row_cache.max(1),
        };
        let overrides = Overrides::new(wg, rp.group_threads)
            .flag(Flag::Vec, self.vec4())
            .flag(Flag::HasWeight, self.weight.is_some())
            .flag(Flag::HasBias, self.bias.is_some())
            .flag(Flag::Center, self.center)
            .flag(Flag::ChannelAffine, self.channel.is_some())
            .flag(Flag::Add, add.is_some())
            .flag(Flag::OneRead, rp.one_read)
            .per_lane(rp.rows_per_group)
            .flag(Flag::InPlace, add.is_some_and(|a| a.sum.is_none()))
            .divisor(
                Divisor::Run,
                self.channel.map_or(0, |ch| u64::from(ch.run)),
                self.channel.is_some() && Policy::of(gpu).cpu,
            );
        // The elementwise pass of the split path divides by the row length per element.
        let apply_overrides =
            overrides
                .clone()
                .divisor(Divisor::Row, self.d as u64, Policy::of(gpu).cpu);
        // The context's placeholder binds where weight or bias is absent (never read), its sink
        // where the mean is not wanted (never written).
        let (dummy, sink, sum_sink) = (gpu.placeholder()?, gpu.sink()?, gpu.sum_sink()?);
        let gamma = self.weight.unwrap_or(&dummy).buffer();
        let beta = self.bias.unwrap_or(&dummy).buffer();
        let scratch = match split {
            true => Some(Tensor::empty(
                gpu,
                &[(per_chunk.min(rows) * (segs + 1) * 4) as usize],
            )?),
            false => None,
        };
        let ch = self.channel.unwrap_or(ChannelAffine {
            groups: 1,
            cpg: 1,
            run: 1,
        });
        let vec = self.vec4();
        let mut launches = Vec::new();
        for (r0, r1) in crate::runtime::dispatch::chunks(rows, per_chunk) {
            let n = r1 - r0;
            let ev = |t: &Tensor| view_of(gpu, r0 * d, r1 * d, t.buffer().size(), elem);
            let (xv, yv) = (ev(x), ev(y));
            // ADD: the residual and the sum share x's element offsets (same dtype and start).
            // In place, the residual is bound once, as the sum. Unused, the placeholder and a
            // second sink stand in (never read, never written; the first may be mean_out's).
            let res_bind = || match add {
                Some(Residual { res, sum: Some(_) }) => ev(res).bind(res.buffer()),
                _ => dummy.buffer().as_entire_binding(),
            };
            let sum_bind = || match add {
                Some(Residual { sum: Some(s), .. }) => ev(s).bind(s.buffer()),
                Some(Residual { res, sum: None }) => ev(res).bind(res.buffer()),
                None => sum_sink.buffer().as_entire_binding(),
            };
            // mean and rstd views start at the same element offset (it depends on r0 alone).
            let rv = view(gpu, r0, r1, rstd.buffer().size());
            let mean_bind = || match mean {
                Some(m) => view(gpu, r0, r1, m.buffer().size()).bind(m.buffer()),
                None => sink.buffer().as_entire_binding(),
            };
            let params = |grid_x| RowsParams {
                rows: n as u32,
                d: d as u32,
                x_off: xv.elem_off,
                y_off: yv.elem_off,
                stat_off: rv.elem_off,
                grid_x,
                eps: self.eps,
                segs: segs as u32,
                seg_v4: seg_v4 as u32,
                groups: ch.groups,
                cpg: ch.cpg,
                run: ch.run,
                row0: r0 as u32,
                pad: [0; 3],
            };
            let y_name = match (vec, self.pairs()) {
                (true, _) => "y",
                (false, true) => "y2",
                (false, false) => "y1",
            };
            let launch_with = |kernel, o: &Overrides, groups: u64| {
                Launch::new(gpu, shader, kernel, o, groups as u32, params).map(|l| {
                    l.storage(self.storage)
                        .bind("x", xv.bind(x.buffer()))
                        .bind("res", res_bind())
                        .bind("sum_out", sum_bind())
                })
            };
            let launch = |kernel, groups: u64| launch_with(kernel, &overrides, groups);
            if let Some(scratch) = &scratch {
                let s = scratch.buffer();
                let per_row = if vec { d / 4 } else { d };
                launches.push(
                    launch(
                        Kernel::RowsPartial,
                        (n * segs).div_ceil(u64::from(wg / rp.group_threads)),
                    )?
                    .buf("partials", s),
                );
                launches.push(
                    launch(Kernel::RowsMerge, n.div_ceil(u64::from(wg)))?
                        .buf("partials", s)
                        .bind("mean_out", mean_bind())
                        .bind("rstd_out", rv.bind(rstd.buffer())),
                );
                // A vec4 or a value per thread; pairs: one word (two values) per thread.
                let (apply, threads) = match (vec, self.pairs()) {
                    (true, _) => (Kernel::RowsApply, n * per_row),
                    (false, true) => (Kernel::RowsApplyPair, (n * d).div_ceil(2)),
                    (false, false) => (Kernel::RowsApplyScalar, n * per_row),
                };
                launches.push(
                    launch_with(apply, &apply_overrides, threads.div_ceil(u64::from(wg)))?
                        .buf("partials", s)
                        .bind(y_name, yv.bind(y.buffer()))
                        .buf("gamma", gamma)
                        .buf("beta", beta),
                );
            } else {
                let kernel = if vec {
                    Kernel::RowsNorm
                } else {
                    Kernel::RowsNormScalar
                };
                let per_wg = u64::from(wg / rp.group_threads * rp.rows_per_group);
                launches.push(
                    launch(kernel, n.div_ceil(per_wg))?
                        .bind(y_name, yv.bind(y.buffer()))
                        .buf("gamma", gamma)
                        .buf("beta", beta)
                        .bind("mean_out", mean_bind())
                        .bind("rstd_out", rv.bind(rstd.buffer())),
                );
            }
        }
        record_all(gpu, encoder, &launches)
    }
}

pub(crate) fn layout() -> crate::runtime::UniformLayout {
    crate::runtime::uniform_layout!(
        "rows",
        RowsParams,
        [rows, d, x_off, y_off, stat_off, grid_x, eps, segs, seg_v4, groups, cpg, run, row0]
    )
}
