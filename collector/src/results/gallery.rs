//! The report's pictures and lists, kept as partitions arrive: a bounded number of thumbnails
//! whatever the job's size, chosen the same whatever order the partitions come in.

use std::cmp::Ordering;

use fleet_protocol::gallery::{GALLERY_SIZE, SAMPLE_SIZE, disagreement};
use fleet_protocol::message::{Score, Scored};

/// Unreadable images listed by name; the rest are counted (`scores.csv` has them all).
pub const UNREADABLE_LISTED: usize = 100;

/// An image the report may show.
#[derive(Debug, Clone)]
pub struct Pictured {
    /// Where it is in the job: partition, then position in the partition.
    pub at: (u32, u32),
    /// Its thumbnail, a PNG file.
    pub png: Vec<u8>,
    /// Its name (see [`image_name`]).
    pub name: String,
    /// Its score, ranking as many classes as the report shows (the worker ranks them for
    /// pictures whatever the job's top-k).
    pub score: Score,
    /// In a job of several models, the others' scores of it, in the job's order.
    pub more: Vec<Score>,
}

/// An image that could not be scored.
#[derive(Debug, Clone)]
pub struct Unreadable {
    /// Where it is in the job.
    pub at: (u32, u32),
    /// Its name.
    pub name: String,
    /// Why.
    pub error: String,
}

/// The report's galleries so far.
#[derive(Debug, Clone, Default)]
pub struct Gallery {
    /// The first images of the job's first partition, in order.
    pub samples: Vec<Pictured>,
    /// The most confident mistakes, most confident first.
    pub mistakes: Vec<Pictured>,
    /// The least confident predictions of images without a label, least confident first.
    pub unsure: Vec<Pictured>,
    /// In a job of several models, the images they disagree on while all are most confident,
    /// most confident first ([`disagreement`]).
    pub disagreements: Vec<Pictured>,
    /// The first unreadable images in job order.
    pub unreadable: Vec<Unreadable>,
    /// Unreadable images in all.
    pub unreadable_count: u64,
}

impl Gallery {
    /// Takes in what partition `p` adds.
    pub fn add(&mut self, p: &Scored) {
        for thumbnail in &p.thumbnails {
            let position = thumbnail.position as usize;
            let Some(score) = p.scores.get(position) else {
                continue;
            };
            let more: Vec<&Score> = p.more.iter().filter_map(|m| m.get(position)).collect();
            // The picture's scores rank the classes its thumbnail carries, where it does.
            let shown = |model: usize, score: &Score| match thumbnail.top.get(model) {
                Some(top) if !top.is_empty() => Score {
                    top: top.clone(),
                    ..score.clone()
                },
                _ => score.clone(),
            };
            let picture = || Pictured {
                at: (p.partition, thumbnail.position),
                png: thumbnail.png.clone(),
                name: image_name(p, position),
                score: shown(0, score),
                more: (more.iter().enumerate())
                    .map(|(m, &s)| shown(m + 1, s))
                    .collect(),
            };
            if disagreement(std::iter::once(score).chain(more.iter().copied())).is_some() {
                keep_best(&mut self.disagreements, picture(), GALLERY_SIZE, |a, b| {
                    lowest(b).total_cmp(&lowest(a)).then(a.at.cmp(&b.at))
                });
            }
            if p.partition == 0 && position < SAMPLE_SIZE {
                keep_best(&mut self.samples, picture(), SAMPLE_SIZE, |a, b| {
                    a.at.cmp(&b.at)
                });
            }
            match (score.label, score.predicted()) {
                (Some(label), Some((class, _))) if label != class => {
                    keep_best(&mut self.mistakes, picture(), GALLERY_SIZE, |a, b| {
                        confidence(b)
                            .total_cmp(&confidence(a))
                            .then(a.at.cmp(&b.at))
                    });
                }
                (None, Some(_)) => {
                    keep_best(&mut self.unsure, picture(), GALLERY_SIZE, |a, b| {
                        confidence(a)
                            .total_cmp(&confidence(b))
                            .then(a.at.cmp(&b.at))
                    });
                }
                _ => {}
            }
        }
        for (i, score) in p.scores.iter().enumerate() {
            // A scored image may carry a note (a JPEG decoded despite corrupt data): it is
            // not unreadable.
            let (false, Some(error)) = (score.scored, &score.error) else {
                continue;
            };
            self.unreadable_count += 1;
            let unreadable = Unreadable {
                at: (p.partition, i as u32),
                name: image_name(p, i),
                error: error.clone(),
            };
            keep_best(
                &mut self.unreadable,
                unreadable,
                UNREADABLE_LISTED,
                |a, b| a.at.cmp(&b.at),
            );
        }
    }
}

/// Adds `item` to `kept`, sorted by `order`, keeping the first `most`.
fn keep_best<T>(kept: &mut Vec<T>, item: T, most: usize, order: impl Fn(&T, &T) -> Ordering) {
    let at = kept.partition_point(|k| order(k, &item) == Ordering::Less);
    if at < most {
        kept.insert(at, item);
        kept.truncate(most);
    }
}

fn confidence(picture: &Pictured) -> f32 {
    picture.score.predicted().map_or(0.0, |p| p.1)
}

/// The lowest confidence of the models that disagree on a picture's image.
fn lowest(picture: &Pictured) -> f32 {
    disagreement(std::iter::once(&picture.score).chain(&picture.more)).unwrap_or(0.0)
}

/// An image's name in the report: its file name, else its index in the batch.
pub fn image_name(partition: &Scored, position: usize) -> String {
    match partition.filenames.get(position) {
        Some(name) if !name.is_empty() => name.clone(),
        _ => format!(
            "{} #{}",
            partition.batch,
            partition.first_index + position as u64
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::message::Thumbnail;

    fn partition(partition: u32, confidences: &[f32]) -> Scored {
        Scored {
            container: "ctr".into(),
            more: Vec::new(),
            model_ms: Vec::new(),
            job: "j".into(),
            partition,
            batch: "b".into(),
            first_index: u64::from(partition) * 100,
            filenames: (0..confidences.len())
                .map(|i| format!("{partition}-{i}.png"))
                .collect(),
            scores: confidences
                .iter()
                .map(|&c| Score {
                    label: Some(0),
                    top: vec![(1, c)],
                    error: None,
                    scored: true,
                    tags: Vec::new(),
                    true_tags: None,
                })
                .collect(),
            worker: "w".into(),
            inference_ms: 0.0,
            preprocess_ms: 0.0,
            published_at_ms: 0,
            started_at_ms: 0,
            finished_at_ms: 0,
            provider: "CPU".into(),
            decoder: String::new(),
            thumbnails: (0..confidences.len() as u32)
                .map(|position| Thumbnail {
                    position,
                    png: vec![1],
                    top: Vec::new(),
                })
                .collect(),
            failed: None,
            vectors: false,
        }
    }

    #[test]
    fn the_galleries_are_the_same_whatever_order_partitions_arrive_in() {
        let parts: Vec<Scored> = (0..8)
            .map(|p| {
                let confidences: Vec<f32> = (0..5)
                    .map(|i| ((p * 7 + i * 3) % 11) as f32 / 11.0)
                    .collect();
                partition(p, &confidences)
            })
            .collect();
        let names = |gallery: &Gallery| -> Vec<String> {
            gallery.mistakes.iter().map(|m| m.name.clone()).collect()
        };
        let mut forward = Gallery::default();
        parts.iter().for_each(|p| forward.add(p));
        let mut backward = Gallery::default();
        parts.iter().rev().for_each(|p| backward.add(p));
        assert_eq!(forward.mistakes.len(), GALLERY_SIZE);
        assert_eq!(names(&forward), names(&backward));
        // Most confident first; among equals, job order.
        let confidences: Vec<f32> = forward.mistakes.iter().map(confidence).collect();
        assert!(
            confidences.windows(2).all(|w| w[0] >= w[1]),
            "{confidences:?}"
        );
        assert_eq!(forward.samples.len(), 5);
        assert_eq!(forward.samples[0].name, "0-0.png");
    }
}
