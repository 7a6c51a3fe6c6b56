//! Hostile and careless input: names that would reach outside the store, links out of a staged
//! folder, names a spreadsheet would run as formulas. Each is refused with a message that says
//! what to do, or neutralised, and nothing is written outside the store.

use std::path::Path;

use fleet_tests::{field, fixture, run_err, run_ok, stage_fixtures};

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
            &["--store", store, "--embedded", "--dataset", dataset],
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
    let store = root.path().join("store");
    let output = run_ok(
        "producer",
        &[
            "stage",
            "--store",
            store.to_str().unwrap(),
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
    run_ok(
        "producer",
        &[
            "stage",
            "--store",
            store,
            "--images",
            folder.to_str().unwrap(),
            "--prefix",
            "pets",
        ],
    );
    let output = run_ok(
        "producer",
        &[
            "--store",
            store,
            "--embedded",
            "--dataset",
            "pets/",
            "--labels",
            "none",
        ],
    );
    let scores = std::fs::read_to_string(
        Path::new(store)
            .join("cifar/results")
            .join(field(&output, "job"))
            .join("scores.csv"),
    )
    .unwrap();
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
            &[&["stage", "--store", store][..], what].concat(),
        );
    }
    let output = run_ok(
        "producer",
        &[
            "--store",
            store,
            "--embedded",
            "--dataset",
            "wide/",
            "--model-name",
            "wide",
            "--labels",
            "folders",
            "--top-k",
            "3",
        ],
    );
    assert!(output.contains("of 4 images"), "{output}");
    let peak: u64 = field(&output, "peak memory")
        .trim_end_matches(" MB")
        .parse()
        .unwrap();
    println!("a 1,000,000-class job over 4 images: peak memory {peak} MB");
    assert!(peak < 500, "{peak} MB");
    let results = Path::new(store)
        .join("cifar/results")
        .join(field(&output, "job"));
    let confusion = std::fs::read_to_string(results.join("confusion.csv")).unwrap();
    assert!(
        confusion.starts_with("true_class,predicted_class,images\n"),
        "the non-zero cells, not a 10^12-cell matrix"
    );
    let cells: u64 = confusion
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse::<u64>().unwrap())
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
    run_ok(
        "producer",
        &[
            "stage",
            "--store",
            store_arg,
            "--images",
            folder.parent().unwrap().to_str().unwrap(),
            "--prefix",
            "pets",
        ],
    );
    let fifo = store.join("cifar/pets/cat/3.jpg");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let output = run_ok(
        "producer",
        &[
            "--store",
            store_arg,
            "--embedded",
            "--dataset",
            "pets/",
            "--labels",
            "none",
        ],
    );
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
    run_ok(
        "producer",
        &[
            "stage",
            "--store",
            store,
            "--images",
            folder.to_str().unwrap(),
            "--prefix",
            "bombs",
        ],
    );
    let output = run_ok(
        "producer",
        &[
            "--store",
            store,
            "--embedded",
            "--dataset",
            "bombs/",
            "--labels",
            "none",
        ],
    );
    assert!(output.contains("Scored 8 images"), "{output}");
    let peak: u64 = field(&output, "peak memory")
        .trim_end_matches(" MB")
        .parse()
        .unwrap();
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
