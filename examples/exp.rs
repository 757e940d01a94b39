use fused_norm::*;
fn main() -> Result<()> {
    let gpu = Gpu::new()?;
    let timer = bench::GpuTimer::new(&gpu);
    let args: Vec<String> = std::env::args().collect();
    let rows: usize = args[1].parse().unwrap();
    let d: usize = args[2].parse().unwrap();
    let x = Tensor::from_slice(&gpu, &vec![0.5; rows * d], &[rows, d])?;
    let y = Tensor::empty(&gpu, &[rows, d])?;
    let w = Tensor::from_slice(&gpu, &vec![1.5; d], &[d])?;
    let out = LayerNormOutput { y: y.clone(), mean: Tensor::empty(&gpu, &[rows])?, rstd: Tensor::empty(&gpu, &[rows])? };
    let copy = timer.median_ms(9, 3, |e| baseline::encode_copy(&gpu, e, &x, &y))?;
    for v in [LnVariant::Auto, LnVariant::Rows{threads_per_row: 1}, LnVariant::Rows{threads_per_row: 8}, LnVariant::SplitRow] {
        for aff in [0, 1, 2] {
            let mut ln = LayerNorm::new(&[d]).variant(v);
            if aff >= 1 { ln = ln.weight(w.clone()); }
            if aff >= 2 { ln = ln.bias(w.clone()); }
            let ms = timer.median_ms(9, 3, |e| ln.encode(&gpu, e, &x, &out))?;
            println!("{:?} affine={aff}: {:.3} ms = {:.2}x copy", ln.plan(&gpu, &[rows, d])?.variant, ms, ms / copy);
        }
    }
    Ok(())
}
