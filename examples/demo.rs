//! Picks an adapter (honours WGPU_BACKEND), runs every norm on a transformer-sized activation or
//! an image batch, and checks each against the f64 reference; plus one training step (LayerNorm
//! forward and backward) against the f64 backward.
//!
//! cargo run --release --example demo

#[path = "../benches/common/mod.rs"]
mod common;

use common::pseudo_random;
use fused_norm::{
    reference, BatchNorm, GroupNorm, InstanceNorm, LayerNorm, Layout, NormError, RmsNorm, Tensor,
};

fn max_abs_err(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max)
}

fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs() / w.abs().max(1.0))
        .fold(0.0, f64::max)
}

/// Prints one line per checked output and returns the largest error.
fn report(name: &str, plan: String, checks: &[(&str, f64)]) -> f64 {
    println!("{name}: {plan}");
    let errs: Vec<String> = checks
        .iter()
        .map(|(what, e)| format!("{what} {e:.2e}"))
        .collect();
    println!("  max |error| vs f64 reference: {}", errs.join(", "));
    checks.iter().map(|c| c.1).fold(0.0, f64::max)
}

fn main() -> Result<(), NormError> {
    let gpu = fused_norm::Gpu::new()?;
    println!("adapter: {}", gpu.describe());
    let mut worst = 0.0f64;

    // LayerNorm and RMSNorm over the hidden dim of an [8, 512, 768] activation.
    let (b, t, d) = (8, 512, 768);
    let x = pseudo_random(b * t * d, 1, 0.3, 2.0);
    let w = pseudo_random(d, 2, 1.0, 0.2);
    let bias = pseudo_random(d, 3, 0.0, 0.1);
    let xt = Tensor::from_slice(&gpu, &x, &[b, t, d])?;
    let (wt, bt) = (
        Tensor::from_slice(&gpu, &w, &[d])?,
        Tensor::from_slice(&gpu, &bias, &[d])?,
    );
    let ln = LayerNorm::new(&[d]).weight(wt.clone()).bias(bt);
    let out = ln.forward(&gpu, &xt)?;
    let r = reference::layer_norm(&x, d, Some(&w), Some(&bias), 1e-5);
    worst = worst.max(report(
        &format!("layer_norm [{b}, {t}, {d}]"),
        ln.plan(&gpu, &[b, t, d])?.to_string(),
        &[
            ("y", max_abs_err(&out.y.to_vec(&gpu)?, &r.y)),
            ("mean", max_abs_err(&out.mean.to_vec(&gpu)?, &r.mean)),
            ("rstd", max_abs_err(&out.rstd.to_vec(&gpu)?, &r.rstd)),
        ],
    ));
    // One training step through it: the backward from the saved statistics, against the f64
    // backward at those statistics (dweight and dbias sum 4096 rows: relative errors).
    let dy = pseudo_random(b * t * d, 4, 0.0, 1.0);
    let dyt = Tensor::from_slice(&gpu, &dy, &[b, t, d])?;
    let g = ln.backward(&gpu, &xt, &dyt, &out.mean, &out.rstd)?;
    let f64s = |t: &Tensor| -> Result<Vec<f64>, NormError> {
        Ok(t.to_vec(&gpu)?.iter().map(|&v| f64::from(v)).collect())
    };
    let (mean, rstd) = (f64s(&out.mean)?, f64s(&out.rstd)?);
    let rg = reference::layer_norm_backward(&x, &dy, d, Some(&w), &mean, &rstd);
    let grad = |t: &Option<Tensor>| t.as_ref().expect("the norm has it").to_vec(&gpu);
    worst = worst.max(report(
        &format!("layer_norm backward [{b}, {t}, {d}]"),
        "dx per row, dweight/dbias in two fixed-order stages".to_string(),
        &[
            ("dx", max_abs_err(&g.dx.to_vec(&gpu)?, &rg.dx)),
            (
                "dweight (rel)",
                max_rel_err(&grad(&g.dweight)?, &rg.dweight),
            ),
            ("dbias (rel)", max_rel_err(&grad(&g.dbias)?, &rg.dbias)),
        ],
    ));
    let rms = RmsNorm::new(&[d]).eps(1e-6).weight(wt);
    let out = rms.forward(&gpu, &xt)?;
    let (ry, rs) = reference::rms_norm(&x, d, Some(&w), 1e-6);
    worst = worst.max(report(
        &format!("rms_norm [{b}, {t}, {d}]"),
        rms.plan(&gpu, &[b, t, d])?.to_string(),
        &[
            ("y", max_abs_err(&out.y.to_vec(&gpu)?, &ry)),
            ("rstd", max_abs_err(&out.rstd.to_vec(&gpu)?, &rs.rstd)),
        ],
    ));

    // GroupNorm (32 groups) and InstanceNorm on an image batch, in both layouts (the same
    // values read as NCHW and as NHWC).
    let (n, c, h, wd) = (8, 64, 32, 32);
    let s = h * wd;
    let img = pseudo_random(n * c * s, 4, 1.5, 1.0);
    let g = pseudo_random(c, 5, 1.0, 0.2);
    let be = pseudo_random(c, 6, 0.0, 0.1);
    let (gt, bet) = (
        Tensor::from_slice(&gpu, &g, &[c])?,
        Tensor::from_slice(&gpu, &be, &[c])?,
    );
    for (layout, shape) in [
        (Layout::ChannelsFirst, [n, c, h, wd]),
        (Layout::ChannelsLast, [n, h, wd, c]),
    ] {
        let xt = Tensor::from_slice(&gpu, &img, &shape)?;
        let cl = layout == Layout::ChannelsLast;
        let gn = GroupNorm::new(32, c)?.weight(gt.clone()).bias(bet.clone());
        let out = gn.forward(&gpu, &xt, layout)?;
        let (ry, st) = reference::group_norm(&img, c, s, 32, cl, Some(&g), Some(&be), 1e-5);
        worst = worst.max(report(
            &format!("group_norm {shape:?} {layout:?}, 32 groups"),
            gn.plan(&gpu, &shape, layout)?.to_string(),
            &[
                ("y", max_abs_err(&out.y.to_vec(&gpu)?, &ry)),
                ("mean", max_abs_err(&out.mean.to_vec(&gpu)?, &st.mean)),
                ("rstd", max_abs_err(&out.rstd.to_vec(&gpu)?, &st.rstd)),
            ],
        ));
        let inn = InstanceNorm::new(c);
        let out = inn.forward(&gpu, &xt, layout)?;
        let (ry, st) = reference::group_norm(&img, c, s, c, cl, None, None, 1e-5);
        worst = worst.max(report(
            &format!("instance_norm {shape:?} {layout:?}"),
            inn.plan(&gpu, &shape, layout)?.to_string(),
            &[
                ("y", max_abs_err(&out.y.to_vec(&gpu)?, &ry)),
                ("mean", max_abs_err(&out.mean.to_vec(&gpu)?, &st.mean)),
            ],
        ));
    }

    // BatchNorm training, then eval, on a [32, 64, 56, 56] NCHW batch.
    let shape = [32, 64, 56, 56];
    let (c, s) = (64, 56 * 56);
    let x = pseudo_random(shape.iter().product(), 4, 1.5, 1.0);
    let xt = Tensor::from_slice(&gpu, &x, &shape)?;
    let (wb, bb) = (pseudo_random(c, 5, 1.0, 0.2), pseudo_random(c, 6, 0.0, 0.1));
    let mut bn = BatchNorm::new(&gpu, c)?
        .weight(Tensor::from_slice(&gpu, &wb, &[c])?)
        .bias(Tensor::from_slice(&gpu, &bb, &[c])?);
    let plan = bn.plan(&gpu, &shape, Layout::ChannelsFirst)?.to_string();
    let train = bn.forward_train(&gpu, &xt, Layout::ChannelsFirst)?;
    let st = reference::batch_stats(&x, c, s);
    let want = reference::batch_norm_apply(&x, c, s, &st.mean, &st.var, Some(&wb), Some(&bb), 1e-5);
    let (mut rm, mut rv) = (vec![0.0; c], vec![1.0; c]);
    reference::update_running(&mut rm, &st.mean, 0.1);
    reference::update_running(&mut rv, &st.var_unbiased, 0.1);
    let y_eval = bn.forward_eval(&gpu, &xt, Layout::ChannelsFirst)?;
    let want_eval = reference::batch_norm_apply(&x, c, s, &rm, &rv, Some(&wb), Some(&bb), 1e-5);
    worst = worst.max(report(
        &format!("batch_norm {shape:?} NCHW"),
        plan,
        &[
            ("train y", max_abs_err(&train.y.to_vec(&gpu)?, &want)),
            (
                "running_mean",
                max_abs_err(&bn.running_mean().to_vec(&gpu)?, &rm),
            ),
            (
                "running_var",
                max_abs_err(&bn.running_var().to_vec(&gpu)?, &rv),
            ),
            ("eval y", max_abs_err(&y_eval.to_vec(&gpu)?, &want_eval)),
        ],
    ));

    let ok = worst < 1e-4;
    println!(
        "max error {worst:.2e} ({})",
        if ok { "ok, < 1e-4" } else { "TOO LARGE" }
    );
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
