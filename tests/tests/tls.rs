//! `amqps://`: the fleet through a RabbitMQ that speaks only TLS, with a certificate made here
//! by a certificate authority made here (`openssl`, and a RabbitMQ node of its own started
//! with `rabbitmq-server`, both as installed on the CI machine).

use std::path::Path;
use std::process::Command;

use fleet_tests::{Fleet, OwnRabbit, finish, free_port, run_with, spawn, terminate};

/// A RabbitMQ node listening for TLS only, stopped when dropped, and the authority that
/// signed its certificate.
struct TlsBroker {
    node: OwnRabbit,
    ca: std::path::PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed to make the test's certificates");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn start_tls_broker() -> TlsBroker {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    // A certificate authority, and the broker's certificate for localhost signed by it.
    openssl(
        path,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=fleet test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    openssl(
        path,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        path.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        path,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let port = free_port();
    let config = format!(
        "listeners.tcp = none\nlisteners.ssl.default = 127.0.0.1:{port}\n\
         ssl_options.cacertfile = {0}/ca.pem\nssl_options.certfile = {0}/server.pem\n\
         ssl_options.keyfile = {0}/server.key\nssl_options.verify = verify_none\n\
         ssl_options.fail_if_no_peer_cert = false\n",
        path.display()
    );
    let ca = path.join("ca.pem");
    TlsBroker {
        node: OwnRabbit::start_in(dir, port, &config),
        ca,
    }
}

#[test]
fn the_fleet_runs_over_amqps_with_a_private_certificate_authority() {
    let broker = start_tls_broker();
    let fleet = Fleet::isolated();
    fleet.stage();
    let url = format!("amqps://guest:guest@localhost:{}/%2f", broker.node.port());
    let ca = broker.ca.display().to_string();
    let mut env = fleet.env();
    env.retain(|(k, _)| *k != "AMQP_URL");
    // Without the authority the broker's certificate is not trusted, and the error says so.
    let mut untrusted = env.clone();
    untrusted.push(("AMQP_URL", &url));
    let out = run_with("worker", &[], &untrusted);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("invalid peer certificate") && stderr.contains("--amqp-ca-cert"),
        "an untrusted broker should fail on its certificate, naming the fix:\n{stderr}"
    );
    assert!(
        !stderr.contains("guest:guest"),
        "the password leaked:\n{stderr}"
    );

    env.push(("AMQP_URL", &url));
    env.push(("AMQP_CA_CERT", &ca));
    let collector = spawn("collector", &[], &env);
    let worker = spawn("worker", &[], &env);
    let producer = spawn("producer", &["--wait", "--partition-size", "1000"], &env);
    let job = finish(producer);
    terminate(worker);
    terminate(collector);
    fleet.assert_matches_reference(&job);
}
