//! Real photos prepared as the mainstream pipelines prepare them: for every photo of
//! `real-photos/` and every convention the product claims, its 8-bit 224x224 crop equals the
//! reference library's (`real-photos/expected/<convention>/<photo>.png`, made by Pillow and
//! OpenCV; see that folder's README).

use std::collections::HashMap;
use std::path::Path;

use fleet_imaging::{DecodeLimits, Preprocessor, decode};
use fleet_spec::{
    ChannelOrder, Filter, Layout, ModelSpec, Normalize, Outputs, Provenance, Resize, SPEC_VERSION,
};
use fleet_tests::fixture;

/// A convention of `expected/`: the spec fields that reproduce it.
struct Convention {
    name: &'static str,
    resize: Resize,
    shorter_side: Option<u32>,
    filter: Filter,
    /// OpenCV's decoder: photos it decodes unlike Pillow are compared only where it agrees.
    opencv: bool,
}

const CONVENTIONS: [Convention; 5] = [
    Convention {
        name: "torchvision",
        resize: Resize::CenterCrop,
        shorter_side: Some(256),
        filter: Filter::PillowBilinear,
        opencv: false,
    },
    Convention {
        name: "torchvision-bicubic",
        resize: Resize::CenterCrop,
        shorter_side: Some(256),
        filter: Filter::PillowBicubic,
        opencv: false,
    },
    Convention {
        name: "opencv-linear",
        resize: Resize::CenterCrop,
        shorter_side: Some(256),
        filter: Filter::OpencvLinear,
        opencv: true,
    },
    Convention {
        name: "opencv-area",
        resize: Resize::CenterCrop,
        shorter_side: Some(256),
        filter: Filter::OpencvArea,
        opencv: true,
    },
    Convention {
        name: "squash-pil-bilinear",
        resize: Resize::Stretch,
        shorter_side: None,
        filter: Filter::PillowBilinear,
        opencv: false,
    },
];

fn spec(convention: &Convention) -> ModelSpec {
    ModelSpec {
        version: SPEC_VERSION,
        input: "x".into(),
        output: None,
        layout: Layout::Nchw,
        channels: 3,
        height: 224,
        width: 224,
        channel_order: ChannelOrder::Rgb,
        resize: convention.resize,
        shorter_side: convention.shorter_side,
        filter: convention.filter,
        fast_jpeg: false,
        scale: 1.0,
        normalize: Normalize::None,
        outputs: Outputs::Logits,
        class_count: 1000,
        classes: None,
        class_ids: None,
        embeddings: Vec::new(),
        multi_label: None,
        provenance: Provenance {
            source: "conventions".into(),
            format: "onnx".into(),
            source_sha256: String::new(),
            onnx_sha256: String::new(),
        },
    }
}

/// `photos.csv`: one map of column to value per photo.
fn photos(dir: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(dir.join("photos.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines
        .map(|line| {
            header
                .iter()
                .zip(line.split(','))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// An 8-bit RGB PNG's pixels.
fn read_png(path: &Path) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut data = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut data).unwrap();
    assert_eq!(
        (info.width, info.height, info.color_type, info.bit_depth),
        (224, 224, png::ColorType::Rgb, png::BitDepth::Eight),
        "{}",
        path.display()
    );
    data.truncate(info.buffer_size());
    data
}

#[derive(Debug, Default)]
struct Tally {
    values: usize,
    exact: usize,
    within_one: usize,
    max_difference: u8,
    photos: usize,
    exact_photos: usize,
    /// (photo, share of equal values, largest difference) of photos not equal in every value.
    failing: Vec<(String, f64, u8)>,
}

#[test]
fn real_photos_resize_as_torchvision_timm_and_opencv_do() {
    let dir = fixture("real-photos");
    let limits = DecodeLimits {
        max_pixels: 100_000_000,
        max_scans: u32::MAX,
    };
    let preprocessors: Vec<Preprocessor> = CONVENTIONS
        .iter()
        .map(|c| Preprocessor::new(&spec(c), None).unwrap())
        .collect();
    let mut tallies: Vec<Tally> = CONVENTIONS.iter().map(|_| Tally::default()).collect();
    for photo in photos(&dir) {
        let file = &photo["file"];
        let stem = file.rsplit_once('.').unwrap().0;
        let image = decode(
            &std::fs::read(dir.join("photos").join(file)).unwrap(),
            limits,
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            (image.width.to_string(), image.height.to_string()),
            (
                photo["upright_width"].clone(),
                photo["upright_height"].clone()
            ),
            "{file}: upright size"
        );
        for ((convention, preprocessor), tally) in
            CONVENTIONS.iter().zip(&preprocessors).zip(&mut tallies)
        {
            if convention.opencv && photo["opencv_decode_equals_pillow"] != "1" {
                continue;
            }
            // Gray photos are made RGB first, as Pillow's convert("RGB") and OpenCV do.
            let ours = preprocessor.resized_u8(&image).unwrap();
            let expected = read_png(
                &dir.join("expected")
                    .join(convention.name)
                    .join(format!("{stem}.png")),
            );
            assert_eq!(ours.len(), expected.len(), "{file} {}", convention.name);
            let mut exact = 0;
            let mut within_one = 0;
            let mut max = 0;
            for (&a, &b) in ours.iter().zip(&expected) {
                let d = a.abs_diff(b);
                exact += usize::from(d == 0);
                within_one += usize::from(d <= 1);
                max = max.max(d);
            }
            tally.values += ours.len();
            tally.exact += exact;
            tally.within_one += within_one;
            tally.max_difference = tally.max_difference.max(max);
            tally.photos += 1;
            tally.exact_photos += usize::from(exact == ours.len());
            if exact != ours.len() {
                tally
                    .failing
                    .push((file.clone(), exact as f64 / ours.len() as f64, max));
            }
        }
    }
    for (convention, tally) in CONVENTIONS.iter().zip(&tallies) {
        println!(
            "{:<20} {} photos, {} equal in every value; values equal {:.4}%, within 1 level {:.4}%, \
             largest difference {}",
            convention.name,
            tally.photos,
            tally.exact_photos,
            100.0 * tally.exact as f64 / tally.values as f64,
            100.0 * tally.within_one as f64 / tally.values as f64,
            tally.max_difference,
        );
    }
    for (convention, tally) in CONVENTIONS.iter().zip(&tallies) {
        assert!(
            tally.photos >= 140,
            "{}: {} photos",
            convention.name,
            tally.photos
        );
        // Every value, of every photo: the same arithmetic as the reference library's.
        assert!(
            tally.failing.is_empty(),
            "{}: photos not equal in every value (share equal, largest difference): {:?}",
            convention.name,
            tally.failing
        );
    }
}
