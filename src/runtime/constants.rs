//! Override constants, typed: each kernel's switches are named flags, never numbers.

/// A boolean switch of a shader (its WGSL `override` of the same name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Flag {
    /// Vector loads (rows of whole vec4s).
    Vec,
    /// A weight is bound.
    HasWeight,
    /// A bias is bound.
    HasBias,
    /// Subtract the mean (off for RMSNorm).
    Center,
    /// Weight and bias per channel rather than per element of a row.
    ChannelAffine,
    /// Update BatchNorm's running statistics.
    Update,
    /// Running variance from the unbiased batch variance.
    Unbiased,
    /// Elementwise input is f16 (else f32 unless `SrcBf16`).
    SrcF16,
    /// Elementwise input is bf16.
    SrcBf16,
    /// Elementwise output is f16.
    DstF16,
    /// Elementwise output is bf16.
    DstBf16,
    /// The residual add writes the sum into the residual's buffer.
    InPlace,
    /// The rows kernels normalize x + residual and store the sum.
    Add,
    /// Backward through constant statistics (BatchNorm inference).
    Eval,
    /// The rows kernel's statistics from one read of x (chunked two-pass, Chan merges).
    OneRead,
}

impl Flag {
    fn name(self) -> &'static str {
        match self {
            Flag::Vec => "VEC",
            Flag::HasWeight => "HAS_W",
            Flag::HasBias => "HAS_B",
            Flag::Center => "CENTER",
            Flag::ChannelAffine => "CHANNEL_AFFINE",
            Flag::Update => "UPDATE",
            Flag::Unbiased => "UNBIASED",
            Flag::SrcF16 => "SRC_F16",
            Flag::SrcBf16 => "SRC_BF16",
            Flag::DstF16 => "DST_F16",
            Flag::DstBf16 => "DST_BF16",
            Flag::InPlace => "IN_PLACE",
            Flag::Add => "ADD",
            Flag::Eval => "EVAL",
            Flag::OneRead => "ONE_READ",
        }
    }
}

/// A shape value a kernel divides by, fixed per pipeline on CPU adapters (its WGSL `override`
/// of the same name; 0 there means "read it from the uniform block"). A division by a constant
/// compiles to a multiply and a shift; llvmpipe runs a vector division by a runtime value as
/// one scalar division per lane, which measured 20 % of BatchNorm inference's apply pass on
/// lavapipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Divisor {
    /// Channels (apply.wgsl).
    Channels,
    /// Run length: the spatial size (apply.wgsl), or a channel's run in a row (rows.wgsl).
    Run,
    /// Rows per sample with their own coefficients (apply.wgsl).
    SampleRows,
    /// Row length (rows.wgsl's elementwise pass).
    Row,
}

impl Divisor {
    fn name(self) -> &'static str {
        match self {
            Divisor::Channels => "K_C",
            Divisor::Run => "K_RUN",
            Divisor::SampleRows => "K_SPR",
            Divisor::Row => "K_D",
        }
    }
}

/// The override constants of one pipeline: workgroup size, threads per reduction, flags, and
/// the divisors fixed for its shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Overrides {
    wg: u32,
    tpr: u32,
    flags: Vec<(Flag, bool)>,
    divisors: Vec<(Divisor, u32)>,
    per_lane: Option<u32>,
}

impl Overrides {
    /// `wg` threads per workgroup, `tpr` of them per reduction (a power of two dividing `wg`).
    pub(crate) fn new(wg: u32, tpr: u32) -> Overrides {
        Overrides {
            wg,
            tpr,
            flags: Vec::new(),
            divisors: Vec::new(),
            per_lane: None,
        }
    }

    /// Columns (rows_bwd.wgsl's column walk) or vec4s (apply.wgsl) each thread takes: the
    /// kernels' `PER_LANE`, more than 1 on CPU adapters only.
    pub(crate) fn per_lane(mut self, n: u32) -> Overrides {
        self.per_lane = Some(n);
        self
    }

    /// Fixes `d` at `value` in the pipeline when `on` (CPU adapters: see [`Divisor`]); GPUs
    /// keep one pipeline for every shape.
    pub(crate) fn divisor(mut self, d: Divisor, value: u64, on: bool) -> Overrides {
        self.divisors.retain(|(k, _)| *k != d);
        if on {
            if let Ok(v) = u32::try_from(value) {
                self.divisors.push((d, v));
                self.divisors.sort();
            }
        }
        self
    }

    pub(crate) fn flag(mut self, flag: Flag, on: bool) -> Overrides {
        self.flags.retain(|(f, _)| *f != flag);
        self.flags.push((flag, on));
        self.flags.sort();
        self
    }

    /// As wgpu takes them, with the subgroup lower bound where the subgroup prelude is in use.
    pub(crate) fn constants(&self, sg_min: Option<u32>) -> Vec<(&'static str, f64)> {
        let mut c = vec![("WG", f64::from(self.wg)), ("TPR", f64::from(self.tpr))];
        c.extend(
            self.flags
                .iter()
                .map(|(f, on)| (f.name(), f64::from(u8::from(*on)))),
        );
        c.extend(self.divisors.iter().map(|(d, v)| (d.name(), f64::from(*v))));
        if let Some(n) = self.per_lane {
            c.push(("PER_LANE", f64::from(n)));
        }
        if let Some(sg) = sg_min {
            c.push(("SG_MIN", f64::from(sg)));
        }
        c
    }
}
