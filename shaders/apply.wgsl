// The elementwise pass of the channels family: y = (x - centre) * scale + shift, with the
// coefficients of the element's (sample, channel) from the table `channels.wgsl` fills; and the
// backward's dx = (x - centre) * scale + shift + grad * dy (apply_bwd_*). One vec4 (or value)
// per thread on GPUs, like the copy kernel; PER_LANE vec4s sharing one coefficient load on CPU
// adapters (a whole workgroup looping over a run measured 1.5x slower on lavapipe).
//
// The coefficient table: four planes of `plane` values (centre | scale | shift | grad), entry
// sample * cp + channel with cp = round_up(c, 4), read as vec4s of four channels by the
// channels-last pass; then one vec4 (centre, scale, shift, grad) per entry, a single load for
// the others. Samples share entry 0's row when the statistics are per channel (BatchNorm: spr =
// all rows).

struct ApplyParams {
    c: u32,
    s: u32,          // run length (spatial size; 1 for channels-last)
    spr: u32,        // rows of [rows, c, s] per sample with its own coefficients; 0: shared
    plane: u32,
    e0: u32,         // global element index of this chunk's first element
    x_off: u32,      // element offset of the chunk's first element inside the x (and dy) binding
    y_off: u32,
    work: u32,       // vec4s (or values) of this dispatch
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: ApplyParams;
// x and y in their element storage (dtype_*.wgsl): widened on load, rounded once on store.
@group(0) @binding(1) var<storage, read> x: array<XV>;
@group(0) @binding(2) var<storage, read_write> y: array<XV>;
@group(0) @binding(4) var<storage, read> coef: array<vec4<f32>>;
// y as scalars, for apply_scalar (the same buffer as y).
@group(0) @binding(12) var<storage, read_write> y1: array<f32>;
// y as pairs (whole u32 words of halves), for apply_pair (the same buffer as y).
@group(0) @binding(14) var<storage, read_write> y2: array<XW>;
// The backward's incoming gradient, laid out like x.
@group(0) @binding(13) var<storage, read> dy: array<XV>;

// The backward through constant statistics (BatchNorm inference): dx = grad * dy does not read
// x, so a NaN or Inf in x stays out of dx (as in PyTorch), and x is not loaded.
override EVAL: bool = false;

// The shape's divisors, constants of the pipeline where the host fixes them (K_*: CPU
// adapters, where a division by a runtime value is a scalar division per lane), else from p.
override K_C: u32 = 0u;
override K_RUN: u32 = 0u;
override K_SPR: u32 = 0u;

fn nc() -> u32 {
    if (K_C != 0u) {
        return K_C;
    }
    return p.c;
}

fn ns() -> u32 {
    if (K_RUN != 0u) {
        return K_RUN;
    }
    return p.s;
}

fn nspr() -> u32 {
    if (K_SPR != 0u) {
        return K_SPR;
    }
    return p.spr;
}

fn cp() -> u32 {
    return (nc() + 3u) & ~3u;
}

// The table entry of global element i. spr == 0: one coefficient row shared by every sample
// (BatchNorm), which saves two integer divisions per element on the hot path.
fn entry_of(i: u32) -> u32 {
    var base = 0u;
    if (nspr() != 0u) {
        base = (i / (nc() * ns()) / nspr()) * cp();
    }
    return base + (i / ns()) % nc();
}

fn index(wid: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * p.grid_x) * WG + lid;
}

// Vec4s each thread of the vec4 kernels takes: CPU adapters load a lane's coefficients once
// per load instruction, not once per workgroup, so a lane with several vec4s of one run (or of
// one channel quad) loads them once for all; GPUs keep one vec4 per lane, a warp's loads
// contiguous.
override PER_LANE: u32 = 1u;

// A thread's vec4s: PER_LANE of them from v0 (chunk vec4 index), `stride` apart, the first
// `n` existing; `entry` picks their coefficients.
struct Span {
    v0: u32,
    stride: u32,
    n: u32,
    entry: u32,
}

// Channels-first, s % 4 == 0: PER_LANE consecutive vec4s of one run (its last thread may take
// fewer), of one channel. Only BatchNorm runs channels-first through here: one coefficient row
// for every sample; `entry` is the channel.
fn cf4_span(e: u32) -> Span {
    let s4 = ns() / 4u;
    let per_run = (s4 + PER_LANE - 1u) / PER_LANE;
    let run = e / per_run;
    let j = (e % per_run) * PER_LANE;
    if (run >= p.work / s4) {
        return Span(0u, 1u, 0u, 0u);
    }
    // Chunks hold whole samples: e0 is a multiple of the run length.
    let ch = (p.e0 / ns() + run) % nc();
    return Span(run * s4 + j, 1u, min(PER_LANE, s4 - j), ch);
}

// Channels-last, c % 4 == 0: the same four channels (vec4 column q) of PER_LANE consecutive
// rows; `entry` is their place in the planes, over 4. With coefficients per sample the host
// takes PER_LANE rows only when they divide a sample's rows (spr).
fn cl4_span(e: u32) -> Span {
    let c4 = nc() / 4u;
    let q = e % c4;
    let r0 = (e / c4) * PER_LANE;
    let rows = p.work / c4;
    if (r0 >= rows) {
        return Span(0u, c4, 0u, 0u);
    }
    var entry = q;
    if (nspr() != 0u) {
        // Chunks hold whole samples: e0 is a multiple of c.
        entry += ((p.e0 / nc() + r0) / nspr()) * (cp() / 4u);
    }
    return Span(r0 * c4 + q, c4, min(PER_LANE, rows - r0), entry);
}

// Element i of the x binding, for the scalar kernels.
fn ld(i: u32) -> f32 {
    return widen4(x[i >> 2u])[i & 3u];
}

// Element i of the dy binding (x's storage and offsets).
fn ld_dy(i: u32) -> f32 {
    return widen4(dy[i >> 2u])[i & 3u];
}

@compute @workgroup_size(WG)
fn apply_cf4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sp = cf4_span(index(wid, lid));
    let k = coef[p.plane + sp.entry];
    for (var i = 0u; i < PER_LANE; i++) {
        if (i < sp.n) {
            let e = sp.v0 + i;
            let v = widen4(x[p.x_off / 4u + e]);
            y[p.y_off / 4u + e] = narrow4(fma(v - vec4<f32>(k.x), vec4<f32>(k.y), vec4<f32>(k.z)));
        }
    }
}

@compute @workgroup_size(WG)
fn apply_cl4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sp = cl4_span(index(wid, lid));
    let pv = p.plane / 4u;
    let centre = coef[sp.entry];
    let scale = coef[pv + sp.entry];
    let shift = coef[2u * pv + sp.entry];
    for (var i = 0u; i < PER_LANE; i++) {
        if (i < sp.n) {
            let e = sp.v0 + i * sp.stride;
            let v = widen4(x[p.x_off / 4u + e]);
            y[p.y_off / 4u + e] = narrow4(fma(v - centre, scale, shift));
        }
    }
}

// One value per thread, for shapes whose runs do not fill whole vec4s.
@compute @workgroup_size(WG)
fn apply_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = index(wid, lid);
    if (e >= p.work) {
        return;
    }
    let k = coef[p.plane + entry_of(p.e0 + e)];
    y1[p.y_off + e] = fma(ld(p.x_off + e) - k.x, k.y, k.z);
}

// Half storage, runs that do not fill whole vec4s: one whole word (two elements, each with its
// own coefficients) per thread, so no two threads write one word. `work` counts elements; the
// chunk starts on a whole word, and an odd count's last word gets a copy of the last element in
// its padding half.
@compute @workgroup_size(WG)
fn apply_pair(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = index(wid, lid);
    if (2u * w >= p.work) {
        return;
    }
    var o = vec2<f32>(0.0);
    for (var k = 0u; k < 2u; k++) {
        let e = min(2u * w + k, p.work - 1u);
        let c = coef[p.plane + entry_of(p.e0 + e)];
        o[k] = fma(ld(p.x_off + e) - c.x, c.y, c.z);
    }
    y2[p.y_off / 2u + w] = narrow2(o);
}

@compute @workgroup_size(WG)
fn apply_bwd_cf4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sp = cf4_span(index(wid, lid));
    let k = coef[p.plane + sp.entry];
    for (var n = 0u; n < PER_LANE; n++) {
        if (n < sp.n) {
            let e = sp.v0 + n;
            let i = p.x_off / 4u + e;
            var t = vec4<f32>(0.0);
            if (!EVAL) {
                t = fma(widen4(x[i]) - vec4<f32>(k.x), vec4<f32>(k.y), vec4<f32>(k.z));
            }
            y[p.y_off / 4u + e] = narrow4(fma(widen4(dy[i]), vec4<f32>(k.w), t));
        }
    }
}

@compute @workgroup_size(WG)
fn apply_bwd_cl4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sp = cl4_span(index(wid, lid));
    let pv = p.plane / 4u;
    var centre = vec4<f32>(0.0);
    var scale = vec4<f32>(0.0);
    var shift = vec4<f32>(0.0);
    if (!EVAL) {
        centre = coef[sp.entry];
        scale = coef[pv + sp.entry];
        shift = coef[2u * pv + sp.entry];
    }
    let grad = coef[3u * pv + sp.entry];
    for (var n = 0u; n < PER_LANE; n++) {
        if (n < sp.n) {
            let e = sp.v0 + n * sp.stride;
            let i = p.x_off / 4u + e;
            var t = vec4<f32>(0.0);
            if (!EVAL) {
                t = fma(widen4(x[i]) - centre, scale, shift);
            }
            y[p.y_off / 4u + e] = narrow4(fma(widen4(dy[i]), grad, t));
        }
    }
}

@compute @workgroup_size(WG)
fn apply_bwd_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = index(wid, lid);
    if (e >= p.work) {
        return;
    }
    let k = coef[p.plane + entry_of(p.e0 + e)];
    let i = p.x_off + e;
    var t = 0.0;
    if (!EVAL) {
        t = fma(ld(i) - k.x, k.y, k.z);
    }
    y1[p.y_off + e] = fma(ld_dy(i), k.w, t);
}

// Half storage, runs that do not fill whole vec4s: dx one whole word per thread, as apply_pair.
@compute @workgroup_size(WG)
fn apply_bwd_pair(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = index(wid, lid);
    if (2u * w >= p.work) {
        return;
    }
    var o = vec2<f32>(0.0);
    for (var k = 0u; k < 2u; k++) {
        let e = min(2u * w + k, p.work - 1u);
        let c = coef[p.plane + entry_of(p.e0 + e)];
        let i = p.x_off + e;
        var t = 0.0;
        if (!EVAL) {
            t = fma(ld(i) - c.x, c.y, c.z);
        }
        o[k] = fma(ld_dy(i), c.w, t);
    }
    y2[p.y_off / 2u + w] = narrow2(o);
}
