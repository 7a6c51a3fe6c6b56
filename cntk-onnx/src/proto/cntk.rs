//! CNTK 2.x model files (`CNTK.proto`, package `CNTK.proto`).
//!
//! A saved model is one [`Dictionary`]; every value in it is a [`DictionaryValue`], so the
//! structure (functions, variables, attributes) lives in string keys, not in message types.
//! Field numbers follow `Source/CNTKv2LibraryDll/proto/CNTK.proto`.

use std::collections::HashMap;

#[derive(Clone, PartialEq, prost::Message)]
pub struct NdShape {
    #[prost(uint64, repeated, tag = "1")]
    pub shape_dim: Vec<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Axis {
    #[prost(int32, tag = "1")]
    pub static_axis_idx: i32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(bool, tag = "3")]
    pub is_ordered_dynamic_axis: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NdArrayView {
    /// 1 float, 2 double, 4 float16, 5 int8, 6 int16.
    #[prost(int32, tag = "1")]
    pub data_type: i32,
    /// 0 dense; the sparse formats never hold model weights.
    #[prost(int32, tag = "2")]
    pub storage_format: i32,
    #[prost(message, optional, tag = "3")]
    pub shape: Option<NdShape>,
    #[prost(oneof = "ArrayValues", tags = "4, 5, 6, 7")]
    pub values: Option<ArrayValues>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ArrayValues {
    #[prost(message, tag = "4")]
    Float(FloatValues),
    #[prost(message, tag = "5")]
    Double(DoubleValues),
    #[prost(message, tag = "6")]
    Bytes(BytesValue),
    #[prost(message, tag = "7")]
    Sint32(IntValues),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FloatValues {
    #[prost(float, repeated, tag = "1")]
    pub value: Vec<f32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DoubleValues {
    #[prost(double, repeated, tag = "1")]
    pub value: Vec<f64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BytesValue {
    #[prost(bytes = "vec", tag = "1")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IntValues {
    #[prost(sint32, repeated, tag = "1")]
    pub value: Vec<i32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Vector {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<DictionaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Dictionary {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(map = "string, message", tag = "2")]
    pub data: HashMap<String, DictionaryValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DictionaryValue {
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(int32, tag = "2")]
    pub value_type: i32,
    #[prost(oneof = "Value", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(bool, tag = "3")]
    Bool(bool),
    #[prost(int32, tag = "4")]
    Int(i32),
    #[prost(uint64, tag = "5")]
    SizeT(u64),
    #[prost(float, tag = "6")]
    Float(f32),
    #[prost(double, tag = "7")]
    Double(f64),
    #[prost(string, tag = "8")]
    String(String),
    #[prost(message, tag = "9")]
    Shape(NdShape),
    #[prost(message, tag = "10")]
    Axis(Axis),
    #[prost(message, tag = "11")]
    Vector(Vector),
    #[prost(message, tag = "12")]
    Dictionary(Dictionary),
    #[prost(message, tag = "13")]
    Array(NdArrayView),
}
