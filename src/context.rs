//! The `Gpu` context: device, queue, capabilities, the pipeline cache, and how the crate waits
//! for the device (error scopes, non-blocking polls, turns at a GL device, async forms).

use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{NormError, Result};
use crate::runtime::pipeline::PipelineCache;
use crate::runtime::probe;

/// WebGPU caps each grid dimension at 65535 workgroups.
pub(crate) const MAX_GROUPS_PER_DIM: u32 = 65535;

/// Largest storage binding any kernel plans with, in bytes, whatever the device allows. Metal
/// reports bindings of tens of GB while the kernels index in u32 and multiply indices (a row
/// times its length, a run times its size): below 2^31 bytes no such product of in-binding
/// element indices overflows. Larger tensors run in chunks.
pub(crate) const MAX_BINDING_CAP: u64 = (1 << 31) - 256;

/// Longest pause between two non-blocking polls while waiting for the device.
#[cfg(not(target_arch = "wasm32"))]
const POLL_NAP: std::time::Duration = std::time::Duration::from_millis(1);

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
    /// Do not request SHADER_F16 even where the adapter has it: f16 tensors then take the
    /// packed path (two halves per `u32` word, as on GL and WebGPU without `shader-f16`), so
    /// tests and benchmarks can run both storage paths on one adapter.
    pub disable_shader_f16: bool,
    /// Treat storage bindings as at most this many bytes (below the device's own limit and
    /// below 2^31 bytes, which every context keeps to), so large-tensor chunking can be tested
    /// on small tensors.
    pub max_binding_bytes: Option<u64>,
    /// Prefer this power preference when picking an adapter.
    pub power_preference: wgpu::PowerPreference,
    /// Which kernel-selection tables to use (default: from the adapter's device type).
    pub tuning: Tuning,
    /// Request timestamp queries (for benchmarks) where the adapter has them; off by default,
    /// since the kernels never need them.
    pub timestamps: bool,
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
    /// The kernels reduce with subgroup shuffles: the device has SUBGROUP and the probe
    /// dispatch found full, in-order subgroups (see [`Gpu::subgroup_note`]).
    pub subgroups: bool,
    /// Subgroup size the kernels count on (a power of two): the smaller of the adapter's
    /// minimum and the smallest the probe saw.
    pub subgroup_min_size: u32,
    /// Largest subgroup size the adapter may use.
    pub subgroup_max_size: u32,
    /// `shader-f16` is enabled.
    pub shader_f16: bool,
    /// Timestamp queries, inside command encoders too, are enabled (used by the benchmarks).
    pub timestamps: bool,
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
    cache: PipelineCache,
    placeholder: Mutex<Option<crate::tensor::Tensor>>,
    sink: Mutex<Option<crate::tensor::Tensor>>,
    sum_sink: Mutex<Option<crate::tensor::Tensor>>,
    // Why subgroups are off although the device has them (the probe failed), or how they
    // were checked.
    subgroup_note: String,
    // GL only: every call of this crate into the device takes this first, so a thread waits
    // here (without a time limit) instead of in wgpu's context lock (which panics after 6 s).
    serial: Option<Arc<Serial>>,
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
    /// creates a device with the adapter's own limits. Blocks: [`Gpu::new_async`] is the same
    /// without blocking (browsers). Software adapters count.
    ///
    /// ```no_run
    /// let gpu = fused_norm::Gpu::new()?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn new() -> Result<Gpu> {
        Gpu::with_options(GpuOptions::default())
    }

    /// [`Gpu::new`] with options. Blocks.
    ///
    /// ```no_run
    /// let gpu = fused_norm::Gpu::with_options(fused_norm::GpuOptions::default())?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn with_options(opts: GpuOptions) -> Result<Gpu> {
        block(Gpu::with_options_async(opts))?
    }

    /// [`Gpu::new`] as a future: what a browser (wasm32) calls.
    ///
    /// ```no_run
    /// let gpu = pollster::block_on(fused_norm::Gpu::new_async())?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub async fn new_async() -> Result<Gpu> {
        Gpu::with_options_async(GpuOptions::default()).await
    }

    /// [`Gpu::with_options`] as a future.
    ///
    /// ```no_run
    /// let opts = fused_norm::GpuOptions::default();
    /// let gpu = pollster::block_on(fused_norm::Gpu::with_options_async(opts))?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub async fn with_options_async(opts: GpuOptions) -> Result<Gpu> {
        // Instance::default() ignores WGPU_BACKEND; this reads it. Without it, the native
        // backends are asked first and GL only when they have no adapter: GL's EGL probe prints
        // warnings (XDG_RUNTIME_DIR) on machines that never use it.
        let from_env = std::env::var_os("WGPU_BACKEND").is_some();
        let tries = match from_env {
            true => vec![None],
            false => vec![
                Some(wgpu::Backends::PRIMARY),
                Some(wgpu::Backends::SECONDARY),
            ],
        };
        let mut failure = None;
        let mut found = None;
        for backends in tries {
            let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
            if let Some(b) = backends {
                desc.backends = b;
            }
            let instance = wgpu::Instance::new(desc);
            let options = wgpu::RequestAdapterOptions {
                power_preference: opts.power_preference,
                force_fallback_adapter: false,
                compatible_surface: None,
                ..Default::default()
            };
            match instance.request_adapter(&options).await {
                Ok(a) => {
                    found = Some(a);
                    break;
                }
                Err(e) => failure = Some(e.to_string()),
            }
        }
        let adapter = found.ok_or_else(|| {
            let backend = std::env::var("WGPU_BACKEND")
                .map(|b| format!(" for WGPU_BACKEND={b}"))
                .unwrap_or_default();
            NormError::NoAdapter(format!("{backend} ({})", failure.unwrap_or_default()))
        })?;
        let mut wanted = wgpu::Features::SUBGROUP | wgpu::Features::SHADER_F16;
        if opts.timestamps {
            wanted |=
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        }
        let mut features = adapter.features() & wanted;
        if opts.disable_subgroups {
            features.remove(wgpu::Features::SUBGROUP);
        }
        if opts.disable_shader_f16 {
            features.remove(wgpu::Features::SHADER_F16);
        }
        // Limits::default() would cap workgroups at 256 invocations and 16 KiB of shared
        // memory, and bindings at 128 MiB, on adapters that offer more.
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("fused-norm"),
                required_features: features,
                required_limits: adapter.limits(),
                ..Default::default()
            })
            .await
            .map_err(|e| NormError::Device(e.to_string()))?;
        Ok(Gpu::build(device, queue, adapter.get_info(), &opts).await)
    }

    /// Wraps a device and queue the application already has (a renderer's, say). The crate
    /// uses whichever of SUBGROUP, SHADER_F16 and TIMESTAMP_QUERY(_INSIDE_ENCODERS) the device
    /// was created with. Blocks briefly for the subgroup probe; on wasm32, where nothing may
    /// block, it skips the probe and keeps subgroups off: use [`Gpu::from_wgpu_async`] there.
    ///
    /// ```no_run
    /// # fn app_device() -> (wgpu::Device, wgpu::Queue) { unimplemented!() }
    /// let (device, queue) = app_device();
    /// let gpu = fused_norm::Gpu::from_wgpu(device, queue);
    /// ```
    pub fn from_wgpu(device: wgpu::Device, queue: wgpu::Queue) -> Gpu {
        let info = device.adapter_info();
        let opts = GpuOptions::default();
        #[cfg(target_arch = "wasm32")]
        {
            let note = "not probed (Gpu::from_wgpu cannot wait in a browser; use from_wgpu_async)";
            Gpu::assemble(device, queue, info, &opts, None, note.into())
        }
        #[cfg(not(target_arch = "wasm32"))]
        pollster::block_on(Gpu::build(device, queue, info, &opts))
    }

    /// [`Gpu::from_wgpu`] as a future, with the subgroup probe on every target.
    ///
    /// ```no_run
    /// # fn app_device() -> (wgpu::Device, wgpu::Queue) { unimplemented!() }
    /// let (device, queue) = app_device();
    /// let gpu = pollster::block_on(fused_norm::Gpu::from_wgpu_async(device, queue));
    /// ```
    pub async fn from_wgpu_async(device: wgpu::Device, queue: wgpu::Queue) -> Gpu {
        let info = device.adapter_info();
        Gpu::build(device, queue, info, &GpuOptions::default()).await
    }

    /// Probes the subgroups, then assembles the context.
    async fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        opts: &GpuOptions,
    ) -> Gpu {
        let limits = device.limits();
        let (smin, smax) = (
            info.subgroup_min_size.max(1).next_power_of_two(),
            info.subgroup_max_size.max(1).next_power_of_two(),
        );
        let (sg, note) = if !device.features().contains(wgpu::Features::SUBGROUP) {
            (None, "the device has no SUBGROUP feature".to_string())
        } else if smax > 256 {
            // A subgroup wider than our largest workgroup would break the lane numbering.
            (
                None,
                format!("subgroups of up to {smax} lanes exceed a workgroup"),
            )
        } else {
            let wgs: Vec<u32> = [64, 128, 256]
                .into_iter()
                .filter(|w| *w <= limits.max_compute_invocations_per_workgroup && *w >= smax)
                .collect();
            match probe::run(&device, &queue, &wgs, smin).await {
                Ok(m) => (
                    Some(m),
                    format!("probe passed (workgroups {wgs:?}, {m}+ lanes)"),
                ),
                Err(why) => (None, format!("probe failed: {why}")),
            }
        };
        Gpu::assemble(device, queue, info, opts, sg, note)
    }

    fn assemble(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        opts: &GpuOptions,
        subgroup_min: Option<u32>,
        subgroup_note: String,
    ) -> Gpu {
        let f = device.features();
        let limits = device.limits();
        let caps = Capabilities {
            subgroups: subgroup_min.is_some(),
            subgroup_min_size: subgroup_min.unwrap_or(1),
            subgroup_max_size: match subgroup_min {
                Some(_) => info.subgroup_max_size.max(1).next_power_of_two(),
                None => 1,
            },
            shader_f16: f.contains(wgpu::Features::SHADER_F16),
            timestamps: f.contains(
                wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
            ),
        };
        let max_binding = binding_budget(
            limits.max_storage_buffer_binding_size,
            opts.max_binding_bytes,
        );
        let serial = (info.backend == wgpu::Backend::Gl).then(|| Arc::new(Serial::default()));
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
                cache: PipelineCache::default(),
                placeholder: Mutex::new(None),
                sink: Mutex::new(None),
                sum_sink: Mutex::new(None),
                subgroup_note,
                serial,
            }),
        }
    }

    /// Whether the kernels use subgroups, and why: the probe's verdict, or what the device
    /// lacks.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// println!("subgroups: {}", gpu.subgroup_note());
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn subgroup_note(&self) -> &str {
        &self.inner.subgroup_note
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
            format!("no subgroups ({})", self.inner.subgroup_note)
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
        self.inner.cache.len()
    }

    pub(crate) fn cache(&self) -> &PipelineCache {
        &self.inner.cache
    }

    /// A 16-byte tensor bound (read-only) where an optional input such as weight or bias is
    /// absent; the kernels never read it. Made once per context.
    pub(crate) fn placeholder(&self) -> Result<crate::tensor::Tensor> {
        self.small(&self.inner.placeholder)
    }

    /// A 16-byte tensor bound (read-write) where a kernel's optional output is not wanted (its
    /// store is switched off by an override constant); never written. Separate from the
    /// placeholder, since one dispatch may bind both and a buffer cannot be bound both ways.
    pub(crate) fn sink(&self) -> Result<crate::tensor::Tensor> {
        self.small(&self.inner.sink)
    }

    /// A second sink, for the rows kernels' sum (forward_add) when it is not wanted: those
    /// kernels may bind the first sink as their unwanted mean in the same dispatch.
    pub(crate) fn sum_sink(&self) -> Result<crate::tensor::Tensor> {
        self.small(&self.inner.sum_sink)
    }

    fn small(&self, slot: &Mutex<Option<crate::tensor::Tensor>>) -> Result<crate::tensor::Tensor> {
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
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

    /// This thread's turn at the device, on GL (see `Inner::serial`); nothing elsewhere.
    /// Re-entrant: a call made while the thread holds its turn keeps it.
    pub(crate) fn turn(&self) -> Option<Turn> {
        self.inner.serial.as_ref().and_then(|s| s.enter())
    }

    /// The context's serializer, for tensors to take a turn when they free their buffer.
    pub(crate) fn serial(&self) -> Option<Arc<Serial>> {
        self.inner.serial.clone()
    }

    /// Runs `f` inside validation and out-of-memory error scopes, so wgpu errors come back as
    /// `NormError::Wgpu` instead of reaching the default handler (which panics). Never blocks:
    /// native wgpu answers a popped scope at once. Browsers answer later, and an `encode` (run
    /// every frame by a renderer) must not wait, so on wasm32 errors go to the device's
    /// uncaptured-error handler as every other WebGPU call's do.
    pub(crate) fn scoped<T>(&self, f: impl FnOnce(&wgpu::Device) -> T) -> Result<T> {
        let d = &self.inner.device;
        let _turn = self.turn();
        #[cfg(target_arch = "wasm32")]
        return Ok(f(d));
        #[cfg(not(target_arch = "wasm32"))]
        {
            let oom = d.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let val = d.push_error_scope(wgpu::ErrorFilter::Validation);
            let out = f(d);
            let val_err = ready_now(val.pop());
            let oom_err = ready_now(oom.pop());
            match val_err.or(oom_err) {
                Some(e) => Err(NormError::Wgpu(e.to_string())),
                None => Ok(out),
            }
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
    /// [`NormError::Wgpu`]. [`Gpu::submit_async`] is the same as a future.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let enc = gpu.encoder();
    /// gpu.submit_wait(enc)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn submit_wait(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        block(self.submit_async(encoder))?
    }

    /// Submits `encoder`; the future resolves when the device is done with it.
    ///
    /// ```no_run
    /// # let gpu = fused_norm::Gpu::new()?;
    /// let enc = gpu.encoder();
    /// pollster::block_on(gpu.submit_async(enc))?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub async fn submit_async(&self, encoder: wgpu::CommandEncoder) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.scoped(|_| {
            self.inner.queue.submit([encoder.finish()]);
            self.inner.queue.on_submitted_work_done(move || tx.send(()));
        })?;
        #[cfg(not(target_arch = "wasm32"))]
        self.wait_until(&rx)?;
        rx.await;
        Ok(())
    }

    /// Drives the device (native only) until `rx` has its value. Each poll is a non-blocking
    /// check: a blocking wait would hold wgpu's GL context lock for its whole length (other
    /// threads' calls panic after 6 s), and a wait with a timeout can trip an assertion in
    /// wgpu-core when another thread retires the same submission meanwhile.
    #[cfg(not(target_arch = "wasm32"))]
    fn wait_until<T>(&self, rx: &oneshot::Receiver<T>) -> Result<()> {
        let mut spins = 0u32;
        loop {
            {
                let _turn = self.turn();
                self.inner
                    .device
                    .poll(wgpu::PollType::Poll)
                    .map_err(|e| NormError::Wgpu(e.to_string()))?;
            }
            if rx.is_ready() {
                return Ok(());
            }
            // Yield first (short kernels finish within microseconds), then back off to at most
            // POLL_NAP so long jobs cost little CPU, which software adapters need.
            spins += 1;
            if spins < 32 {
                std::thread::yield_now();
            } else {
                let us = 10u64 << (spins - 32).min(7);
                std::thread::sleep(std::time::Duration::from_micros(us).min(POLL_NAP));
            }
        }
    }

    /// Maps a MAP_READ buffer (after its copy was submitted) and returns its bytes.
    pub(crate) async fn read_mapped_async(&self, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
        let err = |e: &dyn std::fmt::Display| NormError::Readback(e.to_string());
        let (tx, rx) = oneshot::channel();
        {
            let _turn = self.turn();
            buffer.map_async(wgpu::MapMode::Read, .., move |r| tx.send(r));
        }
        #[cfg(not(target_arch = "wasm32"))]
        self.wait_until(&rx)?;
        rx.await.map_err(|e| err(&e))?;
        let _turn = self.turn();
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
}

/// The binding size kernels plan with: the device's, capped below 2^31 bytes (see
/// MAX_BINDING_CAP) and by the caller's option.
pub(crate) fn binding_budget(device_limit: u64, option: Option<u64>) -> u64 {
    device_limit
        .min(MAX_BINDING_CAP)
        .min(option.unwrap_or(u64::MAX))
}

/// Runs a future to completion on this thread: the blocking API. A browser cannot block, so
/// there it returns an error that names the async form to call instead.
pub(crate) fn block<F: std::future::Future>(f: F) -> Result<F::Output> {
    #[cfg(target_arch = "wasm32")]
    {
        drop(f);
        Err(NormError::InvalidArgument(
            "blocking calls cannot run in a browser: use the *_async form (Gpu::new_async, \
             Gpu::submit_async, Tensor::to_vec_async) or encode into your own encoder"
                .into(),
        ))
    }
    #[cfg(not(target_arch = "wasm32"))]
    Ok(pollster::block_on(f))
}

/// The value of a future that is already complete, as native wgpu's error scopes are when
/// popped; one that is not yet is waited for (native only: wasm32 never calls this).
#[cfg(not(target_arch = "wasm32"))]
fn ready_now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => pollster::block_on(f),
    }
}

/// A one-value channel whose receiving end is a future: for wgpu callbacks (buffer mapping,
/// submitted work) that a browser runs from its event loop.
pub(crate) mod oneshot {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    type Slot<T> = Arc<Mutex<(Option<T>, Option<Waker>)>>;

    pub(crate) struct Sender<T>(Slot<T>);
    pub(crate) struct Receiver<T>(Slot<T>);

    pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
        let slot: Slot<T> = Arc::new(Mutex::new((None, None)));
        (Sender(slot.clone()), Receiver(slot))
    }

    impl<T> Sender<T> {
        pub(crate) fn send(self, v: T) {
            let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            s.0 = Some(v);
            if let Some(w) = s.1.take() {
                w.wake();
            }
        }
    }

    impl<T> Receiver<T> {
        /// Whether the value has been sent.
        #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
        pub(crate) fn is_ready(&self) -> bool {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).0.is_some()
        }
    }

    impl<T> Future for Receiver<T> {
        type Output = T;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
            let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            match s.0.take() {
                Some(v) => Poll::Ready(v),
                None => {
                    s.1 = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }
}

/// One thread at a time at a GL device through this crate (see `Inner::serial`): a flag and a
/// condition variable, so a turn can be held across calls without borrowing the lock.
#[derive(Default)]
pub(crate) struct Serial {
    busy: Mutex<bool>,
    freed: std::sync::Condvar,
}

thread_local! {
    // The serializers this thread holds, so nested calls do not wait for themselves.
    static HELD: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A held turn; released on drop.
pub(crate) struct Turn {
    serial: Arc<Serial>,
}

impl Serial {
    fn key(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }

    /// Waits for this thread's turn, unless it already has it.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<Turn> {
        let key = self.key();
        if HELD.with(|h| h.borrow().contains(&key)) {
            return None;
        }
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = self.freed.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
        HELD.with(|h| h.borrow_mut().push(key));
        Some(Turn {
            serial: self.clone(),
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let key = self.serial.key();
        HELD.with(|h| h.borrow_mut().retain(|k| *k != key));
        *self.serial.busy.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.serial.freed.notify_one();
    }
}
