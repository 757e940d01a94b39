//! GroupNorm forward against the f64 reference in both layouts, on every context and the
//! chunked path; its one-group case against LayerNorm bit for bit, and bad input.

mod common;

use common::{
    assert_bits_eq, assert_close, bits_mismatch, exact_empty, exact_tensor, gpu,
    gpu_small_bindings, gpus, group_index, grouped_data, layout_shape, ncs, to_channels_first,
    to_channels_last, Rng,
};
use fused_norm::{
    reference, Gpu, GroupNorm, GroupNormOutput, LayerNorm, Layout, NormError, NormOutput, Tensor,
};

/// (N, C, spatial dims, groups).
type Dims = (usize, usize, &'static [usize], usize);

const LAYOUTS: [Layout; 2] = [Layout::ChannelsFirst, Layout::ChannelsLast];

#[derive(Clone)]
struct Case {
    x: Vec<f32>,
    shape: Vec<usize>,
    layout: Layout,
    groups: usize,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    eps: f32,
}

impl Case {
    /// `grouped_data` around +-offset, laid out in `layout`; no affine, eps 1e-5.
    fn new(
        rng: &mut Rng,
        (n, c, spatial, groups): (usize, usize, &[usize], usize),
        layout: Layout,
        offset: f64,
    ) -> Case {
        let s: usize = spatial.iter().product();
        let mut x = grouped_data(rng, n, c, s, groups, offset);
        if layout == Layout::ChannelsLast {
            x = to_channels_last(&x, n, c, s);
        }
        Case {
            x,
            shape: layout_shape(n, c, spatial, layout),
            layout,
            groups,
            weight: None,
            bias: None,
            eps: 1e-5,
        }
    }
    /// Random per-channel weight and bias.
    fn affine(mut self, rng: &mut Rng) -> Case {
        let c = self.c();
        self.weight = Some(rng.normals(c, 1.0, 0.5));
        self.bias = Some(rng.normals(c, 0.0, 1.0));
        self
    }
    fn c(&self) -> usize {
        ncs(&self.shape, self.layout).1
    }
    fn cl(&self) -> bool {
        self.layout == Layout::ChannelsLast
    }
    fn reference(&self) -> (Vec<f64>, reference::GroupStats) {
        let (_, c, s) = ncs(&self.shape, self.layout);
        reference::group_norm(
            &self.x,
            c,
            s,
            self.groups,
            self.cl(),
            self.weight.as_deref(),
            self.bias.as_deref(),
            f64::from(self.eps),
        )
    }
    fn what(&self, path: &str) -> String {
        format!(
            "{:?} {:?} G={} {path}",
            self.shape, self.layout, self.groups
        )
    }
}

fn module(gpu: &Gpu, c: &Case) -> GroupNorm {
    let ch = c.c();
    let mut gn = GroupNorm::new(c.groups, ch).unwrap().eps(c.eps);
    if let Some(w) = &c.weight {
        gn = gn.weight(Tensor::from_slice(gpu, w, &[ch]).unwrap());
    }
    if let Some(b) = &c.bias {
        gn = gn.bias(Tensor::from_slice(gpu, b, &[ch]).unwrap());
    }
    gn
}

/// y, mean and rstd of one call; checks the shapes (y like x, statistics `[N, G]`).
fn run(gpu: &Gpu, c: &Case) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = Tensor::from_slice(gpu, &c.x, &c.shape).unwrap();
    let out = module(gpu, c).forward(gpu, &x, c.layout).unwrap();
    let stats = [c.shape[0], c.groups];
    assert_eq!(out.y.shape(), &c.shape[..], "{}", c.what("y shape"));
    assert_eq!(out.mean.shape(), &stats, "{}", c.what("mean shape"));
    assert_eq!(out.rstd.shape(), &stats, "{}", c.what("rstd shape"));
    (
        out.y.to_vec(gpu).unwrap(),
        out.mean.to_vec(gpu).unwrap(),
        out.rstd.to_vec(gpu).unwrap(),
    )
}

/// Runs the case on the given contexts and compares y, mean and rstd with the reference.
fn check_on(on: &[(&str, &Gpu)], c: &Case) {
    let (want_y, st) = c.reference();
    for &(path, g) in on {
        let (y, mean, rstd) = run(g, c);
        let what = c.what(path);
        assert_close(&format!("{what} y"), &y, &want_y);
        assert_close(&format!("{what} mean"), &mean, &st.mean);
        assert_close(&format!("{what} rstd"), &rstd, &st.rstd);
    }
}

/// Every context in `gpus()`.
fn check(c: &Case) {
    check_on(&gpus(), c);
}

#[test]
fn group_lengths_that_break_weak_kernels() {
    // (N, C, spatial, groups): group lengths (C / G * spatial) 1, 3, 1000, 4097 and 65537.
    let mut rng = Rng::new(201);
    let shapes: [Dims; 15] = [
        (3, 4, &[], 4),
        (2, 5, &[1, 1], 5),
        (4, 3, &[], 1),
        (2, 6, &[1], 2),
        (3, 2, &[3], 2),
        (2, 40, &[5, 5], 1),
        (2, 20, &[10, 10], 2),
        (2, 17, &[241], 1),
        (3, 1, &[4097], 1),
        (1, 3, &[65537], 3),
        (2, 1, &[65537], 1),
        // Many channels per group: 125 and 241 (odd) channels of 3 and 2 positions.
        (2, 1000, &[3], 8),
        (2, 4097, &[2], 17),
        // Long groups of several channels (split rows whose segments cross channels), with runs
        // that are and are not whole vec4s.
        (1, 6, &[30001], 2),
        (1, 4, &[16384], 1),
    ];
    for dims in shapes {
        for layout in LAYOUTS {
            check(&Case::new(&mut rng, dims, layout, 0.5).affine(&mut rng));
        }
    }
}

#[test]
fn more_than_65535_groups_or_rows() {
    // 140000 and 198000 (sample, group) statistics; channels-last, 40000 and 75000 rows of
    // channels.
    let mut rng = Rng::new(202);
    let shapes: [Dims; 3] = [(70000, 4, &[], 2), (66000, 3, &[], 3), (2, 6, &[20000], 3)];
    for dims in shapes {
        for layout in LAYOUTS {
            check(&Case::new(&mut rng, dims, layout, 1.0).affine(&mut rng));
        }
    }
}

#[test]
fn group_means_of_1e4_to_1e6_keep_full_precision() {
    let mut rng = Rng::new(203);
    let shapes: [Dims; 5] = [
        (3, 6, &[7, 7], 3),
        (2, 4, &[1000], 2),
        (2, 3, &[4097], 1),
        (2, 10, &[3], 10),
        (1, 6, &[30001], 2),
    ];
    for offset in [1e4, -1e4, 1e5, 1e6] {
        for dims in shapes {
            for layout in LAYOUTS {
                let mut c = Case::new(&mut rng, dims, layout, offset);
                c.bias = Some(rng.normals(c.c(), 0.0, 1.0));
                check(&c);
            }
        }
    }
}

#[test]
fn a_constant_group_gives_bias_exactly_and_its_mean() {
    let mut rng = Rng::new(204);
    let shapes: [Dims; 6] = [
        (2, 6, &[7, 7], 3),
        (2, 8, &[3, 5], 4),
        (2, 4, &[4097], 2),
        (1, 4, &[65537], 2),
        (3, 5, &[], 5),
        (2, 8, &[4, 4], 2),
    ];
    let constants = [0.0f32, 3.5, -1e6, 12345.678];
    for dims in shapes {
        for layout in LAYOUTS {
            let mut c = Case::new(&mut rng, dims, layout, 2.0).affine(&mut rng);
            let (_, ch, s) = ncs(&c.shape, layout);
            let stats = c.shape[0] * c.groups;
            // Statistic k is constant when k % 2 == 0 (the odd ones stay random).
            let constant = |k: usize| k.is_multiple_of(2).then(|| constants[(k / 2) % 4]);
            let (groups, cl) = (c.groups, c.cl());
            for (i, v) in c.x.iter_mut().enumerate() {
                if let Some(k) = constant(group_index(i, ch, s, groups, cl)) {
                    *v = k;
                }
            }
            let (want_y, st) = c.reference();
            let bias = c.bias.clone().unwrap();
            for (path, g) in gpus() {
                let (y, mean, rstd) = run(g, &c);
                let what = c.what(path);
                for (i, &v) in y.iter().enumerate() {
                    let k = group_index(i, ch, s, c.groups, c.cl());
                    if constant(k).is_some() {
                        let b = bias[common::channel_index(i, ch, s, c.cl())];
                        assert_eq!(v.to_bits(), b.to_bits(), "{what}: y[{i}] = {v}, bias {b}");
                    } else {
                        assert_close(&format!("{what} y[{i}]"), &[v], &want_y[i..i + 1]);
                    }
                }
                assert_eq!(mean.len(), stats, "{what}");
                for (k, &m) in mean.iter().enumerate() {
                    if let Some(want) = constant(k) {
                        assert_eq!(m, want, "{what}: mean[{k}]");
                    }
                }
                assert_close(&format!("{what} mean"), &mean, &st.mean);
                assert_close(&format!("{what} rstd"), &rstd, &st.rstd);
            }
        }
    }
}

#[test]
fn non_finite_values_stay_in_their_group() {
    let mut rng = Rng::new(205);
    let shapes: [Dims; 5] = [
        (2, 6, &[7, 7], 3),
        (3, 4, &[1000], 2),
        (2, 3, &[20000], 3),
        (2, 15, &[3], 5),
        (6, 2, &[], 1),
    ];
    for dims in shapes {
        for layout in LAYOUTS {
            let mut c = Case::new(&mut rng, dims, layout, 1.0).affine(&mut rng);
            let (_, ch, s) = ncs(&c.shape, layout);
            let gi = |i: usize| group_index(i, ch, s, c.groups, layout == Layout::ChannelsLast);
            // NaN in statistic 1, +Inf in 3, -Inf in 4 (the 4th, 5th, ... of each).
            let bad = [
                (1usize, f32::NAN),
                (3, f32::INFINITY),
                (4, f32::NEG_INFINITY),
            ];
            for &(k, v) in &bad {
                let i = (0..c.x.len()).filter(|&i| gi(i) == k).nth(k % 3).unwrap();
                c.x[i] = v;
            }
            let (want_y, st) = c.reference();
            for (path, g) in gpus() {
                let (y, mean, rstd) = run(g, &c);
                let what = c.what(path);
                for (i, &v) in y.iter().enumerate() {
                    let k = gi(i);
                    if bad.iter().any(|b| b.0 == k) {
                        assert!(v.is_nan(), "{what}: y[{i}] = {v} in group {k} must be NaN");
                    } else {
                        assert_close(&format!("{what} y[{i}]"), &[v], &want_y[i..i + 1]);
                    }
                }
                for k in 0..mean.len() {
                    if bad.iter().any(|b| b.0 == k) {
                        assert!(mean[k].is_nan() || rstd[k].is_nan(), "{what}: stats {k}");
                    } else {
                        assert_close(&format!("{what} mean[{k}]"), &mean[k..=k], &st.mean[k..=k]);
                        assert_close(&format!("{what} rstd[{k}]"), &rstd[k..=k], &st.rstd[k..=k]);
                    }
                }
            }
        }
    }
}

#[test]
fn odd_channel_counts_spatial_sizes_and_ranks() {
    // C = 3, 5, 15 with every divisor as groups; no spatial dims ([N, C]), 1-D, 2-D (7x7, 3x5)
    // and 3-D spatial; spatial sizes that are not multiples of 4.
    let mut rng = Rng::new(206);
    let spatials: [&[usize]; 6] = [&[], &[1], &[7], &[7, 7], &[3, 5], &[2, 3, 5]];
    for (c, groups) in [
        (3usize, &[1usize, 3][..]),
        (5, &[1, 5]),
        (15, &[1, 3, 5, 15]),
    ] {
        for &g in groups {
            for spatial in spatials {
                for layout in LAYOUTS {
                    check(&Case::new(&mut rng, (2, c, spatial, g), layout, 0.5).affine(&mut rng));
                }
            }
        }
    }
}

#[test]
fn weight_and_bias_are_independent() {
    let mut rng = Rng::new(207);
    let shapes: [Dims; 3] = [(2, 6, &[5, 5], 3), (2, 8, &[4, 4], 2), (3, 5, &[], 1)];
    for dims in shapes {
        for layout in LAYOUTS {
            let base = Case::new(&mut rng, dims, layout, 1.0).affine(&mut rng);
            let (w, b) = (base.weight.clone(), base.bias.clone());
            for (wo, bo) in [
                (None, None),
                (w.clone(), None),
                (None, b.clone()),
                (w.clone(), b.clone()),
            ] {
                let mut c = base.clone();
                c.weight = wo;
                c.bias = bo;
                check(&c);
            }
        }
    }
}

#[test]
fn diffusion_and_detection_shapes() {
    // GroupNorm(32, C) as U-Nets and VAEs use it, and GroupNorm(32, 256) of detection heads on
    // odd feature maps.
    let mut rng = Rng::new(214);
    let shapes: [Dims; 4] = [
        (2, 320, &[16, 16], 32),
        (1, 512, &[8, 8], 32),
        (2, 640, &[7, 7], 32),
        (1, 256, &[13, 19], 32),
    ];
    for dims in shapes {
        for layout in LAYOUTS {
            check(&Case::new(&mut rng, dims, layout, 0.3).affine(&mut rng));
        }
    }
}

#[test]
fn default_eps_is_1e5() {
    // Groups of variance ~1e-6, where eps = 1e-5 changes the result far beyond TOL.
    let mut rng = Rng::new(215);
    for layout in LAYOUTS {
        let mut c = Case::new(&mut rng, (2, 6, &[5, 5], 3), layout, 0.0);
        c.x.iter_mut().for_each(|v| *v *= 1e-3);
        let (want_y, st) = c.reference();
        c.eps = 0.0;
        let (no_eps, _) = c.reference();
        assert!((want_y[0] - no_eps[0]).abs() > 100.0 * common::TOL);
        for (path, g) in gpus() {
            let x = Tensor::from_slice(g, &c.x, &c.shape).unwrap();
            let out = GroupNorm::new(3, 6)
                .unwrap()
                .forward(g, &x, layout)
                .unwrap();
            let what = c.what(path);
            assert_close(&format!("{what} y"), &out.y.to_vec(g).unwrap(), &want_y);
            assert_close(
                &format!("{what} rstd"),
                &out.rstd.to_vec(g).unwrap(),
                &st.rstd,
            );
        }
    }
}

#[test]
fn one_group_is_a_layer_norm_over_channels_and_space_bit_for_bit() {
    // GroupNorm(1, C) without affine on [N, C, *spatial] (channels-first) is
    // LayerNorm(&[C * S]) on the [N, C * S] reshape: same y, mean and rstd bits, same context.
    // Every mismatch is collected, then reported together.
    let mut rng = Rng::new(208);
    let shapes: [Dims; 9] = [
        (2, 3, &[7, 7], 1),
        (3, 4, &[4, 4], 1),
        (2, 5, &[3, 5], 1),
        (4, 8, &[], 1),
        (4, 3, &[], 1),
        (2, 1, &[4097], 1),
        (2, 1, &[4096], 1),
        (3, 2, &[2, 3, 5], 1),
        (1, 2, &[65537], 1),
    ];
    let mut failures = Vec::new();
    for dims in shapes {
        let c = Case::new(&mut rng, dims, Layout::ChannelsFirst, 0.5);
        let (n, ch, s) = ncs(&c.shape, c.layout);
        for (path, g) in gpus() {
            let (y, mean, rstd) = run(g, &c);
            let x = Tensor::from_slice(g, &c.x, &c.shape).unwrap();
            let ln = LayerNorm::new(&[ch * s])
                .forward(g, &x.reshape(&[n, ch * s]).unwrap())
                .unwrap();
            for (name, gn, ln) in [
                ("y", &y, &ln.y),
                ("mean", &mean, &ln.mean),
                ("rstd", &rstd, &ln.rstd),
            ] {
                if let Some(m) = bits_mismatch(gn, &ln.to_vec(g).unwrap()) {
                    failures.push(format!(
                        "{} {name}: GroupNorm vs LayerNorm: {m}",
                        c.what(path)
                    ));
                }
            }
        }
        // With a per-channel affine (which LayerNorm cannot express): the reference.
        let mut c = c.affine(&mut rng);
        check(&c);
        // And in the other layout.
        c.x = to_channels_last(&c.x, n, ch, s);
        c.layout = Layout::ChannelsLast;
        c.shape = layout_shape(n, ch, dims.2, Layout::ChannelsLast);
        check(&c);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn channels_last_equals_channels_first_after_transposing() {
    // The channels-last output, transposed back to channels-first, against the channels-first
    // output as the expected values (within TOL); mean and rstd likewise. Same data, same
    // context, weight and bias.
    let mut rng = Rng::new(209);
    let shapes: [Dims; 5] = [
        (2, 6, &[7, 7], 3),
        (3, 5, &[3, 5], 5),
        (2, 4, &[1000], 1),
        (2, 3, &[2, 3, 5], 3),
        (5, 12, &[], 4),
    ];
    for dims in shapes {
        let cf = Case::new(&mut rng, dims, Layout::ChannelsFirst, 3.0).affine(&mut rng);
        let (n, ch, s) = ncs(&cf.shape, cf.layout);
        let cl = Case {
            x: to_channels_last(&cf.x, n, ch, s),
            shape: layout_shape(n, ch, dims.2, Layout::ChannelsLast),
            layout: Layout::ChannelsLast,
            groups: cf.groups,
            weight: cf.weight.clone(),
            bias: cf.bias.clone(),
            eps: cf.eps,
        };
        let f64s = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
        for (path, g) in gpus() {
            let a = run(g, &cf);
            let b = run(g, &cl);
            let what = cl.what(path);
            let y_back = to_channels_first(&b.0, n, ch, s);
            assert_close(&format!("{what} y (CL vs CF)"), &y_back, &f64s(&a.0));
            assert_close(&format!("{what} mean (CL vs CF)"), &b.1, &f64s(&a.1));
            assert_close(&format!("{what} rstd (CL vs CF)"), &b.2, &f64s(&a.2));
        }
    }
}

#[test]
fn chunked_bindings_match_the_reference() {
    // 64 KiB bindings: each tensor goes in several chunks (groups and rows of channels split
    // across them where the family allows).
    let mut rng = Rng::new(210);
    let cases: [(Dims, Layout); 6] = [
        ((8, 6, &[30, 31], 3), Layout::ChannelsFirst),
        ((8, 6, &[30, 31], 3), Layout::ChannelsLast),
        ((64, 3, &[30, 31], 1), Layout::ChannelsLast),
        ((40, 5, &[999], 5), Layout::ChannelsFirst),
        ((5000, 12, &[], 4), Layout::ChannelsLast),
        ((3000, 7, &[], 7), Layout::ChannelsFirst),
    ];
    for (dims, layout) in cases {
        let c = Case::new(&mut rng, dims, layout, 10.0).affine(&mut rng);
        check_on(&[("chunked", gpu_small_bindings())], &c);
    }
}

#[test]
fn a_sample_larger_than_a_binding_is_too_large_or_right() {
    // 64 KiB bindings, one sample of 2 x 20000 values (160 KB). Channels-first, a group is one
    // contiguous row and a row larger than a binding cannot be chunked: TooLarge. Channels-last,
    // a group is strided over the whole sample: TooLarge, or (if it is chunked) the reference.
    // Never a panic.
    let mut rng = Rng::new(213);
    for layout in LAYOUTS {
        let c = Case::new(&mut rng, (2, 2, &[20000], 1), layout, 1.0);
        let g = gpu_small_bindings();
        let x = Tensor::from_slice(g, &c.x, &c.shape).unwrap();
        match module(g, &c).forward(g, &x, layout) {
            Err(NormError::TooLarge(_)) => {}
            Ok(_) if layout == Layout::ChannelsLast => check_on(&[("chunked", g)], &c),
            r => panic!("{layout:?}: {r:?}"),
        }
    }
}

#[test]
fn caller_buffers_of_exactly_numel_floats() {
    // x, weight, bias, y, mean and rstd on buffers of exactly numel * 4 bytes (numel odd: no
    // padding for a vec4 to run into).
    let mut rng = Rng::new(218);
    let shapes: [Dims; 4] = [
        (5, 6, &[7], 3),
        (3, 5, &[3, 3], 5),
        (7, 3, &[], 1),
        (1, 10, &[101], 2),
    ];
    for dims in shapes {
        for layout in LAYOUTS {
            let c = Case::new(&mut rng, dims, layout, 1.0).affine(&mut rng);
            let (want_y, st) = c.reference();
            let ch = c.c();
            let stats = [c.shape[0], c.groups];
            for (path, g) in gpus() {
                let x = exact_tensor(g, &c.x, &c.shape);
                let norm = GroupNorm::new(c.groups, ch)
                    .unwrap()
                    .eps(c.eps)
                    .weight(exact_tensor(g, c.weight.as_ref().unwrap(), &[ch]))
                    .bias(exact_tensor(g, c.bias.as_ref().unwrap(), &[ch]));
                let what = c.what(path);
                let out = norm.forward(g, &x, layout).unwrap();
                assert_close(
                    &format!("{what} forward y"),
                    &out.y.to_vec(g).unwrap(),
                    &want_y,
                );
                let out = NormOutput {
                    y: exact_empty(g, &c.shape),
                    mean: exact_empty(g, &stats),
                    rstd: exact_empty(g, &stats),
                };
                let mut enc = g.encoder();
                norm.encode(g, &mut enc, &x, layout, &out).unwrap();
                g.submit_wait(enc).unwrap();
                assert_close(&format!("{what} y"), &out.y.to_vec(g).unwrap(), &want_y);
                assert_close(
                    &format!("{what} mean"),
                    &out.mean.to_vec(g).unwrap(),
                    &st.mean,
                );
                assert_close(
                    &format!("{what} rstd"),
                    &out.rstd.to_vec(g).unwrap(),
                    &st.rstd,
                );
                assert_bits_eq(&format!("{what} x"), &x.to_vec(g).unwrap(), &c.x);
            }
        }
    }
}

#[test]
fn tensor_over_128_mib_in_both_layouts() {
    // 33.8M values (135 MB): more than lavapipe's 128 MiB binding, so the default context
    // chunks it too.
    let mut rng = Rng::new(216);
    for layout in LAYOUTS {
        let c = Case::new(&mut rng, (40, 32, &[160, 165], 8), layout, 2.0).affine(&mut rng);
        assert!(c.x.len() * 4 > 128 << 20);
        check_on(&[("default", gpu())], &c);
    }
}

#[test]
fn calls_recorded_in_one_encoder_keep_their_own_parameters() {
    // GroupNorms of two shapes, layouts, eps values and affines, then one reading the first
    // one's output, all in one encoder and one submit.
    let mut rng = Rng::new(217);
    let mut a =
        Case::new(&mut rng, (3, 6, &[5, 7], 3), Layout::ChannelsFirst, 1.0).affine(&mut rng);
    a.eps = 1e-3;
    let b = Case::new(&mut rng, (2, 5, &[3, 3], 5), Layout::ChannelsLast, -3.0).affine(&mut rng);
    for (path, g) in gpus() {
        let out = |c: &Case| NormOutput {
            y: Tensor::empty(g, &c.shape).unwrap(),
            mean: Tensor::empty(g, &[c.shape[0], c.groups]).unwrap(),
            rstd: Tensor::empty(g, &[c.shape[0], c.groups]).unwrap(),
        };
        let (oa, ob) = (out(&a), out(&b));
        let oc = NormOutput {
            y: Tensor::empty(g, &a.shape).unwrap(),
            mean: Tensor::empty(g, &[3, 1]).unwrap(),
            rstd: Tensor::empty(g, &[3, 1]).unwrap(),
        };
        let xa = Tensor::from_slice(g, &a.x, &a.shape).unwrap();
        let xb = Tensor::from_slice(g, &b.x, &b.shape).unwrap();
        let mut enc = g.device().create_command_encoder(&Default::default());
        module(g, &a)
            .encode(g, &mut enc, &xa, a.layout, &oa)
            .unwrap();
        module(g, &b)
            .encode(g, &mut enc, &xb, b.layout, &ob)
            .unwrap();
        GroupNorm::new(1, 6)
            .unwrap()
            .encode(g, &mut enc, &oa.y, Layout::ChannelsFirst, &oc)
            .unwrap();
        g.queue().submit([enc.finish()]);
        let c = Case {
            x: oa.y.to_vec(g).unwrap(),
            groups: 1,
            weight: None,
            bias: None,
            eps: 1e-5,
            ..a.clone()
        };
        for (name, case, o) in [("a", &a, &oa), ("b", &b, &ob), ("a then G=1", &c, &oc)] {
            let (want_y, st) = case.reference();
            let what = format!("{path} {name}");
            assert_close(&format!("{what} y"), &o.y.to_vec(g).unwrap(), &want_y);
            assert_close(
                &format!("{what} mean"),
                &o.mean.to_vec(g).unwrap(),
                &st.mean,
            );
            assert_close(
                &format!("{what} rstd"),
                &o.rstd.to_vec(g).unwrap(),
                &st.rstd,
            );
        }
    }
}

#[test]
fn same_input_gives_bit_identical_output() {
    let mut rng = Rng::new(211);
    let shapes: [Dims; 3] = [(8, 32, &[16, 16], 8), (2, 3, &[7, 7], 1), (4096, 6, &[], 2)];
    for dims in shapes {
        for layout in LAYOUTS {
            let c = Case::new(&mut rng, dims, layout, 1.0).affine(&mut rng);
            for (path, g) in gpus() {
                let a = run(g, &c);
                let b = run(g, &c);
                let what = c.what(path);
                assert_bits_eq(&format!("{what} y"), &a.0, &b.0);
                assert_bits_eq(&format!("{what} mean"), &a.1, &b.1);
                assert_bits_eq(&format!("{what} rstd"), &a.2, &b.2);
            }
        }
    }
}

#[test]
fn encode_into_a_callers_encoder_and_buffers() {
    let mut rng = Rng::new(212);
    for layout in LAYOUTS {
        let c = Case::new(&mut rng, (3, 6, &[5, 7], 2), layout, 1.0).affine(&mut rng);
        let (want_y, st) = c.reference();
        for (path, g) in gpus() {
            let x = Tensor::from_slice(g, &c.x, &c.shape).unwrap();
            let out = GroupNormOutput {
                y: Tensor::empty(g, &c.shape).unwrap(),
                mean: Tensor::empty(g, &[3, 2]).unwrap(),
                rstd: Tensor::empty(g, &[6]).unwrap(),
            };
            let mut enc = g.device().create_command_encoder(&Default::default());
            module(g, &c).encode(g, &mut enc, &x, layout, &out).unwrap();
            g.queue().submit([enc.finish()]);
            let what = c.what(path);
            assert_close(&format!("{what} y"), &out.y.to_vec(g).unwrap(), &want_y);
            assert_close(
                &format!("{what} mean"),
                &out.mean.to_vec(g).unwrap(),
                &st.mean,
            );
            assert_close(
                &format!("{what} rstd"),
                &out.rstd.to_vec(g).unwrap(),
                &st.rstd,
            );
            assert_bits_eq(&format!("{what} x"), &x.to_vec(g).unwrap(), &c.x);
        }
    }
}

#[test]
fn plan_describes_the_kernels_per_layout() {
    for (path, g) in gpus() {
        let gn = GroupNorm::new(32, 512).unwrap();
        let cf = gn.plan(g, &[8, 512, 7, 7], Layout::ChannelsFirst).unwrap();
        let cl = gn.plan(g, &[8, 7, 7, 512], Layout::ChannelsLast).unwrap();
        for (layout, p) in [("CF", &cf), ("CL", &cl)] {
            assert!(
                !p.kernels.is_empty() && !p.reason.is_empty(),
                "{path} {layout}"
            );
            let shown = p.to_string();
            assert!(
                p.kernels.iter().all(|k| shown.contains(k)),
                "{path} {layout}: {shown}"
            );
            assert!(p.rows.is_some() || p.channels.is_some(), "{path} {layout}");
        }
        // Planning validates like a call does.
        assert!(gn.plan(g, &[8, 256, 7, 7], Layout::ChannelsFirst).is_err());
        assert!(gn.plan(g, &[8, 512, 7, 7], Layout::ChannelsLast).is_err());
    }
}

fn t(g: &Gpu, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 3.0).collect();
    Tensor::from_slice(g, &v, shape).unwrap()
}

#[test]
fn bad_input_is_a_norm_error_not_a_panic() {
    let g = gpu();
    // groups 0, not dividing C, or C 0.
    for (groups, c) in [(0usize, 4usize), (3, 4), (4, 0), (0, 0), (8, 4)] {
        let e = GroupNorm::new(groups, c).unwrap_err();
        assert!(
            matches!(e, NormError::InvalidArgument(_)),
            "{groups}/{c}: {e}"
        );
    }
    let gn = GroupNorm::new(2, 4).unwrap();
    let fwd = |gn: &GroupNorm, shape: &[usize], layout: Layout| {
        gn.forward(g, &t(g, shape), layout).unwrap_err()
    };
    // x with another channel count than the module, in either layout.
    for (shape, layout) in [
        (&[2usize, 6, 5][..], Layout::ChannelsFirst),
        (&[2, 4, 5], Layout::ChannelsLast),
        (&[2, 2], Layout::ChannelsFirst),
    ] {
        let e = fwd(&gn, shape, layout);
        assert!(
            matches!(e, NormError::Shape(_)),
            "{shape:?} {layout:?}: {e}"
        );
    }
    // Rank < 2.
    for layout in LAYOUTS {
        let e = fwd(&gn, &[4], layout);
        assert!(matches!(e, NormError::Shape(_)), "rank 1 {layout:?}: {e}");
        let e = gn.plan(g, &[4], layout).unwrap_err();
        assert!(matches!(e, NormError::Shape(_)), "rank 1 {layout:?}: {e}");
    }
    // A zero dim: refused by the tensor, and by plan (spatial, batch or channel).
    assert!(matches!(
        Tensor::empty(g, &[2, 3, 0]),
        Err(NormError::Shape(_))
    ));
    for (shape, layout) in [
        (&[2usize, 4, 0][..], Layout::ChannelsFirst),
        (&[2, 4, 3, 0], Layout::ChannelsFirst),
        (&[2, 0, 4], Layout::ChannelsLast),
        (&[0, 4, 3], Layout::ChannelsFirst),
        (&[0, 3, 4], Layout::ChannelsLast),
    ] {
        let e = gn.plan(g, shape, layout).unwrap_err();
        assert!(
            matches!(e, NormError::Shape(_)),
            "{shape:?} {layout:?}: {e}"
        );
    }
    // Weight or bias with other than C values.
    let x = t(g, &[2, 4, 3]);
    for len in [3usize, 2, 5, 12] {
        for gn in [
            gn.clone().weight(t(g, &[len])),
            gn.clone().bias(t(g, &[len])),
        ] {
            let e = gn.forward(g, &x, Layout::ChannelsFirst).unwrap_err();
            assert!(matches!(e, NormError::Shape(_)), "len {len}: {e}");
            let e = gn
                .forward(g, &t(g, &[2, 3, 4]), Layout::ChannelsLast)
                .unwrap_err();
            assert!(matches!(e, NormError::Shape(_)), "len {len} CL: {e}");
        }
    }
    // eps negative, NaN, Inf.
    for eps in [-1e-5f32, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for layout in LAYOUTS {
            let e = gn.clone().eps(eps).forward(g, &x, layout);
            let e = e.map(|_| ()).unwrap_err();
            assert!(matches!(e, NormError::InvalidArgument(_)), "eps {eps}: {e}");
        }
        let e = gn
            .clone()
            .eps(eps)
            .plan(g, &[2, 4, 3], Layout::ChannelsFirst)
            .unwrap_err();
        assert!(matches!(e, NormError::InvalidArgument(_)), "eps {eps}: {e}");
    }
    // The device still works afterwards.
    assert!(gn.forward(g, &x, Layout::ChannelsFirst).is_ok());
}

#[test]
fn tensors_from_another_device() {
    let g = gpu();
    let other = Gpu::new().unwrap();
    let gn = GroupNorm::new(2, 4).unwrap();
    let x = t(g, &[2, 4, 3]);
    for layout in LAYOUTS {
        let e = gn.forward(g, &t(&other, &[2, 4, 4]), layout).unwrap_err();
        assert_eq!(e, NormError::WrongDevice("x"), "{layout:?}");
        let shape = layout_shape(2, 4, &[3], layout);
        let x = t(g, &shape);
        let e = gn
            .clone()
            .weight(t(&other, &[4]))
            .forward(g, &x, layout)
            .unwrap_err();
        assert!(matches!(e, NormError::WrongDevice(_)), "{e}");
        let e = gn
            .clone()
            .bias(t(&other, &[4]))
            .forward(g, &x, layout)
            .unwrap_err();
        assert!(matches!(e, NormError::WrongDevice(_)), "{e}");
    }
    let out = NormOutput {
        y: t(g, &[2, 4, 3]),
        mean: t(&other, &[2, 2]),
        rstd: t(g, &[2, 2]),
    };
    let mut enc = g.device().create_command_encoder(&Default::default());
    let e = gn
        .encode(g, &mut enc, &x, Layout::ChannelsFirst, &out)
        .unwrap_err();
    assert!(matches!(e, NormError::WrongDevice(_)), "{e}");
}

#[test]
fn encode_refuses_wrong_sizes_and_aliasing() {
    let g = gpu();
    let gn = GroupNorm::new(2, 4).unwrap();
    let x = t(g, &[2, 4, 3]);
    let mut enc = g.device().create_command_encoder(&Default::default());
    for layout in LAYOUTS {
        let x = t(g, &layout_shape(2, 4, &[3], layout));
        for (y, m, r) in [
            (&[2usize, 4, 2][..], &[2usize, 2][..], &[2usize, 2][..]),
            (&[2, 4, 3], &[2, 4], &[2, 2]),
            (&[2, 4, 3], &[2, 2], &[3]),
            (&[2, 4, 3], &[2, 1], &[2, 2]),
        ] {
            let out = NormOutput {
                y: t(g, y),
                mean: t(g, m),
                rstd: t(g, r),
            };
            let e = gn.encode(g, &mut enc, &x, layout, &out).unwrap_err();
            assert!(
                matches!(e, NormError::Shape(_)),
                "{layout:?} y {y:?} mean {m:?} rstd {r:?}: {e}"
            );
        }
        let out = NormOutput {
            y: x.clone(),
            mean: t(g, &[2, 2]),
            rstd: t(g, &[2, 2]),
        };
        let e = gn.encode(g, &mut enc, &x, layout, &out).unwrap_err();
        assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
    }
    // A statistic output aliasing x (GroupNorm(4, 4) on [1, 4]: mean has x's size).
    let gn4 = GroupNorm::new(4, 4).unwrap();
    let x4 = t(g, &[1, 4]);
    let out = NormOutput {
        y: t(g, &[1, 4]),
        mean: x4.clone(),
        rstd: t(g, &[1, 4]),
    };
    let e = gn4
        .encode(g, &mut enc, &x4, Layout::ChannelsFirst, &out)
        .unwrap_err();
    assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
    // mean and rstd the same buffer; rstd sharing the bias's, mean the weight's buffer.
    let stats = t(g, &[1, 4]);
    let same = NormOutput {
        y: t(g, &[1, 4]),
        mean: stats.clone(),
        rstd: stats,
    };
    let (w, b) = (t(g, &[4]), t(g, &[4]));
    let read = NormOutput {
        y: t(g, &[1, 4]),
        mean: w.reshape(&[1, 4]).unwrap(),
        rstd: b.reshape(&[1, 4]).unwrap(),
    };
    for layout in LAYOUTS {
        let e = gn4.encode(g, &mut enc, &x4, layout, &same).unwrap_err();
        assert!(
            matches!(e, NormError::InvalidArgument(_)),
            "{layout:?}: {e}"
        );
        let e = gn4
            .clone()
            .weight(w.clone())
            .bias(b.clone())
            .encode(g, &mut enc, &x4, layout, &read)
            .unwrap_err();
        assert!(
            matches!(e, NormError::InvalidArgument(_)),
            "{layout:?}: {e}"
        );
    }
    g.queue().submit([enc.finish()]);
    assert_bits_eq(
        "x",
        &x.to_vec(g).unwrap(),
        &(0..24).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>(),
    );
}
