// Statistics over contiguous rows, and the normalized output: LayerNorm (a row per sample's
// trailing dims), RMSNorm (CENTER off), and GroupNorm / InstanceNorm channels-first (a row per
// (sample, group): the group's channels are contiguous), whose weight and bias are per channel
// (CHANNEL_AFFINE).
//
// Entry points:
// - rows_norm:        one group of TPR threads per row (several rows per workgroup when TPR < WG),
//                     rows of whole vec4s (d % 4 == 0).
//                     Statistics (an exact two-pass) and normalization in one dispatch; the first
//                     ROW_CACHE vec4s each thread reads stay in registers, so x is read from
//                     memory once for rows up to TPR * ROW_CACHE * 4 elements.
// - rows_norm_scalar: the same for any d, one value at a time, y written through its f32 view.
// - rows_partial, rows_merge, rows_apply(_scalar): the split-row path for long rows and few
//                     rows: per-segment Welford partials (a group of TPR threads per segment, an
//                     exact two-pass from cache), a per-row Chan merge, then an elementwise pass.
//                     Every workgroup has work even with one row.
//
// Statistics are of x - pivot, with pivot = the median of the row's first three elements: for
// rows with a large mean (1e6 with std 1) x - pivot is exact, so the normalized output keeps
// full precision, and one outlier among those three (a 1e5 among values near 1) does not make
// every term of the sums near -1e5, whose rounding would cost the mean and the output 4-5
// digits (measured: LayerNorm [64, 65536] with x[0] = 1e5, mean off by 1e-2). RMSNorm
// has no mean: its statistic is the sum of squares of x itself (a sum of positive terms, no
// cancellation), and its pivot is 0.
//
// Stores: a thread writes whole elements of the array it stores to. Rows with d % 4 != 0 share
// vec4s with their neighbours, so their kernels write y through `y1` (array<f32>): a store to
// one component of a vec4 may rewrite the whole vector (Metal does), losing a neighbour's
// value.
//
// Element storage (f32, f16, bf16; see dtype_*.wgsl): x and y are arrays of XV (four elements),
// loaded through widen4 and stored through narrow4, so statistics and normalization are f32 and
// a half output is rounded once, at the store. Half rows with d % 4 != 0 start mid-word: they
// take the split path, whose last pass (rows_apply_pair) writes whole words, each element with
// its own row's statistics, so no two threads write one word.
//
// ADD (forward_add): the kernels normalize x + res, rounded to the storage type as an unfused
// add would store it, and write that sum to sum_out (or, IN_PLACE, back into res). Rows of whole
// vec4s only (the host adds first otherwise).

struct RowsParams {
    rows: u32,
    d: u32,
    // Element offsets of this chunk's first row inside the x and y bindings.
    x_off: u32,
    y_off: u32,
    // Offset of this chunk's first row inside the mean/rstd bindings.
    stat_off: u32,
    // Workgroups along x; further row groups continue along y (65535 per dimension).
    grid_x: u32,
    eps: f32,
    // Split-row path: segments per row and vec4s per segment.
    segs: u32,
    seg_v4: u32,
    // CHANNEL_AFFINE: element i of global row r belongs to channel (r % groups) * cpg + i / run.
    groups: u32,
    cpg: u32,
    run: u32,
    // Global index of this chunk's first row.
    row0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// rows_partial: rows are vec4-aligned (d % 4 == 0): vector loads. Otherwise scalar loads.
override VEC: bool = true;
override HAS_W: bool = false;
override HAS_B: bool = false;
// Subtract the mean (LayerNorm, GroupNorm, InstanceNorm); off for RMSNorm.
override CENTER: bool = true;
// Weight and bias per channel (see RowsParams) rather than per element of the row.
override CHANNEL_AFFINE: bool = false;

// ROW_CACHE (vec4s of a row each thread keeps in registers) is prepended by the host: sized from
// the row length, so short rows do not hold registers (and occupancy) they never use.

@group(0) @binding(0) var<uniform> p: RowsParams;
@group(0) @binding(1) var<storage, read> x: array<XV>;
@group(0) @binding(2) var<storage, read_write> y: array<XV>;
@group(0) @binding(3) var<storage, read> gamma: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> beta: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd_out: array<f32>;
// Split-row scratch: per (row, segment) Welford partials, then per row (mean_shifted, rstd).
@group(0) @binding(7) var<storage, read_write> partials: array<vec4<f32>>;
// y as scalars, for the kernels whose rows do not fill whole vec4s (the same buffer as y).
@group(0) @binding(8) var<storage, read_write> y1: array<f32>;
// y as pairs of elements (whole u32 words of halves), for rows_apply_pair.
@group(0) @binding(9) var<storage, read_write> y2: array<XW>;
// ADD: the residual and the sum written for the caller (x's shape and offsets). IN_PLACE, the
// residual's buffer is bound once, as sum_out, and read there (a buffer bound twice in one
// dispatch, once writable, is a validation error).
@group(0) @binding(10) var<storage, read> res: array<XV>;
@group(0) @binding(11) var<storage, read_write> sum_out: array<XV>;

// rows_norm's statistics from one read of x (CPU adapters, no ADD, rows longer than
// ROW_CACHE vec4s per lane): an exact two-pass over each chunk of ONE_READ_CHUNK vec4s a lane
// holds in registers, Chan merges between chunks and lanes; the normalize pass then reads x a
// second time, not a third. Costs a division per chunk; on lavapipe the time follows loads per
// lane, not arithmetic.
override ONE_READ: bool = false;
const ONE_READ_CHUNK: u32 = 8u;
// ONE_READ: rows each group of TPR threads normalizes (up to MAX_PER_LANE). With a weight or
// bias per element, each of their vec4s is then loaded once for all of them: on lavapipe those
// were 2 of the 5 loads and stores per vec4.
override PER_LANE: u32 = 1u;
const MAX_PER_LANE: u32 = 4u;

// Normalize x + residual and store the sum (rows of whole vec4s).
override ADD: bool = false;
// ADD: the residual is read from sum_out and the sum written over it.
override IN_PLACE: bool = false;

// The four values at vec4 index k of the input, widened: x, or with ADD the sum x + residual
// rounded to the storage type (what an unfused add would have stored).
fn load_in(k: u32) -> vec4<f32> {
    let v = widen4(x[k]);
    if (ADD) {
        var r: XV;
        if (IN_PLACE) {
            r = sum_out[k];
        } else {
            r = res[k];
        }
        return rounded4(v + widen4(r));
    }
    return v;
}

// ADD: stores the sum at vec4 index k (the input's offsets). Each index is stored by the thread
// that loaded it, after its last load.
fn put_sum(k: u32, v: vec4<f32>) {
    sum_out[k] = narrow4(v);
}

fn ld(i: u32) -> f32 {
    return load_in(i >> 2u)[i & 3u];
}

// The pivot of a row of whole vec4s, from its first vec4 (see the header).
fn pivot4(v: vec4<f32>) -> f32 {
    return med3(v.x, v.y, v.z);
}

// The pivot of the row starting at element xb, any length: rows of whole vec4s start on one.
fn pivot_at(xb: u32) -> f32 {
    if (VEC) {
        return pivot4(load_in(xb >> 2u));
    }
    if (p.d < 3u) {
        return ld(xb);
    }
    return med3(ld(xb), ld(xb + 1u), ld(xb + 2u));
}

fn param1(i: u32, bias: bool) -> f32 {
    if (bias) {
        return beta[i >> 2u][i & 3u];
    }
    return gamma[i >> 2u][i & 3u];
}

// A channel's run in a row (CHANNEL_AFFINE), a constant of the pipeline where the host fixes
// it (CPU adapters: see K_RUN in apply.wgsl), else from p.
override K_RUN: u32 = 0u;
// The row length, the same for rows_apply's division per element.
override K_D: u32 = 0u;

fn row_len() -> u32 {
    if (K_D != 0u) {
        return K_D;
    }
    return p.d;
}

fn run_len() -> u32 {
    if (K_RUN != 0u) {
        return K_RUN;
    }
    return p.run;
}

// The affine parameter index of element i of chunk row `row`.
fn affine_index(row: u32, i: u32) -> u32 {
    if (CHANNEL_AFFINE) {
        return ((p.row0 + row) % p.groups) * p.cpg + i / run_len();
    }
    return i;
}

// Elements 4j .. 4j + 3 of chunk row `row`.
fn affine4(t: vec4<f32>, row: u32, j: u32) -> vec4<f32> {
    var o = t;
    if (CHANNEL_AFFINE) {
        // Channel runs of a multiple of 4 keep a vec4 in one channel; others may straddle two.
        if (run_len() % 4u == 0u) {
            let c = affine_index(row, 4u * j);
            if (HAS_W) {
                o = o * param1(c, false);
            }
            if (HAS_B) {
                o = o + param1(c, true);
            }
            return o;
        }
        for (var k = 0u; k < 4u; k++) {
            o[k] = affine1(t[k], row, 4u * j + k);
        }
        return o;
    }
    if (HAS_W) {
        o = o * gamma[j];
    }
    if (HAS_B) {
        o = o + beta[j];
    }
    return o;
}

fn affine1(t: f32, row: u32, i: u32) -> f32 {
    let c = affine_index(row, i);
    var o = t;
    if (HAS_W) {
        o = o * param1(c, false);
    }
    if (HAS_B) {
        o = o + param1(c, true);
    }
    return o;
}

fn group_id(wid: vec3<u32>) -> u32 {
    return wid.x + wid.y * p.grid_x;
}

// The row of thread t of workgroup `wid`. Threads past the last row still take part in the
// reductions' barriers.
fn row_of(wid: vec3<u32>, t: u32) -> u32 {
    return group_id(wid) * (WG / TPR) + t / TPR;
}

fn put_stats(row: u32, mean: f32, rstd: f32) {
    if (CENTER) {
        mean_out[p.stat_off + row] = mean;
    }
    rstd_out[p.stat_off + row] = rstd;
}

// ONE_READ: Welford statistics of this lane's vec4s of the row (x - pivot), chunk by chunk.
fn one_read_stats(xb: u32, lane: u32, valid: bool, nv: u32, pv: vec4<f32>) -> Welford {
    var acc = welford_empty();
    for (var j0 = lane; valid && j0 < nv; j0 += ONE_READ_CHUNK * TPR) {
        var v: array<vec4<f32>, ONE_READ_CHUNK>;
        var s4 = vec4<f32>(0.0);
        var n = 0.0;
        for (var c = 0u; c < ONE_READ_CHUNK; c++) {
            let j = j0 + c * TPR;
            v[c] = vec4<f32>(0.0);
            if (j < nv) {
                v[c] = load_in(xb + j) - pv;
                s4 += v[c];
                n += 4.0;
            }
        }
        // Without CENTER (RMSNorm) every chunk's mean is 0: the merges sum the squares.
        let m = select(0.0, (s4.x + s4.y + s4.z + s4.w) / n, CENTER);
        var q4 = vec4<f32>(0.0);
        for (var c = 0u; c < ONE_READ_CHUNK; c++) {
            if (j0 + c * TPR < nv) {
                let e = v[c] - vec4<f32>(m);
                q4 += e * e;
            }
        }
        acc = welford_merge(acc, Welford(n, m, q4.x + q4.y + q4.z + q4.w));
    }
    return acc;
}

// ONE_READ: statistics of each of the group's PER_LANE rows from one read (one_read_stats),
// then the output from a second read.
fn rows_norm_one_read(wid: vec3<u32>, l: Lane) {
    let t = thread_index(l);
    let lane = t % TPR;
    let first = row_of(wid, t) * PER_LANE;
    let nv = p.d / 4u;
    // Per row: x and y bases (vec4s), and (pivot, mean of x - pivot, rstd).
    var xbs: array<u32, MAX_PER_LANE>;
    var ybs: array<u32, MAX_PER_LANE>;
    var st: array<vec3<f32>, MAX_PER_LANE>;
    for (var r = 0u; r < PER_LANE; r++) {
        let row = first + r;
        let valid = row < p.rows;
        xbs[r] = (p.x_off + row * p.d) / 4u;
        ybs[r] = (p.y_off + row * p.d) / 4u;
        var pivot = 0.0;
        if (valid && CENTER) {
            pivot = pivot4(load_in(xbs[r]));
        }
        let w = reduce_welford(one_read_stats(xbs[r], lane, valid, nv, vec4<f32>(pivot)), l);
        let rstd = inverseSqrt(w.m2 / f32(p.d) + p.eps);
        if (valid && lane == 0u) {
            put_stats(row, pivot + w.mean, rstd);
        }
        st[r] = vec3<f32>(pivot, w.mean, rstd);
    }
    if (PER_LANE == 1u) {
        if (first < p.rows) {
            let s = st[0];
            norm_tail(first, lane, 0u, xbs[0], ybs[0], vec4<f32>(s.x), vec4<f32>(s.y), s.z);
        }
        return;
    }
    // The same arithmetic as affine4 (no CHANNEL_AFFINE here: the host gives those one row).
    for (var j = lane; j < nv; j += TPR) {
        var g = vec4<f32>(1.0);
        var b = vec4<f32>(0.0);
        if (HAS_W) {
            g = gamma[j];
        }
        if (HAS_B) {
            b = beta[j];
        }
        for (var r = 0u; r < PER_LANE; r++) {
            if (first + r < p.rows) {
                let s = st[r];
                var o = (load_in(xbs[r] + j) - vec4<f32>(s.x) - vec4<f32>(s.y)) * s.z;
                if (HAS_W) {
                    o = o * g;
                }
                if (HAS_B) {
                    o = o + b;
                }
                y[ybs[r] + j] = narrow4(o);
            }
        }
    }
}

@compute @workgroup_size(WG)
fn rows_norm(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    if (ONE_READ) {
        rows_norm_one_read(wid, l);
        return;
    }
    let t = thread_index(l);
    let lane = t % TPR;
    let row = row_of(wid, t);
    let valid = row < p.rows;
    let xb = (p.x_off + row * p.d) / 4u;
    let yb = (p.y_off + row * p.d) / 4u;
    var pivot = 0.0;
    if (valid && CENTER) {
        pivot = pivot4(load_in(xb));
    }
    let nv = p.d / 4u;
    let pv = vec4<f32>(pivot);
    // Exact two-pass over the row: the sum of x - pivot gives the mean, then the sum of squared
    // deviations from it. The first ROW_CACHE vec4s of each thread stay in registers (as
    // loaded: with ADD, the sum to store); the rest are read again (from cache: the row was
    // just read).
    var cache: array<vec4<f32>, ROW_CACHE>;
    var m = 0.0;
    var s4 = vec4<f32>(0.0);
    for (var c = 0u; c < ROW_CACHE; c++) {
        // Every slot is written (zero past the row), so the compiler can drop the array's
        // zero-initialisation: measurable on CPU adapters.
        let j = lane + c * TPR;
        var v = vec4<f32>(0.0);
        if (valid && j < nv) {
            v = load_in(xb + j);
            s4 += v - pv;
        }
        cache[c] = v;
    }
    if (CENTER) {
        for (var j = lane + ROW_CACHE * TPR; valid && j < nv; j += TPR) {
            s4 += load_in(xb + j) - pv;
        }
        m = reduce_sum(s4.x + s4.y + s4.z + s4.w, l) / f32(p.d);
    }
    let mv = vec4<f32>(m);
    var q4 = vec4<f32>(0.0);
    for (var c = 0u; c < ROW_CACHE; c++) {
        let j = lane + c * TPR;
        if (valid && j < nv) {
            let e = cache[c] - pv - mv;
            q4 += e * e;
        }
    }
    for (var j = lane + ROW_CACHE * TPR; valid && j < nv; j += TPR) {
        // ADD: the sum is stored here, so the last pass reads one tensor instead of two. Not
        // earlier with CENTER: in place, the other lanes may still be reading the row's first
        // value (the pivot) from the residual, which every lane has passed at the reduction.
        let a = load_in(xb + j);
        if (ADD) {
            put_sum(xb + j, a);
        }
        let e = a - pv - mv;
        q4 += e * e;
    }
    let q = reduce_sum(q4.x + q4.y + q4.z + q4.w, l);
    if (!valid) {
        return;
    }
    let rstd = inverseSqrt(q / f32(p.d) + p.eps);
    if (lane == 0u) {
        put_stats(row, pivot + m, rstd);
    }
    for (var c = 0u; c < ROW_CACHE; c++) {
        let j = lane + c * TPR;
        if (j < nv) {
            y[yb + j] = narrow4(affine4((cache[c] - pv - mv) * rstd, row, j));
            if (ADD) {
                put_sum(xb + j, cache[c]);
            }
        }
    }
    norm_tail(row, lane, ROW_CACHE, xb, yb, pv, mv, rstd);
}

// rows_norm's output from the lane's `cached`-th vec4 of the row on, read again from x (or,
// with ADD, from this thread's stored sum).
fn norm_tail(
    row: u32,
    lane: u32,
    cached: u32,
    xb: u32,
    yb: u32,
    pv: vec4<f32>,
    mv: vec4<f32>,
    rstd: f32,
) {
    let nv = p.d / 4u;
    // Per-channel weight and bias with whole vec4s per channel: a channel's run at a time, its
    // weight and bias loaded once (CPU adapters load a value once per lane even when all lanes
    // read the same address); the same arithmetic as affine4. (A loop over one "run" for every
    // row was measurably slower for LayerNorm on lavapipe, hence two loops.)
    if (CHANNEL_AFFINE && run_len() % 4u == 0u) {
        let rv = run_len() / 4u;
        var j = lane + cached * TPR;
        while (j < nv) {
            let end = min(nv, (j / rv + 1u) * rv);
            let c = affine_index(row, 4u * j);
            var w = vec4<f32>(1.0);
            var b = vec4<f32>(0.0);
            if (HAS_W) {
                w = vec4<f32>(param1(c, false));
            }
            if (HAS_B) {
                b = vec4<f32>(param1(c, true));
            }
            for (; j < end; j += TPR) {
                var o = (norm_input(xb + j) - pv - mv) * rstd;
                if (HAS_W) {
                    o = o * w;
                }
                if (HAS_B) {
                    o = o + b;
                }
                y[yb + j] = narrow4(o);
            }
        }
        return;
    }
    for (var j = lane + cached * TPR; j < nv; j += TPR) {
        y[yb + j] = narrow4(affine4((norm_input(xb + j) - pv - mv) * rstd, row, j));
    }
}

// rows_norm's input for its last pass at vec4 index k: x, or with ADD this thread's own stored
// sum, read back exactly (rounded to storage already).
fn norm_input(k: u32) -> vec4<f32> {
    if (ADD) {
        return widen4(sum_out[k]);
    }
    return load_in(k);
}

@compute @workgroup_size(WG)
fn rows_norm_scalar(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let t = thread_index(l);
    let lane = t % TPR;
    let row = row_of(wid, t);
    let valid = row < p.rows;
    let xb = p.x_off + row * p.d;
    let yb = p.y_off + row * p.d;
    var pivot = 0.0;
    if (valid && CENTER) {
        pivot = pivot_at(xb);
    }
    var m = 0.0;
    if (CENTER) {
        var s = 0.0;
        for (var i = lane; valid && i < p.d; i += TPR) {
            s += ld(xb + i) - pivot;
        }
        m = reduce_sum(s, l) / f32(p.d);
    }
    var q = 0.0;
    for (var i = lane; valid && i < p.d; i += TPR) {
        let e = ld(xb + i) - pivot - m;
        q += e * e;
    }
    q = reduce_sum(q, l);
    if (!valid) {
        return;
    }
    let rstd = inverseSqrt(q / f32(p.d) + p.eps);
    if (lane == 0u) {
        put_stats(row, pivot + m, rstd);
    }
    for (var i = lane; i < p.d; i += TPR) {
        let v = ld(xb + i) - pivot;
        y1[yb + i] = affine1((v - m) * rstd, row, i);
    }
}

// One group of TPR threads per (row, segment); groups run over rows * segs. The segment's
// statistics are an exact two-pass (its mean, then squared deviations from it), re-reading the
// segment from cache; segments combine with Chan's merge in rows_merge.
@compute @workgroup_size(WG)
fn rows_partial(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let t = thread_index(l);
    let lane = t % TPR;
    let g = group_id(wid) * (WG / TPR) + t / TPR;
    let valid = g < p.rows * p.segs;
    let row = g / p.segs;
    let seg = g % p.segs;
    let xb = p.x_off + row * p.d;
    var pivot = 0.0;
    if (valid && CENTER) {
        pivot = pivot_at(xb);
    }
    let pv = vec4<f32>(pivot);
    // Element range [i0, i1) of the segment; vec4 range [i0 / 4, i1 / 4) when VEC.
    let i0 = min(seg * p.seg_v4 * 4u, p.d);
    var i1 = min(i0 + p.seg_v4 * 4u, p.d);
    if (!valid) {
        i1 = i0;
    }
    let n = f32(i1 - i0);
    var m = 0.0;
    if (CENTER) {
        var s4 = vec4<f32>(0.0);
        if (VEC) {
            for (var j = i0 / 4u + lane; j < i1 / 4u; j += TPR) {
                s4 += load_in(xb / 4u + j) - pv;
            }
        } else {
            for (var i = i0 + lane; i < i1; i += TPR) {
                s4.x += ld(xb + i) - pivot;
            }
        }
        m = reduce_sum(s4.x + s4.y + s4.z + s4.w, l) / max(n, 1.0);
    }
    let mv = vec4<f32>(m);
    var q4 = vec4<f32>(0.0);
    if (VEC) {
        for (var j = i0 / 4u + lane; j < i1 / 4u; j += TPR) {
            let e = load_in(xb / 4u + j) - pv - mv;
            q4 += e * e;
        }
    } else {
        for (var i = i0 + lane; i < i1; i += TPR) {
            let e = ld(xb + i) - pivot - m;
            q4.x += e * e;
        }
    }
    let q = reduce_sum(q4.x + q4.y + q4.z + q4.w, l);
    if (valid && lane == 0u) {
        partials[g] = vec4<f32>(n, m, q, 0.0);
    }
}

// One thread per row: merges the row's segment partials in segment order. Without CENTER every
// partial's mean is 0, so the merge sums the squares.
@compute @workgroup_size(WG)
fn rows_merge(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = group_id(wid) * WG + lid;
    if (row >= p.rows) {
        return;
    }
    var acc = welford_empty();
    for (var s = 0u; s < p.segs; s++) {
        let q = partials[row * p.segs + s];
        acc = welford_merge(acc, Welford(q.x, q.y, q.z));
    }
    let rstd = inverseSqrt(acc.m2 / f32(p.d) + p.eps);
    var pivot = 0.0;
    if (CENTER) {
        pivot = pivot_at(p.x_off + row * p.d);
    }
    put_stats(row, pivot + acc.mean, rstd);
    // Stored after the partials of all rows, read by rows_apply with the pivot.
    partials[p.rows * p.segs + row] = vec4<f32>(acc.mean, rstd, pivot, 0.0);
}

// Elementwise, one vec4 per thread, like the copy kernel: measured on lavapipe, a workgroup
// looping over a segment ran 1.5x slower than this flat layout. Rows of whole vec4s.
@compute @workgroup_size(WG)
fn rows_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let e = group_id(wid) * WG + t;
    let nv = row_len() / 4u;
    if (e >= p.rows * nv) {
        return;
    }
    let row = e / nv;
    let st = partials[p.rows * p.segs + row];
    let a = load_in(p.x_off / 4u + e);
    let v = a - vec4<f32>(st.z);
    y[p.y_off / 4u + e] = narrow4(affine4((v - vec4<f32>(st.x)) * st.y, row, e % nv));
    if (ADD) {
        put_sum(p.x_off / 4u + e, a);
    }
}

// The same, one value per thread, for any d.
@compute @workgroup_size(WG)
fn rows_apply_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let e = group_id(wid) * WG + t;
    let d = row_len();
    if (e >= p.rows * d) {
        return;
    }
    let row = e / d;
    let st = partials[p.rows * p.segs + row];
    let v = ld(p.x_off + e) - st.z;
    y1[p.y_off + e] = affine1((v - st.x) * st.y, row, e % d);
}

// The same for half storage and any d: one whole word (two elements) per thread, each element
// normalized with its own row's statistics, so rows that start mid-word never share a word
// between threads. The chunk starts on a whole word (an even element); when its count is odd,
// the last word's high half is the buffer's padding and gets a copy of the last element.
@compute @workgroup_size(WG)
fn rows_apply_pair(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let w = group_id(wid) * WG + t;
    let n = p.rows * p.d;
    if (2u * w >= n) {
        return;
    }
    var o = vec2<f32>(0.0);
    for (var k = 0u; k < 2u; k++) {
        let e = min(2u * w + k, n - 1u);
        let row = e / p.d;
        let st = partials[p.rows * p.segs + row];
        let v = ld(p.x_off + e) - st.z;
        o[k] = affine1((v - st.x) * st.y, row, e % p.d);
    }
    y2[p.y_off / 2u + w] = narrow2(o);
}
