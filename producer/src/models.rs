//! Which staged model a command means when it names none, and the name a model file is staged
//! under when the user gives none.

use fleet_protocol::job;
use fleet_storage::{BlobStore, StoreError};

/// Why no model could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    /// The container holds no staged model.
    #[error("{store} has no staged model; stage one with `producer stage --model FILE`")]
    NoModel {
        /// Where the models were looked for.
        store: String,
    },
    /// The container holds several: the user must say which.
    #[error(
        "{store} has {} staged models ({}); name one with --model-name",
        .models.len(),
        .models.join(", ")
    )]
    Several {
        /// Where the models were looked for.
        store: String,
        /// Their names.
        models: Vec<String>,
    },
    /// The container could not be listed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The models staged in the container (those with a spec), sorted by name.
pub fn staged(store: &dyn BlobStore) -> Result<Vec<String>, StoreError> {
    let prefix = job::models_prefix();
    Ok(store
        .list(prefix)?
        .iter()
        .filter_map(|key| key.strip_prefix(prefix)?.strip_suffix(".json"))
        .filter(|name| !name.contains('/'))
        .map(str::to_owned)
        .collect())
}

/// The model `named`, or when none is named, the container's only staged model.
pub fn chosen(store: &dyn BlobStore, named: Option<&str>) -> Result<String, ChoiceError> {
    if let Some(name) = named {
        return Ok(name.to_owned());
    }
    let mut models = staged(store)?;
    match models.len() {
        0 => Err(ChoiceError::NoModel {
            store: store.describe(),
        }),
        1 => Ok(models.remove(0)),
        _ => Err(ChoiceError::Several {
            store: store.describe(),
            models,
        }),
    }
}

/// The name a model file is staged under when none is given: its file name without its
/// extension (`resnet50.onnx` -> `resnet50`), each character a blob name or a shell would trip
/// on made a `-`.
pub fn name_from_file(file_name: &str) -> String {
    let stem = file_name
        .rsplit_once('.')
        .map_or(file_name, |(stem, _)| stem);
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "model".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_storage::local::LocalStore;

    #[test]
    fn the_only_staged_model_is_chosen_and_several_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::create(dir.path(), "ctr").unwrap();
        let err = chosen(&store, None).unwrap_err().to_string();
        assert!(err.contains("has no staged model"), "{err}");
        store.put("models/pets.onnx", b"onnx").unwrap();
        store.put("models/pets.json", b"{}").unwrap();
        store.put("models/pets.mean.xml", b"<x/>").unwrap();
        assert_eq!(chosen(&store, None).unwrap(), "pets");
        assert_eq!(chosen(&store, Some("other")).unwrap(), "other");
        store.put("models/cats.json", b"{}").unwrap();
        let err = chosen(&store, None).unwrap_err().to_string();
        assert!(
            err.contains("has 2 staged models (cats, pets); name one with --model-name"),
            "{err}"
        );
    }

    #[test]
    fn a_file_name_gives_a_model_name() {
        assert_eq!(
            name_from_file("resnet20_meanimage_159.dnn"),
            "resnet20_meanimage_159"
        );
        assert_eq!(name_from_file("squeezenet1.1-7.onnx"), "squeezenet1.1-7");
        assert_eq!(name_from_file("model"), "model");
        assert_eq!(name_from_file("my model.onnx"), "my-model");
        assert_eq!(name_from_file(".onnx"), "model");
    }
}
