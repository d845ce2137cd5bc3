//! Minimal NumPy `.npy` reading and writing (format versions 1–3, C or Fortran order).
//!
//! Embeddings are read as `f32` (float64 files are converted), labels as `i64` from any
//! signed integer type up to 64 bits or unsigned up to 32 bits. Anything else is an
//! [`Error::Input`] that names the file and what was found.
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

/// A parsed `.npy` header and the offset of its data.
#[derive(Debug, Clone, PartialEq)]
struct Header {
    /// Type character and size: ('f', 4), ('i', 8), ('u', 1) …
    kind: char,
    size: usize,
    big_endian: bool,
    fortran: bool,
    shape: Vec<usize>,
    data_offset: usize,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Input(format!("{}: {msg}", path.display()))
}

/// Finds the value that follows `'key':` in the header dictionary.
fn dict_value<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let k1 = format!("'{key}'");
    let k2 = format!("\"{key}\"");
    let start = dict
        .find(&k1)
        .map(|i| i + k1.len())
        .or_else(|| dict.find(&k2).map(|i| i + k2.len()))?;
    let rest = dict[start..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    Some(rest)
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<Header> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad(path, "not a .npy file (bad magic)"));
    }
    let major = bytes[6];
    let (len, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad(path, "truncated .npy header"));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => return Err(bad(path, format!("unsupported .npy format version {v}"))),
    };
    let end = start + len;
    if bytes.len() < end {
        return Err(bad(path, "truncated .npy header"));
    }
    let dict =
        std::str::from_utf8(&bytes[start..end]).map_err(|_| bad(path, "header is not text"))?;

    let descr = dict_value(dict, "descr").ok_or_else(|| bad(path, "header has no 'descr'"))?;
    let quote = descr.chars().next().unwrap_or(' ');
    if quote != '\'' && quote != '"' {
        return Err(bad(
            path,
            format!("unsupported dtype {descr:.20} (structured arrays are not supported)"),
        ));
    }
    let descr = &descr[1..];
    let descr = &descr[..descr
        .find(quote)
        .ok_or_else(|| bad(path, "unterminated descr"))?];
    let mut chars = descr.chars();
    let order = chars.next().unwrap_or('?');
    let kind = chars.next().unwrap_or('?');
    let size: usize = chars
        .as_str()
        .parse()
        .map_err(|_| bad(path, format!("unsupported dtype '{descr}'")))?;
    let big_endian = match order {
        '>' => true,
        '=' => cfg!(target_endian = "big"),
        '<' | '|' => false,
        _ => return Err(bad(path, format!("unsupported dtype '{descr}'"))),
    };

    let fortran = dict_value(dict, "fortran_order")
        .ok_or_else(|| bad(path, "header has no 'fortran_order'"))?
        .starts_with("True");

    let shape = dict_value(dict, "shape").ok_or_else(|| bad(path, "header has no 'shape'"))?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.find(')').map(|e| &s[..e]))
        .ok_or_else(|| bad(path, "malformed 'shape'"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(path, format!("malformed shape ({inner})")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Header {
        kind,
        size,
        big_endian,
        fortran,
        shape,
        data_offset: end,
    })
}

fn read_file(path: &Path) -> Result<(Header, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let h = parse_header(path, &bytes)?;
    let count: usize = h.shape.iter().product();
    let need = count
        .checked_mul(h.size)
        .and_then(|n| n.checked_add(h.data_offset))
        .ok_or_else(|| bad(path, "shape too large"))?;
    if bytes.len() < need {
        return Err(bad(
            path,
            format!(
                "truncated: shape {:?} needs {need} bytes, the file has {}",
                h.shape,
                bytes.len()
            ),
        ));
    }
    Ok((h, bytes))
}

fn chunk<const N: usize>(b: &[u8], big: bool) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(b);
    if big {
        a.reverse();
    }
    a
}

fn dtype_name(h: &Header) -> String {
    format!(
        "{}{}{}",
        if h.big_endian { '>' } else { '<' },
        h.kind,
        h.size
    )
}

/// Reads a 2-d float32 (or float64, converted) array in row-major order.
///
/// Errors name the file and the dtype or shape that was found.
///
/// ```no_run
/// let (data, [n, d]) = dml::eval::npy::read_f32_2d(std::path::Path::new("emb.npy"))?;
/// assert_eq!(data.len(), n * d);
/// # Ok::<(), dml::Error>(())
/// ```
pub fn read_f32_2d(path: &Path) -> Result<(Vec<f32>, [usize; 2])> {
    let (h, bytes) = read_file(path)?;
    if h.shape.len() != 2 {
        return Err(bad(
            path,
            format!(
                "expected a 2-d array (N, D) of embeddings, found shape {:?}",
                h.shape
            ),
        ));
    }
    let (n, d) = (h.shape[0], h.shape[1]);
    let raw = &bytes[h.data_offset..h.data_offset + n * d * h.size];
    let big = h.big_endian;
    let flat: Vec<f32> = match (h.kind, h.size) {
        ('f', 4) => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(chunk::<4>(c, big)))
            .collect(),
        ('f', 8) => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(chunk::<8>(c, big)) as f32)
            .collect(),
        _ => {
            return Err(bad(
                path,
                format!(
                    "embeddings must be float32 or float64, found dtype {}",
                    dtype_name(&h)
                ),
            ))
        }
    };
    let flat = if h.fortran && n > 1 && d > 1 {
        let mut out = vec![0f32; n * d];
        for j in 0..d {
            for i in 0..n {
                out[i * d + j] = flat[j * n + i];
            }
        }
        out
    } else {
        flat
    };
    Ok((flat, [n, d]))
}

/// Reads a 1-d integer array (int8…int64, uint8…uint32) as `i64` labels.
///
/// ```no_run
/// let labels = dml::eval::npy::read_labels(std::path::Path::new("labels.npy"))?;
/// # Ok::<(), dml::Error>(())
/// ```
pub fn read_labels(path: &Path) -> Result<Vec<i64>> {
    let (h, bytes) = read_file(path)?;
    if h.shape.len() != 1 {
        return Err(bad(
            path,
            format!("expected a 1-d array of labels, found shape {:?}", h.shape),
        ));
    }
    let n = h.shape[0];
    let raw = &bytes[h.data_offset..h.data_offset + n * h.size];
    let big = h.big_endian;
    let out = match (h.kind, h.size) {
        ('i', 1) => raw.iter().map(|&b| b as i8 as i64).collect(),
        ('u', 1) => raw.iter().map(|&b| b as i64).collect(),
        ('i', 2) => raw
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes(chunk::<2>(c, big)) as i64)
            .collect(),
        ('u', 2) => raw
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes(chunk::<2>(c, big)) as i64)
            .collect(),
        ('i', 4) => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(chunk::<4>(c, big)) as i64)
            .collect(),
        ('u', 4) => raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(chunk::<4>(c, big)) as i64)
            .collect(),
        ('i', 8) => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(chunk::<8>(c, big)))
            .collect(),
        _ => {
            return Err(bad(
                path,
                format!(
                    "labels must be integers (int8..int64 or uint8..uint32), found dtype {}",
                    dtype_name(&h)
                ),
            ))
        }
    };
    Ok(out)
}

fn write_npy(path: &Path, descr: &str, shape: &str, data: &[u8]) -> Result<()> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that magic + version + length + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let len = u16::try_from(header.len()).map_err(|_| bad(path, "header too long"))?;
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&out).map_err(|e| Error::io(path, e))
}

/// Writes a row-major `shape[0] × shape[1]` float32 array (`<f4`, format 1.0).
///
/// ```no_run
/// dml::eval::npy::write_f32(std::path::Path::new("e.npy"), &[1.0, 2.0], [1, 2])?;
/// # Ok::<(), dml::Error>(())
/// ```
pub fn write_f32(path: &Path, data: &[f32], shape: [usize; 2]) -> Result<()> {
    if data.len() != shape[0] * shape[1] {
        return Err(bad(
            path,
            format!("{} values do not fill shape {:?}", data.len(), shape),
        ));
    }
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(
        path,
        "<f4",
        &format!("({}, {})", shape[0], shape[1]),
        &bytes,
    )
}

/// Writes a 1-d int64 array (`<i8`, format 1.0).
///
/// ```no_run
/// dml::eval::npy::write_i64(std::path::Path::new("l.npy"), &[0, 1, 1])?;
/// # Ok::<(), dml::Error>(())
/// ```
pub fn write_i64(path: &Path, data: &[i64]) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<i8", &format!("({},)", data.len()), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parses_versions_and_orders() {
        let dict = "{'descr': '>f8', 'fortran_order': True, 'shape': (3, 2), }\n";
        let mut h = b"\x93NUMPY\x01\x00".to_vec();
        h.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        h.extend_from_slice(dict.as_bytes());
        let h = h.as_slice();
        let p = Path::new("x.npy");
        let hd = parse_header(p, h).unwrap();
        assert_eq!(
            (hd.kind, hd.size, hd.big_endian, hd.fortran),
            ('f', 8, true, true)
        );
        assert_eq!(hd.shape, vec![3, 2]);
        assert_eq!(hd.data_offset, 10 + dict.len());
    }
}
