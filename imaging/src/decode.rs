//! Encoded image bytes to pixels.
//!
//! JPEG goes through libjpeg ([`crate::jpeg`] says why); every other format through the
//! `image` crate.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageReader};

/// Decoded pixels, rows top to bottom, channels interleaved (HWC): 1 channel (gray) or 3
/// (R, G, B).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width, in pixels.
    pub width: usize,
    /// Height, in pixels.
    pub height: usize,
    /// 1 or 3.
    pub channels: usize,
    /// `height * width * channels` bytes.
    pub data: Vec<u8>,
}

impl Image {
    /// An image from R, G and B planes (a CIFAR tarball row).
    pub fn from_planes(planes: &[u8], height: usize, width: usize) -> Self {
        let plane = height * width;
        debug_assert_eq!(planes.len(), 3 * plane);
        let mut data = Vec::with_capacity(3 * plane);
        for i in 0..plane {
            data.extend_from_slice(&[planes[i], planes[plane + i], planes[2 * plane + i]]);
        }
        Self {
            width,
            height,
            channels: 3,
            data,
        }
    }
}

/// Limits on what is decoded: a small file can claim a huge image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest width x height decoded.
    pub max_pixels: u64,
    /// Most scans of a progressive JPEG decoded: each scan is a pass over the whole image,
    /// and a small file can hold thousands of empty ones (seconds of CPU each thousand).
    pub max_scans: u32,
}

/// Why an image could not be decoded. The message goes into the image's row of `scores.csv`.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file has no bytes.
    #[error("empty file")]
    Empty,
    /// No decoder here reads the file's format: named where its signature says which it is.
    #[error(
        "not an image this product reads ({}it reads JPEG, PNG, BMP, GIF and WebP: convert it \
         to one of those)",
        format.map(|format| format!("a {format} file; ")).unwrap_or_default()
    )]
    Unsupported {
        /// The format the file's first bytes name, when they name one.
        format: Option<&'static str>,
    },
    /// An image of more pixels than allowed.
    #[error(
        "image of {width}x{height} pixels is larger than the {max}-pixel limit (--max-image-pixels)"
    )]
    TooLarge {
        /// The width its header declares.
        width: u32,
        /// The height its header declares.
        height: u32,
        /// The most pixels an image may have.
        max: u64,
    },
    /// A frame larger than the size the header declares, beyond the limit.
    #[error(
        "image declares {width}x{height} pixels but holds more (a frame larger than its \
         screen?), beyond the {max}-pixel limit (--max-image-pixels)"
    )]
    Undeclared {
        /// The width its header declares.
        width: u32,
        /// The height its header declares.
        height: u32,
        /// The most pixels an image may have.
        max: u64,
    },
    /// A progressive JPEG of more scans than allowed.
    #[error(
        "progressive JPEG of more than {max} scans (--max-jpeg-scans): each scan is a pass over \
         the whole image, and photos have a dozen or so"
    )]
    TooManyScans {
        /// The most scans a JPEG may have.
        max: u32,
    },
    /// libjpeg failed: what it said.
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
    /// The decoder of another format failed.
    #[error("corrupt or truncated image")]
    Malformed(#[source] image::ImageError),
}

/// Decodes `bytes` (format found from the content, not the name), turned upright as its EXIF
/// orientation says (JPEG, PNG and WebP files carry one). See [`decode_with_warning`] for the
/// warning of a JPEG decoded despite lost data.
pub fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<Image, DecodeError> {
    decode_with_warning(bytes, limits).map(|(image, _)| image)
}

/// [`decode`], with the decoder's warning when it lost some of the data and decoded the rest (a
/// JPEG with a damaged segment: "Corrupt JPEG data: premature end of data segment"). Pillow and
/// OpenCV return such images, and models are scored on them; the warning says the pixels are
/// not all the file meant.
pub fn decode_with_warning(
    bytes: &[u8],
    limits: DecodeLimits,
) -> Result<(Image, Option<String>), DecodeError> {
    decode_reduced(bytes, limits, None)
}

/// A JPEG decoded by libjpeg to RGB (or gray) and nothing else: not turned upright, not
/// reduced. The yardstick the bench measures preparation against; [`decode`] is what scoring
/// uses.
pub fn decode_jpeg(bytes: &[u8], limits: DecodeLimits) -> Result<Image, DecodeError> {
    crate::jpeg::decode(bytes, limits, None, None).map(|(image, _)| image)
}

/// The smallest size (height, width) an image of the given upright size may be decoded at:
/// see [`decode_reduced`].
pub type AtLeast<'a> = &'a dyn Fn((usize, usize)) -> (usize, usize);

/// [`decode_with_warning`], except that with `at_least` a JPEG is decoded at 1/2, 1/4 or 1/8
/// of its size by libjpeg's DCT-domain scaling (the most it can, as Pillow's `draft` does)
/// while both sides stay at least those `at_least` gives for its upright size. Much faster on
/// large photos, but not the pixels a full decode and a resize make. Other formats, and JPEGs
/// too small to reduce, decode whole.
pub fn decode_reduced(
    bytes: &[u8],
    limits: DecodeLimits,
    at_least: Option<AtLeast<'_>>,
) -> Result<(Image, Option<String>), DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let orientation = crate::jpeg::exif_orientation(bytes);
        let (image, warning) = crate::jpeg::decode(bytes, limits, at_least, orientation)?;
        let image = match orientation {
            Some(orientation) => upright(image, orientation),
            None => image,
        };
        return Ok((image, warning));
    }
    let image = decode_other(bytes, limits)?;
    // A header may claim an empty image (a GIF or BMP of width 0) and decode "successfully":
    // there is nothing to resize or score.
    if image.width == 0 || image.height == 0 {
        return Err(DecodeError::Corrupt(format!(
            "the image is {}x{} pixels: it has none",
            image.width, image.height
        )));
    }
    Ok((image, None))
}

/// The most memory decoding `bytes` holds at once, from the file's header alone: the decoder's
/// buffer in the file's own pixel format (16-bit and alpha count), the 8-bit RGB or gray copy
/// made of it, and the turned copy its EXIF orientation asks for. `None` when the header does
/// not say (the decode will say why, or decode something the header walk missed: hold the
/// most then).
pub fn decoding_bytes(bytes: &[u8]) -> Option<u64> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let (width, height, components) = crate::jpeg::frame(bytes)?;
        let pixels = u64::from(width) * u64::from(height);
        let colour = u64::from(components.min(3));
        // CMYK is mixed to RGB in a second buffer.
        let mixed = if components == 4 { 3 } else { 0 };
        let turned = if crate::jpeg::exif_orientation(bytes)
            .is_some_and(|orientation| orientation != Orientation::NoTransforms)
        {
            colour
        } else {
            0
        };
        return Some(pixels * (u64::from(components) + mixed + turned));
    }
    let bytes = pixels_only(bytes);
    let decoder = ImageReader::new(Cursor::new(bytes.as_ref()))
        .with_guessed_format()
        .ok()?
        .into_decoder()
        .ok()?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    // Native pixels, their 8-bit copy, and a turned copy of that.
    Some(pixels * (u64::from(decoder.color_type().bytes_per_pixel()) + 3 + 3))
}

/// Whether `orientation` swaps width and height.
pub(crate) fn transposes(orientation: Orientation) -> bool {
    matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// `bytes` without the PNG chunks that hold compressed metadata (an ICC profile, compressed
/// text): a 1 MB file's profile can inflate to gigabytes, whatever the image's size, and
/// pixels are all this product reads (Pillow and OpenCV leave the profile unapplied too).
/// Other files, and PNGs without such chunks, are returned as they are.
fn pixels_only(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    const COMPRESSED: [&[u8; 4]; 3] = [b"iCCP", b"zTXt", b"iTXt"];
    let Some(mut rest) = bytes.strip_prefix(SIGNATURE) else {
        return bytes.into();
    };
    // Chunks: length, type, data, CRC. A malformed tail is kept as it is, for the decoder to
    // refuse.
    let mut kept: Option<Vec<u8>> = None;
    let mut at = SIGNATURE.len();
    while let Some(header) = rest.get(..8) {
        let length = u32::from_be_bytes(header[..4].try_into().expect("four bytes")) as usize;
        let Some(end) = length.checked_add(12).filter(|&end| end <= rest.len()) else {
            break;
        };
        let chunk_type: &[u8; 4] = header[4..8].try_into().expect("four bytes");
        if COMPRESSED.contains(&chunk_type) {
            kept.get_or_insert_with(|| bytes[..at].to_vec());
        } else if let Some(kept) = &mut kept {
            kept.extend_from_slice(&rest[..end]);
        }
        rest = &rest[end..];
        at += end;
    }
    match kept {
        Some(mut kept) => {
            kept.extend_from_slice(rest);
            kept.into()
        }
        None => bytes.into(),
    }
}

/// The image format the first bytes of a file this product does not read name, for the error
/// to say which it is (a user with a folder of HEIC photos learns what to convert).
fn format_named(bytes: &[u8]) -> Option<&'static str> {
    // ISO base media files (HEIF, AVIF): a box size, `ftyp`, then the major brand.
    if bytes.get(4..8) == Some(b"ftyp") {
        return match bytes.get(8..12)? {
            b"avif" | b"avis" => Some("AVIF"),
            b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" | b"mif1" | b"msf1" => {
                Some("HEIF/HEIC")
            }
            _ => None,
        };
    }
    const SIGNATURES: [(&[u8], &str); 9] = [
        (b"II*\0", "TIFF"),
        (b"MM\0*", "TIFF"),
        (b"\0\0\x01\0", "ICO"),
        (b"\0\0\x02\0", "CUR"),
        (b"\0\0\0\x0cjP  \r\n\x87\n", "JPEG 2000"),
        (b"\xff\x4f\xff\x51", "JPEG 2000"),
        (b"\xff\x0a", "JPEG XL"),
        (b"\0\0\0\x0cJXL \r\n\x87\n", "JPEG XL"),
        (b"8BPS", "Photoshop"),
    ];
    SIGNATURES
        .iter()
        .find(|(signature, _)| bytes.starts_with(signature))
        .map(|&(_, format)| format)
}

/// Every format but JPEG, through `image`.
fn decode_other(bytes: &[u8], limits: DecodeLimits) -> Result<Image, DecodeError> {
    let bytes = pixels_only(bytes);
    let bytes = bytes.as_ref();
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| DecodeError::Malformed(e.into()))
    };
    let probe = reader()?;
    let unsupported = || DecodeError::Unsupported {
        format: format_named(bytes),
    };
    if probe.format().is_none() {
        return Err(unsupported());
    }
    // The header alone says how large the image claims to be: refuse before allocating. A
    // format `image` knows but is built without (TIFF, AVIF, ICO) is unsupported, not corrupt.
    let (width, height) = probe.into_dimensions().map_err(|e| match e {
        image::ImageError::Unsupported(_) => unsupported(),
        other => DecodeError::Malformed(other),
    })?;
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(DecodeError::TooLarge {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    let mut reader = reader()?;
    let mut image_limits = image::Limits::default();
    // Room for the widest pixel format (16-bit RGBA) of the largest image allowed.
    image_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(image_limits);
    let failed = |e| match e {
        image::ImageError::Unsupported(_) => unsupported(),
        // The header's size was within the limit (checked above): what the decoder needed
        // beyond it is something the header did not declare (a GIF frame larger than its
        // screen).
        image::ImageError::Limits(_) => DecodeError::Undeclared {
            width,
            height,
            max: limits.max_pixels,
        },
        other => DecodeError::Malformed(other),
    };
    let mut decoder = reader.into_decoder().map_err(failed)?;
    // Metadata that cannot be read leaves the image as stored: its pixels are still good.
    let orientation = match decoder.orientation() {
        Ok(Orientation::NoTransforms) | Err(_) => {
            png_exif_orientation(bytes).unwrap_or(Orientation::NoTransforms)
        }
        Ok(orientation) => orientation,
    };
    let mut decoded = DynamicImage::from_decoder(decoder).map_err(failed)?;
    decoded.apply_orientation(orientation);
    Ok(to_image(decoded))
}

/// `image` turned as its EXIF orientation says, so that it is scored (and shown) the way
/// cameras, browsers and OpenCV (CNTK's image reader) show it.
fn upright(image: Image, orientation: Orientation) -> Image {
    if orientation == Orientation::NoTransforms {
        return image;
    }
    let Image {
        width,
        height,
        channels,
        data,
    } = image;
    let (w, h) = (width as u32, height as u32);
    let mut dynamic = if channels == 1 {
        DynamicImage::ImageLuma8(ImageBuffer::from_raw(w, h, data).expect("one byte per pixel"))
    } else {
        DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, data).expect("three bytes per pixel"))
    };
    dynamic.apply_orientation(orientation);
    to_image(dynamic)
}

/// The EXIF orientation of a PNG wherever the file keeps it: an eXIf chunk anywhere (some
/// writers put it after the image data, where a decoder that stops at the pixels does not see
/// it), or ImageMagick's hex-encoded "Raw profile type exif" text chunk. Pillow reads both and
/// turns the image; so do browsers for eXIf.
fn png_exif_orientation(bytes: &[u8]) -> Option<Orientation> {
    const RAW_PROFILE: &[u8] = b"Raw profile type exif\0";
    let mut at = bytes.strip_prefix(b"\x89PNG\r\n\x1a\n").map(|_| 8)?;
    let mut from_text = None;
    while let Some(header) = bytes.get(at..at + 8) {
        let length = u32::from_be_bytes(header[..4].try_into().expect("four bytes")) as usize;
        let body = bytes.get(at + 8..(at + 8).checked_add(length)?)?;
        match &header[4..] {
            b"eXIf" => return Orientation::from_exif_chunk(body),
            b"tEXt" if from_text.is_none() => {
                from_text = body
                    .strip_prefix(RAW_PROFILE)
                    .and_then(raw_profile)
                    .and_then(|tiff| Orientation::from_exif_chunk(&tiff));
            }
            b"IEND" => break,
            _ => {}
        }
        at += 12 + length;
    }
    from_text
}

/// The TIFF block of an ImageMagick raw profile: a line naming it, a line with its length,
/// then hex digits over several lines (the block after "Exif\0\0").
fn raw_profile(text: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?;
    let hex: String = text
        .trim_start()
        .splitn(3, '\n')
        .nth(2)?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let bytes = bytes?;
    Some(match bytes.strip_prefix(b"Exif\0\0") {
        Some(tiff) => tiff.to_vec(),
        None => bytes,
    })
}

/// The decoded pixels as 8-bit gray or RGB. Alpha is dropped without compositing and 16-bit
/// values keep their high byte, as Pillow's `convert("RGB")` and OpenCV's `imread` give them
/// (a model sees the colour under transparent pixels, as it did in training).
fn to_image(decoded: DynamicImage) -> Image {
    let decoded = match decoded {
        DynamicImage::ImageLuma16(_) | DynamicImage::ImageLumaA16(_) => {
            DynamicImage::ImageLuma8(high_bytes(decoded.into_luma16()))
        }
        DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgba16(_) => {
            DynamicImage::ImageRgb8(high_bytes(decoded.into_rgb16()))
        }
        other => other,
    };
    let (width, height) = (decoded.width() as usize, decoded.height() as usize);
    let gray = matches!(
        decoded,
        DynamicImage::ImageLuma8(_)
            | DynamicImage::ImageLumaA8(_)
            | DynamicImage::ImageLuma16(_)
            | DynamicImage::ImageLumaA16(_)
    );
    let (channels, data) = if gray {
        (1, decoded.into_luma8().into_raw())
    } else {
        (3, decoded.into_rgb8().into_raw())
    };
    Image {
        width,
        height,
        channels,
        data,
    }
}

/// A 16-bit image's high bytes.
fn high_bytes<P>(image: ImageBuffer<P, Vec<u16>>) -> ImageBuffer<P::Pixel8, Vec<u8>>
where
    P: image::Pixel<Subpixel = u16> + Eight,
{
    let (width, height) = image.dimensions();
    let data = image
        .into_raw()
        .into_iter()
        .map(|v| (v >> 8) as u8)
        .collect();
    ImageBuffer::from_raw(width, height, data).expect("the same number of values")
}

/// The 8-bit pixel type of a 16-bit one.
trait Eight {
    type Pixel8: image::Pixel<Subpixel = u8>;
}

impl Eight for image::Luma<u16> {
    type Pixel8 = image::Luma<u8>;
}

impl Eight for image::Rgb<u16> {
    type Pixel8 = image::Rgb<u8>;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_scans: 100,
        max_pixels: 1 << 24,
    };

    fn png(width: u32, height: u32, color: png::ColorType, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn decodes_gray_and_colour() {
        let gray = decode(&png(2, 1, png::ColorType::Grayscale, &[7, 9]), LIMITS).unwrap();
        assert_eq!((gray.channels, gray.data.clone()), (1, vec![7, 9]));
        let rgb = decode(&png(1, 1, png::ColorType::Rgb, &[1, 2, 3]), LIMITS).unwrap();
        assert_eq!(
            (rgb.width, rgb.height, rgb.data.clone()),
            (1, 1, vec![1, 2, 3])
        );
        let rgba = decode(&png(1, 1, png::ColorType::Rgba, &[1, 2, 3, 4]), LIMITS).unwrap();
        assert_eq!(rgba.data, vec![1, 2, 3]);
    }

    /// `image` turned by index arithmetic alone, for EXIF orientations 3 (180 degrees), 6 (90
    /// clockwise) and 8 (90 anticlockwise).
    pub(crate) fn turned(image: &Image, orientation: u16) -> Image {
        let (w, h, c) = (image.width, image.height, image.channels);
        let (width, height) = if orientation == 3 { (w, h) } else { (h, w) };
        let mut data = Vec::with_capacity(image.data.len());
        for r in 0..height {
            for col in 0..width {
                let (sr, sc) = match orientation {
                    3 => (h - 1 - r, w - 1 - col),
                    6 => (h - 1 - col, r),
                    8 => (col, w - 1 - r),
                    other => panic!("orientation {other} is not one of 3, 6, 8"),
                };
                data.extend_from_slice(&image.data[(sr * w + sc) * c..][..c]);
            }
        }
        Image {
            width,
            height,
            channels: c,
            data,
        }
    }

    /// `png` with an eXIf chunk holding `tiff` before its image data.
    fn with_exif(png: &[u8], tiff: &[u8]) -> Vec<u8> {
        let idat = png.windows(4).position(|w| w == b"IDAT").unwrap() - 4;
        let body = [&b"eXIf"[..], tiff].concat();
        [
            &png[..idat],
            &(tiff.len() as u32).to_be_bytes(),
            &body,
            &crc32(&body).to_be_bytes(),
            &png[idat..],
        ]
        .concat()
    }

    #[test]
    fn exif_orientation_of_other_formats_turns_them_upright() {
        let pixels: Vec<u8> = (0..6 * 4 * 3).map(|v| v as u8).collect();
        let plain = png(6, 4, png::ColorType::Rgb, &pixels);
        let stored = decode(&plain, LIMITS).unwrap();
        assert_eq!(stored.data, pixels);
        for orientation in [3, 6, 8] {
            let tiff = crate::jpeg::tests::exif_block(orientation, orientation != 6);
            let image = decode(&with_exif(&plain, &tiff), LIMITS).unwrap();
            assert_eq!(
                image,
                turned(&stored, orientation),
                "orientation {orientation}"
            );
        }
        let garbage = decode(&with_exif(&plain, b"garbage"), LIMITS).unwrap();
        assert_eq!(garbage, stored);
    }

    #[test]
    fn bad_bytes_are_errors_of_the_image() {
        assert!(matches!(decode(b"", LIMITS), Err(DecodeError::Empty)));
        assert!(matches!(
            decode(b"just some text, named .jpg", LIMITS),
            Err(DecodeError::Unsupported { format: None })
        ));
        let whole = png(4, 4, png::ColorType::Rgb, &[9; 48]);
        let truncated = &whole[..whole.len() - 20];
        let Err(e) = decode(truncated, LIMITS) else {
            panic!("a truncated PNG decoded")
        };
        assert!(matches!(e, DecodeError::Malformed(_)), "{e:?}");
        // The decoder's own words are kept, as the error's source.
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn formats_not_read_here_are_named_as_such_never_as_corrupt() {
        // The first bytes of real files of each format, then some of their body.
        let mut tiff = b"II*\0\x08\0\0\0".to_vec();
        tiff.extend_from_slice(&[0; 64]);
        let mut avif = b"\0\0\0\x20ftypavif\0\0\0\0avifmif1miaf".to_vec();
        avif.extend_from_slice(&[0; 64]);
        let mut heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic".to_vec();
        heic.extend_from_slice(&[0; 64]);
        let mut ico = b"\0\0\x01\0\x01\0\x10\x10\0\0\x01\0\x20\0".to_vec();
        ico.extend_from_slice(&[0; 64]);
        let mut jp2 = b"\0\0\0\x0cjP  \r\n\x87\n".to_vec();
        jp2.extend_from_slice(&[0; 64]);
        for (bytes, format) in [
            (tiff, "TIFF"),
            (avif, "AVIF"),
            (heic, "HEIF/HEIC"),
            (ico, "ICO"),
            (jp2, "JPEG 2000"),
        ] {
            let e = decode(&bytes, LIMITS).expect_err(format);
            assert!(
                matches!(e, DecodeError::Unsupported { format: Some(named) } if named == format),
                "{format}: {e:?}"
            );
            assert!(
                e.to_string().starts_with(&format!(
                    "not an image this product reads (a {format} file; it reads JPEG"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn huge_claims_are_refused_from_the_header() {
        // A valid PNG header claiming 100000 x 100000, and nothing after it.
        let mut bytes = png(1, 1, png::ColorType::Rgb, &[0, 0, 0]);
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        // The IHDR chunk's CRC covers its type and data (bytes 12..29).
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode(&bytes, LIMITS).unwrap_err();
        assert!(
            matches!(e, DecodeError::TooLarge { width: 100_000, .. }),
            "{e}"
        );
    }

    #[test]
    fn a_gif_frame_larger_than_its_screen_is_named_as_such() {
        // A 10x10 screen, then a 60000x60000 frame (two colours, a token of LZW data).
        let bytes = [
            &b"GIF89a"[..],
            &10u16.to_le_bytes(),
            &10u16.to_le_bytes(),
            &[0, 0, 0, 0x2C, 0, 0, 0, 0],
            &60_000u16.to_le_bytes(),
            &60_000u16.to_le_bytes(),
            &[0x80, 0, 0, 0, 255, 255, 255, 2, 2, 0x4C, 0x01, 0, 0x3B],
        ]
        .concat();
        let e = decode(&bytes, LIMITS).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::Undeclared {
                    width: 10,
                    height: 10,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("declares 10x10 pixels but holds more"),
            "{e}"
        );
    }

    /// CRC-32 as PNG chunks use it (ISO 3309, reflected, polynomial 0xEDB88320).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn planes_become_interleaved() {
        let image = Image::from_planes(&[1, 2, 10, 20, 100, 200], 1, 2);
        assert_eq!(image.data, vec![1, 10, 100, 2, 20, 200]);
    }
}
