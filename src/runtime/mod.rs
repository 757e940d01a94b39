//! Crate-private plumbing every norm shares: shader modules and the pipeline cache
//! (`pipeline`), typed override constants (`constants`), launches with named bindings and
//! chunking over bindings (`dispatch`), the workgroup-size and loop-length policy (`policy`),
//! and the subgroup probe (`probe`).

pub(crate) mod constants;
pub(crate) mod dispatch;
pub(crate) mod pipeline;
pub(crate) mod policy;
pub(crate) mod probe;

/// A uniform block's Rust layout: (kernel family, WGSL struct name, size, named field offsets).
pub type UniformLayout = (
    &'static str,
    &'static str,
    usize,
    Vec<(&'static str, usize)>,
);

/// The layout of a `#[repr(C)]` params struct, for checking against its WGSL twin.
macro_rules! uniform_layout {
    ($family:literal, $ty:ident, [$($field:ident),* $(,)?]) => {
        (
            $family,
            stringify!($ty),
            std::mem::size_of::<$ty>(),
            vec![$((stringify!($field), std::mem::offset_of!($ty, $field))),*],
        )
    };
}
pub(crate) use uniform_layout;

/// Every params struct the host uploads, for `tests/shaders.rs` to compare with the WGSL
/// structs through naga (size and offsets). Not part of the API.
#[doc(hidden)]
pub fn uniform_layouts() -> Vec<UniformLayout> {
    vec![
        crate::ops::rows::layout(),
        crate::ops::channels::layout(),
        crate::ops::apply::layout(),
        crate::ops::rows_bwd::layout(),
        crate::ops::elementwise::layout(),
    ]
}
