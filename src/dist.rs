//! SyncBatchNorm across processes over MPI (feature `mpi`): [`MpiReducer`] carries the
//! [`StatsReducer`] collectives with `MPI_Allgather`, so
//! [`BatchNorm::forward_train_sync`](crate::BatchNorm::forward_train_sync) normalizes each
//! process's part of a batch with the statistics of the whole batch.
//!
//! ```no_run
//! use fused_norm::{dist::MpiReducer, BatchNorm, Gpu, Layout, Tensor};
//! let universe = mpi::initialize().expect("MPI initializes once");
//! let reducer = MpiReducer::new(universe.world());
//! let gpu = Gpu::new()?;                                    // one device per process
//! let part = vec![0.5f32; 8 * 64 * 7 * 7];                  // this rank's 8 images
//! let x = Tensor::from_slice(&gpu, &part, &[8, 64, 7, 7])?;
//! let mut bn = BatchNorm::new(&gpu, 64)?;
//! let out = bn.forward_train_sync(&gpu, &x, Layout::ChannelsFirst, &reducer)?;
//! # Ok::<(), fused_norm::NormError>(())
//! ```

use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

use crate::error::Result;
use crate::stats::StatsReducer;

/// A [`StatsReducer`] over an MPI communicator: one rank per process. MPI errors abort the job
/// (MPI's default handler), so a failed exchange never leaves a rank waiting.
///
/// ```no_run
/// use fused_norm::{dist::MpiReducer, StatsReducer};
/// let universe = mpi::initialize().unwrap();
/// let reducer = MpiReducer::new(universe.world());
/// println!("rank {} of {}", reducer.rank(), reducer.size());
/// ```
pub struct MpiReducer {
    comm: SimpleCommunicator,
}

impl std::fmt::Debug for MpiReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MpiReducer(rank {} of {})", self.rank(), self.size())
    }
}

impl MpiReducer {
    /// Exchanges over `comm` (usually `universe.world()`); every process of it takes part in
    /// each collective call.
    ///
    /// ```no_run
    /// let universe = mpi::initialize().unwrap();
    /// let reducer = fused_norm::dist::MpiReducer::new(universe.world());
    /// ```
    pub fn new(comm: SimpleCommunicator) -> MpiReducer {
        MpiReducer { comm }
    }

    /// The communicator.
    ///
    /// ```no_run
    /// use mpi::traits::*;
    /// let universe = mpi::initialize().unwrap();
    /// let reducer = fused_norm::dist::MpiReducer::new(universe.world());
    /// reducer.communicator().barrier();
    /// ```
    pub fn communicator(&self) -> &SimpleCommunicator {
        &self.comm
    }
}

impl StatsReducer for MpiReducer {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    fn size(&self) -> usize {
        self.comm.size() as usize
    }

    fn all_gather(&self, local: &[u8]) -> Result<Vec<u8>> {
        let mut out = vec![0u8; local.len() * self.size()];
        self.comm.all_gather_into(local, &mut out[..]);
        Ok(out)
    }
}
