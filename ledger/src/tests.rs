//! The ledger's reading of a job, case by case, over a local container.

use super::*;
use fleet_protocol::Summary;
use fleet_protocol::job::{self, DatasetKind, Manifest, Plan, files};
use fleet_protocol::message::{self, Score, Scored};
use fleet_storage::local::LocalStore;
use fleet_storage::{BlobStore, ErrorKind};

fn container() -> (tempfile::TempDir, LocalStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::create(dir.path(), "ctr").unwrap();
    (dir, store)
}

fn plan(budget: u32) -> Plan {
    Plan {
        models: Vec::new(),
        job: "j".into(),
        classes: vec!["zero".into(), "one".into()],
        top_k: 1,
        several_batches: false,
        max_failed_partitions: budget,
        vectors: Vec::new(),
        multi_label: None,
    }
}

fn manifest() -> Manifest {
    Manifest {
        more_models: Vec::new(),
        job: "j".into(),
        dataset: "d/".into(),
        dataset_kind: DatasetKind::Images,
        labels: "none".into(),
        labelled_images: 0,
        model: "m".into(),
        model_sha256: "0".into(),
        classes: Vec::new(),
        top_k: 1,
        partition_size: 1,
        partitions: 4,
        images: 4,
        batches: Vec::new(),
        submitted_at_ms: 0,
        published_at_ms: 1,
        incremental: None,
    }
}

/// Partition `partition` as the collector stores it: scored, or failed for `failed`.
fn scored(partition: u32, failed: Option<&str>) -> Scored {
    Scored {
        container: "ctr".into(),
        more: Vec::new(),
        model_ms: Vec::new(),
        job: "j".into(),
        partition,
        batch: "d/".into(),
        first_index: u64::from(partition),
        filenames: vec!["a.png".into()],
        scores: vec![Score {
            label: None,
            top: if failed.is_some() {
                Vec::new()
            } else {
                vec![(0, 0.9)]
            },
            error: failed.map(|reason| format!("partition not scored: {reason}")),
            scored: failed.is_none(),
            tags: Vec::new(),
            true_tags: None,
        }],
        worker: "w".into(),
        inference_ms: 1.0,
        preprocess_ms: 1.0,
        published_at_ms: 1,
        started_at_ms: 2,
        finished_at_ms: 3,
        provider: "CPU".into(),
        decoder: String::new(),
        thumbnails: Vec::new(),
        failed: failed.map(str::to_owned),
        vectors: false,
    }
}

fn summary(partial: bool) -> Summary {
    let json = r#"{"job":"j","images":4,"scored":4,"unreadable":0,"labelled":0,"correct":0,
        "accuracy":null,"classes":[],"per_class":[],"predicted":[],"most_confused":[],
        "batches":[],"partitions":4,"workers":{},"timings":{"submitted_at_ms":0,
        "completed_at_ms":0,"wall_seconds":0,"images_per_second":0,"inference_seconds":0,
        "preprocess_seconds":0}}"#;
    let mut summary: Summary = serde_json::from_str(json).unwrap();
    if partial {
        summary.partial = Some(fleet_protocol::summary::Partial {
            failed_partitions: 1,
            images: 1,
            reasons: vec!["model gone".into()],
        });
    }
    summary
}

/// A submitted job with budget `budget`: its plan and manifest.
fn submitted(store: &LocalStore, budget: u32) -> Ledger<'_> {
    let ledger = Ledger::new(store, "j");
    ledger.write_plan(&plan(budget)).unwrap();
    ledger.write_manifest(&manifest()).unwrap();
    ledger
}

fn state(ledger: &Ledger<'_>) -> Standing {
    ledger.standing().unwrap().expect("the job is there")
}

#[test]
fn a_job_is_submitting_until_its_manifest_then_running() {
    let (_dir, store) = container();
    let ledger = Ledger::new(&store, "j");
    assert_eq!(ledger.standing().unwrap(), None, "no blob of it yet");
    ledger.write_plan(&plan(0)).unwrap();
    assert_eq!(state(&ledger).state, JobState::Submitting);
    ledger.write_manifest(&manifest()).unwrap();
    ledger.store_partition(&scored(0, None)).unwrap();
    let standing = state(&ledger);
    assert_eq!(standing.state, JobState::Running);
    assert_eq!((standing.stored, standing.progress().as_str()), (1, "1/4"));
}

#[test]
fn failures_over_the_budget_make_a_job_stuck_whichever_word_says_so() {
    let (_dir, store) = container();
    let ledger = submitted(&store, 1);
    // A worker's note alone, before the collector has the rows.
    ledger.note_dead_letter(1, "model gone").unwrap();
    assert_eq!(
        state(&ledger).state,
        JobState::Running,
        "within a budget of 1"
    );
    // The collector's marker alone: the worker's note was lost.
    ledger
        .store_partition(&scored(2, Some("disk away")))
        .unwrap();
    let standing = state(&ledger);
    assert_eq!(standing.state, JobState::Stuck);
    assert_eq!(standing.failures.count, 2);
    assert_eq!(
        standing.failures.reasons,
        [(1, "model gone".to_owned()), (2, "disk away".to_owned())]
    );
    assert_eq!(
        standing.failures.by_reason(),
        ["partition 2: disk away", "partition 1: model gone"]
    );
    // Both words for one partition count it once.
    ledger.note_dead_letter(2, "disk away").unwrap();
    assert_eq!(state(&ledger).failures.count, 2);
}

#[test]
fn a_partition_being_retried_is_not_failed_until_its_retry_fails() {
    let (_dir, store) = container();
    let ledger = submitted(&store, 0);
    ledger
        .store_partition(&scored(3, Some("disk away")))
        .unwrap();
    ledger.note_dead_letter(3, "disk away").unwrap();
    assert_eq!(state(&ledger).state, JobState::Stuck);
    // `producer retry`: marked, its note removed, published again.
    let since = ledger.mark_retrying(3).unwrap();
    ledger.drop_dead_letter_note(3).unwrap();
    assert_eq!(ledger.retrying_since(3).unwrap(), Some(since));
    let standing = state(&ledger);
    assert_eq!(standing.state, JobState::Running);
    assert_eq!(
        (standing.failures.count, standing.failures.retrying),
        (0, 1)
    );
    // The retry's worker failed too: its note counts at once.
    ledger.note_dead_letter(3, "disk still away").unwrap();
    assert_eq!(state(&ledger).state, JobState::Stuck);
    // The collector stores the retry's failure: the mark goes, the marker holds the new
    // reason.
    ledger.drop_dead_letter_note(3).unwrap();
    ledger.retry_failed(3, "disk still away").unwrap();
    let standing = state(&ledger);
    assert_eq!(standing.state, JobState::Stuck);
    assert_eq!(
        standing.failures.reasons,
        [(3, "disk still away".to_owned())]
    );
    assert_eq!(ledger.retrying_since(3).unwrap(), None);
    // Scored at last: the marker goes, and the job runs on.
    ledger.store_partition(&scored(3, None)).unwrap();
    ledger.clear_failed(3).unwrap();
    assert_eq!(state(&ledger).state, JobState::Running);
    assert_eq!(ledger.failed_partitions().unwrap(), Vec::<u32>::new());
}

#[test]
fn a_note_of_a_partition_stored_scored_since_is_stale() {
    let (_dir, store) = container();
    let ledger = submitted(&store, 0);
    ledger.note_dead_letter(0, "a worker gave up").unwrap();
    // Another delivery of it was scored and stored.
    ledger.store_partition(&scored(0, None)).unwrap();
    let standing = state(&ledger);
    assert_eq!(standing.state, JobState::Running);
    assert_eq!(standing.failures.count, 0);
}

#[test]
fn a_finished_job_is_complete_partial_or_cancelled() {
    let (_dir, store) = container();
    let ledger = submitted(&store, 0);
    assert!(!ledger.is_finished().unwrap());
    ledger.mark_cancelled("cancelled by ann@box").unwrap();
    assert!(ledger.is_finished().unwrap() && ledger.is_cancelled().unwrap());
    assert_eq!(
        state(&ledger).state,
        JobState::Cancelled("cancelled by ann@box".into())
    );

    let (_dir, store) = container();
    let ledger = submitted(&store, 1);
    ledger
        .store_partition(&scored(1, Some("model gone")))
        .unwrap();
    let put = |summary: &Summary| {
        let key = job::result_key("j", files::SUMMARY);
        store
            .put(&key, &serde_json::to_vec(summary).unwrap())
            .unwrap();
    };
    put(&summary(true));
    assert!(matches!(state(&ledger).state, JobState::Partial(_)));
    assert_eq!(state(&ledger).state.name(), "partial");
    put(&summary(false));
    let standing = state(&ledger);
    assert!(matches!(standing.state, JobState::Complete(_)));
    assert_eq!(standing.progress(), "4/4");
    assert!(ledger.is_finished().unwrap());
}

#[test]
fn unreadable_state_is_corrupt_and_never_transient() {
    let (_dir, store) = container();
    let ledger = Ledger::new(&store, "j");
    store.put(&job::plan_key("j"), b"not json").unwrap();
    let e = ledger.plan().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert!(
        e.to_string()
            .ends_with(": job plan jobs/j/plan.json cannot be read"),
        "{e}"
    );
    assert!(
        std::error::Error::source(&e).is_some(),
        "the parse error is kept"
    );

    ledger.write_plan(&plan(0)).unwrap();
    ledger.store_partition(&scored(0, None)).unwrap();
    store
        .put(&job::partition_key("j", 1), b"not a partition")
        .unwrap();
    let e = ledger.for_each_stored(|_| Ok(())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    // A copy of one partition stored under another's name.
    store
        .put(
            &job::partition_key("j", 1),
            &message::encode(&scored(0, None)),
        )
        .unwrap();
    let e = ledger.stored_partition(1).unwrap_err();
    assert!(e.to_string().contains("partitions/000001.bin"), "{e}");
}

#[test]
fn intermediate_blobs_leave_the_jobs_record() {
    let (_dir, store) = container();
    let ledger = submitted(&store, 0);
    ledger.store_partition(&scored(0, Some("gone"))).unwrap();
    ledger.mark_retrying(0).unwrap();
    let mut blobs = ledger.intermediate_blobs().unwrap();
    blobs.sort();
    assert_eq!(
        blobs,
        [
            "jobs/j/failed/000000",
            "jobs/j/partitions/000000.bin",
            "jobs/j/plan.json",
            "jobs/j/retrying/000000",
            "jobs/j/samples.png",
            "jobs/j/sealed.bin",
        ]
    );
}

#[test]
fn every_job_of_the_container_oldest_first() {
    let (_dir, store) = container();
    for job in ["20261201-000000-b", "20261130-000000-a"] {
        let ledger = Ledger::new(&store, job);
        ledger
            .write_plan(&Plan {
                job: job.into(),
                ..plan(0)
            })
            .unwrap();
    }
    let jobs: Vec<String> = all(&store).unwrap().into_iter().map(|s| s.job).collect();
    assert_eq!(jobs, ["20261130-000000-a", "20261201-000000-b"]);
}
