//! f64 CPU references for every kernel: exact two-pass statistics in double precision. Tests
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
/// let r = fused_norm::cpu::layer_norm(&[1.0, 2.0, 3.0, 4.0], 2, None, None, 0.0);
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
/// let st = fused_norm::cpu::batch_stats(&[1.0, 2.0, 3.0, 4.0], 1, 2);
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
/// let y = fused_norm::cpu::batch_norm_apply(&[1.0, 3.0], 1, 1, &[2.0], &[1.0], None, None, 0.0);
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
/// fused_norm::cpu::update_running(&mut rm, &[10.0], 0.1);
/// assert!((rm[0] - 1.0).abs() < 1e-12);
/// ```
pub fn update_running(running: &mut [f64], batch: &[f64], factor: f64) {
    for (r, b) in running.iter_mut().zip(batch) {
        *r = (1.0 - factor) * *r + factor * b;
    }
}
