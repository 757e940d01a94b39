// BatchNorm forward. Data is viewed as [N, C, S] runs: channels-first tensors have S = product
// of the spatial dims; channels-last tensors ([M, C], NHWC) are [M, C, 1].
//
// Training (one submit, four dispatches, no atomics):
//   batch_norm_pivot     per channel, its first value: statistics are of x - pivot, so channel
//                        means of 1e4 or more keep full precision.
//   batch_norm_partial_cf / batch_norm_partial_cl
//                        stage 1: Welford partials per (channel, block) in memory order.
//   batch_norm_finalize  stage 2: per channel, Chan merge of the partials in block order, mean
//                        and invstd, running statistics update, and the per-channel coefficients.
//   batch_norm_apply_*   y = ((x - pivot) - mean_shifted) * (invstd * gamma) + beta.
// Inference: batch_norm_eval_coef folds running stats, eps, gamma and beta into the same
// coefficients (pivot = running_mean), then the same apply pass.

struct BnParams {
    n: u32,          // runs in the whole tensor (N, or M for channels-last)
    c: u32,
    s: u32,          // run length (spatial size; 1 for channels-last)
    runs: u32,       // runs covered by this dispatch (chunk)
    run0: u32,       // first run of this chunk
    x_off: u32,      // element offset of the chunk's first run inside the x binding
    y_off: u32,
    nbr: u32,        // runs per block
    seg: u32,        // elements of a run per block (multiple of 4 when VEC)
    ssegs: u32,      // blocks along a run: ceil(s / seg)
    nbt: u32,        // blocks per channel over the whole tensor
    grid_x: u32,
    eps: f32,
    factor: f32,     // running-statistics weight of this batch (momentum, or 1 / batches)
    work: u32,       // work items of this dispatch (apply / partial_cl)
    _pad: u32,
}

// CF: s % 4 == 0; CL: c % 4 == 0. Vector loads; scalar indexing into vec4s otherwise.
override VEC: bool = true;
override HAS_W: bool = false;
override HAS_B: bool = false;
override UPDATE: bool = false;    // update running statistics (training with tracking on)
override UNBIASED: bool = true;   // running_var from the unbiased batch variance (PyTorch)

@group(0) @binding(0) var<uniform> p: BnParams;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;
// Per (channel, block): (mean, m2) of x - pivot. Counts follow from the block's index.
@group(0) @binding(3) var<storage, read_write> partials: array<vec2<f32>>;
// Four planes of cp = round_up(c, 4) values: pivot | mean_shifted | scale | shift.
@group(0) @binding(4) var<storage, read_write> coef: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> gamma: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> beta: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(9) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(10) var<storage, read_write> invstd_out: array<f32>;

fn ld(i: u32) -> f32 {
    return x[i >> 2u][i & 3u];
}

fn cp() -> u32 {
    return (p.c + 3u) & ~3u;
}

fn coef1(plane: u32, ch: u32) -> f32 {
    let i = plane * cp() + ch;
    return coef[i >> 2u][i & 3u];
}

fn set_coef(plane: u32, ch: u32, v: f32) {
    let i = plane * cp() + ch;
    coef[i >> 2u][i & 3u] = v;
}


fn group_id(wid: vec3<u32>) -> u32 {
    return wid.x + wid.y * p.grid_x;
}

// Elements in block b of a channel: runs in the block times the block's stretch of a run.
fn block_count(b: u32) -> f32 {
    let nb = b / p.ssegs;
    let ss = b % p.ssegs;
    let runs = min(p.nbr, p.n - nb * p.nbr);
    let len = min(p.seg, p.s - ss * p.seg);
    return f32(runs) * f32(len);
}

@compute @workgroup_size(WG)
fn batch_norm_pivot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let ch = group_id(wid) * WG + lid;
    if (ch < p.c) {
        set_coef(0u, ch, ld(p.x_off + ch * p.s));
    }
}

// Channels-first: one workgroup per (channel, block); a block is nbr runs times one seg of
// each run, read along the contiguous run.
@compute @workgroup_size(WG)
fn batch_norm_partial_cf(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let t = thread_index(l);
    let g = group_id(wid);
    let blocks = ((p.runs + p.nbr - 1u) / p.nbr) * p.ssegs;
    let valid = g < p.c * blocks;
    let ch = g / blocks;
    let lb = g % blocks;
    let nb = lb / p.ssegs;
    let ss = lb % p.ssegs;
    var acc = welford_empty();
    if (valid) {
        let pivot = coef1(0u, ch);
        let nruns = min(p.nbr, p.runs - nb * p.nbr);
        let s0 = ss * p.seg;
        let len = min(p.seg, p.s - s0);
        if (VEC) {
            let len4 = len / 4u;
            for (var i = t; i < nruns * len4; i += WG) {
                let r = nb * p.nbr + i / len4;
                let e = p.x_off + (r * p.c + ch) * p.s + s0 + (i % len4) * 4u;
                acc = welford_merge(acc, welford_vec4(x[e / 4u] - vec4<f32>(pivot)));
            }
        } else {
            for (var i = t; i < nruns * len; i += WG) {
                let r = nb * p.nbr + i / len;
                let e = p.x_off + (r * p.c + ch) * p.s + s0 + i % len;
                acc = welford_merge(acc, Welford(1.0, ld(e) - pivot, 0.0));
            }
        }
    }
    let tot = reduce_welford(acc, l);
    if (valid && t == 0u) {
        let gb = (p.run0 / p.nbr) * p.ssegs + lb;
        partials[ch * p.nbt + gb] = vec2<f32>(tot.mean, tot.m2);
    }
}

// Channels-last: one thread per (block of nbr rows, 4 channels), walking down its rows; the
// threads of a workgroup read consecutive vec4s of a row. No reduction inside the workgroup.
@compute @workgroup_size(WG)
fn batch_norm_partial_cl(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let item = group_id(wid) * WG + lid;
    if (item >= p.work) {
        return;
    }
    var lanes = p.c;
    if (VEC) {
        lanes = p.c / 4u;
    }
    let lb = item / lanes;
    let cv = item % lanes;
    let r0 = lb * p.nbr;
    let r1 = min(r0 + p.nbr, p.runs);
    let gb = p.run0 / p.nbr + lb;
    if (VEC) {
        let pivot = coef[cv];
        var mean = vec4<f32>(0.0);
        var m2 = vec4<f32>(0.0);
        for (var r = r0; r < r1; r++) {
            let v = x[(p.x_off + r * p.c) / 4u + cv] - pivot;
            let d = v - mean;
            mean += d / f32(r - r0 + 1u);
            m2 += d * (v - mean);
        }
        for (var k = 0u; k < 4u; k++) {
            partials[(cv * 4u + k) * p.nbt + gb] = vec2<f32>(mean[k], m2[k]);
        }
    } else {
        let pivot = coef1(0u, cv);
        var mean = 0.0;
        var m2 = 0.0;
        for (var r = r0; r < r1; r++) {
            let v = ld(p.x_off + r * p.c + cv) - pivot;
            let d = v - mean;
            mean += d / f32(r - r0 + 1u);
            m2 += d * (v - mean);
        }
        partials[cv * p.nbt + gb] = vec2<f32>(mean, m2);
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

// One workgroup per channel: thread t merges blocks t, t + WG, ... in order, then the fixed-order
// group reduction combines the threads, so the result does not depend on timing.
@compute @workgroup_size(WG)
fn batch_norm_finalize(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let t = thread_index(l);
    let ch = group_id(wid);
    let valid = ch < p.c;
    var acc = welford_empty();
    if (valid) {
        for (var b = t; b < p.nbt; b += WG) {
            let q = partials[ch * p.nbt + b];
            acc = welford_merge(acc, Welford(block_count(b), q.x, q.y));
        }
    }
    let tot = reduce_welford(acc, l);
    if (!valid || t != 0u) {
        return;
    }
    let count = f32(p.n) * f32(p.s);
    let var_b = tot.m2 / count;
    let invstd = inverseSqrt(var_b + p.eps);
    let mean = coef1(0u, ch) + tot.mean;
    mean_out[ch] = mean;
    invstd_out[ch] = invstd;
    set_coef(1u, ch, tot.mean);
    set_coef(2u, ch, invstd * weight_of(ch));
    set_coef(3u, ch, bias_of(ch));
    if (UPDATE) {
        var v = var_b;
        if (UNBIASED) {
            v = tot.m2 / (count - 1.0);
        }
        running_mean[ch] = (1.0 - p.factor) * running_mean[ch] + p.factor * mean;
        running_var[ch] = (1.0 - p.factor) * running_var[ch] + p.factor * v;
    }
}

// One thread per channel: inference coefficients from the running statistics.
@compute @workgroup_size(WG)
fn batch_norm_eval_coef(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let ch = group_id(wid) * WG + lid;
    if (ch >= p.c) {
        return;
    }
    set_coef(0u, ch, running_mean[ch]);
    set_coef(1u, ch, 0.0);
    set_coef(2u, ch, inverseSqrt(running_var[ch] + p.eps) * weight_of(ch));
    set_coef(3u, ch, bias_of(ch));
}

// Channels-first apply: one workgroup per (run, seg); the channel's coefficients are loaded once.
@compute @workgroup_size(WG)
fn batch_norm_apply_cf(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let g = group_id(wid);
    if (g >= p.runs * p.ssegs) {
        return;
    }
    let r = g / p.ssegs;
    let s0 = (g % p.ssegs) * p.seg;
    let len = min(p.seg, p.s - s0);
    let ch = (p.run0 + r) % p.c;
    let pivot = coef1(0u, ch);
    let m = coef1(1u, ch);
    let sc = coef1(2u, ch);
    let sh = coef1(3u, ch);
    let xb = p.x_off + r * p.s + s0;
    let yb = p.y_off + r * p.s + s0;
    if (VEC) {
        for (var j = t; j < len / 4u; j += WG) {
            let v = x[xb / 4u + j] - vec4<f32>(pivot);
            y[yb / 4u + j] = (v - vec4<f32>(m)) * sc + sh;
        }
    } else {
        for (var i = t; i < len; i += WG) {
            let v = ld(xb + i) - pivot;
            y[(yb + i) >> 2u][(yb + i) & 3u] = (v - m) * sc + sh;
        }
    }
}

// Elementwise apply for channels-last (4 channels per thread when VEC) and for channels-first
// tensors with short runs, where a workgroup per run would idle.
@compute @workgroup_size(WG)
fn batch_norm_apply_flat(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = group_id(wid) * WG + lid;
    if (e >= p.work) {
        return;
    }
    if (VEC) {
        // Channels-last, c % 4 == 0: the vec4 holds channels cv*4 .. cv*4+3.
        let cv = e % (p.c / 4u);
        let q = cp() / 4u;
        let v = x[p.x_off / 4u + e] - coef[cv];
        y[p.y_off / 4u + e] = (v - coef[q + cv]) * coef[2u * q + cv] + coef[3u * q + cv];
    } else {
        let ch = ((p.run0 * p.s + e) / p.s) % p.c;
        let v = ld(p.x_off + e) - coef1(0u, ch);
        let o = (v - coef1(1u, ch)) * coef1(2u, ch) + coef1(3u, ch);
        y[(p.y_off + e) >> 2u][(p.y_off + e) & 3u] = o;
    }
}
