//! A job's result files: `scores.csv`, `summary.json`, `report.html`, and for labelled jobs
//! `confusion.csv`, `confused_pairs.csv` and `confusion.png`.
//!
//! Everything is sized by the job's classes (the model's output), never by a constant.

mod confusion;
pub mod report;

pub use confusion::Confusion;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fleet_protocol::message::{Score, Scored, Sealed};
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
    /// One row per image.
    pub scores_csv: String,
    /// Labelled jobs only.
    pub confusion_csv: Option<String>,
    /// Labelled jobs only: every off-diagonal cell, largest first.
    pub confused_pairs_csv: Option<String>,
    /// Labelled jobs of up to [`MAX_HEAT_MAP_CLASSES`] classes.
    pub confusion_png: Option<Vec<u8>>,
    /// Labelled jobs only: the confusion matrix.
    pub confusion: Option<Confusion>,
    /// `summary.json`'s content.
    pub summary: Summary,
}

/// Builds the result files of the sealed job from every partition's scores. `partitions` must
/// hold each partition once, in job order (the collector keys them by partition number); they
/// are borrowed, as a large job's scores are not to be held twice.
pub fn build(sealed: &Sealed, partitions: &[&Scored], completed_at_ms: u64) -> ResultFiles {
    let mut batches: Vec<String> = Vec::new();
    for p in partitions {
        if !batches.contains(&p.batch) {
            batches.push(p.batch.clone());
        }
    }
    let columns = Columns::of(sealed, partitions, batches.len() > 1);
    let mut scores_csv = ScoresCsv::new(
        columns,
        &sealed.classes,
        partitions.iter().map(|p| p.scores.len()).sum(),
    );
    let mut tally = Tally::new(sealed.classes.len());
    for p in partitions {
        scores_csv.partition(p);
        tally.add(p);
    }
    let summary = tally.summary(sealed, batches, completed_at_ms);
    let scores_csv = scores_csv.finish();
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
    let classes = &sealed.classes;
    let confusion = tally.confusion;
    let names: Vec<&str> = classes.iter().map(String::as_str).collect();
    ResultFiles {
        scores_csv,
        confusion_csv: Some(confusion_csv(&confusion, classes)),
        confused_pairs_csv: Some(confused_pairs_csv(&confusion, classes)),
        confusion_png: (classes.len() <= MAX_HEAT_MAP_CLASSES)
            .then(|| fleet_figures::confusion_png(&confusion.dense(), &names)),
        confusion: Some(confusion),
        summary,
    }
}

/// The columns of a job's `scores.csv` beyond the fixed ones.
#[derive(Debug, Clone, Copy)]
struct Columns {
    /// A leading `batch` column: several tarball batches are scored.
    batch: bool,
    /// Classes reported per image.
    top_k: usize,
    /// A last `error` column: a collection's files may be unreadable, and any job's model may
    /// return NaN for an image.
    error: bool,
}

impl Columns {
    fn of(sealed: &Sealed, partitions: &[&Scored], several_batches: bool) -> Self {
        let scores = || partitions.iter().flat_map(|p| &p.scores);
        Self {
            batch: several_batches,
            top_k: scores().map(|s| s.top.len()).max().unwrap_or(1).max(1),
            error: sealed.errors_column || scores().any(|s| s.error.is_some()),
        }
    }
}

/// `scores.csv`, written a partition at a time.
struct ScoresCsv<'a> {
    text: String,
    columns: Columns,
    classes: &'a [String],
}

impl<'a> ScoresCsv<'a> {
    /// The header, with room for `rows` rows.
    fn new(columns: Columns, classes: &'a [String], rows: usize) -> Self {
        let mut text = String::with_capacity(rows * 64);
        if columns.batch {
            text.push_str("batch,");
        }
        text.push_str(SCORES_HEADER);
        for k in 2..=columns.top_k {
            let _ = write!(text, ",top{k}_label,top{k}_class,top{k}_confidence");
        }
        if columns.error {
            text.push_str(",error");
        }
        text.push('\n');
        Self {
            text,
            columns,
            classes,
        }
    }

    fn class_name(&self, class: u32) -> &'a str {
        self.classes.get(class as usize).map_or("?", String::as_str)
    }

    /// One row per image of the partition.
    fn partition(&mut self, p: &Scored) {
        let n = self.classes.len();
        for (i, (score, filename)) in p.scores.iter().zip(&p.filenames).enumerate() {
            if self.columns.batch {
                let _ = write!(self.text, "{},", csv_field(&p.batch));
            }
            let _ = write!(
                self.text,
                "{},{},",
                p.first_index + i as u64,
                csv_field(filename)
            );
            let (label, best) = label_and_best(score, n);
            let cell = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
            let name = |v: Option<u32>| v.map(|v| csv_field(self.class_name(v)).into_owned());
            let _ = write!(
                self.text,
                "{},{},{},{},{}",
                cell(label),
                cell(best.map(|b| b.0)),
                name(label).unwrap_or_default(),
                name(best.map(|b| b.0)).unwrap_or_default(),
                best.map(|b| format!("{:.6}", b.1)).unwrap_or_default()
            );
            for k in 1..self.columns.top_k {
                match score.top.get(k) {
                    Some(&(class, p)) => {
                        let name = csv_field(self.class_name(class));
                        let _ = write!(self.text, ",{class},{name},{p:.6}");
                    }
                    None => self.text.push_str(",,,"),
                }
            }
            if self.columns.error {
                let error = csv_field(score.error.as_deref().unwrap_or(""));
                let _ = write!(self.text, ",{error}");
            }
            self.text.push('\n');
        }
    }

    fn finish(self) -> String {
        self.text
    }
}

/// The running counts of a job, a partition at a time: what its summary and confusion files
/// are made of. Its size follows the classes that occur, not the images.
struct Tally {
    classes: usize,
    images: u64,
    unreadable: u64,
    predicted: Vec<u64>,
    confusion: Confusion,
    workers: BTreeMap<String, u64>,
    inference_ms: f64,
    preprocess_ms: f64,
    partitions: u32,
    first_taken_ms: Option<u64>,
    last_scored_ms: Option<u64>,
    queueing_seconds: f64,
}

impl Tally {
    fn new(classes: usize) -> Self {
        Self {
            classes,
            images: 0,
            unreadable: 0,
            predicted: vec![0; classes],
            confusion: Confusion::new(classes),
            workers: BTreeMap::new(),
            inference_ms: 0.0,
            preprocess_ms: 0.0,
            partitions: 0,
            first_taken_ms: None,
            last_scored_ms: None,
            queueing_seconds: 0.0,
        }
    }

    fn add(&mut self, p: &Scored) {
        let n = self.classes;
        *self.workers.entry(p.worker.clone()).or_default() += p.scores.len() as u64;
        self.inference_ms += p.inference_ms;
        self.preprocess_ms += p.preprocess_ms;
        self.partitions += 1;
        self.first_taken_ms = Some(
            self.first_taken_ms
                .map_or(p.started_at_ms, |t| t.min(p.started_at_ms)),
        );
        self.last_scored_ms = Some(
            self.last_scored_ms
                .map_or(p.finished_at_ms, |t| t.max(p.finished_at_ms)),
        );
        self.queueing_seconds += seconds_between(p.published_at_ms, p.started_at_ms);
        for score in &p.scores {
            self.images += 1;
            let (label, best) = label_and_best(score, n);
            match best {
                Some((class, _)) => {
                    self.predicted[class as usize] += 1;
                    if let Some(l) = label {
                        self.confusion.add(l, class);
                    }
                }
                None => self.unreadable += 1,
            }
        }
    }

    /// `summary.json` of the sealed job, `batches` being the batch names in job order.
    fn summary(&self, sealed: &Sealed, batches: Vec<String>, completed_at_ms: u64) -> Summary {
        let classes = &sealed.classes;
        let confusion = &self.confusion;
        let (labelled, correct) = (confusion.labelled(), confusion.correct());
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
        let predicted = classes
            .iter()
            .zip(&self.predicted)
            .filter(|(_, predicted)| **predicted > 0)
            .map(|(class, &predicted)| ClassCount {
                class: class.clone(),
                predicted,
            })
            .collect();
        let most_confused = confused(confusion)
            .iter()
            .take(SUMMARY_PAIRS)
            .map(|&((t, p), images)| ConfusedPair {
                true_class: classes[t as usize].clone(),
                predicted_class: classes[p as usize].clone(),
                images,
            })
            .collect();
        Summary {
            job: sealed.job.clone(),
            images: self.images,
            scored: self.images - self.unreadable,
            unreadable: self.unreadable,
            labelled,
            correct,
            accuracy: sealed.labelled.then(|| ratio(correct, labelled)),
            classes: classes.clone(),
            per_class,
            predicted,
            most_confused,
            batches,
            partitions: self.partitions,
            workers: self.workers.clone(),
            timings: self.timings(sealed, completed_at_ms),
        }
    }

    fn timings(&self, sealed: &Sealed, completed_at_ms: u64) -> Timings {
        let submitted_at_ms = sealed.submitted_at_ms;
        let wall_seconds = seconds_between(submitted_at_ms, completed_at_ms);
        Timings {
            submitted_at_ms,
            completed_at_ms,
            wall_seconds,
            images_per_second: if wall_seconds > 0.0 {
                self.images as f64 / wall_seconds
            } else {
                0.0
            },
            inference_seconds: self.inference_ms / 1000.0,
            preprocess_seconds: self.preprocess_ms / 1000.0,
            staging_seconds: seconds_between(submitted_at_ms, sealed.published_at_ms),
            queueing_seconds: self.queueing_seconds / f64::from(self.partitions.max(1)),
            scoring_seconds: self
                .first_taken_ms
                .zip(self.last_scored_ms)
                .map_or(0.0, |(from, to)| seconds_between(from, to)),
            writing_seconds: 0.0,
        }
    }
}

/// A score's label and its best class with its confidence, each only when it is one of the
/// job's `classes`. A label beyond the model's classes cannot be compared: the producer and the
/// worker refuse such jobs, so it only shows up as an unlabelled row here.
fn label_and_best(score: &Score, classes: usize) -> (Option<u32>, Option<(u32, f32)>) {
    let label = score.label.filter(|&l| (l as usize) < classes);
    let best = score.predicted().filter(|&(c, _)| (c as usize) < classes);
    (label, best)
}

/// The off-diagonal cells, largest first; ties in class order, so the tables are stable.
fn confused(confusion: &Confusion) -> Vec<((u32, u32), u64)> {
    let mut confused: Vec<((u32, u32), u64)> =
        confusion.cells().filter(|((t, p), _)| t != p).collect();
    confused.sort_by_key(|&(_, images)| std::cmp::Reverse(images));
    confused
}

/// `confused_pairs.csv`: every confusion, largest first, with its share of the true class.
fn confused_pairs_csv(confusion: &Confusion, classes: &[String]) -> String {
    let mut csv = String::from("true_class,predicted_class,images,share_of_true_class\n");
    for ((t, p), images) in confused(confusion) {
        let _ = writeln!(
            csv,
            "{},{},{images},{:.6}",
            csv_field(&classes[t as usize]),
            csv_field(&classes[p as usize]),
            ratio(images, confusion.row_total(t))
        );
    }
    csv
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

    fn cifar_classes() -> Vec<String> {
        fleet_dataset::CLASS_NAMES.map(String::from).to_vec()
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
