//! `--incremental`: scoring only the images of a collection that no earlier job of the same
//! model has scored as they are now.
//!
//! Every collection job (incremental or not) records what it was scored from: its listing,
//! `jobs/<job>/listing.tsv` (each image published with its size and version, in name order,
//! which is the order of its rows in `scores.csv`), and its name under
//! `index/<scope>/`, where the scope names the model (its ONNX sha256 and its spec) and the
//! job's top-k: jobs of one scope give the same row for the same image. An incremental job
//! finds the complete jobs of its scope there, and reads each one's listing and `scores.csv`
//! side by side, a line at a time, as its own listing goes: both are in name order, so the
//! whole costs one sequential read of each, never a read per image, and holds one line of each.
//! An image is left out when one of them scored it (a row with a prediction: a failed
//! partition's or an unreadable image's is scored again) at the same size and version.

use std::io::{BufRead, BufReader, Read};

use fleet_dataset::collection::Entry;
use fleet_ledger::Ledger;
use fleet_protocol::job::{self, files};
use fleet_spec::sha256_hex;
use fleet_storage::{BlobStore, ErrorKind, StoreError};

/// The scope of a job: its models' specs as staged (each holds the ONNX file's sha256, how
/// images are prepared, and the class names) and the top-k its rows report; for a job of
/// several models, their names too (its columns bear them), in order. `models` holds each
/// model's name and staged spec.
pub fn scope(models: &[(&str, &[u8])], top_k: u8) -> String {
    // Parsed and written again: one spelling of the same spec, keys in order. Where and when
    // it was staged (the provenance, but for the model's sha256) is not part of it.
    let normal = |spec_json: &[u8]| {
        let mut spec: serde_json::Value = serde_json::from_slice(spec_json).unwrap_or_default();
        let sha = spec
            .pointer("/provenance/onnx_sha256")
            .cloned()
            .unwrap_or_default();
        if let Some(fields) = spec.as_object_mut() {
            fields.remove("provenance");
            fields.insert("onnx_sha256".into(), sha);
        }
        spec
    };
    let text = match models {
        // A job of one model keeps the scope it always had.
        [(_, spec_json)] => {
            let mut spec = normal(spec_json);
            if let Some(fields) = spec.as_object_mut() {
                fields.insert("top_k".into(), top_k.into());
            }
            spec.to_string()
        }
        several => serde_json::json!({
            "models": several
                .iter()
                .map(|(name, spec_json)| serde_json::json!({"name": name, "spec": normal(spec_json)}))
                .collect::<Vec<_>>(),
            "top_k": top_k,
        })
        .to_string(),
    };
    sha256_hex(text.as_bytes())[..32].to_owned()
}

/// The images the earlier complete jobs of a scope scored, read as a listing goes.
pub struct Coverage {
    /// The jobs, oldest first.
    jobs: Vec<String>,
    earlier: Vec<Earlier>,
}

impl std::fmt::Debug for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coverage")
            .field("jobs", &self.jobs)
            .finish()
    }
}

impl Coverage {
    /// The complete jobs of `scope` in `store`, each ready to be read. A job whose listing or
    /// rows cannot be opened covers nothing (its images are scored again), with a warning.
    pub fn find(store: &dyn BlobStore, scope: &str) -> Result<Self, StoreError> {
        let prefix = job::index_prefix(scope);
        let mut coverage = Coverage {
            jobs: Vec::new(),
            earlier: Vec::new(),
        };
        // Complete jobs, in the order they were submitted (ids name the second alone).
        let mut complete = Vec::new();
        for key in store.list(&prefix)? {
            let job = &key[prefix.len()..];
            let submitted = match Ledger::new(store, job).summary() {
                Ok(Some(summary)) => summary.timings.submitted_at_ms,
                // Running, stuck or cancelled: it covers nothing yet.
                Ok(None) => continue,
                // Complete, from a release that summed up otherwise: its rows still count.
                Err(e) if e.kind() == ErrorKind::Corrupt => 0,
                Err(e) => return Err(e),
            };
            complete.push((submitted, job.to_owned()));
        }
        complete.sort();
        for (_, job) in complete {
            match Earlier::open(store, &job) {
                Ok(earlier) => {
                    coverage.jobs.push(job);
                    coverage.earlier.push(earlier);
                }
                Err(e) => {
                    tracing::warn!(%job, error = %e, "an earlier job's listing or rows cannot be read: its images are scored again");
                }
            }
        }
        Ok(coverage)
    }

    /// The earlier jobs, oldest first.
    pub fn jobs(&self) -> &[String] {
        &self.jobs
    }

    /// Whether an earlier job scored blob `key` at this size and version. Keys must come in
    /// name order: each job's lines are read up to `key` and never again.
    pub fn covers(&mut self, key: &str, size: u64, version: &str) -> bool {
        let mut covered = false;
        for earlier in &mut self.earlier {
            covered |= earlier.covers(key, size, version);
        }
        covered
    }
}

/// One earlier job's listing and rows, read in step.
struct Earlier {
    job: String,
    listing: BufReader<Box<dyn Read + Send>>,
    rows: BufReader<Box<dyn Read + Send>>,
    /// Columns of `scores.csv`: `index`, and what says an image was scored.
    index: usize,
    scored: ScoredColumn,
    /// Lines read so far.
    read: u64,
    /// The line last read, not yet passed by the listing: key, size, version, scored.
    current: Option<(String, u64, String, bool)>,
    done: bool,
}

/// The column of `scores.csv` that says whether an image was scored.
enum ScoredColumn {
    /// A classifier's `predicted_label`: not empty.
    Predicted(usize),
    /// A model with no classes has no predictions, and a job of several models has them under
    /// their names: an image was scored (by every model) when its `error` is empty, or names a
    /// fault the image was scored despite.
    Error(usize),
}

impl Earlier {
    fn open(store: &dyn BlobStore, job: &str) -> Result<Self, StoreError> {
        let listing = BufReader::new(store.open(&job::listing_key(job))?);
        let mut rows = BufReader::new(store.open(&job::result_key(job, files::SCORES))?);
        let scores = job::result_key(job, files::SCORES);
        let header = read_record(&mut rows)
            .map_err(|e| StoreError::from_io(store.describe(), "reading", &scores, e))?
            .ok_or_else(|| StoreError::corrupt(store, &scores, "scores table", "it is empty"))?;
        let column = |name: &str| {
            header.iter().position(|c| c == name).ok_or_else(|| {
                let missing = format!("it has no {name} column");
                StoreError::corrupt(store, &scores, "scores table", missing)
            })
        };
        Ok(Self {
            job: job.to_owned(),
            index: column("index")?,
            scored: match column("predicted_label") {
                Ok(at) => ScoredColumn::Predicted(at),
                Err(_) => ScoredColumn::Error(column("error")?),
            },
            listing,
            rows,
            read: 0,
            current: None,
            done: false,
        })
    }

    fn covers(&mut self, key: &str, size: u64, version: &str) -> bool {
        loop {
            if self.current.is_none() && !self.done {
                self.current = self.next();
                self.done = self.current.is_none();
            }
            match &self.current {
                Some((listed, ..)) if listed.as_str() < key => self.current = None,
                Some((listed, listed_size, listed_version, scored)) => {
                    return listed == key
                        && *listed_size == size
                        && listed_version == version
                        && *scored;
                }
                None => return false,
            }
        }
    }

    /// The next line of the listing with its row; `None` at the end, or where the two stop
    /// agreeing (then the rest is scored again, with a warning).
    fn next(&mut self) -> Option<(String, u64, String, bool)> {
        let mut line = String::new();
        let read = self.listing.read_line(&mut line);
        let row = read_record(&mut self.rows);
        let stop = |reason: String| {
            tracing::warn!(job = %self.job, %reason, "an earlier job's listing is read no further: the images after it are scored again");
            None
        };
        let (line, row) = match (read, row) {
            (Ok(0), _) => return None,
            (Ok(_), Ok(Some(row))) => (line, row),
            (Ok(_), Ok(None)) => return stop("its rows end before its listing".into()),
            (Err(e), _) | (_, Err(e)) => return stop(e.to_string()),
        };
        let mut fields = line.trim_end_matches('\n').splitn(3, '\t');
        let (Some(key), Some(size), Some(version)) = (fields.next(), fields.next(), fields.next())
        else {
            return stop(format!(
                "line {} of its listing is malformed",
                self.read + 1
            ));
        };
        let Ok(size) = size.parse::<u64>() else {
            return stop(format!(
                "line {} of its listing is malformed",
                self.read + 1
            ));
        };
        if row.get(self.index).map(String::as_str) != Some(&self.read.to_string()) {
            return stop(format!("row {} of scores.csv is not its image", self.read));
        }
        let scored = match self.scored {
            ScoredColumn::Predicted(at) => row.get(at).is_some_and(|p| !p.is_empty()),
            ScoredColumn::Error(at) => row
                .get(at)
                .is_some_and(|e| e.is_empty() || e.starts_with("scored despite")),
        };
        self.read += 1;
        Some((key.to_owned(), size, version.to_owned(), scored))
    }
}

/// The next record of a CSV file as the collector writes it (a field holding a comma, a quote
/// or a line break is quoted, quotes doubled); `None` at the end.
fn read_record(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<String>>> {
    let mut record = String::new();
    // A record runs on while a quoted field is open: an odd count of quotes so far.
    loop {
        let read = reader.read_line(&mut record)?;
        if read == 0 || record.matches('"').count().is_multiple_of(2) {
            break;
        }
    }
    if record.is_empty() {
        return Ok(None);
    }
    let record = record.trim_end_matches(['\n', '\r']);
    let (mut fields, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = record.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    Ok(Some(fields))
}

/// The lines of a job's listing for these images of the collection under `prefix`: each one's
/// key with its size and version as listed.
pub fn listing_lines(prefix: &str, entries: &[Entry]) -> String {
    let mut lines = String::new();
    for entry in entries {
        if let Some((size, version)) = &entry.listed {
            lines.push_str(&format!("{prefix}{}\t{size}\t{version}\n", entry.name));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_records_with_quotes_commas_and_line_breaks_read_back() {
        let csv = "index,filename,predicted_label,error\n0,\"a,b.png\",3,\n1,c.png,,\"bad \"\"x\"\"\nmore\"\n";
        let mut reader = std::io::Cursor::new(csv);
        let mut records = Vec::new();
        while let Some(record) = read_record(&mut reader).unwrap() {
            records.push(record);
        }
        assert_eq!(
            records,
            [
                vec!["index", "filename", "predicted_label", "error"],
                vec!["0", "a,b.png", "3", ""],
                vec!["1", "c.png", "", "bad \"x\"\nmore"],
            ]
        );
    }

    #[test]
    fn the_scope_ignores_where_a_spec_was_staged_but_not_the_model_or_top_k() {
        let spec = |sha: &str, staged: &str, scale: f32| {
            serde_json::json!({
                "scale": scale,
                "provenance": {"onnx_sha256": sha, "source": staged},
            })
            .to_string()
        };
        let one = |spec: String, top_k| scope(&[("m", spec.as_bytes())], top_k);
        let a = one(spec("aa", "/tmp/x.onnx", 1.0), 1);
        assert_eq!(a, one(spec("aa", "https://e/x.onnx", 1.0), 1));
        assert_ne!(a, one(spec("bb", "/tmp/x.onnx", 1.0), 1));
        assert_ne!(a, one(spec("aa", "/tmp/x.onnx", 0.5), 1));
        assert_ne!(a, one(spec("aa", "/tmp/x.onnx", 1.0), 3));
        // Several models: their set, their order and their names make the scope.
        let (x, y) = (
            spec("aa", "/tmp/x.onnx", 1.0),
            spec("bb", "/tmp/y.onnx", 1.0),
        );
        let both = scope(&[("x", x.as_bytes()), ("y", y.as_bytes())], 1);
        assert_ne!(both, a);
        assert_ne!(both, scope(&[("y", y.as_bytes()), ("x", x.as_bytes())], 1));
        assert_ne!(both, scope(&[("x", x.as_bytes()), ("z", y.as_bytes())], 1));
        assert_eq!(both, scope(&[("x", x.as_bytes()), ("y", y.as_bytes())], 1));
    }
}
