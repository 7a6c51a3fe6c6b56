//! A job of several models, compared as its partitions arrive: each model's counts, and for
//! every pair of models how often they agree, the matrix of one's class against the other's,
//! and, with labels, which one is right where only one is (McNemar's test). Counts only: the
//! same whatever order the partitions come in, and sized by the classes, not the images.

use fleet_protocol::job::Plan;
use fleet_protocol::message::{Score, Scored};
use fleet_protocol::summary::{Comparison, Disagreement, ModelFigures, ratio};

use super::rows::label_and_best;
use super::{Confusion, confused};

/// Disagreements listed in the summary, per pair.
const SUMMARY_DISAGREEMENTS: usize = 10;

/// The z of a two-sided 95% interval.
const Z_95: f64 = 1.959_963_984_540_054;

/// One model's counts.
#[derive(Debug, Clone)]
struct Counts {
    scored: u64,
    unreadable: u64,
    /// Labelled images it scored, by (true class, its class).
    confusion: Confusion,
    inference_ms: f64,
}

/// Two models' counts over the images both scored.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The two models' places in the job's order, `a` first.
    pub a: usize,
    /// The second model's place.
    pub b: usize,
    images: u64,
    agree: u64,
    /// Summed over the images: the share of the k best classes the two have in common.
    overlap: f64,
    /// Images by (a's class, b's class).
    pub matrix: Confusion,
    labelled: u64,
    only_a_right: u64,
    only_b_right: u64,
}

/// The counts of a job of several models.
#[derive(Debug, Clone)]
pub struct Models {
    /// Classes compared per image (the job's top-k, or every class of a model with fewer).
    top_k: usize,
    classes: usize,
    counts: Vec<Counts>,
    /// Every pair, in the order (0, 1), (0, 2), ..., (1, 2), ...
    pub pairs: Vec<Pair>,
}

impl Models {
    /// Nothing counted yet, for the job of `plan`; `None` for a job of one model, or of
    /// models with no classes (nothing to compare but their vectors).
    pub fn new(plan: &Plan) -> Option<Self> {
        let n = plan.models.len();
        if n < 2 || !plan.has_classes() {
            return None;
        }
        let classes = plan.classes.len();
        let pairs = (0..n)
            .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
            .map(|(a, b)| Pair {
                a,
                b,
                images: 0,
                agree: 0,
                overlap: 0.0,
                matrix: Confusion::new(classes),
                labelled: 0,
                only_a_right: 0,
                only_b_right: 0,
            })
            .collect();
        Some(Self {
            top_k: plan.columns_top_k(),
            classes,
            counts: (0..n)
                .map(|_| Counts {
                    scored: 0,
                    unreadable: 0,
                    confusion: Confusion::new(classes),
                    inference_ms: 0.0,
                })
                .collect(),
            pairs,
        })
    }

    /// Counts partition `p`; each partition must be counted once.
    pub fn add(&mut self, p: &Scored) {
        let models: Vec<&[Score]> = p.by_model().collect();
        if models.len() != self.counts.len() {
            // Validated against the plan on arrival; a partition of another shape is not
            // counted rather than misread.
            return;
        }
        for (m, (counts, scores)) in self.counts.iter_mut().zip(&models).enumerate() {
            counts.inference_ms += p.model_ms.get(m).copied().unwrap_or(0.0);
            for score in scores.iter() {
                match label_and_best(score, self.classes) {
                    (label, Some((class, _))) => {
                        counts.scored += 1;
                        if let Some(label) = label {
                            counts.confusion.add(label, class);
                        }
                    }
                    (_, None) => counts.unreadable += 1,
                }
            }
        }
        for pair in &mut self.pairs {
            for (a, b) in models[pair.a].iter().zip(models[pair.b]) {
                let ((label, Some(best_a)), (_, Some(best_b))) = (
                    label_and_best(a, self.classes),
                    label_and_best(b, self.classes),
                ) else {
                    continue;
                };
                pair.images += 1;
                pair.agree += u64::from(best_a.0 == best_b.0);
                pair.matrix.add(best_a.0, best_b.0);
                if self.top_k > 1 {
                    let shared = (a.top.iter().take(self.top_k))
                        .filter(|(c, _)| b.top.iter().take(self.top_k).any(|(d, _)| c == d))
                        .count();
                    pair.overlap += shared as f64 / self.top_k as f64;
                }
                if let Some(label) = label {
                    pair.labelled += 1;
                    match (best_a.0 == label, best_b.0 == label) {
                        (true, false) => pair.only_a_right += 1,
                        (false, true) => pair.only_b_right += 1,
                        _ => {}
                    }
                }
            }
        }
    }

    /// Each model's figures, in the job's order, for a job whose images carry labels or not.
    pub fn figures(&self, plan: &Plan, labelled: bool) -> Vec<ModelFigures> {
        (plan.models.iter().zip(&self.counts))
            .map(|(name, counts)| {
                let (images, correct) = (counts.confusion.labelled(), counts.confusion.correct());
                ModelFigures {
                    model: name.clone(),
                    scored: counts.scored,
                    unreadable: counts.unreadable,
                    labelled: images,
                    correct,
                    accuracy: labelled.then(|| ratio(correct, images)),
                    accuracy_interval: (labelled && images > 0)
                        .then(|| wilson_interval(correct, images)),
                    inference_seconds: counts.inference_ms / 1000.0,
                }
            })
            .collect()
    }

    /// Every pair compared.
    pub fn comparisons(&self, plan: &Plan, labelled: bool) -> Vec<Comparison> {
        let name = |class: u32| plan.classes[class as usize].clone();
        self.pairs
            .iter()
            .map(|pair| Comparison {
                a: plan.models[pair.a].clone(),
                b: plan.models[pair.b].clone(),
                images: pair.images,
                agree: pair.agree,
                agreement: ratio(pair.agree, pair.images),
                top_k_overlap: (self.top_k > 1).then(|| pair.overlap / pair.images.max(1) as f64),
                most_disagreed: confused(&pair.matrix)
                    .iter()
                    .take(SUMMARY_DISAGREEMENTS)
                    .map(|&((a, b), images)| Disagreement {
                        a_class: name(a),
                        b_class: name(b),
                        images,
                    })
                    .collect(),
                labelled: pair.labelled,
                only_a_right: pair.only_a_right,
                only_b_right: pair.only_b_right,
                mcnemar_p_value: labelled
                    .then(|| mcnemar_exact(pair.only_a_right, pair.only_b_right)),
            })
            .collect()
    }
}

/// Wilson's score interval of a proportion `successes / trials` at 95%: low and high (as
/// statsmodels' `proportion_confint(method="wilson")`).
pub fn wilson_interval(successes: u64, trials: u64) -> [f64; 2] {
    let n = trials as f64;
    let p = successes as f64 / n;
    let z2 = Z_95 * Z_95;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = Z_95 / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

/// McNemar's exact test of `b` and `c`, the discordant pairs: twice the probability of at most
/// `min(b, c)` successes in `b + c` fair coin tosses, at most 1 (statsmodels'
/// `mcnemar(table, exact=True)`).
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let (k, n) = (b.min(c), b + c);
    if n == 0 {
        return 1.0;
    }
    // The binomial terms C(n, i) / 2^n for i <= k <= n/2 rise with i: the sum is taken
    // relative to the largest, C(n, k), walking down until the terms no longer count, and
    // C(n, k) itself in logarithms, so that a million tosses neither overflow nor underflow.
    let ln_choose: f64 = (0..k)
        .map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln())
        .sum();
    let ln_largest = ln_choose - n as f64 * std::f64::consts::LN_2;
    let (mut sum, mut term) = (1.0f64, 1.0f64);
    for i in (1..=k).rev() {
        // C(n, i - 1) / C(n, i) = i / (n - i + 1)
        term *= i as f64 / (n - i + 1) as f64;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    (2.0 * (ln_largest.exp() * sum)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_matches_the_binomial_test_computed_in_full() {
        // Small counts: the sum written out with exact binomial coefficients.
        let exact = |b: u64, c: u64| {
            let n = b + c;
            let choose =
                |i: u64| (0..i).fold(1.0f64, |acc, j| acc * (n - j) as f64 / (j + 1) as f64);
            let tail: f64 = (0..=b.min(c)).map(choose).sum::<f64>() / 2f64.powi(n as i32);
            (2.0 * tail).min(1.0)
        };
        for (b, c) in [(0, 0), (0, 5), (3, 9), (10, 10), (17, 4), (1, 30), (25, 41)] {
            let got = mcnemar_exact(b, c);
            let want = exact(b, c);
            assert!(
                (got - want).abs() <= 1e-12 * want.max(1e-300),
                "({b}, {c}): {got} against {want}"
            );
        }
        // statsmodels' mcnemar([[0, b], [c, 0]], exact=True).pvalue.
        assert!((mcnemar_exact(12, 3) - 0.035_156_25).abs() < 1e-15);
        // A million discordant images split 49.9% to 50.1%, in logarithms: 0.0456082998653896.
        let p = mcnemar_exact(499_000, 501_000);
        assert!((p - 0.045_608_299_865_389_6).abs() < 1e-9, "{p}");
    }

    #[test]
    fn wilson_interval_is_statsmodels() {
        // statsmodels.stats.proportion.proportion_confint(81, 100, method="wilson")
        let [low, high] = wilson_interval(81, 100);
        assert!((low - 0.722_211_546_209_356).abs() < 1e-12, "{low}");
        assert!((high - 0.874_852_484_902_312).abs() < 1e-12, "{high}");
        // None right, or all: the interval reaches 0, or 1, without passing it.
        let [low, high] = wilson_interval(0, 10);
        assert!((0.0..1e-15).contains(&low) && (high - 0.277_532_799_862_889).abs() < 1e-12);
        assert!(wilson_interval(10, 10)[1] <= 1.0 && wilson_interval(10, 10)[1] > 1.0 - 1e-15);
    }
}
