// Element storage: f16 packed two to a u32 word (element 2k in the low half), for adapters
// without SHADER_F16 (GL, WebGPU without `shader-f16`). Four elements are two words.
alias XV = vec2<u32>;
alias XW = u32;

fn widen2(w: XW) -> vec2<f32> {
    return unpack2x16float(w);
}

fn narrow2(v: vec2<f32>) -> XW {
    return f16_bits(v.x) | (f16_bits(v.y) << 16u);
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
