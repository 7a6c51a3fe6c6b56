#![warn(missing_docs)]
//! Offline model tools, used when a model is staged, never while a job runs:
//!
//! - [`expose`]: tensors inside a graph made outputs of the model (embeddings).
//! - [`import`]: a model file (ONNX, or CNTK converted to ONNX) with its provenance and what
//!   its outputs mean.
//! - [`quantize`]: the opt-in int8 version of an imported model, calibrated on real images.

pub mod expose;
pub mod import;
pub mod quantize;
