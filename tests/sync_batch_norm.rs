//! SyncBatchNorm in one process: ranks are threads exchanging through `ThreadReducer`, the
//! same merge path the MPI ranks take (tests/mpi.rs runs the same cases across processes).

mod common;
#[path = "common/sync_cases.rs"]
mod sync_cases;

use common::{assert_close, gpu, gpu_small_bindings, gpus, Rng};
use fused_norm::{
    reference, BatchNorm, ChannelStats, Gpu, Layout, StatsReducer, Tensor, ThreadReducer,
};

/// Runs every shared case with `n` threads as ranks on `g`; panics listing the failures.
fn run_threads(g: &'static Gpu, n: usize) {
    let handles: Vec<_> = ThreadReducer::group(n)
        .into_iter()
        .map(|r| {
            std::thread::spawn(move || {
                let other = || Gpu::new().unwrap();
                sync_cases::run_all(&r, g, &other)
            })
        })
        .collect();
    let mut failed = Vec::new();
    let mut cases = 0;
    for (rank, h) in handles.into_iter().enumerate() {
        for (name, res) in h.join().expect("a rank panicked") {
            cases += 1;
            if let Err(e) = res {
                failed.push(format!("rank {rank}/{n} {name}: {e}"));
            }
        }
    }
    assert!(cases > 10 * n);
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn one_rank_matches_the_reference() {
    run_threads(gpu(), 1);
}

#[test]
fn two_and_three_ranks_match_single_process_statistics() {
    run_threads(gpu(), 2);
    run_threads(gpu(), 3);
}

#[test]
fn every_reduction_path_with_two_ranks() {
    for (_, g) in gpus() {
        run_threads(g, 2);
    }
}

/// f64 statistics of a part of `x` (viewed as `[n, c, s]`), for the merge tests.
fn host_stats(x: &[f32], c: usize, s: usize) -> ChannelStats {
    let st = reference::batch_stats(x, c, s);
    ChannelStats {
        count: vec![st.count as u64; c],
        m2: st.var.iter().map(|v| v * st.count as f64).collect(),
        mean: st.mean,
    }
}

#[test]
fn merge_of_parts_equals_the_whole_batch() {
    let (c, s) = (3, 5);
    let x = Rng::new(3).normals(10 * c * s, 100.0, 2.0);
    let whole = host_stats(&x, c, s);
    for cuts in [vec![0, 1, 10], vec![0, 4, 5, 10], vec![0, 9, 10]] {
        let parts: Vec<ChannelStats> = cuts
            .windows(2)
            .map(|w| host_stats(&x[w[0] * c * s..w[1] * c * s], c, s))
            .collect();
        let m = ChannelStats::merge(&parts).unwrap();
        assert_eq!(m.count, whole.count);
        for ch in 0..c {
            assert!((m.mean[ch] - whole.mean[ch]).abs() < 1e-12 * whole.mean[ch].abs());
            assert!((m.m2[ch] - whole.m2[ch]).abs() < 1e-10 * whole.m2[ch]);
        }
        assert_eq!(ChannelStats::merge(&parts).unwrap(), m, "deterministic");
    }
}

#[test]
fn merge_skips_empty_parts_and_rejects_mismatched_ones() {
    let a = ChannelStats {
        count: vec![2, 0],
        mean: vec![1.0, 0.0],
        m2: vec![2.0, 0.0],
    };
    let b = ChannelStats {
        count: vec![0, 1],
        mean: vec![0.0, 5.0],
        m2: vec![0.0, 0.0],
    };
    let m = ChannelStats::merge(&[a.clone(), b]).unwrap();
    assert_eq!(
        (m.count, m.mean, m.m2),
        (vec![2, 1], vec![1.0, 5.0], vec![2.0, 0.0])
    );
    let short = ChannelStats {
        count: vec![1],
        mean: vec![0.0],
        m2: vec![0.0],
    };
    assert!(ChannelStats::merge(&[a, short]).is_err());
    assert_eq!(ChannelStats::merge(&[]).unwrap().channels(), 0);
}

#[test]
fn local_stats_match_the_reference_in_both_layouts() {
    for (path, g) in gpus() {
        for (shape, layout) in [
            (vec![3, 5, 4, 4], Layout::ChannelsFirst),
            (vec![2, 7, 9], Layout::ChannelsFirst),
            (vec![4, 3, 8], Layout::ChannelsLast),
            (vec![1, 6], Layout::ChannelsLast),
        ] {
            let (c, s) = match layout {
                Layout::ChannelsFirst => (shape[1], shape[2..].iter().product()),
                Layout::ChannelsLast => (shape[shape.len() - 1], 1),
            };
            let x = Rng::new(5).normals(shape.iter().product(), 1e4, 1.0);
            let want = host_stats(&x, c, s);
            let bn = BatchNorm::new(g, c).unwrap();
            let xt = Tensor::from_slice(g, &x, &shape).unwrap();
            let got = bn.local_stats(g, &xt, layout).unwrap();
            let what = format!("{shape:?} {layout:?} {path}");
            assert_eq!(got.count, want.count, "{what}");
            let f = |v: &[f64]| v.iter().map(|&m| m as f32).collect::<Vec<_>>();
            assert_close(&format!("{what} mean"), &f(&got.mean), &want.mean);
            // m2 as the biased variance (a count of 1 has m2 = 0).
            let var = f(&got.var_biased());
            assert_close(&format!("{what} variance"), &var, &want.var_biased());
        }
    }
}

#[test]
fn with_stats_of_the_whole_batch_matches_forward_train() {
    with_stats_matches(gpu(), 6, 8);
}

#[test]
fn chunked_bindings_match_too() {
    // 16 KiB items, a 176 KiB part against 64 KiB bindings: statistics and apply in chunks.
    with_stats_matches(gpu_small_bindings(), 12, 1000);
}

/// Normalizing a part with the merged statistics gives the single-process result there.
fn with_stats_matches(g: &Gpu, n: usize, s: usize) {
    let c = 4;
    let x = Rng::new(9).normals(n * c * s, 3.0, 1.5);
    let whole = Tensor::from_slice(g, &x, &[n, c, s]).unwrap();
    let mut single = BatchNorm::new(g, c).unwrap();
    let want = single
        .forward_train(g, &whole, Layout::ChannelsFirst)
        .unwrap();
    let mut bn = BatchNorm::new(g, c).unwrap();
    let parts: Vec<Tensor> = [(0, 1), (1, n)]
        .iter()
        .map(|&(a, b)| Tensor::from_slice(g, &x[a * c * s..b * c * s], &[b - a, c, s]).unwrap())
        .collect();
    let stats: Vec<ChannelStats> = parts
        .iter()
        .map(|p| bn.local_stats(g, p, Layout::ChannelsFirst).unwrap())
        .collect();
    let global = ChannelStats::merge(&stats).unwrap();
    let out = bn
        .forward_train_with_stats(g, &parts[1], Layout::ChannelsFirst, &global)
        .unwrap();
    let want_y: Vec<f64> = want.y.to_vec(g).unwrap()[c * s..]
        .iter()
        .map(|&v| v.into())
        .collect();
    assert_close("y", &out.y.to_vec(g).unwrap(), &want_y);
    for (what, a, b) in [
        ("running_mean", bn.running_mean(), single.running_mean()),
        ("running_var", bn.running_var(), single.running_var()),
        ("mean", &out.mean, &want.mean),
        ("invstd", &out.invstd, &want.invstd),
    ] {
        let b: Vec<f64> = b.to_vec(g).unwrap().iter().map(|&v| v.into()).collect();
        assert_close(what, &a.to_vec(g).unwrap(), &b);
    }
    assert_eq!(bn.num_batches_tracked(), 1);
    let wrong = ChannelStats::merge(&[]).unwrap();
    assert!(bn
        .forward_train_with_stats(g, &parts[1], Layout::ChannelsFirst, &wrong)
        .is_err());
    assert_eq!(bn.num_batches_tracked(), 1, "an error changes nothing");
}

#[test]
fn thread_reducer_gathers_in_rank_order() {
    let handles: Vec<_> = ThreadReducer::group(3)
        .into_iter()
        .map(|r| {
            std::thread::spawn(move || {
                let a = r.all_gather(&[r.rank() as u8; 2]).unwrap();
                let b = r.all_gather(&[10 + r.rank() as u8]).unwrap();
                (a, b)
            })
        })
        .collect();
    for h in handles {
        let (a, b) = h.join().unwrap();
        assert_eq!(a, vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(b, vec![10, 11, 12]);
    }
}
