//! The rows as Parquet: one file per partition under `results/<job>/scores.parquet/`, written
//! when the partition is stored. The files share one schema, so pandas, DuckDB, Spark and
//! Polars read the folder as one table.
//!
//! The columns are `scores.csv`'s, typed: `batch` (several batches only), `index` (int64),
//! `filename`, `true_label` and `predicted_label` (int32), `true_class` and `predicted_class`,
//! `confidence` (float), `top<k>_label`, `top<k>_class` and `top<k>_confidence` for k from 2 to
//! the job's top-k, and `error`; a job whose model has no classes has `index`, `filename` and
//! `error` alone. Every column but `index` and `filename` may be null: a cell that is empty in
//! `scores.csv` is null here. Then one column per vector of the job's plan (its embeddings),
//! which `scores.csv` does not have: a list of `dim` floats (float32, or float16 when asked)
//! for each image the model scored, null for the others. Every list of a column has the same
//! length, so DuckDB can cast it to a fixed-size array (`embedding::FLOAT[512]`). Pages are
//! Snappy-compressed.

use std::sync::Arc;

use fleet_protocol::job::{Plan, VectorColumn, VectorPrecision};
use fleet_protocol::message::Scored;
use parquet::basic::{Compression, LogicalType, Repetition, Type as Physical};
use parquet::data_type::{
    ByteArray, ByteArrayType, FixedLenByteArray, FixedLenByteArrayType, FloatType, Int32Type,
    Int64Type,
};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::Type;

use fleet_protocol::message::Score;

use super::rows::{label_and_best, row_error};

/// One column's cells: the values present, and for a nullable column whether each row has one.
enum Cells {
    Long(Vec<i64>),
    Int(Vec<i32>, Vec<i16>),
    Float(Vec<f32>, Vec<i16>),
    Text(Vec<ByteArray>, Vec<i16>, Repetition),
    /// A list of floats per row, or null: the values, and each value's (or null row's)
    /// definition and repetition levels.
    Vector(Values, Vec<i16>, Vec<i16>),
}

/// A list column's values.
enum Values {
    Float32(Vec<f32>),
    Float16(Vec<FixedLenByteArray>),
    Text(Vec<ByteArray>),
}

/// The definition and repetition levels of list cells, and their values, as they are added.
#[derive(Default)]
struct Lists {
    defined: Vec<i16>,
    repeated: Vec<i16>,
}

impl Lists {
    /// A null cell.
    fn null(&mut self) {
        self.defined.push(0);
        self.repeated.push(0);
    }

    /// A cell of `len` values (an empty list when 0).
    fn list(&mut self, len: usize) {
        if len == 0 {
            self.defined.push(1);
            self.repeated.push(0);
        }
        for v in 0..len {
            self.defined.push(2);
            self.repeated.push(i16::from(v > 0));
        }
    }
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

    /// One row's vector for each image of `p` that has one, else null, from the partition's
    /// vectors blob `blob` (the `at`-th column of the plan's, `column`).
    fn vectors(p: &Scored, blob: Option<&[u8]>, plan: &Plan, at: usize) -> Self {
        let column = &plan.vectors[at];
        let stride = plan.vector_bytes();
        let offset: usize = plan.vectors[..at].iter().map(VectorColumn::bytes).sum();
        let mut lists = Lists::default();
        let mut f32s = Vec::new();
        let mut f16s = Vec::new();
        // The column's model scored the image, or not.
        let scores = p
            .by_model()
            .nth(usize::from(column.model))
            .unwrap_or(&p.scores);
        for (i, score) in scores.iter().enumerate() {
            let Some(blob) = blob.filter(|_| score.scored) else {
                lists.null();
                continue;
            };
            let bytes = &blob[i * stride + offset..][..column.bytes()];
            lists.list(column.dim as usize);
            match column.precision {
                VectorPrecision::Float32 => f32s.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                VectorPrecision::Float16 => f16s.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| FixedLenByteArray::from(b.to_vec())),
                ),
            }
        }
        let values = match column.precision {
            VectorPrecision::Float32 => Values::Float32(f32s),
            VectorPrecision::Float16 => Values::Float16(f16s),
        };
        Cells::Vector(values, lists.defined, lists.repeated)
    }

    /// A list of class names per row, or null.
    fn names<'a>(cells: impl Iterator<Item = Option<Vec<&'a str>>>) -> Self {
        let (mut lists, mut values) = (Lists::default(), Vec::new());
        for cell in cells {
            match cell {
                Some(names) => {
                    lists.list(names.len());
                    values.extend(names.into_iter().map(ByteArray::from));
                }
                None => lists.null(),
            }
        }
        Cells::Vector(Values::Text(values), lists.defined, lists.repeated)
    }

    /// A list of floats per row (never null).
    fn float_lists(cells: impl Iterator<Item = Vec<f32>>) -> Self {
        let (mut lists, mut values) = (Lists::default(), Vec::new());
        for cell in cells {
            lists.list(cell.len());
            values.extend(cell);
        }
        Cells::Vector(Values::Float32(values), lists.defined, lists.repeated)
    }

    fn field(&self, name: &str) -> Result<Arc<Type>, ParquetError> {
        if let Cells::Vector(values, ..) = self {
            // The LIST layout of the Parquet format: an optional group of a repeated group of
            // one required element.
            let element = match values {
                Values::Float32(_) => Type::primitive_type_builder("element", Physical::FLOAT),
                Values::Float16(_) => {
                    Type::primitive_type_builder("element", Physical::FIXED_LEN_BYTE_ARRAY)
                        .with_length(2)
                        .with_logical_type(Some(LogicalType::Float16))
                }
                Values::Text(_) => Type::primitive_type_builder("element", Physical::BYTE_ARRAY)
                    .with_logical_type(Some(LogicalType::String)),
            }
            .with_repetition(Repetition::REQUIRED)
            .build()?;
            let list = Type::group_type_builder("list")
                .with_repetition(Repetition::REPEATED)
                .with_fields(vec![Arc::new(element)])
                .build()?;
            return Ok(Arc::new(
                Type::group_type_builder(name)
                    .with_repetition(Repetition::OPTIONAL)
                    .with_logical_type(Some(LogicalType::List))
                    .with_fields(vec![Arc::new(list)])
                    .build()?,
            ));
        }
        let (physical, repetition, logical) = match self {
            Cells::Long(_) => (Physical::INT64, Repetition::REQUIRED, None),
            Cells::Int(..) => (Physical::INT32, Repetition::OPTIONAL, None),
            Cells::Float(..) => (Physical::FLOAT, Repetition::OPTIONAL, None),
            Cells::Text(_, _, repetition) => {
                (Physical::BYTE_ARRAY, *repetition, Some(LogicalType::String))
            }
            Cells::Vector(..) => unreachable!("a group, built above"),
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

/// Partition `p`'s rows as a Parquet file, with its vectors from the blob `vectors` (the
/// partition's vectors blob, when its plan has vectors and the worker wrote them).
pub fn part(plan: &Plan, p: &Scored, vectors: Option<&[u8]>) -> Result<Vec<u8>, ParquetError> {
    let columns = columns(plan, p, vectors);
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
            Cells::Vector(Values::Float32(values), defined, repeated) => {
                column
                    .typed::<FloatType>()
                    .write_batch(values, Some(defined), Some(repeated))?;
            }
            Cells::Vector(Values::Float16(values), defined, repeated) => {
                column.typed::<FixedLenByteArrayType>().write_batch(
                    values,
                    Some(defined),
                    Some(repeated),
                )?;
            }
            Cells::Vector(Values::Text(values), defined, repeated) => {
                column.typed::<ByteArrayType>().write_batch(
                    values,
                    Some(defined),
                    Some(repeated),
                )?;
            }
        }
        column.close()?;
    }
    group.close()?;
    writer.into_inner()
}

/// The partition's columns, named, in `scores.csv`'s order, then its vectors.
fn columns(plan: &Plan, p: &Scored, vectors: Option<&[u8]>) -> Vec<(String, Cells)> {
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
    if plan.has_classes() && plan.models.len() > 1 {
        several(plan, p, &mut columns);
    } else if plan.has_classes() {
        if plan.multi_label.is_some() {
            tags(plan, p, &mut columns);
        }
        predictions(plan, p, &mut columns);
    }
    let errors: Vec<Option<String>> = (0..p.scores.len()).map(|i| row_error(plan, p, i)).collect();
    columns.push((
        "error".into(),
        Cells::texts(errors.iter().map(Option::as_deref)),
    ));
    for (at, column) in plan.vectors.iter().enumerate() {
        columns.push((column.name.clone(), Cells::vectors(p, vectors, plan, at)));
    }
    columns
}

/// A multi-label job's tag columns: each image's true classes (null when it has no label) and
/// the classes over their thresholds, by name, with their scores.
fn tags(plan: &Plan, p: &Scored, columns: &mut Vec<(String, Cells)>) {
    let name = |class: u32| plan.classes.get(class as usize).map_or("?", String::as_str);
    columns.push((
        "true_tags".into(),
        Cells::names(
            p.scores
                .iter()
                .map(|s| (s.true_tags.as_ref()).map(|t| t.iter().map(|&c| name(c)).collect())),
        ),
    ));
    columns.push((
        "predicted_tags".into(),
        Cells::names(
            p.scores
                .iter()
                .map(|s| Some(s.tags.iter().map(|&(c, _)| name(c)).collect())),
        ),
    ));
    columns.push((
        "tag_scores".into(),
        Cells::float_lists(
            p.scores
                .iter()
                .map(|s| s.tags.iter().map(|t| t.1).collect()),
        ),
    ));
}

/// The columns of a job of several models, in `scores.csv`'s order: the true label, then each
/// model's predictions, prefixed with its name.
fn several(plan: &Plan, p: &Scored, columns: &mut Vec<(String, Cells)>) {
    let classes = &plan.classes;
    let class_name = |class: u32| classes.get(class as usize).map(String::as_str);
    let labels: Vec<Option<u32>> = (p.scores.iter())
        .map(|s| label_and_best(s, classes.len()).0)
        .collect();
    columns.push(("true_label".into(), Cells::ints(labels.iter().copied())));
    columns.push((
        "true_class".into(),
        Cells::texts(labels.iter().map(|l| l.and_then(class_name))),
    ));
    for (m, scores) in p.by_model().enumerate() {
        let prefix = plan.column_prefix(m);
        top_columns(&prefix, scores, plan, 0..plan.columns_top_k(), columns);
    }
}

/// The `label`, `class` and `confidence` columns of each rank in `ranks` (from 0, the best:
/// `predicted_label`, ...; then `top2_label`, ...), behind `prefix`.
fn top_columns(
    prefix: &str,
    scores: &[Score],
    plan: &Plan,
    ranks: std::ops::Range<usize>,
    columns: &mut Vec<(String, Cells)>,
) {
    let classes = &plan.classes;
    let class_name = |class: u32| classes.get(class as usize).map(String::as_str);
    for k in ranks {
        let kth = || {
            scores.iter().map(move |s| {
                (s.top.get(k).copied()).filter(|&(c, _)| (c as usize) < classes.len())
            })
        };
        let (label, class, confidence) = match k {
            0 => (
                "predicted_label".to_owned(),
                "predicted_class".to_owned(),
                "confidence".to_owned(),
            ),
            k => (
                format!("top{}_label", k + 1),
                format!("top{}_class", k + 1),
                format!("top{}_confidence", k + 1),
            ),
        };
        columns.push((
            format!("{prefix}{label}"),
            Cells::ints(kth().map(|t| t.map(|t| t.0))),
        ));
        columns.push((
            format!("{prefix}{class}"),
            Cells::texts(kth().map(|t| t.and_then(|t| class_name(t.0)))),
        ));
        columns.push((
            format!("{prefix}{confidence}"),
            Cells::floats(kth().map(|t| t.map(|t| t.1))),
        ));
    }
}

/// The columns of a classifier's labels and predictions, in `scores.csv`'s order (a
/// multi-label job has no single true label: its tags come before).
fn predictions(plan: &Plan, p: &Scored, columns: &mut Vec<(String, Cells)>) {
    let classes = &plan.classes;
    let class_name = |class: u32| classes.get(class as usize).map(String::as_str);
    let judged: Vec<_> = p
        .scores
        .iter()
        .map(|s| label_and_best(s, classes.len()))
        .collect();
    let labels = || judged.iter().map(|j| j.0);
    let best = || judged.iter().map(|j| j.1);
    let single = plan.multi_label.is_none();
    if single {
        columns.push(("true_label".into(), Cells::ints(labels())));
    }
    columns.push((
        "predicted_label".into(),
        Cells::ints(best().map(|b| b.map(|b| b.0))),
    ));
    if single {
        columns.push((
            "true_class".into(),
            Cells::texts(labels().map(|l| l.and_then(class_name))),
        ));
    }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::{Field, ListAccessor};

    #[test]
    fn vectors_are_lists_of_their_precision_and_null_where_an_image_was_not_scored() {
        let column = |name: &str, dim, precision| VectorColumn {
            name: name.into(),
            dim,
            precision,
            normalized: false,
            model: 0,
        };
        let plan = Plan {
            models: Vec::new(),
            job: "j".into(),
            classes: Vec::new(),
            top_k: 1,
            several_batches: false,
            max_failed_partitions: 0,
            vectors: vec![
                column("wide", 3, VectorPrecision::Float32),
                column("half", 2, VectorPrecision::Float16),
            ],
            multi_label: None,
        };
        let score = |scored: bool| Score {
            label: None,
            top: Vec::new(),
            error: (!scored).then(|| "not an image".to_owned()),
            scored,
            tags: Vec::new(),
            true_tags: None,
        };
        let scored = Scored {
            container: "ctr".into(),
            more: Vec::new(),
            model_ms: Vec::new(),
            job: "j".into(),
            partition: 0,
            batch: "b/".into(),
            first_index: 0,
            filenames: vec!["a.png".into(), "b.png".into()],
            scores: vec![score(true), score(false)],
            worker: "w".into(),
            inference_ms: 1.0,
            preprocess_ms: 1.0,
            published_at_ms: 0,
            started_at_ms: 0,
            finished_at_ms: 0,
            provider: "CPU".into(),
            decoder: String::new(),
            thumbnails: Vec::new(),
            failed: None,
            vectors: true,
        };
        // Image by image: three float32 values, then two float16 ones.
        let mut blob = Vec::new();
        for image in 0..2 {
            for v in [1.5f32, -2.0, 3.25] {
                blob.extend((v + image as f32).to_le_bytes());
            }
            for v in [0.5f32, 4.0] {
                blob.extend(half::f16::from_f32(v).to_le_bytes());
            }
        }
        assert_eq!(blob.len(), 2 * plan.vector_bytes());
        let file = part(&plan, &scored, Some(&blob)).unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(file)).unwrap();
        let rows: Vec<_> = reader
            .get_row_iter(None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let names: Vec<&str> = rows[0]
            .get_column_iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(names, ["index", "filename", "error", "wide", "half"]);
        let cells: Vec<&Field> = rows[0].get_column_iter().map(|(_, f)| f).collect();
        let Field::ListInternal(wide) = cells[3] else {
            panic!("{:?}", cells[3])
        };
        let wide: Vec<f32> = (0..wide.len())
            .map(|i| wide.get_float(i).unwrap())
            .collect();
        assert_eq!(wide, [1.5, -2.0, 3.25]);
        let Field::ListInternal(narrow) = cells[4] else {
            panic!("{:?}", cells[4])
        };
        let narrow: Vec<Field> = narrow.elements().to_vec();
        assert_eq!(
            narrow,
            [
                Field::Float16(half::f16::from_f32(0.5)),
                Field::Float16(half::f16::from_f32(4.0))
            ]
        );
        // The unreadable image has no vectors.
        let cells: Vec<&Field> = rows[1].get_column_iter().map(|(_, f)| f).collect();
        assert_eq!((cells[3], cells[4]), (&Field::Null, &Field::Null));
    }
}
