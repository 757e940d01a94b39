// Half-precision bit conversions, shared by every module (the packed storage paths and the cast
// and add kernels). WGSL's pack2x16float leaves the rounding direction and overflow unspecified,
// so narrowing is done here on the bits: round to nearest even, overflow to +-Inf, NaN stays
// NaN (quiet), f16 subnormals kept. Branch-free (select), so SIMD lanes do not diverge.

// The f16 bits (low 16) of v.
fn f16_bits(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    // Normal range: rebias the exponent (-112 << 23, wrapping) and add 0xfff plus the kept
    // mantissa's lowest bit: a tie rounds to the even neighbour.
    let normal = (a + 0xc8000fffu + ((a >> 13u) & 1u)) >> 13u;
    // Below 2^-14 (f16 subnormals): adding 0.5 leaves the value in f32's mantissa at 2^-24
    // steps, rounded to nearest even by the (correctly rounded) f32 addition.
    let sub = bitcast<u32>(bitcast<f32>(a) + 0.5) - 0x3f000000u;
    var h = select(normal, sub, a < 0x38800000u);
    // 65520 and above round to Inf (65520 is the tie between 65504 and 2^16: even is 2^16).
    h = select(h, 0x7c00u, a >= 0x477ff000u);
    h = select(h, 0x7e00u | ((a >> 13u) & 0x3ffu), a > 0x7f800000u);
    return sign | h;
}

// The bf16 bits (low 16) of v: the top half of f32, rounded to nearest even.
fn bf16_bits(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    let rounded = (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
    return select(rounded, (b >> 16u) | 0x40u, (b & 0x7fffffffu) > 0x7f800000u);
}

fn bf16_lo(w: u32) -> f32 {
    return bitcast<f32>(w << 16u);
}

fn bf16_hi(w: u32) -> f32 {
    return bitcast<f32>(w & 0xffff0000u);
}
