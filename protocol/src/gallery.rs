//! Which images of a partition the report may show. The collector never sees pixels: each
//! worker ships small PNG copies of the images [`pick_thumbnails`] picks, and the report takes
//! the best of them across partitions. A partition's own top [`GALLERY_SIZE`] holds every image
//! of the job's top [`GALLERY_SIZE`] that lies in it, so the gallery is the job's, not a
//! sample's.

use std::collections::BTreeSet;

use crate::message::Score;

/// Images in each gallery (most confident mistakes, least confident predictions).
pub const GALLERY_SIZE: usize = 12;
/// Images of the job's first partition in the sample grid.
pub const SAMPLE_SIZE: usize = 16;
/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: usize = 64;
/// Positions of the images of partition `partition` whose thumbnails the report may show: the
/// first [`SAMPLE_SIZE`] images the model scored in the job's first partition, the partition's
/// [`GALLERY_SIZE`] most confident mistakes, and its [`GALLERY_SIZE`] least confident
/// predictions of images without a label. Sorted, each once.
pub fn pick_thumbnails(partition: u32, scores: &[Score]) -> Vec<usize> {
    let mut picked = BTreeSet::new();
    if partition == 0 {
        picked.extend(
            scores
                .iter()
                .enumerate()
                .filter(|(_, s)| s.scored)
                .map(|(i, _)| i)
                .take(SAMPLE_SIZE),
        );
    }
    let mut mistakes: Vec<(usize, f32)> = Vec::new();
    let mut unlabelled: Vec<(usize, f32)> = Vec::new();
    for (i, score) in scores.iter().enumerate() {
        let Some((class, confidence)) = score.predicted() else {
            continue;
        };
        match score.label {
            Some(label) if label != class => mistakes.push((i, confidence)),
            Some(_) => {}
            None => unlabelled.push((i, confidence)),
        }
    }
    mistakes.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    unlabelled.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    picked.extend(mistakes.iter().take(GALLERY_SIZE).map(|m| m.0));
    picked.extend(unlabelled.iter().take(GALLERY_SIZE).map(|m| m.0));
    picked.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(label: Option<u32>, class: u32, confidence: f32) -> Score {
        Score {
            label,
            top: vec![(class, confidence)],
            error: None,
            scored: true,
            tags: Vec::new(),
            true_tags: None,
        }
    }

    #[test]
    fn picks_the_sample_and_the_partitions_extremes() {
        // 40 labelled images: every fifth wrong, with rising confidence.
        let scores: Vec<Score> = (0..40)
            .map(|i| {
                let wrong = i % 5 == 0;
                score(Some(0), u32::from(wrong), i as f32 / 40.0)
            })
            .collect();
        let first = pick_thumbnails(0, &scores);
        assert_eq!(
            &first[..SAMPLE_SIZE],
            &(0..SAMPLE_SIZE).collect::<Vec<_>>()[..]
        );
        // All 8 mistakes (under GALLERY_SIZE) are there too.
        assert!((0..40).step_by(5).all(|i| first.contains(&i)));
        let later = pick_thumbnails(3, &scores);
        assert_eq!(later, (0..40).step_by(5).collect::<Vec<_>>());

        // More mistakes than the gallery: the most confident ones.
        let scores: Vec<Score> = (0..30)
            .map(|i| score(Some(0), 1, i as f32 / 30.0))
            .collect();
        assert_eq!(pick_thumbnails(1, &scores), (18..30).collect::<Vec<_>>());
        // Unlabelled: the least confident ones; unreadable images never.
        let mut scores: Vec<Score> = (0..30).map(|i| score(None, 1, i as f32 / 30.0)).collect();
        scores[0] = Score {
            label: None,
            top: vec![],
            error: Some("corrupt".into()),
            scored: false,
            tags: Vec::new(),
            true_tags: None,
        };
        assert_eq!(pick_thumbnails(1, &scores), (1..13).collect::<Vec<_>>());
    }
}
