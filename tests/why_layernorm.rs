//! The claims of `why_layernorm/report.md`, asserted on small shapes with the example's own
//! experiment code, so the report cannot silently go stale.

mod common;
#[path = "../examples/why_layernorm/experiments.rs"]
#[allow(dead_code)]
mod experiments;

use common::gpu;
use experiments::*;
use fused_norm::bench::GpuTimer;
use fused_norm::{Layout, Tensor};

/// What the report says of a per-sample norm's output across contexts: bitwise the same
/// wherever the same kernel ran, a few ulp apart across kernels.
fn assert_invariant(what: &str, inv: &Invariance) {
    assert!(
        inv.bitwise_same_kernel,
        "{what}: same kernel, different bits: {inv:?}"
    );
    if inv.kernels.iter().all(|k| *k == inv.kernels[0]) {
        assert!(inv.bitwise, "{what}: {inv:?}");
    }
    assert!(inv.max_diff < 1e-6, "{what}: {inv:?}");
}

#[test]
fn sharing_sets_equal_the_definitions() {
    let mut measured = 0;
    for (g, groups, at) in [
        (Grid { n: 4, c: 6, hw: 6 }, 3, (1, 2, 3)),
        (Grid { n: 3, c: 8, hw: 5 }, 2, (2, 7, 0)),
        (Grid { n: 2, c: 4, hw: 9 }, 4, (0, 0, 8)),
    ] {
        for kind in Norm::all(groups) {
            let Some(set) = sharing(gpu(), kind, g, at).unwrap() else {
                assert_eq!(kind, Norm::Rms, "only RMSNorm lacks a kernel");
                continue;
            };
            assert_eq!(set, definition(kind, g, at), "{kind:?} on {g:?} at {at:?}");
            measured += 1;
        }
    }
    assert!(measured >= 12);
}

#[test]
fn batch_norm_depends_on_the_batch_and_per_sample_norms_do_not() {
    let sizes = [2, 8, 32, 128, 512];
    let bd = batch_dependence(gpu(), 4, 16, 2, &sizes).unwrap();
    // BatchNorm: the change against the largest batch shrinks as the batch grows.
    let e = &bd.bn_mean_err;
    assert!(e.windows(2).all(|w| w[0] > w[1]), "{e:?}");
    assert!(e[0] > 1e-2, "{e:?}");
    assert_eq!(*e.last().unwrap(), 0.0);
    // Per-sample norms: the same output in every batch.
    let mut measured = 0;
    for (kind, inv) in &bd.per_sample {
        match inv {
            Some(inv) => {
                assert_invariant(&kind.name(), inv);
                measured += 1;
            }
            None => assert_eq!(*kind, Norm::Rms),
        }
    }
    assert_eq!(measured, 3);
}

#[test]
fn layer_norm_is_bitwise_batch_independent() {
    // Sample 0's LayerNorm output is bitwise the same in batches of every size. On CPU adapters
    // the kernel policy switches kernels at about a thousand rows (rounding differs across that
    // switch, see the report), so each list stays on one side of it.
    let (c, s) = (4, 4);
    let pool = images(4096, c, s, 3);
    for sizes in [&[1, 2, 5, 16, 64][..], &[1024, 2048, 4096][..]] {
        let mut outputs = Vec::new();
        for &b in sizes {
            let shape = [b, c, s];
            let k = kernel_name(gpu(), Norm::Layer, &shape, Layout::ChannelsFirst);
            let x = &pool[..b * c * s];
            let y = normalize(gpu(), Norm::Layer, x, &shape, Layout::ChannelsFirst);
            let bits: Vec<u32> = y.unwrap().unwrap()[..c * s]
                .iter()
                .map(|v| v.to_bits())
                .collect();
            outputs.push((b, k.unwrap(), bits));
        }
        for (b, k, bits) in &outputs[1..] {
            let (b0, k0, bits0) = &outputs[0];
            assert_eq!(bits, bits0, "B = {b} ({k}) vs B = {b0} ({k0})");
        }
    }
}

#[test]
fn batch_norm_padding_error_grows_with_the_padding_fraction() {
    let mut last = (0.0, 0.0);
    for alpha in [0.25, 1.0, 4.0, 16.0] {
        let lengths = skewed_lengths(8, 64, alpha, 5);
        let p = padding(gpu(), &lengths, 16, 9).unwrap();
        assert!(p.pad_fraction > last.0, "alpha {alpha}: {p:?}");
        assert!(p.bn_err > last.1, "alpha {alpha}: {p:?}");
        assert_invariant(&format!("LayerNorm, padding {:.2}", p.pad_fraction), &p.ln);
        last = (p.pad_fraction, p.bn_err);
    }
    assert!(last.0 > 0.5);
    // No padding, no error.
    let p = padding(gpu(), &[64; 4], 16, 9).unwrap();
    assert_eq!(p.pad_fraction, 0.0);
    assert!(p.bn_err < 1e-6, "{p:?}");
}

#[test]
fn batch_norm_train_eval_gap_has_a_floor_set_by_the_batch_size() {
    let steps = [0, 10, 60];
    let gap = train_eval_gap(gpu(), 4, 16, &[2, 32], &steps, 4).unwrap();
    for row in &gap.gap {
        assert!(row[0] > row[1] && row[1] > row[2], "{row:?}");
    }
    // After the running statistics converge, the smaller batch stays further from them.
    assert!(gap.gap[0][2] > 2.0 * gap.gap[1][2], "{:?}", gap.gap);
}

#[test]
fn cost_times_every_norm_with_a_kernel() {
    let timer = GpuTimer::new(gpu());
    let norms = [
        ("bn", Norm::Batch, Mode::Train),
        ("bn eval", Norm::Batch, Mode::Eval),
        ("ln", Norm::Layer, Mode::Train),
        ("in", Norm::Instance, Mode::Train),
        ("gn", Norm::Group { groups: 2 }, Mode::Train),
        ("rms", Norm::Rms, Mode::Train),
    ];
    let rows = costs(
        gpu(),
        &timer,
        &[4, 8, 16, 16],
        Layout::ChannelsFirst,
        &norms,
        1,
    )
    .unwrap();
    for r in &rows {
        match r.label.as_str() {
            "rms" => assert!(r.ms.is_none() && r.note == RMS_PENDING),
            _ => assert!(r.ratio().is_some_and(|x| x > 0.0), "{r:?}"),
        }
    }
    // Channels-last runs what exists (BatchNorm, LayerNorm) and nothing else.
    let x = Tensor::from_slice(gpu(), &[1.0; 64], &[8, 8]).unwrap();
    let t = |kind| {
        time_ms(
            gpu(),
            &timer,
            kind,
            Mode::Train,
            &x,
            Layout::ChannelsLast,
            1,
        )
        .unwrap()
    };
    assert!(t(Norm::Layer).is_some() && t(Norm::Batch).is_some());
    assert!(t(Norm::Instance).is_none());
}
