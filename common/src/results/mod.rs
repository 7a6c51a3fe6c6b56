//! A job's result files: `scores.csv`, `summary.json`, `confusion.csv`, `confusion.png`.

pub mod render;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::dataset::CLASS_NAMES;
use crate::message::Scored;

/// Header of `scores.csv` for a job over one batch; several batches add a `batch` column first.
pub const SCORES_HEADER: &str =
    "index,filename,true_label,predicted_label,true_class,predicted_class,confidence";

/// Timings of a job, in the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub submitted_at_ms: u64,
    pub completed_at_ms: u64,
    /// From submission to the last result in.
    pub wall_seconds: f64,
    pub images_per_second: f64,
    /// Time spent in model calls, summed over workers.
    pub inference_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    pub class: String,
    pub images: u64,
    pub correct: u64,
    pub accuracy: f64,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub job: String,
    pub images: u64,
    pub correct: u64,
    pub accuracy: f64,
    pub per_class: Vec<ClassAccuracy>,
    pub batches: Vec<String>,
    pub partitions: u32,
    /// Images scored by each worker.
    pub workers: BTreeMap<String, u64>,
    pub timings: Timings,
}

impl Summary {
    /// The walkthrough's closing line.
    pub fn accuracy_line(&self) -> String {
        accuracy_line(self.correct, self.images)
    }
}

/// "Correctly predicted X of N images (P%)", as the walkthrough prints it.
pub fn accuracy_line(correct: u64, images: u64) -> String {
    let percent = if images == 0 {
        0.0
    } else {
        100.0 * correct as f64 / images as f64
    };
    format!("Correctly predicted {correct} of {images} images ({percent:.2}%)")
}

/// Everything written for a finished job.
#[derive(Debug)]
pub struct ResultFiles {
    pub scores_csv: String,
    pub confusion_csv: String,
    pub confusion_png: Vec<u8>,
    pub summary: Summary,
}

/// Builds the result files from every partition's scores. `partitions` must hold each
/// partition once, in job order (the collector keys them by partition number).
pub fn build(
    job: &str,
    partitions: &[Scored],
    submitted_at_ms: u64,
    completed_at_ms: u64,
) -> ResultFiles {
    let mut batches: Vec<String> = Vec::new();
    for p in partitions {
        if !batches.contains(&p.batch) {
            batches.push(p.batch.clone());
        }
    }
    let multi_batch = batches.len() > 1;
    let classes = CLASS_NAMES.len();
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut workers: BTreeMap<String, u64> = BTreeMap::new();
    let mut inference_ms = 0.0;
    let mut scores_csv =
        String::with_capacity(partitions.iter().map(|p| p.scores.len() * 64).sum());
    if multi_batch {
        scores_csv.push_str("batch,");
    }
    scores_csv.push_str(SCORES_HEADER);
    scores_csv.push('\n');
    for p in partitions {
        *workers.entry(p.worker.clone()).or_default() += p.scores.len() as u64;
        inference_ms += p.inference_ms;
        for (i, (score, filename)) in p.scores.iter().zip(&p.filenames).enumerate() {
            let (label, predicted) = (score.label as usize, score.predicted as usize);
            confusion[label.min(classes - 1)][predicted.min(classes - 1)] += 1;
            if multi_batch {
                let _ = write!(scores_csv, "{},", p.batch);
            }
            let _ = writeln!(
                scores_csv,
                "{},{},{},{},{},{},{:.6}",
                p.first_index as usize + i,
                csv_field(filename),
                label,
                predicted,
                class_name(label),
                class_name(predicted),
                score.confidence
            );
        }
    }
    let images: u64 = confusion.iter().flatten().sum();
    let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    let per_class = (0..classes)
        .map(|c| {
            let n: u64 = confusion[c].iter().sum();
            ClassAccuracy {
                class: class_name(c).into(),
                images: n,
                correct: confusion[c][c],
                accuracy: ratio(confusion[c][c], n),
            }
        })
        .collect();
    let wall_seconds = completed_at_ms.saturating_sub(submitted_at_ms) as f64 / 1000.0;
    let summary = Summary {
        job: job.into(),
        images,
        correct,
        accuracy: ratio(correct, images),
        per_class,
        batches,
        partitions: partitions.len() as u32,
        workers,
        timings: Timings {
            submitted_at_ms,
            completed_at_ms,
            wall_seconds,
            images_per_second: if wall_seconds > 0.0 {
                images as f64 / wall_seconds
            } else {
                0.0
            },
            inference_seconds: inference_ms / 1000.0,
        },
    };
    let mut confusion_csv = String::from("true_class\\predicted_class");
    for c in 0..classes {
        let _ = write!(confusion_csv, ",{}", class_name(c));
    }
    confusion_csv.push('\n');
    for (c, row) in confusion.iter().enumerate() {
        confusion_csv.push_str(class_name(c));
        for n in row {
            let _ = write!(confusion_csv, ",{n}");
        }
        confusion_csv.push('\n');
    }
    let confusion_png = render::confusion_png(&confusion, &CLASS_NAMES);
    ResultFiles {
        scores_csv,
        confusion_csv,
        confusion_png,
        summary,
    }
}

fn class_name(label: usize) -> &'static str {
    CLASS_NAMES.get(label).copied().unwrap_or("unknown")
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Score;

    fn scored(partition: u32, batch: &str, first: u32, pairs: &[(u8, u8)]) -> Scored {
        Scored {
            job: "j".into(),
            partition,
            batch: batch.into(),
            first_index: first,
            filenames: pairs
                .iter()
                .enumerate()
                .map(|(i, _)| format!("f{i}.png"))
                .collect(),
            scores: pairs
                .iter()
                .map(|&(label, predicted)| Score {
                    label,
                    predicted,
                    confidence: 0.5,
                })
                .collect(),
            worker: "w1".into(),
            inference_ms: 10.0,
        }
    }

    #[test]
    fn counts_accuracy_and_rows() {
        let parts = [
            scored(0, "test_batch", 0, &[(3, 3), (5, 3)]),
            scored(1, "test_batch", 2, &[(0, 0)]),
        ];
        let files = build("j", &parts, 1_000, 3_000);
        assert_eq!(files.summary.images, 3);
        assert_eq!(files.summary.correct, 2);
        assert_eq!(
            files.summary.accuracy_line(),
            "Correctly predicted 2 of 3 images (66.67%)"
        );
        assert_eq!(files.summary.timings.wall_seconds, 2.0);
        let lines: Vec<&str> = files.scores_csv.lines().collect();
        assert_eq!(lines[0], SCORES_HEADER);
        assert_eq!(lines[2], "1,f1.png,5,3,dog,cat,0.500000");
        assert_eq!(lines[3], "2,f0.png,0,0,airplane,airplane,0.500000");
        assert!(
            files
                .confusion_csv
                .lines()
                .nth(6)
                .unwrap()
                .starts_with("dog,0,0,0,1,")
        );
    }

    #[test]
    fn several_batches_add_a_batch_column() {
        let parts = [
            scored(0, "data_batch_1", 0, &[(1, 1)]),
            scored(1, "test_batch", 0, &[(2, 2)]),
        ];
        let files = build("j", &parts, 0, 0);
        assert!(files.scores_csv.starts_with("batch,index,"));
        assert!(files.scores_csv.contains("\ntest_batch,0,f0.png,2,2,"));
    }

    #[test]
    fn csv_fields_with_commas_are_quoted() {
        assert_eq!(csv_field("a,b\"c"), "\"a,b\"\"c\"");
        assert_eq!(csv_field("plain.png"), "plain.png");
    }
}
