//! The counts of a multi-label job (independent sigmoids: an image may have several classes):
//! per class, at its threshold, the images with it as a true tag, those given it as a tag,
//! and both (precision, recall and F1 follow), and the scores that rank the labelled images
//! for average precision.
//!
//! Average precision is scikit-learn's (`average_precision_score`): over the images ranked by
//! a class's score, the sum of the precision at each distinct score times the recall it adds.
//! It is exact while the job's labelled scores fit in [`EXACT_ENTRIES`]; beyond, each class's
//! scores are counted in score bins (as many as the classes leave room for in [`BIN_BYTES`],
//! at most [`MAX_BINS`]), and images within one bin count as tied: memory follows the classes,
//! never the images, and the summary says which it was.

use fleet_protocol::job::Thresholds;
use fleet_protocol::message::Score;
use fleet_protocol::summary::{ClassMetrics, MultiLabel};

/// Labelled scores (image x class) kept exactly, at most: 32 MiB.
pub const EXACT_ENTRIES: usize = 4 << 20;
/// Memory of the score bins, at most.
pub const BIN_BYTES: usize = 32 << 20;
/// Score bins of a class, at most.
pub const MAX_BINS: usize = 4096;
/// Classes with the lowest average precision named in the summary.
const WORST: usize = 10;

/// A class's scores of the labelled images, for average precision.
#[derive(Debug, Clone)]
enum Ranked {
    /// Every (score, whether the class is a true tag).
    Exact(Vec<Vec<(f32, bool)>>),
    /// Per class, per bin of scores (bin 0 holds the lowest): images with the class as a true
    /// tag, and without.
    Binned {
        bins: usize,
        counts: Vec<Vec<[u32; 2]>>,
    },
}

/// The running counts of a multi-label job.
#[derive(Debug, Clone)]
pub struct MultiLabelTally {
    thresholds: Thresholds,
    /// Labelled images the model scored.
    labelled: u64,
    positives: Vec<u64>,
    predicted: Vec<u64>,
    hits: Vec<u64>,
    ranked: Ranked,
    entries: usize,
}

impl MultiLabelTally {
    /// Nothing counted yet, for `classes` classes with these thresholds.
    pub fn new(classes: usize, thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            labelled: 0,
            positives: vec![0; classes],
            predicted: vec![0; classes],
            hits: vec![0; classes],
            ranked: Ranked::Exact(vec![Vec::new(); classes]),
            entries: 0,
        }
    }

    /// Counts one scored image: its score, and its class scores (one per class, as the worker
    /// wrote them), when the image has true tags.
    pub fn add(&mut self, score: &Score, class_scores: Option<&[f32]>) {
        let (Some(truth), true) = (&score.true_tags, score.scored) else {
            return;
        };
        let classes = self.positives.len();
        self.labelled += 1;
        let is_true = |c: usize| truth.binary_search(&(c as u32)).is_ok();
        for &c in truth.iter().filter(|&&c| (c as usize) < classes) {
            self.positives[c as usize] += 1;
        }
        for &(c, _) in score.tags.iter().filter(|&&(c, _)| (c as usize) < classes) {
            self.predicted[c as usize] += 1;
            if is_true(c as usize) {
                self.hits[c as usize] += 1;
            }
        }
        let Some(class_scores) = class_scores.filter(|s| s.len() == classes) else {
            return;
        };
        if let Ranked::Exact(lists) = &mut self.ranked {
            if self.entries + classes <= EXACT_ENTRIES {
                for (c, &s) in class_scores.iter().enumerate() {
                    lists[c].push((s, is_true(c)));
                }
                self.entries += classes;
                return;
            }
            self.ranked = binned(lists, classes);
        }
        if let Ranked::Binned { bins, counts } = &mut self.ranked {
            for (c, &s) in class_scores.iter().enumerate() {
                counts[c][bin(s, *bins)][usize::from(!is_true(c))] += 1;
            }
        }
    }

    /// Labelled images the model scored.
    pub fn labelled(&self) -> u64 {
        self.labelled
    }

    /// Precision, recall, F1 and average precision per class, and their means; `classes`
    /// name the classes.
    pub fn summary(&self, classes: &[String]) -> MultiLabel {
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let mut per_class = Vec::new();
        let mut precisions = Vec::new();
        for c in 0..self.positives.len() {
            let (positives, predicted, hits) = (self.positives[c], self.predicted[c], self.hits[c]);
            let average_precision = self.average_precision(c);
            if let Some(ap) = average_precision {
                precisions.push(ap);
            }
            if positives == 0 && predicted == 0 {
                continue;
            }
            let (precision, recall) = (ratio(hits, predicted), ratio(hits, positives));
            let f1 = match (precision, recall) {
                (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
                (Some(_), Some(_)) => Some(0.0),
                _ => None,
            };
            per_class.push(ClassMetrics {
                class: classes.get(c).cloned().unwrap_or_else(|| c.to_string()),
                positives,
                predicted,
                hits,
                precision,
                recall,
                f1,
                average_precision,
            });
        }
        let mut worst: Vec<&ClassMetrics> = per_class
            .iter()
            .filter(|m| m.average_precision.is_some())
            .collect();
        worst.sort_by(|a, b| {
            (a.average_precision.unwrap_or_default())
                .total_cmp(&b.average_precision.unwrap_or_default())
                .then(a.class.cmp(&b.class))
        });
        let (hits, predicted, positives) = (
            self.hits.iter().sum(),
            self.predicted.iter().sum(),
            self.positives.iter().sum(),
        );
        let (micro_precision, micro_recall) = (ratio(hits, predicted), ratio(hits, positives));
        MultiLabel {
            thresholds: self.thresholds.0.clone(),
            labelled: self.labelled,
            mean_average_precision: (!precisions.is_empty())
                .then(|| precisions.iter().sum::<f64>() / precisions.len() as f64),
            micro_precision,
            micro_recall,
            micro_f1: match (micro_precision, micro_recall) {
                (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
                _ => None,
            },
            average_precision_over: match &self.ranked {
                Ranked::Exact(_) => "every score".into(),
                Ranked::Binned { bins, .. } => format!("scores in {bins} bins"),
            },
            worst: worst
                .into_iter()
                .take(WORST)
                .map(|m| m.class.clone())
                .collect(),
            per_class,
        }
    }

    /// Class `c`'s average precision over the labelled images; `None` when none has it.
    fn average_precision(&self, c: usize) -> Option<f64> {
        let positives = match &self.ranked {
            Ranked::Exact(lists) => lists[c].iter().filter(|(_, t)| *t).count() as u64,
            Ranked::Binned { counts, .. } => counts[c].iter().map(|b| u64::from(b[0])).sum(),
        };
        if positives == 0 {
            return None;
        }
        // Groups of tied scores, best first: (true tags, others) in each.
        let groups: Vec<(u64, u64)> = match &self.ranked {
            Ranked::Exact(lists) => {
                let mut list = lists[c].clone();
                list.sort_by(|a, b| b.0.total_cmp(&a.0));
                let mut groups: Vec<(f32, u64, u64)> = Vec::new();
                for (score, truth) in list {
                    match groups.last_mut() {
                        Some(last) if last.0 == score => {
                            if truth {
                                last.1 += 1
                            } else {
                                last.2 += 1
                            }
                        }
                        _ => groups.push((score, u64::from(truth), u64::from(!truth))),
                    }
                }
                groups.into_iter().map(|(_, t, f)| (t, f)).collect()
            }
            Ranked::Binned { counts, .. } => counts[c]
                .iter()
                .rev()
                .filter(|b| b[0] + b[1] > 0)
                .map(|b| (u64::from(b[0]), u64::from(b[1])))
                .collect(),
        };
        let (mut tp, mut fp, mut ap, mut recalled) = (0u64, 0u64, 0.0f64, 0.0f64);
        for (t, f) in groups {
            tp += t;
            fp += f;
            let recall = tp as f64 / positives as f64;
            ap += (recall - recalled) * (tp as f64 / (tp + fp) as f64);
            recalled = recall;
        }
        Some(ap)
    }
}

/// The exact lists of `classes` classes, counted in bins instead.
fn binned(lists: &[Vec<(f32, bool)>], classes: usize) -> Ranked {
    let bins = (BIN_BYTES / (classes.max(1) * 8)).clamp(16, MAX_BINS);
    let mut counts = vec![vec![[0u32; 2]; bins]; classes];
    for (c, list) in lists.iter().enumerate() {
        for &(s, truth) in list {
            counts[c][bin(s, bins)][usize::from(!truth)] += 1;
        }
    }
    Ranked::Binned { bins, counts }
}

/// The bin of a score in 0..1 among `bins`.
fn bin(score: f32, bins: usize) -> usize {
    ((score.clamp(0.0, 1.0) * bins as f32) as usize).min(bins - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(true_tags: &[u32], tags: &[(u32, f32)]) -> Score {
        Score {
            label: None,
            top: Vec::new(),
            error: None,
            scored: true,
            tags: tags.to_vec(),
            true_tags: Some(true_tags.to_vec()),
        }
    }

    #[test]
    fn average_precision_is_scikit_learns_by_hand() {
        // One class; scores 0.9 (true), 0.8 (false), 0.7 (true), 0.7 (false), 0.2 (true).
        // sklearn.metrics.average_precision_score([1,0,1,0,1], [.9,.8,.7,.7,.2]):
        // thresholds .9: P 1, R 1/3; .8: P 1/2, R 1/3; .7: P 2/4, R 2/3; .2: P 3/5, R 1.
        // AP = 1/3 * 1 + 0 + 1/3 * 1/2 + 1/3 * 3/5 = 0.7666...
        let mut tally = MultiLabelTally::new(1, Thresholds(vec![0.5]));
        for (truth, s) in [
            (true, 0.9),
            (false, 0.8),
            (true, 0.7),
            (false, 0.7),
            (true, 0.2),
        ] {
            let true_tags: &[u32] = if truth { &[0] } else { &[] };
            let tags: Vec<(u32, f32)> = if s >= 0.5 { vec![(0, s)] } else { vec![] };
            tally.add(&score(true_tags, &tags), Some(&[s]));
        }
        let summary = tally.summary(&["a".into()]);
        let ap = summary.per_class[0].average_precision.unwrap();
        assert!((ap - (1.0 / 3.0 + 1.0 / 6.0 + 0.2)).abs() < 1e-12, "{ap}");
        // At 0.5: 4 predicted, 2 of them true, of 3 true.
        let m = &summary.per_class[0];
        assert_eq!((m.positives, m.predicted, m.hits), (3, 4, 2));
        assert_eq!((m.precision, m.recall), (Some(0.5), Some(2.0 / 3.0)));
        assert_eq!(summary.mean_average_precision, Some(ap));
        assert_eq!(summary.average_precision_over, "every score");
    }

    #[test]
    fn past_the_exact_limit_scores_are_binned_and_the_summary_says_so() {
        let mut tally = MultiLabelTally::new(2, Thresholds(vec![0.5]));
        let images = EXACT_ENTRIES / 2 + 10;
        for i in 0..images {
            let s = (i % 100) as f32 / 100.0;
            let truth: &[u32] = if i % 2 == 0 { &[0] } else { &[1] };
            tally.add(&score(truth, &[]), Some(&[s, 1.0 - s]));
        }
        let summary = tally.summary(&["a".into(), "b".into()]);
        assert!(
            summary.average_precision_over.ends_with("bins"),
            "{summary:?}"
        );
        assert!(summary.mean_average_precision.is_some());
    }
}
