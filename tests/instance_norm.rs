//! InstanceNorm forward against the f64 reference in both layouts, on every context and the
//! chunked path; against LayerNorm over the spatial dims and GroupNorm(C, C) bit for bit, and
//! bad input. The bodies shared with GroupNorm's tests are in `common::grouped`.

mod common;

use common::grouped::{self, Case, Dims, Norm, Spec, LAYOUTS};
use common::{assert_bits_eq, gpu, gpus, t, Rng};
use fused_norm::{GroupNorm, InstanceNorm, Layout, NormError, Tensor};

/// InstanceNorm(C) on each (N, C, spatial dims).
fn inn(shapes: &[Dims]) -> Vec<Spec> {
    shapes.iter().map(|&dims| (Norm::Instance, dims)).collect()
}

#[test]
fn instance_lengths_that_break_weak_kernels() {
    // (N, C, spatial): instance lengths 1, 3, 1000, 4097 and 65537.
    let shapes = inn(&[
        (3, 4, &[1]),
        (2, 5, &[1, 1]),
        (4, 3, &[3]),
        (2, 3, &[1, 3]),
        (2, 5, &[10, 100]),
        (2, 3, &[4097]),
        (3, 1, &[17, 241]),
        (1, 3, &[65537]),
        (2, 1, &[65537]),
    ]);
    grouped::affine_cases_match_the_reference(301, &shapes, 0.5);
}

#[test]
fn more_than_65535_instances_or_rows() {
    // 70000 and 80000 (sample, channel) instances; channels-last, 80000 rows of channels.
    let shapes = inn(&[
        (1, 70000, &[1, 1]),
        (1, 70000, &[3]),
        (2, 40000, &[2]),
        (2, 3, &[40000]),
    ]);
    grouped::affine_cases_match_the_reference(302, &shapes, 1.0);
}

#[test]
fn instance_means_of_1e4_to_1e6_keep_full_precision() {
    let shapes = inn(&[
        (3, 5, &[7, 7]),
        (2, 3, &[1000]),
        (2, 2, &[4097]),
        (2, 10, &[3]),
        (1, 3, &[65537]),
    ]);
    grouped::means_of_1e4_to_1e6_keep_full_precision(303, &shapes);
}

#[test]
fn a_constant_instance_gives_bias_exactly_and_its_mean() {
    let shapes = inn(&[
        (2, 3, &[7, 7]),
        (2, 5, &[3, 5]),
        (2, 2, &[4097]),
        (1, 2, &[65537]),
        (3, 4, &[1]),
        (2, 4, &[4, 4]),
    ]);
    grouped::a_constant_group_gives_bias_exactly_and_its_mean(304, &shapes);
}

#[test]
fn non_finite_values_stay_in_their_instance() {
    // The 2nd, 2nd and 1st value of instances 1, 3 and 4 (k % 2).
    let shapes = inn(&[(2, 3, &[7, 7]), (3, 2, &[1000]), (2, 5, &[3]), (6, 1, &[2])]);
    grouped::non_finite_values_stay_in_their_group(305, &shapes, 2);
}

#[test]
fn odd_channel_counts_spatial_sizes_and_ranks() {
    // C = 1, 3, 5, 15; 1-D, 2-D (7x7, 3x5, 4x4) and 3-D spatial, sizes not multiples of 4.
    let spatials: [&[usize]; 7] = [
        &[1],
        &[7],
        &[7, 7],
        &[3, 5],
        &[4, 4],
        &[2, 3, 5],
        &[3, 1, 7],
    ];
    let shapes: Vec<Spec> = [1usize, 3, 5, 15]
        .into_iter()
        .flat_map(|c| spatials.map(|spatial| (Norm::Instance, (2, c, spatial))))
        .collect();
    grouped::affine_cases_match_the_reference(306, &shapes, 0.5);
}

#[test]
fn weight_and_bias_are_independent() {
    let shapes = inn(&[(2, 3, &[5, 5]), (2, 8, &[4, 4]), (3, 5, &[7])]);
    grouped::weight_and_bias_are_independent(307, &shapes);
}

#[test]
fn style_transfer_and_audio_shapes() {
    // InstanceNorm2d of style-transfer networks, InstanceNorm1d over audio frames, and a 3-D
    // volume.
    let shapes = inn(&[
        (1, 64, &[63, 65]),
        (4, 128, &[15, 15]),
        (2, 80, &[1001]),
        (1, 16, &[9, 11, 13]),
    ]);
    grouped::affine_cases_match_the_reference(314, &shapes, 0.3);
}

#[test]
fn default_eps_is_1e5() {
    // InstanceNorm::new(3) as constructed.
    grouped::default_eps_is_1e5(315, (Norm::Instance, (2, 3, &[5, 5])));
}

#[test]
fn instance_norm_is_a_layer_norm_over_space_bit_for_bit() {
    // InstanceNorm without affine on [N, C, *spatial] (channels-first) is LayerNorm(&[S]) on the
    // [N * C, S] reshape: same y, mean and rstd bits, same context.
    let shapes = inn(&[
        (2, 3, &[7, 7]),
        (3, 4, &[4, 4]),
        (2, 5, &[3, 5]),
        (4, 8, &[1]),
        (2, 2, &[4097]),
        (2, 1, &[4096]),
        (3, 2, &[2, 3, 5]),
        (1, 2, &[65537]),
    ]);
    grouped::matches_layer_norm_bit_for_bit(308, &shapes);
}

#[test]
fn instance_norm_is_group_norm_with_a_group_per_channel_bit_for_bit() {
    let mut rng = Rng::new(309);
    for layout in LAYOUTS {
        let c =
            Case::new(&mut rng, (Norm::Instance, (3, 5, &[3, 7])), layout, 1.0).affine(&mut rng);
        for (path, g) in gpus() {
            let a = grouped::run(g, &c);
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
    let shapes = inn(&[
        (2, 3, &[7, 7]),
        (3, 5, &[3, 5]),
        (2, 4, &[1000]),
        (2, 3, &[2, 3, 5]),
        (5, 12, &[1]),
    ]);
    grouped::channels_last_equals_channels_first_after_transposing(310, &shapes);
}

#[test]
fn chunked_bindings_match_the_reference() {
    // 64 KiB bindings: each tensor goes in several chunks.
    let cases: [(Dims, Layout); 6] = [
        ((8, 6, &[30, 31]), Layout::ChannelsFirst),
        ((8, 6, &[30, 31]), Layout::ChannelsLast),
        ((40, 5, &[999]), Layout::ChannelsFirst),
        ((3, 5000, &[3]), Layout::ChannelsFirst),
        ((300, 12, &[5]), Layout::ChannelsLast),
        ((3000, 7, &[1]), Layout::ChannelsLast),
    ];
    let cases = cases.map(|(dims, layout)| ((Norm::Instance, dims), layout));
    grouped::chunked_bindings_match_the_reference(311, &cases);
}

#[test]
fn caller_buffers_of_exactly_numel_floats() {
    // numel odd: no padding for a vec4 to run into.
    let shapes = inn(&[(5, 3, &[7]), (3, 5, &[3, 3]), (7, 3, &[1]), (1, 5, &[101])]);
    grouped::caller_buffers_of_exactly_numel_floats(317, &shapes);
}

#[test]
fn tensor_over_128_mib_in_both_layouts() {
    // 33.7M values (135 MB).
    grouped::tensor_over_128_mib_in_both_layouts(316, (Norm::Instance, (16, 64, &[180, 183])));
}

#[test]
fn same_input_gives_bit_identical_output() {
    let shapes = inn(&[(8, 32, &[16, 16]), (2, 3, &[7, 7]), (1, 4096, &[6])]);
    grouped::same_input_gives_bit_identical_output(312, &shapes);
}

#[test]
fn encode_into_a_callers_encoder_and_buffers() {
    // mean [3, 5], rstd [15].
    grouped::encode_into_a_callers_encoder_and_buffers(313, (Norm::Instance, (3, 5, &[5, 7])));
}

#[test]
fn plan_describes_the_kernels_per_layout() {
    // InstanceNorm(64); 32 channels refused.
    grouped::plan_describes_the_kernels_per_layout(Norm::Instance, 64);
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
    // [N, C]: no spatial dims, one value per instance (ONNX refuses rank < 3 too).
    let inn = InstanceNorm::new(4);
    for layout in LAYOUTS {
        let e = inn.forward(g, &t(g, &[3, 4]), layout).unwrap_err();
        assert!(matches!(e, NormError::Shape(_)), "{layout:?}: {e}");
    }
    // The rest on InstanceNorm(4).
    grouped::bad_input_is_a_norm_error_not_a_panic(Norm::Instance);
}

#[test]
fn tensors_from_another_device() {
    grouped::tensors_from_another_device(Norm::Instance);
}

#[test]
fn encode_refuses_wrong_sizes_and_aliasing() {
    // InstanceNorm(4) on [2, 4, 3]: y, mean, rstd and mean of the wrong size. A statistic
    // aliasing x, and statistics aliasing each other: [2, 4, 1]. Statistics aliasing the weight
    // and the bias: InstanceNorm(8) on [1, 8, 3].
    grouped::encode_refuses_wrong_sizes_and_aliasing(
        Norm::Instance,
        &[
            (&[2, 4, 2], &[2, 4], &[2, 4]),
            (&[2, 4, 3], &[2, 2], &[2, 4]),
            (&[2, 4, 3], &[2, 4], &[9]),
            (&[2, 4, 3], &[2, 4, 3], &[2, 4]),
        ],
        (Norm::Instance, (2, 4, &[1])),
        (Norm::Instance, (1, 8, &[3])),
    );
}
