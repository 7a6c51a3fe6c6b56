//! `producer results JOB`: a job's result files brought home, from whichever store holds them,
//! into a local folder laid out as the store has them (`scores.csv`, `summary.json`,
//! `report.html`, `parquet/`, ...).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use fleet_ledger::{JobState, Ledger};
use fleet_protocol::job;
use fleet_storage::{BlobStore, StoreArgs, StoreError, printable};
use indicatif::{ProgressBar, ProgressStyle};

/// Which job's results, and where they go.
#[derive(Debug, clap::Args)]
pub struct ResultsArgs {
    /// The job's id.
    pub job: String,
    /// Folder to write the files into (made if missing) [default: a folder named after the job,
    /// in the current directory].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Why a job's results cannot be brought home.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// The container cannot be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The container has no such job.
    #[error("{store} has no job {job}; `producer status` lists those it has")]
    NoSuchJob {
        /// The store, as it describes itself.
        store: String,
        /// The job named.
        job: String,
    },
    /// The job has no results (yet, or ever).
    #[error("job {job} has no results: it is {state}{hint}")]
    NotComplete {
        /// The job's id.
        job: String,
        /// Where it stands.
        state: &'static str,
        /// What to do about it.
        hint: String,
    },
    /// A local file cannot be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `producer results JOB`: downloads every result file of a complete (or partial) job into
/// `--out`, then prints the folder on standard output.
pub fn run(store: &StoreArgs, args: ResultsArgs) -> Result<(), ResultsError> {
    let store = store.open(false)?;
    let out = args.out.unwrap_or_else(|| PathBuf::from(&args.job));
    let files = bring_home(store.as_ref(), &args.job, &out)?;
    fleet_service::logging::say(format!(
        "{files} files of job {} from {}",
        args.job,
        store.describe()
    ));
    println!("{}", printable(&out));
    Ok(())
}

/// Copies the result files of `job` into `out`, keeping their paths under the job's results
/// folder; returns how many. Refused before anything is written unless the job is complete or
/// partial: a running job's folder holds a part of its files.
pub fn bring_home(store: &dyn BlobStore, job: &str, out: &Path) -> Result<usize, ResultsError> {
    let ledger = Ledger::new(store, job);
    let standing = ledger.standing()?.ok_or_else(|| ResultsError::NoSuchJob {
        store: store.describe(),
        job: job.to_owned(),
    })?;
    let not_complete = |hint| ResultsError::NotComplete {
        job: job.to_owned(),
        state: standing.state.name(),
        hint,
    };
    match &standing.state {
        JobState::Complete(_) | JobState::Partial(_) => {}
        JobState::Running | JobState::Submitting => {
            return Err(not_complete(format!(
                " (`producer status {job}` shows its progress; the Parquet files of the partitions scored so far are in {})",
                store.location(&job::parquet_prefix(job))
            )));
        }
        JobState::Stuck => {
            return Err(not_complete(format!(
                " (`producer status {job}` says why its partitions failed; fix that, then `producer retry {job}`)"
            )));
        }
        JobState::Cancelled(reason) => return Err(not_complete(format!(": {reason}"))),
    }
    let prefix = job::result_key(job, "");
    let blobs = store.list_sized(&prefix)?;
    let bytes: u64 = blobs.iter().map(|(_, size)| size).sum();
    let bar = ProgressBar::new(bytes).with_style(
        ProgressStyle::with_template(
            "{spinner} downloading {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
        )
        .expect("the template is valid"),
    );
    for (key, _) in &blobs {
        // Blob names are checked on the way in (no `..`, no empty part): the path stays
        // under `out`.
        let relative = key.strip_prefix(&prefix).unwrap_or(key);
        let path = out.join(relative);
        let written = download(store, key, &path, &bar);
        if written.is_err() {
            bar.abandon();
        }
        written?;
    }
    bar.finish_and_clear();
    Ok(blobs.len())
}

/// Streams blob `key` into `path` through a temporary file beside it, renamed when whole: a
/// download that fails leaves no partial file under the result's name.
fn download(
    store: &dyn BlobStore,
    key: &str,
    path: &Path,
    bar: &ProgressBar,
) -> Result<(), ResultsError> {
    let write_error = |path: &Path| {
        let path = printable(path);
        move |source| ResultsError::Write { path, source }
    };
    let folder = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).map_err(write_error(folder))?;
    let mut reader = store.open(key)?;
    let mut file = tempfile::NamedTempFile::new_in(folder).map_err(write_error(folder))?;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::from_io(store.describe(), "reading", key, e).into()),
        };
        file.write_all(&buffer[..n]).map_err(write_error(path))?;
        bar.inc(n as u64);
    }
    file.persist(path)
        .map_err(|e| e.error)
        .map_err(write_error(path))?;
    Ok(())
}
