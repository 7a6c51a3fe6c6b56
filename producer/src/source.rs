//! Where staged inputs come from: a local file or an http(s) URL.

use std::fmt;
use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;

use fleet_storage::printable;

/// A local path or a URL, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local file.
    File(PathBuf),
    /// An `http://` or `https://` URL.
    Url(String),
}

impl FromStr for Source {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s.starts_with("https://") || s.starts_with("http://") {
            Source::Url(s.into())
        } else {
            Source::File(s.into())
        })
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => f.write_str(&printable(p)),
            Source::Url(u) => f.write_str(u),
        }
    }
}

/// Why an input cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A local file cannot be read.
    #[error("cannot read {path}")]
    File {
        /// The file.
        path: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// A URL cannot be downloaded.
    #[error("cannot download {url}")]
    Download {
        /// The URL.
        url: String,
        /// What failed: the HTTP client's error, or the connection's while reading.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Source {
    /// The last path segment: the name the input is stored under by default.
    pub fn file_name(&self) -> String {
        let s = match self {
            Source::File(p) => p.to_string_lossy().into_owned(),
            Source::Url(u) => u.split(['?', '#']).next().unwrap_or(u).to_owned(),
        };
        s.rsplit('/').next().unwrap_or(&s).to_owned()
    }

    /// Opens the input for streaming, with its size when known.
    pub fn open(&self) -> Result<(Box<dyn Read + Send>, Option<u64>), SourceError> {
        match self {
            Source::File(path) => {
                let fail = |e: std::io::Error| SourceError::File {
                    path: printable(path),
                    source: e,
                };
                let file = std::fs::File::open(path).map_err(fail)?;
                let size = file.metadata().map_err(fail)?.len();
                Ok((Box::new(file), Some(size)))
            }
            Source::Url(url) => {
                let fail = |e: ureq::Error| SourceError::Download {
                    url: url.clone(),
                    source: e.into(),
                };
                let response = ureq::get(url).call().map_err(fail)?;
                let size = response
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                Ok((Box::new(response.into_body().into_reader()), size))
            }
        }
    }

    /// Reads the whole input (for small inputs: models, mean images).
    pub fn read_all(&self) -> Result<Vec<u8>, SourceError> {
        let (mut reader, size) = self.open()?;
        let mut bytes = Vec::with_capacity(size.unwrap_or(0) as usize);
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| self.failed_reading(e))?;
        Ok(bytes)
    }

    /// The error of reading this input failing with `e` once it was opened.
    pub fn failed_reading(&self, e: std::io::Error) -> SourceError {
        match self {
            Source::File(p) => SourceError::File {
                path: printable(p),
                source: e,
            },
            Source::Url(u) => SourceError::Download {
                url: u.clone(),
                source: e.into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_sources() {
        let url: Source = "https://host/path/CIFAR-10_mean.xml?raw=1".parse().unwrap();
        assert_eq!(url.file_name(), "CIFAR-10_mean.xml");
        let file: Source = "../fixtures/model.dnn".parse().unwrap();
        assert_eq!(file, Source::File("../fixtures/model.dnn".into()));
        assert_eq!(file.file_name(), "model.dnn");
        assert!(matches!(file.read_all(), Err(SourceError::File { .. })));
    }
}
