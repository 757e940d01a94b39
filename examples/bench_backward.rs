//! Backward timings: LayerNorm and RMSNorm (64 rows at D = 768, 1024, 4096, 65536, weight and
//! bias), GroupNorm (32 groups) and InstanceNorm at [32, 64, 56, 56] channels-first, each with
//! dx, dweight and dbias. Bytes = x and dy read once, dx written once; the copy moves the same
//! bytes (a vec4 copy of 1.5x numel values) on the same adapter, in the same run. No naive
//! multi-pass backward baseline yet.
//!
//! cargo run --release --example bench_backward

#[path = "../benches/common/mod.rs"]
mod common;

use std::sync::Arc;

use common::pseudo_random;
use fused_norm::{Gradients, GroupNorm, LayerNorm, Layout, NormError, RmsNorm, Tensor};

fn main() -> Result<(), NormError> {
    let gpu = common::gpu()?;
    let base = Arc::new(common::baseline::Baselines::new(&gpu));
    let timer = common::GpuTimer::new(&gpu);
    let (samples, iters) = (7, 3);
    println!("adapter: {}", gpu.describe());
    println!(
        "timer: {} (median of {samples} submits x {iters} repetitions)",
        timer.kind().name()
    );
    println!();
    println!("| backward | shape | MB moved | ms | GB/s | x copy |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut cases: Vec<(&str, Vec<usize>)> = Vec::new();
    for d in [768, 1024, 4096, 65536] {
        cases.push(("layer_norm", vec![64, d]));
        cases.push(("rms_norm", vec![64, d]));
    }
    cases.push(("group_norm(32) NCHW", vec![32, 64, 56, 56]));
    cases.push(("instance_norm NCHW", vec![32, 64, 56, 56]));
    for (name, shape) in cases {
        let numel: usize = shape.iter().product();
        let x = Tensor::from_slice(&gpu, &pseudo_random(numel, 7, 0.25, 0.87), &shape)?;
        let dy = Tensor::from_slice(&gpu, &pseudo_random(numel, 8, 0.0, 1.0), &shape)?;
        let c = if name.contains("norm NCHW") || name.starts_with("group") {
            shape[1]
        } else {
            shape[shape.len() - 1]
        };
        let w = Tensor::from_slice(&gpu, &pseudo_random(c, 9, 1.0, 0.3), &[c])?;
        let b = Tensor::from_slice(&gpu, &pseudo_random(c, 10, 0.0, 0.3), &[c])?;
        let g = Gradients {
            dx: Tensor::empty(&gpu, &shape)?,
            dweight: Some(Tensor::empty(&gpu, &[c])?),
            dbias: (!name.starts_with("rms"))
                .then(|| Tensor::empty(&gpu, &[c]))
                .transpose()?,
        };
        let (gc, xc, dyc) = (gpu.clone(), x.clone(), dy.clone());
        let mut fused: common::Work = match name {
            "layer_norm" => {
                let ln = LayerNorm::new(&[c]).weight(w).bias(b);
                let out = ln.forward(&gpu, &x)?;
                Box::new(move |e| ln.encode_backward(&gc, e, &xc, &dyc, &out.mean, &out.rstd, &g))
            }
            "rms_norm" => {
                let rms = RmsNorm::new(&[c]).weight(w);
                let out = rms.forward(&gpu, &x)?;
                Box::new(move |e| rms.encode_backward(&gc, e, &xc, &dyc, &out.rstd, &g))
            }
            _ => {
                let groups = if name.starts_with("group") { 32 } else { c };
                let gn = GroupNorm::new(groups, c)?.weight(w).bias(b);
                let cf = Layout::ChannelsFirst;
                let out = gn.forward(&gpu, &x, cf)?;
                Box::new(move |e| {
                    gn.encode_backward(&gc, e, &xc, &dyc, &out.mean, &out.rstd, cf, &g)
                })
            }
        };
        // The same bytes: 3 * numel values moved = a copy of 1.5 * numel values.
        let n15 = numel * 3 / 2;
        let (src, dst) = (Tensor::empty(&gpu, &[n15])?, Tensor::empty(&gpu, &[n15])?);
        let bs = base.clone();
        let mut copy: common::Work = Box::new(move |e| {
            bs.copy(e, &src, &dst);
            Ok(())
        });
        let copy_ms = timer.median_ms(samples, iters, &mut copy)?;
        let ms = timer.median_ms(samples, iters, &mut fused)?;
        let bytes = 3.0 * numel as f64 * 4.0;
        println!(
            "| {name} | {shape:?} | {:.1} | {ms:.3} | {:.1} | {:.2} |",
            bytes / 1e6,
            bytes / (ms * 1e6),
            ms / copy_ms
        );
    }
    Ok(())
}
