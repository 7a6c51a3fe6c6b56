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
/// Classes the report shows under each picture, best first.
pub const SHOWN_TOP: usize = 3;
/// Positions of the images of partition `partition` whose thumbnails the report may show: the
/// first [`SAMPLE_SIZE`] images the model scored in the job's first partition, the partition's
/// [`GALLERY_SIZE`] most confident mistakes, and its [`GALLERY_SIZE`] least confident
/// predictions of images without a label; in a job of several models (`more` holds the others'
/// scores), its [`GALLERY_SIZE`] most confident disagreements too ([`disagreement`]). Sorted,
/// each once.
pub fn pick_thumbnails(partition: u32, scores: &[Score], more: &[Vec<Score>]) -> Vec<usize> {
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
    let mut disagreements: Vec<(usize, f32)> = (0..scores.len())
        .filter_map(|i| {
            let each = std::iter::once(&scores[i]).chain(more.iter().filter_map(|m| m.get(i)));
            disagreement(each).map(|confidence| (i, confidence))
        })
        .collect();
    disagreements.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    picked.extend(disagreements.iter().take(GALLERY_SIZE).map(|d| d.0));
    picked.into_iter().collect()
}

/// Whether the models whose scores of one image are `each` disagree on its class, every one
/// having scored it: then the lowest of their confidences (two models both sure and apart are
/// the disagreements worth a look).
pub fn disagreement<'a>(each: impl Iterator<Item = &'a Score>) -> Option<f32> {
    let mut classes = None;
    let mut differ = false;
    let mut lowest = f32::INFINITY;
    let mut models = 0;
    for score in each {
        let (class, confidence) = score.predicted()?;
        models += 1;
        differ |= *classes.get_or_insert(class) != class;
        lowest = lowest.min(confidence);
    }
    (differ && models > 1).then_some(lowest)
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
        let first = pick_thumbnails(0, &scores, &[]);
        assert_eq!(
            &first[..SAMPLE_SIZE],
            &(0..SAMPLE_SIZE).collect::<Vec<_>>()[..]
        );
        // All 8 mistakes (under GALLERY_SIZE) are there too.
        assert!((0..40).step_by(5).all(|i| first.contains(&i)));
        let later = pick_thumbnails(3, &scores, &[]);
        assert_eq!(later, (0..40).step_by(5).collect::<Vec<_>>());

        // More mistakes than the gallery: the most confident ones.
        let scores: Vec<Score> = (0..30)
            .map(|i| score(Some(0), 1, i as f32 / 30.0))
            .collect();
        assert_eq!(
            pick_thumbnails(1, &scores, &[]),
            (18..30).collect::<Vec<_>>()
        );
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
        assert_eq!(
            pick_thumbnails(1, &scores, &[]),
            (1..13).collect::<Vec<_>>()
        );
    }

    #[test]
    fn picks_the_most_confident_disagreements_of_several_models() {
        // 30 unlabelled images; a second model agrees on the even ones and is less sure of
        // the odd ones as they go.
        let first: Vec<Score> = (0..30).map(|_| score(None, 1, 0.99)).collect();
        let second: Vec<Score> = (0..30)
            .map(|i| match i % 2 {
                0 => score(None, 1, 0.9),
                _ => score(None, 2, 1.0 - i as f32 / 100.0),
            })
            .collect();
        let picked = pick_thumbnails(1, &first, &[second]);
        // The 12 least confident of the first model (all equal: the first 12), then the 12
        // most confident disagreements: the first 12 odd images.
        let odd: Vec<usize> = (1..24).step_by(2).collect();
        assert!(odd.iter().all(|i| picked.contains(i)), "{picked:?}");
        assert!(!picked.contains(&25), "{picked:?}");
        assert_eq!(disagreement([&first[0], &first[1]].into_iter()), None);
    }
}
