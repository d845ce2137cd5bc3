//! The N×K sampler: batch composition, determinism, epoch length, rank slices, state.
use std::collections::{BTreeMap, BTreeSet};

use dml::data::sampler::{rank_slice, Sampler};

/// `classes` classes with sizes `sizes[c % sizes.len()]`, labels interleaved.
fn labels(sizes: &[usize], classes: usize) -> Vec<u32> {
    let mut out = Vec::new();
    for c in 0..classes {
        out.extend(std::iter::repeat_n(c as u32, sizes[c % sizes.len()]));
    }
    // Interleave so that indices are not grouped by class.
    let mut idx: Vec<usize> = (0..out.len()).collect();
    idx.sort_by_key(|&i| (i * 7919) % out.len());
    idx.into_iter().map(|i| out[i]).collect()
}

/// Checks N distinct classes × K consecutive images each and returns the classes.
fn check_batch(l: &[u32], batch: &[usize], n: usize, k: usize) -> Vec<u32> {
    assert_eq!(batch.len(), n * k);
    let classes: Vec<u32> = batch.chunks(k).map(|c| l[c[0]]).collect();
    for (chunk, &c) in batch.chunks(k).zip(&classes) {
        assert!(chunk.iter().all(|&i| l[i] == c), "class group mixes labels");
    }
    assert_eq!(
        classes.iter().collect::<BTreeSet<_>>().len(),
        n,
        "{classes:?}"
    );
    classes
}

#[test]
fn batches_are_n_distinct_classes_by_k() {
    let l = labels(&[6, 9, 13], 11);
    let s = Sampler::new(&l, 4, 3, 1).unwrap();
    for step in 0..200 {
        let b = s.global_batch(step);
        check_batch(&l, &b, 4, 3);
        // Classes with at least K images never repeat an image inside the batch.
        assert_eq!(
            b.iter().collect::<BTreeSet<_>>().len(),
            12,
            "step {step}: {b:?}"
        );
    }
}

#[test]
fn deterministic_and_seed_dependent() {
    let l = labels(&[10], 20);
    let a = Sampler::new(&l, 5, 4, 42).unwrap();
    let b = Sampler::new(&l, 5, 4, 42).unwrap();
    let c = Sampler::new(&l, 5, 4, 43).unwrap();
    let steps = [0u64, 1, 9, 10, 11, 1000];
    for t in steps {
        assert_eq!(a.global_batch(t), b.global_batch(t));
        // Also independent of call order (resume = start at step t).
        assert_eq!(a.clone().global_batch(t), a.global_batch(t));
    }
    let same = steps
        .iter()
        .filter(|&&t| a.global_batch(t) == c.global_batch(t))
        .count();
    assert_eq!(same, 0);
    // Consecutive steps differ too.
    assert_ne!(a.global_batch(0), a.global_batch(1));
}

#[test]
fn epoch_length_matches_pml() {
    // PML MPerClassSampler: batch_size = m * classes; list_size = length_before_new_iter
    // (= len(labels) by default), rounded down to a multiple of batch_size if it is
    // larger, so len // batch_size batches, and at least one batch:
    //   100 images, N·K = 4·4 = 16  → 100 // 16 = 6
    //   96 images,  N·K = 16        → 6 exactly
    //   10 images,  N·K = 16        → 0, clamped to 1
    //   5000 images, N·K = 8·4 = 32 → 156
    for (len, n, k, want) in [
        (100usize, 4, 4, 6usize),
        (96, 4, 4, 6),
        (10, 4, 4, 1),
        (5000, 8, 4, 156),
    ] {
        let l: Vec<u32> = (0..len).map(|i| (i % 10) as u32).collect();
        let s = Sampler::new(&l, n, k, 0).unwrap();
        assert_eq!(s.batches_per_epoch(), want, "len {len}");
    }
}

#[test]
fn small_classes_are_drawn_with_replacement() {
    // Every class has 2 images but K = 5: each batch group must repeat images and use
    // only the class's own two.
    let l = labels(&[2], 8);
    let s = Sampler::new(&l, 3, 5, 9).unwrap();
    let mut counts = BTreeMap::new();
    for step in 0..50 {
        let b = s.global_batch(step);
        check_batch(&l, &b, 3, 5);
        for chunk in b.chunks(5) {
            let distinct: BTreeSet<_> = chunk.iter().collect();
            assert!(distinct.len() <= 2);
            for &i in chunk {
                *counts.entry(i).or_insert(0usize) += 1;
            }
        }
    }
    // All 16 images get drawn.
    assert_eq!(counts.len(), 16);
}

#[test]
fn images_cover_the_class_before_repeating() {
    // One epoch with 4 classes of 8 images, N = 4, K = 2: 32 / 8 = 4 batches use each
    // class 4 times → 4 disjoint slots of 2 = all 8 images exactly once.
    let l = labels(&[8], 4);
    let s = Sampler::new(&l, 4, 2, 5).unwrap();
    assert_eq!(s.batches_per_epoch(), 4);
    let mut seen = Vec::new();
    for step in 0..4 {
        seen.extend(s.global_batch(step));
    }
    seen.sort();
    assert_eq!(seen, (0..32).collect::<Vec<_>>());
}

#[test]
fn errors_name_the_key() {
    let l = labels(&[4], 3);
    let e = Sampler::new(&l, 4, 2, 0).unwrap_err().to_string();
    assert!(
        e.contains("sampler.classes_per_batch") && e.contains('3'),
        "{e}"
    );
    let e = Sampler::new(&l, 0, 2, 0).unwrap_err().to_string();
    assert!(e.contains("sampler.classes_per_batch"), "{e}");
}

#[test]
fn rank_slices_concatenate_to_the_global_batch() {
    let l = labels(&[7], 12);
    let s = Sampler::new(&l, 6, 4, 3).unwrap();
    let g = s.global_batch(17);
    for world in [1, 2, 3, 4, 6, 8] {
        let mut joined = Vec::new();
        for r in 0..world {
            let range = rank_slice(24, r, world).unwrap();
            assert_eq!(range.len(), 24 / world);
            joined.extend_from_slice(&g[range]);
        }
        assert_eq!(joined, g, "world {world}");
    }
    assert_eq!(rank_slice(24, 2, 4).unwrap(), 12..18);
}

#[test]
fn indivisible_batch_error_explains_the_fix() {
    let e = rank_slice(10, 0, 4).unwrap_err().to_string();
    for part in [
        "sampler.classes_per_batch",
        "sampler.samples_per_class",
        "10",
        "world size 4",
        "8 or 12",
    ] {
        assert!(e.contains(part), "missing {part:?} in {e}");
    }
    assert!(rank_slice(8, 4, 4).is_err());
}

#[test]
fn state_round_trips_and_detects_mismatch() {
    let l = labels(&[5], 10);
    let s = Sampler::new(&l, 4, 2, 11).unwrap();
    let st = s.state(123);
    let json = serde_json::to_string(&st).unwrap();
    let back: dml::data::sampler::SamplerState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, st);
    assert_eq!(back.step, 123);
    s.check_state(&back).unwrap();
    let other_seed = Sampler::new(&l, 4, 2, 12).unwrap();
    let e = other_seed.check_state(&back).unwrap_err().to_string();
    assert!(e.contains("seed"), "{e}");
    let other_k = Sampler::new(&l, 4, 3, 11).unwrap();
    let e = other_k.check_state(&back).unwrap_err().to_string();
    assert!(e.contains("sampler.samples_per_class"), "{e}");
    // Same size and class count, one label moved to another class.
    let mut l2 = l.clone();
    l2[0] = (l2[0] + 1) % 10;
    let e = Sampler::new(&l2, 4, 2, 11)
        .unwrap()
        .check_state(&back)
        .unwrap_err()
        .to_string();
    assert!(e.contains("labels"), "{e}");
}
