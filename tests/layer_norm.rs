//! LayerNorm forward against the f64 reference, on every variant and both reduction paths.

mod common;

use common::{assert_bits_eq, assert_close, gpu, gpu_small_bindings, gpus, Rng};
use fused_norm::{
    gpu_layer_norm, reference, DType, Gpu, LayerNorm, LayerNormOutput, LnVariant, Tensor,
};

/// Every kernel variant, plus the policy's own choice.
fn variants() -> Vec<LnVariant> {
    vec![
        LnVariant::Auto,
        LnVariant::Rows { threads_per_row: 1 },
        LnVariant::Rows { threads_per_row: 8 },
        LnVariant::Rows {
            threads_per_row: 64,
        },
        LnVariant::SplitRow,
    ]
}

struct Case<'a> {
    x: &'a [f32],
    shape: &'a [usize],
    norm_dims: usize,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    eps: f32,
}

fn run(gpu: &Gpu, c: &Case, variant: LnVariant) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = Tensor::from_slice(gpu, c.x, c.shape).unwrap();
    let norm = &c.shape[c.shape.len() - c.norm_dims..];
    let mut ln = LayerNorm::new(norm).eps(c.eps).variant(variant);
    if let Some(w) = &c.weight {
        ln = ln.weight(Tensor::from_slice(gpu, w, norm).unwrap());
    }
    if let Some(b) = &c.bias {
        ln = ln.bias(Tensor::from_slice(gpu, b, norm).unwrap());
    }
    let out = ln.forward(gpu, &x).unwrap();
    (
        out.y.to_vec(gpu).unwrap(),
        out.mean.to_vec(gpu).unwrap(),
        out.rstd.to_vec(gpu).unwrap(),
    )
}

/// Runs the case on every variant and reduction path and compares y, mean and rstd.
fn check(c: &Case) {
    check_on(c, &variants());
}

/// [`check`] on the given variants.
fn check_on(c: &Case, vs: &[LnVariant]) {
    let d: usize = c.shape[c.shape.len() - c.norm_dims..].iter().product();
    let r = reference::layer_norm(
        c.x,
        d,
        c.weight.as_deref(),
        c.bias.as_deref(),
        f64::from(c.eps),
    );
    for (path, g) in gpus() {
        for &v in vs {
            let (y, mean, rstd) = run(g, c, v);
            let what = format!("{:?} {path} {v:?}", c.shape);
            assert_close(&format!("{what} y"), &y, &r.y);
            assert_close(&format!("{what} mean"), &mean, &r.mean);
            assert_close(&format!("{what} rstd"), &rstd, &r.rstd);
        }
    }
}

fn plain(x: &[f32], shape: &[usize]) -> Case<'static> {
    let x: &'static [f32] = Box::leak(x.to_vec().into_boxed_slice());
    let shape: &'static [usize] = Box::leak(shape.to_vec().into_boxed_slice());
    Case {
        x,
        shape,
        norm_dims: 1,
        weight: None,
        bias: None,
        eps: 1e-5,
    }
}

#[test]
fn row_lengths_that_break_weak_kernels() {
    let mut rng = Rng::new(1);
    for d in [1usize, 2, 3, 7, 1000, 1023, 4097, 65537] {
        for rows in [1usize, 3, 65] {
            if d * rows > 300_000 {
                continue;
            }
            let x = rng.normals(rows * d, 0.5, 2.0);
            let w = rng.normals(d, 1.0, 0.5);
            let b = rng.normals(d, 0.0, 1.0);
            let mut c = plain(&x, &[rows, d]);
            c.weight = Some(w);
            c.bias = Some(b);
            check(&c);
        }
    }
}

#[test]
fn many_rows_go_past_the_grid_limit() {
    let mut rng = Rng::new(2);
    for rows in [65535usize, 65536, 70000] {
        for d in [1usize, 3, 8] {
            let x = rng.normals(rows * d, -1.0, 3.0);
            check_on(
                &plain(&x, &[rows, d]),
                &[
                    LnVariant::Auto,
                    LnVariant::Rows { threads_per_row: 1 },
                    LnVariant::SplitRow,
                ],
            );
        }
    }
}

#[test]
fn four_million_rows() {
    let rows = (1usize << 22) + 3;
    let mut rng = Rng::new(3);
    let x = rng.normals(rows * 2, 0.0, 1.0);
    let r = reference::layer_norm(&x, 2, None, None, 1e-5);
    let g = gpu();
    let (y, mean, rstd) = run(g, &plain(&x, &[rows, 2]), LnVariant::Auto);
    assert_close("y", &y, &r.y);
    assert_close("mean", &mean, &r.mean);
    assert_close("rstd", &rstd, &r.rstd);
}

#[test]
fn large_row_means_keep_full_precision() {
    let mut rng = Rng::new(4);
    for offset in [1e4, -1e4, 1e5, 1e6] {
        for d in [3usize, 1000, 4097] {
            let x = rng.normals(5 * d, offset, 1.0);
            let mut c = plain(&x, &[5, d]);
            c.bias = Some(rng.normals(d, 0.0, 1.0));
            check(&c);
        }
    }
}

#[test]
fn constant_rows_give_beta_exactly() {
    let mut rng = Rng::new(5);
    for d in [1usize, 3, 1000, 4097] {
        let mut x = Vec::new();
        for v in [0.0f32, 3.5, -1e6, 12345.678] {
            x.extend(std::iter::repeat_n(v, d));
        }
        let b = rng.normals(d, 0.0, 1.0);
        let w = rng.normals(d, 1.0, 1.0);
        for (path, g) in gpus() {
            for v in variants() {
                let mut c = plain(&x, &[4, d]);
                c.weight = Some(w.clone());
                c.bias = Some(b.clone());
                let (y, mean, _) = run(g, &c, v);
                for (i, row) in y.chunks(d).enumerate() {
                    assert_bits_eq(&format!("{path} {v:?} d={d} row {i} y"), row, &b);
                    assert_eq!(mean[i], x[i * d], "{path} {v:?} d={d} row {i} mean");
                }
            }
        }
    }
}

#[test]
fn non_finite_values_stay_in_their_row() {
    let mut rng = Rng::new(6);
    for d in [1usize, 3, 1000, 4097] {
        let rows = 6;
        let mut x = rng.normals(rows * d, 0.0, 1.0);
        x[d + d / 2] = f32::NAN;
        x[3 * d + d / 3] = f32::INFINITY;
        x[5 * d] = f32::NEG_INFINITY;
        let r = reference::layer_norm(&x, d, None, None, 1e-5);
        for (path, g) in gpus() {
            for v in variants() {
                let (y, mean, rstd) = run(g, &plain(&x, &[rows, d]), v);
                for row in 0..rows {
                    let ys = &y[row * d..(row + 1) * d];
                    let what = format!("{path} {v:?} d={d} row {row}");
                    if [1, 3, 5].contains(&row) {
                        assert!(ys.iter().all(|v| v.is_nan()), "{what}: all NaN");
                        assert!(rstd[row].is_nan() || mean[row].is_nan(), "{what}: stats");
                    } else {
                        assert_close(&what, ys, &r.y[row * d..(row + 1) * d]);
                        assert_close(
                            &format!("{what} mean"),
                            &mean[row..row + 1],
                            &r.mean[row..row + 1],
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn weight_and_bias_are_independent() {
    let mut rng = Rng::new(7);
    for d in [3usize, 768] {
        let x = rng.normals(9 * d, 1.0, 2.0);
        let w = rng.normals(d, 1.0, 0.5);
        let b = rng.normals(d, 0.0, 1.0);
        for (wo, bo) in [
            (None, None),
            (Some(w.clone()), None),
            (None, Some(b.clone())),
            (Some(w), Some(b)),
        ] {
            let mut c = plain(&x, &[9, d]);
            c.weight = wo.clone();
            c.bias = bo.clone();
            check(&c);
        }
    }
}

#[test]
fn several_trailing_dims_and_onnx_axes() {
    let mut rng = Rng::new(8);
    let shape = [3usize, 4, 5, 6];
    let x = rng.normals(360, 2.0, 1.5);
    // normalized_shape of 2 and 3 trailing dims
    for k in [2usize, 3] {
        let mut c = plain(&x, &shape);
        c.norm_dims = k;
        let d: usize = shape[4 - k..].iter().product();
        c.weight = Some(rng.normals(d, 1.0, 0.3));
        c.bias = Some(rng.normals(d, 0.0, 0.3));
        check(&c);
    }
    // ONNX LayerNormalization(axis): over dims axis..; Mean/InvStdDev shaped [..axis, 1, ...]
    let g = gpu();
    let xt = Tensor::from_slice(g, &x, &shape).unwrap();
    for (axis, norm_from) in [(0isize, 0usize), (1, 1), (-1, 3), (-2, 2), (-4, 0)] {
        let d: usize = shape[norm_from..].iter().product();
        let w = rng.normals(d, 1.0, 0.3);
        let wt = Tensor::from_slice(g, &w, &shape[norm_from..]).unwrap();
        let out = LayerNorm::from_axis(axis)
            .weight(wt)
            .forward(g, &xt)
            .unwrap();
        let r = reference::layer_norm(&x, d, Some(&w), None, 1e-5);
        let mut stat_shape = shape[..norm_from].to_vec();
        stat_shape.extend(std::iter::repeat_n(1, 4 - norm_from));
        assert_eq!(out.mean.shape(), &stat_shape[..], "axis {axis}");
        assert_eq!(out.rstd.shape(), &stat_shape[..], "axis {axis}");
        assert_close(&format!("axis {axis} y"), &out.y.to_vec(g).unwrap(), &r.y);
        assert_close(
            &format!("axis {axis} mean"),
            &out.mean.to_vec(g).unwrap(),
            &r.mean,
        );
        assert_close(
            &format!("axis {axis} rstd"),
            &out.rstd.to_vec(g).unwrap(),
            &r.rstd,
        );
    }
}

#[test]
fn tensor_over_128_mib() {
    let (rows, d) = (8200usize, 4097usize);
    assert!(rows * d * 4 > 128 << 20);
    let mut rng = Rng::new(9);
    let x = rng.normals(rows * d, 3.0, 1.0);
    let w = rng.normals(d, 1.0, 0.2);
    let r = reference::layer_norm(&x, d, Some(&w), None, 1e-5);
    let g = gpu();
    let mut c = plain(&x, &[rows, d]);
    c.weight = Some(w);
    let (y, mean, rstd) = run(g, &c, LnVariant::Auto);
    assert_close("y", &y, &r.y);
    assert_close("mean", &mean, &r.mean);
    assert_close("rstd", &rstd, &r.rstd);
}

#[test]
fn chunked_bindings_match_one_pass_bit_for_bit() {
    // 64 KiB bindings: a 300x1000 tensor (1.2 MB) goes in many chunks, with row starts that are
    // not aligned to the binding offset alignment.
    let mut rng = Rng::new(10);
    for (rows, d) in [(300usize, 1000usize), (40, 4097), (5000, 3), (2, 12000)] {
        let x = rng.normals(rows * d, 100.0, 5.0);
        let mut c = plain(&x, &[rows, d]);
        c.bias = Some(rng.normals(d, 0.0, 1.0));
        for v in variants() {
            let one = run(gpu(), &c, v);
            let chunked = run(gpu_small_bindings(), &c, v);
            let what = format!("{rows}x{d} {v:?}");
            assert_bits_eq(&format!("{what} y"), &chunked.0, &one.0);
            assert_bits_eq(&format!("{what} mean"), &chunked.1, &one.1);
            assert_bits_eq(&format!("{what} rstd"), &chunked.2, &one.2);
        }
    }
}

#[test]
fn same_input_gives_bit_identical_output() {
    let mut rng = Rng::new(11);
    for (rows, d) in [(512usize, 768usize), (4, 65537), (1000, 3)] {
        let x = rng.normals(rows * d, 0.0, 1.0);
        for (_, g) in gpus() {
            for v in variants() {
                let c = plain(&x, &[rows, d]);
                let a = run(g, &c, v);
                let b = run(g, &c, v);
                assert_bits_eq("y", &a.0, &b.0);
                assert_bits_eq("mean", &a.1, &b.1);
                assert_bits_eq("rstd", &a.2, &b.2);
            }
        }
    }
}

#[test]
fn encode_into_a_callers_encoder_and_buffers() {
    let g = gpu();
    let mut rng = Rng::new(12);
    let (rows, d) = (16usize, 256usize);
    let x = rng.normals(rows * d, 0.0, 1.0);
    // The caller's own buffer, wrapped without a copy.
    let buf = g.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("app buffer"),
        size: (rows * d * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    g.queue().write_buffer(&buf, 0, bytemuck::cast_slice(&x));
    let xt = Tensor::from_buffer(g, buf, &[rows, d]).unwrap();
    let out = LayerNormOutput {
        y: Tensor::empty(g, &[rows, d]).unwrap(),
        mean: Tensor::empty(g, &[rows]).unwrap(),
        rstd: Tensor::empty(g, &[rows]).unwrap(),
    };
    let mut enc = g.device().create_command_encoder(&Default::default());
    LayerNorm::new(&[d]).encode(g, &mut enc, &xt, &out).unwrap();
    g.queue().submit([enc.finish()]);
    let r = reference::layer_norm(&x, d, None, None, 1e-5);
    assert_close("y", &out.y.to_vec(g).unwrap(), &r.y);
    assert_close("mean", &out.mean.to_vec(g).unwrap(), &r.mean);
    // The input is untouched.
    assert_bits_eq("x", &xt.to_vec(g).unwrap(), &x);
}

#[test]
fn gpu_layer_norm_is_last_dim_eps_1e5() {
    let g = gpu();
    let mut rng = Rng::new(13);
    let x = rng.normals(2 * 3 * 50, 1.0, 1.0);
    let xt = Tensor::from_slice(g, &x, &[2, 3, 50]).unwrap();
    let y = gpu_layer_norm(g, &xt).unwrap();
    assert_eq!(y.shape(), &[2, 3, 50]);
    assert_close(
        "y",
        &y.to_vec(g).unwrap(),
        &reference::layer_norm(&x, 50, None, None, 1e-5).y,
    );
}

#[test]
fn plan_names_the_variant_and_honours_forcing() {
    let g = gpu();
    let auto = LayerNorm::new(&[768]).plan(g, &[4096, 768]).unwrap();
    assert_ne!(auto.rows.as_ref().unwrap().variant, LnVariant::Auto);
    assert!(!auto.reason.is_empty());
    let forced = LayerNorm::new(&[768])
        .variant(LnVariant::SplitRow)
        .plan(g, &[4096, 768])
        .unwrap();
    assert_eq!(forced.rows.as_ref().unwrap().variant, LnVariant::SplitRow);
    let rows = LayerNorm::new(&[768])
        .variant(LnVariant::Rows {
            threads_per_row: 16,
        })
        .plan(g, &[4096, 768])
        .unwrap();
    assert_eq!(
        rows.rows.as_ref().unwrap().variant,
        LnVariant::Rows {
            threads_per_row: 16
        }
    );
}

#[test]
fn rows_of_a_million_values() {
    let mut rng = Rng::new(14);
    for d in [1usize << 20, (1 << 20) + 1] {
        let x = rng.normals(2 * d, -3.0, 2.0);
        let r = reference::layer_norm(&x, d, None, None, 1e-5);
        for v in [
            LnVariant::Auto,
            LnVariant::SplitRow,
            LnVariant::Rows { threads_per_row: 1 },
        ] {
            let (y, mean, rstd) = run(gpu(), &plain(&x, &[2, d]), v);
            assert_close(&format!("d={d} {v:?} y"), &y, &r.y);
            assert_close(&format!("d={d} {v:?} mean"), &mean, &r.mean);
            assert_close(&format!("d={d} {v:?} rstd"), &rstd, &r.rstd);
        }
    }
}

#[test]
fn pipelines_are_created_once_per_device() {
    let g = Gpu::new().unwrap();
    let x = Tensor::from_slice(&g, &[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    LayerNorm::new(&[2]).forward(&g, &x).unwrap();
    let n = g.cached_pipelines();
    assert!(n >= 1);
    for _ in 0..5 {
        LayerNorm::new(&[2]).forward(&g, &x).unwrap();
    }
    assert_eq!(g.cached_pipelines(), n, "a call created pipelines again");
    // Clones share the cache.
    let g2 = g.clone();
    LayerNorm::new(&[2]).forward(&g2, &x).unwrap();
    assert_eq!(g.cached_pipelines(), n);
}

#[test]
fn gpu_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync>() {}
    check::<Gpu>();
    check::<Tensor>();
    check::<LayerNorm>();
    check::<fused_norm::BatchNorm>();
}

#[test]
fn every_context_plans_with_bindings_below_2_31_bytes() {
    // Kernels index in u32; Metal reports bindings of tens of GB.
    for (path, g) in gpus() {
        assert!(g.max_binding_bytes() < 1 << 31, "{path}");
    }
}

#[test]
fn gpu_plan_sizes_the_row_cache_and_spreads_few_rows() {
    let g = common::gpu_gpu_tuning();
    let many = LayerNorm::new(&[768]).plan(g, &[4096, 768]).unwrap();
    let LnVariant::Rows { threads_per_row } = many.rows.as_ref().unwrap().variant else {
        panic!("{many}");
    };
    // 192 vec4s over the row's threads, rounded up to a power of two: no unused registers.
    assert_eq!(
        many.rows.as_ref().unwrap().row_cache,
        (192u32).div_ceil(threads_per_row).next_power_of_two()
    );
    assert!(many.rows.as_ref().unwrap().row_cache < 16, "{many}");
    // Decoding: 4 rows get a workgroup each; few long rows are split.
    let few = LayerNorm::new(&[768]).plan(g, &[4, 768]).unwrap();
    assert_eq!(
        few.rows.as_ref().unwrap().variant,
        LnVariant::Rows {
            threads_per_row: few.workgroup_size
        },
        "{few}"
    );
    let long = LayerNorm::new(&[65536]).plan(g, &[8, 65536]).unwrap();
    assert_eq!(
        long.rows.as_ref().unwrap().variant,
        LnVariant::SplitRow,
        "{long}"
    );
}

/// Long rows on a CPU adapter with subgroups: [64, 65536] takes a subgroup per row (2048 vec4s
/// per lane, no barriers, statistics from one read of x) and stays within TOL of the reference
/// with means of 1e4 and 1e6, the split path's result too; so do [8, 65536] (workgroups of one
/// subgroup, so 8 rows still make 8 workgroups) and [8, 262144] (8192 vec4s per lane: allowed
/// because one-read statistics merge chunks rather than sum 8192 terms); [7, 65536] keeps the
/// split path.
#[test]
fn long_rows_take_a_subgroup_each_on_cpu_adapters() {
    let g = gpu();
    if g.adapter_info().device_type != wgpu::DeviceType::Cpu || !g.capabilities().subgroups {
        return;
    }
    let sg = g.capabilities().subgroup_min_size;
    let d = 65536;
    let plan = LayerNorm::new(&[d]).plan(g, &[64, d]).unwrap();
    assert_eq!(
        plan.rows.as_ref().unwrap().variant,
        LnVariant::Rows {
            threads_per_row: sg
        },
        "{}",
        plan.reason
    );
    assert!(plan.rows.as_ref().unwrap().one_read, "{plan}");
    let eight = LayerNorm::new(&[d]).plan(g, &[8, d]).unwrap();
    assert_eq!(
        eight.rows.as_ref().unwrap().variant,
        plan.rows.unwrap().variant
    );
    assert_eq!(eight.workgroup_size, g.capabilities().subgroup_max_size);
    let few = LayerNorm::new(&[d]).plan(g, &[7, d]).unwrap();
    assert_eq!(few.rows.as_ref().unwrap().variant, LnVariant::SplitRow);
    // Half rows that start mid-word take the split path, in full-size workgroups.
    let mid_word = LayerNorm::new(&[10002])
        .plan_dtype(g, &[8, 10002], DType::F16)
        .unwrap();
    assert_eq!(mid_word.rows.as_ref().unwrap().variant, LnVariant::SplitRow);
    assert_eq!(mid_word.workgroup_size, few.workgroup_size);
    let longest = LayerNorm::new(&[4 * d]).plan(g, &[8, 4 * d]).unwrap();
    assert_eq!(
        longest.rows.as_ref().unwrap().variant,
        LnVariant::Rows {
            threads_per_row: sg
        }
    );
    assert!(longest.rows.as_ref().unwrap().one_read, "{longest}");
    let mut rng = Rng::new(17);
    for (rows, d, mean) in [(64, d, 1e4), (64, d, 1e6), (8, d, 1e5), (8, 4 * d, 1e4)] {
        let x = rng.normals(rows * d, mean, 1.0);
        let t = Tensor::from_slice(g, &x, &[rows, d]).unwrap();
        let want = reference::layer_norm(&x, d, None, None, 1e-5);
        let got = LayerNorm::new(&[d]).forward(g, &t).unwrap();
        assert_close("subgroup rows y", &got.y.to_vec(g).unwrap(), &want.y);
        assert_close(
            "subgroup rows mean",
            &got.mean.to_vec(g).unwrap(),
            &want.mean,
        );
        assert_close(
            "subgroup rows rstd",
            &got.rstd.to_vec(g).unwrap(),
            &want.rstd,
        );
    }
}

/// One-read rows with a weight or bias per element: on CPU adapters a group of threads
/// normalizes several rows, loading each vec4 of the weight and bias once for all of them; row
/// counts that leave the last group partly empty, short rows (a row per lane) and long ones (a
/// subgroup per row), means of 1e4, weight and bias alone and together, on every context.
#[test]
fn rows_of_a_group_share_their_weight_and_bias() {
    let g = gpu();
    let cpu_subgroups =
        g.adapter_info().device_type == wgpu::DeviceType::Cpu && g.capabilities().subgroups;
    let mut rng = Rng::new(23);
    for (rows, d) in [(4099usize, 256usize), (2051, 256), (42, 65536)] {
        let x = rng.normals(rows * d, 1e4, 3.0);
        let w = rng.normals(d, 1.0, 0.5);
        let b = rng.normals(d, 0.0, 1.0);
        if cpu_subgroups {
            let plan = LayerNorm::new(&[d])
                .weight(Tensor::from_slice(g, &w, &[d]).unwrap())
                .plan(g, &[rows, d])
                .unwrap();
            let rp = plan.rows.as_ref().unwrap();
            assert!(rp.one_read && rp.rows_per_group > 1, "{plan}");
            assert!(rows % rp.rows_per_group as usize != 0, "{plan}");
        }
        for (wo, bo) in [
            (Some(w.clone()), Some(b.clone())),
            (Some(w.clone()), None),
            (None, Some(b.clone())),
        ] {
            let mut c = plain(&x, &[rows, d]);
            c.weight = wo;
            c.bias = bo;
            check_on(&c, &[LnVariant::Auto]);
        }
    }
}

/// One outlier among a row's first values (a 1e5 or -3e4 among N(0, 1), at position 0, 1 or 2)
/// keeps TOL on every variant and context: the pivot is the median of the first three values.
/// With the first value as pivot every term of the sums was near -1e5 and [64, 65536] lost the
/// mean to 1e-2 and y to 5e-5. (Larger outliers reach f32's limit elsewhere: added first to a
/// lane's sum of squares, a 1e7 makes every later term round to its ulp, 1.6e-5 of rstd at
/// [6, 4097]; a Welford update rounds the same way.)
#[test]
fn an_outlier_among_the_first_values_keeps_full_precision() {
    let mut rng = Rng::new(29);
    for (rows, d) in [(6usize, 1000usize), (6, 4097), (16, 65536), (3, 3)] {
        let mut x = rng.normals(rows * d, 0.0, 1.0);
        for r in 0..rows {
            x[r * d + r % 3] = if r % 2 == 0 { 1e5 } else { -3e4 };
        }
        let mut c = plain(&x, &[rows, d]);
        c.bias = Some(rng.normals(d, 0.0, 1.0));
        check(&c);
    }
}
