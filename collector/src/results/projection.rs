//! The report's picture of a job's embeddings: a 2-D projection (the two principal components)
//! of a bounded sample of its vectors, each point coloured by the image's label (or its
//! prediction, for a job without labels), some drawn as the image itself.
//!
//! The sample is the same whatever order the partitions come in, and after a collector
//! restart: the images of the job's first partition that have thumbnails, and the images whose
//! place in the job hashes lowest. Its size is bounded in bytes, so a job of ten million
//! images with 4,096-value vectors holds a few megabytes here.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fleet_protocol::job::{CLASS_SCORES_COLUMN, Plan, VectorColumn, VectorPrecision};
use fleet_protocol::message::Scored;

/// Images in the sample, at most.
const SAMPLE_IMAGES: usize = 500;
/// Bytes of sampled values, at most: a model with large vectors gets a smaller sample.
const SAMPLE_BYTES: usize = 16 << 20;
/// Points drawn as their image.
const THUMBNAILS_DRAWN: usize = 12;
/// Iterations of the power method for each component.
const ITERATIONS: usize = 60;

/// One sampled image.
#[derive(Debug, Clone)]
struct Point {
    vector: Vec<f32>,
    /// Its label, else its predicted class, if any.
    class: Option<u32>,
    name: String,
    thumbnail: Option<Vec<u8>>,
}

/// The sample so far, of the plan's first vector column.
#[derive(Debug, Clone)]
pub struct Projection {
    column: VectorColumn,
    /// Where its values are in an image's vectors, and the bytes of an image's vectors in a
    /// vectors blob.
    offset: usize,
    stride: usize,
    capacity: usize,
    /// By (rank, place): a thumbnailed image of the first partition ranks before any other;
    /// the rest by the hash of their place.
    points: BTreeMap<(u64, (u32, u32)), Point>,
}

/// Where a point goes, and what it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// Its coordinates on the first two principal components.
    pub x: f32,
    /// See `x`.
    pub y: f32,
    /// Its label, else its predicted class, if any.
    pub class: Option<u32>,
    /// The image's name.
    pub name: String,
    /// Its thumbnail, a PNG file, when it has one.
    pub thumbnail: Option<Vec<u8>>,
}

impl Projection {
    /// An empty sample of the first embedding of a job of `plan`; `None` when its rows carry
    /// none (a multi-label model's class scores are no embedding).
    pub fn new(plan: &Plan) -> Option<Self> {
        let at = plan
            .vectors
            .iter()
            .position(|c| plan.multi_label.is_none() || c.name != CLASS_SCORES_COLUMN)?;
        let column = &plan.vectors[at];
        let offset = plan.vectors[..at].iter().map(VectorColumn::bytes).sum();
        let per_image = column.dim as usize * 4;
        Some(Self {
            column: column.clone(),
            offset,
            stride: plan.vector_bytes(),
            capacity: (SAMPLE_BYTES / per_image.max(1)).clamp(1, SAMPLE_IMAGES),
            points: BTreeMap::new(),
        })
    }

    /// The vector column it shows.
    pub fn column(&self) -> &str {
        &self.column.name
    }

    /// Images sampled.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether nothing is sampled.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Takes in partition `p`'s images that belong to the sample, their vectors read from the
    /// partition's vectors blob `blob`.
    pub fn add(&mut self, p: &Scored, blob: &[u8]) {
        let (column, offset, stride) = (&self.column, self.offset, self.stride);
        // The column's model scored the image, or not (in a job of several models).
        let scores = (p.by_model().nth(usize::from(column.model))).unwrap_or(&p.scores);
        for (i, score) in scores.iter().enumerate() {
            if !score.scored {
                continue;
            }
            let place = (p.partition, i as u32);
            let thumbnail = p
                .thumbnails
                .iter()
                .find(|t| t.position as usize == i)
                .map(|t| t.png.clone());
            // The first partition's thumbnailed images first: the picture shows some images.
            let rank = match (p.partition, &thumbnail) {
                (0, Some(_)) => 0,
                _ => hash(place).max(1),
            };
            let key = (rank, place);
            if self.points.len() >= self.capacity {
                match self.points.last_key_value() {
                    Some((last, _)) if key < *last => {
                        self.points.pop_last();
                    }
                    _ => continue,
                }
            }
            let bytes = &blob[i * stride + offset..][..column.bytes()];
            let vector = match column.precision {
                VectorPrecision::Float32 => bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                VectorPrecision::Float16 => bytes
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
            };
            let class = score.label.or(score.predicted().map(|(c, _)| c));
            let name = p.filenames.get(i).cloned().unwrap_or_default();
            self.points.insert(
                key,
                Point {
                    vector,
                    class,
                    name,
                    thumbnail,
                },
            );
        }
    }

    /// The sample projected on its first two principal components, in sample order.
    pub fn project(&self) -> Vec<Placed> {
        let points: Vec<&Point> = self.points.values().collect();
        let Some(dim) = points.first().map(|p| p.vector.len()) else {
            return Vec::new();
        };
        let n = points.len() as f32;
        let mut mean = vec![0.0f32; dim];
        for point in &points {
            for (m, v) in mean.iter_mut().zip(&point.vector) {
                *m += v / n;
            }
        }
        let centred: Vec<Vec<f32>> = points
            .iter()
            .map(|p| p.vector.iter().zip(&mean).map(|(v, m)| v - m).collect())
            .collect();
        let first = component(&centred, &[]);
        let second = component(&centred, std::slice::from_ref(&first));
        points
            .iter()
            .zip(&centred)
            .map(|(point, row)| Placed {
                x: dot(row, &first),
                y: dot(row, &second),
                class: point.class,
                name: point.name.clone(),
                thumbnail: point.thumbnail.clone(),
            })
            .collect()
    }
}

/// A place's rank in the sample: a fixed mix of its bits (SplitMix64's finaliser), so that the
/// sample spreads over the job and is the same whatever the order of arrival.
fn hash((partition, position): (u32, u32)) -> u64 {
    let mut z =
        (u64::from(partition) << 32 | u64::from(position)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The direction of greatest variance of the rows `x` orthogonal to `found`: the power method
/// on `XᵀX` without forming it, from a fixed start.
fn component(x: &[Vec<f32>], found: &[Vec<f32>]) -> Vec<f32> {
    let dim = x[0].len();
    let mut v: Vec<f32> = (0..dim).map(|i| 1.0 + (i % 7) as f32 / 7.0).collect();
    for _ in 0..ITERATIONS {
        for f in found {
            let along = dot(&v, f);
            v.iter_mut().zip(f).for_each(|(v, f)| *v -= along * f);
        }
        let norm = dot(&v, &v).sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return vec![0.0; dim];
        }
        v.iter_mut().for_each(|v| *v /= norm);
        let mut next = vec![0.0f32; dim];
        for row in x {
            let along = dot(row, &v);
            next.iter_mut().zip(row).for_each(|(n, r)| *n += along * r);
        }
        v = next;
    }
    for f in found {
        let along = dot(&v, f);
        v.iter_mut().zip(f).for_each(|(v, f)| *v -= along * f);
    }
    let norm = dot(&v, &v).sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return vec![0.0; dim];
    }
    v.into_iter().map(|v| v / norm).collect()
}

/// Colours of the ten commonest classes in the picture; other classes are grey.
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f",
];

/// The projection as an SVG picture with its legend: `classes` name the points' classes.
pub fn svg(placed: &[Placed], classes: &[String], data_uri: impl Fn(&[u8]) -> String) -> String {
    const W: f32 = 640.0;
    const H: f32 = 420.0;
    const PAD: f32 = 24.0;
    let mut svg = String::new();
    if placed.is_empty() {
        return svg;
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
    for p in placed {
        (x0, x1, y0, y1) = (x0.min(p.x), x1.max(p.x), y0.min(p.y), y1.max(p.y));
    }
    let span = |a: f32, b: f32| if b > a { b - a } else { 1.0 };
    let at = |p: &Placed| {
        (
            PAD + (p.x - x0) / span(x0, x1) * (W - 2.0 * PAD),
            H - PAD - (p.y - y0) / span(y0, y1) * (H - 2.0 * PAD),
        )
    };
    // The commonest classes get the palette's colours.
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for class in placed.iter().filter_map(|p| p.class) {
        *counts.entry(class).or_default() += 1;
    }
    let mut common: Vec<(u32, usize)> = counts.into_iter().collect();
    common.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let colour = |class: Option<u32>| {
        class
            .and_then(|c| common.iter().take(PALETTE.len()).position(|(k, _)| *k == c))
            .map_or("#999999", |i| PALETTE[i])
    };
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"embeddings projected\">\
         <rect width=\"{W}\" height=\"{H}\" fill=\"#fafafa\" stroke=\"#ddd\"/>"
    );
    for p in placed {
        let (x, y) = at(p);
        let _ = write!(
            svg,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3.5\" fill=\"{}\" fill-opacity=\"0.8\"><title>{}</title></circle>",
            colour(p.class),
            super::report::escape(&p.name)
        );
    }
    for p in placed
        .iter()
        .filter(|p| p.thumbnail.is_some())
        .take(THUMBNAILS_DRAWN)
    {
        let (x, y) = at(p);
        let png = p.thumbnail.as_deref().expect("filtered above");
        let _ = write!(
            svg,
            "<image href=\"{}\" x=\"{:.1}\" y=\"{:.1}\" width=\"28\" height=\"28\"><title>{}</title></image>",
            data_uri(png),
            x - 14.0,
            y - 14.0,
            super::report::escape(&p.name)
        );
    }
    svg.push_str("</svg>");
    if !common.is_empty() {
        svg.push_str("<p class=\"legend\">");
        for (i, (class, count)) in common.iter().take(PALETTE.len()).enumerate() {
            let name = classes.get(*class as usize).map_or("?", String::as_str);
            let _ = write!(
                svg,
                "<span style=\"color:{}\">&#9679;</span> {} ({count}) ",
                PALETTE[i],
                super::report::escape(name)
            );
        }
        svg.push_str("</p>");
    }
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_component_follows_the_spread() {
        // Points along (1, 1, 0), a little noise on the third axis.
        let x: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                let t = i as f32 - 9.5;
                vec![t, t, if i % 2 == 0 { 0.1 } else { -0.1 }]
            })
            .collect();
        let first = component(&x, &[]);
        let expected = std::f32::consts::FRAC_1_SQRT_2;
        assert!(
            (first[0].abs() - expected).abs() < 1e-4 && (first[1].abs() - expected).abs() < 1e-4,
            "{first:?}"
        );
        let second = component(&x, std::slice::from_ref(&first));
        assert!(dot(&first, &second).abs() < 1e-4, "{second:?}");
        assert!(second[2].abs() > 0.99, "{second:?}");
    }
}
