//! SyncBatchNorm: batch statistics of a batch split across processes (or threads, or GPUs).
//! Each rank reduces its part on its GPU ([`BatchNorm::local_stats`]), the ranks exchange the
//! per-channel (count, mean, m2) through a [`StatsReducer`], every rank merges them in rank
//! order in f64 ([`ChannelStats::merge`]) and normalizes with the result
//! ([`BatchNorm::forward_train_with_stats`]): identical bits on every rank. The backward
//! ([`BatchNorm::backward_sync`]) exchanges each rank's per-channel sum(dy) and
//! sum(dy * xhat) the same way.

use super::{BatchNorm, BatchNormOutput, Layout, TrainCommit};
use crate::context::Gpu;
use crate::error::{NormError, Result};
use crate::norms::{BwdOp, Gradients};
use crate::ops::channels::{BwdStage, Saved, Source};
use crate::ops::rows_bwd::BwdOut;
use crate::stats::{ChannelStats, StatsReducer};
use crate::tensor::Tensor;

impl BatchNorm {
    /// Per-channel statistics of `x` (count, mean, m2), reduced on the GPU by the training
    /// kernels (pivot, partials, fixed-order merge) and read back as f64. Blocks. Nothing of
    /// the module changes.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// let x = Tensor::from_slice(&gpu, &[1.0, 2.0, 3.0, 4.0], &[4, 1])?;
    /// let bn = BatchNorm::new(&gpu, 1)?;
    /// let st = bn.local_stats(&gpu, &x, Layout::ChannelsLast)?;
    /// assert_eq!((st.count[0], st.mean[0], st.m2[0]), (4, 2.5, 5.0));
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn local_stats(&self, gpu: &Gpu, x: &Tensor, layout: Layout) -> Result<ChannelStats> {
        x.check_device(gpu, "x")?;
        // The sync forward is f32 only (half x: single-process BatchNorm; backward_sync takes
        // half).
        x.check_dtype("x (SyncBatchNorm)", crate::DType::F32)?;
        let op = self.op(gpu, x.shape(), layout)?;
        let c = self.channels;
        let out = Tensor::empty(gpu, &[c, 4])?;
        let mut enc = gpu.encoder();
        // Statistics only: nothing is written to the output argument.
        op.encode(gpu, &mut enc, x, x, Source::Local(&out))?;
        gpu.submit_wait(enc)?;
        let v = out.to_vec(gpu)?;
        // (pivot, mean of x - pivot, m2, -) per channel; the pivot keeps the mean exact.
        Ok(ChannelStats {
            count: vec![op.n * op.s; c],
            mean: v
                .chunks_exact(4)
                .map(|q| f64::from(q[0]) + f64::from(q[1]))
                .collect(),
            m2: v.chunks_exact(4).map(|q| f64::from(q[2])).collect(),
        })
    }

    /// Training forward with given batch statistics (usually [`ChannelStats::merge`] of every
    /// rank's [`BatchNorm::local_stats`]): normalizes x with their mean and biased variance,
    /// and updates the running statistics from them with their count (unbiased variance
    /// m2 / (count - 1) unless `.running_var_unbiased(false)`). The f64 statistics are rounded
    /// to f32 once on the host, so ranks with the same statistics compute the same bits.
    /// Blocks. On error nothing changes.
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let (a, b) = (Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?, Tensor::from_slice(&gpu, &[2.0; 12], &[3, 4])?);
    /// let mut bn = BatchNorm::new(&gpu, 4)?;
    /// let parts = [bn.local_stats(&gpu, &a, Layout::ChannelsLast)?, bn.local_stats(&gpu, &b, Layout::ChannelsLast)?];
    /// let global = ChannelStats::merge(&parts)?;
    /// let out = bn.forward_train_with_stats(&gpu, &a, Layout::ChannelsLast, &global)?; // a's rows
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn forward_train_with_stats(
        &mut self,
        gpu: &Gpu,
        x: &Tensor,
        layout: Layout,
        stats: &ChannelStats,
    ) -> Result<BatchNormOutput> {
        x.check_device(gpu, "x")?;
        // The sync forward is f32 only (half x: single-process BatchNorm; backward_sync takes
        // half).
        x.check_dtype("x (SyncBatchNorm)", crate::DType::F32)?;
        let op = self.op(gpu, x.shape(), layout)?;
        let c = self.channels;
        if stats.channels() != c || stats.mean.len() != c || stats.m2.len() != c {
            return Err(NormError::Shape(format!(
                "statistics for {} channels, the BatchNorm has {c}",
                stats.channels()
            )));
        }
        let var_b = stats.var_biased();
        let var_run = if self.unbiased {
            stats.var_unbiased()
        } else {
            var_b.clone()
        };
        // The f32 mean is the apply's centre; the rest of the f64 mean goes into the shift.
        let given: Vec<f32> = (0..c)
            .flat_map(|ch| {
                let m = stats.mean[ch];
                let rest = m - f64::from(m as f32);
                [m, var_b[ch], var_run[ch], rest].map(|v| v as f32)
            })
            .collect();
        let given = Tensor::from_slice(gpu, &given, &[c, 4])?;
        let out = BatchNormOutput {
            y: Tensor::empty(gpu, x.shape())?,
            mean: Tensor::empty(gpu, &[c])?,
            invstd: Tensor::empty(gpu, &[c])?,
        };
        let update = self.track_running_stats;
        let mut enc = gpu.encoder();
        {
            let _turn = gpu.turn();
            self.adopt_pending(gpu, &mut enc)?;
            let source = Source::Given {
                stats: &given,
                mean: &out.mean,
                invstd: &out.invstd,
                update: update.then_some(self.running(self.factor())),
            };
            op.encode(gpu, &mut enc, x, &out.y, source)?;
        }
        gpu.submit_wait(enc)?;
        TrainCommit { counted: update }.commit(self);
        Ok(out)
    }

    /// SyncBatchNorm training forward: x is this rank's part of the global batch; normalizes
    /// it with the statistics of the whole batch (all ranks' parts) and updates the running
    /// statistics with them, identically on every rank. Collective: every rank of `reducer`
    /// calls it, with its own part (parts may differ in size, down to one value per channel).
    /// If any rank's input is bad, every rank returns [`NormError::Collective`] naming the
    /// lowest such rank, after one fixed-size exchange (no rank waits for a failed one).
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0; 8], &[2, 4])?;
    /// let solo = ThreadReducer::group(1).pop().unwrap(); // or dist::MpiReducer::new(world)
    /// let mut bn = BatchNorm::new(&gpu, 4)?;
    /// let out = bn.forward_train_sync(&gpu, &x, Layout::ChannelsLast, &solo)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn forward_train_sync<R: StatsReducer + ?Sized>(
        &mut self,
        gpu: &Gpu,
        x: &Tensor,
        layout: Layout,
        reducer: &R,
    ) -> Result<BatchNormOutput> {
        // Local statistics first, so a GPU error here is agreed on too.
        let local = self.local_stats(gpu, x, layout);
        reducer.agree(self.channels, local.as_ref().err())?;
        let parts = reducer.all_gather_stats(&local?)?;
        let global = ChannelStats::merge(&parts)?;
        self.forward_train_with_stats(gpu, x, layout, &global)
    }

    /// SyncBatchNorm training backward (PyTorch's `SyncBatchNorm` backward): x and dy are this
    /// rank's part, `mean` and `invstd` the global statistics [`BatchNorm::forward_train_sync`]
    /// returned. Each rank sums dy and dy * xhat per channel over its part on the GPU, the ranks
    /// exchange those sums (f32 each, added in rank order in f64, so every rank gets the same
    /// bits) and every rank computes dx of its part through the global batch. dweight and dbias
    /// are this rank's own sums, as in PyTorch (a data-parallel wrapper adds them across ranks).
    /// Collective, with [`forward_train_sync`](BatchNorm::forward_train_sync)'s failure rules.
    /// Half precision as [`BatchNorm::backward`]: x and dy f16 or bf16 (the same dtype), mean
    /// and invstd f32, dx in x's dtype, dweight / dbias in their parameter's dtype (rounded once
    /// after the exchange, which sums in f32 per rank and f64 across ranks).
    ///
    /// ```no_run
    /// # use fused_norm::*;
    /// # let gpu = Gpu::new()?;
    /// # let x = Tensor::from_slice(&gpu, &[1.0, 2.0, 4.0, 8.0], &[2, 2])?;
    /// # let dy = x.clone();
    /// let solo = ThreadReducer::group(1).pop().unwrap(); // or dist::MpiReducer::new(world)
    /// let mut bn = BatchNorm::new(&gpu, 2)?;
    /// let t = bn.forward_train_sync(&gpu, &x, Layout::ChannelsLast, &solo)?;
    /// let g = bn.backward_sync(&gpu, &x, &dy, &t.mean, &t.invstd, Layout::ChannelsLast, &solo)?;
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub fn backward_sync<R: StatsReducer + ?Sized>(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        dy: &Tensor,
        mean: &Tensor,
        invstd: &Tensor,
        layout: Layout,
        reducer: &R,
    ) -> Result<Gradients> {
        let local = self.backward_sums(gpu, x, dy, mean, invstd, layout);
        reducer.agree(self.channels, local.as_ref().err())?;
        let (count, dbias, dweight) = local?;
        let c = self.channels;
        let (db, dw) = (dbias.to_vec(gpu)?, dweight.to_vec(gpu)?);
        // Per rank: count, then sum dy and sum dy * xhat per channel, as f64.
        let mut bytes = count.to_le_bytes().to_vec();
        for v in db.iter().chain(&dw) {
            bytes.extend(f64::from(*v).to_le_bytes());
        }
        let all = reducer.all_gather(&bytes)?;
        let f = |r: &[u8], i: usize| {
            let b: [u8; 8] = r[8 * i..8 * i + 8].try_into().expect("8 bytes");
            b
        };
        let (mut n, mut sdy, mut sdx) = (0u64, vec![0f64; c], vec![0f64; c]);
        for r in all.chunks_exact(bytes.len()) {
            n += u64::from_le_bytes(f(r, 0));
            for k in 0..c {
                sdy[k] += f64::from_le_bytes(f(r, 1 + k));
                sdx[k] += f64::from_le_bytes(f(r, 1 + c + k));
            }
        }
        let given: Vec<f32> = (0..c)
            .flat_map(|k| [sdy[k] as f32, sdx[k] as f32, n as f32, 0.0])
            .collect();
        let given = Tensor::from_slice(gpu, &given, &[c, 4])?;
        let call = self.backward_call(gpu, x, layout, false)?;
        let BwdOp::Channels { op, .. } = &call.op else {
            unreachable!("BatchNorm is a channels call")
        };
        let dx = Tensor::empty_dtype(gpu, x.shape(), x.dtype())?;
        let out = BwdOut {
            dx: &dx,
            dweight: None,
            dbias: None,
        };
        let saved = Saved::Batch { mean, rstd: invstd };
        let mut enc = gpu.encoder();
        op.encode_backward(gpu, &mut enc, x, dy, saved, BwdStage::Given(&given), out)?;
        gpu.submit_wait(enc)?;
        // The local sums are f32 (the exchange reads them); a half parameter's gradient is
        // rounded from them once, here.
        let like = |param: Option<&Tensor>, sums: Tensor| {
            param
                .map(|p| match p.dtype() == sums.dtype() {
                    true => Ok(sums),
                    false => sums.cast(gpu, p.dtype()),
                })
                .transpose()
        };
        Ok(Gradients {
            dx,
            dweight: like(self.weight.as_ref(), dweight)?,
            dbias: like(self.bias.as_ref(), dbias)?,
        })
    }

    /// This part's values per channel and its sums of dy and dy * xhat per channel (dbias- and
    /// dweight-like), on the GPU. Checks the inputs like [`BatchNorm::backward`].
    fn backward_sums(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        dy: &Tensor,
        mean: &Tensor,
        invstd: &Tensor,
        layout: Layout,
    ) -> Result<(u64, Tensor, Tensor)> {
        let call = self.backward_call(gpu, x, layout, false)?;
        call.check_inputs(gpu, x, dy, Some(mean), invstd)?;
        let BwdOp::Channels { op, .. } = &call.op else {
            unreachable!("BatchNorm is a channels call")
        };
        let c = self.channels;
        // f32 sums whatever x's dtype: they are exchanged, and only then rounded.
        let (db, dw) = (Tensor::empty(gpu, &[c])?, Tensor::empty(gpu, &[c])?);
        // Sums only: dx is not written.
        let out = BwdOut {
            dx: &dw,
            dweight: Some(&dw),
            dbias: Some(&db),
        };
        let saved = Saved::Batch { mean, rstd: invstd };
        let mut enc = gpu.encoder();
        op.encode_backward(gpu, &mut enc, x, dy, saved, BwdStage::Sums, out)?;
        gpu.submit_wait(enc)?;
        Ok((op.n * op.s, db, dw))
    }
}
