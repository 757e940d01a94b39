// Element storage: f32. XV stores four consecutive elements, XW two; widen/narrow convert a
// stored group to and from f32 (here: nothing to do).
alias XV = vec4<f32>;
alias XW = vec2<f32>;

fn widen4(v: XV) -> vec4<f32> {
    return v;
}

fn narrow4(v: vec4<f32>) -> XV {
    return v;
}

fn widen2(v: XW) -> vec2<f32> {
    return v;
}

fn narrow2(v: vec2<f32>) -> XW {
    return v;
}

// v rounded to the storage type: f32 already is.
fn rounded4(v: vec4<f32>) -> vec4<f32> {
    return v;
}
