//! A directory per container: the embedded default, and what a laptop user browses.

use std::fs;
use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use super::{BlobStore, Listed, StoreError, check_container, check_key, check_prefix};

/// A container as a directory under a root: blobs are files, names are relative paths, and a
/// write is a temporary file renamed into place.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
    container: String,
}

impl LocalStore {
    /// The container `container` under `root`, created if missing.
    pub fn create(root: &Path, container: &str) -> Result<Self, StoreError> {
        let dir = Self::container_dir(root, container)?;
        fs::create_dir_all(&dir).map_err(|e| {
            StoreError::from_io(crate::printable(&dir), "creating", "the container", e)
        })?;
        Ok(Self {
            dir,
            container: container.to_owned(),
        })
    }

    /// The existing container `container` under `root`.
    pub fn open(root: &Path, container: &str) -> Result<Self, StoreError> {
        let dir = Self::container_dir(root, container)?;
        if !dir.is_dir() {
            return Err(StoreError::NoContainer {
                container: container.into(),
                location: crate::printable(root),
            });
        }
        Ok(Self {
            dir,
            container: container.to_owned(),
        })
    }

    /// The directory of `container` under `root`: a name Azure accepts, which never reaches
    /// outside the root.
    fn container_dir(root: &Path, container: &str) -> Result<PathBuf, StoreError> {
        check_container(container).map_err(StoreError::config)?;
        Ok(root.join(container))
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.dir.join(key))
    }

    /// The path of `key`, once no folder on the way to it, nor its file, is a link: a blob
    /// store has no links, and one planted in a container (`photos/evil -> /etc`) must not
    /// reach outside it, to read or to write. Parts not there yet are fine (a write makes
    /// them).
    fn unlinked(&self, key: &str) -> Result<PathBuf, StoreError> {
        let path = self.path(key)?;
        let mut at = self.dir.clone();
        let mut named = String::new();
        for part in key.split('/') {
            at.push(part);
            named.push_str(part);
            match fs::symlink_metadata(&at) {
                Ok(metadata) if metadata.file_type().is_symlink() => {
                    return Err(StoreError::NotABlob {
                        store: self.describe(),
                        key: named,
                    });
                }
                Ok(_) => named.push('/'),
                // Not there: nothing below it is either.
                Err(_) => break,
            }
        }
        Ok(path)
    }

    /// Lists the directory of keys beginning with `dir` (empty, or ending in `/`) depth first,
    /// each directory's entries in an order that makes the keys come out in name order: a
    /// subdirectory sorts as its name followed by `/`. Keys beginning with `prefix` go into
    /// `page`, handed to `each` whenever it is full, until `each` breaks.
    fn walk(
        &self,
        dir: &str,
        prefix: &str,
        page: &mut Vec<Listed>,
        each: &mut dyn FnMut(Vec<Listed>) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<ControlFlow<()>, StoreError> {
        let entries = match fs::read_dir(self.dir.join(dir)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ControlFlow::Continue(()));
            }
            Err(e) => return Err(self.io("listing", prefix, e)),
        };
        let mut children = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io("listing", prefix, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue; // writes in progress, and staged blocks
            }
            // Of the entry itself: a link (dangling, looping, or leading out of the
            // container) is no blob, and is not followed.
            let metadata = entry
                .metadata()
                .map_err(|e| self.io("listing", prefix, e))?;
            if metadata.is_dir() {
                children.push((format!("{dir}{name}/"), None));
            } else if metadata.is_file() {
                children.push((format!("{dir}{name}"), Some(metadata)));
            }
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, metadata) in children {
            let flow = match metadata {
                // A directory that cannot hold a key with the prefix is not entered.
                None if key.starts_with(prefix) || prefix.starts_with(&key) => {
                    self.walk(&key, prefix, page, each)?
                }
                Some(metadata) if key.starts_with(prefix) => {
                    page.push(Listed {
                        version: version(&metadata),
                        size: metadata.len(),
                        key,
                    });
                    if page.len() == super::LIST_PAGE {
                        each(std::mem::take(page))?
                    } else {
                        ControlFlow::Continue(())
                    }
                }
                _ => ControlFlow::Continue(()),
            };
            if flow.is_break() {
                return Ok(flow);
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    /// Where the blocks staged for `key` wait: under a directory whose name no key can take
    /// (a name starting with `.` is never listed).
    fn blocks_dir(&self, key: &str) -> Result<PathBuf, StoreError> {
        check_key(key)?;
        Ok(self.dir.join(".blocks").join(key))
    }

    fn io(&self, operation: &'static str, key: &str, e: std::io::Error) -> StoreError {
        StoreError::from_io(self.describe(), operation, key, e)
    }

    /// Writes through a temporary file and renames it, so a crash never leaves half a blob.
    fn write_atomically(
        &self,
        key: &str,
        write: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let path = self.unlinked(key)?;
        let parent = path.parent().expect("keys are relative to the container");
        fs::create_dir_all(parent).map_err(|e| self.io("writing", key, e))?;
        // Short whatever the blob's name (a 255-byte name is the file system's limit), and
        // unique among this process's writes; hidden, so listings leave it out.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = parent.join(format!(
            ".{}.{}.tmp",
            std::process::id(),
            WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = fs::File::create(&tmp)?;
            write(&mut file)?;
            file.sync_data()?;
            fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| self.io("writing", key, e))
    }
}

impl BlobStore for LocalStore {
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, StoreError> {
        let path = self.unlinked(key)?;
        // Only regular files are blobs: opening a FIFO would wait for a writer forever.
        let metadata = fs::metadata(&path).map_err(|e| self.io("reading", key, e))?;
        if !metadata.is_file() {
            return Err(StoreError::NotABlob {
                store: self.describe(),
                key: key.into(),
            });
        }
        let file = fs::File::open(&path).map_err(|e| self.io("reading", key, e))?;
        Ok(Box::new(file))
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.write_atomically(key, |file| file.write_all(bytes))
    }

    fn put_file(&self, key: &str, source: &Path) -> Result<(), StoreError> {
        let mut input = fs::File::open(source).map_err(|e| StoreError::LocalFile {
            path: source.to_owned(),
            source: e,
        })?;
        self.write_atomically(key, |file| std::io::copy(&mut input, file).map(drop))
    }

    fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.unlinked(key)?.is_file())
    }

    fn list_pages(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(Vec<Listed>) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        check_prefix(prefix)?;
        let start = match prefix.rfind('/') {
            Some(i) => &prefix[..=i],
            None => "",
        };
        // A folder reached through a link holds no blobs of this container.
        if !start.is_empty() && self.unlinked(start.trim_end_matches('/')).is_err() {
            return Ok(());
        }
        let mut page = Vec::new();
        if self.walk(start, prefix, &mut page, each)?.is_continue() && !page.is_empty() {
            // The last page: whether the caller would stop after it makes no difference.
            let _ = each(page)?;
        }
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        match fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io("deleting", key, e)),
            _ => Ok(()),
        }
    }

    fn stage_block(&self, key: &str, block: u32, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = self.blocks_dir(key)?;
        fs::create_dir_all(&dir).map_err(|e| self.io("staging a block of", key, e))?;
        let path = dir.join(format!("{block:010}"));
        let tmp = dir.join(format!("{block:010}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_data()?;
            fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| self.io("staging a block of", key, e))
    }

    fn commit_blocks(&self, key: &str, blocks: &[u32]) -> Result<(), StoreError> {
        let dir = self.blocks_dir(key)?;
        let missing = |block: u32| StoreError::Io {
            store: self.describe(),
            operation: "committing the blocks of",
            key: key.into(),
            source: format!("block {block} was never staged").into(),
        };
        self.write_atomically(key, |file| {
            for &block in blocks {
                let mut part = fs::File::open(dir.join(format!("{block:010}")))?;
                std::io::copy(&mut part, file)?;
            }
            Ok(())
        })
        .map_err(|e| match e {
            StoreError::NotFound { .. } => blocks
                .iter()
                .find(|&&b| !dir.join(format!("{b:010}")).is_file())
                .map_or(e, |&b| missing(b)),
            e => e,
        })
    }

    fn discard_blocks(&self, key: &str) -> Result<(), StoreError> {
        let dir = self.blocks_dir(key)?;
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(self.io("discarding the blocks of", key, e));
            }
            _ => {}
        }
        // The folders above it too, as far as they are empty: one per job otherwise stays.
        let top = self.dir.join(".blocks");
        for parent in dir.ancestors().skip(1).take_while(|p| p.starts_with(&top)) {
            if fs::remove_dir(parent).is_err() {
                break;
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("local container {}", crate::printable(&self.dir))
    }

    fn shareable(&self, key: &str, _lifetime: std::time::Duration) -> Option<String> {
        Some(self.location(key))
    }

    fn container(&self) -> &str {
        &self.container
    }

    fn location(&self, key: &str) -> String {
        let path = self.dir.join(key);
        crate::printable(&std::path::absolute(&path).unwrap_or(path))
    }
}

/// A file's version: its modification time (to the nanosecond) and, on Unix, its inode, which
/// changes whenever a write replaces the file (every write of this store does).
fn version(metadata: &fs::Metadata) -> String {
    let modified = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        format!("{:x}-{modified:x}", metadata.ino())
    }
    #[cfg(not(unix))]
    {
        format!("{modified:x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_no_blob() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::create(root.path(), "ctr").unwrap();
        store.put("a/x.jpg", b"x").unwrap();
        let fifo = root.path().join("ctr/a/y.jpg");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let listed: Vec<String> = store.list("a/").unwrap();
        assert_eq!(listed, ["a/x.jpg"]);
        assert!(matches!(
            store.open("a/y.jpg"),
            Err(StoreError::NotABlob { .. })
        ));
    }

    #[test]
    fn listing_comes_in_name_order_a_page_at_a_time() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::create(root.path(), "ctr").unwrap();
        for key in [
            "a0.jpg",
            "a/x.jpg",
            "a.jpg",
            "b/c/d.png",
            "ab/e.png",
            ".hidden",
        ] {
            store.put(key, b"x").unwrap();
        }
        store.stage_block("a/staged.csv", 0, b"x").unwrap();
        let mut keys = store.list("").unwrap();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(
            keys,
            ["a.jpg", "a/x.jpg", "a0.jpg", "ab/e.png", "b/c/d.png"]
        );
        keys = store.list("a").unwrap();
        assert_eq!(keys, ["a.jpg", "a/x.jpg", "a0.jpg", "ab/e.png"]);
        assert_eq!(store.list("a/").unwrap(), ["a/x.jpg"]);
        assert_eq!(store.list("b/c/").unwrap(), ["b/c/d.png"]);

        for i in 0..super::super::LIST_PAGE + 1 {
            store.put(&format!("many/{i:05}.png"), b"x").unwrap();
        }
        let mut pages = Vec::new();
        store
            .list_pages("many/", &mut |page| {
                pages.push(page.len());
                Ok(ControlFlow::Continue(()))
            })
            .unwrap();
        assert_eq!(pages, [super::super::LIST_PAGE, 1]);
    }

    #[test]
    fn put_get_list_delete() {
        let root = tempfile::tempdir().unwrap();
        let store = LocalStore::create(root.path(), "cifar").unwrap();
        store.put("results/j/scores.csv", b"a,b\n").unwrap();
        store.put("models/m.onnx", b"onnx").unwrap();
        assert_eq!(store.get("results/j/scores.csv").unwrap(), b"a,b\n");
        assert_eq!(
            store.list("results/").unwrap(),
            vec!["results/j/scores.csv"]
        );
        assert!(store.exists("models/m.onnx").unwrap());
        store.delete("models/m.onnx").unwrap();
        store.delete("models/m.onnx").unwrap();
        assert!(store.get("models/m.onnx").unwrap_err().is_not_found());
    }

    #[test]
    fn missing_container_and_bad_keys_are_clear_errors() {
        let root = tempfile::tempdir().unwrap();
        let err = LocalStore::open(root.path(), "nope").unwrap_err();
        assert!(
            err.to_string().contains("container nope does not exist"),
            "{err}"
        );
        let store = LocalStore::create(root.path(), "cifar").unwrap();
        assert!(matches!(store.get("../escape"), Err(StoreError::BadKey(_))));
    }
}
