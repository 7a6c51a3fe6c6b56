//! The mean image a model expects subtracted, read from an OpenCV `opencv_storage` XML file.
//!
//! The file holds `<MeanImg type_id="opencv-matrix">` with `rows`, `cols`, `dt` and `data`;
//! the walkthrough's is a 1x3072 float matrix laid out as 32x32x3 (HWC, BGR).

use quick_xml::Reader;
use quick_xml::events::Event;

use crate::dataset::{CHANNELS, HEIGHT, IMAGE_BYTES, WIDTH};

#[derive(Debug, thiserror::Error)]
#[error("mean image {source_name}: {detail}")]
pub struct MeanImageError {
    pub source_name: String,
    pub detail: String,
}

/// The mean image in the layout the model input has: CHW, BGR planes.
#[derive(Debug, Clone, PartialEq)]
pub struct MeanImage {
    chw_bgr: Vec<f32>,
}

impl MeanImage {
    /// Parses the XML text; `source_name` names it in errors.
    pub fn from_xml(xml: &[u8], source_name: &str) -> Result<Self, MeanImageError> {
        let fail = |detail: String| MeanImageError {
            source_name: source_name.into(),
            detail,
        };
        let matrix = read_matrix(xml).map_err(fail)?;
        let fail = |detail: String| MeanImageError {
            source_name: source_name.into(),
            detail,
        };
        if matrix.dt != "f" && matrix.dt != "d" {
            return Err(fail(format!(
                "element type `{}` is not a float matrix (dt f or d)",
                matrix.dt
            )));
        }
        if matrix.rows * matrix.cols != IMAGE_BYTES || matrix.data.len() != IMAGE_BYTES {
            return Err(fail(format!(
                "it is {}x{} with {} values; a CIFAR mean image has 3072 (32x32x3)",
                matrix.rows,
                matrix.cols,
                matrix.data.len()
            )));
        }
        if let Some(i) = matrix.data.iter().position(|v| !v.is_finite()) {
            return Err(fail(format!("value {i} is not a finite number")));
        }
        // HWC (BGR) -> CHW (BGR).
        let mut chw_bgr = vec![0.0; IMAGE_BYTES];
        for y in 0..HEIGHT {
            for x in 0..WIDTH {
                for c in 0..CHANNELS {
                    chw_bgr[(c * HEIGHT + y) * WIDTH + x] =
                        matrix.data[(y * WIDTH + x) * CHANNELS + c];
                }
            }
        }
        Ok(Self { chw_bgr })
    }

    /// The mean, CHW with BGR planes, as the model input is laid out.
    pub fn chw_bgr(&self) -> &[f32] {
        &self.chw_bgr
    }
}

struct Matrix {
    rows: usize,
    cols: usize,
    dt: String,
    data: Vec<f32>,
}

fn read_matrix(xml: &[u8]) -> Result<Matrix, String> {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(true);
    let mut path: Vec<String> = Vec::new();
    let mut seen_root = false;
    let (mut rows, mut cols, mut dt, mut data) = (None, None, None, None);
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("malformed XML at byte {}: {e}", reader.buffer_position()))?;
        match event {
            Event::Start(start) => {
                let name = start.name().as_ref().to_owned();
                if path.is_empty() {
                    if name != "opencv_storage" {
                        return Err(format!(
                            "root element is <{name}>, expected <opencv_storage>"
                        ));
                    }
                    seen_root = true;
                }
                path.push(name);
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Text(text) => {
                let in_mean = path.len() == 3 && path[1] == "MeanImg";
                if !in_mean {
                    continue;
                }
                let text = text.xml10_content().into_owned();
                let number = |what: &str| {
                    text.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("<{what}> is `{text}`, not a count"))
                };
                match path[2].as_str() {
                    "rows" => rows = Some(number("rows")?),
                    "cols" => cols = Some(number("cols")?),
                    "dt" => dt = Some(text.trim().to_owned()),
                    "data" => {
                        data = Some(
                            text.split_ascii_whitespace()
                                .map(|v| {
                                    v.parse::<f32>()
                                        .map_err(|_| format!("`{v}` in <data> is not a number"))
                                })
                                .collect::<Result<Vec<_>, _>>()?,
                        )
                    }
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !seen_root {
        return Err("no <opencv_storage> document found".into());
    }
    let missing = |what: &str| format!("<MeanImg> has no <{what}>");
    Ok(Matrix {
        rows: rows.ok_or_else(|| missing("rows"))?,
        cols: cols.ok_or_else(|| missing("cols"))?,
        dt: dt.ok_or_else(|| missing("dt"))?,
        data: data.ok_or_else(|| missing("data"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(rows: usize, cols: usize, values: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?><opencv_storage><MeanImg type_id=\"opencv-matrix\"><rows>{rows}</rows>\
             <cols>{cols}</cols><dt>f</dt><data>{values}</data></MeanImg></opencv_storage>"
        )
    }

    #[test]
    fn reads_hwc_bgr_into_chw() {
        // Value = HWC index, so CHW position (c, y, x) must hold (y * 32 + x) * 3 + c.
        let values: Vec<String> = (0..IMAGE_BYTES).map(|i| i.to_string()).collect();
        let mean =
            MeanImage::from_xml(xml(1, 3072, &values.join(" ")).as_bytes(), "m.xml").unwrap();
        let (c, y, x) = (2, 5, 7);
        assert_eq!(
            mean.chw_bgr()[(c * 32 + y) * 32 + x],
            ((y * 32 + x) * 3 + c) as f32
        );
    }

    #[test]
    fn wrong_size_and_bad_xml_are_errors() {
        let err = MeanImage::from_xml(xml(1, 3, "1 2 3").as_bytes(), "m.xml").unwrap_err();
        assert!(err.to_string().contains("1x3 with 3 values"), "{err}");
        let err =
            MeanImage::from_xml(b"<opencv_storage><MeanImg><rows>1</rows>", "m.xml").unwrap_err();
        assert!(err.to_string().contains("m.xml"), "{err}");
        let err = MeanImage::from_xml(b"<html></html>", "m.xml").unwrap_err();
        assert!(
            err.to_string().contains("expected <opencv_storage>"),
            "{err}"
        );
        let err = MeanImage::from_xml(xml(1, 3072, "x").as_bytes(), "m.xml").unwrap_err();
        assert!(err.to_string().contains("not a number"), "{err}");
    }
}
