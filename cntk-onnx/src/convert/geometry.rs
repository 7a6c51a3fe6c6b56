//! Where a sliding window (convolution kernel or pooling window) goes, per spatial axis, as
//! CNTK's `ConvolveGeometry` places it, and how ONNX is told the same.
//!
//! CNTK places output `j`'s window centre at `start + j * stride`, the centre of a window of
//! `k` cells being its cell `(k - 1) / 2`. With auto-padding `start` is half the cells the
//! windows leave over (so an odd leftover cell is padded *before* the data, where ONNX's
//! `SAME_UPPER` would pad after it, and a stride longer than the window skips leading cells);
//! without it the first window starts `lowerPad` cells before the data. ONNX can only pad, so
//! skipped leading cells become a crop of the input, and every pad is written out explicitly.

use super::attributes::{bool_attr, bools_attr, shape_attr};
use super::unsupported;
use crate::error::Problem;
use crate::model::Function;
use crate::proto::cntk::Dictionary;
use crate::proto::onnx::AttributeProto;

/// One axis of a window's placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisWindow {
    /// Number of window positions.
    pub out: u64,
    /// Padding before the first cell; negative: leading cells no window reaches.
    pub begin: i64,
    /// Padding after the last cell; negative: trailing cells no window reaches.
    pub end: i64,
}

/// One axis of CNTK's geometry over `input` cells.
pub fn window_axis(
    input: u64,
    kernel: u64,
    stride: u64,
    dilation: u64,
    auto_pad: bool,
    (lower, upper): (u64, u64),
    ceil: bool,
) -> Result<AxisWindow, String> {
    if kernel == 0 || input == 0 {
        return Err(format!("a window of {kernel} cells over {input} cells"));
    }
    let k = (kernel - 1) * dilation + 1;
    let padded = if auto_pad {
        input + k - 1
    } else {
        input + lower + upper
    };
    if padded < k {
        return Err(format!("a window of {k} over {input} cells"));
    }
    let out = if ceil {
        (padded - k).div_ceil(stride) + 1
    } else {
        (padded - k) / stride + 1
    };
    let (input, k, covered) = (input as i64, k as i64, ((out - 1) * stride) as i64);
    let begin = if auto_pad {
        let extra = input - covered - 1;
        if extra < 0 {
            return Err(format!(
                "rounding the output up with auto-padding ({input} cells, window {k})"
            ));
        }
        (k - 1) / 2 - extra / 2
    } else {
        lower as i64
    };
    let end = covered + k - begin - input;
    Ok(AxisWindow { out, begin, end })
}

/// The stride, dilation and padding attributes shared by convolution and pooling.
struct Sliding {
    strides: Vec<u64>,
    dilations: Vec<u64>,
    auto_pad: Vec<bool>,
    lower: Vec<u64>,
    upper: Vec<u64>,
}

impl Sliding {
    fn read(attrs: &Dictionary) -> Result<Self, Problem> {
        Ok(Self {
            strides: shape_attr(attrs, "strides")?.unwrap_or_default(),
            dilations: shape_attr(attrs, "dilation")?.unwrap_or_default(),
            auto_pad: bools_attr(attrs, "autoPadding")?,
            lower: shape_attr(attrs, "lowerPad")?.unwrap_or_default(),
            upper: shape_attr(attrs, "upperPad")?.unwrap_or_default(),
        })
    }

    /// Axis `i`'s value of an attribute; CNTK lets a one-element attribute stand for every axis.
    fn at<T: Copy>(values: &[T], i: usize, default: T) -> T {
        values
            .get(if values.len() == 1 { 0 } else { i })
            .copied()
            .unwrap_or(default)
    }

    fn axis(
        &self,
        i: usize,
        input: u64,
        kernel: u64,
        ceil: bool,
    ) -> Result<(AxisWindow, u64, u64), String> {
        let stride = Self::at(&self.strides, i, 1).max(1);
        let dilation = Self::at(&self.dilations, i, 1).max(1);
        let pads = (Self::at(&self.lower, i, 0), Self::at(&self.upper, i, 0));
        let auto_pad = Self::at(&self.auto_pad, i, false);
        let window = window_axis(input, kernel, stride, dilation, auto_pad, pads, ceil)?;
        Ok((window, stride, dilation))
    }
}

/// A forward window (convolution or pooling) over the spatial axes, CNTK order.
pub struct Geometry {
    pub output: Vec<u64>,
    /// Leading cells to drop from the input before ONNX pads it.
    pub crop: Vec<u64>,
    strides: Vec<u64>,
    dilations: Vec<u64>,
    pads_begin: Vec<u64>,
    pads_end: Vec<u64>,
}

impl Geometry {
    /// Reads the geometry of a window of `kernel` cells over `input` (spatial axes only). The
    /// error says what ONNX cannot express.
    pub fn forward(
        f: &Function,
        attrs: &Dictionary,
        input: &[u64],
        kernel: &[u64],
    ) -> Result<Self, Problem> {
        let sliding = Sliding::read(attrs)?;
        let ceil = bool_attr(attrs, "ceilOutDim")?.unwrap_or(false);
        let mut geometry = Self {
            output: vec![],
            crop: vec![],
            strides: vec![],
            dilations: vec![],
            pads_begin: vec![],
            pads_end: vec![],
        };
        for (i, (&cells, &k)) in input.iter().zip(kernel).enumerate() {
            let (w, stride, dilation) = sliding
                .axis(i, cells, k, ceil)
                .map_err(|what| unsupported(f, &what))?;
            let crop = (-w.begin).max(0) as u64;
            let (begin, end) = (w.begin.max(0) as u64, w.end.max(0) as u64);
            let k = (k - 1) * dilation + 1;
            // ONNX's floor drops trailing cells no window reaches; check it lands on CNTK's count.
            let reached = (cells - crop + begin + end) as i64 - k as i64;
            if reached < 0 || reached as u64 / stride + 1 != w.out {
                return Err(unsupported(
                    f,
                    &format!(
                        "a window geometry ONNX cannot express (input {cells}, window {k}, stride {stride})"
                    ),
                ));
            }
            geometry.output.push(w.out);
            geometry.crop.push(crop);
            geometry.strides.push(stride);
            geometry.dilations.push(dilation);
            geometry.pads_begin.push(begin);
            geometry.pads_end.push(end);
        }
        Ok(geometry)
    }

    pub fn onnx_attributes(&self, kernel: &[u64]) -> Vec<AttributeProto> {
        onnx_window(
            kernel,
            &self.strides,
            &self.dilations,
            &self.pads_begin,
            &self.pads_end,
        )
    }
}

/// A transposed convolution: the adjoint of the forward convolution whose input has the
/// transposed one's output shape.
pub struct Transposed {
    pub output: Vec<u64>,
    strides: Vec<u64>,
    dilations: Vec<u64>,
    pads_begin: Vec<u64>,
    pads_end: Vec<u64>,
    output_padding: Vec<u64>,
}

impl Transposed {
    /// `output`: the saved output shape (spatial axes), if the model fixed one; otherwise CNTK's
    /// own choice (`ConvolveGeometry::ComputeInputShape`).
    pub fn read(
        f: &Function,
        attrs: &Dictionary,
        input: &[u64],
        kernel: &[u64],
        output: Option<&[u64]>,
    ) -> Result<Self, Problem> {
        let sliding = Sliding::read(attrs)?;
        let mut t = Self {
            output: vec![],
            strides: vec![],
            dilations: vec![],
            pads_begin: vec![],
            pads_end: vec![],
            output_padding: vec![],
        };
        for (i, (&cells, &k)) in input.iter().zip(kernel).enumerate() {
            let stride = Sliding::at(&sliding.strides, i, 1).max(1);
            let size = match output {
                Some(dims) => dims[i],
                None if Sliding::at(&sliding.auto_pad, i, false) => {
                    cells.saturating_sub(1) * stride + 1
                }
                None => {
                    let pads =
                        Sliding::at(&sliding.lower, i, 0) + Sliding::at(&sliding.upper, i, 0);
                    (cells.saturating_sub(1) * stride + k).saturating_sub(pads)
                }
            };
            let (w, stride, dilation) = sliding
                .axis(i, size, k, false)
                .map_err(|what| unsupported(f, &what))?;
            if w.out != cells {
                return Err(unsupported(
                    f,
                    &format!(
                        "an output of {size} cells, which a convolution maps to {} cells, not {cells}",
                        w.out
                    ),
                ));
            }
            if w.begin < 0 {
                return Err(unsupported(
                    f,
                    &format!("a stride ({stride}) longer than its window ({k}) with auto-padding"),
                ));
            }
            t.output.push(size);
            t.strides.push(stride);
            t.dilations.push(dilation);
            t.pads_begin.push(w.begin as u64);
            t.pads_end.push(w.end.max(0) as u64);
            // Output cells past the last window get only the bias: ONNX's output padding.
            t.output_padding.push((-w.end).max(0) as u64);
        }
        Ok(t)
    }

    pub fn onnx_attributes(&self, kernel: &[u64]) -> Vec<AttributeProto> {
        let mut attributes = onnx_window(
            kernel,
            &self.strides,
            &self.dilations,
            &self.pads_begin,
            &self.pads_end,
        );
        if self.output_padding.iter().any(|&p| p != 0) {
            attributes.push(AttributeProto::ints(
                "output_padding",
                reversed(&self.output_padding),
            ));
        }
        attributes
    }
}

fn reversed(v: &[u64]) -> Vec<i64> {
    v.iter().rev().map(|&d| d as i64).collect()
}

fn onnx_window(
    kernel: &[u64],
    strides: &[u64],
    dilations: &[u64],
    begin: &[u64],
    end: &[u64],
) -> Vec<AttributeProto> {
    let mut pads = reversed(begin);
    pads.extend(reversed(end));
    let mut attributes = vec![
        AttributeProto::ints("kernel_shape", reversed(kernel)),
        AttributeProto::ints("strides", reversed(strides)),
        AttributeProto::ints("pads", pads),
    ];
    if dilations.iter().any(|&d| d != 1) {
        attributes.push(AttributeProto::ints("dilations", reversed(dilations)));
    }
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(out: u64, begin: i64, end: i64) -> Result<AxisWindow, String> {
        Ok(AxisWindow { out, begin, end })
    }

    #[test]
    fn auto_padding_puts_the_odd_cell_first() {
        // 3x3, stride 2 over 32 cells: CNTK pads one cell before, none after (ONNX SAME_UPPER
        // would pad after).
        assert_eq!(
            window_axis(32, 3, 2, 1, true, (0, 0), false),
            window(16, 1, 0)
        );
        // Stride 1 is symmetric.
        assert_eq!(
            window_axis(32, 3, 1, 1, true, (0, 0), false),
            window(32, 1, 1)
        );
        // 1x1 stride-2 projection: no padding, last cell unused.
        assert_eq!(
            window_axis(32, 1, 2, 1, true, (0, 0), false),
            window(16, 0, -1)
        );
    }

    #[test]
    fn a_stride_longer_than_the_window_skips_leading_cells() {
        // 1 cell every 3 over 6 cells with auto-padding: CNTK centres the two windows on cells
        // 1 and 4, skipping cell 0.
        assert_eq!(
            window_axis(6, 1, 3, 1, true, (0, 0), false),
            window(2, -1, -1)
        );
    }

    #[test]
    fn without_padding_the_first_window_starts_at_the_first_cell() {
        assert_eq!(
            window_axis(8, 8, 1, 1, false, (0, 0), false),
            window(1, 0, 0)
        );
        assert_eq!(
            window_axis(32, 3, 1, 1, false, (0, 0), false),
            window(30, 0, 0)
        );
        // 2x2 stride 2 over 5 cells: windows at 0 and 2, cell 4 unused.
        assert_eq!(
            window_axis(5, 2, 2, 1, false, (0, 0), false),
            window(2, 0, -1)
        );
        // 3x3 stride 2 over 32 cells: 15 windows from cell 0, the last cell unused.
        assert_eq!(
            window_axis(32, 3, 2, 1, false, (0, 0), false),
            window(15, 0, -1)
        );
        assert_eq!(
            window_axis(32, 3, 1, 1, false, (1, 1), false),
            window(32, 1, 1)
        );
    }

    #[test]
    fn rounding_up_hangs_the_last_window_over_the_end() {
        // 3x3 stride 2 over 32 cells, ceilOutDim: a 16th window over cells 30..32.
        assert_eq!(
            window_axis(32, 3, 2, 1, false, (0, 0), true),
            window(16, 0, 1)
        );
        assert_eq!(
            window_axis(32, 2, 2, 1, false, (0, 0), true),
            window(16, 0, 0)
        );
    }

    #[test]
    fn window_larger_than_input_is_refused() {
        assert!(window_axis(2, 5, 1, 1, false, (0, 0), false).is_err());
    }
}
