//! Per-channel batch statistics on the host, their exact (Chan) merge, and the collective
//! interface SyncBatchNorm exchanges them through ([`StatsReducer`]), with an in-process
//! implementation ([`ThreadReducer`]). The MPI one is `fused_norm::dist::MpiReducer` (feature
//! `mpi`).

use std::sync::{Arc, Barrier, Mutex};

use crate::error::{NormError, Result};

/// Per-channel statistics of a batch in f64: value count, mean and m2 (the sum of squared
/// deviations from the mean), the Welford state that merges exactly across parts of a batch.
///
/// ```
/// use fused_norm::ChannelStats;
/// let a = ChannelStats { count: vec![2], mean: vec![1.5], m2: vec![0.5] }; // [1, 2]
/// let b = ChannelStats { count: vec![2], mean: vec![3.5], m2: vec![0.5] }; // [3, 4]
/// let ab = ChannelStats::merge(&[a, b])?;
/// assert_eq!((ab.count[0], ab.mean[0], ab.m2[0]), (4, 2.5, 5.0));
/// assert_eq!(ab.var_biased(), vec![1.25]);
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelStats {
    /// Values per channel.
    pub count: Vec<u64>,
    /// Mean per channel.
    pub mean: Vec<f64>,
    /// Sum of squared deviations from the mean, per channel.
    pub m2: Vec<f64>,
}

impl ChannelStats {
    /// Channels held.
    ///
    /// ```
    /// let s = fused_norm::ChannelStats { count: vec![1; 3], mean: vec![0.0; 3], m2: vec![0.0; 3] };
    /// assert_eq!(s.channels(), 3);
    /// ```
    pub fn channels(&self) -> usize {
        self.count.len()
    }

    /// Chan's pairwise merge of `parts`, left to right in the given order (so every process
    /// merging the same parts gets the same bits); channels with a count of 0 in a part are
    /// skipped. Errors when the parts hold different channel counts or are inconsistent.
    ///
    /// ```
    /// use fused_norm::ChannelStats;
    /// let one = ChannelStats { count: vec![1], mean: vec![7.0], m2: vec![0.0] };
    /// let m = ChannelStats::merge(&[one.clone(), one])?;
    /// assert_eq!((m.count[0], m.mean[0], m.m2[0]), (2, 7.0, 0.0));
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    pub fn merge(parts: &[ChannelStats]) -> Result<ChannelStats> {
        let c = parts.first().map_or(0, ChannelStats::channels);
        for (i, p) in parts.iter().enumerate() {
            p.check()?;
            if p.channels() != c {
                return Err(NormError::Shape(format!(
                    "statistics part {i} has {} channels, part 0 has {c}",
                    p.channels()
                )));
            }
        }
        let mut out = ChannelStats {
            count: vec![0; c],
            mean: vec![0.0; c],
            m2: vec![0.0; c],
        };
        for p in parts {
            for ch in 0..c {
                let nb = p.count[ch];
                if nb == 0 {
                    continue;
                }
                let na = out.count[ch];
                if na == 0 {
                    (out.count[ch], out.mean[ch], out.m2[ch]) = (nb, p.mean[ch], p.m2[ch]);
                    continue;
                }
                let n = na + nb;
                let (fa, fb, f) = (na as f64, nb as f64, n as f64);
                let delta = p.mean[ch] - out.mean[ch];
                out.mean[ch] += delta * (fb / f);
                out.m2[ch] += p.m2[ch] + delta * delta * (fa * fb / f);
                out.count[ch] = n;
            }
        }
        Ok(out)
    }

    /// Biased variance per channel, m2 / count (what training normalizes with).
    ///
    /// ```
    /// let s = fused_norm::ChannelStats { count: vec![4], mean: vec![0.0], m2: vec![8.0] };
    /// assert_eq!(s.var_biased(), vec![2.0]);
    /// ```
    pub fn var_biased(&self) -> Vec<f64> {
        self.var_with(0)
    }

    /// Unbiased variance per channel, m2 / (count - 1) (PyTorch's running_var input); NaN for
    /// a count of 1, like PyTorch.
    ///
    /// ```
    /// let s = fused_norm::ChannelStats { count: vec![4], mean: vec![0.0], m2: vec![9.0] };
    /// assert_eq!(s.var_unbiased(), vec![3.0]);
    /// ```
    pub fn var_unbiased(&self) -> Vec<f64> {
        self.var_with(1)
    }

    fn var_with(&self, correction: u64) -> Vec<f64> {
        self.count
            .iter()
            .zip(&self.m2)
            .map(|(&n, &m2)| {
                let d = n.saturating_sub(correction) as f64;
                if d == 0.0 {
                    f64::NAN
                } else {
                    m2 / d
                }
            })
            .collect()
    }

    fn check(&self) -> Result<()> {
        let c = self.channels();
        if self.mean.len() != c || self.m2.len() != c {
            return Err(NormError::Shape(format!(
                "ChannelStats with {c} counts, {} means and {} m2 values",
                self.mean.len(),
                self.m2.len()
            )));
        }
        Ok(())
    }

    /// `[count, mean, m2]` per channel as little-endian f64 bytes (counts are exact to 2^53).
    fn to_bytes(&self) -> Vec<u8> {
        (0..self.channels())
            .flat_map(|ch| [self.count[ch] as f64, self.mean[ch], self.m2[ch]])
            .flat_map(f64::to_le_bytes)
            .collect()
    }

    fn from_bytes(bytes: &[u8]) -> ChannelStats {
        let v: Vec<f64> = bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        ChannelStats {
            count: v.chunks_exact(3).map(|t| t[0] as u64).collect(),
            mean: v.chunks_exact(3).map(|t| t[1]).collect(),
            m2: v.chunks_exact(3).map(|t| t[2]).collect(),
        }
    }
}

/// Bytes of one rank's status record in [`StatsReducer::agree`]: channel count (u64), failed
/// flag, message length (u16), message (truncated).
const STATUS_BYTES: usize = 256;
const MESSAGE_AT: usize = 11;

/// The collective operations SyncBatchNorm needs from a communication engine: every rank (one
/// per process, GPU or thread) calls the same operations in the same order. Implement
/// [`StatsReducer::all_gather`] (MPI's `Allgather` of bytes) and the rest follows; see
/// [`ThreadReducer`] (threads of one process) and `fused_norm::dist::MpiReducer` (feature
/// `mpi`).
///
/// ```
/// use fused_norm::{StatsReducer, ThreadReducer};
/// let ranks = ThreadReducer::group(2);
/// let handles: Vec<_> = ranks
///     .into_iter()
///     .map(|r| std::thread::spawn(move || r.all_gather(&[r.rank() as u8]).unwrap()))
///     .collect();
/// for h in handles {
///     assert_eq!(h.join().unwrap(), vec![0, 1]);
/// }
/// ```
pub trait StatsReducer {
    /// This rank, `0 .. size()`.
    fn rank(&self) -> usize;

    /// Ranks taking part.
    fn size(&self) -> usize;

    /// Collective: every rank passes `local`, all of the same length; returns every rank's
    /// bytes concatenated in rank order.
    ///
    /// ```
    /// # use fused_norm::{StatsReducer, ThreadReducer};
    /// let solo = ThreadReducer::group(1).pop().unwrap();
    /// assert_eq!(solo.all_gather(&[7, 8])?, vec![7, 8]);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    fn all_gather(&self, local: &[u8]) -> Result<Vec<u8>>;

    /// Collective: agrees on whether every rank may go on. Each rank passes its channel count
    /// and its own failure, if any; every rank returns `Ok` when no rank failed and all have
    /// the same channel count, else the same [`NormError::Collective`] naming the lowest
    /// failing rank. Fixed-size records, so a bad rank cannot make the exchange itself hang.
    ///
    /// ```
    /// # use fused_norm::{NormError, StatsReducer, ThreadReducer};
    /// let solo = ThreadReducer::group(1).pop().unwrap();
    /// assert!(solo.agree(64, None).is_ok());
    /// let bad = NormError::Shape("x has 3 channels".into());
    /// assert!(matches!(solo.agree(64, Some(&bad)), Err(NormError::Collective { rank: 0, .. })));
    /// ```
    fn agree(&self, channels: usize, failure: Option<&NormError>) -> Result<()> {
        let mut rec = vec![0u8; STATUS_BYTES];
        rec[..8].copy_from_slice(&(channels as u64).to_le_bytes());
        if let Some(e) = failure {
            let text = e.to_string();
            let mut len = text.len().min(STATUS_BYTES - MESSAGE_AT);
            while !text.is_char_boundary(len) {
                len -= 1;
            }
            rec[8] = 1;
            rec[9..MESSAGE_AT].copy_from_slice(&(len as u16).to_le_bytes());
            rec[MESSAGE_AT..MESSAGE_AT + len].copy_from_slice(&text.as_bytes()[..len]);
        }
        let all = self.all_gather(&rec)?;
        let recs: Vec<&[u8]> = all.chunks_exact(STATUS_BYTES).collect();
        let chans = |r: &[u8]| u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
        for (rank, r) in recs.iter().enumerate() {
            let message = if r[8] != 0 {
                let len = usize::from(u16::from_le_bytes([r[9], r[10]]));
                String::from_utf8_lossy(&r[MESSAGE_AT..MESSAGE_AT + len]).into_owned()
            } else if chans(r) != chans(recs[0]) {
                format!(
                    "its BatchNorm has {} channels, rank 0's has {}",
                    chans(r),
                    chans(recs[0])
                )
            } else {
                continue;
            };
            return Err(NormError::Collective { rank, message });
        }
        Ok(())
    }

    /// Collective: every rank's statistics in rank order. All ranks must hold the same number
    /// of channels (check it first with [`StatsReducer::agree`]).
    ///
    /// ```
    /// # use fused_norm::{ChannelStats, StatsReducer, ThreadReducer};
    /// let solo = ThreadReducer::group(1).pop().unwrap();
    /// let s = ChannelStats { count: vec![3], mean: vec![1.0], m2: vec![2.0] };
    /// assert_eq!(solo.all_gather_stats(&s)?, vec![s]);
    /// # Ok::<(), fused_norm::NormError>(())
    /// ```
    fn all_gather_stats(&self, local: &ChannelStats) -> Result<Vec<ChannelStats>> {
        local.check()?;
        let bytes = local.to_bytes();
        let all = self.all_gather(&bytes)?;
        if all.len() != bytes.len() * self.size() {
            return Err(NormError::Collective {
                rank: self.rank(),
                message: format!("all_gather returned {} bytes", all.len()),
            });
        }
        Ok(all
            .chunks_exact(bytes.len().max(1))
            .map(ChannelStats::from_bytes)
            .collect())
    }
}

struct Shared {
    barrier: Barrier,
    slots: Mutex<Vec<Vec<u8>>>,
}

/// An in-process [`StatsReducer`]: `n` ranks that are threads of one process (one per GPU, or
/// several sharing one `Gpu`), exchanging through shared memory. For tests, and for several
/// GPUs driven from one process.
///
/// ```no_run
/// use fused_norm::{BatchNorm, Gpu, Layout, Tensor, ThreadReducer};
/// let gpu = Gpu::new()?;
/// let threads: Vec<_> = ThreadReducer::group(2)
///     .into_iter()
///     .map(|r| {
///         let gpu = gpu.clone();
///         std::thread::spawn(move || {
///             let x = Tensor::from_slice(&gpu, &vec![1.0; 4 * 8], &[4, 8])?; // this rank's part
///             let mut bn = BatchNorm::new(&gpu, 8)?;
///             bn.forward_train_sync(&gpu, &x, Layout::ChannelsLast, &r)
///         })
///     })
///     .collect();
/// for t in threads {
///     t.join().unwrap()?;
/// }
/// # Ok::<(), fused_norm::NormError>(())
/// ```
#[derive(Clone)]
pub struct ThreadReducer {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ThreadReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ThreadReducer(rank {} of {})", self.rank, self.size)
    }
}

impl ThreadReducer {
    /// `n` connected ranks, rank `i` at index `i`; move each to its own thread. Every rank
    /// must take part in each collective call, or the others wait for it.
    ///
    /// ```
    /// let ranks = fused_norm::ThreadReducer::group(3);
    /// assert_eq!(ranks.len(), 3);
    /// ```
    pub fn group(n: usize) -> Vec<ThreadReducer> {
        let shared = Arc::new(Shared {
            barrier: Barrier::new(n.max(1)),
            slots: Mutex::new(vec![Vec::new(); n]),
        });
        (0..n)
            .map(|rank| ThreadReducer {
                rank,
                size: n,
                shared: shared.clone(),
            })
            .collect()
    }
}

impl StatsReducer for ThreadReducer {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather(&self, local: &[u8]) -> Result<Vec<u8>> {
        let poisoned = |_| NormError::Collective {
            rank: self.rank,
            message: "a thread of the group panicked".into(),
        };
        self.shared.slots.lock().map_err(poisoned)?[self.rank] = local.to_vec();
        self.shared.barrier.wait();
        let slots = self.shared.slots.lock().map_err(poisoned)?;
        let out = slots.concat();
        let uneven = slots.iter().position(|s| s.len() != slots[0].len());
        drop(slots);
        // Nobody writes the next round's slot before every rank has read this one.
        self.shared.barrier.wait();
        match uneven {
            Some(rank) => Err(NormError::Collective {
                rank,
                message: "all_gather of unequal lengths (rank 0's differs)".into(),
            }),
            None => Ok(out),
        }
    }
}
