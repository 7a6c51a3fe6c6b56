//! A job's running counts, a partition at a time: what its summary, confusion files and
//! report are made of. Its size follows the classes that occur and the report's bounded
//! galleries, never the number of images.

use std::collections::{BTreeMap, BTreeSet};

use fleet_protocol::job::{CLASS_SCORES_COLUMN, Plan};
use fleet_protocol::message::{Scored, Sealed};
use fleet_protocol::summary::{
    ClassAccuracy, ClassCount, ConfusedPair, Embeddings, Partial, Summary, Timings, ratio,
};

use super::compare::Models;
use super::gallery::Gallery;
use super::multilabel::MultiLabelTally;
use super::projection::Projection;
use super::rows::label_and_best;
use super::{Confusion, confused};

/// Confused pairs listed in the summary.
const SUMMARY_PAIRS: usize = 10;

/// Distinct reasons of failed partitions kept for the summary.
const MAX_REASONS: usize = 10;

/// The share of a job's predictions one class may take before the job is warned of it.
const COLLAPSED_SHARE: f64 = 0.5;
/// Predictions a job needs before a collapsed distribution means anything.
const COLLAPSED_MIN_IMAGES: u64 = 20;
/// Classes a model needs before one class taking most predictions is unusual.
const COLLAPSED_MIN_CLASSES: usize = 10;

/// The running counts of one job.
#[derive(Debug, Clone)]
pub struct Tally {
    classes: usize,
    images: u64,
    unreadable: u64,
    predicted: Vec<u64>,
    pub(super) confusion: Confusion,
    workers: BTreeMap<String, u64>,
    /// Each batch with the first partition it was seen in: the batches in job order.
    batches: BTreeMap<String, u32>,
    providers: BTreeSet<String>,
    decoders: BTreeSet<String>,
    /// Partitions no worker could score, their images, and their distinct reasons.
    failed_partitions: u32,
    failed_images: u64,
    failed_reasons: BTreeSet<String>,
    inference_ms: f64,
    preprocess_ms: f64,
    partitions: u32,
    first_taken_ms: Option<u64>,
    last_scored_ms: Option<u64>,
    queueing_seconds: f64,
    /// The report's pictures and lists.
    pub gallery: Gallery,
    /// The report's picture of the embeddings, for a job with vectors.
    pub projection: Option<Projection>,
    /// A multi-label job's counts.
    multi_label: Option<MultiLabelTally>,
    /// A job of several models: each model's counts and every pair's (the fields above are
    /// the first model's).
    pub models: Option<Models>,
    /// Images each model scored, in the job's order: those with its vectors.
    vectors: Vec<u64>,
}

impl Tally {
    /// Nothing counted yet, for the job of `plan`.
    pub fn new(plan: &Plan) -> Self {
        let classes = plan.classes.len();
        Self {
            classes,
            images: 0,
            unreadable: 0,
            predicted: vec![0; classes],
            confusion: Confusion::new(classes),
            workers: BTreeMap::new(),
            batches: BTreeMap::new(),
            providers: BTreeSet::new(),
            decoders: BTreeSet::new(),
            failed_partitions: 0,
            failed_images: 0,
            failed_reasons: BTreeSet::new(),
            inference_ms: 0.0,
            preprocess_ms: 0.0,
            partitions: 0,
            first_taken_ms: None,
            last_scored_ms: None,
            queueing_seconds: 0.0,
            gallery: Gallery::default(),
            projection: Projection::new(plan),
            multi_label: (plan.multi_label.clone())
                .map(|thresholds| MultiLabelTally::new(classes, thresholds)),
            models: Models::new(plan),
            vectors: vec![0; plan.model_count()],
        }
    }

    /// Counts partition `p`, with its vectors blob when it has one; each partition must be
    /// counted once.
    pub fn add(&mut self, p: &Scored, vectors: Option<&[u8]>) {
        if let (Some(projection), Some(blob)) = (&mut self.projection, vectors) {
            projection.add(p, blob);
        }
        if let Some(models) = &mut self.models {
            models.add(p);
        }
        for (count, scores) in self.vectors.iter_mut().zip(p.by_model()) {
            *count += scores.iter().filter(|s| s.scored).count() as u64;
        }
        if let Some(multi) = &mut self.multi_label {
            // The class scores are the first vector column of a multi-label job.
            let stride = vectors.map(|blob| blob.len() / p.scores.len().max(1));
            let mut values = Vec::new();
            for (i, score) in p.scores.iter().enumerate() {
                let class_scores = vectors.zip(stride).map(|(blob, stride)| {
                    values.clear();
                    values.extend(
                        blob[i * stride..][..4 * self.classes]
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                    );
                    values.as_slice()
                });
                multi.add(score, class_scores);
            }
        }
        let n = self.classes;
        if let Some(reason) = &p.failed {
            self.failed_partitions += 1;
            self.failed_images += p.scores.len() as u64;
            if self.failed_reasons.len() < MAX_REASONS {
                self.failed_reasons.insert(reason.clone());
            }
        }
        if p.failed.is_none() {
            *self.workers.entry(p.worker.clone()).or_default() += p.scores.len() as u64;
        }
        let first = self.batches.entry(p.batch.clone()).or_insert(p.partition);
        *first = (*first).min(p.partition);
        if !p.provider.is_empty() && !self.providers.contains(&p.provider) {
            self.providers.insert(p.provider.clone());
        }
        if !p.decoder.is_empty() && !self.decoders.contains(&p.decoder) {
            self.decoders.insert(p.decoder.clone());
        }
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
            // A multi-label job's distribution is of its tags.
            if self.multi_label.is_some() {
                for &(class, _) in score.tags.iter().filter(|&&(c, _)| (c as usize) < n) {
                    self.predicted[class as usize] += 1;
                }
            }
            match (best, score.scored) {
                (Some(_), _) if self.multi_label.is_some() => {}
                (Some((class, _)), _) => {
                    self.predicted[class as usize] += 1;
                    if let Some(l) = label {
                        self.confusion.add(l, class);
                    }
                }
                // A model with no classes scored it: its vectors are its result.
                (None, true) if n == 0 => {}
                (None, _) => self.unreadable += 1,
            }
        }
        self.gallery.add(p);
    }

    /// The execution providers that scored the job's partitions.
    pub fn providers(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(String::as_str)
    }

    /// `summary.json` of the sealed job.
    pub fn summary(&self, plan: &Plan, sealed: &Sealed, completed_at_ms: u64) -> Summary {
        let classes = &plan.classes;
        let confusion = &self.confusion;
        let (mut labelled, correct) = (confusion.labelled(), confusion.correct());
        if let Some(multi) = &self.multi_label {
            labelled = multi.labelled();
        }
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
        let mut batches: Vec<(&String, &u32)> = self.batches.iter().collect();
        batches.sort_by_key(|&(_, first)| *first);
        Summary {
            job: sealed.job.clone(),
            images: self.images,
            scored: self.images - self.unreadable,
            unreadable: self.unreadable,
            labelled,
            correct,
            accuracy: (sealed.labelled && plan.multi_label.is_none())
                .then(|| ratio(correct, labelled)),
            classes: classes.clone(),
            per_class,
            predicted,
            most_confused,
            batches: batches.into_iter().map(|(name, _)| name.clone()).collect(),
            partitions: self.partitions,
            workers: self.workers.clone(),
            timings: self.timings(sealed, completed_at_ms),
            partial: (self.failed_partitions > 0).then(|| Partial {
                failed_partitions: self.failed_partitions,
                images: self.failed_images,
                reasons: self.failed_reasons.iter().cloned().collect(),
            }),
            // From the manifest, which the collector reads when the job completes.
            incremental: None,
            multi_label: self.multi_label.as_ref().map(|m| m.summary(classes)),
            embeddings: (plan.vectors.iter())
                .filter(|column| column.name != CLASS_SCORES_COLUMN || plan.multi_label.is_none())
                .map(|column| Embeddings {
                    column: column.clone(),
                    images: (self.vectors.get(usize::from(column.model)))
                        .copied()
                        .unwrap_or_default(),
                })
                .collect(),
            models: (self.models.as_ref())
                .map(|m| m.figures(plan, sealed.labelled))
                .unwrap_or_default(),
            comparisons: (self.models.as_ref())
                .map(|m| m.comparisons(plan, sealed.labelled))
                .unwrap_or_default(),
            warnings: self.collapsed(classes).into_iter().collect(),
            decoders: self.decoders.iter().cloned().collect(),
        }
    }

    /// A warning when one class takes most of a single-label job's predictions though the model
    /// has many and the true labels (if any) do not say so: the usual sign of images prepared
    /// unlike the model's training (another size, channel order, scale or normalisation).
    fn collapsed(&self, classes: &[String]) -> Option<String> {
        if self.multi_label.is_some() || classes.len() < COLLAPSED_MIN_CLASSES {
            return None;
        }
        let total: u64 = self.predicted.iter().sum();
        let (class, &count) = (self.predicted.iter().enumerate()).max_by_key(|&(_, &n)| n)?;
        let share = ratio(count, total);
        if total < COLLAPSED_MIN_IMAGES || share < COLLAPSED_SHARE {
            return None;
        }
        // Labels that are mostly that class too explain it.
        let labelled = self.confusion.labelled();
        let truly = (self.confusion.true_classes())
            .find(|&(c, _)| c as usize == class)
            .map_or(0, |(_, n)| n);
        if labelled > 0 && ratio(truly, labelled) >= share / 2.0 {
            return None;
        }
        Some(format!(
            "{count} of {total} predictions ({:.0}%) are one class, `{}`: unless the images \
             really are mostly that, they are likely prepared unlike the model's training. \
             Check the staged model's preparation (`producer stage --preset`, or its size, \
             channel order, scale, mean and std: the model's spec in models/)",
            100.0 * share,
            classes[class]
        ))
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

/// Seconds from one Unix time in milliseconds to a later one; 0 if the clocks of two hosts
/// put them the other way round.
fn seconds_between(from_ms: u64, to_ms: u64) -> f64 {
    to_ms.saturating_sub(from_ms) as f64 / 1000.0
}
