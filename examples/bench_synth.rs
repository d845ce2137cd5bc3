//! Times `dml synth` at the quickstart size (100 classes × 40 images at 72 px; target
//! under 2 s): `cargo run --release --example bench_synth [-- OUT_DIR]`.
use std::time::Instant;

fn main() -> dml::Result<()> {
    let out = std::env::args().nth(1).unwrap_or_else(|| {
        std::env::temp_dir()
            .join("dml-bench-synth")
            .display()
            .to_string()
    });
    let t = Instant::now();
    dml::data::synth::generate(out.as_ref(), 100, 40, 72, 0)?;
    let s = t.elapsed().as_secs_f64();
    println!(
        "synth 100 classes × 40 images at 72 px: {s:.2} s ({:.0} images/s, {} threads) in {out}",
        4000.0 / s,
        rayon::current_num_threads()
    );
    Ok(())
}
