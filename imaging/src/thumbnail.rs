//! Small copies of images, for the job report's galleries.

use crate::Image;

/// `image` shrunk so that its longer side is at most `side` pixels (never enlarged), as RGB.
/// Each thumbnail pixel is the mean of the source pixels it covers (a box filter): a photo
/// shrunk 50 times keeps its colours instead of the aliasing a point or bilinear sample gives.
pub fn thumbnail(image: &Image, side: usize) -> Image {
    let (w, h, c) = (image.width, image.height, image.channels);
    let longest = w.max(h);
    let side = side.max(1);
    let (tw, th) = if longest <= side {
        (w, h)
    } else {
        (
            (w * side).div_ceil(longest).max(1),
            (h * side).div_ceil(longest).max(1),
        )
    };
    let mut data = Vec::with_capacity(tw * th * 3);
    // The rows under each thumbnail row summed per column first (one add per byte, which the
    // compiler vectorises), then the columns under each thumbnail pixel.
    let mut columns = vec![0u32; w * c];
    for ty in 0..th {
        let (y0, y1) = (ty * h / th, ((ty + 1) * h / th).max(ty * h / th + 1));
        columns.fill(0);
        for row in image.data[y0 * w * c..y1 * w * c].chunks_exact(w * c) {
            for (sum, &v) in columns.iter_mut().zip(row) {
                *sum += u32::from(v);
            }
        }
        for tx in 0..tw {
            let (x0, x1) = (tx * w / tw, ((tx + 1) * w / tw).max(tx * w / tw + 1));
            // Per channel; a gray image's one channel stands for all three.
            let mut sum = [0u64; 3];
            for pixel in columns[x0 * c..x1 * c].chunks_exact(c) {
                for (s, &v) in sum.iter_mut().zip(pixel.iter().cycle()) {
                    *s += u64::from(v);
                }
            }
            let count = ((y1 - y0) * (x1 - x0)) as u64;
            data.extend(sum.iter().map(|&s| ((s + count / 2) / count) as u8));
        }
    }
    Image {
        width: tw,
        height: th,
        channels: 3,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_image_keeps_its_aspect_and_mean_colour() {
        // 200x100, left half red, right half blue.
        let mut data = Vec::new();
        for _ in 0..100 {
            for x in 0..200 {
                data.extend_from_slice(if x < 100 { &[255, 0, 0] } else { &[0, 0, 255] });
            }
        }
        let image = Image {
            width: 200,
            height: 100,
            channels: 3,
            data,
        };
        let small = thumbnail(&image, 64);
        assert_eq!((small.width, small.height, small.channels), (64, 32, 3));
        assert_eq!(&small.data[..3], &[255, 0, 0]);
        assert_eq!(&small.data[small.data.len() - 3..], &[0, 0, 255]);
    }

    #[test]
    fn a_small_gray_image_is_kept_in_size_and_made_rgb() {
        let image = Image {
            width: 2,
            height: 1,
            channels: 1,
            data: vec![10, 200],
        };
        let small = thumbnail(&image, 64);
        assert_eq!((small.width, small.height), (2, 1));
        assert_eq!(small.data, vec![10, 10, 10, 200, 200, 200]);
    }

    #[test]
    fn a_checkerboard_averages_to_gray() {
        let data = (0..64 * 64)
            .map(|i| if (i % 64 + i / 64) % 2 == 0 { 0 } else { 255 })
            .collect();
        let image = Image {
            width: 64,
            height: 64,
            channels: 1,
            data,
        };
        let small = thumbnail(&image, 8);
        assert!(small.data.iter().all(|&v| (127..=128).contains(&v)));
    }
}
