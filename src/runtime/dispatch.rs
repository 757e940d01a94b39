//! Launches: a kernel, its grid, its parameters and its storage bindings by name; recorded into
//! a caller's encoder. Plus the geometry every family shares: 2-D grids past 65535 workgroups,
//! and chunks of a tensor larger than one storage binding.

use crate::context::{Gpu, MAX_GROUPS_PER_DIM};
use crate::error::{NormError, Result};
use crate::runtime::constants::Overrides;
use crate::runtime::pipeline::{binding_number, Kernel, Shader, Storage};

/// One kernel launch, before its bind group exists.
pub(crate) struct Launch<'a> {
    shader: Shader,
    storage: Storage,
    kernel: Kernel,
    overrides: Overrides,
    grid: (u32, u32),
    uniform: wgpu::Buffer,
    binds: Vec<(&'static str, wgpu::BindingResource<'a>)>,
}

impl<'a> Launch<'a> {
    /// `groups` workgroups of `kernel`; `params` gets the grid's x extent (kernels number
    /// workgroups `wid.x + wid.y * grid_x`) and returns the uniform block.
    pub(crate) fn new<P: bytemuck::Pod>(
        gpu: &Gpu,
        shader: Shader,
        kernel: Kernel,
        overrides: &Overrides,
        groups: u32,
        params: impl FnOnce(u32) -> P,
    ) -> Result<Launch<'a>> {
        let grid = gpu.grid(groups)?;
        Ok(Launch {
            shader,
            storage: Storage::F32,
            kernel,
            overrides: overrides.clone(),
            grid,
            uniform: gpu.uniform(&params(grid.0)),
            binds: Vec::new(),
        })
    }

    /// Builds the kernel's module with this element storage (f32 unless set).
    pub(crate) fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Binds `resource` to the shader variable `name`.
    pub(crate) fn bind(mut self, name: &'static str, resource: wgpu::BindingResource<'a>) -> Self {
        self.binds.push((name, resource));
        self
    }

    /// Binds all of `buffer`.
    pub(crate) fn buf(self, name: &'static str, buffer: &'a wgpu::Buffer) -> Self {
        self.bind(name, buffer.as_entire_binding())
    }
}

/// Records launches into `encoder`, in order, in one compute pass (wgpu orders the dispatches:
/// a later one reads what an earlier one wrote). wgpu errors come back as `NormError::Wgpu`.
pub(crate) fn record_all(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    launches: &[Launch<'_>],
) -> Result<()> {
    let mut ready = Vec::with_capacity(launches.len());
    let most = gpu.limits().max_storage_buffers_per_shader_stage as usize;
    for l in launches {
        if l.binds.len() > most {
            return Err(NormError::Device(format!(
                "kernel {} binds {} storage buffers, but this device allows {most} per shader \
                 stage (max_storage_buffers_per_shader_stage, 4 in wgpu's downlevel limits). \
                 Create the device with the adapter's limits (Gpu::new does), or use an adapter \
                 that allows at least 8, as every WebGPU one does",
                l.kernel.entry(),
                l.binds.len()
            )));
        }
        let (pipeline, table) = gpu.pipeline(l.shader, l.storage, l.kernel, &l.overrides)?;
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: l.uniform.as_entire_binding(),
        }];
        for (name, res) in &l.binds {
            entries.push(wgpu::BindGroupEntry {
                binding: binding_number(&table, l.kernel, name)?,
                resource: res.clone(),
            });
        }
        ready.push((pipeline, entries, l.grid));
    }
    gpu.scoped(|d| {
        let groups: Vec<_> = ready
            .iter()
            .map(|(p, entries, _)| {
                d.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &p.get_bind_group_layout(0),
                    entries,
                })
            })
            .collect();
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("fused-norm"),
            timestamp_writes: None,
        });
        for ((p, _, grid), bg) in ready.iter().zip(&groups) {
            pass.set_pipeline(p);
            pass.set_bind_group(0, bg, &[]);
            pass.dispatch_workgroups(grid.0, grid.1, 1);
        }
    })
}

/// A byte range of a buffer to bind as storage, and the element offset of the wanted data
/// inside that binding (binding offsets must be aligned, data offsets need not be).
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    pub offset: u64,
    pub size: u64,
    pub elem_off: u32,
}

/// The binding covering f32 elements [start, end) of a buffer of `buf_size` bytes.
pub(crate) fn view(gpu: &Gpu, start: u64, end: u64, buf_size: u64) -> View {
    view_of(gpu, start, end, buf_size, 4)
}

/// The binding covering elements [start, end) of `elem` bytes each. For 2-byte elements the
/// element offset has the parity of `start` (bindings start at aligned bytes).
pub(crate) fn view_of(gpu: &Gpu, start: u64, end: u64, buf_size: u64, elem: u64) -> View {
    let align = gpu.offset_alignment();
    let offset = (start * elem) / align * align;
    let end_b = (end * elem).div_ceil(16) * 16;
    let end_b = end_b.min(buf_size / 16 * 16).max(offset + 16);
    View {
        offset,
        size: end_b - offset,
        elem_off: ((start * elem - offset) / elem) as u32,
    }
}

impl View {
    /// The binding resource for this view of `buffer`.
    pub(crate) fn bind(self, buffer: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: self.offset,
            size: std::num::NonZeroU64::new(self.size),
        })
    }
}

/// How many units of `unit_elems` f32 fit one binding, allowing for offset alignment slack.
pub(crate) fn units_per_binding(gpu: &Gpu, unit_elems: u64) -> u64 {
    units_per_binding_of(gpu, unit_elems, 4)
}

/// [`units_per_binding`] for elements of `elem` bytes.
pub(crate) fn units_per_binding_of(gpu: &Gpu, unit_elems: u64, elem: u64) -> u64 {
    let budget = gpu
        .max_binding_bytes()
        .saturating_sub(gpu.offset_alignment() + 16);
    budget / (unit_elems * elem).max(1)
}

/// Splits `total` units into consecutive ranges of at most `per` (at least one unit each).
pub(crate) fn chunks(total: u64, per: u64) -> impl Iterator<Item = (u64, u64)> {
    let per = per.max(1);
    (0..total.div_ceil(per)).map(move |i| (i * per, ((i + 1) * per).min(total)))
}

impl Gpu {
    /// Splits `groups` workgroups into a 2-D grid (x, y) within the per-dimension limit.
    pub(crate) fn grid(&self, groups: u32) -> Result<(u32, u32)> {
        let lim = self
            .limits()
            .max_compute_workgroups_per_dimension
            .min(MAX_GROUPS_PER_DIM);
        let gx = groups.clamp(1, lim);
        let gy = groups.div_ceil(gx).max(1);
        if gy > lim {
            return Err(NormError::TooLarge(format!(
                "{groups} workgroups exceed a {lim} x {lim} grid"
            )));
        }
        Ok((gx, gy))
    }

    /// Alignment of storage binding offsets, in bytes.
    pub(crate) fn offset_alignment(&self) -> u64 {
        u64::from(self.limits().min_storage_buffer_offset_alignment).max(16)
    }

    /// Largest workgroup this crate uses on this device: a power of two (reductions split it
    /// into power-of-two groups), at most 256 (the shaders' workgroup arrays).
    pub(crate) fn max_wg(&self) -> u32 {
        let l = self.limits();
        let most = l
            .max_compute_invocations_per_workgroup
            .min(l.max_compute_workgroup_size_x)
            .clamp(1, 256);
        1 << most.ilog2()
    }
}
