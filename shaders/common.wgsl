// Shared by every kernel family: Welford statistics, Chan's merge, and the deterministic group
// reduction. Prepended after `lanes_*.wgsl`.

// Threads per workgroup, and threads that cooperate on one reduction (a power of two dividing WG).
override WG: u32 = 64u;
override TPR: u32 = 64u;

// Largest workgroup any pipeline of this crate is created with.
const MAX_WG: u32 = 256u;

// `n` values with mean `mean` and sum of squared deviations from it `m2`. Means are of values
// shifted by a per-row (per-channel) pivot, so they stay small and `x - mean` stays exact.
struct Welford {
    n: f32,
    mean: f32,
    m2: f32,
}

// The median of three values: a pivot that one outlier among them does not move.
fn med3(a: f32, b: f32, c: f32) -> f32 {
    return max(min(a, b), min(max(a, b), c));
}

fn welford_empty() -> Welford {
    return Welford(0.0, 0.0, 0.0);
}

// Chan et al.'s pairwise merge. Exact in the sense that merging partials of any split gives the
// statistics of the whole up to rounding, so threads, workgroups and chunks combine freely.
fn welford_merge(a: Welford, b: Welford) -> Welford {
    if (b.n == 0.0) {
        return a;
    }
    if (a.n == 0.0) {
        return b;
    }
    let n = a.n + b.n;
    let delta = b.mean - a.mean;
    let wb = b.n / n;
    return Welford(n, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.n * wb);
}

// Four values at once: an exact two-pass over a vec4, one division per four elements when merged.
fn welford_vec4(v: vec4<f32>) -> Welford {
    let m = (v.x + v.y + v.z + v.w) * 0.25;
    let d = v - vec4<f32>(m);
    return Welford(4.0, m, dot(d, d));
}

// Partials of a group reduction: a Welford state (n, mean, m2, -) or a plain sum (sum, -, -, -).
fn combine(a: vec4<f32>, b: vec4<f32>, welford: bool) -> vec4<f32> {
    if (welford) {
        let m = welford_merge(Welford(a.x, a.y, a.z), Welford(b.x, b.y, b.z));
        return vec4<f32>(m.n, m.mean, m.m2, 0.0);
    }
    return vec4<f32>(a.x + b.x, 0.0, 0.0, 0.0);
}

var<workgroup> red_a: array<vec4<f32>, MAX_WG>;
var<workgroup> red_b: array<vec4<f32>, MAX_WG>;

// One level of the tree: combines `fan` partials `span` apart, starting at `base`, in order.
fn fold_a(base: u32, span: u32, fan: u32, welford: bool) -> vec4<f32> {
    var acc = red_a[base];
    for (var j = 1u; j < fan; j++) {
        acc = combine(acc, red_a[base + j * span], welford);
    }
    return acc;
}

fn fold_b(base: u32, span: u32, fan: u32, welford: bool) -> vec4<f32> {
    var acc = red_b[base];
    for (var j = 1u; j < fan; j++) {
        acc = combine(acc, red_b[base + j * span], welford);
    }
    return acc;
}

// Combines the partials of each aligned block of TPR threads; every thread of the block gets the
// block's total. The order is fixed (lower block first), so results are bit-identical run to
// run. Radix 8 keeps the barrier count near ceil(log8(TPR / INNER_SPAN)), since barriers
// dominate on CPU adapters. Must be called in uniform control flow by the whole workgroup.
//
// GPUs run a workgroup's subgroups in any order between barriers, so: a level writes one array
// and reads it after a barrier; the next level writes the other array (the slow subgroups may
// still be reading the first); and a barrier after a last level on red_a keeps a fast
// subgroup's next reduction (which starts on red_a) from overwriting partials a slow one has not
// read yet.
// `tests/shaders.rs` checks every kernel for a read and a write of one workgroup array between
// two barriers.
fn reduce_group(w: vec4<f32>, welford: bool, l: Lane) -> vec4<f32> {
    var a = group_inner(w, welford, l);
    // Constant per pipeline: lets the compiler drop the barrier loop, and with it the barrier,
    // when the group fits in a subgroup (CPU adapters run barrier-free shaders much faster).
    if (TPR <= INNER_SPAN) {
        return a;
    }
    let t = thread_index(l);
    var span = INNER_SPAN;
    loop {
        var fan = min(8u, TPR / span);
        red_a[t] = a;
        workgroupBarrier();
        a = fold_a(t - t % (span * fan), span, fan, welford);
        span = span * fan;
        if (span >= TPR) {
            // The next reduction starts on red_a: no thread may write it before every thread has
            // read it. (After a red_b level, the next reduction's first barrier orders that.)
            workgroupBarrier();
            break;
        }
        fan = min(8u, TPR / span);
        red_b[t] = a;
        workgroupBarrier();
        a = fold_b(t - t % (span * fan), span, fan, welford);
        span = span * fan;
        if (span >= TPR) {
            break;
        }
    }
    return a;
}

// Welford statistics of a group of TPR threads.
fn reduce_welford(w: Welford, l: Lane) -> Welford {
    let r = reduce_group(vec4<f32>(w.n, w.mean, w.m2, 0.0), true, l);
    return Welford(r.x, r.y, r.z);
}

// Sum over a group of TPR threads.
fn reduce_sum(v: f32, l: Lane) -> f32 {
    return reduce_group(vec4<f32>(v, 0.0, 0.0, 0.0), false, l).x;
}
