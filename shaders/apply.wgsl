// The elementwise pass of the channels family: y = (x - centre) * scale + shift, with the
// coefficients of the element's (sample, channel) from the table `channels.wgsl` fills. One
// vec4 (or value) per thread, like the copy kernel (a workgroup looping over a run measured
// 1.5x slower on lavapipe).
//
// The coefficient table: three planes of `plane` values (centre | scale | shift), entry
// sample * cp + channel with cp = round_up(c, 4), read as vec4s of four channels by the
// channels-last pass; then one vec4 (centre, scale, shift, -) per entry, a single load for the
// others. Samples share entry 0's row when the statistics are per channel (BatchNorm: spr = all
// rows).

struct ApplyParams {
    c: u32,
    s: u32,          // run length (spatial size; 1 for channels-last)
    spr: u32,        // rows of [rows, c, s] per sample with its own coefficients; 0: shared
    plane: u32,
    e0: u32,         // global element index of this chunk's first element
    x_off: u32,      // element offset of the chunk's first element inside the x binding
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

fn cp() -> u32 {
    return (p.c + 3u) & ~3u;
}

// The table entry of global element i. spr == 0: one coefficient row shared by every sample
// (BatchNorm), which saves two integer divisions per element on the hot path.
fn entry_of(i: u32) -> u32 {
    var base = 0u;
    if (p.spr != 0u) {
        base = (i / (p.c * p.s) / p.spr) * cp();
    }
    return base + (i / p.s) % p.c;
}

fn index(wid: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * p.grid_x) * WG + lid;
}

// Channels-first, s % 4 == 0: the vec4 lies in one run, of one channel.
@compute @workgroup_size(WG)
fn apply_cf4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = index(wid, lid);
    if (e >= p.work) {
        return;
    }
    // Only BatchNorm runs channels-first through here: one coefficient row for every sample.
    let k = coef[3u * p.plane / 4u + ((p.e0 + 4u * e) / p.s) % p.c];
    let v = widen4(x[p.x_off / 4u + e]);
    y[p.y_off / 4u + e] = narrow4(fma(v - vec4<f32>(k.x), vec4<f32>(k.y), vec4<f32>(k.z)));
}

// Channels-last, c % 4 == 0: the vec4 holds four channels of one row.
@compute @workgroup_size(WG)
fn apply_cl4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = index(wid, lid);
    if (e >= p.work) {
        return;
    }
    // entry_of without its divisions by s = 1: the vec4's first channel, over 4.
    var q = (p.e0 / 4u + e) % (p.c / 4u);
    if (p.spr != 0u) {
        q += ((p.e0 + 4u * e) / p.c / p.spr) * (cp() / 4u);
    }
    let pv = p.plane / 4u;
    let v = widen4(x[p.x_off / 4u + e]);
    y[p.y_off / 4u + e] = narrow4(fma(v - coef[q], coef[pv + q], coef[2u * pv + q]));
}

// One value per thread, for shapes whose runs do not fill whole vec4s.
@compute @workgroup_size(WG)
fn apply_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = index(wid, lid);
    if (e >= p.work) {
        return;
    }
    let k = coef[3u * p.plane / 4u + entry_of(p.e0 + e)];
    let i = p.x_off + e;
    y1[p.y_off + e] = fma(widen4(x[i >> 2u])[i & 3u] - k.x, k.y, k.z);
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
        let c = coef[3u * p.plane / 4u + entry_of(p.e0 + e)];
        let i = p.x_off + e;
        o[k] = fma(widen4(x[i >> 2u])[i & 3u] - c.x, c.y, c.z);
    }
    y2[p.y_off / 2u + w] = narrow2(o);
}
