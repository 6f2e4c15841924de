//! The statistics of results: is the split what the weights say (sample
//! ratio mismatch), and does a variant convert differently from control.

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms: ~15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 − x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let series = COEFFICIENTS[1..]
        .iter()
        .enumerate()
        .fold(COEFFICIENTS[0], |sum, (i, c)| {
            sum + c / (x + i as f64 + 1.0)
        });
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// Q(a, x) = Γ(a, x) / Γ(a), the regularized upper incomplete gamma:
/// a series for P below a + 1, a continued fraction (modified Lentz) above.
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let prefix = (-x + a * x.ln() - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut term, mut sum, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        return (1.0 - sum * prefix).clamp(0.0, 1.0);
    }
    let tiny = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / tiny;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..1000 {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < tiny {
            d = tiny;
        }
        c = b + an / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let delta = d * c;
        h *= delta;
        if (delta - 1.0).abs() < 1e-15 {
            break;
        }
    }
    (h * prefix).clamp(0.0, 1.0)
}

/// P(χ² ≥ `statistic`) with `degrees` degrees of freedom.
pub fn chi_square_p_value(statistic: f64, degrees: u32) -> f64 {
    gamma_q(f64::from(degrees) / 2.0, statistic / 2.0)
}

/// Two-sided P(|Z| ≥ |z|) for a standard normal Z: erfc(|z|/√2) = Q(½, z²/2).
pub fn normal_two_sided_p_value(z: f64) -> f64 {
    gamma_q(0.5, z * z / 2.0)
}

/// Sample-ratio mismatch: the chi-square test of the exposures per variant
/// against the weights (percent). None when nothing can be said (no
/// exposures, fewer than two variants with weight). Exposures in a variant
/// of weight 0 are a certain mismatch: 0.
pub fn srm_p_value(exposures: &[u64], weights: &[u32]) -> Option<f64> {
    if exposures.len() != weights.len() {
        return None;
    }
    let weighted: Vec<(u64, f64)> = exposures
        .iter()
        .zip(weights)
        .filter(|(_, w)| **w > 0)
        .map(|(n, w)| (*n, f64::from(*w)))
        .collect();
    if exposures
        .iter()
        .zip(weights)
        .any(|(n, w)| *w == 0 && *n > 0)
    {
        return Some(0.0);
    }
    let total: u64 = weighted.iter().map(|(n, _)| n).sum();
    if weighted.len() < 2 || total == 0 {
        return None;
    }
    let weight_sum: f64 = weighted.iter().map(|(_, w)| w).sum();
    let statistic: f64 = weighted
        .iter()
        .map(|(observed, weight)| {
            let expected = total as f64 * weight / weight_sum;
            (*observed as f64 - expected).powi(2) / expected
        })
        .sum();
    Some(chi_square_p_value(statistic, weighted.len() as u32 - 1))
}

/// The two-proportion z-test (pooled) of `b` against `a`, each as
/// (conversions, exposures): the two-sided p-value of their difference.
/// None when a side has no exposures; 1 when neither side varies.
pub fn two_proportion_p_value(a: (u64, u64), b: (u64, u64)) -> Option<f64> {
    let ((xa, na), (xb, nb)) = (a, b);
    if na == 0 || nb == 0 {
        return None;
    }
    let (xa, na, xb, nb) = (xa as f64, na as f64, xb as f64, nb as f64);
    let pooled = (xa + xb) / (na + nb);
    let error = (pooled * (1.0 - pooled) * (1.0 / na + 1.0 / nb)).sqrt();
    if error == 0.0 || !error.is_finite() {
        return Some(1.0);
    }
    Some(normal_two_sided_p_value((xb / nb - xa / na) / error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.max(1e-12).max(1.0)
    }

    #[test]
    fn chi_square_and_normal_tails_match_known_values() {
        // df 1: P(χ² ≥ 4) = erfc(√2); df 2: P(χ² ≥ x) = e^(−x/2).
        assert!(close(chi_square_p_value(4.0, 1), 0.045_500_263_896_358_396));
        assert!(close(
            chi_square_p_value(8.333_333_333_333_334, 2),
            0.015_503_853_599_009_314
        ));
        assert!(close(normal_two_sided_p_value(1.959_963_984_540_054), 0.05));
        assert!(close(chi_square_p_value(0.0, 3), 1.0));
        // A large statistic takes the continued-fraction branch.
        assert!(close(chi_square_p_value(30.0, 2), (-15.0f64).exp()));
    }

    #[test]
    fn srm_against_hand_computed_figures() {
        assert!(close(
            srm_p_value(&[5000, 5000], &[50, 50]).expect("an SRM p-value"),
            1.0
        ));
        // χ² = 2 · 100² / 5000 = 4, df 1.
        assert!(close(
            srm_p_value(&[5100, 4900], &[50, 50]).expect("an SRM p-value"),
            0.045_500_263_896_358_396
        ));
        // χ² = 100²/3000 + 100²/2000 = 8.33…, df 2.
        assert!(close(
            srm_p_value(&[5000, 3100, 1900], &[50, 30, 20]).expect("an SRM p-value"),
            0.015_503_853_599_009_314
        ));
        assert_eq!(srm_p_value(&[0, 0], &[50, 50]), None);
        assert_eq!(srm_p_value(&[10, 1], &[100, 0]), Some(0.0));
    }

    #[test]
    fn z_test_against_hand_computed_figures() {
        // 10 % vs 13 % of 1000: pooled 0.115, z = 2.1027…
        let p = two_proportion_p_value((100, 1000), (130, 1000)).expect("a p-value");
        assert!(close(p, 0.035_488_450_466_474_73), "{p}");
        assert_eq!(two_proportion_p_value((0, 10), (0, 10)), Some(1.0));
        assert_eq!(two_proportion_p_value((1, 0), (1, 10)), None);
    }
}
