//! Errors as text, for the places where an error leaves the program as words rather than as a
//! value: a log line, a row's error cell, a dead-letter reason, a cancellation's reason.
//!
//! Library errors keep their causes as [`Error::source`]s and say only their own part in
//! their message; [`Chain`] writes the whole story once, outermost first: `reading
//! models/m.onnx failed: connection reset by peer`.

use std::error::Error;
use std::fmt;

/// An error and its causes as one line, each cause once, joined by `": "`.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written = self.0.to_string();
        f.write_str(&written)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let text = error.to_string();
            // A message that already ends with its cause's text (a wrapper that spells its
            // source out, or `#[error(transparent)]`) does not repeat it.
            if !text.is_empty() && !written.ends_with(&text) {
                write!(f, ": {text}")?;
                written = text;
            }
            cause = error.source();
        }
        Ok(())
    }
}

/// `error` and its causes as one line: [`Chain`] as a `String`.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    Chain(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading {key} failed")]
    struct Read {
        key: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("the model cannot be loaded")]
        Load(#[source] Read),
        #[error(transparent)]
        Through(Read),
    }

    #[test]
    fn each_cause_is_written_once_outermost_first() {
        let read = || Read {
            key: "models/m.onnx",
            source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        };
        assert_eq!(
            chain(&Outer::Load(read())),
            "the model cannot be loaded: reading models/m.onnx failed: connection reset"
        );
        // A transparent wrapper's message is its source's: said once.
        assert_eq!(
            chain(&Outer::Through(read())),
            "reading models/m.onnx failed: connection reset"
        );
    }
}
