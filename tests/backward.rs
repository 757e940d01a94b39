//! Backward passes against the f64 reference (`reference::*_backward`, itself checked against
//! finite differences), from the GPU forward's saved statistics, on every context: LayerNorm and
//! RMSNorm. Tolerances: `common::assert_close_bounded` (one TOL, bounds by the magnitudes the
//! gradients are computed from).

mod common;

use common::{
    assert_bits_eq, assert_close_bounded, exact_empty, gpu, gpu_small_bindings, gpus, Rng,
};
use fused_norm::{
    reference, Gpu, Gradients, GroupNorm, InstanceNorm, LayerNorm, NormError, RmsNorm, Tensor,
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

// ---- GroupNorm and InstanceNorm (channels-first) ----

/// A GroupNorm case `[n, c, s]` (channels-first) with `groups` groups.
struct GnCase {
    n: usize,
    c: usize,
    s: usize,
    groups: usize,
    x: Vec<f32>,
    dy: Vec<f32>,
    weight: Option<Vec<f32>>,
    bias: Option<Vec<f32>>,
}

impl GnCase {
    fn new(rng: &mut Rng, n: usize, c: usize, s: usize, groups: usize, offset: f64) -> GnCase {
        GnCase {
            n,
            c,
            s,
            groups,
            x: common::grouped_data(rng, n, c, s, groups, offset),
            dy: rng.normals(n * c * s, 0.0, 1.0),
            weight: Some(rng.normals(c, 1.0, 0.5)),
            bias: Some(rng.normals(c, 0.0, 0.5)),
        }
    }
}

fn run_gn(gpu: &Gpu, c: &GnCase, instance: bool) -> Got {
    let shape = [c.n, c.c, c.s];
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
    let cf = fused_norm::Layout::ChannelsFirst;
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
    let r = reference::group_norm_backward(&c.x, &c.dy, cc, s, groups, false, w, &mean, &rstd);
    let layout = Layout {
        x: &c.x,
        dy: &c.dy,
        weight: w,
        stat_of: &|i| common::group_index(i, cc, s, groups, false),
        param_of: &|i| common::channel_index(i, cc, s, false),
        mean: &mean,
        rstd: &rstd,
    };
    check_gradients(what, &layout, &r, got);
}

fn check_gn(c: &GnCase, instance: bool) {
    for (path, g) in gpus() {
        let what = format!("gn {}x{}x{}/{} {path}", c.n, c.c, c.s, c.groups);
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
    ] {
        check_gn(&GnCase::new(&mut rng, n, c, s, groups, 0.5), false);
    }
}

#[test]
fn instance_norm_shapes() {
    let mut rng = Rng::new(21);
    for (n, c, s) in [(2, 3, 5), (3, 4, 16), (1, 2, 4097), (2, 64, 49)] {
        check_gn(&GnCase::new(&mut rng, n, c, s, c, 0.5), true);
    }
}

#[test]
fn group_norm_large_means_and_no_affine() {
    let mut rng = Rng::new(22);
    for offset in [1e4, -1e4] {
        check_gn(&GnCase::new(&mut rng, 2, 8, 25, 4, offset), false);
    }
    let mut c = GnCase::new(&mut rng, 2, 8, 25, 4, 0.0);
    c.weight = None;
    check_gn(&c, false);
    c.bias = None;
    check_gn(&c, false);
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
fn group_norm_channels_last_backward_is_refused() {
    let g = gpu();
    let x = Tensor::from_slice(g, &[1.0; 16], &[2, 2, 4]).unwrap();
    let gn = GroupNorm::new(2, 4).unwrap();
    let cl = fused_norm::Layout::ChannelsLast;
    let out = gn.forward(g, &x, cl).unwrap();
    let e = gn
        .backward(g, &x, &x, &out.mean, &out.rstd, cl)
        .unwrap_err();
    assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
}
