//! A model's preprocessing, built once from its spec and applied to each image in one pass.
//!
//! Per image: channels converted to the model's count (colour to luma with OpenCV's weights,
//! gray replicated), resized as the spec's pipeline resizes ([`crate::resize`]), reordered (BGR or RGB),
//! multiplied by the scale, normalised, and written in the model's layout. For the walkthrough
//! (32x32 BGR, scale 1, mean image) this is exactly `pixel - mean` per value, as before specs.

use std::borrow::Cow;

use fleet_spec::{ChannelOrder, Filter, Layout, ModelSpec, Normalize, Resize};

use crate::decode::{DecodeError, DecodeLimits, Image, decode_reduced, decode_with_warning};
use crate::mean_image::{MeanImage, MeanImageError};
use crate::resize::{self, Geometry, Sampler};

/// One model's preprocessing.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    channels: usize,
    height: usize,
    width: usize,
    layout: Layout,
    order: ChannelOrder,
    resize: Resize,
    shorter_side: Option<u32>,
    filter: Filter,
    fast_jpeg: bool,
    /// Per model channel: the factor on the pixel value.
    multiply: Vec<f32>,
    /// Subtracted after multiplying: per model-input value (NCHW order), or per channel.
    subtract: Subtract,
}

#[derive(Debug, Clone)]
enum Subtract {
    PerChannel(Vec<f32>),
    /// CHW, in the model's channel order.
    Image(Vec<f32>),
}

impl Preprocessor {
    /// Builds the preprocessing `spec` describes; `mean_image` is the OpenCV XML of the blob
    /// [`ModelSpec::mean_image_key`] names, when the spec normalises by one.
    pub fn new(spec: &ModelSpec, mean_image: Option<&[u8]>) -> Result<Self, MeanImageError> {
        let (c, h, w) = (
            spec.channels as usize,
            spec.height as usize,
            spec.width as usize,
        );
        let (multiply, subtract) = match &spec.normalize {
            Normalize::None => (vec![spec.scale; c], Subtract::PerChannel(vec![0.0; c])),
            Normalize::PerChannel { mean, std } => (
                std.iter().map(|s| spec.scale / s).collect(),
                Subtract::PerChannel(mean.iter().zip(std).map(|(m, s)| m / s).collect()),
            ),
            Normalize::MeanImage { key } => {
                let xml = mean_image.ok_or_else(|| MeanImageError {
                    source_name: key.clone(),
                    detail: "the model's spec names this mean image, but it was not loaded".into(),
                })?;
                let mean = MeanImage::from_xml(xml, key)?;
                let hwc = mean.fit(c, h, w, key)?;
                let mut chw = vec![0.0; c * h * w];
                for y in 0..h {
                    for x in 0..w {
                        for ch in 0..c {
                            chw[(ch * h + y) * w + x] = hwc[(y * w + x) * c + ch];
                        }
                    }
                }
                (vec![spec.scale; c], Subtract::Image(chw))
            }
        };
        Ok(Self {
            channels: c,
            height: h,
            width: w,
            layout: spec.layout,
            order: spec.channel_order,
            resize: spec.resize,
            shorter_side: spec.shorter_side,
            filter: spec.filter,
            fast_jpeg: spec.fast_jpeg,
            multiply,
            subtract,
        })
    }

    /// Decodes `bytes` for this model: whole, or with the spec's `fast_jpeg`, a large JPEG
    /// reduced in the decoder as far as it stays at least the size it is resized to
    /// ([`decode_reduced`]). The second value is the decoder's warning, as
    /// [`decode_with_warning`] gives it.
    pub fn decode(
        &self,
        bytes: &[u8],
        limits: DecodeLimits,
    ) -> Result<(Image, Option<String>), DecodeError> {
        Self::decode_for(std::slice::from_ref(&self), bytes, limits)
    }

    /// Decodes `bytes` once for every model of `preprocessors`, each of which resizes the same
    /// pixels: whole, unless every one asks for `fast_jpeg`, and then reduced only as far as
    /// the largest of their resized sizes allows, so that no model gets fewer pixels than it
    /// would alone.
    pub fn decode_for(
        preprocessors: &[&Preprocessor],
        bytes: &[u8],
        limits: DecodeLimits,
    ) -> Result<(Image, Option<String>), DecodeError> {
        if preprocessors.is_empty() || !preprocessors.iter().all(|p| p.fast_jpeg) {
            return decode_with_warning(bytes, limits);
        }
        let at_least = |source| {
            preprocessors
                .iter()
                .map(|p| {
                    Geometry::new(source, (p.height, p.width), p.resize, p.shorter_side).resized
                })
                .fold((0, 0), |(h, w), (ph, pw)| (h.max(ph), w.max(pw)))
        };
        decode_reduced(bytes, limits, Some(&at_least))
    }

    /// Values in one model input image.
    pub fn input_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Writes the model inputs of `pixels`, whole images of R, G and B planes of
    /// `height` x `width` (a CIFAR tarball's rows), into `out` (`input_len()` values each).
    pub fn write_planes(&self, pixels: &[u8], height: usize, width: usize, out: &mut [f32]) {
        for (planes, slot) in pixels
            .chunks_exact(3 * height * width)
            .zip(out.chunks_exact_mut(self.input_len()))
        {
            self.write(&Image::from_planes(planes, height, width), slot);
        }
    }

    /// Writes the model input for `image` into `out` (`input_len()` values).
    pub fn write(&self, image: &Image, out: &mut [f32]) {
        assert_eq!(out.len(), self.input_len(), "one image's worth of input");
        if self.filter != Filter::FloatLinear {
            let pixels = self.resized_u8(image).expect("an 8-bit filter");
            self.write_from_pixels(&pixels, out);
            return;
        }
        let (source, geometry) = self.geometry(image);
        Sampler::new(&geometry).sample(&source.data, source.width, self.channels, |y, x, c, v| {
            self.put(out, y, x, c, v)
        });
    }

    /// Whether the model's filter makes an 8-bit crop of each image (`input_len()` values,
    /// height x width x channels, RGB): every filter but [`Filter::FloatLinear`], which never
    /// rounds to 8 bits. A crop is a quarter of the bytes of the values made from it, so images
    /// wait for their model call as crops.
    pub fn makes_pixels(&self) -> bool {
        self.filter != Filter::FloatLinear
    }

    /// Writes `image`'s 8-bit crop (`input_len()` bytes, HWC, RGB) into `out`.
    ///
    /// # Panics
    /// For [`Filter::FloatLinear`], which makes no 8-bit crop.
    pub fn write_pixels(&self, image: &Image, out: &mut [u8]) {
        let pixels = self.resized_u8(image).expect("an 8-bit filter");
        out.copy_from_slice(&pixels);
    }

    /// Writes the model input of an 8-bit crop made by [`Preprocessor::write_pixels`] into
    /// `out` (`input_len()` values): channel order, scale, normalisation, layout.
    pub fn write_from_pixels(&self, pixels: &[u8], out: &mut [f32]) {
        assert_eq!(out.len(), self.input_len(), "one image's worth of input");
        assert_eq!(pixels.len(), self.input_len(), "one image's crop");
        let (c, plane) = (self.channels, self.height * self.width);
        if let (3, Layout::Nchw, Subtract::PerChannel(sub)) = (c, self.layout, &self.subtract) {
            // The common case in one pass over the crop, a pixel at a time into three planes.
            let (first, rest) = out.split_at_mut(plane);
            let (second, third) = rest.split_at_mut(plane);
            // Plane `k` takes RGB channel `order[k]`.
            let order = match self.order {
                ChannelOrder::Bgr => [2, 1, 0],
                ChannelOrder::Rgb => [0, 1, 2],
            };
            let [m0, m1, m2] = [0, 1, 2].map(|k| self.multiply[k]);
            let [s0, s1, s2] = [0, 1, 2].map(|k| sub[k]);
            for (((pixel, a), b), d) in pixels.chunks_exact(3).zip(first).zip(second).zip(third) {
                *a = f32::from(pixel[order[0]]) * m0 - s0;
                *b = f32::from(pixel[order[1]]) * m1 - s1;
                *d = f32::from(pixel[order[2]]) * m2 - s2;
            }
            return;
        }
        // A model channel at a time, each a straight loop over the plane (what [`Self::put`]
        // does value by value, with the same arithmetic).
        for ch in 0..c {
            // Decoded colour is RGB: BGR input plane `k` is RGB channel `2 - k`.
            let source = if c == 3 && self.order == ChannelOrder::Bgr {
                2 - ch
            } else {
                ch
            };
            let multiply = self.multiply[ch];
            let values = pixels[source..]
                .iter()
                .step_by(c)
                .map(|&v| f32::from(v) * multiply);
            match (&self.subtract, self.layout) {
                (Subtract::PerChannel(sub), Layout::Nchw) => {
                    let sub = sub[ch];
                    for (o, v) in out[ch * plane..][..plane].iter_mut().zip(values) {
                        *o = v - sub;
                    }
                }
                (Subtract::Image(sub), Layout::Nchw) => {
                    let sub = &sub[ch * plane..][..plane];
                    for ((o, v), s) in out[ch * plane..][..plane].iter_mut().zip(values).zip(sub) {
                        *o = v - s;
                    }
                }
                (Subtract::PerChannel(sub), Layout::Nhwc) => {
                    let sub = sub[ch];
                    for (o, v) in out[ch..].iter_mut().step_by(c).zip(values) {
                        *o = v - sub;
                    }
                }
                (Subtract::Image(sub), Layout::Nhwc) => {
                    let sub = &sub[ch * plane..][..plane];
                    for ((o, v), s) in out[ch..].iter_mut().step_by(c).zip(values).zip(sub) {
                        *o = v - s;
                    }
                }
            }
        }
    }

    /// Puts the resized value of channel `source_channel` (RGB order) at `(y, x)` into `out`,
    /// in the model's channel order, scaled, normalised and laid out.
    fn put(&self, out: &mut [f32], y: usize, x: usize, source_channel: usize, value: f32) {
        let (c, h, w) = (self.channels, self.height, self.width);
        // Decoded colour is RGB: BGR input plane `k` is RGB channel `2 - k`.
        let ch = if c == 3 && self.order == ChannelOrder::Bgr {
            2 - source_channel
        } else {
            source_channel
        };
        let chw = (ch * h + y) * w + x;
        let sub = match &self.subtract {
            Subtract::PerChannel(values) => values[ch],
            Subtract::Image(values) => values[chw],
        };
        let at = match self.layout {
            Layout::Nchw => chw,
            Layout::Nhwc => (y * w + x) * c + ch,
        };
        out[at] = value * self.multiply[ch] - sub;
    }

    /// `image` with the model's channel count (converted only when it differs), and where it
    /// goes: its resize geometry to the model's input.
    fn geometry<'a>(&self, image: &'a Image) -> (Cow<'a, Image>, Geometry) {
        let source = if image.channels == self.channels {
            Cow::Borrowed(image)
        } else {
            Cow::Owned(convert_channels(image, self.channels))
        };
        let geometry = Geometry::new(
            (source.height, source.width),
            (self.height, self.width),
            self.resize,
            self.shorter_side,
        );
        (source, geometry)
    }

    /// The 8-bit crop the model's filter makes of `image` (HWC, the model's channel count,
    /// RGB), before channel order, scale and normalisation; `None` for [`Filter::FloatLinear`],
    /// which never rounds to 8 bits. What the reference pipelines' outputs are compared with.
    pub fn resized_u8(&self, image: &Image) -> Option<Vec<u8>> {
        if self.filter == Filter::FloatLinear {
            return None;
        }
        let (source, geometry) = self.geometry(image);
        Some(resize::resize_u8(
            &source.data,
            self.channels,
            &geometry,
            self.filter,
        ))
    }
}

/// Colour to luma (OpenCV's weights, as CNTK's gray reader uses), or gray to three equal
/// channels.
fn convert_channels(image: &Image, channels: usize) -> Image {
    let data = if channels == 1 {
        image
            .data
            .chunks_exact(image.channels)
            .map(|px| {
                let luma =
                    0.299 * f32::from(px[0]) + 0.587 * f32::from(px[1]) + 0.114 * f32::from(px[2]);
                luma.round().clamp(0.0, 255.0) as u8
            })
            .collect()
    } else {
        image.data.iter().flat_map(|&v| [v, v, v]).collect()
    };
    Image {
        width: image.width,
        height: image.height,
        channels,
        data,
    }
}

#[cfg(test)]
mod tests {
    use fleet_spec::{Outputs, Provenance, SPEC_VERSION};

    use super::*;

    fn spec(channels: u32, size: u32, normalize: Normalize) -> ModelSpec {
        ModelSpec {
            version: SPEC_VERSION,
            input: "x".into(),
            output: None,
            layout: Layout::Nchw,
            channels,
            height: size,
            width: size,
            channel_order: ChannelOrder::Bgr,
            resize: Resize::Stretch,
            shorter_side: None,
            filter: Filter::FloatLinear,
            fast_jpeg: false,
            scale: 1.0,
            normalize,
            outputs: Outputs::Logits,
            class_count: 10,
            classes: None,
            class_ids: None,
            embeddings: Vec::new(),
            multi_label: None,
            provenance: Provenance {
                source: "m".into(),
                format: "onnx".into(),
                source_sha256: String::new(),
                onnx_sha256: String::new(),
            },
        }
    }

    /// The walkthrough's steps, literally: reshape (3,32,32) -> HWC -> BGR -> CHW -> minus mean.
    fn walkthrough(row: &[u8], mean_hwc_bgr: &[f32]) -> Vec<f32> {
        let hwc = |y: usize, x: usize, c: usize| f32::from(row[(c * 32 + y) * 32 + x]);
        let mut out = vec![0.0; 3072];
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    out[(c * 32 + y) * 32 + x] =
                        hwc(y, x, 2 - c) - mean_hwc_bgr[(y * 32 + x) * 3 + c];
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_walkthrough_step_by_step() {
        let mean_hwc: Vec<f32> = (0..3072).map(|i| (i % 251) as f32 * 0.5).collect();
        let xml = format!(
            "<opencv_storage><Channel>3</Channel><Row>32</Row><Col>32</Col><MeanImg><rows>1</rows>\
             <cols>3072</cols><dt>f</dt><data>{}</data></MeanImg></opencv_storage>",
            mean_hwc
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let spec = spec(3, 32, Normalize::MeanImage { key: "m".into() });
        let pre = Preprocessor::new(&spec, Some(xml.as_bytes())).unwrap();
        let row: Vec<u8> = (0..3072).map(|i| (i * 7 % 256) as u8).collect();
        let mut out = vec![0.0; 3072];
        pre.write(&Image::from_planes(&row, 32, 32), &mut out);
        assert_eq!(out, walkthrough(&row, &mean_hwc));
    }

    #[test]
    fn rgb_nhwc_per_channel_normalisation() {
        let mut spec = spec(
            3,
            1,
            Normalize::PerChannel {
                mean: vec![0.5, 0.25, 0.0],
                std: vec![0.5, 0.25, 1.0],
            },
        );
        spec.channel_order = ChannelOrder::Rgb;
        spec.layout = Layout::Nhwc;
        spec.scale = 1.0 / 255.0;
        let pre = Preprocessor::new(&spec, None).unwrap();
        let image = Image {
            width: 1,
            height: 1,
            channels: 3,
            data: vec![255, 0, 51],
        };
        let mut out = vec![0.0; 3];
        pre.write(&image, &mut out);
        let expected = [(1.0 - 0.5) / 0.5, (0.0 - 0.25) / 0.25, 0.2];
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn channels_are_converted_and_images_resized() {
        // A colour image for a gray model: luma; a 2x2 image for a 1x1 model: the average.
        let pre = Preprocessor::new(&spec(1, 1, Normalize::None), None).unwrap();
        let image = Image {
            width: 2,
            height: 2,
            channels: 3,
            data: [[255, 255, 255], [0, 0, 0], [255, 255, 255], [0, 0, 0]].concat(),
        };
        let mut out = vec![0.0; 1];
        pre.write(&image, &mut out);
        assert_eq!(out, vec![127.5]);
        // A gray image for a colour model: the same value in every plane.
        let pre = Preprocessor::new(&spec(3, 1, Normalize::None), None).unwrap();
        let gray = Image {
            width: 1,
            height: 1,
            channels: 1,
            data: vec![9],
        };
        let mut out = vec![0.0; 3];
        pre.write(&gray, &mut out);
        assert_eq!(out, vec![9.0; 3]);
    }

    #[test]
    fn a_mean_image_of_another_size_is_refused() {
        let xml = "<opencv_storage><Channel>3</Channel><Row>2</Row><Col>2</Col><MeanImg><rows>1</rows>\
                   <cols>12</cols><dt>f</dt><data>0 0 0 0 0 0 0 0 0 0 0 0</data></MeanImg></opencv_storage>";
        let spec = spec(
            3,
            32,
            Normalize::MeanImage {
                key: "mean.xml".into(),
            },
        );
        let err = Preprocessor::new(&spec, Some(xml.as_bytes())).unwrap_err();
        assert!(err.to_string().contains("model takes 32x32"), "{err}");
        let err = Preprocessor::new(&spec, None).unwrap_err();
        assert!(err.to_string().contains("was not loaded"), "{err}");
    }
}
