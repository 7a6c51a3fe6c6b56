//! The rows as Parquet: one file per partition under `results/<job>/scores.parquet/`, written
//! when the partition is stored. The files share one schema, so pandas, DuckDB, Spark and
//! Polars read the folder as one table.
//!
//! The columns are `scores.csv`'s, typed: `batch` (several batches only), `index` (int64),
//! `filename`, `true_label` and `predicted_label` (int32), `true_class` and `predicted_class`,
//! `confidence` (float), `top<k>_label`, `top<k>_class` and `top<k>_confidence` for k from 2 to
//! the job's top-k, and `error`. Every column but `index` and `filename` may be null: a cell
//! that is empty in `scores.csv` is null here. Pages are Snappy-compressed.

use std::sync::Arc;

use fleet_protocol::job::Plan;
use fleet_protocol::message::Scored;
use parquet::basic::{Compression, LogicalType, Repetition, Type as Physical};
use parquet::data_type::{ByteArray, ByteArrayType, FloatType, Int32Type, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

use super::rows::label_and_best;

/// One column's cells: the values present, and for a nullable column whether each row has one.
enum Cells {
    Long(Vec<i64>),
    Int(Vec<i32>, Vec<i16>),
    Float(Vec<f32>, Vec<i16>),
    Text(Vec<ByteArray>, Vec<i16>, Repetition),
}

impl Cells {
    fn ints(values: impl Iterator<Item = Option<u32>>) -> Self {
        let (values, defined) = nullable(values.map(|v| v.map(|v| v as i32)));
        Cells::Int(values, defined)
    }

    fn floats(values: impl Iterator<Item = Option<f32>>) -> Self {
        let (values, defined) = nullable(values);
        Cells::Float(values, defined)
    }

    fn texts<'a>(values: impl Iterator<Item = Option<&'a str>>) -> Self {
        let (values, defined) = nullable(values.map(|v| v.map(ByteArray::from)));
        Cells::Text(values, defined, Repetition::OPTIONAL)
    }

    fn field(&self, name: &str) -> Result<Arc<Type>, ParquetError> {
        let (physical, repetition, logical) = match self {
            Cells::Long(_) => (Physical::INT64, Repetition::REQUIRED, None),
            Cells::Int(..) => (Physical::INT32, Repetition::OPTIONAL, None),
            Cells::Float(..) => (Physical::FLOAT, Repetition::OPTIONAL, None),
            Cells::Text(_, _, repetition) => {
                (Physical::BYTE_ARRAY, *repetition, Some(LogicalType::String))
            }
        };
        Ok(Arc::new(
            Type::primitive_type_builder(name, physical)
                .with_repetition(repetition)
                .with_logical_type(logical)
                .build()?,
        ))
    }
}

/// The values present and the definition level of each row (1: a value, 0: null).
fn nullable<T>(cells: impl Iterator<Item = Option<T>>) -> (Vec<T>, Vec<i16>) {
    let mut values = Vec::new();
    let mut defined = Vec::new();
    for cell in cells {
        defined.push(i16::from(cell.is_some()));
        values.extend(cell);
    }
    (values, defined)
}

/// Partition `p`'s rows as a Parquet file.
pub fn part(plan: &Plan, p: &Scored) -> Result<Vec<u8>, ParquetError> {
    let columns = columns(plan, p);
    let fields = columns
        .iter()
        .map(|(name, cells)| cells.field(name))
        .collect::<Result<Vec<_>, _>>()?;
    let schema = Arc::new(
        Type::group_type_builder("scores")
            .with_fields(fields)
            .build()?,
    );
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = SerializedFileWriter::new(Vec::new(), schema, Arc::new(properties))?;
    let mut group = writer.next_row_group()?;
    for (name, cells) in &columns {
        let Some(mut column) = group.next_column()? else {
            return Err(ParquetError::General(format!(
                "no column {name} in the schema"
            )));
        };
        match cells {
            Cells::Long(values) => {
                column
                    .typed::<Int64Type>()
                    .write_batch(values, None, None)?;
            }
            Cells::Int(values, defined) => {
                column
                    .typed::<Int32Type>()
                    .write_batch(values, Some(defined), None)?;
            }
            Cells::Float(values, defined) => {
                column
                    .typed::<FloatType>()
                    .write_batch(values, Some(defined), None)?;
            }
            Cells::Text(values, defined, repetition) => {
                let defined = (*repetition == Repetition::OPTIONAL).then_some(&defined[..]);
                column
                    .typed::<ByteArrayType>()
                    .write_batch(values, defined, None)?;
            }
        }
        column.close()?;
    }
    group.close()?;
    writer.into_inner()
}

/// The partition's columns, named, in `scores.csv`'s order.
fn columns(plan: &Plan, p: &Scored) -> Vec<(String, Cells)> {
    let classes = &plan.classes;
    let class_name = |class: u32| classes.get(class as usize).map(String::as_str);
    let judged: Vec<_> = p
        .scores
        .iter()
        .map(|s| label_and_best(s, classes.len()))
        .collect();
    let labels = || judged.iter().map(|j| j.0);
    let best = || judged.iter().map(|j| j.1);
    let mut columns = Vec::new();
    if plan.several_batches {
        let batches = p.scores.iter().map(|_| ByteArray::from(p.batch.as_str()));
        let batches = batches.collect();
        columns.push((
            "batch".to_owned(),
            Cells::Text(batches, Vec::new(), Repetition::REQUIRED),
        ));
    }
    let indices = (0..p.scores.len()).map(|i| (p.first_index + i as u64) as i64);
    columns.push(("index".into(), Cells::Long(indices.collect())));
    let names = p.filenames.iter().map(|f| ByteArray::from(f.as_str()));
    columns.push((
        "filename".into(),
        Cells::Text(names.collect(), Vec::new(), Repetition::REQUIRED),
    ));
    columns.push(("true_label".into(), Cells::ints(labels())));
    columns.push((
        "predicted_label".into(),
        Cells::ints(best().map(|b| b.map(|b| b.0))),
    ));
    columns.push((
        "true_class".into(),
        Cells::texts(labels().map(|l| l.and_then(class_name))),
    ));
    columns.push((
        "predicted_class".into(),
        Cells::texts(best().map(|b| b.and_then(|b| class_name(b.0)))),
    ));
    columns.push((
        "confidence".into(),
        Cells::floats(best().map(|b| b.map(|b| b.1))),
    ));
    for k in 1..plan.columns_top_k() {
        let kth = || p.scores.iter().map(move |s| s.top.get(k).copied());
        let rank = k + 1;
        columns.push((
            format!("top{rank}_label"),
            Cells::ints(kth().map(|t| t.map(|t| t.0))),
        ));
        columns.push((
            format!("top{rank}_class"),
            Cells::texts(kth().map(|t| t.and_then(|t| class_name(t.0)))),
        ));
        columns.push((
            format!("top{rank}_confidence"),
            Cells::floats(kth().map(|t| t.map(|t| t.1))),
        ));
    }
    columns.push((
        "error".into(),
        Cells::texts(p.scores.iter().map(|s| s.error.as_deref())),
    ));
    columns
}
