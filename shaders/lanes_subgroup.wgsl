// Thread indexing and the first reduction levels with subgroup shuffles (no barriers).
// Needs the SUBGROUP device feature; naga rejects `enable subgroups;`, the feature alone enables
// the builtins.

// A lower bound of the adapter's subgroup size (AdapterInfo::subgroup_min_size), set by the
// host. Butterflies over xor offsets below it stay inside one subgroup whatever size the driver
// picks, because subgroup sizes are powers of two and `thread_index` numbers lanes subgroup by
// subgroup.
override SG_MIN: u32 = 4u;

struct Lane {
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
}

// Numbers the threads so that every block of SG_MIN consecutive indices is one subgroup's
// consecutive lanes; the workgroup size is a multiple of the largest subgroup size.
fn thread_index(l: Lane) -> u32 {
    return l.sg_id * l.sg_size + l.sg_lane;
}

override INNER_SPAN: u32 = min(TPR, SG_MIN);

fn group_inner(w: vec4<f32>, welford: bool, l: Lane) -> vec4<f32> {
    var a = w;
    for (var off = 1u; off < INNER_SPAN; off = off << 1u) {
        if (welford) {
            let b = subgroupShuffleXor(a, off);
            // Both partners merge (lower, upper) in that order: bit-identical results.
            if ((l.sg_lane & off) == 0u) {
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
