//! Whole-tensor elementwise kernels (`shaders/elementwise.wgsl`): dtype casts, and the residual
//! add `sum = x + residual` that `forward_add` runs before the norm where rows do not fill
//! whole vec4s. One output word per thread, in chunks no larger than a binding.

use crate::context::Gpu;
use crate::error::Result;
use crate::ops::affine::Staging;
use crate::runtime::constants::{Flag, Overrides};
use crate::runtime::dispatch::{chunks, record_all, units_per_binding_of, view_of, Launch};
use crate::runtime::pipeline::{Kernel, Shader};
use crate::tensor::{DType, Tensor};

/// Threads per workgroup: an elementwise pass needs no reduction.
const WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct EwParams {
    words: u32,
    n: u32,
    src_off: u32,
    dst_off: u32,
    res_off: u32,
    grid_x: u32,
    pad: [u32; 2],
}

pub(crate) fn layout() -> crate::runtime::UniformLayout {
    crate::runtime::uniform_layout!(
        "elementwise",
        EwParams,
        [words, n, src_off, dst_off, res_off, grid_x]
    )
}

fn flags(o: Overrides, src: DType, dst: DType) -> Overrides {
    o.flag(Flag::SrcF16, src == DType::F16)
        .flag(Flag::SrcBf16, src == DType::BF16)
        .flag(Flag::DstF16, dst == DType::F16)
        .flag(Flag::DstBf16, dst == DType::BF16)
}

/// Records `dst = src` converted to dst's dtype (checked by the caller: same numel, on `gpu`,
/// not the same buffer).
pub(crate) fn cast(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    src: &Tensor,
    dst: &Tensor,
) -> Result<()> {
    let _turn = gpu.turn();
    let mut st = Staging::default();
    let s = st.input(gpu, encoder, src)?;
    let d = st.output(gpu, dst)?;
    let o = flags(Overrides::new(WG, 1), s.dtype(), d.dtype());
    words(gpu, encoder, Kernel::CastWords, &o, &s, Some(&d), None)?;
    st.finish(gpu, encoder)
}

/// Records `sum = x + res` (all of one dtype, one numel), rounded once to that dtype; `sum`
/// None writes the sum into `res` itself.
pub(crate) fn add(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    x: &Tensor,
    res: &Tensor,
    sum: Option<&Tensor>,
) -> Result<()> {
    let _turn = gpu.turn();
    let mut st = Staging::default();
    let xs = st.input(gpu, encoder, x)?;
    // In place, the residual is read and written: staged both ways.
    let r = match sum {
        Some(_) => st.input(gpu, encoder, res)?,
        None => st.in_out(gpu, encoder, res)?,
    };
    let out = sum.map(|t| st.output(gpu, t)).transpose()?;
    let o = flags(Overrides::new(WG, 1), x.dtype(), x.dtype()).flag(Flag::InPlace, sum.is_none());
    words(
        gpu,
        encoder,
        Kernel::AddWords,
        &o,
        &xs,
        out.as_ref(),
        Some(&r),
    )?;
    st.finish(gpu, encoder)
}

/// Launches `kernel` over the elements of `src` in chunks of whole words, writing `dst` (or,
/// without one, `res` in place).
fn words(
    gpu: &Gpu,
    encoder: &mut wgpu::CommandEncoder,
    kernel: Kernel,
    o: &Overrides,
    src: &Tensor,
    dst: Option<&Tensor>,
    res: Option<&Tensor>,
) -> Result<()> {
    let n = src.numel() as u64;
    let out = dst.or(res).map_or(DType::F32, Tensor::dtype);
    // A multiple of 8 elements per chunk: every chunk starts on a whole word of each type.
    let per = (units_per_binding_of(gpu, 1, 4) / 8 * 8).max(8);
    let sink = gpu.sink()?;
    let view =
        |t: &Tensor, e0, e1| view_of(gpu, e0, e1, t.buffer().size(), t.dtype().size() as u64);
    let mut launches = Vec::new();
    for (e0, e1) in chunks(n, per) {
        let count = e1 - e0;
        let words = if out.is_half() {
            count.div_ceil(2)
        } else {
            count
        };
        let sv = view(src, e0, e1);
        let dv = dst.map(|t| view(t, e0, e1));
        let rv = res.map(|t| view(t, e0, e1));
        // In place the sum is stored at the residual's offset.
        let dst_off = dv.or(rv).map_or(0, |v| v.elem_off);
        let params = |grid_x| EwParams {
            words: words as u32,
            n: count as u32,
            src_off: sv.elem_off,
            dst_off,
            res_off: rv.map_or(0, |v| v.elem_off),
            grid_x,
            pad: [0; 2],
        };
        let groups = words.div_ceil(u64::from(WG)) as u32;
        let l = Launch::new(gpu, Shader::Elementwise, kernel, o, groups, params)?
            .bind("src", sv.bind(src.buffer()))
            .bind("dst", bind_or(dv, dst, &sink));
        // Layouts hold what an entry point references: the cast never reads a residual.
        launches.push(match kernel {
            Kernel::AddWords => l.bind("res", bind_or(rv, res, &sink)),
            _ => l,
        });
    }
    record_all(gpu, encoder, &launches)
}

/// The view of `t`, or all of the sink where the kernel has no such tensor (never written).
fn bind_or<'a>(
    v: Option<crate::runtime::dispatch::View>,
    t: Option<&'a Tensor>,
    sink: &'a Tensor,
) -> wgpu::BindingResource<'a> {
    match (v, t) {
        (Some(v), Some(t)) => v.bind(t.buffer()),
        _ => sink.buffer().as_entire_binding(),
    }
}
