//! SyncBatchNorm across processes over MPI (feature `mpi`):
//!
//! ```sh
//! cargo build --release --features mpi --example sync_batch_norm
//! mpirun -np 2 target/release/examples/sync_batch_norm           # check against one process
//! mpirun -np 2 target/release/examples/sync_batch_norm --bench   # timings for BENCHMARKS.md
//! ```
//!
//! Splits a fixed batch `[32, 64, 56, 56]` across the ranks (one wgpu device per process),
//! runs `forward_train_sync` on each part, and compares with single-process BatchNorm on the
//! whole batch: rank 0 prints the largest difference of y (over all ranks) and of the running
//! statistics. `--bench` times forward_train_sync against forward_train of the same part per
//! rank, and the exchange alone, for C = 64 .. 4096 at the same number of values.

use std::time::Instant;

use fused_norm::dist::MpiReducer;
use fused_norm::{BatchNorm, Gpu, Layout, NormError, StatsReducer, Tensor};
use mpi::traits::CommunicatorCollectives;

/// Deterministic test data: channel `ch` has mean `ch * 0.1 - 3` and std `1 + ch % 3`.
fn batch(shape: &[usize]) -> Vec<f32> {
    let (c, s) = (shape[1], shape[2..].iter().product::<usize>());
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        ((state.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..shape.iter().product::<usize>())
        .map(|i| {
            let ch = (i / s) % c;
            let z = (-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos();
            (ch as f64 * 0.1 - 3.0 + (1.0 + (ch % 3) as f64) * z) as f32
        })
        .collect()
}

/// Samples `[start, end)` of `n` that `rank` of `size` gets (the first `n % size` get one more).
fn part(n: usize, rank: usize, size: usize) -> (usize, usize) {
    let start = rank * (n / size) + rank.min(n % size);
    (start, start + n / size + usize::from(rank < n % size))
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .fold(0.0, f64::max)
}

/// The largest of every rank's `v` (on every rank).
fn max_over_ranks(r: &MpiReducer, v: f64) -> Result<f64, NormError> {
    let all = r.all_gather(&v.to_le_bytes())?;
    Ok(all
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .fold(0.0, f64::max))
}

/// Returns whether every difference is below 1e-5 and the ranks agree bit for bit.
fn check(r: &MpiReducer, gpu: &Gpu) -> Result<bool, NormError> {
    let shape = [32, 64, 56, 56];
    let x = batch(&shape);
    let per: usize = shape[1..].iter().product();
    let (n0, n1) = part(shape[0], r.rank(), r.size());
    let mine = Tensor::from_slice(gpu, &x[n0 * per..n1 * per], &[n1 - n0, 64, 56, 56])?;
    let mut sync = BatchNorm::new(gpu, 64)?;
    let t = Instant::now();
    let out = sync.forward_train_sync(gpu, &mine, Layout::ChannelsFirst, r)?;
    let y = out.y.to_vec(gpu)?;
    let sync_s = t.elapsed().as_secs_f64();

    // Single-process BatchNorm on the whole batch (every rank computes it for its own part).
    let whole = Tensor::from_slice(gpu, &x, &shape)?;
    let mut single = BatchNorm::new(gpu, 64)?;
    let want = single.forward_train(gpu, &whole, Layout::ChannelsFirst)?;
    let want_y = want.y.to_vec(gpu)?;
    let dy = max_over_ranks(r, max_diff(&y, &want_y[n0 * per..n1 * per]))?;
    let dm = max_diff(
        &sync.running_mean().to_vec(gpu)?,
        &single.running_mean().to_vec(gpu)?,
    );
    let dv = max_diff(
        &sync.running_var().to_vec(gpu)?,
        &single.running_var().to_vec(gpu)?,
    );
    let dstat = max_diff(&out.invstd.to_vec(gpu)?, &want.invstd.to_vec(gpu)?)
        .max(max_diff(&out.mean.to_vec(gpu)?, &want.mean.to_vec(gpu)?));
    // Every rank must hold the same running statistics, bit for bit.
    let bits: Vec<u8> = [sync.running_mean(), sync.running_var()]
        .iter()
        .flat_map(|t| t.to_vec(gpu).unwrap_or_default())
        .flat_map(f32::to_le_bytes)
        .collect();
    let all = r.all_gather(&bits)?;
    let identical = all.chunks_exact(bits.len()).all(|b| b == &bits[..]);
    let ok = dy < 1e-5 && dm < 1e-5 && dv < 1e-5 && identical;
    if r.rank() == 0 {
        println!(
            "batch {shape:?} split over {} ranks (rank 0: samples {n0}..{n1}), {}",
            r.size(),
            gpu.describe()
        );
        println!(
            "forward_train_sync on rank 0: {:.1} ms (first call, with pipeline creation)",
            sync_s * 1e3
        );
        println!("max |y - y_single|              = {dy:.3e}");
        println!("max |running_mean - single|     = {dm:.3e}");
        println!("max |running_var - single|      = {dv:.3e}");
        println!("max |batch mean, invstd - single| = {dstat:.3e}");
        println!("running statistics bit-identical on every rank: {identical}");
        println!(
            "{}",
            if ok {
                "OK (all below 1e-5)"
            } else {
                "MISMATCH"
            }
        );
    }
    Ok(ok)
}

/// Median wall times in ms of each of `fs` over `iters` rounds after two warm-up rounds; a
/// round runs each once, in turn (so drifts hit all alike), every rank starting together.
fn time(
    r: &MpiReducer,
    iters: usize,
    fs: &mut [&mut dyn FnMut() -> Result<(), NormError>],
) -> Result<Vec<f64>, NormError> {
    let mut v = vec![Vec::new(); fs.len()];
    for i in 0..iters + 2 {
        for (k, f) in fs.iter_mut().enumerate() {
            r.communicator().barrier();
            let t = Instant::now();
            f()?;
            if i >= 2 {
                v[k].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    // The slowest rank's median.
    v.into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            max_over_ranks(r, t[t.len() / 2])
        })
        .collect()
}

fn bench(r: &MpiReducer, gpu: &Gpu) -> Result<(), NormError> {
    if r.rank() == 0 {
        println!("{} ranks, each on {}", r.size(), gpu.describe());
        println!(
            "| shape (global) | per rank | forward_train | forward_train_sync | sync / train \
             | local_stats | exchange |"
        );
        println!("|---|---|---|---|---|---|---|");
    }
    for (c, hw) in [(64, 56), (256, 28), (1024, 14), (4096, 7)] {
        let (n0, n1) = part(32, r.rank(), r.size());
        let shape = [n1 - n0, c, hw, hw];
        let x = Tensor::from_slice(gpu, &batch(&shape), &shape)?;
        let mut bn = BatchNorm::new(gpu, c)?;
        let mut sync_bn = BatchNorm::new(gpu, c)?;
        let stats_bn = BatchNorm::new(gpu, c)?;
        let stats = bn.local_stats(gpu, &x, Layout::ChannelsFirst)?;
        let cf = Layout::ChannelsFirst;
        let t = time(
            r,
            20,
            &mut [
                &mut || bn.forward_train(gpu, &x, cf).map(drop),
                &mut || sync_bn.forward_train_sync(gpu, &x, cf, r).map(drop),
                &mut || stats_bn.local_stats(gpu, &x, cf).map(drop),
                &mut || {
                    r.agree(c, None)?;
                    r.all_gather_stats(&stats).map(drop)
                },
            ],
        )?;
        if r.rank() == 0 {
            println!(
                "| [32, {c}, {hw}, {hw}] | {shape:?} | {:.1} ms | {:.1} ms | {:.2}x | {:.1} ms | {:.3} ms |",
                t[0],
                t[1],
                t[1] / t[0],
                t[2],
                t[3]
            );
        }
    }
    Ok(())
}

fn main() {
    let universe = mpi::initialize().expect("MPI initializes once");
    let r = MpiReducer::new(universe.world());
    let gpu = Gpu::new().expect("a wgpu adapter (on a machine without GPU: mesa-vulkan-drivers)");
    let res = if std::env::args().any(|a| a == "--bench") {
        bench(&r, &gpu).map(|()| true)
    } else {
        check(&r, &gpu)
    };
    let ok = res.unwrap_or_else(|e| {
        eprintln!("rank {}: {e}", r.rank());
        false
    });
    drop(universe);
    std::process::exit(i32::from(!ok));
}
