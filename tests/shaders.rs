//! Every shader module, with every override set the crate can create pipelines with, through
//! naga's validator and its SPIR-V, MSL and HLSL back ends: a shader that would fail on Metal
//! or DX12 fails here, on a machine that has neither.

use naga::back::PipelineConstants;
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{Module, ShaderStage};

const BOOLS: [f64; 2] = [0.0, 1.0];
const WGS: [u32; 3] = [64, 128, 256];
// Subgroup lower bounds reported by real adapters (lavapipe 8, NVIDIA 32, AMD 32/64, Intel 8..32,
// Apple 32, Mali/Adreno 4..128).
const SG_MINS: [u32; 5] = [4, 8, 32, 64, 128];

fn compile(what: &str, module: &Module, info: &ModuleInfo, entry: &str, consts: &[(&str, f64)]) {
    let mut pc = PipelineConstants::default();
    for (k, v) in consts {
        pc.insert((*k).to_string(), *v);
    }
    let (m, i) = naga::back::pipeline_constants::process_overrides(
        module,
        info,
        Some((ShaderStage::Compute, entry)),
        &pc,
    )
    .unwrap_or_else(|e| panic!("{what}: overrides {consts:?}: {e:?}"));

    let spv = naga::back::spv::PipelineOptions {
        shader_stage: ShaderStage::Compute,
        entry_point: entry.to_string(),
    };
    let spv_opts = naga::back::spv::Options {
        lang_version: (1, 3),
        ..Default::default()
    };
    naga::back::spv::write_vec(&m, &i, &spv_opts, Some(&spv))
        .unwrap_or_else(|e| panic!("{what} SPIR-V {consts:?}: {e:?}"));

    let msl_opts = naga::back::msl::Options {
        lang_version: (2, 4),
        fake_missing_bindings: true,
        ..Default::default()
    };
    let msl_pipe = naga::back::msl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, entry.to_string())),
        ..Default::default()
    };
    naga::back::msl::write_string(&m, &i, &msl_opts, &msl_pipe)
        .unwrap_or_else(|e| panic!("{what} MSL {consts:?}: {e:?}"));

    let hlsl_opts = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_0,
        ..Default::default()
    };
    let hlsl_pipe = naga::back::hlsl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, entry.to_string())),
    };
    let mut out = String::new();
    naga::back::hlsl::Writer::new(&mut out, &hlsl_opts, &hlsl_pipe)
        .write(&m, &i, None)
        .unwrap_or_else(|e| panic!("{what} HLSL {consts:?}: {e:?}"));
}

/// Parses and validates a family's module with each lane prelude, then compiles each entry
/// point with every override set from `sets`.
type OverrideSets = Vec<Vec<(&'static str, f64)>>;

fn check_family(file: &str, sets: &dyn Fn(&str) -> OverrideSets) -> usize {
    let mut n = 0;
    for subgroups in [false, true] {
        let src = fused_norm::module_source(file, subgroups).expect("a known family");
        let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| {
            panic!("{file} (subgroups {subgroups}): {}", e.emit_to_string(&src))
        });
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| {
                panic!("{file} (subgroups {subgroups}): {}", e.emit_to_string(&src))
            });
        let entries: Vec<String> = module.entry_points.iter().map(|e| e.name.clone()).collect();
        assert!(!entries.is_empty(), "{file} has no entry points");
        for entry in &entries {
            for set in sets(entry) {
                let sg_mins: &[u32] = if subgroups { &SG_MINS } else { &[0] };
                for &sg in sg_mins {
                    let mut c = set.clone();
                    if subgroups {
                        c.push(("SG_MIN", f64::from(sg)));
                    }
                    compile(
                        &format!("{file}::{entry} sg={subgroups}"),
                        &module,
                        &info,
                        entry,
                        &c,
                    );
                    n += 1;
                }
            }
        }
    }
    n
}

/// WG and TPR pairs the policies produce (TPR a power of two up to WG), with the boolean
/// overrides all off and all on, plus every boolean combination at one size.
fn sized_sets(bools: &[&'static str], reduce: bool) -> OverrideSets {
    let mut sets = Vec::new();
    for wg in WGS {
        let mut tprs = vec![wg];
        if reduce {
            tprs = (0..=wg.trailing_zeros()).map(|k| 1u32 << k).collect();
        }
        for tpr in tprs {
            for b in BOOLS {
                let mut s = vec![("WG", f64::from(wg)), ("TPR", f64::from(tpr))];
                s.extend(bools.iter().map(|k| (*k, b)));
                sets.push(s);
            }
        }
    }
    for mask in 0..(1u32 << bools.len()) {
        let mut s = vec![("WG", 64.0), ("TPR", 8.0)];
        s.extend(
            bools
                .iter()
                .enumerate()
                .map(|(i, k)| (*k, f64::from((mask >> i) & 1))),
        );
        sets.push(s);
    }
    sets
}

#[test]
fn layer_norm_module_compiles_for_every_backend() {
    let n = check_family("layer_norm", &|entry| {
        sized_sets(&["VEC", "HAS_W", "HAS_B"], entry == "layer_norm_rows")
    });
    assert!(n > 100);
}

#[test]
fn batch_norm_module_compiles_for_every_backend() {
    let n = check_family("batch_norm", &|entry| {
        let mut sets = sized_sets(&["VEC", "HAS_W", "HAS_B", "UPDATE", "UNBIASED"], false);
        if entry == "batch_norm_apply" {
            // Every layout of the elementwise pass: scalar, vec4 of one channel, of four.
            let base = sets.clone();
            for mode in [1.0, 2.0] {
                sets.extend(
                    base.iter()
                        .map(|s| [s.clone(), vec![("APPLY_MODE", mode)]].concat()),
                );
            }
        }
        sets
    });
    assert!(n > 100);
}

#[test]
fn baseline_module_compiles_for_every_backend() {
    let n = check_family("baseline", &|_| sized_sets(&["HAS_W", "HAS_B"], false));
    assert!(n > 10);
}
