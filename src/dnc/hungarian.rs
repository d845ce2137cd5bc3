//! Maximum-weight perfect matching of a square matrix (Kuhn–Munkres / Hungarian
//! algorithm with potentials, O(K³)).
//!
//! Divide and Conquer relabels each new clustering so that cluster `c` stays the cluster
//! that overlaps most with the previous cluster `c`; the official code
//! (CompVis/metric-learning-divide-and-conquer, `lib/clustering.py`) does this with
//! `scipy.optimize.linear_sum_assignment` on the overlap matrix, which is the oracle of
//! the tests here (tools/make_dnc_fixtures.py).

/// For each row of the weight matrix `w`, the column it is matched to, so that the
/// total `Σ_r w[r][match[r]]` is maximal and every column is used once.
///
/// `w` should be square (K×K); rows shorter than the longest row, or fewer rows than
/// columns, are padded with zero weights, and only the real rows are returned.
/// Among several optimal matchings one is returned deterministically.
///
/// ```
/// use dml::dnc::hungarian::max_weight_matching;
/// let w = vec![vec![1, 9, 0], vec![8, 7, 0], vec![0, 0, 5]];
/// assert_eq!(max_weight_matching(&w), vec![1, 0, 2]);
/// ```
pub fn max_weight_matching(w: &[Vec<i64>]) -> Vec<usize> {
    let rows = w.len();
    let n = w.iter().map(Vec::len).max().unwrap_or(0).max(rows);
    if n == 0 {
        return Vec::new();
    }
    // Minimise cost = −weight; 1-based potentials u (rows), v (columns); p[j] is the row
    // matched to column j (0 = none), way[j] the previous column on the augmenting path.
    let cost =
        |i: usize, j: usize| -> i64 { -w.get(i).and_then(|r| r.get(j)).copied().unwrap_or(0) };
    const INF: i64 = i64::MAX / 4;
    let mut u = vec![0i64; n + 1];
    let mut v = vec![0i64; n + 1];
    let mut p = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![INF; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = INF;
            let mut j1 = 0usize;
            for j in 1..=n {
                if !used[j] {
                    let cur = cost(i0 - 1, j - 1) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        // Flip the augmenting path.
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut col_of = vec![0usize; n];
    for j in 1..=n {
        if p[j] != 0 {
            col_of[p[j] - 1] = j - 1;
        }
    }
    col_of.truncate(rows);
    col_of
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/make_dnc_fixtures.py");

    fn total(w: &[Vec<i64>], m: &[usize]) -> i64 {
        m.iter().enumerate().map(|(r, &c)| w[r][c]).sum()
    }

    /// Oracle: scipy.optimize.linear_sum_assignment(maximize=True), via
    /// tools/make_dnc_fixtures.py hungarian.
    #[test]
    fn equals_scipy_linear_sum_assignment() {
        let out = Command::new(PYTHON)
            .args([SCRIPT, "hungarian"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let cases = v["cases"].as_array().unwrap();
        assert!(cases.len() > 50);
        let mut unique_checked = 0;
        for c in cases {
            let w: Vec<Vec<i64>> = serde_json::from_value(c["w"].clone()).unwrap();
            let m = max_weight_matching(&w);
            let mut cols = m.clone();
            cols.sort_unstable();
            assert_eq!(
                cols,
                (0..w.len()).collect::<Vec<_>>(),
                "not a permutation: {w:?}"
            );
            assert_eq!(total(&w, &m), c["total"].as_i64().unwrap(), "{w:?}");
            if c["unique"].as_bool() == Some(true) {
                let want: Vec<usize> = serde_json::from_value(c["assignment"].clone()).unwrap();
                assert_eq!(m, want, "{w:?}");
                unique_checked += 1;
            }
        }
        assert!(unique_checked > 10);
    }

    #[test]
    fn pads_ragged_input_and_handles_empty() {
        assert!(max_weight_matching(&[]).is_empty());
        // 2 rows × 3 columns: row 0 takes column 2 (weight 5), row 1 column 0 (weight 4);
        // the padded third row gets the leftover column 1.
        let w = vec![vec![1, 0, 5], vec![4, 3, 5]];
        assert_eq!(max_weight_matching(&w), vec![2, 0]);
    }
}
