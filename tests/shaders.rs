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

/// The element storages a module is built with (its dtype prelude).
const STORAGES: [&str; 4] = ["f32", "f16", "f16-packed", "bf16-packed"];

/// A library family's module as the crate builds it with an element storage, or the
/// benchmarks' standalone baseline.
fn source_in(file: &str, subgroups: bool, storage: &str) -> String {
    match file {
        "baseline" => include_str!("../benches/common/baseline.wgsl").to_string(),
        _ => fused_norm::module_source_storage(file, subgroups, storage).expect("a known family"),
    }
}

/// Parses and validates a family's module with each lane prelude, then compiles each entry
/// point with every override set from `sets`.
type OverrideSets = Vec<Vec<(&'static str, f64)>>;

fn check_family(file: &str, sets: &dyn Fn(&str) -> OverrideSets) -> usize {
    check_family_in(file, "f32", sets)
}

/// [`check_family`] with an element storage.
fn check_family_in(file: &str, storage: &str, sets: &dyn Fn(&str) -> OverrideSets) -> usize {
    let mut n = 0;
    // The baseline is standalone: no lane prelude, no SG_MIN.
    let preludes: &[bool] = if file == "baseline" {
        &[false]
    } else {
        &[false, true]
    };
    for &subgroups in preludes {
        let src = source_in(file, subgroups, storage);
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
                        &format!("{file}::{entry} {storage} sg={subgroups}"),
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
/// `sets`, and each again with the shape's divisors fixed as the CPU tuning fixes them.
fn with_divisors(sets: OverrideSets, divisors: &[(&'static str, f64)]) -> OverrideSets {
    let fixed: OverrideSets = sets
        .iter()
        .map(|s| s.iter().chain(divisors).copied().collect())
        .collect();
    sets.into_iter().chain(fixed).collect()
}

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
fn rows_module_compiles_for_every_backend() {
    let n = check_family("rows", &|entry| {
        let reduces = ["rows_norm", "rows_norm_scalar", "rows_partial"].contains(&entry);
        let sets = sized_sets(
            &["VEC", "HAS_W", "HAS_B", "CENTER", "CHANNEL_AFFINE"],
            reduces,
        );
        with_divisors(sets, &[("K_RUN", 4096.0), ("K_D", 65536.0)])
    });
    assert!(n > 100);
}

/// The rows family in every element storage (native f16, packed f16, packed bf16, and f32 with
/// the residual add): each workgroup size with everything off and on, then every combination of
/// the add's switches and centring with the affine on.
#[test]
fn rows_module_compiles_in_every_storage_with_the_residual_add() {
    let sets = |_: &str| {
        let mut sets = sized_sets(
            &[
                "VEC",
                "HAS_W",
                "HAS_B",
                "CENTER",
                "CHANNEL_AFFINE",
                "ADD",
                "IN_PLACE",
                "ONE_READ",
            ],
            false,
        );
        sets.truncate(WGS.len() * 2);
        // The one-read statistics, as CPU adapters' long rows take them, with 1, 2 and 4 rows
        // per group of threads, per-channel affine (one row per group), and without centring.
        for (tpr, wg) in [(1.0, 64.0), (8.0, 64.0), (8.0, 8.0)] {
            for rows in [1.0, 2.0, 4.0] {
                sets.push(vec![
                    ("WG", wg),
                    ("TPR", tpr),
                    ("HAS_W", 1.0),
                    ("HAS_B", 1.0),
                    ("VEC", 1.0),
                    ("CENTER", 1.0),
                    ("ONE_READ", 1.0),
                    ("PER_LANE", rows),
                ]);
            }
            sets.push(vec![
                ("WG", wg),
                ("TPR", tpr),
                ("HAS_W", 1.0),
                ("VEC", 1.0),
                ("CENTER", 1.0),
                ("CHANNEL_AFFINE", 1.0),
                ("ONE_READ", 1.0),
            ]);
            // RMSNorm's long rows: no centring, rows sharing the weight.
            sets.push(vec![
                ("WG", wg),
                ("TPR", tpr),
                ("HAS_W", 1.0),
                ("VEC", 1.0),
                ("CENTER", 0.0),
                ("ONE_READ", 1.0),
                ("PER_LANE", 4.0),
            ]);
        }
        for mask in 0..8u32 {
            let mut s = vec![
                ("WG", 64.0),
                ("TPR", 8.0),
                ("HAS_W", 1.0),
                ("HAS_B", 1.0),
                ("VEC", 1.0),
            ];
            for (i, k) in ["ADD", "IN_PLACE", "CENTER"].iter().enumerate() {
                s.push((*k, f64::from((mask >> i) & 1)));
            }
            sets.push(s);
        }
        sets
    };
    for storage in STORAGES {
        assert!(check_family_in("rows", storage, &sets) > 100, "{storage}");
    }
}

/// The channels family and its apply pass read x (and write y) in every element storage.
#[test]
fn channels_and_apply_compile_in_every_storage() {
    for storage in STORAGES {
        let n = check_family_in("channels", storage, &|_| {
            let mut sets = sized_sets(&["VEC", "HAS_W", "HAS_B", "UPDATE", "UNBIASED"], false);
            sets.truncate(WGS.len() * 2);
            sets
        });
        assert!(n > 50, "{storage}");
        let apply = check_family_in("apply", storage, &|_| sized_sets(&["EVAL"], false));
        assert!(apply > 10, "{storage}");
    }
}

/// The rows backward reads x and dy and writes dx in every element storage (the half pair
/// kernels included), each workgroup size with every switch off and on.
#[test]
fn rows_bwd_compiles_in_every_storage() {
    for storage in STORAGES {
        let n = check_family_in("rows_bwd", storage, &|entry| {
            let reduces = [
                "rows_bwd",
                "rows_bwd_scalar",
                "rows_bwd_sums",
                "rows_bwd_chan",
            ]
            .contains(&entry);
            let mut sets = sized_sets(
                &["VEC", "HAS_W", "HAS_B", "CENTER", "CHANNEL_AFFINE"],
                reduces,
            );
            sets.truncate(WGS.len() * 2);
            sets
        });
        assert!(n > 50, "{storage}");
    }
}

#[test]
fn elementwise_module_compiles_for_every_backend() {
    let n = check_family("elementwise", &|_| {
        sized_sets(
            &["SRC_F16", "SRC_BF16", "DST_F16", "DST_BF16", "IN_PLACE"],
            false,
        )
    });
    assert!(n > 100);
}

#[test]
fn rows_norm_compiles_with_every_row_cache() {
    let src = fused_norm::module_source("rows", true).unwrap();
    let line = "const ROW_CACHE: u32 = 16u;";
    assert!(src.contains(line));
    for cache in [1, 2, 4, 8] {
        let text = src.replace(line, &format!("const ROW_CACHE: u32 = {cache}u;"));
        let module = naga::front::wgsl::parse_str(&text).unwrap();
        let info = Validator::new(ValidationFlags::all(), Capabilities::all())
            .validate(&module)
            .unwrap();
        for tpr in [1.0, 64.0, 256.0] {
            let c = [
                ("WG", 256.0),
                ("TPR", tpr),
                ("SG_MIN", 32.0),
                ("HAS_W", 1.0),
            ];
            compile("rows_norm", &module, &info, "rows_norm", &c);
        }
    }
}

#[test]
fn channels_module_compiles_for_every_backend() {
    let n = check_family("channels", &|entry| {
        let reduces = [
            "channels_partial_cf",
            "channels_finalize",
            "channels_local_stats",
            "channels_bwd_partial_cf",
            "channels_bwd_finalize",
            "channels_bwd_params",
        ]
        .contains(&entry);
        let flags = ["VEC", "HAS_W", "HAS_B", "UPDATE", "UNBIASED", "EVAL"];
        sized_sets(&flags, reduces)
    });
    assert!(n > 100);
}

#[test]
fn rows_bwd_module_compiles_for_every_backend() {
    let n = check_family("rows_bwd", &|entry| {
        let reduces = [
            "rows_bwd",
            "rows_bwd_scalar",
            "rows_bwd_sums",
            "rows_bwd_chan",
        ]
        .contains(&entry);
        let sets = sized_sets(
            &["VEC", "HAS_W", "HAS_B", "CENTER", "CHANNEL_AFFINE"],
            reduces,
        );
        // The column walks: one column per lane (GPUs) and several (CPU adapters).
        let walks = [
            "rows_bwd_cols",
            "rows_bwd_cols_scalar",
            "rows_bwd_colsums_scalar",
        ];
        match walks.contains(&entry) {
            true => [1.0, 2.0, 4.0]
                .iter()
                .flat_map(|&c| with_divisors(sets.clone(), &[("PER_LANE", c)]))
                .collect(),
            false => sets,
        }
    });
    assert!(n > 100);
}

#[test]
fn apply_module_compiles_for_every_backend() {
    let n = check_family("apply", &|_| {
        let shape = [("K_C", 64.0), ("K_RUN", 49.0), ("K_SPR", 196.0)];
        let sets = with_divisors(sized_sets(&["EVAL"], false), &shape);
        // A vec4 per lane (GPUs) and several (CPU adapters).
        [1.0, 8.0]
            .iter()
            .flat_map(|&k| with_divisors(sets.clone(), &[("PER_LANE", k)]))
            .collect()
    });
    assert!(n > 10);
}

#[test]
fn baseline_module_compiles_for_every_backend() {
    let n = check_family("baseline", &|_| {
        let mut sets = sized_sets(&["HAS_W", "HAS_B"], false);
        sets.iter_mut().for_each(|s| s.retain(|(k, _)| *k != "TPR"));
        sets
    });
    assert!(n > 10);
}

// ---------------------------------------------------------------------------------------------
// GPU-execution checks on the IR. The software adapters run a workgroup's subgroups one after
// another and write whole vectors, so the kernels' tests cannot show the two defects below;
// these checks read every kernel of every module (both lane preludes) instead.

use std::collections::BTreeSet;

use naga::{
    AddressSpace, Block, Expression, Function, GlobalVariable, Handle, Statement, TypeInner,
};

fn parsed(file: &str, subgroups: bool) -> (Module, ModuleInfo) {
    parsed_in(file, subgroups, "f32")
}

fn parsed_in(file: &str, subgroups: bool, storage: &str) -> (Module, ModuleInfo) {
    let src = source_in(file, subgroups, storage);
    let module = naga::front::wgsl::parse_str(&src).expect("parses");
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .expect("validates");
    (module, info)
}

const FAMILIES: [&str; 6] = [
    "rows",
    "channels",
    "apply",
    "rows_bwd",
    "baseline",
    "elementwise",
];

/// The global variable a pointer expression points into, if any.
fn root_global(f: &Function, mut e: Handle<Expression>) -> Option<Handle<GlobalVariable>> {
    loop {
        match f.expressions[e] {
            Expression::GlobalVariable(g) => return Some(g),
            Expression::Access { base, .. } | Expression::AccessIndex { base, .. } => e = base,
            _ => return None,
        }
    }
}

fn for_each_statement(b: &Block, visit: &mut dyn FnMut(&Statement)) {
    for s in b.iter() {
        visit(s);
        match s {
            Statement::Block(inner) => for_each_statement(inner, visit),
            Statement::If { accept, reject, .. } => {
                for_each_statement(accept, visit);
                for_each_statement(reject, visit);
            }
            Statement::Switch { cases, .. } => {
                for c in cases {
                    for_each_statement(&c.body, visit);
                }
            }
            Statement::Loop {
                body, continuing, ..
            } => {
                for_each_statement(body, visit);
                for_each_statement(continuing, visit);
            }
            _ => {}
        }
    }
}

/// Stores to one component of a vector in storage memory: WGSL lets an implementation rewrite
/// the whole vector (Metal does), so two invocations writing neighbouring components lose one.
fn component_stores(module: &Module, info: &ModuleInfo) -> Vec<String> {
    let mut found = Vec::new();
    let mut check = |name: &str, f: &Function, fi: &naga::valid::FunctionInfo| {
        for_each_statement(&f.body, &mut |s| {
            let Statement::Store { pointer, .. } = *s else {
                return;
            };
            let Some(g) = root_global(f, pointer) else {
                return;
            };
            if module.global_variables[g].space
                != (AddressSpace::Storage {
                    access: naga::StorageAccess::LOAD | naga::StorageAccess::STORE,
                })
            {
                return;
            }
            let base = match f.expressions[pointer] {
                Expression::Access { base, .. } | Expression::AccessIndex { base, .. } => base,
                _ => return,
            };
            let into_vector = match *fi[base].ty.inner_with(&module.types) {
                TypeInner::Pointer { base, .. } => {
                    matches!(module.types[base].inner, TypeInner::Vector { .. })
                }
                TypeInner::ValuePointer { size, .. } => size.is_some(),
                _ => false,
            };
            if into_vector {
                let var = module.global_variables[g].name.clone().unwrap_or_default();
                found.push(format!(
                    "{name}: stores one component of a vector of `{var}`"
                ));
            }
        });
    };
    for (h, f) in module.functions.iter() {
        check(f.name.as_deref().unwrap_or("?"), f, &info[h]);
    }
    for (i, ep) in module.entry_points.iter().enumerate() {
        check(&ep.name, &ep.function, info.get_entry_point(i));
    }
    found
}

#[test]
fn no_kernel_stores_one_component_of_a_vector_in_storage() {
    for file in FAMILIES {
        // Half storage changes the rows family's element types (vec2<u32> words, vec4<f16>).
        let storages: &[&str] = match file {
            "rows" | "channels" | "apply" => &STORAGES,
            _ => &["f32"],
        };
        for &storage in storages {
            for subgroups in [false, true] {
                let (module, info) = parsed_in(file, subgroups, storage);
                let found = component_stores(&module, &info);
                assert!(
                    found.is_empty(),
                    "{file} {storage} (subgroups {subgroups}):\n{}",
                    found.join("\n")
                );
            }
        }
    }
}

#[test]
fn the_component_store_check_catches_one() {
    let src = "@group(0) @binding(0) var<storage, read_write> y: array<vec4<f32>>;
               @compute @workgroup_size(64)
               fn k(@builtin(global_invocation_id) id: vec3<u32>) { y[id.x >> 2u][id.x & 3u] = 1.0; }";
    let module = naga::front::wgsl::parse_str(src).unwrap();
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .unwrap();
    assert_eq!(component_stores(&module, &info).len(), 1);
}

/// Workgroup variables read or written since the last workgroup barrier: (variable, written).
type Interval = BTreeSet<(Handle<GlobalVariable>, bool)>;

/// Where control leaves a block: falling through, or by break, continue or return.
#[derive(Default)]
struct Flow {
    next: Option<Interval>,
    breaks: Vec<Interval>,
    continues: Vec<Interval>,
    returns: Vec<Interval>,
}

fn union(sets: impl IntoIterator<Item = Interval>) -> Option<Interval> {
    sets.into_iter().reduce(|mut a, b| {
        a.extend(b);
        a
    })
}

/// Flags any workgroup variable that one path reads and writes between two barriers: with
/// subgroups running in any order between barriers, a thread's write can land before another
/// thread's read of the old value, or after it. Conservative: it does not reason about indices
/// or which branch a constant selects, so every path of every function counts.
struct RaceCheck<'a> {
    module: &'a Module,
    allowed: &'a [&'a str],
    found: BTreeSet<String>,
}

impl RaceCheck<'_> {
    fn touch(&mut self, st: &mut Interval, g: Handle<GlobalVariable>, write: bool, at: &str) {
        let var = &self.module.global_variables[g];
        if var.space != AddressSpace::WorkGroup {
            return;
        }
        let name = var.name.clone().unwrap_or_default();
        if st.contains(&(g, !write)) && !self.allowed.contains(&name.as_str()) {
            self.found.insert(format!(
                "`{name}` is read and written between two barriers (reaching `{at}`)"
            ));
        }
        st.insert((g, write));
    }

    fn block(&mut self, f: &Function, b: &Block, mut st: Interval, at: &str) -> Flow {
        let mut flow = Flow::default();
        for s in b.iter() {
            match s {
                Statement::Emit(range) => {
                    for e in range.clone() {
                        if let Expression::Load { pointer } = f.expressions[e] {
                            if let Some(g) = root_global(f, pointer) {
                                self.touch(&mut st, g, false, at);
                            }
                        }
                    }
                }
                Statement::Store { pointer, .. } => {
                    if let Some(g) = root_global(f, *pointer) {
                        self.touch(&mut st, g, true, at);
                    }
                }
                Statement::ControlBarrier(b) if b.contains(naga::Barrier::WORK_GROUP) => {
                    st.clear();
                }
                Statement::WorkGroupUniformLoad { .. } => st.clear(),
                Statement::Block(inner) => {
                    let fl = self.block(f, inner, st, at);
                    flow.breaks.extend(fl.breaks);
                    flow.continues.extend(fl.continues);
                    flow.returns.extend(fl.returns);
                    match fl.next {
                        Some(n) => st = n,
                        None => return flow,
                    }
                }
                Statement::If { accept, reject, .. } => {
                    let a = self.block(f, accept, st.clone(), at);
                    let r = self.block(f, reject, st, at);
                    let mut next = Vec::new();
                    for fl in [a, r] {
                        flow.breaks.extend(fl.breaks);
                        flow.continues.extend(fl.continues);
                        flow.returns.extend(fl.returns);
                        next.extend(fl.next);
                    }
                    match union(next) {
                        Some(n) => st = n,
                        None => return flow,
                    }
                }
                Statement::Switch { cases, .. } => {
                    // A break inside a switch leaves the switch.
                    let mut next = Vec::new();
                    for c in cases {
                        let fl = self.block(f, &c.body, st.clone(), at);
                        flow.continues.extend(fl.continues);
                        flow.returns.extend(fl.returns);
                        next.extend(fl.breaks);
                        next.extend(fl.next);
                    }
                    match union(next) {
                        Some(n) => st = n,
                        None => return flow,
                    }
                }
                Statement::Loop {
                    body,
                    continuing,
                    break_if,
                } => {
                    let mut entry = st.clone();
                    let exits = loop {
                        let b = self.block(f, body, entry.clone(), at);
                        flow.returns.extend(b.returns);
                        let mut exits = b.breaks;
                        let into_continuing = union(b.next.into_iter().chain(b.continues));
                        if let Some(c_in) = into_continuing {
                            let c = self.block(f, continuing, c_in, at);
                            flow.returns.extend(c.returns);
                            if let Some(back) = c.next {
                                if break_if.is_some() {
                                    exits.push(back.clone());
                                }
                                let grown = union([entry.clone(), back]).unwrap();
                                if grown != entry {
                                    entry = grown;
                                    continue;
                                }
                            }
                        }
                        break exits;
                    };
                    match union(exits) {
                        Some(n) => st = n,
                        None => return flow,
                    }
                }
                Statement::Call { function, .. } => {
                    let callee = &self.module.functions[*function];
                    let name = callee.name.clone().unwrap_or_default();
                    let fl = self.block(callee, &callee.body, st, &name);
                    match union(fl.returns.into_iter().chain(fl.next)) {
                        Some(n) => st = n,
                        None => return flow,
                    }
                }
                Statement::Break => {
                    flow.breaks.push(st);
                    return flow;
                }
                Statement::Continue => {
                    flow.continues.push(st);
                    return flow;
                }
                Statement::Return { .. } | Statement::Kill => {
                    flow.returns.push(st);
                    return flow;
                }
                _ => {}
            }
        }
        flow.next = Some(st);
        flow
    }
}

fn workgroup_races(module: &Module, allowed: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for ep in &module.entry_points {
        let mut rc = RaceCheck {
            module,
            allowed,
            found: BTreeSet::new(),
        };
        rc.block(&ep.function, &ep.function.body, Interval::new(), &ep.name);
        found.extend(rc.found.into_iter().map(|m| format!("{}: {m}", ep.name)));
    }
    found
}

#[test]
fn no_kernel_reuses_workgroup_memory_without_a_barrier() {
    for file in FAMILIES {
        // The naive baseline's textbook in-place tree reads tree[lid + off] and writes tree[lid]
        // (lid < off) in one level: disjoint slots, which this index-blind check cannot see.
        let allowed: &[&str] = if file == "baseline" { &["tree"] } else { &[] };
        for subgroups in [false, true] {
            let (module, _) = parsed(file, subgroups);
            let found = workgroup_races(&module, allowed);
            assert!(
                found.is_empty(),
                "{file} (subgroups {subgroups}):\n{}",
                found.join("\n")
            );
        }
    }
}

#[test]
fn the_race_check_catches_two_reductions_without_the_barrier_between() {
    // reduce_group without the barrier after a last level on red_a: the next call's first level
    // writes red_a with no barrier between.
    let src = fused_norm::module_source("rows", false).unwrap();
    let fixed = "            workgroupBarrier();\n            break;";
    assert!(
        src.contains(fixed),
        "reduce_group's barrier after a red_a level moved; update this test"
    );
    let broken = src.replace(fixed, "            break;");
    let module = naga::front::wgsl::parse_str(&broken).unwrap();
    let found = workgroup_races(&module, &[]);
    assert!(
        found
            .iter()
            .any(|m| m.starts_with("rows_norm:") && m.contains("red_a")),
        "{found:?}"
    );
}

#[test]
fn every_params_struct_matches_its_wgsl_struct() {
    let layouts = fused_norm::uniform_layouts();
    assert!(layouts.len() >= 3);
    for (family, name, size, fields) in layouts {
        let (module, _) = parsed(family, false);
        let ty = module
            .types
            .iter()
            .find(|(_, t)| t.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{family}: no WGSL struct {name}"))
            .1;
        let TypeInner::Struct { members, span } = &ty.inner else {
            panic!("{family}: {name} is not a struct");
        };
        assert_eq!(*span as usize, size, "{family}: {name} size");
        for (field, offset) in fields {
            let m = members
                .iter()
                .find(|m| m.name.as_deref() == Some(field))
                .unwrap_or_else(|| panic!("{family}: {name} has no field {field}"));
            assert_eq!(m.offset as usize, offset, "{family}: {name}.{field}");
        }
    }
}
