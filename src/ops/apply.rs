//! The elementwise pass of the channels family (`shaders/apply.wgsl`):
//! y = (x - centre) * scale + shift with each element's (sample, channel) coefficients (the
//! backward's dx adds grad * dy), in chunks of whole runs, a vec4 (or value) per thread like a
//! copy on GPUs, several vec4s sharing their coefficients on CPU adapters.

use crate::context::Gpu;
use crate::error::Result;
use crate::runtime::constants::{Divisor, Flag, Overrides};
use crate::runtime::dispatch::{chunks, view_of, Launch};
use crate::runtime::pipeline::{Kernel, Shader, Storage};
use crate::runtime::policy::Policy;
use crate::tensor::Tensor;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct ApplyParams {
    c: u32,
    s: u32,
    spr: u32,
    plane: u32,
    e0: u32,
    x_off: u32,
    y_off: u32,
    work: u32,
    grid_x: u32,
    pad: [u32; 3],
}

/// How the pass reads: a vec4 of one channel's run (channels-first, s % 4 == 0), a vec4 of
/// four channels (channels-last, c % 4 == 0), or one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApplyKind {
    RunVec4,
    ChannelVec4,
    Scalar,
    /// Half storage where a vec4 would straddle runs: one whole word (two values) per thread.
    Pair,
}

impl ApplyKind {
    /// (RunVec4 assumes coefficients shared by every sample: only BatchNorm is channels-first
    /// in this family.)
    pub(crate) fn of(c: u64, s: u64) -> ApplyKind {
        match () {
            _ if s == 1 && c.is_multiple_of(4) => ApplyKind::ChannelVec4,
            _ if s > 1 && s.is_multiple_of(4) => ApplyKind::RunVec4,
            _ => ApplyKind::Scalar,
        }
    }

    /// Scalar stores of half values would share words between threads: pairs instead.
    pub(crate) fn in_storage(self, storage: Storage) -> ApplyKind {
        match self {
            ApplyKind::Scalar if storage.is_half() => ApplyKind::Pair,
            k => k,
        }
    }

    /// The forward's kernel, or (`backward`) dx's.
    pub(crate) fn kernel(self, backward: bool) -> Kernel {
        match (self, backward) {
            (ApplyKind::RunVec4, false) => Kernel::ApplyCf4,
            (ApplyKind::ChannelVec4, false) => Kernel::ApplyCl4,
            (ApplyKind::Scalar, false) => Kernel::ApplyScalar,
            (ApplyKind::Pair, false) => Kernel::ApplyPair,
            (ApplyKind::RunVec4, true) => Kernel::ApplyBwdCf4,
            (ApplyKind::ChannelVec4, true) => Kernel::ApplyBwdCl4,
            (ApplyKind::Scalar, true) => Kernel::ApplyBwdScalar,
            (ApplyKind::Pair, true) => Kernel::ApplyBwdPair,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            ApplyKind::RunVec4 => "vec4-cf",
            ApplyKind::ChannelVec4 => "vec4-cl",
            ApplyKind::Scalar => "scalar",
            ApplyKind::Pair => "pair",
        }
    }
}

/// One apply pass over x viewed as `[n, c, s]` runs, `spr` runs per sample with its own
/// coefficients (all `n` when they are per channel), `chunk_runs` runs per binding.
pub(crate) struct Apply {
    pub n: u64,
    pub c: u64,
    pub s: u64,
    pub spr: u64,
    pub plane: u64,
    pub chunk_runs: u64,
    pub wg: u32,
    pub storage: Storage,
}

impl Apply {
    /// The launches of the pass: x to y through `coef`; with `dy`, the backward's dx into y
    /// (through constant statistics when `dy.1`, EVAL).
    pub(crate) fn launches<'a>(
        &self,
        gpu: &Gpu,
        x: &'a Tensor,
        dy: Option<(&'a Tensor, bool)>,
        y: &'a Tensor,
        coef: &'a Tensor,
    ) -> Result<Vec<Launch<'a>>> {
        let kind = ApplyKind::of(self.c, self.s).in_storage(self.storage);
        let elem = x.dtype().size() as u64;
        let slab = self.c * self.s;
        // spr as the kernels see it: 0 when the coefficients are per channel only.
        let spr = if self.spr >= self.n { 0 } else { self.spr };
        let fix = Policy::of(gpu).cpu;
        let per_lane = self.per_lane(kind, spr, fix);
        let overrides = Overrides::new(self.wg, self.wg)
            .per_lane(per_lane)
            .flag(Flag::Eval, dy.is_some_and(|d| d.1))
            .divisor(Divisor::Channels, self.c, fix)
            .divisor(Divisor::Run, self.s, fix)
            .divisor(Divisor::SampleRows, spr, fix && spr != 0);
        let mut out = Vec::new();
        for (n0, n1) in chunks(self.n, self.chunk_runs) {
            let (xv, yv) = (
                view_of(gpu, n0 * slab, n1 * slab, x.buffer().size(), elem),
                view_of(gpu, n0 * slab, n1 * slab, y.buffer().size(), elem),
            );
            let elems = (n1 - n0) * slab;
            // Pair: `work` counts elements, a thread takes two.
            let k = u64::from(per_lane);
            let (work, threads) = match kind {
                ApplyKind::Scalar => (elems, elems),
                ApplyKind::Pair => (elems, elems.div_ceil(2)),
                // Runs of s / 4 vec4s, each split into lanes of PER_LANE.
                ApplyKind::RunVec4 => (elems / 4, elems / self.s * (self.s / 4).div_ceil(k)),
                // Rows of c / 4 vec4s, PER_LANE rows per lane.
                ApplyKind::ChannelVec4 => (elems / 4, (elems / self.c).div_ceil(k) * (self.c / 4)),
            };
            let (work, threads) = (work as u32, threads as u32);
            let params = |grid_x| ApplyParams {
                c: self.c as u32,
                s: self.s as u32,
                // Coefficients per channel only (one sample spans every run): 0, see apply.wgsl.
                spr: spr as u32,
                plane: self.plane as u32,
                e0: (n0 * slab) as u32,
                x_off: xv.elem_off,
                y_off: yv.elem_off,
                work,
                grid_x,
                pad: [0; 3],
            };
            let groups = threads.div_ceil(self.wg);
            let y_name = match kind {
                ApplyKind::Scalar => "y1",
                ApplyKind::Pair => "y2",
                _ => "y",
            };
            let mut l = Launch::new(
                gpu,
                Shader::Apply,
                kind.kernel(dy.is_some()),
                &overrides,
                groups,
                params,
            )?
            .storage(self.storage)
            .bind("x", xv.bind(x.buffer()))
            .bind(y_name, yv.bind(y.buffer()))
            .buf("coef", coef.buffer());
            if let Some((dy, _)) = dy {
                // dy is x's size: the same view (its offset depends on the chunk's start alone).
                let dv = view_of(gpu, n0 * slab, n1 * slab, dy.buffer().size(), elem);
                l = l.bind("dy", dv.bind(dy.buffer()));
            }
            out.push(l);
        }
        Ok(out)
    }

    /// Vec4s per thread (apply.wgsl's PER_LANE): on CPU adapters, APPLY_PER_LANE_CPU of one run
    /// (channels-first) or of one channel quad down as many rows (channels-last, when they
    /// stay in one sample's coefficients); GPUs and the scalar kernels: 1.
    fn per_lane(&self, kind: ApplyKind, spr: u64, cpu: bool) -> u32 {
        let k = APPLY_PER_LANE_CPU;
        match kind {
            _ if !cpu => 1,
            ApplyKind::RunVec4 => k,
            ApplyKind::ChannelVec4 if spr == 0 || spr.is_multiple_of(u64::from(k)) => k,
            _ => 1,
        }
    }
}

/// Vec4s per thread of the vec4 kernels on CPU adapters, where a lane loads its coefficients
/// (and works out their index) once per vec4 otherwise. lavapipe, 2 threads, one sitting:
/// BatchNorm inference at one vec4 per lane 1.43-2.13x a copy, at 4 1.06-1.44x, at 8 1.05-1.26x
/// (channels-last gains most: three coefficient loads per lane).
const APPLY_PER_LANE_CPU: u32 = 8;

pub(crate) fn layout() -> crate::runtime::UniformLayout {
    crate::runtime::uniform_layout!(
        "apply",
        ApplyParams,
        [c, s, spr, plane, e0, x_off, y_off, work, grid_x]
    )
}
