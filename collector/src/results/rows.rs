//! `scores.csv`'s rows, a partition at a time: the collector stages each partition's rows as
//! a block of the file when the partition arrives, and commits the blocks behind the header
//! when the job completes.

use std::borrow::Cow;
use std::fmt::Write as _;

use fleet_protocol::job::Plan;
use fleet_protocol::message::{Score, Scored};

/// Header of `scores.csv` up to the confidence of the best class; several batches add a
/// `batch` column first, top-k adds `top2_label,top2_class,top2_confidence,...`, and every
/// file ends with `error`.
pub const SCORES_HEADER: &str =
    "index,filename,true_label,predicted_label,true_class,predicted_class,confidence";

/// The header of a multi-label job up to the confidence of its best class: each image's true
/// classes and the classes over their thresholds (names separated by `;`), with those classes'
/// scores; top-k and `error` follow as for a single-label job.
pub const MULTI_LABEL_HEADER: &str =
    "index,filename,true_tags,predicted_tags,tag_scores,predicted_label,predicted_class,confidence";

/// The header of a job of several models up to its first model's columns: the image and its
/// true class; then each model's columns, prefixed with its name (`resnet50_predicted_label`).
pub const SEVERAL_MODELS_HEADER: &str = "index,filename,true_label,true_class";

/// One model's columns in a job of several, behind its name and `_`; its top-k columns follow.
const MODEL_COLUMNS: [&str; 3] = ["predicted_label", "predicted_class", "confidence"];

/// The header of a job whose model has no classes (an embedding model): its rows say which
/// images were scored, and its vectors are in the Parquet results.
pub const UNCLASSED_HEADER: &str = "index,filename";

/// The header line of the job's `scores.csv`, newline included. Its columns follow from the
/// plan alone, as the rows are written before the job's last partition is known.
pub fn header(plan: &Plan) -> String {
    let mut text = String::new();
    if plan.several_batches {
        text.push_str("batch,");
    }
    if plan.models.len() > 1 && plan.has_classes() {
        text.push_str(SEVERAL_MODELS_HEADER);
        for m in 0..plan.models.len() {
            let prefix = plan.column_prefix(m);
            for column in MODEL_COLUMNS {
                let _ = write!(text, ",{prefix}{column}");
            }
            for k in 2..=plan.columns_top_k() {
                let _ = write!(
                    text,
                    ",{prefix}top{k}_label,{prefix}top{k}_class,{prefix}top{k}_confidence"
                );
            }
        }
        text.push_str(",error\n");
        return text;
    }
    text.push_str(match (plan.has_classes(), &plan.multi_label) {
        (false, _) => UNCLASSED_HEADER,
        (true, None) => SCORES_HEADER,
        (true, Some(_)) => MULTI_LABEL_HEADER,
    });
    for k in 2..=plan.columns_top_k() {
        let _ = write!(text, ",top{k}_label,top{k}_class,top{k}_confidence");
    }
    // Always there: a collection's files may be unreadable, and any model may return NaN.
    text.push_str(",error\n");
    text
}

/// One row per image of the partition, each ending in a newline.
pub fn rows(plan: &Plan, p: &Scored) -> String {
    let classes = &plan.classes;
    let class_name = |class: u32| classes.get(class as usize).map_or("?", String::as_str);
    let top_k = plan.columns_top_k();
    let mut text = String::with_capacity(p.scores.len() * (64 + 32 * top_k));
    for (i, (score, filename)) in p.scores.iter().zip(&p.filenames).enumerate() {
        if plan.several_batches {
            let _ = write!(text, "{},", csv_field(&p.batch));
        }
        let _ = write!(
            text,
            "{},{},",
            p.first_index + i as u64,
            csv_field(filename)
        );
        if !plan.has_classes() {
            let error = row_error(plan, p, i);
            let _ = writeln!(text, "{}", csv_field(error.as_deref().unwrap_or("")));
            continue;
        }
        if plan.models.len() > 1 {
            let (label, _) = label_and_best(score, classes.len());
            let _ = write!(
                text,
                "{},{}",
                label.map(|l| l.to_string()).unwrap_or_default(),
                label
                    .map(|l| csv_field(class_name(l)).into_owned())
                    .unwrap_or_default()
            );
            for scores in p.by_model() {
                let score = &scores[i];
                let (_, best) = label_and_best(score, classes.len());
                let _ = write!(
                    text,
                    ",{},{},{}",
                    best.map(|b| b.0.to_string()).unwrap_or_default(),
                    best.map(|b| csv_field(class_name(b.0)).into_owned())
                        .unwrap_or_default(),
                    best.map(|b| format!("{:.6}", b.1)).unwrap_or_default()
                );
                top_columns(&mut text, score, top_k, &class_name);
            }
            let error = row_error(plan, p, i);
            let _ = writeln!(text, ",{}", csv_field(error.as_deref().unwrap_or("")));
            continue;
        }
        if plan.multi_label.is_some() {
            let names = |tags: &mut dyn Iterator<Item = u32>| {
                tags.map(class_name).collect::<Vec<_>>().join(";")
            };
            let truth = (score.true_tags.iter().flatten().copied()).collect::<Vec<_>>();
            let scores: Vec<String> = score.tags.iter().map(|t| format!("{:.6}", t.1)).collect();
            let _ = write!(
                text,
                "{},{},{},",
                csv_field(&names(&mut truth.into_iter())),
                csv_field(&names(&mut score.tags.iter().map(|t| t.0))),
                scores.join(";")
            );
            let best = score.predicted();
            let _ = write!(
                text,
                "{},{},{}",
                best.map(|b| b.0.to_string()).unwrap_or_default(),
                best.map(|b| csv_field(class_name(b.0)).into_owned())
                    .unwrap_or_default(),
                best.map(|b| format!("{:.6}", b.1)).unwrap_or_default()
            );
            top_columns(&mut text, score, top_k, &class_name);
            let _ = writeln!(text, ",{}", csv_field(score.error.as_deref().unwrap_or("")));
            continue;
        }
        let (label, best) = label_and_best(score, classes.len());
        let cell = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
        let name = |v: Option<u32>| v.map(|v| csv_field(class_name(v)).into_owned());
        let _ = write!(
            text,
            "{},{},{},{},{}",
            cell(label),
            cell(best.map(|b| b.0)),
            name(label).unwrap_or_default(),
            name(best.map(|b| b.0)).unwrap_or_default(),
            best.map(|b| format!("{:.6}", b.1)).unwrap_or_default()
        );
        top_columns(&mut text, score, top_k, &class_name);
        let _ = writeln!(text, ",{}", csv_field(score.error.as_deref().unwrap_or("")));
    }
    text
}

/// The error cell of image `i` of partition `p`: its error, the same for every model (an image
/// that could not be read, a partition not scored); or, where the models differ, each model's
/// that has one, behind its name (`resnet50: the model's output is not a number`).
pub fn row_error(plan: &Plan, p: &Scored, i: usize) -> Option<String> {
    let first = p.scores[i].error.as_deref();
    if p.more
        .iter()
        .all(|scores| scores[i].error.as_deref() == first)
    {
        return first.map(str::to_owned);
    }
    let errors: Vec<String> = (p.by_model().enumerate())
        .filter_map(|(m, scores)| {
            let error = scores[i].error.as_deref()?;
            let name = plan.models.get(m).map_or("?", String::as_str);
            Some(format!("{name}: {error}"))
        })
        .collect();
    Some(errors.join("; "))
}

/// A row's `topN_label,topN_class,topN_confidence` for N from 2 to `top_k`.
fn top_columns<'a>(
    text: &mut String,
    score: &Score,
    top_k: usize,
    class_name: &dyn Fn(u32) -> &'a str,
) {
    for k in 1..top_k {
        match score.top.get(k) {
            Some(&(class, p)) => {
                let name = csv_field(class_name(class));
                let _ = write!(text, ",{class},{name},{p:.6}");
            }
            None => text.push_str(",,,"),
        }
    }
}

/// A score's label and its best class with its confidence, each only when it is one of the
/// job's `classes`. A label beyond the model's classes cannot be compared: the producer and the
/// worker refuse such jobs, so it only shows up as an unlabelled row here.
pub fn label_and_best(score: &Score, classes: usize) -> (Option<u32>, Option<(u32, f32)>) {
    let label = score.label.filter(|&l| (l as usize) < classes);
    let best = score.predicted().filter(|&(c, _)| (c as usize) < classes);
    (label, best)
}

/// A text field of a CSV file: quoted when it needs it (RFC 4180), and a field a spreadsheet
/// would run as a formula (one beginning with `=`, `+`, `-`, `@`, a tab or a carriage return:
/// a file or class named `=HYPERLINK(...)`) made plain text by a leading `'`, as OWASP
/// recommends. Every name and message in the product's CSV files goes through here.
pub fn csv_field(s: &str) -> Cow<'_, str> {
    let s: Cow<'_, str> = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}").into()
    } else {
        s.into()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_with_commas_are_quoted() {
        assert_eq!(csv_field("a,b\"c"), "\"a,b\"\"c\"");
        assert_eq!(csv_field("plain.png"), "plain.png");
    }

    #[test]
    fn csv_fields_a_spreadsheet_would_run_are_plain_text() {
        assert_eq!(
            csv_field("=HYPERLINK(\"http:evil\",\"x\")"),
            "\"'=HYPERLINK(\"\"http:evil\"\",\"\"x\"\")\""
        );
        for formula in ["+1", "-2+3", "@SUM(A1)", "\tx", "\rx"] {
            let field = csv_field(formula);
            assert!(
                field.starts_with('\'') || field.starts_with("\"'"),
                "{formula:?} -> {field}"
            );
        }
        // Only the first character matters.
        assert_eq!(csv_field("cat=dog.png"), "cat=dog.png");
    }
}
