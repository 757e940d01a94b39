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

/// Gradients of a norm in f64: `dx` like x, one `dweight` and `dbias` value per parameter
/// (computed whether or not the norm has the parameter; a norm without it ignores them).
#[derive(Clone, Debug)]
pub struct GradientsRef {
    /// Gradient of the loss with respect to x, same layout as x.
    pub dx: Vec<f64>,
    /// `sum(dy * xhat)` per parameter.
    pub dweight: Vec<f64>,
    /// `sum(dy)` per parameter.
    pub dbias: Vec<f64>,
}

/// The analytic backward every norm shares. Element `i` is normalized by statistic
/// `stat_of(i)` (mean, rstd; `center` off: mean 0, RMSNorm) and scaled by parameter
/// `param_of(i)`. With `through_stats`, dx flows through the statistics (PyTorch's
/// `native_layer_norm_backward`, `native_group_norm_backward`, training BatchNorm, RMSNorm's
/// autograd): with `g = dy * w` and `xhat = (x - mean) * rstd`,
/// `dx = rstd * (g - mean(g) - xhat * mean(g * xhat))` (RMSNorm: no `mean(g)` term), the means
/// over each statistic's elements. Without it the statistics are constants (eval BatchNorm):
/// `dx = rstd * g`.
#[allow(clippy::too_many_arguments)]
fn norm_backward(
    x: &[f32],
    dy: &[f32],
    stat_of: &dyn Fn(usize) -> usize,
    param_of: &dyn Fn(usize) -> usize,
    mean: &[f64],
    rstd: &[f64],
    weight: Option<&[f32]>,
    params: usize,
    center: bool,
    through_stats: bool,
) -> GradientsRef {
    assert_eq!(x.len(), dy.len(), "dy must be shaped like x");
    assert_eq!(mean.len(), rstd.len());
    let k = rstd.len();
    let xhat = |i: usize| {
        let m = if center { mean[stat_of(i)] } else { 0.0 };
        (f64::from(x[i]) - m) * rstd[stat_of(i)]
    };
    let w = |i: usize| weight.map_or(1.0, |w| f64::from(w[param_of(i)]));
    let (mut sg, mut sgx, mut cnt) = (vec![0f64; k], vec![0f64; k], vec![0f64; k]);
    let (mut dweight, mut dbias) = (vec![0f64; params], vec![0f64; params]);
    for (i, &d) in dy.iter().enumerate() {
        let (s, p, d) = (stat_of(i), param_of(i), f64::from(d));
        let g = d * w(i);
        sg[s] += g;
        sgx[s] += g * xhat(i);
        cnt[s] += 1.0;
        dweight[p] += d * xhat(i);
        dbias[p] += d;
    }
    let dx = (0..x.len())
        .map(|i| {
            let s = stat_of(i);
            let g = f64::from(dy[i]) * w(i);
            if !through_stats {
                return rstd[s] * g;
            }
            let mg = if center { sg[s] / cnt[s] } else { 0.0 };
            rstd[s] * (g - mg - xhat(i) * sgx[s] / cnt[s])
        })
        .collect();
    GradientsRef { dx, dweight, dbias }
}

/// LayerNorm's backward over rows of length `d`, from the saved per-row `mean` and `rstd`
/// (PyTorch's `native_layer_norm_backward`). `dweight`/`dbias` have `d` values.
///
/// ```
/// use fused_norm::reference::{layer_norm, layer_norm_backward};
/// let x = [1.0, 2.0, 3.0, 4.0];
/// let f = layer_norm(&x, 4, None, None, 1e-5);
/// let g = layer_norm_backward(&x, &[1.0; 4], 4, None, &f.mean, &f.rstd);
/// assert!(g.dx.iter().all(|v| v.abs() < 1e-12)); // a constant dy moves nothing
/// ```
pub fn layer_norm_backward(
    x: &[f32],
    dy: &[f32],
    d: usize,
    weight: Option<&[f32]>,
    mean: &[f64],
    rstd: &[f64],
) -> GradientsRef {
    let (stat, param) = (|i: usize| i / d, |i: usize| i % d);
    norm_backward(x, dy, &stat, &param, mean, rstd, weight, d, true, true)
}

/// RMSNorm's backward over rows of length `d`, from the saved per-row `rstd`:
/// `dx = rstd * (g - xhat * mean(g * xhat))`, `g = dy * w`, `xhat = x * rstd`.
///
/// ```
/// use fused_norm::reference::{rms_norm, rms_norm_backward};
/// let x = [3.0, 4.0];
/// let (_, st) = rms_norm(&x, 2, None, 0.0);
/// let g = rms_norm_backward(&x, &[3.0, 4.0], 2, None, &st.rstd);
/// assert!(g.dx.iter().all(|v| v.abs() < 1e-12)); // dy along x: the norm is scale-invariant
/// ```
pub fn rms_norm_backward(
    x: &[f32],
    dy: &[f32],
    d: usize,
    weight: Option<&[f32]>,
    rstd: &[f64],
) -> GradientsRef {
    let (stat, param) = (|i: usize| i / d, |i: usize| i % d);
    let mean = vec![0.0; rstd.len()];
    norm_backward(x, dy, &stat, &param, &mean, rstd, weight, d, false, true)
}

/// GroupNorm's backward (InstanceNorm: `groups == c`) for `x` viewed as `[n, c, s]` (or
/// `[n, s, c]` with `channels_last`), from the saved `mean` and `rstd` indexed
/// `n * groups + g` (PyTorch's `native_group_norm_backward`). `dweight`/`dbias` per channel.
///
/// ```
/// use fused_norm::reference::{group_norm, group_norm_backward};
/// let x = [1.0, 2.0, 3.0, 4.0];
/// let (_, st) = group_norm(&x, 2, 2, 1, false, None, None, 0.0);
/// let g = group_norm_backward(&x, &[1.0, 0.0, 0.0, 0.0], 2, 2, 1, false, None, &st.mean, &st.rstd);
/// assert_eq!(g.dbias, vec![1.0, 0.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward(
    x: &[f32],
    dy: &[f32],
    c: usize,
    s: usize,
    groups: usize,
    channels_last: bool,
    weight: Option<&[f32]>,
    mean: &[f64],
    rstd: &[f64],
) -> GradientsRef {
    assert!(groups > 0 && c.is_multiple_of(groups) && s > 0);
    let cpg = c / groups;
    let stat = |i: usize| {
        let (ni, ci) = sample_channel(i, c, s, channels_last);
        ni * groups + ci / cpg
    };
    let param = |i: usize| sample_channel(i, c, s, channels_last).1;
    norm_backward(x, dy, &stat, &param, mean, rstd, weight, c, true, true)
}

/// BatchNorm's backward for `x` viewed as `[n, c, s]` (channels-last: `s = 1`, `n` = all
/// leading dims), per channel `mean` and `invstd`. Training (`train`): through the batch
/// statistics, which must be the biased ones the forward normalized with (PyTorch's
/// `native_batch_norm_backward`). Eval: `mean` and `invstd = 1 / sqrt(running_var + eps)` are
/// constants, `dx = dy * w * invstd`. `dweight = sum(dy * xhat)`, `dbias = sum(dy)`.
///
/// ```
/// use fused_norm::reference::{batch_norm_backward, batch_stats};
/// let x = [1.0, 3.0];
/// let st = batch_stats(&x, 1, 1);
/// let invstd: Vec<f64> = st.var.iter().map(|v| 1.0 / v.sqrt()).collect();
/// let eval = batch_norm_backward(&x, &[1.0, 1.0], 1, 1, None, &st.mean, &invstd, false);
/// assert_eq!(eval.dx, vec![1.0, 1.0]);
/// let train = batch_norm_backward(&x, &[1.0, 1.0], 1, 1, None, &st.mean, &invstd, true);
/// assert_eq!(train.dx, vec![0.0, 0.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn batch_norm_backward(
    x: &[f32],
    dy: &[f32],
    c: usize,
    s: usize,
    weight: Option<&[f32]>,
    mean: &[f64],
    invstd: &[f64],
    train: bool,
) -> GradientsRef {
    let ch = |i: usize| channel(i, c, s);
    norm_backward(x, dy, &ch, &ch, mean, invstd, weight, c, true, train)
}

#[cfg(test)]
mod backward_tests {
    //! The analytic backwards against central differences of the f64 forwards: the loss is
    //! `sum(y * dy)`, x and the weight move by h = 2^-10 on values that are multiples of 2^-4
    //! (so x +- h is exact in f32), and the difference quotient's error is O(h^2).
    use super::*;

    const H: f64 = 1.0 / 1024.0;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % 97) as f32 / 16.0 - 3.0
            })
            .collect()
    }

    fn loss(y: &[f64], dy: &[f32]) -> f64 {
        y.iter().zip(dy).map(|(a, b)| a * f64::from(*b)).sum()
    }

    /// Central differences of `f` (the loss of the forward on x and the weight) against the
    /// analytic dx and dweight of `g`.
    fn check(
        what: &str,
        x: &[f32],
        w: &[f32],
        f: &dyn Fn(&[f32], &[f32]) -> f64,
        g: &GradientsRef,
    ) {
        let fd = |v: &[f32], i: usize, xs: bool| {
            let (mut p, mut m) = (v.to_vec(), v.to_vec());
            p[i] += H as f32;
            m[i] -= H as f32;
            match xs {
                true => (f(&p, w) - f(&m, w)) / (2.0 * H),
                false => (f(x, &p) - f(x, &m)) / (2.0 * H),
            }
        };
        for i in 0..x.len() {
            let n = fd(x, i, true);
            assert!(
                (n - g.dx[i]).abs() < 1e-4 * (1.0 + n.abs()),
                "{what} dx[{i}]: fd {n} vs {}",
                g.dx[i]
            );
        }
        for i in 0..w.len() {
            let n = fd(w, i, false);
            assert!(
                (n - g.dweight[i]).abs() < 1e-4 * (1.0 + n.abs()),
                "{what} dw[{i}]: fd {n} vs {}",
                g.dweight[i]
            );
        }
    }

    #[test]
    fn layer_norm_backward_matches_finite_differences() {
        for (rows, d) in [(3, 5), (2, 1), (4, 8)] {
            let (x, dy, w) = (data(rows * d, 1), data(rows * d, 2), data(d, 3));
            let b = data(d, 4);
            let f = |x: &[f32], w: &[f32]| loss(&layer_norm(x, d, Some(w), Some(&b), 1e-3).y, &dy);
            let st = layer_norm(&x, d, Some(&w), Some(&b), 1e-3);
            let g = layer_norm_backward(&x, &dy, d, Some(&w), &st.mean, &st.rstd);
            check("layer_norm", &x, &w, &f, &g);
            for j in 0..d {
                let db: f64 = (0..rows).map(|r| f64::from(dy[r * d + j])).sum();
                assert_eq!(g.dbias[j], db);
            }
        }
    }

    #[test]
    fn rms_norm_backward_matches_finite_differences() {
        for (rows, d) in [(3, 5), (2, 1), (4, 8)] {
            let (x, dy, w) = (data(rows * d, 5), data(rows * d, 6), data(d, 7));
            let f = |x: &[f32], w: &[f32]| loss(&rms_norm(x, d, Some(w), 1e-3).0, &dy);
            let (_, st) = rms_norm(&x, d, Some(&w), 1e-3);
            let g = rms_norm_backward(&x, &dy, d, Some(&w), &st.rstd);
            check("rms_norm", &x, &w, &f, &g);
        }
    }

    #[test]
    fn group_norm_backward_matches_finite_differences() {
        // (n, c, s, groups): GroupNorm, InstanceNorm (groups == c), LayerNorm-like (1 group).
        for (n, c, s, groups) in [(2, 4, 3, 2), (2, 3, 2, 3), (1, 2, 5, 1)] {
            for cl in [false, true] {
                let (x, dy, w) = (data(n * c * s, 8), data(n * c * s, 9), data(c, 10));
                let b = data(c, 11);
                let fwd =
                    |x: &[f32], w: &[f32]| group_norm(x, c, s, groups, cl, Some(w), Some(&b), 1e-3);
                let f = |x: &[f32], w: &[f32]| loss(&fwd(x, w).0, &dy);
                let (_, st) = fwd(&x, &w);
                let g =
                    group_norm_backward(&x, &dy, c, s, groups, cl, Some(&w), &st.mean, &st.rstd);
                check(
                    &format!("group_norm {n}x{c}x{s}/{groups} cl={cl}"),
                    &x,
                    &w,
                    &f,
                    &g,
                );
            }
        }
    }

    #[test]
    fn batch_norm_backward_matches_finite_differences() {
        let (n, c, s) = (3, 2, 4);
        let (x, dy, w) = (data(n * c * s, 12), data(n * c * s, 13), data(c, 14));
        let b = data(c, 15);
        let eps = 1e-3;
        // Training: the batch statistics move with x.
        let f = |x: &[f32], w: &[f32]| {
            let st = batch_stats(x, c, s);
            loss(
                &batch_norm_apply(x, c, s, &st.mean, &st.var, Some(w), Some(&b), eps),
                &dy,
            )
        };
        let st = batch_stats(&x, c, s);
        let invstd: Vec<f64> = st.var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let g = batch_norm_backward(&x, &dy, c, s, Some(&w), &st.mean, &invstd, true);
        check("batch_norm train", &x, &w, &f, &g);
        // Eval: running statistics are constants.
        let (rm, rv) = (vec![0.5, -1.0], vec![2.0, 0.25]);
        let f = |x: &[f32], w: &[f32]| {
            loss(
                &batch_norm_apply(x, c, s, &rm, &rv, Some(w), Some(&b), eps),
                &dy,
            )
        };
        let invstd: Vec<f64> = rv.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let g = batch_norm_backward(&x, &dy, c, s, Some(&w), &rm, &invstd, false);
        check("batch_norm eval", &x, &w, &f, &g);
    }
}
