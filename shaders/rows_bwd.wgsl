// Backward of the rows family: LayerNorm (CENTER) and RMSNorm (CENTER off), and GroupNorm /
// InstanceNorm channels-first (a row per (sample, group), weight per channel: CHANNEL_AFFINE),
// from the forward's saved per-row mean and rstd. With g = dy * w and xhat = (x - mean) * rstd
// recomputed from x, each row's two sums a = sum(g) and b = sum(g * xhat) (f32, fixed order)
// give dx = rstd * (g - a / d - xhat * b / d) (RMSNorm: no a / d term).
//
// dx alone (no dweight / dbias wanted):
// - rows_bwd:        one group of TPR threads per row (several rows per workgroup when TPR < WG),
//                    rows of whole vec4s (d % 4 == 0): the sums, then dx, in one dispatch.
// - rows_bwd_scalar: the same for any d, one value at a time, dx written through its f32 view.
// With dweight = sum(dy * xhat) and dbias = sum(dy) over all rows, x and dy are read twice
// whatever the order (the column sums need every row, dx needs its row's sums), so:
// - rows_bwd_sums:   TPR threads per row: (a, b) into rowsums[row], the reduction of rows_bwd.
// - rows_bwd_cols:   one thread per (PER_LANE vec4 columns, block of block_rows rows),
//                    d % 4 == 0, walking its block in row order: dx of its columns from
//                    rowsums, and the block's column sums into partials[block * d + column].
//   rows_bwd_cols_scalar: the same, PER_LANE single columns per thread, dx through `dx1`.
// - rows_bwd_chan:   CHANNEL_AFFINE's stage 1: TPR threads per (sample, channel) run of `run`
//                    values sum dy * xhat and dy into partials[sample * C + channel].
// - rows_bwd_chan_dx: CHANNEL_AFFINE's dx: TPR threads per run (run % 4 == 0; the _scalar
//                    twin any run); the row's sums follow from its channels' partials
//                    (a = sum_c w_c sum(dy), b = sum_c w_c sum(dy xhat), in channel order), the
//                    run's weight is one value.
// - rows_bwd_dx_pair, rows_bwd_chan_dx_pair, rows_bwd_colsums_scalar: half rows (or runs)
//                    that do not fill whole vec4s start mid-word: dx one whole word per thread
//                    from the sums above, the column sums by the scalar walk without dx.
// - rows_bwd_merge:  stage 2: one thread per column sums the blocks' partials in block order.
//                    Tensors larger than a binding run both stages per chunk of rows: each
//                    chunk's merge adds its blocks to the totals of the chunks before it.
// No atomics: every sum has one order fixed by the shape, so reruns are bit-identical, and dx of
// a row does not depend on the other rows (its sums depend on d alone).
//
// Stores: whole elements of the array stored to; f32 rows with d % 4 != 0 write dx through
// `dx1`, half ones through `dx2` (whole words).

struct BwdParams {
    rows: u32,
    d: u32,
    // Element offset of this chunk's first row inside the x, dy and dx bindings (the same for
    // all three: it depends on the chunk's first element alone).
    off: u32,
    // Offset of this chunk's first row inside the mean/rstd bindings.
    stat_off: u32,
    // Workgroups along x; more continue along y (65535 per dimension).
    grid_x: u32,
    // Rows per column block and this chunk's blocks.
    block_rows: u32,
    blocks: u32,
    // rows_bwd_merge: 1 to add to the totals already in dweight/dbias (chunks after the first).
    accumulate: u32,
    // CHANNEL_AFFINE: element i of global row r belongs to channel (r % groups) * cpg + i / run;
    // row0 is this chunk's first global row.
    groups: u32,
    cpg: u32,
    run: u32,
    row0: u32,
}

// Vector loads: d % 4 == 0 (rows_bwd_chan: run % 4 == 0).
override VEC: bool = true;
override HAS_W: bool = false;
override HAS_B: bool = false;
override CENTER: bool = true;
override CHANNEL_AFFINE: bool = false;

@group(0) @binding(0) var<uniform> p: BwdParams;
// x, dy and dx in x's element storage (dtype_*.wgsl): widened on load, rounded once on store.
@group(0) @binding(1) var<storage, read> x: array<XV>;
@group(0) @binding(2) var<storage, read> dy: array<XV>;
@group(0) @binding(3) var<storage, read> gamma: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> mean_in: array<f32>;
@group(0) @binding(5) var<storage, read> rstd_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<XV>;
// dx as scalars (the same buffer), for f32 rows that do not fill whole vec4s.
@group(0) @binding(7) var<storage, read_write> dx1: array<f32>;
// dx as whole words of two halves (the same buffer), for half rows that do not fill whole
// vec4s: one word per thread, so no two threads write one word.
@group(0) @binding(12) var<storage, read_write> dx2: array<XW>;
// Column (or run) sums: (sum dy * xhat, sum dy).
@group(0) @binding(8) var<storage, read_write> partials: array<vec2<f32>>;
@group(0) @binding(9) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(10) var<storage, read_write> dbias: array<f32>;
// Per chunk row: (a, b), from rows_bwd_sums for rows_bwd_cols.
@group(0) @binding(11) var<storage, read_write> rowsums: array<vec2<f32>>;

fn group_id(wid: vec3<u32>) -> u32 {
    return wid.x + wid.y * p.grid_x;
}

fn ld_x(i: u32) -> f32 {
    return widen4(x[i >> 2u])[i & 3u];
}

fn ld_dy(i: u32) -> f32 {
    return widen4(dy[i >> 2u])[i & 3u];
}

fn ld_x4(j: u32) -> vec4<f32> {
    return widen4(x[j]);
}

fn ld_dy4(j: u32) -> vec4<f32> {
    return widen4(dy[j]);
}

// The weight of element i of chunk row `row`.
fn weight1(row: u32, i: u32) -> f32 {
    if (!HAS_W) {
        return 1.0;
    }
    var k = i;
    if (CHANNEL_AFFINE) {
        k = ((p.row0 + row) % p.groups) * p.cpg + i / p.run;
    }
    return gamma[k >> 2u][k & 3u];
}

// The weight of channel (or column) k.
fn weight_at(k: u32) -> f32 {
    if (!HAS_W) {
        return 1.0;
    }
    return gamma[k >> 2u][k & 3u];
}

// The weights of elements 4j .. 4j + 3 of chunk row `row`.
fn weight4(row: u32, j: u32) -> vec4<f32> {
    if (!HAS_W) {
        return vec4<f32>(1.0);
    }
    if (CHANNEL_AFFINE) {
        let i = 4u * j;
        if (p.run % 4u == 0u) {
            return vec4<f32>(weight1(row, i));
        }
        return vec4<f32>(weight1(row, i), weight1(row, i + 1u), weight1(row, i + 2u), weight1(row, i + 3u));
    }
    return gamma[j];
}

// The saved statistics of chunk row `row`: (mean, rstd); mean 0 without CENTER.
fn stats(row: u32) -> vec2<f32> {
    var m = 0.0;
    if (CENTER) {
        m = mean_in[p.stat_off + row];
    }
    return vec2<f32>(m, rstd_in[p.stat_off + row]);
}

// dx from the row's sums a = sum(g), b = sum(g * xhat).
fn dx_of(g: vec4<f32>, xh: vec4<f32>, rstd: f32, a: f32, b: f32) -> vec4<f32> {
    let n = f32(p.d);
    var ma = 0.0;
    if (CENTER) {
        ma = a / n;
    }
    return rstd * (g - vec4<f32>(ma) - xh * (b / n));
}

// Thread t's lane and row (TPR threads per row), and the row's statistics (0 past the last row:
// those threads still take part in the reductions' barriers).
struct ThreadRow {
    lane: u32,
    row: u32,
    valid: bool,
    st: vec2<f32>,
}

fn thread_row(wid: vec3<u32>, l: Lane) -> ThreadRow {
    let t = thread_index(l);
    let row = group_id(wid) * (WG / TPR) + t / TPR;
    let valid = row < p.rows;
    var st = vec2<f32>(0.0);
    if (valid) {
        st = stats(row);
    }
    return ThreadRow(t % TPR, row, valid, st);
}

@compute @workgroup_size(WG)
fn rows_bwd(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let c = thread_row(wid, l);
    let lane = c.lane;
    let row = c.row;
    let valid = c.valid;
    let st = c.st;
    let mv = vec4<f32>(st.x);
    let base = (p.off + row * p.d) / 4u;
    let nv = p.d / 4u;
    var a4 = vec4<f32>(0.0);
    var b4 = vec4<f32>(0.0);
    for (var j = lane; valid && j < nv; j += TPR) {
        let g = ld_dy4(base + j) * weight4(row, j);
        a4 += g;
        b4 += g * ((ld_x4(base + j) - mv) * st.y);
    }
    let a = reduce_sum(a4.x + a4.y + a4.z + a4.w, l);
    let b = reduce_sum(b4.x + b4.y + b4.z + b4.w, l);
    if (!valid) {
        return;
    }
    for (var j = lane; j < nv; j += TPR) {
        let g = ld_dy4(base + j) * weight4(row, j);
        dx[base + j] = narrow4(dx_of(g, (ld_x4(base + j) - mv) * st.y, st.y, a, b));
    }
}

@compute @workgroup_size(WG)
fn rows_bwd_scalar(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let c = thread_row(wid, l);
    let lane = c.lane;
    let row = c.row;
    let valid = c.valid;
    let st = c.st;
    let base = p.off + row * p.d;
    var a = 0.0;
    var b = 0.0;
    for (var i = lane; valid && i < p.d; i += TPR) {
        let g = ld_dy(base + i) * weight1(row, i);
        a += g;
        b += g * ((ld_x(base + i) - st.x) * st.y);
    }
    a = reduce_sum(a, l);
    b = reduce_sum(b, l);
    if (!valid) {
        return;
    }
    for (var i = lane; i < p.d; i += TPR) {
        let g = ld_dy(base + i) * weight1(row, i);
        let xh = (ld_x(base + i) - st.x) * st.y;
        dx1[base + i] = dx_of(vec4<f32>(g), vec4<f32>(xh), st.y, a, b).x;
    }
}

@compute @workgroup_size(WG)
fn rows_bwd_sums(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let c = thread_row(wid, l);
    let st = c.st;
    var a = 0.0;
    var b = 0.0;
    if (VEC) {
        let mv = vec4<f32>(st.x);
        let base = (p.off + c.row * p.d) / 4u;
        var a4 = vec4<f32>(0.0);
        var b4 = vec4<f32>(0.0);
        for (var j = c.lane; c.valid && j < p.d / 4u; j += TPR) {
            let g = ld_dy4(base + j) * weight4(c.row, j);
            a4 += g;
            b4 += g * ((ld_x4(base + j) - mv) * st.y);
        }
        a = a4.x + a4.y + a4.z + a4.w;
        b = b4.x + b4.y + b4.z + b4.w;
    } else {
        let base = p.off + c.row * p.d;
        for (var i = c.lane; c.valid && i < p.d; i += TPR) {
            let g = ld_dy(base + i) * weight1(c.row, i);
            a += g;
            b += g * ((ld_x(base + i) - st.x) * st.y);
        }
    }
    a = reduce_sum(a, l);
    b = reduce_sum(b, l);
    if (c.valid && c.lane == 0u) {
        rowsums[c.row] = vec2<f32>(a, b);
    }
}

// Columns (vec4s for rows_bwd_cols) each column-walk thread takes, next to each other, at most
// MAX_COLS: CPU adapters load a row's statistics and sums once per lane, so a lane walking
// several columns loads them once for all of them (GPUs broadcast them from cache and want a
// warp's loads contiguous: 1). Columns `lanes` apart instead measured 1.5x slower on lavapipe
// (rows of 65536 f32: 64 KiB apart, the same L1 sets).
override PER_LANE: u32 = 1u;
// The host's column count per lane stays within it (a const assert in rows_bwd.rs), so its
// workgroup count and this file's lanes agree.
const MAX_COLS: u32 = 4u;
override NCOLS: u32 = min(PER_LANE, MAX_COLS);

// A column-walk thread: lanes = ceil(columns / NCOLS) threads per block, in whole
// workgroups, so a block's rows are the same for the whole workgroup. Its columns are
// col * NCOLS .. col * NCOLS + NCOLS - 1 below `cols`; none past the last block or lane.
struct ColThread {
    blk: u32,
    col: u32,
    r0: u32,
    r1: u32,
    valid: bool,
}

fn col_thread(wid: vec3<u32>, t: u32, cols: u32) -> ColThread {
    let lanes = (cols + NCOLS - 1u) / NCOLS;
    let per_block = (lanes + WG - 1u) / WG;
    let g = group_id(wid);
    let blk = g / per_block;
    let col = (g % per_block) * WG + t;
    let r0 = blk * p.block_rows;
    let valid = col < lanes && blk < p.blocks;
    return ColThread(blk, col, r0, min(r0 + p.block_rows, p.rows), valid);
}

// Column k of thread b (k < NCOLS), or `cols` (none) past the last.
fn col_k(b: ColThread, k: u32, cols: u32) -> u32 {
    return min(b.col * NCOLS + k, cols);
}

@compute @workgroup_size(WG)
fn rows_bwd_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let nv = p.d / 4u;
    let b = col_thread(wid, t, nv);
    if (!b.valid) {
        return;
    }
    var dw: array<vec4<f32>, MAX_COLS>;
    var db: array<vec4<f32>, MAX_COLS>;
    var w: array<vec4<f32>, MAX_COLS>;
    for (var k = 0u; k < NCOLS; k++) {
        let col = col_k(b, k, nv);
        if (col < nv) {
            w[k] = weight4(0u, col);
        }
    }
    for (var r = b.r0; r < b.r1; r++) {
        let st = stats(r);
        let rs = rowsums[r];
        let row = (p.off + r * p.d) / 4u;
        for (var k = 0u; k < NCOLS; k++) {
            let col = col_k(b, k, nv);
            if (col < nv) {
                let i = row + col;
                let v = ld_dy4(i);
                let xh = (ld_x4(i) - vec4<f32>(st.x)) * st.y;
                dx[i] = narrow4(dx_of(v * w[k], xh, st.y, rs.x, rs.y));
                dw[k] += v * xh;
                db[k] += v;
            }
        }
    }
    for (var k = 0u; k < NCOLS; k++) {
        let col = col_k(b, k, nv);
        if (col < nv) {
            let q = b.blk * p.d + 4u * col;
            for (var c = 0u; c < 4u; c++) {
                partials[q + c] = vec2<f32>(dw[k][c], db[k][c]);
            }
        }
    }
}

// rows_bwd_cols a value at a time (any d), dx through `dx1`.
@compute @workgroup_size(WG)
fn rows_bwd_cols_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let b = col_thread(wid, t, p.d);
    if (!b.valid) {
        return;
    }
    var dw: array<f32, MAX_COLS>;
    var db: array<f32, MAX_COLS>;
    var w: array<f32, MAX_COLS>;
    for (var k = 0u; k < NCOLS; k++) {
        let col = col_k(b, k, p.d);
        if (col < p.d) {
            w[k] = weight_at(col);
        }
    }
    for (var r = b.r0; r < b.r1; r++) {
        let st = stats(r);
        let rs = rowsums[r];
        let row = p.off + r * p.d;
        for (var k = 0u; k < NCOLS; k++) {
            let col = col_k(b, k, p.d);
            if (col < p.d) {
                let i = row + col;
                let v = ld_dy(i);
                let xh = (ld_x(i) - st.x) * st.y;
                dx1[i] = dx_of(vec4<f32>(v * w[k]), vec4<f32>(xh), st.y, rs.x, rs.y).x;
                dw[k] += v * xh;
                db[k] += v;
            }
        }
    }
    for (var k = 0u; k < NCOLS; k++) {
        let col = col_k(b, k, p.d);
        if (col < p.d) {
            partials[b.blk * p.d + col] = vec2<f32>(dw[k], db[k]);
        }
    }
}

// The chunk's (sample, channel) run of thread t (TPR threads per run), its group row's
// statistics, and whether it exists (threads past the last run still join the reductions).
struct ThreadRun {
    lane: u32,
    cr: u32,
    valid: bool,
    st: vec2<f32>,
}

fn thread_run(wid: vec3<u32>, l: Lane) -> ThreadRun {
    let t = thread_index(l);
    let cr = group_id(wid) * (WG / TPR) + t / TPR;
    let valid = cr < p.rows * p.cpg;
    var st = vec2<f32>(0.0);
    if (valid) {
        st = stats(cr / p.cpg);
    }
    return ThreadRun(t % TPR, cr, valid, st);
}

@compute @workgroup_size(WG)
fn rows_bwd_chan(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let c = thread_run(wid, l);
    let st = c.st;
    var dw = 0.0;
    var db = 0.0;
    if (VEC) {
        let base = (p.off + c.cr * p.run) / 4u;
        let mv = vec4<f32>(st.x);
        var dw4 = vec4<f32>(0.0);
        var db4 = vec4<f32>(0.0);
        for (var j = c.lane; c.valid && j < p.run / 4u; j += TPR) {
            let v = ld_dy4(base + j);
            dw4 += v * ((ld_x4(base + j) - mv) * st.y);
            db4 += v;
        }
        dw = dw4.x + dw4.y + dw4.z + dw4.w;
        db = db4.x + db4.y + db4.z + db4.w;
    } else {
        let base = p.off + c.cr * p.run;
        for (var i = c.lane; c.valid && i < p.run; i += TPR) {
            let v = ld_dy(base + i);
            dw += v * ((ld_x(base + i) - st.x) * st.y);
            db += v;
        }
    }
    dw = reduce_sum(dw, l);
    db = reduce_sum(db, l);
    if (c.valid && c.lane == 0u) {
        partials[p.row0 * p.cpg + c.cr] = vec2<f32>(dw, db);
    }
}

// The sums (a, b) of the group row of chunk run `cr` from its channels' partials (every thread
// the same order), and the run's weight.
fn run_sums(cr: u32) -> vec3<f32> {
    let grow = p.row0 + cr / p.cpg;
    let c0 = (grow % p.groups) * p.cpg;
    var a = 0.0;
    var b = 0.0;
    for (var k = 0u; k < p.cpg; k++) {
        let q = partials[grow * p.cpg + k];
        let w = weight_at(c0 + k);
        a += w * q.y;
        b += w * q.x;
    }
    return vec3<f32>(a, b, weight_at(c0 + cr % p.cpg));
}

@compute @workgroup_size(WG)
fn rows_bwd_chan_dx(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let c = thread_run(wid, l);
    if (!c.valid) {
        return;
    }
    let st = c.st;
    let s = run_sums(c.cr);
    let base = (p.off + c.cr * p.run) / 4u;
    let mv = vec4<f32>(st.x);
    for (var j = c.lane; j < p.run / 4u; j += TPR) {
        let xh = (ld_x4(base + j) - mv) * st.y;
        dx[base + j] = narrow4(dx_of(ld_dy4(base + j) * s.z, xh, st.y, s.x, s.y));
    }
}

@compute @workgroup_size(WG)
fn rows_bwd_chan_dx_scalar(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let c = thread_run(wid, l);
    if (!c.valid) {
        return;
    }
    let st = c.st;
    let s = run_sums(c.cr);
    let base = p.off + c.cr * p.run;
    for (var i = c.lane; i < p.run; i += TPR) {
        let xh = (ld_x(base + i) - st.x) * st.y;
        dx1[base + i] = dx_of(vec4<f32>(ld_dy(base + i) * s.z), vec4<f32>(xh), st.y, s.x, s.y).x;
    }
}

// Half rows that do not fill whole vec4s (after rows_bwd_sums, or rows_bwd_chan for
// CHANNEL_AFFINE): dx one whole word (two elements, each with its own row's sums) per thread.
// The chunk starts on a whole word (an even element); an odd count's last word gets a copy of
// the last element in its padding half.
@compute @workgroup_size(WG)
fn rows_bwd_dx_pair(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let w = group_id(wid) * WG + t;
    let n = p.rows * p.d;
    if (2u * w >= n) {
        return;
    }
    var o = vec2<f32>(0.0);
    for (var k = 0u; k < 2u; k++) {
        let e = min(2u * w + k, n - 1u);
        let row = e / p.d;
        let st = stats(row);
        let rs = rowsums[row];
        let g = ld_dy(p.off + e) * weight1(row, e % p.d);
        let xh = (ld_x(p.off + e) - st.x) * st.y;
        o[k] = dx_of(vec4<f32>(g), vec4<f32>(xh), st.y, rs.x, rs.y).x;
    }
    dx2[p.off / 2u + w] = narrow2(o);
}

// CHANNEL_AFFINE's twin of rows_bwd_dx_pair: each element's sums from its run's channels.
@compute @workgroup_size(WG)
fn rows_bwd_chan_dx_pair(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let w = group_id(wid) * WG + t;
    let n = p.rows * p.cpg * p.run;
    if (2u * w >= n) {
        return;
    }
    var o = vec2<f32>(0.0);
    for (var k = 0u; k < 2u; k++) {
        let e = min(2u * w + k, n - 1u);
        let cr = e / p.run;
        let st = stats(cr / p.cpg);
        let s = run_sums(cr);
        let xh = (ld_x(p.off + e) - st.x) * st.y;
        o[k] = dx_of(vec4<f32>(ld_dy(p.off + e) * s.z), vec4<f32>(xh), st.y, s.x, s.y).x;
    }
    dx2[p.off / 2u + w] = narrow2(o);
}

// The column sums of rows_bwd_cols_scalar without dx (half rows that do not fill whole vec4s,
// whose dx rows_bwd_dx_pair writes): the same walk, so the same sums. (A kernel of its own:
// wgpu's derived layouts need every binding a kernel reaches bound, dx1 and rowsums included.)
@compute @workgroup_size(WG)
fn rows_bwd_colsums_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let b = col_thread(wid, t, p.d);
    if (!b.valid) {
        return;
    }
    var dw: array<f32, MAX_COLS>;
    var db: array<f32, MAX_COLS>;
    for (var r = b.r0; r < b.r1; r++) {
        let st = stats(r);
        let row = p.off + r * p.d;
        for (var k = 0u; k < NCOLS; k++) {
            let col = col_k(b, k, p.d);
            if (col < p.d) {
                let v = ld_dy(row + col);
                dw[k] += v * ((ld_x(row + col) - st.x) * st.y);
                db[k] += v;
            }
        }
    }
    for (var k = 0u; k < NCOLS; k++) {
        let col = col_k(b, k, p.d);
        if (col < p.d) {
            partials[b.blk * p.d + col] = vec2<f32>(dw[k], db[k]);
        }
    }
}

@compute @workgroup_size(WG)
fn rows_bwd_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let col = group_id(wid) * WG + t;
    if (col >= p.d) {
        return;
    }
    var acc = vec2<f32>(0.0);
    if (p.accumulate != 0u) {
        if (HAS_W) {
            acc.x = dweight[col];
        }
        if (HAS_B) {
            acc.y = dbias[col];
        }
    }
    for (var b = 0u; b < p.blocks; b++) {
        acc += partials[b * p.d + col];
    }
    if (HAS_W) {
        dweight[col] = acc.x;
    }
    if (HAS_B) {
        dbias[col] = acc.y;
    }
}
