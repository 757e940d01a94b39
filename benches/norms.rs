//! Criterion benchmarks: every case of `fused_norm::bench::grid()`, each group timing the fused
//! kernel, a vec4 copy of the same bytes, the naive multi-pass baseline and the f64 CPU
//! reference on the same adapter. GPU numbers are device time from timestamp queries where the
//! adapter has them (wall clock around submit + wait otherwise; see `examples/bench.rs`, which
//! also prints the ratios).
//!
//! cargo bench                      # all groups
//! cargo bench -- layer_norm/4096   # one shape

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fused_norm::baseline::{self, Naive};
use fused_norm::bench::{grid, GpuTimer, Op};
use fused_norm::{reference, BatchNorm, BatchNormOutput, Gpu, LayerNorm, LayerNormOutput, Tensor};

fn data(n: usize, seed: u64) -> Vec<f32> {
    fused_norm::bench::pseudo_random(n, seed, 0.25, 0.87)
}

fn gpu_time(
    timer: &GpuTimer,
    iters: u64,
    record: &mut dyn FnMut(&mut wgpu::CommandEncoder) -> fused_norm::Result<()>,
) -> Duration {
    let ms = timer
        .sample_ms(iters as usize, record)
        .expect("benchmark run");
    Duration::from_secs_f64(ms * iters as f64 / 1e3)
}

fn norms(c: &mut Criterion) {
    let gpu = Gpu::new().expect("an adapter");
    let timer = GpuTimer::new(&gpu);
    eprintln!(
        "adapter: {} / timer: {}",
        gpu.describe(),
        timer.kind().name()
    );
    for case in grid() {
        let shape = case.shape.clone();
        let numel: usize = shape.iter().product();
        let xh = data(numel, 1);
        let x = Tensor::from_slice(&gpu, &xh, &shape).unwrap();
        let y = Tensor::empty(&gpu, &shape).unwrap();
        let ln = case.op == Op::LayerNorm;
        let (ch, s) = if ln || case.layout == fused_norm::Layout::ChannelsLast {
            (shape[shape.len() - 1], 1)
        } else {
            (shape[1], shape[2..].iter().product())
        };
        let wh = data(ch, 2);
        let bh = data(ch, 3);
        let w = Tensor::from_slice(&gpu, &wh, &[ch]).unwrap();
        let b = Tensor::from_slice(&gpu, &bh, &[ch]).unwrap();
        let stat = if ln { numel / ch } else { ch };
        let naive = Naive {
            mean: Tensor::empty(&gpu, &[stat]).unwrap(),
            var: Tensor::from_slice(&gpu, &vec![1.0; stat], &[stat]).unwrap(),
            weight: Some(w.clone()),
            bias: Some(b.clone()),
            eps: 1e-5,
        };
        let name = format!(
            "{}/{}",
            case.op.name(),
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x")
        );
        let mut g = c.benchmark_group(name);
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        g.throughput(Throughput::Bytes(2 * numel as u64 * 4));
        g.bench_function("copy", |bch| {
            bch.iter_custom(|n| {
                gpu_time(&timer, n, &mut |e| baseline::encode_copy(&gpu, e, &x, &y))
            })
        });
        match case.op {
            Op::LayerNorm => {
                let layer = LayerNorm::new(&[ch]).weight(w.clone()).bias(b.clone());
                let out = LayerNormOutput {
                    y: y.clone(),
                    mean: Tensor::empty(&gpu, &[stat]).unwrap(),
                    rstd: Tensor::empty(&gpu, &[stat]).unwrap(),
                };
                g.bench_function("fused", |bch| {
                    bch.iter_custom(|n| {
                        gpu_time(&timer, n, &mut |e| layer.encode(&gpu, e, &x, &out))
                    })
                });
                g.bench_function("naive", |bch| {
                    bch.iter_custom(|n| {
                        gpu_time(&timer, n, &mut |e| {
                            baseline::encode_naive_layer_norm(&gpu, e, &x, ch, &y, &naive)
                        })
                    })
                });
                g.bench_function("cpu_f64", |bch| {
                    bch.iter_custom(|n| {
                        let t = Instant::now();
                        for _ in 0..n {
                            std::hint::black_box(reference::layer_norm(
                                &xh,
                                ch,
                                Some(&wh),
                                Some(&bh),
                                1e-5,
                            ));
                        }
                        t.elapsed()
                    })
                });
            }
            Op::BatchNormTrain | Op::BatchNormEval => {
                let train = case.op == Op::BatchNormTrain;
                let bn = BatchNorm::new(&gpu, ch)
                    .unwrap()
                    .weight(w.clone())
                    .bias(b.clone());
                let out = BatchNormOutput {
                    y: y.clone(),
                    mean: Tensor::empty(&gpu, &[ch]).unwrap(),
                    invstd: Tensor::empty(&gpu, &[ch]).unwrap(),
                };
                let layout = case.layout;
                g.bench_function("fused", |bch| {
                    bch.iter_custom(|n| {
                        gpu_time(&timer, n, &mut |e| {
                            if train {
                                bn.encode_train(&gpu, e, &x, layout, &out).map(drop)
                            } else {
                                bn.encode_eval(&gpu, e, &x, layout, &y)
                            }
                        })
                    })
                });
                g.bench_function("naive", |bch| {
                    bch.iter_custom(|n| {
                        gpu_time(&timer, n, &mut |e| {
                            baseline::encode_naive_batch_norm(
                                &gpu, e, &x, layout, &y, &naive, train,
                            )
                        })
                    })
                });
                g.bench_function("cpu_f64", |bch| {
                    bch.iter_custom(|n| {
                        let t = Instant::now();
                        for _ in 0..n {
                            let st = reference::batch_stats(&xh, ch, s);
                            std::hint::black_box(reference::batch_norm_apply(
                                &xh,
                                ch,
                                s,
                                &st.mean,
                                &st.var,
                                Some(&wh),
                                Some(&bh),
                                1e-5,
                            ));
                        }
                        t.elapsed()
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, norms);
criterion_main!(benches);
