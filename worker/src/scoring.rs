//! Scoring one partition: preprocess the whole partition, one model call, argmax and softmax.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use fleet_common::inference::{InferenceError, InferenceOptions, Scorer};
use fleet_common::job;
use fleet_common::mean_image::MeanImage;
use fleet_common::message::{Partition, Score, Scored};
use fleet_common::preprocess::preprocess_into;
use fleet_common::store::{BlobStore, StoreError};

/// Why a partition was not scored.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoreError {
    /// Will fail every time (the model is missing or unusable): dead-letter.
    Permanent(String),
    /// May succeed later (storage unreachable, say): retry.
    Transient(String),
}

/// A model ready to score, with the buffers reused across partitions.
#[derive(Debug)]
struct Loaded {
    scorer: Scorer,
    mean: MeanImage,
    input: Vec<f32>,
    logits: Vec<f32>,
}

/// The models this worker has loaded, by name: each loaded once, on first use.
#[derive(Debug)]
pub struct Models {
    store: Arc<dyn BlobStore>,
    options: InferenceOptions,
    loaded: HashMap<String, Loaded>,
}

impl Models {
    pub fn new(store: Arc<dyn BlobStore>, options: InferenceOptions) -> Self {
        Self {
            store,
            options,
            loaded: HashMap::new(),
        }
    }

    fn load(&mut self, model: &str) -> Result<&mut Loaded, ScoreError> {
        if !self.loaded.contains_key(model) {
            let fetch = |key: String| {
                self.store.get(&key).map_err(|e| match e {
                    StoreError::NotFound { .. }
                    | StoreError::BadKey(_)
                    | StoreError::NoContainer { .. } => ScoreError::Permanent(format!(
                        "model {model}: {e}; stage it with `producer stage`"
                    )),
                    other => ScoreError::Transient(other.to_string()),
                })
            };
            let onnx = fetch(job::model_key(model))?;
            let mean_key = job::mean_image_key(model);
            let mean = MeanImage::from_xml(&fetch(mean_key.clone())?, &mean_key)
                .map_err(|e| ScoreError::Permanent(e.to_string()))?;
            let scorer = Scorer::load(&onnx, model, &self.options).map_err(|e| match e {
                InferenceError::Run(reason) => ScoreError::Transient(reason),
                other => ScoreError::Permanent(other.to_string()),
            })?;
            self.loaded.insert(
                model.to_owned(),
                Loaded {
                    scorer,
                    mean,
                    input: Vec::new(),
                    logits: Vec::new(),
                },
            );
        }
        Ok(self.loaded.get_mut(model).expect("inserted above"))
    }

    /// Scores a validated partition.
    pub fn score(&mut self, partition: &Partition, worker: &str) -> Result<Scored, ScoreError> {
        let loaded = self.load(&partition.model)?;
        let images = partition.len();
        preprocess_into(&partition.pixels, &loaded.mean, &mut loaded.input);
        let started = Instant::now();
        loaded
            .scorer
            .score(&loaded.input, images, &mut loaded.logits)
            .map_err(|e| ScoreError::Transient(e.to_string()))?;
        let inference_ms = started.elapsed().as_secs_f64() * 1000.0;
        let classes = loaded.scorer.classes();
        let scores = loaded
            .logits
            .chunks_exact(classes)
            .zip(&partition.labels)
            .map(|(logits, &label)| {
                let (predicted, confidence) = argmax_softmax(logits);
                Score {
                    label,
                    predicted: predicted as u8,
                    confidence,
                }
            })
            .collect();
        Ok(Scored {
            job: partition.job.clone(),
            partition: partition.partition,
            batch: partition.batch.clone(),
            first_index: partition.first_index,
            filenames: partition.filenames.clone(),
            scores,
            worker: worker.to_owned(),
            inference_ms,
        })
    }
}

/// The predicted class (first maximum, as numpy's argmax) and its softmax probability.
pub fn argmax_softmax(logits: &[f32]) -> (usize, f32) {
    let mut best = 0;
    for (i, &value) in logits.iter().enumerate() {
        if value > logits[best] {
            best = i;
        }
    }
    let max = logits[best];
    // exp(max - max) = 1 over the sum of exp(l - max): stable for any logits.
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    (best, 1.0 / sum)
}

#[cfg(test)]
mod tests {
    use super::argmax_softmax;

    #[test]
    fn argmax_and_confidence() {
        let (i, p) = argmax_softmax(&[1.0, 3.0, 3.0, -2.0]);
        assert_eq!(i, 1, "ties go to the first maximum");
        let expected = 3f32.exp()
            / [1.0f32, 3.0, 3.0, -2.0]
                .iter()
                .map(|l| l.exp())
                .sum::<f32>();
        assert!((p - expected).abs() < 1e-6);
        let (_, p) = argmax_softmax(&[1000.0, 0.0]);
        assert!((p - 1.0).abs() < 1e-6, "large logits must not overflow");
    }
}
