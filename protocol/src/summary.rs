//! `summary.json`: what a finished job came to, written by the collector and read by the
//! producer (`status`, `--wait`) and the embedded run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Timings of a job, in the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// When the producer began submitting the job.
    pub submitted_at_ms: u64,
    /// When the collector wrote the result files.
    pub completed_at_ms: u64,
    /// From submission to the last result in.
    pub wall_seconds: f64,
    /// Images over wall seconds.
    pub images_per_second: f64,
    /// Time spent in model calls, summed over workers.
    pub inference_seconds: f64,
    /// Time spent fetching, decoding and preprocessing images, summed over workers.
    pub preprocess_seconds: f64,
    /// From submission to the last partition published: the producer listing or decoding
    /// the dataset.
    #[serde(default)]
    pub staging_seconds: f64,
    /// Mean time a partition waited between being published and a worker taking it.
    #[serde(default)]
    pub queueing_seconds: f64,
    /// From the first partition taken by a worker to the last one scored.
    #[serde(default)]
    pub scoring_seconds: f64,
    /// The collector writing the result files before the report and summary (set by it).
    #[serde(default)]
    pub writing_seconds: f64,
}

/// Accuracy of one true class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    /// The true class.
    pub class: String,
    /// Labelled images of it.
    pub images: u64,
    /// Those predicted right.
    pub correct: u64,
    /// `correct / images`.
    pub accuracy: f64,
}

/// How often one class was predicted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassCount {
    /// The class.
    pub class: String,
    /// Images predicted as it.
    pub predicted: u64,
}

/// Images of one true class predicted as another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfusedPair {
    /// The true class.
    pub true_class: String,
    /// The class it was taken for.
    pub predicted_class: String,
    /// How many images.
    pub images: u64,
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The job's id.
    pub job: String,
    /// Images in the job: one row each in `scores.csv`.
    pub images: u64,
    /// Images the model scored.
    pub scored: u64,
    /// Images that could not be scored: unreadable, or the model's output for them not a
    /// number (their rows carry the error).
    pub unreadable: u64,
    /// Scored images with a true label: the accuracy is over these.
    pub labelled: u64,
    /// Labelled images predicted right.
    pub correct: u64,
    /// `correct / labelled`; absent for a job without labels.
    pub accuracy: Option<f64>,
    /// Class names by model output index.
    pub classes: Vec<String>,
    /// Accuracy per true class (labelled jobs).
    pub per_class: Vec<ClassAccuracy>,
    /// Predictions per class: the class distribution of the scored images.
    pub predicted: Vec<ClassCount>,
    /// The most frequent confusions, largest first (labelled jobs).
    pub most_confused: Vec<ConfusedPair>,
    /// Batches scored, in job order.
    pub batches: Vec<String>,
    /// Partitions in the job.
    pub partitions: u32,
    /// Images scored by each worker.
    pub workers: BTreeMap<String, u64>,
    /// Where the time went.
    pub timings: Timings,
    /// Set when partitions failed within the job's error budget: the job completed without
    /// their scores (their images have rows with the reason as error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Partial>,
    /// Set for an incremental job (`--incremental`): its rows are the images new or changed
    /// since the earlier jobs named here, whose rows cover the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<crate::job::Incremental>,
    /// The vectors (embeddings) the job's rows carry in its Parquet results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embeddings: Vec<Embeddings>,
    /// A multi-label job's measures, instead of accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_label: Option<MultiLabel>,
    /// A job of several models: each model's figures, in the job's order (the fields above
    /// are the first model's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelFigures>,
    /// A job of several models: every pair of them compared, over the images both scored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comparisons: Vec<Comparison>,
    /// What looks wrong with the job's results, with its likely cause (one class taking most
    /// predictions, say): said at the job's end and in the report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The JPEG decoders the workers ran (with SIMD or without): the pixels are the same,
    /// the speed is not, so timings are read with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decoders: Vec<String>,
}

/// One model of a job of several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFigures {
    /// The model's name: its columns' prefix.
    pub model: String,
    /// Images it scored.
    pub scored: u64,
    /// Images it could not score.
    pub unreadable: u64,
    /// Scored images with a true label.
    pub labelled: u64,
    /// Those it predicted right.
    pub correct: u64,
    /// `correct / labelled`; absent without labels.
    pub accuracy: Option<f64>,
    /// The accuracy's 95% confidence interval (Wilson's score interval), low and high.
    pub accuracy_interval: Option<[f64; 2]>,
    /// Time in its model calls, summed over workers.
    pub inference_seconds: f64,
}

/// Two models of a job compared over the images both scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The first model of the pair (earlier in the job's order).
    pub a: String,
    /// The second.
    pub b: String,
    /// Images both scored.
    pub images: u64,
    /// Those both gave the same best class.
    pub agree: u64,
    /// `agree / images`.
    pub agreement: f64,
    /// With top-k above 1: the mean share of the k best classes the two have in common.
    pub top_k_overlap: Option<f64>,
    /// The most frequent disagreements (a's class, b's class), largest first.
    pub most_disagreed: Vec<Disagreement>,
    /// Of the images both scored, those with a true label.
    pub labelled: u64,
    /// Labelled images only `a` predicted right.
    pub only_a_right: u64,
    /// Labelled images only `b` predicted right.
    pub only_b_right: u64,
    /// McNemar's exact test on those two counts (two-sided binomial test with p = 1/2, as
    /// statsmodels' `mcnemar(exact=True)`): how likely a difference at least this large is if
    /// the two models were equally accurate. Absent without labels.
    pub mcnemar_p_value: Option<f64>,
}

/// Images one model of a pair put in one class and the other in another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disagreement {
    /// The first model's class.
    pub a_class: String,
    /// The second model's class.
    pub b_class: String,
    /// How many images.
    pub images: u64,
}

/// What a multi-label job came to, over its labelled images the model scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiLabel {
    /// Each class's threshold (one for all, or one per class).
    pub thresholds: Vec<f32>,
    /// Labelled images the model scored: what the measures are over.
    pub labelled: u64,
    /// The mean of the classes' average precision (mAP), over the classes some labelled image
    /// has.
    pub mean_average_precision: Option<f64>,
    /// Tags right over tags given, over every class.
    pub micro_precision: Option<f64>,
    /// Tags right over true tags, over every class.
    pub micro_recall: Option<f64>,
    /// The harmonic mean of the two.
    pub micro_f1: Option<f64>,
    /// What average precision ranked: `every score`, or (a job past the exact limit) scores
    /// counted in bins.
    pub average_precision_over: String,
    /// The classes with the lowest average precision, lowest first.
    pub worst: Vec<String>,
    /// Each class some labelled image has or was given, in class order.
    pub per_class: Vec<ClassMetrics>,
}

/// One class of a multi-label job, at its threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// The class.
    pub class: String,
    /// Labelled images with it as a true tag.
    pub positives: u64,
    /// Labelled images given it as a tag.
    pub predicted: u64,
    /// Both.
    pub hits: u64,
    /// `hits / predicted`; absent when none was given it.
    pub precision: Option<f64>,
    /// `hits / positives`; absent when no image has it.
    pub recall: Option<f64>,
    /// The harmonic mean of precision and recall.
    pub f1: Option<f64>,
    /// Average precision over the labelled images ranked by the class's score; absent when no
    /// image has it.
    pub average_precision: Option<f64>,
}

/// One vector column of a job's results, and how many images have a vector in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embeddings {
    /// The column: its name, dimension and precision.
    #[serde(flatten)]
    pub column: crate::job::VectorColumn,
    /// Images with a vector (those the model scored).
    pub images: u64,
}

/// What a partial job lacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    /// Partitions that could not be scored.
    pub failed_partitions: u32,
    /// Images in them.
    pub images: u64,
    /// Why, each distinct reason once (at most ten).
    pub reasons: Vec<String>,
}

impl Summary {
    /// The walkthrough's closing line, or what stands for it in a job without labels; images
    /// that could not be read are named.
    pub fn accuracy_line(&self) -> String {
        let mut line = if self.models.len() > 1 {
            self.models_line()
        } else if let Some(m) = self.multi_label.as_ref().filter(|m| m.labelled > 0) {
            let value = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
            format!(
                "mAP {} over {} labelled images (micro precision {}, recall {}, F1 {})",
                value(m.mean_average_precision),
                m.labelled,
                value(m.micro_precision),
                value(m.micro_recall),
                value(m.micro_f1)
            )
        } else if self.accuracy.is_some() {
            accuracy_line(self.correct, self.labelled)
        } else if self.classes.is_empty() {
            format!("Scored {} images (no classes)", self.scored)
        } else {
            format!("Scored {} images (no true labels)", self.scored)
        };
        for embeddings in &self.embeddings {
            let _ = write!(
                line,
                "; {} vectors of {} values in column {}",
                embeddings.images, embeddings.column.dim, embeddings.column.name
            );
        }
        if self.unreadable > 0 {
            let _ = write!(
                line,
                "; {} of {} images could not be scored (see the error column of scores.csv)",
                self.unreadable, self.images
            );
        }
        if let Some(incremental) = self.incremental.as_ref().filter(|i| !i.since.is_empty()) {
            let _ = write!(
                line,
                "; incremental: {} unchanged images are in the rows of job {}",
                incremental.unchanged,
                incremental.since.join(", ")
            );
        }
        if let Some(partial) = &self.partial {
            let _ = write!(
                line,
                "; partial: {} images in {} failed partitions ({})",
                partial.images,
                partial.failed_partitions,
                partial.reasons.join("; ")
            );
        }
        line
    }

    /// Each model's accuracy (or images scored) and how far each pair agrees.
    fn models_line(&self) -> String {
        let mut parts: Vec<String> = (self.models.iter())
            .map(|m| match m.accuracy {
                Some(_) => format!(
                    "{}: {}",
                    m.model,
                    accuracy_line(m.correct, m.labelled).replace("Correctly predicted", "correct")
                ),
                None => format!("{}: scored {} images", m.model, m.scored),
            })
            .collect();
        for c in &self.comparisons {
            let mut part = format!(
                "{} and {} agree on {} of {} images ({:.2}%)",
                c.a,
                c.b,
                c.agree,
                c.images,
                100.0 * c.agreement
            );
            if let Some(p) = c.mcnemar_p_value {
                let _ = write!(part, ", McNemar p = {p:.4}");
            }
            parts.push(part);
        }
        parts.join("; ")
    }
}

/// "Correctly predicted X of N images (P%)", as the walkthrough prints it.
pub fn accuracy_line(correct: u64, images: u64) -> String {
    let percent = 100.0 * ratio(correct, images);
    format!("Correctly predicted {correct} of {images} images ({percent:.2}%)")
}

/// `a / b`, 0 when `b` is 0.
pub fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}
