//! `report.html` of real jobs, rendered by a real browser (headless Chromium): the page draws
//! something, and its DOM holds what a reader needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use fleet_protocol::Summary;
use fleet_protocol::gallery::GALLERY_SIZE;
use fleet_tests::{JobRun, Producer, field, fixture, run_ok, stage_fixtures};

/// Chromium's name on Debian (`apt-get install chromium`; `.ci/run` installs it).
const CHROMIUM: &str = "chromium";

/// Chromium with nothing of the user's: a profile of its own, no sandbox (CI runs as root), no
/// GPU.
fn chromium(profile: &Path, args: &[&str]) -> std::process::Output {
    Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map(|child| fleet_tests::wait_output(child, CHROMIUM, fleet_tests::PROCESS_DEADLINE))
        .unwrap_or_else(|e| {
            panic!("cannot run {CHROMIUM} ({e}): install it with `apt-get install chromium`")
        })
}

/// What the browser made of a report: its DOM after loading, and a screenshot's pixels.
struct Rendered {
    dom: String,
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

fn render(report: &Path) -> Rendered {
    let work = tempfile::tempdir().unwrap();
    let url = format!("file://{}", report.display());
    let dom = chromium(&work.path().join("dom"), &["--dump-dom", &url]);
    assert!(
        dom.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let shot = work.path().join("shot.png");
    let output = chromium(
        &work.path().join("shot"),
        &[
            "--window-size=1200,2400",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    assert!(
        output.status.success() && shot.is_file(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let channels = info.color_type.samples();
    let rgb = buf
        .chunks_exact(channels)
        .flat_map(|px| [px[0], px[1], px[2]])
        .collect();
    Rendered {
        dom: String::from_utf8(dom.stdout).unwrap(),
        width: info.width as usize,
        height: info.height as usize,
        rgb,
    }
}

impl Rendered {
    /// A blank page (or one that failed to load) is one colour; this page has text, bars, a
    /// heat map and photographs.
    fn assert_not_blank(&self) {
        let pixels = self.width * self.height;
        let background = [255u8, 255, 255];
        let inked = self
            .rgb
            .chunks_exact(3)
            .filter(|px| *px != background)
            .count();
        let colours: std::collections::HashSet<&[u8]> = self.rgb.chunks_exact(3).collect();
        assert!(
            inked * 20 > pixels,
            "the screenshot is nearly blank: {inked} of {pixels} pixels drawn"
        );
        assert!(
            colours.len() > 100,
            "the screenshot has only {} colours: nothing but a few flat boxes",
            colours.len()
        );
    }

    /// Images inside the element with this id.
    fn images_in(&self, id: &str) -> usize {
        let start = self
            .dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no element with id {id} in the DOM"));
        let section = &self.dom[start..];
        let end = section.find("</div>").expect("the gallery closes");
        section[..end].matches("<img").count()
    }
}

/// The report is one file: nothing it shows comes from elsewhere.
fn assert_self_contained(html: &str) {
    assert!(!html.contains("<script"), "the report runs scripts");
    for attribute in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(
            !html.contains(attribute),
            "the report fetches something ({attribute})"
        );
    }
}

fn report_path(run: &JobRun) -> PathBuf {
    let path = PathBuf::from(field(&run.said, "report"));
    assert!(
        path.is_file(),
        "the printed report {} is missing",
        path.display()
    );
    path
}

#[test]
fn a_labelled_jobs_report_reads_in_a_browser() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    stage_fixtures(root.path(), "ctr");
    let output = Producer::embedded(store, "ctr").job();
    let report = report_path(&output);
    let job = output.id.clone();
    // `producer status` lists it complete; with its id, it names the report.
    let listed = run_ok(
        "producer",
        &["status", "--store", store, "--container", "ctr"],
    );
    assert!(
        listed.lines().any(|l| l.starts_with(&job)
            && l.contains(" complete ")
            && l.contains("Correctly predicted")),
        "{listed}"
    );
    let details = run_ok(
        "producer",
        &["status", "--store", store, "--container", "ctr", &job],
    );
    assert!(
        details.contains(&format!("report: {}", report.display())),
        "{details}"
    );
    assert_eq!(
        report,
        std::path::absolute(root.path().join(format!("ctr/results/{job}/report.html"))).unwrap()
    );
    let summary: Summary =
        serde_json::from_slice(&std::fs::read(report.with_file_name("summary.json")).unwrap())
            .unwrap();
    let html = std::fs::read_to_string(&report).unwrap();
    assert_self_contained(&html);

    let page = render(&report);
    page.assert_not_blank();
    // The walkthrough's line, as the run printed it and as the summary counts it.
    let line = format!(
        "Correctly predicted {} of {} images ({:.2}%)",
        summary.correct,
        summary.labelled,
        100.0 * summary.correct as f64 / summary.labelled as f64
    );
    assert!(output.contains(&line), "{output}");
    assert!(page.dom.contains(&line), "the DOM lacks {line:?}");
    for class in &summary.classes {
        assert!(
            page.dom.contains(&format!(">{class}<")),
            "the DOM lacks class {class}"
        );
    }
    // Every class in the per-class table, with its accuracy from the summary.
    for class in &summary.per_class {
        let cell = format!(
            "<td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td>",
            class.class,
            class.images,
            class.correct,
            100.0 * class.accuracy
        );
        assert!(page.dom.contains(&cell), "the DOM lacks {cell:?}");
    }
    // This model gets 2,004 of the 10,000 wrong: a full gallery of mistakes, and the sample.
    assert!(summary.correct < summary.labelled - GALLERY_SIZE as u64);
    assert_eq!(page.images_in("mistakes"), GALLERY_SIZE);
    assert!(page.images_in("samples") > 0);
    // The reading starts with the pair of classes mixed up most (both ways), as counted from
    // confusion.csv here.
    let confusion: Vec<Vec<u64>> = std::fs::read_to_string(report.with_file_name("confusion.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| {
            line.split(',')
                .skip(1)
                .map(|n| n.parse().unwrap())
                .collect()
        })
        .collect();
    let n = summary.classes.len();
    let (a, b) = (0..n)
        .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
        .max_by_key(|&(a, b)| confusion[a][b] + confusion[b][a])
        .unwrap();
    let (a, b) = (&summary.classes[a], &summary.classes[b]);
    assert!(
        page.dom.contains(&format!("{a} and {b} are confused most"))
            || page.dom.contains(&format!("{b} and {a} are confused most")),
        "the reading does not start with {a} and {b}"
    );
    assert!(
        page.dom.contains("data:image/png;base64,"),
        "no heat map inline"
    );
    assert!(
        !page.dom.contains("Least confident"),
        "a labelled job has no unlabelled section"
    );
}

#[test]
fn an_unlabelled_jobs_report_shows_the_distribution_and_unreadable_images() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    let images = root.path().join("digits");
    std::fs::create_dir(&images).unwrap();
    for entry in std::fs::read_dir(fixture("cntk-models/mnist-digits")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), images.join(entry.file_name())).unwrap();
    }
    std::fs::write(images.join("not-a-digit.png"), b"this is text, not a PNG").unwrap();
    Producer::stage(store, "ctr")
        .args(&[
            "--images",
            images.to_str().unwrap(),
            "--prefix",
            "digits",
            "--model",
            fixture("cntk-models/MNISTConvolution.model")
                .to_str()
                .unwrap(),
            "--model-name",
            "mnist",
        ])
        .ok();
    let output = Producer::embedded(store, "ctr")
        .args(&["--dataset", "digits", "--model-name", "mnist"])
        .job();
    let report = report_path(&output);
    let html = std::fs::read_to_string(&report).unwrap();
    assert_self_contained(&html);
    let page = render(&report);
    page.assert_not_blank();
    assert!(
        page.dom.contains("Scored 10 images (no true labels)"),
        "{}",
        page.dom
    );
    assert!(!page.dom.contains("Correctly predicted"));
    assert!(!page.dom.contains("id=\"mistakes\""));
    // Class names come from the model's spec: class_0 .. class_9 without a class file.
    for digit in 0..10 {
        assert!(
            page.dom.contains(&format!(">class_{digit}<")),
            "class_{digit} missing"
        );
    }
    assert!(page.dom.contains("id=\"distribution\""));
    // Ten digits scored, all without labels: the least confident ones, up to a gallery.
    assert_eq!(page.images_in("low-confidence"), 10);
    // The unreadable file, named, with its error.
    let unreadable = &page.dom[page
        .dom
        .find("id=\"unreadable\"")
        .expect("unreadable table")..];
    assert!(unreadable.contains("not-a-digit.png"));
    assert!(unreadable.contains("not an image this product reads"));
}
