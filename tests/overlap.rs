//! The gradient all-reduce overlapped with the backward (`comm::GradReducer`, a
//! communication thread started by post-accumulate-grad hooks) against the same buckets
//! reduced after the backward on the training thread (`dist.overlap = false`): the
//! trained models are bit for bit the same, on 2 and 3 ranks, in f64 and f32, with many
//! small buckets (`dist.bucket_mb = 0.05`, dozens per step) and with the default size.
//! W-invariance against one process (which needs no reduction) is tested by
//! `world_size_invariance` in tests/distributed.rs, which runs with overlap on.
mod common;

use common::{mpirun, ok, read_weights, small_config, synth};

#[test]
fn overlapped_reduction_equals_the_reduction_after_the_backward_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    synth(&d, 8, 6, 36);
    for (np, precision, bucket) in [(2, "f64", "0.05"), (3, "f64", "0"), (2, "f32", "0.05")] {
        let cfg = small_config(tmp.path(), &d, &format!("precision = \"{precision}\""));
        let mut models = Vec::new();
        for overlap in [true, false] {
            let run = tmp
                .path()
                .join(format!("w{np}-{precision}-{bucket}-{overlap}"));
            let sets = [
                "sampler.samples_per_class=3".to_string(),
                "train.steps=4".into(),
                "train.checkpoint_every=0".into(),
                format!("dist.overlap={overlap}"),
                format!("dist.bucket_mb={bucket}"),
            ];
            let mut c = mpirun(np);
            c.args(["train", "--config"])
                .arg(&cfg)
                .arg("--out")
                .arg(&run);
            for s in &sets {
                c.args(["--set", s]);
            }
            let out = ok(c);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                stderr.contains("all-reduced during the backward"),
                overlap,
                "rank 0 says whether the reduction overlaps:\n{stderr}"
            );
            let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
            assert_eq!(metrics.lines().count(), 4);
            for line in metrics.lines() {
                let m: serde_json::Value = serde_json::from_str(line).unwrap();
                let (wait, comm) = (m["comm_wait_s"].as_f64(), m["comm_s"].as_f64());
                assert!(
                    matches!((wait, comm), (Some(w), Some(c)) if w >= 0.0 && w <= c),
                    "needs 0 <= comm_wait_s <= comm_s: {line}"
                );
            }
            models.push(read_weights(&run.join("model.safetensors")));
        }
        let (a, b) = (&models[0], &models[1]);
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(b) {
            assert_eq!(na, nb);
            assert!(
                ta.equal(tb),
                "{np} ranks, {precision}, bucket {bucket} MiB: `{na}` differs with and without overlap"
            );
        }
    }
}
