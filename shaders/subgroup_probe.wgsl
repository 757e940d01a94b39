// Checks, on the device, what `lanes_subgroup.wgsl` assumes (see there): for each thread, its
// lane, the subgroup size, and the butterfly sum of thread indices over xor offsets below
// SG_MIN. The host compares them with what full, in-order subgroups give.

override WG: u32 = 64u;
override SG_MIN: u32 = 4u;

@group(0) @binding(0) var<storage, read_write> probe: array<vec4<u32>>;

@compute @workgroup_size(WG)
fn subgroup_probe(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) size: u32,
) {
    var a = lid;
    for (var off = 1u; off < SG_MIN; off = off << 1u) {
        a = a + subgroupShuffleXor(a, off);
    }
    probe[wid.x * WG + lid] = vec4<u32>(lane, size, a, 0u);
}
