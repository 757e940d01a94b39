//! Half-precision bench rows (issue 9): LayerNorm and RMSNorm in f32, f16 and bf16 at D = 768
//! and 4096, on both storage paths (native f16 where the adapter has SHADER_F16, and packed
//! words, forced with `disable_shader_f16`), each against a copy of the same bytes in the same
//! run; and `forward_add` against a copy of its bytes (x and residual in, sum and y out) and
//! against an add kernel followed by LayerNorm.
//!
//! cargo run --release --example bench_half -- [--quick]

#[path = "../benches/common/mod.rs"]
mod common;

use common::GpuTimer;
use fused_norm::{
    DType, Gpu, GpuOptions, LayerNorm, LayerNormAddOutput, LayerNormOutput, Result, RmsNorm,
    RmsNormOutput, Tensor,
};

/// A plain elementwise add of two tensors of one dtype, four u32 words per thread: the first
/// half of the unfused "add, then LayerNorm" the fused add is measured against.
const ADD_WGSL: &str = r#"
@group(0) @binding(0) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> o: array<vec4<u32>>;
override KIND: u32 = 0u; // 0 f32, 1 f16, 2 bf16

fn bf(w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
}

fn bf_pack(v: vec2<f32>) -> u32 {
    let b = bitcast<vec2<u32>>(v);
    let r = (b + vec2<u32>(0x7fffu) + ((b >> vec2<u32>(16u)) & vec2<u32>(1u))) >> vec2<u32>(16u);
    return r.x | (r.y << 16u);
}

fn add_word(x: u32, y: u32) -> u32 {
    if (KIND == 0u) {
        return bitcast<u32>(bitcast<f32>(x) + bitcast<f32>(y));
    }
    if (KIND == 1u) {
        return pack2x16float(unpack2x16float(x) + unpack2x16float(y));
    }
    return bf_pack(bf(x) + bf(y));
}

@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
    let i = id.x + id.y * n.x * 64u;
    if (i >= arrayLength(&o)) {
        return;
    }
    let x = a[i];
    let y = b[i];
    o[i] = vec4<u32>(add_word(x.x, y.x), add_word(x.y, y.y), add_word(x.z, y.z), add_word(x.w, y.w));
}
"#;

struct Adder {
    pipelines: Vec<wgpu::ComputePipeline>,
}

impl Adder {
    fn new(gpu: &Gpu) -> Adder {
        let d = gpu.device();
        let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("bench add"),
            source: wgpu::ShaderSource::Wgsl(
                ADD_WGSL
                    .replace(
                        "let (x, y) = (a[i], b[i]);",
                        "let x = a[i];\n    let y = b[i];",
                    )
                    .into(),
            ),
        });
        let pipelines = (0..3)
            .map(|k| {
                d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some("bench add"),
                    layout: None,
                    module: &module,
                    entry_point: Some("add"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants: &[("KIND", f64::from(k))],
                        ..Default::default()
                    },
                    cache: None,
                })
            })
            .collect();
        Adder { pipelines }
    }

    fn record(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        a: &Tensor,
        b: &Tensor,
        o: &Tensor,
    ) {
        let k = match a.dtype() {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
        };
        let p = &self.pipelines[k];
        let bg = gpu.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &p.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: a.buffer().as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: b.buffer().as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: o.buffer().as_entire_binding(),
                },
            ],
        });
        let vec4s = (o.buffer().size() / 16) as u32;
        let groups = vec4s.div_ceil(64);
        let (gx, gy) = (groups.min(65535), groups.div_ceil(65535));
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(p);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(gx, gy, 1);
    }
}

/// f32 tensors holding `bytes` bytes: a copy between two of them moves those bytes.
fn words(gpu: &Gpu, bytes: usize) -> Result<(Tensor, Tensor)> {
    let n = bytes / 4;
    Ok((
        Tensor::from_slice(gpu, &vec![1.0f32; n], &[n])?,
        Tensor::empty(gpu, &[n])?,
    ))
}

fn input(gpu: &Gpu, shape: &[usize], dtype: DType, seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let x = Tensor::from_slice(gpu, &common::pseudo_random(n, seed, 0.25, 0.87), shape)?;
    if dtype == DType::F32 {
        return Ok(x);
    }
    x.cast(gpu, dtype)
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (samples, iters) = if quick { (3, 1) } else { (7, 3) };
    // One device at a time: on an H100 a second live VkDevice ran even the f32 copy 1.9x slower
    // than the first, which made the packed path's rows incomparable.
    let open = |packed: bool| {
        Gpu::with_options(GpuOptions {
            timestamps: true,
            disable_shader_f16: packed,
            ..Default::default()
        })
    };
    let native = open(false)?;
    println!("adapter: {}", native.describe());
    let mut paths = vec![("packed", true)];
    if native.capabilities().shader_f16 {
        paths.insert(0, ("native", false));
    }
    drop(native);
    let shapes = [[16384usize, 768], [2048, 4096]];
    println!();
    println!("| path | op | shape | dtype | storage | ms | copy ms | x copy | ratio / f32's |");
    println!("|---|---|---|---|---|---:|---:|---:|---:|");
    for (path, packed) in paths {
        let gpu = &open(packed)?;
        let timer = GpuTimer::new(gpu);
        for shape in shapes {
            let numel = shape[0] * shape[1];
            for op in ["layer_norm", "rms_norm"] {
                let mut f32_ratio = 0.0;
                for dtype in [DType::F32, DType::F16, DType::BF16] {
                    let x = input(gpu, &shape, dtype, 7)?;
                    let stats = [shape[0], 1];
                    let (cx, cy) = words(gpu, numel * dtype.size())?;
                    let w = Tensor::from_slice(
                        gpu,
                        &common::pseudo_random(shape[1], 8, 1.0, 0.3),
                        &[shape[1]],
                    )?;
                    let y = Tensor::empty_dtype(gpu, &shape, dtype)?;
                    let rstd = Tensor::empty(gpu, &stats)?;
                    let mean = Tensor::empty(gpu, &stats)?;
                    let ln = LayerNorm::new(&[shape[1]]).weight(w.clone());
                    let rms = RmsNorm::new(&[shape[1]]).weight(w);
                    let (ln_out, rms_out) = (
                        LayerNormOutput {
                            y: y.clone(),
                            mean,
                            rstd: rstd.clone(),
                        },
                        RmsNormOutput { y, rstd },
                    );
                    let plan = match op {
                        "layer_norm" => ln.plan_dtype(gpu, &shape, dtype)?,
                        _ => rms.plan_dtype(gpu, &shape, dtype)?,
                    };
                    let ms = timer.median_ms(samples, iters, &mut |e| match op {
                        "layer_norm" => ln.encode(gpu, e, &x, &ln_out),
                        _ => rms.encode(gpu, e, &x, &rms_out),
                    })?;
                    let base = common::baseline::Baselines::new(gpu);
                    let copy = timer.median_ms(samples, iters, &mut |e| {
                        base.copy(e, &cx, &cy);
                        Ok(())
                    })?;
                    let ratio = ms / copy;
                    if dtype == DType::F32 {
                        f32_ratio = ratio;
                    }
                    println!(
                        "| {path} | {op} | {shape:?} | {dtype} | {} | {ms:.3} | {copy:.3} | {ratio:.2} | {:.2} |",
                        plan.storage,
                        ratio / f32_ratio
                    );
                }
            }
        }
        // forward_add: fused vs a copy of its bytes, vs plain LayerNorm's ratio, vs add + LayerNorm.
        println!();
        println!("| path | shape | dtype | fused ms | copy(4 x bytes) ms | x copy | LN x copy | add + LN ms | speedup |");
        println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
        let adder = Adder::new(gpu);
        let base = common::baseline::Baselines::new(gpu);
        for shape in shapes {
            let numel = shape[0] * shape[1];
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let x = input(gpu, &shape, dtype, 7)?;
                let r = input(gpu, &shape, dtype, 11)?;
                let stats = [shape[0], 1];
                let ln = LayerNorm::new(&[shape[1]]);
                let out = LayerNormAddOutput {
                    sum: Tensor::empty_dtype(gpu, &shape, dtype)?,
                    y: Tensor::empty_dtype(gpu, &shape, dtype)?,
                    mean: Tensor::empty(gpu, &stats)?,
                    rstd: Tensor::empty(gpu, &stats)?,
                };
                let plain = LayerNormOutput {
                    y: out.y.clone(),
                    mean: out.mean.clone(),
                    rstd: out.rstd.clone(),
                };
                let fused = timer
                    .median_ms(samples, iters, &mut |e| ln.encode_add(gpu, e, &x, &r, &out))?;
                let unfused = timer.median_ms(samples, iters, &mut |e| {
                    adder.record(gpu, e, &x, &r, &out.sum);
                    ln.encode(gpu, e, &out.sum, &plain)
                })?;
                let ln_ms =
                    timer.median_ms(samples, iters, &mut |e| ln.encode(gpu, e, &x, &plain))?;
                let (c2x, c2y) = words(gpu, 2 * numel * dtype.size())?;
                let copy2 = timer.median_ms(samples, iters, &mut |e| {
                    base.copy(e, &c2x, &c2y);
                    Ok(())
                })?;
                let (cx, cy) = words(gpu, numel * dtype.size())?;
                let copy1 = timer.median_ms(samples, iters, &mut |e| {
                    base.copy(e, &cx, &cy);
                    Ok(())
                })?;
                println!(
                    "| {path} | {shape:?} | {dtype} | {fused:.3} | {copy2:.3} | {:.2} | {:.2} | {unfused:.3} | {:.2} |",
                    fused / copy2,
                    ln_ms / copy1,
                    unfused / fused
                );
            }
        }
        println!();
    }
    Ok(())
}
