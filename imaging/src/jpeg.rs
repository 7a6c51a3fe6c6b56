//! JPEG through libjpeg (libjpeg-turbo's decoder, built from source by `mozjpeg-sys`).
//!
//! Why libjpeg and not a pure-Rust decoder: models are trained and evaluated on pixels that
//! libjpeg decoded (PIL, OpenCV, torchvision and CNTK's ImageDeserializer all use it), and
//! decoders differ in how the IDCT, chroma upsampling and colour conversion round. A class
//! decided by a few levels flips when they do: on the 10,000 CIFAR-10 test JPEGs a ResNet's
//! predictions from `jpeg-decoder`'s pixels agreed with libjpeg's on 98.90% of images. With
//! libjpeg's own "islow" IDCT and fancy upsampling (its defaults, and PIL's) the pixels are
//! the ones the model was measured on.
//!
//! This is the workspace's one FFI module. libjpeg reports a fatal error by calling
//! `error_exit`, which must not return: it unwinds (`C-unwind`; the C code is built with
//! `-fexceptions`) to the `catch_unwind` in [`decode`], and the decompressor is destroyed on
//! the way out by its guard.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_ulong};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use image::metadata::Orientation;
use mozjpeg_sys as ffi;

use crate::decode::{AtLeast, DecodeError, DecodeLimits, Image, transposes};

unsafe extern "C" {
    /// The C library's, which `jpeg_mem_dest` allocates with.
    fn free(pointer: *mut std::ffi::c_void);
    /// libjpeg-turbo's own answer to whether its SIMD IDCT runs on this CPU: 0 in a build without
    /// SIMD (whose stubs define it too) or on a CPU without the instructions. (This build reads
    /// no `JSIMD_*` environment variables.)
    fn jsimd_can_idct_islow() -> c_int;
}

/// The JPEG decoder this process runs: libjpeg-turbo with the SIMD code this CPU takes, or
/// without SIMD. Decoded pixels are the same either way; the speed is not, so figures say which.
pub fn decoder() -> &'static str {
    static DECODER: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    DECODER.get_or_init(|| {
        // SAFETY: a query without arguments or shared state (libjpeg-turbo keeps what it
        // detected per thread).
        if unsafe { jsimd_can_idct_islow() } == 0 {
            return "libjpeg-turbo without SIMD";
        }
        simd_instructions()
    })
}

/// The instructions libjpeg-turbo's SIMD code picks on this CPU (its own choice, which it
/// does not export, made by the same test: AVX2 where the CPU and the OS have it).
fn simd_instructions() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return "libjpeg-turbo with SIMD (AVX2)";
        }
        "libjpeg-turbo with SIMD (SSE2)"
    }
    #[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
    {
        "libjpeg-turbo with SIMD (NEON)"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
    {
        "libjpeg-turbo with SIMD"
    }
}

/// `image` (gray or RGB) as a baseline JPEG at `quality` (1 to 100) with 4:2:0 chroma, as
/// Pillow and libjpeg-turbo's `cjpeg` write by default, none of mozjpeg's slower extensions
/// (progressive scans, trellis quantisation): how photos are usually stored. The bench makes its
/// small photos with it.
///
/// # Panics
/// If `image` is not 1 or 3 channels of `height * width` pixels, none of them empty: a caller's
/// bug, as is any error libjpeg reports on valid input.
pub fn encode(image: &Image, quality: u8) -> Vec<u8> {
    assert!(
        matches!(image.channels, 1 | 3),
        "{} channels",
        image.channels
    );
    assert_eq!(
        image.data.len(),
        image.width * image.height * image.channels
    );
    let (width, height) = (
        u32::try_from(image.width).expect("a width libjpeg takes"),
        u32::try_from(image.height).expect("a height libjpeg takes"),
    );
    assert!(width > 0 && height > 0, "an empty image");
    compress(width, height, image.channels, &image.data, quality, false)
}

/// libjpeg's compressor on `pixels` (HWC), baseline with libjpeg-turbo's defaults, or with
/// its simple progression when `progressive`.
fn compress(
    width: u32,
    height: u32,
    channels: usize,
    pixels: &[u8],
    quality: u8,
    progressive: bool,
) -> Vec<u8> {
    /// Owns the compressor and the buffer `jpeg_mem_dest` allocates, freeing both however it
    /// is left (an error unwinds out of libjpeg).
    struct Compressor {
        cinfo: Box<ffi::jpeg_compress_struct>,
        _errors: Box<ffi::jpeg_error_mgr>,
        out: *mut u8,
        len: c_ulong,
    }
    impl Drop for Compressor {
        fn drop(&mut self) {
            // SAFETY: created below; destroying is valid in any state. `out` is null or the
            // buffer libjpeg allocated with malloc, freed once.
            unsafe {
                ffi::jpeg_destroy_compress(&mut self.cinfo);
                if !self.out.is_null() {
                    free(self.out.cast());
                }
            }
        }
    }
    // SAFETY: the standard compress sequence on zeroed structs, as in `Decompressor::new`, the
    // error manager boxed before the compressor points at it; every row handed to libjpeg is
    // `width * channels` bytes of `pixels`.
    unsafe {
        let mut errors: Box<ffi::jpeg_error_mgr> = Box::new(std::mem::zeroed());
        ffi::jpeg_std_error(&mut errors);
        errors.error_exit = Some(error_exit);
        let mut c = Compressor {
            cinfo: Box::new(std::mem::zeroed()),
            _errors: errors,
            out: std::ptr::null_mut(),
            len: 0,
        };
        c.cinfo.common.err = &mut *c._errors;
        ffi::jpeg_create_compress(&mut *c.cinfo);
        ffi::jpeg_mem_dest(&mut c.cinfo, &mut c.out, &mut c.len);
        c.cinfo.image_width = width;
        c.cinfo.image_height = height;
        c.cinfo.input_components = channels as c_int;
        c.cinfo.in_color_space = if channels == 1 {
            ffi::JCS_GRAYSCALE
        } else {
            ffi::JCS_RGB
        };
        // Before the defaults, which it chooses among.
        ffi::jpeg_c_set_int_param(
            &mut c.cinfo,
            ffi::J_INT_PARAM::JINT_COMPRESS_PROFILE,
            ffi::JCP_FASTEST as c_int,
        );
        ffi::jpeg_set_defaults(&mut c.cinfo);
        ffi::jpeg_set_quality(&mut c.cinfo, c_int::from(quality.clamp(1, 100)), 1);
        if progressive {
            ffi::jpeg_simple_progression(&mut c.cinfo);
        }
        ffi::jpeg_start_compress(&mut c.cinfo, 1);
        for row in pixels.chunks_exact(width as usize * channels) {
            let rows = [row.as_ptr()];
            ffi::jpeg_write_scanlines(&mut c.cinfo, rows.as_ptr(), 1);
        }
        ffi::jpeg_finish_compress(&mut c.cinfo);
        std::slice::from_raw_parts(c.out, c.len as usize).to_vec()
    }
}

/// A libjpeg error, or a warning that the file ends early, carried by the unwind out of C.
struct Fatal(String);

/// The scan limit, carried by the unwind out of C when a file exceeds it.
struct TooManyScans(u32);

/// libjpeg's progress manager with the scan limit after it: libjpeg sees the first field
/// alone, and the monitor finds the limit behind it.
#[repr(C)]
struct Progress {
    manager: ffi::jpeg_progress_mgr,
    max_scans: u32,
}

thread_local! {
    /// The first warning about lost data of the decode running on this thread: libjpeg reports
    /// warnings through a callback that can return nothing.
    static LOST_DATA: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Decodes a JPEG (baseline, extended or progressive, Huffman- or arithmetic-coded; gray, YCbCr,
/// RGB, CMYK or YCCK). The
/// second value is libjpeg's warning when it lost data on the way (a damaged segment it
/// skipped, a bad Huffman code) and decoded the rest, as Pillow and OpenCV return such images.
///
/// With `at_least`, the image is decoded reduced as far as it stays that large (see
/// [`crate::decode::decode_reduced`]); `orientation` is the file's EXIF orientation, by which
/// the stored size is turned upright to ask `at_least`.
pub(crate) fn decode(
    bytes: &[u8],
    limits: DecodeLimits,
    at_least: Option<AtLeast<'_>>,
    orientation: Option<Orientation>,
) -> Result<(Image, Option<String>), DecodeError> {
    LOST_DATA.with(|lost| lost.borrow_mut().take());
    let transposed = orientation.is_some_and(transposes);
    let result = catch_unwind(AssertUnwindSafe(|| {
        decode_unwinding(bytes, limits, at_least, transposed)
    }));
    let warning = LOST_DATA.with(|lost| lost.borrow_mut().take());
    match result {
        Ok(result) => result.map(|image| (image, warning)),
        Err(payload) => match payload.downcast::<Fatal>() {
            Ok(fatal) => Err(DecodeError::Corrupt(fatal.0)),
            Err(other) => match other.downcast::<TooManyScans>() {
                Ok(limit) => Err(DecodeError::TooManyScans { max: limit.0 }),
                // A bug, not a bad image: keep it a panic.
                Err(other) => resume_unwind(other),
            },
        },
    }
}

/// Owns a decompressor and its error manager (libjpeg keeps a pointer to the latter, so both
/// live in boxes that do not move), and destroys the decompressor however it is left.
struct Decompressor {
    cinfo: Box<ffi::jpeg_decompress_struct>,
    _errors: Box<ffi::jpeg_error_mgr>,
    _progress: Box<Progress>,
}

impl Decompressor {
    /// A decompressor that stops a progressive file at its `max_scans` + 1st scan.
    fn new(max_scans: u32) -> Self {
        // SAFETY: both structs are plain C data for which all-zero is the state libjpeg's
        // own examples start from; `jpeg_std_error` fills in the error manager and
        // `jpeg_create_decompress` the decompressor, which points at the boxed (so unmoving)
        // error manager before anything can fail.
        unsafe {
            let mut errors: Box<ffi::jpeg_error_mgr> = Box::new(std::mem::zeroed());
            ffi::jpeg_std_error(&mut errors);
            errors.error_exit = Some(error_exit);
            errors.emit_message = Some(emit_message);
            let mut progress = Box::new(Progress {
                manager: std::mem::zeroed(),
                max_scans,
            });
            progress.manager.progress_monitor = Some(progress_monitor);
            let mut cinfo: Box<ffi::jpeg_decompress_struct> = Box::new(std::mem::zeroed());
            cinfo.common.err = &mut *errors;
            ffi::jpeg_create_decompress(&mut *cinfo);
            // After creating: `jpeg_create_decompress` clears the struct but for `err`.
            cinfo.common.progress = &mut progress.manager;
            Self {
                cinfo,
                _errors: errors,
                _progress: progress,
            }
        }
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: created in `new`; destroying is valid in any state, after an error too.
        unsafe { ffi::jpeg_destroy_decompress(&mut self.cinfo) }
    }
}

fn decode_unwinding(
    bytes: &[u8],
    limits: DecodeLimits,
    at_least: Option<AtLeast<'_>>,
    transposed: bool,
) -> Result<Image, DecodeError> {
    let mut decompressor = Decompressor::new(limits.max_scans);
    let cinfo = &mut *decompressor.cinfo;
    let len = c_ulong::try_from(bytes.len())
        .map_err(|_| DecodeError::Corrupt("file too large for libjpeg".into()))?;
    // SAFETY: `bytes` outlives the decompressor (dropped at the end of this function), and
    // libjpeg only reads it. Every error unwinds out of these calls instead of returning.
    unsafe {
        ffi::jpeg_mem_src(cinfo, bytes.as_ptr(), len);
        ffi::jpeg_read_header(cinfo, 1);
    }
    let (width, height) = (cinfo.image_width, cinfo.image_height);
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(DecodeError::TooLarge {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    let channels = match cinfo.jpeg_color_space {
        ffi::JCS_GRAYSCALE => {
            cinfo.out_color_space = ffi::JCS_GRAYSCALE;
            1
        }
        // Ink, not light: converted to RGB below.
        ffi::JCS_CMYK | ffi::JCS_YCCK => {
            cinfo.out_color_space = ffi::JCS_CMYK;
            4
        }
        _ => {
            cinfo.out_color_space = ffi::JCS_RGB;
            3
        }
    };
    if let Some(at_least) = at_least {
        cinfo.scale_num = 1;
        cinfo.scale_denom = reduction((height as usize, width as usize), at_least, transposed);
    }
    // libjpeg's defaults, stated because they are the point: the accurate integer IDCT and
    // triangle-filter chroma upsampling, as PIL and OpenCV decode.
    cinfo.dct_method = ffi::J_DCT_METHOD::JDCT_ISLOW;
    cinfo.do_fancy_upsampling = 1;
    // SAFETY: as above; the header has been read.
    unsafe { ffi::jpeg_start_decompress(cinfo) };
    let (width, height) = (cinfo.output_width as usize, cinfo.output_height as usize);
    debug_assert_eq!(cinfo.output_components as usize, channels);
    let stride = width * channels;
    // Not zeroed first: libjpeg writes every byte (a camera photo is tens of MB).
    let mut data: Vec<u8> = Vec::with_capacity(stride * height);
    while (cinfo.output_scanline as usize) < height {
        let row = cinfo.output_scanline as usize * stride;
        // SAFETY: `row + stride` is within the capacity; the pointer is only written through.
        let mut rows = [unsafe { data.as_mut_ptr().add(row) }];
        // SAFETY: one row pointer to `stride` writable bytes, and at most one line asked for.
        let read = unsafe { ffi::jpeg_read_scanlines(cinfo, rows.as_mut_ptr(), 1) };
        if read == 0 {
            // Only a suspending data source returns no lines; the memory source never does.
            return Err(DecodeError::Corrupt("libjpeg returned no scanline".into()));
        }
    }
    // SAFETY: libjpeg wrote all `height` rows of `stride` bytes (each scanline read above;
    // data it lost is filled in, not skipped), and every scanline has been read.
    unsafe {
        data.set_len(stride * height);
        ffi::jpeg_finish_decompress(cinfo);
    }
    let data = if channels == 4 {
        cmyk_to_rgb(&data, has_adobe_segment(bytes))
    } else {
        data
    };
    Ok(Image {
        width,
        height,
        channels: channels.min(3),
        data,
    })
}

/// The largest of 8, 4 and 2 (else 1) by which an image of the `stored` size (height, width)
/// can be divided, libjpeg rounding each side up, and stay at least as large as `at_least`
/// asks for its upright size (`transposed`: the stored sides swapped).
fn reduction(stored: (usize, usize), at_least: AtLeast<'_>, transposed: bool) -> u32 {
    let swap = |(a, b): (usize, usize)| if transposed { (b, a) } else { (a, b) };
    let (min_h, min_w) = swap(at_least(swap(stored)));
    [8, 4, 2]
        .into_iter()
        .find(|&d| stored.0.div_ceil(d) >= min_h && stored.1.div_ceil(d) >= min_w)
        .map_or(1, |d| d as u32)
}

/// CMYK to RGB: the light each of C, M and Y lets through, times K's. Adobe's files (nearly
/// all CMYK JPEGs) store the channels inverted, so there the stored value is the light.
fn cmyk_to_rgb(cmyk: &[u8], inverted: bool) -> Vec<u8> {
    let light = |v: u8| u16::from(if inverted { v } else { 255 - v });
    cmyk.chunks_exact(4)
        .flat_map(|p| {
            let k = light(p[3]);
            [p[0], p[1], p[2]].map(|c| ((light(c) * k + 127) / 255) as u8)
        })
        .collect()
}

/// The orientation the file's EXIF block (an APP1 segment, "Exif\0\0" then a TIFF block)
/// records, if it has one: cameras and phones store the sensor's rows as they came and say
/// there how to turn them upright.
pub(crate) fn exif_orientation(bytes: &[u8]) -> Option<Orientation> {
    segments(bytes)
        .find_map(|(marker, payload)| {
            (marker == 0xE1)
                .then(|| payload.strip_prefix(b"Exif\0\0"))
                .flatten()
        })
        .and_then(Orientation::from_exif_chunk)
}

/// The frame's width, height and number of components, from its SOF segment, if the file has
/// one before its first scan.
pub(crate) fn frame(bytes: &[u8]) -> Option<(u32, u32, u8)> {
    // SOF0..SOF15, less DHT (C4), JPG (C8) and DAC (CC): precision, height, width, components.
    let sof = segments(bytes).find_map(|(marker, payload)| {
        (matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)).then_some(payload)
    })?;
    let &[_, h1, h0, w1, w0, components, ..] = sof else {
        return None;
    };
    let (height, width) = (u16::from_be_bytes([h1, h0]), u16::from_be_bytes([w1, w0]));
    Some((u32::from(width), u32::from(height), components))
}

/// The marker segments before the first scan, as (marker, payload after the length), walked
/// from the start of the file: metadata and the frame header come before the image data.
fn segments(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut at = 2; // past SOI
    std::iter::from_fn(move || {
        loop {
            let [0xFF, marker] = *bytes.get(at..at + 2)? else {
                return None;
            };
            match marker {
                // Fill bytes before a marker.
                0xFF => at += 1,
                // Markers without a length.
                0x01 | 0xD0..=0xD8 => at += 2,
                // Start of scan or end of image.
                0xDA | 0xD9 => return None,
                _ => {
                    let length = usize::from(u16::from_be_bytes([
                        *bytes.get(at + 2)?,
                        *bytes.get(at + 3)?,
                    ]))
                    .max(2);
                    let payload = bytes.get(at + 4..at + 2 + length)?;
                    at += 2 + length;
                    return Some((marker, payload));
                }
            }
        }
    })
}

/// Whether the file has Adobe's APP14 segment (`FF EE`, length, "Adobe"), which marks
/// inverted CMYK. Entropy-coded data never holds `FF EE` (there `FF` is followed by 00 or a
/// restart marker), so a plain scan finds only the segment.
fn has_adobe_segment(bytes: &[u8]) -> bool {
    bytes
        .windows(9)
        .any(|w| w[..2] == [0xFF, 0xEE] && &w[4..] == b"Adobe")
}

/// The warning that the file ends before its image does: libjpeg fills the rest with gray,
/// Pillow refuses the file ("image file is truncated"), and so does this product.
const TRUNCATED: ffi::J_MESSAGE_CODE = ffi::JWRN_JPEG_EOF;

/// The warnings that some data was lost (libjpeg skips to the next marker or substitutes, and
/// goes on): the image is scored as Pillow and OpenCV return it, and its row says so.
const LOST: [ffi::J_MESSAGE_CODE; 5] = [
    ffi::JWRN_HIT_MARKER,
    ffi::JWRN_HUFF_BAD_CODE,
    ffi::JWRN_MUST_RESYNC,
    ffi::JWRN_NOT_SEQUENTIAL,
    ffi::JWRN_BOGUS_PROGRESSION,
];

unsafe extern "C-unwind" fn error_exit(cinfo: &mut ffi::jpeg_common_struct) {
    let message = message(cinfo);
    resume_unwind(Box::new(Fatal(message)))
}

/// Called by libjpeg as it reads the file: stops a progressive file past its scan limit
/// (libjpeg-turbo's advice against files of many empty scans).
unsafe extern "C-unwind" fn progress_monitor(cinfo: &mut ffi::jpeg_common_struct) {
    if cinfo.is_decompressor == 0 {
        return;
    }
    // SAFETY: a decompressor's common struct is the first field of its decompress struct, and
    // its `progress` points at the `manager` field of a live `Progress` (`Decompressor::new`),
    // which is `repr(C)` with the manager first.
    let (scan, max_scans) = unsafe {
        let decompress =
            &*(cinfo as *mut ffi::jpeg_common_struct).cast::<ffi::jpeg_decompress_struct>();
        let progress = &*cinfo.progress.cast::<Progress>();
        (decompress.input_scan_number, progress.max_scans)
    };
    if past_scan_limit(scan, max_scans) {
        resume_unwind(Box::new(TooManyScans(max_scans)))
    }
}

/// Whether scan number `scan` (from 1) is past `max_scans`.
fn past_scan_limit(scan: c_int, max_scans: u32) -> bool {
    u32::try_from(scan).is_ok_and(|scan| scan > max_scans)
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut ffi::jpeg_common_struct, level: c_int) {
    // Level -1 is a warning; higher levels are trace messages, never enabled here.
    if level != -1 {
        return;
    }
    // SAFETY: libjpeg passes its live decompressor, whose `err` is our error manager.
    let code = unsafe { (*cinfo.err).msg_code };
    if code == TRUNCATED {
        let message = message(cinfo);
        resume_unwind(Box::new(Fatal(message)))
    }
    if LOST.contains(&code) {
        let message = message(cinfo);
        LOST_DATA.with(|lost| {
            lost.borrow_mut().get_or_insert(message);
        });
    }
}

/// libjpeg's text for its last message, e.g. "Premature end of JPEG file".
fn message(cinfo: &mut ffi::jpeg_common_struct) -> String {
    /// `format_message` as C declares it: it writes into the buffer, which the binding's
    /// `&[u8; 80]` would forbid.
    type Format = unsafe extern "C-unwind" fn(&mut ffi::jpeg_common_struct, *mut u8);
    let mut buffer = [0u8; 80];
    // SAFETY: `format_message` is the standard formatter set by `jpeg_std_error`; it writes at
    // most JMSG_LENGTH_MAX (80) bytes, NUL-terminated, into the buffer. The two function
    // pointer types differ only in a reference versus a pointer to the same buffer.
    unsafe {
        if let Some(format) = (*cinfo.err).format_message {
            let format: Format = std::mem::transmute(format);
            format(cinfo, buffer.as_mut_ptr());
        }
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_scans: 100,
        max_pixels: 1 << 24,
    };

    /// `pixels` (HWC, 1 or 3 channels) as a JPEG from libjpeg's encoder, at quality 90.
    fn encode(width: u32, height: u32, channels: usize, pixels: &[u8]) -> Vec<u8> {
        encode_with(width, height, channels, pixels, false)
    }

    /// [`encode`], as a progressive JPEG (libjpeg's simple progression) when `progressive`.
    fn encode_with(
        width: u32,
        height: u32,
        channels: usize,
        pixels: &[u8],
        progressive: bool,
    ) -> Vec<u8> {
        compress(width, height, channels, pixels, 90, progressive)
    }

    /// A smooth 24x16 gradient, which JPEG keeps within a few levels.
    fn gradient(channels: usize) -> Vec<u8> {
        (0..16 * 24)
            .flat_map(|i| {
                let (y, x) = (i / 24, i % 24);
                [x * 8, y * 12, 128].map(|v| v as u8)[..channels].to_vec()
            })
            .collect()
    }

    #[test]
    fn encode_writes_a_baseline_jpeg_of_the_pixels() {
        for channels in [1, 3] {
            let image = Image {
                width: 24,
                height: 16,
                channels,
                data: gradient(channels),
            };
            let jpeg = super::encode(&image, 90);
            // SOF0: baseline, not mozjpeg's default progressive (SOF2).
            let sof: Vec<u8> = segments(&jpeg)
                .map(|(marker, _)| marker)
                .filter(|m| matches!(m, 0xC0..=0xCF) && !matches!(m, 0xC4 | 0xC8 | 0xCC))
                .collect();
            assert_eq!(sof, [0xC0]);
            let decoded = crate::decode::decode_jpeg(&jpeg, LIMITS).unwrap();
            assert_eq!(
                (decoded.width, decoded.height, decoded.channels),
                (24, 16, channels)
            );
            let worst = (decoded.data.iter().zip(&image.data))
                .map(|(&a, &b)| a.abs_diff(b))
                .max();
            assert!(worst.is_some_and(|w| w <= 12), "{worst:?}");
        }
    }

    #[test]
    fn decodes_colour_and_gray_close_to_what_was_encoded() {
        for channels in [3, 1] {
            let pixels = gradient(channels);
            let (image, warning) =
                decode(&encode(24, 16, channels, &pixels), LIMITS, None, None).unwrap();
            assert_eq!(warning, None);
            assert_eq!((image.width, image.height), (24, 16));
            assert_eq!(image.channels, channels);
            let worst = image
                .data
                .iter()
                .zip(&pixels)
                .map(|(&a, &b)| a.abs_diff(b))
                .max()
                .unwrap();
            assert!(worst <= 12, "{channels} channels: off by {worst}");
        }
    }

    #[test]
    fn truncated_and_garbled_files_are_corrupt_and_say_why() {
        let whole = encode(24, 16, 3, &gradient(3));
        let truncated = &whole[..whole.len() / 2];
        let Err(DecodeError::Corrupt(why)) = decode(truncated, LIMITS, None, None) else {
            panic!("a truncated JPEG decoded");
        };
        assert!(why.contains("end of JPEG"), "{why}");

        let mut garbled = whole.clone();
        garbled.truncate(20);
        garbled.extend_from_slice(&[0x5A; 64]);
        assert!(matches!(
            decode(&garbled, LIMITS, None, None),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn a_damaged_segment_is_decoded_with_a_warning_as_pillow_and_opencv_return_it() {
        // Noise, so that the scan is long.
        let pixels: Vec<u8> = (0..64 * 64 * 3u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let whole = encode(64, 64, 3, &pixels);
        // Cut the scan off half way and end the file there (EOI): the decoder meets the
        // marker before the data ends, warns, and fills in the rest.
        let scan = whole.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let cut = scan + (whole.len() - scan) / 2;
        let damaged = [&whole[..cut], &[0xFF, 0xD9][..]].concat();
        let (image, warning) = decode(&damaged, LIMITS, None, None).unwrap();
        assert_eq!((image.width, image.height), (64, 64));
        let warning = warning.expect("a warning");
        assert!(warning.contains("Corrupt JPEG data"), "{warning}");
        // The next decode on this thread starts without it.
        assert_eq!(decode(&whole, LIMITS, None, None).unwrap().1, None);
    }

    /// A TIFF block whose first IFD holds one entry, Orientation (0x0112, SHORT, 1 value).
    pub(crate) fn exif_block(orientation: u16, big_endian: bool) -> Vec<u8> {
        let u16b = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let u32b = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let magic: &[u8] = if big_endian { b"MM\0*" } else { b"II*\0" };
        [
            magic,
            &u32b(8),
            &u16b(1),
            &u16b(0x0112),
            &u16b(3),
            &u32b(1),
            &u16b(orientation),
            &[0, 0],
            &u32b(0),
        ]
        .concat()
    }

    /// `jpeg` with an APP1 EXIF segment after its first segment (libjpeg's JFIF APP0), so
    /// that finding it means walking past another.
    fn with_exif(jpeg: &[u8], tiff: &[u8]) -> Vec<u8> {
        let app0_end = 4 + usize::from(u16::from_be_bytes([jpeg[4], jpeg[5]]));
        let length = (2 + 6 + tiff.len()) as u16;
        [
            &jpeg[..app0_end],
            &[0xFF, 0xE1],
            &length.to_be_bytes(),
            b"Exif\0\0",
            tiff,
            &jpeg[app0_end..],
        ]
        .concat()
    }

    /// Every build on these CPUs decodes with SIMD, with or without nasm on the host (the
    /// pregenerated objects): a build that lost it fails here, not silently in the figures.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn this_build_decodes_with_simd() {
        assert!(
            decoder().starts_with("libjpeg-turbo with SIMD"),
            "{}",
            decoder()
        );
    }

    #[test]
    fn exif_orientation_turns_the_image_upright() {
        use crate::decode::decode;
        let plain = encode(24, 16, 3, &gradient(3));
        let stored = decode(&plain, LIMITS).unwrap();
        for (orientation, big_endian) in [(6, true), (3, false), (8, false)] {
            let image = decode(
                &with_exif(&plain, &exif_block(orientation, big_endian)),
                LIMITS,
            )
            .unwrap();
            assert_eq!(
                image,
                crate::decode::tests::turned(&stored, orientation),
                "orientation {orientation}"
            );
        }
        // Upright already, or EXIF that is not a TIFF block: the pixels as stored.
        for tiff in [exif_block(1, true), b"not a TIFF block at all".to_vec()] {
            assert_eq!(decode(&with_exif(&plain, &tiff), LIMITS).unwrap(), stored);
        }
        // A segment length running past the end of the file is no orientation, not a panic.
        let cut = with_exif(&plain, &exif_block(6, true));
        assert_eq!(exif_orientation(&cut[..30]), None);
    }

    #[test]
    fn a_reduced_decode_divides_by_the_most_that_keeps_the_size_asked_for() {
        // 64 wide, 48 high.
        let pixels: Vec<u8> = (0..48 * 64)
            .flat_map(|i| {
                let (y, x) = (i / 64, i % 64);
                [x * 4, y * 5, 128].map(|v| v as u8)
            })
            .collect();
        let jpeg = encode(64, 48, 3, &pixels);
        let size = |at_least: (usize, usize)| {
            let image = decode(&jpeg, LIMITS, Some(&move |_| at_least), None)
                .unwrap()
                .0;
            (image.height, image.width)
        };
        assert_eq!(size((6, 8)), (6, 8), "1/8");
        assert_eq!(size((7, 8)), (12, 16), "1/4: 1/8 leaves 6 rows");
        assert_eq!(size((13, 10)), (24, 32), "1/2");
        assert_eq!(size((25, 10)), (48, 64), "whole");
        // The reduced image is the whole one, smaller: close to its 2x2 means.
        let whole = decode(&jpeg, LIMITS, None, None).unwrap().0;
        let half = decode(&jpeg, LIMITS, Some(&|_| (24, 32)), None).unwrap().0;
        let mean = |y: usize, x: usize, c: usize| {
            let at = |yy: usize, xx: usize| u32::from(whole.data[(yy * 64 + xx) * 3 + c]);
            (at(2 * y, 2 * x)
                + at(2 * y + 1, 2 * x)
                + at(2 * y, 2 * x + 1)
                + at(2 * y + 1, 2 * x + 1))
                / 4
        };
        for y in 1..23 {
            for x in 1..31 {
                for c in 0..3 {
                    let got = u32::from(half.data[(y * 32 + x) * 3 + c]);
                    assert!(got.abs_diff(mean(y, x, c)) <= 8, "({y}, {x}, {c})");
                }
            }
        }
        // The size asked for is of the upright image: a file stored turned asks swapped.
        let upright = |(h, w): (usize, usize)| {
            assert_eq!((h, w), (64, 48), "asked with the upright size");
            (20, 7)
        };
        assert_eq!(reduction((48, 64), &upright, true), 2);
        assert_eq!(reduction((48, 64), &|_| (20, 7), false), 2);
        assert_eq!(reduction((48, 64), &|_| (7, 20), false), 2);
        assert_eq!(reduction((48, 64), &|_| (6, 7), false), 8);
    }

    #[test]
    fn a_progressive_file_past_the_scan_limit_is_refused() {
        let progressive = encode_with(24, 16, 3, &gradient(3), true);
        // Each scan begins with an SOS marker (FF DA), which entropy-coded data never holds.
        let scans = progressive
            .windows(2)
            .filter(|w| w == &[0xFF, 0xDA])
            .count() as u32;
        assert!(scans > 2, "{scans} scans");
        let limit = |max_scans| DecodeLimits {
            max_scans,
            ..LIMITS
        };
        assert!(decode(&progressive, limit(scans), None, None).is_ok());
        let e = decode(&progressive, limit(scans - 1), None, None).unwrap_err();
        assert!(
            matches!(e, DecodeError::TooManyScans { max } if max == scans - 1),
            "{e}"
        );
        assert!(!past_scan_limit(3, 3) && past_scan_limit(4, 3) && !past_scan_limit(-1, 3));
    }

    #[test]
    fn huge_claims_are_refused_from_the_header() {
        let mut bytes = encode(24, 16, 3, &gradient(3));
        // The frame header (SOFn: FF C0..C2) holds height then width after its length and
        // precision bytes.
        let sof = bytes
            .windows(2)
            .position(|m| m[0] == 0xFF && (0xC0..=0xC2).contains(&m[1]))
            .unwrap();
        bytes[sof + 5..sof + 7].copy_from_slice(&60_000u16.to_be_bytes());
        bytes[sof + 7..sof + 9].copy_from_slice(&60_000u16.to_be_bytes());
        let e = decode(&bytes, LIMITS, None, None).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::TooLarge {
                    width: 60_000,
                    height: 60_000,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn adobe_cmyk_is_inverted_before_mixing() {
        let app14 = [&[0xFF, 0xD8, 0xFF, 0xEE, 0, 14][..], b"Adobe", &[0; 7]].concat();
        assert!(has_adobe_segment(&app14));
        assert!(!has_adobe_segment(&encode(24, 16, 3, &gradient(3))));
        // Stored (inverted) C=255, M=0, Y=255, K=255: no cyan or yellow ink, full magenta.
        assert_eq!(cmyk_to_rgb(&[255, 0, 255, 255], true), vec![255, 0, 255]);
        assert_eq!(cmyk_to_rgb(&[0, 255, 0, 0], false), vec![255, 0, 255]);
    }
}
