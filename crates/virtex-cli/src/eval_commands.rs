//! `virtex eval-voc07` and `virtex eval-captions`: VirTex's downstream evaluation
//! (`scripts/clf_voc07.py`, `virtex/utils/metrics.py`) on top of `virtex-eval`.
//!
//! ```text
//! virtex eval-voc07 --weights bicaptioning_R_50_L1_H2048.pth --voc-root datasets/VOC2007 \
//!     --device cuda --out voc07.json
//! virtex eval-voc07 --run runs/bicaptioning --voc-root datasets/VOC2007 --device cuda [--watch]
//! virtex eval-captions --predictions captions.json \
//!     --annotations datasets/coco/annotations/captions_val2017.json --out scores.json \
//!     [--spice-jar pycocoevalcap/spice/spice-1.0.jar]
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;
use virtex_backbone::WeightsFormat;
use virtex_data::ImageTransforms;
use virtex_device::{with_backend, write_atomically, DeviceSpec};
use virtex_eval::{
    evaluate_captions, evaluate_voc07, read_coco_annotations, read_predictions, spice_availability,
    CaptionEvaluation, Features, ImageCaptionScore, ImageId, JarOrigin, Spice, SpiceUnavailable,
    Voc07Result, Voc07Split, Voc07SvmConfig, SKLEARN_RANDOM_STATE_0_SEED, SPICE_JAR_ENV,
};

use crate::checks::{
    apply_image_limit, check_image_sizes, check_output, check_positive, image_side_parser,
    max_image_pixels_parser, positive_count_parser,
};
use crate::error::CliError;
use crate::features::{extract_features, load_backbone, progress_bar, FeatureKind};
use crate::model_paths::resolve_model_file;

/// Writes `value` as pretty JSON with a final newline, atomically.
fn write_json<T: Serialize>(out: &Path, value: &T) -> Result<(), CliError> {
    let output_error = |message: String| CliError::Output {
        path: out.to_path_buf(),
        message,
    };
    let text = serde_json::to_string_pretty(value).map_err(|err| output_error(err.to_string()))?;
    write_atomically(out, |temporary| std::fs::write(temporary, text + "\n"))
        .map_err(|err| output_error(err.to_string()))
}

/// Arguments of `virtex eval-voc07`: PASCAL VOC07 classification with linear SVMs on
/// L2-normalised global-average-pooled backbone features (upstream's protocol), of one weights
/// file (`--weights`) or of every checkpoint of a training run (`--run`: one [`Voc07Record`]
/// per checkpoint in `RUN/voc07.jsonl`, the best as [`Voc07Best`] in `RUN/voc07_best.json`).
///
/// [`Voc07Record`]: crate::Voc07Record
/// [`Voc07Best`]: crate::Voc07Best
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["weights", "run"])))]
pub struct EvalVoc07Args {
    /// Backbone weights: a full VirTex checkpoint, the torch-hub backbone, torchvision `.pth`,
    /// safetensors or burnpack (detected from the file); or a released name (`virtex weights
    /// list`, e.g. `bicaptioning_R_50_L1_H2048`), taken from the weights cache and downloaded
    /// first if absent; or one checkpoint directory or a run's newest checkpoint (`--run`
    /// evaluates them all).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// A training run directory (`pretrain_coco --run-dir`): evaluate each of its
    /// `checkpoint_NNNNNNNN/` not yet in `RUN/voc07.jsonl`, in iteration order, appending one
    /// line per checkpoint, and mark the best in `RUN/voc07_best.json`. The architecture comes
    /// from each checkpoint's `model.safetensors`.
    #[arg(long, value_name = "RUN")]
    pub run: Option<PathBuf>,
    /// With `--run`: keep polling the run for new checkpoints every SECONDS (default 60) until
    /// its trainer has exited (`RUN/.lock` no longer held) and every checkpoint is evaluated.
    /// Ctrl-C stops cleanly (a checkpoint being evaluated is left for the next run).
    #[arg(
        long,
        requires = "run",
        value_name = "SECONDS",
        num_args = 0..=1,
        default_missing_value = "60",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub watch: Option<u64>,
    /// With `--run`: MiB of decoded and transformed VOC images kept in memory between
    /// checkpoints (the first batches of each split; 0: decode every image for every
    /// checkpoint). At 224 × 224 an image takes 588 KiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_IMAGE_CACHE_MIB)]
    pub image_cache_mib: usize,
    /// Force the weights format: pytorch | safetensors | burnpack.
    #[arg(long, conflicts_with = "run")]
    pub weights_format: Option<WeightsFormat>,
    /// `VOCdevkit` or `VOCdevkit/VOC2007` (with `JPEGImages/` and `ImageSets/Main/`).
    #[arg(long)]
    pub voc_root: PathBuf,
    /// Backbone architecture (torchvision name; with `--run` it comes from each checkpoint).
    #[arg(long, default_value = "resnet50", conflicts_with = "run")]
    pub arch: String,
    /// Split the SVMs are trained (and cross-validated) on.
    #[arg(long, default_value = "trainval")]
    pub train_split: String,
    /// Split the SVMs are tested on.
    #[arg(long, default_value = "test")]
    pub test_split: String,
    /// Shorter side after resizing (upstream: 256; 1 to 4096).
    #[arg(long, default_value_t = 256, value_parser = image_side_parser())]
    pub short_side: u32,
    /// Side of the centre crop (upstream: 224; 1 to 4096, at most --short-side).
    #[arg(long, default_value_t = 224, value_parser = image_side_parser())]
    pub crop: u32,
    /// Images per forward pass (at least 1).
    #[arg(long, default_value_t = 32, value_parser = positive_count_parser())]
    pub batch_size: usize,
    /// cpu | cuda | cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Largest image (width × height) the decoder accepts; default: virtex-data's limit
    /// (178 956 970 pixels, PIL's decompression-bomb threshold). A small file can claim a huge
    /// size: raise it only for genuinely huge images.
    #[arg(long, value_parser = max_image_pixels_parser())]
    pub max_image_pixels: Option<u64>,
    /// Seed of the SVM solver's coordinate order (the default is scikit-learn's for
    /// `random_state=0`; upstream leaves it random).
    #[arg(long, default_value_t = SKLEARN_RANDOM_STATE_0_SEED)]
    pub seed: u32,
    /// Write per-class results and mAP as JSON here (never the weights, nor inside the VOC root
    /// or a training checkpoint). With `--run` the results go to `RUN/voc07.jsonl`.
    #[arg(long, conflicts_with = "run")]
    pub out: Option<PathBuf>,
}

/// The default of `--image-cache-mib`.
pub const DEFAULT_IMAGE_CACHE_MIB: usize = 2048;

/// Reads the train and test splits of `voc_root`, refusing an empty split or a listed image
/// that does not exist.
pub(crate) fn read_voc07_splits(
    voc_root: &Path,
    train_split: &str,
    test_split: &str,
) -> Result<(Voc07Split, Voc07Split), CliError> {
    let train = Voc07Split::read(voc_root, train_split)?;
    let test = Voc07Split::read(voc_root, test_split)?;
    for split in [&train, &test] {
        if split.is_empty() {
            return Err(CliError::Input(format!(
                "the `{}` split of `{}` lists no image",
                split.split,
                split.root.display()
            )));
        }
        if let Some(missing) = split.image_paths().into_iter().find(|p| !p.is_file()) {
            return Err(CliError::Input(format!(
                "image `{}` of the `{}` split does not exist",
                missing.display(),
                split.split
            )));
        }
    }
    Ok((train, test))
}

/// What `eval-voc07 --out` writes.
#[derive(Debug, Serialize)]
struct Voc07Report<'a> {
    weights: &'a Path,
    arch: &'a str,
    voc_root: &'a Path,
    train_split: &'a str,
    test_split: &'a str,
    train_images: usize,
    test_images: usize,
    feature_dim: usize,
    svm: &'a Voc07SvmConfig,
    #[serde(flatten)]
    result: &'a Voc07Result,
}

impl EvalVoc07Args {
    /// Runs the command. With `--weights`: reads both splits, extracts features, trains and
    /// tests the SVMs, prints a per-class table and the mAP, and writes the JSON report if
    /// `--out` is given. With `--run`: evaluates the run's checkpoints not yet recorded (and,
    /// with `--watch`, new ones until the trainer exits), then prints the table of all
    /// records with the best marked; Ctrl-C stops it between feature batches or checkpoints.
    pub fn run(self) -> Result<(), CliError> {
        if self.run.is_some() {
            return crate::voc07_sweep::run_sweep(&self, &crate::voc07_sweep::interrupt_flag());
        }
        if self.watch.is_some() {
            return Err(CliError::Usage(
                "--watch needs --run RUN_DIRECTORY (it watches a training run for new \
                 checkpoints)"
                    .into(),
            ));
        }
        self.run_weights()
    }

    /// `--weights`: one file.
    fn run_weights(self) -> Result<(), CliError> {
        let device = self.device.check()?;
        check_image_sizes(self.short_side, self.crop)?;
        check_positive("--batch-size", self.batch_size)?;
        apply_image_limit(self.max_image_pixels)?;
        let weights = self.weights.clone().ok_or_else(|| {
            CliError::Usage("eval-voc07 needs --weights FILE or --run RUN_DIRECTORY".into())
        })?;
        if let Some(out) = &self.out {
            check_output(out, &[&weights, &self.voc_root])?;
        }
        let (train, test) = read_voc07_splits(&self.voc_root, &self.train_split, &self.test_split)?;
        // A released name is resolved (and possibly downloaded) only once the splits are known
        // to be readable; the cached file it names is then checked against --out like any input.
        let weights = {
            let resolved = resolve_model_file(&weights)?;
            if let (Some(out), true) = (&self.out, resolved != weights) {
                check_output(out, &[resolved.as_path()])?;
            }
            resolved
        };
        let transforms = ImageTransforms::downstream_val(self.short_side, self.crop)?;
        let (train_features, test_features) = with_backend!(device, |B, burn_device| {
            let model =
                load_backbone::<B>(&self.arch, &weights, self.weights_format, &burn_device)?;
            let extract = |split: &Voc07Split| -> Result<Features, CliError> {
                let paths = split.image_paths();
                let progress = progress_bar(paths.len(), &format!("{} features", split.split));
                let matrix = extract_features(
                    &model,
                    &paths,
                    &transforms,
                    FeatureKind::PooledL2,
                    self.batch_size,
                    &burn_device,
                    &progress,
                )?;
                progress.finish_and_clear();
                let dim = matrix.shape.get(1).copied().unwrap_or(0);
                Features::from_f32(&matrix.values, paths.len(), dim).map_err(CliError::from)
            };
            (extract(&train)?, extract(&test)?)
        });
        let config = Voc07SvmConfig {
            seed: self.seed,
            ..Voc07SvmConfig::default()
        };
        eprintln!(
            "training {} × {} SVMs on {} {} images ({}-d features)…",
            train.class_names.len(),
            config.costs.len() * (config.folds + 1),
            train.len(),
            train.split,
            train_features.dim()
        );
        let result = evaluate_voc07(&config, &train, &train_features, &test, &test_features)?;

        println!(
            "{:<14} {:>7} {:>9} {:>8}",
            "class", "best C", "CV AP", "test AP"
        );
        for class in &result.classes {
            println!(
                "{:<14} {:>7} {:>9.2} {:>8.2}{}",
                class.class_name,
                class.best_cost,
                100.0 * class.best_cv_ap,
                100.0 * class.test_ap,
                if class.unconverged_fits > 0 {
                    format!("  ({} fits hit max_iter)", class.unconverged_fits)
                } else {
                    String::new()
                }
            );
        }
        println!("mAP {:.2}", result.map);

        if let Some(out) = &self.out {
            let report = Voc07Report {
                weights: &weights,
                arch: &self.arch,
                voc_root: &self.voc_root,
                train_split: &self.train_split,
                test_split: &self.test_split,
                train_images: train.len(),
                test_images: test.len(),
                feature_dim: train_features.dim(),
                svm: &config,
                result: &result,
            };
            write_json(out, &report)?;
            eprintln!("wrote {}", out.display());
        }
        Ok(())
    }
}

/// Arguments of `virtex eval-captions`: CIDEr-D and BLEU-1..4 of predicted captions against
/// COCO references, tokenised as coco-caption does (no Java needed), and SPICE when Stanford's
/// SPICE jar and Java are available (skipped otherwise, saying why).
#[derive(Debug, Args)]
pub struct EvalCaptionsArgs {
    /// Predictions: `[{"image_id": …, "caption": "…"}, …]`.
    #[arg(long)]
    pub predictions: PathBuf,
    /// COCO captions annotation file, e.g. `captions_val2017.json`. Every image in it is
    /// scored; images without a prediction count as an empty caption (as VirTex does).
    #[arg(long)]
    pub annotations: PathBuf,
    /// Include per-image scores and tokenised predictions in the JSON report.
    #[arg(long)]
    pub per_image: bool,
    /// Stanford's SPICE jar (`spice-1.0.jar`, with its `lib/` of Stanford CoreNLP jars beside
    /// it), run with `$JAVA_HOME/bin/java` or the `java` on PATH; default: $VIRTEX_SPICE_JAR.
    /// Without a jar or without Java, SPICE is skipped (`SPICE skipped: <reason>` on stderr,
    /// `"spice": null` in the report); a jar path that does not exist is an error.
    #[arg(long)]
    pub spice_jar: Option<PathBuf>,
    /// Directory of SPICE's parse cache (created if missing; default: `cache/` next to the jar,
    /// as pycocoevalcap). Repeated evaluations against the same references get much faster.
    #[arg(long, conflicts_with = "spice_no_cache")]
    pub spice_cache: Option<PathBuf>,
    /// Run SPICE without its parse cache.
    #[arg(long)]
    pub spice_no_cache: bool,
    /// Write the scores as JSON here (never one of the inputs, nor the SPICE jar).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What `eval-captions --out` writes (metric names as coco-caption's `COCOEvalCap.eval`).
#[derive(Debug, Serialize)]
struct CaptionReport<'a> {
    predictions: &'a Path,
    annotations: &'a Path,
    #[serde(rename = "CIDEr")]
    cider: f64,
    #[serde(rename = "Bleu_1")]
    bleu_1: f64,
    #[serde(rename = "Bleu_2")]
    bleu_2: f64,
    #[serde(rename = "Bleu_3")]
    bleu_3: f64,
    #[serde(rename = "Bleu_4")]
    bleu_4: f64,
    /// `100 × CIDEr`, the number VirTex's evaluator prints.
    #[serde(rename = "CIDEr_x100")]
    cider_x100: f64,
    images: usize,
    missing_predictions: usize,
    ignored_predictions: usize,
    /// Mean SPICE F-score (`All.f` over images, coco-caption scale; VirTex prints `100 ×`
    /// this); `null` when SPICE was skipped.
    spice: Option<f64>,
    /// Why SPICE was skipped; absent when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    spice_skipped: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_image: Option<Vec<ImageReport<'a>>>,
}

/// One element of the report's `per_image`: the CIDEr-D/BLEU scores, and SPICE when it ran.
#[derive(Debug, Serialize)]
struct ImageReport<'a> {
    #[serde(flatten)]
    scores: &'a ImageCaptionScore,
    #[serde(skip_serializing_if = "Option::is_none")]
    spice: Option<f64>,
}

impl EvalCaptionsArgs {
    /// The SPICE runner, or why SPICE is skipped; an error for a jar path that does not exist
    /// (a typo should not silently drop a metric).
    fn spice(&self) -> Result<Result<Spice, String>, CliError> {
        match spice_availability(self.spice_jar.as_deref()) {
            Ok(spice) => Ok(Ok(if self.spice_no_cache {
                spice.with_cache_dir(None)
            } else if let Some(cache) = &self.spice_cache {
                spice.with_cache_dir(Some(cache.clone()))
            } else {
                spice
            })),
            Err(SpiceUnavailable::NoJar) => Ok(Err(format!(
                "no SPICE jar given (pass --spice-jar or set {SPICE_JAR_ENV})"
            ))),
            Err(SpiceUnavailable::JarNotFound { path, origin }) => {
                let (option, fix) = match origin {
                    JarOrigin::Explicit => ("--spice-jar", "leave out --spice-jar"),
                    JarOrigin::Environment => (SPICE_JAR_ENV, "unset it"),
                };
                Err(CliError::Input(format!(
                    "the SPICE jar `{}` ({option}) does not exist or is not a file; fix the \
                     path, or {fix} to skip SPICE",
                    path.display()
                )))
            }
            Err(other) => Ok(Err(other.to_string())),
        }
    }
}

impl EvalCaptionsArgs {
    /// Runs the command: reads both files, scores, prints and optionally writes JSON.
    pub fn run(self) -> Result<(), CliError> {
        if let Some(out) = &self.out {
            let mut inputs: Vec<&Path> = vec![&self.predictions, &self.annotations];
            inputs.extend(self.spice_jar.as_deref());
            check_output(out, &inputs)?;
        }
        let spice = self.spice()?;
        let ground_truth = read_coco_annotations(&self.annotations)?;
        if ground_truth.is_empty() {
            return Err(CliError::Input(format!(
                "`{}` holds no caption annotation",
                self.annotations.display()
            )));
        }
        let predictions = read_predictions(&self.predictions)?;
        let (predictions, duplicates) = last_prediction_per_image(predictions);
        if let Some(warning) = duplicates.warning(&self.predictions) {
            eprintln!("{warning}");
        }
        let evaluation: CaptionEvaluation = evaluate_captions(&predictions, &ground_truth)?;
        if evaluation.missing_predictions > 0 {
            eprintln!(
                "warning: {} of {} images have no prediction and are scored as an empty caption",
                evaluation.missing_predictions, evaluation.images
            );
        }
        if evaluation.ignored_predictions > 0 {
            eprintln!(
                "warning: {} predicted images are not in `{}` and are ignored",
                evaluation.ignored_predictions,
                self.annotations.display()
            );
        }
        println!(
            "CIDEr-D {:.2}  (×100 as VirTex reports; coco-caption scale {:.4})",
            100.0 * evaluation.cider,
            evaluation.cider
        );
        for (n, value) in evaluation.bleu.iter().enumerate() {
            println!("BLEU-{} {:.2}", n + 1, 100.0 * value);
        }
        let spice = match spice {
            Ok(spice) => {
                eprintln!(
                    "running SPICE (`{}` -jar `{}`) on {} images…",
                    spice.java().display(),
                    spice.jar().display(),
                    evaluation.images
                );
                let scores = spice.evaluate(&predictions, &ground_truth)?;
                println!(
                    "SPICE {:.2}  (×100 as VirTex reports; coco-caption scale {:.4})",
                    100.0 * scores.spice,
                    scores.spice
                );
                if scores.spice.is_nan() {
                    eprintln!(
                        "warning: SPICE is NaN: {} images have a non-numeric All.f in the jar's \
                         output (pycocoevalcap's mean is NaN then too)",
                        scores.nan_images()
                    );
                }
                Ok(scores)
            }
            Err(reason) => {
                eprintln!("SPICE skipped: {reason}");
                Err(reason)
            }
        };
        println!("images {}", evaluation.images);
        if let Some(out) = &self.out {
            let report = CaptionReport {
                predictions: &self.predictions,
                annotations: &self.annotations,
                cider: evaluation.cider,
                bleu_1: evaluation.bleu[0],
                bleu_2: evaluation.bleu[1],
                bleu_3: evaluation.bleu[2],
                bleu_4: evaluation.bleu[3],
                cider_x100: 100.0 * evaluation.cider,
                images: evaluation.images,
                missing_predictions: evaluation.missing_predictions,
                ignored_predictions: evaluation.ignored_predictions,
                spice: spice.as_ref().ok().map(|scores| scores.spice),
                spice_skipped: spice.as_ref().err().map(String::as_str),
                per_image: self.per_image.then(|| {
                    // `Spice::evaluate` scores the ground-truth images in ground-truth order,
                    // as `evaluate_captions` does.
                    let spice_per_image = spice.as_ref().ok().map(|s| s.per_image.as_slice());
                    evaluation
                        .per_image
                        .iter()
                        .enumerate()
                        .map(|(index, scores)| ImageReport {
                            scores,
                            spice: spice_per_image
                                .and_then(|all| all.get(index))
                                .filter(|image| image.image_id == scores.image_id)
                                .map(|image| image.all.f),
                        })
                        .collect()
                }),
            };
            write_json(out, &report)?;
            eprintln!("wrote {}", out.display());
        }
        Ok(())
    }
}

/// Image ids that have more than one prediction, in order of first appearance.
#[derive(Debug, Default, PartialEq)]
struct DuplicatePredictions {
    /// `(id, number of predictions)` for each id predicted more than once.
    ids: Vec<(ImageId, usize)>,
}

impl DuplicatePredictions {
    /// How many ids [`DuplicatePredictions::warning`] lists at most.
    const SHOWN: usize = 5;

    /// The stderr warning, or `None` without duplicates.
    fn warning(&self, file: &Path) -> Option<String> {
        if self.ids.is_empty() {
            return None;
        }
        let extra: usize = self.ids.iter().map(|(_, count)| count - 1).sum();
        let mut shown: Vec<String> = self
            .ids
            .iter()
            .take(Self::SHOWN)
            .map(|(id, count)| format!("{id} ({count}×)"))
            .collect();
        if self.ids.len() > Self::SHOWN {
            shown.push(format!("… {} more", self.ids.len() - Self::SHOWN));
        }
        let ids = match self.ids.len() {
            1 => "1 image id has".to_string(),
            n => format!("{n} image ids have"),
        };
        Some(format!(
            "warning: {ids} several predictions in `{}` ({extra} extra predictions): {}; the \
             last prediction of each id in the file is scored, the others are ignored",
            file.display(),
            shown.join(", ")
        ))
    }
}

/// One prediction per image id, the last one in file order (a predictions file from two runs
/// concatenated, or a buggy script, may repeat ids), in order of first appearance; and the ids
/// that repeat.
fn last_prediction_per_image(
    predictions: Vec<(ImageId, String)>,
) -> (Vec<(ImageId, String)>, DuplicatePredictions) {
    let mut position: HashMap<ImageId, usize> = HashMap::new();
    let mut unique: Vec<(ImageId, String)> = Vec::with_capacity(predictions.len());
    let mut counts: Vec<usize> = Vec::with_capacity(predictions.len());
    for (id, caption) in predictions {
        match position.get(&id) {
            Some(&index) => {
                unique[index].1 = caption;
                counts[index] += 1;
            }
            None => {
                position.insert(id.clone(), unique.len());
                unique.push((id, caption));
                counts.push(1);
            }
        }
    }
    let ids = unique
        .iter()
        .zip(&counts)
        .filter(|(_, &count)| count > 1)
        .map(|((id, _), &count)| (id.clone(), count))
        .collect();
    (unique, DuplicatePredictions { ids })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval_fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../virtex-eval/tests/fixtures")
            .join(name)
    }

    fn read_json(path: &Path) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The caption fixture of `tools/reference/eval_metrics.py`: pycocoevalcap's numbers.
    #[test]
    fn eval_captions_reports_pycocoevalcap_scores() {
        let fixture = read_json(&eval_fixture("caption_metrics.json"));
        let directory = tempfile::tempdir().unwrap();
        let annotations = directory.path().join("captions.json");
        let predictions = directory.path().join("predictions.json");
        std::fs::write(&annotations, fixture["coco"]["annotations"].to_string()).unwrap();
        std::fs::write(&predictions, fixture["coco"]["predictions"].to_string()).unwrap();
        let out = directory.path().join("scores.json");
        EvalCaptionsArgs {
            predictions,
            annotations,
            per_image: true,
            spice_jar: None,
            spice_cache: None,
            spice_no_cache: false,
            out: Some(out.clone()),
        }
        .run()
        .unwrap();
        let report = read_json(&out);
        let scores = &fixture["coco"]["scores"];
        let cider = report["CIDEr"].as_f64().unwrap();
        assert!((cider - scores["cider"].as_f64().unwrap()).abs() < 1e-6);
        for n in 0..4 {
            let ours = report[format!("Bleu_{}", n + 1)].as_f64().unwrap();
            assert!((ours - scores["bleu"][n].as_f64().unwrap()).abs() < 1e-6);
        }
        assert_eq!(report["missing_predictions"], 1);
        assert_eq!(report["per_image"].as_array().unwrap().len(), 10);
    }

    /// The tiny VOC-layout fixture end to end with a real (random) ResNet-18 file: feature rows
    /// must line up with the split's images, so the report equals the library run on features
    /// extracted image by image.
    #[test]
    fn eval_voc07_runs_on_the_tiny_voc_layout() {
        type B = virtex_device::CpuBackend;
        let directory = tempfile::tempdir().unwrap();
        let weights = directory.path().join("resnet18.safetensors");
        let device = Default::default();
        let model = virtex_backbone::ResNetConfig::resnet18()
            .with_zero_init_residual(false)
            .init::<B>(&device);
        model.save_torchvision_safetensors(&weights).unwrap();
        let voc_root = eval_fixture("voc07_tiny");
        let out = directory.path().join("voc07.json");
        let (short_side, crop) = (64, 56);
        let transforms = ImageTransforms::downstream_val(short_side, crop).unwrap();
        EvalVoc07Args {
            weights: Some(weights.clone()),
            run: None,
            watch: None,
            image_cache_mib: DEFAULT_IMAGE_CACHE_MIB,
            weights_format: None,
            voc_root: voc_root.clone(),
            arch: "resnet18".into(),
            train_split: "trainval".into(),
            test_split: "test".into(),
            short_side,
            crop,
            batch_size: 5,
            device: DeviceSpec::Cpu,
            max_image_pixels: None,
            seed: SKLEARN_RANDOM_STATE_0_SEED,
            out: Some(out.clone()),
        }
        .run()
        .unwrap();
        let report = read_json(&out);
        assert_eq!(report["train_images"], 24);
        assert_eq!(report["test_images"], 12);
        assert_eq!(report["feature_dim"], 512);

        // The same protocol on features extracted one image at a time.
        let one_by_one = |split: &Voc07Split| {
            let mut values = Vec::new();
            for path in split.image_paths() {
                let progress = indicatif::ProgressBar::hidden();
                let matrix = extract_features(
                    &model,
                    &[path],
                    &transforms,
                    FeatureKind::PooledL2,
                    1,
                    &device,
                    &progress,
                )
                .unwrap();
                values.extend(matrix.values);
            }
            Features::from_f32(&values, split.len(), 512).unwrap()
        };
        let train = Voc07Split::read(&voc_root, "trainval").unwrap();
        let test = Voc07Split::read(&voc_root, "test").unwrap();
        let expected = evaluate_voc07(
            &Voc07SvmConfig::default(),
            &train,
            &one_by_one(&train),
            &test,
            &one_by_one(&test),
        )
        .unwrap();
        let classes = report["classes"].as_array().unwrap();
        assert_eq!(classes.len(), 3);
        for (ours, theirs) in classes.iter().zip(&expected.classes) {
            assert_eq!(ours["class_name"], theirs.class_name.as_str());
            assert_eq!(ours["best_cost"].as_f64().unwrap(), theirs.best_cost);
            // Batched and one-by-one convolutions may round differently: AP tolerance 1e-3.
            assert!((ours["test_ap"].as_f64().unwrap() - theirs.test_ap).abs() < 1e-3);
        }
        assert!((report["map"].as_f64().unwrap() - expected.map).abs() < 0.1);
    }

    #[test]
    fn duplicate_predictions_keep_the_last_and_are_listed() {
        let id = |n: i64| ImageId::Int(n);
        let entry = |n: i64, caption: &str| (id(n), caption.to_string());
        let (unique, duplicates) = last_prediction_per_image(vec![
            entry(5, "first"),
            entry(6, "only"),
            entry(5, "second"),
            entry(7, "a"),
            entry(5, "third"),
            entry(7, "b"),
        ]);
        assert_eq!(
            unique,
            vec![entry(5, "third"), entry(6, "only"), entry(7, "b")]
        );
        assert_eq!(duplicates.ids, vec![(id(5), 3), (id(7), 2)]);
        let warning = duplicates.warning(Path::new("p.json")).unwrap();
        assert!(
            warning.contains("2 image ids")
                && warning.contains("`p.json`")
                && warning.contains("(3 extra predictions)")
                && warning.contains("5 (3×), 7 (2×);"),
            "{warning}"
        );

        let (_, one) = last_prediction_per_image(vec![entry(1, "a"), entry(1, "b")]);
        let warning = one.warning(Path::new("p.json")).unwrap();
        assert!(
            warning.starts_with("warning: 1 image id has several predictions"),
            "{warning}"
        );

        let (_, none) = last_prediction_per_image(vec![entry(1, "a"), entry(2, "b")]);
        assert_eq!(none.warning(Path::new("p.json")), None);

        // Only the first few ids are listed.
        let many: Vec<_> = (0..8)
            .flat_map(|n| [entry(n, "x"), entry(n, "y")])
            .collect();
        let warning = last_prediction_per_image(many)
            .1
            .warning(Path::new("p.json"))
            .unwrap();
        assert!(
            warning.contains("8 image ids") && warning.contains("4 (2×), … 3 more"),
            "{warning}"
        );
    }

    #[test]
    fn eval_voc07_names_a_bad_voc_root() {
        let err = EvalVoc07Args {
            weights: Some(PathBuf::from("unused.pth")),
            run: None,
            watch: None,
            image_cache_mib: DEFAULT_IMAGE_CACHE_MIB,
            weights_format: None,
            voc_root: PathBuf::from("/nonexistent/VOCdevkit"),
            arch: "resnet50".into(),
            train_split: "trainval".into(),
            test_split: "test".into(),
            short_side: 256,
            crop: 224,
            batch_size: 4,
            device: DeviceSpec::Cpu,
            max_image_pixels: None,
            seed: 0,
            out: None,
        }
        .run()
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/VOCdevkit"), "{err}");
    }
}
