#![warn(missing_docs)]
//! The figures of a job, drawn as PNG: the confusion-matrix heat map, a grid of sample images
//! with their labels, and the thumbnails the report shows. Text uses an 8x8 bitmap font, so no
//! font files or system libraries are needed. Every size comes in as an argument: nothing here
//! knows a dataset.

use font8x8::UnicodeFonts;

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
const GREY: Rgb = [90, 90, 90];

/// An RGB raster.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![255; width * height * 3],
        }
    }

    fn set(&mut self, x: usize, y: usize, color: Rgb) {
        if x < self.width && y < self.height {
            let i = (y * self.width + x) * 3;
            self.pixels[i..i + 3].copy_from_slice(&color);
        }
    }

    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, color: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, color);
            }
        }
    }

    /// Draws `text` with its top-left corner at (x, y); `scale` enlarges each font pixel.
    /// With `vertical`, the text runs bottom to top (rotated a quarter turn to the left).
    fn text(&mut self, x: usize, y: usize, text: &str, color: Rgb, scale: usize, vertical: bool) {
        for (i, c) in text.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS.get(c).unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 0 {
                        continue;
                    }
                    let (gx, gy) = (i * 8 + col, row);
                    let (px, py) = if vertical {
                        (gy, (text.len() * 8).saturating_sub(gx + 1))
                    } else {
                        (gx, gy)
                    };
                    self.fill(x + px * scale, y + py * scale, scale, scale, color);
                }
            }
        }
    }

    fn text_width(text: &str, scale: usize) -> usize {
        text.chars().count() * 8 * scale
    }

    fn png(&self) -> Vec<u8> {
        rgb_png(self.width, self.height, &self.pixels)
    }
}

/// RGB pixels (rows top to bottom, `3 * width * height` bytes) as a PNG file.
///
/// # Panics
/// If `pixels` does not hold `3 * width * height` bytes.
pub fn rgb_png(width: usize, height: usize, pixels: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .expect("writing to a Vec cannot fail");
    writer
        .write_image_data(pixels)
        .expect("the pixels match the header");
    writer.finish().expect("writing to a Vec cannot fail");
    out
}

/// matplotlib's "Blues": from near-white to dark blue.
fn blues(t: f64) -> Rgb {
    let (from, to) = ([247.0, 251.0, 255.0], [8.0, 48.0, 107.0]);
    let t = t.clamp(0.0, 1.0);
    std::array::from_fn(|i| (from[i] + (to[i] - from[i]) * t).round() as u8)
}

/// A labelled heat map of `matrix[true][predicted]`, like the walkthrough's confusion plot.
pub fn confusion_png(matrix: &[Vec<u64>], classes: &[&str]) -> Vec<u8> {
    let n = matrix.len();
    // Readable up to about 30 classes (the collector writes a table of pairs beyond that).
    let cell = if n <= 12 { 48 } else { 32 };
    let label_width = classes
        .iter()
        .map(|c| Canvas::text_width(c, 1))
        .max()
        .unwrap_or(0)
        + 12;
    let (left, top) = (label_width + 24, 40);
    let grid = n * cell;
    let (bar_x, bar_w) = (left + grid + 20, 16);
    let width = bar_x + bar_w + 60;
    let height = top + grid + label_width + 30;
    let mut canvas = Canvas::new(width, height);
    let max = matrix.iter().flatten().copied().max().unwrap_or(0).max(1);

    let title = "Confusion matrix";
    canvas.text(
        width.saturating_sub(Canvas::text_width(title, 2)) / 2,
        10,
        title,
        BLACK,
        2,
        false,
    );
    for (t, row) in matrix.iter().enumerate() {
        for (p, &count) in row.iter().enumerate() {
            let shade = count as f64 / max as f64;
            let (x, y) = (left + p * cell, top + t * cell);
            canvas.fill(x, y, cell, cell, blues(shade));
            let label = count.to_string();
            if Canvas::text_width(&label, 1) + 4 > cell {
                continue; // the shade alone tells it
            }
            let ink = if shade > 0.5 { WHITE } else { BLACK };
            canvas.text(
                x + (cell - Canvas::text_width(&label, 1)) / 2,
                y + cell / 2 - 4,
                &label,
                ink,
                1,
                false,
            );
        }
    }
    for (i, class) in classes.iter().enumerate().take(n) {
        // Row labels right-aligned left of the grid; column labels vertical under it.
        let w = Canvas::text_width(class, 1);
        canvas.text(
            left - 6 - w,
            top + i * cell + cell / 2 - 4,
            class,
            BLACK,
            1,
            false,
        );
        canvas.text(
            left + i * cell + cell / 2 - 4,
            top + grid + 6,
            class,
            BLACK,
            1,
            true,
        );
    }
    let y_title = "True label";
    canvas.text(
        4,
        // A grid of one or two classes is narrower than the axis titles.
        top + grid.saturating_sub(Canvas::text_width(y_title, 1)) / 2,
        y_title,
        GREY,
        1,
        true,
    );
    let x_title = "Predicted label";
    canvas.text(
        left + grid.saturating_sub(Canvas::text_width(x_title, 1)) / 2,
        height - 14,
        x_title,
        GREY,
        1,
        false,
    );
    // Colour bar, with its scale.
    for y in 0..grid {
        canvas.fill(
            bar_x,
            top + y,
            bar_w,
            1,
            blues(1.0 - y as f64 / grid as f64),
        );
    }
    canvas.text(bar_x + bar_w + 4, top, &max.to_string(), BLACK, 1, false);
    canvas.text(bar_x + bar_w + 4, top + grid - 8, "0", BLACK, 1, false);
    canvas.png()
}

/// One image of the sample grid.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    /// Width of the image, in pixels.
    pub width: usize,
    /// Height of the image, in pixels.
    pub height: usize,
    /// `3 x height x width` bytes: the R, G and B planes, rows first. An image of any other
    /// size leaves its tile blank but for the caption.
    pub pixels: &'a [u8],
    /// The text under the image.
    pub caption: String,
}

/// The images side by side, enlarged, each with its caption, like the walkthrough's first
/// figure.
pub fn sample_grid_png(samples: &[Sample<'_>], columns: usize) -> Vec<u8> {
    let scale = 3;
    let columns = columns.max(1);
    let caption_width = samples
        .iter()
        .map(|s| Canvas::text_width(&s.caption, 1))
        .max()
        .unwrap_or(0);
    let widest = samples.iter().map(|s| s.width).max().unwrap_or(0);
    let tallest = samples.iter().map(|s| s.height).max().unwrap_or(0);
    let tile_w = (widest * scale).max(caption_width) + 12;
    let tile_h = tallest * scale + 24;
    let rows = samples.len().div_ceil(columns);
    let mut canvas = Canvas::new(
        tile_w * columns.min(samples.len().max(1)),
        tile_h * rows.max(1),
    );
    for (i, sample) in samples.iter().enumerate() {
        let (tx, ty) = ((i % columns) * tile_w, (i / columns) * tile_h);
        let (width, height) = (sample.width, sample.height);
        let x0 = tx + (tile_w - width * scale) / 2;
        if sample.pixels.len() == 3 * width * height {
            for y in 0..height {
                for x in 0..width {
                    let at = |plane: usize| sample.pixels[plane * height * width + y * width + x];
                    canvas.fill(
                        x0 + x * scale,
                        ty + 4 + y * scale,
                        scale,
                        scale,
                        [at(0), at(1), at(2)],
                    );
                }
            }
        }
        let w = Canvas::text_width(&sample.caption, 1);
        canvas.text(
            tx + (tile_w - w) / 2,
            ty + 8 + tallest * scale,
            &sample.caption,
            BLACK,
            1,
            false,
        );
    }
    canvas.png()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png_bytes: &[u8]) -> (png::OutputInfo, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info, buf)
    }

    #[test]
    fn confusion_png_is_a_real_image_with_dark_diagonal() {
        let matrix: Vec<Vec<u64>> = (0..3)
            .map(|t| (0..3).map(|p| if t == p { 90 } else { 5 }).collect())
            .collect();
        let (info, pixels) = decode(&confusion_png(&matrix, &["cat", "dog", "ship"]));
        assert!(info.width > 150 && info.height > 150);
        // Sample a pixel near the corner of a diagonal cell and of an off-diagonal cell.
        let label_width = Canvas::text_width("ship", 1) + 12;
        let (left, top) = (label_width + 24, 40);
        let at = |x: usize, y: usize| {
            let i = (y * info.width as usize + x) * 3;
            [pixels[i], pixels[i + 1], pixels[i + 2]]
        };
        assert_eq!(at(left + 2, top + 2), blues(1.0));
        assert_eq!(at(left + 48 + 2, top + 2), blues(5.0 / 90.0));
    }

    #[test]
    fn one_and_two_class_matrices_are_drawn() {
        for classes in [&["yes"][..], &["cat", "dog"][..]] {
            let n = classes.len();
            let matrix = vec![vec![3; n]; n];
            let (info, _) = decode(&confusion_png(&matrix, classes));
            assert!(info.width > 0 && info.height > 0);
        }
    }

    #[test]
    fn sample_grid_shows_the_pixels() {
        const SIDE: usize = 32;
        let mut red = vec![0u8; 3 * SIDE * SIDE];
        red[..SIDE * SIDE].fill(255);
        let samples = vec![
            Sample {
                width: SIDE,
                height: SIDE,
                pixels: &red,
                caption: "red".into()
            };
            2
        ];
        let (info, pixels) = decode(&sample_grid_png(&samples, 2));
        let x0 = (info.width as usize / 2 - SIDE * 3) / 2;
        let i = ((4 + 10) * info.width as usize + x0 + 10) * 3;
        assert_eq!(&pixels[i..i + 3], &[255, 0, 0]);
    }
}
