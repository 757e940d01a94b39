//! Bad input returns its NormError; nothing panics, nothing the caller passed is modified.

mod common;

use common::{gpu, gpu_small_bindings};
use fused_norm::reference;
use fused_norm::{
    BatchNorm, BatchNormOutput, Gpu, LayerNorm, LayerNormOutput, Layout, NormError, Tensor,
};

fn t(g: &Gpu, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    Tensor::from_slice(g, &v, shape).unwrap()
}

#[test]
fn empty_and_mismatched_tensors() {
    let g = gpu();
    assert!(matches!(
        Tensor::from_slice::<f32>(g, &[], &[0, 3]),
        Err(NormError::Shape(_))
    ));
    assert!(matches!(
        Tensor::from_slice::<f32>(g, &[], &[]),
        Err(NormError::Shape(_))
    ));
    assert!(matches!(
        Tensor::from_slice(g, &[1.0; 5], &[2, 3]),
        Err(NormError::Shape(_))
    ));
    assert!(matches!(
        Tensor::empty(g, &[4, 0]),
        Err(NormError::Shape(_))
    ));
    assert!(matches!(
        t(g, &[2, 3]).reshape(&[4]),
        Err(NormError::Shape(_))
    ));
}

#[test]
fn layer_norm_bad_shapes_and_parameters() {
    let g = gpu();
    let x = t(g, &[4, 6]);
    let e = LayerNorm::new(&[5]).forward(g, &x).unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
    let e = LayerNorm::new(&[2, 4, 6]).forward(g, &x).unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
    let e = LayerNorm::new(&[]).forward(g, &x).unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
    let e = LayerNorm::new(&[0]).forward(g, &x).unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
    let e = LayerNorm::from_axis(2).forward(g, &x).unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
    let e = LayerNorm::from_axis(-3).forward(g, &x).unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
    let e = LayerNorm::new(&[6])
        .weight(t(g, &[5]))
        .forward(g, &x)
        .unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
    let e = LayerNorm::new(&[6])
        .bias(t(g, &[7]))
        .forward(g, &x)
        .unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
    for eps in [-1e-5f32, f32::NAN, f32::INFINITY] {
        let e = LayerNorm::new(&[6]).eps(eps).forward(g, &x).unwrap_err();
        assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
    }
}

#[test]
fn tensors_from_another_device() {
    let g = gpu();
    let other = Gpu::new().unwrap();
    let x_other = t(&other, &[2, 4]);
    let e = LayerNorm::new(&[4]).forward(g, &x_other).unwrap_err();
    assert_eq!(e, NormError::WrongDevice("x"));
    let e = LayerNorm::new(&[4])
        .weight(t(&other, &[4]))
        .forward(g, &t(g, &[2, 4]))
        .unwrap_err();
    assert_eq!(e, NormError::WrongDevice("weight"));
    let e = BatchNorm::new(g, 4)
        .unwrap()
        .forward_train(g, &x_other, Layout::ChannelsLast)
        .unwrap_err();
    assert_eq!(e, NormError::WrongDevice("x"));
    let e = BatchNorm::new(g, 4)
        .unwrap()
        .bias(t(&other, &[4]))
        .forward_eval(g, &t(g, &[2, 4]), Layout::ChannelsLast)
        .unwrap_err();
    assert_eq!(e, NormError::WrongDevice("bias"));
    assert_eq!(
        x_other.to_vec(g).unwrap_err(),
        NormError::WrongDevice("tensor")
    );
}

#[test]
fn wrapped_buffers_need_storage_usage_and_size() {
    let g = gpu();
    let mk = |size, usage| {
        g.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let e = Tensor::from_buffer(g, mk(64, wgpu::BufferUsages::UNIFORM), &[4]).unwrap_err();
    assert!(matches!(e, NormError::Buffer(_)), "{e}");
    let e = Tensor::from_buffer(g, mk(64, wgpu::BufferUsages::STORAGE), &[20]).unwrap_err();
    assert!(matches!(e, NormError::Buffer(_)), "{e}");
    let no_copy = Tensor::from_buffer(g, mk(64, wgpu::BufferUsages::STORAGE), &[16]).unwrap();
    assert!(matches!(no_copy.to_vec(g), Err(NormError::Buffer(_))));
}

#[test]
fn sizes_chunking_cannot_serve() {
    // A row larger than one (capped, 64 KiB) binding cannot be chunked by rows.
    let g = gpu_small_bindings();
    let x = t(g, &[2, 20000]);
    let e = LayerNorm::new(&[20000]).forward(g, &x).unwrap_err();
    assert!(matches!(e, NormError::TooLarge(_)), "{e}");
    let e = BatchNorm::new(g, 20000)
        .unwrap()
        .forward_train(g, &x, Layout::ChannelsFirst)
        .unwrap_err();
    assert!(matches!(e, NormError::TooLarge(_)), "{e}");
    // A buffer beyond the device's largest.
    let max = gpu().limits().max_buffer_size;
    let n = (max / 4 + 16) as usize;
    let e = Tensor::empty(gpu(), &[n]).unwrap_err();
    assert!(matches!(e, NormError::TooLarge(_)), "{e}");
}

#[test]
fn wgpu_validation_errors_come_back_as_norm_errors() {
    // A destroyed buffer passes every check this crate can make; wgpu rejects the submit. The
    // error must come back as NormError::Wgpu through the error scopes, not a panic.
    let g = gpu();
    let buf = g.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 128,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let x = Tensor::from_buffer(g, buf.clone(), &[4, 8]).unwrap();
    buf.destroy();
    let e = LayerNorm::new(&[8]).forward(g, &x).unwrap_err();
    assert!(matches!(e, NormError::Wgpu(_)), "{e}");
    let e = BatchNorm::new(g, 8)
        .unwrap()
        .forward_train(g, &x, Layout::ChannelsLast)
        .unwrap_err();
    assert!(matches!(e, NormError::Wgpu(_)), "{e}");
    // The device still works afterwards.
    assert!(LayerNorm::new(&[8]).forward(g, &t(g, &[4, 8])).is_ok());
}

#[test]
fn outputs_may_not_alias_the_input() {
    let g = gpu();
    let x = t(g, &[4, 8]);
    let out = LayerNormOutput {
        y: x.clone(),
        mean: t(g, &[4]),
        rstd: t(g, &[4]),
    };
    let mut enc = g.device().create_command_encoder(&Default::default());
    let e = LayerNorm::new(&[8])
        .encode(g, &mut enc, &x, &out)
        .unwrap_err();
    assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
    let bn = BatchNorm::new(g, 8).unwrap();
    let e = bn
        .encode_eval(g, &mut enc, &x, Layout::ChannelsLast, &x)
        .unwrap_err();
    assert!(matches!(e, NormError::InvalidArgument(_)), "{e}");
}

#[test]
fn encode_outputs_of_the_wrong_size() {
    let g = gpu();
    let x = t(g, &[4, 8]);
    let out = LayerNormOutput {
        y: t(g, &[4, 7]),
        mean: t(g, &[4]),
        rstd: t(g, &[4]),
    };
    let mut enc = g.device().create_command_encoder(&Default::default());
    let e = LayerNorm::new(&[8])
        .encode(g, &mut enc, &x, &out)
        .unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
    let bn = BatchNorm::new(g, 8).unwrap();
    let out = BatchNormOutput {
        y: t(g, &[4, 8]),
        mean: t(g, &[7]),
        invstd: t(g, &[8]),
    };
    let e = bn
        .encode_train(g, &mut enc, &x, Layout::ChannelsLast, &out)
        .unwrap_err();
    assert!(matches!(e, NormError::Shape(_)), "{e}");
}

#[test]
fn batch_norm_bad_input_leaves_running_stats_unchanged() {
    let g = gpu();
    let x = t(g, &[4, 3, 5]);
    let mut bn = BatchNorm::new(g, 3).unwrap();
    bn.forward_train(g, &x, Layout::ChannelsFirst).unwrap();
    let (m0, v0) = (
        bn.running_mean().to_vec(g).unwrap(),
        bn.running_var().to_vec(g).unwrap(),
    );
    let cases: Vec<(BatchNorm, Tensor, Layout)> = vec![
        // one value per channel in training
        (bn.clone(), t(g, &[1, 3]), Layout::ChannelsFirst),
        (bn.clone(), t(g, &[1, 1, 3]), Layout::ChannelsLast),
        // channel count does not match the layout's channel dim
        (bn.clone(), t(g, &[4, 5, 3]), Layout::ChannelsFirst),
        (bn.clone(), t(g, &[4, 3, 5]), Layout::ChannelsLast),
        // rank < 2
        (bn.clone(), t(g, &[12]), Layout::ChannelsFirst),
        (
            bn.clone().weight(t(g, &[4])),
            x.clone(),
            Layout::ChannelsFirst,
        ),
        (
            bn.clone().bias(t(g, &[2])),
            x.clone(),
            Layout::ChannelsFirst,
        ),
        (
            bn.clone().running_stats(t(g, &[2]), t(g, &[3])),
            x.clone(),
            Layout::ChannelsFirst,
        ),
        (
            bn.clone().running_stats(t(g, &[3]), t(g, &[4])),
            x.clone(),
            Layout::ChannelsFirst,
        ),
        (bn.clone().eps(-1.0), x.clone(), Layout::ChannelsFirst),
        (bn.clone().eps(f32::NAN), x.clone(), Layout::ChannelsFirst),
        (
            bn.clone().momentum(Some(1.5)),
            x.clone(),
            Layout::ChannelsFirst,
        ),
        (
            bn.clone().momentum(Some(-0.1)),
            x.clone(),
            Layout::ChannelsFirst,
        ),
        (
            bn.clone().momentum(Some(f32::NAN)),
            x.clone(),
            Layout::ChannelsFirst,
        ),
    ];
    for (i, (mut b, xi, layout)) in cases.into_iter().enumerate() {
        let e = b.forward_train(g, &xi, layout).unwrap_err();
        assert!(
            matches!(e, NormError::Shape(_) | NormError::InvalidArgument(_)),
            "case {i}: {e}"
        );
        assert_eq!(b.num_batches_tracked(), 1, "case {i}");
    }
    assert_eq!(bn.running_mean().to_vec(g).unwrap(), m0);
    assert_eq!(bn.running_var().to_vec(g).unwrap(), v0);
    assert!(matches!(BatchNorm::new(g, 0), Err(NormError::Shape(_))));
    // Eval with one value per channel is fine (running statistics).
    assert!(bn
        .forward_eval(g, &t(g, &[1, 3]), Layout::ChannelsFirst)
        .is_ok());
}

#[test]
fn caller_buffers_of_exactly_numel_times_4_bytes_work() {
    // 15 values: 60 bytes, not a multiple of 16 (the kernels bind whole vec4s).
    let g = gpu();
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let mk = |bytes: u64| {
        g.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage,
            mapped_at_creation: false,
        })
    };
    let xh: Vec<f32> = (0..15).map(|i| (i * i % 11) as f32 - 3.0).collect();
    let xb = mk(60);
    g.queue().write_buffer(&xb, 0, bytemuck::cast_slice(&xh));
    let x = Tensor::from_buffer(g, xb, &[3, 5]).unwrap();
    let out = LayerNormOutput {
        y: Tensor::from_buffer(g, mk(60), &[3, 5]).unwrap(),
        mean: Tensor::from_buffer(g, mk(12), &[3]).unwrap(),
        rstd: Tensor::from_buffer(g, mk(12), &[3]).unwrap(),
    };
    let mut enc = g.encoder();
    LayerNorm::new(&[5]).encode(g, &mut enc, &x, &out).unwrap();
    g.submit_wait(enc).unwrap();
    let r = reference::layer_norm(&xh, 5, None, None, 1e-5);
    common::assert_close("y", &out.y.to_vec(g).unwrap(), &r.y);
    common::assert_close("mean", &out.mean.to_vec(g).unwrap(), &r.mean);
    // The same buffers through the channels family.
    let y = BatchNorm::new(g, 5)
        .unwrap()
        .forward_eval(g, &x, Layout::ChannelsLast)
        .unwrap();
    let want = reference::batch_norm_apply(&xh, 5, 1, &[0.0; 5], &[1.0; 5], None, None, 1e-5);
    common::assert_close("bn eval", &y.to_vec(g).unwrap(), &want);
    // Without COPY_SRC the padded copy cannot be made: a clear error, not a wgpu one.
    let bare = g.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 60,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let x = Tensor::from_buffer(g, bare, &[3, 5]).unwrap();
    let e = LayerNorm::new(&[5]).forward(g, &x).unwrap_err();
    assert!(matches!(e, NormError::Buffer(_)), "{e}");
}

#[test]
fn too_few_storage_buffers_per_stage_is_named() {
    // wgpu's downlevel limits allow 4 storage buffers per stage; the kernels bind up to 8.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).unwrap();
    let limits = wgpu::Limits::downlevel_defaults().using_resolution(adapter.limits());
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits,
        ..Default::default()
    }))
    .unwrap();
    let g = Gpu::from_wgpu(device, queue);
    assert_eq!(g.limits().max_storage_buffers_per_shader_stage, 4);
    let x = t(&g, &[4, 8]);
    let e = LayerNorm::new(&[8]).forward(&g, &x).unwrap_err();
    assert!(
        matches!(&e, NormError::Device(m) if m.contains("max_storage_buffers_per_shader_stage")),
        "{e}"
    );
    let mut bn = BatchNorm::new(&g, 8).unwrap();
    let e = bn.forward_train(&g, &x, Layout::ChannelsLast).unwrap_err();
    assert!(matches!(e, NormError::Device(_)), "{e}");
}
