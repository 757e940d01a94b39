//! SyncBatchNorm across processes over MPI (feature `mpi`). Run by `.ci/run` as
//! `mpirun --oversubscribe -np 2 BIN` and `-np 3` (alone it is one rank). Every rank runs the
//! cases of tests/common/sync_cases.rs (the ones the in-process suite runs with threads), with
//! its own wgpu device; rank 0 prints each case's outcome over all ranks and one closing line
//! `N passed, M failed`. Every rank exits non-zero when a case failed on any rank.

mod common;
#[path = "common/sync_cases.rs"]
mod sync_cases;

use fused_norm::{dist::MpiReducer, Gpu, StatsReducer};

fn main() {
    let universe = mpi::initialize().expect("MPI initializes once");
    let r = MpiReducer::new(universe.world());
    let gpu = Gpu::new().expect("a wgpu adapter (see README: mesa-vulkan-drivers)");
    if r.rank() == 0 {
        println!("{} ranks, rank 0 on {}", r.size(), gpu.describe());
    }
    let other = || Gpu::new().expect("a second device");
    let results = sync_cases::run_all(&r, &gpu, &other);
    for (name, res) in &results {
        if let Err(e) = res {
            eprintln!("rank {}: {name}: FAILED: {e}", r.rank());
        }
    }
    // One byte per case and rank: did it fail there?
    let flags: Vec<u8> = results
        .iter()
        .map(|(_, res)| u8::from(res.is_err()))
        .collect();
    let all = r.all_gather(&flags).expect("gather outcomes");
    let failed_on = |case: usize| -> Vec<usize> {
        all.chunks_exact(flags.len())
            .enumerate()
            .filter(|(_, f)| f[case] != 0)
            .map(|(rank, _)| rank)
            .collect()
    };
    let failed = (0..results.len())
        .filter(|&i| !failed_on(i).is_empty())
        .count();
    if r.rank() == 0 {
        for (i, (name, _)) in results.iter().enumerate() {
            match failed_on(i).as_slice() {
                [] => println!("ok      {name}"),
                ranks => println!("FAILED  {name} (ranks {ranks:?})"),
            }
        }
        println!("{} passed, {failed} failed", results.len() - failed);
    }
    drop(universe);
    std::process::exit(i32::from(failed > 0));
}
