//! The one error type of the `dml` library.
use std::path::PathBuf;

/// Everything that can go wrong in dml, each variant naming the thing at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying error (part of the message, not a separate cause, so that an
        /// error chain prints it once).
        error: std::io::Error,
    },
    /// A dataset file that is missing, truncated, foreign or inconsistent.
    #[error("dataset {path}: {msg}")]
    Dataset {
        /// The dataset file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        msg: String,
    },
    /// An invalid or inconsistent configuration; the message names the key.
    #[error("config: {0}")]
    Config(String),
    /// Bad user input other than config or dataset (a .npy file, a CLI argument).
    #[error("{0}")]
    Input(String),
    /// A failure between ranks (a dead peer, a mismatch, a collective that failed).
    #[error("distributed: {0}")]
    Dist(String),
    /// A training failure (NaN loss, a checkpoint that cannot be read).
    #[error("training: {0}")]
    Train(String),
    /// An error raised by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    /// A dataset error for `path`.
    pub fn dataset(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Dataset {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// `Result` with dml's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_is_printed_once_with_its_path() {
        let e = Error::io(
            "/no/such/file.toml",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(e.to_string(), "/no/such/file.toml: entity not found");
        // No separate cause: anyhow's `{:#}` does not print the OS error a second time.
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "/no/such/file.toml: entity not found"
        );
    }
}
