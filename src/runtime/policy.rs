//! Workgroup sizes and loop lengths, in one place for every kernel family.

use crate::context::Gpu;

/// Most loop iterations one thread runs over its values. llvmpipe stops loops after 65535
/// iterations per invocation, and a long sequential Welford loses precision (its error grows
/// with the count, while the tree merges grow with its log): 1024 keeps both far away.
pub(crate) const MAX_THREAD_ITERS: u64 = 1024;

/// What a device's kernels are sized by.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    /// CPU-adapter tables (see `Tuning`).
    pub cpu: bool,
    /// Threads per workgroup: 64 on CPU adapters, 256 on GPUs, at least the widest subgroup.
    pub wg: u32,
    /// The widest group of threads that reduces without a barrier: the smallest subgroup, or 1.
    pub sg: u32,
}

impl Policy {
    pub(crate) fn of(gpu: &Gpu) -> Policy {
        let caps = gpu.capabilities();
        let max_wg = gpu.max_wg();
        // On CPU adapters a workgroup that meets a barrier costs microseconds (lavapipe runs its
        // subgroups as coroutines), so reductions there stay inside one subgroup. GPUs want 256
        // threads per workgroup to hide memory latency.
        let cpu = gpu.is_cpu();
        let wg = if cpu { 64 } else { 256 }
            .min(max_wg)
            .max(caps.subgroup_max_size.min(max_wg));
        let sg = if caps.subgroups {
            caps.subgroup_min_size.min(max_wg)
        } else {
            1
        };
        Policy { cpu, wg, sg }
    }
}
