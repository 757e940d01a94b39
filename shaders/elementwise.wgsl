// Elementwise kernels over a whole tensor, one output u32 word per thread: dtype casts, and the
// residual add of forward_add where rows do not fill whole vec4s. A thread writes a whole word,
// so no two threads ever write the same word, whatever the element size and offset parity.
//
// Element types by flags: f32 (both off), f16 (*_F16), bf16 (*_BF16). Halves are packed two to
// a word, element 2k in the low half; they are widened exactly and narrowed on the bits
// (halfbits.wgsl: round to nearest even, overflow to Inf).

struct EwParams {
    // Output words of this chunk, and its element count (the last word of an odd count of
    // halves holds one element; its other half is the buffer's padding).
    words: u32,
    n: u32,
    // Element offsets of the chunk inside the src, dst and res bindings (even for halves).
    src_off: u32,
    dst_off: u32,
    res_off: u32,
    // Workgroups along x; more continue along y.
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
}

override SRC_F16: bool = false;
override SRC_BF16: bool = false;
override DST_F16: bool = false;
override DST_BF16: bool = false;
// add_words: the sum goes to `res` itself (vLLM's in-place fused_add_rms_norm).
override IN_PLACE: bool = false;

@group(0) @binding(0) var<uniform> p: EwParams;
// The cast's input; the add's x.
@group(0) @binding(1) var<storage, read> src: array<u32>;
// The cast's output; the add's sum (unless IN_PLACE).
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;
// The add's residual, of the output's type (and its sum, IN_PLACE).
@group(0) @binding(3) var<storage, read_write> res: array<u32>;

fn half_of(w: u32, i: u32) -> u32 {
    return (w >> ((i & 1u) * 16u)) & 0xffffu;
}

fn src_elem(i: u32) -> f32 {
    if (SRC_F16) {
        return unpack2x16float(half_of(src[i >> 1u], i)).x;
    }
    if (SRC_BF16) {
        return bitcast<f32>(half_of(src[i >> 1u], i) << 16u);
    }
    return bitcast<f32>(src[i]);
}

fn res_elem(i: u32) -> f32 {
    if (DST_F16) {
        return unpack2x16float(half_of(res[i >> 1u], i)).x;
    }
    if (DST_BF16) {
        return bitcast<f32>(half_of(res[i >> 1u], i) << 16u);
    }
    return bitcast<f32>(res[i]);
}

fn dst_bits(v: f32) -> u32 {
    if (DST_F16) {
        return f16_bits(v);
    }
    return bf16_bits(v);
}

fn ew_index(wid: vec3<u32>, t: u32) -> u32 {
    return (wid.x + wid.y * p.grid_x) * WG + t;
}

@compute @workgroup_size(WG)
fn cast_words(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let w = ew_index(wid, t);
    if (w >= p.words) {
        return;
    }
    if (!DST_F16 && !DST_BF16) {
        dst[p.dst_off + w] = bitcast<u32>(src_elem(p.src_off + w));
        return;
    }
    // An odd count's last word: its high half (padding) gets a copy of the last element.
    let hi = min(2u * w + 1u, p.n - 1u);
    let lo_bits = dst_bits(src_elem(p.src_off + 2u * w));
    let hi_bits = dst_bits(src_elem(p.src_off + hi));
    dst[p.dst_off / 2u + w] = lo_bits | (hi_bits << 16u);
}

fn put_word(k: u32, v: u32) {
    if (IN_PLACE) {
        res[k] = v;
    } else {
        dst[k] = v;
    }
}

// sum = x + residual in f32, rounded once to the storage type.
@compute @workgroup_size(WG)
fn add_words(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let w = ew_index(wid, t);
    if (w >= p.words) {
        return;
    }
    if (!DST_F16 && !DST_BF16) {
        put_word(p.dst_off + w, bitcast<u32>(src_elem(p.src_off + w) + res_elem(p.res_off + w)));
        return;
    }
    let lo = 2u * w;
    let hi = min(2u * w + 1u, p.n - 1u);
    let lo_bits = dst_bits(src_elem(p.src_off + lo) + res_elem(p.res_off + lo));
    let hi_bits = dst_bits(src_elem(p.src_off + hi) + res_elem(p.res_off + hi));
    put_word(p.dst_off / 2u + w, lo_bits | (hi_bits << 16u));
}
