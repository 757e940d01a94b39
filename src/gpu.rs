//! The `Gpu` context: device, queue, capabilities and the pipeline cache, plus the small
//! amount of plumbing every kernel wrapper shares (error scopes, chunked bindings, 2-D grids).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{NormError, Result};

/// WebGPU caps each grid dimension at 65535 workgroups.
pub(crate) const MAX_GROUPS_PER_DIM: u32 = 65535;

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Options for [`Gpu::with_options`].
///
/// ```no_run
/// use fused_norm::{Gpu, GpuOptions};
/// // Exercise the portable (no-subgroup) kernels and the chunked path on any adapter.
/// let gpu = Gpu::with_options(GpuOptions {
///     disable_subgroups: true,
///     max_binding_bytes: Some(1 << 20),
///     ..Default::default()
/// })?;
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Do not request the SUBGROUP feature even where the adapter has it.
    pub disable_subgroups: bool,
    /// Treat storage bindings as at most this many bytes (below the device's own limit), so
    /// large-tensor chunking can be tested on small tensors.
    pub max_binding_bytes: Option<u64>,
    /// Prefer this power preference when picking an adapter.
    pub power_preference: wgpu::PowerPreference,
    /// Which kernel-selection tables to use (default: from the adapter's device type).
    pub tuning: Tuning,
}

/// Kernel-selection tables. CPU adapters (lavapipe, llvmpipe, WARP) pay microseconds per
/// workgroup barrier, so their kernels reduce inside one subgroup; GPUs reduce across whole
/// 256-thread workgroups. Forcing one lets tests run both sets of kernels on any adapter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tuning {
    /// CPU tables on `DeviceType::Cpu` adapters, GPU tables otherwise.
    #[default]
    Auto,
    /// The CPU adapter tables.
    Cpu,
    /// The GPU tables.
    Gpu,
}

/// Optional device features this context obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Subgroup operations (`subgroupShuffleXor` etc.) are enabled.
    pub subgroups: bool,
    /// Smallest subgroup size the adapter may use (a power of two).
    pub subgroup_min_size: u32,
    /// Largest subgroup size the adapter may use.
    pub subgroup_max_size: u32,
    /// `shader-f16` is enabled.
    pub shader_f16: bool,
    /// Timestamp queries, inside command encoders too, are enabled (used by the benchmarks).
    pub timestamps: bool,
}

/// A WGSL module family. The kernel for an operation lives in `shaders/<family>.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    LayerNorm,
    BatchNorm,
    Baseline,
}

impl Family {
    fn source(self) -> &'static str {
        match self {
            Family::LayerNorm => include_str!("../shaders/layer_norm.wgsl"),
            Family::BatchNorm => include_str!("../shaders/batch_norm.wgsl"),
            Family::Baseline => include_str!("../shaders/baseline.wgsl"),
        }
    }
}

/// The full WGSL text of a shader family (`"layer_norm"`, `"batch_norm"`, `"baseline"`): the
/// lane prelude (subgroup or workgroup-memory reductions), the shared Welford code, then the
/// family's kernels. `None` for an unknown family. For validating or translating the shaders.
///
/// ```
/// let src = fused_norm::module_source("layer_norm", false).unwrap();
/// assert!(src.contains("fn layer_norm_rows"));
/// ```
pub fn module_source(family: &str, subgroups: bool) -> Option<String> {
    let lanes = if subgroups {
        include_str!("../shaders/lanes_subgroup.wgsl")
    } else {
        include_str!("../shaders/lanes_shared.wgsl")
    };
    let body = [Family::LayerNorm, Family::BatchNorm, Family::Baseline]
        .into_iter()
        .find(|f| family_file(*f) == family)?
        .source();
    Some(format!(
        "{lanes}\n{}\n{body}",
        include_str!("../shaders/common.wgsl")
    ))
}

fn family_file(f: Family) -> &'static str {
    match f {
        Family::LayerNorm => "layer_norm",
        Family::BatchNorm => "batch_norm",
        Family::Baseline => "baseline",
    }
}

/// Override constants of one pipeline, as (name, value).
pub(crate) type Constants = Vec<(&'static str, f64)>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    family: Family,
    entry: &'static str,
    subgroups: bool,
    constants: Vec<(&'static str, u64)>,
}

struct Inner {
    id: u64,
    cpu_tuning: bool,
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    caps: Capabilities,
    limits: wgpu::Limits,
    max_binding: u64,
    modules: Mutex<HashMap<(Family, bool), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    placeholder: Mutex<Option<crate::tensor::Tensor>>,
}

/// A wgpu device and queue with this crate's pipeline cache. Cheap to clone (an `Arc`), and
/// `Send + Sync`: share one per device. Tensors belong to the context that made them and its
/// clones: wrap a device once with [`Gpu::from_wgpu`] and clone the `Gpu`.
///
/// ```no_run
/// let gpu = fused_norm::Gpu::new()?;
/// println!("{}", gpu.describe());
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.inner.info.name)
            .field("backend", &self.inner.info.backend)
            .field("caps", &self.inner.caps)
            .finish()
    }
}

impl Gpu {
    /// Picks an adapter (honouring `WGPU_BACKEND`, e.g. `vulkan`, `metal`, `dx12`, `gl`) and
    /// creates a device with the adapter's own limits. Blocks. Software adapters count.
    ///
    /// ```no_run
    /// let gpu = fused_norm::Gpu::new()?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn new() -> Result<Gpu> {
        Gpu::with_options(GpuOptions::default())
    }

    /// [`Gpu::new`] with options.
    ///
    /// ```no_run
    /// let gpu = fused_norm::Gpu::with_options(fused_norm::GpuOptions::default())?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn with_options(opts: GpuOptions) -> Result<Gpu> {
        // Instance::default() ignores WGPU_BACKEND; this reads it.
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: opts.power_preference,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        }))
        .map_err(|e| {
            let backend = std::env::var("WGPU_BACKEND")
                .map(|b| format!(" for WGPU_BACKEND={b}"))
                .unwrap_or_default();
            NormError::NoAdapter(format!("{backend} ({e})"))
        })?;
        let wanted = wgpu::Features::SUBGROUP
            | wgpu::Features::SHADER_F16
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let mut features = adapter.features() & wanted;
        if opts.disable_subgroups {
            features.remove(wgpu::Features::SUBGROUP);
        }
        // Limits::default() would cap workgroups at 256 invocations and 16 KiB of shared
        // memory, and bindings at 128 MiB, on adapters that offer more.
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("fused-norm"),
            required_features: features,
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| NormError::Device(e.to_string()))?;
        Ok(Gpu::build(device, queue, adapter.get_info(), &opts))
    }

    /// Wraps a device and queue the application already has (a renderer's, say). The crate
    /// uses whichever of SUBGROUP, SHADER_F16 and TIMESTAMP_QUERY(_INSIDE_ENCODERS) the device was created with.
    ///
    /// ```no_run
    /// # fn app_device() -> (wgpu::Device, wgpu::Queue) { unimplemented!() }
    /// let (device, queue) = app_device();
    /// let gpu = fused_norm::Gpu::from_wgpu(device, queue);
    /// ```
    pub fn from_wgpu(device: wgpu::Device, queue: wgpu::Queue) -> Gpu {
        let info = device.adapter_info();
        Gpu::build(device, queue, info, &GpuOptions::default())
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        opts: &GpuOptions,
    ) -> Gpu {
        let f = device.features();
        let limits = device.limits();
        let subgroups = f.contains(wgpu::Features::SUBGROUP);
        let (smin, smax) = if subgroups {
            (
                info.subgroup_min_size.max(1).next_power_of_two(),
                info.subgroup_max_size.max(1).next_power_of_two(),
            )
        } else {
            (1, 1)
        };
        let caps = Capabilities {
            // A subgroup wider than our largest workgroup would break the lane numbering.
            subgroups: subgroups && smax <= 256 && smin >= 1,
            subgroup_min_size: smin,
            subgroup_max_size: smax,
            shader_f16: f.contains(wgpu::Features::SHADER_F16),
            timestamps: f.contains(
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
            ),
        };
        let mut max_binding = limits.max_storage_buffer_binding_size;
        if let Some(cap) = opts.max_binding_bytes {
            max_binding = max_binding.min(cap);
        }
        Gpu {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                cpu_tuning: match opts.tuning {
                    Tuning::Auto => info.device_type == wgpu::DeviceType::Cpu,
                    Tuning::Cpu => true,
                    Tuning::Gpu => false,
                },
                device,
                queue,
                info,
                caps,
                limits,
                max_binding,
                modules: Mutex::new(HashMap::new()),
                pipelines: Mutex::new(HashMap::new()),
                placeholder: Mutex::new(None),
            }),
        }
    }

    /// The wgpu device.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let limits = gpu.device().limits();
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The wgpu queue.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// gpu.queue().submit([]);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The adapter's name, backend, type and driver.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// println!("{:?}", gpu.adapter_info().backend);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.info
    }

    /// Optional features this context got.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// if gpu.capabilities().subgroups { println!("subgroup kernels"); }
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn capabilities(&self) -> Capabilities {
        self.inner.caps
    }

    /// The device limits in force (the adapter's own, when created by [`Gpu::new`]).
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// println!("{}", gpu.limits().max_compute_invocations_per_workgroup);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// Largest storage binding this context uses, in bytes; larger tensors go in chunks.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// assert!(gpu.max_binding_bytes() >= 1 << 20);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn max_binding_bytes(&self) -> u64 {
        self.inner.max_binding
    }

    /// One line: adapter, backend, device type, driver, features.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// println!("{}", gpu.describe());
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn describe(&self) -> String {
        let i = &self.inner.info;
        let c = self.inner.caps;
        let sg = if c.subgroups {
            format!("subgroups {}..{}", c.subgroup_min_size, c.subgroup_max_size)
        } else {
            "no subgroups".to_string()
        };
        format!(
            "{} ({:?}, {:?}, driver {} {}): {sg}, shader-f16 {}, timestamps {}",
            i.name,
            i.backend,
            i.device_type,
            i.driver,
            i.driver_info,
            if c.shader_f16 { "yes" } else { "no" },
            if c.timestamps { "yes" } else { "no" },
        )
    }

    /// How many compute pipelines this context has compiled and cached: each (kernel, override
    /// constants) pair once per device, however many calls use it.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// println!("{} pipelines", gpu.cached_pipelines());
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn cached_pipelines(&self) -> usize {
        self.inner.pipelines.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// A 16-byte tensor bound (read-only) where an optional input such as weight or bias is
    /// absent; the kernels never read it. Made once per context.
    pub(crate) fn placeholder(&self) -> Result<crate::tensor::Tensor> {
        let mut slot = self
            .inner
            .placeholder
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(t) = slot.as_ref() {
            return Ok(t.clone());
        }
        let t = crate::tensor::Tensor::empty(self, &[4])?;
        *slot = Some(t.clone());
        Ok(t)
    }

    /// Whether kernels are picked from the CPU-adapter tables (see [`Tuning`]).
    pub(crate) fn is_cpu(&self) -> bool {
        self.inner.cpu_tuning
    }

    /// Identity of this context and its clones: tensors made through it carry it.
    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// The cached pipeline for (family, entry point, subgroup prelude, override constants).
    pub(crate) fn pipeline(
        &self,
        family: Family,
        entry: &'static str,
        constants: &Constants,
    ) -> Result<wgpu::ComputePipeline> {
        let subgroups = self.inner.caps.subgroups;
        let mut constants = constants.clone();
        if subgroups {
            constants.push(("SG_MIN", f64::from(self.inner.caps.subgroup_min_size)));
        }
        let key = PipelineKey {
            family,
            entry,
            subgroups,
            constants: constants.iter().map(|(k, v)| (*k, v.to_bits())).collect(),
        };
        if let Some(p) = self.inner.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let module = self.module(family, subgroups)?;
        let pipeline = self.scoped(|d| {
            d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    // Every kernel writes workgroup memory before reading it; zeroing it costs
                    // a pass per workgroup on CPU adapters.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        })?;
        self.inner
            .pipelines
            .lock()
            .unwrap()
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn module(&self, family: Family, subgroups: bool) -> Result<wgpu::ShaderModule> {
        if let Some(m) = self.inner.modules.lock().unwrap().get(&(family, subgroups)) {
            return Ok(m.clone());
        }
        let src = module_source(family_file(family), subgroups).expect("every Family has a file");
        let m = self.scoped(|d| {
            d.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(family_file(family)),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            })
        })?;
        self.inner
            .modules
            .lock()
            .unwrap()
            .insert((family, subgroups), m.clone());
        Ok(m)
    }

    /// Runs `f` inside validation and out-of-memory error scopes, so wgpu errors come back as
    /// `NormError::Wgpu` instead of reaching the default handler (which panics).
    pub(crate) fn scoped<T>(&self, f: impl FnOnce(&wgpu::Device) -> T) -> Result<T> {
        let d = &self.inner.device;
        let oom = d.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = d.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f(d);
        let val_err = pollster::block_on(val.pop());
        let oom_err = pollster::block_on(oom.pop());
        match val_err.or(oom_err) {
            Some(e) => Err(NormError::Wgpu(e.to_string())),
            None => Ok(out),
        }
    }

    /// A uniform buffer holding `params`.
    pub(crate) fn uniform<T: bytemuck::Pod>(&self, params: &T) -> wgpu::Buffer {
        self.inner
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("fused-norm params"),
                contents: bytemuck::bytes_of(params),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Submits `encoder` and blocks until the device is done; wgpu errors come back as
    /// [`NormError::Wgpu`].
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let enc = gpu.encoder();
    /// gpu.submit_wait(enc)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn submit_wait(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        let idx = self.scoped(|_| self.inner.queue.submit([encoder.finish()]))?;
        self.inner
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(idx),
                timeout: None,
            })
            .map_err(|e| NormError::Wgpu(e.to_string()))?;
        Ok(())
    }

    /// Maps a MAP_READ buffer (after its copy was submitted) and returns its bytes. Blocks.
    pub(crate) fn read_mapped(&self, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
        let err = |e: &dyn std::fmt::Display| NormError::Readback(e.to_string());
        let (tx, rx) = std::sync::mpsc::channel();
        buffer.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| err(&e))?;
        rx.recv().map_err(|e| err(&e))?.map_err(|e| err(&e))?;
        let bytes = buffer.get_mapped_range(..).map_err(|e| err(&e))?.to_vec();
        buffer.unmap();
        Ok(bytes)
    }

    /// A new command encoder on this device.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let mut enc = gpu.encoder();
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.inner
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("fused-norm"),
            })
    }

    /// Splits `groups` workgroups into a 2-D grid (x, y) within the per-dimension limit.
    pub(crate) fn grid(&self, groups: u32) -> Result<(u32, u32)> {
        let lim = self
            .inner
            .limits
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
        u64::from(self.inner.limits.min_storage_buffer_offset_alignment).max(16)
    }

    /// Largest workgroup this crate uses on this device (the shaders' workgroup arrays hold 256).
    pub(crate) fn max_wg(&self) -> u32 {
        self.inner
            .limits
            .max_compute_invocations_per_workgroup
            .min(256)
    }
}

/// One dispatch a wrapper plans before building bind groups: its entry point, grid, uniform
/// parameters, the storage bindings it uses, and the range of units (rows, batch items) of
/// the chunk it covers, which the wrapper maps to buffer views.
pub(crate) struct Step {
    pub entry: &'static str,
    pub grid: (u32, u32),
    pub uniform: wgpu::Buffer,
    pub bindings: &'static [u32],
    pub range: (u64, u64),
}

impl Step {
    pub(crate) fn new<P: bytemuck::Pod>(
        gpu: &Gpu,
        entry: &'static str,
        grid: (u32, u32),
        params: &P,
        bindings: &'static [u32],
        range: (u64, u64),
    ) -> Step {
        Step {
            entry,
            grid,
            uniform: gpu.uniform(params),
            bindings,
            range,
        }
    }

    /// The launch of this step: binding 0 is the uniform, `resource` supplies the others.
    pub(crate) fn launch<'a>(
        &'a self,
        pipeline: wgpu::ComputePipeline,
        resource: impl Fn(u32, (u64, u64)) -> wgpu::BindingResource<'a>,
    ) -> Launch<'a> {
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: self.uniform.as_entire_binding(),
        }];
        for &binding in self.bindings {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: resource(binding, self.range),
            });
        }
        Launch {
            pipeline,
            entries,
            grid: self.grid,
        }
    }
}

/// One kernel launch: pipeline, bind group entries and its 2-D grid.
pub(crate) struct Launch<'a> {
    pub pipeline: wgpu::ComputePipeline,
    pub entries: Vec<wgpu::BindGroupEntry<'a>>,
    pub grid: (u32, u32),
}

impl Launch<'_> {
    /// Records the launch into `pass`. Bind group creation errors surface through the caller's
    /// error scope.
    pub(crate) fn record(&self, gpu: &Gpu, pass: &mut wgpu::ComputePass<'_>) {
        let bg = gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.pipeline.get_bind_group_layout(0),
            entries: &self.entries,
        });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(self.grid.0, self.grid.1, 1);
    }
}

/// Records launches into `encoder`, one compute pass each: the passes order the dispatches
/// (a later one reads what an earlier one wrote).
pub(crate) fn record_all(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    launches: &[Launch<'_>],
) -> Result<()> {
    gpu.scoped(|_| {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("fused-norm"),
            timestamp_writes: None,
        });
        for l in launches {
            l.record(gpu, &mut pass);
        }
    })
}

/// A byte range of a buffer to bind as storage, and the element offset of the wanted data
/// inside that binding (binding offsets must be aligned, data offsets need not be).
pub(crate) struct View {
    pub offset: u64,
    pub size: u64,
    pub elem_off: u32,
}

/// The binding covering f32 elements [start, end) of a buffer of `buf_size` bytes.
pub(crate) fn view(gpu: &Gpu, start: u64, end: u64, buf_size: u64) -> View {
    let align = gpu.offset_alignment();
    let offset = (start * 4) / align * align;
    let end_b = (end * 4).div_ceil(16) * 16;
    let end_b = end_b.min(buf_size / 16 * 16).max(offset + 16);
    View {
        offset,
        size: end_b - offset,
        elem_off: ((start * 4 - offset) / 4) as u32,
    }
}

/// How many units of `unit_elems` f32 fit one binding, allowing for offset alignment slack.
pub(crate) fn units_per_binding(gpu: &Gpu, unit_elems: u64) -> u64 {
    let budget = gpu
        .max_binding_bytes()
        .saturating_sub(gpu.offset_alignment() + 16);
    budget / (unit_elems * 4).max(1)
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
