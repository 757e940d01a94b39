// Statistics over strided data: each statistic covers channels over many rows, read in memory
// order. BatchNorm: one statistic per channel over (N, spatial), both layouts. GroupNorm and
// InstanceNorm channels-last: one statistic per (sample, group of cpg channels) over the
// sample's positions. The normalized output comes from `apply.wgsl`, with the per-(sample,
// channel) coefficients the finalize writes.
//
// Data is viewed as [n, c, s] runs. Channels-first tensors (BatchNorm only) have s = the spatial
// size; channels-last ones ([M, C], NHWC) are [M, c, 1], whose rows fall into samples of `spr`
// rows (BatchNorm: one sample of all M rows). A statistic slot is k = sample * groups + group.
//
// Training BatchNorm, or GroupNorm (four dispatches, no atomics):
//   channels_pivot      per slot, the median of the first three values of its first channel
//                       in its sample (channels-first; channels-last: the first value):
//                       statistics are of x - pivot, so means of 1e4 and more keep full
//                       precision.
//   channels_partial_cf / channels_partial_cl
//                       stage 1: (mean, m2) per (sample, channel, block), an exact two-pass over
//                       the block (re-read from cache), reading memory in its natural order.
//   channels_finalize   stage 2: per slot, Chan merge of its channels' partials in a fixed
//                       order, mean and invstd, BatchNorm's running statistics, and the apply
//                       coefficients of every channel of the slot.
// Inference BatchNorm: channels_eval_coef folds running_var, eps and gamma into one scale per
// channel. Both apply y = (x - centre) * scale + shift.
// Backward (the same statistics, layouts and blocks; see the end of this file):
//   channels_bwd_partial_cf / channels_bwd_partial_cl, channels_bwd_finalize,
//   channels_bwd_params, then apply.wgsl's apply_bwd_* for dx.
//
// Stores: every invocation writes whole elements of the array it stores to, never one component
// of a vec4 (an implementation may rewrite the whole vector, and Metal does, losing a
// neighbour's value): writers of the coefficient table use its f32 view `coef_w`.

struct ChannelsParams {
    n: u32,          // runs in the whole tensor (N, or M rows for channels-last)
    c: u32,
    s: u32,          // run length (spatial size; 1 for channels-last)
    runs: u32,       // runs covered by this dispatch (chunk)
    run0: u32,       // first run of this chunk
    x_off: u32,      // element offset of the chunk's first run inside the x binding
    nbr: u32,        // runs per block
    seg: u32,        // elements of a run per block (multiple of 4 when VEC)
    ssegs: u32,      // blocks along a run: ceil(s / seg)
    nbt: u32,        // blocks per (sample, channel)
    grid_x: u32,
    eps: f32,
    factor: f32,     // running-statistics weight of this batch (momentum, or 1 / batches)
    work: u32,       // work items of this dispatch
    spr: u32,        // runs per sample (BatchNorm: n)
    groups: u32,     // statistic slots per sample (BatchNorm: c)
    cpg: u32,        // channels per slot (BatchNorm: 1)
    plane: u32,      // coefficient plane length: samples with their own coefficients * cp
    k0: u32,         // first slot of this dispatch (pivot)
    _pad: u32,
}

// Stage 1 reads vec4s (CF: s % 4 == 0; CL: c % 4 == 0); scalar loads otherwise.
override VEC: bool = true;
override HAS_W: bool = false;
override HAS_B: bool = false;
override UPDATE: bool = false;    // update running statistics (BatchNorm training, tracking on)
override UNBIASED: bool = true;   // running_var from the unbiased batch variance (PyTorch)

@group(0) @binding(0) var<uniform> p: ChannelsParams;
// x in its element storage (dtype_*.wgsl): four elements per XV, widened to f32 on load.
@group(0) @binding(1) var<storage, read> x: array<XV>;
// Per (sample, channel, block): (mean, m2) of x - pivot. Counts follow from the block's index.
@group(0) @binding(3) var<storage, read_write> partials: array<vec2<f32>>;
// The coefficient table (layout in apply.wgsl), read as vec4s; plane 0 first holds the pivots.
@group(0) @binding(4) var<storage, read> coef: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> gamma: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> beta: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(9) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(10) var<storage, read_write> invstd_out: array<f32>;
// The coefficient table as scalars, for the kernels that write it one channel at a time.
@group(0) @binding(11) var<storage, read_write> coef_w: array<f32>;

fn ld(i: u32) -> f32 {
    return widen4(x[i >> 2u])[i & 3u];
}

fn cp() -> u32 {
    return (p.c + 3u) & ~3u;
}

// Coefficient-table index of channel `ch` of sample `sample` (plane 0).
fn coef_index(sample: u32, ch: u32) -> u32 {
    return sample * cp() + ch;
}

// The pivot of the slot holding channel `ch` of `sample`: stored at its first channel.
fn pivot_of(sample: u32, ch: u32) -> f32 {
    let i = coef_index(sample, (ch / p.cpg) * p.cpg);
    return coef[i >> 2u][i & 3u];
}

// The same through the f32 view, for the finalize (which writes that view).
fn pivot_w(sample: u32, ch: u32) -> f32 {
    return coef_w[coef_index(sample, (ch / p.cpg) * p.cpg)];
}

// Writes the coefficients of table entry `q` (see apply.wgsl): the four planes, then the vec4
// section. `grad` multiplies dy (backward only; 0 in the forward). `centre_too` is false for an
// entry that already holds its slot's pivot (plane 0), which other invocations of the slot may
// be reading.
fn set_coef(q: u32, centre: f32, scale: f32, shift: f32, grad: f32, centre_too: bool) {
    if (centre_too) {
        coef_w[q] = centre;
    }
    coef_w[p.plane + q] = scale;
    coef_w[2u * p.plane + q] = shift;
    coef_w[3u * p.plane + q] = grad;
    let v = 4u * p.plane + 4u * q;
    coef_w[v] = centre;
    coef_w[v + 1u] = scale;
    coef_w[v + 2u] = shift;
    coef_w[v + 3u] = grad;
}

fn set_apply_coef(q: u32, centre: f32, scale: f32, shift: f32, centre_too: bool) {
    set_coef(q, centre, scale, shift, 0.0, centre_too);
}

fn group_id(wid: vec3<u32>) -> u32 {
    return wid.x + wid.y * p.grid_x;
}

// Elements in block b of one (sample, channel): runs in the block times its stretch of a run.
fn block_count(b: u32) -> f32 {
    let nb = b / p.ssegs;
    let ss = b % p.ssegs;
    let runs = min(p.nbr, p.spr - nb * p.nbr);
    let len = min(p.seg, p.s - ss * p.seg);
    return f32(runs) * f32(len);
}

// One thread per slot of this chunk: its pivot, the median of the first three values of the
// slot's first channel in its sample where its run holds three (channels-first), else the first
// value (channels-last: the next values are rows away, maybe in the next chunk's binding). One
// outlier there then does not put every term of the slot's sums near it.
@compute @workgroup_size(WG)
fn channels_pivot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k = p.k0 + group_id(wid) * WG + lid;
    if (k >= p.k0 + p.work) {
        return;
    }
    let sample = k / p.groups;
    let ch = (k % p.groups) * p.cpg;
    // Offset of the sample's first run inside this chunk's binding.
    let run = sample * p.spr - p.run0;
    let e = p.x_off + (run * p.c + ch) * p.s;
    var pivot = ld(e);
    if (p.s >= 3u) {
        pivot = med3(pivot, ld(e + 1u), ld(e + 2u));
    }
    coef_w[coef_index(sample, ch)] = pivot;
}

// Channels-first (BatchNorm): a group of TPR threads per (channel, block); a block is nbr runs
// times one seg of each run, read along the contiguous run.
// The (channel, block) of a group of TPR threads in the channels-first stage 1, forward and
// backward. Groups run in memory order (n-block, channel, seg): neighbours read neighbouring
// memory. The block is walked by one flat index k < total over its runs (element
// base + (k / per) * stride + k % per, in vec4s when VEC: see CfWalk), so short runs (7 x 7,
// 14 x 14) still give every lane work: with a loop per run, 256 threads over a 49-value run
// leave 207 idle.
struct CfBlock {
    lane: u32,
    valid: bool,
    ch: u32,
    // This block's index among the channel's nbt blocks (partials[ch * nbt + gb]).
    gb: u32,
    base: u32,
    stride: u32,
    per: u32,
    total: u32,
}

fn cf_block(wid: vec3<u32>, l: Lane) -> CfBlock {
    let t = thread_index(l);
    let g = group_id(wid) * (WG / TPR) + t / TPR;
    let blocks = ((p.runs + p.nbr - 1u) / p.nbr) * p.ssegs;
    let valid = g < p.c * blocks;
    let ss = g % p.ssegs;
    let ch = (g / p.ssegs) % p.c;
    let nb = g / (p.ssegs * p.c);
    let s0 = ss * p.seg;
    var nruns = 0u;
    var len = 0u;
    if (valid) {
        nruns = min(p.nbr, p.runs - nb * p.nbr);
        len = min(p.seg, p.s - s0);
    }
    var per = len;
    if (VEC) {
        per = len / 4u;
    }
    let gb = (p.run0 / p.nbr) * p.ssegs + nb * p.ssegs + ss;
    let base = p.x_off + ((nb * p.nbr) * p.c + ch) * p.s + s0;
    return CfBlock(t % TPR, valid, ch, gb, base, p.c * p.s, per, nruns * per);
}

// A lane's place in its block's flat walk (k = lane, lane + TPR, ...): run `run`, value (vec4
// when VEC) j of it, stepped without a division per step (llvmpipe divides by a runtime value
// one lane at a time, twice per value in the statistics' two passes).
struct CfWalk {
    k: u32,
    run: u32,
    j: u32,
    // A step of TPR values: runs and values to advance.
    dr: u32,
    dj: u32,
}

fn cf_walk(bk: CfBlock) -> CfWalk {
    let per = max(bk.per, 1u);
    return CfWalk(bk.lane, bk.lane / per, bk.lane % per, TPR / per, TPR % per);
}

fn cf_step(bk: CfBlock, w: ptr<function, CfWalk>) {
    (*w).k += TPR;
    (*w).run += (*w).dr;
    (*w).j += (*w).dj;
    if ((*w).j >= bk.per) {
        (*w).j -= bk.per;
        (*w).run += 1u;
    }
}

// The element index of the walk's run start (its value j follows).
fn cf_run(bk: CfBlock, w: CfWalk) -> u32 {
    return bk.base + w.run * bk.stride;
}

@compute @workgroup_size(WG)
fn channels_partial_cf(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let bk = cf_block(wid, l);
    let lane = bk.lane;
    let valid = bk.valid;
    let ch = bk.ch;
    let total = bk.total;
    var pivot = 0.0;
    if (valid) {
        pivot = pivot_of(0u, ch);
    }
    let pv = vec4<f32>(pivot);
    var s4 = vec4<f32>(0.0);
    for (var w = cf_walk(bk); w.k < total; cf_step(bk, &w)) {
        let e0 = cf_run(bk, w);
        let j = w.j;
        if (VEC) {
            s4 += widen4(x[e0 / 4u + j]) - pv;
        } else {
            s4.x += ld(e0 + j) - pivot;
        }
    }
    var n = f32(total);
    if (VEC) {
        n = 4.0 * n;
    }
    let m = reduce_sum(s4.x + s4.y + s4.z + s4.w, l) / max(n, 1.0);
    let mv = vec4<f32>(m);
    var q4 = vec4<f32>(0.0);
    for (var w = cf_walk(bk); w.k < total; cf_step(bk, &w)) {
        let e0 = cf_run(bk, w);
        let j = w.j;
        if (VEC) {
            let e = widen4(x[e0 / 4u + j]) - pv - mv;
            q4 += e * e;
        } else {
            let e = ld(e0 + j) - pivot - m;
            q4.x += e * e;
        }
    }
    let q = reduce_sum(q4.x + q4.y + q4.z + q4.w, l);
    if (valid && lane == 0u) {
        partials[ch * p.nbt + bk.gb] = vec2<f32>(m, q);
    }
}

// Channels-last: one thread per (block of nbr rows of one sample, 4 channels), walking down its
// rows twice (sum, then squared deviations); the threads of a workgroup read consecutive vec4s
// of a row. Blocks never cross samples: each sample's rows split into nbt blocks.
// The block of work item `item` in the channels-last stage 1, forward and backward: its
// channel (or vec4 of channels, VEC) cv, sample, block b among the sample's nbt, and chunk rows
// [r0, r1). The chunk starts on a block boundary of the sample holding its first row.
struct ClBlock {
    cv: u32,
    sample: u32,
    b: u32,
    r0: u32,
    r1: u32,
}

fn cl_block(item: u32) -> ClBlock {
    var lanes = p.c;
    if (VEC) {
        lanes = p.c / 4u;
    }
    let glb = (p.run0 % p.spr) / p.nbr + item / lanes;
    let sample = p.run0 / p.spr + glb / p.nbt;
    let b = glb % p.nbt;
    let first = sample * p.spr + b * p.nbr;
    let r0 = first - p.run0;
    let r1 = min(first + p.nbr, (sample + 1u) * p.spr) - p.run0;
    return ClBlock(item % lanes, sample, b, r0, r1);
}

@compute @workgroup_size(WG)
fn channels_partial_cl(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let item = group_id(wid) * WG + lid;
    if (item >= p.work) {
        return;
    }
    let bk = cl_block(item);
    let cv = bk.cv;
    let sample = bk.sample;
    let b = bk.b;
    let r0 = bk.r0;
    let r1 = bk.r1;
    let inv_n = 1.0 / f32(r1 - r0);
    if (VEC) {
        let c0 = cv * 4u;
        let pivot = vec4<f32>(
            pivot_of(sample, c0),
            pivot_of(sample, c0 + 1u),
            pivot_of(sample, c0 + 2u),
            pivot_of(sample, c0 + 3u),
        );
        var s = vec4<f32>(0.0);
        for (var r = r0; r < r1; r++) {
            s += widen4(x[(p.x_off + r * p.c) / 4u + cv]) - pivot;
        }
        let mean = s * inv_n;
        var q = vec4<f32>(0.0);
        for (var r = r0; r < r1; r++) {
            let e = widen4(x[(p.x_off + r * p.c) / 4u + cv]) - pivot - mean;
            q += e * e;
        }
        for (var k = 0u; k < 4u; k++) {
            partials[((sample * p.c) + c0 + k) * p.nbt + b] = vec2<f32>(mean[k], q[k]);
        }
    } else {
        let pivot = pivot_of(sample, cv);
        var s = 0.0;
        for (var r = r0; r < r1; r++) {
            s += ld(p.x_off + r * p.c + cv) - pivot;
        }
        let mean = s * inv_n;
        var q = 0.0;
        for (var r = r0; r < r1; r++) {
            let e = ld(p.x_off + r * p.c + cv) - pivot - mean;
            q += e * e;
        }
        partials[(sample * p.c + cv) * p.nbt + b] = vec2<f32>(mean, q);
    }
}

fn weight_of(ch: u32) -> f32 {
    if (HAS_W) {
        return gamma[ch >> 2u][ch & 3u];
    }
    return 1.0;
}

fn bias_of(ch: u32) -> f32 {
    if (HAS_B) {
        return beta[ch >> 2u][ch & 3u];
    }
    return 0.0;
}

// A slot's statistics of x - pivot from its partials, for the finalize and SyncBatchNorm's
// local statistics: a group of TPR threads per slot, lane l merging the slot's partials l,
// l + TPR, ... (channel major, then block) in order, then the fixed-order group reduction
// combines the lanes, so the result does not depend on timing. Every lane gets the total. Must
// be called in uniform control flow by the whole workgroup.
struct SlotTotal {
    k: u32,
    lane: u32,
    valid: bool,
    sample: u32,
    c0: u32,
    pivot: f32,
    tot: Welford,
}

fn slot_total(wid: vec3<u32>, l: Lane) -> SlotTotal {
    let t = thread_index(l);
    let lane = t % TPR;
    let k = group_id(wid) * (WG / TPR) + t / TPR;
    let valid = k < (p.n / p.spr) * p.groups;
    let sample = k / p.groups;
    let c0 = (k % p.groups) * p.cpg;
    var acc = welford_empty();
    var pivot = 0.0;
    if (valid) {
        pivot = pivot_w(sample, c0);
        let parts = p.cpg * p.nbt;
        for (var j = lane; j < parts; j += TPR) {
            let b = j % p.nbt;
            let q = partials[(sample * p.c + c0 + j / p.nbt) * p.nbt + b];
            acc = welford_merge(acc, Welford(block_count(b), q.x, q.y));
        }
    }
    return SlotTotal(k, lane, valid, sample, c0, pivot, reduce_welford(acc, l));
}

// Per slot: mean and invstd, BatchNorm's running statistics, and the apply coefficients of the
// slot's channels (every lane writes its share).
@compute @workgroup_size(WG)
fn channels_finalize(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let st = slot_total(wid, l);
    if (!st.valid) {
        return;
    }
    let tot = st.tot;
    let count = f32(p.cpg) * f32(p.spr) * f32(p.s);
    let var_b = tot.m2 / count;
    let invstd = inverseSqrt(var_b + p.eps);
    for (var i = st.lane; i < p.cpg; i += TPR) {
        let ch = st.c0 + i;
        let scale = invstd * weight_of(ch);
        let q = coef_index(st.sample, ch);
        set_apply_coef(q, st.pivot, scale, bias_of(ch) - tot.mean * scale, i != 0u);
    }
    if (st.lane != 0u) {
        return;
    }
    let mean = st.pivot + tot.mean;
    mean_out[st.k] = mean;
    invstd_out[st.k] = invstd;
    if (UPDATE) {
        var v = var_b;
        if (UNBIASED) {
            v = tot.m2 / (count - 1.0);
        }
        update_running(st.k, mean, v);
    }
}

fn update_running(ch: u32, mean: f32, v: f32) {
    running_mean[ch] = (1.0 - p.factor) * running_mean[ch] + p.factor * mean;
    running_var[ch] = (1.0 - p.factor) * running_var[ch] + p.factor * v;
}

// SyncBatchNorm (statistics merged across processes, see src/stats.rs). One vec4 per slot:
// channels_local_stats writes (pivot, mean of x - pivot, m2, count) of this process's part;
// channels_given_coef reads (mean, biased variance, running-variance input, mean - f64(mean as
// f32)) of the global batch, computed on the host in f64 and rounded once.
@group(0) @binding(13) var<storage, read_write> slot_stats: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn channels_local_stats(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let st = slot_total(wid, l);
    if (st.valid && st.lane == 0u) {
        slot_stats[st.k] = vec4<f32>(st.pivot, st.tot.mean, st.tot.m2, st.tot.n);
    }
}

// One thread per channel: apply coefficients from the given global statistics, the batch mean
// and invstd outputs, and the running-statistics update (the finalize's formula). The centre is
// the f32 mean and the shift takes the rest of the f64 mean, beta - rest * scale: x - centre is
// exact near the mean, so channel means of 1e4 keep full precision, as the pivot does in
// training.
@compute @workgroup_size(WG)
fn channels_given_coef(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let ch = group_id(wid) * WG + lid;
    if (ch >= p.c) {
        return;
    }
    let g = slot_stats[ch];
    let invstd = inverseSqrt(g.y + p.eps);
    let scale = invstd * weight_of(ch);
    set_apply_coef(ch, g.x, scale, bias_of(ch) - g.w * scale, true);
    mean_out[ch] = g.x;
    invstd_out[ch] = invstd;
    if (UPDATE) {
        update_running(ch, g.x, g.z);
    }
}

// BatchNorm inference, one thread per channel: scale and shift from the running statistics.
@compute @workgroup_size(WG)
fn channels_eval_coef(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let ch = group_id(wid) * WG + lid;
    if (ch >= p.c) {
        return;
    }
    // Folded around the running mean, not into x * scale + (bias - mean * scale): that form
    // rounds the shift to ulp(|mean * scale|), 8e-5 absolute already for a running mean of 3
    // with running_var 0 (scale 316).
    let scale = inverseSqrt(running_var[ch] + p.eps) * weight_of(ch);
    set_apply_coef(ch, running_mean[ch], scale, bias_of(ch), true);
}

// Backward, from the forward's saved statistics (BatchNorm training: the batch mean and invstd
// per channel; GroupNorm / InstanceNorm channels-last: mean and rstd per (sample, group)):
//   channels_bwd_partial_cf / channels_bwd_partial_cl
//                       stage 1: per (sample, channel, block) of the forward's blocking,
//                       (sum dy, sum dy * xhat), xhat = (x - mean) * rstd recomputed from x.
//   channels_bwd_finalize
//                       per slot, in a fixed order over its channels' partials:
//                       a = sum(w * dy), b = sum(w * dy * xhat); then for each of its channels
//                       dx = (x - mean) * (-rstd^2 b / m) + (-rstd a / m) + (w rstd) * dy, as
//                       coefficients (centre, scale, shift, grad) for apply.wgsl's apply_bwd_*.
//   channels_bwd_params per channel: dweight = sum(dy * xhat), dbias = sum(dy) over every sample's
//                       partials, in sample then block order.
//   channels_bwd_given  SyncBatchNorm: dx coefficients per channel from the global sums of every
//                       rank (sum dy, sum dy * xhat, count), in place of the finalize.
// No atomics: every sum has one order fixed by the shape, so reruns are bit-identical.
// EVAL (BatchNorm inference): the statistics are constants, the running mean and variance
// (rstd = inverseSqrt(var + eps)); dx = w * rstd * dy and only dweight/dbias need stage 1.
override EVAL: bool = false;

// dy in x's element storage and offsets.
@group(0) @binding(14) var<storage, read> dy: array<XV>;
// The saved statistics per slot: the mean, and rstd (EVAL: the running variance).
@group(0) @binding(15) var<storage, read> mean_in: array<f32>;
@group(0) @binding(16) var<storage, read> spread_in: array<f32>;
@group(0) @binding(17) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(18) var<storage, read_write> dbias: array<f32>;

fn ld_dy(i: u32) -> f32 {
    return widen4(dy[i >> 2u])[i & 3u];
}

// (mean, rstd) of slot k.
fn saved(k: u32) -> vec2<f32> {
    let s = spread_in[k];
    if (EVAL) {
        return vec2<f32>(mean_in[k], inverseSqrt(s + p.eps));
    }
    return vec2<f32>(mean_in[k], s);
}

// Channels-first (BatchNorm): the forward's channels_partial_cf blocks, one pass.
@compute @workgroup_size(WG)
fn channels_bwd_partial_cf(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let bk = cf_block(wid, l);
    let lane = bk.lane;
    let total = bk.total;
    var st = vec2<f32>(0.0);
    if (bk.valid) {
        st = saved(bk.ch);
    }
    let mv = vec4<f32>(st.x);
    var a4 = vec4<f32>(0.0);
    var b4 = vec4<f32>(0.0);
    for (var w = cf_walk(bk); w.k < total; cf_step(bk, &w)) {
        let e0 = cf_run(bk, w);
        let j = w.j;
        if (VEC) {
            let i = e0 / 4u + j;
            let d = widen4(dy[i]);
            a4 += d;
            b4 += d * ((widen4(x[i]) - mv) * st.y);
        } else {
            let d = ld_dy(e0 + j);
            a4.x += d;
            b4.x += d * ((ld(e0 + j) - st.x) * st.y);
        }
    }
    let a = reduce_sum(a4.x + a4.y + a4.z + a4.w, l);
    let b = reduce_sum(b4.x + b4.y + b4.z + b4.w, l);
    if (bk.valid && lane == 0u) {
        partials[bk.ch * p.nbt + bk.gb] = vec2<f32>(a, b);
    }
}

// Channels-last: the forward's channels_partial_cl blocks, one pass down the block's rows.
@compute @workgroup_size(WG)
fn channels_bwd_partial_cl(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let item = group_id(wid) * WG + lid;
    if (item >= p.work) {
        return;
    }
    let bk = cl_block(item);
    let cv = bk.cv;
    let sample = bk.sample;
    let b = bk.b;
    let r0 = bk.r0;
    let r1 = bk.r1;
    let k0 = sample * p.groups;
    if (VEC) {
        let c0 = cv * 4u;
        let s0 = saved(k0 + c0 / p.cpg);
        let s1 = saved(k0 + (c0 + 1u) / p.cpg);
        let s2 = saved(k0 + (c0 + 2u) / p.cpg);
        let s3 = saved(k0 + (c0 + 3u) / p.cpg);
        let m = vec4<f32>(s0.x, s1.x, s2.x, s3.x);
        let r = vec4<f32>(s0.y, s1.y, s2.y, s3.y);
        var a = vec4<f32>(0.0);
        var q = vec4<f32>(0.0);
        for (var row = r0; row < r1; row++) {
            let i = (p.x_off + row * p.c) / 4u + cv;
            let d = widen4(dy[i]);
            a += d;
            q += d * ((widen4(x[i]) - m) * r);
        }
        for (var k = 0u; k < 4u; k++) {
            partials[((sample * p.c) + c0 + k) * p.nbt + b] = vec2<f32>(a[k], q[k]);
        }
    } else {
        let st = saved(k0 + cv / p.cpg);
        var a = 0.0;
        var q = 0.0;
        for (var row = r0; row < r1; row++) {
            let i = p.x_off + row * p.c + cv;
            let d = ld_dy(i);
            a += d;
            q += d * ((ld(i) - st.x) * st.y);
        }
        partials[(sample * p.c + cv) * p.nbt + b] = vec2<f32>(a, q);
    }
}

// A group of TPR threads per slot: the slot's two sums, then its channels' dx coefficients.
@compute @workgroup_size(WG)
fn channels_bwd_finalize(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let t = thread_index(l);
    let lane = t % TPR;
    let k = group_id(wid) * (WG / TPR) + t / TPR;
    let valid = k < (p.n / p.spr) * p.groups;
    let sample = k / p.groups;
    let c0 = (k % p.groups) * p.cpg;
    var st = vec2<f32>(0.0);
    var a = 0.0;
    var b = 0.0;
    if (valid) {
        st = saved(k);
    }
    if (!EVAL) {
        let parts = p.cpg * p.nbt;
        for (var j = lane; valid && j < parts; j += TPR) {
            let ch = c0 + j / p.nbt;
            let q = partials[(sample * p.c + ch) * p.nbt + j % p.nbt];
            let w = weight_of(ch);
            a += w * q.x;
            b += w * q.y;
        }
        a = reduce_sum(a, l);
        b = reduce_sum(b, l);
    }
    if (!valid) {
        return;
    }
    var scale = 0.0;
    var shift = 0.0;
    if (!EVAL) {
        let m = f32(p.cpg) * f32(p.spr) * f32(p.s);
        scale = -st.y * st.y * b / m;
        shift = -st.y * a / m;
    }
    for (var i = lane; i < p.cpg; i += TPR) {
        let ch = c0 + i;
        set_coef(coef_index(sample, ch), st.x, scale, shift, weight_of(ch) * st.y, true);
    }
}

// A group of TPR threads per channel: dweight and dbias from every sample's partials.
@compute @workgroup_size(WG)
fn channels_bwd_params(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let t = thread_index(l);
    let lane = t % TPR;
    let ch = group_id(wid) * (WG / TPR) + t / TPR;
    let valid = ch < p.c;
    let parts = (p.n / p.spr) * p.nbt;
    var acc = vec2<f32>(0.0);
    for (var j = lane; valid && j < parts; j += TPR) {
        acc += partials[((j / p.nbt) * p.c + ch) * p.nbt + j % p.nbt];
    }
    let db = reduce_sum(acc.x, l);
    let dw = reduce_sum(acc.y, l);
    if (valid && lane == 0u) {
        if (HAS_W) {
            dweight[ch] = dw;
        }
        if (HAS_B) {
            dbias[ch] = db;
        }
    }
}

// One thread per channel: the finalize's coefficients from given global sums (slot_stats:
// sum dy, sum dy * xhat, count, -; summed in f64 on the host and rounded once).
@compute @workgroup_size(WG)
fn channels_bwd_given(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let ch = group_id(wid) * WG + lid;
    if (ch >= p.c) {
        return;
    }
    let g = slot_stats[ch];
    let st = saved(ch);
    let w = weight_of(ch);
    let scale = -st.y * st.y * (w * g.y) / g.z;
    let shift = -st.y * (w * g.x) / g.z;
    set_coef(ch, st.x, scale, shift, w * st.y, true);
}
