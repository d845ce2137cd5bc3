//! The `.dmlds` dataset file: one file per split, memory-mapped and shared by every
//! rank on a node through the page cache.
//!
//! Layout of version 2 (all integers little-endian; `docs/dmlds.md` byte by byte):
//!
//! ```text
//! 0      preamble (80 bytes): magic "DMLDS\0\r\n", version u32, meta_crc u32
//!        (CRC-32 of the JSON metadata), count u64, index_offset u64,
//!        labels_offset u64, meta_offset u64, meta_len u64, total_size u64,
//!        crcs_offset u64, tables_crc u32 (CRC-32 of preamble bytes 0..72 followed by
//!        the index, labels and record CRCs), 4 zero bytes
//! 4096   pixel records, raw u8 HWC RGB, each starting on a 4096-byte page
//! index  count × (offset u64, height u32, width u32)
//! labels count × u32 (index into the metadata's class names)
//! crcs   count × u32: CRC-32 of each record's pixel bytes
//! meta   JSON metadata: class names, sources, preprocessing, CRC-32 of the records,
//!        index, labels and record CRCs
//! ```
//!
//! Version 1 (still read) has a 64-byte preamble and no `crcs` section.
//!
//! Opening refuses anything but a regular file, checks the magic, the version and every
//! offset and length against the file size with checked arithmetic, the header, index
//! and metadata CRC-32s, and every index entry (within the pixel section, sides at most
//! [`MAX_SIDE`]); a defect is an [`Error::Dataset`] that names the file and the expected
//! and actual sizes. [`Dataset::checked_image`] checks a record's CRC-32 each time it is
//! read (the loaders use it); [`Dataset::verify`] recomputes every checksum.
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file's first eight bytes.
pub const MAGIC: &[u8; 8] = b"DMLDS\0\r\n";
/// The format version this build writes (it also reads version 1).
pub const VERSION: u32 = 2;
/// The longest side a record may have (a sanity limit: `dml prepare` stores the shorter
/// side at `--size`).
pub const MAX_SIDE: u32 = 1 << 15;
/// Records start on multiples of this many bytes.
pub const PAGE: u64 = 4096;
const PREAMBLE_LEN: usize = 64;
const PREAMBLE_V2_LEN: usize = 80;
/// Bytes of the version 2 preamble that `tables_crc` covers (all before it).
const TABLES_CRC_AT: usize = 72;
const INDEX_ENTRY_LEN: u64 = 16;

/// The JSON metadata stored in every dataset file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// Class names; a record's label indexes this list.
    pub class_names: Vec<String>,
    /// Source path (or generator description) of each record, in record order.
    #[serde(default)]
    pub sources: Vec<String>,
    /// How the pixels were produced, e.g. `"shorter side 256, RGB"`.
    #[serde(default)]
    pub preprocessing: String,
    /// CRC-32 of the records, index and labels; filled in by the writer.
    #[serde(default)]
    pub checksum: u32,
}

/// One image as stored: `height × width × 3` RGB bytes.
#[derive(Debug, Clone, Copy)]
pub struct ImageRef<'a> {
    /// HWC pixels.
    pub pixels: &'a [u8],
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    offset: u64,
    height: u32,
    width: u32,
}

impl IndexEntry {
    /// `height × width × 3`, or `None` where that overflows.
    fn len(&self) -> Option<u64> {
        (self.height as u64)
            .checked_mul(self.width as u64)
            .and_then(|hw| hw.checked_mul(3))
    }
}

/// Writes a dataset file: records are streamed to `PATH.tmp`, which is renamed to
/// `PATH` by [`DatasetWriter::finish`], so no reader ever sees a half-written file.
///
/// ```no_run
/// use dml::data::format::{DatasetWriter, Metadata};
/// let mut w = DatasetWriter::create("train.dmlds".as_ref())?;
/// w.push(&[0u8; 2 * 2 * 3], 2, 2, 0)?;
/// w.finish(Metadata { class_names: vec!["a".into()], ..Default::default() })?;
/// # Ok::<(), dml::Error>(())
/// ```
pub struct DatasetWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    pos: u64,
    index: Vec<IndexEntry>,
    labels: Vec<u32>,
    record_crcs: Vec<u32>,
    crc: crc32fast::Hasher,
    /// Set once `PATH.tmp` is renamed into place; until then dropping removes it.
    finished: bool,
}

impl Drop for DatasetWriter {
    /// A writer dropped before [`DatasetWriter::finish`] succeeded (an error while
    /// preparing) leaves no `PATH.tmp` behind.
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl DatasetWriter {
    /// Starts a new dataset file at `path` (written to `path.tmp` until finished).
    pub fn create(path: &Path) -> Result<Self> {
        let tmp = path.with_extension("dmlds.tmp");
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&vec![0u8; PAGE as usize])
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(DatasetWriter {
            path: path.to_path_buf(),
            tmp,
            out,
            pos: PAGE,
            index: Vec::new(),
            labels: Vec::new(),
            record_crcs: Vec::new(),
            crc: crc32fast::Hasher::new(),
            finished: false,
        })
    }

    /// Number of records pushed so far.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True before the first push.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Appends one RGB image (`height × width × 3` bytes, HWC) with its label.
    pub fn push(&mut self, pixels: &[u8], height: u32, width: u32, label: u32) -> Result<()> {
        let entry = IndexEntry {
            offset: self.pos,
            height,
            width,
        };
        if height > MAX_SIDE || width > MAX_SIDE {
            return Err(Error::dataset(
                &self.path,
                format!(
                    "record {} is {height}×{width}; a side may be at most {MAX_SIDE} pixels",
                    self.index.len()
                ),
            ));
        }
        let len = entry.len().unwrap_or(u64::MAX);
        if height == 0 || width == 0 || pixels.len() as u64 != len {
            return Err(Error::dataset(
                &self.path,
                format!(
                    "record {} has {} bytes, expected {height}×{width}×3 = {len}",
                    self.index.len(),
                    pixels.len(),
                ),
            ));
        }
        self.record_crcs.push(crc32fast::hash(pixels));
        self.write(pixels)?;
        let pad = (PAGE - self.pos % PAGE) % PAGE;
        self.write(&vec![0u8; pad as usize])?;
        self.index.push(entry);
        self.labels.push(label);
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.pos += bytes.len() as u64;
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(&self.tmp, e))
    }

    /// Writes the index, labels, metadata and preamble, syncs, and renames the file
    /// into place. Labels must index `meta.class_names`.
    pub fn finish(mut self, mut meta: Metadata) -> Result<()> {
        if self.index.is_empty() {
            return Err(Error::dataset(
                &self.path,
                "no image was added: a dataset file must hold at least one image",
            ));
        }
        if !meta.sources.is_empty() && meta.sources.len() != self.index.len() {
            return Err(Error::dataset(
                &self.path,
                format!(
                    "{} source paths given for {} images",
                    meta.sources.len(),
                    self.index.len()
                ),
            ));
        }
        if let Some(&bad) = self
            .labels
            .iter()
            .find(|&&l| l as usize >= meta.class_names.len())
        {
            return Err(Error::dataset(
                &self.path,
                format!(
                    "label {bad} has no class name ({} names given)",
                    meta.class_names.len()
                ),
            ));
        }
        let index_offset = self.pos;
        let mut index_bytes = Vec::with_capacity(self.index.len() * INDEX_ENTRY_LEN as usize);
        for e in &self.index {
            index_bytes.extend_from_slice(&e.offset.to_le_bytes());
            index_bytes.extend_from_slice(&e.height.to_le_bytes());
            index_bytes.extend_from_slice(&e.width.to_le_bytes());
        }
        self.write(&index_bytes)?;
        let labels_offset = self.pos;
        let label_bytes: Vec<u8> = self.labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        self.write(&label_bytes)?;
        let crcs_offset = self.pos;
        let crc_bytes: Vec<u8> = self
            .record_crcs
            .iter()
            .flat_map(|c| c.to_le_bytes())
            .collect();
        self.write(&crc_bytes)?;
        meta.checksum = self.crc.clone().finalize();
        let meta_offset = self.pos;
        let json = serde_json::to_vec(&meta)
            .map_err(|e| Error::dataset(&self.path, format!("metadata: {e}")))?;
        self.out
            .write_all(&json)
            .map_err(|e| Error::io(&self.tmp, e))?;
        let total = meta_offset + json.len() as u64;
        let mut pre = Vec::with_capacity(PREAMBLE_V2_LEN);
        pre.extend_from_slice(MAGIC);
        pre.extend_from_slice(&VERSION.to_le_bytes());
        pre.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
        for v in [
            self.index.len() as u64,
            index_offset,
            labels_offset,
            meta_offset,
            json.len() as u64,
            total,
            crcs_offset,
        ] {
            pre.extend_from_slice(&v.to_le_bytes());
        }
        let mut tables = crc32fast::Hasher::new();
        tables.update(&pre);
        for part in [&index_bytes, &label_bytes, &crc_bytes] {
            tables.update(part);
        }
        pre.extend_from_slice(&tables.finalize().to_le_bytes());
        pre.extend_from_slice(&[0u8; 4]);
        self.out.flush().map_err(|e| Error::io(&self.tmp, e))?;
        let file = self.out.get_mut();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&pre))
            .and_then(|_| file.sync_all())
            .map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.finished = true;
        Ok(())
    }
}

/// A read-only, memory-mapped dataset file.
///
/// ```no_run
/// let ds = dml::data::format::Dataset::open("train.dmlds".as_ref())?;
/// let img = ds.image(0);
/// println!("{} images, first is {}×{}, class {}", ds.len(), img.height, img.width, ds.label(0));
/// # Ok::<(), dml::Error>(())
/// ```
pub struct Dataset {
    path: PathBuf,
    map: memmap2::Mmap,
    index: Vec<IndexEntry>,
    labels: Vec<u32>,
    /// CRC-32 of each record's pixels (empty for version 1 files).
    record_crcs: Vec<u32>,
    meta: Metadata,
    version: u32,
    body_end: u64,
    meta_crc: u32,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("path", &self.path)
            .field("len", &self.index.len())
            .field("classes", &self.meta.class_names.len())
            .finish()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

impl Dataset {
    /// Opens and validates `path`. The magic, the version and every offset and length
    /// are checked against the file size; pixel bytes are not read until used (see
    /// [`Dataset::verify`]). Any defect is an [`Error::Dataset`] naming the file and,
    /// where sizes are involved, the expected and the actual size.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::dataset(path, msg);
        // Before opening: opening a FIFO would block until a writer appears.
        let kind = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if kind.is_dir() {
            return Err(bad(
                "is a directory, not a dataset file; give the .dmlds file in it (e.g. DIR/train.dmlds)"
                    .into(),
            ));
        }
        if !kind.is_file() {
            return Err(bad(
                "is not a regular file (a FIFO, socket or device); dml maps dataset files into memory: give the .dmlds file itself"
                    .into(),
            ));
        }
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if size == 0 {
            return Err(bad(format!(
                "the file is empty (0 bytes; expected at least the {PREAMBLE_LEN}-byte header); re-create it with `dml prepare` or `dml synth`"
            )));
        }
        if size < PREAMBLE_LEN as u64 {
            return Err(bad(format!(
                "the file is {size} bytes, shorter than the {PREAMBLE_LEN}-byte header (expected at least {PREAMBLE_LEN} bytes, found {size}): truncated or not a dml dataset; re-create it with `dml prepare` or `dml synth`"
            )));
        }
        let map = crate::sys::map_readonly(&file).map_err(|e| Error::io(path, e))?;
        let pre = &map[..PREAMBLE_LEN];
        if &pre[..8] != MAGIC {
            return Err(bad(format!(
                "not a dml dataset: the first bytes are {}, expected the magic {} ({size} bytes); create one with `dml prepare` or `dml synth`",
                hex(&pre[..8]),
                hex(MAGIC)
            )));
        }
        let version = le_u32(pre, 8);
        if version != 1 && version != VERSION {
            return Err(bad(format!(
                "format version {version}, this dml reads versions 1 and {VERSION}; re-create the file with this dml's `dml prepare`"
            )));
        }
        if version >= 2 && size < PREAMBLE_V2_LEN as u64 {
            return Err(bad(format!(
                "the file is {size} bytes, shorter than the {PREAMBLE_V2_LEN}-byte header of version {version}: truncated; re-create it"
            )));
        }
        let meta_crc = le_u32(pre, 12);
        let count = le_u64(pre, 16);
        let index_offset = le_u64(pre, 24);
        let labels_offset = le_u64(pre, 32);
        let meta_offset = le_u64(pre, 40);
        let meta_len = le_u64(pre, 48);
        let total = le_u64(pre, 56);
        if total != size {
            let section = if size < total {
                // Version 1 has no record CRCs: their section is empty.
                let crcs = match version {
                    1 => meta_offset,
                    _ => le_u64(&map, 64),
                };
                let at = [
                    (PAGE, "header page"),
                    (index_offset, "pixel records"),
                    (labels_offset, "index"),
                    (crcs, "labels"),
                    (meta_offset, "record CRCs"),
                    (total, "metadata"),
                ]
                .iter()
                .find(|(end, _)| size < *end)
                .map_or("file", |(_, name)| *name);
                format!(
                    "truncated: it ends inside the {at}, {} bytes short",
                    total - size
                )
            } else {
                format!("{} unexpected trailing bytes", size - total)
            };
            return Err(bad(format!(
                "expected {total} bytes (from its header), found {size}: {section}; re-create it"
            )));
        }
        // Version 1 has no record CRCs: its (empty) section ends where the labels do.
        let crcs_offset = match version {
            1 => count
                .checked_mul(4)
                .and_then(|n| labels_offset.checked_add(n)),
            _ => Some(le_u64(&map, 64)),
        };
        let crcs_len = if version == 1 { 0 } else { 4 };
        let ends = |start: Option<u64>, per: u64| {
            count
                .checked_mul(per)
                .and_then(|n| start.and_then(|s| s.checked_add(n)))
        };
        let consistent = index_offset >= PAGE
            && ends(Some(index_offset), INDEX_ENTRY_LEN) == Some(labels_offset)
            && ends(Some(labels_offset), 4) == crcs_offset
            && ends(crcs_offset, crcs_len) == Some(meta_offset)
            && meta_offset.checked_add(meta_len) == Some(total);
        if !consistent {
            return Err(bad(format!(
                "header sections are inconsistent: {count} records need an index of {} bytes and labels of {} bytes, but the header puts the index at {index_offset}, labels at {labels_offset}, metadata at {meta_offset} ({meta_len} bytes) in a file of {size} bytes; the file is corrupt",
                count.saturating_mul(INDEX_ENTRY_LEN),
                count.saturating_mul(4)
            )));
        }
        if count == 0 {
            return Err(bad(format!(
                "the file holds no images ({size} bytes); re-create it from a non-empty source"
            )));
        }
        // Every offset now lies within the file.
        let (index_at, labels_at, meta_at) = (
            index_offset as usize,
            labels_offset as usize,
            meta_offset as usize,
        );
        let crcs_at = crcs_offset.unwrap_or(meta_offset) as usize;
        if version >= 2 {
            let stored = le_u32(&map, TABLES_CRC_AT);
            let mut crc = crc32fast::Hasher::new();
            crc.update(&map[..TABLES_CRC_AT]);
            crc.update(&map[index_at..meta_at]);
            let got = crc.finalize();
            if got != stored {
                return Err(bad(format!(
                    "checksum mismatch in the header, index, labels or record CRCs: stored {stored:08x}, computed {got:08x}; the file is corrupt, re-create it"
                )));
            }
        }
        let got = crc32fast::hash(&map[meta_at..]);
        if got != meta_crc {
            return Err(bad(format!(
                "checksum mismatch in the metadata: stored {meta_crc:08x}, computed {got:08x}; the file is corrupt, re-create it"
            )));
        }
        let meta: Metadata = serde_json::from_slice(&map[meta_at..]).map_err(|e| {
            bad(format!(
                "metadata ({meta_len} bytes at {meta_offset}) is not valid JSON: {e}; the file is corrupt"
            ))
        })?;
        if !meta.sources.is_empty() && meta.sources.len() as u64 != count {
            return Err(bad(format!(
                "metadata lists {} source paths for {count} images; the file is corrupt",
                meta.sources.len()
            )));
        }
        let count = count as usize;
        let mut index = Vec::with_capacity(count);
        let mut labels = Vec::with_capacity(count);
        let mut prev_end = PAGE;
        for i in 0..count {
            let at = index_at + i * INDEX_ENTRY_LEN as usize;
            let e = IndexEntry {
                offset: le_u64(&map, at),
                height: le_u32(&map, at + 8),
                width: le_u32(&map, at + 12),
            };
            let end = e.len().and_then(|len| e.offset.checked_add(len));
            let fits = match end {
                Some(end) => {
                    e.offset >= prev_end
                        && e.offset % PAGE == 0
                        && e.height > 0
                        && e.width > 0
                        && e.height <= MAX_SIDE
                        && e.width <= MAX_SIDE
                        && end <= index_offset
                }
                None => false,
            };
            let Some(end) = end.filter(|_| fits) else {
                return Err(bad(format!(
                    "index entry {i} is inconsistent: a {}×{}×3 record ({}) at byte {} does not fit the pixel section [{prev_end}, {index_offset}) on a {PAGE}-byte page with sides of at most {MAX_SIDE}; the file is corrupt",
                    e.height,
                    e.width,
                    e.len().map_or("more than 2^64 bytes".into(), |n| format!("{n} bytes")),
                    e.offset
                )));
            };
            prev_end = end;
            index.push(e);
            let label = le_u32(&map, labels_at + i * 4);
            if label as usize >= meta.class_names.len() {
                return Err(bad(format!(
                    "record {i} has label {label} but the metadata names {} classes; the file is corrupt",
                    meta.class_names.len()
                )));
            }
            labels.push(label);
        }
        let record_crcs = match version {
            1 => Vec::new(),
            _ => (0..count).map(|i| le_u32(&map, crcs_at + 4 * i)).collect(),
        };
        Ok(Dataset {
            path: path.to_path_buf(),
            map,
            index,
            labels,
            record_crcs,
            meta,
            version,
            body_end: meta_offset,
            meta_crc,
        })
    }

    /// The file this dataset was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True if the file holds no image.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Label (class index) of every image.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Label of image `i`.
    pub fn label(&self, i: usize) -> u32 {
        self.labels[i]
    }

    /// Number of classes named in the metadata.
    pub fn num_classes(&self) -> usize {
        self.meta.class_names.len()
    }

    /// The metadata.
    pub fn meta(&self) -> &Metadata {
        &self.meta
    }

    /// Pixels of image `i` (panics if `i >= len()`), unchecked; see
    /// [`Dataset::checked_image`].
    pub fn image(&self, i: usize) -> ImageRef<'_> {
        let e = self.index[i];
        let (h, w) = (e.height as usize, e.width as usize);
        let start = e.offset as usize;
        ImageRef {
            // Bounded by `open`: the record lies within the pixel section.
            pixels: &self.map[start..start + h * w * 3],
            height: h,
            width: w,
        }
    }

    /// Pixels of image `i`, checked against the record's CRC-32 (version 2 files; a
    /// version 1 file has none to check). An index out of range or a damaged record is
    /// an error naming the file, the image and its source.
    ///
    /// ```no_run
    /// let ds = dml::data::format::Dataset::open("train.dmlds".as_ref())?;
    /// let img = ds.checked_image(0)?;
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn checked_image(&self, i: usize) -> Result<ImageRef<'_>> {
        if i >= self.len() {
            return Err(Error::Input(format!(
                "image index {i} is out of range for {}, which has {} images",
                self.path.display(),
                self.len()
            )));
        }
        let img = self.image(i);
        if let Some(&stored) = self.record_crcs.get(i) {
            let got = crc32fast::hash(img.pixels);
            if got != stored {
                return Err(Error::dataset(&self.path, self.damaged(i, stored, got)));
            }
        }
        Ok(img)
    }

    /// The message for a record whose pixels do not match their CRC-32.
    fn damaged(&self, i: usize, stored: u32, got: u32) -> String {
        let source = match self.meta.sources.get(i) {
            Some(s) => format!(" ({s})"),
            None => String::new(),
        };
        format!(
            "image {i}{source} is damaged: its pixels have CRC-32 {got:08x}, the file recorded {stored:08x}; re-create the file (dml prepare)"
        )
    }

    /// The format version of the file (1 or 2).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Total bytes on disk.
    pub fn size_bytes(&self) -> u64 {
        self.map.len() as u64
    }

    /// Height and width of image `i` without touching its pixels (panics if
    /// `i >= len()`).
    pub fn dims(&self, i: usize) -> (usize, usize) {
        let e = self.index[i];
        (e.height as usize, e.width as usize)
    }

    /// Name of class `label`, or `None` if the label is out of range.
    pub fn class_name(&self, label: u32) -> Option<&str> {
        self.meta
            .class_names
            .get(label as usize)
            .map(String::as_str)
    }

    /// Recomputes the CRC-32 of the JSON metadata, of every record (version 2), and of
    /// the whole body (records with their padding, index, labels and record CRCs), and
    /// compares them with the stored ones; a mismatch is an [`Error::Dataset`] that names
    /// the file and the part (or the image) that differs.
    ///
    /// ```no_run
    /// let ds = dml::data::format::Dataset::open("train.dmlds".as_ref())?;
    /// ds.verify()?;
    /// # Ok::<(), dml::Error>(())
    /// ```
    pub fn verify(&self) -> Result<()> {
        let got = crc32fast::hash(&self.map[self.body_end as usize..]);
        if got != self.meta_crc {
            return Err(Error::dataset(
                &self.path,
                format!(
                    "checksum mismatch in the metadata: stored {:08x}, computed {got:08x}; the file is corrupt, re-create it",
                    self.meta_crc
                ),
            ));
        }
        for (i, &stored) in self.record_crcs.iter().enumerate() {
            let got = crc32fast::hash(self.image(i).pixels);
            if got != stored {
                return Err(Error::dataset(&self.path, self.damaged(i, stored, got)));
            }
        }
        let mut crc = crc32fast::Hasher::new();
        for chunk in self.map[PAGE as usize..self.body_end as usize].chunks(1 << 24) {
            crc.update(chunk);
        }
        let got = crc.finalize();
        if got != self.meta.checksum {
            return Err(Error::dataset(
                &self.path,
                format!(
                    "checksum mismatch in the pixel records, index or labels: stored {:08x}, computed {got:08x}; the file is corrupt, re-create it",
                    self.meta.checksum
                ),
            ));
        }
        Ok(())
    }
}

/// A human summary of a dataset file: path, format version, image and class counts,
/// image sizes, bytes on disk, images per class and the preprocessing recorded in it.
///
/// ```no_run
/// let ds = dml::data::format::Dataset::open("train.dmlds".as_ref())?;
/// println!("{}", dml::data::format::info_report(&ds));
/// # Ok::<(), dml::Error>(())
/// ```
pub fn info_report(ds: &Dataset) -> String {
    let (mut hmin, mut hmax, mut wmin, mut wmax) = (usize::MAX, 0, usize::MAX, 0);
    let mut pixels = 0u64;
    for i in 0..ds.len() {
        let (h, w) = ds.dims(i);
        hmin = hmin.min(h);
        hmax = hmax.max(h);
        wmin = wmin.min(w);
        wmax = wmax.max(w);
        pixels += (h * w) as u64;
    }
    let mut per_class = vec![0usize; ds.num_classes()];
    for &l in ds.labels() {
        per_class[l as usize] += 1;
    }
    let used = per_class.iter().filter(|&&c| c > 0).count();
    let cmin = per_class
        .iter()
        .copied()
        .filter(|&c| c > 0)
        .min()
        .unwrap_or(0);
    let cmax = per_class.iter().copied().max().unwrap_or(0);
    let names: Vec<&str> = ds
        .meta
        .class_names
        .iter()
        .take(3)
        .map(String::as_str)
        .collect();
    let more = if ds.num_classes() > 3 { ", …" } else { "" };
    let range = |lo: usize, hi: usize| {
        if lo == hi {
            format!("{lo}")
        } else {
            format!("{lo}–{hi}")
        }
    };
    let preprocessing = if ds.meta.preprocessing.is_empty() {
        "(not recorded)"
    } else {
        &ds.meta.preprocessing
    };
    format!(
        "file           {}\nformat         dmlds version {}{}\nimages         {}\nclasses        {} ({}{more}); {} with images, {} images per class\nimage size     height {} × width {} (RGB u8 HWC)\npixel bytes    {}\nfile bytes     {} ({:.1} MiB)\npreprocessing  {preprocessing}\nchecksum       {:08x}",
        ds.path.display(),
        ds.version,
        match ds.version {
            1 => " (no per-image checksums: re-create it with this dml to have damaged images detected while training)",
            _ => "",
        },
        ds.len(),
        ds.num_classes(),
        names.join(", "),
        used,
        range(cmin, cmax),
        range(hmin, hmax),
        range(wmin, wmax),
        pixels * 3,
        ds.size_bytes(),
        ds.size_bytes() as f64 / (1u64 << 20) as f64,
        ds.meta.checksum
    )
}
