//! Loaders on small VTAB-, FGVC- and list-layout trees generated on the fly.

mod common;

use common::*;
use mlae_data::{
    AugmentedSet, Benchmark, CacheStatus, DataError, DataSource, Transform, load_images, open_task,
};
use std::path::Path;

fn src(benchmark: Benchmark, task: &str, root: &Path) -> DataSource {
    DataSource { benchmark, task: task.into(), root: root.to_path_buf(), split: None }
}

#[test]
fn vtab_task_lists_counts_and_labels() {
    let tmp = tempfile::tempdir().unwrap();
    vtab_task(tmp.path(), "dtd", 6, 2, 4, 47);
    let task = open_task(&src(Benchmark::Vtab, "dtd", tmp.path())).unwrap();
    assert_eq!(task.num_classes, 47);
    assert_eq!(task.split_names(), ["train800", "val200", "train800val200", "test"]);
    assert_eq!(task.expected_sizes["train800val200"], 1000);
    let train = task.split("train800").unwrap();
    let val = task.split("val200").unwrap();
    let both = task.split("train800val200").unwrap();
    let test = task.split("test").unwrap();
    assert_eq!((train.len(), val.len(), both.len(), test.len()), (6, 2, 8, 4));
    // train800val200 is train800 then val200, line for line.
    let joined: Vec<_> = train.items.iter().chain(&val.items).map(|i| (&i.path, i.label)).collect();
    assert_eq!(both.items.iter().map(|i| (&i.path, i.label)).collect::<Vec<_>>(), joined);
    assert_eq!(train.items[3].label, 6);
    assert_eq!(train.items[3].line, 4);
    assert!(train.items[0].path.ends_with("dtd/images/train800val200/000000.jpg"));
}

#[test]
fn vtab_resize_gives_square_uint8_images_of_the_requested_size() {
    let tmp = tempfile::tempdir().unwrap();
    vtab_task(tmp.path(), "eurosat", 5, 1, 3, 10);
    let task = open_task(&src(Benchmark::Vtab, "eurosat", tmp.path())).unwrap();
    let list = task.split("test").unwrap();
    for size in [16u32, 56] {
        let set = load_images(&list, &Transform::vtab(size), 10, None, 0).unwrap();
        let s = size as usize;
        assert_eq!((set.len, set.height, set.width), (3, s, s));
        assert_eq!(set.pixels().len(), 3 * s * s * 3);
        assert_eq!(set.labels, list.items.iter().map(|i| i.label).collect::<Vec<_>>());
        assert_eq!(set.cache_status(), &CacheStatus::Disabled);
        // Smooth photo-like content: a spread of values, not a constant or an empty buffer.
        let (min, max) = set.pixels().iter().fold((255u8, 0u8), |(a, b), &v| (a.min(v), b.max(v)));
        assert!(min < 80 && max > 180, "{min}..{max}");
    }
}

#[test]
fn colours_survive_decoding_grey_is_replicated_and_alpha_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mine");
    write_png_rgb(&dir.join("red.png"), &image::RgbImage::from_pixel(13, 9, image::Rgb([250, 10, 40])));
    write_png_grey(&dir.join("grey.png"), 8, 8, 77);
    image::RgbaImage::from_pixel(10, 10, image::Rgba([1, 2, 3, 0])).save(dir.join("alpha.png")).unwrap();
    write_text(&dir.join("all.txt"), "red.png 0\ngrey.png 1\nalpha.png 1\n");
    let task = open_task(&src(Benchmark::List, "mine", tmp.path())).unwrap();
    assert_eq!(task.num_classes, 2); // inferred: largest label + 1
    let set = load_images(&task.split("all").unwrap(), &Transform::vtab(5), 2, None, 0).unwrap();
    assert!(set.image(0).chunks(3).all(|p| p == [250, 10, 40]));
    assert!(set.image(1).iter().all(|&v| v == 77));
    assert!(set.image(2).chunks(3).all(|p| p == [1, 2, 3]));
}

#[test]
fn decoding_is_the_same_whatever_the_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    vtab_task(tmp.path(), "svhn", 2, 1, 9, 10);
    let task = open_task(&src(Benchmark::Vtab, "svhn", tmp.path())).unwrap();
    let list = task.split("test").unwrap();
    let run = |threads: usize, tf: Transform| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| load_images(&list, &tf, 10, None, 5).unwrap().pixels().to_vec())
    };
    for tf in [Transform::vtab(24), Transform::fgvc_eval(24), Transform::fgvc_train(24)] {
        assert_eq!(run(1, tf), run(3, tf), "{tf:?}");
    }
}

#[test]
fn fgvc_ids_are_remapped_by_sorting_across_all_splits() {
    let tmp = tempfile::tempdir().unwrap();
    // Raw ids 3, 10, 42 and 7: sorted 3, 7, 10, 42 -> 0, 1, 2, 3.
    fgvc_dataset(tmp.path(), "CUB_200_2011", "images", &[10, 3, 42, 7], 6);
    let task = open_task(&src(Benchmark::Fgvc, "cub", tmp.path())).unwrap();
    assert_eq!(task.num_classes, 200);
    assert_eq!(task.split_names(), ["train", "val", "test"]);
    let raw: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(task.dir.join("val.json")).unwrap()).unwrap();
    let val = task.split("val").unwrap();
    assert_eq!(val.len(), 6);
    assert!(val.json);
    let remap = |id: i64| [3, 7, 10, 42].iter().position(|&x| x == id).unwrap() as i64;
    for item in &val.items {
        let key = item.path.strip_prefix(task.dir.join("images")).unwrap().to_str().unwrap();
        assert_eq!(item.label, remap(raw[key].as_i64().unwrap()), "{key}");
        assert!(item.path.is_file());
    }
    // The short name is accepted as the folder too, and Dogs reads images from Images/.
    fgvc_dataset(tmp.path(), "stanford_dogs", "Images", &[0, 1], 2);
    let dogs = open_task(&src(Benchmark::Fgvc, "stanford_dogs", tmp.path())).unwrap();
    assert!(dogs.split("train").unwrap().items[0].path.starts_with(tmp.path().join("stanford_dogs/Images")));
}

#[test]
fn fgvc_transforms_have_the_right_sizes_and_augmentation_is_seeded() {
    let tmp = tempfile::tempdir().unwrap();
    fgvc_dataset(tmp.path(), "OxfordFlower", "", &[1, 2, 3], 5);
    let task = open_task(&src(Benchmark::Fgvc, "oxford_flowers", tmp.path())).unwrap();
    let train = task.split("train").unwrap();
    let eval = load_images(&task.split("test").unwrap(), &Transform::fgvc_eval(28), 102, None, 0).unwrap();
    assert_eq!((eval.len, eval.height, eval.width, eval.pixels().len()), (5, 28, 28, 5 * 28 * 28 * 3));

    let tf = Transform::RandomResizedCropFlip { size: 20, cache_short_side: 30 };
    let set = AugmentedSet::new(&train, &tf, 102, None).unwrap();
    assert_eq!((set.len(), set.size()), (5, 20));
    // Images are 64..88 x 48..60: stored with the short side at 30, aspect kept.
    for i in 0..set.len() {
        let (h, w) = set.stored_size(i);
        assert_eq!(h.min(w), 30, "image {i}: {h}x{w}");
    }
    let batch = |idx: &[usize], epoch: u64, seed: u64| {
        let mut out = vec![0u8; idx.len() * 20 * 20 * 3];
        set.fill_batch(idx, epoch, seed, &mut out);
        out
    };
    let a = batch(&[0, 1, 2, 3, 4], 0, 7);
    assert_eq!(a, batch(&[0, 1, 2, 3, 4], 0, 7));
    assert_ne!(a, batch(&[0, 1, 2, 3, 4], 1, 7), "a new epoch draws new crops");
    assert_ne!(a, batch(&[0, 1, 2, 3, 4], 0, 8), "another seed draws new crops");
    // An image's view depends on (seed, epoch, index) only, not on the rest of the batch.
    let one = batch(&[3], 0, 7);
    assert_eq!(&a[3 * 1200..4 * 1200], &one[..]);
    // load_images with the training transform gives epoch 0 of the same stream.
    let fixed = load_images(&train, &tf, 102, None, 7).unwrap();
    assert_eq!(fixed.pixels(), &a[..]);
    // A fixed transform is not an AugmentedSet.
    let err = AugmentedSet::new(&train, &Transform::vtab(20), 102, None).unwrap_err().to_string();
    assert!(err.contains("RandomResizedCropFlip"), "{err}");
}

#[test]
fn list_benchmark_reads_classes_txt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pets");
    write_png_grey(&dir.join("a.png"), 4, 4, 1);
    write_text(&dir.join("train.txt"), "a.png 0\n");
    write_text(&dir.join("val.txt"), "a.png 1\n");
    write_text(&dir.join("classes.txt"), "cat\ndog\nbird\n\n");
    let task = open_task(&src(Benchmark::List, "pets", tmp.path())).unwrap();
    assert_eq!(task.num_classes, 3);
    assert_eq!(task.split_names(), ["train", "val"]);
    let err = task.split("test").unwrap_err().to_string();
    assert!(err.contains("no split `test`") && err.contains("train, val"), "{err}");
}

#[test]
fn the_decoded_cache_is_built_then_hit_then_rebuilt_when_stale_or_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    vtab_task(tmp.path(), "kitti", 3, 1, 5, 4);
    let task = open_task(&src(Benchmark::Vtab, "kitti", tmp.path())).unwrap();
    let list = task.split("test").unwrap();
    let tf = Transform::vtab(20);
    let fresh = load_images(&list, &tf, 4, None, 0).unwrap();

    let built = load_images(&list, &tf, 4, Some(&cache), 0).unwrap();
    let CacheStatus::Built { path } = built.cache_status().clone() else {
        panic!("{:?}", built.cache_status())
    };
    assert!(path.starts_with(&cache) && path.is_file());
    assert_eq!(built.pixels(), fresh.pixels());
    assert!(built.is_mapped());
    let leftovers: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temporary files are left: {leftovers:?}");

    let hit = load_images(&list, &tf, 4, Some(&cache), 0).unwrap();
    assert_eq!(hit.cache_status(), &CacheStatus::Hit { path: path.clone() });
    assert_eq!(hit.pixels(), fresh.pixels());
    assert_eq!(hit.labels, fresh.labels);

    // Another size is another file.
    let other = load_images(&list, &Transform::vtab(12), 4, Some(&cache), 0).unwrap();
    assert!(matches!(other.cache_status(), CacheStatus::Built { path: p } if *p != path));

    // A source image replaced (new content, size and mtime): stale.
    write_jpeg(&list.items[2].path, 50, 50, 999);
    let stale = load_images(&list, &tf, 4, Some(&cache), 0).unwrap();
    match stale.cache_status() {
        CacheStatus::Rebuilt { reason, .. } => assert!(reason.contains("stale"), "{reason}"),
        s => panic!("{s:?}"),
    }
    let redecoded = load_images(&list, &tf, 4, None, 0).unwrap();
    assert_eq!(stale.pixels(), redecoded.pixels());
    assert_ne!(stale.pixels(), fresh.pixels());
    drop((built, hit, stale));

    // One flipped pixel byte: the data checksum catches it.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let fixed = load_images(&list, &tf, 4, Some(&cache), 0).unwrap();
    match fixed.cache_status() {
        CacheStatus::Rebuilt { reason, .. } => assert!(reason.contains("checksum"), "{reason}"),
        s => panic!("{s:?}"),
    }
    assert_eq!(fixed.pixels(), redecoded.pixels());
    drop(fixed);

    // A cut-off file: the length check catches it.
    truncate(&path, 0.5);
    let again = load_images(&list, &tf, 4, Some(&cache), 0).unwrap();
    match again.cache_status() {
        CacheStatus::Rebuilt { reason, .. } => assert!(reason.contains("truncated"), "{reason}"),
        s => panic!("{s:?}"),
    }
    assert_eq!(again.pixels(), redecoded.pixels());
}

#[test]
fn the_augmented_set_caches_its_decoded_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    fgvc_dataset(tmp.path(), "nabirds", "images", &[5, 6], 4);
    let task = open_task(&src(Benchmark::Fgvc, "nabirds", tmp.path())).unwrap();
    let list = task.split("train").unwrap();
    let tf = Transform::fgvc_train(16);
    let a = AugmentedSet::new(&list, &tf, 555, Some(&cache)).unwrap();
    assert!(matches!(a.cache_status(), CacheStatus::Built { .. }));
    let b = AugmentedSet::new(&list, &tf, 555, Some(&cache)).unwrap();
    assert!(matches!(b.cache_status(), CacheStatus::Hit { .. }));
    let (mut x, mut y) = (vec![0u8; 4 * 16 * 16 * 3], vec![0u8; 4 * 16 * 16 * 3]);
    a.fill_batch(&[0, 1, 2, 3], 2, 1, &mut x);
    b.fill_batch(&[0, 1, 2, 3], 2, 1, &mut y);
    assert_eq!(x, y);
}

#[test]
fn an_unwritable_cache_falls_back_to_memory() {
    let tmp = tempfile::tempdir().unwrap();
    vtab_task(tmp.path(), "dmlab", 1, 1, 2, 6);
    let task = open_task(&src(Benchmark::Vtab, "dmlab", tmp.path())).unwrap();
    let list = task.split("test").unwrap();
    // A file where the cache folder should be.
    let blocker = tmp.path().join("not-a-dir");
    write_text(&blocker, "x");
    let set = load_images(&list, &Transform::vtab(8), 6, Some(&blocker.join("sub")), 0).unwrap();
    assert!(matches!(set.cache_status(), CacheStatus::Unavailable { .. }), "{:?}", set.cache_status());
    assert_eq!(set.len, 2);
}

// ---- bad input: clear errors that name the file and the line ----

#[test]
fn a_missing_list_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = vtab_task(tmp.path(), "cifar", 2, 1, 1, 100);
    std::fs::remove_file(dir.join("val200.txt")).unwrap();
    let task = open_task(&src(Benchmark::Vtab, "cifar", tmp.path())).unwrap();
    let err = task.split("val200").unwrap_err();
    assert!(matches!(err, DataError::MissingSplitFile { .. }));
    let msg = err.to_string();
    assert!(msg.contains("cifar/val200.txt") && msg.contains("missing"), "{msg}");
    let err = open_task(&src(Benchmark::Vtab, "sun397", tmp.path())).unwrap_err().to_string();
    assert!(err.contains("sun397") && err.contains("train800.txt"), "{err}");
}

#[test]
fn a_line_without_a_label_and_a_label_out_of_range_name_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = vtab_task(tmp.path(), "kitti", 3, 1, 2, 4);
    let lines = std::fs::read_to_string(dir.join("train800.txt")).unwrap();
    let mut l: Vec<String> = lines.lines().map(String::from).collect();
    l[1] = l[1].rsplit_once(' ').unwrap().0.to_string();
    write_text(&dir.join("train800.txt"), &(l.join("\n") + "\n"));
    let test = std::fs::read_to_string(dir.join("test.txt")).unwrap();
    let first = test.lines().next().unwrap();
    let relabelled = format!("{} 4", first.rsplit_once(' ').unwrap().0);
    write_text(&dir.join("test.txt"), &test.replacen(first, &relabelled, 1));
    let task = open_task(&src(Benchmark::Vtab, "kitti", tmp.path())).unwrap();

    let err = task.split("train800").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("kitti/train800.txt:2") && msg.contains("no label"), "{msg}");

    let err = task.split("test").unwrap_err();
    let DataError::LabelOutOfRange { at, label, classes, .. } = &err else { panic!("{err}") };
    assert_eq!((*label, *classes), (4, 4));
    assert!(at.file.ends_with("kitti/test.txt"));
    assert!(err.to_string().contains("0..=3"), "{err}");
}

#[test]
fn unreadable_and_truncated_images_name_the_file_and_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bad");
    write_jpeg(&dir.join("ok.jpg"), 64, 48, 1);
    write_jpeg(&dir.join("cut.jpg"), 64, 48, 2);
    truncate(&dir.join("cut.jpg"), 0.6);
    write_png_rgb(&dir.join("cut.png"), &photo(40, 40, 3));
    truncate(&dir.join("cut.png"), 0.5);
    write_text(&dir.join("text.jpg"), "this is not an image");
    write_text(&dir.join("classes.txt"), "a\nb\n");
    for (i, name) in ["cut.jpg", "cut.png", "text.jpg", "gone.jpg"].iter().enumerate() {
        write_text(&dir.join(format!("s{i}.txt")), &format!("ok.jpg 0\n{name} 1\n"));
    }
    let task = open_task(&src(Benchmark::List, "bad", tmp.path())).unwrap();
    for (i, (name, what)) in [
        ("cut.jpg", "truncated"),
        ("cut.png", "decode"),
        ("text.jpg", "not a JPEG or PNG"),
        ("gone.jpg", "not found"),
    ]
    .iter()
    .enumerate()
    {
        let list = task.split(&format!("s{i}")).unwrap();
        let err = load_images(&list, &Transform::vtab(8), 2, None, 0).unwrap_err();
        let DataError::Image { image, at, .. } = &err else { panic!("{err}") };
        assert!(image.ends_with(name));
        assert_eq!(at.line, 2);
        let msg = err.to_string();
        assert!(msg.contains(name) && msg.contains(&format!("s{i}.txt:2")) && msg.contains(what), "{msg}");
    }
}

#[test]
fn an_empty_split_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = vtab_task(tmp.path(), "dtd", 2, 1, 1, 47);
    write_text(&dir.join("test.txt"), "\n# nothing here\n");
    let task = open_task(&src(Benchmark::Vtab, "dtd", tmp.path())).unwrap();
    let err = task.split("test").unwrap_err();
    assert!(matches!(err, DataError::EmptySplit { .. }), "{err}");
    assert!(err.to_string().contains("dtd/test.txt: the split is empty"), "{err}");
}

#[test]
fn fgvc_json_problems_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fgvc_dataset(tmp.path(), "Stanford-cars", "", &[1, 2], 3);
    write_text(&dir.join("val.json"), "{\"a.jpg\": 1,");
    let err = open_task(&src(Benchmark::Fgvc, "stanford_cars", tmp.path())).unwrap_err().to_string();
    assert!(err.contains("val.json") && err.contains("line 1"), "{err}");
    write_text(&dir.join("val.json"), "{\"a.jpg\": \"one\"}");
    let task = open_task(&src(Benchmark::Fgvc, "stanford_cars", tmp.path())).unwrap();
    let err = task.split("val").unwrap_err().to_string();
    assert!(err.contains("val.json (entry 1)") && err.contains("not an integer"), "{err}");
    // More distinct ids than the dataset has classes.
    let many: Vec<String> = (0..197).map(|i| format!("\"x{i}.jpg\": {i}")).collect();
    write_text(&dir.join("val.json"), &format!("{{{}}}", many.join(",")));
    let err = open_task(&src(Benchmark::Fgvc, "stanford_cars", tmp.path())).unwrap_err().to_string();
    assert!(err.contains("197 distinct class ids") && err.contains("196 classes"), "{err}");
}

#[test]
fn list_paths_that_leave_the_task_folder_are_refused_unless_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mine");
    write_png_grey(&dir.join("a.png"), 4, 4, 1);
    write_png_grey(&tmp.path().join("outside.png"), 4, 4, 1);
    write_text(&dir.join("classes.txt"), "a\nb\n");
    write_text(&dir.join("train.txt"), "a.png 0\n/etc/passwd 0\n\n../outside.png 1\n");
    let mut task = open_task(&src(Benchmark::List, "mine", tmp.path())).unwrap();
    let err = task.split("train").unwrap_err().to_string();
    assert!(
        err.contains("mine/train.txt:2: `/etc/passwd` is an absolute path outside the task folder")
            && err.contains("data.allow_outside_paths = true"),
        "{err}"
    );
    // `data check` lists each such line
    let report = mlae_data::check(Benchmark::List, tmp.path(), Some("mine"), &Default::default()).unwrap();
    let text = report.to_string();
    assert!(
        text.contains("train.txt:2:") && text.contains("train.txt:4: `../outside.png` climbs out"),
        "{text}"
    );
    task.allow_outside_paths = true;
    let list = task.split("train").unwrap();
    assert_eq!(list.len(), 3);

    // JSON split files likewise
    fgvc_dataset(tmp.path(), "CUB_200_2011", "images", &[0, 1], 2);
    let val = tmp.path().join("CUB_200_2011/val.json");
    write_text(&val, r#"{"../../outside.png": 0}"#);
    let task = open_task(&src(Benchmark::Fgvc, "cub", tmp.path())).unwrap();
    let err = task.split("val").unwrap_err().to_string();
    assert!(err.contains("val.json (entry 1): `images/../../outside.png` climbs out"), "{err}");
}

#[test]
fn an_image_size_no_allocator_can_give_is_an_error_not_an_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mine");
    write_png_grey(&dir.join("a.png"), 4, 4, 1);
    write_text(&dir.join("train.txt"), "a.png 0\na.png 1\n");
    let task = open_task(&src(Benchmark::List, "mine", tmp.path())).unwrap();
    let list = task.split("train").unwrap();
    // 10^7 x 10^7 x 3 bytes is more than a 48-bit address space: no overcommit gives it
    let tf = Transform::Resize { size: 10_000_000 };
    for cache in [None, Some(tmp.path().join("cache"))] {
        let err = load_images(&list, &tf, 2, cache.as_deref(), 0).unwrap_err();
        assert!(matches!(err, DataError::OutOfMemory { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("cannot allocate") && msg.contains("mine/") && msg.contains("not enough memory"),
            "{msg}"
        );
    }
}
