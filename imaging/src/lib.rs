#![warn(missing_docs)]
//! Images, from encoded bytes to a model's input tensor, as the model's spec asks.
//!
//! - [`decode`]: JPEG, PNG, BMP, GIF and WebP bytes to pixels, with limits against
//!   decompression bombs; every failure is an error for that image alone.
//! - [`resize`]: the geometry (stretch, centre crop) and the filters of Pillow and OpenCV,
//!   to the value.
//! - [`mean_image`]: the OpenCV XML mean image.
//! - [`preprocess`]: channel conversion, resize, channel order, scale, normalisation and
//!   layout, in one pass per image.
//! - [`thumbnail`]: small RGB copies for the job report.
//!
//! Nothing here links ONNX Runtime: tensors are flat `f32` slices handed to the scorer.

pub mod decode;
mod jpeg;
pub mod mean_image;
pub mod preprocess;
pub mod resize;
pub mod thumbnail;

pub use decode::{
    DecodeError, DecodeLimits, Image, decode, decode_jpeg, decode_reduced, decode_with_warning,
    decoding_bytes,
};
pub use jpeg::{decoder as jpeg_decoder, encode as encode_jpeg};
pub use preprocess::Preprocessor;
pub use thumbnail::thumbnail;
