//! Import of torchvision weights exported by `tools/torchvision_to_safetensors.py`.
use std::collections::HashMap;
use std::path::Path;

use tch::{nn, Tensor};

use crate::error::{Error, Result};

/// What [`load_pretrained`] did: counts and the names (without prefix) that did not fit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Tensors copied into the VarStore.
    pub loaded: usize,
    /// Model variables under the prefix that the file lacks.
    pub missing: Vec<String>,
    /// File tensors the model does not have.
    pub unexpected: Vec<String>,
    /// Names present in both with different shapes (`name: file [..] vs model [..]`).
    pub wrong_shape: Vec<String>,
}

impl LoadReport {
    /// True when every name matched.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.wrong_shape.is_empty()
    }
}

/// The SHA-256 of a file as lowercase hex (what `sha256sum` prints), read in 1 MiB
/// blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Checks `path` against the SHA-256 a run recorded (`model.pretrained_sha256`).
pub fn check_sha256(path: &Path, expected: &str) -> Result<()> {
    let got = sha256_file(path)?;
    if got != expected {
        return Err(Error::Config(format!(
            "model.pretrained {} has SHA-256 {got}, but the run recorded {expected} in \
             model.pretrained_sha256: the file changed since the run started; restore it, \
             or start a new run",
            path.display()
        )));
    }
    Ok(())
}

/// Copies a safetensors file with torchvision `state_dict` names (no prefix) into the
/// VarStore variables `prefix + name`, converting to each variable's kind and device.
/// `num_batches_tracked` entries are ignored. With `strict`, any missing, unexpected
/// or wrong-shape name is an [`Error::Config`] that lists them and nothing is copied;
/// otherwise the matching tensors are copied and the rest reported.
///
/// ```no_run
/// let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
/// let _t = dml::model::trunk::build(&(vs.root() / "trunk"), "resnet50", 2)?;
/// let r = dml::model::weights::load_pretrained(
///     &mut vs, std::path::Path::new("resnet50.safetensors"), "trunk.", true)?;
/// assert!(r.missing.is_empty());
/// # Ok::<(), dml::Error>(())
/// ```
pub fn load_pretrained(
    vs: &mut nn::VarStore,
    path: &Path,
    prefix: &str,
    strict: bool,
) -> Result<LoadReport> {
    if !path.exists() {
        return Err(Error::Config(format!(
            "model.pretrained: {} does not exist (make it with tools/torchvision_to_safetensors.py)",
            path.display()
        )));
    }
    let file = super::tensor_file::read(path)
        .map_err(|e| Error::Config(format!("model.pretrained: {e}")))?;
    let file: HashMap<String, Tensor> = file
        .into_iter()
        .filter(|(n, _)| !n.ends_with("num_batches_tracked"))
        .collect();
    let vars: HashMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .filter_map(|(n, t)| n.strip_prefix(prefix).map(|s| (s.to_string(), t)))
        .collect();
    let mut report = LoadReport::default();
    let mut pairs = Vec::new();
    for (name, var) in &vars {
        match file.get(name) {
            None => report.missing.push(name.clone()),
            Some(src) if src.size() != var.size() => report.wrong_shape.push(format!(
                "{name}: file {:?} vs model {:?}",
                src.size(),
                var.size()
            )),
            Some(src) => pairs.push((var, src)),
        }
    }
    report.unexpected = file
        .keys()
        .filter(|n| !vars.contains_key(*n))
        .cloned()
        .collect();
    report.missing.sort();
    report.unexpected.sort();
    report.wrong_shape.sort();
    if strict && !report.is_clean() {
        return Err(Error::Config(format!(
            "model.pretrained {} does not fit the trunk (strict): {}; {}; {} (was it converted \
             for another model.trunk? model.pretrained_strict = false loads what fits)",
            path.display(),
            first_few("missing", &report.missing),
            first_few("unexpected", &report.unexpected),
            first_few("wrong shape", &report.wrong_shape)
        )));
    }
    tch::no_grad(|| -> Result<()> {
        for (var, src) in &pairs {
            let mut v = var.shallow_clone();
            v.f_copy_(src)?;
        }
        Ok(())
    })?;
    report.loaded = pairs.len();
    Ok(report)
}

/// `what N [a, b, c, …]`: the count and the first five names.
fn first_few(what: &str, names: &[String]) -> String {
    const SHOWN: usize = 5;
    let more = if names.len() > SHOWN { ", …" } else { "" };
    let shown: Vec<&str> = names.iter().take(SHOWN).map(String::as_str).collect();
    format!("{what} {} [{}{more}]", names.len(), shown.join(", "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_of_a_file_is_the_standard_digest() {
        // FIPS 180-2, appendix B.1: SHA-256("abc").
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(super::sha256_file(&path).unwrap(), abc);
        assert!(super::check_sha256(&path, abc).is_ok());
        let err = super::check_sha256(&path, &abc.replace('b', "c")).unwrap_err();
        assert!(
            err.to_string().contains("changed since the run started"),
            "{err}"
        );
    }

    #[test]
    fn mismatches_show_counts_and_the_first_five_names() {
        let names: Vec<String> = (0..7).map(|i| format!("k{i}")).collect();
        assert_eq!(
            super::first_few("missing", &names),
            "missing 7 [k0, k1, k2, k3, k4, …]"
        );
        assert_eq!(
            super::first_few("unexpected", &names[..2]),
            "unexpected 2 [k0, k1]"
        );
        assert_eq!(super::first_few("wrong shape", &[]), "wrong shape 0 []");
    }
}
