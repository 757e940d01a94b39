//! f64 references (oracles, not a backend) for every kernel: exact two-pass statistics in double precision. Tests
//! and benchmarks compare the GPU against these; users can too.

/// LayerNorm reference results, in f64.
#[derive(Clone, Debug)]
pub struct LayerNormRef {
    /// Normalized output, same layout as the input.
    pub y: Vec<f64>,
    /// Mean of each row.
    pub mean: Vec<f64>,
    /// 1 / sqrt(biased variance + eps) of each row.
    pub rstd: Vec<f64>,
}

/// LayerNorm over rows of length `d` (the product of the normalized dims) in f64.
///
/// ```
/// let r = fused_norm::reference::layer_norm(&[1.0, 2.0, 3.0, 4.0], 2, None, None, 0.0);
/// assert!((r.y[0] + 1.0).abs() < 1e-12 && (r.y[1] - 1.0).abs() < 1e-12);
/// assert_eq!(r.mean, vec![1.5, 3.5]);
/// ```
pub fn layer_norm(
    x: &[f32],
    d: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f64,
) -> LayerNormRef {
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "x must hold whole rows of d values"
    );
    let rows = x.len() / d;
    let mut out = LayerNormRef {
        y: Vec::with_capacity(x.len()),
        mean: Vec::with_capacity(rows),
        rstd: Vec::with_capacity(rows),
    };
    for row in x.chunks_exact(d) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / d as f64;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / d as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for (i, &v) in row.iter().enumerate() {
            let mut o = (f64::from(v) - mean) * rstd;
            if let Some(w) = weight {
                o *= f64::from(w[i]);
            }
            if let Some(b) = bias {
                o += f64::from(b[i]);
            }
            out.y.push(o);
        }
        out.mean.push(mean);
        out.rstd.push(rstd);
    }
    out
}

/// BatchNorm batch statistics per channel, in f64.
#[derive(Clone, Debug)]
pub struct BatchStats {
    /// Mean per channel.
    pub mean: Vec<f64>,
    /// Biased variance (divided by the count) per channel: what training normalizes with.
    pub var: Vec<f64>,
    /// Unbiased variance (divided by count - 1): what PyTorch feeds the running variance.
    pub var_unbiased: Vec<f64>,
    /// Values per channel.
    pub count: usize,
}

/// Channel of element `i` of a tensor viewed as `[n, c, s]` (channels-first: s = spatial size;
/// channels-last: pass `s = 1` and `n` = all leading dims).
fn channel(i: usize, c: usize, s: usize) -> usize {
    (i / s) % c
}

/// Per-channel batch statistics of `x` viewed as `[n, c, s]`.
///
/// ```
/// // [N=2, C=1, S=2]
/// let st = fused_norm::reference::batch_stats(&[1.0, 2.0, 3.0, 4.0], 1, 2);
/// assert_eq!(st.mean, vec![2.5]);
/// assert_eq!(st.var, vec![1.25]);
/// ```
pub fn batch_stats(x: &[f32], c: usize, s: usize) -> BatchStats {
    assert!(c > 0 && s > 0 && x.len().is_multiple_of(c * s));
    let count = x.len() / c;
    let mut sum = vec![0f64; c];
    for (i, &v) in x.iter().enumerate() {
        sum[channel(i, c, s)] += f64::from(v);
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / count as f64).collect();
    let mut m2 = vec![0f64; c];
    for (i, &v) in x.iter().enumerate() {
        let ch = channel(i, c, s);
        m2[ch] += (f64::from(v) - mean[ch]).powi(2);
    }
    BatchStats {
        var: m2.iter().map(|m| m / count as f64).collect(),
        var_unbiased: m2.iter().map(|m| m / (count as f64 - 1.0)).collect(),
        mean,
        count,
    }
}

/// `y = (x - mean) / sqrt(var + eps) * weight + bias` per channel of `x` viewed as `[n, c, s]`.
/// Training passes the batch statistics, inference the running ones.
///
/// ```
/// let y = fused_norm::reference::batch_norm_apply(&[1.0, 3.0], 1, 1, &[2.0], &[1.0], None, None, 0.0);
/// assert_eq!(y, vec![-1.0, 1.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_apply(
    x: &[f32],
    c: usize,
    s: usize,
    mean: &[f64],
    var: &[f64],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f64,
) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = channel(i, c, s);
            let mut o = (f64::from(v) - mean[ch]) / (var[ch] + eps).sqrt();
            if let Some(w) = weight {
                o *= f64::from(w[ch]);
            }
            if let Some(b) = bias {
                o += f64::from(b[ch]);
            }
            o
        })
        .collect()
}

/// PyTorch's running-statistics update: `running = (1 - factor) * running + factor * batch`.
///
/// ```
/// let mut rm = vec![0.0];
/// fused_norm::reference::update_running(&mut rm, &[10.0], 0.1);
/// assert!((rm[0] - 1.0).abs() < 1e-12);
/// ```
pub fn update_running(running: &mut [f64], batch: &[f64], factor: f64) {
    for (r, b) in running.iter_mut().zip(batch) {
        *r = (1.0 - factor) * *r + factor * b;
    }
}

/// Statistics over groups of contiguous values, in f64: one (mean, rstd) per group.
#[derive(Clone, Debug)]
pub struct GroupStats {
    /// Mean of each group (0 for RMSNorm, which does not centre).
    pub mean: Vec<f64>,
    /// `1 / sqrt(var + eps)` of each group (RMSNorm: `1 / sqrt(mean(x^2) + eps)`).
    pub rstd: Vec<f64>,
}

/// RMSNorm over rows of length `d`: `y = x / sqrt(mean(x^2) + eps) * weight` (PyTorch
/// `nn.RMSNorm`, ONNX `RMSNormalization`). Returns y and the per-row `rstd`.
///
/// ```
/// let (y, st) = fused_norm::reference::rms_norm(&[3.0, 4.0], 2, None, 0.0);
/// let r = (12.5f64).sqrt();
/// assert!((y[0] - 3.0 / r).abs() < 1e-12 && (st.rstd[0] - 1.0 / r).abs() < 1e-12);
/// ```
pub fn rms_norm(x: &[f32], d: usize, weight: Option<&[f32]>, eps: f64) -> (Vec<f64>, GroupStats) {
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "x must hold whole rows of d values"
    );
    let mut y = Vec::with_capacity(x.len());
    let mut rstd = Vec::with_capacity(x.len() / d);
    for row in x.chunks_exact(d) {
        let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / d as f64;
        let r = 1.0 / (ms + eps).sqrt();
        for (i, &v) in row.iter().enumerate() {
            y.push(f64::from(v) * r * weight.map_or(1.0, |w| f64::from(w[i])));
        }
        rstd.push(r);
    }
    let mean = vec![0.0; rstd.len()];
    (y, GroupStats { mean, rstd })
}

/// Index of element `i` of `x` viewed as `[n, c, s]` (channels-first; `s` = spatial size) or
/// `[n, s, c]` (channels-last), as (n, c).
fn sample_channel(i: usize, c: usize, s: usize, channels_last: bool) -> (usize, usize) {
    if channels_last {
        (i / (s * c), i % c)
    } else {
        (i / (c * s), (i / s) % c)
    }
}

/// GroupNorm of `x` viewed as `[n, c, s]` (or `[n, s, c]` with `channels_last`): statistics
/// per (sample, group of `c / groups` channels) over the group's channels and all `s`
/// positions, population variance, then a per-channel `weight` and `bias` (PyTorch
/// `nn.GroupNorm`, ONNX `GroupNormalization` opset 21). InstanceNorm is `groups == c`. Returns
/// y and the statistics, indexed `n * groups + g`.
///
/// ```
/// // [N=1, C=2, S=2], one group: a LayerNorm over all four values.
/// let (y, st) = fused_norm::reference::group_norm(&[1.0, 2.0, 3.0, 4.0], 2, 2, 1, false, None, None, 0.0);
/// assert_eq!(st.mean, vec![2.5]);
/// assert!((y[3] - 1.5 / 1.25f64.sqrt()).abs() < 1e-12);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &[f32],
    c: usize,
    s: usize,
    groups: usize,
    channels_last: bool,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f64,
) -> (Vec<f64>, GroupStats) {
    assert!(groups > 0 && c.is_multiple_of(groups) && s > 0);
    assert!(x.len().is_multiple_of(c * s), "x must hold whole samples");
    let n = x.len() / (c * s);
    let cpg = c / groups;
    let count = (cpg * s) as f64;
    let group_of = |i: usize| {
        let (ni, ci) = sample_channel(i, c, s, channels_last);
        (ni * groups + ci / cpg, ci)
    };
    let mut sum = vec![0f64; n * groups];
    for (i, &v) in x.iter().enumerate() {
        sum[group_of(i).0] += f64::from(v);
    }
    let mean: Vec<f64> = sum.iter().map(|v| v / count).collect();
    let mut m2 = vec![0f64; n * groups];
    for (i, &v) in x.iter().enumerate() {
        let g = group_of(i).0;
        m2[g] += (f64::from(v) - mean[g]).powi(2);
    }
    let rstd: Vec<f64> = m2.iter().map(|m| 1.0 / (m / count + eps).sqrt()).collect();
    let y = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (g, ci) = group_of(i);
            let mut o = (f64::from(v) - mean[g]) * rstd[g];
            if let Some(w) = weight {
                o *= f64::from(w[ci]);
            }
            if let Some(b) = bias {
                o += f64::from(b[ci]);
            }
            o
        })
        .collect();
    (y, GroupStats { mean, rstd })
}
