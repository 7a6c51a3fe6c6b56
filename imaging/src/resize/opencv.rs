//! OpenCV's `cv::resize` on 8-bit images (`INTER_LINEAR`, `INTER_AREA`, `INTER_NEAREST`), to
//! the value.
//!
//! `INTER_LINEAR` on 8-bit pixels is fixed point: 11-bit weights, the horizontal pass kept as
//! exact integers, the vertical pass computed as OpenCV's vector code does it (each row's
//! value shifted right by 4, multiplied keeping the high 16 bits, the two products added and
//! rounded by 2 bits), which its scalar code imitates so that every pixel gets the same
//! arithmetic. `INTER_AREA` averages the source pixels under each output pixel with float
//! weights in OpenCV's order of additions; for whole shrink factors it takes OpenCV's integer
//! shortcut, and when an axis grows it is a bilinear variant. A shrink by exactly 2 on both
//! axes turns `INTER_LINEAR` into `INTER_AREA`, as in OpenCV.

use super::Geometry;

/// Fraction bits of the fixed-point weights.
const COEF_BITS: u32 = 11;
const COEF_SCALE: f32 = (1 << COEF_BITS) as f32;

/// OpenCV's scale factors: the destination over the source, then its inverse.
fn scales(source: usize, resized: usize) -> (f64, f64) {
    let inverse = resized as f64 / source as f64;
    (1.0 / inverse, inverse)
}

/// `saturate_cast<short>(float)`: rounded to nearest, halves to even.
fn fixed(weight: f32) -> i32 {
    (weight * COEF_SCALE).round_ties_even() as i32
}

/// Whether both axes shrink by a whole factor (OpenCV's `is_area_fast`), and the factors.
fn whole_factors(geometry: &Geometry) -> Option<(usize, usize)> {
    let (sy, _) = scales(geometry.source.0, geometry.resized.0);
    let (sx, _) = scales(geometry.source.1, geometry.resized.1);
    let whole = |s: f64| ((s - s.round()).abs() < f64::EPSILON).then_some(s.round() as usize);
    Some((whole(sy)?, whole(sx)?))
}

/// Two-tap weights of one output position, fixed point, and the first source index.
#[derive(Debug, Clone, Copy)]
struct Tap {
    index: usize,
    /// The second source index, `index + 1` clamped to the image.
    next: usize,
    weights: (i32, i32),
}

/// How the fractional position is found: `INTER_LINEAR`'s pixel centres, or `INTER_AREA`'s
/// rule for growing axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Linear,
    Area,
}

/// The fractional source position of output `d`: integer part and fraction.
fn position(d: usize, scale: f64, inverse: f64, mode: Mode) -> (i64, f32) {
    match mode {
        Mode::Linear => {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let s = f.floor();
            (s as i64, f - s)
        }
        Mode::Area => {
            let s = (d as f64 * scale).floor() as i64;
            let f = ((d as f64 + 1.0) - (s as f64 + 1.0) * inverse) as f32;
            let f = if f <= 0.0 { 0.0 } else { f - f.floor() };
            (s, f)
        }
    }
}

/// Column taps: the position clamped to the image, with its fraction dropped at the edges.
fn column_taps(source: usize, resized: usize, first: usize, count: usize, mode: Mode) -> Vec<Tap> {
    let (scale, inverse) = scales(source, resized);
    (first..first + count)
        .map(|d| {
            let (mut s, mut f) = position(d, scale, inverse, mode);
            if s < 0 {
                (s, f) = (0, 0.0);
            }
            if s >= source as i64 - 1 {
                (s, f) = (source as i64 - 1, 0.0);
            }
            let index = s as usize;
            Tap {
                index,
                next: (index + 1).min(source - 1),
                weights: (fixed(1.0 - f), fixed(f)),
            }
        })
        .collect()
}

/// Row taps: the fraction kept, the two rows clamped to the image (OpenCV clamps row indices
/// but not row weights).
fn row_taps(source: usize, resized: usize, first: usize, count: usize, mode: Mode) -> Vec<Tap> {
    let (scale, inverse) = scales(source, resized);
    let last = source as i64 - 1;
    (first..first + count)
        .map(|d| {
            let (s, f) = position(d, scale, inverse, mode);
            Tap {
                index: s.clamp(0, last) as usize,
                next: (s + 1).clamp(0, last) as usize,
                weights: (fixed(1.0 - f), fixed(f)),
            }
        })
        .collect()
}

/// `INTER_LINEAR` on 8-bit pixels.
pub(super) fn linear(data: &[u8], channels: usize, geometry: &Geometry) -> Vec<u8> {
    if whole_factors(geometry) == Some((2, 2)) {
        return area(data, channels, geometry);
    }
    two_tap(data, channels, geometry, Mode::Linear)
}

/// The fixed-point two-tap resampler shared by `INTER_LINEAR` and growing `INTER_AREA`.
fn two_tap(data: &[u8], channels: usize, geometry: &Geometry, mode: Mode) -> Vec<u8> {
    let (top, left) = geometry.offset;
    let (crop_h, crop_w) = geometry.target;
    let columns = column_taps(geometry.source.1, geometry.resized.1, left, crop_w, mode);
    let rows = row_taps(geometry.source.0, geometry.resized.0, top, crop_h, mode);
    let stride = geometry.source.1 * channels;
    let width = crop_w * channels;
    // The horizontal pass of one source row: exact integers (values times 2^11).
    let horizontal = |row: usize, out: &mut Vec<i32>| {
        let source = &data[row * stride..][..stride];
        out.clear();
        for tap in &columns {
            for c in 0..channels {
                let a = i32::from(source[tap.index * channels + c]);
                let b = i32::from(source[tap.next * channels + c]);
                out.push(a * tap.weights.0 + b * tap.weights.1);
            }
        }
    };
    let mut out = Vec::with_capacity(crop_h * width);
    let (mut upper, mut lower) = (Vec::with_capacity(width), Vec::with_capacity(width));
    let mut held: Option<(usize, usize)> = None;
    for tap in &rows {
        if held != Some((tap.index, tap.next)) {
            horizontal(tap.index, &mut upper);
            horizontal(tap.next, &mut lower);
            held = Some((tap.index, tap.next));
        }
        let (b0, b1) = tap.weights;
        for (&s0, &s1) in upper.iter().zip(&lower) {
            // OpenCV's vertical step: (S >> 4) * b keeping the high 16 bits, then 2 bits
            // rounded away.
            let v = (((s0 >> 4) * b0) >> 16) + (((s1 >> 4) * b1) >> 16) + 2;
            out.push((v >> 2).clamp(0, 255) as u8);
        }
    }
    out
}

/// `INTER_AREA` on 8-bit pixels.
pub(super) fn area(data: &[u8], channels: usize, geometry: &Geometry) -> Vec<u8> {
    let (scale_y, _) = scales(geometry.source.0, geometry.resized.0);
    let (scale_x, _) = scales(geometry.source.1, geometry.resized.1);
    if scale_x < 1.0 || scale_y < 1.0 {
        // An axis grows: OpenCV falls back to a bilinear variant.
        return two_tap(data, channels, geometry, Mode::Area);
    }
    if let Some(factors) = whole_factors(geometry) {
        return area_whole(data, channels, geometry, factors);
    }
    let columns = area_weights(
        geometry.source.1,
        scale_x,
        geometry.offset.1,
        geometry.target.1,
    );
    let rows = area_weights(
        geometry.source.0,
        scale_y,
        geometry.offset.0,
        geometry.target.0,
    );
    let stride = geometry.source.1 * channels;
    let width = geometry.target.1 * channels;
    let mut out = Vec::with_capacity(geometry.target.0 * width);
    let mut line = vec![0f32; width];
    let mut sum = vec![0f32; width];
    for cells in &rows {
        for (n, &(sy, beta)) in cells.iter().enumerate() {
            let source = &data[sy * stride..][..stride];
            line.iter_mut().for_each(|v| *v = 0.0);
            for (x, cells) in columns.iter().enumerate() {
                for &(sx, alpha) in cells {
                    for c in 0..channels {
                        let at = x * channels + c;
                        line[at] += f32::from(source[sx * channels + c]) * alpha;
                    }
                }
            }
            // The first row of an output row starts its sum; OpenCV multiplies it in too.
            for (s, &v) in sum.iter_mut().zip(&line) {
                *s = if n == 0 { beta * v } else { *s + beta * v };
            }
        }
        out.extend(
            sum.iter()
                .map(|&v| v.round_ties_even().clamp(0.0, 255.0) as u8),
        );
    }
    out
}

/// Per output position `first..first + count`, the source pixels it covers and their weights,
/// in OpenCV's order (`computeResizeAreaTab`).
fn area_weights(source: usize, scale: f64, first: usize, count: usize) -> Vec<Vec<(usize, f32)>> {
    (first..first + count)
        .map(|d| {
            let start = d as f64 * scale;
            let end = start + scale;
            let cell = scale.min(source as f64 - start);
            let whole_end = (end.floor() as usize).min(source - 1);
            let whole_start = (start.ceil() as usize).min(whole_end);
            let mut cells = Vec::new();
            if whole_start as f64 - start > 1e-3 {
                cells.push((
                    whole_start - 1,
                    ((whole_start as f64 - start) / cell) as f32,
                ));
            }
            for s in whole_start..whole_end {
                cells.push((s, (1.0 / cell) as f32));
            }
            if end - whole_end as f64 > 1e-3 {
                cells.push((
                    whole_end,
                    ((end - whole_end as f64).min(1.0).min(cell) / cell) as f32,
                ));
            }
            cells
        })
        .collect()
}

/// `INTER_AREA` for whole shrink factors: plain averages (rounded up at halves for 2x2, as
/// OpenCV's vector code does; to even otherwise).
fn area_whole(
    data: &[u8],
    channels: usize,
    geometry: &Geometry,
    (fy, fx): (usize, usize),
) -> Vec<u8> {
    let (top, left) = geometry.offset;
    let (crop_h, crop_w) = geometry.target;
    let stride = geometry.source.1 * channels;
    let scale = 1.0 / (fx * fy) as f32;
    let mut out = Vec::with_capacity(crop_h * crop_w * channels);
    for y in top..top + crop_h {
        for x in left..left + crop_w {
            for c in 0..channels {
                let mut sum = 0u32;
                for dy in 0..fy {
                    let row = &data[(y * fy + dy) * stride..][..stride];
                    for dx in 0..fx {
                        sum += u32::from(row[(x * fx + dx) * channels + c]);
                    }
                }
                let value = if (fy, fx) == (2, 2) {
                    (sum + 2) >> 2
                } else {
                    (sum as f32 * scale).round_ties_even() as u32
                };
                out.push(value.min(255) as u8);
            }
        }
    }
    out
}

/// `INTER_NEAREST`: the source pixel at `floor(d * scale)`, clamped.
pub(super) fn nearest(data: &[u8], channels: usize, geometry: &Geometry) -> Vec<u8> {
    let (scale_y, _) = scales(geometry.source.0, geometry.resized.0);
    let (scale_x, _) = scales(geometry.source.1, geometry.resized.1);
    let (top, left) = geometry.offset;
    let (crop_h, crop_w) = geometry.target;
    let stride = geometry.source.1 * channels;
    let index =
        |d: usize, scale: f64, len: usize| ((d as f64 * scale).floor() as usize).min(len - 1);
    let mut out = Vec::with_capacity(crop_h * crop_w * channels);
    for y in top..top + crop_h {
        let row = &data[index(y, scale_y, geometry.source.0) * stride..][..stride];
        for x in left..left + crop_w {
            let sx = index(x, scale_x, geometry.source.1);
            out.extend_from_slice(&row[sx * channels..][..channels]);
        }
    }
    out
}
