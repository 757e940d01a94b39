//! Prints a markdown table of each kernel against a vec4 copy of the same bytes (the bandwidth
//! limit), the naive multi-pass baseline and the f64 reference, on the current adapter.
//!
//! cargo run --release --example bench -- [--quick] [--json FILE] [--variants] [--filter OP]

#[path = "../benches/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::sync::Arc;

use common::{Op, Row};
use fused_norm::LnVariant;

struct Args {
    quick: bool,
    json: Option<String>,
    variants: bool,
    filter: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        quick: false,
        json: None,
        variants: false,
        filter: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(s) = it.next() {
        match s.as_str() {
            "--quick" => a.quick = true,
            "--variants" => a.variants = true,
            "--json" => a.json = it.next(),
            "--filter" => a.filter = it.next(),
            "--bench" => {} // passed by `cargo bench`-style runners
            other => {
                eprintln!("unknown argument {other}; use [--quick] [--json FILE] [--variants] [--filter OP]");
                std::process::exit(2);
            }
        }
    }
    a
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.2}"))
}

fn main() -> Result<(), fused_norm::NormError> {
    let a = args();
    let gpu = common::gpu()?;
    let base = Arc::new(common::baseline::Baselines::new(&gpu));
    let info = gpu.adapter_info();
    let timer = common::GpuTimer::new(&gpu);
    let overhead = common::submit_overhead_ms(&gpu, 20)?;
    let (samples, iters) = if a.quick { (3, 1) } else { (7, 3) };
    println!("adapter: {}", gpu.describe());
    println!(
        "timer: {} (median of {samples} submits x {iters} repetitions); submit + wait of an empty \
         command buffer: {:.3} ms (not in the kernel times{})",
        timer.kind().name(),
        overhead,
        if timer.kind().name() == "wall" {
            ", but wall times include it once per submit"
        } else {
            ""
        }
    );
    println!();
    println!(
        "| op | shape | layout | variant | MB moved | ms | GB/s | x copy | vs naive | CPU f64 ms |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|---:|---:|");
    let mut rows: Vec<(Row, bool)> = Vec::new();
    for case in common::grid() {
        if let Some(f) = &a.filter {
            if !case.op.name().contains(f.as_str()) {
                continue;
            }
        }
        let mut variants = vec![None];
        if a.variants && matches!(case.op, Op::LayerNorm | Op::RmsNorm) {
            variants = vec![
                None,
                Some(LnVariant::Rows { threads_per_row: 1 }),
                Some(LnVariant::Rows { threads_per_row: 8 }),
                Some(LnVariant::Rows {
                    threads_per_row: 64,
                }),
                Some(LnVariant::SplitRow),
            ];
        }
        for v in variants {
            let r = common::run_case(&gpu, &base, &timer, &case, v, samples, iters)?;
            println!(
                "| {} | {:?} | {} | {} | {:.1} | {:.3} | {:.2} | {:.2} | {} | {:.1} |",
                r.case.op.name(),
                r.case.shape,
                r.case.layout_name(),
                if v.is_some() {
                    format!("{} (forced)", r.variant)
                } else {
                    r.variant.clone()
                },
                r.bytes as f64 / 1e6,
                r.median_ms,
                r.gbps(),
                r.ratio_to_copy(),
                fmt_opt(r.speedup_vs_naive()),
                r.cpu_ms
            );
            rows.push((r, v.is_some()));
        }
    }
    if let Some(path) = a.json {
        let mut s = String::new();
        let _ = write!(
            s,
            "{{\"adapter\": {{\"name\": {}, \"backend\": {}, \"device_type\": {}, \"driver\": {}, \
             \"driver_info\": {}, \"submit_overhead_ms\": {overhead}}},\n\"rows\": [\n",
            json_str(&info.name),
            json_str(&format!("{:?}", info.backend)),
            json_str(&format!("{:?}", info.device_type)),
            json_str(&info.driver),
            json_str(&info.driver_info)
        );
        for (i, (r, forced)) in rows.iter().enumerate() {
            let shape: Vec<String> = r.case.shape.iter().map(|d| d.to_string()).collect();
            let _ = writeln!(
                s,
                "{{\"op\": {}, \"shape\": [{}], \"layout\": {}, \"dtype\": \"f32\", \"variant\": {}, \
                 \"forced\": {forced}, \"bytes\": {}, \"median_ms\": {}, \"gbps\": {}, \
                 \"copy_ms\": {}, \"naive_ms\": {}, \"cpu_ms\": {}, \"ratio_to_copy\": {}, \
                 \"speedup_vs_naive\": {}, \"timer\": {}}}{}",
                json_str(r.case.op.name()),
                shape.join(", "),
                json_str(r.case.layout_name()),
                json_str(&r.variant),
                r.bytes,
                r.median_ms,
                r.gbps(),
                r.copy_ms,
                r.naive_ms.map_or("null".into(), |v| v.to_string()),
                r.cpu_ms,
                r.ratio_to_copy(),
                r.speedup_vs_naive().map_or("null".into(), |v| v.to_string()),
                json_str(r.timer.name()),
                if i + 1 < rows.len() { "," } else { "" }
            );
        }
        s.push_str("]}\n");
        std::fs::write(&path, s).map_err(|e| fused_norm::NormError::Readback(e.to_string()))?;
        println!("\nwrote {path}");
    }
    Ok(())
}
