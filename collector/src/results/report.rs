//! `report.html`: a finished job to look at in a browser.
//!
//! One self-contained file (images inline as data URIs, styles inline, no scripts, no fonts to
//! fetch), so it opens from a blob URL or a local disk alike. It reads the job as the
//! walkthrough does: the accuracy line, a sample of images, the confusion matrix and, in words,
//! which classes the model mixes up; then the most confident mistakes, and the images that
//! could not be read. A job without labels shows the class distribution and the least confident
//! predictions instead.
//!
//! The collector never sees pixels: the thumbnails come with each partition's results, picked
//! by the worker as `fleet_protocol::gallery` says.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;

use super::gallery::{Pictured, UNREADABLE_LISTED};
use super::{Confusion, Tally};
use fleet_protocol::job::{DatasetKind, Manifest};
use fleet_protocol::summary::{ConfusedPair, Summary};
use fleet_spec::Provenance;

/// Confused class pairs read out in words.
const PAIRS_IN_WORDS: usize = 3;

/// Everything the report shows.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// The job's summary.
    pub summary: &'a Summary,
    /// The job's running counts: its galleries, providers and confusion matrix.
    pub tally: &'a Tally,
    /// The job's manifest (dataset, labels, model), when it could be read.
    pub manifest: Option<&'a Manifest>,
    /// Where the model came from, from its spec, when the spec still describes the model the
    /// job scored.
    pub provenance: Option<&'a Provenance>,
    /// `confusion.png`, when drawn.
    pub confusion_png: Option<&'a [u8]>,
}

impl Report<'_> {
    /// The confusion matrix of a labelled job.
    fn confusion(&self) -> Option<&Confusion> {
        self.summary
            .accuracy
            .is_some()
            .then_some(&self.tally.confusion)
    }
}

/// The page.
pub fn render(report: &Report<'_>) -> String {
    let summary = report.summary;
    let mut html = String::with_capacity(256 << 10);
    let title = format!("Job {}", summary.job);
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    let _ = writeln!(
        html,
        "<p class=\"accuracy\" id=\"accuracy\">{}</p>",
        escape(&summary.accuracy_line())
    );
    for warning in &summary.warnings {
        let _ = writeln!(
            html,
            "<p class=\"partial\" id=\"warning\">Warning: {}</p>",
            escape(warning)
        );
    }
    if let Some(partial) = &summary.partial {
        let _ = writeln!(
            html,
            "<p class=\"partial\" id=\"partial\">Partial: {} images in {} partitions that \
             could not be scored ({}); their rows in <code>scores.csv</code> carry the reason.</p>",
            partial.images,
            partial.failed_partitions,
            escape(&partial.reasons.join("; "))
        );
    }
    if let Some(incremental) = summary.incremental.as_ref().filter(|i| !i.since.is_empty()) {
        let _ = writeln!(
            html,
            "<p class=\"partial\" id=\"incremental\">Incremental: this job scored the {} \
             images new or changed since job {}; the rows of the {} unchanged images are in \
             {}.</p>",
            summary.images,
            escape(&incremental.since.join(", ")),
            incremental.unchanged,
            if incremental.since.len() == 1 {
                "that job's results"
            } else {
                "those jobs' results (the newest row of an image is its own)"
            }
        );
    }
    job_section(&mut html, report);
    timings_section(&mut html, summary);
    if summary.models.len() > 1 {
        models_section(&mut html, report);
    }
    let samples = &report.tally.gallery.samples;
    if !samples.is_empty() {
        html.push_str(if summary.classes.is_empty() {
            "<h2>Sample</h2>\n<p>The first images of the job.</p>\n"
        } else {
            "<h2>Sample</h2>\n<p>The first images of the job: true class (where known), then the class the model gave.</p>\n"
        });
        gallery(&mut html, "samples", samples, report);
    }
    if summary.accuracy.is_some() {
        per_class_section(&mut html, summary);
        confusion_section(&mut html, report);
        mistakes_section(&mut html, report);
    }
    if let Some(multi) = &summary.multi_label {
        multi_label_section(&mut html, multi);
    }
    if summary.scored > summary.labelled && !summary.classes.is_empty() {
        distribution_section(&mut html, summary);
        low_confidence_section(&mut html, report);
    }
    embeddings_section(&mut html, report);
    unreadable_section(&mut html, report);
    html.push_str("</body></html>\n");
    html
}

/// Disagreements of a pair of models read out in words.
const DISAGREEMENTS_IN_WORDS: usize = 5;

/// A job of several models: each model's accuracy with its interval and time, every pair
/// compared (agreement, McNemar's test, what they disagree on), and the images they disagree on
/// while most sure. The rest of the report is the first model's.
fn models_section(html: &mut String, report: &Report<'_>) {
    let summary = report.summary;
    html.push_str(
        "<h2 id=\"models\">Models</h2>\n<p>Each image was read once and scored by every model, \
         each preparing it by its own spec. The sections after this one are the first \
         model's.</p>\n<table id=\"model-table\"><tr><th>model</th><th>accuracy (95% \
         interval)</th><th>scored</th><th>not scored</th><th>model time</th></tr>\n",
    );
    for m in &summary.models {
        let accuracy = match (m.accuracy, m.accuracy_interval) {
            (Some(a), Some([low, high])) => format!(
                "{:.2}% ({:.2}% to {:.2}%) of {}",
                100.0 * a,
                100.0 * low,
                100.0 * high,
                m.labelled
            ),
            (Some(a), None) => format!("{:.2}%", 100.0 * a),
            _ => "no labels".to_owned(),
        };
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{accuracy}</td><td>{}</td><td>{}</td><td>{:.1} s</td></tr>",
            escape(&m.model),
            m.scored,
            m.unreadable,
            m.inference_seconds
        );
    }
    html.push_str("</table>\n");
    for c in &summary.comparisons {
        let (a, b) = (escape(&c.a), escape(&c.b));
        let _ = write!(
            html,
            "<h3>{a} and {b}</h3>\n<p>They give the same class to {} of the {} images both \
             scored ({:.2}%)",
            c.agree,
            c.images,
            100.0 * c.agreement
        );
        if let Some(overlap) = c.top_k_overlap {
            let _ = write!(
                html,
                "; their top-k classes overlap by {:.1}% on average",
                100.0 * overlap
            );
        }
        html.push_str(".</p>\n");
        if let Some(p) = c.mcnemar_p_value {
            let verdict = if p < 0.05 {
                let better = if c.only_a_right > c.only_b_right {
                    &a
                } else {
                    &b
                };
                format!(
                    "a difference this large would be unlikely if the two were equally accurate \
                     (p &lt; 0.05): {better} is the more accurate on images like these"
                )
            } else {
                "a difference this small could be chance (p ≥ 0.05): these images do not show \
                 either model to be the more accurate"
                    .to_owned()
            };
            let _ = writeln!(
                html,
                "<p class=\"mcnemar\">Of the {} labelled images both scored, only {a} is right \
                 on {}, only {b} on {}. McNemar's exact test: p = {p:.4}; {verdict}.</p>",
                c.labelled, c.only_a_right, c.only_b_right
            );
        }
        if !c.most_disagreed.is_empty() {
            html.push_str("<ul>");
            for d in c.most_disagreed.iter().take(DISAGREEMENTS_IN_WORDS) {
                let _ = write!(
                    html,
                    "<li>{a} says <b>{}</b> where {b} says <b>{}</b>: {} image{}</li>",
                    escape(&d.a_class),
                    escape(&d.b_class),
                    d.images,
                    if d.images == 1 { "" } else { "s" }
                );
            }
            html.push_str("</ul>\n");
        }
    }
    let shown = &report.tally.gallery.disagreements;
    if shown.is_empty() {
        return;
    }
    html.push_str(
        "<h3>Confident disagreements</h3>\n<p>Images the models give different classes while \
         each is at its most sure: true class (where known), then each model's class.</p>\n\
         <div class=\"gallery\" id=\"disagreements\">\n",
    );
    let classes = &summary.classes;
    let class = |c: u32| classes.get(c as usize).map_or("?", String::as_str);
    for picture in shown {
        let mut lines = Vec::new();
        if let Some(label) = picture.score.label {
            lines.push(format!(
                "<span class=\"truth\">{}</span>",
                escape(class(label))
            ));
        }
        let scores = std::iter::once(&picture.score).chain(&picture.more);
        for (model, score) in summary.models.iter().zip(scores) {
            let Some((c, p)) = score.predicted() else {
                continue;
            };
            let right = match score.label {
                Some(label) if label == c => " class=\"right\"",
                Some(_) => " class=\"wrong\"",
                None => "",
            };
            lines.push(format!(
                "{}: <span{right}>{} ({:.1}%)</span>",
                escape(&model.model),
                escape(class(c)),
                100.0 * p
            ));
        }
        let caption = lines.join("<br>");
        let _ = writeln!(
            html,
            "<figure><img alt=\"{name}\" title=\"{name}\" src=\"{}\"><figcaption>{caption}<br>\
             <span class=\"name\">{name}</span></figcaption></figure>",
            data_uri(&picture.png),
            name = escape(&picture.name),
        );
    }
    html.push_str("</div>\n");
}

/// Rows of the per-class table of a multi-label job.
const MULTI_LABEL_ROWS: usize = 50;

/// A multi-label job's measures: per class, worst average precision first.
fn multi_label_section(html: &mut String, multi: &fleet_protocol::summary::MultiLabel) {
    let value = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    let thresholds = match multi.thresholds.as_slice() {
        [one] => format!("the threshold {one}"),
        _ => "each class's threshold".to_owned(),
    };
    let _ = writeln!(
        html,
        "<h2 id=\"tags\">Tags</h2>\n<p>Each image is given every class whose score reaches \
         {thresholds}. Over the {} labelled images: mean average precision (mAP) {}, and over \
         all classes precision {}, recall {}, F1 {}. Average precision ranks the images by each \
         class's score ({}); precision, recall and F1 are at the threshold.</p>",
        multi.labelled,
        value(multi.mean_average_precision),
        value(multi.micro_precision),
        value(multi.micro_recall),
        value(multi.micro_f1),
        escape(&multi.average_precision_over)
    );
    let mut rows: Vec<&fleet_protocol::summary::ClassMetrics> = multi.per_class.iter().collect();
    rows.sort_by(|a, b| {
        (a.average_precision.unwrap_or(f64::INFINITY))
            .total_cmp(&b.average_precision.unwrap_or(f64::INFINITY))
            .then(a.class.cmp(&b.class))
    });
    html.push_str(
        "<table id=\"per-tag\"><tr><th>class</th><th>images with it</th><th>given it</th>\
         <th>right</th><th>precision</th><th>recall</th><th>F1</th><th>AP</th></tr>\n",
    );
    for m in rows.iter().take(MULTI_LABEL_ROWS) {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td></tr>",
            escape(&m.class),
            m.positives,
            m.predicted,
            m.hits,
            value(m.precision),
            value(m.recall),
            value(m.f1),
            value(m.average_precision)
        );
    }
    html.push_str("</table>\n");
    if rows.len() > MULTI_LABEL_ROWS {
        let _ = writeln!(
            html,
            "<p>{} more classes in <code>summary.json</code>.</p>",
            rows.len() - MULTI_LABEL_ROWS
        );
    }
}

/// The job's vectors: what they are, and a picture of a sample of them.
fn embeddings_section(html: &mut String, report: &Report<'_>) {
    let summary = report.summary;
    if summary.embeddings.is_empty() {
        return;
    }
    html.push_str("<h2 id=\"embeddings\">Embeddings</h2>\n<ul>");
    for embeddings in &summary.embeddings {
        let column = &embeddings.column;
        let _ = write!(
            html,
            "<li>column <code>{}</code> of <code>scores.parquet</code>: a vector of {} values \
             ({}{}) for each of {} images</li>",
            escape(&column.name),
            column.dim,
            column.precision.name(),
            if column.normalized {
                ", scaled to length 1"
            } else {
                ""
            },
            embeddings.images
        );
    }
    html.push_str("</ul>\n");
    let Some(projection) = report.tally.projection.as_ref().filter(|p| p.len() > 2) else {
        return;
    };
    let coloured = if summary.accuracy.is_some() {
        "Colours are their true classes"
    } else if summary.classes.is_empty() {
        "The model has no classes: the points are of one colour"
    } else {
        "Colours are the classes the model gave them"
    };
    let _ = writeln!(
        html,
        "<p>{} of the images placed by their <code>{}</code> vectors along the two directions \
         in which the vectors vary most (principal components): images near each other have \
         similar vectors. {coloured}; some points are drawn as their image.</p>",
        projection.len(),
        escape(projection.column())
    );
    html.push_str(&super::projection::svg(
        &projection.project(),
        &summary.classes,
        data_uri,
    ));
    html.push('\n');
}

fn job_section(html: &mut String, report: &Report<'_>) {
    let summary = report.summary;
    html.push_str("<h2>Job</h2>\n<table class=\"facts\">\n");
    let mut row = |what: &str, value: String| {
        let _ = writeln!(
            html,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(what),
            escape(&value)
        );
    };
    if let Some(manifest) = report.manifest {
        let kind = match manifest.dataset_kind {
            DatasetKind::Tarball => "CIFAR-10 tarball",
            DatasetKind::Images => "image files under a prefix",
        };
        row("dataset", format!("{} ({kind})", manifest.dataset));
        row("true labels", manifest.labels.clone());
        row("model", manifest.model.clone());
        row("model sha256 (ONNX)", manifest.model_sha256.clone());
        for other in &manifest.more_models {
            row(
                "compared with",
                format!("{} (sha256 {})", other.name, other.sha256),
            );
        }
    }
    match report.provenance {
        Some(p) => {
            row("model source", format!("{} ({})", p.source, p.format));
            row("source sha256", p.source_sha256.clone());
        }
        None => row(
            "model source",
            "not known: the model's spec is gone or now describes another model".into(),
        ),
    }
    row(
        "execution provider",
        report.tally.providers().collect::<Vec<_>>().join(", "),
    );
    if !summary.decoders.is_empty() {
        row("JPEG decoder", summary.decoders.join(", "));
    }
    row("images", summary.images.to_string());
    row("scored", summary.scored.to_string());
    row("could not be scored", summary.unreadable.to_string());
    if summary.accuracy.is_some() {
        row("with a true label", summary.labelled.to_string());
        row("correct", summary.correct.to_string());
    }
    row("classes", summary.classes.len().to_string());
    row("partitions", summary.partitions.to_string());
    row(
        "workers",
        summary
            .workers
            .iter()
            .map(|(worker, images)| format!("{worker} ({images} images)"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    html.push_str("</table>\n");
}

fn timings_section(html: &mut String, summary: &Summary) {
    let t = &summary.timings;
    html.push_str("<h2>Timings</h2>\n<table class=\"facts\">\n");
    let mut row = |what: &str, seconds: f64, note: &str| {
        let _ = writeln!(
            html,
            "<tr><th>{}</th><td>{seconds:.2} s</td><td class=\"note\">{}</td></tr>",
            escape(what),
            escape(note)
        );
    };
    row(
        "submitting",
        t.staging_seconds,
        "the producer listing or decoding the dataset and publishing partitions",
    );
    row(
        "queueing",
        t.queueing_seconds,
        "mean wait of a partition between publishing and a worker taking it",
    );
    row(
        "scoring",
        t.scoring_seconds,
        "first partition taken to last partition scored",
    );
    row("model calls", t.inference_seconds, "summed over workers");
    row(
        "reading images",
        t.preprocess_seconds,
        "fetching, decoding and preparing, summed over workers",
    );
    row(
        "writing",
        t.writing_seconds,
        "the collector writing scores.csv and the other result files",
    );
    row(
        "end to end",
        t.wall_seconds,
        "submission to the last result in",
    );
    html.push_str("</table>\n");
    let _ = writeln!(
        html,
        "<p>{:.0} images/s end to end.</p>",
        t.images_per_second
    );
}

fn per_class_section(html: &mut String, summary: &Summary) {
    html.push_str(
        "<h2>Accuracy by class</h2>\n<table class=\"bars\" id=\"per-class\">\n\
         <tr><th>class</th><th>images</th><th>correct</th><th>accuracy</th><th></th></tr>\n",
    );
    // Classes without images say nothing of accuracy: a 1,000-class model over a few hundred
    // images would list hundreds of empty rows.
    let mut empty = 0;
    for class in &summary.per_class {
        if class.images == 0 {
            empty += 1;
            continue;
        }
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td>\
             <td><span class=\"bar\" style=\"width:{:.1}px\"></span></td></tr>",
            escape(&class.class),
            class.images,
            class.correct,
            100.0 * class.accuracy,
            200.0 * class.accuracy
        );
    }
    html.push_str("</table>\n");
    if empty > 0 {
        let _ = writeln!(
            html,
            "<p>{empty} other class{} had no labelled images.</p>",
            if empty == 1 { "" } else { "es" }
        );
    }
}

fn confusion_section(html: &mut String, report: &Report<'_>) {
    let summary = report.summary;
    html.push_str("<h2>Confusion</h2>\n");
    if let Some(png) = report.confusion_png {
        let _ = writeln!(
            html,
            "<p><img class=\"heat\" alt=\"confusion matrix: true class by row, predicted class by column\" src=\"{}\"></p>",
            data_uri(png)
        );
    } else {
        let _ = writeln!(
            html,
            "<p>{} classes are too many to draw; <code>confusion.csv</code> and \
             <code>confused_pairs.csv</code> hold every cell.</p>",
            summary.classes.len()
        );
    }
    if let Some(confusion) = report.confusion() {
        let sentences = confused_in_words(confusion, &summary.classes);
        if sentences.is_empty() {
            html.push_str("<p id=\"reading\">The model confused no two classes.</p>\n");
        } else {
            html.push_str("<ul id=\"reading\">\n");
            for sentence in sentences {
                let _ = writeln!(html, "<li>{}</li>", escape(&sentence));
            }
            html.push_str("</ul>\n");
        }
    }
    if !summary.most_confused.is_empty() {
        html.push_str(
            "<table class=\"bars\"><tr><th>true class</th><th>taken for</th><th>images</th></tr>\n",
        );
        for ConfusedPair {
            true_class,
            predicted_class,
            images,
        } in &summary.most_confused
        {
            let _ = writeln!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{images}</td></tr>",
                escape(true_class),
                escape(predicted_class)
            );
        }
        html.push_str("</table>\n");
    }
}

/// The pairs of classes the model mixes up most, both ways together, as sentences:
/// "cat and dog are confused most: 120 cat images were taken for dog and 95 dog images for
/// cat (10.8% of their 2,000 images)."
pub fn confused_in_words(confusion: &Confusion, classes: &[String]) -> Vec<String> {
    // Each unordered pair of classes with its confusions both ways together.
    let mut both: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for ((t, p), images) in confusion.cells() {
        if t != p && (t as usize) < classes.len() && (p as usize) < classes.len() {
            *both.entry((t.min(p), t.max(p))).or_default() += images;
        }
    }
    let mut pairs: Vec<(u64, u32, u32)> = both.into_iter().map(|((a, b), n)| (n, a, b)).collect();
    pairs.sort_by(|x, y| y.0.cmp(&x.0).then((x.1, x.2).cmp(&(y.1, y.2))));
    pairs
        .into_iter()
        .take(PAIRS_IN_WORDS)
        .enumerate()
        .map(|(rank, (both, a, b))| {
            // The larger direction first.
            let (a, b) = if confusion.get(b, a) > confusion.get(a, b) {
                (b, a)
            } else {
                (a, b)
            };
            let images = confusion.row_total(a) + confusion.row_total(b);
            let lead = match rank {
                0 => "are confused most",
                1 => "come next",
                _ => "then",
            };
            let (name_a, name_b) = (&classes[a as usize], &classes[b as usize]);
            format!(
                "{name_a} and {name_b} {lead}: {} {name_a} images were taken for {name_b} and \
                 {} {name_b} images for {name_a} ({:.1}% of their {images} images).",
                confusion.get(a, b),
                confusion.get(b, a),
                100.0 * both as f64 / images.max(1) as f64,
            )
        })
        .collect()
}

fn mistakes_section(html: &mut String, report: &Report<'_>) {
    let mistakes = &report.tally.gallery.mistakes;
    html.push_str("<h2>Most confident mistakes</h2>\n");
    if mistakes.is_empty() {
        html.push_str("<p>No labelled image was misclassified.</p>\n");
    } else {
        html.push_str("<p>Images the model got wrong while most sure of itself: true class, then what it said.</p>\n");
        gallery(html, "mistakes", mistakes, report);
    }
}

fn distribution_section(html: &mut String, summary: &Summary) {
    let unlabelled = summary.scored - summary.labelled;
    let _ = writeln!(
        html,
        "<h2>Predicted classes</h2>\n<p>How the {} scored images spread over the classes \
         ({unlabelled} of them without a true label).</p>\n<table class=\"bars\" id=\"distribution\">\n\
         <tr><th>class</th><th>images</th><th>share</th><th></th></tr>",
        summary.scored
    );
    let most = summary
        .predicted
        .iter()
        .map(|c| c.predicted)
        .max()
        .unwrap_or(0)
        .max(1);
    // The classes that occur, most frequent first (ties in class order); the rest counted.
    let mut occurring: Vec<_> = summary
        .predicted
        .iter()
        .filter(|c| c.predicted > 0)
        .collect();
    occurring.sort_by_key(|c| std::cmp::Reverse(c.predicted));
    let never = summary.classes.len() - occurring.len();
    for class in occurring {
        let share = class.predicted as f64 / summary.scored.max(1) as f64;
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{:.2}%</td>\
             <td><span class=\"bar\" style=\"width:{:.1}px\"></span></td></tr>",
            escape(&class.class),
            class.predicted,
            100.0 * share,
            200.0 * class.predicted as f64 / most as f64
        );
    }
    html.push_str("</table>\n");
    if never > 0 {
        let _ = writeln!(
            html,
            "<p>{never} other class{} predicted for no image.</p>",
            if never == 1 { " was" } else { "es were" }
        );
    }
}

fn low_confidence_section(html: &mut String, report: &Report<'_>) {
    let unsure = &report.tally.gallery.unsure;
    if !unsure.is_empty() {
        html.push_str(
            "<h2>Least confident predictions</h2>\n<p>Images without a true label that the \
             model was least sure of: worth a look by a person.</p>\n",
        );
        gallery(html, "low-confidence", unsure, report);
    }
}

fn unreadable_section(html: &mut String, report: &Report<'_>) {
    let gallery = &report.tally.gallery;
    let count = gallery.unreadable_count;
    if count == 0 {
        return;
    }
    let _ = writeln!(
        html,
        "<h2>Images that could not be scored</h2>\n<p>{count} {}; each has its row in \
         <code>scores.csv</code> with this error.</p>\n<table id=\"unreadable\">\
         <tr><th>image</th><th>error</th></tr>",
        if count == 1 { "image" } else { "images" }
    );
    for unreadable in &gallery.unreadable {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(&unreadable.name),
            escape(&unreadable.error)
        );
    }
    html.push_str("</table>\n");
    if count > UNREADABLE_LISTED as u64 {
        let _ = writeln!(
            html,
            "<p>and {} more.</p>",
            count - UNREADABLE_LISTED as u64
        );
    }
}

fn gallery(html: &mut String, id: &str, images: &[Pictured], report: &Report<'_>) {
    let classes = &report.summary.classes;
    let class = |c: u32| classes.get(c as usize).map_or("?", String::as_str);
    let _ = writeln!(html, "<div class=\"gallery\" id=\"{id}\">");
    for shown in images {
        let predicted = shown
            .score
            .predicted()
            .map(|(c, p)| format!("{} ({:.1}%)", class(c), 100.0 * p))
            .unwrap_or_default();
        // With a true label: the truth, then what the model said, red when wrong.
        let caption = match (shown.score.label, shown.score.predicted()) {
            (Some(label), Some((c, _))) => format!(
                "<span class=\"truth\">{}</span> → <span class=\"{}\">{}</span>",
                escape(class(label)),
                if c == label { "right" } else { "wrong" },
                escape(&predicted)
            ),
            _ => escape(&predicted),
        };
        // The runners-up, smaller: what the model nearly said.
        let then: Vec<String> = (shown.score.top.iter().skip(1))
            .map(|&(c, p)| format!("{} ({:.1}%)", escape(class(c)), 100.0 * p))
            .collect();
        let then = match then.is_empty() {
            true => String::new(),
            false => format!("<br><span class=\"then\">then {}</span>", then.join(", ")),
        };
        let _ = writeln!(
            html,
            "<figure><img alt=\"{name}\" title=\"{name}\" src=\"{}\"><figcaption>{caption}{then}<br>\
             <span class=\"name\">{name}</span></figcaption></figure>",
            data_uri(&shown.png),
            name = escape(&shown.name),
        );
    }
    html.push_str("</div>\n");
}

pub(super) fn data_uri(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// Text for HTML element content and quoted attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;\
padding:0 1em;color:#1b1f24;background:#fff}\
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #d0d7de}\
.accuracy{font-size:1.3em;font-weight:600;background:#eef5ff;padding:.6em .8em;border-radius:6px}\
.partial{background:#fff4e5;padding:.6em .8em;border-radius:6px}\
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.2em .8em;text-align:left;\
border-bottom:1px solid #eaeef2;vertical-align:top}.facts th{font-weight:500;color:#57606a}\
.note{color:#57606a;font-size:.9em}.bar{display:inline-block;height:.8em;background:#2f6fbd}\
.heat{max-width:100%;image-rendering:pixelated}\
.gallery{display:flex;flex-wrap:wrap;gap:12px}\
figure{margin:0;width:140px;text-align:center;font-size:.85em}\
figure img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;\
border:1px solid #d0d7de;background:#f6f8fa}\
.truth{font-weight:600}.right{color:#1a7f37}.wrong{color:#cf222e}.name{color:#57606a;word-break:break-all}.then{color:#57606a;font-size:90%}\
code{background:#f6f8fa;padding:0 .2em}";

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::gallery::{GALLERY_SIZE, pick_thumbnails};
    use fleet_protocol::message::Score;

    fn score(label: Option<u32>, class: u32, confidence: f32) -> Score {
        Score {
            label,
            top: vec![(class, confidence)],
            error: None,
            scored: true,
            tags: Vec::new(),
            true_tags: None,
        }
    }

    #[test]
    fn reads_the_most_confused_pairs_both_ways() {
        let classes: Vec<String> = ["cat", "dog", "ship"].map(String::from).into();
        let confusion = Confusion::from_rows(&[vec![80, 15, 5], vec![20, 78, 2], vec![1, 0, 99]]);
        let words = confused_in_words(&confusion, &classes);
        assert_eq!(words.len(), 3);
        assert_eq!(
            words[0],
            "dog and cat are confused most: 20 dog images were taken for cat and 15 cat images \
             for dog (17.5% of their 200 images)."
        );
        assert!(words[1].starts_with("cat and ship come next: 5 cat images"));
        assert!(
            confused_in_words(&Confusion::from_rows(&[vec![5, 0], vec![0, 5]]), &classes)
                .is_empty()
        );
    }

    #[test]
    fn any_class_count_renders_without_a_heat_map_beyond_thirty() {
        use fleet_protocol::job::Plan;
        use fleet_protocol::message::{Scored, Sealed, Thumbnail};
        let classes: Vec<String> = (0..40).map(|i| format!("species <{i}>")).collect();
        let plan = Plan {
            models: Vec::new(),
            job: "j".into(),
            classes: classes.clone(),
            top_k: 1,
            several_batches: false,
            max_failed_partitions: 0,
            vectors: Vec::new(),
            multi_label: None,
        };
        let sealed = Sealed {
            container: "ctr".into(),
            job: "j".into(),
            partitions: 1,
            images: 40,
            labelled: true,
            submitted_at_ms: 0,
            published_at_ms: 10,
        };
        // Image i of class i, taken for class (i + 1) % 40 when i is odd.
        let scores: Vec<Score> = (0..40u32)
            .map(|i| score(Some(i), if i % 2 == 1 { (i + 1) % 40 } else { i }, 0.9))
            .collect();
        let thumbnails = pick_thumbnails(0, &scores, &[])
            .into_iter()
            .map(|i| Thumbnail {
                position: i as u32,
                png: fleet_figures::rgb_png(1, 1, &[200, 10, 10]),
                top: Vec::new(),
            })
            .collect();
        let partition = Scored {
            container: "ctr".into(),
            more: Vec::new(),
            model_ms: Vec::new(),
            job: "j".into(),
            partition: 0,
            batch: "photos/".into(),
            first_index: 0,
            filenames: (0..40).map(|i| format!("{i}.jpg")).collect(),
            scores,
            worker: "w".into(),
            inference_ms: 1.0,
            preprocess_ms: 1.0,
            published_at_ms: 20,
            started_at_ms: 30,
            finished_at_ms: 40,
            provider: "CPU".into(),
            decoder: String::new(),
            thumbnails,
            failed: None,
            vectors: false,
        };
        let mut tally = Tally::new(&plan);
        tally.add(&partition, None);
        let files = super::super::finish(&tally, &plan, &sealed, 50);
        assert!(files.confusion_png.is_none());
        let html = render(&Report {
            summary: &files.summary,
            tally: &tally,
            manifest: None,
            provenance: None,
            confusion_png: None,
        });
        assert!(html.contains("Correctly predicted 20 of 40 images (50.00%)"));
        assert!(html.contains("40 classes are too many to draw"));
        for class in &classes {
            assert!(html.contains(&escape(class)), "{class} missing");
        }
        assert!(
            !html.contains("<0>"),
            "a class name went into the page unescaped"
        );
        let mistakes = &html[html.find("id=\"mistakes\"").unwrap()..];
        assert_eq!(
            mistakes[..mistakes.find("</div>").unwrap()]
                .matches("<img")
                .count(),
            GALLERY_SIZE
        );
    }

    #[test]
    fn escapes_what_users_name() {
        assert_eq!(
            escape("<img src=x onerror='a&b'>\""),
            "&lt;img src=x onerror=&#39;a&amp;b&#39;&gt;&quot;"
        );
    }
}
