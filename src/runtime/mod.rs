//! Crate-private plumbing every norm shares: shader modules and the pipeline cache
//! (`pipeline`), typed override constants (`constants`), launches with named bindings and
//! chunking over bindings (`dispatch`), the workgroup-size and loop-length policy (`policy`),
//! and the subgroup probe (`probe`).

pub(crate) mod constants;
pub(crate) mod dispatch;
pub(crate) mod pipeline;
pub(crate) mod policy;
pub(crate) mod probe;
