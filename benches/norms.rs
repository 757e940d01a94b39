//! Criterion benchmarks: every case of the grid in `common`, each group timing the fused
//! kernel, a vec4 copy of the same bytes, the naive multi-pass baseline and the f64 reference
//! on the same adapter. GPU numbers are device time from timestamp queries where the adapter
//! has them (wall clock around submit + wait otherwise; `examples/bench.rs` prints the ratios).
//!
//! cargo bench                      # all groups
//! cargo bench -- layer_norm/4096   # one shape

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{GpuTimer, Work};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn gpu_time(timer: &GpuTimer, iters: u64, work: &mut Work) -> Duration {
    let ms = timer
        .sample_ms(iters as usize, work)
        .expect("benchmark run");
    Duration::from_secs_f64(ms * iters as f64 / 1e3)
}

fn norms(c: &mut Criterion) {
    let gpu = common::gpu().expect("an adapter");
    let base = Arc::new(common::baseline::Baselines::new(&gpu));
    let timer = GpuTimer::new(&gpu);
    eprintln!(
        "adapter: {} / timer: {}",
        gpu.describe(),
        timer.kind().name()
    );
    for case in common::grid() {
        let mut p = common::prepare(&gpu, &base, &case, None).expect("a prepared case");
        let dims: Vec<String> = case.shape.iter().map(|d| d.to_string()).collect();
        let name = format!(
            "{}/{}/{}",
            case.op.name(),
            dims.join("x"),
            case.layout_name()
        );
        let mut g = c.benchmark_group(name);
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        g.throughput(Throughput::Bytes(p.bytes));
        g.bench_function("copy", |b| {
            b.iter_custom(|n| gpu_time(&timer, n, &mut p.copy))
        });
        g.bench_function("fused", |b| {
            b.iter_custom(|n| gpu_time(&timer, n, &mut p.fused))
        });
        if let Some(naive) = &mut p.naive {
            g.bench_function("naive", |b| b.iter_custom(|n| gpu_time(&timer, n, naive)));
        }
        g.bench_function("cpu_f64", |b| {
            b.iter_custom(|n| {
                let t = Instant::now();
                for _ in 0..n {
                    (p.cpu)();
                }
                t.elapsed()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, norms);
criterion_main!(benches);
