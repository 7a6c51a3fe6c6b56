//! The two stores keep one contract: what the collector and the producer rely on behaves the
//! same in a local directory and in Azure Blob Storage (Azurite).

use std::ops::ControlFlow;
use std::sync::Arc;

use fleet_storage::local::LocalStore;
use fleet_storage::{AccountArgs, BlobStore};
use fleet_tests::{Services, unique};

/// A blob written a block at a time: staged blocks stay invisible until committed, a block
/// staged twice keeps its last bytes, a commit can be repeated, and blocks are joined in the
/// order the commit names them, not the order they were staged in.
fn blocks_build_one_blob(store: &dyn BlobStore) {
    let key = "results/j/scores.csv";
    store.stage_block(key, 2, b"third\n").unwrap();
    store.stage_block(key, 1, b"second, first try\n").unwrap();
    store.stage_block(key, 0, b"header\n").unwrap();
    store.stage_block(key, 1, b"second\n").unwrap();
    assert!(
        !store.exists(key).unwrap(),
        "{}: visible before the commit",
        store.describe()
    );
    assert!(
        store.list("results/").unwrap().is_empty(),
        "{}",
        store.describe()
    );
    // Twice: a collector that failed after its commit commits again.
    for _ in 0..2 {
        store.commit_blocks(key, &[0, 1, 2]).unwrap();
        assert_eq!(
            store.get(key).unwrap(),
            b"header\nsecond\nthird\n",
            "{}",
            store.describe()
        );
    }
    store.discard_blocks(key).unwrap();
    assert_eq!(
        store.list("results/").unwrap(),
        [key],
        "{}",
        store.describe()
    );
    // A block never staged is an error, and the blob stays as it was.
    assert!(store.commit_blocks("results/j/other.csv", &[0]).is_err());
    assert!(!store.exists("results/j/other.csv").unwrap());
}

/// A listing comes in name order, whatever order the blobs were written in, and stops when
/// the caller says so.
fn listings_come_in_name_order(store: &dyn BlobStore) {
    for key in [
        "photos/b/2.png",
        "photos/a0.jpg",
        "photos/a/1.jpg",
        "photos/a.jpg",
    ] {
        store.put(key, b"x").unwrap();
    }
    let mut pages = Vec::new();
    store
        .list_pages("photos/", &mut |page| {
            pages.push(
                page.into_iter()
                    .map(|listed| listed.key)
                    .collect::<Vec<_>>(),
            );
            Ok(ControlFlow::Break(()))
        })
        .unwrap();
    assert_eq!(
        pages,
        [[
            "photos/a.jpg",
            "photos/a/1.jpg",
            "photos/a0.jpg",
            "photos/b/2.png"
        ]],
        "{}",
        store.describe()
    );
}

/// A listing tells a blob rewritten with other bytes of the same size from the one before it
/// (what an incremental job relies on), and an untouched blob keeps its version.
fn versions_change_with_every_write(store: &dyn BlobStore) {
    let listed = |key: &str| {
        let mut found = None;
        store
            .list_pages(key, &mut |page| {
                found = page.into_iter().find(|listed| listed.key == key);
                Ok(ControlFlow::Break(()))
            })
            .unwrap();
        found.unwrap_or_else(|| panic!("{key} is not listed in {}", store.describe()))
    };
    store.put("v/a.png", b"first").unwrap();
    store.put("v/b.png", b"other").unwrap();
    let (a, b) = (listed("v/a.png"), listed("v/b.png"));
    assert_eq!(a.size, 5);
    assert!(!a.version.is_empty(), "{}", store.describe());
    store.put("v/a.png", b"again").unwrap();
    let rewritten = listed("v/a.png");
    assert_eq!(rewritten.size, 5);
    assert_ne!(a.version, rewritten.version, "{}", store.describe());
    assert_eq!(listed("v/b.png"), b, "{}", store.describe());
}

#[test]
fn the_local_store_keeps_the_contract() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalStore::create(root.path(), "ctr").unwrap();
    blocks_build_one_blob(&store);
    listings_come_in_name_order(&store);
    versions_change_with_every_write(&store);
}

#[test]
fn the_azure_store_keeps_the_contract() {
    let services = Services::get();
    let container = unique("blocks");
    let store: Arc<dyn BlobStore> = AccountArgs::new(services.connection_string.clone())
        .open(&container, true)
        .expect("the test container");
    blocks_build_one_blob(store.as_ref());
    listings_come_in_name_order(store.as_ref());
    versions_change_with_every_write(store.as_ref());
    for key in store.list("").unwrap() {
        store.delete(&key).unwrap();
    }
}
