//! The walkthrough's preprocessing, over a whole partition at once.
//!
//! Per image: the stored row (R, G, B planes of 32x32) is reshaped to CHW, converted to
//! float, its planes reversed to BGR, and the mean image (CHW, BGR) subtracted. Composed, the
//! walkthrough's reshape / transpose / flip / transpose steps are just "BGR plane `c` is RGB
//! plane `2 - c`", so each output plane is one subtraction over a contiguous source plane.

use crate::dataset::{CHANNELS, HEIGHT, IMAGE_BYTES, WIDTH};
use crate::mean_image::MeanImage;

const PLANE: usize = HEIGHT * WIDTH;

/// Fills `out` with the model input for `pixels` (whole images of [`IMAGE_BYTES`]), reusing
/// its allocation: a worker keeps one buffer for its whole life.
pub fn preprocess_into(pixels: &[u8], mean: &MeanImage, out: &mut Vec<f32>) {
    debug_assert_eq!(pixels.len() % IMAGE_BYTES, 0);
    out.clear();
    out.resize(pixels.len(), 0.0);
    let mean = mean.chw_bgr();
    for (image, target) in pixels
        .chunks_exact(IMAGE_BYTES)
        .zip(out.chunks_exact_mut(IMAGE_BYTES))
    {
        for c in 0..CHANNELS {
            let source = &image[(CHANNELS - 1 - c) * PLANE..][..PLANE];
            let mean = &mean[c * PLANE..][..PLANE];
            let target = &mut target[c * PLANE..][..PLANE];
            for ((t, &p), &m) in target.iter_mut().zip(source).zip(mean) {
                *t = f32::from(p) - m;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walkthrough's steps, literally: reshape (3,32,32) -> HWC -> BGR -> CHW -> minus mean.
    fn walkthrough(row: &[u8], mean_hwc_bgr: &[f32]) -> Vec<f32> {
        let hwc = |y: usize, x: usize, c: usize| f32::from(row[(c * HEIGHT + y) * WIDTH + x]);
        let mut out = vec![0.0; IMAGE_BYTES];
        for c in 0..CHANNELS {
            for y in 0..HEIGHT {
                for x in 0..WIDTH {
                    let bgr = hwc(y, x, 2 - c);
                    out[(c * HEIGHT + y) * WIDTH + x] =
                        bgr - mean_hwc_bgr[(y * WIDTH + x) * CHANNELS + c];
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_walkthrough_step_by_step() {
        let mean_hwc: Vec<f32> = (0..IMAGE_BYTES).map(|i| (i % 251) as f32 * 0.5).collect();
        let xml = format!(
            "<opencv_storage><MeanImg><rows>1</rows><cols>3072</cols><dt>f</dt><data>{}</data></MeanImg></opencv_storage>",
            mean_hwc
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mean = MeanImage::from_xml(xml.as_bytes(), "test").unwrap();
        let pixels: Vec<u8> = (0..2 * IMAGE_BYTES).map(|i| (i * 7 % 256) as u8).collect();
        let mut out = Vec::new();
        preprocess_into(&pixels, &mean, &mut out);
        let mut expected = walkthrough(&pixels[..IMAGE_BYTES], &mean_hwc);
        expected.extend(walkthrough(&pixels[IMAGE_BYTES..], &mean_hwc));
        assert_eq!(out, expected);
    }
}
