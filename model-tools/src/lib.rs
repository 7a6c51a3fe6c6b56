#![warn(missing_docs)]
//! Offline model tools, used when a model is staged, never while a job runs:
//!
//! - [`import`]: a model file (ONNX, or CNTK converted to ONNX) with its provenance and what
//!   its outputs mean.
//! - [`quantize`]: the opt-in int8 version of an imported model, calibrated on real images.

pub mod import;
pub mod quantize;
