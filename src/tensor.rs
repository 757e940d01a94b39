//! `Tensor`: a storage buffer of f32, f16 or bf16 values on one device, with a row-major shape.

use std::sync::Arc;

use crate::context::{Gpu, Serial};
use crate::error::{NormError, Result};

/// The element type of a [`Tensor`]'s storage. Kernels load, widen to f32, compute in f32 and
/// round once (to nearest even) when they store a half-precision value.
///
/// ```
/// use fused_norm::DType;
/// assert_eq!(DType::BF16.size(), 2);
/// assert_eq!(DType::F16.to_string(), "f16");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16 (`half::f16`): max 65504, 11-bit significand.
    F16,
    /// bfloat16 (`half::bf16`): f32's range, 8-bit significand.
    BF16,
}

impl DType {
    /// Bytes per element.
    ///
    /// ```
    /// assert_eq!(fused_norm::DType::F32.size(), 4);
    /// ```
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Whether this is a 16-bit type.
    pub(crate) fn is_half(self) -> bool {
        self != DType::F32
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A host element type a [`Tensor`] can be made from and read into: `f32`, `half::f16`,
/// `half::bf16`. Sealed: the kernels know these three.
///
/// ```
/// use fused_norm::{DType, Element};
/// assert_eq!(<half::bf16 as Element>::DTYPE, DType::BF16);
/// assert_eq!(half::f16::from_f32(0.5).widen(), 0.5);
/// ```
pub trait Element: sealed::Sealed + bytemuck::Pod + Copy + Send + Sync + 'static {
    /// The storage type of tensors of this element.
    const DTYPE: DType;
    /// The value as an f32 (exact: f32 holds every f16 and bf16 value).
    fn widen(self) -> f32;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn widen(self) -> f32 {
        self
    }
}

impl Element for half::f16 {
    const DTYPE: DType = DType::F16;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl Element for half::bf16 {
    const DTYPE: DType = DType::BF16;
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// A tensor's buffer. Freeing a buffer takes wgpu's GL context lock, which panics after 6 s of
/// waiting (another thread may be running a long submission): the last owner frees it during
/// its turn at the device instead. A clone of the `wgpu::Buffer` taken with
/// [`Tensor::buffer`] is freed wherever its owner drops it.
struct Owned {
    buffer: Option<wgpu::Buffer>,
    serial: Option<Arc<Serial>>,
}

impl Owned {
    fn new(gpu: &Gpu, buffer: wgpu::Buffer) -> Arc<Owned> {
        Arc::new(Owned {
            buffer: Some(buffer),
            serial: gpu.serial(),
        })
    }

    fn get(&self) -> &wgpu::Buffer {
        self.buffer
            .as_ref()
            .expect("a buffer is present until dropped")
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _turn = self.serial.as_ref().and_then(|s| s.enter());
        drop(self.buffer.take());
    }
}

impl std::fmt::Debug for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.buffer.fmt(f)
    }
}

/// A tensor in a GPU storage buffer, row-major, of f32, f16 or bf16 values ([`DType`]).
/// Cloning is cheap: clones share the buffer.
///
/// Buffers this crate allocates are padded to a multiple of 16 bytes (kernels load vec4s).
///
/// ```no_run
/// use fused_norm::{DType, Gpu, Tensor};
/// use half::f16;
/// let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
/// assert_eq!(x.shape(), &[2, 3]);
/// assert_eq!(x.to_vec(&gpu)?, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
/// let h = Tensor::from_slice(&gpu, &[f16::from_f32(0.5); 6], &[2, 3])?;
/// assert_eq!(h.dtype(), DType::F16);
/// let b = h.cast(&gpu, DType::BF16)?;              // on the GPU, round to nearest even
/// assert_eq!(b.to_vec(&gpu)?, vec![0.5; 6]);        // any dtype, widened exactly
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Tensor {
    buffer: Arc<Owned>,
    shape: Vec<usize>,
    dtype: DType,
    // The Gpu context that made it (wgpu's Device equality compares registry ids, which
    // collide between devices of different instances).
    owner: u64,
}

/// Bytes a tensor of `numel` values of `dtype` occupies: padded to 16 for vec4 access.
pub(crate) fn padded_bytes_of(numel: usize, dtype: DType) -> u64 {
    ((numel * dtype.size()) as u64).div_ceil(16).max(1) * 16
}

/// Bytes the values themselves occupy, rounded up to whole 4-byte words (copies and the packed
/// half kernels work in words).
pub(crate) fn word_bytes(numel: usize, dtype: DType) -> u64 {
    ((numel * dtype.size()) as u64).div_ceil(4) * 4
}

pub(crate) fn check_shape(shape: &[usize]) -> Result<usize> {
    if shape.is_empty() {
        return Err(NormError::Shape(
            "a tensor needs at least one dimension".into(),
        ));
    }
    if let Some(i) = shape.iter().position(|&d| d == 0) {
        return Err(NormError::Shape(format!(
            "dimension {i} of {shape:?} is zero"
        )));
    }
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            NormError::TooLarge(format!(
                "shape {shape:?} has more elements than usize holds"
            ))
        })
}

impl Tensor {
    /// Uploads `data` with the given row-major shape; the tensor's dtype is the slice's element
    /// type (`f32`, `half::f16` or `half::bf16`).
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let t = fused_norm::Tensor::from_slice(&gpu, &[0.5; 12], &[3, 4])?;
    /// let h = fused_norm::Tensor::from_slice(&gpu, &[half::bf16::ONE; 12], &[3, 4])?;
    /// assert_eq!(h.dtype(), fused_norm::DType::BF16);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn from_slice<T: Element>(gpu: &Gpu, data: &[T], shape: &[usize]) -> Result<Tensor> {
        let n = check_shape(shape)?;
        if data.len() != n {
            return Err(NormError::Shape(format!(
                "data has {} values but shape {shape:?} needs {n}",
                data.len()
            )));
        }
        let t = Tensor::empty_dtype(gpu, shape, T::DTYPE)?;
        // write_buffer takes whole 4-byte words: an odd count of halves gets a zero half (a
        // copy only then).
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let padded;
        let bytes = match bytes.len() % 4 {
            0 => bytes,
            _ => {
                let mut v = bytes.to_vec();
                v.resize(word_bytes(n, T::DTYPE) as usize, 0);
                padded = v;
                &padded[..]
            }
        };
        gpu.scoped(|_| gpu.queue().write_buffer(t.buffer(), 0, bytes))?;
        Ok(t)
    }

    /// An uninitialised (zeroed by wgpu) tensor: an output for the `encode` methods.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let y = fused_norm::Tensor::empty(&gpu, &[8, 768])?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn empty(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        Tensor::empty_dtype(gpu, shape, DType::F32)
    }

    /// [`Tensor::empty`] with another element type.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let y = fused_norm::Tensor::empty_dtype(&gpu, &[8, 768], fused_norm::DType::F16)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn empty_dtype(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n = check_shape(shape)?;
        let size = padded_bytes_of(n, dtype);
        let max = gpu.limits().max_buffer_size;
        if size > max {
            return Err(NormError::TooLarge(format!(
                "{size} bytes exceed the device's largest buffer ({max} bytes)"
            )));
        }
        let buffer = gpu.scoped(|d| {
            d.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused-norm tensor"),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        Ok(Tensor {
            buffer: Owned::new(gpu, buffer),
            shape: shape.to_vec(),
            dtype,
            owner: gpu.id(),
        })
    }

    /// Wraps an existing buffer without copying. It needs `STORAGE` usage (and `COPY_SRC` for
    /// [`Tensor::to_vec`]), at least `numel * 4` bytes, and must come from `gpu`'s device (wgpu
    /// cannot tell us which device a buffer belongs to). The kernels read and write whole
    /// vec4s: a buffer of `numel * 4` bytes that is not a multiple of 16 works too, through a
    /// padded copy (its input needs `COPY_SRC`, an output `COPY_DST`); size buffers to a
    /// multiple of 16 bytes to skip that copy.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let buf = gpu.device().create_buffer(&wgpu::BufferDescriptor {
    ///     label: None, size: 4096, mapped_at_creation: false,
    ///     usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    /// });
    /// let t = fused_norm::Tensor::from_buffer(&gpu, buf, &[4, 256])?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn from_buffer(gpu: &Gpu, buffer: wgpu::Buffer, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_buffer_dtype(gpu, buffer, shape, DType::F32)
    }

    /// [`Tensor::from_buffer`] for a buffer of `dtype` values: at least `numel * size` bytes
    /// rounded up to a whole 4-byte word (an odd count of halves ends in half a word).
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let buf = gpu.device().create_buffer(&wgpu::BufferDescriptor {
    ///     label: None, size: 2048, mapped_at_creation: false,
    ///     usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    /// });
    /// let t = fused_norm::Tensor::from_buffer_dtype(&gpu, buf, &[4, 256], fused_norm::DType::F16)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn from_buffer_dtype(
        gpu: &Gpu,
        buffer: wgpu::Buffer,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        let n = check_shape(shape)?;
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(NormError::Buffer(format!(
                "the buffer has usage {:?}; kernels need STORAGE",
                buffer.usage()
            )));
        }
        let need = word_bytes(n, dtype);
        if buffer.size() < need {
            return Err(NormError::Buffer(format!(
                "shape {shape:?} needs {need} bytes ({dtype}), the buffer has {}",
                buffer.size()
            )));
        }
        Ok(Tensor {
            buffer: Owned::new(gpu, buffer),
            shape: shape.to_vec(),
            dtype,
            owner: gpu.id(),
        })
    }

    /// The row-major shape.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let t = fused_norm::Tensor::empty(&gpu, &[2, 5])?;
    /// assert_eq!(t.shape(), &[2, 5]);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type of the storage.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let t = fused_norm::Tensor::empty(&gpu, &[2, 5])?;
    /// assert_eq!(t.dtype(), fused_norm::DType::F32);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let t = fused_norm::Tensor::empty(&gpu, &[2, 5])?;
    /// assert_eq!(t.numel(), 10);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The underlying buffer (shared, not copied).
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let t = fused_norm::Tensor::empty(&gpu, &[4])?;
    /// let size = t.buffer().size();
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.get()
    }

    /// The same buffer with another shape of the same element count.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let t = fused_norm::Tensor::empty(&gpu, &[2, 6])?;
    /// let r = t.reshape(&[3, 4])?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n = check_shape(shape)?;
        if n != self.numel() {
            return Err(NormError::Shape(format!(
                "cannot reshape {:?} ({} values) to {shape:?} ({n})",
                self.shape,
                self.numel()
            )));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            ..self.clone()
        })
    }

    /// Downloads the values, widened to f32 (exactly: f32 holds every f16 and bf16 value).
    /// Blocks: [`Tensor::to_vec_async`] is the same as a future.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let t = fused_norm::Tensor::from_slice(&gpu, &[1.0], &[1])?;
    /// let v: Vec<f32> = t.to_vec(&gpu)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn to_vec(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        crate::context::block(self.to_vec_async(gpu))?
    }

    /// Downloads the values; the future resolves once they are on the host. What a browser
    /// calls (it cannot block); on native targets the future waits for the device itself.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let t = fused_norm::Tensor::from_slice(&gpu, &[1.0], &[1])?;
    /// let v: Vec<f32> = pollster::block_on(t.to_vec_async(&gpu))?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub async fn to_vec_async(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let bytes = self.download(gpu).await?;
        let n = self.numel();
        Ok(match self.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec(&bytes[..n * 4]),
            DType::F16 => widened::<half::f16>(&bytes[..n * 2]),
            DType::BF16 => widened::<half::bf16>(&bytes[..n * 2]),
        })
    }

    /// Downloads the values in their own type: `T` must be the tensor's dtype (else
    /// `NormError::InvalidArgument`; [`Tensor::to_vec`] widens any dtype to f32). Blocks.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// use half::f16;
    /// let t = fused_norm::Tensor::from_slice(&gpu, &[f16::ONE, f16::ZERO], &[2])?;
    /// let v: Vec<f16> = t.read::<f16>(&gpu)?;
    /// assert!(t.read::<f32>(&gpu).is_err());
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn read<T: Element>(&self, gpu: &Gpu) -> Result<Vec<T>> {
        crate::context::block(self.read_async::<T>(gpu))?
    }

    /// [`Tensor::read`] as a future.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let t = fused_norm::Tensor::from_slice(&gpu, &[1.0f32], &[1])?;
    /// let v: Vec<f32> = pollster::block_on(t.read_async::<f32>(&gpu))?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub async fn read_async<T: Element>(&self, gpu: &Gpu) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(NormError::InvalidArgument(format!(
                "read::<{}> of a {} tensor; read its own type, or to_vec for f32",
                T::DTYPE,
                self.dtype
            )));
        }
        let bytes = self.download(gpu).await?;
        Ok(bytemuck::pod_collect_to_vec(
            &bytes[..self.numel() * self.dtype.size()],
        ))
    }

    /// Converts to `dtype` on the GPU, rounding to nearest even (overflow gives +-Inf, NaN stays
    /// NaN); widening is exact. A new tensor, even for the same dtype. Blocks.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let x = fused_norm::Tensor::from_slice(&gpu, &[1.0 / 3.0, 7e4], &[2])?;
    /// let h = x.cast(&gpu, fused_norm::DType::F16)?;
    /// assert_eq!(h.to_vec(&gpu)?, vec![0.33325195, f32::INFINITY]);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn cast(&self, gpu: &Gpu, dtype: DType) -> Result<Tensor> {
        self.check_device(gpu, "tensor")?;
        let out = Tensor::empty_dtype(gpu, &self.shape, dtype)?;
        let mut enc = gpu.encoder();
        self.encode_cast(gpu, &mut enc, &out)?;
        gpu.submit_wait(enc)?;
        Ok(out)
    }

    /// [`Tensor::cast`] recorded into the caller's encoder, writing `out` (same shape, any
    /// dtype; not this tensor's buffer). No submit, no wait.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// # let x = fused_norm::Tensor::from_slice(&gpu, &[1.0f32; 4], &[4])?;
    /// let out = fused_norm::Tensor::empty_dtype(&gpu, &[4], fused_norm::DType::BF16)?;
    /// let mut enc = gpu.encoder();
    /// x.encode_cast(&gpu, &mut enc, &out)?;
    /// gpu.submit_wait(enc)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn encode_cast(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        out: &Tensor,
    ) -> Result<()> {
        self.check_device(gpu, "tensor")?;
        crate::ops::affine::check_outputs(
            gpu,
            &[("the input", Some(self))],
            &[("out", out, self.numel())],
        )?;
        crate::ops::elementwise::cast(gpu, encoder, self, out)
    }

    /// The stored bytes (whole words), downloaded.
    async fn download(&self, gpu: &Gpu) -> Result<Vec<u8>> {
        self.check_device(gpu, "tensor")?;
        if !self.buffer().usage().contains(wgpu::BufferUsages::COPY_SRC) {
            return Err(NormError::Buffer(
                "to_vec needs a buffer with COPY_SRC usage".into(),
            ));
        }
        let bytes = word_bytes(self.numel(), self.dtype);
        let staging = gpu.scoped(|d| {
            d.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused-norm readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let mut enc = gpu.encoder();
        enc.copy_buffer_to_buffer(self.buffer(), 0, &staging, 0, bytes);
        gpu.submit_async(enc).await?;
        let bytes = gpu.read_mapped_async(&staging).await;
        // Freed during this thread's turn at the device (see `Owned`).
        let _turn = gpu.turn();
        drop(staging);
        bytes
    }

    /// Errors if `out` shares its buffer with `input` (kernels read one and write the other).
    /// A tensor of `shape` on `gpu` backed by the context's 16-byte placeholder: for planning
    /// a call, never bound.
    pub(crate) fn shape_only(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        Tensor::shape_only_dtype(gpu, shape, DType::F32)
    }

    /// [`Tensor::shape_only`] of another dtype.
    pub(crate) fn shape_only_dtype(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        check_shape(shape)?;
        Ok(Tensor {
            shape: shape.to_vec(),
            dtype,
            ..gpu.placeholder()?
        })
    }

    /// Whether kernels can bind the buffer as vec4s: it covers the values rounded up to 16 bytes.
    pub(crate) fn is_padded(&self) -> bool {
        self.buffer().size() >= padded_bytes_of(self.numel(), self.dtype)
    }

    /// Errors unless the tensor holds `dtype` values: the kernels that read it know one type.
    pub(crate) fn check_dtype(&self, name: &str, dtype: DType) -> Result<()> {
        if self.dtype == dtype {
            return Ok(());
        }
        Err(NormError::InvalidArgument(format!(
            "{name} is {}, needs {dtype}",
            self.dtype
        )))
    }

    /// Whether this tensor and `other` share a buffer.
    pub(crate) fn same_buffer(&self, other: &Tensor) -> bool {
        self.owner == other.owner && self.buffer() == other.buffer()
    }

    /// Errors if this output shares its buffer with `other` (another output, or a tensor the
    /// kernels read): each kernel writes an output while it reads the others.
    pub(crate) fn check_no_alias(
        &self,
        name: &str,
        other_name: &str,
        other: &Tensor,
    ) -> Result<()> {
        if self.same_buffer(other) {
            return Err(NormError::InvalidArgument(format!(
                "output {name} shares its buffer with {other_name}; in-place is not supported"
            )));
        }
        Ok(())
    }

    pub(crate) fn check_device(&self, gpu: &Gpu, name: &'static str) -> Result<()> {
        if gpu.id() == self.owner {
            Ok(())
        } else {
            Err(NormError::WrongDevice(name))
        }
    }
}

fn widened<T: Element>(bytes: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec::<u8, T>(bytes)
        .into_iter()
        .map(Element::widen)
        .collect()
}
