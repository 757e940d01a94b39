//! SyncBatchNorm cases every rank runs, shared by the in-process suite (ThreadReducer, in
//! tests/sync_batch_norm.rs) and the multi-process one (MpiReducer, in tests/mpi.rs). Each rank
//! builds the same global batch, takes its part, runs `forward_train_sync` and `backward_sync`,
//! and checks its part of y and dx and the statistics against the f64 reference of the whole
//! batch; the ranks then compare their statistics bit for bit. Checks never panic across a collective: a rank that fails a
//! check still takes part in every exchange, so no rank hangs.
#![allow(dead_code)]

use std::panic::{catch_unwind, AssertUnwindSafe};

use fused_norm::{
    reference, BatchNorm, BatchNormOutput, Gpu, Gradients, Layout, NormError, StatsReducer, Tensor,
};

use crate::common::{assert_bits_eq, assert_close, assert_close_bounded, Rng};

/// One split of a global batch across the ranks.
#[derive(Clone)]
pub struct Split {
    pub name: &'static str,
    pub layout: Layout,
    pub c: usize,
    /// Dims of one sample besides C (spatial dims).
    pub inner: Vec<usize>,
    /// Samples of each rank, by rank (cycled when there are more ranks).
    pub counts: Vec<usize>,
    pub offset: f64,
    pub affine: bool,
    pub momentum: Option<f32>,
    pub unbiased: bool,
    /// A NaN in channel 1 of the last rank's part.
    pub nan_on_last: bool,
}

impl Split {
    fn base(name: &'static str, layout: Layout, c: usize, inner: &[usize]) -> Split {
        Split {
            name,
            layout,
            c,
            inner: inner.to_vec(),
            counts: vec![2],
            offset: 0.5,
            affine: false,
            momentum: Some(0.1),
            unbiased: true,
            nan_on_last: false,
        }
    }

    fn counts(&self, size: usize) -> Vec<usize> {
        (0..size)
            .map(|r| self.counts[r % self.counts.len()])
            .collect()
    }

    fn shape(&self, n: usize) -> Vec<usize> {
        match self.layout {
            Layout::ChannelsFirst => [vec![n, self.c], self.inner.clone()].concat(),
            Layout::ChannelsLast => [vec![n], self.inner.clone(), vec![self.c]].concat(),
        }
    }

    /// `(c, s)` of the `[n, c, s]` view.
    fn cs(&self) -> (usize, usize) {
        match self.layout {
            Layout::ChannelsFirst => (self.c, self.inner.iter().product()),
            Layout::ChannelsLast => (self.c, 1),
        }
    }
}

/// The splits: equal and uneven (down to one sample on rank 0), both layouts, vec4 and scalar
/// paths, a channel mean of 1e4, affine, cumulative momentum, biased running variance, NaN.
pub fn splits() -> Vec<Split> {
    let cf = Layout::ChannelsFirst;
    let cl = Layout::ChannelsLast;
    vec![
        Split::base("equal, channels-first", cf, 5, &[3, 4]),
        Split {
            affine: true,
            ..Split::base("equal, channels-last, affine", cl, 8, &[3, 5])
        },
        Split {
            counts: vec![1, 4, 2],
            ..Split::base("uneven (1, 4, 2 samples), channels-first", cf, 6, &[7])
        },
        Split {
            counts: vec![1, 3, 6],
            affine: true,
            ..Split::base("uneven (1, 3, 6 rows), channels-last C=6", cl, 6, &[])
        },
        Split {
            counts: vec![3, 1],
            offset: 1e4,
            momentum: None,
            unbiased: false,
            ..Split::base("channel means 1e4, momentum None, biased", cf, 4, &[4, 4])
        },
        Split {
            nan_on_last: true,
            ..Split::base("NaN in the last rank's channel 1", cl, 4, &[2])
        },
    ]
}

/// What a rank computed, for the cross-rank comparison.
fn stat_bits(gpu: &Gpu, out: &BatchNormOutput, bn: &BatchNorm) -> Vec<u8> {
    [&out.mean, &out.invstd, bn.running_mean(), bn.running_var()]
        .iter()
        .flat_map(|t| t.to_vec(gpu).unwrap_or_default())
        .flat_map(f32::to_le_bytes)
        .collect()
}

fn module(gpu: &Gpu, sp: &Split) -> Result<BatchNorm, NormError> {
    let c = sp.c;
    let mut bn = BatchNorm::new(gpu, c)?
        .momentum(sp.momentum)
        .running_var_unbiased(sp.unbiased);
    if sp.affine {
        let (w, b) = affine(c);
        bn = bn
            .weight(Tensor::from_slice(gpu, &w, &[c])?)
            .bias(Tensor::from_slice(gpu, &b, &[c])?);
    }
    Ok(bn)
}

fn caught(f: impl FnOnce()) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

/// Runs one split on this rank: twice (reruns must be bit-identical), checks its part against
/// the f64 reference of the whole batch, and the statistics against every other rank's.
pub fn run_split(r: &dyn StatsReducer, gpu: &Gpu, sp: &Split) -> Result<(), String> {
    let counts = sp.counts(r.size());
    let total: usize = counts.iter().sum();
    let start: usize = counts[..r.rank()].iter().sum();
    let full_shape = sp.shape(total);
    let per_sample: usize = full_shape[1..].iter().product();
    let mut x = Rng::new(11).normals(total * per_sample, sp.offset, 1.0);
    let (c, s) = sp.cs();
    // Alternate channel means around +-offset.
    for (i, v) in x.iter_mut().enumerate() {
        if (i / s) % c % 2 == 1 {
            *v -= 2.0 * sp.offset as f32;
        }
    }
    if sp.nan_on_last {
        let last = total - counts[counts.len() - 1];
        x[last * per_sample + s] = f32::NAN; // channel 1 of the last rank's first sample
    }
    let (lo, hi) = (start * per_sample, (start + counts[r.rank()]) * per_sample);
    let part = &x[lo..hi];
    let dy = Rng::new(12).normals(total * per_sample, 0.0, 1.0);
    let run = || -> Result<(BatchNormOutput, BatchNorm, Gradients), NormError> {
        let shape = sp.shape(counts[r.rank()]);
        let xt = Tensor::from_slice(gpu, part, &shape)?;
        let mut bn = module(gpu, sp)?;
        let out = bn.forward_train_sync(gpu, &xt, sp.layout, r)?;
        let dyt = Tensor::from_slice(gpu, &dy[lo..hi], &shape)?;
        let g = bn.backward_sync(gpu, &xt, &dyt, &out.mean, &out.invstd, sp.layout, r)?;
        Ok((out, bn, g))
    };
    let first = run();
    let second = run();
    // Collective, whatever happened locally: every rank's statistics, bit for bit.
    let bits = match &first {
        Ok((out, bn, _)) => stat_bits(gpu, out, bn),
        Err(_) => Vec::new(),
    };
    let want_len = 4 * 4 * c;
    let mut padded = bits.clone();
    padded.resize(want_len, 0);
    let all = r.all_gather(&padded).map_err(|e| e.to_string())?;
    let (first, second) = (
        first.map_err(|e| e.to_string())?,
        second.map_err(|e| e.to_string())?,
    );
    caught(|| {
        assert_eq!(bits.len(), want_len, "statistics read back");
        for (rank, theirs) in all.chunks_exact(want_len).enumerate() {
            assert!(
                theirs == &bits[..],
                "rank {rank}'s statistics differ from rank {}'s",
                r.rank()
            );
        }
        let st = reference::batch_stats(&x, c, s);
        let (w, b) = affine(c);
        let (w, b) = if sp.affine {
            (Some(w), Some(b))
        } else {
            (None, None)
        };
        let eps = 1e-5;
        let want_y = reference::batch_norm_apply(
            &x,
            c,
            s,
            &st.mean,
            &st.var,
            w.as_deref(),
            b.as_deref(),
            eps,
        );
        let want_y = &want_y[lo..hi];
        let (out, bn, grads) = &first;
        let what = format!("{} rank {}/{}", sp.name, r.rank(), r.size());
        let y = out.y.to_vec(gpu).unwrap();
        assert_close(&format!("{what} y"), &y, want_y);
        assert_close(
            &format!("{what} mean"),
            &out.mean.to_vec(gpu).unwrap(),
            &st.mean,
        );
        let invstd: Vec<f64> = st.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        assert_close(
            &format!("{what} invstd"),
            &out.invstd.to_vec(gpu).unwrap(),
            &invstd,
        );
        let factor = sp.momentum.map_or(1.0, f64::from);
        let (mut rm, mut rv) = (vec![0.0; c], vec![1.0; c]);
        let batch_var = if sp.unbiased {
            &st.var_unbiased
        } else {
            &st.var
        };
        reference::update_running(&mut rm, &st.mean, factor);
        reference::update_running(&mut rv, batch_var, factor);
        assert_close(
            &format!("{what} running_mean"),
            &bn.running_mean().to_vec(gpu).unwrap(),
            &rm,
        );
        assert_close(
            &format!("{what} running_var"),
            &bn.running_var().to_vec(gpu).unwrap(),
            &rv,
        );
        assert_eq!(bn.num_batches_tracked(), 1);
        check_backward(
            &what,
            gpu,
            (&x, &dy),
            (lo, hi),
            (c, s),
            w.as_deref(),
            out,
            grads,
        );
        let (out2, bn2, grads2) = &second;
        assert_bits_eq(&format!("{what} rerun y"), &y, &out2.y.to_vec(gpu).unwrap());
        let dx = grads.dx.to_vec(gpu).unwrap();
        assert_bits_eq(
            &format!("{what} rerun dx"),
            &dx,
            &grads2.dx.to_vec(gpu).unwrap(),
        );
        assert!(
            stat_bits(gpu, out2, bn2) == bits,
            "{what}: rerun statistics differ"
        );
    })
}

/// This rank's dx against the f64 backward of the whole batch at the forward's saved (global)
/// statistics, and its dweight / dbias against the sums over its own part (PyTorch's
/// SyncBatchNorm leaves those local). Bounds: dx subtracts two sums, so each value's bound is
/// invstd * (|w dy| + mean|w dy| + |xhat| mean|w dy xhat|) of its channel; the sums', the
/// sums of their terms' magnitudes.
#[allow(clippy::too_many_arguments)]
fn check_backward(
    what: &str,
    gpu: &Gpu,
    (x, dy): (&[f32], &[f32]),
    (lo, hi): (usize, usize),
    (c, s): (usize, usize),
    w: Option<&[f32]>,
    out: &BatchNormOutput,
    g: &Gradients,
) {
    let f64s = |t: &Tensor| -> Vec<f64> {
        t.to_vec(gpu)
            .unwrap()
            .iter()
            .map(|&v| f64::from(v))
            .collect()
    };
    let (mean, invstd) = (f64s(&out.mean), f64s(&out.invstd));
    let whole = reference::batch_norm_backward(x, dy, c, s, w, &mean, &invstd, true);
    let local =
        reference::batch_norm_backward(&x[lo..hi], &dy[lo..hi], c, s, w, &mean, &invstd, true);
    let ch = |i: usize| (i / s) % c;
    let wt = |i: usize| w.map_or(1.0, |w| f64::from(w[ch(i)]));
    let xh = |i: usize| (f64::from(x[i]) - mean[ch(i)]) * invstd[ch(i)];
    let (mut mg, mut mgx, mut n) = (vec![0.0; c], vec![0.0; c], vec![0.0; c]);
    let (mut bw, mut bb) = (vec![0.0; c], vec![0.0; c]);
    for i in 0..x.len() {
        let gi = f64::from(dy[i]) * wt(i);
        mg[ch(i)] += gi.abs();
        mgx[ch(i)] += (gi * xh(i)).abs();
        n[ch(i)] += 1.0;
        if (lo..hi).contains(&i) {
            bw[ch(i)] += (f64::from(dy[i]) * xh(i)).abs();
            bb[ch(i)] += f64::from(dy[i]).abs();
        }
    }
    let bound: Vec<f64> = (lo..hi)
        .map(|i| {
            let k = ch(i);
            let g = (f64::from(dy[i]) * wt(i)).abs();
            whole.dx[i].abs() + invstd[k] * (g + (mg[k] + xh(i).abs() * mgx[k]) / n[k])
        })
        .collect();
    let dx = g.dx.to_vec(gpu).unwrap();
    assert_close_bounded(&format!("{what} dx"), &dx, &whole.dx[lo..hi], &bound);
    assert_eq!(g.dweight.is_some(), w.is_some(), "{what}: dweight");
    if let Some(dw) = &g.dweight {
        let dw = dw.to_vec(gpu).unwrap();
        assert_close_bounded(&format!("{what} dweight"), &dw, &local.dweight, &bw);
    }
    if let Some(db) = &g.dbias {
        let db = db.to_vec(gpu).unwrap();
        assert_close_bounded(&format!("{what} dbias"), &db, &local.dbias, &bb);
    }
}

/// Weight and bias of the affine splits.
fn affine(c: usize) -> (Vec<f32>, Vec<f32>) {
    (
        (0..c).map(|i| 0.5 + 0.25 * i as f32).collect(),
        (0..c).map(|i| 0.1 * i as f32 - 0.3).collect(),
    )
}

/// Bad input on some ranks: what each rank passes.
#[derive(Clone, Copy, Debug)]
pub enum Bad {
    /// x with one channel too many.
    Channels,
    /// x of rank 1.
    Shape,
    /// x made by another Gpu.
    Device,
    /// The rank's BatchNorm (and x) have one channel more than the others'.
    ModuleChannels,
}

/// A bad-input case: name, what the bad ranks pass, which ranks are bad for a world size.
pub type BadCase = (&'static str, Bad, fn(usize) -> Vec<usize>);

/// The bad-input cases.
pub fn bad_cases() -> Vec<BadCase> {
    vec![
        ("bad channel count on the last rank", Bad::Channels, |n| {
            vec![n - 1]
        }),
        ("bad shape on the last rank", Bad::Shape, |n| vec![n - 1]),
        ("x on another device on rank 0", Bad::Device, |_| vec![0]),
        (
            "BatchNorm with other channels on the last rank",
            Bad::ModuleChannels,
            |n| {
                if n > 1 {
                    vec![n - 1]
                } else {
                    vec![]
                }
            },
        ),
        ("bad input on every rank but 0", Bad::Channels, |n| {
            (1..n).collect()
        }),
    ]
}

/// Runs one bad-input case: every rank must return `NormError::Collective` naming the lowest
/// bad rank (or succeed when no rank is bad), with its module unchanged.
pub fn run_bad(
    r: &dyn StatsReducer,
    gpu: &Gpu,
    other_gpu: &dyn Fn() -> Gpu,
    bad: Bad,
    bad_ranks: &[usize],
) -> Result<(), String> {
    let c = 4;
    let me_bad = bad_ranks.contains(&r.rank());
    let res = (|| -> Result<BatchNorm, NormError> {
        let extra = usize::from(me_bad && matches!(bad, Bad::ModuleChannels));
        let mut bn = BatchNorm::new(gpu, c + extra)?;
        let x = match (me_bad, bad) {
            (true, Bad::Channels) => Tensor::from_slice(gpu, &[1.0; 10], &[2, 5])?,
            (true, Bad::Shape) => Tensor::from_slice(gpu, &[1.0; 8], &[8])?,
            (true, Bad::Device) => Tensor::from_slice(&other_gpu(), &[1.0; 8], &[2, 4])?,
            (true, Bad::ModuleChannels) => Tensor::from_slice(gpu, &[1.0; 10], &[2, 5])?,
            (false, _) => {
                Tensor::from_slice(gpu, &[1.0, 2.0, 3.0, 4.0, 2.0, 2.0, 2.0, 2.0], &[2, 4])?
            }
        };
        bn.forward_train_sync(gpu, &x, Layout::ChannelsLast, r)?;
        Ok(bn)
    })();
    match (bad_ranks.first(), res) {
        (None, Ok(_)) => Ok(()),
        (None, Err(e)) => Err(format!("no rank is bad, got {e}")),
        (Some(&want), Ok(_)) => Err(format!("rank {want} is bad, rank {} succeeded", r.rank())),
        (Some(&want), Err(NormError::Collective { rank, message })) if rank == want => {
            if message.is_empty() {
                Err("empty message".into())
            } else {
                Ok(())
            }
        }
        (Some(&want), Err(e)) => Err(format!("want Collective {{ rank: {want} }}, got {e:?}")),
    }
}

/// Every case on this rank, in the same order on every rank: the splits, with the bad-input
/// cases between them (a good split after a failed call shows the ranks are still in step).
/// Returns (case name, outcome) per case.
pub fn run_all(
    r: &dyn StatsReducer,
    gpu: &Gpu,
    other_gpu: &dyn Fn() -> Gpu,
) -> Vec<(String, Result<(), String>)> {
    let mut out = Vec::new();
    let mut bad = bad_cases().into_iter();
    for sp in splits() {
        out.push((sp.name.to_string(), run_split(r, gpu, &sp)));
        if let Some((name, kind, ranks)) = bad.next() {
            let res = run_bad(r, gpu, other_gpu, kind, &ranks(r.size()));
            out.push((name.to_string(), res));
        }
    }
    out
}
