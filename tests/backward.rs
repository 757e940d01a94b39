//! Backward passes against the f64 reference (`reference::*_backward`, itself checked against
//! finite differences), from the GPU forward's saved statistics, on every context: LayerNorm,
//! RMSNorm, GroupNorm and InstanceNorm (both layouts), BatchNorm (training and inference, both
//! layouts). Tolerances: `common::assert_close_bounded` (one TOL, bounds by the magnitudes the
//! gradients are computed from).

mod common;

use common::{
    assert_bits_eq, assert_close_bounded, exact_empty, gpu, gpu_small_bindings, gpus, Rng,
};
use fused_norm::{
    reference, BatchNorm, Gpu, Gradients, GroupNorm, InstanceNorm, LayerNorm, NormError, RmsNorm,
    Tensor,
};

/// One rows-family case: `rows` rows of `d`, optional weight and bias (RMSNorm: no bias).
struct Case {
    rows: usize,
    d: usize,
    x: Vec<f32>,
    dy: Vec<f32>,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
    /// LayerNorm, else RMSNorm.
    center: bool,
}

impl Case {
    fn new(rng: &mut Rng, rows: usize, d: usize, center: bool, offset: f64) -> Case {
        Case {
            rows,
            d,
            x: rng.normals(rows * d, offset, 1.5),
            dy: rng.normals(rows * d, 0.0, 1.0),
            weight: Some(rng.normals(d, 1.0, 0.5)),
            bias: center.then(|| rng.normals(d, 0.0, 0.5)),
            center,
        }
    }
}

/// The GPU gradients, read back, and the saved statistics they came from.
struct Got {
    dx: Vec<f32>,
    dweight: Option<Vec<f32>>,
    dbias: Option<Vec<f32>>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

fn run(gpu: &Gpu, c: &Case) -> Got {
    let shape = [c.rows, c.d];
    let x = Tensor::from_slice(gpu, &c.x, &shape).unwrap();
    let dy = Tensor::from_slice(gpu, &c.dy, &shape).unwrap();
    let t = |v: &Option<Vec<f32>>| {
        v.as_ref()
            .map(|v| Tensor::from_slice(gpu, v, &[c.d]).unwrap())
    };
    let read = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_vec(gpu).unwrap());
    let (g, mean, rstd) = if c.center {
        let mut ln = LayerNorm::new(&[c.d]);
        if let Some(w) = t(&c.weight) {
            ln = ln.weight(w);
        }
        if let Some(b) = t(&c.bias) {
            ln = ln.bias(b);
        }
        let out = ln.forward(gpu, &x).unwrap();
        let g = ln.backward(gpu, &x, &dy, &out.mean, &out.rstd).unwrap();
        (
            g,
            out.mean.to_vec(gpu).unwrap(),
            out.rstd.to_vec(gpu).unwrap(),
        )
    } else {
        let mut rms = RmsNorm::new(&[c.d]).eps(1e-6);
        if let Some(w) = t(&c.weight) {
            rms = rms.weight(w);
        }
        let out = rms.forward(gpu, &x).unwrap();
        let g = rms.backward(gpu, &x, &dy, &out.rstd).unwrap();
        (g, vec![0.0; c.rows], out.rstd.to_vec(gpu).unwrap())
    };
    assert_eq!(g.dx.shape(), &shape[..]);
    assert_eq!(g.dweight.is_some(), c.weight.is_some());
    assert_eq!(g.dbias.is_some(), c.bias.is_some());
    Got {
        dx: g.dx.to_vec(gpu).unwrap(),
        dweight: read(&g.dweight),
        dbias: read(&g.dbias),
        mean,
        rstd,
    }
}

/// Checks `got` against the reference evaluated at the GPU's saved statistics (as PyTorch's
/// backward uses the saved ones), with each value's bound (see `assert_close_bounded`).
fn check_against_reference(what: &str, c: &Case, got: &Got) {
    let (d, w) = (c.d, c.weight.as_deref());
    let mean: Vec<f64> = got.mean.iter().map(|&v| f64::from(v)).collect();
    let rstd: Vec<f64> = got.rstd.iter().map(|&v| f64::from(v)).collect();
    let r = match c.center {
        true => reference::layer_norm_backward(&c.x, &c.dy, d, w, &mean, &rstd),
        false => reference::rms_norm_backward(&c.x, &c.dy, d, w, &rstd),
    };
    let layout = Layout {
        x: &c.x,
        dy: &c.dy,
        weight: w,
        stat_of: &|i| i / d,
        param_of: &|i| i % d,
        mean: &mean,
        rstd: &rstd,
    };
    check_gradients(what, &layout, &r, got);
}

/// Where each element's statistic and parameter are, and the values (f64 statistics).
struct Layout<'a> {
    x: &'a [f32],
    dy: &'a [f32],
    weight: Option<&'a [f32]>,
    stat_of: &'a dyn Fn(usize) -> usize,
    param_of: &'a dyn Fn(usize) -> usize,
    mean: &'a [f64],
    rstd: &'a [f64],
}

/// dx, dweight and dbias against the reference `r`, each bounded by the magnitudes it is
/// computed from: dx by rstd * (|g| + mean|g| + |xhat| * mean|g * xhat|) per statistic, the
/// column sums by the sums of their terms' magnitudes.
fn check_gradients(what: &str, l: &Layout, r: &reference::GradientsRef, got: &Got) {
    let k = l.rstd.len();
    let p = r.dweight.len();
    let w = |i: usize| l.weight.map_or(1.0, |w| f64::from(w[(l.param_of)(i)]));
    let xh = |i: usize| {
        let s = (l.stat_of)(i);
        (f64::from(l.x[i]) - l.mean[s]) * l.rstd[s]
    };
    let g = |i: usize| f64::from(l.dy[i]) * w(i);
    let (mut mg, mut mgx, mut cnt) = (vec![0.0; k], vec![0.0; k], vec![0.0; k]);
    let (mut bw, mut bb) = (vec![0.0; p], vec![0.0; p]);
    for i in 0..l.x.len() {
        let (s, q) = ((l.stat_of)(i), (l.param_of)(i));
        mg[s] += g(i).abs();
        mgx[s] += (g(i) * xh(i)).abs();
        cnt[s] += 1.0;
        bw[q] += (f64::from(l.dy[i]) * xh(i)).abs();
        bb[q] += f64::from(l.dy[i]).abs();
    }
    let bound: Vec<f64> = (0..l.x.len())
        .map(|i| {
            let s = (l.stat_of)(i);
            let m = (mg[s] + xh(i).abs() * mgx[s]) / cnt[s];
            r.dx[i].abs() + l.rstd[s] * (g(i).abs() + m)
        })
        .collect();
    assert_close_bounded(&format!("{what} dx"), &got.dx, &r.dx, &bound);
    if let Some(dw) = &got.dweight {
        assert_close_bounded(&format!("{what} dweight"), dw, &r.dweight, &bw);
    }
    if let Some(db) = &got.dbias {
        assert_close_bounded(&format!("{what} dbias"), db, &r.dbias, &bb);
    }
}

fn check(c: &Case) {
    for (path, g) in gpus() {
        let what = format!("{} {}x{} {path}", name(c), c.rows, c.d);
        check_against_reference(&what, c, &run(g, c));
    }
}

fn name(c: &Case) -> &'static str {
    if c.center {
        "layer_norm"
    } else {
        "rms_norm"
    }
}

#[test]
fn row_lengths_that_break_weak_kernels() {
    let mut rng = Rng::new(1);
    for center in [true, false] {
        for d in [1usize, 3, 4, 1000, 4097, 65537] {
            for rows in [1usize, 5, 65] {
                if d * rows > 300_000 {
                    continue;
                }
                check(&Case::new(&mut rng, rows, d, center, 0.5));
            }
        }
    }
}

#[test]
fn without_weight_or_bias() {
    let mut rng = Rng::new(2);
    for center in [true, false] {
        for d in [3usize, 768] {
            let mut c = Case::new(&mut rng, 9, d, center, 0.0);
            c.weight = None;
            check(&c);
            c.bias = None;
            check(&c);
        }
    }
}

#[test]
fn more_than_65535_rows() {
    let mut rng = Rng::new(3);
    for center in [true, false] {
        for (rows, d) in [(70000usize, 3usize), (65537, 4)] {
            check(&Case::new(&mut rng, rows, d, center, -1.0));
        }
    }
}

#[test]
fn a_million_rows_of_column_sums() {
    // dweight and dbias sum a million rows: two stages (blocks, then their merge in order).
    let mut rng = Rng::new(4);
    for center in [true, false] {
        let c = Case::new(&mut rng, 1 << 20, 2, center, 0.0);
        let (path, g) = gpus()[0];
        check_against_reference(&format!("{} 1M {path}", name(&c)), &c, &run(g, &c));
    }
}

#[test]
fn large_row_means() {
    let mut rng = Rng::new(5);
    for center in [true, false] {
        for offset in [1e4, -1e4] {
            for d in [3usize, 1000, 4097] {
                check(&Case::new(&mut rng, 5, d, center, offset));
            }
        }
    }
}

#[test]
fn nan_in_one_row_stays_in_that_rows_dx_and_poisons_dweight() {
    let mut rng = Rng::new(6);
    for center in [true, false] {
        for d in [3usize, 1000] {
            let mut c = Case::new(&mut rng, 6, d, center, 0.0);
            c.x[2 * d + d / 2] = f32::NAN;
            for (path, g) in gpus() {
                let got = run(g, &c);
                for row in 0..c.rows {
                    let dx = &got.dx[row * d..(row + 1) * d];
                    let nan = dx.iter().all(|v| v.is_nan());
                    let finite = dx.iter().all(|v| v.is_finite());
                    assert!(
                        if row == 2 { nan } else { finite },
                        "{path} d={d} row {row}"
                    );
                }
                // xhat of the row is NaN: every dweight; dbias = sum(dy) does not see x.
                let dw = got.dweight.as_ref().unwrap();
                assert!(dw.iter().all(|v| v.is_nan()), "{path} d={d} dweight");
                if let Some(db) = &got.dbias {
                    assert!(db.iter().all(|v| v.is_finite()), "{path} d={d} dbias");
                }
                check_against_reference(&format!("{} nan {path}", name(&c)), &c, &got);
            }
        }
    }
}

#[test]
fn reruns_are_bit_identical_and_a_row_alone_gives_the_batch_dx() {
    let mut rng = Rng::new(7);
    for center in [true, false] {
        for d in [3usize, 768, 4097] {
            let c = Case::new(&mut rng, 33, d, center, 1.0);
            for (path, g) in gpus() {
                let (a, b) = (run(g, &c), run(g, &c));
                assert_bits_eq(&format!("{path} d={d} dx"), &a.dx, &b.dx);
                for (s, t) in [(&a.dweight, &b.dweight), (&a.dbias, &b.dbias)] {
                    if let (Some(s), Some(t)) = (s, t) {
                        assert_bits_eq(&format!("{path} d={d} column sums"), s, t);
                    }
                }
                for row in [0usize, 17, 32] {
                    let one = Case {
                        rows: 1,
                        d,
                        x: c.x[row * d..(row + 1) * d].to_vec(),
                        dy: c.dy[row * d..(row + 1) * d].to_vec(),
                        weight: c.weight.clone(),
                        bias: c.bias.clone(),
                        center,
                    };
                    let alone = run(g, &one);
                    let what = format!("{} {path} d={d} row {row} alone", name(&c));
                    assert_bits_eq(&what, &alone.dx, &a.dx[row * d..(row + 1) * d]);
                }
            }
        }
    }
}

#[test]
fn chunked_over_small_bindings() {
    // 64 KiB bindings: x, dy and dx split into chunks of rows, column blocks per chunk.
    let mut rng = Rng::new(8);
    let g = gpu_small_bindings();
    for center in [true, false] {
        for (rows, d) in [(300usize, 1000usize), (5000, 3), (40, 4096)] {
            let c = Case::new(&mut rng, rows, d, center, 0.0);
            check_against_reference(&format!("{} chunked", name(&c)), &c, &run(g, &c));
        }
    }
}

#[test]
fn encode_backward_writes_caller_outputs_and_checks_them() {
    let g = gpu();
    let mut rng = Rng::new(9);
    let (rows, d) = (4usize, 5usize);
    let c = Case::new(&mut rng, rows, d, true, 0.0);
    let x = Tensor::from_slice(g, &c.x, &[rows, d]).unwrap();
    let dy = Tensor::from_slice(g, &c.dy, &[rows, d]).unwrap();
    let w = Tensor::from_slice(g, c.weight.as_ref().unwrap(), &[d]).unwrap();
    let ln = LayerNorm::new(&[d]).weight(w);
    let out = ln.forward(g, &x).unwrap();
    let want = ln.backward(g, &x, &dy, &out.mean, &out.rstd).unwrap();
    // Caller buffers of exactly 4 * numel bytes (staged through padded copies).
    let grads = Gradients {
        dx: exact_empty(g, &[rows, d]),
        dweight: Some(exact_empty(g, &[d])),
        dbias: None,
    };
    let mut enc = g.encoder();
    ln.encode_backward(g, &mut enc, &x, &dy, &out.mean, &out.rstd, &grads)
        .unwrap();
    g.submit_wait(enc).unwrap();
    let read = |t: &Tensor| t.to_vec(g).unwrap();
    assert_bits_eq("dx", &read(&grads.dx), &read(&want.dx));
    let (a, b) = (
        grads.dweight.as_ref().unwrap(),
        want.dweight.as_ref().unwrap(),
    );
    assert_bits_eq("dweight", &read(a), &read(b));
    // A dbias for a norm without bias, a missing dweight, dy of another shape, dx aliasing dy.
    let bad = [
        Gradients {
            dbias: Some(Tensor::empty(g, &[d]).unwrap()),
            ..grads.clone()
        },
        Gradients {
            dweight: None,
            ..grads.clone()
        },
        Gradients {
            dx: dy.clone(),
            ..grads.clone()
        },
    ];
    for b in &bad {
        let mut enc = g.encoder();
        let e = ln.encode_backward(g, &mut enc, &x, &dy, &out.mean, &out.rstd, b);
        assert!(e.is_err(), "{b:?}");
    }
    let dy2 = Tensor::from_slice(g, &c.dy, &[d, rows]).unwrap();
    let e = ln.backward(g, &x, &dy2, &out.mean, &out.rstd).unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
    let e = ln
        .backward(g, &x, &dy, &out.rstd.reshape(&[rows]).unwrap(), &dy)
        .unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
}

// ---- GroupNorm and InstanceNorm ----

/// A GroupNorm case `[n, c, s]` (channels-last: `[n, s, c]`) with `groups` groups.
#[derive(Clone)]
struct GnCase {
    n: usize,
    c: usize,
    s: usize,
    groups: usize,
    cl: bool,
    x: Vec<f32>,
    dy: Vec<f32>,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
}

/// `[n, c, s]` data as `[n, s, c]`.
fn to_channels_last(v: &[f32], n: usize, c: usize, s: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for ni in 0..n {
        for ci in 0..c {
            for si in 0..s {
                out[(ni * s + si) * c + ci] = v[(ni * c + ci) * s + si];
            }
        }
    }
    out
}

impl GnCase {
    fn new(rng: &mut Rng, n: usize, c: usize, s: usize, groups: usize, offset: f64) -> GnCase {
        GnCase {
            n,
            c,
            s,
            groups,
            cl: false,
            x: common::grouped_data(rng, n, c, s, groups, offset),
            dy: rng.normals(n * c * s, 0.0, 1.0),
            weight: Some(rng.normals(c, 1.0, 0.5)),
            bias: Some(rng.normals(c, 0.0, 0.5)),
        }
    }

    /// The same values in the channels-last layout.
    fn channels_last(self) -> GnCase {
        let (n, c, s) = (self.n, self.c, self.s);
        GnCase {
            cl: true,
            x: to_channels_last(&self.x, n, c, s),
            dy: to_channels_last(&self.dy, n, c, s),
            ..self
        }
    }

    fn shape(&self) -> [usize; 3] {
        match self.cl {
            true => [self.n, self.s, self.c],
            false => [self.n, self.c, self.s],
        }
    }

    fn layout(&self) -> fused_norm::Layout {
        match self.cl {
            true => fused_norm::Layout::ChannelsLast,
            false => fused_norm::Layout::ChannelsFirst,
        }
    }
}

fn run_gn(gpu: &Gpu, c: &GnCase, instance: bool) -> Got {
    let shape = c.shape();
    let x = Tensor::from_slice(gpu, &c.x, &shape).unwrap();
    let dy = Tensor::from_slice(gpu, &c.dy, &shape).unwrap();
    let t = |v: &Option<Vec<f32>>| {
        v.as_ref()
            .map(|v| Tensor::from_slice(gpu, v, &[c.c]).unwrap())
    };
    let mut gn = match instance {
        true => {
            assert_eq!(c.groups, c.c);
            let mut inn = InstanceNorm::new(c.c);
            if let Some(w) = t(&c.weight) {
                inn = inn.weight(w);
            }
            if let Some(b) = t(&c.bias) {
                inn = inn.bias(b);
            }
            Err(inn)
        }
        false => Ok(GroupNorm::new(c.groups, c.c).unwrap()),
    };
    if let Ok(g) = &mut gn {
        if let Some(w) = t(&c.weight) {
            *g = g.clone().weight(w);
        }
        if let Some(b) = t(&c.bias) {
            *g = g.clone().bias(b);
        }
    }
    let cf = c.layout();
    let (out, g) = match &gn {
        Ok(gn) => {
            let out = gn.forward(gpu, &x, cf).unwrap();
            let g = gn.backward(gpu, &x, &dy, &out.mean, &out.rstd, cf).unwrap();
            (out, g)
        }
        Err(inn) => {
            let out = inn.forward(gpu, &x, cf).unwrap();
            let g = inn
                .backward(gpu, &x, &dy, &out.mean, &out.rstd, cf)
                .unwrap();
            (out, g)
        }
    };
    let read = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_vec(gpu).unwrap());
    assert_eq!(g.dx.shape(), &shape[..]);
    Got {
        dx: g.dx.to_vec(gpu).unwrap(),
        dweight: read(&g.dweight),
        dbias: read(&g.dbias),
        mean: out.mean.to_vec(gpu).unwrap(),
        rstd: out.rstd.to_vec(gpu).unwrap(),
    }
}

fn check_gn_got(what: &str, c: &GnCase, got: &Got) {
    let mean: Vec<f64> = got.mean.iter().map(|&v| f64::from(v)).collect();
    let rstd: Vec<f64> = got.rstd.iter().map(|&v| f64::from(v)).collect();
    let w = c.weight.as_deref();
    let (cc, s, groups) = (c.c, c.s, c.groups);
    let cl = c.cl;
    let r = reference::group_norm_backward(&c.x, &c.dy, cc, s, groups, cl, w, &mean, &rstd);
    let layout = Layout {
        x: &c.x,
        dy: &c.dy,
        weight: w,
        stat_of: &|i| common::group_index(i, cc, s, groups, cl),
        param_of: &|i| common::channel_index(i, cc, s, cl),
        mean: &mean,
        rstd: &rstd,
    };
    check_gradients(what, &layout, &r, got);
}

fn check_gn(c: &GnCase, instance: bool) {
    for (path, g) in gpus() {
        let what = format!("gn {:?}/{} cl={} {path}", c.shape(), c.groups, c.cl);
        check_gn_got(&what, c, &run_gn(g, c, instance));
    }
}

#[test]
fn group_norm_shapes() {
    let mut rng = Rng::new(20);
    // (n, c, s, groups): runs of 1, 3, 4 and 4097 values, one group, a group per channel.
    for (n, c, s, groups) in [
        (2, 4, 1, 2),
        (3, 6, 3, 3),
        (2, 8, 4, 2),
        (2, 4, 7, 1),
        (1, 2, 4097, 2),
        (4, 32, 49, 8),
        (2, 3, 5, 3),
        (2, 12, 9, 3),
    ] {
        let case = GnCase::new(&mut rng, n, c, s, groups, 0.5);
        check_gn(&case, false);
        check_gn(&case.channels_last(), false);
    }
}

#[test]
fn instance_norm_shapes() {
    let mut rng = Rng::new(21);
    for (n, c, s) in [(2, 3, 5), (3, 4, 16), (1, 2, 4097), (2, 64, 49)] {
        let case = GnCase::new(&mut rng, n, c, s, c, 0.5);
        check_gn(&case, true);
        check_gn(&case.channels_last(), true);
    }
}

#[test]
fn group_norm_large_means_and_no_affine() {
    let mut rng = Rng::new(22);
    for offset in [1e4, -1e4] {
        let case = GnCase::new(&mut rng, 2, 8, 25, 4, offset);
        check_gn(&case, false);
        check_gn(&case.channels_last(), false);
    }
    let mut c = GnCase::new(&mut rng, 2, 8, 25, 4, 0.0);
    c.weight = None;
    check_gn(&c, false);
    check_gn(&c.clone().channels_last(), false);
    c.bias = None;
    check_gn(&c, false);
    check_gn(&c.channels_last(), false);
}

#[test]
fn group_norm_chunked_reruns_and_samples_alone() {
    let mut rng = Rng::new(23);
    let c = GnCase::new(&mut rng, 6, 16, 300, 4, 0.0);
    // 64 KiB bindings: chunks of (sample, group) rows, the per-channel partials merged once.
    check_gn_got("gn chunked", &c, &run_gn(gpu_small_bindings(), &c, false));
    for (path, g) in gpus() {
        let (a, b) = (run_gn(g, &c, false), run_gn(g, &c, false));
        assert_bits_eq(&format!("{path} dx"), &a.dx, &b.dx);
        assert_bits_eq(
            &format!("{path} dw"),
            a.dweight.as_ref().unwrap(),
            b.dweight.as_ref().unwrap(),
        );
        assert_bits_eq(
            &format!("{path} db"),
            a.dbias.as_ref().unwrap(),
            b.dbias.as_ref().unwrap(),
        );
        let per = c.c * c.s;
        let one = GnCase {
            n: 1,
            x: c.x[3 * per..4 * per].to_vec(),
            dy: c.dy[3 * per..4 * per].to_vec(),
            weight: c.weight.clone(),
            bias: c.bias.clone(),
            ..c
        };
        let alone = run_gn(g, &one, false);
        assert_bits_eq(
            &format!("{path} sample alone"),
            &alone.dx,
            &a.dx[3 * per..4 * per],
        );
    }
}

#[test]
fn group_norm_channels_last_chunked_reruns_and_many_samples() {
    let mut rng = Rng::new(24);
    let c = GnCase::new(&mut rng, 6, 16, 300, 4, 0.0).channels_last();
    // 64 KiB bindings: chunks of whole samples, the per-channel sums over every sample's blocks.
    check_gn_got(
        "gn-cl chunked",
        &c,
        &run_gn(gpu_small_bindings(), &c, false),
    );
    for (path, g) in gpus() {
        let (a, b) = (run_gn(g, &c, false), run_gn(g, &c, false));
        assert_bits_eq(&format!("{path} dx"), &a.dx, &b.dx);
        assert_bits_eq(
            &format!("{path} dw"),
            a.dweight.as_ref().unwrap(),
            b.dweight.as_ref().unwrap(),
        );
    }
    // More than 65535 samples ([N, C] with no spatial dims): 140000 statistics, and dweight /
    // dbias summing 70000 samples' partials per channel.
    let c = GnCase::new(&mut rng, 70000, 4, 1, 2, 0.5).channels_last();
    let (path, g) = gpus()[0];
    check_gn_got(
        &format!("gn-cl 70000 samples {path}"),
        &c,
        &run_gn(g, &c, false),
    );
}

#[test]
fn nan_stays_in_its_group_for_both_layouts() {
    let mut rng = Rng::new(25);
    let base = GnCase::new(&mut rng, 3, 8, 10, 4, 0.0);
    for c in [base.clone(), base.channels_last()] {
        let mut c = c;
        // Sample 1, channel 5 (group 2), position 3.
        let i = match c.cl {
            true => (c.s + 3) * c.c + 5,
            false => (c.c + 5) * c.s + 3,
        };
        c.x[i] = f32::NAN;
        for (path, g) in gpus() {
            let got = run_gn(g, &c, false);
            for (j, v) in got.dx.iter().enumerate() {
                let slot = common::group_index(j, c.c, c.s, c.groups, c.cl);
                assert_eq!(v.is_nan(), slot == 4 + 2, "{path} cl={} dx[{j}]", c.cl);
            }
            let dw = got.dweight.as_ref().unwrap();
            for (ch, v) in dw.iter().enumerate() {
                assert_eq!(v.is_nan(), ch / 2 == 2, "{path} cl={} dweight[{ch}]", c.cl);
            }
        }
    }
}

// ---- BatchNorm ----

/// A BatchNorm case on `[n, c, s]` (channels-last: `[n, s, c]`), training or inference.
#[derive(Clone)]
struct BnCase {
    gn: GnCase,
    train: bool,
    running: Option<(Vec<f32>, Vec<f32>)>,
}

impl BnCase {
    fn new(rng: &mut Rng, n: usize, c: usize, s: usize, offset: f64, train: bool) -> BnCase {
        // Channel k's values around offset + k (per-channel means, unlike GroupNorm's data).
        let mut gn = GnCase::new(rng, n, c, s, c, 0.0);
        let noise = rng.normals(n * c * s, 0.0, 1.5);
        for (i, v) in gn.x.iter_mut().enumerate() {
            *v = (offset + ((i / s) % c) as f64 + f64::from(noise[i])) as f32;
        }
        let running = (!train).then(|| {
            let m = (0..c).map(|k| (offset + k as f64 + 0.25) as f32).collect();
            let v = rng.normals(c, 2.0, 0.5).iter().map(|v| v.abs()).collect();
            (m, v)
        });
        BnCase { gn, train, running }
    }
}

/// The GPU gradients and the statistics they went through (training: the forward's saved
/// ones; inference: the running mean and 1 / sqrt(running_var + eps) in f64).
fn run_bn(gpu: &Gpu, c: &BnCase) -> Got {
    let gc = &c.gn;
    let shape = gc.shape();
    let x = Tensor::from_slice(gpu, &gc.x, &shape).unwrap();
    let dy = Tensor::from_slice(gpu, &gc.dy, &shape).unwrap();
    let t = |v: &[f32]| Tensor::from_slice(gpu, v, &[gc.c]).unwrap();
    let mut bn = BatchNorm::new(gpu, gc.c).unwrap();
    if let Some(w) = &gc.weight {
        bn = bn.weight(t(w));
    }
    if let Some(b) = &gc.bias {
        bn = bn.bias(t(b));
    }
    let read = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_vec(gpu).unwrap());
    let layout = gc.layout();
    let (g, mean, rstd) = match &c.running {
        None => {
            let out = bn.forward_train(gpu, &x, layout).unwrap();
            let g = bn
                .backward(gpu, &x, &dy, &out.mean, &out.invstd, layout)
                .unwrap();
            (
                g,
                out.mean.to_vec(gpu).unwrap(),
                out.invstd.to_vec(gpu).unwrap(),
            )
        }
        Some((m, v)) => {
            bn = bn.running_stats(t(m), t(v));
            let g = bn.backward_eval(gpu, &x, &dy, layout).unwrap();
            // rstd as f64 from the f32 variance: the reference's own, not the GPU's rounding.
            let r = v
                .iter()
                .map(|&v| (1.0 / (f64::from(v) + 1e-5).sqrt()) as f32);
            (g, m.clone(), r.collect())
        }
    };
    assert_eq!(g.dx.shape(), &shape[..]);
    assert_eq!(g.dweight.is_some(), gc.weight.is_some());
    assert_eq!(g.dbias.is_some(), gc.bias.is_some());
    Got {
        dx: g.dx.to_vec(gpu).unwrap(),
        dweight: read(&g.dweight),
        dbias: read(&g.dbias),
        mean,
        rstd,
    }
}

fn check_bn_got(what: &str, c: &BnCase, got: &Got) {
    let gc = &c.gn;
    let mean: Vec<f64> = got.mean.iter().map(|&v| f64::from(v)).collect();
    let rstd: Vec<f64> = match &c.running {
        Some((_, v)) => v
            .iter()
            .map(|&v| 1.0 / (f64::from(v) + 1e-5).sqrt())
            .collect(),
        None => got.rstd.iter().map(|&v| f64::from(v)).collect(),
    };
    let w = gc.weight.as_deref();
    // The reference's [n, c, s] view: channels-last is [n * s, c, 1].
    let (cc, s) = (gc.c, if gc.cl { 1 } else { gc.s });
    let r = reference::batch_norm_backward(&gc.x, &gc.dy, cc, s, w, &mean, &rstd, c.train);
    let ch = |i: usize| (i / s) % cc;
    let layout = Layout {
        x: &gc.x,
        dy: &gc.dy,
        weight: w,
        stat_of: &ch,
        param_of: &ch,
        mean: &mean,
        rstd: &rstd,
    };
    check_gradients(what, &layout, &r, got);
}

fn check_bn(c: &BnCase) {
    for (path, g) in gpus() {
        let gc = &c.gn;
        let what = format!("bn {:?} cl={} train={} {path}", gc.shape(), gc.cl, c.train);
        check_bn_got(&what, c, &run_bn(g, c));
    }
}

#[test]
fn batch_norm_shapes_both_layouts_train_and_eval() {
    let mut rng = Rng::new(30);
    // (n, c, s): runs of 1, 3, 4, 49 and 4097 values; channels of 1, 3 and 4.
    for (n, c, s) in [
        (5, 3, 1),
        (4, 3, 3),
        (8, 4, 16),
        (6, 16, 49),
        (2, 3, 4097),
        (3, 1, 7),
    ] {
        for train in [true, false] {
            let case = BnCase::new(&mut rng, n, c, s, 0.5, train);
            check_bn(&case);
            let cl = BnCase {
                gn: case.gn.clone().channels_last(),
                ..case
            };
            check_bn(&cl);
        }
    }
}

#[test]
fn batch_norm_large_means_no_affine_and_many_rows() {
    let mut rng = Rng::new(31);
    for offset in [1e4, -1e4] {
        for train in [true, false] {
            check_bn(&BnCase::new(&mut rng, 4, 3, 25, offset, train));
        }
    }
    let mut c = BnCase::new(&mut rng, 4, 4, 9, 0.0, true);
    c.gn.weight = None;
    check_bn(&c);
    c.gn.bias = None;
    check_bn(&c);
    // More than 65535 rows channels-last, and a million rows in the column sums.
    let (path, g) = gpus()[0];
    for (n, c) in [(70000usize, 3usize), (1 << 20, 4)] {
        let case = BnCase::new(&mut rng, n, c, 1, 0.0, true);
        let case = BnCase {
            gn: case.gn.channels_last(),
            ..case
        };
        check_bn_got(&format!("bn {n} rows {path}"), &case, &run_bn(g, &case));
    }
}

#[test]
fn batch_norm_nan_poisons_only_its_channel() {
    let mut rng = Rng::new(32);
    for train in [true, false] {
        let base = BnCase::new(&mut rng, 4, 3, 10, 0.0, train);
        for cl in [false, true] {
            let mut c = base.clone();
            if cl {
                c.gn = c.gn.channels_last();
            }
            let gc = &mut c.gn;
            let i = match cl {
                true => (gc.s + 3) * gc.c + 1,
                false => (gc.c + 1) * gc.s + 3,
            };
            gc.x[i] = f32::NAN;
            for (path, g) in gpus() {
                let got = run_bn(g, &c);
                let gc = &c.gn;
                for (j, v) in got.dx.iter().enumerate() {
                    let ch = common::channel_index(j, gc.c, gc.s, cl);
                    // Training: the channel's statistics are NaN. Inference: dx = w rstd dy
                    // does not read x.
                    assert_eq!(v.is_nan(), train && ch == 1, "{path} cl={cl} dx[{j}]");
                }
                let dw = got.dweight.as_ref().unwrap();
                for (ch, v) in dw.iter().enumerate() {
                    assert_eq!(v.is_nan(), ch == 1, "{path} cl={cl} train={train} dw[{ch}]");
                }
                let db = got.dbias.as_ref().unwrap();
                assert!(db.iter().all(|v| v.is_finite()), "{path} dbias");
            }
        }
    }
}

#[test]
fn batch_norm_reruns_chunks_and_untracked_eval() {
    let mut rng = Rng::new(33);
    let case = BnCase::new(&mut rng, 8, 8, 300, 0.0, true);
    for cl in [false, true] {
        let mut c = case.clone();
        if cl {
            c.gn = c.gn.channels_last();
        }
        check_bn_got("bn chunked", &c, &run_bn(gpu_small_bindings(), &c));
        for (path, g) in gpus() {
            let (a, b) = (run_bn(g, &c), run_bn(g, &c));
            assert_bits_eq(&format!("{path} dx"), &a.dx, &b.dx);
            assert_bits_eq(
                &format!("{path} dw"),
                a.dweight.as_ref().unwrap(),
                b.dweight.as_ref().unwrap(),
            );
            // Untracked: inference normalizes with batch statistics, so its backward is
            // training's, bit for bit.
            let gc = &c.gn;
            let x = Tensor::from_slice(g, &gc.x, &gc.shape()).unwrap();
            let dy = Tensor::from_slice(g, &gc.dy, &gc.shape()).unwrap();
            let t = |v: &[f32]| Tensor::from_slice(g, v, &[gc.c]).unwrap();
            let bn = BatchNorm::new(g, gc.c)
                .unwrap()
                .weight(t(gc.weight.as_ref().unwrap()))
                .bias(t(gc.bias.as_ref().unwrap()))
                .track_running_stats(false);
            let e = bn.backward_eval(g, &x, &dy, gc.layout()).unwrap();
            assert_bits_eq(
                &format!("{path} untracked eval"),
                &e.dx.to_vec(g).unwrap(),
                &a.dx,
            );
        }
    }
}

#[test]
fn batch_norm_backward_checks_its_inputs() {
    let g = gpu();
    let x = Tensor::from_slice(g, &[1.0, 2.0, 3.0, 5.0, 8.0, 13.0], &[3, 2]).unwrap();
    let mut bn = BatchNorm::new(g, 2).unwrap();
    let cf = fused_norm::Layout::ChannelsFirst;
    let t = bn.forward_train(g, &x, cf).unwrap();
    let dy2 = Tensor::from_slice(g, &[1.0; 6], &[2, 3]).unwrap();
    let e = bn
        .backward(g, &x, &dy2, &t.mean, &t.invstd, cf)
        .unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
    let e = bn.backward(g, &x, &x, &t.mean, &x, cf).unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
    let bad = Gradients {
        dx: Tensor::empty(g, &[3, 2]).unwrap(),
        dweight: Some(Tensor::empty(g, &[2]).unwrap()),
        dbias: None,
    };
    let mut enc = g.encoder();
    let e = bn.encode_backward(g, &mut enc, &x, &x, &t.mean, &t.invstd, cf, &bad);
    assert!(matches!(e, Err(NormError::InvalidArgument(_))), "{e:?}");
}
