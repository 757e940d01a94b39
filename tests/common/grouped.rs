//! What GroupNorm's and InstanceNorm's tests share: a case of either norm, its reference, runs
//! on every context, and the test bodies both files call with their own norm and shapes.
//! An InstanceNorm is a GroupNorm with one group per channel, so every body is written once,
//! over the number of groups the norm has.

use std::ops::Deref;

use super::{
    assert_bits_eq, assert_close, bits_mismatch, channel_index, exact_empty, exact_tensor, gpu,
    gpu_small_bindings, gpus, group_index, grouped_data, layout_shape, ncs, t, to_channels_first,
    to_channels_last, Rng,
};
use fused_norm::{
    reference, Gpu, GroupNorm, InstanceNorm, LayerNorm, Layout, NormError, NormOutput, Tensor,
};

/// (N, C, spatial dims).
pub type Dims = (usize, usize, &'static [usize]);

/// The norm a case runs, and the (N, C, spatial dims) it runs on.
pub type Spec = (Norm, Dims);

pub const LAYOUTS: [Layout; 2] = [Layout::ChannelsFirst, Layout::ChannelsLast];

/// Which of the two norms: `GroupNorm(groups, C)` or `InstanceNorm(C)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Group(usize),
    Instance,
}

impl Norm {
    /// Groups over `c` channels: one per channel for InstanceNorm.
    pub fn groups(self, c: usize) -> usize {
        match self {
            Norm::Group(g) => g,
            Norm::Instance => c,
        }
    }
    /// What one statistic is called in messages.
    pub fn unit(self) -> &'static str {
        match self {
            Norm::Group(_) => "group",
            Norm::Instance => "instance",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Norm::Group(_) => "GroupNorm",
            Norm::Instance => "InstanceNorm",
        }
    }
    /// The module over `c` channels with its defaults (eps 1e-5, no affine).
    pub fn module(self, c: usize) -> Module {
        match self {
            Norm::Group(g) => Module::Group(GroupNorm::new(g, c).unwrap()),
            Norm::Instance => Module::Instance(InstanceNorm::new(c)),
        }
    }
}

/// A GroupNorm or an InstanceNorm, set up through its own setters; `plan`, `forward` and
/// `encode` are GroupNorm's (InstanceNorm derefs to it).
#[derive(Clone)]
pub enum Module {
    Group(GroupNorm),
    Instance(InstanceNorm),
}

impl Deref for Module {
    type Target = GroupNorm;

    fn deref(&self) -> &GroupNorm {
        match self {
            Module::Group(g) => g,
            Module::Instance(i) => i,
        }
    }
}

impl Module {
    pub fn eps(self, eps: f32) -> Module {
        match self {
            Module::Group(g) => Module::Group(g.eps(eps)),
            Module::Instance(i) => Module::Instance(i.eps(eps)),
        }
    }
    pub fn weight(self, w: Tensor) -> Module {
        match self {
            Module::Group(g) => Module::Group(g.weight(w)),
            Module::Instance(i) => Module::Instance(i.weight(w)),
        }
    }
    pub fn bias(self, b: Tensor) -> Module {
        match self {
            Module::Group(g) => Module::Group(g.bias(b)),
            Module::Instance(i) => Module::Instance(i.bias(b)),
        }
    }
}

#[derive(Clone)]
pub struct Case {
    pub x: Vec<f32>,
    pub shape: Vec<usize>,
    pub layout: Layout,
    pub norm: Norm,
    pub weight: Option<Vec<f32>>,
    pub bias: Option<Vec<f32>>,
    pub eps: f32,
}

impl Case {
    /// `grouped_data` (std 1, statistics with means alternating around +-offset), laid out in
    /// `layout`; no affine, eps 1e-5.
    pub fn new(rng: &mut Rng, (norm, (n, c, spatial)): Spec, layout: Layout, offset: f64) -> Case {
        let s: usize = spatial.iter().product();
        let mut x = grouped_data(rng, n, c, s, norm.groups(c), offset);
        if layout == Layout::ChannelsLast {
            x = to_channels_last(&x, n, c, s);
        }
        Case {
            x,
            shape: layout_shape(n, c, spatial, layout),
            layout,
            norm,
            weight: None,
            bias: None,
            eps: 1e-5,
        }
    }
    /// Random per-channel weight and bias.
    pub fn affine(mut self, rng: &mut Rng) -> Case {
        let c = self.c();
        self.weight = Some(rng.normals(c, 1.0, 0.5));
        self.bias = Some(rng.normals(c, 0.0, 1.0));
        self
    }
    pub fn c(&self) -> usize {
        ncs(&self.shape, self.layout).1
    }
    pub fn groups(&self) -> usize {
        self.norm.groups(self.c())
    }
    pub fn cl(&self) -> bool {
        self.layout == Layout::ChannelsLast
    }
    /// The shape of mean and rstd: `[N, G]`.
    pub fn stats(&self) -> [usize; 2] {
        [self.shape[0], self.groups()]
    }
    /// The (sample, group) statistic of element i.
    pub fn stat_of(&self, i: usize) -> usize {
        let (_, c, s) = ncs(&self.shape, self.layout);
        group_index(i, c, s, self.groups(), self.cl())
    }
    pub fn reference(&self) -> (Vec<f64>, reference::GroupStats) {
        let (_, c, s) = ncs(&self.shape, self.layout);
        reference::group_norm(
            &self.x,
            c,
            s,
            self.groups(),
            self.cl(),
            self.weight.as_deref(),
            self.bias.as_deref(),
            f64::from(self.eps),
        )
    }
    pub fn what(&self, path: &str) -> String {
        match self.norm {
            Norm::Group(g) => format!("{:?} {:?} G={g} {path}", self.shape, self.layout),
            Norm::Instance => format!("{:?} {:?} {path}", self.shape, self.layout),
        }
    }
    /// The module: the case's norm, eps, weight and bias (the latter on `gpu`).
    pub fn module(&self, gpu: &Gpu) -> Module {
        let ch = self.c();
        let mut m = self.norm.module(ch).eps(self.eps);
        if let Some(w) = &self.weight {
            m = m.weight(Tensor::from_slice(gpu, w, &[ch]).unwrap());
        }
        if let Some(b) = &self.bias {
            m = m.bias(Tensor::from_slice(gpu, b, &[ch]).unwrap());
        }
        m
    }
}

/// y, mean and rstd of one call; checks the shapes (y like x, statistics `[N, G]`).
pub fn run(gpu: &Gpu, c: &Case) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = Tensor::from_slice(gpu, &c.x, &c.shape).unwrap();
    let out = c.module(gpu).forward(gpu, &x, c.layout).unwrap();
    let stats = c.stats();
    assert_eq!(out.y.shape(), &c.shape[..], "{}", c.what("y shape"));
    assert_eq!(out.mean.shape(), &stats, "{}", c.what("mean shape"));
    assert_eq!(out.rstd.shape(), &stats, "{}", c.what("rstd shape"));
    (
        out.y.to_vec(gpu).unwrap(),
        out.mean.to_vec(gpu).unwrap(),
        out.rstd.to_vec(gpu).unwrap(),
    )
}

/// Compares y, mean and rstd of a call's outputs with the reference.
pub fn assert_output(
    what: &str,
    g: &Gpu,
    out: &NormOutput,
    want_y: &[f64],
    st: &reference::GroupStats,
) {
    assert_close(&format!("{what} y"), &out.y.to_vec(g).unwrap(), want_y);
    assert_close(
        &format!("{what} mean"),
        &out.mean.to_vec(g).unwrap(),
        &st.mean,
    );
    assert_close(
        &format!("{what} rstd"),
        &out.rstd.to_vec(g).unwrap(),
        &st.rstd,
    );
}

/// Runs the case on the given contexts and compares y, mean and rstd with the reference.
pub fn check_on(on: &[(&str, &Gpu)], c: &Case) {
    let (want_y, st) = c.reference();
    for &(path, g) in on {
        let (y, mean, rstd) = run(g, c);
        let what = c.what(path);
        assert_close(&format!("{what} y"), &y, &want_y);
        assert_close(&format!("{what} mean"), &mean, &st.mean);
        assert_close(&format!("{what} rstd"), &rstd, &st.rstd);
    }
}

/// Every context in `gpus()`.
pub fn check(c: &Case) {
    check_on(&gpus(), c);
}

/// Each spec in both layouts (in that order), data around +-offset with a random affine, all
/// drawn from one `Rng::new(seed)`.
pub fn affine_cases(seed: u64, specs: &[Spec], offset: f64) -> impl Iterator<Item = Case> + '_ {
    let mut rng = Rng::new(seed);
    specs
        .iter()
        .flat_map(|&spec| LAYOUTS.map(|layout| (spec, layout)))
        .map(move |(spec, layout)| Case::new(&mut rng, spec, layout, offset).affine(&mut rng))
}

/// `affine_cases` against the reference on every context.
pub fn affine_cases_match_the_reference(seed: u64, specs: &[Spec], offset: f64) {
    affine_cases(seed, specs, offset).for_each(|c| check(&c));
}

/// Statistics with means of +-1e4 to 1e6 (and a bias), against the reference.
pub fn means_of_1e4_to_1e6_keep_full_precision(seed: u64, specs: &[Spec]) {
    let mut rng = Rng::new(seed);
    for offset in [1e4, -1e4, 1e5, 1e6] {
        for &spec in specs {
            for layout in LAYOUTS {
                let mut c = Case::new(&mut rng, spec, layout, offset);
                c.bias = Some(rng.normals(c.c(), 0.0, 1.0));
                check(&c);
            }
        }
    }
}

/// Every other statistic constant: its y is the bias bit for bit and its mean the constant.
pub fn a_constant_group_gives_bias_exactly_and_its_mean(seed: u64, specs: &[Spec]) {
    let constants = [0.0f32, 3.5, -1e6, 12345.678];
    for mut c in affine_cases(seed, specs, 2.0) {
        let (_, ch, s) = ncs(&c.shape, c.layout);
        let stats = c.shape[0] * c.groups();
        // Statistic k is constant when k % 2 == 0 (the odd ones stay random).
        let constant = |k: usize| k.is_multiple_of(2).then(|| constants[(k / 2) % 4]);
        let stat: Vec<usize> = (0..c.x.len()).map(|i| c.stat_of(i)).collect();
        for (i, v) in c.x.iter_mut().enumerate() {
            if let Some(k) = constant(stat[i]) {
                *v = k;
            }
        }
        let (want_y, st) = c.reference();
        let bias = c.bias.clone().unwrap();
        for (path, g) in gpus() {
            let (y, mean, rstd) = run(g, &c);
            let what = c.what(path);
            for (i, &v) in y.iter().enumerate() {
                if constant(stat[i]).is_some() {
                    let b = bias[channel_index(i, ch, s, c.cl())];
                    assert_eq!(v.to_bits(), b.to_bits(), "{what}: y[{i}] = {v}, bias {b}");
                } else {
                    assert_close(&format!("{what} y[{i}]"), &[v], &want_y[i..i + 1]);
                }
            }
            assert_eq!(mean.len(), stats, "{what}");
            for (k, &m) in mean.iter().enumerate() {
                if let Some(want) = constant(k) {
                    assert_eq!(m, want, "{what}: mean[{k}]");
                }
            }
            assert_close(&format!("{what} mean"), &mean, &st.mean);
            assert_close(&format!("{what} rstd"), &rstd, &st.rstd);
        }
    }
}

/// NaN in statistic 1, +Inf in 3, -Inf in 4 (at their element `k % pick`): those statistics
/// and their y are NaN, every other one matches the reference.
pub fn non_finite_values_stay_in_their_group(seed: u64, specs: &[Spec], pick: usize) {
    for mut c in affine_cases(seed, specs, 1.0) {
        let bad = [
            (1usize, f32::NAN),
            (3, f32::INFINITY),
            (4, f32::NEG_INFINITY),
        ];
        for &(k, v) in &bad {
            let i = (0..c.x.len())
                .filter(|&i| c.stat_of(i) == k)
                .nth(k % pick)
                .unwrap();
            c.x[i] = v;
        }
        let (want_y, st) = c.reference();
        let unit = c.norm.unit();
        for (path, g) in gpus() {
            let (y, mean, rstd) = run(g, &c);
            let what = c.what(path);
            for (i, &v) in y.iter().enumerate() {
                let k = c.stat_of(i);
                if bad.iter().any(|b| b.0 == k) {
                    assert!(v.is_nan(), "{what}: y[{i}] = {v} in {unit} {k} must be NaN");
                } else {
                    assert_close(&format!("{what} y[{i}]"), &[v], &want_y[i..i + 1]);
                }
            }
            for k in 0..mean.len() {
                if bad.iter().any(|b| b.0 == k) {
                    assert!(mean[k].is_nan() || rstd[k].is_nan(), "{what}: stats {k}");
                } else {
                    assert_close(&format!("{what} mean[{k}]"), &mean[k..=k], &st.mean[k..=k]);
                    assert_close(&format!("{what} rstd[{k}]"), &rstd[k..=k], &st.rstd[k..=k]);
                }
            }
        }
    }
}

/// No affine, weight only, bias only, and both, against the reference.
pub fn weight_and_bias_are_independent(seed: u64, specs: &[Spec]) {
    for base in affine_cases(seed, specs, 1.0) {
        let (w, b) = (base.weight.clone(), base.bias.clone());
        for (wo, bo) in [
            (None, None),
            (w.clone(), None),
            (None, b.clone()),
            (w.clone(), b.clone()),
        ] {
            let mut c = base.clone();
            c.weight = wo;
            c.bias = bo;
            check(&c);
        }
    }
}

/// Statistics of variance ~1e-6, where eps = 1e-5 changes the result far beyond TOL: the
/// module as constructed (no eps set) matches the reference with eps 1e-5.
pub fn default_eps_is_1e5(seed: u64, spec: Spec) {
    let mut rng = Rng::new(seed);
    for layout in LAYOUTS {
        let mut c = Case::new(&mut rng, spec, layout, 0.0);
        c.x.iter_mut().for_each(|v| *v *= 1e-3);
        let (want_y, st) = c.reference();
        c.eps = 0.0;
        let (no_eps, _) = c.reference();
        assert!((want_y[0] - no_eps[0]).abs() > 100.0 * super::TOL);
        for (path, g) in gpus() {
            let x = Tensor::from_slice(g, &c.x, &c.shape).unwrap();
            let out = c.norm.module(c.c()).forward(g, &x, layout).unwrap();
            let what = c.what(path);
            assert_close(&format!("{what} y"), &out.y.to_vec(g).unwrap(), &want_y);
            assert_close(
                &format!("{what} rstd"),
                &out.rstd.to_vec(g).unwrap(),
                &st.rstd,
            );
        }
    }
}

/// Without affine and channels-first, each statistic of L = C / G * S values is LayerNorm(&[L])
/// on the [N * G, L] reshape: same y, mean and rstd bits, same context (every mismatch is
/// collected, then reported together). With a per-channel affine (which that LayerNorm cannot
/// express), the reference, in both layouts.
pub fn matches_layer_norm_bit_for_bit(seed: u64, specs: &[Spec]) {
    let mut rng = Rng::new(seed);
    let mut failures = Vec::new();
    for &spec in specs {
        let c = Case::new(&mut rng, spec, Layout::ChannelsFirst, 0.5);
        let (n, ch, s) = ncs(&c.shape, c.layout);
        let groups = c.groups();
        let len = ch / groups * s;
        for (path, g) in gpus() {
            let (y, mean, rstd) = run(g, &c);
            let x = Tensor::from_slice(g, &c.x, &c.shape).unwrap();
            let ln = LayerNorm::new(&[len])
                .forward(g, &x.reshape(&[n * groups, len]).unwrap())
                .unwrap();
            for (name, a, b) in [
                ("y", &y, &ln.y),
                ("mean", &mean, &ln.mean),
                ("rstd", &rstd, &ln.rstd),
            ] {
                if let Some(m) = bits_mismatch(a, &b.to_vec(g).unwrap()) {
                    failures.push(format!(
                        "{} {name}: {} vs LayerNorm: {m}",
                        c.what(path),
                        c.norm.name()
                    ));
                }
            }
        }
        let mut c = c.affine(&mut rng);
        check(&c);
        c.x = to_channels_last(&c.x, n, ch, s);
        c.layout = Layout::ChannelsLast;
        c.shape = layout_shape(n, ch, spec.1 .2, Layout::ChannelsLast);
        check(&c);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The channels-last output, transposed back to channels-first, against the channels-first
/// output as the expected values (within TOL); mean and rstd likewise. Same data, same
/// context, weight and bias.
pub fn channels_last_equals_channels_first_after_transposing(seed: u64, specs: &[Spec]) {
    let mut rng = Rng::new(seed);
    for &spec in specs {
        let cf = Case::new(&mut rng, spec, Layout::ChannelsFirst, 3.0).affine(&mut rng);
        let (n, ch, s) = ncs(&cf.shape, cf.layout);
        let cl = Case {
            x: to_channels_last(&cf.x, n, ch, s),
            shape: layout_shape(n, ch, spec.1 .2, Layout::ChannelsLast),
            layout: Layout::ChannelsLast,
            ..cf.clone()
        };
        let f64s = |v: &[f32]| v.iter().map(|&v| f64::from(v)).collect::<Vec<_>>();
        for (path, g) in gpus() {
            let a = run(g, &cf);
            let b = run(g, &cl);
            let what = cl.what(path);
            let y_back = to_channels_first(&b.0, n, ch, s);
            assert_close(&format!("{what} y (CL vs CF)"), &y_back, &f64s(&a.0));
            assert_close(&format!("{what} mean (CL vs CF)"), &b.1, &f64s(&a.1));
            assert_close(&format!("{what} rstd (CL vs CF)"), &b.2, &f64s(&a.2));
        }
    }
}

/// 64 KiB bindings, so each tensor goes in several chunks: the reference.
pub fn chunked_bindings_match_the_reference(seed: u64, cases: &[(Spec, Layout)]) {
    let mut rng = Rng::new(seed);
    for &(spec, layout) in cases {
        let c = Case::new(&mut rng, spec, layout, 10.0).affine(&mut rng);
        check_on(&[("chunked", gpu_small_bindings())], &c);
    }
}

/// x, weight, bias, y, mean and rstd on buffers of exactly numel * 4 bytes, through forward
/// and encode: the reference, and x unchanged.
pub fn caller_buffers_of_exactly_numel_floats(seed: u64, specs: &[Spec]) {
    for c in affine_cases(seed, specs, 1.0) {
        let layout = c.layout;
        let (want_y, st) = c.reference();
        let ch = c.c();
        let stats = c.stats();
        for (path, g) in gpus() {
            let x = exact_tensor(g, &c.x, &c.shape);
            let norm = c
                .norm
                .module(ch)
                .eps(c.eps)
                .weight(exact_tensor(g, c.weight.as_ref().unwrap(), &[ch]))
                .bias(exact_tensor(g, c.bias.as_ref().unwrap(), &[ch]));
            let what = c.what(path);
            let out = norm.forward(g, &x, layout).unwrap();
            assert_close(
                &format!("{what} forward y"),
                &out.y.to_vec(g).unwrap(),
                &want_y,
            );
            let out = NormOutput {
                y: exact_empty(g, &c.shape),
                mean: exact_empty(g, &stats),
                rstd: exact_empty(g, &stats),
            };
            let mut enc = g.encoder();
            norm.encode(g, &mut enc, &x, layout, &out).unwrap();
            g.submit_wait(enc).unwrap();
            assert_output(&what, g, &out, &want_y, &st);
            assert_bits_eq(&format!("{what} x"), &x.to_vec(g).unwrap(), &c.x);
        }
    }
}

/// A tensor over 128 MiB (more than lavapipe's largest binding, so the default context chunks
/// it too), in both layouts, on the default context.
pub fn tensor_over_128_mib_in_both_layouts(seed: u64, spec: Spec) {
    for c in affine_cases(seed, &[spec], 2.0) {
        assert!(c.x.len() * 4 > 128 << 20);
        check_on(&[("default", gpu())], &c);
    }
}

/// Two runs of the same input give the same bits.
pub fn same_input_gives_bit_identical_output(seed: u64, specs: &[Spec]) {
    for c in affine_cases(seed, specs, 1.0) {
        for (path, g) in gpus() {
            let a = run(g, &c);
            let b = run(g, &c);
            let what = c.what(path);
            assert_bits_eq(&format!("{what} y"), &a.0, &b.0);
            assert_bits_eq(&format!("{what} mean"), &a.1, &b.1);
            assert_bits_eq(&format!("{what} rstd"), &a.2, &b.2);
        }
    }
}

/// encode into a caller's encoder and output tensors (mean `[N, G]`, rstd flat `[N * G]`):
/// the reference, and x unchanged.
pub fn encode_into_a_callers_encoder_and_buffers(seed: u64, spec: Spec) {
    for c in affine_cases(seed, &[spec], 1.0) {
        let layout = c.layout;
        let (want_y, st) = c.reference();
        let [n, groups] = c.stats();
        for (path, g) in gpus() {
            let x = Tensor::from_slice(g, &c.x, &c.shape).unwrap();
            let out = NormOutput {
                y: Tensor::empty(g, &c.shape).unwrap(),
                mean: Tensor::empty(g, &[n, groups]).unwrap(),
                rstd: Tensor::empty(g, &[n * groups]).unwrap(),
            };
            let mut enc = g.device().create_command_encoder(&Default::default());
            c.module(g).encode(g, &mut enc, &x, layout, &out).unwrap();
            g.queue().submit([enc.finish()]);
            let what = c.what(path);
            assert_output(&what, g, &out, &want_y, &st);
            assert_bits_eq(&format!("{what} x"), &x.to_vec(g).unwrap(), &c.x);
        }
    }
}

/// The norm over `c` channels plans [8, c, 7, 7] in both layouts with kernels, a reason and
/// a display naming the kernels; planning refuses c / 2 channels like a call does.
pub fn plan_describes_the_kernels_per_layout(norm: Norm, c: usize) {
    for (path, g) in gpus() {
        let m = norm.module(c);
        let cf = m.plan(g, &[8, c, 7, 7], Layout::ChannelsFirst).unwrap();
        let cl = m.plan(g, &[8, 7, 7, c], Layout::ChannelsLast).unwrap();
        for (layout, p) in [("CF", &cf), ("CL", &cl)] {
            assert!(
                !p.kernels.is_empty() && !p.reason.is_empty(),
                "{path} {layout}"
            );
            let shown = p.to_string();
            assert!(
                p.kernels.iter().all(|k| shown.contains(k)),
                "{path} {layout}: {shown}"
            );
            assert!(p.rows.is_some() || p.channels.is_some(), "{path} {layout}");
        }
        // Planning validates like a call does.
        assert!(m.plan(g, &[8, c / 2, 7, 7], Layout::ChannelsFirst).is_err());
        assert!(m.plan(g, &[8, c, 7, 7], Layout::ChannelsLast).is_err());
    }
}

/// Bad input to the norm over 4 channels: each a `NormError` (Shape or InvalidArgument),
/// never a panic, and the device works afterwards.
pub fn bad_input_is_a_norm_error_not_a_panic(norm: Norm) {
    let g = gpu();
    let m = norm.module(4);
    let fwd = |m: &Module, shape: &[usize], layout: Layout| {
        m.forward(g, &t(g, shape), layout).unwrap_err()
    };
    // x with another channel count than the module, in either layout.
    for (shape, layout) in [
        (&[2usize, 6, 5][..], Layout::ChannelsFirst),
        (&[2, 4, 5], Layout::ChannelsLast),
        (&[2, 2], Layout::ChannelsFirst),
    ] {
        let e = fwd(&m, shape, layout);
        assert!(
            matches!(e, NormError::Shape(_)),
            "{shape:?} {layout:?}: {e}"
        );
    }
    // Rank < 2.
    for layout in LAYOUTS {
        let e = fwd(&m, &[4], layout);
        assert!(matches!(e, NormError::Shape(_)), "rank 1 {layout:?}: {e}");
        let e = m.plan(g, &[4], layout).unwrap_err();
        assert!(matches!(e, NormError::Shape(_)), "rank 1 {layout:?}: {e}");
    }
    // A zero dim: refused by the tensor, and by plan (spatial, batch or channel).
    for shape in [&[2usize, 3, 0][..], &[2, 4, 0]] {
        assert!(matches!(Tensor::empty(g, shape), Err(NormError::Shape(_))));
    }
    for (shape, layout) in [
        (&[2usize, 4, 0][..], Layout::ChannelsFirst),
        (&[2, 4, 3, 0], Layout::ChannelsFirst),
        (&[2, 0, 4], Layout::ChannelsLast),
        (&[0, 4, 3], Layout::ChannelsFirst),
        (&[0, 3, 4], Layout::ChannelsLast),
    ] {
        let e = m.plan(g, shape, layout).unwrap_err();
        assert!(
            matches!(e, NormError::Shape(_)),
            "{shape:?} {layout:?}: {e}"
        );
    }
    // Weight or bias with other than C values.
    let x = t(g, &[2, 4, 3]);
    for len in [3usize, 2, 5, 12] {
        for m in [m.clone().weight(t(g, &[len])), m.clone().bias(t(g, &[len]))] {
            let e = m.forward(g, &x, Layout::ChannelsFirst).unwrap_err();
            assert!(matches!(e, NormError::Shape(_)), "len {len}: {e}");
            let e = m
                .forward(g, &t(g, &[2, 3, 4]), Layout::ChannelsLast)
                .unwrap_err();
            assert!(matches!(e, NormError::Shape(_)), "len {len} CL: {e}");
        }
    }
    // eps negative, NaN, Inf: refused before the shape is looked at (x [2, 4, 3] in both
    // layouts) and with x of the layout's shape.
    for eps in [-1e-5f32, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for layout in LAYOUTS {
            for x in [x.clone(), t(g, &layout_shape(2, 4, &[3], layout))] {
                let e = m.clone().eps(eps).forward(g, &x, layout).unwrap_err();
                assert!(matches!(e, NormError::InvalidArgument(_)), "eps {eps}: {e}");
            }
        }
        let e = m
            .clone()
            .eps(eps)
            .plan(g, &[2, 4, 3], Layout::ChannelsFirst)
            .unwrap_err();
        assert!(matches!(e, NormError::InvalidArgument(_)), "eps {eps}: {e}");
    }
    // The device still works afterwards.
    assert!(m.forward(g, &x, Layout::ChannelsFirst).is_ok());
}

/// x, weight, bias, mean or rstd from another device: WrongDevice.
pub fn tensors_from_another_device(norm: Norm) {
    let g = gpu();
    let other = Gpu::new().unwrap();
    let m = norm.module(4);
    let stats = [2, norm.groups(4)];
    for layout in LAYOUTS {
        let shape = layout_shape(2, 4, &[3], layout);
        for foreign in [&[2usize, 4, 4][..], &shape] {
            let e = m.forward(g, &t(&other, foreign), layout).unwrap_err();
            assert_eq!(e, NormError::WrongDevice("x"), "{layout:?} {foreign:?}");
        }
        let x = t(g, &shape);
        for m in [
            m.clone().weight(t(&other, &[4])),
            m.clone().bias(t(&other, &[4])),
        ] {
            let e = m.forward(g, &x, layout).unwrap_err();
            assert!(matches!(e, NormError::WrongDevice(_)), "{e}");
        }
    }
    let x = t(g, &[2, 4, 3]);
    for (mean, rstd) in [(&other, g), (g, &other)] {
        let out = NormOutput {
            y: t(g, &[2, 4, 3]),
            mean: t(mean, &stats),
            rstd: t(rstd, &stats),
        };
        let mut enc = g.device().create_command_encoder(&Default::default());
        let e = m
            .encode(g, &mut enc, &x, Layout::ChannelsFirst, &out)
            .unwrap_err();
        assert!(matches!(e, NormError::WrongDevice(_)), "{e}");
    }
}

/// (y, mean, rstd) output shapes.
pub type Outputs = (&'static [usize], &'static [usize], &'static [usize]);

/// encode refuses, with the norm over 4 channels on [2, 4, 3], each of the `wrong` output
/// shapes (Shape) and y aliasing x (InvalidArgument). Then, with `alias` (a norm and dims whose
/// N * G statistics are as many as x's values), mean or rstd aliasing x; and with `read` (N * G
/// equal to C), mean and rstd one buffer, and mean and rstd the weight's and the bias's
/// buffers (InvalidArgument). x is unchanged afterwards.
pub fn encode_refuses_wrong_sizes_and_aliasing(
    norm: Norm,
    wrong: &[Outputs],
    alias: Spec,
    read: Spec,
) {
    let g = gpu();
    let m = norm.module(4);
    let stats = [2, norm.groups(4)];
    let x = t(g, &[2, 4, 3]);
    let mut enc = g.device().create_command_encoder(&Default::default());
    for layout in LAYOUTS {
        let x = t(g, &layout_shape(2, 4, &[3], layout));
        for &(y, m_, r) in wrong {
            let out = NormOutput {
                y: t(g, y),
                mean: t(g, m_),
                rstd: t(g, r),
            };
            let e = m.encode(g, &mut enc, &x, layout, &out).unwrap_err();
            assert!(
                matches!(e, NormError::Shape(_)),
                "{layout:?} y {y:?} mean {m_:?} rstd {r:?}: {e}"
            );
        }
        let out = NormOutput {
            y: x.clone(),
            mean: t(g, &stats),
            rstd: t(g, &stats),
        };
        let e = m.encode(g, &mut enc, &x, layout, &out).unwrap_err();
        assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
    }
    // A statistic output aliasing x; the other one `[N, G]` or flat.
    let (an, (a_n, a_c, a_sp)) = alias;
    let am = an.module(a_c);
    let a_shape = layout_shape(a_n, a_c, a_sp, Layout::ChannelsFirst);
    let a_stats = [a_n, an.groups(a_c)];
    let ax = t(g, &a_shape);
    assert_eq!(ax.shape().iter().product::<usize>(), a_n * a_stats[1]);
    for other in [&a_stats[..], &[a_n * a_stats[1]]] {
        for (mean, rstd) in [(ax.clone(), t(g, other)), (t(g, other), ax.clone())] {
            let out = NormOutput {
                y: t(g, &a_shape),
                mean,
                rstd,
            };
            let e = am
                .encode(g, &mut enc, &ax, Layout::ChannelsFirst, &out)
                .unwrap_err();
            assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
        }
    }
    // mean and rstd the same buffer.
    let st = t(g, &a_stats);
    let same = NormOutput {
        y: t(g, &a_shape),
        mean: st.clone(),
        rstd: st,
    };
    // mean sharing the weight's, rstd the bias's buffer, as they are and as `[N, G]`.
    let (rn, (n, c, sp)) = read;
    let r_shape = layout_shape(n, c, sp, Layout::ChannelsFirst);
    let r_stats = [n, rn.groups(c)];
    assert_eq!(n * r_stats[1], c);
    let (w, b) = (t(g, &[c]), t(g, &[c]));
    let rm = rn.module(c).weight(w.clone()).bias(b.clone());
    let rx = t(g, &r_shape);
    let reads = [
        NormOutput {
            y: t(g, &r_shape),
            mean: w.clone(),
            rstd: b.clone(),
        },
        NormOutput {
            y: t(g, &r_shape),
            mean: w.reshape(&r_stats).unwrap(),
            rstd: b.reshape(&r_stats).unwrap(),
        },
    ];
    for layout in LAYOUTS {
        let ax = ax.reshape(&layout_shape(a_n, a_c, a_sp, layout)).unwrap();
        let e = am.encode(g, &mut enc, &ax, layout, &same).unwrap_err();
        assert!(
            matches!(e, NormError::InvalidArgument(_)),
            "{layout:?}: {e}"
        );
        let rx = rx.reshape(&layout_shape(n, c, sp, layout)).unwrap();
        for read in &reads {
            let e = rm.encode(g, &mut enc, &rx, layout, read).unwrap_err();
            assert!(
                matches!(e, NormError::InvalidArgument(_)),
                "{layout:?}: {e}"
            );
        }
    }
    g.queue().submit([enc.finish()]);
    for x in [&x, &ax] {
        let n = x.shape().iter().product::<usize>();
        assert_bits_eq(
            "x",
            &x.to_vec(g).unwrap(),
            &(0..n).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>(),
        );
    }
}
