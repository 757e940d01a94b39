//! BatchNorm forward (training and inference) against the f64 reference.

mod common;

use common::{assert_bits_eq, assert_close, gpu, gpu_small_bindings, gpus, Rng};
use fused_norm::{reference, BatchNorm, Gpu, Layout, Tensor};

/// `[n, c, s]` view of a shape for the CPU reference.
fn cs(shape: &[usize], layout: Layout) -> (usize, usize) {
    match layout {
        Layout::ChannelsFirst => (shape[1], shape[2..].iter().product()),
        Layout::ChannelsLast => (shape[shape.len() - 1], 1),
    }
}

/// A shape of the given rank and layout with `c` channels and `count` values per channel.
fn shape_for(rank: usize, layout: Layout, c: usize, count: usize) -> Vec<usize> {
    // Spread count over N and the spatial dims: N takes a small factor, the rest goes last.
    let n = [4usize, 3, 2]
        .into_iter()
        .find(|f| count.is_multiple_of(*f) && count > *f)
        .unwrap_or(1);
    let n = if rank == 2 { count } else { n };
    let rest = count / n;
    let mut spatial = vec![1; rank - 2];
    if let Some(last) = spatial.last_mut() {
        *last = rest;
    }
    match layout {
        Layout::ChannelsFirst => [vec![n, c], spatial].concat(),
        Layout::ChannelsLast => [vec![n], spatial, vec![c]].concat(),
    }
}

/// Channel means alternating around +-offset, std 1.
fn data(rng: &mut Rng, shape: &[usize], layout: Layout, offset: f64) -> Vec<f32> {
    let (c, s) = cs(shape, layout);
    let n: usize = shape.iter().product();
    (0..n)
        .map(|i| {
            let ch = (i / s) % c;
            let m = if ch % 2 == 0 { offset } else { -offset } + ch as f64 * 0.01;
            (m + rng.normal()) as f32
        })
        .collect()
}

struct Opts {
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    eps: f32,
}

fn module(gpu: &Gpu, c: usize, o: &Opts) -> BatchNorm {
    let mut bn = BatchNorm::new(gpu, c).unwrap().eps(o.eps);
    if let Some(w) = &o.weight {
        bn = bn.weight(Tensor::from_slice(gpu, w, &[c]).unwrap());
    }
    if let Some(b) = &o.bias {
        bn = bn.bias(Tensor::from_slice(gpu, b, &[c]).unwrap());
    }
    bn
}

/// Random weight and bias for `c` channels, PyTorch's default eps.
fn random_affine(rng: &mut Rng, c: usize) -> Opts {
    Opts {
        weight: Some(rng.normals(c, 1.0, 0.5)),
        bias: Some(rng.normals(c, 0.0, 1.0)),
        eps: 1e-5,
    }
}

/// One training step on every reduction path: y, batch mean/invstd and running statistics.
fn check_train(x: &[f32], shape: &[usize], layout: Layout, o: &Opts) {
    check_train_on(&gpus(), x, shape, layout, o);
}

/// One training step on the given contexts: y, batch mean/invstd, running statistics.
fn check_train_on(on: &[(&str, &Gpu)], x: &[f32], shape: &[usize], layout: Layout, o: &Opts) {
    let (c, s) = cs(shape, layout);
    let st = reference::batch_stats(x, c, s);
    let want_y = reference::batch_norm_apply(
        x,
        c,
        s,
        &st.mean,
        &st.var,
        o.weight.as_deref(),
        o.bias.as_deref(),
        f64::from(o.eps),
    );
    let want_invstd: Vec<f64> = st
        .var
        .iter()
        .map(|v| 1.0 / (v + f64::from(o.eps)).sqrt())
        .collect();
    let mut rm = vec![0.0; c];
    let mut rv = vec![1.0; c];
    reference::update_running(&mut rm, &st.mean, 0.1);
    reference::update_running(&mut rv, &st.var_unbiased, 0.1);
    for &(path, g) in on {
        let what = format!("{shape:?} {layout:?} {path}");
        let xt = Tensor::from_slice(g, x, shape).unwrap();
        let mut bn = module(g, c, o);
        let out = bn.forward_train(g, &xt, layout).unwrap();
        assert_close(&format!("{what} y"), &out.y.to_vec(g).unwrap(), &want_y);
        assert_close(
            &format!("{what} mean"),
            &out.mean.to_vec(g).unwrap(),
            &st.mean,
        );
        assert_close(
            &format!("{what} invstd"),
            &out.invstd.to_vec(g).unwrap(),
            &want_invstd,
        );
        assert_close(
            &format!("{what} running_mean"),
            &bn.running_mean().to_vec(g).unwrap(),
            &rm,
        );
        assert_close(
            &format!("{what} running_var"),
            &bn.running_var().to_vec(g).unwrap(),
            &rv,
        );
        assert_eq!(bn.num_batches_tracked(), 1);
    }
}

const LAYOUTS: [(usize, Layout); 7] = [
    (2, Layout::ChannelsFirst),
    (3, Layout::ChannelsFirst),
    (4, Layout::ChannelsFirst),
    (5, Layout::ChannelsFirst),
    (2, Layout::ChannelsLast),
    (3, Layout::ChannelsLast),
    (4, Layout::ChannelsLast),
];

#[test]
fn training_on_every_layout_and_size() {
    let mut rng = Rng::new(21);
    for (rank, layout) in LAYOUTS {
        for c in [1usize, 3, 1000] {
            for count in [2usize, 3, 4097, 262144] {
                if c * count > 4_200_000 {
                    continue;
                }
                let shape = shape_for(rank, layout, c, count);
                let x = data(&mut rng, &shape, layout, 0.5);
                let o = random_affine(&mut rng, c);
                check_train(&x, &shape, layout, &o);
            }
        }
    }
}

#[test]
fn channel_means_of_1e4_keep_full_precision() {
    let mut rng = Rng::new(22);
    for (rank, layout) in [
        (4, Layout::ChannelsFirst),
        (2, Layout::ChannelsFirst),
        (4, Layout::ChannelsLast),
    ] {
        for (c, count) in [(3usize, 4097usize), (8, 262144), (64, 3)] {
            let shape = shape_for(rank, layout, c, count);
            let x = data(&mut rng, &shape, layout, 1e4);
            check_train(
                &x,
                &shape,
                layout,
                &Opts {
                    weight: None,
                    bias: None,
                    eps: 1e-5,
                },
            );
        }
    }
}

#[test]
fn weight_and_bias_are_independent() {
    let mut rng = Rng::new(23);
    let c = 5;
    let w = rng.normals(c, 1.0, 0.5);
    let b = rng.normals(c, 0.0, 1.0);
    for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
        let shape = shape_for(4, layout, c, 300);
        let x = data(&mut rng, &shape, layout, 2.0);
        for (wo, bo) in [
            (None, None),
            (Some(w.clone()), None),
            (None, Some(b.clone())),
            (Some(w.clone()), Some(b.clone())),
        ] {
            check_train(
                &x,
                &shape,
                layout,
                &Opts {
                    weight: wo,
                    bias: bo,
                    eps: 1e-3,
                },
            );
        }
    }
}

/// Three successive batches: running statistics after each, PyTorch's or ONNX's convention.
fn check_momentum(momentum: Option<f32>, unbiased: bool) {
    let mut rng = Rng::new(24);
    let c = 6;
    for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
        let shape = shape_for(4, layout, c, 500);
        for (path, g) in gpus() {
            let mut bn = BatchNorm::new(g, c)
                .unwrap()
                .momentum(momentum)
                .running_var_unbiased(unbiased);
            let mut rm = vec![0.0; c];
            let mut rv = vec![1.0; c];
            for step in 1..=3u64 {
                let x = data(&mut rng, &shape, layout, step as f64);
                let xt = Tensor::from_slice(g, &x, &shape).unwrap();
                bn.forward_train(g, &xt, layout).unwrap();
                let (cc, s) = cs(&shape, layout);
                let st = reference::batch_stats(&x, cc, s);
                let f = momentum.map_or(1.0 / step as f64, f64::from);
                reference::update_running(&mut rm, &st.mean, f);
                reference::update_running(
                    &mut rv,
                    if unbiased { &st.var_unbiased } else { &st.var },
                    f,
                );
                let what =
                    format!("{layout:?} {path} {momentum:?} unbiased={unbiased} step {step}");
                assert_close(
                    &format!("{what} running_mean"),
                    &bn.running_mean().to_vec(g).unwrap(),
                    &rm,
                );
                assert_close(
                    &format!("{what} running_var"),
                    &bn.running_var().to_vec(g).unwrap(),
                    &rv,
                );
                assert_eq!(bn.num_batches_tracked(), step);
            }
        }
    }
}

#[test]
fn momentum_01_05_and_cumulative_over_three_batches() {
    check_momentum(Some(0.1), true);
    check_momentum(Some(0.5), true);
    check_momentum(None, true);
}

#[test]
fn onnx_convention_biased_running_var() {
    // ONNX BatchNormalization(momentum = 0.9, training_mode = 1) is momentum 0.1 here.
    check_momentum(Some(1.0 - 0.9), false);
}

#[test]
fn eval_uses_running_statistics() {
    let mut rng = Rng::new(25);
    let c = 7;
    for var0 in [0.0f32, 1e4] {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            for count in [2usize, 4097] {
                let shape = shape_for(4, layout, c, count);
                let x = data(&mut rng, &shape, layout, 3.0);
                let rm: Vec<f32> = rng.normals(c, 3.0, 1.0);
                let rv: Vec<f32> = (0..c)
                    .map(|i| if i % 2 == 0 { var0 } else { 0.5 + i as f32 })
                    .collect();
                let o = random_affine(&mut rng, c);
                let what = format!("{layout:?} var {var0} count {count}");
                check_eval(&what, &x, &shape, layout, (&rm, &rv), &o);
            }
        }
    }
}

/// Inference with the given running statistics on every context, against the reference; the
/// caller's running statistics and x are not modified.
fn check_eval(
    what: &str,
    x: &[f32],
    shape: &[usize],
    layout: Layout,
    (rm, rv): (&[f32], &[f32]),
    o: &Opts,
) {
    let (c, s) = cs(shape, layout);
    let f64s = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
    let want = reference::batch_norm_apply(
        x,
        c,
        s,
        &f64s(rm),
        &f64s(rv),
        o.weight.as_deref(),
        o.bias.as_deref(),
        f64::from(o.eps),
    );
    for (path, g) in gpus() {
        let mt = Tensor::from_slice(g, rm, &[c]).unwrap();
        let vt = Tensor::from_slice(g, rv, &[c]).unwrap();
        let bn = module(g, c, o).running_stats(mt.clone(), vt.clone());
        let xt = Tensor::from_slice(g, x, shape).unwrap();
        let y = bn.forward_eval(g, &xt, layout).unwrap();
        assert_close(&format!("{what} {path}"), &y.to_vec(g).unwrap(), &want);
        assert_bits_eq("running mean given", &mt.to_vec(g).unwrap(), rm);
        assert_bits_eq("x", &xt.to_vec(g).unwrap(), x);
    }
}

#[test]
fn given_running_stats_are_copied_not_written() {
    let g = gpu();
    let mut rng = Rng::new(26);
    let c = 4;
    let rm = rng.normals(c, 0.0, 1.0);
    let rv: Vec<f32> = (0..c).map(|i| 1.0 + i as f32).collect();
    let mt = Tensor::from_slice(g, &rm, &[c]).unwrap();
    let vt = Tensor::from_slice(g, &rv, &[c]).unwrap();
    let mut bn = BatchNorm::new(g, c)
        .unwrap()
        .running_stats(mt.clone(), vt.clone());
    let shape = [8, c, 5];
    let x = data(&mut rng, &shape, Layout::ChannelsFirst, 1.0);
    bn.forward_train(
        g,
        &Tensor::from_slice(g, &x, &shape).unwrap(),
        Layout::ChannelsFirst,
    )
    .unwrap();
    assert_bits_eq("caller's mean", &mt.to_vec(g).unwrap(), &rm);
    assert_bits_eq("caller's var", &vt.to_vec(g).unwrap(), &rv);
    let st = reference::batch_stats(&x, c, 5);
    let mut want_m: Vec<f64> = rm.iter().map(|&v| f64::from(v)).collect();
    let mut want_v: Vec<f64> = rv.iter().map(|&v| f64::from(v)).collect();
    reference::update_running(&mut want_m, &st.mean, 0.1);
    reference::update_running(&mut want_v, &st.var_unbiased, 0.1);
    assert_close(
        "running_mean",
        &bn.running_mean().to_vec(g).unwrap(),
        &want_m,
    );
    assert_close("running_var", &bn.running_var().to_vec(g).unwrap(), &want_v);
}

#[test]
fn no_running_stats_uses_batch_statistics_in_both_modes() {
    let mut rng = Rng::new(27);
    let c = 3;
    for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
        let shape = shape_for(3, layout, c, 100);
        let x = data(&mut rng, &shape, layout, 5.0);
        let (cc, s) = cs(&shape, layout);
        let st = reference::batch_stats(&x, cc, s);
        let want = reference::batch_norm_apply(&x, cc, s, &st.mean, &st.var, None, None, 1e-5);
        for (path, g) in gpus() {
            let mut bn = BatchNorm::new(g, c).unwrap().track_running_stats(false);
            let xt = Tensor::from_slice(g, &x, &shape).unwrap();
            let y_eval = bn.forward_eval(g, &xt, layout).unwrap();
            assert_close(&format!("{path} eval"), &y_eval.to_vec(g).unwrap(), &want);
            let out = bn.forward_train(g, &xt, layout).unwrap();
            assert_close(&format!("{path} train"), &out.y.to_vec(g).unwrap(), &want);
            assert_eq!(bn.running_mean().to_vec(g).unwrap(), vec![0.0; c]);
            assert_eq!(bn.running_var().to_vec(g).unwrap(), vec![1.0; c]);
            assert_eq!(bn.num_batches_tracked(), 0);
        }
    }
}

#[test]
fn non_finite_values() {
    let mut rng = Rng::new(28);
    let c = 4;
    for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
        let shape = shape_for(4, layout, c, 64);
        let (cc, s) = cs(&shape, layout);
        let mut x = data(&mut rng, &shape, layout, 1.0);
        // A NaN in channel 1 and +Inf in channel 2.
        let idx_of = |ch: usize, k: usize| -> usize {
            (0..x.len()).filter(|&i| (i / s) % cc == ch).nth(k).unwrap()
        };
        let (i_nan, i_inf) = (idx_of(1, 10), idx_of(2, 5));
        x[i_nan] = f32::NAN;
        x[i_inf] = f32::INFINITY;
        let st = reference::batch_stats(&x, cc, s);
        let want = reference::batch_norm_apply(&x, cc, s, &st.mean, &st.var, None, None, 1e-5);
        for (path, g) in gpus() {
            let xt = Tensor::from_slice(g, &x, &shape).unwrap();
            let mut bn = BatchNorm::new(g, c).unwrap();
            let y = bn
                .forward_train(g, &xt, layout)
                .unwrap()
                .y
                .to_vec(g)
                .unwrap();
            for (i, (&got, &w)) in y.iter().zip(&want).enumerate() {
                let ch = (i / s) % cc;
                if ch == 1 || ch == 2 {
                    assert!(
                        got.is_nan(),
                        "{path} train: channel {ch} must be NaN at {i}"
                    );
                } else {
                    assert_close(&format!("{path} train ch {ch}"), &[got], &[w]);
                }
            }
            let rm = bn.running_mean().to_vec(g).unwrap();
            assert!(
                rm[1].is_nan() && rm[0].is_finite() && rm[3].is_finite(),
                "{rm:?}"
            );
            // Eval with finite running statistics: only the non-finite elements change.
            let bn = BatchNorm::new(g, c).unwrap();
            let y = bn.forward_eval(g, &xt, layout).unwrap().to_vec(g).unwrap();
            let ones = vec![1.0; c];
            let zeros = vec![0.0; c];
            let want = reference::batch_norm_apply(&x, cc, s, &zeros, &ones, None, None, 1e-5);
            assert_close(&format!("{path} eval"), &y, &want);
            assert!(y[i_nan].is_nan() && y[i_inf] == f32::INFINITY);
        }
    }
}

#[test]
fn same_input_gives_bit_identical_output() {
    let mut rng = Rng::new(29);
    for (shape, layout) in [
        (vec![32usize, 16, 20, 20], Layout::ChannelsFirst),
        (vec![4096, 64], Layout::ChannelsLast),
        (vec![2, 1, 100000], Layout::ChannelsFirst),
    ] {
        let x = data(&mut rng, &shape, layout, 1.0);
        let (c, _) = cs(&shape, layout);
        for (_, g) in gpus() {
            let xt = Tensor::from_slice(g, &x, &shape).unwrap();
            let mut a = BatchNorm::new(g, c).unwrap();
            let mut b = BatchNorm::new(g, c).unwrap();
            let ya = a.forward_train(g, &xt, layout).unwrap();
            let yb = b.forward_train(g, &xt, layout).unwrap();
            assert_bits_eq("y", &ya.y.to_vec(g).unwrap(), &yb.y.to_vec(g).unwrap());
            assert_bits_eq(
                "mean",
                &ya.mean.to_vec(g).unwrap(),
                &yb.mean.to_vec(g).unwrap(),
            );
            assert_bits_eq(
                "running_var",
                &a.running_var().to_vec(g).unwrap(),
                &b.running_var().to_vec(g).unwrap(),
            );
        }
    }
}

#[test]
fn chunked_bindings_match_the_reference() {
    // 64 KiB bindings: every tensor below goes in several chunks. Chunks hold whole stage-1
    // blocks, so the blocking can differ from one pass; results are compared with the reference.
    let mut rng = Rng::new(30);
    for (shape, layout) in [
        (vec![64usize, 3, 30, 31], Layout::ChannelsFirst),
        (vec![5000, 12], Layout::ChannelsLast),
        (vec![3000, 7], Layout::ChannelsLast),
        (vec![40, 5, 999], Layout::ChannelsFirst),
    ] {
        let x = data(&mut rng, &shape, layout, 10.0);
        let o = Opts {
            weight: None,
            bias: None,
            eps: 1e-5,
        };
        check_train_on(&[("chunked", gpu_small_bindings())], &x, &shape, layout, &o);
    }
}

#[test]
fn large_batch_over_128_mib() {
    let shape = [40usize, 16, 230, 230];
    assert!(shape.iter().product::<usize>() * 4 > 128 << 20);
    let mut rng = Rng::new(31);
    let x = data(&mut rng, &shape, Layout::ChannelsFirst, 2.0);
    let o = Opts {
        weight: None,
        bias: None,
        eps: 1e-5,
    };
    check_train_on(&[("default", gpu())], &x, &shape, Layout::ChannelsFirst, &o);
}

#[test]
fn plan_describes_the_kernels_and_follows_the_tuning() {
    use common::{gpu_cpu_tuning, gpu_gpu_tuning};
    let shape = [32usize, 64, 56, 56];
    let cpu = BatchNorm::new(gpu_cpu_tuning(), 64).unwrap();
    let gpu_t = BatchNorm::new(gpu_gpu_tuning(), 64).unwrap();
    let a = cpu
        .plan(gpu_cpu_tuning(), &shape, Layout::ChannelsFirst)
        .unwrap();
    let b = gpu_t
        .plan(gpu_gpu_tuning(), &shape, Layout::ChannelsFirst)
        .unwrap();
    let (ac, bc) = (a.channels.clone().unwrap(), b.channels.clone().unwrap());
    assert!(
        !ac.channels_last && a.to_string().contains("partial_cf"),
        "{a}"
    );
    assert!(
        b.workgroup_size >= a.workgroup_size && bc.partial_threads > ac.partial_threads,
        "{a} / {b}"
    );
    let cl = cpu
        .plan(gpu_cpu_tuning(), &[32, 56, 56, 64], Layout::ChannelsLast)
        .unwrap();
    let clc = cl.channels.clone().unwrap();
    assert!(clc.channels_last && clc.apply_name() == "vec4-cl", "{cl}");
    // Planning validates like a call does.
    assert!(cpu
        .plan(gpu_cpu_tuning(), &[32, 63, 4], Layout::ChannelsFirst)
        .is_err());
}

#[test]
fn extreme_channel_counts_and_long_channels() {
    let mut rng = Rng::new(32);
    // C = 4096 with few values each, and C = 1 with 2^26 values (a 256 MiB tensor).
    for (shape, layout) in [
        (vec![3usize, 4096], Layout::ChannelsFirst),
        (vec![5, 4096], Layout::ChannelsLast),
        (vec![64usize, 1, 1 << 20], Layout::ChannelsFirst),
    ] {
        let x = data(&mut rng, &shape, layout, 7.0);
        let o = Opts {
            weight: None,
            bias: None,
            eps: 1e-5,
        };
        check_train_on(&[("default", gpu())], &x, &shape, layout, &o);
    }
}

#[test]
fn finalize_launches_a_group_per_channel_not_a_workgroup() {
    for (path, g) in gpus() {
        let bn = BatchNorm::new(g, 1000).unwrap();
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let shape = shape_for(4, layout, 1000, 4 * 9 * 9);
            let plan = bn.plan(g, &shape, layout).unwrap();
            let p = plan.channels.unwrap();
            let per_wg = plan.workgroup_size / p.finalize_threads;
            assert_eq!(
                p.finalize_workgroups,
                1000u32.div_ceil(per_wg),
                "{path} {layout:?}"
            );
        }
    }
}

/// Half storage with an odd channel-first slab on a device with 64 KiB bindings: the blocks fit
/// half a binding, so the even chunks half storage needs still fit one, and every shape f32
/// runs, half runs too (review finding: [2, 21, 3] in f16 was refused).
#[test]
fn half_odd_slabs_on_small_bindings_run_where_f32_does() {
    let gpu = common::gpu_small_limits(true);
    let mut rng = Rng::new(23);
    for c in (17..=45).step_by(2) {
        let shape = [2, c, 3];
        let x16 = Tensor::from_slice(gpu, &rng.normals(2 * c * 3, 0.0, 1.0), &shape)
            .unwrap()
            .cast(gpu, fused_norm::DType::F16)
            .unwrap();
        let x32 = x16.cast(gpu, fused_norm::DType::F32).unwrap();
        let mut bn = BatchNorm::new(gpu, c).unwrap();
        let want = bn.forward_train(gpu, &x32, Layout::ChannelsFirst).unwrap();
        let got = bn.forward_train(gpu, &x16, Layout::ChannelsFirst);
        let got = got.unwrap_or_else(|e| panic!("c = {c}: {e}"));
        // The same f32 math on the same widened inputs, then one f16 rounding (half an ulp,
        // 2^-11 relative).
        let (a, b) = (got.y.to_vec(gpu).unwrap(), want.y.to_vec(gpu).unwrap());
        for (i, (a, b)) in a.iter().zip(&b).enumerate() {
            assert!(
                (a - b).abs() <= b.abs() * 4.9e-4 + 1e-6,
                "c = {c} [{i}]: {a} vs {b}"
            );
        }
    }
}

#[test]
fn vec4_apply_lanes_with_partial_tails() {
    // CPU adapters give an apply lane up to 8 vec4s of one run (channels-first) or one channel
    // quad down 8 rows (channels-last); these runs and row counts end mid-lane: runs of 9, 49
    // and 4 vec4s; 45, 2 and 9 rows of 3, 2 and 1 channel quads.
    let mut rng = Rng::new(31);
    let shapes = [
        ([3usize, 5, 6, 6], Layout::ChannelsFirst),
        ([2, 4, 14, 14], Layout::ChannelsFirst),
        ([2, 3, 4, 4], Layout::ChannelsFirst),
        ([5, 3, 3, 12], Layout::ChannelsLast),
        ([2, 1, 1, 8], Layout::ChannelsLast),
        ([1, 3, 3, 4], Layout::ChannelsLast),
    ];
    for (shape, layout) in shapes {
        let (c, _) = cs(&shape, layout);
        let x = data(&mut rng, &shape, layout, 0.5);
        let o = random_affine(&mut rng, c);
        check_train(&x, &shape, layout, &o);
        let rm = rng.normals(c, 0.5, 1.0);
        let rv: Vec<f32> = (0..c).map(|i| 0.25 + i as f32).collect();
        let what = format!("{shape:?} {layout:?}");
        check_eval(&what, &x, &shape, layout, (&rm, &rv), &o);
    }
}

/// Channels-first: an outlier among a channel's first values (1e5 among N(0, 1) at sample 0,
/// position 0, 1 or 2) keeps TOL: the channel's pivot is the median of its first three values.
/// With the first value as pivot every term of the channel's sums sat near -1e5. (Channels-last
/// keeps the first value: its next values are rows away.)
#[test]
fn an_outlier_among_a_channels_first_values_keeps_full_precision() {
    let mut rng = Rng::new(41);
    for shape in [[16usize, 3, 64, 64], [4, 5, 1, 3]] {
        let (c, s) = cs(&shape, Layout::ChannelsFirst);
        let mut x = rng.normals(shape.iter().product(), 0.0, 1.0);
        for ch in 0..c {
            x[ch * s + ch % 3] = if ch % 2 == 0 { 1e5 } else { -3e4 };
        }
        check_train(
            &x,
            &shape,
            Layout::ChannelsFirst,
            &random_affine(&mut rng, c),
        );
    }
}
