//! Backward passes on f16 and bf16 tensors: LayerNorm, RMSNorm, GroupNorm and InstanceNorm
//! (both layouts), BatchNorm (training from `forward_train`'s saved statistics, and inference),
//! on both half storage paths (native f16 where the adapter has SHADER_F16, u32-packed words,
//! forced with `disable_shader_f16`; GL runs packed), against the f64 reference backward
//! (`reference::*_backward`) evaluated on the same half inputs widened to f32 and at the
//! statistics the GPU forward saved (as `tests/backward.rs` does for f32).
//!
//! The contract checked: dy has x's dtype (anything else is an error, not a panic); dx has x's
//! shape and dtype; mean / rstd / invstd are f32; dweight / dbias have their parameter's dtype
//! (f32, or x's dtype); the math is f32 on the exactly widened inputs, rounded once to nearest
//! even at the store.
//!
//! The error bound, stated once (`within`): |got - ref| <= TOL * bound + half an ulp of the
//! stored dtype at |got|.
//! - `TOL * bound` is the f32 backward's own bound (`common::assert_close_bounded`, with the
//!   same magnitudes: dx by rstd * (|g| + mean|g| + |xhat| * mean|g * xhat|), a column sum by
//!   the sum of its terms' magnitudes). The value before the store meets it: it is the same
//!   f32 computation on the same (widened) values.
//! - The store rounds that value once, moving it by at most half an ulp of the output type.
//!   Rounding to nearest never leaves a binade downwards, so the ulp at the stored |got| is at
//!   least the ulp at the unrounded value. Outputs stored as f32 (dweight / dbias of f32
//!   parameters) get no half-ulp term; half dweight / dbias get it like dx.
//!
//! The harness is checked on what exists today: the bound separates a correctly rounded value
//! from its wrong neighbour (`the_tolerance_takes_the_nearest_half_value_...`); the f32
//! backward passes the same checks (`f32_control_...`); and the f32 backward's outputs rounded
//! to nearest even on the host pass the half bound while a truncating store fails it
//! (`the_bound_holds_for_a_correctly_rounded_f32_backward_...`). So a failure of the half
//! tests is the half path's, not the harness's.

mod common;

use common::{assert_bits_eq, Rng, TOL};
use fused_norm::{
    reference, BatchNorm, DType, Element, Gpu, Gradients, GroupNorm, InstanceNorm, LayerNorm,
    Layout, NormError, RmsNorm, Tensor,
};
use half::{bf16, f16};

// ---- adapters ----

use common::paths;

// ---- element types and the tolerance ----

/// A tensor element type the host can round f32 values to (f32: exact).
trait Elem: Element {
    fn round(v: f32) -> Self;
}

impl Elem for f32 {
    fn round(v: f32) -> f32 {
        v
    }
}

impl Elem for f16 {
    fn round(v: f32) -> f16 {
        f16::from_f32(v)
    }
}

impl Elem for bf16 {
    fn round(v: f32) -> bf16 {
        bf16::from_f32(v)
    }
}

/// `v` rounded to T (to nearest even) and widened back: values T holds exactly.
fn halve<T: Elem>(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| T::round(x).widen()).collect()
}

/// A tensor of T holding `v`, which must be T values already (so the reference sees exactly
/// what the GPU reads).
fn upload<T: Elem>(gpu: &Gpu, v: &[f32], shape: &[usize]) -> Tensor {
    let h: Vec<T> = v.iter().map(|&x| T::round(x)).collect();
    for (i, (a, &b)) in h.iter().zip(v).enumerate() {
        assert!(
            b.is_nan() || a.widen().to_bits() == b.to_bits(),
            "test input [{i}] = {b} is not a {} value",
            T::DTYPE
        );
    }
    Tensor::from_slice(gpu, &h, shape).unwrap()
}

/// `upload` with the element type chosen at run time.
fn upload_as(gpu: &Gpu, dtype: DType, v: &[f32], shape: &[usize]) -> Tensor {
    match dtype {
        DType::F32 => upload::<f32>(gpu, v, shape),
        DType::F16 => upload::<f16>(gpu, v, shape),
        DType::BF16 => upload::<bf16>(gpu, v, shape),
    }
}

/// Half an ulp of `dtype` at |v| (a stored value; 0 for f32, whose rounding TOL covers).
fn half_ulp(dtype: DType, v: f32) -> f64 {
    let (mant, emin) = match dtype {
        DType::F32 => return 0.0,
        DType::F16 => (10, -14),
        DType::BF16 => (7, -126),
    };
    // The exponent of v from its f32 bits (exact; f32 subnormals and 0 fall below emin).
    let e = ((v.to_bits() >> 23) & 0xff) as i32 - 127;
    0.5 * 2f64.powi(e.max(emin) - mant)
}

/// Whether every value is within `TOL * bound + half_ulp(dtype, got)` of the reference (NaN
/// must meet NaN, +-Inf its equal); the largest error as a fraction of its allowance, or
/// where the worst one is.
fn within(got: &[f32], want: &[f64], bound: &[f64], dtype: DType) -> Result<f64, String> {
    if got.len() != want.len() {
        return Err(format!(": length {} vs {}", got.len(), want.len()));
    }
    let mut worst = (0f64, 0usize, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() || g.is_nan() {
            if !(w.is_nan() && g.is_nan()) {
                return Err(format!("[{i}]: got {g}, want {w}"));
            }
            continue;
        }
        if w.is_infinite() || g.is_infinite() {
            if f64::from(g) != w {
                return Err(format!("[{i}]: got {g}, want {w}"));
            }
            continue;
        }
        let allowed = TOL * bound[i] + half_ulp(dtype, g);
        let err = (f64::from(g) - w).abs() / allowed.max(f64::MIN_POSITIVE);
        if err > worst.0 {
            worst = (err, i, allowed);
        }
    }
    let (err, i, allowed) = worst;
    match err <= 1.0 {
        true => Ok(err),
        false => Err(format!(
            "[{i}]: got {}, want {}: error {:.3e} > allowed {allowed:.3e} (TOL * bound {:.3e} \
             + half an ulp of {dtype} {:.3e})",
            got[i],
            want[i],
            (f64::from(got[i]) - want[i]).abs(),
            TOL * bound[i],
            half_ulp(dtype, got[i])
        )),
    }
}

fn ok<V>(what: &str, step: &str, r: Result<V, NormError>) -> V {
    r.unwrap_or_else(|e| panic!("{what}: {step}: {e}"))
}

// ---- cases ----

#[derive(Clone, Copy, Debug, PartialEq)]
enum Norm {
    Layer,
    Rms,
    /// GroupNorm with this many groups.
    Group(usize),
    Instance,
    /// BatchNorm's backward from `forward_train`'s mean and invstd.
    BatchTrain,
    /// BatchNorm's `backward_eval` with running statistics.
    BatchEval,
}

impl Norm {
    fn rows(self) -> bool {
        matches!(self, Norm::Layer | Norm::Rms)
    }
    fn has_bias(self) -> bool {
        self != Norm::Rms
    }
}

/// One backward case. Rows family: `n` rows of `c` values (`spatial` empty). Channels family:
/// `[n, c, *spatial]`, or `[n, *spatial, c]` when `cl`. x and dy hold values of the x dtype the
/// case was built for, in the tensor's memory order; weight and bias hold f32 values, or values
/// of x's dtype where `half_weight` / `half_bias` (uploaded as that dtype).
#[derive(Clone)]
struct Case {
    norm: Norm,
    n: usize,
    c: usize,
    spatial: Vec<usize>,
    cl: bool,
    x: Vec<f32>,
    dy: Vec<f32>,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    half_weight: bool,
    half_bias: bool,
    /// BatchEval: running mean and variance (f32 tensors).
    running: Option<(Vec<f32>, Vec<f32>)>,
}

impl Case {
    /// LayerNorm / RMSNorm: `rows x d` of offset + std * N(0, 1) rounded to T, dy N(0, 1)
    /// rounded to T, f32 weight (and bias for LayerNorm).
    fn rows<T: Elem>(
        rng: &mut Rng,
        norm: Norm,
        rows: usize,
        d: usize,
        offset: f64,
        std: f64,
    ) -> Case {
        assert!(norm.rows());
        Case {
            norm,
            n: rows,
            c: d,
            spatial: vec![],
            cl: false,
            x: halve::<T>(&rng.normals(rows * d, offset, std)),
            dy: halve::<T>(&rng.normals(rows * d, 0.0, 1.0)),
            weight: Some(rng.normals(d, 1.0, 0.5)),
            bias: norm.has_bias().then(|| rng.normals(d, 0.0, 0.5)),
            half_weight: false,
            half_bias: false,
            running: None,
        }
    }

    /// GroupNorm / InstanceNorm (`common::grouped_data`: O(1) group statistics around
    /// +-offset) or BatchNorm (channel k around offset + k), rounded to T, f32 weight and bias.
    fn channels<T: Elem>(
        rng: &mut Rng,
        norm: Norm,
        n: usize,
        c: usize,
        spatial: &[usize],
        cl: bool,
        offset: f64,
    ) -> Case {
        let s: usize = spatial.iter().product();
        let x = match norm {
            Norm::Group(g) => common::grouped_data(rng, n, c, s, g, offset),
            Norm::Instance => common::grouped_data(rng, n, c, s, c, offset),
            Norm::BatchTrain | Norm::BatchEval => {
                let noise = rng.normals(n * c * s, 0.0, 1.5);
                (0..n * c * s)
                    .map(|i| (offset + ((i / s) % c) as f64 + f64::from(noise[i])) as f32)
                    .collect()
            }
            Norm::Layer | Norm::Rms => panic!("{norm:?} is a rows-family norm"),
        };
        let dy = rng.normals(n * c * s, 0.0, 1.0);
        let order = |v: Vec<f32>| match cl {
            true => common::to_channels_last(&v, n, c, s),
            false => v,
        };
        let running = (norm == Norm::BatchEval).then(|| {
            let m = (0..c).map(|k| (offset + k as f64 + 0.25) as f32).collect();
            let v = rng.normals(c, 2.0, 0.5).iter().map(|v| v.abs()).collect();
            (m, v)
        });
        Case {
            norm,
            n,
            c,
            spatial: spatial.to_vec(),
            cl,
            x: order(halve::<T>(&x)),
            dy: order(halve::<T>(&dy)),
            weight: Some(rng.normals(c, 1.0, 0.5)),
            bias: Some(rng.normals(c, 0.0, 0.5)),
            half_weight: false,
            half_bias: false,
            running,
        }
    }

    /// The same case with the weight and / or bias in x's dtype T (values rounded to T).
    fn half_params<T: Elem>(mut self, weight: bool, bias: bool) -> Case {
        if weight {
            self.weight = self.weight.map(|w| halve::<T>(&w));
        }
        if bias {
            self.bias = self.bias.map(|b| halve::<T>(&b));
        }
        self.half_weight = weight;
        self.half_bias = bias && self.bias.is_some();
        self
    }

    /// The same case without weight and bias: dx alone (no column sums).
    fn without_params(mut self) -> Case {
        (self.weight, self.bias) = (None, None);
        (self.half_weight, self.half_bias) = (false, false);
        self
    }

    fn s(&self) -> usize {
        self.spatial.iter().product()
    }

    fn layout(&self) -> Layout {
        match self.cl {
            true => Layout::ChannelsLast,
            false => Layout::ChannelsFirst,
        }
    }

    fn shape(&self) -> Vec<usize> {
        match self.norm.rows() {
            true => vec![self.n, self.c],
            false => common::layout_shape(self.n, self.c, &self.spatial, self.layout()),
        }
    }

    /// The statistic element `i` is normalized by.
    fn stat_of(&self, i: usize) -> usize {
        let (c, s, cl) = (self.c, self.s(), self.cl);
        match self.norm {
            Norm::Layer | Norm::Rms => i / c,
            Norm::Group(g) => common::group_index(i, c, s, g, cl),
            Norm::Instance => common::group_index(i, c, s, c, cl),
            Norm::BatchTrain | Norm::BatchEval => common::channel_index(i, c, s, cl),
        }
    }

    /// The parameter element `i` is scaled by.
    fn param_of(&self, i: usize) -> usize {
        match self.norm.rows() {
            true => i % self.c,
            false => common::channel_index(i, self.c, self.s(), self.cl),
        }
    }

    fn tag(&self) -> String {
        format!(
            "{:?} {:?} cl={} half w/b={}/{}",
            self.norm,
            self.shape(),
            self.cl,
            self.half_weight,
            self.half_bias
        )
    }
}

/// The GPU gradients, read back widened, and the statistics they went through: the forward's
/// saved mean (zeros for RMSNorm) and rstd / invstd; inference BatchNorm: the running mean and
/// 1 / sqrt(running_var + eps) in f64.
struct Got {
    dx: Vec<f32>,
    dweight: Option<Vec<f32>>,
    dbias: Option<Vec<f32>>,
    mean: Vec<f64>,
    rstd: Vec<f64>,
}

/// Forward (for the saved statistics) and backward of `c` with x and dy of dtype T; checks the
/// dtypes and shapes of everything returned.
fn run<T: Elem>(gpu: &Gpu, c: &Case, what: &str) -> Got {
    let shape = c.shape();
    let x = upload::<T>(gpu, &c.x, &shape);
    let dy = upload::<T>(gpu, &c.dy, &shape);
    let pdt = |half: bool| if half { T::DTYPE } else { DType::F32 };
    let param =
        |v: &Option<Vec<f32>>, half: bool| v.as_ref().map(|v| upload_as(gpu, pdt(half), v, &[c.c]));
    let (w, b) = (param(&c.weight, c.half_weight), param(&c.bias, c.half_bias));
    let layout = c.layout();
    // The gradients and the saved (mean, rstd) tensors, when a forward saved them.
    let (g, saved): (Gradients, Option<(Option<Tensor>, Tensor)>) = match c.norm {
        Norm::Layer => {
            let mut ln = LayerNorm::new(&[c.c]);
            if let Some(w) = w {
                ln = ln.weight(w);
            }
            if let Some(b) = b {
                ln = ln.bias(b);
            }
            let out = ok(what, "forward", ln.forward(gpu, &x));
            let g = ok(
                what,
                "backward",
                ln.backward(gpu, &x, &dy, &out.mean, &out.rstd),
            );
            (g, Some((Some(out.mean), out.rstd)))
        }
        Norm::Rms => {
            let mut rms = RmsNorm::new(&[c.c]).eps(1e-6);
            if let Some(w) = w {
                rms = rms.weight(w);
            }
            let out = ok(what, "forward", rms.forward(gpu, &x));
            let g = ok(what, "backward", rms.backward(gpu, &x, &dy, &out.rstd));
            (g, Some((None, out.rstd)))
        }
        Norm::Group(groups) => {
            let mut gn = GroupNorm::new(groups, c.c).unwrap();
            if let Some(w) = w {
                gn = gn.weight(w);
            }
            if let Some(b) = b {
                gn = gn.bias(b);
            }
            let out = ok(what, "forward", gn.forward(gpu, &x, layout));
            let g = ok(
                what,
                "backward",
                gn.backward(gpu, &x, &dy, &out.mean, &out.rstd, layout),
            );
            (g, Some((Some(out.mean), out.rstd)))
        }
        Norm::Instance => {
            let mut inn = InstanceNorm::new(c.c);
            if let Some(w) = w {
                inn = inn.weight(w);
            }
            if let Some(b) = b {
                inn = inn.bias(b);
            }
            let out = ok(what, "forward", inn.forward(gpu, &x, layout));
            let g = ok(
                what,
                "backward",
                inn.backward(gpu, &x, &dy, &out.mean, &out.rstd, layout),
            );
            (g, Some((Some(out.mean), out.rstd)))
        }
        Norm::BatchTrain | Norm::BatchEval => {
            let mut bn = BatchNorm::new(gpu, c.c).unwrap();
            if let Some(w) = w {
                bn = bn.weight(w);
            }
            if let Some(b) = b {
                bn = bn.bias(b);
            }
            match &c.running {
                None => {
                    let out = ok(what, "forward_train", bn.forward_train(gpu, &x, layout));
                    let g = ok(
                        what,
                        "backward",
                        bn.backward(gpu, &x, &dy, &out.mean, &out.invstd, layout),
                    );
                    (g, Some((Some(out.mean), out.invstd)))
                }
                Some((m, v)) => {
                    let t = |v: &[f32]| upload::<f32>(gpu, v, &[c.c]);
                    bn = bn.running_stats(t(m), t(v));
                    let g = ok(
                        what,
                        "backward_eval",
                        bn.backward_eval(gpu, &x, &dy, layout),
                    );
                    (g, None)
                }
            }
        }
    };
    assert_eq!(g.dx.shape(), &shape[..], "{what}: dx shape");
    assert_eq!(g.dx.dtype(), T::DTYPE, "{what}: dx dtype");
    for (name, grad, param, half) in [
        ("dweight", &g.dweight, &c.weight, c.half_weight),
        ("dbias", &g.dbias, &c.bias, c.half_bias),
    ] {
        assert_eq!(grad.is_some(), param.is_some(), "{what}: {name} present");
        if let Some(t) = grad {
            assert_eq!(t.dtype(), pdt(half), "{what}: {name} dtype");
            assert_eq!(t.shape(), &[c.c][..], "{what}: {name} shape");
        }
    }
    let widen = |t: &Tensor| -> Vec<f64> {
        assert_eq!(t.dtype(), DType::F32, "{what}: saved statistics dtype");
        t.to_vec(gpu)
            .unwrap()
            .iter()
            .map(|&v| f64::from(v))
            .collect()
    };
    let (mean, rstd) = match (saved, &c.running) {
        (Some((mean, rstd)), _) => {
            let rstd = widen(&rstd);
            let mean = mean.map_or(vec![0.0; rstd.len()], |m| widen(&m));
            (mean, rstd)
        }
        (None, Some((m, v))) => (
            m.iter().map(|&v| f64::from(v)).collect(),
            v.iter()
                .map(|&v| 1.0 / (f64::from(v) + 1e-5).sqrt())
                .collect(),
        ),
        (None, None) => unreachable!("a backward without statistics"),
    };
    let read = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_vec(gpu).unwrap());
    Got {
        dx: g.dx.to_vec(gpu).unwrap(),
        dweight: read(&g.dweight),
        dbias: read(&g.dbias),
        mean,
        rstd,
    }
}

/// The f64 reference backward of `c` at the statistics `mean` / `rstd`.
fn reference_of(c: &Case, mean: &[f64], rstd: &[f64]) -> reference::GradientsRef {
    let (x, dy, w, cc, s) = (&c.x, &c.dy, c.weight.as_deref(), c.c, c.s());
    match c.norm {
        Norm::Layer => reference::layer_norm_backward(x, dy, cc, w, mean, rstd),
        Norm::Rms => reference::rms_norm_backward(x, dy, cc, w, rstd),
        Norm::Group(g) => reference::group_norm_backward(x, dy, cc, s, g, c.cl, w, mean, rstd),
        Norm::Instance => reference::group_norm_backward(x, dy, cc, s, cc, c.cl, w, mean, rstd),
        Norm::BatchTrain | Norm::BatchEval => {
            // The reference's [n, c, s] view: channels-last is [n * s, c, 1].
            let s = if c.cl { 1 } else { s };
            let train = c.norm == Norm::BatchTrain;
            reference::batch_norm_backward(x, dy, cc, s, w, mean, rstd, train)
        }
    }
}

/// dx, dweight and dbias against the reference, each within TOL times the magnitudes it is
/// computed from (as `tests/backward.rs`: dx by rstd * (|g| + mean|g| + |xhat| *
/// mean|g * xhat|) per statistic, the column sums by the sums of their terms' magnitudes) plus
/// half an ulp of the dtype it is stored in (see the file's doc). The first output out of
/// bounds, as an error.
fn verify(c: &Case, got: &Got, x_dtype: DType) -> Result<(), String> {
    let r = reference_of(c, &got.mean, &got.rstd);
    let (k, p) = (got.rstd.len(), c.c);
    let w = |i: usize| {
        c.weight
            .as_ref()
            .map_or(1.0, |w| f64::from(w[c.param_of(i)]))
    };
    let xh = |i: usize| {
        let s = c.stat_of(i);
        (f64::from(c.x[i]) - got.mean[s]) * got.rstd[s]
    };
    let g = |i: usize| f64::from(c.dy[i]) * w(i);
    let (mut mg, mut mgx, mut cnt) = (vec![0.0; k], vec![0.0; k], vec![0.0; k]);
    let (mut bw, mut bb) = (vec![0.0; p], vec![0.0; p]);
    for i in 0..c.x.len() {
        let (s, q) = (c.stat_of(i), c.param_of(i));
        mg[s] += g(i).abs();
        mgx[s] += (g(i) * xh(i)).abs();
        cnt[s] += 1.0;
        bw[q] += (f64::from(c.dy[i]) * xh(i)).abs();
        bb[q] += f64::from(c.dy[i]).abs();
    }
    let bound: Vec<f64> = (0..c.x.len())
        .map(|i| {
            let s = c.stat_of(i);
            let m = (mg[s] + xh(i).abs() * mgx[s]) / cnt[s];
            r.dx[i].abs() + got.rstd[s] * (g(i).abs() + m)
        })
        .collect();
    within(&got.dx, &r.dx, &bound, x_dtype).map_err(|e| format!("dx{e}"))?;
    let pdt = |half: bool| if half { x_dtype } else { DType::F32 };
    if let Some(dw) = &got.dweight {
        within(dw, &r.dweight, &bw, pdt(c.half_weight)).map_err(|e| format!("dweight{e}"))?;
    }
    if let Some(db) = &got.dbias {
        within(db, &r.dbias, &bb, pdt(c.half_bias)).map_err(|e| format!("dbias{e}"))?;
    }
    Ok(())
}

/// [`verify`], failing the test.
fn check(what: &str, c: &Case, got: &Got, x_dtype: DType) {
    if let Err(e) = verify(c, got, x_dtype) {
        panic!("{what}: {e}");
    }
}

/// `c` with x and dy of dtype T on each of `gpus`, against the reference.
fn check_on<T: Elem>(gpus: &[(&str, &Gpu)], c: &Case) {
    for &(path, gpu) in gpus {
        let what = format!("{} {} {path}", T::DTYPE, c.tag());
        check(&what, c, &run::<T>(gpu, c, &what), T::DTYPE);
    }
}

/// `c` on both half storage paths.
fn check_paths<T: Elem>(c: &Case) {
    check_on::<T>(&paths(), c);
}

/// A rows case with NaN in row `bad` of x: that row's dx is all NaN, every other row's is
/// finite, every dweight is NaN (xhat of the row is NaN), dbias = sum(dy) stays finite, and
/// the rest matches the reference.
fn check_nan_row<T: Elem>(gpus: &[(&str, &Gpu)], c: &Case, bad: usize) {
    let d = c.c;
    for &(path, gpu) in gpus {
        let what = format!("{} {} {path} nan in row {bad}", T::DTYPE, c.tag());
        let got = run::<T>(gpu, c, &what);
        for row in 0..c.n {
            let dx = &got.dx[row * d..(row + 1) * d];
            match row == bad {
                true => assert!(dx.iter().all(|v| v.is_nan()), "{what}: dx row {row}"),
                false => assert!(dx.iter().all(|v| v.is_finite()), "{what}: dx row {row}"),
            }
        }
        let dw = got.dweight.as_ref().unwrap();
        assert!(dw.iter().all(|v| v.is_nan()), "{what}: dweight {dw:?}");
        if let Some(db) = &got.dbias {
            assert!(db.iter().all(|v| v.is_finite()), "{what}: dbias {db:?}");
        }
        check(&what, c, &got, T::DTYPE);
    }
}

// ---- the rows family ----

#[test]
fn layer_and_rms_norm_with_f32_params_match_the_reference_at_odd_and_long_rows() {
    // D = 1 (rstd = 1/sqrt(eps)), 3 and 7 (rows start mid-word in packed storage), 8 (whole
    // vec4s), 1000 and 4097 (many threads per row, odd). f32 dweight / dbias.
    fn each<T: Elem>(seed: u64) {
        let mut rng = Rng::new(seed);
        for norm in [Norm::Layer, Norm::Rms] {
            for (rows, d) in [(5, 1), (5, 3), (5, 7), (4, 8), (3, 1000), (3, 4097)] {
                check_paths::<T>(&Case::rows::<T>(&mut rng, norm, rows, d, 0.5, 1.5));
            }
        }
    }
    each::<f16>(1);
    each::<bf16>(2);
}

#[test]
fn layer_and_rms_norm_with_half_params_return_gradients_in_each_params_dtype() {
    // Half weight and bias: both gradients in x's dtype; half weight with an f32 bias (and the
    // other way round): each gradient in its own parameter's dtype.
    fn each<T: Elem>(seed: u64) {
        let mut rng = Rng::new(seed);
        for (norm, d, hw, hb) in [
            (Norm::Layer, 7, true, true),
            (Norm::Layer, 1000, true, true),
            (Norm::Layer, 8, true, false),
            (Norm::Layer, 3, false, true),
            (Norm::Rms, 7, true, false),
            (Norm::Rms, 4097, true, false),
        ] {
            let c = Case::rows::<T>(&mut rng, norm, 4, d, 0.5, 1.5).half_params::<T>(hw, hb);
            check_paths::<T>(&c);
        }
    }
    each::<f16>(3);
    each::<bf16>(4);
}

#[test]
fn layer_norm_more_than_65535_rows_of_odd_and_vec4_lengths() {
    // 70000 rows: more than one dispatch dimension of rows, and column sums over 70000 rows.
    fn each<T: Elem>(seed: u64) {
        let mut rng = Rng::new(seed);
        for d in [3, 4] {
            check_paths::<T>(&Case::rows::<T>(&mut rng, Norm::Layer, 70000, d, -1.0, 1.5));
        }
    }
    each::<f16>(5);
    each::<bf16>(6);
}

#[test]
fn mean_offsets_the_half_types_can_hold() {
    // f16: 300 +- 2 (ulp 0.25 there); bf16: 1e4 +- 100 (ulp 64 there). xhat stays O(1); a
    // backward that lost x - mean to cancellation would be off by far more than the bound.
    let mut rng = Rng::new(7);
    for norm in [Norm::Layer, Norm::Rms] {
        for sign in [1.0, -1.0] {
            for d in [3, 1000] {
                let c = Case::rows::<f16>(&mut rng, norm, 4, d, sign * 300.0, 2.0);
                check_paths::<f16>(&c);
                let c = Case::rows::<bf16>(&mut rng, norm, 4, d, sign * 1e4, 100.0);
                check_paths::<bf16>(&c);
            }
        }
    }
}

#[test]
fn nan_in_one_row_stays_in_that_rows_dx_and_poisons_dweight() {
    // d = 7 with half parameters: a NaN dweight must round to a half NaN (not Inf).
    fn each<T: Elem>(seed: u64) {
        let mut rng = Rng::new(seed);
        for norm in [Norm::Layer, Norm::Rms] {
            for (d, half) in [(3, false), (1000, false), (7, true)] {
                let c = Case::rows::<T>(&mut rng, norm, 6, d, 0.0, 1.0);
                let mut c = c.half_params::<T>(half, half);
                c.x[2 * d + d / 2] = f32::NAN;
                check_nan_row::<T>(&paths(), &c, 2);
            }
        }
    }
    each::<f16>(8);
    each::<bf16>(9);
}

#[test]
fn without_params_dx_alone_at_odd_and_vec4_lengths() {
    // No weight or bias: no column sums, dx from the rows' sums alone (rows_bwd for whole
    // vec4s; half rows that start mid-word: the rows' sums, then dx a word per thread). GroupNorm
    // channels-first [3, 8, 3] in 2 groups: rows of 12 (whole vec4s) made of runs of 3.
    fn each<T: Elem>(seed: u64) {
        let mut rng = Rng::new(seed);
        for norm in [Norm::Layer, Norm::Rms] {
            for d in [1, 3, 7, 8, 1000, 4097] {
                let c = Case::rows::<T>(&mut rng, norm, 5, d, 0.5, 1.5);
                check_paths::<T>(&c.without_params());
            }
        }
        for (norm, n, c, spatial) in [
            (Norm::Group(2), 3, 8, &[3][..]),
            (Norm::Group(3), 3, 6, &[5, 3][..]),
            (Norm::Instance, 2, 5, &[7][..]),
            (Norm::BatchTrain, 2, 5, &[7][..]),
            (Norm::BatchEval, 2, 5, &[7][..]),
        ] {
            for cl in [false, true] {
                let c = Case::channels::<T>(&mut rng, norm, n, c, spatial, cl, 0.5);
                check_paths::<T>(&c.without_params());
            }
        }
    }
    each::<f16>(19);
    each::<bf16>(20);
}

#[test]
fn chunked_on_devices_with_64_kib_bindings_as_unchunked_bit_for_bit() {
    // Tensors several bindings long on a device that really limits bindings to 64 KiB (so a
    // scratch buffer bound past it fails wgpu's validation): each chunk of odd half rows starts
    // on a whole word, and the rows' sums (8 bytes a row, more than a row of 3 halves) fit their
    // binding. dx must be the bits of the same call on the full-size device with the same
    // features (a row's or run's dx does not depend on the chunking), and everything within the
    // reference's bound.
    fn each<T: Elem>(seed: u64) {
        let mut rng = Rng::new(seed);
        let cases = [
            Case::rows::<T>(&mut rng, Norm::Layer, 30000, 3, 0.5, 1.5),
            Case::rows::<T>(&mut rng, Norm::Layer, 30000, 3, 0.5, 1.5).without_params(),
            Case::rows::<T>(&mut rng, Norm::Rms, 9000, 7, 0.5, 1.5).half_params::<T>(true, false),
            Case::rows::<T>(&mut rng, Norm::Layer, 24, 4097, 0.5, 1.5).half_params::<T>(true, true),
            Case::channels::<T>(&mut rng, Norm::Group(3), 800, 6, &[5, 3], false, 0.5),
            Case::channels::<T>(&mut rng, Norm::Group(3), 3, 6, &[4097], false, 0.5),
            Case::channels::<T>(&mut rng, Norm::Group(3), 40, 6, &[5, 35], true, 0.5),
            Case::channels::<T>(&mut rng, Norm::Instance, 30, 7, &[25], true, 0.5),
            Case::channels::<T>(&mut rng, Norm::BatchTrain, 700, 5, &[7], false, 0.5),
            Case::channels::<T>(&mut rng, Norm::BatchTrain, 7000, 5, &[], true, 0.5),
            Case::channels::<T>(&mut rng, Norm::BatchEval, 700, 5, &[7], false, 0.5),
        ];
        for (path, small, full) in common::small_limit_paths() {
            for c in &cases {
                let what = format!("{} {} {path}", T::DTYPE, c.tag());
                let got = run::<T>(small, c, &what);
                check(&what, c, &got, T::DTYPE);
                let want = run::<T>(full, c, &format!("{what} (full-size)"));
                assert_bits_eq(&format!("{what} dx"), &got.dx, &want.dx);
            }
        }
    }
    each::<f16>(21);
    each::<bf16>(22);
}

// ---- the channels family ----

/// Odd spatial sizes: [3, 6, 5, 3] (15 positions, 2 or 3 channels per group) and [2, 5, 7]
/// (odd channels: in channels-last one packed word spans two channels).
const ODD: [(usize, usize, &[usize]); 2] = [(3, 6, &[5, 3]), (2, 5, &[7])];

#[test]
fn group_and_instance_norm_at_odd_spatial_sizes_in_both_layouts() {
    fn each<T: Elem>(seed: u64) {
        let mut rng = Rng::new(seed);
        for (n, c, spatial) in ODD {
            let groups = if c == 6 { vec![3, 2] } else { vec![1] };
            let norms = groups.into_iter().map(Norm::Group).chain([Norm::Instance]);
            for norm in norms {
                for cl in [false, true] {
                    check_paths::<T>(&Case::channels::<T>(&mut rng, norm, n, c, spatial, cl, 0.5));
                }
            }
        }
    }
    each::<f16>(10);
    each::<bf16>(11);
}

#[test]
fn batch_norm_train_and_eval_at_odd_spatial_sizes_in_both_layouts() {
    fn each<T: Elem>(seed: u64) {
        let mut rng = Rng::new(seed);
        for norm in [Norm::BatchTrain, Norm::BatchEval] {
            for (n, c, spatial) in ODD {
                for cl in [false, true] {
                    check_paths::<T>(&Case::channels::<T>(&mut rng, norm, n, c, spatial, cl, 0.5));
                }
            }
            // [N, C], no spatial dims: 7 rows of 3 channels.
            check_paths::<T>(&Case::channels::<T>(&mut rng, norm, 7, 3, &[], true, 0.5));
        }
    }
    each::<f16>(12);
    each::<bf16>(13);
}

#[test]
fn channels_family_with_half_params_returns_gradients_in_each_params_dtype() {
    fn each<T: Elem>(seed: u64) {
        let mut rng = Rng::new(seed);
        for (norm, cl, hw, hb) in [
            (Norm::Group(3), true, true, true),
            (Norm::Group(2), false, true, false),
            (Norm::Instance, false, true, true),
            (Norm::BatchTrain, true, true, true),
            (Norm::BatchTrain, false, false, true),
            (Norm::BatchEval, false, true, true),
        ] {
            let c = Case::channels::<T>(&mut rng, norm, 3, 6, &[5, 3], cl, 0.5);
            check_paths::<T>(&c.half_params::<T>(hw, hb));
        }
    }
    each::<f16>(14);
    each::<bf16>(15);
}

// ---- determinism, caller outputs, errors ----

#[test]
fn reruns_are_bit_identical() {
    // LayerNorm at odd D (f32 and half parameters) and channels-last training BatchNorm with
    // odd channels: two forward + backward runs give the same bits (widening is exact and
    // one-to-one, so equal widened bits are equal stored bits).
    fn each<T: Elem>(seed: u64) {
        let mut rng = Rng::new(seed);
        let ln = Case::rows::<T>(&mut rng, Norm::Layer, 9, 1001, 0.5, 1.5);
        let ln_half = ln.clone().half_params::<T>(true, true);
        let bn = Case::channels::<T>(&mut rng, Norm::BatchTrain, 6, 5, &[7, 3], true, 0.5);
        for c in [ln, ln_half, bn] {
            for (path, gpu) in paths() {
                let what = format!("{} {} {path}", T::DTYPE, c.tag());
                let (a, b) = (run::<T>(gpu, &c, &what), run::<T>(gpu, &c, &what));
                assert_bits_eq(&format!("{what} dx"), &a.dx, &b.dx);
                for (name, s, t) in [
                    ("dweight", &a.dweight, &b.dweight),
                    ("dbias", &a.dbias, &b.dbias),
                ] {
                    let (s, t) = (s.as_ref().unwrap(), t.as_ref().unwrap());
                    assert_bits_eq(&format!("{what} {name}"), s, t);
                }
                let bits = |v: &[f64]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a.mean), bits(&b.mean), "{what} mean");
                assert_eq!(bits(&a.rstd), bits(&b.rstd), "{what} rstd");
            }
        }
    }
    each::<f16>(16);
    each::<bf16>(17);
}

#[test]
fn encode_backward_writes_caller_gradients_and_refuses_other_dtypes() {
    // LayerNorm with a half weight and an f32 bias: caller gradients dx and dweight in x's
    // dtype, dbias f32 get backward()'s bits; any other dtype for any of them is an error.
    fn each<T: Elem>(other: DType) {
        let (rows, d) = (5, 9);
        let mut rng = Rng::new(18);
        let c =
            Case::rows::<T>(&mut rng, Norm::Layer, rows, d, 0.0, 1.0).half_params::<T>(true, false);
        for (path, gpu) in paths() {
            let what = format!("{} {path}", T::DTYPE);
            let x = upload::<T>(gpu, &c.x, &[rows, d]);
            let dy = upload::<T>(gpu, &c.dy, &[rows, d]);
            let w = upload::<T>(gpu, c.weight.as_ref().unwrap(), &[d]);
            let b = upload::<f32>(gpu, c.bias.as_ref().unwrap(), &[d]);
            let ln = LayerNorm::new(&[d]).weight(w).bias(b);
            let out = ok(&what, "forward", ln.forward(gpu, &x));
            let grads = |dx: DType, dw: DType, db: DType| Gradients {
                dx: Tensor::empty_dtype(gpu, &[rows, d], dx).unwrap(),
                dweight: Some(Tensor::empty_dtype(gpu, &[d], dw).unwrap()),
                dbias: Some(Tensor::empty_dtype(gpu, &[d], db).unwrap()),
            };
            let encode = |g: &Gradients| -> Result<(), NormError> {
                let mut enc = gpu.encoder();
                ln.encode_backward(gpu, &mut enc, &x, &dy, &out.mean, &out.rstd, g)?;
                gpu.submit_wait(enc)
            };
            let t = T::DTYPE;
            for (bad, why) in [
                (grads(DType::F32, t, DType::F32), "f32 dx"),
                (grads(other, t, DType::F32), "dx of the other half type"),
                (
                    grads(t, DType::F32, DType::F32),
                    "f32 dweight for a half weight",
                ),
                (grads(t, t, t), "half dbias for an f32 bias"),
            ] {
                assert!(encode(&bad).is_err(), "{what}: {why} must be refused");
            }
            let want = ok(
                &what,
                "backward",
                ln.backward(gpu, &x, &dy, &out.mean, &out.rstd),
            );
            let g = grads(t, t, DType::F32);
            ok(&what, "encode_backward", encode(&g));
            let read = |t: &Tensor| t.to_vec(gpu).unwrap();
            assert_bits_eq(&format!("{what} dx"), &read(&g.dx), &read(&want.dx));
            for (name, s, u) in [
                ("dweight", &g.dweight, &want.dweight),
                ("dbias", &g.dbias, &want.dbias),
            ] {
                let (s, u) = (s.as_ref().unwrap(), u.as_ref().unwrap());
                assert_eq!(s.dtype(), u.dtype(), "{what} {name} dtype");
                assert_bits_eq(&format!("{what} {name}"), &read(s), &read(u));
            }
        }
    }
    each::<f16>(DType::BF16);
    each::<bf16>(DType::F16);
}

/// The backward of `norm` on `[2, 6, 3]` (LayerNorm / RMSNorm over the last dim) with the
/// given tensors; `mean` / `rstd` are used where the backward takes them.
#[allow(clippy::too_many_arguments)]
fn try_backward(
    gpu: &Gpu,
    norm: Norm,
    x: &Tensor,
    dy: &Tensor,
    w: Option<Tensor>,
    b: Option<Tensor>,
    mean: &Tensor,
    rstd: &Tensor,
) -> Result<Gradients, NormError> {
    let (c, s, cf) = (6, 3, Layout::ChannelsFirst);
    match norm {
        Norm::Layer => {
            let mut ln = LayerNorm::new(&[s]);
            if let Some(w) = w {
                ln = ln.weight(w);
            }
            if let Some(b) = b {
                ln = ln.bias(b);
            }
            ln.backward(gpu, x, dy, mean, rstd)
        }
        Norm::Rms => {
            let mut rms = RmsNorm::new(&[s]);
            if let Some(w) = w {
                rms = rms.weight(w);
            }
            rms.backward(gpu, x, dy, rstd)
        }
        Norm::Group(g) => {
            let mut gn = GroupNorm::new(g, c).unwrap();
            if let Some(w) = w {
                gn = gn.weight(w);
            }
            if let Some(b) = b {
                gn = gn.bias(b);
            }
            gn.backward(gpu, x, dy, mean, rstd, cf)
        }
        Norm::Instance => {
            let mut inn = InstanceNorm::new(c);
            if let Some(w) = w {
                inn = inn.weight(w);
            }
            if let Some(b) = b {
                inn = inn.bias(b);
            }
            inn.backward(gpu, x, dy, mean, rstd, cf)
        }
        Norm::BatchTrain | Norm::BatchEval => {
            let mut bn = BatchNorm::new(gpu, c).unwrap();
            if let Some(w) = w {
                bn = bn.weight(w);
            }
            if let Some(b) = b {
                bn = bn.bias(b);
            }
            match norm {
                Norm::BatchTrain => bn.backward(gpu, x, dy, mean, rstd, cf),
                _ => bn.backward_eval(gpu, x, dy, cf),
            }
        }
    }
}

/// f32 statistics of the right count for `norm` on `[2, 6, 3]`, from a plain f32 forward.
fn stats_for(gpu: &Gpu, norm: Norm, x32: &Tensor) -> (Tensor, Tensor) {
    let (c, s, cf) = (6, 3, Layout::ChannelsFirst);
    match norm {
        Norm::Layer => {
            let o = LayerNorm::new(&[s]).forward(gpu, x32).unwrap();
            (o.mean, o.rstd)
        }
        Norm::Rms => {
            let o = RmsNorm::new(&[s]).forward(gpu, x32).unwrap();
            (o.rstd.clone(), o.rstd)
        }
        Norm::Group(g) => {
            let o = GroupNorm::new(g, c).unwrap().forward(gpu, x32, cf).unwrap();
            (o.mean, o.rstd)
        }
        Norm::Instance => {
            let o = InstanceNorm::new(c).forward(gpu, x32, cf).unwrap();
            (o.mean, o.rstd)
        }
        Norm::BatchTrain | Norm::BatchEval => {
            let mut bn = BatchNorm::new(gpu, c).unwrap();
            let o = bn.forward_train(gpu, x32, cf).unwrap();
            (o.mean, o.invstd)
        }
    }
}

#[test]
fn dtype_mismatches_are_errors_not_panics() {
    // For every backward: dy of another dtype than x (either half type for the other, f32 dy
    // for half x, half dy for f32 x), a weight or bias of the other half type, and half
    // statistics are refused with a NormError. The all-f32 call with the same tensors works
    // (so each refusal is the dtype's, not a malformed setup's).
    use DType::{BF16, F16, F32};
    let gpu = common::gpu();
    let shape = [2, 6, 3];
    // Multiples of 0.25 up to 3: exact in every dtype.
    let xv: Vec<f32> = (0..36).map(|i| (i % 7) as f32 * 0.5 - 1.5).collect();
    let dyv: Vec<f32> = (0..36).map(|i| (i % 5) as f32 * 0.25 - 0.5).collect();
    let x32 = upload::<f32>(gpu, &xv, &shape);
    for norm in [
        Norm::Layer,
        Norm::Rms,
        Norm::Group(3),
        Norm::Instance,
        Norm::BatchTrain,
        Norm::BatchEval,
    ] {
        let p = if norm.rows() { 3 } else { 6 };
        let pv: Vec<f32> = (0..p).map(|i| 1.0 + 0.25 * i as f32).collect();
        let (mean, rstd) = stats_for(gpu, norm, &x32);
        let attempt = |xd: DType, dyd: DType, wd: Option<DType>, bd: Option<DType>, sd: DType| {
            let x = upload_as(gpu, xd, &xv, &shape);
            let dy = upload_as(gpu, dyd, &dyv, &shape);
            let w = wd.map(|d| upload_as(gpu, d, &pv, &[p]));
            let b = bd.map(|d| upload_as(gpu, d, &pv, &[p]));
            let (m, r) = match sd {
                F32 => (mean.clone(), rstd.clone()),
                _ => (mean.cast(gpu, sd).unwrap(), rstd.cast(gpu, sd).unwrap()),
            };
            try_backward(gpu, norm, &x, &dy, w, b, &m, &r)
        };
        let bias = norm.has_bias().then_some(F32);
        let control = attempt(F32, F32, Some(F32), bias, F32);
        assert!(control.is_ok(), "{norm:?}: f32 control: {control:?}");
        let mut bad = vec![
            (F16, BF16, None, None, F32, "bf16 dy for f16 x"),
            (BF16, F16, None, None, F32, "f16 dy for bf16 x"),
            (F16, F32, None, None, F32, "f32 dy for f16 x"),
            (BF16, F32, None, None, F32, "f32 dy for bf16 x"),
            (F32, F16, None, None, F32, "f16 dy for f32 x"),
            (F16, F16, Some(BF16), None, F32, "bf16 weight for f16 x"),
            (BF16, BF16, Some(F16), None, F32, "f16 weight for bf16 x"),
        ];
        if norm.has_bias() {
            bad.push((F16, F16, Some(F16), Some(BF16), F32, "bf16 bias for f16 x"));
        }
        if norm != Norm::BatchEval {
            bad.push((F16, F16, None, None, F16, "f16 statistics"));
        }
        for (xd, dyd, wd, bd, sd, why) in bad {
            let r = attempt(xd, dyd, wd, bd, sd);
            assert!(r.is_err(), "{norm:?}: {why} must be refused, got {r:?}");
        }
    }
}

// ---- the harness itself ----

#[test]
fn the_tolerance_takes_the_nearest_half_value_and_refuses_its_other_neighbour() {
    // A reference 0.3 ulp above 1.0 (and one 0.3 ulp above 64), with a tiny f32 bound: the
    // nearest half value passes, the other neighbour (0.7 ulp away) fails; in f32 the
    // half-ulp term is absent.
    for (dtype, mant) in [(DType::F16, 10), (DType::BF16, 7)] {
        for base in [1.0f64, 64.0] {
            let ulp = base * 2f64.powi(-mant);
            let want = [base + 0.3 * ulp];
            let bound = [1e-3];
            let near = [base as f32];
            let far = [(base + ulp) as f32];
            assert!(
                within(&near, &want, &bound, dtype).is_ok(),
                "{dtype} {base}"
            );
            assert!(
                within(&far, &want, &bound, dtype).is_err(),
                "{dtype} {base}"
            );
            assert!(
                within(&near, &want, &bound, DType::F32).is_err(),
                "f32 {base}"
            );
        }
    }
    // NaN meets only NaN; the f32 bound alone: TOL * bound.
    assert!(within(&[f32::NAN], &[1.0], &[1.0], DType::F16).is_err());
    assert!(within(&[1.0], &[f64::NAN], &[1.0], DType::F16).is_err());
    assert!(within(&[f32::NAN], &[f64::NAN], &[1.0], DType::F16).is_ok());
    let off = 0.5 * TOL * 100.0;
    assert!(within(&[(1.0 + off) as f32], &[1.0], &[100.0], DType::F32).is_ok());
    assert!(within(&[(1.0 + 4.0 * off) as f32], &[1.0], &[100.0], DType::F32).is_err());
}

#[test]
fn f32_control_the_same_harness_passes_on_the_f32_backward() {
    // The harness (cases, reference, bounds, dtype checks) on x, dy and parameters in f32,
    // where the backward exists: any failure of the half tests above is the half path's.
    let gpus = [("default", common::gpu())];
    let mut rng = Rng::new(100);
    for norm in [Norm::Layer, Norm::Rms] {
        for (rows, d) in [(5, 1), (5, 7), (3, 1000)] {
            check_on::<f32>(&gpus, &Case::rows::<f32>(&mut rng, norm, rows, d, 0.5, 1.5));
        }
        check_on::<f32>(&gpus, &Case::rows::<f32>(&mut rng, norm, 4, 9, 300.0, 2.0));
        let mut c = Case::rows::<f32>(&mut rng, norm, 6, 7, 0.0, 1.0);
        c.x[2 * 7 + 3] = f32::NAN;
        check_nan_row::<f32>(&gpus, &c, 2);
    }
    for norm in [
        Norm::Group(3),
        Norm::Instance,
        Norm::BatchTrain,
        Norm::BatchEval,
    ] {
        for cl in [false, true] {
            let c = Case::channels::<f32>(&mut rng, norm, 3, 6, &[5, 3], cl, 0.5);
            check_on::<f32>(&gpus, &c);
        }
    }
}

/// What a half backward that meets the contract returns, emulated on the host: the f32
/// backward on the same (widened) values, each output whose dtype is half (dx; dweight / dbias
/// of half parameters) stored through `store`.
fn emulate<T: Elem>(gpu: &Gpu, c: &Case, store: &dyn Fn(f32) -> f32) -> Got {
    let what = format!("emulated {} {}", T::DTYPE, c.tag());
    let got = run::<f32>(gpu, c, &what);
    let halve = |v: Vec<f32>, half: bool| match half {
        true => v.into_iter().map(store).collect(),
        false => v,
    };
    Got {
        dx: halve(got.dx, true),
        dweight: got.dweight.map(|v| halve(v, c.half_weight)),
        dbias: got.dbias.map(|v| halve(v, c.half_bias)),
        ..got
    }
}

/// `v` stored in T rounding toward zero (a wrong store: up to a whole ulp off).
fn truncate<T: Elem>(v: f32) -> f32 {
    let r = T::round(v);
    if !v.is_finite() || r.widen().abs() <= v.abs() {
        return r.widen();
    }
    // One step toward zero: the magnitude bits of a sign-magnitude half value, less one.
    let b: u16 = bytemuck::cast(r);
    bytemuck::cast::<u16, T>(b - 1).widen()
}

#[test]
fn the_bound_holds_for_a_correctly_rounded_f32_backward_and_fails_a_truncating_store() {
    // The half bound is neither too tight nor too loose for the contract: the f32 backward's
    // outputs rounded once to nearest even on the host pass it (rows and channels families,
    // half parameters, 70000 rows); stored by truncation instead, dx fails it.
    fn each<T: Elem>(seed: u64) {
        let gpu = common::gpu();
        let mut rng = Rng::new(seed);
        let nearest = |v: f32| T::round(v).widen();
        let cases = [
            Case::rows::<T>(&mut rng, Norm::Layer, 3, 1000, 0.5, 1.5).half_params::<T>(true, true),
            Case::rows::<T>(&mut rng, Norm::Rms, 5, 7, 0.5, 1.5).half_params::<T>(true, false),
            Case::rows::<T>(&mut rng, Norm::Layer, 70000, 3, -1.0, 1.5),
            Case::channels::<T>(&mut rng, Norm::Group(3), 3, 6, &[5, 3], true, 0.5),
            Case::channels::<T>(&mut rng, Norm::BatchTrain, 3, 6, &[5, 3], true, 0.5)
                .half_params::<T>(true, true),
            Case::channels::<T>(&mut rng, Norm::BatchEval, 2, 5, &[7], false, 0.5),
        ];
        for c in &cases {
            let what = format!("emulated {} {}", T::DTYPE, c.tag());
            check(&what, c, &emulate::<T>(gpu, c, &nearest), T::DTYPE);
            let wrong = emulate::<T>(gpu, c, &truncate::<T>);
            let e = verify(c, &wrong, T::DTYPE);
            assert!(e.is_err(), "{what}: a truncating store passed the bound");
        }
    }
    each::<f16>(102);
    each::<bf16>(103);
}

/// The half backward is the f32 backward of the widened inputs, rounded once: every kernel
/// widens exactly and sums in the f32 path's order, so dx must equal the f32 dx rounded to
/// nearest even bit for bit (the single rounding the contract allows), on every path, for
/// rows (vec4 and pair kernels), GroupNorm/InstanceNorm and BatchNorm train and eval in both
/// layouts. Column sums are compared with the f32 ones to f32 rounding (their block lengths may
/// differ for odd half rows, which must start chunks on whole words).
#[test]
fn half_dx_is_the_f32_backward_of_the_widened_inputs_rounded_once() {
    let mut rng = Rng::new(41);
    for (path, gpu) in paths() {
        for dt in [DType::F16, DType::BF16] {
            let input = |rng: &mut Rng, shape: &[usize]| half_and_wide(gpu, rng, shape, dt);
            let compare = |what: &str, wide: &Gradients, half: &Gradients, terms: usize| {
                assert_eq!(half.dx.dtype(), dt, "{what}");
                let got: Vec<f32> = half.dx.to_vec(gpu).unwrap();
                assert_bits_eq(what, &got, &rounded(gpu, &wide.dx, dt));
                let a: Vec<f32> = wide.dweight.as_ref().unwrap().to_vec(gpu).unwrap();
                let b: Vec<f32> = half.dweight.as_ref().unwrap().to_vec(gpu).unwrap();
                // The same sum split into other blocks: within f32's n * eps bound for `terms`
                // terms of size up to about 4 (unit-scale dy times xhat).
                let tol = 4.0 * f32::EPSILON * terms as f32 * 4.0;
                for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                    assert!((a - b).abs() <= tol, "{what} dweight[{i}]: {a} vs {b}");
                }
            };
            for (rows, d) in [(5, 1), (4, 3), (3, 8), (2, 4097), (70000, 3)] {
                let (x, xw) = input(&mut rng, &[rows, d]);
                let (dy, dyw) = input(&mut rng, &[rows, d]);
                let w = Tensor::from_slice(gpu, &rng.normals(d, 1.0, 0.5), &[d]).unwrap();
                let b = Tensor::from_slice(gpu, &rng.normals(d, 0.0, 0.5), &[d]).unwrap();
                let ln = LayerNorm::new(&[d]).weight(w.clone()).bias(b);
                let o = ln.forward(gpu, &xw).unwrap();
                let what = format!("{path} {dt} layer_norm [{rows}, {d}]");
                let wide = ln.backward(gpu, &xw, &dyw, &o.mean, &o.rstd).unwrap();
                compare(
                    &what,
                    &wide,
                    &ln.backward(gpu, &x, &dy, &o.mean, &o.rstd).unwrap(),
                    rows,
                );
                let rms = RmsNorm::new(&[d]).weight(w);
                let o = rms.forward(gpu, &xw).unwrap();
                let what = format!("{path} {dt} rms_norm [{rows}, {d}]");
                let wide = rms.backward(gpu, &xw, &dyw, &o.rstd).unwrap();
                compare(
                    &what,
                    &wide,
                    &rms.backward(gpu, &x, &dy, &o.rstd).unwrap(),
                    rows,
                );
            }
            for (shape, layout) in [
                (vec![3, 6, 5, 3], Layout::ChannelsFirst),
                (vec![3, 5, 3, 6], Layout::ChannelsLast),
                (vec![2, 8, 4, 4], Layout::ChannelsFirst),
                (vec![2, 3, 3, 8], Layout::ChannelsLast),
            ] {
                let c = match layout {
                    Layout::ChannelsFirst => shape[1],
                    Layout::ChannelsLast => shape[3],
                };
                let (x, xw) = input(&mut rng, &shape);
                let (dy, dyw) = input(&mut rng, &shape);
                let terms = shape.iter().product::<usize>() / c;
                let w = Tensor::from_slice(gpu, &rng.normals(c, 1.0, 0.5), &[c]).unwrap();
                let b = Tensor::from_slice(gpu, &rng.normals(c, 0.0, 0.5), &[c]).unwrap();
                let what = |n: &str| format!("{path} {dt} {n} {shape:?} {layout:?}");
                let mut bn = BatchNorm::new(gpu, c)
                    .unwrap()
                    .weight(w.clone())
                    .bias(b.clone());
                let t = bn.forward_train(gpu, &xw, layout).unwrap();
                let wide = bn
                    .backward(gpu, &xw, &dyw, &t.mean, &t.invstd, layout)
                    .unwrap();
                let half = bn
                    .backward(gpu, &x, &dy, &t.mean, &t.invstd, layout)
                    .unwrap();
                compare(&what("batch_norm"), &wide, &half, terms);
                let wide = bn.backward_eval(gpu, &xw, &dyw, layout).unwrap();
                let half = bn.backward_eval(gpu, &x, &dy, layout).unwrap();
                compare(&what("batch_norm eval"), &wide, &half, terms);
                let gn = GroupNorm::new(2, c)
                    .unwrap()
                    .weight(w.clone())
                    .bias(b.clone());
                let o = gn.forward(gpu, &xw, layout).unwrap();
                let wide = gn
                    .backward(gpu, &xw, &dyw, &o.mean, &o.rstd, layout)
                    .unwrap();
                let half = gn.backward(gpu, &x, &dy, &o.mean, &o.rstd, layout).unwrap();
                compare(&what("group_norm(2)"), &wide, &half, terms);
                let inn = InstanceNorm::new(c).weight(w).bias(b);
                let o = inn.forward(gpu, &xw, layout).unwrap();
                let wide = inn
                    .backward(gpu, &xw, &dyw, &o.mean, &o.rstd, layout)
                    .unwrap();
                let half = inn
                    .backward(gpu, &x, &dy, &o.mean, &o.rstd, layout)
                    .unwrap();
                compare(&what("instance_norm"), &wide, &half, terms);
            }
        }
    }
}

/// x of `shape` in `dt` (N(0.5, 2) rounded on the GPU) and the same values widened to f32.
fn half_and_wide(gpu: &Gpu, rng: &mut Rng, shape: &[usize], dt: DType) -> (Tensor, Tensor) {
    let n = shape.iter().product();
    let t = Tensor::from_slice(gpu, &rng.normals(n, 0.5, 2.0), shape).unwrap();
    let h = t.cast(gpu, dt).unwrap();
    let w = h.cast(gpu, DType::F32).unwrap();
    (h, w)
}

/// `t` read back and rounded to `dt` to nearest even on the host (f32: as is).
fn rounded(gpu: &Gpu, t: &Tensor, dt: DType) -> Vec<f32> {
    let v: Vec<f32> = t.to_vec(gpu).unwrap();
    match dt {
        DType::F16 => v.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        DType::BF16 => v.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        DType::F32 => v,
    }
}

/// `half` is `wide` (the f32 call on the widened inputs) rounded once: dx to x's dtype `dt`,
/// each parameter's gradient to its own dtype, bit for bit.
fn assert_rounded_once(what: &str, gpu: &Gpu, wide: &Gradients, half: &Gradients, dt: DType) {
    assert_eq!(half.dx.dtype(), dt, "{what} dx dtype");
    let got: Vec<f32> = half.dx.to_vec(gpu).unwrap();
    assert_bits_eq(&format!("{what} dx"), &got, &rounded(gpu, &wide.dx, dt));
    for (name, w, h) in [
        ("dweight", &wide.dweight, &half.dweight),
        ("dbias", &wide.dbias, &half.dbias),
    ] {
        let (w, h) = (w.as_ref().unwrap(), h.as_ref().unwrap());
        let got: Vec<f32> = h.to_vec(gpu).unwrap();
        let want = rounded(gpu, w, h.dtype());
        assert_bits_eq(&format!("{what} {name} ({})", h.dtype()), &got, &want);
    }
}

#[test]
fn batch_norm_eval_without_running_stats_is_the_f32_one_rounded_once() {
    // track_running_stats(false): inference normalizes with batch statistics, and
    // backward_eval is the training backward through them, computed from x first. In half,
    // the f32 backward of the widened inputs rounded once, with f32 and with half parameters.
    let mut rng = Rng::new(23);
    for (path, gpu) in paths() {
        for dt in [DType::F16, DType::BF16] {
            for (shape, layout) in [
                (vec![3, 5, 7], Layout::ChannelsFirst),
                (vec![3, 7, 5], Layout::ChannelsLast),
                (vec![2, 4, 8], Layout::ChannelsFirst),
            ] {
                let c = match layout {
                    Layout::ChannelsFirst => shape[1],
                    Layout::ChannelsLast => shape[shape.len() - 1],
                };
                let (x, xw) = half_and_wide(gpu, &mut rng, &shape, dt);
                let (dy, dyw) = half_and_wide(gpu, &mut rng, &shape, dt);
                let (w, ww) = half_and_wide(gpu, &mut rng, &[c], dt);
                let (b, bw) = half_and_wide(gpu, &mut rng, &[c], dt);
                for half_params in [false, true] {
                    let what =
                        format!("{path} {dt} {shape:?} {layout:?} half params {half_params}");
                    let bn = |w: &Tensor, b: &Tensor| {
                        let bn = BatchNorm::new(gpu, c).unwrap().track_running_stats(false);
                        bn.weight(w.clone()).bias(b.clone())
                    };
                    let wide = bn(&ww, &bw).backward_eval(gpu, &xw, &dyw, layout).unwrap();
                    let half = match half_params {
                        true => bn(&w, &b),
                        false => bn(&ww, &bw),
                    };
                    let half = half.backward_eval(gpu, &x, &dy, layout).unwrap();
                    assert_rounded_once(&what, gpu, &wide, &half, dt);
                    // A dy of the other half type is refused before anything is recorded.
                    let other = if dt == DType::F16 {
                        DType::BF16
                    } else {
                        DType::F16
                    };
                    let bad = dy.cast(gpu, other).unwrap();
                    let e = bn(&w, &b).backward_eval(gpu, &x, &bad, layout);
                    assert!(
                        matches!(e, Err(NormError::InvalidArgument(_))),
                        "{what}: {e:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn backward_sync_in_half_is_the_f32_one_rounded_once_on_every_rank() {
    // SyncBatchNorm's backward with x and dy in half on two ranks (threads) of unequal parts,
    // through the global statistics of an f32 forward_train_sync (statistics are f32 whatever
    // x's dtype): each rank's dx is its f32 backward_sync of the widened inputs rounded once,
    // and dweight / dbias (the rank's own sums) are the f32 ones, rounded once for half
    // parameters. Odd runs (5 x 7 channels-first, 5 channels last): the dx pass writes whole
    // words.
    use fused_norm::{StatsReducer, ThreadReducer};
    for (path, gpu) in paths() {
        for dt in [DType::F16, DType::BF16] {
            for (inner, layout, c) in [
                (vec![5, 7], Layout::ChannelsFirst, 5),
                (vec![3, 5], Layout::ChannelsLast, 5),
            ] {
                let counts = [3, 4];
                let per: usize = inner.iter().product();
                let total: usize = counts.iter().sum();
                let mut rng = Rng::new(24);
                let round = |v: Vec<f32>| -> Vec<f32> {
                    match dt {
                        DType::F16 => halve::<f16>(&v),
                        _ => halve::<bf16>(&v),
                    }
                };
                let x = round(rng.normals(total * per, 0.5, 2.0));
                let dy = round(rng.normals(total * per, 0.0, 1.0));
                let w = round(rng.normals(c, 1.0, 0.5));
                let b = round(rng.normals(c, 0.0, 0.5));
                let ranks = ThreadReducer::group(2).into_iter().map(|r| {
                    let (x, dy, w, b) = (x.clone(), dy.clone(), w.clone(), b.clone());
                    let inner = inner.clone();
                    std::thread::spawn(move || {
                        let start: usize = counts[..r.rank()].iter().sum();
                        let (lo, hi) = (start * per, (start + counts[r.rank()]) * per);
                        let shape = [&[counts[r.rank()]][..], &inner].concat();
                        let t = |v: &[f32], d: DType, s: &[usize]| upload_as(gpu, d, v, s);
                        let (xw, dyw) = (
                            t(&x[lo..hi], DType::F32, &shape),
                            t(&dy[lo..hi], DType::F32, &shape),
                        );
                        let (xh, dyh) = (t(&x[lo..hi], dt, &shape), t(&dy[lo..hi], dt, &shape));
                        let bn = |d: DType| {
                            let bn = BatchNorm::new(gpu, c).unwrap();
                            bn.weight(t(&w, d, &[c])).bias(t(&b, d, &[c]))
                        };
                        let mut wide_bn = bn(DType::F32);
                        let st = wide_bn.forward_train_sync(gpu, &xw, layout, &r).unwrap();
                        let (m, s) = (&st.mean, &st.invstd);
                        let wide = wide_bn
                            .backward_sync(gpu, &xw, &dyw, m, s, layout, &r)
                            .unwrap();
                        let f32_params =
                            bn(DType::F32).backward_sync(gpu, &xh, &dyh, m, s, layout, &r);
                        let half_params = bn(dt).backward_sync(gpu, &xh, &dyh, m, s, layout, &r);
                        let what = format!("{path} {dt} {layout:?} rank {}", r.rank());
                        assert_rounded_once(
                            &format!("{what} f32 params"),
                            gpu,
                            &wide,
                            &f32_params.unwrap(),
                            dt,
                        );
                        assert_rounded_once(
                            &format!("{what} half params"),
                            gpu,
                            &wide,
                            &half_params.unwrap(),
                            dt,
                        );
                    })
                });
                for h in ranks.collect::<Vec<_>>() {
                    h.join().expect("a rank failed");
                }
            }
        }
    }
}
