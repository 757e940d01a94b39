//! With no adapter for the chosen backend, Gpu::new says how to get one instead of panicking.
//! Its own test binary: it sets WGPU_BACKEND before any other thread reads it.

use fused_norm::{Gpu, NormError};

#[test]
fn no_adapter_error_says_how_to_get_one() {
    // No Metal adapter exists on Linux (and no DX12 elsewhere than Windows).
    let backend = if cfg!(target_os = "macos") {
        "dx12"
    } else {
        "metal"
    };
    // SAFETY: this binary runs one test, so no other thread reads the environment.
    unsafe { std::env::set_var("WGPU_BACKEND", backend) };
    let e = Gpu::new().unwrap_err();
    assert!(matches!(e, NormError::NoAdapter(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("mesa-vulkan-drivers") && msg.contains(backend),
        "{msg}"
    );
}
