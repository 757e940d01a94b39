//! Picks an adapter (honours WGPU_BACKEND), normalizes a transformer-sized tensor and an
//! image-like batch, and checks both against the f64 CPU reference.
//!
//! cargo run --release --example demo

use std::time::Instant;

use fused_norm::bench::pseudo_random;
use fused_norm::{reference, BatchNorm, Gpu, LayerNorm, Layout, Tensor};

fn max_abs_err(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max)
}

fn median_ms(mut f: impl FnMut()) -> f64 {
    f(); // warm-up: pipeline creation
    let mut t: Vec<f64> = (0..5)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[2]
}

fn main() -> Result<(), fused_norm::NormError> {
    let gpu = Gpu::new()?;
    println!("adapter: {}", gpu.describe());

    // LayerNorm over the hidden dim of an [8, 512, 768] activation, with weight and bias.
    let (b, t, d) = (8, 512, 768);
    let x = pseudo_random(b * t * d, 1, 0.3, 2.0);
    let w = pseudo_random(d, 2, 1.0, 0.2);
    let bias = pseudo_random(d, 3, 0.0, 0.1);
    let xt = Tensor::from_slice(&gpu, &x, &[b, t, d])?;
    let ln = LayerNorm::new(&[d])
        .eps(1e-5)
        .weight(Tensor::from_slice(&gpu, &w, &[d])?)
        .bias(Tensor::from_slice(&gpu, &bias, &[d])?);
    println!("layer_norm [{b}, {t}, {d}]: {}", ln.plan(&gpu, &[b, t, d])?);
    let mut out = None;
    let ms = median_ms(|| out = Some(ln.forward(&gpu, &xt).expect("layer_norm")));
    let out = out.expect("ran");
    let r = reference::layer_norm(&x, d, Some(&w), Some(&bias), 1e-5);
    let err_y = max_abs_err(&out.y.to_vec(&gpu)?, &r.y);
    let err_m = max_abs_err(&out.mean.to_vec(&gpu)?, &r.mean);
    let err_r = max_abs_err(&out.rstd.to_vec(&gpu)?, &r.rstd);
    println!(
        "  max |error| vs f64 reference: y {err_y:.2e}, mean {err_m:.2e}, rstd {err_r:.2e}; \
         {ms:.2} ms per call (submit + wait)"
    );

    // BatchNorm training, then eval, on a [32, 64, 56, 56] NCHW batch.
    let shape = [32, 64, 56, 56];
    let (c, s) = (64, 56 * 56);
    let x = pseudo_random(shape.iter().product(), 4, 1.5, 1.0);
    let xt = Tensor::from_slice(&gpu, &x, &shape)?;
    let wt = pseudo_random(c, 5, 1.0, 0.2);
    let bt = pseudo_random(c, 6, 0.0, 0.1);
    let mut bn = BatchNorm::new(&gpu, c)?
        .weight(Tensor::from_slice(&gpu, &wt, &[c])?)
        .bias(Tensor::from_slice(&gpu, &bt, &[c])?);
    let start = Instant::now();
    let train = bn.forward_train(&gpu, &xt, Layout::ChannelsFirst)?;
    let train_ms = start.elapsed().as_secs_f64() * 1e3;
    let st = reference::batch_stats(&x, c, s);
    let want = reference::batch_norm_apply(&x, c, s, &st.mean, &st.var, Some(&wt), Some(&bt), 1e-5);
    let err_train = max_abs_err(&train.y.to_vec(&gpu)?, &want);
    let mut rm = vec![0.0; c];
    let mut rv = vec![1.0; c];
    reference::update_running(&mut rm, &st.mean, 0.1);
    reference::update_running(&mut rv, &st.var_unbiased, 0.1);
    let err_rm = max_abs_err(&bn.running_mean().to_vec(&gpu)?, &rm);
    let err_rv = max_abs_err(&bn.running_var().to_vec(&gpu)?, &rv);
    let start = Instant::now();
    let y_eval = bn.forward_eval(&gpu, &xt, Layout::ChannelsFirst)?;
    let eval_ms = start.elapsed().as_secs_f64() * 1e3;
    let want_eval = reference::batch_norm_apply(&x, c, s, &rm, &rv, Some(&wt), Some(&bt), 1e-5);
    let err_eval = max_abs_err(&y_eval.to_vec(&gpu)?, &want_eval);
    println!("batch_norm {shape:?} NCHW:");
    println!(
        "  train: max |error| y {err_train:.2e}, running_mean {err_rm:.2e}, running_var \
         {err_rv:.2e}; {train_ms:.2} ms (first call, includes pipeline creation)"
    );
    println!("  eval:  max |error| y {err_eval:.2e}; {eval_ms:.2} ms (first call)");
    let worst = [err_y, err_m, err_r, err_train, err_eval]
        .into_iter()
        .fold(0.0, f64::max);
    println!(
        "max error {worst:.2e} ({})",
        if worst < 1e-4 {
            "ok, < 1e-4"
        } else {
            "TOO LARGE"
        }
    );
    if worst >= 1e-4 {
        std::process::exit(1);
    }
    Ok(())
}
