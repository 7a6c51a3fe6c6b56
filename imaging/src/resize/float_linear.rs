//! Bilinear sampling on float pixels, never rounded to 8 bits: OpenCV's `INTER_LINEAR` on a
//! float image, which is how CNTK's `Scale` transform resizes (it converts to float first).
//! Pixel centres aligned, edges clamped, no antialiasing when shrinking.

use super::Geometry;

/// Where output pixel `(y, x)` samples the source, for one axis: a virtual resized length and
/// an offset into it (the crop).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Axis {
    /// Source pixels per virtual pixel.
    step: f32,
    offset: usize,
    source_len: usize,
}

impl Axis {
    /// The two source indices and the weight of the second, for output index `i`.
    fn taps(&self, i: usize) -> (usize, usize, f32) {
        let s = ((i + self.offset) as f32 + 0.5) * self.step - 0.5;
        let s = s.max(0.0);
        let i0 = (s.floor() as usize).min(self.source_len - 1);
        let i1 = (i0 + 1).min(self.source_len - 1);
        (i0, i1, s - i0 as f32)
    }
}

/// Precomputed taps from a source size to a target size.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampler {
    /// Per output row: (row 0, row 1, weight of row 1).
    rows: Vec<(usize, usize, f32)>,
    cols: Vec<(usize, usize, f32)>,
    /// Source and target are the same size: pixels are copied.
    identity: bool,
}

impl Sampler {
    /// Taps for the crop `geometry` describes.
    pub fn new(geometry: &Geometry) -> Self {
        let (source_h, source_w) = geometry.source;
        let (target_h, target_w) = geometry.target;
        let identity = geometry.source == geometry.target && geometry.resized == geometry.source;
        let axis = |source: usize, virtual_len: usize, offset: usize| Axis {
            step: source as f32 / virtual_len as f32,
            offset,
            source_len: source,
        };
        let (ay, ax) = (
            axis(source_h, geometry.resized.0, geometry.offset.0),
            axis(source_w, geometry.resized.1, geometry.offset.1),
        );
        if identity {
            return Self {
                rows: Vec::new(),
                cols: Vec::new(),
                identity,
            };
        }
        Self {
            rows: (0..target_h).map(|y| ay.taps(y)).collect(),
            cols: (0..target_w).map(|x| ax.taps(x)).collect(),
            identity,
        }
    }

    /// Calls `emit(y, x, c, value)` for every target pixel and channel of the HWC image
    /// `data` of `width` pixels per row and `channels` channels.
    pub fn sample(
        &self,
        data: &[u8],
        width: usize,
        channels: usize,
        mut emit: impl FnMut(usize, usize, usize, f32),
    ) {
        if self.identity {
            for (i, px) in data.chunks_exact(channels).enumerate() {
                let (y, x) = (i / width, i % width);
                for (c, &v) in px.iter().enumerate() {
                    emit(y, x, c, f32::from(v));
                }
            }
            return;
        }
        let at = |y: usize, x: usize, c: usize| f32::from(data[(y * width + x) * channels + c]);
        for (y, &(y0, y1, fy)) in self.rows.iter().enumerate() {
            for (x, &(x0, x1, fx)) in self.cols.iter().enumerate() {
                for c in 0..channels {
                    let top = at(y0, x0, c) * (1.0 - fx) + at(y0, x1, c) * fx;
                    let bottom = at(y1, x0, c) * (1.0 - fx) + at(y1, x1, c) * fx;
                    emit(y, x, c, top * (1.0 - fy) + bottom * fy);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_spec::Resize;

    fn sampler(source: (usize, usize), target: (usize, usize), resize: Resize) -> Sampler {
        Sampler::new(&Geometry::new(source, target, resize, None))
    }

    fn run(sampler: &Sampler, data: &[u8], width: usize, h: usize, w: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; h * w];
        sampler.sample(data, width, 1, |y, x, _, v| out[y * w + x] = v);
        out
    }

    #[test]
    fn same_size_copies_and_doubling_interpolates_like_opencv() {
        let data = [0u8, 100, 200, 50];
        let same = sampler((2, 2), (2, 2), Resize::Stretch);
        assert_eq!(run(&same, &data, 2, 2, 2), vec![0.0, 100.0, 200.0, 50.0]);
        // cv2.resize(np.array([[0, 100]], np.float32), (4, 1)) == [0, 25, 75, 100]
        let double = sampler((1, 2), (1, 4), Resize::Stretch);
        assert_eq!(
            run(&double, &data[..2], 2, 1, 4),
            vec![0.0, 25.0, 75.0, 100.0]
        );
        // Halving averages pairs: [0, 100, 200, 50] -> [50, 125].
        let half = sampler((1, 4), (1, 2), Resize::Stretch);
        assert_eq!(run(&half, &data, 4, 1, 2), vec![50.0, 125.0]);
    }

    #[test]
    fn centre_crop_keeps_the_middle_of_the_longer_side() {
        // 1 x 4 to 1 x 2 by the shorter side (1 -> 1): no scaling, columns 1 and 2 kept.
        let crop = sampler((1, 4), (1, 2), Resize::CenterCrop);
        assert_eq!(run(&crop, &[10, 20, 30, 40], 4, 1, 2), vec![20.0, 30.0]);
        // 2 x 4 to 1 x 1: halved to 1 x 2, then the centre... of two is the first.
        let crop = sampler((2, 4), (1, 1), Resize::CenterCrop);
        assert_eq!(
            run(&crop, &[0, 0, 100, 100, 0, 0, 100, 100], 4, 1, 1),
            vec![0.0]
        );
    }
}
