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
