//! Safetensors files (weights, optimiser state, SWA averages): written from CPU copies,
//! read back, every failure an error that names the file in words (the safetensors
//! crate's own messages are its Debug names, e.g. `HeaderTooLarge`).
use std::path::Path;

use tch::{Device, Tensor};

use crate::error::{Error, Result};

/// Writes `tensors` (on any device; copied to the CPU) to `path`.
///
/// ```no_run
/// let t = tch::Tensor::from_slice(&[1f32, 2.0]);
/// dml::model::tensor_file::write(std::path::Path::new("w.safetensors"), &[("w".into(), t)])?;
/// # Ok::<(), dml::Error>(())
/// ```
pub fn write(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let cpu: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.to_device(Device::Cpu)))
        .collect();
    Tensor::write_safetensors(&cpu, path).map_err(|e| described(path, e))
}

/// Every tensor of the safetensors file `path`, by name, on the CPU.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Tensor::read_safetensors(path).map_err(|e| described(path, e))
}

/// A libtorch/safetensors error on `path` in words.
fn described(path: &Path, e: tch::TchError) -> Error {
    use safetensors::SafeTensorError as S;
    let why = match e {
        tch::TchError::Io(io) => return Error::io(path, io),
        tch::TchError::SafeTensorError { err, .. } => match err {
            S::IoError(io) => return Error::io(path, io),
            S::HeaderTooLarge | S::HeaderTooSmall | S::InvalidHeaderLength => {
                "its header length is impossible (truncated, or not a safetensors file)".into()
            }
            S::InvalidHeader | S::InvalidHeaderStart | S::InvalidHeaderDeserialization => {
                "its header is not safetensors JSON (not a safetensors file?)".into()
            }
            S::JsonError(j) => format!("its header is not valid JSON: {j}"),
            S::TensorNotFound(name) => format!("it has no tensor `{name}`"),
            S::InvalidOffset(name) => {
                format!("tensor `{name}` lies outside the file (truncated?)")
            }
            S::TensorInvalidInfo | S::InvalidTensorView(..) | S::ValidationOverflow => {
                "a tensor's shape, type and byte range disagree (the file is corrupt)".into()
            }
            S::MetadataIncompleteBuffer => {
                "its tensors do not cover the file's data (truncated or corrupt)".into()
            }
        },
        other => other.to_string(),
    };
    Error::Input(format!("{}: {why}; re-create the file", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named_in_words_and_good_ones_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let t = Tensor::from_slice(&[1.5f32, -2.0, 3.25]);
        write(&path, &[("w".into(), t.shallow_clone())]).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 1);
        assert!(back[0].1.equal(&t));

        std::fs::write(&path, b"garbage that is no safetensors file").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("header length is impossible"), "{err}");
        assert!(!err.contains("HeaderTooLarge"), "{err}");

        let missing = dir.path().join("no/such/dir/w.safetensors");
        let err = write(&missing, &[("w".into(), t)]).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
}
