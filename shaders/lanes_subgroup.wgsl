// Thread indexing and the first reduction levels with subgroup shuffles (no barriers).
// Needs the SUBGROUP device feature; naga rejects `enable subgroups;` (the host adds it only for
// browser WebGPU, which requires it), the feature alone enables the builtins.
//
// Threads are numbered by local_invocation_index. The butterflies below combine thread t with
// t ^ off through subgroupShuffleXor, which is right only if every subgroup is a run of
// consecutive indices with lane = index % subgroup size and at least SG_MIN lanes. Nothing in
// WebGPU promises that (DX12 and some browsers may form partial or reordered subgroups), so
// the host checks it once per device with `subgroup_probe` and uses `lanes_shared.wgsl` when
// it fails. The probe sees its own pipeline only: drivers that vary the width per pipeline stay
// covered because SG_MIN is the adapter's minimum (or the probe's, if smaller), and the layout
// (full subgroups, lane = index % size) is assumed to be the same for every pipeline of the
// device. This prelude never reads `subgroup_id`, which browsers gate behind a language
// feature.

// A lower bound of the subgroup size, set by the host from the adapter and the probe.
// Butterflies over xor offsets below it stay inside one subgroup whatever size the driver
// picks, because subgroup sizes are powers of two.
override SG_MIN: u32 = 4u;

struct Lane {
    @builtin(local_invocation_index) lid: u32,
}

fn thread_index(l: Lane) -> u32 {
    return l.lid;
}

override INNER_SPAN: u32 = min(TPR, SG_MIN);

fn group_inner(w: vec4<f32>, welford: bool, l: Lane) -> vec4<f32> {
    var a = w;
    for (var off = 1u; off < INNER_SPAN; off = off << 1u) {
        if (welford) {
            let b = subgroupShuffleXor(a, off);
            // Both partners merge (lower, upper) in that order: bit-identical results.
            if ((l.lid & off) == 0u) {
                a = combine(a, b, true);
            } else {
                a = combine(b, a, true);
            }
        } else {
            // a + b == b + a exactly, so partners agree without ordering.
            a.x = a.x + subgroupShuffleXor(a.x, off);
        }
    }
    return a;
}
