#![warn(missing_docs)]
//! The blob store seam: one container of named blobs.
//!
//! Two implementations sit side by side: [`local::LocalStore`] (a directory per container,
//! the embedded default) and [`azure::AzureStore`] (Azure Blob Storage). The API is blocking:
//! both back ends are blocking I/O, and async callers run it on the blocking pool.

pub mod account;
pub mod azure;
pub mod local;

pub use account::{AccountArgs, Containers, FleetStoreArgs, StoreArgs};

use std::fmt::Debug;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::Path;

/// A cause kept with a [`StoreError`]: an `io::Error`, the Azure SDK's error, a parse error.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed. Each message names the store and the blob; [`StoreError::kind`]
/// says what a caller can do about it, and the cause (an `io::Error`, the SDK's error) is kept
/// as the error's source, never flattened into its message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The blob is not there.
    #[error("{store} has no blob {key}")]
    NotFound {
        /// The store, as [`BlobStore::describe`] says it.
        store: String,
        /// The blob's name.
        key: String,
    },
    /// The container is not there.
    #[error(
        "container {container} does not exist in {location}; create it or stage the data first (`producer stage`)"
    )]
    NoContainer {
        /// The container's name.
        container: String,
        /// The directory or account it was looked for in.
        location: String,
    },
    /// A container this process does not serve: a fleet restricted to an allow-list
    /// (`--containers`), or an embedded run, which serves its own container alone.
    #[error(
        "container {container} is not served here (this fleet serves {}); add it to the \
         workers' and collector's FLEET_CONTAINERS, or submit the job to one of those",
        served.join(", ")
    )]
    NotServed {
        /// The container a job named.
        container: String,
        /// Those served.
        served: Vec<String>,
    },
    /// A container name Azure would refuse, from a message: never opened.
    #[error("{0}")]
    BadContainer(String),
    /// The store refused access to the blob.
    #[error("{store}: access denied to {key}{hint}")]
    Denied {
        /// The store, as [`BlobStore::describe`] says it.
        store: String,
        /// The blob's name.
        key: String,
        /// What to check, where the store knows (empty, or starting with `; `).
        hint: &'static str,
        /// What the store said.
        #[source]
        source: Cause,
    },
    /// The store is not configured so that it can be opened (no store given, a connection
    /// string that does not parse, a container name Azure would refuse).
    #[error("{message}")]
    Config {
        /// What is wrong, and what to do.
        message: String,
        /// What failed underneath, if anything did.
        #[source]
        source: Option<Cause>,
    },
    /// A name that is in the store but is no blob: a FIFO, socket or device in a local
    /// store (reading a FIFO would wait for a writer forever).
    #[error("{store}: {key} is not a regular file")]
    NotABlob {
        /// The store, as [`BlobStore::describe`] says it.
        store: String,
        /// The name.
        key: String,
    },
    /// The store failed or could not be reached.
    #[error("{store}: {operation} {key} failed")]
    Io {
        /// The store, as [`BlobStore::describe`] says it.
        store: String,
        /// What was being done: `reading`, `writing`, `listing`, ...
        operation: &'static str,
        /// The blob's name.
        key: String,
        /// What failed.
        #[source]
        source: Cause,
    },
    /// The store cannot keep what it is given, and will not until a person acts: the disk is
    /// full or read-only, or a path the store needs as a directory is a file.
    #[error("{store}: {operation} {key} failed, and will until the store is mended")]
    Persistent {
        /// The store, as [`BlobStore::describe`] says it.
        store: String,
        /// What was being done.
        operation: &'static str,
        /// The blob's name.
        key: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A local file to upload cannot be read.
    #[error("cannot read {}", printable(path))]
    LocalFile {
        /// The file.
        path: std::path::PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A blob that was read whole but does not hold what its name says it holds (a job's plan
    /// that is not JSON, a stored partition that does not decode). Reading it again gives the
    /// same bytes: no retry mends it.
    #[error("{store}: {what} {key} cannot be read")]
    Corrupt {
        /// The store, as [`BlobStore::describe`] says it.
        store: String,
        /// The blob's name.
        key: String,
        /// What it should hold: `job plan`, `stored partition`, ...
        what: &'static str,
        /// Why it does not parse.
        #[source]
        source: Cause,
    },
    /// A blob name that could reach outside the container or mean different things to the
    /// two stores (see [`check_key`]).
    #[error(
        "invalid blob name {0:?}: blob names are relative paths of at most {MAX_KEY_BYTES} bytes, \
         without `.` or `..` segments, empty segments, backslashes or control characters"
    )]
    BadKey(String),
}

/// What a caller can do about a [`StoreError`]: the part of it a retry policy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The blob is not there.
    NotFound,
    /// This one blob cannot be used: its name is refused, access to it is denied, or it is
    /// no regular blob. Other blobs may be fine; retrying this one changes nothing.
    Blob,
    /// The blob was read, and its content is not what it should be. Retrying changes
    /// nothing; what depends on it cannot go on.
    Corrupt,
    /// The store as set up: a missing container, a configuration that cannot work, a disk
    /// that is full. Nothing succeeds until a person fixes it.
    Setup,
    /// The store failed or could not be reached: the same call may succeed later.
    Transient,
}

impl ErrorKind {
    /// Whether the same call may succeed later: the only kind a retry loop waits on.
    pub fn is_transient(self) -> bool {
        self == ErrorKind::Transient
    }
}

impl StoreError {
    /// What kind of failure this is, for retry decisions.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::Denied { .. }
            | StoreError::NotABlob { .. }
            | StoreError::BadKey(_)
            | StoreError::NotServed { .. }
            | StoreError::BadContainer(_) => ErrorKind::Blob,
            StoreError::Corrupt { .. } => ErrorKind::Corrupt,
            StoreError::NoContainer { .. }
            | StoreError::Config { .. }
            | StoreError::Persistent { .. }
            | StoreError::LocalFile { .. } => ErrorKind::Setup,
            StoreError::Io { .. } => ErrorKind::Transient,
        }
    }

    /// Whether the blob is not there.
    pub fn is_not_found(&self) -> bool {
        self.kind() == ErrorKind::NotFound
    }

    /// A configuration that cannot work, said in `message` alone.
    pub fn config(message: impl Into<String>) -> Self {
        StoreError::Config {
            message: message.into(),
            source: None,
        }
    }

    /// Blob `key` of `store` read whole, but not `what` it should hold, for `source`.
    pub fn corrupt(
        store: &dyn BlobStore,
        key: &str,
        what: &'static str,
        source: impl Into<Cause>,
    ) -> Self {
        StoreError::Corrupt {
            store: store.describe(),
            key: key.to_owned(),
            what,
            source: source.into(),
        }
    }

    /// An `io::Error` of the local file system met while `operation` on `key` of `store`, by
    /// its kind: not found, denied, persistent (a full or read-only disk, a file where a
    /// directory must be), or else transient.
    pub fn from_io(store: String, operation: &'static str, key: &str, e: std::io::Error) -> Self {
        use std::io::ErrorKind as Io;
        let key = key.to_owned();
        match e.kind() {
            Io::NotFound => StoreError::NotFound { store, key },
            Io::PermissionDenied => StoreError::Denied {
                store,
                key,
                hint: "",
                source: e.into(),
            },
            Io::StorageFull
            | Io::ReadOnlyFilesystem
            | Io::NotADirectory
            | Io::IsADirectory
            | Io::QuotaExceeded
            | Io::FileTooLarge => StoreError::Persistent {
                store,
                operation,
                key,
                source: e,
            },
            _ => StoreError::Io {
                store,
                operation,
                key,
                source: e.into(),
            },
        }
    }
}

/// A blob container.
pub trait BlobStore: Send + Sync + Debug {
    /// Reads a whole blob.
    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let mut bytes = Vec::new();
        self.open(key)?
            .read_to_end(&mut bytes)
            .map_err(|e| StoreError::from_io(self.describe(), "reading", key, e))?;
        Ok(bytes)
    }

    /// Reads a whole blob, or `None` when it is not there.
    fn get_if_exists(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.get(key) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Streams a blob.
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StoreError>;

    /// Writes a whole blob, replacing any previous one atomically: readers see the old or the
    /// new blob, never a part.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError>;

    /// Uploads a local file (large files in blocks where the back end has them).
    fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError>;

    /// Whether a blob exists.
    fn exists(&self, key: &str) -> Result<bool, StoreError>;

    /// Names and sizes (in bytes) of the blobs under `prefix`, sorted by name.
    fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut all = Vec::new();
        self.list_pages(prefix, &mut |page| {
            all.extend(page.into_iter().map(|listed| (listed.key, listed.size)));
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(all)
    }

    /// The blobs under `prefix` (name, size, version), in name order, handed to `each` a page
    /// (at most [`LIST_PAGE`] names) at a time as the listing goes: a caller that needs the
    /// names one page at a time never holds the whole listing. `each` stops the listing by
    /// breaking; an error from it stops the listing and is returned.
    fn list_pages(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(Vec<Listed>) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError>;

    /// Names of the blobs under `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list_sized(prefix)?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// Deletes a blob; deleting a missing blob is not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Stages `bytes` as block `block` of blob `key`, to be made part of it by
    /// [`BlobStore::commit_blocks`]; until then the blob (if any) is unchanged. Staging the same
    /// block again replaces it, so a retried or repeated call is harmless. This is how a large
    /// blob is written a part at a time by a process that never holds all of it.
    fn stage_block(&self, key: &str, block: u32, bytes: &[u8]) -> Result<(), StoreError>;

    /// Writes blob `key` as the concatenation of its staged `blocks`, in that order, replacing
    /// it atomically. Each block must have been staged. Committing the same blocks again gives
    /// the same blob, until [`BlobStore::discard_blocks`]: a commit whose caller failed
    /// afterwards can be retried.
    fn commit_blocks(&self, key: &str, blocks: &[u32]) -> Result<(), StoreError>;

    /// Drops what was staged for `key`; the blob itself, if committed, stays. On Azure a
    /// commit already drops the blocks it leaves out, and blocks never committed are dropped
    /// by the service after a week (it has no call to drop them sooner): there this does
    /// nothing.
    fn discard_blocks(&self, key: &str) -> Result<(), StoreError>;

    /// Where this is, for messages: a directory or a container URL.
    fn describe(&self) -> String;

    /// The container's name: what a job's messages name it by.
    fn container(&self) -> &str;

    /// Where blob `key` opens from outside this program: a file path or the blob's URL.
    fn location(&self, key: &str) -> String;

    /// Where blob `key` opens in a browser with no credentials for `lifetime`: a local file's
    /// path; an Azure blob's URL with a read-only signature for that blob alone (as HTML when
    /// its name ends in `.html`). `None` where no such link can be made (a store reached with
    /// a managed identity holds no key to sign with).
    fn shareable(&self, key: &str, lifetime: std::time::Duration) -> Option<String>;
}

/// A blob as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    /// Its name.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// A value that changes whenever its content is written: Azure's ETag; on a local disk,
    /// the file's inode and modification time (a write replaces the file).
    pub version: String,
}

/// Most names in one page of [`BlobStore::list_pages`]: Azure's page.
pub const LIST_PAGE: usize = 5_000;

/// Longest blob name Azure Blob Storage accepts.
pub const MAX_KEY_BYTES: usize = 1024;

/// A local path as messages and logs show it: control characters (a newline, a terminal's
/// escape sequence in a file's name) written as escapes, so that a hostile name cannot forge
/// lines or drive the terminal. Names that are not UTF-8 are shown lossily.
pub fn printable(path: &std::path::Path) -> String {
    let shown = path.display().to_string();
    if !shown.chars().any(char::is_control) {
        return shown;
    }
    shown
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Rejects names that could escape the container or mean different things to the two back
/// ends. Users' own file names (spaces, accents, `#`, ...) are valid: image collections are
/// named by their owners, not by this program.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !key.chars().any(|c| c.is_control() || c == '\\');
    if valid {
        Ok(())
    } else {
        Err(StoreError::BadKey(key.into()))
    }
}

/// Refuses a container name Azure Blob Storage would refuse (3 to 63 lowercase letters,
/// digits and hyphens, beginning and ending with a letter or digit, no two hyphens together),
/// in every store: the local store makes it a directory under its root, where `..`, `a/b` or
/// an absolute path would reach outside the root.
pub fn check_container(name: &str) -> Result<(), String> {
    let valid = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a container name: 3 to 63 lowercase letters, digits and single \
             hyphens, beginning and ending with a letter or digit (Azure's rule, kept by every \
             store)"
        ))
    }
}

/// Refuses a listing prefix that could reach outside the container: its whole path parts
/// (those before the last `/`) and its last part must each be a valid key part, so `..`,
/// `../x`, `/etc` and `a//b` are refused; an empty prefix lists the whole container.
pub fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    // The prefix with a stand-in last part is a key when the prefix ends at a `/`.
    let probe = if prefix.ends_with('/') {
        format!("{prefix}x")
    } else {
        prefix.to_owned()
    };
    check_key(&probe).map_err(|_| StoreError::BadKey(prefix.into()))
}

#[cfg(test)]
mod tests {
    use super::{ErrorKind, StoreError, check_container, check_key, check_prefix};

    #[test]
    fn each_error_has_the_kind_a_retry_policy_reads() {
        let (store, key) = (String::from("s"), String::from("k"));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let io = StoreError::from_io(store.clone(), "reading", &key, reset);
        assert_eq!(io.kind(), ErrorKind::Transient);
        // The cause is kept, not flattened into the message.
        assert_eq!(io.to_string(), "s: reading k failed");
        let cause = std::error::Error::source(&io).expect("the io::Error is its source");
        assert_eq!(cause.to_string(), "connection reset");
        for persistent in [
            std::io::ErrorKind::StorageFull,
            std::io::ErrorKind::NotADirectory,
            std::io::ErrorKind::ReadOnlyFilesystem,
        ] {
            let e = StoreError::from_io(store.clone(), "writing", &key, persistent.into());
            assert_eq!(e.kind(), ErrorKind::Setup, "{persistent:?}");
        }
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let denied = StoreError::from_io(store.clone(), "reading", &key, denied);
        assert_eq!(denied.kind(), ErrorKind::Blob);
        let gone = StoreError::NotFound {
            store: store.clone(),
            key: key.clone(),
        };
        assert!(gone.is_not_found());
        assert_eq!(StoreError::BadKey("../x".into()).kind(), ErrorKind::Blob);
        assert_eq!(StoreError::config("no store").kind(), ErrorKind::Setup);
        let corrupt = StoreError::Corrupt {
            store,
            key,
            what: "job plan",
            source: "expected value at line 1 column 1".into(),
        };
        assert_eq!(corrupt.kind(), ErrorKind::Corrupt);
        assert!(!corrupt.kind().is_transient());
    }

    #[test]
    fn container_names_are_azures() {
        for good in ["cifar", "photos-2024", "a1b", &"x".repeat(63)] {
            assert!(check_container(good).is_ok(), "{good}");
        }
        for bad in [
            "..",
            "../x",
            "/tmp/x",
            "c",
            "ab",
            "Photos",
            "a--b",
            "-ab",
            "ab-",
            "a_b",
            "a.b",
            "",
            &"x".repeat(64),
        ] {
            assert!(check_container(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_stay_inside_the_container() {
        for good in ["", "photos", "photos/", "datasets/photos/x", "IMG "] {
            assert!(check_prefix(good).is_ok(), "{good:?}");
        }
        for bad in ["..", "../", "../x", "/etc", "a//b", "a/../b", "./"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_stay_inside_the_container() {
        assert!(check_key("results/job-1/scores.csv").is_ok());
        assert!(check_key("photos/Été 2019/IMG #1 (copy).jpg").is_ok());
        for bad in ["", "/etc/passwd", "a/../b", "a//b", "./x", "a\\b", "a\nb"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }
}
