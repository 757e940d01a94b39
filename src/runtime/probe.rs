//! The subgroup probe: one dispatch per workgroup size the policies use, checked on the host
//! against what `lanes_subgroup.wgsl` assumes.

use crate::context::oneshot;

/// The probe kernel (see `shaders/subgroup_probe.wgsl`): its own module, no preludes.
const PROBE_SOURCE: &str = include_str!("../../shaders/subgroup_probe.wgsl");

/// Runs the probe; the subgroup size the kernels may count on, or why they may not.
pub(crate) async fn run(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    wgs: &[u32],
    adapter_min: u32,
) -> Result<u32, String> {
    if wgs.is_empty() {
        return Err("no workgroup size of 64..256 holds a subgroup".into());
    }
    // A dispatch may use narrower subgroups than the adapter reports: probe once to see the
    // sizes, then again with the smallest seen, which the butterflies must then respect.
    let mut sg_min = adapter_min;
    for _ in 0..2 {
        let mut seen = u32::MAX;
        for &wg in wgs {
            let data = dispatch(device, queue, wg, sg_min).await?;
            seen = seen.min(check(wg, sg_min, &data)?);
        }
        if seen >= sg_min {
            return Ok(sg_min);
        }
        sg_min = seen;
    }
    Err(format!("subgroup sizes kept shrinking below {sg_min}"))
}

const GROUPS: u32 = 4;

async fn dispatch(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    wg: u32,
    sg_min: u32,
) -> Result<Vec<[u32; 4]>, String> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let val = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("subgroup probe"),
        source: wgpu::ShaderSource::Wgsl(probe_source().into()),
    });
    let constants = [("WG", f64::from(wg)), ("SG_MIN", f64::from(sg_min))];
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("subgroup probe"),
        layout: None,
        module: &module,
        entry_point: Some("subgroup_probe"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    let size = u64::from(wg * GROUPS) * 16;
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("subgroup probe"),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let read = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("subgroup probe readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: out.as_entire_binding(),
        }],
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(GROUPS, 1, 1);
    }
    enc.copy_buffer_to_buffer(&out, 0, &read, 0, size);
    queue.submit([enc.finish()]);
    let val_err = val.pop().await;
    let oom_err = oom.pop().await;
    if let Some(e) = val_err.or(oom_err) {
        return Err(format!("the probe kernel did not run: {e}"));
    }
    let (tx, rx) = oneshot::channel();
    read.map_async(wgpu::MapMode::Read, .., move |r| tx.send(r));
    #[cfg(not(target_arch = "wasm32"))]
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| e.to_string())?;
    rx.await.map_err(|e| e.to_string())?;
    let data = read
        .get_mapped_range(..)
        .map_err(|e| e.to_string())?
        .to_vec();
    Ok(bytemuck::pod_collect_to_vec(&data))
}

fn probe_source() -> String {
    #[cfg(target_arch = "wasm32")]
    return format!("enable subgroups;\n{PROBE_SOURCE}");
    #[cfg(not(target_arch = "wasm32"))]
    PROBE_SOURCE.to_string()
}

/// Checks one probe dispatch of workgroups of `wg` threads: every subgroup a full run of
/// consecutive thread indices with lane = index % size, sizes powers of two dividing `wg`,
/// and the butterfly over xor offsets below `sg_min` summing exactly its aligned block of
/// `sg_min` indices. Returns the smallest subgroup size seen.
pub(crate) fn check(wg: u32, sg_min: u32, data: &[[u32; 4]]) -> Result<u32, String> {
    let mut seen = u32::MAX;
    for (i, &[lane, size, sum, _]) in data.iter().enumerate() {
        let t = i as u32 % wg;
        if size == 0 || !size.is_power_of_two() || !wg.is_multiple_of(size) {
            return Err(format!(
                "thread {t} of {wg} is in a subgroup of {size} lanes"
            ));
        }
        if lane != t % size {
            return Err(format!(
                "thread {t} of {wg} is lane {lane} of a subgroup of {size}: lanes are not \
                 numbered in order"
            ));
        }
        seen = seen.min(size);
        if size >= sg_min {
            let base = t - t % sg_min;
            let want = sg_min * base + sg_min * (sg_min - 1) / 2;
            if sum != want {
                return Err(format!(
                    "the shuffle butterfly of thread {t} gave {sum}, not {want}"
                ));
            }
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::check;

    /// What full, in-order subgroups of `size` lanes report.
    fn ideal(wg: u32, size: u32, sg_min: u32) -> Vec<[u32; 4]> {
        (0..2 * wg)
            .map(|i| {
                let t = i % wg;
                let base = t - t % sg_min;
                [t % size, size, sg_min * base + sg_min * (sg_min - 1) / 2, 0]
            })
            .collect()
    }

    #[test]
    fn full_in_order_subgroups_pass() {
        assert_eq!(check(64, 8, &ideal(64, 8, 8)), Ok(8));
        assert_eq!(check(256, 32, &ideal(256, 32, 32)), Ok(32));
        assert_eq!(check(64, 4, &ideal(64, 16, 4)), Ok(16));
    }

    #[test]
    fn reversed_lanes_fail() {
        let mut d = ideal(64, 8, 8);
        for (i, v) in d.iter_mut().enumerate() {
            v[0] = 7 - (i as u32 % 8);
        }
        assert!(check(64, 8, &d).unwrap_err().contains("in order"));
    }

    #[test]
    fn partial_subgroups_fail() {
        // A workgroup of 64 split into subgroups of 48 and 16 lanes (DX12, some browsers).
        let d: Vec<[u32; 4]> = (0..64).map(|t| [t % 48, 48, 0, 0]).collect();
        assert!(check(64, 8, &d).is_err());
    }

    #[test]
    fn a_wrong_butterfly_fails() {
        let mut d = ideal(64, 8, 8);
        d[9][2] += 1;
        assert!(check(64, 8, &d).unwrap_err().contains("butterfly"));
    }

    #[test]
    fn narrower_dispatches_are_reported() {
        // The adapter said 8, this dispatch ran subgroups of 4: the caller re-probes with 4.
        assert_eq!(check(64, 8, &ideal(64, 4, 4)), Ok(4));
    }

    #[test]
    fn bindings_stay_below_2_31_bytes() {
        use crate::context::binding_budget;
        // Metal reports tens of GB.
        assert!(binding_budget(32 << 30, None) < 1 << 31);
        assert_eq!(binding_budget(128 << 20, None), 128 << 20);
        assert_eq!(binding_budget(32 << 30, Some(1 << 20)), 1 << 20);
    }
}
