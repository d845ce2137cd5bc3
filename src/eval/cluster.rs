//! Normalised and adjusted mutual information of two labelings, computed exactly as
//! scikit-learn's `normalized_mutual_info_score` and `adjusted_mutual_info_score`
//! (arithmetic averaging, natural logarithms, the same special cases and clamps).
use std::collections::HashMap;

/// Dense ids 0..c for arbitrary labels, with the count of each id.
fn dense(labels: &[i64]) -> (Vec<usize>, Vec<usize>) {
    let mut map: HashMap<i64, usize> = HashMap::new();
    let mut counts = Vec::new();
    let ids = labels
        .iter()
        .map(|l| {
            let next = map.len();
            let id = *map.entry(*l).or_insert(next);
            if id == counts.len() {
                counts.push(0);
            }
            counts[id] += 1;
            id
        })
        .collect();
    (ids, counts)
}

fn entropy(counts: &[usize], n: f64) -> f64 {
    if counts.len() == 1 {
        return 0.0;
    }
    -counts
        .iter()
        .map(|&c| {
            let c = c as f64;
            (c / n) * (c.ln() - n.ln())
        })
        .sum::<f64>()
}

/// `ln(i!)` for `i` in `0..=n`, summed with Kahan compensation.
fn ln_factorials(n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    let (mut sum, mut comp) = (0.0f64, 0.0f64);
    out.push(0.0);
    for i in 1..=n {
        let y = (i as f64).ln() - comp;
        let t = sum + y;
        comp = (t - sum) - y;
        sum = t;
        out.push(sum);
    }
    out
}

/// Expected mutual information of two labelings with marginals `a` and `b` under the
/// permutation model (Vinh et al. 2010), sklearn's `expected_mutual_information`.
/// Rows (columns) with the same marginal contribute identically, so each distinct
/// pair of marginals is summed once and weighted by its multiplicity.
fn expected_mutual_information(a: &[usize], b: &[usize], n: usize) -> f64 {
    if a.len() == 1 || b.len() == 1 {
        return 0.0;
    }
    let multiplicity = |v: &[usize]| {
        let mut m: HashMap<usize, usize> = HashMap::new();
        for &x in v {
            *m.entry(x).or_default() += 1;
        }
        let mut m: Vec<(usize, usize)> = m.into_iter().collect();
        m.sort_unstable();
        m
    };
    let (ma, mb) = (multiplicity(a), multiplicity(b));
    let lf = ln_factorials(n);
    let nf = n as f64;
    let mut emi = 0.0;
    for &(ai, ca) in &ma {
        for &(bj, cb) in &mb {
            let start = 1.max((ai + bj).saturating_sub(n));
            let end = ai.min(bj);
            let mut s = 0.0;
            for nij in start..=end {
                let x = nij as f64;
                let term1 = x / nf;
                let term2 = (nf.ln() + x.ln()) - (ai as f64).ln() - (bj as f64).ln();
                let gln = lf[ai] + lf[bj] + lf[n - ai] + lf[n - bj]
                    - (lf[nij] + lf[n])
                    - lf[ai - nij]
                    - lf[bj - nij]
                    - lf[n + nij - ai - bj];
                s += term1 * term2 * gln.exp();
            }
            emi += (ca * cb) as f64 * s;
        }
    }
    emi
}

/// (mutual information, entropy of `a`, entropy of `b`, #classes, #clusters).
fn mutual_info(truth: &[i64], pred: &[i64]) -> (f64, Vec<usize>, Vec<usize>) {
    let (ti, tc) = dense(truth);
    let (pi, pc) = dense(pred);
    let n = truth.len() as f64;
    if tc.len() == 1 || pc.len() == 1 {
        return (0.0, tc, pc);
    }
    let mut cont: HashMap<(usize, usize), usize> = HashMap::new();
    for (&t, &p) in ti.iter().zip(&pi) {
        *cont.entry((t, p)).or_default() += 1;
    }
    let mut cells: Vec<((usize, usize), usize)> = cont.into_iter().collect();
    cells.sort_unstable();
    let mut mi = 0.0;
    for ((t, p), c) in cells {
        let c = c as f64;
        let nm = c / n;
        let log_outer = -((tc[t] as f64) * (pc[p] as f64)).ln() + n.ln() + n.ln();
        let term = nm * (c.ln() - n.ln()) + nm * log_outer;
        if term.abs() >= f64::EPSILON {
            mi += term;
        }
    }
    (mi.max(0.0), tc, pc)
}

/// Normalised mutual information (arithmetic mean of the entropies), as scikit-learn.
///
/// ```
/// let nmi = dml::eval::cluster::nmi(&[0, 0, 1, 1], &[5, 5, 7, 7]);
/// assert!((nmi - 1.0).abs() < 1e-12);
/// ```
pub fn nmi(truth: &[i64], pred: &[i64]) -> f64 {
    let (mi, tc, pc) = mutual_info(truth, pred);
    if (tc.len() == 1 && pc.len() == 1) || truth.is_empty() {
        return 1.0;
    }
    if mi == 0.0 {
        return 0.0;
    }
    let n = truth.len() as f64;
    mi / ((entropy(&tc, n) + entropy(&pc, n)) / 2.0)
}

/// Adjusted mutual information (arithmetic mean of the entropies), as scikit-learn.
///
/// ```
/// let ami = dml::eval::cluster::ami(&[0, 0, 1, 1], &[5, 5, 7, 7]);
/// assert!((ami - 1.0).abs() < 1e-12);
/// ```
pub fn ami(truth: &[i64], pred: &[i64]) -> f64 {
    let (mi, tc, pc) = mutual_info(truth, pred);
    if (tc.len() == 1 && pc.len() == 1) || truth.is_empty() {
        return 1.0;
    }
    if tc.len() == 1 || pc.len() == 1 {
        return 0.0;
    }
    let n = truth.len();
    let emi = expected_mutual_information(&tc, &pc, n);
    let nf = n as f64;
    let normalizer = (entropy(&tc, nf) + entropy(&pc, nf)) / 2.0;
    let clamp = |x: f64| {
        if x < 0.0 {
            x.min(-f64::EPSILON)
        } else {
            x.max(f64::EPSILON)
        }
    };
    clamp(mi - emi) / clamp(normalizer - emi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_derived_values() {
        // truth [0,0,1,1], pred [0,1,0,1]: independent, MI = 0 → NMI 0.
        assert_eq!(nmi(&[0, 0, 1, 1], &[0, 1, 0, 1]), 0.0);
        // truth [0,0,0,0], pred [0,1,2,3]: one class, several clusters → AMI 0, NMI 0.
        assert_eq!(ami(&[0, 0, 0, 0], &[0, 1, 2, 3]), 0.0);
        assert_eq!(nmi(&[0, 0, 0, 0], &[0, 1, 2, 3]), 0.0);
        // truth [0,0,1,1], pred [0,0,0,1]: H(T)=ln2, H(P)=-(3/4 ln 3/4 + 1/4 ln 1/4),
        // MI = 1/2 ln(2·... ): cells (0,0)=2,(1,0)=1,(1,1)=1 with a=(2,2), b=(3,1):
        // MI = 2/4 ln(2·4/(2·3)) + 1/4 ln(1·4/(2·3)) + 1/4 ln(1·4/(2·1)).
        let mi = 0.5 * (8.0f64 / 6.0).ln() + 0.25 * (4.0f64 / 6.0).ln() + 0.25 * 2.0f64.ln();
        let ht = 2.0f64.ln();
        let hp = -(0.75 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
        assert!((nmi(&[0, 0, 1, 1], &[0, 0, 0, 1]) - mi / ((ht + hp) / 2.0)).abs() < 1e-12);
    }
}
