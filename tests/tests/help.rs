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
            "Error: cannot read /nonexistent.tar.gz\n\nCaused by:\n    No such file or directory \
             (os error 2)\n",
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

/// Each flag a `--help` of `name args` lists (`--store`), with the environment variable it
/// falls back to, if any; `--help` and `--version` left out.
fn flags_in_help(name: &str, args: &[&str]) -> Vec<(String, Option<String>)> {
    let text = help(name, args);
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        // A flag's own line starts with it, indented less than its prose (`      --store
        // <DIR>`, `  -o, --output <OUTPUT>`); the prose may name other flags, and does not
        // count.
        let indent = line.len() - trimmed.len();
        let flag = match trimmed.split_once("--") {
            Some((short, rest)) if indent <= 6 && (short.is_empty() || short.len() == 4) => {
                rest.split([' ', '<']).next().map(|f| format!("--{f}"))
            }
            _ => None,
        };
        if let Some(flag) = flag.filter(|f| f != "--help" && f != "--version") {
            flags.push((flag, None));
        } else if let Some(env) = trimmed.strip_prefix("[env: ")
            && let Some(last) = flags.last_mut()
        {
            let env = env.trim_end_matches(']');
            last.1 = Some(env.split('=').next().unwrap_or(env).to_owned());
        }
    }
    flags
}

/// The flags the README's option tables (the rows of its "Options" section) name, each with
/// the environment variables its rows give.
fn flags_in_readme() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let options = readme
        .split_once("\n### Options\n")
        .expect("the README has an Options section")
        .1;
    let options = options.split("\n## ").next().unwrap();
    let options = options.split("\n### ").next().unwrap();
    let mut flags: std::collections::BTreeMap<_, std::collections::BTreeSet<String>> =
        Default::default();
    for row in options.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).skip(1).collect();
        let ticked = |cell: &str| -> Vec<String> {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect()
        };
        let envs = ticked(cells.get(1).copied().unwrap_or_default());
        for flag in ticked(cells[0]) {
            flags.entry(flag).or_default().extend(envs.iter().cloned());
        }
    }
    flags
}

/// The README's option tables and the binaries' `--help` list the same flags, with the same
/// environment variables: a flag added to a binary is documented, and a documented flag exists.
#[test]
fn the_readme_lists_every_flag_of_every_binary_and_no_other() {
    let mut in_help: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let binaries: [(&str, &[&str]); 9] = [
        ("producer", &["--help"]),
        ("producer", &["stage", "--help"]),
        ("producer", &["convert", "--help"]),
        ("producer", &["status", "--help"]),
        ("producer", &["results", "--help"]),
        ("producer", &["cancel", "--help"]),
        ("producer", &["retry", "--help"]),
        ("worker", &["--help"]),
        ("collector", &["--help"]),
    ];
    for (name, args) in binaries {
        for (flag, env) in flags_in_help(name, args) {
            in_help.entry(flag).or_default().extend(env);
        }
    }
    // What this test reads of help, it reads right.
    assert!(
        in_help["--store"].contains("FLEET_STORE") && in_help.contains_key("--output"),
        "{in_help:?}"
    );
    let in_readme = flags_in_readme();
    let undocumented: Vec<&String> = in_help
        .keys()
        .filter(|f| !in_readme.contains_key(*f))
        .collect();
    let unknown: Vec<&String> = in_readme
        .keys()
        .filter(|f| !in_help.contains_key(*f))
        .collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "flags in --help but not in the README's options: {undocumented:?}; in the README but \
         in no --help: {unknown:?}"
    );
    for (flag, envs) in &in_help {
        assert_eq!(
            envs, &in_readme[flag],
            "{flag}: --help and the README name other environment variables"
        );
    }
}

/// Help is read by people: a doc comment's rustdoc links (`[`Name`]`) must not reach it, and a
/// flag's variable is named without a value (`[env: FLEET_CONTAINER=]` reads as "set to
/// empty").
#[test]
fn help_is_plain_text_for_people() {
    let cases: [(&str, &[&str]); 9] = [
        ("producer", &["--help"]),
        ("producer", &["stage", "--help"]),
        ("producer", &["status", "--help"]),
        ("producer", &["cancel", "--help"]),
        ("producer", &["retry", "--help"]),
        ("producer", &["convert", "--help"]),
        ("worker", &["--help"]),
        ("collector", &["--help"]),
        ("bench", &["--help"]),
    ];
    for (name, args) in cases {
        let text = help(name, args);
        assert!(
            !text.contains("[`"),
            "{name} {args:?} shows rustdoc syntax:\n{text}"
        );
        let valued = text
            .lines()
            .find(|line| line.contains("[env: ") && line.contains('='));
        assert!(valued.is_none(), "{name} {args:?}: {valued:?}");
    }
}
