//! Resizing to the model's input, as the pipeline the model came from resizes.
//!
//! Two questions, answered apart: the geometry ([`Geometry`]: the size the image is resized to
//! and the crop of it the model sees, from the spec's [`Resize`] and shorter side), and how
//! pixels are sampled (the spec's [`Filter`]). Pipelines disagree on both, and a model's answer
//! moves with them: torchvision's and OpenCV's bilinear crops of the same photo agree on about
//! half of their 8-bit values. So each filter here is its library's algorithm to the value: Pillow's
//! fixed-point separable convolution ([`pillow`]), OpenCV's fixed-point and area resamplers
//! ([`opencv`]), each rounding to 8 bits between passes where its library does.
//!
//! Only the crop is computed: every output pixel depends on its own taps alone, so sampling
//! the crop's rows and columns of the virtual resized image gives the values the library
//! writes there when it resizes the whole image.

mod float_linear;
mod opencv;
mod pillow;

use fleet_spec::{Filter, Resize};

pub use float_linear::Sampler;

/// Where an image of one size goes: the size it is resized to, and the part of that the model
/// sees. Sizes are (height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The decoded image's size.
    pub source: (usize, usize),
    /// The size the whole image is resized to (virtually: only the crop is computed).
    pub resized: (usize, usize),
    /// Top and left of the crop in the resized image.
    pub offset: (usize, usize),
    /// The crop's size: the model's input.
    pub target: (usize, usize),
}

impl Geometry {
    /// The geometry for a `source` image fed to a model taking `target`, by `resize`, the shorter
    /// side scaled to `shorter_side` first when given (center-crop only).
    pub fn new(
        source: (usize, usize),
        target: (usize, usize),
        resize: Resize,
        shorter_side: Option<u32>,
    ) -> Self {
        let (source_h, source_w) = source;
        let (target_h, target_w) = target;
        let resized = match (resize, shorter_side) {
            (Resize::Stretch, _) => target,
            (Resize::CenterCrop, Some(side)) => {
                // torchvision's Resize(side): the longer side in proportion, truncated, from
                // the exact quotient (integer products, one correctly rounded division).
                let side = side as usize;
                let (short, long) = (source_h.min(source_w), source_h.max(source_w));
                let long = ((side * long) as f64 / short as f64) as usize;
                let long = long.max(side);
                if source_w <= source_h {
                    (long, side)
                } else {
                    (side, long)
                }
            }
            (Resize::CenterCrop, None) => {
                // Scaled just enough that the crop fits.
                let scale =
                    (target_h as f64 / source_h as f64).max(target_w as f64 / source_w as f64);
                (
                    ((source_h as f64 * scale).round() as usize).max(target_h),
                    ((source_w as f64 * scale).round() as usize).max(target_w),
                )
            }
        };
        let offset = match (resize, shorter_side) {
            (Resize::Stretch, _) => (0, 0),
            // torchvision's CenterCrop: int(round((size - crop) / 2.0)), halves to even.
            (Resize::CenterCrop, Some(_)) => (
                half_to_even(resized.0.saturating_sub(target_h)),
                half_to_even(resized.1.saturating_sub(target_w)),
            ),
            (Resize::CenterCrop, None) => ((resized.0 - target_h) / 2, (resized.1 - target_w) / 2),
        };
        Self {
            source,
            resized,
            offset,
            target,
        }
    }
}

/// `difference / 2`, a half rounded to the even neighbour (Python's `round`).
fn half_to_even(difference: usize) -> usize {
    let half = difference / 2;
    if difference % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// The crop `geometry` describes of the HWC image `data` (`channels` per pixel), resized by the
/// 8-bit `filter` as its library does: `target` height x width x `channels` values.
///
/// # Panics
/// For [`Filter::FloatLinear`], which never rounds to 8 bits: use [`Sampler`].
pub fn resize_u8(data: &[u8], channels: usize, geometry: &Geometry, filter: Filter) -> Vec<u8> {
    debug_assert_eq!(data.len(), geometry.source.0 * geometry.source.1 * channels);
    if geometry.resized == geometry.source {
        return crop(data, channels, geometry);
    }
    match filter {
        Filter::PillowBilinear => {
            pillow::resize(data, channels, geometry, pillow::Kernel::Bilinear)
        }
        Filter::PillowBicubic => pillow::resize(data, channels, geometry, pillow::Kernel::Bicubic),
        Filter::OpencvLinear => opencv::linear(data, channels, geometry),
        Filter::OpencvArea => opencv::area(data, channels, geometry),
        Filter::OpencvNearest => opencv::nearest(data, channels, geometry),
        Filter::FloatLinear => panic!("float-linear never rounds to 8 bits: use Sampler"),
    }
}

/// The crop of an image that needs no resizing.
fn crop(data: &[u8], channels: usize, geometry: &Geometry) -> Vec<u8> {
    let (top, left) = geometry.offset;
    let (height, width) = geometry.target;
    let stride = geometry.source.1 * channels;
    let mut out = Vec::with_capacity(height * width * channels);
    for row in data.chunks_exact(stride).skip(top).take(height) {
        out.extend_from_slice(&row[left * channels..(left + width) * channels]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_geometry_truncates_the_long_side_and_rounds_offsets_to_even() {
        // 1000x667 (w x h) -> 383x256, as the fixtures' README works it out.
        let geometry = Geometry::new((667, 1000), (224, 224), Resize::CenterCrop, Some(256));
        assert_eq!(geometry.resized, (256, 383));
        // (383 - 224) / 2 = 79.5 -> 80 (even); (256 - 224) / 2 = 16.
        assert_eq!(geometry.offset, (16, 80));
        let portrait = Geometry::new((1000, 667), (224, 224), Resize::CenterCrop, Some(256));
        assert_eq!(portrait.resized, (383, 256));
        // 58.5 -> 58, 59.5 -> 60, 148.5 -> 148.
        assert_eq!([117, 119, 297].map(half_to_even), [58, 60, 148]);
        let square = Geometry::new((500, 500), (224, 224), Resize::CenterCrop, Some(256));
        assert_eq!((square.resized, square.offset), ((256, 256), (16, 16)));
    }

    #[test]
    fn stretch_and_the_cover_crop_keep_their_geometry() {
        let stretch = Geometry::new((30, 70), (32, 32), Resize::Stretch, None);
        assert_eq!((stretch.resized, stretch.offset), ((32, 32), (0, 0)));
        let cover = Geometry::new((30, 60), (10, 10), Resize::CenterCrop, None);
        assert_eq!((cover.resized, cover.offset), ((10, 20), (0, 5)));
    }

    #[test]
    fn an_image_of_the_resized_size_is_only_cropped() {
        let data: Vec<u8> = (0..4 * 6).map(|v| v as u8).collect();
        let geometry = Geometry {
            source: (4, 6),
            resized: (4, 6),
            offset: (1, 2),
            target: (2, 3),
        };
        for filter in [Filter::PillowBilinear, Filter::OpencvArea] {
            assert_eq!(
                resize_u8(&data, 1, &geometry, filter),
                vec![8, 9, 10, 14, 15, 16]
            );
        }
    }
}
