// BatchNorm forward. Data is viewed as [N, C, S] runs: channels-first tensors have S = product
// of the spatial dims; channels-last tensors ([M, C], NHWC) are [M, C, 1].
//
// Training (one submit, four dispatches, no atomics):
//   batch_norm_pivot     per channel, its first value: statistics are of x - pivot, so channel
//                        means of 1e4 or more keep full precision.
//   batch_norm_partial_cf / batch_norm_partial_cl
//                        stage 1: (mean, m2) per (channel, block), an exact two-pass over the
//                        block (re-read from cache), reading memory in its natural order.
//   batch_norm_finalize  stage 2: per channel, Chan merge of the partials in a fixed order,
//                        mean and invstd, running statistics update, per-channel coefficients.
//   batch_norm_apply     y = ((x - pivot) - mean_shifted) * (invstd * gamma) + beta.
// Inference: batch_norm_eval_coef folds running_var, eps and gamma into one scale per channel,
// then the same batch_norm_apply: y = (x - running_mean) * scale + beta, one elementwise pass.
// Both modes apply y = (x - centre) * scale + shift; training's centre is the pivot and its
// shift beta - mean_shifted * scale, both free of cancellation (mean_shifted is small).
//
// Stores: every invocation writes whole elements of the array it stores to, never one component
// of a vec4 (an implementation may rewrite the whole vector, and Metal does, losing a
// neighbour's value). So the per-channel writers (pivot, finalize, eval_coef) write the
// coefficients through `coef_w` (array<f32>) and the scalar apply writes y through `y1`;
// readers see the same buffers as vec4s.

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

// Stage 1 reads vec4s (CF: s % 4 == 0; CL: c % 4 == 0); scalar indexing into vec4s otherwise.
override VEC: bool = true;
// batch_norm_apply: 1 = a vec4 of one channel (CF, s % 4 == 0), 2 = a vec4 of four channels
// (CL, c % 4 == 0). Other shapes run batch_norm_apply_scalar.
override APPLY_MODE: u32 = 1u;
override HAS_W: bool = false;
override HAS_B: bool = false;
override UPDATE: bool = false;    // update running statistics (training with tracking on)
override UNBIASED: bool = true;   // running_var from the unbiased batch variance (PyTorch)

@group(0) @binding(0) var<uniform> p: BnParams;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;
// Per (channel, block): (mean, m2) of x - pivot. Counts follow from the block's index.
@group(0) @binding(3) var<storage, read_write> partials: array<vec2<f32>>;
// Three planes of cp = round_up(c, 4) values, centre (pivot) | scale | shift, read as vec4s of
// four channels by the channels-last apply; then one vec4 (centre, scale, shift, -) per
// channel, a single load for the channels-first apply.
@group(0) @binding(4) var<storage, read> coef: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> gamma: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> beta: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(8) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(9) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(10) var<storage, read_write> invstd_out: array<f32>;
// The coefficient buffer as scalars, for the kernels that write it one channel at a time.
@group(0) @binding(11) var<storage, read_write> coef_w: array<f32>;
// y as scalars, for batch_norm_apply_scalar.
@group(0) @binding(12) var<storage, read_write> y1: array<f32>;

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

fn set_apply_coef(ch: u32, centre: f32, scale: f32, shift: f32) {
    coef_w[ch] = centre;
    coef_w[cp() + ch] = scale;
    coef_w[2u * cp() + ch] = shift;
    let v = 3u * cp() + 4u * ch;
    coef_w[v] = centre;
    coef_w[v + 1u] = scale;
    coef_w[v + 2u] = shift;
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
        coef_w[ch] = ld(p.x_off + ch * p.s);
    }
}

// Channels-first: a group of TPR threads per (channel, block); a block is nbr runs times one
// seg of each run, read along the contiguous run.
@compute @workgroup_size(WG)
fn batch_norm_partial_cf(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let t = thread_index(l);
    let lane = t % TPR;
    let g = group_id(wid) * (WG / TPR) + t / TPR;
    let blocks = ((p.runs + p.nbr - 1u) / p.nbr) * p.ssegs;
    let valid = g < p.c * blocks;
    // Groups run in memory order (n-block, channel, seg): neighbours read neighbouring memory.
    let ss = g % p.ssegs;
    let ch = (g / p.ssegs) % p.c;
    let nb = g / (p.ssegs * p.c);
    let lb = nb * p.ssegs + ss;
    let s0 = ss * p.seg;
    var pivot = 0.0;
    var nruns = 0u;
    var len = 0u;
    if (valid) {
        pivot = coef1(0u, ch);
        nruns = min(p.nbr, p.runs - nb * p.nbr);
        len = min(p.seg, p.s - s0);
    }
    let pv = vec4<f32>(pivot);
    // Element offset of run r of this block.
    let base = p.x_off + ((nb * p.nbr) * p.c + ch) * p.s + s0;
    let stride = p.c * p.s;
    // One flat index over the block's runs, so short runs (7 x 7, 14 x 14) still give every
    // lane work: with a loop per run, 256 threads over a 49-value run leave 207 idle.
    var per = len;
    if (VEC) {
        per = len / 4u;
    }
    let total = nruns * per;
    var s4 = vec4<f32>(0.0);
    for (var k = lane; k < total; k += TPR) {
        let e0 = base + (k / per) * stride;
        let j = k % per;
        if (VEC) {
            s4 += x[e0 / 4u + j] - pv;
        } else {
            s4.x += ld(e0 + j) - pivot;
        }
    }
    let n = f32(nruns) * f32(len);
    let m = reduce_sum(s4.x + s4.y + s4.z + s4.w, l) / max(n, 1.0);
    let mv = vec4<f32>(m);
    var q4 = vec4<f32>(0.0);
    for (var k = lane; k < total; k += TPR) {
        let e0 = base + (k / per) * stride;
        let j = k % per;
        if (VEC) {
            let e = x[e0 / 4u + j] - pv - mv;
            q4 += e * e;
        } else {
            let e = ld(e0 + j) - pivot - m;
            q4.x += e * e;
        }
    }
    let q = reduce_sum(q4.x + q4.y + q4.z + q4.w, l);
    if (valid && lane == 0u) {
        let gb = (p.run0 / p.nbr) * p.ssegs + lb;
        partials[ch * p.nbt + gb] = vec2<f32>(m, q);
    }
}

// Channels-last: one thread per (block of nbr rows, 4 channels), walking down its rows twice
// (sum, then squared deviations); the threads of a workgroup read consecutive vec4s of a row.
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
    let inv_n = 1.0 / f32(r1 - r0);
    if (VEC) {
        let pivot = coef[cv];
        var s = vec4<f32>(0.0);
        for (var r = r0; r < r1; r++) {
            s += x[(p.x_off + r * p.c) / 4u + cv] - pivot;
        }
        let mean = s * inv_n;
        var q = vec4<f32>(0.0);
        for (var r = r0; r < r1; r++) {
            let e = x[(p.x_off + r * p.c) / 4u + cv] - pivot - mean;
            q += e * e;
        }
        for (var k = 0u; k < 4u; k++) {
            partials[(cv * 4u + k) * p.nbt + gb] = vec2<f32>(mean[k], q[k]);
        }
    } else {
        let pivot = coef1(0u, cv);
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
        partials[cv * p.nbt + gb] = vec2<f32>(mean, q);
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

// A group of TPR threads per channel: lane k merges blocks k, k + TPR, ... in order, then the
// fixed-order group reduction combines the lanes, so the result does not depend on timing.
@compute @workgroup_size(WG)
fn batch_norm_finalize(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let t = thread_index(l);
    let lane = t % TPR;
    let ch = group_id(wid) * (WG / TPR) + t / TPR;
    let valid = ch < p.c;
    var acc = welford_empty();
    if (valid) {
        for (var b = lane; b < p.nbt; b += TPR) {
            let q = partials[ch * p.nbt + b];
            acc = welford_merge(acc, Welford(block_count(b), q.x, q.y));
        }
    }
    let tot = reduce_welford(acc, l);
    if (!valid || lane != 0u) {
        return;
    }
    let count = f32(p.n) * f32(p.s);
    let var_b = tot.m2 / count;
    let invstd = inverseSqrt(var_b + p.eps);
    let pivot = coef_w[ch];
    let mean = pivot + tot.mean;
    mean_out[ch] = mean;
    invstd_out[ch] = invstd;
    let scale = invstd * weight_of(ch);
    set_apply_coef(ch, pivot, scale, bias_of(ch) - tot.mean * scale);
    if (UPDATE) {
        var v = var_b;
        if (UNBIASED) {
            v = tot.m2 / (count - 1.0);
        }
        running_mean[ch] = (1.0 - p.factor) * running_mean[ch] + p.factor * mean;
        running_var[ch] = (1.0 - p.factor) * running_var[ch] + p.factor * v;
    }
}

// One thread per channel: inference scale and shift from the running statistics.
@compute @workgroup_size(WG)
fn batch_norm_eval_coef(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let ch = group_id(wid) * WG + lid;
    if (ch >= p.c) {
        return;
    }
    // Folded around the running mean, not into x * scale + (bias - mean * scale): that form
    // rounds the shift to ulp(|mean * scale|), 8e-5 absolute already for a running mean of 3
    // with running_var 0 (scale 316).
    let scale = inverseSqrt(running_var[ch] + p.eps) * weight_of(ch);
    set_apply_coef(ch, running_mean[ch], scale, bias_of(ch));
}

// Elementwise, one vec4 (or value) per thread, like the copy kernel (a workgroup looping over a
// run measured 1.5x slower on lavapipe). `e` counts this chunk's vec4s (or values).
@compute @workgroup_size(WG)
fn batch_norm_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = group_id(wid) * WG + lid;
    if (e >= p.work) {
        return;
    }
    if (APPLY_MODE == 2u) {
        // Channels-last, c % 4 == 0: the vec4 holds channels cv*4 .. cv*4+3.
        let cv = e % (p.c / 4u);
        let q = cp() / 4u;
        let v = x[p.x_off / 4u + e];
        y[p.y_off / 4u + e] = fma(v - coef[cv], coef[q + cv], coef[2u * q + cv]);
    } else {
        // Channels-first, s % 4 == 0: the vec4 lies in one run, of one channel.
        let ch = ((p.run0 * p.s + e * 4u) / p.s) % p.c;
        let k = coef[3u * cp() / 4u + ch];
        let v = x[p.x_off / 4u + e];
        y[p.y_off / 4u + e] = fma(v - vec4<f32>(k.x), vec4<f32>(k.y), vec4<f32>(k.z));
    }
}

// One value per thread, for shapes whose channel runs do not fill whole vec4s.
@compute @workgroup_size(WG)
fn batch_norm_apply_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = group_id(wid) * WG + lid;
    if (e >= p.work) {
        return;
    }
    let ch = ((p.run0 * p.s + e) / p.s) % p.c;
    let k = coef[3u * cp() / 4u + ch];
    y1[p.y_off + e] = fma(ld(p.x_off + e) - k.x, k.y, k.z);
}
