//! What the binaries print for a person: `--help` names the variables that hold secrets but
//! never prints their values, even when they are set (as they are in a deployed container,
//! where help may end up in logs); a failing command says what went wrong, each cause once.

use fleet_tests::bin;

/// The secrets each binary can read from its environment, with values a test can look for.
const SECRETS: [(&str, &str); 3] = [
    (
        "AMQP_URL",
        "amqps://fleet:broker-password-SECRET@broker.example:5671/%2f",
    ),
    (
        "AZURE_STORAGE_CONNECTION_STRING",
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=account-key-SECRET==;EndpointSuffix=core.windows.net",
    ),
    (
        "FLEET_STORE",
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=store-key-SECRET==;EndpointSuffix=core.windows.net",
    ),
];

fn help(name: &str, args: &[&str]) -> String {
    let output = fleet_tests::output(
        std::process::Command::new(bin(name))
            .args(args)
            .envs(SECRETS),
    );
    assert!(
        output.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("Usage:"),
        "{name} {args:?} printed no help:\n{text}"
    );
    text
}

#[test]
fn help_never_prints_a_secret() {
    let cases: [(&str, &[&str], &[&str]); 9] = [
        (
            "producer",
            &["--help"],
            &["AMQP_URL", "AZURE_STORAGE_CONNECTION_STRING", "FLEET_STORE"],
        ),
        ("producer", &["-h"], &["AMQP_URL", "FLEET_STORE"]),
        (
            "producer",
            &["stage", "--help"],
            &["AZURE_STORAGE_CONNECTION_STRING", "FLEET_STORE"],
        ),
        ("producer", &["convert", "--help"], &[]),
        (
            "worker",
            &["--help"],
            &["AMQP_URL", "AZURE_STORAGE_CONNECTION_STRING", "FLEET_STORE"],
        ),
        ("worker", &["-h"], &["AMQP_URL", "FLEET_STORE"]),
        (
            "collector",
            &["--help"],
            &["AMQP_URL", "AZURE_STORAGE_CONNECTION_STRING", "FLEET_STORE"],
        ),
        ("collector", &["-h"], &["AMQP_URL", "FLEET_STORE"]),
        (
            "bench",
            &["--help"],
            &["AMQP_URL", "AZURE_STORAGE_CONNECTION_STRING"],
        ),
    ];
    for (name, args, variables) in cases {
        let text = help(name, args);
        for variable in variables {
            assert!(
                text.contains(&format!("env: {variable}")),
                "{name} {args:?} does not name {variable}, so this test would not see its value:\n{text}"
            );
        }
        assert!(
            !text.contains("SECRET"),
            "{name} {args:?} printed a secret:\n{text}"
        );
        assert!(
            !text.contains("AccountKey"),
            "{name} {args:?} printed an account key (a default?):\n{text}"
        );
    }
}

/// The whole standard error of `producer args`, which must fail; `store` written as `STORE`.
fn producer_error(args: &[&str], store: &std::path::Path) -> String {
    let output = fleet_tests::output(
        std::process::Command::new(bin("producer"))
            .args(args)
            .env_remove("FLEET_STORE")
            .env_remove("AZURE_STORAGE_CONNECTION_STRING")
            .env_remove("FLEET_CONTAINER")
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0")
            .env("RUST_LOG", "warn"),
    );
    assert!(!output.status.success(), "producer {args:?} succeeded");
    String::from_utf8(output.stderr)
        .unwrap()
        .replace(store.to_str().unwrap(), "STORE")
}

#[test]
fn a_failing_command_says_what_went_wrong_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(store.join("ctr")).unwrap();
    let s = store.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "stage",
                "--store",
                s,
                "--container",
                "ctr",
                "--tarball",
                "/nonexistent.tar.gz",
            ],
            "Error: cannot read /nonexistent.tar.gz: No such file or directory (os error 2)\n",
        ),
        (
            &["--container", "ctr", "--embedded"],
            "Error: no store given: pass --store DIR for a local store, or an Azure connection \
             string (--store or AZURE_STORAGE_CONNECTION_STRING)\n",
        ),
        (
            &["convert", "/nonexistent.dnn"],
            "Error: cannot read /nonexistent.dnn\n\nCaused by:\n    No such file or directory \
             (os error 2)\n",
        ),
        (
            &["--store", s, "--container", "ctr", "--embedded"],
            "Error: local container STORE/ctr has no staged model; stage one with `producer \
             stage --model FILE`\n",
        ),
        (
            &[
                "--store",
                s,
                "--container",
                "ctr",
                "--embedded",
                "--model-name",
                "nope",
            ],
            "Error: model nope is not staged in local container STORE/ctr (no \
             models/nope.json); run `producer stage --model ... --model-name nope` first\n",
        ),
    ];
    for (args, expected) in cases {
        assert_eq!(producer_error(args, &store), expected, "producer {args:?}");
    }
}
