// Element storage: bf16 packed two to a u32 word (element 2k in the low half). WGSL has no bf16
// type: a bf16 is the top half of an f32, so widening is a shift.
alias XV = vec2<u32>;
alias XW = u32;

fn widen2(w: XW) -> vec2<f32> {
    return vec2<f32>(bf16_lo(w), bf16_hi(w));
}

fn narrow2(v: vec2<f32>) -> XW {
    return bf16_bits(v.x) | (bf16_bits(v.y) << 16u);
}

fn widen4(v: XV) -> vec4<f32> {
    return vec4<f32>(widen2(v.x), widen2(v.y));
}

fn narrow4(v: vec4<f32>) -> XV {
    return vec2<u32>(narrow2(v.xy), narrow2(v.zw));
}

// v rounded to the storage type and widened back (narrowing is integer bit work here, which no
// compiler folds away).
fn rounded4(v: vec4<f32>) -> vec4<f32> {
    return widen4(narrow4(v));
}
