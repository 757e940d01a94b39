// Thread indexing and the first reduction level for adapters without subgroup operations.
// Prepended to a kernel family's module; `lanes_subgroup.wgsl` is its twin.

struct Lane {
    @builtin(local_invocation_index) lid: u32,
}

fn thread_index(l: Lane) -> u32 {
    return l.lid;
}

// No lanes are combined before the workgroup-memory levels.
const INNER_SPAN: u32 = 1u;

fn group_inner(w: vec4<f32>, welford: bool, l: Lane) -> vec4<f32> {
    return w;
}
