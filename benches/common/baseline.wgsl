// Reference kernels for the benchmarks, not for users:
// - copy_vec4: y = x with vec4 loads and stores; the bandwidth roofline for a kernel that reads
//   x once and writes y once.
// - naive_*: the unfused multi-pass norms most composite implementations run (x.mean(),
//   x.var(), then an elementwise pass): one dispatch each, a workgroup per row or channel with a
//   plain binary-tree reduction, scalar loads, and x read three times.
// - naive_bwd_*: the unfused backward (per-statistic sums, the elementwise dx, the parameter
//   sums): three dispatches, each reading x and dy; a workgroup per statistic or channel, a
//   thread per column of rows.

struct BaseParams {
    work: u32,   // threads with work in copy / apply kernels, rows or channels in reductions
    d: u32,      // LayerNorm row length
    c: u32,      // BatchNorm channels
    s: u32,      // BatchNorm run length (spatial size; 1 for channels-last)
    n: u32,      // BatchNorm runs (batch items, or rows for channels-last)
    grid_x: u32,
    eps: f32,
    groups: u32, // GroupNorm channels-last backward (MODE 2)
}

// Standalone (the library's preludes are not prepended): its own workgroup size.
override WG: u32 = 256u;
const MAX_WG: u32 = 256u;

override HAS_W: bool = false;
override HAS_B: bool = false;
// naive_bwd_*: which elements a statistic covers. 0: rows of d (LayerNorm, RMSNorm; GroupNorm
// channels-first with c > 0: parameter per channel of runs s); 1: BatchNorm, channel k of
// [n, c, s]; 2: GroupNorm channels-last, (sample, group) k of [n, s, c].
override MODE: u32 = 0u;
override CENTER: bool = true;

@group(0) @binding(0) var<uniform> bp: BaseParams;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> stat_mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> stat_var: array<f32>;
@group(0) @binding(5) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> b: array<vec4<f32>>;
// The output as scalars for the naive elementwise passes (a store to one component of a vec4
// may rewrite the whole vector and lose a neighbour's value).
@group(0) @binding(7) var<storage, read_write> dst1: array<f32>;
// The backward's dy, its per-statistic sums (sum g, sum g * xhat) and per-parameter sums
// (dweight, dbias). stat_mean / stat_var hold the saved mean and rstd.
@group(0) @binding(8) var<storage, read> dy1: array<f32>;
@group(0) @binding(9) var<storage, read_write> sums: array<vec2<f32>>;
@group(0) @binding(10) var<storage, read_write> psums: array<vec2<f32>>;

var<workgroup> tree: array<f32, MAX_WG>;

fn flat_id(wid: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * bp.grid_x) * WG + lid;
}

fn src1(i: u32) -> f32 {
    return src[i >> 2u][i & 3u];
}

fn tree_sum(v: f32, lid: u32) -> f32 {
    tree[lid] = v;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off = off >> 1u) {
        if (lid < off) {
            tree[lid] = tree[lid] + tree[lid + off];
        }
        workgroupBarrier();
    }
    return tree[0];
}

@compute @workgroup_size(WG)
fn copy_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_id(wid, lid);
    if (i < bp.work) {
        dst[i] = src[i];
    }
}

@compute @workgroup_size(WG)
fn naive_ln_mean(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * bp.grid_x;
    var acc = 0.0;
    if (row < bp.work) {
        for (var i = lid; i < bp.d; i += WG) {
            acc += src1(row * bp.d + i);
        }
    }
    let total = tree_sum(acc, lid);
    if (row < bp.work && lid == 0u) {
        stat_mean[row] = total / f32(bp.d);
    }
}

@compute @workgroup_size(WG)
fn naive_ln_var(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * bp.grid_x;
    var acc = 0.0;
    if (row < bp.work) {
        let m = stat_mean[row];
        for (var i = lid; i < bp.d; i += WG) {
            let t = src1(row * bp.d + i) - m;
            acc += t * t;
        }
    }
    let total = tree_sum(acc, lid);
    if (row < bp.work && lid == 0u) {
        stat_var[row] = total / f32(bp.d);
    }
}

@compute @workgroup_size(WG)
fn naive_ln_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = flat_id(wid, lid);
    if (e >= bp.work) {
        return;
    }
    let row = e / bp.d;
    let j = e % bp.d;
    var o = (src1(e) - stat_mean[row]) / sqrt(stat_var[row] + bp.eps);
    if (HAS_W) {
        o = o * w[j >> 2u][j & 3u];
    }
    if (HAS_B) {
        o = o + b[j >> 2u][j & 3u];
    }
    dst1[e] = o;
}

// BatchNorm: a workgroup per channel walks the channel's n * s values.
fn bn_index(ch: u32, i: u32) -> u32 {
    return ((i / bp.s) * bp.c + ch) * bp.s + i % bp.s;
}

@compute @workgroup_size(WG)
fn naive_bn_mean(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let ch = wid.x + wid.y * bp.grid_x;
    var acc = 0.0;
    if (ch < bp.c) {
        for (var i = lid; i < bp.n * bp.s; i += WG) {
            acc += src1(bn_index(ch, i));
        }
    }
    let total = tree_sum(acc, lid);
    if (ch < bp.c && lid == 0u) {
        stat_mean[ch] = total / f32(bp.n * bp.s);
    }
}

@compute @workgroup_size(WG)
fn naive_bn_var(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let ch = wid.x + wid.y * bp.grid_x;
    var acc = 0.0;
    if (ch < bp.c) {
        let m = stat_mean[ch];
        for (var i = lid; i < bp.n * bp.s; i += WG) {
            let t = src1(bn_index(ch, i)) - m;
            acc += t * t;
        }
    }
    let total = tree_sum(acc, lid);
    if (ch < bp.c && lid == 0u) {
        stat_var[ch] = total / f32(bp.n * bp.s);
    }
}

@compute @workgroup_size(WG)
fn naive_bn_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = flat_id(wid, lid);
    if (e >= bp.work) {
        return;
    }
    let ch = (e / bp.s) % bp.c;
    var o = (src1(e) - stat_mean[ch]) / sqrt(stat_var[ch] + bp.eps);
    if (HAS_W) {
        o = o * w[ch >> 2u][ch & 3u];
    }
    if (HAS_B) {
        o = o + b[ch >> 2u][ch & 3u];
    }
    dst1[e] = o;
}

// ---- The naive backward ----

// Values per statistic.
fn bwd_len() -> u32 {
    switch MODE {
        case 1u: { return bp.n * bp.s; }
        case 2u: { return bp.s * (bp.c / bp.groups); }
        default: { return bp.d; }
    }
}

// Element i of statistic k.
fn bwd_elem(k: u32, i: u32) -> u32 {
    switch MODE {
        case 1u: { return bn_index(k, i); }
        case 2u: {
            let cpg = bp.c / bp.groups;
            let first = (k / bp.groups) * bp.s * bp.c + (k % bp.groups) * cpg;
            return first + (i / cpg) * bp.c + i % cpg;
        }
        default: { return k * bp.d + i; }
    }
}

fn bwd_stat(e: u32) -> u32 {
    switch MODE {
        case 1u: { return (e / bp.s) % bp.c; }
        case 2u: { return (e / (bp.s * bp.c)) * bp.groups + (e % bp.c) / (bp.c / bp.groups); }
        default: { return e / bp.d; }
    }
}

fn bwd_param(e: u32) -> u32 {
    if (MODE == 2u) {
        return e % bp.c;
    }
    if (MODE == 1u || bp.c > 0u) {
        return (e / bp.s) % bp.c;
    }
    return e % bp.d;
}

fn bwd_w(e: u32) -> f32 {
    if (HAS_W) {
        let j = bwd_param(e);
        return w[j >> 2u][j & 3u];
    }
    return 1.0;
}

fn bwd_xhat(e: u32) -> f32 {
    let k = bwd_stat(e);
    var m = 0.0;
    if (CENTER) {
        m = stat_mean[k];
    }
    return (src1(e) - m) * stat_var[k];
}

@compute @workgroup_size(WG)
fn naive_bwd_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = wid.x + wid.y * bp.grid_x;
    var a = 0.0;
    var q = 0.0;
    if (k < bp.work) {
        for (var i = lid; i < bwd_len(); i += WG) {
            let e = bwd_elem(k, i);
            let g = dy1[e] * bwd_w(e);
            a += g;
            q += g * bwd_xhat(e);
        }
    }
    let ta = tree_sum(a, lid);
    workgroupBarrier();
    let tq = tree_sum(q, lid);
    if (k < bp.work && lid == 0u) {
        sums[k] = vec2<f32>(ta, tq);
    }
}

@compute @workgroup_size(WG)
fn naive_bwd_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = flat_id(wid, lid);
    if (e >= bp.work) {
        return;
    }
    let k = bwd_stat(e);
    let n = f32(bwd_len());
    var ma = 0.0;
    if (CENTER) {
        ma = sums[k].x / n;
    }
    let g = dy1[e] * bwd_w(e);
    dst1[e] = stat_var[k] * (g - ma - bwd_xhat(e) * sums[k].y / n);
}

// Per-channel dweight = sum(dy * xhat), dbias = sum(dy) (BatchNorm, GroupNorm): a workgroup per
// channel over its n * s values.
@compute @workgroup_size(WG)
fn naive_bwd_params(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = wid.x + wid.y * bp.grid_x;
    var dw = 0.0;
    var db = 0.0;
    for (var i = lid; j < bp.work && i < bp.n * bp.s; i += WG) {
        var e = ((i / bp.s) * bp.c + j) * bp.s + i % bp.s;
        if (MODE == 2u) {
            e = i * bp.c + j;
        }
        let v = dy1[e];
        dw += v * bwd_xhat(e);
        db += v;
    }
    let tw = tree_sum(dw, lid);
    workgroupBarrier();
    let tb = tree_sum(db, lid);
    if (lid == 0u && j < bp.work) {
        psums[j] = vec2<f32>(tw, tb);
    }
}

// Per-column sums of rows (LayerNorm, RMSNorm): a thread per column down all rows, neighbouring
// threads reading neighbouring columns (a plain column reduction).
@compute @workgroup_size(WG)
fn naive_bwd_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = flat_id(wid, lid);
    if (j >= bp.work) {
        return;
    }
    var dw = 0.0;
    var db = 0.0;
    for (var r = 0u; r < bp.n; r++) {
        let e = r * bp.d + j;
        let v = dy1[e];
        dw += v * bwd_xhat(e);
        db += v;
    }
    psums[j] = vec2<f32>(dw, db);
}
