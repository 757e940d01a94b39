//! Backward timings, each with dx, dweight and dbias (RMSNorm: no dbias): LayerNorm and RMSNorm
//! (64 rows at D = 768, 1024, 4096, 65536), BatchNorm training and inference, GroupNorm (32
//! groups) and InstanceNorm at [32, 64, 56, 56] in both layouts. Bytes = x and dy read once, dx
//! written once; the copy moves the same bytes (a vec4 copy of 1.5x numel values) and the naive
//! multi-pass backward (per-statistic sums, dx, parameter sums: three dispatches each reading x
//! and dy) runs the same shape, on the same adapter, in the same run. The naive dx is checked
//! against the fused one before timing.
//!
//! cargo run --release --example bench_backward -- [--filter TEXT]

#[path = "../benches/common/mod.rs"]
mod common;

use std::sync::Arc;

use common::baseline::{NaiveBwdScratch, NaiveBwdShape};
use common::pseudo_random;
use fused_norm::{
    BatchNorm, Gpu, Gradients, GroupNorm, LayerNorm, Layout, NormError, RmsNorm, Tensor,
};

/// A row of the table: the norm, its layout, and how its statistics run.
struct Case {
    name: &'static str,
    shape: Vec<usize>,
    layout: Layout,
}

fn main() -> Result<(), NormError> {
    let gpu = common::gpu()?;
    let base = Arc::new(common::baseline::Baselines::new(&gpu));
    let timer = common::GpuTimer::new(&gpu);
    let (samples, iters) = (7, 3);
    println!("adapter: {}", gpu.describe());
    println!(
        "timer: {} (median of {samples} submits x {iters} repetitions, copy, fused and naive \
         sampled in turn)",
        timer.kind().name()
    );
    println!();
    println!("| backward | shape | layout | MB moved | ms | GB/s | x copy | naive ms | speedup |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    let (cf, cl) = (Layout::ChannelsFirst, Layout::ChannelsLast);
    let mut cases = Vec::new();
    for d in [768, 1024, 4096, 65536] {
        for name in ["layer_norm", "rms_norm"] {
            cases.push(Case {
                name,
                shape: vec![64, d],
                layout: cl,
            });
        }
    }
    for name in [
        "batch_norm train",
        "batch_norm eval",
        "group_norm(32)",
        "instance_norm",
    ] {
        for (layout, shape) in [(cf, [32, 64, 56, 56]), (cl, [32, 56, 56, 64])] {
            cases.push(Case {
                name,
                shape: shape.to_vec(),
                layout,
            });
        }
    }
    // `-- --filter TEXT`: only the rows whose backward name or D contains TEXT.
    let args: Vec<String> = std::env::args().collect();
    let filter = args
        .iter()
        .position(|a| a == "--filter")
        .and_then(|i| args.get(i + 1));
    for case in cases {
        let key = format!("{} {:?}", case.name, case.shape);
        if filter.is_some_and(|f| !key.contains(f.as_str())) {
            continue;
        }
        row(&gpu, &base, &timer, &case, (samples, iters))?;
    }
    Ok(())
}

fn row(
    gpu: &Gpu,
    base: &Arc<common::baseline::Baselines>,
    timer: &common::GpuTimer,
    case: &Case,
    (samples, iters): (usize, usize),
) -> Result<(), NormError> {
    let (name, shape, layout) = (case.name, &case.shape, case.layout);
    let numel: usize = shape.iter().product();
    let rows_family = name == "layer_norm" || name == "rms_norm";
    let c = match (rows_family, layout) {
        (false, Layout::ChannelsFirst) => shape[1],
        _ => shape[shape.len() - 1],
    };
    let s = numel / shape[0] / c;
    let x = Tensor::from_slice(gpu, &pseudo_random(numel, 7, 0.25, 0.87), shape)?;
    let dy = Tensor::from_slice(gpu, &pseudo_random(numel, 8, 0.0, 1.0), shape)?;
    let w = Tensor::from_slice(gpu, &pseudo_random(c, 9, 1.0, 0.3), &[c])?;
    let b = Tensor::from_slice(gpu, &pseudo_random(c, 10, 0.0, 0.3), &[c])?;
    let g = Gradients {
        dx: Tensor::empty(gpu, shape)?,
        dweight: Some(Tensor::empty(gpu, &[c])?),
        dbias: (name != "rms_norm")
            .then(|| Tensor::empty(gpu, &[c]))
            .transpose()?,
    };
    let (gc, xc, dyc, gg) = (gpu.clone(), x.clone(), dy.clone(), g.clone());
    // The fused backward, and the statistics the naive one goes through.
    let (mut fused, mean, rstd, naive_shape, eval): (common::Work, Tensor, Tensor, _, bool) =
        match name {
            "layer_norm" => {
                let ln = LayerNorm::new(&[c]).weight(w.clone()).bias(b);
                let out = ln.forward(gpu, &x)?;
                let (m, r) = (out.mean.clone(), out.rstd.clone());
                let f: common::Work = Box::new(move |e| {
                    ln.encode_backward(&gc, e, &xc, &dyc, &out.mean, &out.rstd, &gg)
                });
                (f, m, r, NaiveBwdShape::Layer { d: c }, false)
            }
            "rms_norm" => {
                let rms = RmsNorm::new(&[c]).weight(w.clone());
                let out = rms.forward(gpu, &x)?;
                let r = out.rstd.clone();
                let f: common::Work =
                    Box::new(move |e| rms.encode_backward(&gc, e, &xc, &dyc, &out.rstd, &gg));
                let m = Tensor::empty(gpu, &[numel / c])?;
                (f, m, r, NaiveBwdShape::Rms { d: c }, false)
            }
            "batch_norm train" | "batch_norm eval" => {
                let mut bn = BatchNorm::new(gpu, c)?.weight(w.clone()).bias(b);
                let bs = if layout == Layout::ChannelsFirst {
                    s
                } else {
                    1
                };
                let shape = NaiveBwdShape::Batch { c, s: bs };
                if name.ends_with("train") {
                    let t = bn.forward_train(gpu, &x, layout)?;
                    let (m, r) = (t.mean.clone(), t.invstd.clone());
                    let f: common::Work = Box::new(move |e| {
                        bn.encode_backward(&gc, e, &xc, &dyc, &t.mean, &t.invstd, layout, &gg)
                    });
                    (f, m, r, shape, false)
                } else {
                    let rm = pseudo_random(c, 11, 0.25, 0.1);
                    let rv = pseudo_random(c, 12, 0.8, 0.1);
                    let inv: Vec<f32> = rv.iter().map(|v| 1.0 / (v + 1e-5).sqrt()).collect();
                    let t = |v: &[f32]| Tensor::from_slice(gpu, v, &[c]);
                    bn = bn.running_stats(t(&rm)?, t(&rv)?);
                    let f: common::Work =
                        Box::new(move |e| bn.encode_backward_eval(&gc, e, &xc, &dyc, layout, &gg));
                    (f, t(&rm)?, t(&inv)?, shape, true)
                }
            }
            _ => {
                let groups = if name.starts_with("group") { 32 } else { c };
                let gn = GroupNorm::new(groups, c)?.weight(w.clone()).bias(b);
                let out = gn.forward(gpu, &x, layout)?;
                let (m, r) = (out.mean.clone(), out.rstd.clone());
                let f: common::Work = Box::new(move |e| {
                    gn.encode_backward(&gc, e, &xc, &dyc, &out.mean, &out.rstd, layout, &gg)
                });
                let shape = match layout {
                    Layout::ChannelsFirst => NaiveBwdShape::GroupCf { c, s, groups },
                    Layout::ChannelsLast => NaiveBwdShape::GroupCl { c, s, groups },
                };
                (f, m, r, shape, false)
            }
        };
    let naive_dx = Tensor::empty(gpu, shape)?;
    let scratch = NaiveBwdScratch::new(gpu, mean.numel(), c)?;
    let (bs, xc, dyc, ndx) = (base.clone(), x.clone(), dy.clone(), naive_dx.clone());
    let mut naive: common::Work = Box::new(move |e| {
        bs.backward(
            e,
            naive_shape,
            &xc,
            &dyc,
            &mean,
            &rstd,
            Some(&w),
            &ndx,
            &scratch,
            eval,
        );
        Ok(())
    });
    // The naive backward computes the same dx (a check of the baseline, not of the kernels).
    let mut enc = gpu.encoder();
    fused(&mut enc)?;
    naive(&mut enc)?;
    gpu.submit_wait(enc)?;
    let (a, n) = (g.dx.to_vec(gpu)?, naive_dx.to_vec(gpu)?);
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    let err = a
        .iter()
        .zip(&n)
        .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    assert!(
        err <= 1e-3 * scale,
        "{name} {shape:?}: naive dx differs by {err} (max |dx| {scale})"
    );
    // The same bytes: 3 * numel values moved = a copy of 1.5 * numel values.
    let n15 = numel * 3 / 2;
    let (src, dst) = (Tensor::empty(gpu, &[n15])?, Tensor::empty(gpu, &[n15])?);
    let bs = base.clone();
    let mut copy: common::Work = Box::new(move |e| {
        bs.copy(e, &src, &dst);
        Ok(())
    });
    let works: &mut [&mut common::Work] = &mut [&mut copy, &mut fused, &mut naive];
    let t = common::interleaved_medians(timer, samples, iters, works)?;
    let (copy_ms, ms, naive_ms) = (t[0], t[1], t[2]);
    let bytes = 3.0 * numel as f64 * 4.0;
    let lay = match layout {
        _ if rows_family => "rows",
        Layout::ChannelsFirst => "NCHW",
        Layout::ChannelsLast => "NHWC",
    };
    println!(
        "| {name} | {shape:?} | {lay} | {:.1} | {ms:.3} | {:.1} | {:.2} | {naive_ms:.3} | {:.2} |",
        bytes / 1e6,
        bytes / (ms * 1e6),
        ms / copy_ms,
        naive_ms / ms
    );
    Ok(())
}
