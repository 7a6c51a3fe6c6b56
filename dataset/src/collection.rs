//! Image collections: every image file under a prefix of a container, and their true labels.
//!
//! The producer lists blob names and never downloads an image: partitions carry names and
//! workers fetch them (the claim-check pattern), so the producer's cost grows with the number
//! of partitions, not with pixels.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::str::FromStr;

use super::DatasetError;
use fleet_storage::{BlobStore, StoreError};

/// File extensions scored as images (compared without case).
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "gif", "webp"];

/// Whether a blob name looks like an image this product decodes.
pub fn is_image(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    !file.starts_with('.')
        && file.rsplit_once('.').is_some_and(|(_, ext)| {
            IMAGE_EXTENSIONS
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known))
        })
}

/// The images of a collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    /// The prefix, ending in `/`.
    pub prefix: String,
    /// Image names relative to the prefix, sorted.
    pub names: Vec<String>,
    /// Other files under the prefix (relative names, hidden files left out): not scored,
    /// since their names are not those of images this product reads.
    pub not_images: Vec<String>,
}

impl Collection {
    /// What is said of the files under the prefix that are not scored (a few named, the rest
    /// counted), or `None` when every file is an image.
    pub fn not_images_note(&self) -> Option<String> {
        strays_note(&self.prefix, &self.not_images, self.not_images.len())
    }
}

/// Files named in the note on files that are not scored; the rest are counted.
const STRAYS_NAMED: usize = 5;

/// The note on the `count` files under `prefix` that are not scored, the first of them
/// `named`; `None` when there are none.
fn strays_note(prefix: &str, named: &[String], count: usize) -> Option<String> {
    if count == 0 {
        return None;
    }
    let mut list = named[..named.len().min(STRAYS_NAMED)].join(", ");
    if count > STRAYS_NAMED {
        list.push_str(&format!(" and {} more", count - STRAYS_NAMED));
    }
    let (files, are) = if count == 1 {
        ("file", "is")
    } else {
        ("files", "are")
    };
    Some(format!(
        "{count} {files} under {prefix} {are} not scored, their names not those of images this \
         product reads ({}; convert others, TIFF for instance, to PNG): {list}",
        IMAGE_EXTENSIONS.join(", ")
    ))
}

/// Normalises a user's prefix: no leading `./` or `/`, one trailing `/`.
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix
        .trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/');
    format!("{trimmed}/")
}

/// Lists the images under `dataset` (a prefix, with or without its trailing `/`).
pub fn list(store: &dyn BlobStore, dataset: &str) -> Result<Collection, DatasetError> {
    let prefix = normalize_prefix(dataset);
    let all = store.list(&prefix).map_err(DatasetError::Store)?;
    let total = all.len();
    let (images, others): (Vec<String>, Vec<String>) =
        all.into_iter().partition(|key| is_image(key));
    let relative = |key: String| key[prefix.len()..].to_owned();
    let names: Vec<String> = images.into_iter().map(relative).collect();
    let not_images = others
        .into_iter()
        .map(relative)
        .filter(|name| !name.rsplit('/').next().unwrap_or(name).starts_with('.'))
        .collect();
    if names.is_empty() {
        return Err(DatasetError::NoImages {
            store: store.describe(),
            name: dataset.to_owned(),
            prefix,
            blobs: total,
        });
    }
    Ok(Collection {
        prefix,
        names,
        not_images,
    })
}

/// Where the true labels of a job's images come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelSource {
    /// The dataset's own labels: a tarball's; none for an image collection.
    Auto,
    /// No labels: predictions only, no accuracy.
    None,
    /// The name of each image's folder (`<class>/<file>`).
    Folders,
    /// A label file: a CNTK map file (`path<TAB>label index`) or a CSV (`filename,label`, the
    /// label a class name or index; `.csv` files). Looked up in the container beside the
    /// images, then as a blob name, then as a local file.
    File(String),
}

impl FromStr for LabelSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim() {
            "" => return Err("name a label source: auto, none, folders, or a label file".into()),
            "auto" => LabelSource::Auto,
            "none" => LabelSource::None,
            "folders" => LabelSource::Folders,
            file => LabelSource::File(file.to_owned()),
        })
    }
}

impl std::fmt::Display for LabelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabelSource::Auto => f.write_str("auto"),
            LabelSource::None => f.write_str("none"),
            LabelSource::Folders => f.write_str("folders"),
            LabelSource::File(file) => f.write_str(file),
        }
    }
}

/// One line of a label file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LabelLine {
    path: String,
    label: String,
    line: usize,
}

/// A parsed label file: each entry labels the one image it names (see [`resolve_labels`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelFile {
    name: String,
    entries: Vec<LabelLine>,
}

impl LabelFile {
    /// Parses a label file. `.csv` names are read as CSV (`filename,label`), anything else as a
    /// CNTK map file (`path<TAB>label index`, further columns ignored; without a tab, the last
    /// white-space-separated field is the label). A first line that names columns (its path is
    /// no image file, its label no class: `filename,label`) is a header, skipped when labels
    /// are resolved.
    pub fn parse(text: &str, name: &str) -> Result<Self, DatasetError> {
        let csv = name.to_ascii_lowercase().ends_with(".csv");
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = if csv {
                csv_fields(line)
            } else if line.contains('\t') {
                line.split('\t').map(str::to_owned).collect()
            } else {
                match line.trim().rsplit_once(char::is_whitespace) {
                    Some((path, label)) => vec![path.trim().to_owned(), label.to_owned()],
                    None => vec![line.to_owned()],
                }
            };
            let [path, label, ..] = fields.as_slice() else {
                return Err(DatasetError::Labels {
                    source_name: name.into(),
                    detail: format!(
                        "line {} has no label: expected {}",
                        i + 1,
                        if csv {
                            "`filename,label`"
                        } else {
                            "`path<TAB>label index`"
                        }
                    ),
                });
            };
            entries.push(LabelLine {
                path: normalize_path(path),
                label: label.trim().to_owned(),
                line: i + 1,
            });
        }
        if entries.is_empty() {
            return Err(DatasetError::Labels {
                source_name: name.into(),
                detail: "it holds no entries".into(),
            });
        }
        Ok(Self {
            name: name.into(),
            entries,
        })
    }
}

/// Splits one CSV line (RFC 4180 quoting).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().expect("never empty").push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields
}

/// A path as written in a label file, comparable with a blob name relative to the prefix.
fn normalize_path(path: &str) -> String {
    let path = path.trim().replace('\\', "/");
    path.trim_start_matches("./").to_owned()
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The classes of a model, as labels name them: by id (when the class list has ids, e.g.
/// ImageNet's `n01440764` folders), by name where exactly one class has it, or by index.
#[derive(Debug, Clone)]
pub struct Classes<'a> {
    names: &'a [String],
    /// A multi-label model's: an image's label may name several classes (`dog;grass`).
    multi: bool,
    by_id: HashMap<&'a str, u32>,
    by_name: HashMap<&'a str, u32>,
    /// Names several classes share, with all of them.
    shared: HashMap<&'a str, Vec<u32>>,
}

/// What a label names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Class(u32),
    /// A name that several classes share.
    Ambiguous(Vec<u32>),
    Unknown,
}

impl<'a> Classes<'a> {
    /// The classes named `names` (by output index), with their `ids` when the list has them.
    pub fn new(names: &'a [String], ids: Option<&'a [String]>) -> Self {
        // The first class of each name; the few names several classes share kept apart, so
        // that a million classes cost one map entry each.
        let mut by_name: HashMap<&str, u32> = HashMap::with_capacity(names.len());
        let mut shared: HashMap<&str, Vec<u32>> = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            if let Some(&first) = by_name.get(name.as_str()) {
                shared
                    .entry(name)
                    .or_insert_with(|| vec![first])
                    .push(i as u32);
            } else {
                by_name.insert(name, i as u32);
            }
        }
        let by_id = ids
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i as u32))
            .collect();
        Self {
            names,
            multi: false,
            by_id,
            by_name,
            shared,
        }
    }

    /// The classes of a multi-label model: an image's label in a label file may name several
    /// of them, separated by `;` (`dog;grass`), or none (an empty label: no tag).
    pub fn multi_label(mut self, multi: bool) -> Self {
        self.multi = multi;
        self
    }

    /// Whether they are a multi-label model's.
    pub fn is_multi_label(&self) -> bool {
        self.multi
    }

    fn find(&self, label: &str) -> Found {
        if let Some(&i) = self.by_id.get(label) {
            return Found::Class(i);
        }
        if let Some(several) = self.shared.get(label) {
            return Found::Ambiguous(several.clone());
        }
        if let Some(&i) = self.by_name.get(label) {
            return Found::Class(i);
        }
        match label.parse::<u32>() {
            Ok(i) if (i as usize) < self.names.len() => Found::Class(i),
            _ => Found::Unknown,
        }
    }

    fn summary(&self) -> String {
        let shown: Vec<&str> = self.names.iter().take(12).map(String::as_str).collect();
        let more = if self.names.len() > shown.len() {
            ", ..."
        } else {
            ""
        };
        format!("{} classes: {}{more}", self.names.len(), shown.join(", "))
    }
}

/// Says which classes share the name `label`, and how to tell them apart.
fn ambiguous(label: &str, indices: &[u32]) -> String {
    let listed: Vec<String> = indices.iter().map(u32::to_string).collect();
    format!(
        "{label:?} names {} classes (indices {})",
        indices.len(),
        listed.join(", ")
    )
}

/// Resolves the true label of each image (`names`, relative to the prefix) to an index into
/// `classes`. `labels` is `LabelSource::None`, `Folders`, or a parsed file; images a label
/// file does not list get no label, and each entry labels one image at most (an entry that
/// could be several images' is an error, as are two entries giving one file different
/// labels). Names that are not classes, or that several classes share, are errors, listed
/// together.
pub fn resolve_labels(
    names: &[String],
    labels: &ResolvedSource,
    classes: &Classes<'_>,
) -> Result<Vec<Option<u32>>, DatasetError> {
    let resolved = resolve(names, labels, &classes.clone().multi_label(false))?;
    Ok(resolved
        .into_iter()
        .map(|classes| classes.and_then(|c| c.first().copied()))
        .collect())
}

/// Resolves the true classes of each image of a multi-label job (its tags) as
/// [`resolve_labels`] resolves one label: a label file's label may name several classes,
/// separated by `;`, or none; a folder names one.
pub fn resolve_tags(
    names: &[String],
    labels: &ResolvedSource,
    classes: &Classes<'_>,
) -> Result<Vec<Option<Vec<u32>>>, DatasetError> {
    resolve(names, labels, &classes.clone().multi_label(true))
}

/// Each image's true classes: one (`classes` of a single-label model), or any number.
fn resolve(
    names: &[String],
    labels: &ResolvedSource,
    classes: &Classes<'_>,
) -> Result<Vec<Option<Vec<u32>>>, DatasetError> {
    match labels {
        ResolvedSource::None => Ok(vec![None; names.len()]),
        ResolvedSource::Folders => {
            let mut unknown: Vec<&str> = Vec::new();
            let mut shared: Vec<String> = Vec::new();
            let resolved = names
                .iter()
                .map(|name| {
                    let folder = name.rsplit_once('/')?.0;
                    let folder = file_name(folder);
                    match classes.find(folder) {
                        Found::Class(i) => Some(vec![i]),
                        Found::Ambiguous(indices) => {
                            let why = ambiguous(folder, &indices);
                            if !shared.contains(&why) {
                                shared.push(why);
                            }
                            None
                        }
                        Found::Unknown => {
                            if !unknown.contains(&folder) {
                                unknown.push(folder);
                            }
                            None
                        }
                    }
                })
                .collect();
            if !shared.is_empty() {
                return Err(DatasetError::Labels {
                    source_name: "folder labels".into(),
                    detail: format!(
                        "folder names that several classes of the model share: {}; name those \
                         folders by class id (stage the model with a class list that has ids, \
                         such as synset_words.txt) or by index, or label with a file of indices",
                        shared.join("; ")
                    ),
                });
            }
            if !unknown.is_empty() {
                return Err(DatasetError::Labels {
                    source_name: "folder labels".into(),
                    detail: format!(
                        "folder{} {} {} not a class of the model ({}); name its classes in \
                         output order with `producer stage --model-name MODEL --classes FILE`, \
                         or score with --labels none",
                        if unknown.len() > 1 { "s" } else { "" },
                        quote_list(&unknown, 10),
                        if unknown.len() > 1 { "are" } else { "is" },
                        classes.summary()
                    ),
                });
            }
            Ok(resolved)
        }
        ResolvedSource::File(file) => {
            let entry_of = match_entries(names, file, classes)?;
            // A file that labels nothing is the wrong file, or names its images otherwise:
            // scoring on as if there were no labels would hide that.
            if let (Some(image), Some(entry)) = (names.first(), file.entries.last())
                && entry_of.iter().all(Option::is_none)
            {
                return Err(DatasetError::Labels {
                    source_name: file.name.clone(),
                    detail: format!(
                        "it labels none of the {} images (line {} names {:?}; the images are \
                         named like {image:?}): name each image by its path under the prefix, \
                         a longer path ending in it, or its bare file name",
                        names.len(),
                        entry.line,
                        entry.path
                    ),
                });
            }
            // Images the file leaves out are scored without a label: say how many, and which.
            let unlabelled: Vec<&String> = (names.iter().zip(&entry_of))
                .filter(|(_, entry)| entry.is_none())
                .map(|(name, _)| name)
                .collect();
            if !unlabelled.is_empty() {
                tracing::warn!(
                    "{} of the {} images have no label in {} ({}{}): they are scored without one, \
                     and left out of the accuracy",
                    unlabelled.len(),
                    names.len(),
                    file.name,
                    (unlabelled.iter().take(5))
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if unlabelled.len() > 5 { ", ..." } else { "" }
                );
            }
            let mut bad: Vec<String> = Vec::new();
            let mut shared: Vec<String> = Vec::new();
            let mut several: Option<String> = None;
            let resolved = entry_of
                .iter()
                .map(|entry| {
                    let entry = (*entry)?;
                    // A multi-label job's label names any number of classes.
                    let parts: Vec<&str> = match classes.multi {
                        true => entry
                            .label
                            .split(';')
                            .map(str::trim)
                            .filter(|p| !p.is_empty())
                            .collect(),
                        false => vec![entry.label.as_str()],
                    };
                    let is_several = |label: &str| {
                        label.contains(';')
                            && classes.find(label) == Found::Unknown
                            && label
                                .split(';')
                                .all(|p| classes.find(p.trim()) != Found::Unknown)
                    };
                    if !classes.multi && several.is_none() && is_several(&entry.label) {
                        several = Some(format!("line {}: {:?}", entry.line, entry.label));
                        return None;
                    }
                    let mut found = Vec::with_capacity(parts.len());
                    for part in parts {
                        match classes.find(part) {
                            Found::Class(i) => found.push(i),
                            Found::Ambiguous(indices) => {
                                if shared.len() < 5 {
                                    shared.push(format!(
                                        "line {}: {}",
                                        entry.line,
                                        ambiguous(part, &indices)
                                    ));
                                }
                            }
                            Found::Unknown => {
                                if bad.len() < 5 {
                                    bad.push(format!("line {}: {:?}", entry.line, part));
                                }
                            }
                        }
                    }
                    found.sort_unstable();
                    found.dedup();
                    Some(found)
                })
                .collect();
            if let Some(line) = several {
                return Err(DatasetError::Labels {
                    source_name: file.name.clone(),
                    detail: format!(
                        "{line} names several classes, but the model is a single-label \
                         classifier: stage it with --multi-label if an image may have several"
                    ),
                });
            }
            if !shared.is_empty() {
                return Err(DatasetError::Labels {
                    source_name: file.name.clone(),
                    detail: format!(
                        "labels that several classes of the model share: {}; give those labels \
                         as class indices (or ids, with a class list that has them)",
                        shared.join(", ")
                    ),
                });
            }
            if !bad.is_empty() {
                return Err(DatasetError::Labels {
                    source_name: file.name.clone(),
                    detail: format!(
                        "labels that are neither a class name{} nor an index below {} ({}): {}",
                        if classes.by_id.is_empty() {
                            ""
                        } else {
                            ", a class id"
                        },
                        classes.names.len(),
                        classes.summary(),
                        bad.join(", ")
                    ),
                });
            }
            Ok(resolved)
        }
    }
}

/// The entry of `file` that labels each image of `names`, if any. An entry labels the file it
/// names and no other: by its path relative to the prefix; by a longer path ending in it (a
/// map file written with another machine's paths, `/data/cifar/cat/0001.png`); or, for a bare
/// file name, the one image that bears it (several bearing it: an error listing them). A
/// first line is a header only when it names columns (its path is no image file and its
/// label no class); one file given two different labels is an error naming both lines.
fn match_entries<'f>(
    names: &[String],
    file: &'f LabelFile,
    classes: &Classes<'_>,
) -> Result<Vec<Option<&'f LabelLine>>, DatasetError> {
    let error = |detail: String| DatasetError::Labels {
        source_name: file.name.clone(),
        detail,
    };
    let header = file
        .entries
        .first()
        .filter(|e| !is_image(&e.path) && classes.find(&e.label) == Found::Unknown);
    let entries = file
        .entries
        .iter()
        .filter(|e| !header.is_some_and(|h| std::ptr::eq(h, *e)));
    let mut by_path: HashMap<&str, &LabelLine> = HashMap::new();
    let mut conflicts: Vec<String> = Vec::new();
    for entry in entries {
        if let Some(first) = by_path.insert(entry.path.as_str(), entry)
            && first.label != entry.label
        {
            conflicts.push(format!(
                "lines {} and {} label {:?} as {:?} and {:?}",
                first.line, entry.line, entry.path, first.label, entry.label
            ));
        }
    }
    if !conflicts.is_empty() {
        return Err(error(format!(
            "entries that contradict each other: {}; keep one label per file",
            quote_lines(&conflicts)
        )));
    }
    let in_dataset: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    // An entry naming no image of the dataset (another machine's path, `/data/cat/0001.png`)
    // labels the image its longest ending names (`cat/0001.png`), if any.
    let mut by_ending: HashMap<&str, &LabelLine> = HashMap::new();
    for (&path, &entry) in by_path.iter().filter(|(p, _)| !in_dataset.contains(**p)) {
        let Some(image) = path
            .match_indices('/')
            .map(|(i, _)| &path[i + 1..])
            .find(|ending| in_dataset.contains(ending))
        else {
            continue;
        };
        if let Some(other) = by_ending.insert(image, entry)
            && other.label != entry.label
        {
            conflicts.push(format!(
                "lines {} and {} both end in {image:?} and label it {:?} and {:?}",
                other.line.min(entry.line),
                other.line.max(entry.line),
                other.label,
                entry.label
            ));
        }
    }
    if !conflicts.is_empty() {
        conflicts.sort();
        return Err(error(format!(
            "entries that contradict each other: {}; keep one label per file",
            quote_lines(&conflicts)
        )));
    }
    // Images by file name, for entries that name a file alone.
    let mut bearers: HashMap<&str, Vec<&str>> = HashMap::new();
    for name in names {
        bearers.entry(file_name(name)).or_default().push(name);
    }
    let mut ambiguous: Vec<String> = Vec::new();
    let matched = names
        .iter()
        .map(|name| {
            if let Some(&entry) = by_path.get(name.as_str()) {
                return Some(entry);
            }
            if let Some(&entry) = by_ending.get(name.as_str()) {
                return Some(entry);
            }
            let bare = file_name(name);
            if in_dataset.contains(bare) {
                // The entry names the image of that name at the top: that one alone.
                return None;
            }
            let entry = by_path.get(bare).copied()?;
            let images = &bearers[bare];
            if images.len() > 1 {
                let message = format!(
                    "line {} names {bare:?}, which {} images bear ({}): give its folder too",
                    entry.line,
                    images.len(),
                    quote_list(images, 5)
                );
                if !ambiguous.contains(&message) {
                    ambiguous.push(message);
                }
                return None;
            }
            Some(entry)
        })
        .collect();
    if !ambiguous.is_empty() {
        return Err(error(format!(
            "entries that could label more than one image: {}",
            quote_lines(&ambiguous)
        )));
    }
    Ok(matched)
}

/// Up to five messages, and how many more.
fn quote_lines(lines: &[String]) -> String {
    let mut out = lines.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
    if lines.len() > 5 {
        out.push_str(&format!("; and {} more", lines.len() - 5));
    }
    out
}

/// One image of a collection, as a page of its listing hands it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name relative to the prefix.
    pub name: String,
    /// Its class index; `None` without a label (or in a multi-label job).
    pub label: Option<u32>,
    /// A multi-label job's: its true classes, if it has a label (none, one or several).
    pub tags: Option<Vec<u32>>,
    /// Its size and version as listed (see [`fleet_storage::Listed`]); `None` when a label
    /// file labels the collection (it is matched against names alone).
    pub listed: Option<(u64, String)>,
}

impl Entry {
    /// Image `name` with its true classes `truth` (one, unless `classes` are a multi-label
    /// model's), and how it was listed.
    fn new(
        name: String,
        truth: Option<Vec<u32>>,
        classes: &Classes<'_>,
        listed: Option<(u64, String)>,
    ) -> Self {
        let (label, tags) = match classes.multi {
            true => (None, truth),
            false => (truth.and_then(|t| t.first().copied()), None),
        };
        Entry {
            name,
            label,
            tags,
            listed,
        }
    }
}

/// What listing a collection page by page came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The prefix, ending in `/`.
    pub prefix: String,
    /// Images listed.
    pub images: u64,
    /// Images with a label.
    pub labelled: u64,
}

/// Lists the image collection under `prefix` and resolves each image's label from `source`
/// (the rule of [`labelled`]), handing the images to `each` a page of the listing at a time.
///
/// With no labels or folder labels nothing is held beyond one page, whatever the collection's
/// size: a folder that is no class is found when its page is listed, after the pages before it
/// went to `each`. A label file's entries are matched against the whole listing (an entry may
/// name a file by its bare name, which must be one image's), so with one the listing is held
/// and handed on once matched.
pub fn for_each_page(
    store: &dyn BlobStore,
    dataset: &str,
    source: &LabelSource,
    classes: &Classes<'_>,
    named: bool,
    each: &mut dyn FnMut(Vec<Entry>) -> Result<(), DatasetError>,
) -> Result<Listed, DatasetError> {
    let resolved = match source {
        LabelSource::Auto | LabelSource::None => ResolvedSource::None,
        LabelSource::Folders if !named => return Err(folders_need_names()),
        LabelSource::Folders => ResolvedSource::Folders,
        LabelSource::File(_) => {
            let Labelled {
                collection,
                labels,
                tags,
            } = labelled(store, dataset, source, classes, named)?;
            let listed = Listed {
                prefix: collection.prefix.clone(),
                images: collection.names.len() as u64,
                labelled: (labels.iter().flatten().count() + tags.iter().flatten().count()) as u64,
            };
            let mut tags = tags.into_iter();
            let mut entries =
                (collection.names.into_iter().zip(labels)).map(|(name, label)| Entry {
                    name,
                    label,
                    tags: tags.next().flatten(),
                    listed: None,
                });
            loop {
                let page: Vec<Entry> = entries.by_ref().take(fleet_storage::LIST_PAGE).collect();
                if page.is_empty() {
                    return Ok(listed);
                }
                each(page)?;
            }
        }
    };
    let prefix = normalize_prefix(dataset);
    let mut listed = Listed {
        prefix: prefix.clone(),
        images: 0,
        labelled: 0,
    };
    let (mut strays, mut stray_count, mut blobs) = (Vec::new(), 0, 0);
    let mut failure = None;
    store
        .list_pages(&prefix, &mut |page| {
            blobs += page.len();
            let mut names = Vec::with_capacity(page.len());
            let mut versions = Vec::with_capacity(page.len());
            for fleet_storage::Listed { key, size, version } in page {
                let relative = key[prefix.len()..].to_owned();
                if is_image(&key) {
                    names.push(relative);
                    versions.push((size, version));
                } else if !file_name(&relative).starts_with('.') {
                    stray_count += 1;
                    if strays.len() < STRAYS_NAMED {
                        strays.push(relative);
                    }
                }
            }
            if names.is_empty() {
                return Ok(ControlFlow::Continue(()));
            }
            let outcome = resolve(&names, &resolved, classes).and_then(|truths| {
                listed.images += names.len() as u64;
                listed.labelled += truths.iter().flatten().count() as u64;
                let entries = names.into_iter().zip(truths).zip(versions);
                each(
                    entries
                        .map(|((name, truth), listed)| {
                            Entry::new(name, truth, classes, Some(listed))
                        })
                        .collect(),
                )
            });
            Ok(match outcome {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            })
        })
        .map_err(DatasetError::Store)?;
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(note) = strays_note(&prefix, &strays, stray_count) {
        tracing::warn!("{note}");
    }
    if listed.images == 0 {
        return Err(DatasetError::NoImages {
            store: store.describe(),
            name: dataset.to_owned(),
            prefix,
            blobs,
        });
    }
    Ok(listed)
}

/// Checks what can be checked of a collection before any of it is published, reading the
/// listing only up to its first page with an image: the prefix, that folder labels have class
/// names, that there is an image, and the labels of that page. A job labelled by a file is
/// checked whole by [`labelled`] instead.
pub fn check(
    store: &dyn BlobStore,
    dataset: &str,
    source: &LabelSource,
    classes: &Classes<'_>,
    named: bool,
) -> Result<(), DatasetError> {
    let resolved = match source {
        LabelSource::Auto | LabelSource::None => ResolvedSource::None,
        LabelSource::Folders if !named => return Err(folders_need_names()),
        LabelSource::Folders => ResolvedSource::Folders,
        LabelSource::File(_) => return labelled(store, dataset, source, classes, named).map(drop),
    };
    let prefix = normalize_prefix(dataset);
    let (mut blobs, mut found) = (0, None);
    store
        .list_pages(&prefix, &mut |page| {
            blobs += page.len();
            let names: Vec<String> = page
                .into_iter()
                .filter(|listed| is_image(&listed.key))
                .map(|listed| listed.key[prefix.len()..].to_owned())
                .collect();
            if names.is_empty() {
                return Ok(ControlFlow::Continue(()));
            }
            found = Some(resolve(&names, &resolved, classes).map(drop));
            Ok(ControlFlow::Break(()))
        })
        .map_err(DatasetError::Store)?;
    found.unwrap_or_else(|| {
        Err(DatasetError::NoImages {
            store: store.describe(),
            name: dataset.to_owned(),
            prefix,
            blobs,
        })
    })
}

/// An image collection with its labels.
#[derive(Debug)]
pub struct Labelled {
    /// The images.
    pub collection: Collection,
    /// Each image's class index, in the order of `collection.names`; `None` for an image
    /// without a label (every image of a multi-label job).
    pub labels: Vec<Option<u32>>,
    /// A multi-label job's: each image's true classes, in the same order; `None` for an image
    /// without a label. Empty for a single-label job.
    pub tags: Vec<Option<Vec<u32>>>,
}

/// Lists the image collection under `prefix` and resolves its labels from `source`, the whole
/// rule in one place: none (`auto` and `none`); each image's folder (which needs the model's
/// class names: `named`); or a label file beside the images, else a blob of that name, else a
/// local file (a label file beside the images is read, not counted as a stray file).
pub fn labelled(
    store: &dyn BlobStore,
    prefix: &str,
    source: &LabelSource,
    classes: &Classes<'_>,
    named: bool,
) -> Result<Labelled, DatasetError> {
    let mut collection = list(store, prefix)?;
    if let LabelSource::File(name) = source {
        collection.not_images.retain(|other| other != name);
    }
    if let Some(note) = collection.not_images_note() {
        tracing::warn!("{note}");
    }
    let resolved = match source {
        LabelSource::Auto | LabelSource::None => ResolvedSource::None,
        LabelSource::Folders if !named => return Err(folders_need_names()),
        LabelSource::Folders => ResolvedSource::Folders,
        LabelSource::File(name) => {
            ResolvedSource::File(read_label_file(store, &collection.prefix, name)?)
        }
    };
    let truths = resolve(&collection.names, &resolved, classes)?;
    let (labels, tags) = match classes.multi {
        true => (vec![None; truths.len()], truths),
        false => (
            truths
                .into_iter()
                .map(|t| t.and_then(|t| t.first().copied()))
                .collect(),
            Vec::new(),
        ),
    };
    Ok(Labelled {
        collection,
        labels,
        tags,
    })
}

/// Why folder labels cannot be read for a model without class names.
fn folders_need_names() -> DatasetError {
    DatasetError::Labels {
        source_name: "folders".into(),
        detail: "folder labels need the model's class names: name them with `producer stage \
                 --model-name MODEL --classes FILE` (one name per line, in the model's output \
                 order; the model file need not be staged again)"
            .into(),
    }
}

/// The label source keyword a name that is no file was likely meant to be (`folder`,
/// `Folders`, `non`): a name with no extension and no folder, that is a keyword in another
/// case, or begins one or is begun by one.
fn keyword_meant(name: &str) -> Option<&'static str> {
    if name.contains(['.', '/', '\\']) {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    ["auto", "none", "folders"].into_iter().find(|keyword| {
        lower == *keyword
            || (lower.len() >= 3 && (keyword.starts_with(&lower) || lower.starts_with(keyword)))
    })
}

/// A label file: beside the images, else a blob of that name, else a local file.
fn read_label_file(
    store: &dyn BlobStore,
    prefix: &str,
    name: &str,
) -> Result<LabelFile, DatasetError> {
    let beside = format!("{prefix}{name}");
    for key in [beside.as_str(), name] {
        match store.get(key) {
            Ok(bytes) => {
                let text =
                    crate::text::utf8(&bytes, key).map_err(|detail| DatasetError::Labels {
                        source_name: key.into(),
                        detail,
                    })?;
                return LabelFile::parse(&text, key);
            }
            // Not there, or a name that cannot be a blob: try the next place. Any other
            // failure (access denied, the store away) is the answer.
            Err(e) if e.is_not_found() || matches!(e, StoreError::BadKey(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let bytes = std::fs::read(name).map_err(|e| DatasetError::Labels {
        source_name: name.into(),
        detail: format!(
            "neither a blob ({beside} or {name} in {}) nor a readable local file ({e}){}",
            store.describe(),
            keyword_meant(name)
                .map(|keyword| format!("; did you mean --labels {keyword}?"))
                .unwrap_or_default()
        ),
    })?;
    let text = crate::text::utf8(&bytes, name).map_err(|detail| DatasetError::Labels {
        source_name: name.into(),
        detail,
    })?;
    LabelFile::parse(&text, name)
}

/// A label source made concrete for one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedSource {
    /// No labels.
    None,
    /// Each image's folder names its class.
    Folders,
    /// A label file's entries.
    File(LabelFile),
}

fn quote_list(items: &[&str], most: usize) -> String {
    let mut listed: Vec<String> = items.iter().take(most).map(|s| format!("{s:?}")).collect();
    if items.len() > most {
        listed.push(format!("and {} more", items.len() - most));
    }
    listed.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_names() -> Vec<String> {
        ["cat", "dog", "ship"].map(String::from).to_vec()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_mistyped_label_keyword_is_named() {
        assert_eq!(keyword_meant("folder"), Some("folders"));
        assert_eq!(keyword_meant("Folders"), Some("folders"));
        assert_eq!(keyword_meant("NONE"), Some("none"));
        assert_eq!(keyword_meant("automatic"), Some("auto"));
        assert_eq!(keyword_meant("folder.csv"), None);
        assert_eq!(keyword_meant("labels"), None);
        assert_eq!(keyword_meant("no"), None);
    }

    #[test]
    fn a_label_file_that_labels_no_image_is_refused() {
        let file = LabelFile::parse("filename,label\nx/1.jpg,0\ny/2.jpg,1\n", "l.csv").unwrap();
        let names = names(&["a/1.png", "b/2.png"]);
        let class_names = class_names();
        let classes = Classes::new(&class_names, None);
        let e = resolve_labels(&names, &ResolvedSource::File(file.clone()), &classes)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("it labels none of the 2 images (line 3 names \"y/2.jpg\"")
                && e.contains("named like \"a/1.png\""),
            "{e}"
        );
        // One image labelled is enough: the others are unlabelled, as in any partial file.
        let labels = resolve_labels(
            &self::names(&["a/1.png", "x/1.jpg"]),
            &ResolvedSource::File(file),
            &classes,
        )
        .unwrap();
        assert_eq!(labels, [None, Some(0)]);
    }

    #[test]
    fn csv_fields_unescape_doubled_quotes_as_rfc_4180_says() {
        let file = LabelFile::parse(
            "filename,label\n\"say \"\"hi\"\".jpg\",\"a, \"\"quoted\"\" class\"\n",
            "labels.csv",
        )
        .unwrap();
        assert_eq!(file.entries[1].path, "say \"hi\".jpg");
        assert_eq!(file.entries[1].label, "a, \"quoted\" class");
    }

    #[test]
    fn images_are_recognised_by_extension() {
        assert!(is_image("a/b/IMG_1.JPG"));
        assert!(is_image("x.webp"));
        assert!(!is_image("a/map.txt"));
        assert!(!is_image("a/.hidden.jpg"));
        assert!(!is_image("noext"));
        assert_eq!(normalize_prefix("./photos/"), "photos/");
        assert_eq!(normalize_prefix("photos"), "photos/");
    }

    #[test]
    fn listing_keeps_images_and_names_the_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = fleet_storage::local::LocalStore::create(dir.path(), "ctr").unwrap();
        for key in [
            "photos/cat/1.JPG",
            "photos/cat/scan.tiff",
            "photos/dog/2.png",
            "photos/dog/.DS_Store",
            "photos/notes.txt",
            "elsewhere/3.jpg",
        ] {
            store.put(key, b"x").unwrap();
        }
        let collection = list(&store, "./photos").unwrap();
        assert_eq!(collection.names, names(&["cat/1.JPG", "dog/2.png"]));
        assert_eq!(
            collection.not_images,
            names(&["cat/scan.tiff", "notes.txt"])
        );
        let note = collection.not_images_note().unwrap();
        assert!(
            note.starts_with("2 files under photos/ are not scored")
                && note.ends_with(": cat/scan.tiff, notes.txt"),
            "{note}"
        );
        let many = Collection {
            not_images: (0..7).map(|i| format!("{i}.txt")).collect(),
            ..collection
        };
        let note = many.not_images_note().unwrap();
        assert!(
            note.ends_with("0.txt, 1.txt, 2.txt, 3.txt, 4.txt and 2 more"),
            "{note}"
        );
        let all_images = Collection {
            not_images: vec![],
            ..many
        };
        assert_eq!(all_images.not_images_note(), None);
    }

    #[test]
    fn pages_come_labelled_and_a_folder_that_is_no_class_stops_them_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = fleet_storage::local::LocalStore::create(dir.path(), "ctr").unwrap();
        let classes = class_names();
        let (first, second) = (&classes[0], &classes[1]);
        // A full page of the first class, then the second class, then a folder of no class.
        for i in 0..fleet_storage::LIST_PAGE {
            store.put(&format!("p/{first}/{i:05}.png"), b"x").unwrap();
        }
        store.put(&format!("p/{second}/0.png"), b"x").unwrap();
        store.put("p/notes.txt", b"x").unwrap();
        let known = Classes::new(&classes, None);
        let mut pages = Vec::new();
        let listed = for_each_page(
            &store,
            "p",
            &LabelSource::Folders,
            &known,
            true,
            &mut |page| {
                pages.push(page);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((listed.images, listed.labelled), (5_001, 5_001));
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[0].len(), fleet_storage::LIST_PAGE);
        assert!(pages[0].iter().all(|e| e.label == Some(0)));
        let labels: Vec<Option<u32>> = pages[1].iter().map(|e| e.label).collect();
        assert_eq!(labels, [Some(1)]);
        // The same, with a folder of no class after the first page: checked up front as far
        // as the first page goes, refused when its page comes.
        store.put("p/zebra-crossing/0.png", b"x").unwrap();
        check(&store, "p", &LabelSource::Folders, &known, true).unwrap();
        let mut handed = 0;
        let error = for_each_page(
            &store,
            "p",
            &LabelSource::Folders,
            &known,
            true,
            &mut |page| {
                handed += page.len();
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(handed, fleet_storage::LIST_PAGE);
        assert!(error.to_string().contains("zebra-crossing"), "{error}");
        assert!(matches!(
            check(&store, "q", &LabelSource::None, &known, true),
            Err(DatasetError::NoImages { .. })
        ));
    }

    #[test]
    fn folder_labels_name_classes() {
        let n = names(&["cat/1.jpg", "x/dog/2.jpg", "top.jpg"]);
        let got = resolve_labels(
            &n,
            &ResolvedSource::Folders,
            &Classes::new(&class_names(), None),
        )
        .unwrap();
        assert_eq!(got, vec![Some(0), Some(1), None]);
        let n = names(&["cow/1.jpg", "horse/2.jpg", "cat/3.jpg"]);
        let e = resolve_labels(
            &n,
            &ResolvedSource::Folders,
            &Classes::new(&class_names(), None),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"cow\", \"horse\" are not a class"), "{e}");
        assert!(e.contains("--classes"), "{e}");
    }

    #[test]
    fn map_files_match_by_path_then_by_file_name() {
        let file = LabelFile::parse(
            "file\tcifar10_label_index\tclass\n./a/1.png\t2\tship\n2.png\t1\tdog\n",
            "labels.tsv",
        )
        .unwrap();
        let n = names(&["a/1.png", "b/2.png", "c/3.png"]);
        let got = resolve_labels(
            &n,
            &ResolvedSource::File(file),
            &Classes::new(&class_names(), None),
        )
        .unwrap();
        assert_eq!(got, vec![Some(2), Some(1), None]);
    }

    #[test]
    fn an_entry_labels_the_one_image_it_names() {
        let classes = class_names();
        let resolve = |text: &str, images: &[&str]| {
            let file = LabelFile::parse(text, "map.txt").unwrap();
            resolve_labels(
                &names(images),
                &ResolvedSource::File(file),
                &Classes::new(&classes, None),
            )
        };
        // A path labels that file, not another of the same name in another folder.
        assert_eq!(
            resolve(
                "airplane/0001.jpg\t0\n",
                &["airplane/0001.jpg", "cat/0001.jpg"]
            )
            .unwrap(),
            vec![Some(0), None]
        );
        // Another machine's paths label the image they end in.
        assert_eq!(
            resolve(
                "/data/cifar/cat/0001.jpg\t0\n/data/cifar/dog/0001.jpg\t1\n",
                &["cat/0001.jpg", "dog/0001.jpg", "0001.jpg"]
            )
            .unwrap(),
            vec![Some(0), Some(1), None]
        );
        // A bare file name borne by two images labels neither: an error naming them.
        let e = resolve("0001.jpg\t0\n", &["airplane/0001.jpg", "cat/0001.jpg"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1 names \"0001.jpg\", which 2 images bear")
                && e.contains("\"cat/0001.jpg\""),
            "{e}"
        );
        // A bare name that is an image at the top labels that one only.
        assert_eq!(
            resolve("0001.jpg\t2\n", &["0001.jpg", "cat/0001.jpg"]).unwrap(),
            vec![Some(2), None]
        );
        // One file, two labels: both lines named.
        let e = resolve("a.jpg\t1\nb.jpg\t2\na.jpg\t3\n", &["a.jpg", "b.jpg"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lines 1 and 3 label \"a.jpg\""), "{e}");
        // The same label twice is no contradiction.
        assert_eq!(
            resolve("a.jpg\t1\na.jpg\t1\n", &["a.jpg"]).unwrap(),
            vec![Some(1)]
        );
        // A first row whose path is an image is data, not a header: its bad label is named.
        let e = resolve("airplane/0001.jpg\tplanee\n", &["airplane/0001.jpg"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: \"planee\""), "{e}");
    }

    #[test]
    fn csv_labels_take_names_or_indices_and_quoting() {
        let file =
            LabelFile::parse("filename,label\n\"a, b.jpg\",dog\nc.jpg,0\n", "labels.csv").unwrap();
        let n = names(&["a, b.jpg", "c.jpg", "filename"]);
        let got = resolve_labels(
            &n,
            &ResolvedSource::File(file),
            &Classes::new(&class_names(), None),
        )
        .unwrap();
        assert_eq!(got, vec![Some(1), Some(0), None]);
        let file = LabelFile::parse("a.jpg,cat\nb.jpg,7\n", "labels.csv").unwrap();
        let e = resolve_labels(
            &names(&["a.jpg", "b.jpg"]),
            &ResolvedSource::File(file),
            &Classes::new(&class_names(), None),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2: \"7\""), "{e}");
    }

    #[test]
    fn imagenet_lists_resolve_by_id_and_by_names_that_are_unambiguous() {
        let names = ["tench", "crane", "crane"].map(String::from);
        let ids = ["n01440764", "n02012849", "n03126707"].map(String::from);
        let with_ids = Classes::new(&names, Some(&ids));
        let n = self::names(&[
            "val/n01440764/1.JPEG",
            "val/n03126707/2.JPEG",
            "tench/3.jpg",
        ]);
        let got = resolve_labels(&n, &ResolvedSource::Folders, &with_ids).unwrap();
        assert_eq!(got, vec![Some(0), Some(2), Some(0)]);
        // "crane" names two classes: refused, saying which and what to do.
        let plain = Classes::new(&names, None);
        let e = resolve_labels(
            &self::names(&["crane/1.jpg"]),
            &ResolvedSource::Folders,
            &plain,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"crane\" names 2 classes (indices 1, 2)"),
            "{e}"
        );
        assert!(e.contains("class id"), "{e}");
        let file = LabelFile::parse("a.jpg,n02012849\nb.jpg,2\nc.jpg,tench\n", "l.csv").unwrap();
        let got = resolve_labels(
            &self::names(&["a.jpg", "b.jpg", "c.jpg"]),
            &ResolvedSource::File(file),
            &with_ids,
        )
        .unwrap();
        assert_eq!(got, vec![Some(1), Some(2), Some(0)]);
        let file = LabelFile::parse("a.jpg,crane\n", "l.csv").unwrap();
        let e = resolve_labels(
            &self::names(&["a.jpg"]),
            &ResolvedSource::File(file),
            &plain,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 1: \"crane\" names 2 classes"), "{e}");
    }

    #[test]
    fn label_sources_parse() {
        assert_eq!("folders".parse(), Ok(LabelSource::Folders));
        assert_eq!("none".parse(), Ok(LabelSource::None));
        assert_eq!("map.txt".parse(), Ok(LabelSource::File("map.txt".into())));
        assert!("".parse::<LabelSource>().is_err());
    }
}
