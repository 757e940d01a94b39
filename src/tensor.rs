//! `Tensor`: an f32 storage buffer on one device, with a row-major shape.

use std::sync::Arc;

use crate::context::{Gpu, Serial};
use crate::error::{NormError, Result};

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

/// An f32 tensor in a GPU storage buffer, row-major. Cloning is cheap: clones share the buffer.
///
/// Buffers this crate allocates are padded to a multiple of 16 bytes (kernels load vec4s).
///
/// ```no_run
/// use fused_norm::{Gpu, Tensor};
/// let gpu = Gpu::new()?;
/// let x = Tensor::from_slice(&gpu, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])?;
/// assert_eq!(x.shape(), &[2, 3]);
/// assert_eq!(x.to_vec(&gpu)?, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Tensor {
    buffer: Arc<Owned>,
    shape: Vec<usize>,
    // The Gpu context that made it (wgpu's Device equality compares registry ids, which
    // collide between devices of different instances).
    owner: u64,
}

/// Bytes a tensor of `numel` f32 values occupies: padded to 16 for vec4 access.
pub(crate) fn padded_bytes(numel: usize) -> u64 {
    ((numel as u64) * 4).div_ceil(16).max(1) * 16
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
    /// Uploads `data` with the given row-major shape.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let t = fused_norm::Tensor::from_slice(&gpu, &[0.5; 12], &[3, 4])?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn from_slice(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let n = check_shape(shape)?;
        if data.len() != n {
            return Err(NormError::Shape(format!(
                "data has {} values but shape {shape:?} needs {n}",
                data.len()
            )));
        }
        let t = Tensor::empty(gpu, shape)?;
        gpu.scoped(|_| {
            gpu.queue()
                .write_buffer(t.buffer(), 0, bytemuck::cast_slice(data))
        })?;
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
        let n = check_shape(shape)?;
        let size = padded_bytes(n);
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
        let n = check_shape(shape)?;
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(NormError::Buffer(format!(
                "the buffer has usage {:?}; kernels need STORAGE",
                buffer.usage()
            )));
        }
        let need = n as u64 * 4;
        if buffer.size() < need {
            return Err(NormError::Buffer(format!(
                "shape {shape:?} needs {need} bytes (f32), the buffer has {}",
                buffer.size()
            )));
        }
        Ok(Tensor {
            buffer: Owned::new(gpu, buffer),
            shape: shape.to_vec(),
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

    /// Downloads the values. Blocks: [`Tensor::to_vec_async`] is the same as a future.
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
        self.check_device(gpu, "tensor")?;
        if !self.buffer().usage().contains(wgpu::BufferUsages::COPY_SRC) {
            return Err(NormError::Buffer(
                "to_vec needs a buffer with COPY_SRC usage".into(),
            ));
        }
        let bytes = self.numel() as u64 * 4;
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
        Ok(bytemuck::pod_collect_to_vec(&bytes?))
    }

    /// Errors if `out` shares its buffer with `input` (kernels read one and write the other).
    /// A tensor of `shape` on `gpu` backed by the context's 16-byte placeholder: for planning
    /// a call, never bound.
    pub(crate) fn shape_only(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        check_shape(shape)?;
        Ok(Tensor {
            shape: shape.to_vec(),
            ..gpu.placeholder()?
        })
    }

    /// Whether kernels can bind the buffer as vec4s: it covers the values rounded up to 16 bytes.
    pub(crate) fn is_padded(&self) -> bool {
        self.buffer().size() >= padded_bytes(self.numel())
    }

    /// Errors if this output shares its buffer with `other` (another output, or a tensor the
    /// kernels read): each kernel writes an output while it reads the others.
    pub(crate) fn check_no_alias(
        &self,
        name: &str,
        other_name: &str,
        other: &Tensor,
    ) -> Result<()> {
        if self.owner == other.owner && self.buffer() == other.buffer() {
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
