//! Helpers for the end-to-end tests: fixtures, the built binaries, and running them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod graph;

/// How long a test waits for a process it expects to end: far beyond any healthy run, so
/// that a stuck one fails its test with what it printed instead of holding up the suite.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(600);

/// Runs `command` to completion, as [`Command::output`] does, within [`PROCESS_DEADLINE`].
pub fn output(command: &mut Command) -> Output {
    let what = format!("{command:?}");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    wait_output(child, &what, PROCESS_DEADLINE)
}

/// Waits for `child` to exit, reading its piped output as it goes. Past `deadline` it is
/// killed and the test fails, naming `what` and showing what it printed.
pub fn wait_output(mut child: Child, what: &str, deadline: Duration) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break Some(status);
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (
        stdout.join().expect("stdout reader"),
        stderr.join().expect("stderr reader"),
    );
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{what} did not end within {deadline:?} and was killed\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// The shared fixtures: `CIFAR_FLEET_FIXTURES`, or `shared/fixtures` beside the repository.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("CIFAR_FLEET_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"));
    assert!(
        dir.join("resnet20_meanimage_159.dnn").is_file(),
        "fixtures not found in {}: set CIFAR_FLEET_FIXTURES to the fixtures directory",
        dir.display()
    );
    dir
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// The fixture tarball's test batch, decoded.
pub fn test_batch() -> fleet_dataset::Batch {
    use fleet_dataset::{self as dataset, BatchSelection};
    let file = std::fs::File::open(fixture("cifar-10-python.tar.gz")).unwrap();
    let mut batches = Vec::new();
    dataset::read_tarball(file, "fixture", &BatchSelection::default(), |b| {
        batches.push(b);
        Ok(())
    })
    .unwrap();
    batches.pop().unwrap()
}

/// The walkthrough's preprocessing, written out independently of the product: row -> reshape
/// (3, 32, 32) -> HWC -> BGR -> CHW, minus the mean image (HWC BGR, transposed to CHW).
pub fn walkthrough_preprocess(pixels: &[u8], mean_hwc: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(pixels.len());
    for row in pixels.chunks_exact(fleet_dataset::IMAGE_BYTES) {
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let rgb = 2 - c;
                    out.push(
                        f32::from(row[(rgb * 32 + y) * 32 + x]) - mean_hwc[(y * 32 + x) * 3 + c],
                    );
                }
            }
        }
    }
    out
}

/// The 3072 values of the fixture's mean image, as the XML lists them (HWC, BGR).
pub fn mean_image_hwc_bgr() -> Vec<f32> {
    let xml = std::fs::read_to_string(fixture("CIFAR-10_mean.xml")).unwrap();
    let data = xml.split("<data>").nth(1).unwrap();
    let data = data.split("</data>").next().unwrap();
    let values: Vec<f32> = data
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(values.len(), fleet_dataset::IMAGE_BYTES);
    values
}

/// A binary of the workspace, built by `cargo build --workspace --bins` (the test script does
/// that first; `cargo test` alone only builds the binaries of the package under test).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// Runs a binary to completion and returns its output.
pub fn run(name: &str, args: &[&str]) -> Output {
    output(Command::new(bin(name)).args(args).env("RUST_LOG", "warn"))
}

/// Runs a binary that must succeed; returns its standard output.
pub fn run_ok(name: &str, args: &[&str]) -> String {
    let output = run(name, args);
    assert!(
        output.status.success(),
        "{name} {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Runs a binary that must fail; returns its standard error.
pub fn run_err(name: &str, args: &[&str]) -> String {
    let output = run(name, args);
    assert!(
        !output.status.success(),
        "{name} {args:?} succeeded but should have failed"
    );
    String::from_utf8(output.stderr).expect("UTF-8 output")
}

/// A `producer` command line, built up as a test needs it: the store and the container every
/// test names, then the command's own flags.
#[derive(Debug, Clone)]
pub struct Producer {
    args: Vec<String>,
}

impl Producer {
    /// `producer stage --store STORE --container CONTAINER`.
    pub fn stage(store: impl AsRef<Path>, container: &str) -> Self {
        Self::new(&["stage"], store.as_ref(), container)
    }

    /// `producer --store STORE --container CONTAINER --embedded`: a whole job in one process.
    pub fn embedded(store: impl AsRef<Path>, container: &str) -> Self {
        Self::new(&[], store.as_ref(), container).args(&["--embedded"])
    }

    fn new(command: &[&str], store: &Path, container: &str) -> Self {
        let store = store.to_str().expect("a UTF-8 store path");
        let args = command
            .iter()
            .copied()
            .chain(["--store", store, "--container", container]);
        Self {
            args: args.map(String::from).collect(),
        }
    }

    /// More arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    fn argv(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }

    /// Runs it, whatever its exit status.
    pub fn output(&self) -> Output {
        run("producer", &self.argv())
    }

    /// Runs it; it must succeed. Its standard output.
    pub fn ok(&self) -> String {
        run_ok("producer", &self.argv())
    }

    /// Runs it; it must fail. Its standard error.
    pub fn err(&self) -> String {
        run_err("producer", &self.argv())
    }

    /// Runs it as a job run (embedded, or submitted); it must succeed.
    pub fn job(&self) -> JobRun {
        run_job(&self.argv())
    }
}

/// A `producer` job run that succeeded: the job's id, which standard output holds alone (for
/// `J=$(producer ...)`), and what it said of the job on standard error.
#[derive(Debug, Clone)]
pub struct JobRun {
    /// The job's id.
    pub id: String,
    /// Standard error: the accuracy, the timings, the report's location.
    pub said: String,
}

impl std::fmt::Display for JobRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {}; it said:\n{}", self.id, self.said)
    }
}

impl JobRun {
    /// Whether the run said `text` of its job (on standard error).
    pub fn contains(&self, text: &str) -> bool {
        self.said.contains(text)
    }

    /// Checks `output` is a job run's: success, and the job's id alone on standard output.
    pub fn of(output: Output, what: &str) -> Self {
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        assert!(
            output.status.success(),
            "{what} failed ({}):\n{stdout}\n{stderr}",
            output.status
        );
        JobRun {
            id: job_id(&stdout),
            said: stderr,
        }
    }
}

/// The job id a `producer` run printed: its standard output, which holds it alone.
pub fn job_id(stdout: &str) -> String {
    let id = stdout.trim_end_matches('\n');
    assert!(
        !id.is_empty() && !id.contains(char::is_whitespace),
        "standard output is not a job id alone: {stdout:?}"
    );
    id.to_owned()
}

/// Runs `producer ARGS`, a job run that must succeed.
pub fn run_job(args: &[&str]) -> JobRun {
    JobRun::of(run("producer", args), &format!("producer {args:?}"))
}

/// Stages the fixture dataset, model (as `resnet20`) and mean image into `store`/`container`.
pub fn stage_fixtures(store: &Path, container: &str) {
    let (dataset, model, mean) = (
        fixture("cifar-10-python.tar.gz"),
        fixture("resnet20_meanimage_159.dnn"),
        fixture("CIFAR-10_mean.xml"),
    );
    run_ok(
        "producer",
        &[
            "stage",
            "--store",
            store.to_str().unwrap(),
            "--container",
            container,
            "--tarball",
            dataset.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--mean-image",
            mean.to_str().unwrap(),
            "--model-name",
            "resnet20",
        ],
    );
}

/// The value after `key: ` on a line of `output`, e.g. the job id after `job: `.
pub fn field(output: &str, key: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no `{key}:` line in:\n{output}"))
        .trim()
        .to_owned()
}

/// The account key every Azurite accepts (its documented development account).
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The connection string of an Azurite listening on 127.0.0.1:`port`.
fn azurite_connection_string(port: u16) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};\
         BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )
}

/// Where the real RabbitMQ and Azurite are: `AMQP_URL` and `AZURE_STORAGE_CONNECTION_STRING`
/// when set (the test script sets them), else containers started with testcontainers.
#[derive(Debug)]
pub struct Services {
    pub amqp_url: String,
    pub connection_string: String,
    /// Containers started for this test, stopped when it ends.
    rabbit: Option<testcontainers::Container<testcontainers_modules::rabbitmq::RabbitMq>>,
    azurite: Option<testcontainers::Container<testcontainers_modules::azurite::Azurite>>,
    /// An Azurite process of this test's own, which it may stop.
    own_azurite: Option<OwnAzurite>,
    /// A RabbitMQ node of this test's own, which it may restart.
    own_rabbit: Option<OwnRabbit>,
}

/// Waits until something listens on 127.0.0.1:`port`.
fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within 90 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A RabbitMQ node started for one test (`rabbitmq-server`, under a node name of its own, on
/// free ports, its data in a temporary folder, the machine's `rabbitmq-env.conf` ignored): a
/// test that restarts the broker restarts this one, never a broker the machine runs for others.
#[derive(Debug)]
pub struct OwnRabbit {
    node: String,
    port: u16,
    dir: tempfile::TempDir,
}

impl OwnRabbit {
    /// Starts one speaking plain AMQP and waits until it takes connections.
    pub fn start() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("a folder for the broker's data");
        Self::start_in(
            dir,
            port,
            &format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
    }

    /// Starts one whose `rabbitmq.conf` is `config` (which makes it listen on `port`), with
    /// its data in `dir` (where the configuration's own files may lie), and waits until it
    /// listens.
    pub fn start_in(dir: tempfile::TempDir, port: u16, config: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let node = format!(
            "fleet-test-{}-{}@localhost",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.path();
        std::fs::write(path.join("rabbitmq.conf"), config).unwrap();
        // No plugins: the management plugin would want the machine's broker's port.
        std::fs::write(path.join("enabled_plugins"), "[].\n").unwrap();
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(path.join(sub)).unwrap();
        }
        // Run as root, rabbitmq-server drops to the rabbitmq user: it must read the files and
        // write its data.
        let _ = Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(path)
            .status();
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_CONF_ENV_FILE", "/dev/null")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_CONFIG_FILE", path.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", path.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", path.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                path.join("enabled_plugins"),
            )
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmq-server is installed (Debian: apt-get install rabbitmq-server)");
        assert!(status.success(), "rabbitmq-server -detached: {status}");
        let own = Self { node, port, dir };
        wait_listening(
            port,
            &format!(
                "the test's RabbitMQ (its log: {})",
                own.dir.path().join("log").display()
            ),
        );
        own
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its folder: its configuration and data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its AMQP URL.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn ctl(&self, action: &str) {
        let out = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "--timeout", "120", action])
            .output()
            .expect("rabbitmqctl is installed");
        assert!(
            out.status.success(),
            "rabbitmqctl {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops its RabbitMQ application for `down` (every connection drops; durable queues
    /// survive), then starts it again.
    pub fn restart(&self, down: Duration) {
        self.ctl("stop_app");
        std::thread::sleep(down);
        self.ctl("start_app");
        wait_listening(self.port, "the test's RabbitMQ");
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-n", &self.node, "stop"])
            .output();
    }
}

/// An Azurite process started for one test on a free port, with its data in a temporary
/// folder: a test that takes storage away stops this one, never an Azurite the machine runs
/// for others (which may not be this suite's to stop, or even a process it can see).
#[derive(Debug)]
pub struct OwnAzurite {
    port: u16,
    data: tempfile::TempDir,
    process: std::sync::Mutex<Child>,
}

impl OwnAzurite {
    /// The `azurite-blob` script: `AZURITE_BIN`, else the one `scripts/services.sh` installs
    /// under `.tools/`.
    fn program() -> PathBuf {
        std::env::var_os("AZURITE_BIN").map_or_else(
            || {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../.tools/node_modules/.bin/azurite-blob")
            },
            PathBuf::from,
        )
    }

    /// Starts one on a free port and waits until it listens.
    pub fn start() -> Self {
        let port = free_port();
        let data = tempfile::tempdir().expect("a folder for Azurite's data");
        let process = Self::spawn(port, data.path());
        let own = Self {
            port,
            data,
            process: std::sync::Mutex::new(process),
        };
        wait_listening(own.port, "the test's Azurite");
        own
    }

    fn spawn(port: u16, data: &Path) -> Child {
        let program = Self::program();
        Command::new(&program)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
            ])
            .arg(data)
            .args([
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
                "--disableTelemetry",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): scripts/services.sh installs Azurite, or set \
                     AZURITE_BIN to an azurite-blob",
                    program.display()
                )
            })
    }

    /// Its connection string.
    pub fn connection_string(&self) -> String {
        azurite_connection_string(self.port)
    }

    /// Stops it for `down`, then starts it again on the same port with the same data.
    pub fn outage(&self, down: Duration) {
        let mut process = self.process.lock().unwrap_or_else(|p| p.into_inner());
        // SIGTERM, not SIGKILL: Azurite saves its metadata every few seconds and on the way
        // out; killed, it would come back without the blobs written last, which no real
        // outage does.
        let stopped = Command::new("kill")
            .args(["-TERM", &process.id().to_string()])
            .status()
            .is_ok_and(|status| status.success());
        if !stopped {
            let _ = process.kill();
        }
        let _ = process.wait();
        std::thread::sleep(down);
        *process = Self::spawn(self.port, self.data.path());
        drop(process);
        wait_listening(self.port, "the test's Azurite");
    }
}

impl Drop for OwnAzurite {
    fn drop(&mut self) {
        let process = self.process.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = process.kill();
        let _ = process.wait();
    }
}

impl Services {
    pub fn get() -> Self {
        if let (Ok(amqp_url), Ok(connection_string)) = (
            std::env::var("AMQP_URL"),
            std::env::var("AZURE_STORAGE_CONNECTION_STRING"),
        ) {
            return Self {
                amqp_url,
                connection_string,
                rabbit: None,
                azurite: None,
                own_azurite: None,
                own_rabbit: None,
            };
        }
        Self::from_containers()
    }

    /// [`Services::get`], with blob storage this test may take away
    /// ([`Services::storage_outage`]): its own Azurite process, unless the storage is a
    /// container started for this test already.
    pub fn with_own_storage() -> Self {
        let mut services = Self::get();
        if services.azurite.is_none() {
            let own = OwnAzurite::start();
            services.connection_string = own.connection_string();
            services.own_azurite = Some(own);
        }
        services
    }

    /// [`Services::get`], with a broker this test may restart
    /// ([`Services::restart_broker`]): a RabbitMQ node of its own, unless the broker is a
    /// container started for this test already.
    pub fn with_own_broker() -> Self {
        let mut services = Self::get();
        if services.rabbit.is_none() {
            let own = OwnRabbit::start();
            services.amqp_url = own.url();
            services.own_rabbit = Some(own);
        }
        services
    }

    fn from_containers() -> Self {
        use testcontainers::ImageExt;
        use testcontainers::runners::SyncRunner;
        let rabbit = testcontainers_modules::rabbitmq::RabbitMq::default()
            .start()
            .expect(
                "AMQP_URL is not set and a RabbitMQ container could not start (is Docker running?)",
            );
        let azurite = testcontainers_modules::azurite::Azurite::default()
            .with_cmd(["azurite-blob", "--blobHost", "0.0.0.0", "--skipApiVersionCheck", "--loose", "--disableTelemetry"])
            .start()
            .expect("AZURE_STORAGE_CONNECTION_STRING is not set and an Azurite container could not start");
        let amqp_port = rabbit.get_host_port_ipv4(5672).expect("RabbitMQ port");
        let blob_port = azurite.get_host_port_ipv4(10000).expect("Azurite port");
        Self {
            amqp_url: format!("amqp://guest:guest@127.0.0.1:{amqp_port}/%2f"),
            connection_string: azurite_connection_string(blob_port),
            rabbit: Some(rabbit),
            azurite: Some(azurite),
            own_azurite: None,
            own_rabbit: None,
        }
    }

    /// Restarts the RabbitMQ application: every connection drops; durable queues survive.
    /// Only for services from [`Services::with_own_broker`]: the test's own node, or its
    /// container.
    pub fn restart_broker(&self, down: Duration) {
        let Some(rabbit) = &self.rabbit else {
            self.own_rabbit
                .as_ref()
                .expect(
                    "a broker restart needs a broker of the test's own: Services::with_own_broker",
                )
                .restart(down);
            return;
        };
        let ctl = |action: &str| {
            let mut exec = rabbit
                .exec(testcontainers::core::ExecCommand::new([
                    "rabbitmqctl",
                    "--timeout",
                    "120",
                    action,
                ]))
                .expect("rabbitmqctl runs in the container");
            let _ = exec.stdout_to_vec();
        };
        ctl("stop_app");
        std::thread::sleep(down);
        ctl("start_app");
    }

    /// Takes blob storage away for `down`: the test's own Azurite is stopped and started again
    /// (its data is on disk), or its container is paused. Only for services from
    /// [`Services::with_own_storage`].
    pub fn storage_outage(&self, down: Duration) {
        if let Some(azurite) = &self.azurite {
            // The blocking container hands out its async pause; drive it on a small runtime.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(azurite.pause()).expect("pause Azurite");
            std::thread::sleep(down);
            runtime
                .block_on(azurite.unpause())
                .expect("unpause Azurite");
            return;
        }
        self.own_azurite
            .as_ref()
            .expect("a storage outage needs storage of the test's own: Services::with_own_storage")
            .outage(down);
    }
}

/// Deletes `queues` from the broker at `amqp_url`, giving up after half a minute. Tests that
/// declare queues under a [`unique`] name delete them when they end: the broker outlives test
/// runs, and a single RabbitMQ node holding several hundred quorum queues from earlier runs
/// stops accepting connections (each queue's log holds file handles, and sockets wait for one).
pub fn delete_queues(amqp_url: &str, queues: &[&str]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let delete = async {
        let connection =
            lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        for queue in queues {
            channel
                .queue_delete((*queue).into(), Default::default())
                .await?;
        }
        connection.close(200, "done".into()).await
    };
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), delete).await })
        .map_err(|_| "the broker did not answer within 30s".to_owned())?
        .map_err(|e| e.to_string())
}

/// A name no other test run uses: for containers and queues, so tests can share the services.
pub fn unique(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    format!("{prefix}-{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// Starts a binary in the background with extra environment variables.
pub fn spawn(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Child {
    Command::new(bin(name))
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

/// Runs a binary with extra environment variables to completion.
pub fn run_with(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    output(
        Command::new(bin(name))
            .args(args)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "warn"),
    )
}

/// Sends SIGTERM and waits; returns the exit status and the standard error.
pub fn terminate(child: Child) -> (std::process::ExitStatus, String) {
    let out = stop(child);
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends SIGTERM and waits (a draining process finishes what it holds, well within
/// [`PROCESS_DEADLINE`]); returns everything it printed.
pub fn stop(child: Child) -> Output {
    // The `kill` command sends SIGTERM without a libc binding in the tests.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    wait_output(child, "a process stopped with SIGTERM", PROCESS_DEADLINE)
}

/// One isolated fleet: its own container and queues on the shared services. A test that
/// passes leaves nothing behind (see its `Drop`); one that fails leaves its queues and blobs
/// for a look.
#[derive(Debug)]
pub struct Fleet {
    pub services: Services,
    pub container: String,
    queues: [(String, String); 3],
}

impl Fleet {
    pub fn isolated() -> Self {
        Self::on(Services::get())
    }

    /// A fleet of its own queues and container on `services`.
    pub fn on(services: Services) -> Self {
        let id = unique("fleet");
        Self {
            services,
            queues: [
                ("PARTITIONS_QUEUE".into(), format!("{id}.partitions")),
                ("RESULTS_QUEUE".into(), format!("{id}.results")),
                ("DEAD_LETTER_QUEUE".into(), format!("{id}.dead-letter")),
            ],
            container: id,
        }
    }

    pub fn env(&self) -> Vec<(&str, &str)> {
        let mut env = vec![
            ("AMQP_URL", self.services.amqp_url.as_str()),
            (
                "AZURE_STORAGE_CONNECTION_STRING",
                self.services.connection_string.as_str(),
            ),
            ("FLEET_CONTAINER", self.container.as_str()),
            // Two workers share this machine's cores.
            ("INTRA_OP_THREADS", "1"),
        ];
        env.extend(self.queues.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        env
    }

    pub fn store(&self) -> std::sync::Arc<dyn fleet_storage::BlobStore> {
        self.open_store().expect("the test container exists")
    }

    fn open_store(
        &self,
    ) -> Result<std::sync::Arc<dyn fleet_storage::BlobStore>, fleet_storage::StoreError> {
        fleet_storage::AccountArgs::new(self.services.connection_string.clone())
            .open(&self.container, false)
    }

    /// Connection settings for this fleet's queues on the test broker, for a test that talks
    /// to the broker itself.
    pub fn amqp_args(&self) -> fleet_broker::amqp::AmqpArgs {
        let queue = |name: &str| {
            self.queues
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .expect("a queue of this fleet")
        };
        fleet_broker::amqp::AmqpArgs {
            url: self.services.amqp_url.clone(),
            delivery_limit: 5,
            reconnect_secs: 10,
            ca_cert: None,
            queues: fleet_broker::QueueNames {
                partitions: queue("PARTITIONS_QUEUE"),
                results: queue("RESULTS_QUEUE"),
                dead_letter: queue("DEAD_LETTER_QUEUE"),
            },
        }
    }

    /// Waits until the collector has stored `n` partitions (of any of this fleet's jobs).
    pub fn wait_for_stored(&self, n: usize) {
        let store = self.store();
        let deadline = Instant::now() + Duration::from_secs(300);
        while store
            .list("jobs/")
            .unwrap_or_default()
            .iter()
            .filter(|k| k.contains("/partitions/"))
            .count()
            < n
        {
            assert!(
                Instant::now() < deadline,
                "{n} partitions were not stored in time"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `scores.csv` of one of this fleet's jobs.
    pub fn scores(&self, job: &str) -> String {
        String::from_utf8(
            self.store()
                .get(&format!("results/{job}/scores.csv"))
                .expect("scores.csv"),
        )
        .unwrap()
    }

    /// Asserts that job `job`'s results hold each image once, with the reference's
    /// predictions: in `scores.csv`, and in the Parquet files read back.
    pub fn assert_matches_reference(&self, job: &str) {
        assert_matches_reference(&self.scores(job));
        assert_matches_reference(&parquet_as_csv(self.store().as_ref(), job));
    }

    pub fn stage(&self) {
        let (dataset, model, mean) = (
            fixture("cifar-10-python.tar.gz"),
            fixture("resnet20_meanimage_159.dnn"),
            fixture("CIFAR-10_mean.xml"),
        );
        let out = run_with(
            "producer",
            &[
                "stage",
                "--tarball",
                dataset.to_str().unwrap(),
                "--model",
                model.to_str().unwrap(),
                "--mean-image",
                mean.to_str().unwrap(),
                "--model-name",
                "resnet20",
            ],
            &self.env(),
        );
        assert!(
            out.status.success(),
            "staging into Azurite failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Fleet {
    /// Deletes the fleet's queues and blobs. The services outlive test runs (the same RabbitMQ
    /// serves every run on a machine): quorum queues left by hundreds of fleets make the broker
    /// slow, and each fleet stages a 160 MB tarball.
    fn drop(&mut self) {
        let queues: Vec<&str> = self.queues.iter().map(|(_, q)| q.as_str()).collect();
        if let Err(e) = delete_queues(&self.services.amqp_url, &queues) {
            eprintln!("the fleet's queues were not deleted: {e}");
        }
        // A failed test's blobs are kept for a look.
        if std::thread::panicking() {
            return;
        }
        // A fleet whose test staged nothing has no container.
        let Ok(store) = self.open_store() else {
            return;
        };
        for key in store.list("").unwrap_or_default() {
            if let Err(e) = store.delete(&key) {
                eprintln!("{key} was not deleted: {e}");
            }
        }
    }
}

/// `scores.csv` rows keyed by index: (filename, true label, predicted label, confidence).
pub fn rows(csv: &str) -> std::collections::BTreeMap<u32, (String, String, String, f64)> {
    csv.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (
                f[0].parse().unwrap(),
                (f[1].into(), f[2].into(), f[3].into(), f[6].parse().unwrap()),
            )
        })
        .collect()
}

/// The embedded run's scores on the fixture, computed once per test binary: the reference an
/// undisturbed job must reproduce.
pub fn reference_rows() -> &'static std::collections::BTreeMap<u32, (String, String, String, f64)> {
    static REFERENCE: std::sync::OnceLock<
        std::collections::BTreeMap<u32, (String, String, String, f64)>,
    > = std::sync::OnceLock::new();
    REFERENCE.get_or_init(|| {
        let local = tempfile::TempDir::new().expect("temporary directory");
        stage_fixtures(local.path(), "cifar");
        let job = run_job(&[
            "--store",
            local.path().to_str().unwrap(),
            "--container",
            "cifar",
            "--embedded",
        ])
        .id;
        let csv =
            std::fs::read_to_string(local.path().join(format!("cifar/results/{job}/scores.csv")))
                .unwrap();
        rows(&csv)
    })
}

/// Asserts that `csv` has exactly one row per image, with the reference's predictions.
pub fn assert_matches_reference(csv: &str) {
    let reference = reference_rows();
    let lines = csv.lines().count() - 1;
    let got = rows(csv);
    assert_eq!(
        lines,
        got.len(),
        "duplicated rows: {lines} lines for {} indices",
        got.len()
    );
    assert_eq!(
        got.len(),
        reference.len(),
        "rows lost: {} of {}",
        got.len(),
        reference.len()
    );
    for (index, row) in &got {
        let expected = &reference[index];
        assert_eq!(
            (&row.0, &row.1, &row.2),
            (&expected.0, &expected.1, &expected.2),
            "row {index} differs"
        );
    }
}

/// The rows of job `job`'s Parquet files (`results/<job>/scores.parquet/`), read back with the
/// Parquet crate's own reader and written out as `scores.csv`'s first seven columns: what
/// [`rows`] and [`assert_matches_reference`] read. The files are read in name order, each
/// row as it is stored.
pub fn parquet_as_csv(store: &dyn fleet_storage::BlobStore, job: &str) -> String {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let cell = |field: &Field| match field {
        Field::Null => String::new(),
        Field::Int(v) => v.to_string(),
        Field::Long(v) => v.to_string(),
        Field::Float(v) => format!("{v:.6}"),
        Field::Str(v) => v.clone(),
        other => panic!("unexpected Parquet value {other:?}"),
    };
    let mut csv = String::from(
        "index,filename,true_label,predicted_label,true_class,predicted_class,confidence\n",
    );
    let parts = store
        .list(&fleet_protocol::job::parquet_prefix(job))
        .expect("the Parquet files are listed");
    assert!(!parts.is_empty(), "job {job} has no Parquet file");
    for key in parts {
        let bytes = store.get(&key).expect("a Parquet file is read");
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes))
            .unwrap_or_else(|e| panic!("{key} is not a Parquet file: {e}"));
        for row in reader.get_row_iter(None).unwrap() {
            let row = row.unwrap_or_else(|e| panic!("{key}: {e}"));
            let columns = [
                "index",
                "filename",
                "true_label",
                "predicted_label",
                "true_class",
                "predicted_class",
                "confidence",
            ];
            let cells: std::collections::HashMap<&str, String> = row
                .get_column_iter()
                .filter(|(name, _)| columns.contains(&name.as_str()))
                .map(|(name, field)| (name.as_str(), cell(field)))
                .collect();
            let line: Vec<&str> = columns.iter().map(|c| cells[c].as_str()).collect();
            csv.push_str(&line.join(","));
            csv.push('\n');
        }
    }
    csv
}

/// Each row's file name and its cell of column `column`, from job `job`'s Parquet files.
pub fn parquet_cells(
    store: &dyn fleet_storage::BlobStore,
    job: &str,
    column: &str,
) -> Vec<(String, parquet::record::Field)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::RowAccessor;
    let mut rows = Vec::new();
    for key in store
        .list(&fleet_protocol::job::parquet_prefix(job))
        .expect("the Parquet files are listed")
    {
        let bytes = store.get(&key).expect("a Parquet file is read");
        let reader = SerializedFileReader::new(bytes::Bytes::from(bytes)).unwrap();
        for row in reader.get_row_iter(None).unwrap() {
            let row = row.unwrap();
            let mut name = None;
            let mut cell = None;
            for (at, (field_name, field)) in row.get_column_iter().enumerate() {
                if field_name == "filename" {
                    name = Some(row.get_string(at).unwrap().clone());
                }
                if field_name == column {
                    cell = Some(field.clone());
                }
            }
            let cell = cell.unwrap_or_else(|| panic!("no column {column} in job {job}'s rows"));
            rows.push((name.expect("a filename column"), cell));
        }
    }
    rows
}

/// Each row's file name and its vector in list column `column` (float32 or float16, widened),
/// from job `job`'s Parquet files; `None` where the cell is null.
pub fn parquet_vectors(
    store: &dyn fleet_storage::BlobStore,
    job: &str,
    column: &str,
) -> Vec<(String, Option<Vec<f32>>)> {
    use parquet::record::Field;
    parquet_cells(store, job, column)
        .into_iter()
        .map(|(name, field)| {
            let vector = match field {
                Field::Null => None,
                Field::ListInternal(list) => Some(
                    list.elements()
                        .iter()
                        .map(|value| match value {
                            Field::Float(v) => *v,
                            Field::Float16(v) => v.to_f32(),
                            other => panic!("{column} holds {other:?}"),
                        })
                        .collect(),
                ),
                other => panic!("{column} holds {other:?}, not a list"),
            };
            (name, vector)
        })
        .collect()
}

/// The job named by a running `producer --wait` started with [`spawn`], read from its output
/// as it goes (the rest of its output is read and dropped).
pub fn job_of(producer: &mut Child) -> String {
    use std::io::BufRead;
    let stdout = std::io::BufReader::new(producer.stdout.take().expect("a piped stdout"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Standard output holds the job's id alone, once it is submitted.
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(job_id(&line));
        }
    });
    rx.recv_timeout(PROCESS_DEADLINE)
        .expect("the producer did not name its job")
}

/// Waits for a `producer --wait` started with [`spawn`]; returns its job id, after checking it
/// succeeded.
pub fn finish(producer: Child) -> String {
    let out = wait_output(producer, "producer --wait", PROCESS_DEADLINE);
    JobRun::of(out, "producer --wait").id
}

/// A port nothing listens on now, for a process under test to serve on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET path` from 127.0.0.1:`port`, retried for a few seconds while the server starts:
/// the status code and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(e) => {
                assert!(Instant::now() < deadline, "nothing serves on {port}: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (status, _, body) = parse_response(&response);
    (status, body)
}

/// An HTTP response's status code, head and body.
fn parse_response(response: &str) -> (u16, String, String) {
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, head.to_owned(), body.to_owned())
}

/// `GET url` of an `http://host:port/path?query` URL, with no credentials but what the URL
/// holds, as a browser opens it: the status code, the response's head and its body.
pub fn http_get_url(url: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = std::net::TcpStream::connect(authority)
        .unwrap_or_else(|e| panic!("cannot reach {authority}: {e}"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    parse_response(&String::from_utf8_lossy(&response))
}

/// The value of an unlabelled sample in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Runs a converted graph that is not an image classifier (input `input`, output `output`) on
/// one input of `dims`, in ONNX Runtime: the output's dims and values.
pub fn run_graph(onnx: &[u8], dims: &[usize], input: &[f32]) -> (Vec<i64>, Vec<f32>) {
    let mut session =
        ort::session::Session::builder(fleet_inference::runtime::environment().unwrap())
            .unwrap()
            .commit_from_memory(onnx)
            .unwrap();
    let tensor = ort::value::TensorRef::from_array_view((dims.to_vec(), input)).unwrap();
    let outputs = session.run(ort::inputs!["input" => tensor]).unwrap();
    let (shape, values) = outputs["output"].try_extract_tensor::<f32>().unwrap();
    (shape.to_vec(), values.to_vec())
}

/// The fixtures' real photos and the reference answers of their float16 SqueezeNet
/// (`real-photos/reference_predictions.csv`).
pub mod real_photos {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    use super::fixture;

    /// The SqueezeNet's documented recipe: BGR, raw 0..255, no normalisation; the photos
    /// prepared as torchvision prepares them (shorter side to 256 with Pillow's bilinear,
    /// centre 224x224).
    pub const RECIPE: [&str; 8] = [
        "--channel-order",
        "bgr",
        "--resize",
        "center-crop",
        "--shorter-side",
        "256",
        "--filter",
        "pillow-bilinear",
    ];

    /// The model's reference answer for one photo.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Reference {
        pub top1: u32,
        pub probability: f64,
        /// The top-5 classes; empty where the 5th and 6th probabilities tie.
        pub top5: Vec<u32>,
    }

    /// The reference predictions, by photo.
    pub fn reference() -> HashMap<String, Reference> {
        let text =
            std::fs::read_to_string(fixture("real-photos/reference_predictions.csv")).unwrap();
        text.lines()
            .skip(1)
            .map(|line| {
                let fields: Vec<&str> = line.split(',').collect();
                let mut top: Vec<u32> = fields[1..6].iter().map(|v| v.parse().unwrap()).collect();
                if fields[8] == "1" {
                    top.clear();
                }
                (
                    fields[0].to_owned(),
                    Reference {
                        top1: fields[1].parse().unwrap(),
                        probability: fields[6].parse().unwrap(),
                        top5: top,
                    },
                )
            })
            .collect()
    }

    /// Rows of a `scores.csv` (no field here holds a comma), as maps from column to value.
    pub fn rows(path: &Path) -> Vec<HashMap<String, String>> {
        let text = std::fs::read_to_string(path).unwrap();
        let mut lines = text.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap()
            .split(',')
            .map(str::to_owned)
            .collect();
        lines
            .map(|line| {
                header
                    .iter()
                    .cloned()
                    .zip(line.split(',').map(str::to_owned))
                    .collect()
            })
            .collect()
    }

    pub fn synset_ids() -> Vec<String> {
        std::fs::read_to_string(fixture("real-photos/synset_words.txt"))
            .unwrap()
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect()
    }

    /// The photos laid out as ImageNet's validation set is: each in the folder of its class id,
    /// the class being the model's reference answer (so accuracy is agreement with it).
    pub fn imagenet_layout(root: &Path, reference: &HashMap<String, Reference>) -> PathBuf {
        let ids = synset_ids();
        let val = root.join("val");
        for (photo, answer) in reference {
            let folder = val.join(&ids[answer.top1 as usize]);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::copy(
                fixture("real-photos/photos").join(photo),
                folder.join(photo),
            )
            .unwrap();
        }
        val
    }
}

/// What a test's fault may stand in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCall {
    /// Reading a blob.
    Open,
    /// Writing a blob.
    Put,
}

/// A fault: the error a call on a key gets instead of the real store's answer, if any.
pub type Fault = dyn Fn(StoreCall, &str) -> Option<fleet_storage::StoreError> + Send + Sync;

/// The real store, with faults injected: reads and writes ask `fault` first, and get its error
/// when it has one; every other call goes to the real store.
pub struct InjectedStore {
    /// The real store.
    pub inner: std::sync::Arc<dyn fleet_storage::BlobStore>,
    /// Which calls fail, and how.
    pub fault: Box<Fault>,
}

impl std::fmt::Debug for InjectedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InjectedStore({:?})", self.inner)
    }
}

impl fleet_storage::BlobStore for InjectedStore {
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>, fleet_storage::StoreError> {
        match (self.fault)(StoreCall::Open, key) {
            Some(e) => Err(e),
            None => self.inner.open(key),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), fleet_storage::StoreError> {
        match (self.fault)(StoreCall::Put, key) {
            Some(e) => Err(e),
            None => self.inner.put(key, bytes),
        }
    }

    fn put_file(&self, key: &str, path: &Path) -> Result<(), fleet_storage::StoreError> {
        self.inner.put_file(key, path)
    }

    fn exists(&self, key: &str) -> Result<bool, fleet_storage::StoreError> {
        self.inner.exists(key)
    }

    fn list_pages(
        &self,
        prefix: &str,
        each: &mut dyn FnMut(
            Vec<fleet_storage::Listed>,
        )
            -> Result<std::ops::ControlFlow<()>, fleet_storage::StoreError>,
    ) -> Result<(), fleet_storage::StoreError> {
        self.inner.list_pages(prefix, each)
    }

    fn delete(&self, key: &str) -> Result<(), fleet_storage::StoreError> {
        self.inner.delete(key)
    }

    fn stage_block(
        &self,
        key: &str,
        block: u32,
        bytes: &[u8],
    ) -> Result<(), fleet_storage::StoreError> {
        self.inner.stage_block(key, block, bytes)
    }

    fn commit_blocks(&self, key: &str, blocks: &[u32]) -> Result<(), fleet_storage::StoreError> {
        self.inner.commit_blocks(key, blocks)
    }

    fn discard_blocks(&self, key: &str) -> Result<(), fleet_storage::StoreError> {
        self.inner.discard_blocks(key)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn location(&self, key: &str) -> String {
        self.inner.location(key)
    }

    fn container(&self) -> &str {
        self.inner.container()
    }

    fn shareable(&self, key: &str, lifetime: std::time::Duration) -> Option<String> {
        self.inner.shareable(key, lifetime)
    }
}
