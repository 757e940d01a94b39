//! Half precision (issue 9): f16 and bf16 tensors on the rows family (LayerNorm, RMSNorm,
//! GroupNorm and InstanceNorm channels-first), both storage paths (native f16 where the adapter
//! has SHADER_F16, u32-packed words everywhere, forced with `disable_shader_f16`), the fused
//! residual add, and the casts.
//!
//! The error bound, stated once: statistics are f32 math on the widened inputs, so mean and
//! rstd meet the f32 tolerance `TOL` against the f64 reference computed from the same half
//! inputs; y is rounded once to the output type, so |y - ref| <= 1 ulp of the output type at
//! |ref| (0.5 ulp for the rounding, the rest for f32's ~1e-6), plus TOL absolute where |ref| is
//! so small that f32's own error exceeds a half ulp.

mod common;

use common::{assert_close, Rng, TOL};
use fused_norm::{
    reference, DType, Element, GroupNorm, InstanceNorm, LayerNorm, LayerNormAddOutput, Layout,
    NormError, RmsNorm, RmsNormAddOutput, Storage, Tensor,
};
use half::{bf16, f16};

use common::{gpu_packed, gpu_packed_gpu_tuned, paths};

/// Statistics within TOL of the reference; a non-finite reference (a row holding NaN or Inf)
/// wants a non-finite value (NaN: x - pivot of an Inf row is Inf - Inf).
fn assert_stats(what: &str, got: &[f32], want: &[f64]) {
    let finite: Vec<usize> = (0..want.len()).filter(|&i| want[i].is_finite()).collect();
    for i in 0..want.len() {
        if !want[i].is_finite() {
            assert!(
                !got[i].is_finite(),
                "{what}[{i}]: got {}, want {}",
                got[i],
                want[i]
            );
        }
    }
    let g: Vec<f32> = finite.iter().map(|&i| got[i]).collect();
    let w: Vec<f64> = finite.iter().map(|&i| want[i]).collect();
    assert_close(what, &g, &w);
}

/// Rounds host values to T (round to nearest even, as the half crate does).
trait Half: Element {
    fn round(v: f32) -> Self;
    /// Significand bits after the point (f16 10, bf16 7).
    const MANT: i32;
    /// Smallest normal exponent.
    const EMIN: i32;
}

impl Half for f16 {
    fn round(v: f32) -> f16 {
        f16::from_f32(v)
    }
    const MANT: i32 = 10;
    const EMIN: i32 = -14;
}

impl Half for bf16 {
    fn round(v: f32) -> bf16 {
        bf16::from_f32(v)
    }
    const MANT: i32 = 7;
    const EMIN: i32 = -126;
}

/// One ulp of T at |v|.
fn ulp<T: Half>(v: f64) -> f64 {
    let e = if v == 0.0 {
        T::EMIN
    } else {
        (v.abs().log2().floor() as i32).max(T::EMIN)
    };
    2f64.powi(e - T::MANT)
}

/// Asserts y within 1 ulp of T (plus TOL absolute for tiny values) of the reference; NaN meets
/// NaN and Inf its equal. Returns the largest error in ulps (where |ref| >= 1e-2).
fn assert_ulp<T: Half>(what: &str, got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() || !w.is_finite() {
            let ok = (w.is_nan() && g.is_nan()) || f64::from(g) == w;
            assert!(ok, "{what}[{i}]: got {g}, want {w}");
            continue;
        }
        let err = (f64::from(g) - w).abs();
        let u = ulp::<T>(w);
        assert!(
            err <= u + TOL,
            "{what}[{i}]: got {g}, want {w} ({:.2} ulp)",
            err / u
        );
        if w.abs() >= 1e-2 {
            worst = worst.max(err / u);
        }
    }
    worst
}

/// The stored bits of half values.
fn bits<T: Half>(v: &[T]) -> Vec<u16> {
    bytemuck::cast_slice::<T, u16>(v).to_vec()
}

fn halves<T: Half>(v: &[f32]) -> (Vec<T>, Vec<f32>) {
    let h: Vec<T> = v.iter().map(|&x| T::round(x)).collect();
    let w = h.iter().map(|x| x.widen()).collect();
    (h, w)
}

/// LayerNorm and RMSNorm of `rows x d` values from `data`, on every path, against the f64
/// reference of the same half values; with f32 weights, or T weights when `half_params`.
fn check_trailing<T: Half>(
    what: &str,
    rows: usize,
    d: usize,
    data: &[f32],
    half_params: bool,
) -> f64 {
    let (xh, xw) = halves::<T>(data);
    let mut rng = Rng::new(d as u64 + 7);
    let (wh, ww) = halves::<T>(&rng.normals(d, 1.0, 0.5));
    let (bh, bw) = halves::<T>(&rng.normals(d, 0.0, 0.5));
    let ln_ref = reference::layer_norm(&xw, d, Some(&ww), Some(&bw), 1e-5);
    let (rms_y, rms_st) = reference::rms_norm(&xw, d, Some(&ww), 1e-5);
    let mut worst = 0f64;
    for (path, gpu) in paths() {
        let x = Tensor::from_slice(gpu, &xh, &[rows, d]).unwrap();
        let (w, b) = match half_params {
            true => (
                Tensor::from_slice(gpu, &wh, &[d]).unwrap(),
                Tensor::from_slice(gpu, &bh, &[d]).unwrap(),
            ),
            false => (
                Tensor::from_slice(gpu, &ww, &[d]).unwrap(),
                Tensor::from_slice(gpu, &bw, &[d]).unwrap(),
            ),
        };
        let tag = format!("{what} {} {path} [{rows}, {d}]", T::DTYPE);
        let ln = LayerNorm::new(&[d]).eps(1e-5).weight(w.clone()).bias(b);
        let out = ln.forward(gpu, &x).unwrap();
        assert_eq!(out.y.dtype(), T::DTYPE);
        assert_eq!(out.mean.dtype(), DType::F32);
        let y: Vec<T> = out.y.read::<T>(gpu).unwrap();
        let y: Vec<f32> = y.iter().map(|v| v.widen()).collect();
        worst = worst.max(assert_ulp::<T>(&format!("LN y {tag}"), &y, &ln_ref.y));
        assert_stats(
            &format!("LN mean {tag}"),
            &out.mean.to_vec(gpu).unwrap(),
            &ln_ref.mean,
        );
        assert_stats(
            &format!("LN rstd {tag}"),
            &out.rstd.to_vec(gpu).unwrap(),
            &ln_ref.rstd,
        );
        let rms = RmsNorm::new(&[d]).eps(1e-5).weight(w);
        let out = rms.forward(gpu, &x).unwrap();
        let y = out.y.to_vec(gpu).unwrap();
        worst = worst.max(assert_ulp::<T>(&format!("RMS y {tag}"), &y, &rms_y));
        assert_stats(
            &format!("RMS rstd {tag}"),
            &out.rstd.to_vec(gpu).unwrap(),
            &rms_st.rstd,
        );
        let plan = LayerNorm::new(&[d])
            .plan_dtype(gpu, &[rows, d], T::DTYPE)
            .unwrap();
        let want = match (T::DTYPE, path) {
            (DType::BF16, _) => Storage::Bf16Packed,
            (_, "native") => Storage::F16Native,
            _ => Storage::F16Packed,
        };
        assert_eq!(plan.storage, want, "{plan}");
    }
    worst
}

fn both(what: &str, rows: usize, d: usize, data: &[f32]) {
    let a = check_trailing::<f16>(what, rows, d, data, false);
    let b = check_trailing::<bf16>(what, rows, d, data, true);
    println!("{what} [{rows}, {d}]: worst f16 {a:.3} ulp, bf16 {b:.3} ulp");
}

#[test]
fn layer_and_rms_norm_match_the_reference_within_one_ulp_at_hard_lengths() {
    let mut rng = Rng::new(1);
    for (rows, d) in [
        (5, 1),
        (33, 3),
        (17, 7),
        (9, 1000),
        (3, 4097),
        (2, 65537),
        (64, 768),
    ] {
        let data = rng.normals(rows * d, 0.5, 2.0);
        both("hard lengths", rows, d, &data);
    }
}

#[test]
fn more_than_65535_rows_of_odd_and_vec4_lengths() {
    let mut rng = Rng::new(2);
    for d in [3, 4] {
        let rows = 65537;
        let data = rng.normals(rows * d, 0.0, 1.0);
        both("many rows", rows, d, &data);
    }
}

#[test]
fn mean_offsets_the_half_types_can_hold() {
    let mut rng = Rng::new(3);
    // f16: offset 1000 (ulp 0.5 there), bf16 offset 1e4 with std 100 (ulp 64 there).
    let data = rng.normals(16 * 1000, 1000.0, 4.0);
    check_trailing::<f16>("offset 1e3", 16, 1000, &data, false);
    let data = rng.normals(16 * 1001, 1e4, 100.0);
    check_trailing::<bf16>("offset 1e4", 16, 1001, &data, false);
}

#[test]
fn values_near_65504_where_x_minus_mean_overflows_f16_but_not_f32() {
    let mut rng = Rng::new(4);
    for d in [8, 9, 1000] {
        let data: Vec<f32> = (0..4 * d)
            .map(|i| {
                if (i + rng.next_u64() as usize).is_multiple_of(2) {
                    65504.0
                } else {
                    -65504.0 + 32.0 * (i % 5) as f32
                }
            })
            .collect();
        check_trailing::<f16>("near max", 4, d, &data, false);
    }
}

#[test]
fn nan_and_inf_stay_in_their_row() {
    let mut rng = Rng::new(5);
    for d in [7, 8, 4097] {
        let rows = 6;
        let mut data = rng.normals(rows * d, 0.0, 1.0);
        data[d + 2] = f32::NAN;
        data[3 * d] = f32::INFINITY;
        data[5 * d + d - 1] = f32::NEG_INFINITY;
        both("nan/inf", rows, d, &data);
    }
}

/// GroupNorm and InstanceNorm channels-first: the rows family with per-channel parameters.
fn check_grouped<T: Half>(n: usize, c: usize, spatial: &[usize], groups: usize) -> f64 {
    let s: usize = spatial.iter().product();
    let mut rng = Rng::new((n * c * s) as u64);
    let (xh, xw) = halves::<T>(&rng.normals(n * c * s, 3.0, 2.0));
    let (wh, ww) = halves::<T>(&rng.normals(c, 1.0, 0.5));
    let bw = rng.normals(c, 0.0, 0.5);
    let shape = [&[n, c][..], spatial].concat();
    let (gy, gst) = reference::group_norm(&xw, c, s, groups, false, Some(&ww), Some(&bw), 1e-5);
    let (iy, ist) = reference::group_norm(&xw, c, s, c, false, Some(&ww), Some(&bw), 1e-5);
    let mut worst = 0f64;
    for (path, gpu) in paths() {
        let tag = format!("{} {path} {shape:?} g{groups}", T::DTYPE);
        let x = Tensor::from_slice(gpu, &xh, &shape).unwrap();
        let w = Tensor::from_slice(gpu, &wh, &[c]).unwrap();
        let b = Tensor::from_slice(gpu, &bw, &[c]).unwrap();
        let gn = GroupNorm::new(groups, c)
            .unwrap()
            .weight(w.clone())
            .bias(b.clone());
        let out = gn.forward(gpu, &x, Layout::ChannelsFirst).unwrap();
        worst = worst.max(assert_ulp::<T>(
            &format!("GN y {tag}"),
            &out.y.to_vec(gpu).unwrap(),
            &gy,
        ));
        assert_close(
            &format!("GN mean {tag}"),
            &out.mean.to_vec(gpu).unwrap(),
            &gst.mean,
        );
        assert_close(
            &format!("GN rstd {tag}"),
            &out.rstd.to_vec(gpu).unwrap(),
            &gst.rstd,
        );
        let inn = InstanceNorm::new(c).weight(w).bias(b);
        let out = inn.forward(gpu, &x, Layout::ChannelsFirst).unwrap();
        worst = worst.max(assert_ulp::<T>(
            &format!("IN y {tag}"),
            &out.y.to_vec(gpu).unwrap(),
            &iy,
        ));
        assert_close(
            &format!("IN rstd {tag}"),
            &out.rstd.to_vec(gpu).unwrap(),
            &ist.rstd,
        );
    }
    worst
}

#[test]
fn group_and_instance_norm_channels_first_in_half() {
    for (n, c, spatial, g) in [
        (2, 6, vec![3, 3], 3),
        (3, 4, vec![5], 2),
        (2, 8, vec![4, 4], 4),
        (1, 3, vec![7, 5], 1),
    ] {
        let a = check_grouped::<f16>(n, c, &spatial, g);
        let b = check_grouped::<bf16>(n, c, &spatial, g);
        println!("grouped {n}x{c}x{spatial:?} g{g}: f16 {a:.3} ulp, bf16 {b:.3} ulp");
    }
}

/// BatchNorm (training and eval, both layouts) and GroupNorm / InstanceNorm channels-last: the
/// channels family with half loads and stores.
fn check_channels<T: Half>(n: usize, c: usize, spatial: &[usize]) -> f64 {
    let s: usize = spatial.iter().product();
    let mut rng = Rng::new((n * c * s) as u64 + 3);
    let (xh, xw) = halves::<T>(&rng.normals(n * c * s, 2.0, 3.0));
    let (wh, ww) = halves::<T>(&rng.normals(c, 1.0, 0.5));
    let bw = rng.normals(c, 0.0, 0.5);
    let st = reference::batch_stats(&xw, c, s);
    let train =
        reference::batch_norm_apply(&xw, c, s, &st.mean, &st.var, Some(&ww), Some(&bw), 1e-5);
    let ones = vec![1.0f64; c];
    let zeros = vec![0.0f64; c];
    let eval = reference::batch_norm_apply(&xw, c, s, &zeros, &ones, Some(&ww), Some(&bw), 1e-5);
    let groups = if c.is_multiple_of(2) { c / 2 } else { c };
    let (gy, _) = reference::group_norm(&xw, c, s, groups, false, Some(&ww), Some(&bw), 1e-5);
    let mut worst = 0f64;
    for (path, gpu) in paths() {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            let tag = format!("{} {path} {layout:?} [{n}, {c}, {spatial:?}]", T::DTYPE);
            let cl = layout == Layout::ChannelsLast;
            let shape = common::layout_shape(n, c, spatial, layout);
            let host = if cl {
                common::to_channels_last(&xh, n, c, s)
            } else {
                xh.clone()
            };
            let x = Tensor::from_slice(gpu, &host, &shape).unwrap();
            let w = Tensor::from_slice(gpu, &wh, &[c]).unwrap();
            let b = Tensor::from_slice(gpu, &bw, &[c]).unwrap();
            let back = |y: &Tensor| {
                let v = y.to_vec(gpu).unwrap();
                if cl {
                    common::to_channels_first(&v, n, c, s)
                } else {
                    v
                }
            };
            let mut bn = fused_norm::BatchNorm::new(gpu, c)
                .unwrap()
                .weight(w.clone())
                .bias(b.clone());
            let out = bn.forward_train(gpu, &x, layout).unwrap();
            assert_eq!(out.y.dtype(), T::DTYPE);
            worst = worst.max(assert_ulp::<T>(
                &format!("BN train {tag}"),
                &back(&out.y),
                &train,
            ));
            assert_close(
                &format!("BN mean {tag}"),
                &out.mean.to_vec(gpu).unwrap(),
                &st.mean,
            );
            let fresh = fused_norm::BatchNorm::new(gpu, c)
                .unwrap()
                .weight(w.clone())
                .bias(b.clone());
            let y = fresh.forward_eval(gpu, &x, layout).unwrap();
            worst = worst.max(assert_ulp::<T>(&format!("BN eval {tag}"), &back(&y), &eval));
            let plan = fresh.plan_dtype(gpu, &shape, layout, T::DTYPE).unwrap();
            assert!(plan.storage != Storage::F32, "{plan}");
            if cl {
                let gn = GroupNorm::new(groups, c)
                    .unwrap()
                    .weight(w.clone())
                    .bias(b.clone());
                let out = gn.forward(gpu, &x, layout).unwrap();
                worst = worst.max(assert_ulp::<T>(&format!("GN cl {tag}"), &back(&out.y), &gy));
                let inn = InstanceNorm::new(c).weight(w).bias(b);
                assert!(inn.forward(gpu, &x, layout).is_ok());
            }
        }
    }
    worst
}

#[test]
fn batch_norm_and_channels_last_group_norm_in_half() {
    // Odd runs (5, 3x3, 7x7) and channel counts (3, 5) put values of one word in two channels,
    // samples and chunks; [2, 8, 4, 4] and [4, 8, 1] take the vec4 passes.
    for (n, c, spatial) in [
        (2, 3, vec![5]),
        (3, 5, vec![3, 3]),
        (2, 8, vec![4, 4]),
        (7, 8, vec![1]),
        (2, 4, vec![7, 7]),
        (5, 3, vec![1]),
    ] {
        let a = check_channels::<f16>(n, c, &spatial);
        let b = check_channels::<bf16>(n, c, &spatial);
        println!("channels {n}x{c}x{spatial:?}: f16 {a:.3} ulp, bf16 {b:.3} ulp");
    }
}

/// forward_add: sum = round(x + residual) bit for bit as the host rounds it; y the reference
/// norm of that sum; in place through encode_add.
fn check_add<T: Half>(rows: usize, d: usize) {
    let mut rng = Rng::new((rows * d) as u64 + 11);
    let (xh, xw) = halves::<T>(&rng.normals(rows * d, 0.0, 1.0));
    let (rh, rw) = halves::<T>(&rng.normals(rows * d, 1.0, 3.0));
    let sum: Vec<T> = xw.iter().zip(&rw).map(|(a, b)| T::round(a + b)).collect();
    let sw: Vec<f32> = sum.iter().map(|v| v.widen()).collect();
    let ln_ref = reference::layer_norm(&sw, d, None, None, 1e-5);
    let (rms_y, _) = reference::rms_norm(&sw, d, None, 1e-5);
    for (path, gpu) in paths() {
        let tag = format!("{} {path} [{rows}, {d}]", T::DTYPE);
        let x = Tensor::from_slice(gpu, &xh, &[rows, d]).unwrap();
        let r = Tensor::from_slice(gpu, &rh, &[rows, d]).unwrap();
        let ln = LayerNorm::new(&[d]);
        let out = ln.forward_add(gpu, &x, &r).unwrap();
        let got: Vec<T> = out.sum.read::<T>(gpu).unwrap();
        assert_eq!(bits(&got), bits(&sum), "sum {tag}");
        assert_ulp::<T>(
            &format!("add LN y {tag}"),
            &out.y.to_vec(gpu).unwrap(),
            &ln_ref.y,
        );
        assert_close(
            &format!("add LN mean {tag}"),
            &out.mean.to_vec(gpu).unwrap(),
            &ln_ref.mean,
        );
        // The fused y equals the unfused norm of the stored sum, bit for bit.
        let plain = ln.forward(gpu, &out.sum).unwrap();
        let (a, b) = (
            plain.y.read::<T>(gpu).unwrap(),
            out.y.read::<T>(gpu).unwrap(),
        );
        assert_eq!(bits(&a), bits(&b), "fused = unfused {tag}");
        // In place: the residual becomes the sum.
        let rms = RmsNorm::new(&[d]).eps(1e-5);
        let res = Tensor::from_slice(gpu, &rh, &[rows, d]).unwrap();
        let o = RmsNormAddOutput {
            sum: res.clone(),
            y: Tensor::empty_dtype(gpu, &[rows, d], T::DTYPE).unwrap(),
            rstd: Tensor::empty(gpu, &[rows, 1]).unwrap(),
        };
        let mut enc = gpu.encoder();
        rms.encode_add(gpu, &mut enc, &x, &res, &o).unwrap();
        gpu.submit_wait(enc).unwrap();
        let got: Vec<T> = res.read::<T>(gpu).unwrap();
        assert_eq!(bits(&got), bits(&sum), "in-place sum {tag}");
        assert_ulp::<T>(
            &format!("add RMS y {tag}"),
            &o.y.to_vec(gpu).unwrap(),
            &rms_y,
        );
    }
}

#[test]
fn forward_add_rounds_the_sum_then_normalizes_it_in_every_dtype() {
    for (rows, d) in [(7, 768), (3, 7), (65537, 4), (2, 4097), (4, 1)] {
        check_add::<f16>(rows, d);
        check_add::<bf16>(rows, d);
    }
    // f32: no rounding of the sum.
    let gpu = common::gpu();
    let mut rng = Rng::new(9);
    let (xv, rv) = (rng.normals(8 * 12, 0.0, 1.0), rng.normals(8 * 12, 0.0, 1.0));
    let sum: Vec<f32> = xv.iter().zip(&rv).map(|(a, b)| a + b).collect();
    let x = Tensor::from_slice(gpu, &xv, &[8, 12]).unwrap();
    let r = Tensor::from_slice(gpu, &rv, &[8, 12]).unwrap();
    let out = LayerNorm::new(&[12]).forward_add(gpu, &x, &r).unwrap();
    assert_eq!(out.sum.to_vec(gpu).unwrap(), sum);
    let want = reference::layer_norm(&sum, 12, None, None, 1e-5);
    assert_close("f32 add y", &out.y.to_vec(gpu).unwrap(), &want.y);
}

#[test]
fn forward_add_rejects_mixed_dtypes_and_aliases() {
    let gpu = common::gpu();
    let x = Tensor::from_slice(gpu, &[f16::ONE; 8], &[2, 4]).unwrap();
    let r32 = Tensor::from_slice(gpu, &[1.0f32; 8], &[2, 4]).unwrap();
    let ln = LayerNorm::new(&[4]);
    assert!(matches!(
        ln.forward_add(gpu, &x, &r32),
        Err(NormError::Shape(_))
    ));
    assert!(ln.forward_add(gpu, &x, &x).is_err());
    let r = Tensor::from_slice(gpu, &[f16::ONE; 8], &[2, 4]).unwrap();
    // y may not be the residual (only sum may).
    let out = LayerNormAddOutput {
        sum: Tensor::empty_dtype(gpu, &[2, 4], DType::F16).unwrap(),
        y: r.clone(),
        mean: Tensor::empty(gpu, &[2, 1]).unwrap(),
        rstd: Tensor::empty(gpu, &[2, 1]).unwrap(),
    };
    let mut enc = gpu.encoder();
    assert!(ln.encode_add(gpu, &mut enc, &x, &r, &out).is_err());
}

#[test]
fn dtype_rules_are_errors_not_panics() {
    let gpu = common::gpu();
    let x = Tensor::from_slice(gpu, &[f16::ONE; 8], &[2, 4]).unwrap();
    let wb = Tensor::from_slice(gpu, &[bf16::ONE; 4], &[4]).unwrap();
    // x f16 with a bf16 weight.
    let e = LayerNorm::new(&[4])
        .weight(wb)
        .forward(gpu, &x)
        .unwrap_err();
    assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
    // read::<T> needs the exact type.
    assert!(x.read::<f32>(gpu).is_err() && x.read::<bf16>(gpu).is_err());
    assert_eq!(x.read::<f16>(gpu).unwrap(), vec![f16::ONE; 8]);
    // An f32 y for an f16 x.
    let out = fused_norm::LayerNormOutput {
        y: Tensor::empty(gpu, &[2, 4]).unwrap(),
        mean: Tensor::empty(gpu, &[2, 1]).unwrap(),
        rstd: Tensor::empty(gpu, &[2, 1]).unwrap(),
    };
    let mut enc = gpu.encoder();
    assert!(LayerNorm::new(&[4])
        .encode(gpu, &mut enc, &x, &out)
        .is_err());
    // BatchNorm: a bf16 weight with f16 x; the backward takes dy of x's dtype only.
    let img = Tensor::from_slice(gpu, &[f16::ONE; 16], &[2, 2, 2, 2]).unwrap();
    let wb = Tensor::from_slice(gpu, &[bf16::ONE; 2], &[2]).unwrap();
    let mut bn = fused_norm::BatchNorm::new(gpu, 2).unwrap().weight(wb);
    let e = bn
        .forward_train(gpu, &img, Layout::ChannelsFirst)
        .unwrap_err();
    assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
    let ln = LayerNorm::new(&[4]);
    let o = ln.forward(gpu, &x).unwrap();
    assert_eq!(
        ln.backward(gpu, &x, &x, &o.mean, &o.rstd)
            .unwrap()
            .dx
            .dtype(),
        x.dtype()
    );
    let dy32 = x.cast(gpu, DType::F32).unwrap();
    assert!(ln.backward(gpu, &x, &dy32, &o.mean, &o.rstd).is_err());
}

/// Every f32 bit pattern class: normals, ties, subnormals of both types, overflow, Inf, NaN.
fn cast_inputs() -> Vec<f32> {
    let mut rng = Rng::new(77);
    let mut v: Vec<f32> = (0..20000)
        .map(|_| f32::from_bits(rng.next_u64() as u32))
        .collect();
    v.extend((0..5000).map(|_| rng.normal() as f32 * 1e-5)); // f16 subnormals
    v.extend((0..2000).map(|i| 65504.0 + i as f32 * 0.01)); // around the f16 max and its tie at 65520
    v.extend([
        0.0,
        -0.0,
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        65520.0,
        65519.99,
        f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        2f32.powi(-25),
        2f32.powi(-24) * 1.5,
        1.0 + 2f32.powi(-8),
    ]);
    v.push(3.0); // odd length
    v
}

fn same_bits(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

#[test]
fn casts_round_to_nearest_even_on_every_path() {
    let v = cast_inputs();
    let n = v.len();
    let contexts = [
        ("default", common::gpu()),
        ("packed", gpu_packed()),
        ("gpu-tuned", gpu_packed_gpu_tuned()),
    ];
    for (path, gpu) in contexts {
        let x = Tensor::from_slice(gpu, &v, &[n]).unwrap();
        let h = x.cast(gpu, DType::F16).unwrap();
        let b = x.cast(gpu, DType::BF16).unwrap();
        let hv: Vec<f16> = h.read(gpu).unwrap();
        let bv: Vec<bf16> = b.read(gpu).unwrap();
        for i in 0..n {
            let (wh, wb) = (f16::from_f32(v[i]), bf16::from_f32(v[i]));
            assert!(
                same_bits(hv[i].to_f32(), wh.to_f32()),
                "{path} f16({:e} = {:#x}): got {:#x}, want {:#x}",
                v[i],
                v[i].to_bits(),
                hv[i].to_bits(),
                wh.to_bits()
            );
            assert!(
                same_bits(bv[i].to_f32(), wb.to_f32()),
                "{path} bf16({:e}): got {:#x}, want {:#x}",
                v[i],
                bv[i].to_bits(),
                wb.to_bits()
            );
        }
        // Widening is exact, and half -> half goes through f32.
        assert!(h
            .to_vec(gpu)
            .unwrap()
            .iter()
            .zip(&hv)
            .all(|(a, b)| same_bits(*a, b.to_f32())));
        let hb: Vec<bf16> = h.cast(gpu, DType::BF16).unwrap().read(gpu).unwrap();
        let back = h.cast(gpu, DType::F32).unwrap().to_vec(gpu).unwrap();
        for i in 0..n {
            assert!(
                same_bits(hb[i].to_f32(), bf16::from_f32(hv[i].to_f32()).to_f32()),
                "{path} f16->bf16 {i}"
            );
            assert!(same_bits(back[i], hv[i].to_f32()), "{path} f16->f32 {i}");
        }
    }
}

#[test]
fn half_tensors_from_caller_buffers_and_in_chunks() {
    let gpu = common::gpu_small_bindings();
    // An odd count in a buffer of exactly the words it needs (not a multiple of 16): staged.
    let n = 4097 * 3;
    let mut rng = Rng::new(12);
    let (xh, xw) = halves::<f16>(&rng.normals(n, 0.0, 1.0));
    let buf = gpu.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: (n as u64 * 2).div_ceil(4) * 4,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut bytes = bytemuck::cast_slice::<f16, u8>(&xh).to_vec();
    bytes.resize(buf.size() as usize, 0);
    gpu.queue().write_buffer(&buf, 0, &bytes);
    let x = Tensor::from_buffer_dtype(gpu, buf, &[3, 4097], DType::F16).unwrap();
    let want = reference::layer_norm(&xw, 4097, None, None, 1e-5);
    let out = LayerNorm::new(&[4097]).forward(gpu, &x).unwrap();
    assert_ulp::<f16>("from_buffer odd", &out.y.to_vec(gpu).unwrap(), &want.y);
    // 64 KiB bindings: many chunks of rows, odd rows (chunks start on whole words).
    for d in [33, 100] {
        let rows = 3001;
        let (xh, xw) = halves::<bf16>(&rng.normals(rows * d, 1.0, 1.0));
        let x = Tensor::from_slice(gpu, &xh, &[rows, d]).unwrap();
        let want = reference::layer_norm(&xw, d, None, None, 1e-5);
        let out = LayerNorm::new(&[d]).forward(gpu, &x).unwrap();
        assert_ulp::<bf16>(
            &format!("chunked {d}"),
            &out.y.to_vec(gpu).unwrap(),
            &want.y,
        );
        // forward_add in chunks: fused (d = 100) and add-then-norm (d = 33).
        let (rh, rw) = halves::<bf16>(&rng.normals(rows * d, 0.0, 1.0));
        let r = Tensor::from_slice(gpu, &rh, &[rows, d]).unwrap();
        let out = RmsNorm::new(&[d])
            .eps(1e-5)
            .forward_add(gpu, &x, &r)
            .unwrap();
        let sum: Vec<bf16> = xw
            .iter()
            .zip(&rw)
            .map(|(a, b)| bf16::from_f32(a + b))
            .collect();
        assert_eq!(
            bits(&out.sum.read::<bf16>(gpu).unwrap()),
            bits(&sum),
            "chunked sum {d}"
        );
        let sw: Vec<f32> = sum.iter().map(|v| v.to_f32()).collect();
        let (want, _) = reference::rms_norm(&sw, d, None, 1e-5);
        assert_ulp::<bf16>(
            &format!("chunked add {d}"),
            &out.y.to_vec(gpu).unwrap(),
            &want,
        );
        let c = x
            .cast(gpu, DType::F16)
            .unwrap()
            .cast(gpu, DType::BF16)
            .unwrap();
        let back: Vec<bf16> = c.read(gpu).unwrap();
        let want: Vec<bf16> = xh
            .iter()
            .map(|v| bf16::from_f32(f16::from_f32(v.to_f32()).to_f32()))
            .collect();
        assert!(
            back.iter()
                .zip(&want)
                .all(|(a, b)| same_bits(a.to_f32(), b.to_f32())),
            "chunked casts {d}"
        );
    }
}

/// The sum's rounding at f16's top: 65504 + 8 stays 65504, + 16 (the tie at 65520) and + 32
/// round to Inf, on every path (native stores round with the device's conversion); that row's
/// y is NaN, the other row's is finite.
#[test]
fn forward_add_sums_that_overflow_f16_round_to_inf_in_their_row() {
    let d = 8;
    let x: Vec<f16> = vec![f16::MAX; 2 * d];
    let r: Vec<f16> = [8.0f32, 16.0, 32.0, -65504.0, 0.0, -1.0, 1.0, -8.0]
        .iter()
        .chain(&[
            -65504.0f32,
            -65000.0,
            -60000.0,
            -65504.0,
            -65503.0,
            -65500.0,
            -65400.0,
            -65504.0,
        ])
        .map(|&v| f16::from_f32(v))
        .collect();
    let sum: Vec<f16> = x
        .iter()
        .zip(&r)
        .map(|(a, b)| f16::from_f32(a.to_f32() + b.to_f32()))
        .collect();
    assert!(sum[1].is_infinite() && sum[2].is_infinite() && sum[0] == f16::MAX);
    let sw: Vec<f32> = sum.iter().map(|v| v.to_f32()).collect();
    let want = reference::layer_norm(&sw, d, None, None, 1e-5);
    for (path, gpu) in paths() {
        let xt = Tensor::from_slice(gpu, &x, &[2, d]).unwrap();
        let rt = Tensor::from_slice(gpu, &r, &[2, d]).unwrap();
        let out = LayerNorm::new(&[d]).forward_add(gpu, &xt, &rt).unwrap();
        let got: Vec<f16> = out.sum.read(gpu).unwrap();
        assert_eq!(bits(&got), bits(&sum), "{path}");
        let y = out.y.to_vec(gpu).unwrap();
        assert!(y[..d].iter().all(|v| v.is_nan()), "{path}: {y:?}");
        assert_ulp::<f16>(&format!("overflow row {path}"), &y[d..], &want.y[d..]);
    }
}
