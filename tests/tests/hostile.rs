//! Hostile and careless input: names that would reach outside the store, links out of a staged
//! folder, names a spreadsheet would run as formulas. Each is refused with a message that says
//! what to do, or neutralised, and nothing is written outside the store.

use std::path::Path;

use fleet_tests::{JobRun, field, fixture, run_err, run_ok, stage_fixtures};

/// Every path under `dir`, relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(current) = dirs.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() && !path.is_symlink() {
                dirs.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `producer stage` of the images under `folder` as `prefix`, which must succeed.
fn stage_images(store: &str, folder: &str, prefix: &str) -> String {
    run_ok(
        "producer",
        &[
            "stage",
            "--store",
            store,
            "--container",
            "cifar",
            "--images",
            folder,
            "--prefix",
            prefix,
        ],
    )
}

/// An embedded job over `dataset` in the store's `cifar` container, with `extra` flags, which
/// must succeed.
fn run_job(store: &str, dataset: &str, extra: &[&str]) -> JobRun {
    let args = [
        &[
            "--store",
            store,
            "--container",
            "cifar",
            "--embedded",
            "--dataset",
            dataset,
        ][..],
        extra,
    ]
    .concat();
    fleet_tests::run_job(&args)
}

/// Where the job of an embedded run wrote its results.
fn results(store: &str, run: &JobRun) -> std::path::PathBuf {
    Path::new(store).join("cifar/results").join(&run.id)
}

/// The peak memory an embedded run printed, in MB.
fn peak_mb(run: &JobRun) -> u64 {
    field(&run.said, "peak memory")
        .trim_end_matches(" MB")
        .parse()
        .unwrap()
}

#[test]
fn container_names_and_prefixes_cannot_reach_outside_the_store() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    stage_fixtures(&store, "cifar");
    let store = store.to_str().unwrap();
    let before = tree(root.path());
    for container in ["..", "../elsewhere", "/tmp", "Cifar", "c"] {
        let err = run_err(
            "producer",
            &["--store", store, "--container", container, "--embedded"],
        );
        assert!(
            err.contains("is not a container name"),
            "{container}: {err}"
        );
        let err = run_err(
            "producer",
            &[
                "stage",
                "--store",
                store,
                "--container",
                container,
                "--model",
                fixture("resnet20_meanimage_159.dnn").to_str().unwrap(),
            ],
        );
        assert!(
            err.contains("is not a container name"),
            "{container}: {err}"
        );
    }
    // A dataset prefix is confined to the container: `..` would list the other containers.
    for dataset in ["..", "../", "../other/", "/etc/"] {
        let err = run_err(
            "producer",
            &[
                "--store",
                store,
                "--container",
                "cifar",
                "--embedded",
                "--dataset",
                dataset,
            ],
        );
        assert!(
            err.contains(dataset.trim_end_matches('/')),
            "{dataset}: {err}"
        );
    }
    assert_eq!(tree(root.path()), before, "nothing written anywhere");
}

#[test]
fn staging_a_folder_follows_no_link_out_of_it_and_says_what_it_left_out() {
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("images");
    std::fs::create_dir_all(folder.join("cat")).unwrap();
    let jpeg = fixture("cifar-10-test-jpeg/cat/0000.jpg");
    std::fs::copy(&jpeg, folder.join("cat/0000.jpg")).unwrap();
    let secret = root.path().join("secret.txt");
    std::fs::write(&secret, "not for the store").unwrap();
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::copy(&jpeg, outside.join("x.jpg")).unwrap();
    std::os::unix::fs::symlink(&secret, folder.join("cat/passwd")).unwrap();
    std::os::unix::fs::symlink(&outside, folder.join("dog")).unwrap();
    // A link inside the folder is followed, and a link back up does not loop.
    std::os::unix::fs::symlink(folder.join("cat/0000.jpg"), folder.join("cat/0001.jpg")).unwrap();
    std::os::unix::fs::symlink(&folder, folder.join("cat/again")).unwrap();
    // Latin-1 bytes: no UTF-8 name, which a lossy conversion would merge with another.
    use std::os::unix::ffi::OsStrExt;
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9.jpg");
    std::fs::copy(&jpeg, folder.join("cat").join(latin1)).unwrap();
    let store = root.path().join("store");
    let output = run_ok(
        "producer",
        &[
            "stage",
            "--store",
            store.to_str().unwrap(),
            "--container",
            "cifar",
            "--images",
            folder.to_str().unwrap(),
            "--prefix",
            "pets",
        ],
    );
    assert!(output.contains("not staged:"), "{output}");
    assert!(
        output.contains("passwd (a link out of the folder)"),
        "{output}"
    );
    assert!(
        output.contains("dog (a link out of the folder)"),
        "{output}"
    );
    assert!(output.contains("(its name is not UTF-8)"), "{output}");
    let staged = tree(&store.join("cifar/pets"));
    assert_eq!(
        staged,
        ["cat", "cat/0000.jpg", "cat/0001.jpg"],
        "only what lies inside the folder"
    );
}

#[test]
fn names_a_spreadsheet_would_run_are_written_as_text() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    stage_fixtures(&store, "cifar");
    let folder = root.path().join("images");
    let class = "=HYPERLINK(\"http:evil\",\"x\")";
    std::fs::create_dir_all(folder.join(class)).unwrap();
    std::fs::create_dir_all(folder.join("cat")).unwrap();
    for (i, name) in ["+1.jpg", "@SUM(A1).jpg", "-2.jpg"].iter().enumerate() {
        let jpeg = fixture(&format!("cifar-10-test-jpeg/cat/000{i}.jpg"));
        std::fs::copy(&jpeg, folder.join("cat").join(name)).unwrap();
        std::fs::copy(&jpeg, folder.join(class).join(name)).unwrap();
    }
    let store = store.to_str().unwrap();
    stage_images(store, folder.to_str().unwrap(), "pets");
    let output = run_job(store, "pets/", &["--labels", "none"]);
    let scores = std::fs::read_to_string(results(store, &output).join("scores.csv")).unwrap();
    let mut rows = 0;
    for line in scores.lines().skip(1) {
        rows += 1;
        let file = line.split(',').nth(1).unwrap();
        // Names are relative to the dataset prefix: they begin with the folder's name.
        assert!(
            file.starts_with("cat/") || file.starts_with("\"'=HYPERLINK("),
            "{line}"
        );
        for cell in line.split(',') {
            assert!(
                !cell.starts_with(['=', '+', '@']),
                "a cell a spreadsheet would run: {line}"
            );
        }
    }
    assert_eq!(rows, 6, "{scores}");
}

/// A classifier over `classes` classes taking `[N, 3, 32, 32]`: global average pool, then a
/// `3 x classes` weight matrix (a few MB even for a million classes).
fn wide_classifier(classes: i64) -> Vec<u8> {
    use cntk_onnx::proto::onnx::{
        Dimension, DimensionValue, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
        TensorProto, TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
    };
    use prost::Message;
    let dims = |d: &[Option<i64>]| TensorShapeProto {
        dim: d
            .iter()
            .map(|v| Dimension {
                value: Some(v.map_or(DimensionValue::Param("N".into()), DimensionValue::Value)),
            })
            .collect(),
    };
    let info = |name: &str, shape| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: 1,
                shape: Some(shape),
            }),
        }),
    };
    let node = |op: &str, inputs: &[&str], o: &str| NodeProto {
        input: inputs.iter().map(|i| i.to_string()).collect(),
        output: vec![o.into()],
        name: o.into(),
        op_type: op.into(),
        ..Default::default()
    };
    // Weights that differ by class, so that images of different colours rank differently.
    let weights: Vec<u8> = (0..3 * classes)
        .flat_map(|i| (((i * 7919) % 1009) as f32 * 1e-3).to_le_bytes())
        .collect();
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "wide".into(),
            node: vec![
                node("GlobalAveragePool", &["input"], "pooled"),
                node("Flatten", &["pooled"], "flat"),
                node("MatMul", &["flat", "weights"], "output"),
            ],
            initializer: vec![TensorProto {
                dims: vec![3, classes],
                data_type: 1,
                name: "weights".into(),
                raw_data: weights,
            }],
            input: vec![info("input", dims(&[None, Some(3), Some(32), Some(32)]))],
            output: vec![info("output", dims(&[None, Some(classes)]))],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A million-class model scoring a few labelled images costs memory in proportion to the
/// images: the confusion matrix is sparse, each call's outputs are ranked as they come, and
/// the tables list the classes that occur.
#[test]
fn a_million_class_model_costs_memory_by_images_not_classes_squared() {
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("images");
    for (class, i) in [
        ("class_1", 0),
        ("class_1", 1),
        ("class_999999", 2),
        ("class_5", 3),
    ] {
        std::fs::create_dir_all(folder.join(class)).unwrap();
        std::fs::copy(
            fixture(&format!("cifar-10-test-jpeg/cat/000{i}.jpg")),
            folder.join(class).join(format!("{i}.jpg")),
        )
        .unwrap();
    }
    let model = root.path().join("wide.onnx");
    std::fs::write(&model, wide_classifier(1_000_000)).unwrap();
    let names = root.path().join("classes.txt");
    let list: String = (0..1_000_000).map(|i| format!("class_{i}\n")).collect();
    std::fs::write(&names, list).unwrap();
    let store = root.path().join("store");
    let store = store.to_str().unwrap();
    for what in [
        &["--images", folder.to_str().unwrap(), "--prefix", "wide"][..],
        &[
            "--model",
            model.to_str().unwrap(),
            "--model-name",
            "wide",
            "--classes",
            names.to_str().unwrap(),
        ],
    ] {
        run_ok(
            "producer",
            &[
                &["stage", "--store", store, "--container", "cifar"][..],
                what,
            ]
            .concat(),
        );
    }
    let output = run_job(
        store,
        "wide/",
        &[
            "--model-name",
            "wide",
            "--labels",
            "folders",
            "--top-k",
            "3",
        ],
    );
    assert!(output.contains("of 4 images"), "{output}");
    let peak: u64 = peak_mb(&output);
    println!("a 1,000,000-class job over 4 images: peak memory {peak} MB");
    assert!(peak < 500, "{peak} MB");
    let results = results(store, &output);
    let confusion = std::fs::read_to_string(results.join("confusion.csv")).unwrap();
    // The classes the 4 images have or were given, not a 10^12-cell matrix.
    let lines: Vec<&str> = confusion.lines().collect();
    let seen = lines[0].split(',').count() - 1;
    assert!(
        lines[0].starts_with("true_class\\predicted_class,") && (1..=8).contains(&seen),
        "{confusion}"
    );
    assert_eq!(lines.len(), 1 + seen, "{confusion}");
    let cells: u64 = lines[1..]
        .iter()
        .flat_map(|l| l.split(',').skip(1))
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert_eq!(cells, 4);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["labelled"], 4);
    // The classes with images, not a million entries of nothing.
    let per_class = summary["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), 3);
    assert!(summary["predicted"].as_array().unwrap().len() <= 4);
}

/// A FIFO in a local store is no blob: listing leaves it out and reading it is refused, where
/// opening it would wait for a writer forever.
#[test]
fn a_fifo_in_the_store_is_not_waited_on() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    stage_fixtures(&store, "cifar");
    let folder = root.path().join("images/cat");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..3 {
        let jpeg = fixture(&format!("cifar-10-test-jpeg/cat/000{i}.jpg"));
        std::fs::copy(&jpeg, folder.join(format!("{i}.jpg"))).unwrap();
    }
    let store_arg = store.to_str().unwrap();
    stage_images(
        store_arg,
        folder.parent().unwrap().to_str().unwrap(),
        "pets",
    );
    let fifo = store.join("cifar/pets/cat/3.jpg");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let output = run_job(store_arg, "pets/", &["--labels", "none"]);
    assert!(output.contains("Scored 3 images"), "{output}");
}

/// `png` with a chunk of type `kind` holding `data` inserted after its header chunk (IHDR).
fn with_chunk(png: &[u8], kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    // Signature (8) and IHDR (4 + 4 + 13 + 4).
    let after_header = 8 + 25;
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    [
        &png[..after_header],
        &(data.len() as u32).to_be_bytes(),
        kind,
        data,
        &crc.sum().to_be_bytes(),
        &png[after_header..],
    ]
    .concat()
}

/// A small PNG whose ICC profile inflates to a gigabyte, eight of them in one job: the
/// profile is never inflated, and each image scores in a few MB.
#[test]
fn a_png_whose_icc_profile_inflates_to_a_gigabyte_costs_nothing() {
    use std::io::Write as _;
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    stage_fixtures(&store, "cifar");
    // The image: 32x32 RGB.
    let mut plain = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut plain, 32, 32);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        let pixels: Vec<u8> = (0..32 * 32 * 3).map(|i| (i * 7 % 256) as u8).collect();
        writer.write_image_data(&pixels).unwrap();
    }
    // iCCP: a profile name, compression method 0, then zlib data: a gigabyte of zeros.
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 24];
    for _ in 0..64 {
        zlib.write_all(&zeros).unwrap();
    }
    let profile = [&b"bomb\0\0"[..], &zlib.finish().unwrap()].concat();
    let bomb = with_chunk(&plain, b"iCCP", &profile);
    assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
    let folder = root.path().join("images");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..8 {
        std::fs::write(folder.join(format!("{i}.png")), &bomb).unwrap();
    }
    let store = store.to_str().unwrap();
    stage_images(store, folder.to_str().unwrap(), "bombs");
    let output = run_job(store, "bombs/", &["--labels", "none"]);
    assert!(output.contains("Scored 8 images"), "{output}");
    let peak: u64 = peak_mb(&output);
    println!("eight PNGs with 1 GiB ICC profiles: peak memory {peak} MB");
    assert!(peak < 400, "{peak} MB");
}

/// A name as long as the file system allows stages (the temporary name used while writing is
/// short), and `--force` uploads a file edited in place, whose size did not change.
#[test]
fn long_names_stage_and_force_uploads_files_edited_in_place() {
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("images");
    std::fs::create_dir_all(&folder).unwrap();
    let long = format!("{}.jpg", "n".repeat(251));
    assert_eq!(long.len(), 255);
    let jpeg = std::fs::read(fixture("cifar-10-test-jpeg/cat/0000.jpg")).unwrap();
    std::fs::write(folder.join(&long), &jpeg).unwrap();
    std::fs::write(folder.join("edited.bin"), b"first").unwrap();
    let store = root.path().join("store");
    let stage = |extra: &[&str]| {
        let args = [
            &[
                "stage",
                "--store",
                store.to_str().unwrap(),
                "--container",
                "cifar",
                "--images",
                folder.to_str().unwrap(),
                "--prefix",
                "pets",
            ][..],
            extra,
        ]
        .concat();
        run_ok("producer", &args)
    };
    stage(&[]);
    let staged = store.join("cifar/pets");
    assert_eq!(std::fs::read(staged.join(&long)).unwrap(), jpeg);
    std::fs::write(folder.join("edited.bin"), b"again").unwrap();
    let output = stage(&[]);
    assert!(output.contains("0 uploaded, 2 already there"), "{output}");
    assert_eq!(std::fs::read(staged.join("edited.bin")).unwrap(), b"first");
    let output = stage(&["--force"]);
    assert!(output.contains("2 uploaded"), "{output}");
    assert_eq!(std::fs::read(staged.join("edited.bin")).unwrap(), b"again");
}

/// A tiny deterministic generator (xorshift64*), so that a failure names a reproducible case.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `file` broken one of several ways: bytes flipped, cut short, a run overwritten with junk, a
/// run repeated, or a length field set to an extreme.
fn mutate(file: &[u8], random: &mut Seeded) -> Vec<u8> {
    let mut bytes = file.to_vec();
    match random.below(5) {
        0 => {
            for _ in 0..1 + random.below(8) {
                let at = random.below(bytes.len());
                bytes[at] ^= 1 << random.below(8);
            }
        }
        1 => bytes.truncate(random.below(bytes.len())),
        2 => {
            let at = random.below(bytes.len());
            let end = (at + 1 + random.below(64)).min(bytes.len());
            for b in &mut bytes[at..end] {
                *b = random.next() as u8;
            }
        }
        3 => {
            let at = random.below(bytes.len());
            let end = (at + 1 + random.below(256)).min(bytes.len());
            let run = bytes[at..end].to_vec();
            for _ in 0..1 + random.below(16) {
                bytes.splice(at..at, run.iter().copied());
            }
        }
        _ => {
            // Headers keep sizes and lengths in their first bytes.
            let at = random.below(bytes.len().min(64));
            let end = (at + 4).min(bytes.len());
            for b in &mut bytes[at..end] {
                *b = 0xFF;
            }
        }
    }
    bytes
}

/// A few hundred seeded mutations of every format read, in one job: each file gets its row
/// (scored or an error), nothing panics, and the job completes.
#[test]
fn mutated_files_of_every_format_each_get_a_row() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    stage_fixtures(&store, "cifar");
    let jpeg = std::fs::read(fixture("cifar-10-test-jpeg/cat/0000.jpg")).unwrap();
    let pixels = fleet_imaging::decode(
        &jpeg,
        fleet_imaging::DecodeLimits {
            max_pixels: 1 << 20,
            max_scans: 100,
        },
    )
    .unwrap();
    let decoded = image::DynamicImage::ImageRgb8(
        image::RgbImage::from_raw(pixels.width as u32, pixels.height as u32, pixels.data).unwrap(),
    );
    let encoded = |format| {
        let mut out = std::io::Cursor::new(Vec::new());
        decoded.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let formats = [
        ("jpg", jpeg.clone()),
        ("png", encoded(image::ImageFormat::Png)),
        ("bmp", encoded(image::ImageFormat::Bmp)),
        ("gif", encoded(image::ImageFormat::Gif)),
        ("webp", encoded(image::ImageFormat::WebP)),
    ];
    let folder = root.path().join("images");
    std::fs::create_dir_all(&folder).unwrap();
    let mut random = Seeded(0x9E37_79B9_7F4A_7C15);
    let per_format = 80;
    for (extension, file) in &formats {
        for i in 0..per_format {
            let name = format!("{extension}-{i:03}.{extension}");
            std::fs::write(folder.join(name), mutate(file, &mut random)).unwrap();
        }
    }
    let store = store.to_str().unwrap();
    stage_images(store, folder.to_str().unwrap(), "mutants");
    let output = run_job(
        store,
        "mutants/",
        &["--labels", "none", "--partition-size", "50"],
    );
    let scores = std::fs::read_to_string(results(store, &output).join("scores.csv")).unwrap();
    let rows: Vec<&str> = scores.lines().skip(1).collect();
    assert_eq!(rows.len(), formats.len() * per_format, "one row per file");
    let errors = rows.iter().filter(|r| !r.ends_with(',')).count();
    println!(
        "{} mutated files: {} scored, {errors} error rows",
        rows.len(),
        rows.len() - errors
    );
    assert!(errors > 0, "some mutations break their file");
}

/// Eight 16-bit 6300x6300 PNGs (a few MB together, 238 MB of pixels each as decoded): the
/// memory budget for decoding takes them one at a time, by what their headers claim.
#[test]
fn sixteen_bit_pngs_decode_within_the_memory_budget() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    stage_fixtures(&store, "cifar");
    let side = 6300u32;
    let mut file = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut file, side, side);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Sixteen);
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().unwrap();
        // A smooth gradient, which compresses to little.
        let row: Vec<u8> = (0..side)
            .flat_map(|x| {
                let v = ((x * 10) as u16).to_be_bytes();
                [v[0], v[1], v[0], v[1], 0, 0]
            })
            .collect();
        let pixels: Vec<u8> = (0..side).flat_map(|_| row.iter().copied()).collect();
        writer.write_image_data(&pixels).unwrap();
    }
    let folder = root.path().join("images");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..8 {
        std::fs::write(folder.join(format!("{i}.png")), &file).unwrap();
    }
    let store = store.to_str().unwrap();
    stage_images(store, folder.to_str().unwrap(), "deep");
    let peak = |budget: &str| -> u64 {
        let output = run_job(
            store,
            "deep/",
            // One partition: its eight images are decoded together, as far as the budget allows.
            &[
                "--labels",
                "none",
                "--decode-memory-mb",
                budget,
                "--partition-size",
                "8",
            ],
        );
        assert!(output.contains("Scored 8 images"), "{output}");
        peak_mb(&output)
    };
    // 0: the default, 64 MiB a core, which holds one such image at a time; 8 GiB lets them
    // decode as many at once as there are cores (the worker decodes no more at once).
    let (budgeted, unbounded) = (peak("0"), peak("8192"));
    let at_once = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(8) as u64;
    println!(
        "eight 16-bit {side}x{side} PNGs ({} KB each): peak memory {budgeted} MB within the \
         default budget, {unbounded} MB with room for {at_once} at once",
        file.len() / 1024
    );
    assert!(budgeted < 600, "{budgeted} MB");
    // Each image decoding holds 357 MB (6 bytes a pixel as decoded, 3 as 8-bit RGB): every
    // one beyond the first that the budget kept out is at least half of that. (One core
    // decodes one at a time with or without the budget.)
    if at_once > 1 {
        assert!(
            unbounded >= budgeted + 170 * (at_once - 1),
            "the budget is what holds it: {unbounded} MB with room for {at_once} at once"
        );
    }
}

/// A thread or session count no machine has is refused at the command line, where creating
/// that many threads would stall the host.
#[test]
fn thread_counts_beyond_any_machine_are_refused() {
    for (flag, most) in [("--intra-threads", "1024"), ("--model-runs", "256")] {
        let err = run_err(
            "producer",
            &[
                "--store",
                "/nonexistent",
                "--container",
                "cifar",
                "--embedded",
                flag,
                "100000",
            ],
        );
        assert!(
            err.contains(&format!("100000 is more than {most}")),
            "{flag}: {err}"
        );
    }
    // Each embedded worker holds its own models: a million would hold gigabytes for nothing.
    let err = run_err(
        "producer",
        &[
            "--store",
            "/nonexistent",
            "--container",
            "cifar",
            "--embedded",
            "--workers",
            "1000000",
        ],
    );
    assert!(err.contains("1000000 is not in 1..=64"), "{err}");
}

/// A progressive JPEG with two thousand empty scans appended (each a pass over the whole image
/// for a few bytes of file) stops at `--max-jpeg-scans`: an error row that names the flag.
#[test]
fn a_jpeg_of_thousands_of_empty_scans_stops_at_the_scan_limit() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    stage_fixtures(&store, "cifar");
    // A progressive photo of the fixtures (SOF2), nine scans.
    let photo = std::fs::read(fixture("real-photos/photos/azure_objects.jpg")).unwrap();
    assert!(photo.windows(2).any(|w| w == [0xFF, 0xC2]), "progressive");
    assert_eq!(&photo[photo.len() - 2..], [0xFF, 0xD9]);
    // An AC scan of the first component carrying no data: SOS, length 8, one component (id 1,
    // tables 0), spectral 1..63, approximation 0/0.
    let empty_scan = [0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0x3F, 0x00];
    let mut bombed = photo[..photo.len() - 2].to_vec();
    for _ in 0..2_000 {
        bombed.extend_from_slice(&empty_scan);
    }
    bombed.extend_from_slice(&[0xFF, 0xD9]);
    let folder = root.path().join("images");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("scans.jpg"), &bombed).unwrap();
    let store = store.to_str().unwrap();
    stage_images(store, folder.to_str().unwrap(), "scans");
    let row = |max_scans: &str| {
        let output = run_job(
            store,
            "scans/",
            &["--labels", "none", "--max-jpeg-scans", max_scans],
        );
        let scores = std::fs::read_to_string(results(store, &output).join("scores.csv")).unwrap();
        scores.lines().nth(1).unwrap().to_owned()
    };
    let refused = row("100");
    assert!(
        refused.contains("progressive JPEG of more than 100 scans (--max-jpeg-scans)"),
        "{refused}"
    );
    // The limit is what stops it: with room for every scan, libjpeg reads the file through.
    let read = row("5000");
    assert!(!read.contains("--max-jpeg-scans"), "{read}");
}

/// A model taking 3x4096x4096 images (50 MB as an 8-bit crop each) gets partitions a worker can
/// hold: the producer cuts them to what 256 MiB of waiting images allows, where 20 images in
/// one partition would wait as a gigabyte.
#[test]
fn a_model_with_a_huge_input_gets_partitions_a_worker_can_hold() {
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("images");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..20 {
        std::fs::copy(
            fixture(&format!("cifar-10-test-jpeg/dog/{i:04}.jpg")),
            folder.join(format!("{i}.jpg")),
        )
        .unwrap();
    }
    let model = root.path().join("huge.onnx");
    std::fs::write(&model, classifier_of_side(4096, 10)).unwrap();
    let store = root.path().join("store");
    let store = store.to_str().unwrap();
    for what in [
        &["--images", folder.to_str().unwrap(), "--prefix", "big"][..],
        &[
            "--model",
            model.to_str().unwrap(),
            "--model-name",
            "huge",
            "--filter",
            "pillow-bilinear",
        ],
    ] {
        run_ok(
            "producer",
            &[
                &["stage", "--store", store, "--container", "cifar"][..],
                what,
            ]
            .concat(),
        );
    }
    // Asked for partitions larger than a worker can hold: cut to what it can.
    let output = run_job(
        store,
        "big/",
        &[
            "--model-name",
            "huge",
            "--labels",
            "none",
            "--partition-size",
            "500",
        ],
    );
    assert!(output.contains("Scored 20 images"), "{output}");
    let job = &output.id;
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(Path::new(store).join(format!("cifar/jobs/{job}/manifest.json"))).unwrap(),
    )
    .unwrap();
    // 256 MiB over 50,331,648 bytes a crop: 5 images a partition.
    assert_eq!(manifest["partition_size"], 5, "{manifest}");
    assert_eq!(manifest["partitions"], 4, "{manifest}");
    let peak: u64 = peak_mb(&output);
    println!("20 images for a 3x4096x4096 model: partitions of 5, peak memory {peak} MB");
    // Two partitions in hand (250 MB of crops each), one call's 201 MB of values, decoding.
    assert!(peak < 1_500, "{peak} MB");
}

/// [`wide_classifier`]'s graph for `classes` classes over images of `side` x `side`.
fn classifier_of_side(side: i64, classes: i64) -> Vec<u8> {
    use cntk_onnx::proto::onnx::ModelProto;
    use prost::Message;
    let mut model = ModelProto::decode(&wide_classifier(classes)[..]).unwrap();
    let input = &mut model.graph.as_mut().unwrap().input[0];
    let shape = input
        .r#type
        .as_mut()
        .unwrap()
        .tensor_type
        .as_mut()
        .unwrap()
        .shape
        .as_mut()
        .unwrap();
    for dim in &mut shape.dim[2..] {
        dim.value = Some(cntk_onnx::proto::onnx::DimensionValue::Value(side));
    }
    model.encode_to_vec()
}

/// ONNX Runtime keeps no usage database when the bare binaries run it, with no variable set
/// (Microsoft's builds otherwise write one under `~/.cache/Microsoft` on every run): neither
/// staging a model nor scoring with it writes anything under HOME.
#[test]
fn onnx_runtime_writes_no_telemetry_as_the_product_runs_it() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let bare = |args: &[&str]| {
        let out = fleet_tests::output(
            std::process::Command::new(fleet_tests::bin("producer"))
                .args(args)
                .env_remove("ORT_DISABLE_TELEMETRY")
                .env("HOME", &home)
                .env("XDG_CACHE_HOME", home.join(".cache")),
        );
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    stage_fixtures(root.path(), "cifar");
    bare(&[
        "stage",
        "--store",
        root.path().to_str().unwrap(),
        "--container",
        "cifar",
        "--model",
        fixture("resnet20_meanimage_159.dnn").to_str().unwrap(),
        "--model-name",
        "again",
    ]);
    bare(&[
        "--store",
        root.path().to_str().unwrap(),
        "--container",
        "cifar",
        "--embedded",
        "--model-name",
        "again",
        "--batches",
        "test_batch",
    ]);
    assert_eq!(
        tree(&home),
        Vec::<String>::new(),
        "nothing written under HOME"
    );
}

/// A class list saved with a byte-order mark (as Windows editors and spreadsheets save UTF-8)
/// names its first class without it, so that folder labels match; one saved in another encoding
/// is refused, naming the line, instead of its names turning into look-alike U+FFFD strings; and
/// one with a name of megabytes is refused before it is copied anywhere.
#[test]
fn class_lists_with_a_byte_order_mark_read_and_those_not_in_utf8_or_with_huge_names_are_refused() {
    use fleet_dataset::CLASS_NAMES;
    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    stage_fixtures(root.path(), "cifar");
    let images = root.path().join("images");
    for class in CLASS_NAMES {
        std::fs::create_dir_all(images.join(class)).unwrap();
        let from = fixture("cifar-10-test-jpeg").join(class).join("0000.jpg");
        std::fs::copy(from, images.join(class).join("0000.jpg")).unwrap();
    }
    stage_images(store, images.to_str().unwrap(), "folders");
    let with_mark = root.path().join("bom.txt");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend(CLASS_NAMES.join("\r\n").as_bytes());
    std::fs::write(&with_mark, bytes).unwrap();
    let stage_classes = |file: &Path| {
        fleet_tests::run(
            "producer",
            &[
                "stage",
                "--store",
                store,
                "--container",
                "cifar",
                "--model",
                fixture("resnet20_meanimage_159.dnn").to_str().unwrap(),
                "--mean-image",
                fixture("CIFAR-10_mean.xml").to_str().unwrap(),
                "--model-name",
                "named",
                "--classes",
                file.to_str().unwrap(),
            ],
        )
    };
    assert!(stage_classes(&with_mark).status.success());
    let output = run_job(
        store,
        "folders",
        &["--model-name", "named", "--labels", "folders"],
    );
    // Every folder, airplane included, is a class: ten labelled images.
    assert!(output.contains(" of 10 images"), "{output}");
    let latin1 = root.path().join("latin1.txt");
    std::fs::write(&latin1, b"airplane\nautomobile\ncaf\xE9\n").unwrap();
    let out = stage_classes(&latin1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("line 3 is not UTF-8 text"), "{stderr}");
    // A name of 20 MB would be copied into every row, report and summary naming it.
    let long = root.path().join("long.txt");
    let mut names: Vec<String> = CLASS_NAMES.map(String::from).to_vec();
    names[3] = "x".repeat(20 << 20);
    std::fs::write(&long, names.join("\n")).unwrap();
    let out = stage_classes(&long);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("class 3's name is 20971520 bytes, longer than the 1024"),
        "{}",
        &stderr[..stderr.len().min(500)]
    );
}

/// The folders the product keeps its own blobs in take no user's files (images staged under
/// `jobs/` would be listed as jobs), and a model's name is one a blob, a list of models and a
/// column can carry.
#[test]
fn reserved_folders_and_unusable_model_names_are_refused_at_staging() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let store = store.to_str().unwrap();
    let images = root.path().join("images");
    std::fs::create_dir_all(images.join("results")).unwrap();
    let jpeg = fixture("cifar-10-test-jpeg/cat/0000.jpg");
    std::fs::copy(&jpeg, images.join("results/cat.jpg")).unwrap();
    let stage = |extra: &[&str]| {
        let args = [
            &["stage", "--store", store, "--container", "cifar"][..],
            extra,
        ]
        .concat();
        run_err("producer", &args)
    };
    for prefix in ["jobs", "models/x", "index", "results/"] {
        let err = stage(&["--images", images.to_str().unwrap(), "--prefix", prefix]);
        assert!(
            err.contains("is where the product keeps its own blobs; give another --prefix"),
            "{prefix}: {err}"
        );
    }
    let model = fixture("resnet20_meanimage_159.dnn");
    for name in ["", "a,b", "../up", "with space"] {
        let err = stage(&["--model", model.to_str().unwrap(), "--model-name", name]);
        assert!(
            err.contains("use 1 to 100 letters, digits"),
            "{name:?}: {err}"
        );
    }
    assert!(
        !Path::new(store).join("cifar").exists()
            || tree(&Path::new(store).join("cifar")).is_empty(),
        "nothing staged"
    );
}

/// A store that cannot be written, and will not be until it is mended (a file where the product
/// keeps a folder of its own), ends an embedded job at once with the reason, instead of being
/// retried for ever.
#[test]
fn a_store_that_cannot_be_written_ends_the_embedded_job_with_the_reason() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    stage_fixtures(root.path(), "cifar");
    for (folder, written) in [("jobs", "plan.json"), ("results", "scores.parquet")] {
        let path = root.path().join("cifar").join(folder);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::write(&path, b"a file, not a folder").unwrap();
        let started = std::time::Instant::now();
        let err = run_err(
            "producer",
            &["--store", store, "--container", "cifar", "--embedded"],
        );
        assert!(
            err.contains(written) && err.contains("will until the store is mended"),
            "{folder}: {err}"
        );
        assert!(
            err.contains("Not a directory"),
            "{folder}: the cause is kept: {err}"
        );
        // Well before the collector's patience for a store that comes back (5 minutes).
        assert!(
            started.elapsed().as_secs() < 120,
            "{folder}: {:?}",
            started.elapsed()
        );
        std::fs::remove_file(&path).unwrap();
    }
}

/// Links planted in a local container (by hand, past staging): dangling, looping, or leading
/// out of it to a file or a folder. None is a blob: the job scores the container's own images
/// and nothing else, and a blob named through one is refused.
#[test]
fn links_planted_in_a_local_container_are_not_blobs() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    stage_fixtures(root.path(), "cifar");
    let images = root.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..3 {
        let from = fixture("cifar-10-test-jpeg/cat").join(format!("{i:04}.jpg"));
        std::fs::copy(from, images.join(format!("{i}.jpg"))).unwrap();
    }
    stage_images(store, images.to_str().unwrap(), "mine");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(
        fixture("cifar-10-test-jpeg/dog/0000.jpg"),
        outside.join("dog.jpg"),
    )
    .unwrap();
    let planted = root.path().join("cifar/mine");
    std::os::unix::fs::symlink("/nonexistent/x.jpg", planted.join("dangling.jpg")).unwrap();
    std::os::unix::fs::symlink("loop.jpg", planted.join("loop.jpg")).unwrap();
    std::os::unix::fs::symlink(outside.join("dog.jpg"), planted.join("outside.jpg")).unwrap();
    std::os::unix::fs::symlink(&outside, planted.join("elsewhere")).unwrap();
    let output = run_job(store, "mine", &["--labels", "none"]);
    let summary: fleet_protocol::Summary = serde_json::from_slice(
        &std::fs::read(results(store, &output).join("summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!((summary.images, summary.scored), (3, 3), "{output}");
    // Named through a link, as a label file or a dataset: not found in the store.
    let err = run_err(
        "producer",
        &[
            "--store",
            store,
            "--container",
            "cifar",
            "--embedded",
            "--dataset",
            "mine/elsewhere/",
        ],
    );
    assert!(err.contains("mine/elsewhere"), "{err}");
}

/// A file whose name holds a terminal's escape sequence and a newline: staging leaves it out
/// and names it, escaped, and stages the rest; messages that echo a local path escape it too,
/// so neither the terminal nor a log line is driven or forged by a name.
#[test]
fn control_characters_in_local_names_are_escaped_and_such_files_left_out() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().to_str().unwrap();
    let folder = root.path().join("images");
    std::fs::create_dir_all(&folder).unwrap();
    let jpeg = fixture("cifar-10-test-jpeg/cat/0000.jpg");
    std::fs::copy(&jpeg, folder.join("plain.jpg")).unwrap();
    let hostile = "red\u{1b}[31m\nERROR forged line.jpg";
    std::fs::copy(&jpeg, folder.join(hostile)).unwrap();
    let output = stage_images(store, folder.to_str().unwrap(), "named");
    assert!(
        !output.contains('\u{1b}') && !output.contains("\nERROR forged"),
        "{output:?}"
    );
    assert!(
        output.contains(r"red\u{1b}[31m\nERROR forged line.jpg (invalid blob name"),
        "{output}"
    );
    assert_eq!(tree(&root.path().join("cifar/named")), ["plain.jpg"]);

    // A path that does not exist, with the same characters, in an error message.
    let missing = root.path().join(hostile).with_extension("tar.gz");
    let err = run_err(
        "producer",
        &[
            "stage",
            "--store",
            store,
            "--container",
            "cifar",
            "--tarball",
            missing.to_str().unwrap(),
        ],
    );
    assert!(
        !err.contains('\u{1b}') && !err.contains("\nERROR forged"),
        "{err:?}"
    );
    assert!(
        err.contains(r"red\u{1b}[31m\nERROR forged line.tar.gz"),
        "{err}"
    );
}
