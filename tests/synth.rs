//! `dml synth`: deterministic, class-disjoint, the requested sizes, and learnable but not
//! trivially so.
use std::collections::HashSet;

use dml::data::format::Dataset;
use dml::data::synth::generate;
use dml::Error;

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    generate(&a, 6, 3, 24, 11).unwrap();
    generate(&b, 6, 3, 24, 11).unwrap();
    generate(&c, 6, 3, 24, 12).unwrap();
    for split in ["train.dmlds", "test.dmlds"] {
        let (x, y, z) = (
            std::fs::read(a.join(split)).unwrap(),
            std::fs::read(b.join(split)).unwrap(),
            std::fs::read(c.join(split)).unwrap(),
        );
        assert_eq!(x, y, "{split} differs between two runs with seed 11");
        assert_ne!(x, z, "{split} is the same for seeds 11 and 12");
    }
}

#[test]
fn halves_are_class_disjoint_with_requested_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    // 7 classes: the first 4 (half rounded up) train, the last 3 test.
    generate(tmp.path(), 7, 3, 20, 0).unwrap();
    let train = Dataset::open(&tmp.path().join("train.dmlds")).unwrap();
    let test = Dataset::open(&tmp.path().join("test.dmlds")).unwrap();
    assert_eq!((train.len(), train.num_classes()), (12, 4));
    assert_eq!((test.len(), test.num_classes()), (9, 3));
    let names = |d: &Dataset| -> HashSet<String> { d.meta().class_names.iter().cloned().collect() };
    assert!(names(&train).is_disjoint(&names(&test)));
    assert_eq!(test.meta().class_names[0], "class_0004");
    for d in [&train, &test] {
        d.verify().unwrap();
        for i in 0..d.len() {
            assert_eq!(d.dims(i), (20, 20));
        }
        // Every class has exactly 3 images.
        for c in 0..d.num_classes() as u32 {
            assert_eq!(d.labels().iter().filter(|&&l| l == c).count(), 3);
        }
    }
}

#[test]
fn bad_arguments_are_input_errors() {
    let tmp = tempfile::tempdir().unwrap();
    for (classes, per_class, size, needle) in [
        (1, 4, 32, "--classes"),
        (4, 1, 32, "--per-class"),
        (4, 4, 15, "--size"),
    ] {
        match generate(tmp.path(), classes, per_class, size, 0) {
            Err(Error::Input(msg)) => assert!(msg.contains(needle), "{msg}"),
            other => panic!("expected an input error for {needle}, got {other:?}"),
        }
    }
    assert!(!tmp.path().join("train.dmlds").exists());
}

/// Leave-one-out 1-nearest-neighbour precision@1 with squared Euclidean distance on
/// the raw pixels of every image of `ds`.
fn raw_pixel_p_at_1(ds: &Dataset) -> f64 {
    let x: Vec<Vec<f32>> = (0..ds.len())
        .map(|i| ds.image(i).pixels.iter().map(|&p| p as f32).collect())
        .collect();
    let mut hits = 0;
    for i in 0..x.len() {
        let nn = (0..x.len())
            .filter(|&j| j != i)
            .map(|j| {
                let d: f32 = x[i].iter().zip(&x[j]).map(|(a, b)| (a - b) * (a - b)).sum();
                (d, j)
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, j)| j)
            .unwrap();
        hits += (ds.label(nn) == ds.label(i)) as usize;
    }
    hits as f64 / x.len() as f64
}

#[test]
fn raw_pixels_retrieve_above_chance_but_far_from_perfectly() {
    let tmp = tempfile::tempdir().unwrap();
    // Test split: 12 classes × 12 images at 32 px. A random neighbour has the query's
    // class with probability 11/143 = 0.077 (chance). tools/synth_baselines.py shows
    // that a small CNN does much better on the same kind of data.
    generate(tmp.path(), 24, 12, 32, 5).unwrap();
    let test = Dataset::open(&tmp.path().join("test.dmlds")).unwrap();
    assert_eq!(test.len(), 144);
    let p = raw_pixel_p_at_1(&test);
    let chance = 11.0 / 143.0;
    eprintln!("raw-pixel 1-NN P@1 {p:.3} (chance {chance:.3})");
    assert!(
        p > 1.5 * chance,
        "raw-pixel 1-NN P@1 {p:.3} is at chance ({chance:.3})"
    );
    assert!(
        p < 0.6,
        "raw-pixel 1-NN P@1 {p:.3}: the classes are trivially separable"
    );
}
