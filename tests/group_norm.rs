//! GroupNorm forward against the f64 reference in both layouts, on every context and the
//! chunked path; its one-group case against LayerNorm bit for bit, and bad input. The bodies
//! shared with InstanceNorm's tests are in `common::grouped`.

mod common;

use common::grouped::{self, Case, Norm, Spec, LAYOUTS};
use common::{gpu_small_bindings, gpus, Rng};
use fused_norm::{GroupNorm, Layout, NormError, NormOutput, Tensor};

/// (N, C, spatial dims, groups).
type Dims = (usize, usize, &'static [usize], usize);

/// GroupNorm(groups, C) on each (N, C, spatial dims).
fn gn(shapes: &[Dims]) -> Vec<Spec> {
    shapes
        .iter()
        .map(|&(n, c, spatial, groups)| (Norm::Group(groups), (n, c, spatial)))
        .collect()
}

#[test]
fn group_lengths_that_break_weak_kernels() {
    // (N, C, spatial, groups): group lengths (C / G * spatial) 1, 3, 1000, 4097 and 65537.
    let shapes = gn(&[
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
    ]);
    grouped::affine_cases_match_the_reference(201, &shapes, 0.5);
}

#[test]
fn more_than_65535_groups_or_rows() {
    // 140000 and 198000 (sample, group) statistics; channels-last, 40000 and 75000 rows of
    // channels.
    let shapes = gn(&[(70000, 4, &[], 2), (66000, 3, &[], 3), (2, 6, &[20000], 3)]);
    grouped::affine_cases_match_the_reference(202, &shapes, 1.0);
}

#[test]
fn group_means_of_1e4_to_1e6_keep_full_precision() {
    let shapes = gn(&[
        (3, 6, &[7, 7], 3),
        (2, 4, &[1000], 2),
        (2, 3, &[4097], 1),
        (2, 10, &[3], 10),
        (1, 6, &[30001], 2),
    ]);
    grouped::means_of_1e4_to_1e6_keep_full_precision(203, &shapes);
}

#[test]
fn a_constant_group_gives_bias_exactly_and_its_mean() {
    let shapes = gn(&[
        (2, 6, &[7, 7], 3),
        (2, 8, &[3, 5], 4),
        (2, 4, &[4097], 2),
        (1, 4, &[65537], 2),
        (3, 5, &[], 5),
        (2, 8, &[4, 4], 2),
    ]);
    grouped::a_constant_group_gives_bias_exactly_and_its_mean(204, &shapes);
}

#[test]
fn non_finite_values_stay_in_their_group() {
    // The 2nd, 1st and 2nd value of groups 1, 3 and 4 (k % 3).
    let shapes = gn(&[
        (2, 6, &[7, 7], 3),
        (3, 4, &[1000], 2),
        (2, 3, &[20000], 3),
        (2, 15, &[3], 5),
        (6, 2, &[], 1),
    ]);
    grouped::non_finite_values_stay_in_their_group(205, &shapes, 3);
}

#[test]
fn odd_channel_counts_spatial_sizes_and_ranks() {
    // C = 3, 5, 15 with every divisor as groups; no spatial dims ([N, C]), 1-D, 2-D (7x7, 3x5)
    // and 3-D spatial; spatial sizes that are not multiples of 4.
    let spatials: [&[usize]; 6] = [&[], &[1], &[7], &[7, 7], &[3, 5], &[2, 3, 5]];
    let mut shapes = Vec::new();
    for (c, groups) in [
        (3usize, &[1usize, 3][..]),
        (5, &[1, 5]),
        (15, &[1, 3, 5, 15]),
    ] {
        for &g in groups {
            shapes.extend(spatials.map(|spatial| (Norm::Group(g), (2, c, spatial))));
        }
    }
    grouped::affine_cases_match_the_reference(206, &shapes, 0.5);
}

#[test]
fn weight_and_bias_are_independent() {
    let shapes = gn(&[(2, 6, &[5, 5], 3), (2, 8, &[4, 4], 2), (3, 5, &[], 1)]);
    grouped::weight_and_bias_are_independent(207, &shapes);
}

#[test]
fn diffusion_and_detection_shapes() {
    // GroupNorm(32, C) as U-Nets and VAEs use it, and GroupNorm(32, 256) of detection heads on
    // odd feature maps.
    let shapes = gn(&[
        (2, 320, &[16, 16], 32),
        (1, 512, &[8, 8], 32),
        (2, 640, &[7, 7], 32),
        (1, 256, &[13, 19], 32),
        // 8 groups of 40 channels of 1024 positions: on CPU adapters, long rows at a subgroup
        // each, whose output loop takes a channel's weight and bias once per run.
        (2, 160, &[32, 32], 4),
    ]);
    grouped::affine_cases_match_the_reference(214, &shapes, 0.3);
}

#[test]
fn default_eps_is_1e5() {
    // GroupNorm::new(3, 6) as constructed.
    grouped::default_eps_is_1e5(215, (Norm::Group(3), (2, 6, &[5, 5])));
}

#[test]
fn one_group_is_a_layer_norm_over_channels_and_space_bit_for_bit() {
    // GroupNorm(1, C) without affine on [N, C, *spatial] (channels-first) is
    // LayerNorm(&[C * S]) on the [N, C * S] reshape: same y, mean and rstd bits, same context.
    let shapes = gn(&[
        (2, 3, &[7, 7], 1),
        (3, 4, &[4, 4], 1),
        (2, 5, &[3, 5], 1),
        (4, 8, &[], 1),
        (4, 3, &[], 1),
        (2, 1, &[4097], 1),
        (2, 1, &[4096], 1),
        (3, 2, &[2, 3, 5], 1),
        (1, 2, &[65537], 1),
    ]);
    grouped::matches_layer_norm_bit_for_bit(208, &shapes);
}

#[test]
fn channels_last_equals_channels_first_after_transposing() {
    let shapes = gn(&[
        (2, 6, &[7, 7], 3),
        (3, 5, &[3, 5], 5),
        (2, 4, &[1000], 1),
        (2, 3, &[2, 3, 5], 3),
        (5, 12, &[], 4),
    ]);
    grouped::channels_last_equals_channels_first_after_transposing(209, &shapes);
}

#[test]
fn chunked_bindings_match_the_reference() {
    // 64 KiB bindings: each tensor goes in several chunks (groups and rows of channels split
    // across them where the family allows).
    let cases: [(Dims, Layout); 6] = [
        ((8, 6, &[30, 31], 3), Layout::ChannelsFirst),
        ((8, 6, &[30, 31], 3), Layout::ChannelsLast),
        ((64, 3, &[30, 31], 1), Layout::ChannelsLast),
        ((40, 5, &[999], 5), Layout::ChannelsFirst),
        ((5000, 12, &[], 4), Layout::ChannelsLast),
        ((3000, 7, &[], 7), Layout::ChannelsFirst),
    ];
    let cases = cases.map(|(dims, layout)| (gn(&[dims])[0], layout));
    grouped::chunked_bindings_match_the_reference(210, &cases);
}

#[test]
fn a_sample_larger_than_a_binding_is_too_large_or_right() {
    // 64 KiB bindings, one sample of 2 x 20000 values (160 KB). Channels-first, a group is one
    // contiguous row and a row larger than a binding cannot be chunked: TooLarge. Channels-last,
    // a group is strided over the whole sample: TooLarge, or (if it is chunked) the reference.
    // Never a panic.
    let mut rng = Rng::new(213);
    for layout in LAYOUTS {
        let c = Case::new(&mut rng, (Norm::Group(1), (2, 2, &[20000])), layout, 1.0);
        let g = gpu_small_bindings();
        let x = Tensor::from_slice(g, &c.x, &c.shape).unwrap();
        match c.module(g).forward(g, &x, layout) {
            Err(NormError::TooLarge(_)) => {}
            Ok(_) if layout == Layout::ChannelsLast => grouped::check_on(&[("chunked", g)], &c),
            r => panic!("{layout:?}: {r:?}"),
        }
    }
}

#[test]
fn caller_buffers_of_exactly_numel_floats() {
    // numel odd: no padding for a vec4 to run into.
    let shapes = gn(&[
        (5, 6, &[7], 3),
        (3, 5, &[3, 3], 5),
        (7, 3, &[], 1),
        (1, 10, &[101], 2),
    ]);
    grouped::caller_buffers_of_exactly_numel_floats(218, &shapes);
}

#[test]
fn tensor_over_128_mib_in_both_layouts() {
    // 33.8M values (135 MB).
    grouped::tensor_over_128_mib_in_both_layouts(216, (Norm::Group(8), (40, 32, &[160, 165])));
}

#[test]
fn calls_recorded_in_one_encoder_keep_their_own_parameters() {
    // GroupNorms of two shapes, layouts, eps values and affines, then one reading the first
    // one's output, all in one encoder and one submit.
    let mut rng = Rng::new(217);
    let a_dims = (Norm::Group(3), (3, 6, &[5, 7][..]));
    let mut a = Case::new(&mut rng, a_dims, Layout::ChannelsFirst, 1.0).affine(&mut rng);
    a.eps = 1e-3;
    let b_dims = (Norm::Group(5), (2, 5, &[3, 3][..]));
    let b = Case::new(&mut rng, b_dims, Layout::ChannelsLast, -3.0).affine(&mut rng);
    for (path, g) in gpus() {
        let out = |c: &Case| NormOutput {
            y: Tensor::empty(g, &c.shape).unwrap(),
            mean: Tensor::empty(g, &c.stats()).unwrap(),
            rstd: Tensor::empty(g, &c.stats()).unwrap(),
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
        a.module(g).encode(g, &mut enc, &xa, a.layout, &oa).unwrap();
        b.module(g).encode(g, &mut enc, &xb, b.layout, &ob).unwrap();
        GroupNorm::new(1, 6)
            .unwrap()
            .encode(g, &mut enc, &oa.y, Layout::ChannelsFirst, &oc)
            .unwrap();
        g.queue().submit([enc.finish()]);
        let c = Case {
            x: oa.y.to_vec(g).unwrap(),
            norm: Norm::Group(1),
            weight: None,
            bias: None,
            eps: 1e-5,
            ..a.clone()
        };
        for (name, case, o) in [("a", &a, &oa), ("b", &b, &ob), ("a then G=1", &c, &oc)] {
            let (want_y, st) = case.reference();
            grouped::assert_output(&format!("{path} {name}"), g, o, &want_y, &st);
        }
    }
}

#[test]
fn same_input_gives_bit_identical_output() {
    let shapes = gn(&[(8, 32, &[16, 16], 8), (2, 3, &[7, 7], 1), (4096, 6, &[], 2)]);
    grouped::same_input_gives_bit_identical_output(211, &shapes);
}

#[test]
fn encode_into_a_callers_encoder_and_buffers() {
    // mean [3, 2], rstd [6].
    grouped::encode_into_a_callers_encoder_and_buffers(212, (Norm::Group(2), (3, 6, &[5, 7])));
}

#[test]
fn plan_describes_the_kernels_per_layout() {
    // GroupNorm(32, 512); 256 channels refused.
    grouped::plan_describes_the_kernels_per_layout(Norm::Group(32), 512);
}

#[test]
fn bad_input_is_a_norm_error_not_a_panic() {
    // groups 0, not dividing C, or C 0.
    for (groups, c) in [(0usize, 4usize), (3, 4), (4, 0), (0, 0), (8, 4)] {
        let e = GroupNorm::new(groups, c).unwrap_err();
        assert!(
            matches!(e, NormError::InvalidArgument(_)),
            "{groups}/{c}: {e}"
        );
    }
    // The rest on GroupNorm(2, 4).
    grouped::bad_input_is_a_norm_error_not_a_panic(Norm::Group(2));
}

#[test]
fn tensors_from_another_device() {
    grouped::tensors_from_another_device(Norm::Group(2));
}

#[test]
fn encode_refuses_wrong_sizes_and_aliasing() {
    // GroupNorm(2, 4) on [2, 4, 3]: y, mean, rstd and mean of the wrong size. Statistics
    // aliasing x, each other, the weight and the bias: GroupNorm(4, 4) on [1, 4].
    grouped::encode_refuses_wrong_sizes_and_aliasing(
        Norm::Group(2),
        &[
            (&[2, 4, 2], &[2, 2], &[2, 2]),
            (&[2, 4, 3], &[2, 4], &[2, 2]),
            (&[2, 4, 3], &[2, 2], &[3]),
            (&[2, 4, 3], &[2, 1], &[2, 2]),
        ],
        (Norm::Group(4), (1, 4, &[])),
        (Norm::Group(4), (1, 4, &[])),
    );
}

/// The channels family binds its coefficient table (32 bytes per sample and channel) and its
/// partials whole: on a device whose real binding limit is below them (64 KiB here), forward and
/// backward are refused with `TooLarge`, not by wgpu's validation, and a shape whose table fits
/// runs (x itself in chunks).
#[test]
fn channels_last_tables_beyond_a_real_binding_limit_are_too_large() {
    let gpu = common::gpu_small_limits(false);
    let gn = GroupNorm::new(2, 6).unwrap();
    let mut rng = Rng::new(5);
    let big = Tensor::from_slice(gpu, &rng.normals(4000 * 6, 0.0, 1.0), &[4000, 6]).unwrap();
    let e = gn.forward(gpu, &big, Layout::ChannelsLast).unwrap_err();
    assert!(matches!(e, NormError::TooLarge(_)), "{e}");
    let stats = Tensor::from_slice(gpu, &vec![1.0f32; 4000 * 2], &[4000, 2]).unwrap();
    let e = gn
        .backward(gpu, &big, &big, &stats, &stats, Layout::ChannelsLast)
        .unwrap_err();
    assert!(matches!(e, NormError::TooLarge(_)), "{e}");
    let v = rng.normals(200 * 6, 0.0, 1.0);
    let small = Tensor::from_slice(gpu, &v, &[200, 6]).unwrap();
    let out = gn.forward(gpu, &small, Layout::ChannelsLast).unwrap();
    let (want, _) = fused_norm::reference::group_norm(&v, 6, 1, 2, true, None, None, 1e-5);
    common::assert_close("small-limit group_norm", &out.y.to_vec(gpu).unwrap(), &want);
}

#[test]
fn channels_last_lanes_of_several_rows_stay_in_their_sample() {
    // CPU adapters give an apply lane up to 8 rows of one channel quad when they divide a
    // sample's rows: 16 and 64 positions per sample (lanes of 8 rows), 12 (one row per lane),
    // 8 channels in 2 and 4 groups, 3 and 5 samples.
    let shapes = gn(&[
        (3, 8, &[4, 4], 2),
        (5, 8, &[8, 8], 4),
        (3, 8, &[3, 4], 2),
        (5, 16, &[2, 4], 4),
    ]);
    grouped::affine_cases_match_the_reference(207, &shapes, 0.5);
}
