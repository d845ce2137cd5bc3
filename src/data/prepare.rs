//! `dml prepare`: decode an image dataset once into `.dmlds` files with its standard
//! DML splits.
//!
//! Accepted sources (`--src`), and the files written to `--out`:
//!
//! | format | source | splits |
//! |---|---|---|
//! | `imagefolder` | `SRC/<class>/**/<image>` | sorted classes: first half (rounded up) → `train.dmlds`, rest → `test.dmlds` |
//! | `csv` | the CSV file `SRC`: `path,label` rows, or `path,label,split` with split `train`, `test`, `query` or `gallery` (a header row naming `path`, `label` and `split` may put them in any order; paths relative to the CSV's folder) | without `split`: as `imagefolder`; with it: `train.dmlds`, and `test.dmlds` and/or `query.dmlds` + `gallery.dmlds` (sharing one class list) as listed |
//! | `cub200` | `CUB_200_2011/` with `images.txt` + `image_class_labels.txt` (+ `classes.txt`) and `images/`; or just the `images/NNN.name/` folders (`SRC/images/` or `SRC/` itself) | classes 1–100 → train, 101–200 → test |
//! | `cars196` | `SRC/cars_annos.csv` or `.txt` (rows `relative_im_path,class` or the seven `cars_annos.mat` columns `relative_im_path x1 y1 x2 y2 class test`, or a header naming `path`/`relative_im_path`, `class` and optionally `class_name`; `tools/cars_annos_to_csv.py` converts the `.mat`); or class folders `SRC/<class>/` or `SRC/train/<class>/` + `SRC/test/<class>/` (merged) | classes 1–98 → train, 99–196 → test (folders: the first 98 sorted names) |
//! | `sop` | `Stanford_Online_Products/` with `Ebay_train.txt`, `Ebay_test.txt` (`image_id class_id super_class_id path`) | `train.dmlds`, `test.dmlds` as listed |
//! | `inshop` | `list_eval_partition.txt` in `SRC/` or `SRC/Eval/` (a count line, a header, then `image_name item_id evaluation_status`); images under `SRC/` or `SRC/Img/` | `train.dmlds`, `query.dmlds`, `gallery.dmlds` (query and gallery share one class list) |
//!
//! Classes sort numerically when every name is an integer, otherwise by name. Images are
//! decoded in parallel, converted to RGB and resized (triangle filter, i.e. antialiased
//! bilinear) so that the shorter side is exactly `size` with the aspect ratio kept.
//! Images that cannot be read are skipped, listed in the [`PrepareReport`] and in
//! `OUT/unreadable.txt`; if every image of a split fails, `prepare` fails.
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::data::format::{DatasetWriter, Metadata};
use crate::error::{Error, Result};

/// Images decoded in parallel before being written, bounding memory.
const CHUNK: usize = 256;
/// File extensions taken as images in folder layouts (others are ignored).
const IMAGE_EXTS: [&str; 10] = [
    "jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff", "ppm", "pgm",
];

/// A dataset layout that [`prepare`] understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// `SRC/<class>/<image>` folders.
    ImageFolder,
    /// A CSV file of `path,label` rows.
    Csv,
    /// CUB-200-2011.
    Cub200,
    /// Stanford Cars (196 classes).
    Cars196,
    /// Stanford Online Products.
    Sop,
    /// DeepFashion In-Shop Clothes Retrieval.
    InShop,
}

impl SourceFormat {
    /// Every format, in the order of the CLI's help.
    pub const ALL: [SourceFormat; 6] = [
        SourceFormat::ImageFolder,
        SourceFormat::Csv,
        SourceFormat::Cub200,
        SourceFormat::Cars196,
        SourceFormat::Sop,
        SourceFormat::InShop,
    ];

    /// The CLI name (`imagefolder`, `csv`, `cub200`, `cars196`, `sop`, `inshop`).
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::ImageFolder => "imagefolder",
            SourceFormat::Csv => "csv",
            SourceFormat::Cub200 => "cub200",
            SourceFormat::Cars196 => "cars196",
            SourceFormat::Sop => "sop",
            SourceFormat::InShop => "inshop",
        }
    }
}

impl fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SourceFormat {
    type Err = Error;

    /// Parses a CLI name, case-insensitively.
    ///
    /// ```
    /// use dml::data::prepare::SourceFormat;
    /// assert_eq!("CUB200".parse::<SourceFormat>().unwrap(), SourceFormat::Cub200);
    /// assert!("mnist".parse::<SourceFormat>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        SourceFormat::ALL
            .into_iter()
            .find(|f| f.name() == lower)
            .ok_or_else(|| {
                let names: Vec<&str> = SourceFormat::ALL.iter().map(|f| f.name()).collect();
                Error::Input(format!(
                    "unknown dataset format {s:?}; expected one of: {}",
                    names.join(", ")
                ))
            })
    }
}

/// One file written by [`prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSummary {
    /// Split name: `train`, `test`, `query` or `gallery`.
    pub name: String,
    /// The `.dmlds` file.
    pub path: PathBuf,
    /// Images stored.
    pub images: usize,
    /// Classes named in the file.
    pub classes: usize,
}

/// An image that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The image file.
    pub path: PathBuf,
    /// The decoder's or file system's message.
    pub reason: String,
}

/// What [`prepare`] did: the files written with their counts, and every image skipped.
#[derive(Debug, Clone, Default)]
pub struct PrepareReport {
    /// The files written, in split order.
    pub files: Vec<SplitSummary>,
    /// Images that could not be read (skipped), in listing order.
    pub unreadable: Vec<Unreadable>,
    /// `OUT/unreadable.txt`, written when some image was skipped.
    pub unreadable_list: Option<PathBuf>,
}

impl fmt::Display for PrepareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.files {
            writeln!(
                f,
                "wrote {} ({}): {} images, {} classes",
                s.path.display(),
                s.name,
                s.images,
                s.classes
            )?;
        }
        if self.unreadable.is_empty() {
            return write!(f, "all images were read");
        }
        write!(f, "skipped {} unreadable images", self.unreadable.len())?;
        if let Some(list) = &self.unreadable_list {
            write!(f, " (all listed in {})", list.display())?;
        }
        write!(f, ":")?;
        const SHOWN: usize = 50;
        for u in self.unreadable.iter().take(SHOWN) {
            write!(f, "\n  {}: {}", u.path.display(), u.reason)?;
        }
        if self.unreadable.len() > SHOWN {
            write!(f, "\n  … and {} more", self.unreadable.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// One listed image: file to read, source name to record, class index in its split.
#[derive(Debug, Clone)]
struct Item {
    path: PathBuf,
    source: String,
    class: usize,
}

/// One split to write.
#[derive(Debug, Clone)]
struct Split {
    name: &'static str,
    class_names: Vec<String>,
    items: Vec<Item>,
}

/// A decoded image (HWC pixels, height, width) or why it could not be read.
type Decoded = std::result::Result<(Vec<u8>, u32, u32), String>;

/// A listed image before classes are indexed: (file, source name, class name).
type Entry = (PathBuf, String, String);

/// Decodes the dataset at `src` in layout `format` and writes its standard splits to
/// `out` (created if needed) with images stored at shorter side `size`.
///
/// Errors: a missing list file or folder (named), an empty listing, fewer than two
/// classes where classes are split, every image of a split unreadable, or a write
/// failure. Unreadable images are otherwise skipped and listed in the report.
///
/// ```no_run
/// use dml::data::prepare::{prepare, SourceFormat};
/// let report = prepare(SourceFormat::Cub200, "CUB_200_2011".as_ref(), "data/cub".as_ref(), 256)?;
/// eprintln!("{report}");
/// # Ok::<(), dml::Error>(())
/// ```
pub fn prepare(format: SourceFormat, src: &Path, out: &Path, size: u32) -> Result<PrepareReport> {
    if !(8..=4096).contains(&size) {
        return Err(Error::Input(format!(
            "prepare: --size must be between 8 and 4096, got {size}"
        )));
    }
    if !src.exists() {
        return Err(Error::Input(format!(
            "prepare: source {} does not exist",
            src.display()
        )));
    }
    let splits = match format {
        SourceFormat::ImageFolder => halves(image_folder(src)?, src)?,
        SourceFormat::Csv => csv_splits(src)?,
        SourceFormat::Cub200 => halves(cub200(src)?, src)?,
        SourceFormat::Cars196 => halves(cars196(src)?, src)?,
        SourceFormat::Sop => sop(src)?,
        SourceFormat::InShop => inshop(src)?,
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let total: usize = splits.iter().map(|s| s.items.len()).sum();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>8} [{bar:40}] {pos}/{len} images ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let preprocessing = format!(
        "shorter side {size} (triangle filter, aspect kept), RGB u8 HWC; from {format} {}",
        src.display()
    );
    let mut report = PrepareReport::default();
    for split in &splits {
        bar.set_message(split.name);
        let path = out.join(format!("{}.dmlds", split.name));
        let images = write_split(
            split,
            &path,
            size,
            &preprocessing,
            &bar,
            &mut report.unreadable,
        )?;
        report.files.push(SplitSummary {
            name: split.name.to_string(),
            path,
            images,
            classes: split.class_names.len(),
        });
    }
    bar.finish_and_clear();
    if !report.unreadable.is_empty() {
        let list = out.join("unreadable.txt");
        let text: String = report
            .unreadable
            .iter()
            .map(|u| format!("{}\t{}\n", u.path.display(), u.reason))
            .collect();
        std::fs::write(&list, text).map_err(|e| Error::io(&list, e))?;
        report.unreadable_list = Some(list);
    }
    Ok(report)
}

/// Decodes and writes one split; returns the number of images stored.
fn write_split(
    split: &Split,
    path: &Path,
    size: u32,
    preprocessing: &str,
    bar: &ProgressBar,
    unreadable: &mut Vec<Unreadable>,
) -> Result<usize> {
    let mut w = DatasetWriter::create(path)?;
    let mut sources = Vec::with_capacity(split.items.len());
    let mut first_failure = None;
    for chunk in split.items.chunks(CHUNK) {
        let decoded: Vec<Decoded> = chunk
            .par_iter()
            .map(|item| {
                let r = load(&item.path, size);
                bar.inc(1);
                r
            })
            .collect();
        for (item, img) in chunk.iter().zip(decoded) {
            let max = crate::data::format::MAX_SIDE;
            let img = img.and_then(|(pixels, h, wd)| match h.max(wd) > max {
                true => Err(format!(
                    "stored at {h}×{wd}, a side above the format's {max} pixels (an aspect ratio above {}:1 at --size {size})",
                    max / size.max(1)
                )),
                false => Ok((pixels, h, wd)),
            });
            match img {
                Ok((pixels, h, wd)) => {
                    w.push(&pixels, h, wd, item.class as u32)?;
                    sources.push(item.source.clone());
                }
                Err(reason) => {
                    first_failure
                        .get_or_insert_with(|| format!("{}: {reason}", item.path.display()));
                    unreadable.push(Unreadable {
                        path: item.path.clone(),
                        reason,
                    });
                }
            }
        }
    }
    if w.is_empty() {
        return Err(Error::Input(format!(
            "prepare: none of the {} images of the {} split could be read (first: {})",
            split.items.len(),
            split.name,
            first_failure.unwrap_or_default()
        )));
    }
    let n = w.len();
    w.finish(Metadata {
        class_names: split.class_names.clone(),
        sources,
        preprocessing: preprocessing.to_string(),
        checksum: 0,
    })?;
    Ok(n)
}

/// Reads an image and resizes it so that its shorter side is `size`.
fn load(path: &Path, size: u32) -> Decoded {
    let img = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?
        .to_rgb8();
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err("image has no pixels".into());
    }
    let (nw, nh) = shorter_side(w, h, size);
    let img = if (nw, nh) == (w, h) {
        img
    } else {
        image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle)
    };
    Ok((img.into_raw(), nh, nw))
}

/// Output (width, height) with the shorter side `size` and the aspect ratio kept
/// (the longer side rounded to the nearest pixel).
///
/// ```
/// assert_eq!(dml::data::prepare::shorter_side(500, 375, 256), (341, 256));
/// assert_eq!(dml::data::prepare::shorter_side(20, 40, 256), (256, 512));
/// ```
pub fn shorter_side(width: u32, height: u32, size: u32) -> (u32, u32) {
    let scale = |long: u32, short: u32| {
        ((long as u64 * size as u64 * 2 + short as u64) / (2 * short as u64)).max(1) as u32
    };
    if width <= height {
        (size, scale(height, width))
    } else {
        (scale(width, height), size)
    }
}

/// Sorted, de-duplicated class names: numerically when all are integers.
fn sorted_classes<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let set: BTreeSet<&str> = names.collect();
    let mut v: Vec<String> = set.into_iter().map(str::to_string).collect();
    if v.iter().all(|n| n.parse::<u64>().is_ok()) {
        v.sort_by_key(|n| n.parse::<u64>().unwrap_or(0));
    }
    v
}

/// A split over the given class list (every entry's class must be in it).
fn split_with(name: &'static str, class_names: Vec<String>, entries: Vec<Entry>) -> Split {
    let index: HashMap<&str, usize> = class_names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let items = entries
        .into_iter()
        .filter_map(|(path, source, class)| {
            index.get(class.as_str()).map(|&c| Item {
                path,
                source,
                class: c,
            })
        })
        .collect();
    Split {
        name,
        class_names,
        items,
    }
}

/// A split with its own sorted class list.
fn own_split(name: &'static str, entries: Vec<Entry>) -> Split {
    let classes = sorted_classes(entries.iter().map(|e| e.2.as_str()));
    split_with(name, classes, entries)
}

/// First half of the sorted classes (rounded up) → train, the rest → test.
fn halves(entries: Vec<Entry>, src: &Path) -> Result<Vec<Split>> {
    let classes = sorted_classes(entries.iter().map(|e| e.2.as_str()));
    if classes.len() < 2 {
        return Err(Error::Input(format!(
            "prepare: {} lists {} class(es) in {} images; class-disjoint train/test splits need at least 2",
            src.display(),
            classes.len(),
            entries.len()
        )));
    }
    let n_train = classes.len().div_ceil(2);
    let test_classes = classes[n_train..].to_vec();
    let mut train_classes = classes;
    train_classes.truncate(n_train);
    Ok(vec![
        split_with("train", train_classes, entries.clone()),
        split_with("test", test_classes, entries),
    ])
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Sorted entries of a directory.
fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if !is_hidden(&e.path()) {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// Image files under `dir`, recursively, in sorted order.
fn images_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for p in read_dir_sorted(dir)? {
        if p.is_dir() {
            images_under(&p, out)?;
        } else if is_image(&p) {
            out.push(p);
        }
    }
    Ok(())
}

fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Class sub-folders of `root` (sorted); empty if there are none.
fn class_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    Ok(read_dir_sorted(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect())
}

/// `root/<class>/**/<image>` entries; `source_root` is what sources are relative to.
fn folder_entries(root: &Path, source_root: &Path) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for dir in class_dirs(root)? {
        let class = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files = Vec::new();
        images_under(&dir, &mut files)?;
        for f in files {
            let source = relative(&f, source_root);
            entries.push((f, source, class.clone()));
        }
    }
    Ok(entries)
}

fn image_folder(src: &Path) -> Result<Vec<Entry>> {
    if !src.is_dir() {
        return Err(Error::Input(format!(
            "prepare: imagefolder expects a folder SRC/<class>/<image>, but {} is not a folder",
            src.display()
        )));
    }
    let entries = folder_entries(src, src)?;
    if entries.is_empty() {
        return Err(Error::Input(format!(
            "prepare: no image found under {} (expected {}/<class>/<image>.jpg|png)",
            src.display(),
            src.display()
        )));
    }
    Ok(entries)
}

/// Reads a list file, naming it when it is missing.
fn read_list(path: &Path, what: &str) -> Result<String> {
    if !path.is_file() {
        return Err(Error::Input(format!(
            "prepare: expected {what} at {}, which does not exist",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Splits one CSV line into fields, honouring double quotes.
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    fields.push(cur.trim().to_string());
    fields
}

const PATH_HEADERS: [&str; 7] = [
    "path",
    "file",
    "filename",
    "file_name",
    "image",
    "image_path",
    "relative_im_path",
];
const LABEL_HEADERS: [&str; 6] = ["label", "class", "class_id", "category", "target", "y"];
const SPLIT_HEADERS: [&str; 4] = ["split", "subset", "partition", "evaluation_status"];
/// The values a CSV `split` column may hold.
const SPLIT_NAMES: [&str; 4] = ["train", "test", "query", "gallery"];

/// Where a CSV's path, label and (optional) split columns are.
#[derive(Debug, Clone, Copy)]
struct CsvColumns {
    path: usize,
    label: usize,
    split: Option<usize>,
}

impl CsvColumns {
    /// The columns a header row names, or `None` if `fields` is not a header.
    fn from_header(fields: &[String]) -> Option<CsvColumns> {
        let lower: Vec<String> = fields.iter().map(|f| f.to_ascii_lowercase()).collect();
        let find = |names: &[&str]| lower.iter().position(|f| names.contains(&f.as_str()));
        match (find(&PATH_HEADERS), find(&LABEL_HEADERS)) {
            (Some(path), Some(label)) => Some(CsvColumns {
                path,
                label,
                split: find(&SPLIT_HEADERS),
            }),
            (Some(_), None) | (None, Some(_)) => Some(CsvColumns {
                path: 0,
                label: 1,
                split: (fields.len() > 2).then_some(2),
            }),
            (None, None) => None,
        }
    }
}

/// The splits of a CSV file: `path,label[,split]` rows, or any column order under a
/// header naming them. Without a split column the classes are halved as for
/// `imagefolder`; with one, every row says `train`, `test`, `query` or `gallery`, and the
/// splits are written as listed (`query` and `gallery` share one class list, as In-Shop's).
fn csv_splits(src: &Path) -> Result<Vec<Split>> {
    if src.is_dir() {
        return Err(Error::Input(format!(
            "prepare: csv expects the CSV file itself (rows path,label[,split]), but {} is a folder",
            src.display()
        )));
    }
    let text = read_list(src, "the CSV file of path,label[,split] rows")?;
    let root = src.parent().unwrap_or(Path::new("."));
    let mut columns: Option<CsvColumns> = None;
    let mut by_split: [Vec<Entry>; 4] = Default::default();
    let mut listed = 0usize;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f = csv_fields(line);
        if listed == 0 && columns.is_none() {
            if let Some(c) = CsvColumns::from_header(&f) {
                columns = Some(c);
                continue;
            }
        }
        let c = *columns.get_or_insert(CsvColumns {
            path: 0,
            label: 1,
            split: (f.len() > 2).then_some(2),
        });
        let field = |i: usize| f.get(i).map(String::as_str).unwrap_or("");
        let expected = match c.split {
            Some(_) => "path,label,split",
            None => "path,label",
        };
        if field(c.path).is_empty() || field(c.label).is_empty() {
            return Err(Error::Input(format!(
                "prepare: {}:{}: expected a `{expected}` row, found {line:?}",
                src.display(),
                n + 1
            )));
        }
        let which = match c.split {
            None => 0,
            Some(i) => {
                let v = field(i).to_ascii_lowercase();
                SPLIT_NAMES.iter().position(|s| *s == v).ok_or_else(|| {
                    Error::Input(format!(
                        "prepare: {}:{}: split {:?} is not one of {}",
                        src.display(),
                        n + 1,
                        field(i),
                        SPLIT_NAMES.join(", ")
                    ))
                })?
            }
        };
        let path = root.join(field(c.path));
        by_split[which].push((path, field(c.path).to_string(), field(c.label).to_string()));
        listed += 1;
    }
    if listed == 0 {
        return Err(Error::Input(format!(
            "prepare: {} lists no image",
            src.display()
        )));
    }
    let [train, test, query, gallery] = by_split;
    if columns.is_some_and(|c| c.split.is_none()) {
        return halves(train, src);
    }
    if train.is_empty() {
        return Err(Error::Input(format!(
            "prepare: {}: no row has split `train`",
            src.display()
        )));
    }
    if query.is_empty() != gallery.is_empty() {
        return Err(Error::Input(format!(
            "prepare: {}: {} rows have split `query` and {} `gallery`; a query/gallery protocol needs both",
            src.display(),
            query.len(),
            gallery.len()
        )));
    }
    if test.is_empty() && query.is_empty() {
        return Err(Error::Input(format!(
            "prepare: {}: no row has split `test` (or `query` and `gallery`): nothing to evaluate on",
            src.display()
        )));
    }
    let mut splits = vec![own_split("train", train)];
    if !test.is_empty() {
        splits.push(own_split("test", test));
    }
    if !query.is_empty() {
        let shared = sorted_classes(query.iter().chain(&gallery).map(|e| e.2.as_str()));
        splits.push(split_with("query", shared.clone(), query));
        splits.push(split_with("gallery", shared, gallery));
    }
    Ok(splits)
}

/// Whitespace-separated rows of a list file, skipping blank lines.
fn rows(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.split_whitespace().collect::<Vec<_>>()))
        .filter(|(_, f)| !f.is_empty())
}

fn bad_row(file: &Path, line: usize, expected: &str) -> Error {
    Error::Input(format!(
        "prepare: {}:{line}: expected `{expected}`",
        file.display()
    ))
}

fn cub200(src: &Path) -> Result<Vec<Entry>> {
    let images_txt = src.join("images.txt");
    let labels_txt = src.join("image_class_labels.txt");
    if images_txt.is_file() || labels_txt.is_file() {
        let images = read_list(&images_txt, "CUB's image list (image_id path)")?;
        let labels = read_list(&labels_txt, "CUB's labels (image_id class_id)")?;
        let mut class_of: HashMap<&str, &str> = HashMap::new();
        for (n, f) in rows(&labels) {
            if f.len() < 2 {
                return Err(bad_row(&labels_txt, n, "image_id class_id"));
            }
            class_of.insert(f[0], f[1]);
        }
        let names_txt = src.join("classes.txt");
        let names_text = if names_txt.is_file() {
            std::fs::read_to_string(&names_txt).map_err(|e| Error::io(&names_txt, e))?
        } else {
            String::new()
        };
        let names: HashMap<&str, &str> = rows(&names_text)
            .filter(|(_, f)| f.len() >= 2)
            .map(|(_, f)| (f[0], f[1]))
            .collect();
        let mut entries = Vec::new();
        for (n, f) in rows(&images) {
            if f.len() < 2 {
                return Err(bad_row(&images_txt, n, "image_id path"));
            }
            let class = class_of.get(f[0]).ok_or_else(|| {
                Error::Input(format!(
                    "prepare: image {} ({}:{n}) has no class in {}",
                    f[0],
                    images_txt.display(),
                    labels_txt.display()
                ))
            })?;
            entries.push((
                src.join("images").join(f[1]),
                format!("images/{}", f[1]),
                class.to_string(),
            ));
        }
        return rename_numeric(entries, &names, src);
    }
    for root in [src.join("images"), src.to_path_buf()] {
        if root.is_dir() && !class_dirs(&root)?.is_empty() {
            let entries = folder_entries(&root, src)?;
            if !entries.is_empty() {
                return Ok(entries);
            }
        }
    }
    Err(Error::Input(format!(
        "prepare: cub200 expects {} and {} (CUB_200_2011), or class folders {}/NNN.name/",
        images_txt.display(),
        labels_txt.display(),
        src.join("images").display()
    )))
}

/// Orders classes by their numeric id, then replaces each id by its name where known
/// (keeping the numeric order: the id is prefixed, zero-padded, when names are used).
fn rename_numeric(
    entries: Vec<Entry>,
    names: &HashMap<&str, &str>,
    src: &Path,
) -> Result<Vec<Entry>> {
    if names.is_empty() {
        return Ok(entries);
    }
    let non_numeric = entries.iter().find(|e| e.2.parse::<u64>().is_err());
    if let Some(e) = non_numeric {
        return Err(Error::Input(format!(
            "prepare: class id {:?} of {} in {} is not an integer",
            e.2,
            e.1,
            src.display()
        )));
    }
    Ok(entries
        .into_iter()
        .map(|(p, s, c)| {
            let id = c.parse::<u64>().unwrap_or(0);
            let name = match names.get(c.as_str()) {
                Some(n) if n.starts_with(&format!("{id:03}.")) => n.to_string(),
                Some(n) => format!("{id:03}.{n}"),
                None => format!("{id:03}"),
            };
            (p, s, name)
        })
        .collect())
}

fn cars196(src: &Path) -> Result<Vec<Entry>> {
    for list in [src.join("cars_annos.csv"), src.join("cars_annos.txt")] {
        if list.is_file() {
            return cars_annotations(src, &list);
        }
    }
    let (train, test) = (src.join("train"), src.join("test"));
    if train.is_dir() && test.is_dir() {
        let mut entries = folder_entries(&train, src)?;
        entries.extend(folder_entries(&test, src)?);
        if !entries.is_empty() {
            return Ok(entries);
        }
    }
    if src.is_dir() && !class_dirs(src)?.is_empty() {
        let entries = folder_entries(src, src)?;
        if !entries.is_empty() {
            return Ok(entries);
        }
    }
    Err(Error::Input(format!(
        "prepare: cars196 expects {} (or cars_annos.txt; tools/cars_annos_to_csv.py converts cars_annos.mat), or class folders {}/<class>/",
        src.join("cars_annos.csv").display(),
        src.display()
    )))
}

fn cars_annotations(src: &Path, list: &Path) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(list).map_err(|e| Error::io(list, e))?;
    let split = |line: &str| -> Vec<String> {
        if line.contains(',') {
            csv_fields(line)
        } else {
            line.split_whitespace().map(str::to_string).collect()
        }
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim_start_matches('\u{feff}').trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .peekable();
    // Column positions: (path, class, optional class name).
    let mut cols = (0usize, 1usize, None::<usize>);
    if let Some((_, first)) = lines.peek() {
        let f = split(first);
        let lower: Vec<String> = f.iter().map(|s| s.to_ascii_lowercase()).collect();
        let find = |names: &[&str]| lower.iter().position(|c| names.contains(&c.as_str()));
        if let (Some(p), Some(c)) = (find(&PATH_HEADERS), find(&LABEL_HEADERS)) {
            cols = (p, c, find(&["class_name", "name"]));
            lines.next();
        } else if f.len() == 7 {
            cols = (0, 5, None);
        }
    }
    let mut entries = Vec::new();
    for (n, line) in lines {
        let f = split(line);
        let need = cols.0.max(cols.1).max(cols.2.unwrap_or(0));
        if f.len() <= need || f[cols.1].parse::<u64>().is_err() {
            return Err(Error::Input(format!(
                "prepare: {}:{n}: expected a path and an integer class id (columns {} and {}), found {line:?}",
                list.display(),
                cols.0 + 1,
                cols.1 + 1
            )));
        }
        let id = f[cols.1].parse::<u64>().unwrap_or(0);
        let class = match cols.2 {
            Some(c) => format!("{id:03}.{}", f[c]),
            None => id.to_string(),
        };
        entries.push((src.join(&f[cols.0]), f[cols.0].clone(), class));
    }
    if entries.is_empty() {
        return Err(Error::Input(format!(
            "prepare: {} lists no image",
            list.display()
        )));
    }
    Ok(entries)
}

/// Rows `image_id class_id super_class_id path` of an SOP list (one header line).
fn sop_list(src: &Path, name: &str) -> Result<Vec<Entry>> {
    let file = src.join(name);
    let text = read_list(&file, "the Stanford Online Products list")?;
    let mut entries = Vec::new();
    for (n, f) in rows(&text).skip(1) {
        if f.len() < 4 {
            return Err(bad_row(&file, n, "image_id class_id super_class_id path"));
        }
        entries.push((src.join(f[3]), f[3].to_string(), f[1].to_string()));
    }
    if entries.is_empty() {
        return Err(Error::Input(format!(
            "prepare: {} lists no image",
            file.display()
        )));
    }
    Ok(entries)
}

fn sop(src: &Path) -> Result<Vec<Split>> {
    let train = sop_list(src, "Ebay_train.txt")?;
    let test = sop_list(src, "Ebay_test.txt")?;
    Ok(vec![own_split("train", train), own_split("test", test)])
}

fn inshop(src: &Path) -> Result<Vec<Split>> {
    let candidates = [
        src.join("list_eval_partition.txt"),
        src.join("Eval").join("list_eval_partition.txt"),
    ];
    let file = candidates
        .iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Input(format!(
                "prepare: inshop expects {} (or {})",
                candidates[0].display(),
                candidates[1].display()
            ))
        })?
        .clone();
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    let (mut train, mut query, mut gallery) = (Vec::new(), Vec::new(), Vec::new());
    for (n, f) in rows(&text).skip(2) {
        if f.len() < 3 {
            return Err(bad_row(&file, n, "image_name item_id evaluation_status"));
        }
        let direct = src.join(f[0]);
        let path = if direct.exists() {
            direct
        } else {
            let under_img = src.join("Img").join(f[0]);
            if under_img.exists() {
                under_img
            } else {
                direct
            }
        };
        let entry = (path, f[0].to_string(), f[1].to_string());
        match f[2] {
            "train" => train.push(entry),
            "query" => query.push(entry),
            "gallery" => gallery.push(entry),
            other => {
                return Err(Error::Input(format!(
                    "prepare: {}:{n}: evaluation_status {other:?} is not train, query or gallery",
                    file.display()
                )))
            }
        }
    }
    for (name, v) in [("train", &train), ("query", &query), ("gallery", &gallery)] {
        if v.is_empty() {
            return Err(Error::Input(format!(
                "prepare: {} lists no {name} image",
                file.display()
            )));
        }
    }
    let shared = sorted_classes(query.iter().chain(&gallery).map(|e| e.2.as_str()));
    Ok(vec![
        own_split("train", train),
        split_with("query", shared.clone(), query),
        split_with("gallery", shared, gallery),
    ])
}
