//! The mean image a model expects subtracted, read from an OpenCV `opencv_storage` XML file.
//!
//! The file holds `<MeanImg type_id="opencv-matrix">` with `rows`, `cols`, `dt` and `data`,
//! laid out HWC in the model's channel order (BGR for CNTK models, as OpenCV writes it). CNTK's
//! mean files also say `<Channel>`, `<Row>` and `<Col>`; without them the geometry comes from
//! the matrix (`rows` x `cols` with `dt` `3f` is a 3-channel image). The walkthrough's is a
//! 1x3072 float matrix with Channel 3, Row 32, Col 32.

use quick_xml::Reader;
use quick_xml::events::Event;

/// Why a mean image cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("mean image {source_name}: {detail}")]
pub struct MeanImageError {
    /// The mean image's file or blob.
    pub source_name: String,
    /// What is wrong with it.
    pub detail: String,
}

/// A mean image: HWC values, in the channel order of the model input.
#[derive(Debug, Clone, PartialEq)]
pub struct MeanImage {
    /// `(channels, height, width)` when the file says (CNTK's `Channel`/`Row`/`Col`, or a
    /// multi-channel matrix); otherwise only the value count is known.
    geometry: Option<(usize, usize, usize)>,
    hwc: Vec<f32>,
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
        // `dt` is the element type, optionally led by a channel count: `f`, `d`, `3f`.
        let digits = matrix
            .dt
            .trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let element = &matrix.dt[digits.len()..];
        let matrix_channels: usize = if digits.is_empty() {
            1
        } else {
            digits
                .parse()
                .map_err(|_| fail(format!("element type `{}` is not understood", matrix.dt)))?
        };
        if element != "f" && element != "d" {
            return Err(fail(format!(
                "element type `{}` is not a float matrix (dt f or d)",
                matrix.dt
            )));
        }
        let count = matrix.rows * matrix.cols * matrix_channels;
        if count == 0 || matrix.data.len() != count {
            return Err(fail(format!(
                "it is {}x{} with {} values per element, but holds {} values",
                matrix.rows,
                matrix.cols,
                matrix_channels,
                matrix.data.len()
            )));
        }
        if let Some(i) = matrix.data.iter().position(|v| !v.is_finite()) {
            return Err(fail(format!("value {i} is not a finite number")));
        }
        let geometry = match matrix.declared {
            Some((c, h, w)) if c * h * w != count => {
                return Err(fail(format!(
                    "it declares {c} channels of {h}x{w} but holds {count} values"
                )));
            }
            Some(declared) => Some(declared),
            None if matrix_channels > 1 => Some((matrix_channels, matrix.rows, matrix.cols)),
            None => None,
        };
        Ok(Self {
            geometry,
            hwc: matrix.data,
        })
    }

    /// The values, HWC, checked against the model's input geometry.
    pub fn fit(
        &self,
        channels: usize,
        height: usize,
        width: usize,
        source_name: &str,
    ) -> Result<&[f32], MeanImageError> {
        let fits = match self.geometry {
            Some(g) => g == (channels, height, width),
            None => self.hwc.len() == channels * height * width,
        };
        if fits {
            Ok(&self.hwc)
        } else {
            let what = match self.geometry {
                Some((c, h, w)) => format!("{h}x{w} with {c} channels"),
                None => format!("{} values", self.hwc.len()),
            };
            Err(MeanImageError {
                source_name: source_name.into(),
                detail: format!(
                    "it is {what}, but the model takes {height}x{width} with {channels} channels \
                     ({} values)",
                    channels * height * width
                ),
            })
        }
    }
}

struct Matrix {
    rows: usize,
    cols: usize,
    dt: String,
    data: Vec<f32>,
    /// CNTK's `Channel`, `Row`, `Col`, when all three are there.
    declared: Option<(usize, usize, usize)>,
}

fn read_matrix(xml: &[u8]) -> Result<Matrix, String> {
    let mut reader = Reader::from_reader(xml);
    reader.config_mut().trim_text(true);
    let mut path: Vec<String> = Vec::new();
    let mut seen_root = false;
    let (mut rows, mut cols, mut dt, mut data) = (None, None, None, None);
    let (mut channel, mut row, mut col) = (None, None, None);
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
                let text = text.xml10_content().into_owned();
                let number = |what: &str| {
                    text.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("<{what}> is `{text}`, not a count"))
                };
                if path.len() == 2 {
                    match path[1].as_str() {
                        "Channel" => channel = Some(number("Channel")?),
                        "Row" => row = Some(number("Row")?),
                        "Col" => col = Some(number("Col")?),
                        _ => {}
                    }
                    continue;
                }
                let in_mean = path.len() == 3 && path[1] == "MeanImg";
                if !in_mean {
                    continue;
                }
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
        declared: channel.zip(row).zip(col).map(|((c, r), w)| (c, r, w)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(header: &str, rows: usize, cols: usize, dt: &str, values: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?><opencv_storage>{header}<MeanImg type_id=\"opencv-matrix\"><rows>{rows}</rows>\
             <cols>{cols}</cols><dt>{dt}</dt><data>{values}</data></MeanImg></opencv_storage>"
        )
    }

    fn values(n: usize) -> String {
        (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn geometry_comes_from_cntk_fields_or_the_matrix() {
        let cntk = xml(
            "<Channel>3</Channel><Row>2</Row><Col>4</Col>",
            1,
            24,
            "f",
            &values(24),
        );
        let mean = MeanImage::from_xml(cntk.as_bytes(), "m.xml").unwrap();
        assert_eq!(mean.fit(3, 2, 4, "m").unwrap()[5], 5.0);
        let err = mean.fit(3, 4, 2, "m.xml").unwrap_err().to_string();
        assert!(
            err.contains("it is 2x4 with 3 channels, but the model takes 4x2"),
            "{err}"
        );
        let opencv = xml("", 2, 4, "3f", &values(24));
        let mean = MeanImage::from_xml(opencv.as_bytes(), "m.xml").unwrap();
        assert!(mean.fit(3, 2, 4, "m").is_ok());
        let flat = xml("", 1, 784, "f", &values(784));
        let mean = MeanImage::from_xml(flat.as_bytes(), "m.xml").unwrap();
        assert!(mean.fit(1, 28, 28, "m").is_ok());
        assert!(mean.fit(3, 28, 28, "m").is_err());
    }

    #[test]
    fn wrong_size_and_bad_xml_are_errors() {
        let err = MeanImage::from_xml(xml("", 1, 3, "f", "1 2").as_bytes(), "m.xml").unwrap_err();
        assert!(err.to_string().contains("holds 2 values"), "{err}");
        let err = MeanImage::from_xml(
            xml(
                "<Channel>3</Channel><Row>32</Row><Col>32</Col>",
                1,
                3,
                "f",
                "1 2 3",
            )
            .as_bytes(),
            "m.xml",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("declares 3 channels of 32x32"),
            "{err}"
        );
        let err =
            MeanImage::from_xml(b"<opencv_storage><MeanImg><rows>1</rows>", "m.xml").unwrap_err();
        assert!(err.to_string().contains("m.xml"), "{err}");
        let err = MeanImage::from_xml(b"<html></html>", "m.xml").unwrap_err();
        assert!(
            err.to_string().contains("expected <opencv_storage>"),
            "{err}"
        );
        let err = MeanImage::from_xml(xml("", 1, 3, "f", "x y z").as_bytes(), "m.xml").unwrap_err();
        assert!(err.to_string().contains("not a number"), "{err}");
        let err = MeanImage::from_xml(xml("", 1, 3, "u", "1 2 3").as_bytes(), "m.xml").unwrap_err();
        assert!(err.to_string().contains("not a float matrix"), "{err}");
    }
}
