//! The rows family's backward (`shaders/rows_bwd.wgsl`): LayerNorm, RMSNorm, GroupNorm and
//! InstanceNorm channels-first. dx alone: one dispatch per row from the saved statistics. With
//! dweight and dbias: the rows' sums, then a walk down the columns writing dx and per-block
//! column sums (channels-first GroupNorm: per-run sums, then dx per run), then a fixed-order
//! merge, so reruns are bit-identical.

use crate::context::Gpu;
use crate::error::{NormError, Result};
use crate::ops::affine::Staging;
use crate::ops::rows::ChannelAffine;
use crate::runtime::constants::{Flag, Overrides};
use crate::runtime::dispatch::{
    chunks, record_all, units_per_binding, units_per_binding_of, view, view_of, Launch,
};
use crate::runtime::pipeline::{Kernel, Shader, Storage};
use crate::runtime::policy::{Policy, MAX_THREAD_ITERS};
use crate::tensor::Tensor;

/// Fewest rows per column block: a block's thread loops over at least this many rows, fewer
/// for wide rows: a workgroup's walk down a block reads x and dy and writes dx in 3 streams per
/// row, and on lavapipe (64 rows of 65536 values, one sitting) blocks of 16 rows (1 Mi values)
/// measured 2.3x a copy, of 8 rows 2.5x, 4 rows 2.9x, 32 rows 3.7x and 64 rows 3.2x; rows of
/// 4096 values and fewer were fastest with 64-row blocks.
fn min_block_rows(d: u64) -> u64 {
    ((1 << 20) / d.max(1)).clamp(8, 64)
}
/// Most column blocks: the merge loops over at most this many partials per column (unless the
/// partials' size limit forces longer blocks).
const MAX_BLOCKS: u64 = 1024;
/// Most bytes of column partials (a vec2 per column and block).
const MAX_PARTIAL_BYTES: u64 = 32 << 20;
/// Columns (vec4s when d % 4 == 0) per column-walk thread on CPU adapters (rows_bwd.wgsl's
/// MAX_COLS at most; 2 and 8 measured slower on lavapipe).
const COLS_PER_LANE_CPU: u32 = 4;
// rows_bwd.wgsl caps its columns per lane at MAX_COLS = 4: above it the shader's lanes per block
// and this file's workgroup count would disagree.
const _: () = assert!(COLS_PER_LANE_CPU <= 4);
/// Most loop iterations of one thread: llvmpipe stops loops at 65535.
const MAX_LOOP: u64 = 60_000;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct BwdParams {
    rows: u32,
    d: u32,
    off: u32,
    stat_off: u32,
    grid_x: u32,
    block_rows: u32,
    blocks: u32,
    accumulate: u32,
    groups: u32,
    cpg: u32,
    run: u32,
    row0: u32,
}

/// One backward call of the rows family: `rows` rows of `d` values.
#[derive(Clone, Copy)]
pub(crate) struct RowsBwd<'a> {
    pub rows: usize,
    pub d: usize,
    /// LayerNorm (else RMSNorm: no mean).
    pub center: bool,
    pub weight: Option<&'a Tensor>,
    /// Weight per channel (GroupNorm / InstanceNorm channels-first: a row per (sample, group));
    /// dweight and dbias are then per channel.
    pub channel: Option<ChannelAffine>,
    /// How x, dy and dx are stored (x's dtype on this device).
    pub storage: Storage,
}

/// Where the gradients go: dx like x, dweight and dbias (when wanted) one per column.
pub(crate) struct BwdOut<'a> {
    pub dx: &'a Tensor,
    pub dweight: Option<&'a Tensor>,
    pub dbias: Option<&'a Tensor>,
}

impl RowsBwd<'_> {
    fn vec4(&self) -> bool {
        self.d.is_multiple_of(4)
    }

    /// Half dx that does not fill whole vec4s (rows, or CHANNEL_AFFINE's runs) starts
    /// mid-word: written a whole word per thread (the `_pair` kernels).
    fn pairs(&self) -> bool {
        let whole = match self.channel {
            Some(ch) => ch.run % 4 == 0,
            None => self.vec4(),
        };
        self.storage.is_half() && !whole
    }

    /// Threads per row, from d alone (never the row count), so a row's dx is the same bits in
    /// any batch. CPU adapters: the fewest threads, at least a subgroup, that keep a thread's
    /// loop within 4 * MAX_THREAD_ITERS (rows of 65536 values: one subgroup of 8, whose
    /// reduction needs no barrier, rather than 16 threads: with the column sums 2.3x a copy
    /// instead of 2.5x on lavapipe). GPUs: about four vec4s per thread, as the forward.
    fn threads_per_row(&self, p: Policy) -> u32 {
        threads_for(self.d as u64, self.vec4(), p)
    }

    /// Records dx (and dweight/dbias when given) from x, dy and the saved statistics (`mean`
    /// when centred, `rstd` one per row).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        dy: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
        out: BwdOut<'_>,
    ) -> Result<()> {
        let _turn = gpu.turn();
        let mut st = Staging::default();
        let x = st.input(gpu, encoder, x)?;
        let dy = st.input(gpu, encoder, dy)?;
        let mean = mean.map(|t| st.input(gpu, encoder, t)).transpose()?;
        let rstd = st.input(gpu, encoder, rstd)?;
        let w = self
            .weight
            .map(|t| st.input_f32(gpu, encoder, t))
            .transpose()?;
        let dx = st.output(gpu, out.dx)?;
        let dw = out.dweight.map(|t| st.output_f32(gpu, t)).transpose()?;
        let db = out.dbias.map(|t| st.output_f32(gpu, t)).transpose()?;
        let op = RowsBwd {
            weight: w.as_ref(),
            ..*self
        };
        let out = BwdOut {
            dx: &dx,
            dweight: dw.as_ref(),
            dbias: db.as_ref(),
        };
        op.encode_padded(gpu, encoder, &x, &dy, mean.as_ref(), &rstd, out)?;
        st.finish(gpu, encoder)
    }

    #[allow(clippy::too_many_arguments)]
    fn encode_padded(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        dy: &Tensor,
        mean: Option<&Tensor>,
        rstd: &Tensor,
        out: BwdOut<'_>,
    ) -> Result<()> {
        let policy = Policy::of(gpu);
        let wg = policy.wg;
        let tpr = self.threads_per_row(policy);
        let (rows, d) = (self.rows as u64, self.d as u64);
        let vec = self.vec4();
        let per = if vec { d / 4 } else { d };
        if per.div_ceil(u64::from(tpr)) > MAX_LOOP {
            return Err(NormError::TooLarge(format!(
                "rows of {d} values: the backward's {tpr} threads per row would loop more than \
                 {MAX_LOOP} times"
            )));
        }
        let elem = self.storage.elem_bytes();
        let columns = out.dweight.is_some() || out.dbias.is_some();
        let pairs = self.pairs();
        // The rows' sums (a vec2 per chunk row, bound whole): before the column walk, and
        // before the pairs' dx (half rows that start mid-word) with or without the columns.
        let with_rowsums = (columns && self.channel.is_none()) || (!columns && pairs);
        let mut per_chunk = units_per_binding_of(gpu, d, elem);
        if with_rowsums {
            // Short rows hold fewer bytes than their sums (8 per row): the sums' binding bounds
            // the chunk then (half rows of 3 values: 6 bytes of x, 8 of sums).
            per_chunk = per_chunk.min(units_per_binding(gpu, 2));
        }
        // Half chunks start on a whole word: an even number of odd rows.
        if elem == 2 && d % 2 == 1 {
            per_chunk = per_chunk / 2 * 2;
        }
        if per_chunk == 0 {
            return Err(NormError::TooLarge(format!(
                "one row of {d} {} values exceeds a storage binding of {} bytes",
                self.storage,
                gpu.max_binding_bytes()
            )));
        }
        // Column blocks: at least min_block_rows rows, at most MAX_BLOCKS blocks, a chunk's
        // partials within MAX_PARTIAL_BYTES and one binding; chunks hold whole blocks.
        // (CHANNEL_AFFINE sums per run instead: its partials are checked below.)
        if columns && self.channel.is_none() && 8 * d > gpu.max_binding_bytes() {
            return Err(NormError::TooLarge(format!(
                "rows of {d} values: one block of column partials exceeds a binding"
            )));
        }
        let part_budget = MAX_PARTIAL_BYTES.min(gpu.max_binding_bytes());
        let max_blocks = (part_budget / (8 * d)).clamp(1, MAX_BLOCKS);
        let mut block_rows = rows.div_ceil(max_blocks).max(min_block_rows(d).min(rows));
        if elem == 2 && d % 2 == 1 && block_rows < rows {
            // Chunks are whole blocks and must hold an even number of odd rows.
            block_rows = block_rows.next_multiple_of(2);
        }
        if per_chunk >= block_rows {
            per_chunk = per_chunk / block_rows * block_rows;
        } else {
            block_rows = per_chunk;
        }
        let chunk_blocks = per_chunk.min(rows).div_ceil(block_rows);
        if columns && block_rows > MAX_LOOP {
            return Err(NormError::TooLarge(format!(
                "{rows} rows of {d} values: column blocks of {block_rows} rows are too long"
            )));
        }
        // Columns per thread of the column walk: CPU adapters load a row's statistics and
        // sums once per lane (no broadcast), which measured 0.45x a copy of LayerNorm
        // [64, 65536]'s backward on lavapipe; four columns per lane share them (the whole
        // backward: 2.4x -> 1.9x a copy, one lavapipe thread). GPUs keep a column per lane.
        let col_span = if policy.cpu { COLS_PER_LANE_CPU } else { 1 };
        let shader = Shader::RowsBwd;
        let overrides = Overrides::new(wg, tpr)
            .flag(Flag::Vec, vec)
            .flag(Flag::HasWeight, self.weight.is_some())
            .flag(Flag::Center, self.center)
            .flag(Flag::ChannelAffine, self.channel.is_some());
        let (dummy, sink) = (gpu.placeholder()?, gpu.sink()?);
        let gamma = self.weight.unwrap_or(&dummy).buffer();
        // Per-channel sums (CHANNEL_AFFINE): a partial per (sample, channel) run, merged over
        // the samples once after every chunk.
        let runs = self.channel.map(|ch| rows * u64::from(ch.cpg));
        let part_len = runs.unwrap_or(chunk_blocks * d);
        if columns && 8 * part_len > gpu.max_binding_bytes() {
            return Err(NormError::TooLarge(format!(
                "{rows} rows of {d} values: the column sums' partials exceed a binding"
            )));
        }
        let partials = match columns {
            true => Some(Tensor::empty(gpu, &[(part_len * 2).max(4) as usize])?),
            false => None,
        };
        let ov = overrides
            .clone()
            .flag(Flag::HasWeight, out.dweight.is_some())
            .flag(Flag::HasBias, out.dbias.is_some());
        let run_tpr = self.channel.map_or(1, |ch| {
            threads_for(u64::from(ch.run), ch.run % 4 == 0, policy)
        });
        if let Some(ch) = self.channel {
            let samples = rows / u64::from(ch.groups);
            let run_iters = u64::from(ch.run).div_ceil(u64::from(run_tpr));
            if columns && (samples > MAX_LOOP || run_iters > MAX_LOOP) {
                return Err(NormError::TooLarge(format!(
                    "{samples} samples of runs of {}: the per-channel sums would loop more than \
                     {MAX_LOOP} times",
                    ch.run
                )));
            }
        }
        let run_ov = Overrides::new(wg, run_tpr)
            .flag(Flag::Vec, self.channel.is_some_and(|ch| ch.run % 4 == 0))
            .flag(Flag::HasWeight, self.weight.is_some())
            .flag(Flag::Center, self.center)
            .flag(Flag::ChannelAffine, true);
        let rowsums = match with_rowsums {
            true => Some(Tensor::empty(gpu, &[(2 * per_chunk.min(rows)) as usize])?),
            false => None,
        };
        let mut launches = Vec::new();
        for (k, (r0, r1)) in chunks(rows, per_chunk).enumerate() {
            let n = r1 - r0;
            let ev = |t: &Tensor| view_of(gpu, r0 * d, r1 * d, t.buffer().size(), elem);
            let (xv, dyv, dxv) = (ev(x), ev(dy), ev(out.dx));
            let rv = view(gpu, r0, r1, rstd.buffer().size());
            let nb = n.div_ceil(block_rows);
            // mean and rstd views start at the same element offset (it depends on r0 alone).
            let mean_bind = || match mean {
                Some(m) => view(gpu, r0, r1, m.buffer().size()).bind(m.buffer()),
                None => dummy.buffer().as_entire_binding(),
            };
            let params = |grid_x| BwdParams {
                rows: n as u32,
                d: d as u32,
                off: xv.elem_off,
                stat_off: rv.elem_off,
                grid_x,
                block_rows: block_rows as u32,
                blocks: nb as u32,
                accumulate: u32::from(k > 0),
                ..chunk_params(self.channel, r0)
            };
            let launch = |kernel, ov: &Overrides, groups: u64| {
                Launch::new(gpu, shader, kernel, ov, groups as u32, params).map(|l| {
                    l.storage(self.storage)
                        .bind("x", xv.bind(x.buffer()))
                        .bind("dy", dyv.bind(dy.buffer()))
                        .bind("mean_in", mean_bind())
                        .bind("rstd_in", rv.bind(rstd.buffer()))
                })
            };
            let dx_name = if vec { "dx" } else { "dx1" };
            let row_groups = n.div_ceil(u64::from(wg / tpr));
            // The pair kernels: a word (two values) per thread.
            let pair_groups = (n * d).div_ceil(2).div_ceil(u64::from(wg));
            // The rows' sums (before the column walk or the pairs' dx), and the pairs' dx.
            let sums = || {
                rowsums
                    .as_ref()
                    .expect("row sums are allocated for these")
                    .buffer()
            };
            let row_sums = || {
                launch(Kernel::RowsBwdSums, &overrides, row_groups)
                    .map(|l| l.buf("gamma", gamma).buf("rowsums", sums()))
            };
            let dx_pairs = || {
                launch(Kernel::RowsBwdDxPair, &overrides, pair_groups).map(|l| {
                    l.buf("gamma", gamma)
                        .buf("rowsums", sums())
                        .bind("dx2", dxv.bind(out.dx.buffer()))
                })
            };
            if !columns && pairs {
                launches.push(row_sums()?);
                launches.push(dx_pairs()?);
            } else if !columns {
                let kernel = match vec {
                    true => Kernel::RowsBwd,
                    false => Kernel::RowsBwdScalar,
                };
                launches.push(
                    launch(kernel, &overrides, row_groups)?
                        .buf("gamma", gamma)
                        .bind(dx_name, dxv.bind(out.dx.buffer())),
                );
            }
            let merge = |params: BwdParams| {
                let groups = u64::from(params.d).div_ceil(u64::from(wg)) as u32;
                Launch::new(gpu, shader, Kernel::RowsBwdMerge, &ov, groups, |gx| {
                    BwdParams {
                        grid_x: gx,
                        ..params
                    }
                })
            };
            match (&partials, self.channel) {
                (None, _) => {}
                (Some(part), Some(ch)) => {
                    let runs = n * u64::from(ch.cpg);
                    let groups = runs.div_ceil(u64::from(wg / run_tpr));
                    let (dx_kernel, dx_name, dx_groups) = match (ch.run % 4 == 0, pairs) {
                        (true, _) => (Kernel::RowsBwdChanDx, "dx", groups),
                        (false, true) => (Kernel::RowsBwdChanDxPair, "dx2", pair_groups),
                        (false, false) => (Kernel::RowsBwdChanDxScalar, "dx1", groups),
                    };
                    launches.push(
                        launch(Kernel::RowsBwdChan, &run_ov, groups)?
                            .buf("partials", part.buffer()),
                    );
                    launches.push(
                        launch(dx_kernel, &run_ov, dx_groups)?
                            .buf("partials", part.buffer())
                            .buf("gamma", gamma)
                            .bind(dx_name, dxv.bind(out.dx.buffer())),
                    );
                    if r1 == rows {
                        // Channels = groups * cpg; samples = rows / groups.
                        let merged = BwdParams {
                            d: ch.groups * ch.cpg,
                            blocks: (rows / u64::from(ch.groups)) as u32,
                            ..Default::default()
                        };
                        launches.push(
                            merge(merged)?
                                .buf("partials", part.buffer())
                                .buf("dweight", out.dweight.unwrap_or(&sink).buffer())
                                .buf("dbias", out.dbias.unwrap_or(&sink).buffer()),
                        );
                    }
                }
                (Some(part), None) => {
                    launches.push(row_sums()?);
                    // Whole workgroups per block (see col_thread in the shader).
                    let cols_ov = overrides.clone().per_lane(col_span);
                    let lanes = per.div_ceil(u64::from(col_span));
                    let col_groups = nb * lanes.div_ceil(u64::from(wg));
                    if pairs {
                        // The column sums alone, then dx a word per thread.
                        launches.push(
                            launch(Kernel::RowsBwdColsumsScalar, &cols_ov, col_groups)?
                                .buf("partials", part.buffer()),
                        );
                        launches.push(dx_pairs()?);
                    } else {
                        let cols = match vec {
                            true => Kernel::RowsBwdCols,
                            false => Kernel::RowsBwdColsScalar,
                        };
                        launches.push(
                            launch(cols, &cols_ov, col_groups)?
                                .buf("partials", part.buffer())
                                .buf("gamma", gamma)
                                .buf("rowsums", sums())
                                .bind(dx_name, dxv.bind(out.dx.buffer())),
                        );
                    }
                    launches.push(
                        merge(params(0))?
                            .buf("partials", part.buffer())
                            .buf("dweight", out.dweight.unwrap_or(&sink).buffer())
                            .buf("dbias", out.dbias.unwrap_or(&sink).buffer()),
                    );
                }
            }
        }
        record_all(gpu, encoder, &launches)
    }
}

/// Threads reducing `d` values (vec4s when `vec`): see [`RowsBwd::threads_per_row`].
fn threads_for(d: u64, vec: bool, p: Policy) -> u32 {
    let per = if vec { d / 4 } else { d };
    let need = per
        .div_ceil(4 * MAX_THREAD_ITERS)
        .max(1)
        .next_power_of_two();
    let gpu = d.div_ceil(16).next_power_of_two();
    // CPU adapters: at least a subgroup per row (its reduction needs no barrier), so that few
    // rows still spread over the cores: 64 rows of 4096 at one thread each are one workgroup.
    let cpu = need.max(u64::from(p.sg).min(per.next_power_of_two()));
    let tpr = if p.cpu { cpu } else { need.max(gpu) };
    tpr.min(u64::from(p.wg)) as u32
}

/// The CHANNEL_AFFINE fields of a chunk starting at global row `row0`.
fn chunk_params(channel: Option<ChannelAffine>, row0: u64) -> BwdParams {
    let ch = channel.unwrap_or(ChannelAffine {
        groups: 1,
        cpg: 1,
        run: 1,
    });
    BwdParams {
        groups: ch.groups,
        cpg: ch.cpg,
        run: ch.run,
        row0: row0 as u32,
        ..Default::default()
    }
}

pub(crate) fn layout() -> crate::runtime::UniformLayout {
    crate::runtime::uniform_layout!(
        "rows_bwd",
        BwdParams,
        [rows, d, off, stat_off, grid_x, block_rows, blocks, accumulate, groups, cpg, run, row0]
    )
}
