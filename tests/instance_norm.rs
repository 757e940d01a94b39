//! InstanceNorm forward against the f64 reference in both layouts, on every context and the
//! chunked path; against LayerNorm over the spatial dims bit for bit, and bad input.

mod common;

use common::{
    assert_bits_eq, assert_close, bits_mismatch, channel_index, exact_empty, exact_tensor, gpu,
    gpu_small_bindings, gpus, grouped_data, layout_shape, ncs, to_channels_first, to_channels_last,
    Rng,
};
use fused_norm::{
    reference, Gpu, GroupNorm, InstanceNorm, InstanceNormOutput, LayerNorm, Layout, NormError,
    NormOutput, Tensor,
};

/// (N, C, spatial dims).
type Dims = (usize, usize, &'static [usize]);

const LAYOUTS: [Layout; 2] = [Layout::ChannelsFirst, Layout::ChannelsLast];

#[derive(Clone)]
struct Case {
    x: Vec<f32>,
    shape: Vec<usize>,
    layout: Layout,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    eps: f32,
}

impl Case {
    /// Instances (std 1) with means alternating around +-offset, laid out in `layout`; no
    /// affine, eps 1e-5.
    fn new(
        rng: &mut Rng,
        (n, c, spatial): (usize, usize, &[usize]),
        layout: Layout,
        offset: f64,
    ) -> Case {
        let s: usize = spatial.iter().product();
        let mut x = grouped_data(rng, n, c, s, c, offset);
        if layout == Layout::ChannelsLast {
            x = to_channels_last(&x, n, c, s);
        }
        Case {
            x,
            shape: layout_shape(n, c, spatial, layout),
            layout,
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
    /// The (sample, channel) instance of element i.
    fn instance(&self, i: usize) -> usize {
        let (_, c, s) = ncs(&self.shape, self.layout);
        common::group_index(i, c, s, c, self.cl())
    }
    fn reference(&self) -> (Vec<f64>, reference::GroupStats) {
        let (_, c, s) = ncs(&self.shape, self.layout);
        reference::group_norm(
            &self.x,
            c,
            s,
            c,
            self.cl(),
            self.weight.as_deref(),
            self.bias.as_deref(),
            f64::from(self.eps),
        )
    }
    fn what(&self, path: &str) -> String {
        format!("{:?} {:?} {path}", self.shape, self.layout)
    }
}

fn module(gpu: &Gpu, c: &Case) -> InstanceNorm {
    let ch = c.c();
    let mut inn = InstanceNorm::new(ch).eps(c.eps);
    if let Some(w) = &c.weight {
        inn = inn.weight(Tensor::from_slice(gpu, w, &[ch]).unwrap());
    }
    if let Some(b) = &c.bias {
        inn = inn.bias(Tensor::from_slice(gpu, b, &[ch]).unwrap());
    }
    inn
}

/// y, mean and rstd of one call; checks the shapes (y like x, statistics `[N, C]`).
fn run(gpu: &Gpu, c: &Case) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = Tensor::from_slice(gpu, &c.x, &c.shape).unwrap();
    let out = module(gpu, c).forward(gpu, &x, c.layout).unwrap();
    let stats = [c.shape[0], c.c()];
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
fn instance_lengths_that_break_weak_kernels() {
    // (N, C, spatial): instance lengths 1, 3, 1000, 4097 and 65537.
    let mut rng = Rng::new(301);
    let shapes: [Dims; 9] = [
        (3, 4, &[1]),
        (2, 5, &[1, 1]),
        (4, 3, &[3]),
        (2, 3, &[1, 3]),
        (2, 5, &[10, 100]),
        (2, 3, &[4097]),
        (3, 1, &[17, 241]),
        (1, 3, &[65537]),
        (2, 1, &[65537]),
    ];
    for dims in shapes {
        for layout in LAYOUTS {
            check(&Case::new(&mut rng, dims, layout, 0.5).affine(&mut rng));
        }
    }
}

#[test]
fn more_than_65535_instances_or_rows() {
    // 70000 and 80000 (sample, channel) instances; channels-last, 80000 rows of channels.
    let mut rng = Rng::new(302);
    let shapes: [Dims; 4] = [
        (1, 70000, &[1, 1]),
        (1, 70000, &[3]),
        (2, 40000, &[2]),
        (2, 3, &[40000]),
    ];
    for dims in shapes {
        for layout in LAYOUTS {
            check(&Case::new(&mut rng, dims, layout, 1.0).affine(&mut rng));
        }
    }
}

#[test]
fn instance_means_of_1e4_to_1e6_keep_full_precision() {
    let mut rng = Rng::new(303);
    let shapes: [Dims; 5] = [
        (3, 5, &[7, 7]),
        (2, 3, &[1000]),
        (2, 2, &[4097]),
        (2, 10, &[3]),
        (1, 3, &[65537]),
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
fn a_constant_instance_gives_bias_exactly_and_its_mean() {
    let mut rng = Rng::new(304);
    let shapes: [Dims; 6] = [
        (2, 3, &[7, 7]),
        (2, 5, &[3, 5]),
        (2, 2, &[4097]),
        (1, 2, &[65537]),
        (3, 4, &[1]),
        (2, 4, &[4, 4]),
    ];
    let constants = [0.0f32, 3.5, -1e6, 12345.678];
    for dims in shapes {
        for layout in LAYOUTS {
            let mut c = Case::new(&mut rng, dims, layout, 2.0).affine(&mut rng);
            let (_, ch, s) = ncs(&c.shape, layout);
            // Instance k is constant when k % 2 == 0 (the odd ones stay random).
            let constant = |k: usize| k.is_multiple_of(2).then(|| constants[(k / 2) % 4]);
            let inst: Vec<usize> = (0..c.x.len()).map(|i| c.instance(i)).collect();
            for (i, v) in c.x.iter_mut().enumerate() {
                if let Some(k) = constant(inst[i]) {
                    *v = k;
                }
            }
            let (want_y, st) = c.reference();
            let bias = c.bias.clone().unwrap();
            for (path, g) in gpus() {
                let (y, mean, rstd) = run(g, &c);
                let what = c.what(path);
                for (i, &v) in y.iter().enumerate() {
                    if constant(inst[i]).is_some() {
                        let b = bias[channel_index(i, ch, s, c.cl())];
                        assert_eq!(v.to_bits(), b.to_bits(), "{what}: y[{i}] = {v}, bias {b}");
                    } else {
                        assert_close(&format!("{what} y[{i}]"), &[v], &want_y[i..i + 1]);
                    }
                }
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
fn non_finite_values_stay_in_their_instance() {
    let mut rng = Rng::new(305);
    let shapes: [Dims; 4] = [(2, 3, &[7, 7]), (3, 2, &[1000]), (2, 5, &[3]), (6, 1, &[2])];
    for dims in shapes {
        for layout in LAYOUTS {
            let mut c = Case::new(&mut rng, dims, layout, 1.0).affine(&mut rng);
            // NaN in instance 1, +Inf in 3, -Inf in 4.
            let bad = [
                (1usize, f32::NAN),
                (3, f32::INFINITY),
                (4, f32::NEG_INFINITY),
            ];
            for &(k, v) in &bad {
                let i = (0..c.x.len())
                    .filter(|&i| c.instance(i) == k)
                    .nth(k % 2)
                    .unwrap();
                c.x[i] = v;
            }
            let (want_y, st) = c.reference();
            for (path, g) in gpus() {
                let (y, mean, rstd) = run(g, &c);
                let what = c.what(path);
                for (i, &v) in y.iter().enumerate() {
                    let k = c.instance(i);
                    if bad.iter().any(|b| b.0 == k) {
                        assert!(
                            v.is_nan(),
                            "{what}: y[{i}] = {v} in instance {k} must be NaN"
                        );
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
    // C = 1, 3, 5, 15; 1-D, 2-D (7x7, 3x5, 4x4) and 3-D spatial, sizes not multiples of 4.
    let mut rng = Rng::new(306);
    let spatials: [&[usize]; 7] = [
        &[1],
        &[7],
        &[7, 7],
        &[3, 5],
        &[4, 4],
        &[2, 3, 5],
        &[3, 1, 7],
    ];
    for c in [1usize, 3, 5, 15] {
        for spatial in spatials {
            for layout in LAYOUTS {
                check(&Case::new(&mut rng, (2, c, spatial), layout, 0.5).affine(&mut rng));
            }
        }
    }
}

#[test]
fn weight_and_bias_are_independent() {
    let mut rng = Rng::new(307);
    let shapes: [Dims; 3] = [(2, 3, &[5, 5]), (2, 8, &[4, 4]), (3, 5, &[7])];
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
fn style_transfer_and_audio_shapes() {
    // InstanceNorm2d of style-transfer networks, InstanceNorm1d over audio frames, and a 3-D
    // volume.
    let mut rng = Rng::new(314);
    let shapes: [Dims; 4] = [
        (1, 64, &[63, 65]),
        (4, 128, &[15, 15]),
        (2, 80, &[1001]),
        (1, 16, &[9, 11, 13]),
    ];
    for dims in shapes {
        for layout in LAYOUTS {
            check(&Case::new(&mut rng, dims, layout, 0.3).affine(&mut rng));
        }
    }
}

#[test]
fn default_eps_is_1e5() {
    // Instances of variance ~1e-6, where eps = 1e-5 changes the result far beyond TOL.
    let mut rng = Rng::new(315);
    for layout in LAYOUTS {
        let mut c = Case::new(&mut rng, (2, 3, &[5, 5]), layout, 0.0);
        c.x.iter_mut().for_each(|v| *v *= 1e-3);
        let (want_y, st) = c.reference();
        c.eps = 0.0;
        let (no_eps, _) = c.reference();
        assert!((want_y[0] - no_eps[0]).abs() > 100.0 * common::TOL);
        for (path, g) in gpus() {
            let x = Tensor::from_slice(g, &c.x, &c.shape).unwrap();
            let out = InstanceNorm::new(3).forward(g, &x, layout).unwrap();
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
fn instance_norm_is_a_layer_norm_over_space_bit_for_bit() {
    // InstanceNorm without affine on [N, C, *spatial] (channels-first) is LayerNorm(&[S]) on the
    // [N * C, S] reshape: same y, mean and rstd bits, same context. Every mismatch is
    // collected, then reported together.
    let mut rng = Rng::new(308);
    let shapes: [Dims; 8] = [
        (2, 3, &[7, 7]),
        (3, 4, &[4, 4]),
        (2, 5, &[3, 5]),
        (4, 8, &[1]),
        (2, 2, &[4097]),
        (2, 1, &[4096]),
        (3, 2, &[2, 3, 5]),
        (1, 2, &[65537]),
    ];
    let mut failures = Vec::new();
    for dims in shapes {
        let c = Case::new(&mut rng, dims, Layout::ChannelsFirst, 0.5);
        let (n, ch, s) = ncs(&c.shape, c.layout);
        for (path, g) in gpus() {
            let (y, mean, rstd) = run(g, &c);
            let x = Tensor::from_slice(g, &c.x, &c.shape).unwrap();
            let ln = LayerNorm::new(&[s])
                .forward(g, &x.reshape(&[n * ch, s]).unwrap())
                .unwrap();
            for (name, a, b) in [
                ("y", &y, &ln.y),
                ("mean", &mean, &ln.mean),
                ("rstd", &rstd, &ln.rstd),
            ] {
                if let Some(m) = bits_mismatch(a, &b.to_vec(g).unwrap()) {
                    failures.push(format!(
                        "{} {name}: InstanceNorm vs LayerNorm: {m}",
                        c.what(path)
                    ));
                }
            }
        }
        // With a per-channel affine (which LayerNorm over [N * C, S] cannot express): the
        // reference, in both layouts.
        let mut c = c.affine(&mut rng);
        check(&c);
        c.x = to_channels_last(&c.x, n, ch, s);
        c.layout = Layout::ChannelsLast;
        c.shape = layout_shape(n, ch, dims.2, Layout::ChannelsLast);
        check(&c);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn instance_norm_is_group_norm_with_a_group_per_channel_bit_for_bit() {
    let mut rng = Rng::new(309);
    for layout in LAYOUTS {
        let c = Case::new(&mut rng, (3, 5, &[3, 7]), layout, 1.0).affine(&mut rng);
        for (path, g) in gpus() {
            let a = run(g, &c);
            let x = Tensor::from_slice(g, &c.x, &c.shape).unwrap();
            let gn = GroupNorm::new(5, 5)
                .unwrap()
                .weight(Tensor::from_slice(g, c.weight.as_ref().unwrap(), &[5]).unwrap())
                .bias(Tensor::from_slice(g, c.bias.as_ref().unwrap(), &[5]).unwrap())
                .forward(g, &x, layout)
                .unwrap();
            let what = c.what(path);
            assert_bits_eq(&format!("{what} y"), &a.0, &gn.y.to_vec(g).unwrap());
            assert_bits_eq(&format!("{what} mean"), &a.1, &gn.mean.to_vec(g).unwrap());
            assert_bits_eq(&format!("{what} rstd"), &a.2, &gn.rstd.to_vec(g).unwrap());
        }
    }
}

#[test]
fn channels_last_equals_channels_first_after_transposing() {
    // The channels-last output, transposed back to channels-first, against the channels-first
    // output as the expected values (within TOL); mean and rstd likewise. Same data, same
    // context, weight and bias.
    let mut rng = Rng::new(310);
    let shapes: [Dims; 5] = [
        (2, 3, &[7, 7]),
        (3, 5, &[3, 5]),
        (2, 4, &[1000]),
        (2, 3, &[2, 3, 5]),
        (5, 12, &[1]),
    ];
    for dims in shapes {
        let cf = Case::new(&mut rng, dims, Layout::ChannelsFirst, 3.0).affine(&mut rng);
        let (n, ch, s) = ncs(&cf.shape, cf.layout);
        let cl = Case {
            x: to_channels_last(&cf.x, n, ch, s),
            shape: layout_shape(n, ch, dims.2, Layout::ChannelsLast),
            layout: Layout::ChannelsLast,
            ..cf.clone()
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
    // 64 KiB bindings: each tensor goes in several chunks.
    let mut rng = Rng::new(311);
    let cases: [(Dims, Layout); 6] = [
        ((8, 6, &[30, 31]), Layout::ChannelsFirst),
        ((8, 6, &[30, 31]), Layout::ChannelsLast),
        ((40, 5, &[999]), Layout::ChannelsFirst),
        ((3, 5000, &[3]), Layout::ChannelsFirst),
        ((300, 12, &[5]), Layout::ChannelsLast),
        ((3000, 7, &[1]), Layout::ChannelsLast),
    ];
    for (dims, layout) in cases {
        let c = Case::new(&mut rng, dims, layout, 10.0).affine(&mut rng);
        check_on(&[("chunked", gpu_small_bindings())], &c);
    }
}

#[test]
fn caller_buffers_of_exactly_numel_floats() {
    // x, weight, bias, y, mean and rstd on buffers of exactly numel * 4 bytes (numel odd: no
    // padding for a vec4 to run into).
    let mut rng = Rng::new(317);
    let shapes: [Dims; 4] = [(5, 3, &[7]), (3, 5, &[3, 3]), (7, 3, &[1]), (1, 5, &[101])];
    for dims in shapes {
        for layout in LAYOUTS {
            let c = Case::new(&mut rng, dims, layout, 1.0).affine(&mut rng);
            let (want_y, st) = c.reference();
            let ch = c.c();
            let stats = [c.shape[0], ch];
            for (path, g) in gpus() {
                let x = exact_tensor(g, &c.x, &c.shape);
                let norm = InstanceNorm::new(ch)
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
    // 33.7M values (135 MB): more than lavapipe's 128 MiB binding, so the default context
    // chunks it too.
    let mut rng = Rng::new(316);
    for layout in LAYOUTS {
        let c = Case::new(&mut rng, (16, 64, &[180, 183]), layout, 2.0).affine(&mut rng);
        assert!(c.x.len() * 4 > 128 << 20);
        check_on(&[("default", gpu())], &c);
    }
}

#[test]
fn same_input_gives_bit_identical_output() {
    let mut rng = Rng::new(312);
    let shapes: [Dims; 3] = [(8, 32, &[16, 16]), (2, 3, &[7, 7]), (1, 4096, &[6])];
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
    let mut rng = Rng::new(313);
    for layout in LAYOUTS {
        let c = Case::new(&mut rng, (3, 5, &[5, 7]), layout, 1.0).affine(&mut rng);
        let (want_y, st) = c.reference();
        for (path, g) in gpus() {
            let x = Tensor::from_slice(g, &c.x, &c.shape).unwrap();
            let out = InstanceNormOutput {
                y: Tensor::empty(g, &c.shape).unwrap(),
                mean: Tensor::empty(g, &[3, 5]).unwrap(),
                rstd: Tensor::empty(g, &[15]).unwrap(),
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
        let inn = InstanceNorm::new(64);
        let cf = inn.plan(g, &[8, 64, 7, 7], Layout::ChannelsFirst).unwrap();
        let cl = inn.plan(g, &[8, 7, 7, 64], Layout::ChannelsLast).unwrap();
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
        assert!(inn.plan(g, &[8, 32, 7, 7], Layout::ChannelsFirst).is_err());
        assert!(inn.plan(g, &[8, 64, 7, 7], Layout::ChannelsLast).is_err());
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
    // No channels: the constructor is infallible, every call refuses it.
    for layout in LAYOUTS {
        let e = InstanceNorm::new(0)
            .forward(g, &t(g, &[2, 3, 4]), layout)
            .unwrap_err();
        assert!(
            matches!(e, NormError::InvalidArgument(_) | NormError::Shape(_)),
            "{e}"
        );
        assert!(InstanceNorm::new(0).plan(g, &[2, 3, 4], layout).is_err());
    }
    let inn = InstanceNorm::new(4);
    let fwd = |inn: &InstanceNorm, shape: &[usize], layout: Layout| {
        inn.forward(g, &t(g, shape), layout).unwrap_err()
    };
    // x with another channel count than the module, in either layout.
    for (shape, layout) in [
        (&[2usize, 6, 5][..], Layout::ChannelsFirst),
        (&[2, 4, 5], Layout::ChannelsLast),
        (&[2, 2], Layout::ChannelsFirst),
    ] {
        let e = fwd(&inn, shape, layout);
        assert!(
            matches!(e, NormError::Shape(_)),
            "{shape:?} {layout:?}: {e}"
        );
    }
    // [N, C]: no spatial dims, one value per instance (ONNX refuses rank < 3 too).
    for layout in LAYOUTS {
        let e = fwd(&inn, &[3, 4], layout);
        assert!(matches!(e, NormError::Shape(_)), "{layout:?}: {e}");
    }
    // Rank < 2.
    for layout in LAYOUTS {
        let e = fwd(&inn, &[4], layout);
        assert!(matches!(e, NormError::Shape(_)), "rank 1 {layout:?}: {e}");
        let e = inn.plan(g, &[4], layout).unwrap_err();
        assert!(matches!(e, NormError::Shape(_)), "rank 1 {layout:?}: {e}");
    }
    // A zero dim: refused by the tensor, and by plan (spatial, batch).
    assert!(matches!(
        Tensor::empty(g, &[2, 4, 0]),
        Err(NormError::Shape(_))
    ));
    for (shape, layout) in [
        (&[2usize, 4, 0][..], Layout::ChannelsFirst),
        (&[2, 4, 3, 0], Layout::ChannelsFirst),
        (&[2, 0, 4], Layout::ChannelsLast),
        (&[0, 4, 3], Layout::ChannelsFirst),
        (&[0, 3, 4], Layout::ChannelsLast),
    ] {
        let e = inn.plan(g, shape, layout).unwrap_err();
        assert!(
            matches!(e, NormError::Shape(_)),
            "{shape:?} {layout:?}: {e}"
        );
    }
    // Weight or bias with other than C values.
    let x = t(g, &[2, 4, 3]);
    for len in [3usize, 5, 12] {
        for inn in [
            inn.clone().weight(t(g, &[len])),
            inn.clone().bias(t(g, &[len])),
        ] {
            let e = inn.forward(g, &x, Layout::ChannelsFirst).unwrap_err();
            assert!(matches!(e, NormError::Shape(_)), "len {len}: {e}");
            let e = inn
                .forward(g, &t(g, &[2, 3, 4]), Layout::ChannelsLast)
                .unwrap_err();
            assert!(matches!(e, NormError::Shape(_)), "len {len} CL: {e}");
        }
    }
    // eps negative, NaN, Inf.
    for eps in [-1e-5f32, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for layout in LAYOUTS {
            let x = t(g, &layout_shape(2, 4, &[3], layout));
            let e = inn.clone().eps(eps).forward(g, &x, layout).unwrap_err();
            assert!(matches!(e, NormError::InvalidArgument(_)), "eps {eps}: {e}");
        }
        let e = inn
            .clone()
            .eps(eps)
            .plan(g, &[2, 4, 3], Layout::ChannelsFirst)
            .unwrap_err();
        assert!(matches!(e, NormError::InvalidArgument(_)), "eps {eps}: {e}");
    }
    // The device still works afterwards.
    assert!(inn.forward(g, &x, Layout::ChannelsFirst).is_ok());
}

#[test]
fn tensors_from_another_device() {
    let g = gpu();
    let other = Gpu::new().unwrap();
    let inn = InstanceNorm::new(4);
    for layout in LAYOUTS {
        let shape = layout_shape(2, 4, &[3], layout);
        let e = inn.forward(g, &t(&other, &shape), layout).unwrap_err();
        assert_eq!(e, NormError::WrongDevice("x"), "{layout:?}");
        let x = t(g, &shape);
        let e = inn
            .clone()
            .weight(t(&other, &[4]))
            .forward(g, &x, layout)
            .unwrap_err();
        assert!(matches!(e, NormError::WrongDevice(_)), "{e}");
        let e = inn
            .clone()
            .bias(t(&other, &[4]))
            .forward(g, &x, layout)
            .unwrap_err();
        assert!(matches!(e, NormError::WrongDevice(_)), "{e}");
    }
    let x = t(g, &[2, 4, 3]);
    let out = NormOutput {
        y: t(g, &[2, 4, 3]),
        mean: t(g, &[2, 4]),
        rstd: t(&other, &[2, 4]),
    };
    let mut enc = g.device().create_command_encoder(&Default::default());
    let e = inn
        .encode(g, &mut enc, &x, Layout::ChannelsFirst, &out)
        .unwrap_err();
    assert!(matches!(e, NormError::WrongDevice(_)), "{e}");
}

#[test]
fn encode_refuses_wrong_sizes_and_aliasing() {
    let g = gpu();
    let inn = InstanceNorm::new(4);
    let mut enc = g.device().create_command_encoder(&Default::default());
    for layout in LAYOUTS {
        let x = t(g, &layout_shape(2, 4, &[3], layout));
        for (y, m, r) in [
            (&[2usize, 4, 2][..], &[2usize, 4][..], &[2usize, 4][..]),
            (&[2, 4, 3], &[2, 2], &[2, 4]),
            (&[2, 4, 3], &[2, 4], &[9]),
            (&[2, 4, 3], &[2, 4, 3], &[2, 4]),
        ] {
            let out = NormOutput {
                y: t(g, y),
                mean: t(g, m),
                rstd: t(g, r),
            };
            let e = inn.encode(g, &mut enc, &x, layout, &out).unwrap_err();
            assert!(
                matches!(e, NormError::Shape(_)),
                "{layout:?} y {y:?} mean {m:?} rstd {r:?}: {e}"
            );
        }
        let out = NormOutput {
            y: x.clone(),
            mean: t(g, &[2, 4]),
            rstd: t(g, &[2, 4]),
        };
        let e = inn.encode(g, &mut enc, &x, layout, &out).unwrap_err();
        assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
    }
    // A statistic output aliasing x ([2, 4, 1]: rstd has x's size).
    let x = t(g, &[2, 4, 1]);
    let out = NormOutput {
        y: t(g, &[2, 4, 1]),
        mean: t(g, &[8]),
        rstd: x.clone(),
    };
    let e = inn
        .encode(g, &mut enc, &x, Layout::ChannelsFirst, &out)
        .unwrap_err();
    assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
    // mean and rstd the same buffer; mean sharing the weight's, rstd the bias's buffer.
    let stats = t(g, &[2, 4]);
    let same = NormOutput {
        y: t(g, &[2, 4, 1]),
        mean: stats.clone(),
        rstd: stats,
    };
    let (w, b) = (t(g, &[8]), t(g, &[8]));
    let read = NormOutput {
        y: t(g, &[2, 4, 1]),
        mean: w.clone(),
        rstd: b.clone(),
    };
    let inn8 = InstanceNorm::new(8);
    let x8 = t(g, &[1, 8, 3]);
    for layout in LAYOUTS {
        let x = x.reshape(&layout_shape(2, 4, &[1], layout)).unwrap();
        let e = inn.encode(g, &mut enc, &x, layout, &same).unwrap_err();
        assert!(
            matches!(e, NormError::InvalidArgument(_)),
            "{layout:?}: {e}"
        );
        let read = NormOutput {
            y: t(g, &[1, 8, 3]),
            ..read.clone()
        };
        let x8 = x8.reshape(&layout_shape(1, 8, &[3], layout)).unwrap();
        let e = inn8
            .clone()
            .weight(w.clone())
            .bias(b.clone())
            .encode(g, &mut enc, &x8, layout, &read)
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
        &(0..8).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>(),
    );
}
