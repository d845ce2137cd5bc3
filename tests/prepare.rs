//! `dml prepare` on tiny source trees of every supported layout, built in a tempdir with
//! PNG and JPEG files written by the `image` crate (plus a corrupt JPEG).
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use dml::data::format::Dataset;
use dml::data::prepare::{prepare, shorter_side, SourceFormat};
use dml::Error;

const SIZE: u32 = 16;

/// Writes a solid-colour `w × h` image; the format follows the extension.
fn image(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
        .save(path)
        .unwrap();
}

/// A file that claims to be a JPEG but is not one.
fn corrupt_jpeg(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, b"\xff\xd8\xff\xe0 this is not a jpeg").unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn open(out: &Path, split: &str) -> Dataset {
    Dataset::open(&out.join(format!("{split}.dmlds"))).unwrap()
}

/// Every stored image has its shorter side equal to SIZE; the checksum holds.
fn check_sizes(ds: &Dataset) {
    ds.verify().unwrap();
    for i in 0..ds.len() {
        let (h, w) = ds.dims(i);
        assert_eq!(
            h.min(w),
            SIZE as usize,
            "image {i} of {} is {h}×{w}",
            ds.path().display()
        );
    }
}

fn class_names(ds: &Dataset) -> Vec<String> {
    ds.meta().class_names.clone()
}

fn disjoint(a: &Dataset, b: &Dataset) {
    let a: HashSet<_> = class_names(a).into_iter().collect();
    let b: HashSet<_> = class_names(b).into_iter().collect();
    assert!(a.is_disjoint(&b), "{a:?} and {b:?} share classes");
}

fn colours() -> [[u8; 3]; 4] {
    [[200, 30, 30], [30, 200, 30], [30, 30, 200], [120, 120, 20]]
}

/// SRC/<class>/ with 4 classes: 2 PNG + 1 JPEG each (various sizes), a corrupt JPEG in
/// `b_cls`, and a text file that is ignored. Returns the corrupt file's path.
fn image_folder_tree(src: &Path) -> PathBuf {
    for (c, name) in ["a_cls", "b_cls", "c_cls", "d_cls"].iter().enumerate() {
        let rgb = colours()[c];
        image(&src.join(name).join("0.png"), 40, 30, rgb);
        image(&src.join(name).join("1.png"), 20, 50, rgb);
        image(&src.join(name).join("sub/2.jpg"), 8, 8, rgb);
    }
    write(&src.join("a_cls/notes.txt"), "not an image");
    let bad = src.join("b_cls/broken.jpg");
    corrupt_jpeg(&bad);
    bad
}

#[test]
fn imagefolder_splits_resizes_and_lists_unreadable() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    let bad = image_folder_tree(&src);
    let report = prepare(SourceFormat::ImageFolder, &src, &out, SIZE).unwrap();
    let (train, test) = (open(&out, "train"), open(&out, "test"));
    assert_eq!(class_names(&train), ["a_cls", "b_cls"]);
    assert_eq!(class_names(&test), ["c_cls", "d_cls"]);
    assert_eq!((train.len(), test.len()), (6, 6));
    disjoint(&train, &test);
    check_sizes(&train);
    check_sizes(&test);
    // 40×30 → 21×16 (40·16/30 = 21.3), 20×50 → 16×40, 8×8 (upscaled) → 16×16.
    assert_eq!(train.dims(0), (16, 21));
    assert_eq!(train.dims(1), (40, 16));
    assert_eq!(train.dims(2), (16, 16));
    // A resampled constant image stays constant; PNG is lossless, so exact.
    assert!(train.image(0).pixels.chunks(3).all(|p| p == [200, 30, 30]));
    // JPEG of a flat colour: within a few levels.
    let jpeg = train.image(2).pixels;
    assert!(jpeg.chunks(3).all(|p| p
        .iter()
        .zip([200, 30, 30])
        .all(|(&a, b)| (a as i32 - b).abs() <= 4)));
    assert_eq!(train.labels(), &[0, 0, 0, 1, 1, 1]);
    assert_eq!(train.meta().sources[5], "b_cls/sub/2.jpg");
    assert!(train.meta().preprocessing.contains("shorter side 16"));

    assert_eq!(report.unreadable.len(), 1);
    assert_eq!(report.unreadable[0].path, bad);
    let shown = report.to_string();
    assert!(shown.contains("skipped 1 unreadable images"), "{shown}");
    assert!(shown.contains(&bad.display().to_string()), "{shown}");
    assert!(shown.contains("6 images, 2 classes"), "{shown}");
    let list = std::fs::read_to_string(out.join("unreadable.txt")).unwrap();
    assert!(list.starts_with(&bad.display().to_string()), "{list}");
    assert_eq!(report.files.len(), 2);
    assert_eq!(report.files[1].path, out.join("test.dmlds"));
}

#[test]
fn csv_with_header_sorts_numeric_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..6u8 {
        image(&src.join(format!("img/{i}.png")), 30, 20, [i * 40, 0, 0]);
    }
    write(
        &src.join("list.csv"),
        "path,label\nimg/0.png,10\nimg/1.png,2\n\"img/2.png\",33\nimg/3.png,4\nimg/4.png,2\nimg/5.png,10\nimg/missing.png,4\n",
    );
    let out = tmp.path().join("out");
    let report = prepare(SourceFormat::Csv, &src.join("list.csv"), &out, SIZE).unwrap();
    let (train, test) = (open(&out, "train"), open(&out, "test"));
    // Numeric order 2 < 4 < 10 < 33 (not "10" < "2").
    assert_eq!(class_names(&train), ["2", "4"]);
    assert_eq!(class_names(&test), ["10", "33"]);
    assert_eq!((train.len(), test.len()), (3, 3));
    assert_eq!(
        train.meta().sources,
        ["img/1.png", "img/3.png", "img/4.png"]
    );
    assert_eq!(train.labels(), &[0, 1, 0]);
    check_sizes(&test);
    assert_eq!(test.dims(0), (16, 24));
    // A listed file that does not exist is reported, not dropped silently.
    assert_eq!(report.unreadable.len(), 1);
    assert!(report.unreadable[0].path.ends_with("img/missing.png"));
}

#[test]
fn csv_split_column_writes_the_listed_splits() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for i in 0..8u8 {
        image(&src.join(format!("img/{i}.png")), 20, 20, [i * 30, 0, 0]);
    }
    // Columns in another order under a header; class "b" is both in train and test
    // (the CSV decides, not dml); query and gallery share one class list.
    write(
        &src.join("list.csv"),
        "split,label,path\ntrain,a,img/0.png\ntrain,b,img/1.png\nTest,b,img/2.png\ntest,c,img/3.png\nquery,d,img/4.png\ngallery,d,img/5.png\ngallery,e,img/6.png\nquery,f,img/7.png\n",
    );
    let out = tmp.path().join("out");
    let report = prepare(SourceFormat::Csv, &src.join("list.csv"), &out, SIZE).unwrap();
    let names: Vec<&str> = report.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["train", "test", "query", "gallery"]);
    let (train, test) = (open(&out, "train"), open(&out, "test"));
    let (query, gallery) = (open(&out, "query"), open(&out, "gallery"));
    assert_eq!(class_names(&train), ["a", "b"]);
    assert_eq!(class_names(&test), ["b", "c"]);
    assert_eq!(class_names(&query), ["d", "e", "f"]);
    assert_eq!(class_names(&gallery), ["d", "e", "f"]);
    assert_eq!(query.meta().sources, ["img/4.png", "img/7.png"]);
    assert_eq!(query.labels(), &[0, 2]);
    assert_eq!(gallery.labels(), &[0, 1]);
    check_sizes(&gallery);

    // Without a header the third column is the split.
    write(
        &src.join("plain.csv"),
        "img/0.png,a,train\nimg/1.png,b,test\n",
    );
    let out2 = tmp.path().join("out2");
    let report = prepare(SourceFormat::Csv, &src.join("plain.csv"), &out2, SIZE).unwrap();
    assert_eq!(report.files.len(), 2);
    assert_eq!(class_names(&open(&out2, "test")), ["b"]);

    // Bad values and incomplete protocols name the line or the missing split.
    let err = |text: &str| {
        write(&src.join("bad.csv"), text);
        match prepare(
            SourceFormat::Csv,
            &src.join("bad.csv"),
            &tmp.path().join("o"),
            SIZE,
        ) {
            Err(Error::Input(m)) => m,
            other => panic!("expected an input error, got {other:?}"),
        }
    };
    let e = err("path,label,split\nimg/0.png,a,train\nimg/1.png,b,validation\n");
    assert!(
        e.contains("bad.csv:3")
            && e.contains("\"validation\"")
            && e.contains("train, test, query, gallery"),
        "{e}"
    );
    let e = err("img/0.png,a,train\nimg/1.png,b,query\n");
    assert!(
        e.contains("1 rows have split `query` and 0 `gallery`"),
        "{e}"
    );
    let e = err("img/0.png,a,test\n");
    assert!(e.contains("no row has split `train`"), "{e}");
    let e = err("img/0.png,a,train\n");
    assert!(e.contains("no row has split `test`"), "{e}");
    let e = err("path,label,split\nimg/0.png,,train\n");
    assert!(
        e.contains("bad.csv:2") && e.contains("path,label,split"),
        "{e}"
    );
}

#[test]
fn cub200_lists_and_folder_only_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("CUB_200_2011");
    let names = [
        "001.Albatross",
        "002.Auklet",
        "003.Blackbird",
        "004.Bobolink",
    ];
    let (mut images, mut labels, mut classes) = (String::new(), String::new(), String::new());
    let mut id = 0;
    for (c, name) in names.iter().enumerate() {
        classes += &format!("{} {name}\n", c + 1);
        for k in 0..2 {
            id += 1;
            let rel = format!("{name}/{name}_{k}.jpg");
            image(&src.join("images").join(&rel), 24, 18, colours()[c]);
            images += &format!("{id} {rel}\n");
            labels += &format!("{id} {}\n", c + 1);
        }
    }
    write(&src.join("images.txt"), &images);
    write(&src.join("image_class_labels.txt"), &labels);
    write(&src.join("classes.txt"), &classes);
    let out = tmp.path().join("out");
    prepare(SourceFormat::Cub200, &src, &out, SIZE).unwrap();
    let (train, test) = (open(&out, "train"), open(&out, "test"));
    assert_eq!(class_names(&train), names[..2]);
    assert_eq!(class_names(&test), names[2..]);
    assert_eq!((train.len(), test.len()), (4, 4));
    check_sizes(&train);
    assert_eq!(train.dims(0), (16, 21));
    assert_eq!(
        train.meta().sources[0],
        "images/001.Albatross/001.Albatross_0.jpg"
    );

    // The same images without the list files: the class folders alone.
    for f in ["images.txt", "image_class_labels.txt", "classes.txt"] {
        std::fs::remove_file(src.join(f)).unwrap();
    }
    let out2 = tmp.path().join("out2");
    prepare(SourceFormat::Cub200, &src, &out2, SIZE).unwrap();
    let (train2, test2) = (open(&out2, "train"), open(&out2, "test"));
    assert_eq!(class_names(&train2), names[..2]);
    assert_eq!(class_names(&test2), names[2..]);
    assert_eq!(train2.len(), 4);

    // images.txt without its labels file: the error names the missing file.
    write(&src.join("images.txt"), &images);
    let e = prepare(SourceFormat::Cub200, &src, &out2, SIZE)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&src.join("image_class_labels.txt").display().to_string()),
        "{e}"
    );
}

#[test]
fn cars196_annotations_and_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("cars");
    // The seven columns of cars_annos.mat, no header, whitespace-separated.
    let mut annos = String::new();
    for i in 0..8u32 {
        let class = 1 + i % 4;
        let rel = format!("car_ims/{:06}.jpg", i + 1);
        image(&src.join(&rel), 32, 16, colours()[(class - 1) as usize]);
        annos += &format!("{rel} 1 2 30 15 {class} {}\n", i % 2);
    }
    write(&src.join("cars_annos.txt"), &annos);
    let out = tmp.path().join("out");
    prepare(SourceFormat::Cars196, &src, &out, SIZE).unwrap();
    let (train, test) = (open(&out, "train"), open(&out, "test"));
    assert_eq!(class_names(&train), ["1", "2"]);
    assert_eq!(class_names(&test), ["3", "4"]);
    assert_eq!((train.len(), test.len()), (4, 4));
    check_sizes(&train);
    assert_eq!(train.dims(0), (16, 32));

    // A CSV with a header and class names (as tools/cars_annos_to_csv.py writes it).
    let mut csv = String::from("path,class,class_name\n");
    for line in annos.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        csv += &format!("{},{},Car {}\n", f[0], f[5], f[5]);
    }
    std::fs::remove_file(src.join("cars_annos.txt")).unwrap();
    write(&src.join("cars_annos.csv"), &csv);
    let out2 = tmp.path().join("out2");
    prepare(SourceFormat::Cars196, &src, &out2, SIZE).unwrap();
    assert_eq!(
        class_names(&open(&out2, "train")),
        ["001.Car 1", "002.Car 2"]
    );

    // Folder layout train/<class>/ + test/<class>/, merged then split by sorted class.
    let kaggle = tmp.path().join("car_data");
    for (c, name) in ["Audi A", "BMW B", "Chevy C"].iter().enumerate() {
        image(
            &kaggle.join("train").join(name).join("x.jpg"),
            20,
            16,
            colours()[c],
        );
        image(
            &kaggle.join("test").join(name).join("y.png"),
            16,
            20,
            colours()[c],
        );
    }
    let out3 = tmp.path().join("out3");
    prepare(SourceFormat::Cars196, &kaggle, &out3, SIZE).unwrap();
    let (train3, test3) = (open(&out3, "train"), open(&out3, "test"));
    assert_eq!(class_names(&train3), ["Audi A", "BMW B"]);
    assert_eq!(class_names(&test3), ["Chevy C"]);
    assert_eq!((train3.len(), test3.len()), (4, 2));

    // Nothing usable: the error names the expected file.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = prepare(SourceFormat::Cars196, &empty, &out3, SIZE)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&empty.join("cars_annos.csv").display().to_string()),
        "{e}"
    );
}

#[test]
fn sop_uses_its_own_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("Stanford_Online_Products");
    let mut lists = [
        String::from("image_id class_id super_class_id path\n"),
        String::new(),
    ];
    lists[1] = lists[0].clone();
    let mut id = 0;
    for (split, classes) in [(0usize, [1u32, 2, 3]), (1, [4, 5, 6])] {
        for class in classes {
            for k in 0..2 {
                id += 1;
                let rel = format!("bicycle_final/{class}_{k}.JPG");
                image(&src.join(&rel), 18, 24, [class as u8 * 30, 0, 0]);
                // `.JPG` written by the image crate as a JPEG.
                lists[split] += &format!("{id} {class} 1 {rel}\n");
            }
        }
    }
    write(&src.join("Ebay_train.txt"), &lists[0]);
    let out = tmp.path().join("out");
    let e = prepare(SourceFormat::Sop, &src, &out, SIZE).unwrap_err();
    assert!(matches!(e, Error::Input(_)));
    assert!(
        e.to_string()
            .contains(&src.join("Ebay_test.txt").display().to_string()),
        "{e}"
    );
    write(&src.join("Ebay_test.txt"), &lists[1]);
    prepare(SourceFormat::Sop, &src, &out, SIZE).unwrap();
    let (train, test) = (open(&out, "train"), open(&out, "test"));
    assert_eq!(class_names(&train), ["1", "2", "3"]);
    assert_eq!(class_names(&test), ["4", "5", "6"]);
    assert_eq!((train.len(), test.len()), (6, 6));
    assert_eq!(test.labels(), &[0, 0, 1, 1, 2, 2]);
    check_sizes(&test);
    assert_eq!(test.dims(0), (21, 16));
}

#[test]
fn inshop_writes_train_query_gallery_with_shared_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("inshop");
    let mut list = String::from("9\nimage_name item_id evaluation_status\n");
    let rows = [
        ("id_00000001", "train"),
        ("id_00000001", "train"),
        ("id_00000002", "train"),
        ("id_00000003", "query"),
        ("id_00000003", "gallery"),
        ("id_00000004", "gallery"),
        ("id_00000005", "query"),
        ("id_00000005", "gallery"),
        ("id_00000002", "train"),
    ];
    for (i, (item, status)) in rows.iter().enumerate() {
        let rel = format!("img/WOMEN/Dresses/{item}/{i:02}_1_front.jpg");
        // Images under SRC/Img/ (the archive's layout), list under SRC/Eval/.
        image(&src.join("Img").join(&rel), 16, 32, [i as u8 * 20, 50, 50]);
        list += &format!("{rel}   {item}   {status}\n");
    }
    write(&src.join("Eval/list_eval_partition.txt"), &list);
    let out = tmp.path().join("out");
    let report = prepare(SourceFormat::InShop, &src, &out, SIZE).unwrap();
    assert!(report.unreadable.is_empty(), "{report}");
    let (train, query, gallery) = (
        open(&out, "train"),
        open(&out, "query"),
        open(&out, "gallery"),
    );
    assert_eq!(class_names(&train), ["id_00000001", "id_00000002"]);
    assert_eq!(train.labels(), &[0, 0, 1, 1]);
    // Query and gallery index one class list, so labels compare across the two files.
    let shared = ["id_00000003", "id_00000004", "id_00000005"];
    assert_eq!(class_names(&query), shared);
    assert_eq!(class_names(&gallery), shared);
    assert_eq!(query.labels(), &[0, 2]);
    assert_eq!(gallery.labels(), &[0, 1, 2]);
    disjoint(&train, &query);
    check_sizes(&gallery);
    assert_eq!(gallery.dims(0), (32, 16));
    assert_eq!(
        report
            .files
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        ["train", "query", "gallery"]
    );

    let e = prepare(SourceFormat::InShop, tmp.path(), &out, SIZE)
        .unwrap_err()
        .to_string();
    assert!(e.contains("list_eval_partition.txt"), "{e}");
}

#[test]
fn all_unreadable_is_an_error_and_formats_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    for c in ["x", "y"] {
        corrupt_jpeg(&src.join(c).join("0.jpg"));
    }
    let e = prepare(
        SourceFormat::ImageFolder,
        &src,
        &tmp.path().join("out"),
        SIZE,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("none of the 1 images of the train split"), "{e}");
    assert!(e.contains("0.jpg"), "{e}");

    for f in SourceFormat::ALL {
        assert_eq!(f.to_string().parse::<SourceFormat>().unwrap(), f);
    }
    assert_eq!(
        "InShop".parse::<SourceFormat>().unwrap(),
        SourceFormat::InShop
    );
    let e = "mnist".parse::<SourceFormat>().unwrap_err().to_string();
    assert!(
        e.contains("imagefolder, csv, cub200, cars196, sop, inshop"),
        "{e}"
    );

    // 375×500 → 256×341 (500·256/375 = 341.3); hand-derived roundings.
    assert_eq!(shorter_side(500, 375, 256), (341, 256));
    assert_eq!(shorter_side(375, 500, 256), (256, 341));
    assert_eq!(shorter_side(3, 2, 16), (24, 16));
    assert_eq!(shorter_side(10, 10, 16), (16, 16));
}

#[test]
fn an_image_too_elongated_for_the_format_is_listed_as_unreadable() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    image_folder_tree(&src);
    // 3000 × 1 at shorter side 16 would be stored 48000 wide, above MAX_SIDE (32768).
    let strip = src.join("a_cls/strip.png");
    image(&strip, 3000, 1, [1, 2, 3]);
    let report = prepare(SourceFormat::ImageFolder, &src, &out, SIZE).unwrap();
    let listed = report
        .unreadable
        .iter()
        .find(|u| u.path == strip)
        .expect("the strip is listed");
    assert!(listed.reason.contains("16×48000"), "{}", listed.reason);
    assert_eq!(open(&out, "train").len(), 6);
}
