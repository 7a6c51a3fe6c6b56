//! A job's result files. `scores.csv`'s rows and the Parquet files are written a partition at
//! a time as partitions arrive ([`rows`], [`parquet`]); the counts behind `summary.json`, the
//! confusion files and `report.html` are kept in a [`Tally`] and written when the job
//! completes ([`finish`], [`report`]).
//!
//! Everything is sized by the job's classes (the model's output), never by a constant, and
//! nothing held grows with the number of images.

pub mod compare;
mod confusion;
pub mod gallery;
pub mod multilabel;
pub mod parquet;
pub mod projection;
pub mod report;
pub mod rows;
mod tally;

pub use confusion::Confusion;
pub use tally::Tally;

use std::fmt::Write as _;

use fleet_protocol::job::Plan;
use fleet_protocol::message::Sealed;
use fleet_protocol::summary::{Summary, ratio};

use rows::csv_field;

/// Classes up to which the confusion matrix is drawn as a heat map.
pub const MAX_HEAT_MAP_CLASSES: usize = 30;

/// Classes up to which `confusion.csv` is the whole matrix; beyond, its non-zero cells one a
/// row (a 21,843-class matrix would be 477 million cells).
pub const MAX_MATRIX_CLASSES: usize = 1_000;

/// The files written when a job completes, beside `scores.csv` (committed from the blocks
/// staged as partitions arrived) and `report.html`.
#[derive(Debug)]
pub struct Finished {
    /// Labelled jobs only.
    pub confusion_csv: Option<String>,
    /// Labelled jobs only: every off-diagonal cell, largest first.
    pub confused_pairs_csv: Option<String>,
    /// Labelled jobs of up to [`MAX_HEAT_MAP_CLASSES`] classes.
    pub confusion_png: Option<Vec<u8>>,
    /// A job of several models: for every pair, its file name and the matrix of one model's
    /// class against the other's.
    pub agreement_csvs: Vec<(String, String)>,
    /// `summary.json`'s content.
    pub summary: Summary,
}

/// The files of the sealed job whose every partition `tally` has counted.
pub fn finish(tally: &Tally, plan: &Plan, sealed: &Sealed, completed_at_ms: u64) -> Finished {
    let summary = tally.summary(plan, sealed, completed_at_ms);
    let agreement_csvs = (tally.models.iter())
        .flat_map(|models| &models.pairs)
        .map(|pair| {
            let (a, b) = (&plan.models[pair.a], &plan.models[pair.b]);
            let name = format!("agreement_{}_{}.csv", file_part(a), file_part(b));
            let corner = format!("{a}_class\\{b}_class");
            (name, matrix_csv(&pair.matrix, &plan.classes, &corner))
        })
        .collect();
    // A multi-label job has no one true class an image: its measures are per class.
    if !sealed.labelled || plan.multi_label.is_some() {
        return Finished {
            confusion_csv: None,
            confused_pairs_csv: None,
            confusion_png: None,
            agreement_csvs,
            summary,
        };
    }
    let classes = &plan.classes;
    let confusion = &tally.confusion;
    let names: Vec<&str> = classes.iter().map(String::as_str).collect();
    Finished {
        confusion_csv: Some(confusion_csv(confusion, classes)),
        confused_pairs_csv: Some(confused_pairs_csv(confusion, classes)),
        confusion_png: (classes.len() <= MAX_HEAT_MAP_CLASSES)
            .then(|| fleet_figures::confusion_png(&confusion.dense(), &names)),
        agreement_csvs,
        summary,
    }
}

/// A model's name as part of a file name: characters other than letters, digits, `.`, `-` and
/// `_` made `_`.
fn file_part(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
            _ => '_',
        })
        .collect()
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

/// `confusion.csv`: the matrix, true class by row, over the classes some image has as its
/// true or predicted class, when they are at most [`MAX_MATRIX_CLASSES`]; beyond, the non-zero
/// cells one a row (`true_class,predicted_class,images`).
fn confusion_csv(confusion: &Confusion, classes: &[String]) -> String {
    matrix_csv(confusion, classes, "true_class\\predicted_class")
}

/// A matrix of classes by classes as CSV: the rows' class by row, over the classes seen (see
/// [`Confusion::seen`]) when they are at most [`MAX_MATRIX_CLASSES`], with `corner`
/// (`rows\\columns`) heading the first column; beyond, the non-zero cells one a row, under the
/// two names of `corner`.
fn matrix_csv(confusion: &Confusion, classes: &[String], corner: &str) -> String {
    let mut csv = String::new();
    let seen = confusion.seen();
    if seen.len() > MAX_MATRIX_CLASSES {
        let (rows, columns) = corner.split_once('\\').unwrap_or((corner, ""));
        let _ = writeln!(csv, "{},{},images", csv_field(rows), csv_field(columns));
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
    csv.push_str(&csv_field(corner));
    for &class in &seen {
        let _ = write!(csv, ",{}", csv_field(&classes[class as usize]));
    }
    csv.push('\n');
    for &t in &seen {
        csv.push_str(&csv_field(&classes[t as usize]));
        for &p in &seen {
            let _ = write!(csv, ",{}", confusion.get(t, p));
        }
        csv.push('\n');
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::rows::SCORES_HEADER;
    use super::*;
    use fleet_protocol::message::{Score, Scored};

    fn cifar_classes() -> Vec<String> {
        fleet_dataset::CLASS_NAMES.map(String::from).to_vec()
    }

    fn plan(classes: Vec<String>, top_k: u8, several_batches: bool) -> Plan {
        Plan {
            models: Vec::new(),
            job: "j".into(),
            classes,
            top_k,
            several_batches,
            max_failed_partitions: 0,
            vectors: Vec::new(),
            multi_label: None,
        }
    }

    fn sealed(labelled: bool) -> Sealed {
        Sealed {
            container: "ctr".into(),
            job: "j".into(),
            partitions: 2,
            images: 3,
            labelled,
            submitted_at_ms: 1_000,
            published_at_ms: 1_500,
        }
    }

    fn scored(partition: u32, batch: &str, first: u64, pairs: &[(u32, u32)]) -> Scored {
        Scored {
            container: "ctr".into(),
            more: Vec::new(),
            model_ms: Vec::new(),
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
                    scored: true,
                    tags: Vec::new(),
                    true_tags: None,
                })
                .collect(),
            worker: "w1".into(),
            inference_ms: 10.0,
            preprocess_ms: 1.0,
            published_at_ms: 1_600,
            started_at_ms: 1_700 + u64::from(partition) * 100,
            finished_at_ms: 1_800 + u64::from(partition) * 100,
            provider: "CPU".into(),
            decoder: String::new(),
            thumbnails: Vec::new(),
            failed: None,
            vectors: false,
        }
    }

    /// `scores.csv` and the other files, as the collector writes them.
    fn build(plan: &Plan, sealed: &Sealed, parts: &[Scored], at_ms: u64) -> (String, Finished) {
        let mut csv = rows::header(plan);
        let mut tally = Tally::new(plan);
        for p in parts {
            csv.push_str(&rows::rows(plan, p));
            tally.add(p, None);
        }
        (csv, finish(&tally, plan, sealed, at_ms))
    }

    /// One class taking most predictions is warned of, unless the true labels say the images
    /// are mostly that class, the job is too small to tell, or the model has few classes.
    #[test]
    fn a_collapsed_distribution_is_warned_unless_the_labels_explain_it() {
        let warnings = |pairs: &[(u32, u32)], classes: Vec<String>| {
            let plan = plan(classes, 1, false);
            let (_, files) = build(&plan, &sealed(true), &[scored(0, "b", 0, pairs)], 3_000);
            files.summary.warnings
        };
        // 30 images, one of each class thrice, 21 of them predicted `cat` (3).
        let collapsed: Vec<(u32, u32)> = (0..30)
            .map(|i| (i % 10, if i < 21 { 3 } else { i % 10 }))
            .collect();
        let said = warnings(&collapsed, cifar_classes());
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].starts_with("22 of 30 predictions (73%) are one class, `cat`"),
            "{said:?}"
        );
        // The labels say they are mostly cats: the model is right to say so.
        let cats: Vec<(u32, u32)> = (0..30)
            .map(|i| {
                (
                    if i < 20 { 3 } else { i % 10 },
                    if i < 21 { 3 } else { i % 10 },
                )
            })
            .collect();
        assert!(warnings(&cats, cifar_classes()).is_empty());
        // Too few images, or too few classes, to tell.
        assert!(warnings(&collapsed[..19], cifar_classes()).is_empty());
        let four: Vec<String> = cifar_classes().into_iter().take(4).collect();
        let few: Vec<(u32, u32)> = (0..30).map(|i| (i % 4, 3)).collect();
        assert!(warnings(&few, four).is_empty());
    }

    #[test]
    fn counts_accuracy_and_rows() {
        let parts = [
            scored(0, "test_batch", 0, &[(3, 3), (5, 3)]),
            scored(1, "test_batch", 2, &[(0, 0)]),
        ];
        let plan = plan(cifar_classes(), 1, false);
        let (csv, files) = build(&plan, &sealed(true), &parts, 3_000);
        assert_eq!(files.summary.images, 3);
        assert_eq!(files.summary.correct, 2);
        assert_eq!(
            files.summary.accuracy_line(),
            "Correctly predicted 2 of 3 images (66.67%)"
        );
        assert_eq!(files.summary.timings.wall_seconds, 2.0);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], format!("{SCORES_HEADER},error"));
        assert_eq!(lines[2], "1,f1.png,5,3,dog,cat,0.500000,");
        assert_eq!(lines[3], "2,f0.png,0,0,airplane,airplane,0.500000,");
        // The classes seen (true or predicted), not all ten.
        assert_eq!(
            files.confusion_csv.unwrap(),
            "true_class\\predicted_class,airplane,cat,dog\n\
             airplane,1,0,0\n\
             cat,0,1,0\n\
             dog,0,1,0\n"
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
            scored(1, "test_batch", 0, &[(2, 2)]),
            scored(0, "data_batch_1", 0, &[(1, 1)]),
        ];
        let (csv, files) = build(
            &plan(cifar_classes(), 1, true),
            &sealed(true),
            &parts,
            1_000,
        );
        assert!(csv.starts_with("batch,index,"));
        assert!(csv.contains("\ntest_batch,0,f0.png,2,2,"));
        // In job order, whatever order the partitions came in.
        assert_eq!(files.summary.batches, ["data_batch_1", "test_batch"]);
    }

    #[test]
    fn any_class_count_is_kept_apart() {
        // Class 57 of 100 is neither clamped nor counted as another class.
        let classes: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
        let parts = [scored(0, "p/", 0, &[(9, 57), (57, 57)])];
        let (csv, files) = build(&plan(classes, 1, false), &sealed(true), &parts, 2_000);
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
        assert!(csv.contains("0,f0.png,9,57,c9,c57,"));
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
            scored: false,
            tags: Vec::new(),
            true_tags: None,
        };
        let plan = plan(["cat", "dog", "ship"].map(String::from).to_vec(), 2, false);
        let (csv, files) = build(&plan, &sealed(false), &[part], 2_000);
        let lines: Vec<&str> = csv.lines().collect();
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
    fn a_model_with_fewer_classes_than_the_top_k_has_a_column_per_class() {
        let plan = plan(["a", "b"].map(String::from).to_vec(), 5, false);
        assert!(rows::header(&plan).ends_with(",top2_confidence,error\n"));
    }
}
