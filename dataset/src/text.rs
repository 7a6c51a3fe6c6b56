//! Text files users give (class lists, label files, thresholds): UTF-8, as spreadsheets and
//! editors save it, a leading byte-order mark being no part of the first line.

/// The text of `bytes`, a file named `name`: UTF-8 without its byte-order mark, or an error
/// naming the first line that is not UTF-8 (a name read wrong would never match a label, and
/// lines made all U+FFFD would look alike).
pub fn utf8(bytes: &[u8], name: &str) -> Result<String, String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_owned()),
        Err(e) => {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            Err(format!(
                "{name}: line {line} is not UTF-8 text; save the file as UTF-8 (in a \
                 spreadsheet: CSV UTF-8)"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::utf8;

    #[test]
    fn a_byte_order_mark_is_dropped_and_other_encodings_are_named() {
        assert_eq!(
            utf8(b"\xEF\xBB\xBFairplane\ncar\n", "c.txt").unwrap(),
            "airplane\ncar\n"
        );
        assert_eq!(
            utf8("caf\u{e9}\n".as_bytes(), "c.txt").unwrap(),
            "caf\u{e9}\n"
        );
        // Latin-1 "café" on line 2.
        let error = utf8(b"tea\ncaf\xE9\n", "c.txt").unwrap_err();
        assert!(
            error.starts_with("c.txt: line 2 is not UTF-8 text"),
            "{error}"
        );
    }
}
