//! `--help` of every binary names the variables that hold secrets but never prints their values,
//! even when they are set (as they are in a deployed container, where help may end up in logs).

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
