//! Pixel facts of the plot module. Every expected position is hand-derived from the
//! documented layout: a W×H chart's plot area spans columns MARGIN_LEFT (80) ..=
//! W − MARGIN_RIGHT (20) and rows MARGIN_TOP (30) ..= H − MARGIN_BOTTOM (45); x maps its
//! data range exactly, y its range widened by 5% of the span at each end.
use dml::plot::chart::{BACKGROUND, GRID, INK, PALETTE};
use dml::plot::grid::{cell_origin, grid_size, GREEN, LETTERBOX, QUERY, RED};
use dml::plot::{
    plot_lr_range, plot_run, render_chart, render_grid, retrieval_grid, ChartSpec, Frame, Series,
};
use dml::Error;
use image::RgbImage;

fn spec(series: Vec<Series>, log_x: bool) -> ChartSpec {
    ChartSpec {
        title: "t".into(),
        x_label: "x".into(),
        y_label: "y".into(),
        log_x,
        log_y: false,
        series,
    }
}

fn series(name: &str, points: &[(f64, f64)]) -> Series {
    Series {
        name: name.into(),
        points: points.to_vec(),
    }
}

fn px(img: &RgbImage, x: u32, y: u32) -> [u8; 3] {
    img.get_pixel(x, y).0
}

/// Whether column x holds colour c somewhere in rows y−tol ..= y+tol.
fn near(img: &RgbImage, x: u32, y: f64, tol: i64, c: [u8; 3]) -> bool {
    (y.round() as i64 - tol..=y.round() as i64 + tol)
        .any(|yy| yy >= 0 && px(img, x, yy as u32) == c)
}

#[test]
fn line_follows_its_data_and_nothing_else_has_its_colour() {
    // 400×300: plot area columns 80..=380, rows 30..=255. Points (0,10) → (10,0):
    // x range 0..10 → column 80 + 30u; y range −0.5..10.5 → row 255 − (v + 0.5)/11·225.
    let img = render_chart(
        &spec(vec![series("down", &[(0.0, 10.0), (10.0, 0.0)])], false),
        400,
        300,
    )
    .unwrap();
    assert_eq!(img.dimensions(), (400, 300));
    let c = PALETTE[0];
    let expected = |x: u32| {
        let u = (f64::from(x) - 80.0) / 30.0;
        255.0 - (10.0 - u + 0.5) / 11.0 * 225.0
    };
    for x in 80..=380 {
        assert!(
            near(&img, x, expected(x), 2, c),
            "column {x}: line not near row {}",
            expected(x)
        );
    }
    // Legend: one entry "down" (4 glyphs = 32 px): box width 6+16+6+32+6 = 66 at
    // x = 380 − 6 − 66 = 308, y = 36; swatch 16×8 at (314, 40).
    for y in 40..48 {
        for x in 314..330 {
            assert_eq!(px(&img, x, y), c, "swatch pixel ({x},{y})");
        }
    }
    let in_swatch = |x: u32, y: u32| (314..330).contains(&x) && (40..48).contains(&y);
    for (x, y, p) in img.enumerate_pixels() {
        if p.0 == c && !in_swatch(x, y) {
            assert!(
                (78..=382).contains(&x),
                "series colour at ({x},{y}) outside the plot"
            );
            assert!(
                (f64::from(y) - expected(x.clamp(80, 380))).abs() <= 4.0,
                "stray series pixel ({x},{y})"
            );
        }
    }
    // Far from the line (column 120 has the line near row 68): background or grid.
    let p = px(&img, 120, 230);
    assert!(p == BACKGROUND || p == GRID, "{p:?}");
    // Axes: the left axis column and the bottom axis row are ink.
    assert_eq!(px(&img, 80, 100), INK);
    assert_eq!(px(&img, 200, 255), INK);
}

#[test]
fn log_axis_spaces_decades_equally() {
    // x = 1, 10, 100, 1000 on a log axis: log10 range 0..3 over columns 80..=380, so the
    // decades sit at columns 80, 180, 280, 380, with tick marks in rows 256..=259.
    let pts = [(1.0, 0.0), (10.0, 1.0), (100.0, 2.0), (1000.0, 3.0)];
    let s = spec(vec![series("log", &pts)], true);
    let f = Frame::new(&s, &[], 400, 300).unwrap();
    for (k, x) in [1.0, 10.0, 100.0, 1000.0].iter().enumerate() {
        assert!((f.px(*x).unwrap() - (80.0 + 100.0 * k as f64)).abs() < 1e-9);
    }
    assert_eq!(f.px(-1.0), None);
    let img = render_chart(&s, 400, 300).unwrap();
    for x in [80, 180, 280, 380] {
        assert_eq!(px(&img, x, 257), INK, "tick at column {x}");
    }
    assert_eq!(px(&img, 230, 257), BACKGROUND, "no tick between decades");
    // y = log10(x) is a straight line on this axis: at column 230 (x = 10^1.5) the row is
    // 255 − (1.5 + 0.15)/3.3·225 = 142.5.
    assert!(near(&img, 230, 142.5, 2, PALETTE[0]));
}

#[test]
fn series_get_distinct_colours_and_legend_swatches() {
    // Names "a", "b" (8 px): legend box width 6+16+6+8+6 = 42 at x = 380 − 6 − 42 = 332;
    // swatches at (338, 40) and (338, 52).
    let s = spec(
        vec![
            series("a", &[(0.0, 0.2), (1.0, 0.0)]),
            series("b", &[(0.0, 0.1), (1.0, 0.0)]),
        ],
        false,
    );
    let img = render_chart(&s, 400, 300).unwrap();
    assert_ne!(PALETTE[0], PALETTE[1]);
    assert_eq!(px(&img, 338, 40), PALETTE[0]);
    assert_eq!(px(&img, 353, 47), PALETTE[0]);
    assert_eq!(px(&img, 338, 52), PALETTE[1]);
    assert_eq!(px(&img, 353, 59), PALETTE[1]);
    // Legend text is ink, right of the swatches.
    assert!((360..368).any(|x| (40..48).any(|y| px(&img, x, y) == INK)));
    // Both lines appear in the plot area at column 100.
    let col: Vec<[u8; 3]> = (30..256).map(|y| px(&img, 100, y)).collect();
    assert!(col.contains(&PALETTE[0]) && col.contains(&PALETTE[1]));
}

#[test]
fn legend_moves_off_the_data() {
    // An ascending line ends in the top-right corner, so the legend ("up": box width
    // 6+16+6+16+6 = 50) goes to the top-left one: box at x = 80 + 7 = 87, y = 36, swatch
    // at (93, 40); at the top right (swatch would be at 380−6−50+6 = 330) it is absent.
    let s = spec(vec![series("up", &[(0.0, 0.0), (10.0, 10.0)])], false);
    let img = render_chart(&s, 400, 300).unwrap();
    assert_eq!(px(&img, 93, 40), PALETTE[0]);
    assert_eq!(px(&img, 108, 47), PALETTE[0]);
    assert_ne!(px(&img, 330, 44), PALETTE[0]);
}

#[test]
fn non_finite_points_break_the_line_and_empty_charts_are_errors() {
    // Points x = 0, 1 (NaN), 2, 3 over columns 80..=380 → x = 1 at column 180: no
    // segment passes there, and the NaN point has no dot.
    let s = spec(
        vec![series(
            "gap",
            &[(0.0, 1.0), (1.0, f64::NAN), (2.0, 2.0), (3.0, 3.0)],
        )],
        false,
    );
    let img = render_chart(&s, 400, 300).unwrap();
    assert!((30..256).all(|y| px(&img, 180, y) != PALETTE[0]));
    assert!(
        (30..256).any(|y| px(&img, 330, y) == PALETTE[0]),
        "segment 2 → 3 drawn"
    );

    let empty = render_chart(&spec(vec![], false), 400, 300);
    assert!(matches!(empty, Err(Error::Input(_))), "{empty:?}");
    let all_nan = render_chart(
        &spec(
            vec![series("n", &[(f64::NAN, 1.0), (1.0, f64::INFINITY)])],
            false,
        ),
        400,
        300,
    );
    assert!(matches!(all_nan, Err(Error::Input(_))), "{all_nan:?}");
    let tiny = render_chart(&spec(vec![series("a", &[(0.0, 0.0)])], false), 50, 50);
    assert!(matches!(tiny, Err(Error::Input(_))));
}

fn write_metrics(dir: &std::path::Path, lines: &[String]) {
    std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn plot_run_writes_each_chart_at_its_size() {
    let run = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = (1..=40)
        .map(|s| {
            format!(
                r#"{{"step":{s},"loss":{},"lr":{},"active":{},"mined":{},"pos_sim_mean":0.8,"neg_sim_mean":0.2,"contributing_fraction":0.5}}"#,
                1.0 / f64::from(s),
                1e-4 * f64::from(s % 10 + 1),
                100 - s,
                200 - s
            )
        })
        .collect();
    for s in [10, 20, 30, 40] {
        lines.push(format!(
            r#"{{"step":{s},"val_precision_at_1":{},"val_mean_average_precision_at_r":{}}}"#,
            0.3 + f64::from(s) / 100.0,
            0.1 + f64::from(s) / 200.0
        ));
    }
    lines.push(r#"{"step":41,"loss":null,"lr":1e-4}"#.into());
    write_metrics(run.path(), &lines);
    let out = plot_run(run.path()).unwrap();
    let names: Vec<String> = out
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into())
        .collect();
    assert_eq!(
        names,
        ["loss.png", "lr.png", "mining.png", "validation.png"]
    );
    let dims = |n: &str| {
        image::open(run.path().join("plots").join(n))
            .unwrap()
            .to_rgb8()
            .dimensions()
    };
    assert_eq!(dims("loss.png"), (800, 500));
    assert_eq!(dims("lr.png"), (800, 500));
    assert_eq!(dims("mining.png"), (800, 800), "two 400-px panels");
    assert_eq!(dims("validation.png"), (800, 500));

    // Only loss and lr, plus one mining count: two charts and a one-panel mining.png.
    let run2 = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (1..=5)
        .map(|s| format!(r#"{{"step":{s},"loss":{s},"lr":0.001,"mined":{s}}}"#))
        .collect();
    write_metrics(run2.path(), &lines);
    let out = plot_run(run2.path()).unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(
        image::open(&out[2]).unwrap().to_rgb8().dimensions(),
        (800, 500)
    );
}

#[test]
fn plot_run_names_the_file_and_line_of_bad_input() {
    let run = tempfile::tempdir().unwrap();
    let missing = plot_run(run.path()).unwrap_err().to_string();
    assert!(missing.contains("metrics.jsonl"), "{missing}");

    let lines = [
        r#"{"step":1,"loss":1.0,"lr":0.1}"#.to_string(),
        String::new(),
        r#"{"step":3,"loss":0.5,"lr":0.1"#.to_string(),
    ];
    write_metrics(run.path(), &lines);
    let e = plot_run(run.path()).unwrap_err().to_string();
    assert!(e.contains("metrics.jsonl") && e.contains("line 3"), "{e}");

    write_metrics(
        run.path(),
        &[
            r#"{"step":1,"loss":1.0,"lr":0.1}"#.into(),
            r#"{"loss":1.0}"#.into(),
        ],
    );
    let e = plot_run(run.path()).unwrap_err().to_string();
    assert!(e.contains("line 2") && e.contains("step"), "{e}");

    write_metrics(run.path(), &[r#"{"step":1,"loss":"high","lr":0.1}"#.into()]);
    let e = plot_run(run.path()).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("loss"), "{e}");
}

#[test]
fn lr_range_picture_marks_the_suggestions() {
    // lr = 1e-6 · 10^(i/10), i = 0..=60 → log10 range −6..0 over columns 80..=780
    // (800×500): 1e-4 at 80 + 2/6·700 = 313.3 → 313, 1e-2 at 546.7 → 547. Markers use
    // the colours after the two series: PALETTE[2], PALETTE[3], PALETTE[4]; dashes 6 on, 4 off over
    // rows 30..=454, so about 60% of 425 rows.
    let pts: Vec<(f64, f64)> = (0..=60)
        .map(|i| {
            (
                1e-6 * 10f64.powf(f64::from(i) / 10.0),
                2.0 - f64::from(i % 30) / 30.0,
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lr_find.png");
    plot_lr_range(&pts, (1e-4, 1e-2), Some(3e-2), &path).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (800, 500));
    let count = |x: u32, c: [u8; 3]| (30..455).filter(|&y| px(&img, x, y) == c).count();
    assert!(count(313, PALETTE[2]) >= 170, "{}", count(313, PALETTE[2]));
    assert!(count(547, PALETTE[3]) >= 170, "{}", count(547, PALETTE[3]));
    // The "collapsed" marker at 3e-2: 80 + (6 − 1.5229)/6 · 700 = 602.3 → 602.
    assert!(count(602, PALETTE[4]) >= 170, "{}", count(602, PALETTE[4]));
    assert!(count(430, PALETTE[2]) < 10 && count(430, PALETTE[3]) < 10);
}

/// Image i: solid colour [20i + 10, 100, 200]; even i are 8 high × 16 wide, odd 16 × 16.
fn solid(i: usize) -> (Vec<u8>, usize, usize) {
    let (h, w) = if i % 2 == 0 { (8, 16) } else { (16, 16) };
    let c = [20 * i as u8 + 10, 100, 200];
    (c.iter().copied().cycle().take(h * w * 3).collect(), h, w)
}

#[test]
fn retrieval_grid_frames_and_places_tiles() {
    // tile 16, border 3 → cell 22; pad 4, gap 12: column x = 4 + 26·col (+12 for col ≥ 1),
    // row y = 4 + 26·row. Three retrievals at most → width 4+78+12 + 22 + 4 = 120;
    // two rows → height 4 + 2·26 = 56.
    assert_eq!(cell_origin(0, 1, 16), (42, 4));
    assert_eq!(grid_size(2, 3, 16), (120, 56));
    let mut calls = Vec::new();
    let mut image = |i: usize| {
        calls.push(i);
        Ok(solid(i))
    };
    let neighbours = vec![vec![2, 3, 4], vec![5, 6]];
    let correct = vec![vec![true, false, true], vec![false, true]];
    let img = render_grid(&[0, 1], &neighbours, &correct, 16, &mut image).unwrap();
    assert_eq!(img.dimensions(), (120, 56));
    assert_eq!(calls, [0, 2, 3, 4, 1, 5, 6]);
    // Row 0, col 1 (image 2, correct): frame columns 42..=44 and rows 4..=6 green.
    for (x, y) in [(42, 4), (44, 6), (63, 25), (42, 25), (63, 4)] {
        assert_eq!(px(&img, x, y), GREEN, "({x},{y})");
    }
    // Image 2 is 8×16 → 8 rows × 16 columns, letterboxed 4 rows above and below:
    // tile rows 0..4 black, 4..12 the image, from (45, 7).
    assert_eq!(px(&img, 45, 7), LETTERBOX);
    assert_eq!(px(&img, 45, 11), [50, 100, 200]);
    assert_eq!(px(&img, 60, 18), [50, 100, 200]);
    assert_eq!(px(&img, 60, 19), LETTERBOX);
    // Row 0, col 2 (image 3, wrong) at (68, 4): red frame; 16×16 fills the tile.
    assert_eq!(px(&img, 68, 4), RED);
    assert_eq!(px(&img, 70, 25), RED);
    assert_eq!(px(&img, 71, 7), [70, 100, 200]);
    // Row 1 (y = 30): query frame, then image 5 wrong (red), image 6 right (green), no 3rd.
    assert_eq!(px(&img, 4, 30), QUERY);
    assert_eq!(px(&img, 7, 33), [30, 100, 200]);
    assert_eq!(px(&img, 42, 30), RED);
    assert_eq!(px(&img, 68, 30), GREEN);
    assert_eq!(px(&img, 94, 30), [255, 255, 255]);
    assert_eq!(px(&img, 100, 40), [255, 255, 255]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/grid.png");
    retrieval_grid(
        &[0, 1],
        &neighbours,
        &correct,
        16,
        &mut |i| Ok(solid(i)),
        &path,
    )
    .unwrap();
    assert_eq!(image::open(&path).unwrap().to_rgb8(), img);
}

#[test]
fn retrieval_grid_rejects_bad_input() {
    let mut ok = |i: usize| Ok(solid(i));
    let r = render_grid(&[0], &[vec![1, 2]], &[vec![true]], 16, &mut ok);
    assert!(matches!(r, Err(Error::Input(_))), "{r:?}");
    let r = render_grid(&[0, 1], &[vec![1]], &[vec![true]], 16, &mut ok);
    assert!(matches!(r, Err(Error::Input(_))), "{r:?}");
    let mut short = |_i: usize| Ok((vec![0u8; 10], 2, 2));
    let r = render_grid(&[0], &[vec![]], &[vec![]], 16, &mut short);
    assert!(
        matches!(r, Err(Error::Input(ref m)) if m.contains("10 bytes")),
        "{r:?}"
    );
    let mut failing = |_i: usize| Err(Error::Input("no such image".into()));
    let r = render_grid(&[0], &[vec![]], &[vec![]], 16, &mut failing);
    assert!(
        matches!(r, Err(Error::Input(ref m)) if m == "no such image"),
        "{r:?}"
    );
}
