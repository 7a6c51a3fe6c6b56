//! Pillow's resampling (`Image.resize` with `BILINEAR` or `BICUBIC`), to the value.
//!
//! Pillow convolves each axis with the filter stretched by the shrink factor (so shrinking
//! averages every source pixel under the output pixel: antialiasing), horizontally first.
//! Weights are normalised per output pixel in double precision, then turned into 22-bit fixed
//! point; each pass adds half a unit, shifts and clamps to 8 bits, so the horizontal pass's
//! output is rounded before the vertical pass reads it. All of that is kept here: it is what
//! makes the result equal Pillow's rather than close to it. So is the order of the passes:
//! since Pillow 13, when the height shrinks by more than twice as many pixels as the width, the
//! vertical pass runs first.

use super::Geometry;

/// Fraction bits of the fixed-point weights: 32 bits less 8 for the value and 2 for the
/// overshoot of filters with negative lobes.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The filters of Pillow's this product offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    Bilinear,
    Bicubic,
}

impl Kernel {
    /// Half-width of the filter at scale 1.
    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear if x < 1.0 => 1.0 - x,
            Self::Bilinear => 0.0,
            // Keys' cubic with a = -0.5, as Pillow writes it.
            Self::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point taps of some output positions along one axis.
struct Taps {
    /// Per output position: first source index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// Per output position, `ksize` weights (the first `bounds.1` used).
    weights: Vec<i32>,
    ksize: usize,
}

impl Taps {
    /// Taps of output positions `first..first + count` of an axis resized from `in_size` to
    /// `out_size`.
    fn new(in_size: usize, out_size: usize, first: usize, count: usize, kernel: Kernel) -> Self {
        // Pillow computes the scale from the box's float32 bounds; whole sizes are exact.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = kernel.support() * filter_scale;
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(count);
        let mut weights = vec![0; count * ksize];
        let mut row = vec![0.0f64; ksize];
        for (i, out) in (first..first + count).enumerate() {
            let center = (out as f64 + 0.5) * scale;
            // C's (int) cast truncates toward zero; negatives clamp to 0 either way.
            let min = ((center - support + 0.5) as i64).max(0) as usize;
            let max = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let taps = max.saturating_sub(min);
            let mut total = 0.0;
            for (x, w) in row.iter_mut().enumerate().take(taps) {
                *w = kernel.weight((x as f64 + min as f64 - center + 0.5) / filter_scale);
                total += *w;
            }
            let fixed = &mut weights[i * ksize..][..ksize];
            for (f, &w) in fixed.iter_mut().zip(&row).take(taps) {
                let w = if total != 0.0 { w / total } else { w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                *f = if w < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                };
            }
            bounds.push((min, taps));
        }
        Self {
            bounds,
            weights,
            ksize,
        }
    }

    fn of(&self, i: usize) -> (usize, &[i32]) {
        let (start, taps) = self.bounds[i];
        (start, &self.weights[i * self.ksize..][..taps])
    }
}

/// Rounds a fixed-point sum (with its half unit added) to 8 bits, clamped.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The crop of `geometry` from the HWC image `data`, resized by Pillow's `kernel`.
pub(super) fn resize(data: &[u8], channels: usize, geometry: &Geometry, kernel: Kernel) -> Vec<u8> {
    let (in_h, in_w) = geometry.source;
    let (out_h, out_w) = geometry.resized;
    if out_h < in_h && in_h - out_h > 2 * in_w.saturating_sub(out_w) && out_w != in_w {
        // Vertical first: the same passes on the transposed image, transposed back.
        let transposed = Geometry {
            source: (in_w, in_h),
            resized: (out_w, out_h),
            offset: (geometry.offset.1, geometry.offset.0),
            target: (geometry.target.1, geometry.target.0),
        };
        let out = horizontal_first(
            &transpose(data, in_h, in_w, channels),
            channels,
            &transposed,
            kernel,
        );
        return transpose(&out, geometry.target.1, geometry.target.0, channels);
    }
    horizontal_first(data, channels, geometry, kernel)
}

/// `data`, `height` rows of `width` pixels, with rows and columns swapped.
fn transpose(data: &[u8], height: usize, width: usize, channels: usize) -> Vec<u8> {
    let mut out = vec![0; data.len()];
    for y in 0..height {
        for x in 0..width {
            let from = (y * width + x) * channels;
            let to = (x * height + y) * channels;
            out[to..to + channels].copy_from_slice(&data[from..from + channels]);
        }
    }
    out
}

/// Pillow's two passes, horizontal first.
fn horizontal_first(data: &[u8], channels: usize, geometry: &Geometry, kernel: Kernel) -> Vec<u8> {
    let (in_h, in_w) = geometry.source;
    let (out_h, out_w) = geometry.resized;
    let (top, left) = geometry.offset;
    let (crop_h, crop_w) = geometry.target;
    let half = 1i32 << (PRECISION_BITS - 1);

    // Rows of the source the vertical pass reads, and its taps.
    let vertical = (out_h != in_h).then(|| Taps::new(in_h, out_h, top, crop_h, kernel));
    let rows = match &vertical {
        Some(taps) => {
            let first = taps.bounds.iter().map(|b| b.0).min().unwrap_or(0);
            let end = taps.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
            first..end
        }
        None => top..top + crop_h,
    };

    // Horizontal pass over those rows, the crop's columns only, rounded to 8 bits.
    let in_stride = in_w * channels;
    let mid_stride = crop_w * channels;
    let mut mid = vec![0u8; rows.len() * mid_stride];
    if out_w != in_w {
        let taps = Taps::new(in_w, out_w, left, crop_w, kernel);
        let row = match channels {
            1 => horizontal_row::<1>,
            3 => horizontal_row::<3>,
            other => panic!("images have 1 or 3 channels, not {other}"),
        };
        for (source, out) in data
            .chunks_exact(in_stride)
            .skip(rows.start)
            .zip(mid.chunks_exact_mut(mid_stride))
        {
            row(source, out, &taps);
        }
    } else {
        for (source, out) in data
            .chunks_exact(in_stride)
            .skip(rows.start)
            .zip(mid.chunks_exact_mut(mid_stride))
        {
            out.copy_from_slice(&source[left * channels..][..mid_stride]);
        }
    }

    let Some(taps) = vertical else {
        return mid;
    };
    // Vertical pass, from the rounded rows.
    let mut out = vec![0u8; crop_h * mid_stride];
    // Whole rows at a time (tap by tap), which the compiler vectorises.
    let mut sums = vec![0i32; mid_stride];
    for (y, row) in out.chunks_exact_mut(mid_stride).enumerate() {
        let (start, weights) = taps.of(y);
        let start = start - rows.start;
        sums.fill(half);
        for (source, &w) in mid[start * mid_stride..]
            .chunks_exact(mid_stride)
            .zip(weights)
        {
            for (sum, &v) in sums.iter_mut().zip(source) {
                *sum += i32::from(v) * w;
            }
        }
        for (value, &sum) in row.iter_mut().zip(&sums) {
            *value = clip8(sum);
        }
    }
    out
}

/// The horizontal pass over one row of `C`-channel pixels: each output pixel of `out` from
/// its taps in `source`, rounded to 8 bits.
fn horizontal_row<const C: usize>(source: &[u8], out: &mut [u8], taps: &Taps) {
    let half = 1i32 << (PRECISION_BITS - 1);
    for (x, pixel) in out.chunks_exact_mut(C).enumerate() {
        let (start, weights) = taps.of(x);
        let mut sum = [half; C];
        for (p, &w) in source[start * C..].chunks_exact(C).zip(weights) {
            for (s, &v) in sum.iter_mut().zip(p) {
                *s += i32::from(v) * w;
            }
        }
        for (value, s) in pixel.iter_mut().zip(sum) {
            *value = clip8(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_spec::Resize;

    fn run(
        data: &[u8],
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        kernel: Kernel,
    ) -> Vec<u8> {
        let geometry = Geometry::new((h, w), (oh, ow), Resize::Stretch, None);
        resize(data, 1, &geometry, kernel)
    }

    #[test]
    fn a_height_shrinking_far_more_than_the_width_is_resampled_vertically_first() {
        // A 5x9 image to 4x3 (9 - 3 > 2 x (5 - 4)): what Pillow 13 gives, which the
        // horizontal-first order misses by one level in the second value.
        let data = [
            95, 130, 194, 217, 207, 235, 15, 163, 33, 215, 217, 130, 248, 189, 16, 69, 184, 232,
            205, 78, 169, 61, 125, 10, 29, 240, 66, 19, 182, 39, 59, 4, 59, 81, 222, 44, 120, 122,
            50, 208, 78, 28, 64, 166, 121,
        ];
        let pillow = [155, 139, 165, 145, 140, 108, 124, 76, 76, 69, 93, 153];
        let geometry = Geometry::new((9, 5), (3, 4), Resize::Stretch, None);
        assert_eq!(resize(&data, 1, &geometry, Kernel::Bilinear), pillow);
        assert_ne!(
            horizontal_first(&data, 1, &geometry, Kernel::Bilinear),
            pillow
        );
    }

    #[test]
    fn values_match_pillow() {
        // Image.frombytes("L", (4, 1), bytes([0, 100, 200, 50])).resize((2, 1), BILINEAR)
        // gives [71, 121]: the triangle widened to 2 source pixels each side, so the first
        // output weighs 0, 100 and 200 by 0.75, 0.75 and 0.25.
        assert_eq!(
            run(&[0, 100, 200, 50], (1, 4), (1, 2), Kernel::Bilinear),
            vec![71, 121]
        );
        // Upscaling [0, 100] to 4: [0, 25, 75, 100].
        assert_eq!(
            run(&[0, 100], (1, 2), (1, 4), Kernel::Bilinear),
            vec![0, 25, 75, 100]
        );
        // Bicubic, as Pillow gives it: [0, 255, 0] to 5 -> [0, 101, 255, 101, 0].
        assert_eq!(
            run(&[0, 255, 0], (1, 3), (1, 5), Kernel::Bicubic),
            vec![0, 101, 255, 101, 0]
        );
    }
}
