//! A job's result files: `scores.csv`, `summary.json`, `report.html`, and for labelled jobs
//! `confusion.csv`, `confused_pairs.csv` and `confusion.png`.
//!
//! Everything is sized by the job's classes (the model's output), never by a constant.

mod confusion;
pub mod report;

pub use confusion::Confusion;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fleet_protocol::message::{Scored, Sealed};
use fleet_protocol::summary::{ClassAccuracy, ClassCount, ConfusedPair, Summary, Timings, ratio};

/// Header of `scores.csv` (top-1, no error column); several batches add a `batch` column first,
/// top-k adds `top2_label,top2_class,top2_confidence,...`, image collections add `error`.
pub const SCORES_HEADER: &str =
    "index,filename,true_label,predicted_label,true_class,predicted_class,confidence";

/// Classes up to which the confusion matrix is drawn as a heat map.
pub const MAX_HEAT_MAP_CLASSES: usize = 30;

/// Classes up to which `confusion.csv` is the whole matrix; beyond, its non-zero cells one a
/// row (a 21,843-class matrix would be 477 million cells).
pub const MAX_MATRIX_CLASSES: usize = 1_000;

/// Confused pairs listed in the summary.
const SUMMARY_PAIRS: usize = 10;

/// Everything written for a finished job.
#[derive(Debug)]
pub struct ResultFiles {
    pub scores_csv: String,
    /// Labelled jobs only.
    pub confusion_csv: Option<String>,
    /// Labelled jobs only: every off-diagonal cell, largest first.
    pub confused_pairs_csv: Option<String>,
    /// Labelled jobs of up to [`MAX_HEAT_MAP_CLASSES`] classes.
    pub confusion_png: Option<Vec<u8>>,
    /// Labelled jobs only: the confusion matrix.
    pub confusion: Option<Confusion>,
    pub summary: Summary,
}

/// Builds the result files of the sealed job from every partition's scores. `partitions` must
/// hold each partition once, in job order (the collector keys them by partition number); they
/// are borrowed, as a large job's scores are not to be held twice.
pub fn build(sealed: &Sealed, partitions: &[&Scored], completed_at_ms: u64) -> ResultFiles {
    let classes = &sealed.classes;
    let n = classes.len();
    let class_name = |i: u32| classes.get(i as usize).map_or("?", String::as_str);
    let mut batches: Vec<String> = Vec::new();
    for p in partitions {
        if !batches.contains(&p.batch) {
            batches.push(p.batch.clone());
        }
    }
    let multi_batch = batches.len() > 1;
    let top_k = partitions
        .iter()
        .flat_map(|p| &p.scores)
        .map(|s| s.top.len())
        .max()
        .unwrap_or(1)
        .max(1);
    // A collection's files may be unreadable; any job's model may return NaN for an image.
    let error_column = sealed.errors_column
        || partitions
            .iter()
            .any(|p| p.scores.iter().any(|s| s.error.is_some()));
    let mut confusion = Confusion::new(n);
    let mut predicted = vec![0u64; n];
    let (mut images, mut unreadable) = (0u64, 0u64);
    let mut workers: BTreeMap<String, u64> = BTreeMap::new();
    let (mut inference_ms, mut preprocess_ms) = (0.0, 0.0);
    let mut scores_csv =
        String::with_capacity(partitions.iter().map(|p| p.scores.len() * 64).sum());
    if multi_batch {
        scores_csv.push_str("batch,");
    }
    scores_csv.push_str(SCORES_HEADER);
    for k in 2..=top_k {
        let _ = write!(scores_csv, ",top{k}_label,top{k}_class,top{k}_confidence");
    }
    if error_column {
        scores_csv.push_str(",error");
    }
    scores_csv.push('\n');
    for p in partitions {
        *workers.entry(p.worker.clone()).or_default() += p.scores.len() as u64;
        inference_ms += p.inference_ms;
        preprocess_ms += p.preprocess_ms;
        for (i, (score, filename)) in p.scores.iter().zip(&p.filenames).enumerate() {
            images += 1;
            if multi_batch {
                let _ = write!(scores_csv, "{},", csv_field(&p.batch));
            }
            let _ = write!(
                scores_csv,
                "{},{},",
                p.first_index + i as u64,
                csv_field(filename)
            );
            // A label beyond the model's classes cannot be compared: the producer and the
            // worker refuse such jobs, so it only shows up as an unlabelled row here.
            let label = score.label.filter(|&l| (l as usize) < n);
            let best = score.predicted().filter(|&(c, _)| (c as usize) < n);
            match best {
                Some((class, _)) => {
                    predicted[class as usize] += 1;
                    if let Some(l) = label {
                        confusion.add(l, class);
                    }
                }
                None => unreadable += 1,
            }
            let cell = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
            let name = |v: Option<u32>| v.map(|v| csv_field(class_name(v)).into_owned());
            let _ = write!(
                scores_csv,
                "{},{},{},{},{}",
                cell(label),
                cell(best.map(|b| b.0)),
                name(label).unwrap_or_default(),
                name(best.map(|b| b.0)).unwrap_or_default(),
                best.map(|b| format!("{:.6}", b.1)).unwrap_or_default()
            );
            for k in 1..top_k {
                match score.top.get(k) {
                    Some(&(class, p)) => {
                        let _ = write!(
                            scores_csv,
                            ",{class},{},{p:.6}",
                            csv_field(class_name(class))
                        );
                    }
                    None => scores_csv.push_str(",,,"),
                }
            }
            if error_column {
                let _ = write!(
                    scores_csv,
                    ",{}",
                    csv_field(score.error.as_deref().unwrap_or(""))
                );
            }
            scores_csv.push('\n');
        }
    }
    let (labelled, correct) = (confusion.labelled(), confusion.correct());
    // The confusions, largest first; ties in class order, so the tables are stable.
    let mut confused: Vec<((u32, u32), u64)> =
        confusion.cells().filter(|((t, p), _)| t != p).collect();
    confused.sort_by_key(|&(_, images)| std::cmp::Reverse(images));
    let pair = |&((t, p), images): &((u32, u32), u64)| ConfusedPair {
        true_class: classes[t as usize].clone(),
        predicted_class: classes[p as usize].clone(),
        images,
    };
    // The classes with images (a class without any has no accuracy to state).
    let per_class = confusion
        .true_classes()
        .map(|(c, images)| {
            let correct = confusion.get(c, c);
            ClassAccuracy {
                class: classes[c as usize].clone(),
                images,
                correct,
                accuracy: ratio(correct, images),
            }
        })
        .collect();
    let submitted_at_ms = sealed.submitted_at_ms;
    let wall_seconds = seconds_between(submitted_at_ms, completed_at_ms);
    let first_taken = partitions.iter().map(|p| p.started_at_ms).min();
    let last_scored = partitions.iter().map(|p| p.finished_at_ms).max();
    let queueing_seconds = partitions
        .iter()
        .map(|p| seconds_between(p.published_at_ms, p.started_at_ms))
        .sum::<f64>()
        / partitions.len().max(1) as f64;
    let summary = Summary {
        job: sealed.job.clone(),
        images,
        scored: images - unreadable,
        unreadable,
        labelled,
        correct,
        accuracy: sealed.labelled.then(|| ratio(correct, labelled)),
        classes: classes.clone(),
        per_class,
        predicted: classes
            .iter()
            .zip(&predicted)
            .filter(|(_, predicted)| **predicted > 0)
            .map(|(class, &predicted)| ClassCount {
                class: class.clone(),
                predicted,
            })
            .collect(),
        most_confused: confused.iter().take(SUMMARY_PAIRS).map(pair).collect(),
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
            preprocess_seconds: preprocess_ms / 1000.0,
            staging_seconds: seconds_between(submitted_at_ms, sealed.published_at_ms),
            queueing_seconds,
            scoring_seconds: first_taken
                .zip(last_scored)
                .map_or(0.0, |(from, to)| seconds_between(from, to)),
            writing_seconds: 0.0,
        },
    };
    if !sealed.labelled {
        return ResultFiles {
            scores_csv,
            confusion_csv: None,
            confused_pairs_csv: None,
            confusion_png: None,
            confusion: None,
            summary,
        };
    }
    let confusion_csv = confusion_csv(&confusion, classes);
    let mut confused_pairs_csv =
        String::from("true_class,predicted_class,images,share_of_true_class\n");
    for &((t, p), images) in &confused {
        let _ = writeln!(
            confused_pairs_csv,
            "{},{},{images},{:.6}",
            csv_field(&classes[t as usize]),
            csv_field(&classes[p as usize]),
            ratio(images, confusion.row_total(t))
        );
    }
    let names: Vec<&str> = classes.iter().map(String::as_str).collect();
    let confusion_png = (n <= MAX_HEAT_MAP_CLASSES)
        .then(|| fleet_figures::confusion_png(&confusion.dense(), &names));
    ResultFiles {
        scores_csv,
        confusion_csv: Some(confusion_csv),
        confused_pairs_csv: Some(confused_pairs_csv),
        confusion_png,
        confusion: Some(confusion),
        summary,
    }
}

/// `confusion.csv`: the whole matrix, true class by row, for up to [`MAX_MATRIX_CLASSES`]
/// classes; beyond, the non-zero cells one a row (`true_class,predicted_class,images`).
fn confusion_csv(confusion: &Confusion, classes: &[String]) -> String {
    let mut csv = String::new();
    if classes.len() > MAX_MATRIX_CLASSES {
        csv.push_str("true_class,predicted_class,images\n");
        for ((t, p), images) in confusion.cells() {
            let _ = writeln!(
                csv,
                "{},{},{images}",
                csv_field(&classes[t as usize]),
                csv_field(&classes[p as usize])
            );
        }
        return csv;
    }
    csv.push_str("true_class\\predicted_class");
    for class in classes {
        let _ = write!(csv, ",{}", csv_field(class));
    }
    csv.push('\n');
    for (t, class) in classes.iter().enumerate() {
        csv.push_str(&csv_field(class));
        for p in 0..classes.len() {
            let _ = write!(csv, ",{}", confusion.get(t as u32, p as u32));
        }
        csv.push('\n');
    }
    csv
}

/// Seconds from one Unix time in milliseconds to a later one; 0 if the clocks of two hosts
/// put them the other way round.
fn seconds_between(from_ms: u64, to_ms: u64) -> f64 {
    to_ms.saturating_sub(from_ms) as f64 / 1000.0
}

/// A text field of a CSV file: quoted when it needs it (RFC 4180), and a field a spreadsheet
/// would run as a formula (one beginning with `=`, `+`, `-`, `@`, a tab or a carriage return:
/// a file or class named `=HYPERLINK(...)`) made plain text by a leading `'`, as OWASP
/// recommends. Every name and message in the product's CSV files goes through here.
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    let s: std::borrow::Cow<'_, str> = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}").into()
    } else {
        s.into()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::message::Score;

    fn cifar_classes() -> Vec<String> {
        [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
        .map(String::from)
        .to_vec()
    }

    fn refs(parts: &[Scored]) -> Vec<&Scored> {
        parts.iter().collect()
    }

    fn sealed(classes: Vec<String>, labelled: bool, errors_column: bool) -> Sealed {
        Sealed {
            job: "j".into(),
            partitions: 2,
            images: 3,
            classes,
            labelled,
            errors_column,
            submitted_at_ms: 1_000,
            published_at_ms: 1_500,
        }
    }

    fn scored(partition: u32, batch: &str, first: u64, pairs: &[(u32, u32)]) -> Scored {
        Scored {
            job: "j".into(),
            partition,
            batch: batch.into(),
            first_index: first,
            filenames: (0..pairs.len()).map(|i| format!("f{i}.png")).collect(),
            scores: pairs
                .iter()
                .map(|&(label, predicted)| Score {
                    label: Some(label),
                    top: vec![(predicted, 0.5)],
                    error: None,
                })
                .collect(),
            worker: "w1".into(),
            inference_ms: 10.0,
            preprocess_ms: 1.0,
            published_at_ms: 1_600,
            started_at_ms: 1_700 + u64::from(partition) * 100,
            finished_at_ms: 1_800 + u64::from(partition) * 100,
            provider: "CPU".into(),
            thumbnails: Vec::new(),
        }
    }

    #[test]
    fn counts_accuracy_and_rows() {
        let parts = [
            scored(0, "test_batch", 0, &[(3, 3), (5, 3)]),
            scored(1, "test_batch", 2, &[(0, 0)]),
        ];
        let files = build(&sealed(cifar_classes(), true, false), &refs(&parts), 3_000);
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
        let confusion = files.confusion_csv.unwrap();
        assert!(
            confusion
                .lines()
                .nth(6)
                .unwrap()
                .starts_with("dog,0,0,0,1,")
        );
        assert_eq!(
            files.confused_pairs_csv.unwrap().lines().nth(1),
            Some("dog,cat,1,1.000000")
        );
        assert!(files.confusion_png.is_some());
    }

    #[test]
    fn several_batches_add_a_batch_column() {
        let parts = [
            scored(0, "data_batch_1", 0, &[(1, 1)]),
            scored(1, "test_batch", 0, &[(2, 2)]),
        ];
        let files = build(&sealed(cifar_classes(), true, false), &refs(&parts), 1_000);
        assert!(files.scores_csv.starts_with("batch,index,"));
        assert!(files.scores_csv.contains("\ntest_batch,0,f0.png,2,2,"));
    }

    #[test]
    fn any_class_count_is_kept_apart() {
        // Class 57 of 100 is neither clamped nor counted as another class.
        let classes: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
        let parts = [scored(0, "p/", 0, &[(9, 57), (57, 57)])];
        let files = build(&sealed(classes, true, false), &refs(&parts), 2_000);
        assert_eq!(files.summary.correct, 1);
        // Only the classes predicted are listed.
        assert_eq!(files.summary.predicted.len(), 1);
        assert_eq!(
            (
                files.summary.predicted[0].class.as_str(),
                files.summary.predicted[0].predicted
            ),
            ("c57", 2)
        );
        assert_eq!(files.summary.per_class.len(), 2, "the classes with images");
        assert_eq!(files.summary.most_confused[0].true_class, "c9");
        assert!(
            files.confusion_png.is_none(),
            "no heat map beyond 30 classes"
        );
        assert!(files.scores_csv.contains("0,f0.png,9,57,c9,c57,"));
    }

    #[test]
    fn unlabelled_jobs_with_errors_and_top_k() {
        let mut part = scored(0, "photos/", 0, &[(0, 1), (0, 2)]);
        for s in &mut part.scores {
            s.label = None;
        }
        part.scores[0].top = vec![(1, 0.7), (0, 0.2)];
        part.scores[1] = Score {
            label: None,
            top: vec![],
            error: Some("not an image: \"bad\", truncated".into()),
        };
        let files = build(
            &sealed(
                ["cat", "dog", "ship"].map(String::from).to_vec(),
                false,
                true,
            ),
            &[&part],
            2_000,
        );
        let lines: Vec<&str> = files.scores_csv.lines().collect();
        assert_eq!(
            lines[0],
            format!("{SCORES_HEADER},top2_label,top2_class,top2_confidence,error")
        );
        assert_eq!(lines[1], "0,f0.png,,1,,dog,0.700000,0,cat,0.200000,");
        assert_eq!(
            lines[2],
            "1,f1.png,,,,,,,,,\"not an image: \"\"bad\"\", truncated\""
        );
        let summary = &files.summary;
        assert_eq!((summary.scored, summary.unreadable), (1, 1));
        assert_eq!(summary.accuracy, None);
        assert!(files.confusion_csv.is_none());
        assert_eq!(
            summary.accuracy_line(),
            "Scored 1 images (no true labels); 1 of 2 images could not be scored (see the error column of scores.csv)"
        );
    }

    #[test]
    fn csv_fields_with_commas_are_quoted() {
        assert_eq!(csv_field("a,b\"c"), "\"a,b\"\"c\"");
        assert_eq!(csv_field("plain.png"), "plain.png");
    }

    #[test]
    fn csv_fields_a_spreadsheet_would_run_are_plain_text() {
        assert_eq!(
            csv_field("=HYPERLINK(\"http:evil\",\"x\")"),
            "\"'=HYPERLINK(\"\"http:evil\"\",\"\"x\"\")\""
        );
        for formula in ["+1", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            let field = csv_field(formula);
            assert!(
                field.starts_with('\'') || field.starts_with("\"'"),
                "{formula:?} -> {field}"
            );
        }
        // Only the first character matters.
        assert_eq!(csv_field("cat=dog.png"), "cat=dog.png");
    }
}
