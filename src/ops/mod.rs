//! The reductions, by what they reduce over: contiguous rows (`rows`), strided channels
//! (`channels`) and the elementwise pass of the latter (`apply`); plus the checks every norm
//! shares (`affine`). The norms in `crate::norms` are configurations of these.

pub(crate) mod affine;
pub(crate) mod apply;
pub(crate) mod channels;
pub(crate) mod elementwise;
pub(crate) mod rows;
pub(crate) mod rows_bwd;
