use thiserror::Error;

/// Everything that can go wrong in this crate. No public function panics on bad input; each
/// failure is one of these, with a message that says what to change.
///
/// ```
/// use fused_norm::NormError;
/// let e = NormError::InvalidArgument("eps must be finite and >= 0, got -1".into());
/// assert!(e.to_string().contains("eps"));
/// ```
#[derive(Debug, Error, Clone, PartialEq)]
pub enum NormError {
    /// No wgpu adapter could be found.
    #[error(
        "no GPU adapter found{0}. Install a GPU driver, or a software one: on Debian/Ubuntu \
         `apt-get install mesa-vulkan-drivers` gives Vulkan lavapipe; Mesa's llvmpipe serves \
         WGPU_BACKEND=gl"
    )]
    NoAdapter(String),
    /// The adapter refused to create a device.
    #[error("could not create a device: {0}")]
    Device(String),
    /// A shape is empty, has a zero dimension, or does not match the data or another tensor.
    #[error("shape error: {0}")]
    Shape(String),
    /// A scalar option (eps, momentum, ...) is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A tensor belongs to another wgpu device than the `Gpu` it is used with.
    #[error("tensor `{0}` belongs to another device than the Gpu it is used with")]
    WrongDevice(&'static str),
    /// A wrapped buffer lacks a usage flag or is too small.
    #[error("buffer error: {0}")]
    Buffer(String),
    /// The work does not fit the device's limits even in chunks.
    #[error("too large for this device: {0}")]
    TooLarge(String),
    /// wgpu reported a validation or out-of-memory error, caught by an error scope.
    #[error("wgpu error: {0}")]
    Wgpu(String),
    /// Reading results back from the device failed.
    #[error("readback failed: {0}")]
    Readback(String),
    /// A collective call (SyncBatchNorm across processes) failed on `rank`, the lowest failing
    /// one; every rank returns this error, so none waits in an exchange for a failed peer.
    #[error("rank {rank} failed: {message}")]
    Collective {
        /// The lowest rank that failed.
        rank: usize,
        /// What went wrong there (its own error, as text), or why the exchange failed.
        message: String,
    },
}

/// Shorthand for `Result<T, NormError>`.
pub type Result<T> = std::result::Result<T, NormError>;
