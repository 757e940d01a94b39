//! RMSNorm forward against the f64 reference, on every variant, every context and the chunked
//! path; ONNX axes, both default eps values, and bad input.

mod common;

use common::{
    assert_bits_eq, assert_close, exact_empty, exact_tensor, gpu, gpu_small_bindings, gpus, t, Rng,
};
use fused_norm::{reference, Gpu, LnVariant, NormError, RmsNorm, RmsNormOutput, Tensor};

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

/// The variants worth running on many rows: the policy's, one thread per row, and split rows.
fn few_variants() -> Vec<LnVariant> {
    vec![
        LnVariant::Auto,
        LnVariant::Rows { threads_per_row: 1 },
        LnVariant::SplitRow,
    ]
}

struct Case {
    x: Vec<f32>,
    shape: Vec<usize>,
    /// Trailing dims normalized (`RmsNorm::new(&shape[len - norm_dims..])`).
    norm_dims: usize,
    weight: Option<Vec<f32>>,
    eps: f32,
}

impl Case {
    fn new(x: Vec<f32>, shape: &[usize]) -> Case {
        Case {
            x,
            shape: shape.to_vec(),
            norm_dims: 1,
            weight: None,
            eps: 1e-6,
        }
    }
    fn norm_shape(&self) -> &[usize] {
        &self.shape[self.shape.len() - self.norm_dims..]
    }
    fn d(&self) -> usize {
        self.norm_shape().iter().product()
    }
    fn reference(&self) -> (Vec<f64>, Vec<f64>) {
        let (y, st) = reference::rms_norm(
            &self.x,
            self.d(),
            self.weight.as_deref(),
            f64::from(self.eps),
        );
        (y, st.rstd)
    }
}

fn module(gpu: &Gpu, c: &Case, variant: LnVariant) -> RmsNorm {
    let mut rms = RmsNorm::new(c.norm_shape()).eps(c.eps).variant(variant);
    if let Some(w) = &c.weight {
        rms = rms.weight(Tensor::from_slice(gpu, w, c.norm_shape()).unwrap());
    }
    rms
}

/// y and rstd of one call; checks rstd's shape (`x.shape[..axis] ++ [1; trailing]`).
fn run(gpu: &Gpu, c: &Case, variant: LnVariant) -> (Vec<f32>, Vec<f32>) {
    let x = Tensor::from_slice(gpu, &c.x, &c.shape).unwrap();
    let out = module(gpu, c, variant).forward(gpu, &x).unwrap();
    let lead = c.shape.len() - c.norm_dims;
    let mut stat_shape = c.shape[..lead].to_vec();
    stat_shape.extend(std::iter::repeat_n(1, c.norm_dims));
    assert_eq!(out.y.shape(), &c.shape[..]);
    assert_eq!(out.rstd.shape(), &stat_shape[..]);
    (out.y.to_vec(gpu).unwrap(), out.rstd.to_vec(gpu).unwrap())
}

/// Runs the case on the given variants of every context and compares y and rstd.
fn check_variants(c: &Case, vs: &[LnVariant]) {
    let (want_y, want_rstd) = c.reference();
    for (path, g) in gpus() {
        for &v in vs {
            let (y, rstd) = run(g, c, v);
            let what = format!("{:?} {path} {v:?}", c.shape);
            assert_close(&format!("{what} y"), &y, &want_y);
            assert_close(&format!("{what} rstd"), &rstd, &want_rstd);
        }
    }
}

fn check(c: &Case) {
    check_variants(c, &variants());
}

#[test]
fn row_lengths_that_break_weak_kernels() {
    let mut rng = Rng::new(101);
    for d in [1usize, 2, 3, 7, 1000, 4097, 65537] {
        for rows in [1usize, 3, 65] {
            if d * rows > 300_000 {
                continue;
            }
            let mut c = Case::new(rng.normals(rows * d, 0.5, 2.0), &[rows, d]);
            c.weight = Some(rng.normals(d, 1.0, 0.5));
            check(&c);
        }
    }
}

#[test]
fn more_than_65535_rows() {
    let mut rng = Rng::new(102);
    for (rows, d) in [(70000usize, 3usize), (65536, 1), (65537, 4)] {
        let mut c = Case::new(rng.normals(rows * d, -1.0, 3.0), &[rows, d]);
        c.weight = Some(rng.normals(d, 1.0, 0.5));
        check_variants(&c, &few_variants());
    }
}

#[test]
fn rows_of_large_and_tiny_values_keep_full_precision() {
    // No centring: a row around 1e4..1e6 has mean(x^2) ~ offset^2 and y ~ +-1; rows of 1e15 square
    // to 1e30 (sums stay below f32::MAX); rows of 1e-15 square to 1e-30 (still normal) with eps 0.
    let mut rng = Rng::new(103);
    for (offset, std, eps) in [
        (1e4, 1.0, 1e-6),
        (-1e4, 1.0, 1e-6),
        (1e5, 1.0, 1e-6),
        (1e6, 1.0, 1e-6),
        (0.0, 1e15, 1e-6),
        (3e15, 1e15, 1e-6),
        (0.0, 1e-15, 0.0),
    ] {
        for d in [3usize, 1000, 4097] {
            let mut c = Case::new(rng.normals(5 * d, offset, std), &[5, d]);
            c.weight = Some(rng.normals(d, 1.0, 0.5));
            c.eps = eps;
            check(&c);
        }
    }
}

#[test]
fn mixed_scales_in_one_tensor_stay_per_row() {
    // Rows of very different magnitudes side by side: each row's scale is its own.
    let mut rng = Rng::new(104);
    for d in [3usize, 1000, 4097] {
        let mut x = Vec::new();
        for scale in [1e-3, 1.0, 1e3, 1e6, 1e12] {
            x.extend(rng.normals(d, scale, scale));
        }
        check(&Case::new(x, &[5, d]));
    }
}

#[test]
fn zero_rows_give_zero_and_the_rstd_of_eps() {
    let mut rng = Rng::new(105);
    for d in [1usize, 3, 1000, 4097] {
        let mut x = rng.normals(3 * d, 0.0, 1.0);
        x[d..2 * d].fill(0.0);
        let mut c = Case::new(x, &[3, d]);
        c.weight = Some(rng.normals(d, 1.0, 1.0));
        c.eps = 1e-5;
        let (want_y, want_rstd) = c.reference();
        for (path, g) in gpus() {
            for v in variants() {
                let (y, rstd) = run(g, &c, v);
                let what = format!("{path} {v:?} d={d}");
                assert!(y[d..2 * d].iter().all(|&v| v == 0.0), "{what}: zero row");
                assert_close(&format!("{what} y"), &y, &want_y);
                assert_close(&format!("{what} rstd"), &rstd, &want_rstd);
            }
        }
    }
}

#[test]
fn non_finite_values_stay_in_their_row() {
    let mut rng = Rng::new(106);
    for d in [1usize, 3, 1000, 4097] {
        let rows = 6;
        let mut x = rng.normals(rows * d, 0.0, 1.0);
        x[d + d / 2] = f32::NAN;
        x[3 * d + d / 3] = f32::INFINITY;
        x[5 * d] = f32::NEG_INFINITY;
        let c = Case::new(x, &[rows, d]);
        let (want_y, want_rstd) = c.reference();
        for (path, g) in gpus() {
            for v in variants() {
                let (y, rstd) = run(g, &c, v);
                for row in 0..rows {
                    let r = row * d..(row + 1) * d;
                    let what = format!("{path} {v:?} d={d} row {row}");
                    match row {
                        1 => {
                            assert!(y[r].iter().all(|v| v.is_nan()), "{what}: all NaN");
                            assert!(rstd[row].is_nan(), "{what}: rstd {}", rstd[row]);
                        }
                        // mean(x^2) = Inf: rstd 0, finite values give 0 and the Inf gives NaN
                        // (PyTorch's x * rsqrt(inf)); a NaN instead of a 0 is accepted.
                        3 | 5 => {
                            for i in r {
                                assert!(
                                    y[i].is_nan() || f64::from(y[i]) == want_y[i],
                                    "{what}: y[{i}] = {}, want {} or NaN",
                                    y[i],
                                    want_y[i]
                                );
                                assert!(!y[i].is_infinite(), "{what}: y[{i}] = {}", y[i]);
                            }
                        }
                        _ => {
                            assert_close(&what, &y[r.clone()], &want_y[r]);
                            assert_close(
                                &format!("{what} rstd"),
                                &rstd[row..row + 1],
                                &want_rstd[row..row + 1],
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn weight_is_optional() {
    let mut rng = Rng::new(107);
    for d in [3usize, 768, 4097] {
        let x = rng.normals(9 * d, 1.0, 2.0);
        let w = rng.normals(d, 1.0, 0.5);
        for wo in [None, Some(w)] {
            let mut c = Case::new(x.clone(), &[9, d]);
            c.weight = wo;
            check(&c);
        }
    }
}

#[test]
fn several_trailing_dims() {
    let mut rng = Rng::new(108);
    let shape = [3usize, 4, 5, 6];
    let x = rng.normals(360, 2.0, 1.5);
    for k in [1usize, 2, 3, 4] {
        let mut c = Case::new(x.clone(), &shape);
        c.norm_dims = k;
        c.weight = Some(rng.normals(c.d(), 1.0, 0.3));
        check(&c);
    }
}

#[test]
fn from_axis_normalizes_the_dims_from_axis() {
    // ONNX RMSNormalization(axis): over dims axis..; rstd shaped x.shape[..axis] ++ [1; ...].
    // Axis 1 of [2, 3, 4] normalizes 12 values, rstd [2, 1, 1].
    let mut rng = Rng::new(109);
    let shape = [2usize, 3, 4];
    let x = rng.normals(24, 0.5, 1.5);
    for (path, g) in gpus() {
        let xt = Tensor::from_slice(g, &x, &shape).unwrap();
        for (axis, from, stat_shape) in [
            (0isize, 0usize, [1usize, 1, 1]),
            (1, 1, [2, 1, 1]),
            (2, 2, [2, 3, 1]),
            (-1, 2, [2, 3, 1]),
            (-2, 1, [2, 1, 1]),
            (-3, 0, [1, 1, 1]),
        ] {
            let d: usize = shape[from..].iter().product();
            let w = rng.normals(d, 1.0, 0.3);
            let out = RmsNorm::from_axis(axis)
                .eps(1e-6)
                .weight(Tensor::from_slice(g, &w, &shape[from..]).unwrap())
                .forward(g, &xt)
                .unwrap();
            let what = format!("{path} axis {axis}");
            assert_eq!(out.y.shape(), &shape, "{what}");
            assert_eq!(out.rstd.shape(), &stat_shape, "{what}");
            let (want_y, st) = reference::rms_norm(&x, d, Some(&w), 1e-6);
            assert_eq!(st.rstd.len(), out.rstd.numel(), "{what}");
            assert_close(&format!("{what} y"), &out.y.to_vec(g).unwrap(), &want_y);
            assert_close(
                &format!("{what} rstd"),
                &out.rstd.to_vec(g).unwrap(),
                &st.rstd,
            );
        }
        // normalized_shape [3, 4] is axis 1.
        let out = RmsNorm::new(&[3, 4]).forward(g, &xt).unwrap();
        assert_eq!(out.rstd.shape(), &[2, 1, 1], "{path} new(&[3, 4])");
    }
}

#[test]
fn default_eps_is_f32_epsilon_for_new_and_1e5_for_from_axis() {
    // Rows with mean(x^2) ~ 1e-6 so that eps = f32::EPSILON and eps = 1e-5 give results far
    // more than TOL apart.
    let mut rng = Rng::new(110);
    let d = 64;
    let x = rng.normals(4 * d, 0.0, 1e-3);
    let (torch_y, torch) = reference::rms_norm(&x, d, None, f64::from(f32::EPSILON));
    let (onnx_y, onnx) = reference::rms_norm(&x, d, None, 1e-5);
    assert!((torch.rstd[0] - onnx.rstd[0]).abs() / onnx.rstd[0] > 100.0 * common::TOL);
    for (path, g) in gpus() {
        let xt = Tensor::from_slice(g, &x, &[4, d]).unwrap();
        let out = RmsNorm::new(&[d]).forward(g, &xt).unwrap();
        assert_close(
            &format!("{path} new y"),
            &out.y.to_vec(g).unwrap(),
            &torch_y,
        );
        assert_close(
            &format!("{path} new rstd"),
            &out.rstd.to_vec(g).unwrap(),
            &torch.rstd,
        );
        let out = RmsNorm::from_axis(-1).forward(g, &xt).unwrap();
        assert_close(
            &format!("{path} from_axis y"),
            &out.y.to_vec(g).unwrap(),
            &onnx_y,
        );
        assert_close(
            &format!("{path} from_axis rstd"),
            &out.rstd.to_vec(g).unwrap(),
            &onnx.rstd,
        );
        // Setting the other's eps gives the other's result, bit for bit.
        let a = RmsNorm::new(&[d]).eps(1e-5).forward(g, &xt).unwrap();
        let b = RmsNorm::from_axis(-1).forward(g, &xt).unwrap();
        assert_bits_eq(
            &format!("{path} new.eps(1e-5) vs from_axis"),
            &a.y.to_vec(g).unwrap(),
            &b.y.to_vec(g).unwrap(),
        );
    }
}

#[test]
fn chunked_bindings_match_one_pass_bit_for_bit_and_the_reference() {
    // 64 KiB bindings: every tensor below goes in several chunks, with row starts that are not
    // aligned to the binding offset alignment.
    let mut rng = Rng::new(111);
    for (rows, d) in [(300usize, 1000usize), (40, 4097), (5000, 3), (2, 12000)] {
        let mut c = Case::new(rng.normals(rows * d, 100.0, 5.0), &[rows, d]);
        c.weight = Some(rng.normals(d, 1.0, 0.5));
        let (want_y, want_rstd) = c.reference();
        for v in variants() {
            let one = run(gpu(), &c, v);
            let chunked = run(gpu_small_bindings(), &c, v);
            let what = format!("{rows}x{d} {v:?}");
            assert_close(&format!("{what} chunked y"), &chunked.0, &want_y);
            assert_close(&format!("{what} chunked rstd"), &chunked.1, &want_rstd);
            assert_bits_eq(&format!("{what} y"), &chunked.0, &one.0);
            assert_bits_eq(&format!("{what} rstd"), &chunked.1, &one.1);
        }
    }
}

#[test]
fn same_input_gives_bit_identical_output() {
    let mut rng = Rng::new(112);
    for (rows, d) in [(512usize, 768usize), (4, 65537), (1000, 3)] {
        let mut c = Case::new(rng.normals(rows * d, 0.0, 1.0), &[rows, d]);
        c.weight = Some(rng.normals(d, 1.0, 0.5));
        for (path, g) in gpus() {
            for v in variants() {
                let a = run(g, &c, v);
                let b = run(g, &c, v);
                assert_bits_eq(&format!("{path} {v:?} y"), &a.0, &b.0);
                assert_bits_eq(&format!("{path} {v:?} rstd"), &a.1, &b.1);
            }
        }
    }
}

#[test]
fn encode_into_a_callers_encoder_and_buffers() {
    let mut rng = Rng::new(113);
    let (rows, d) = (16usize, 257usize);
    let x = rng.normals(rows * d, 0.0, 1.0);
    let w = rng.normals(d, 1.0, 0.5);
    let (want_y, want) = reference::rms_norm(&x, d, Some(&w), 1e-6);
    for (path, g) in gpus() {
        let xt = Tensor::from_slice(g, &x, &[rows, d]).unwrap();
        let out = RmsNormOutput {
            y: Tensor::empty(g, &[rows, d]).unwrap(),
            rstd: Tensor::empty(g, &[rows, 1]).unwrap(),
        };
        let mut enc = g.device().create_command_encoder(&Default::default());
        RmsNorm::new(&[d])
            .eps(1e-6)
            .weight(Tensor::from_slice(g, &w, &[d]).unwrap())
            .encode(g, &mut enc, &xt, &out)
            .unwrap();
        g.queue().submit([enc.finish()]);
        assert_close(&format!("{path} y"), &out.y.to_vec(g).unwrap(), &want_y);
        assert_close(
            &format!("{path} rstd"),
            &out.rstd.to_vec(g).unwrap(),
            &want.rstd,
        );
        // The input is untouched.
        assert_bits_eq(&format!("{path} x"), &xt.to_vec(g).unwrap(), &x);
    }
}

#[test]
fn calls_recorded_in_one_encoder_keep_their_own_parameters() {
    // Two shapes, eps values and weights, then a third call reading the first one's output,
    // all in one encoder and one submit.
    let mut rng = Rng::new(114);
    let (xa, xb) = (
        rng.normals(5 * 7, 1.0, 2.0),
        rng.normals(3 * 1000, -2.0, 0.5),
    );
    let (wa, wb) = (rng.normals(7, 1.0, 0.5), rng.normals(1000, 1.0, 0.5));
    for (path, g) in gpus() {
        let ta = Tensor::from_slice(g, &xa, &[5, 7]).unwrap();
        let tb = Tensor::from_slice(g, &xb, &[3, 1000]).unwrap();
        let out = |shape: &[usize], rows: usize| RmsNormOutput {
            y: Tensor::empty(g, shape).unwrap(),
            rstd: Tensor::empty(g, &[rows, 1]).unwrap(),
        };
        let (oa, ob, oc) = (out(&[5, 7], 5), out(&[3, 1000], 3), out(&[5, 7], 5));
        let a = RmsNorm::new(&[7])
            .eps(1e-3)
            .weight(Tensor::from_slice(g, &wa, &[7]).unwrap());
        let b = RmsNorm::new(&[1000])
            .eps(1e-6)
            .weight(Tensor::from_slice(g, &wb, &[1000]).unwrap());
        let mut enc = g.device().create_command_encoder(&Default::default());
        a.encode(g, &mut enc, &ta, &oa).unwrap();
        b.encode(g, &mut enc, &tb, &ob).unwrap();
        RmsNorm::from_axis(-1)
            .encode(g, &mut enc, &oa.y, &oc)
            .unwrap();
        g.queue().submit([enc.finish()]);
        let ya = oa.y.to_vec(g).unwrap();
        let checks = [
            ("a", &oa, reference::rms_norm(&xa, 7, Some(&wa), 1e-3)),
            ("b", &ob, reference::rms_norm(&xb, 1000, Some(&wb), 1e-6)),
            (
                "a then from_axis",
                &oc,
                reference::rms_norm(&ya, 7, None, 1e-5),
            ),
        ];
        for (name, o, (want_y, st)) in checks {
            assert_close(
                &format!("{path} {name} y"),
                &o.y.to_vec(g).unwrap(),
                &want_y,
            );
            assert_close(
                &format!("{path} {name} rstd"),
                &o.rstd.to_vec(g).unwrap(),
                &st.rstd,
            );
        }
    }
}

#[test]
fn caller_buffers_of_exactly_numel_floats() {
    // x, weight, y and rstd on buffers of exactly numel * 4 bytes (numel odd: no padding for a
    // vec4 to run into).
    let mut rng = Rng::new(116);
    for (rows, d) in [(5usize, 7usize), (3, 1001), (7, 4)] {
        let x = rng.normals(rows * d, 0.5, 1.5);
        let w = rng.normals(d, 1.0, 0.5);
        let (want_y, st) = reference::rms_norm(&x, d, Some(&w), 1e-6);
        for (path, g) in gpus() {
            let xt = exact_tensor(g, &x, &[rows, d]);
            let rms = RmsNorm::new(&[d])
                .eps(1e-6)
                .weight(exact_tensor(g, &w, &[d]));
            let what = format!("{path} {rows}x{d}");
            let out = rms.forward(g, &xt).unwrap();
            assert_close(
                &format!("{what} forward y"),
                &out.y.to_vec(g).unwrap(),
                &want_y,
            );
            let out = RmsNormOutput {
                y: exact_empty(g, &[rows, d]),
                rstd: exact_empty(g, &[rows, 1]),
            };
            let mut enc = g.encoder();
            rms.encode(g, &mut enc, &xt, &out).unwrap();
            g.submit_wait(enc).unwrap();
            assert_close(&format!("{what} y"), &out.y.to_vec(g).unwrap(), &want_y);
            assert_close(
                &format!("{what} rstd"),
                &out.rstd.to_vec(g).unwrap(),
                &st.rstd,
            );
            assert_bits_eq(&format!("{what} x"), &xt.to_vec(g).unwrap(), &x);
        }
    }
}

#[test]
fn tensor_over_128_mib() {
    let (rows, d) = (8200usize, 4097usize);
    assert!(rows * d * 4 > 128 << 20);
    let mut rng = Rng::new(115);
    let mut c = Case::new(rng.normals(rows * d, 3.0, 1.0), &[rows, d]);
    c.weight = Some(rng.normals(d, 1.0, 0.2));
    let (want_y, want_rstd) = c.reference();
    let (y, rstd) = run(gpu(), &c, LnVariant::Auto);
    assert_close("y", &y, &want_y);
    assert_close("rstd", &rstd, &want_rstd);
}

#[test]
fn plan_names_the_kernels_and_honours_forcing() {
    for (path, g) in gpus() {
        let auto = RmsNorm::new(&[4096]).plan(g, &[8, 4096]).unwrap();
        let rows = auto.rows.as_ref().expect("RMSNorm runs the rows family");
        assert_ne!(rows.variant, LnVariant::Auto, "{path} {auto}");
        assert!(
            !auto.kernels.is_empty() && !auto.reason.is_empty(),
            "{path}"
        );
        let shown = auto.to_string();
        assert!(
            auto.kernels.iter().all(|k| shown.contains(k)),
            "{path}: {shown}"
        );
        let forced = RmsNorm::new(&[4096])
            .variant(LnVariant::SplitRow)
            .plan(g, &[8, 4096])
            .unwrap();
        assert_eq!(forced.rows.unwrap().variant, LnVariant::SplitRow, "{path}");
        // Planning validates like a call does.
        assert!(RmsNorm::new(&[4096]).plan(g, &[8, 4095]).is_err(), "{path}");
    }
}

#[test]
fn bad_input_is_a_norm_error_not_a_panic() {
    let g = gpu();
    let x = t(g, &[4, 6]);
    let shape_err = |r: Result<RmsNormOutput, NormError>, what: &str| {
        let e = r.unwrap_err();
        assert!(matches!(e, NormError::Shape(_)), "{what}: {e}");
    };
    // normalized_shape that is not x's trailing dims, empty, or with a zero.
    shape_err(RmsNorm::new(&[5]).forward(g, &x), "[5]");
    shape_err(RmsNorm::new(&[2, 4, 6]).forward(g, &x), "[2, 4, 6]");
    shape_err(RmsNorm::new(&[]).forward(g, &x), "[]");
    shape_err(RmsNorm::new(&[0]).forward(g, &x), "[0]");
    // Axes out of range.
    shape_err(RmsNorm::from_axis(2).forward(g, &x), "axis 2");
    shape_err(RmsNorm::from_axis(-3).forward(g, &x), "axis -3");
    // A zero dim: refused by the tensor, and by plan.
    assert!(matches!(
        Tensor::empty(g, &[2, 3, 0]),
        Err(NormError::Shape(_))
    ));
    for (rms, shape) in [
        (RmsNorm::new(&[3]), [2usize, 0, 3]),
        (RmsNorm::from_axis(-1), [2, 3, 0]),
        (RmsNorm::from_axis(1), [0, 3, 4]),
    ] {
        let e = rms.plan(g, &shape).unwrap_err();
        assert!(matches!(e, NormError::Shape(_)), "{shape:?}: {e}");
    }
    // Weight of another length than the normalized size.
    shape_err(RmsNorm::new(&[6]).weight(t(g, &[5])).forward(g, &x), "w 5");
    shape_err(
        RmsNorm::new(&[6]).weight(t(g, &[24])).forward(g, &x),
        "w 24",
    );
    shape_err(
        RmsNorm::from_axis(0).weight(t(g, &[6])).forward(g, &x),
        "axis 0, w 6",
    );
    // eps negative, NaN, Inf.
    for eps in [-1e-5f32, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let e = RmsNorm::new(&[6]).eps(eps).forward(g, &x).unwrap_err();
        assert!(matches!(e, NormError::InvalidArgument(_)), "eps {eps}: {e}");
        let e = RmsNorm::from_axis(-1)
            .eps(eps)
            .plan(g, &[4, 6])
            .unwrap_err();
        assert!(matches!(e, NormError::InvalidArgument(_)), "eps {eps}: {e}");
    }
    // The device still works afterwards.
    assert!(RmsNorm::new(&[6]).forward(g, &x).is_ok());
}

#[test]
fn tensors_from_another_device() {
    let g = gpu();
    let other = Gpu::new().unwrap();
    let x = t(g, &[2, 4]);
    let e = RmsNorm::new(&[4])
        .forward(g, &t(&other, &[2, 4]))
        .unwrap_err();
    assert_eq!(e, NormError::WrongDevice("x"));
    let e = RmsNorm::new(&[4])
        .weight(t(&other, &[4]))
        .forward(g, &x)
        .unwrap_err();
    assert!(matches!(e, NormError::WrongDevice(_)), "{e}");
    let out = RmsNormOutput {
        y: t(&other, &[2, 4]),
        rstd: t(g, &[2, 1]),
    };
    let mut enc = g.device().create_command_encoder(&Default::default());
    let e = RmsNorm::new(&[4])
        .encode(g, &mut enc, &x, &out)
        .unwrap_err();
    assert!(matches!(e, NormError::WrongDevice(_)), "{e}");
}

#[test]
fn encode_refuses_wrong_sizes_and_aliasing() {
    let g = gpu();
    let x = t(g, &[4, 8]);
    let rms = RmsNorm::new(&[8]);
    let mut enc = g.device().create_command_encoder(&Default::default());
    for (y, rstd) in [
        ([4usize, 7], [4usize, 1]),
        ([4, 8], [3, 1]),
        ([4, 8], [8, 1]),
    ] {
        let out = RmsNormOutput {
            y: t(g, &y),
            rstd: t(g, &rstd),
        };
        let e = rms.encode(g, &mut enc, &x, &out).unwrap_err();
        assert!(
            matches!(e, NormError::Shape(_)),
            "y {y:?} rstd {rstd:?}: {e}"
        );
    }
    // y or rstd sharing x's buffer.
    let out = RmsNormOutput {
        y: x.clone(),
        rstd: t(g, &[4, 1]),
    };
    let e = rms.encode(g, &mut enc, &x, &out).unwrap_err();
    assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
    let x4 = t(g, &[4, 1]);
    let out = RmsNormOutput {
        y: t(g, &[4, 1]),
        rstd: x4.clone(),
    };
    let e = RmsNorm::new(&[1])
        .encode(g, &mut enc, &x4, &out)
        .unwrap_err();
    assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
    // y and rstd the same buffer; rstd sharing the weight's buffer.
    let out = RmsNormOutput {
        y: t(g, &[4, 1]),
        rstd: t(g, &[4, 1]),
    };
    let same = RmsNormOutput {
        y: out.y.clone(),
        rstd: out.y.clone(),
    };
    let e = RmsNorm::new(&[1])
        .encode(g, &mut enc, &x4, &same)
        .unwrap_err();
    assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
    let w = t(g, &[4]);
    let x44 = t(g, &[4, 4]);
    let out = RmsNormOutput {
        y: t(g, &[4, 4]),
        rstd: w.reshape(&[4, 1]).unwrap(),
    };
    let e = RmsNorm::new(&[4])
        .weight(w)
        .encode(g, &mut enc, &x44, &out)
        .unwrap_err();
    assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
    // Nothing was recorded that breaks the encoder, and x is unchanged.
    g.queue().submit([enc.finish()]);
    assert_eq!(
        x.to_vec(g).unwrap(),
        (0..32).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>()
    );
}

/// Long rows on a CPU adapter with subgroups take a subgroup each and their sum of squares from
/// one read of x (chunks of 32 values, merged), groups of 4 rows sharing each vec4 of the weight;
/// 42 rows leave the last group half empty. Shorter rows keep the plain sum of squares. Large
/// and tiny scales against the f64 reference, on every context.
#[test]
fn long_rows_take_their_sum_of_squares_from_one_read() {
    let g = gpu();
    let d = 65536;
    if g.adapter_info().device_type == wgpu::DeviceType::Cpu && g.capabilities().subgroups {
        let w = Tensor::from_slice(g, &vec![1.0; d], &[d]).unwrap();
        let plan = RmsNorm::new(&[d]).weight(w).plan(g, &[42, d]).unwrap();
        let rp = plan.rows.as_ref().unwrap();
        assert!(rp.one_read && rp.rows_per_group == 4, "{plan}");
        let short = RmsNorm::new(&[1024]).plan(g, &[4096, 1024]).unwrap();
        assert!(!short.rows.as_ref().unwrap().one_read, "{short}");
    }
    let mut rng = Rng::new(31);
    for (rows, scale) in [(42usize, 1e4f32), (8, 1e-3)] {
        let x: Vec<f32> = rng
            .normals(rows * d, 0.5, 1.0)
            .iter()
            .map(|v| v * scale)
            .collect();
        let mut c = Case::new(x, &[rows, d]);
        c.weight = Some(rng.normals(d, 1.0, 0.5));
        check_variants(&c, &[LnVariant::Auto]);
    }
}
