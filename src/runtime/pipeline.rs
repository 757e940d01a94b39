//! Shader modules and the pipeline cache: which WGSL text each kernel family is built from, its
//! binding table, and one compiled pipeline per (module, entry point, override constants).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::context::Gpu;
use crate::error::{NormError, Result};
use crate::runtime::constants::Overrides;

/// A kernel family: one WGSL file in `shaders/`, named by what it reduces over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Shader {
    /// `rows.wgsl`, with the vec4s each thread of `rows_norm` keeps in registers (ROW_CACHE): a
    /// module constant, since WGSL sizes function arrays with constants only.
    Rows { row_cache: u32 },
    /// `channels.wgsl`: strided statistics, forward and backward.
    Channels,
    /// `apply.wgsl`: the elementwise pass of the channels family (y, or the backward's dx).
    Apply,
    /// `rows_bwd.wgsl`: the rows family's backward (dx per row, dweight/dbias per column).
    RowsBwd,
    /// `elementwise.wgsl`: dtype casts and the residual add, one output word per thread.
    Elementwise,
}

/// How a module stores tensor elements: the dtype prelude (`shaders/dtype_*.wgsl`) it is built
/// with. Kernels load through `widen4`/`widen2` and store through `narrow4`/`narrow2`, so each
/// family's code is the same for every storage; f32 math throughout.
///
/// ```no_run
/// # use fused_norm::*;
/// # let gpu = Gpu::new()?;
/// let plan = LayerNorm::new(&[768]).plan_dtype(&gpu, &[8, 768], DType::F16)?;
/// assert!(matches!(plan.storage, Storage::F16Native | Storage::F16Packed));
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Storage {
    /// f32 values.
    #[default]
    F32,
    /// f16 values as WGSL `f16` (the device has SHADER_F16).
    F16Native,
    /// f16 values packed two to a `u32` word (no SHADER_F16, or
    /// [`GpuOptions::disable_shader_f16`](crate::GpuOptions::disable_shader_f16)).
    F16Packed,
    /// bf16 values packed two to a `u32` word (WGSL has no bf16 type, on any device).
    Bf16Packed,
}

impl Storage {
    /// The storage a tensor of `dtype` takes on `gpu`.
    pub(crate) fn of(gpu: &Gpu, dtype: crate::tensor::DType) -> Storage {
        use crate::tensor::DType;
        match dtype {
            DType::F32 => Storage::F32,
            DType::F16 if gpu.capabilities().shader_f16 => Storage::F16Native,
            DType::F16 => Storage::F16Packed,
            DType::BF16 => Storage::Bf16Packed,
        }
    }

    /// Bytes per element.
    pub(crate) fn elem_bytes(self) -> u64 {
        if self.is_half() {
            2
        } else {
            4
        }
    }

    /// Whether elements are 16-bit.
    pub(crate) fn is_half(self) -> bool {
        self != Storage::F32
    }

    fn prelude(self) -> &'static str {
        match self {
            Storage::F32 => include_str!("../../shaders/dtype_f32.wgsl"),
            Storage::F16Native => include_str!("../../shaders/dtype_f16.wgsl"),
            Storage::F16Packed => include_str!("../../shaders/dtype_f16_packed.wgsl"),
            Storage::Bf16Packed => include_str!("../../shaders/dtype_bf16.wgsl"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::F16Native => "f16",
            Storage::F16Packed => "f16-packed",
            Storage::Bf16Packed => "bf16-packed",
        }
    }
}

impl std::fmt::Display for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A kernel: its family and entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    RowsNorm,
    RowsNormScalar,
    RowsPartial,
    RowsMerge,
    RowsApply,
    RowsApplyScalar,
    RowsApplyPair,
    ChannelsPivot,
    ChannelsPartialCf,
    ChannelsPartialCl,
    ChannelsFinalize,
    ChannelsEvalCoef,
    ChannelsLocalStats,
    ChannelsGivenCoef,
    ChannelsBwdPartialCf,
    ChannelsBwdPartialCl,
    ChannelsBwdFinalize,
    ChannelsBwdParams,
    ChannelsBwdGiven,
    ApplyCf4,
    ApplyCl4,
    ApplyScalar,
    ApplyPair,
    ApplyBwdCf4,
    ApplyBwdCl4,
    ApplyBwdScalar,
    ApplyBwdPair,
    RowsBwd,
    RowsBwdScalar,
    RowsBwdSums,
    RowsBwdCols,
    RowsBwdColsScalar,
    RowsBwdChan,
    RowsBwdChanDx,
    RowsBwdChanDxScalar,
    RowsBwdDxPair,
    RowsBwdChanDxPair,
    RowsBwdColsumsScalar,
    RowsBwdMerge,
    CastWords,
    AddWords,
}

impl Kernel {
    pub(crate) fn entry(self) -> &'static str {
        match self {
            Kernel::RowsNorm => "rows_norm",
            Kernel::RowsNormScalar => "rows_norm_scalar",
            Kernel::RowsPartial => "rows_partial",
            Kernel::RowsMerge => "rows_merge",
            Kernel::RowsApply => "rows_apply",
            Kernel::RowsApplyScalar => "rows_apply_scalar",
            Kernel::RowsApplyPair => "rows_apply_pair",
            Kernel::ChannelsPivot => "channels_pivot",
            Kernel::ChannelsPartialCf => "channels_partial_cf",
            Kernel::ChannelsPartialCl => "channels_partial_cl",
            Kernel::ChannelsFinalize => "channels_finalize",
            Kernel::ChannelsEvalCoef => "channels_eval_coef",
            Kernel::ChannelsLocalStats => "channels_local_stats",
            Kernel::ChannelsGivenCoef => "channels_given_coef",
            Kernel::ChannelsBwdPartialCf => "channels_bwd_partial_cf",
            Kernel::ChannelsBwdPartialCl => "channels_bwd_partial_cl",
            Kernel::ChannelsBwdFinalize => "channels_bwd_finalize",
            Kernel::ChannelsBwdParams => "channels_bwd_params",
            Kernel::ChannelsBwdGiven => "channels_bwd_given",
            Kernel::ApplyCf4 => "apply_cf4",
            Kernel::ApplyCl4 => "apply_cl4",
            Kernel::ApplyScalar => "apply_scalar",
            Kernel::ApplyPair => "apply_pair",
            Kernel::ApplyBwdCf4 => "apply_bwd_cf4",
            Kernel::ApplyBwdCl4 => "apply_bwd_cl4",
            Kernel::ApplyBwdScalar => "apply_bwd_scalar",
            Kernel::ApplyBwdPair => "apply_bwd_pair",
            Kernel::RowsBwd => "rows_bwd",
            Kernel::RowsBwdScalar => "rows_bwd_scalar",
            Kernel::RowsBwdSums => "rows_bwd_sums",
            Kernel::RowsBwdCols => "rows_bwd_cols",
            Kernel::RowsBwdColsScalar => "rows_bwd_cols_scalar",
            Kernel::RowsBwdChan => "rows_bwd_chan",
            Kernel::RowsBwdChanDx => "rows_bwd_chan_dx",
            Kernel::RowsBwdChanDxScalar => "rows_bwd_chan_dx_scalar",
            Kernel::RowsBwdDxPair => "rows_bwd_dx_pair",
            Kernel::RowsBwdChanDxPair => "rows_bwd_chan_dx_pair",
            Kernel::RowsBwdColsumsScalar => "rows_bwd_colsums_scalar",
            Kernel::RowsBwdMerge => "rows_bwd_merge",
            Kernel::CastWords => "cast_words",
            Kernel::AddWords => "add_words",
        }
    }
}

impl Shader {
    pub(crate) fn file(self) -> &'static str {
        match self {
            Shader::Rows { .. } => "rows",
            Shader::Channels => "channels",
            Shader::Apply => "apply",
            Shader::RowsBwd => "rows_bwd",
            Shader::Elementwise => "elementwise",
        }
    }

    fn body(self) -> String {
        match self {
            Shader::Rows { row_cache } => format!(
                "const ROW_CACHE: u32 = {row_cache}u;\n{}",
                include_str!("../../shaders/rows.wgsl")
            ),
            Shader::Channels => include_str!("../../shaders/channels.wgsl").into(),
            Shader::Apply => include_str!("../../shaders/apply.wgsl").into(),
            Shader::RowsBwd => include_str!("../../shaders/rows_bwd.wgsl").into(),
            Shader::Elementwise => include_str!("../../shaders/elementwise.wgsl").into(),
        }
    }

    /// The module's WGSL with f32 storage.
    #[cfg(test)]
    pub(crate) fn text(self, subgroups: bool) -> String {
        self.text_for(subgroups, Storage::F32)
    }

    /// The module's WGSL: the lane prelude (subgroup or workgroup-memory reductions), the
    /// half-precision bit conversions and the element storage prelude, the shared Welford code,
    /// then the family's kernels. Native f16 needs `enable f16;` first.
    pub(crate) fn text_for(self, subgroups: bool, storage: Storage) -> String {
        let lanes = if subgroups {
            include_str!("../../shaders/lanes_subgroup.wgsl")
        } else {
            include_str!("../../shaders/lanes_shared.wgsl")
        };
        let enable = match storage {
            Storage::F16Native => "enable f16;\n",
            _ => "",
        };
        format!(
            "{enable}{lanes}\n{}\n{}\n{}\n{}",
            include_str!("../../shaders/halfbits.wgsl"),
            storage.prelude(),
            include_str!("../../shaders/common.wgsl"),
            self.body()
        )
    }
}

/// The WGSL of a kernel family (`"rows"`, `"channels"`, `"apply"`, `"rows_bwd"`) as the crate builds it, for the shader tests (naga validation on every back end). Not part of the API.
#[doc(hidden)]
pub fn module_source(family: &str, subgroups: bool) -> Option<String> {
    module_source_storage(family, subgroups, "f32")
}

/// [`module_source`] with an element storage (`"f32"`, `"f16"`, `"f16-packed"`,
/// `"bf16-packed"`). Not part of the API.
#[doc(hidden)]
pub fn module_source_storage(family: &str, subgroups: bool, storage: &str) -> Option<String> {
    let storage = [
        Storage::F32,
        Storage::F16Native,
        Storage::F16Packed,
        Storage::Bf16Packed,
    ]
    .into_iter()
    .find(|s| s.name() == storage)?;
    [
        Shader::Rows { row_cache: 16 },
        Shader::Channels,
        Shader::Apply,
        Shader::RowsBwd,
        Shader::Elementwise,
    ]
    .into_iter()
    .find(|s| s.file() == family)
    .map(|s| s.text_for(subgroups, storage))
}

/// Binding numbers by variable name, read from the module's `@binding(N) var<..> name:`
/// declarations, so host code names what it binds and the numbers are written once.
fn binding_table(text: &str) -> HashMap<String, u32> {
    let mut table = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("@group(0) @binding(") else {
            continue;
        };
        let Some((num, decl)) = rest.split_once(')') else {
            continue;
        };
        let name = decl
            .split_once('>')
            .map_or(decl, |(_, n)| n)
            .trim()
            .split(':')
            .next()
            .unwrap_or("")
            .trim_start_matches("var")
            .trim();
        if let Ok(n) = num.parse() {
            table.insert(name.to_string(), n);
        }
    }
    table
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PipelineKey {
    shader: Shader,
    storage: Storage,
    entry: &'static str,
    subgroups: bool,
    overrides: Overrides,
}

type Module = (wgpu::ShaderModule, Arc<HashMap<String, u32>>);

/// Modules and pipelines of one device.
#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<(Shader, bool, Storage), Module>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
}

impl PipelineCache {
    pub(crate) fn len(&self) -> usize {
        self.pipelines.lock().map(|p| p.len()).unwrap_or(0)
    }
}

impl Gpu {
    /// The cached pipeline of `kernel` (in `shader`) with `overrides`, and the module's binding
    /// table.
    pub(crate) fn pipeline(
        &self,
        shader: Shader,
        storage: Storage,
        kernel: Kernel,
        overrides: &Overrides,
    ) -> Result<(wgpu::ComputePipeline, Arc<HashMap<String, u32>>)> {
        let subgroups = self.capabilities().subgroups;
        let (module, table) = self.module(shader, subgroups, storage)?;
        let key = PipelineKey {
            shader,
            storage,
            entry: kernel.entry(),
            subgroups,
            overrides: overrides.clone(),
        };
        let cache = self.cache();
        if let Some(p) = cache.pipelines.lock().unwrap().get(&key) {
            return Ok((p.clone(), table));
        }
        let constants =
            overrides.constants(subgroups.then(|| self.capabilities().subgroup_min_size));
        let pipeline = self.scoped(|d| {
            d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(kernel.entry()),
                layout: None,
                module: &module,
                entry_point: Some(kernel.entry()),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    // Every kernel writes workgroup memory before reading it; zeroing it costs
                    // a pass per workgroup on CPU adapters.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            })
        })?;
        cache
            .pipelines
            .lock()
            .unwrap()
            .insert(key, pipeline.clone());
        Ok((pipeline, table))
    }

    fn module(&self, shader: Shader, subgroups: bool, storage: Storage) -> Result<Module> {
        let cache = self.cache();
        let key = (shader, subgroups, storage);
        if let Some(m) = cache.modules.lock().unwrap().get(&key) {
            return Ok(m.clone());
        }
        let src = shader.text_for(subgroups, storage);
        let table = Arc::new(binding_table(&src));
        // Browsers require the extension to be enabled; naga (every other target) rejects it.
        #[cfg(target_arch = "wasm32")]
        let src = if subgroups {
            format!("enable subgroups;\n{src}")
        } else {
            src
        };
        let m = self.scoped(|d| {
            d.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(shader.file()),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            })
        })?;
        let module = (m, table);
        cache.modules.lock().unwrap().insert(key, module.clone());
        Ok(module)
    }
}

/// Looks a binding up, or says which kernel lacks it (a bug in the crate, not the caller's).
pub(crate) fn binding_number(
    table: &HashMap<String, u32>,
    kernel: Kernel,
    name: &str,
) -> Result<u32> {
    table.get(name).copied().ok_or_else(|| {
        NormError::Wgpu(format!(
            "internal: kernel {} has no binding named {name}",
            kernel.entry()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_tables_name_every_declaration() {
        let t = binding_table(&Shader::Rows { row_cache: 4 }.text(false));
        assert_eq!(t["p"], 0);
        assert_eq!(t["x"], 1);
        assert_eq!(t["y1"], 8);
        let t = binding_table(&Shader::Channels.text(true));
        assert_eq!(t["coef_w"], 11);
        assert_eq!(t["running_var"], 8);
    }
}
