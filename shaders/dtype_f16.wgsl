// Element storage: native f16 (SHADER_F16; the module starts with `enable f16;`). Loads widen
// exactly; stores round with the device's f32 -> f16 conversion (to nearest even on Vulkan,
// Metal and D3D12).
alias XV = vec4<f16>;
alias XW = vec2<f16>;

fn widen4(v: XV) -> vec4<f32> {
    return vec4<f32>(v);
}

fn narrow4(v: vec4<f32>) -> XV {
    return vec4<f16>(v);
}

fn widen2(v: XW) -> vec2<f32> {
    return vec2<f32>(v);
}

fn narrow2(v: vec2<f32>) -> XW {
    return vec2<f16>(v);
}

// v rounded to f16 and widened back, for values used again after their store (forward_add's
// sum). Done on the bits: a driver may fold vec4<f32>(vec4<f16>(v)) into v (NVIDIA's Vulkan
// driver does, measured on an H100: the sum 65504 + 16 stayed finite instead of Inf).
fn rounded4(v: vec4<f32>) -> vec4<f32> {
    let lo = f16_bits(v.x) | (f16_bits(v.y) << 16u);
    let hi = f16_bits(v.z) | (f16_bits(v.w) << 16u);
    return vec4<f32>(unpack2x16float(lo), unpack2x16float(hi));
}
