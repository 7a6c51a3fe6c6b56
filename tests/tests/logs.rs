//! Log lines as a log pipeline reads them: standard error is not a terminal here, as in a
//! container, so text logs carry no colour codes, and `--log-format json` gives one JSON object
//! per line.

use std::process::Command;

use fleet_tests::{bin, stage_fixtures};

/// The embedded job with every info line logged; returns standard error.
fn job_logs(format: &str) -> String {
    let root = tempfile::tempdir().unwrap();
    stage_fixtures(root.path(), "ctr");
    let output = fleet_tests::output(
        Command::new(bin("producer"))
            .args([
                "--store",
                root.path().to_str().unwrap(),
                "--container",
                "ctr",
                "--embedded",
                "--log-format",
                format,
            ])
            .env("RUST_LOG", "info"),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stderr).unwrap()
}

#[test]
fn text_logs_off_a_terminal_have_no_colour_codes() {
    let logs = job_logs("text");
    assert!(logs.contains("job submitted"), "{logs}");
    assert!(!logs.contains('\x1b'), "escape codes in:\n{logs}");
}

#[test]
fn json_logs_parse_line_by_line() {
    let logs = job_logs("json");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    assert!(lines.len() >= 3, "{logs}");
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line[key].is_string(), "no {key} in {line}");
        }
    }
    // The event's fields are keys of their own, for queries in the log store.
    let submitted = lines
        .iter()
        .find(|l| l["message"] == "job submitted")
        .unwrap_or_else(|| panic!("no 'job submitted' line in:\n{logs}"));
    assert_eq!(submitted["level"], "INFO");
    assert_eq!(submitted["images"], 10_000);
    assert!(submitted["job"].is_string());
}
