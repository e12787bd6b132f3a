//! `virtex eval-linear`: upstream's linear classification (`scripts/clf_linear.py`) of a
//! backbone on ImageNet, iNaturalist 2018 or any image-folder dataset, through
//! [`virtex_train::linear_probe`].

use std::path::PathBuf;

use burn::backend::Autodiff;
use clap::{Args, ValueEnum};
use virtex_backbone::WeightsFormat;
use virtex_data::ClassificationDataset;
use virtex_device::{with_backend, DeviceSpec};
use virtex_train::linear_probe::{run_linear_probe, LinearProbeConfig, ProbeRunOptions};

use crate::checks::check_positive;
use crate::error::CliError;
use crate::features::load_backbone;

/// The layout of `--train` / `--val`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeDataset {
    /// `--train DIR/<class>/*`, `--val DIR/<class>/*` (classes from the training directory).
    Folder,
    /// ImageNet: `train/<wnid>/*.JPEG`; `val/` in class folders, or flat with `--val-labels`
    /// (or `LOC_val_solution.csv` / `val_labels.txt` beside it).
    Imagenet,
    /// iNaturalist 2018: `--train train2018.json --val val2018.json` (images relative to the
    /// JSON's directory, or `--image-root`).
    Inaturalist,
}

/// Arguments of `virtex eval-linear`.
#[derive(Debug, Args)]
pub struct EvalLinearArgs {
    /// Backbone weights: anything `virtex features --weights` reads (torchvision or VirTex
    /// `.pth`, our `model.safetensors`, a checkpoint or run directory, a released name).
    #[arg(long)]
    pub weights: PathBuf,
    /// Force the weights format instead of detecting it: pytorch | safetensors | burnpack.
    #[arg(long)]
    pub weights_format: Option<WeightsFormat>,
    /// Backbone architecture (torchvision name).
    #[arg(long, default_value = "resnet50")]
    pub arch: String,
    /// The dataset layout.
    #[arg(long, value_enum, default_value_t = ProbeDataset::Folder)]
    pub dataset: ProbeDataset,
    /// Training split: a directory of class folders, or iNaturalist's `train2018.json`.
    #[arg(long)]
    pub train: PathBuf,
    /// Validation split: a directory (class folders or flat ImageNet), or `val2018.json`.
    #[arg(long)]
    pub val: PathBuf,
    /// Labels of a flat ImageNet validation directory (`LOC_val_solution.csv` or
    /// `<file> <wnid>` lines).
    #[arg(long)]
    pub val_labels: Option<PathBuf>,
    /// iNaturalist image root (default: the JSON's directory).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Upstream's settings: `imagenet` (frozen CNN, LR 0.3, cosine; the default except for
    /// iNaturalist) or `inaturalist` (fine-tuning, LR 0.025, wd 1e-4, ×0.1 at epochs 70/90).
    #[arg(long)]
    pub preset: Option<String>,
    /// Train the whole network (upstream `MODEL.VISUAL.FROZEN: false`).
    #[arg(long, conflicts_with = "quick")]
    pub fine_tune: bool,
    /// Extract features once without augmentation and train on them (a deviation from
    /// upstream's protocol for short probes; see `docs/evaluation.md`).
    #[arg(long)]
    pub quick: bool,
    /// Epochs (100 upstream).
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Iterations instead of epochs.
    #[arg(long)]
    pub iterations: Option<u64>,
    /// Images per iteration (256 upstream).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Checkpoint and evaluate every this many iterations.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Training crop side (224) and validation resize (256).
    #[arg(long, num_args = 2, value_names = ["CROP", "RESIZE"])]
    pub sizes: Option<Vec<u32>>,
    /// The run directory (checkpoints, metrics.jsonl, result.json).
    #[arg(long)]
    pub run_dir: PathBuf,
    /// Continue the run in --run-dir exactly from its newest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this many iterations of this invocation.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// cpu | cuda | cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

impl EvalLinearArgs {
    fn config(&self) -> Result<LinearProbeConfig, CliError> {
        // iNaturalist's preset is fine-tuning; a quick probe trains a linear layer, so it takes
        // the linear probe's settings unless a preset is named.
        let preset = self.preset.clone().unwrap_or_else(|| {
            if self.dataset == ProbeDataset::Inaturalist && !self.quick {
                "inaturalist".into()
            } else {
                "imagenet".into()
            }
        });
        let mut config = LinearProbeConfig::preset(&preset)?;
        config.fine_tune |= self.fine_tune;
        config.quick = self.quick;
        if self.quick {
            config.fine_tune = false;
        }
        if let Some(epochs) = self.epochs {
            config.epochs = epochs;
        }
        config.num_iterations = self.iterations.or(config.num_iterations);
        if let Some(batch_size) = self.batch_size {
            check_positive("--batch-size", batch_size)?;
            config.batch_size = batch_size;
        }
        if let Some(lr) = self.lr {
            config.lr = lr;
        }
        if let Some(every) = self.checkpoint_every {
            config.checkpoint_every = every;
        }
        if let Some(sizes) = &self.sizes {
            config.crop_size = sizes[0];
            config.val_resize = sizes[1];
        }
        Ok(config)
    }

    fn datasets(&self) -> Result<(ClassificationDataset, ClassificationDataset), CliError> {
        Ok(match self.dataset {
            ProbeDataset::Folder => {
                let train = ClassificationDataset::image_folder(&self.train)?;
                let val =
                    ClassificationDataset::image_folder_with_classes(&self.val, &train.classes)?;
                (train, val)
            }
            ProbeDataset::Imagenet => {
                let train = ClassificationDataset::image_folder(&self.train)?;
                let val = ClassificationDataset::imagenet_val(
                    &self.val,
                    self.val_labels.as_deref(),
                    &train.classes,
                )?;
                (train, val)
            }
            ProbeDataset::Inaturalist => {
                let root = self.image_root.as_deref();
                let train = ClassificationDataset::inaturalist(&self.train, root)?;
                let val = ClassificationDataset::inaturalist(&self.val, root)?;
                if val.classes != train.classes {
                    return Err(CliError::Input(format!(
                        "`{}` and `{}` list different categories",
                        self.train.display(),
                        self.val.display()
                    )));
                }
                (train, val)
            }
        })
    }

    /// Runs the command: progress on stderr, the result as one JSON line on stdout.
    pub fn run(self) -> Result<(), CliError> {
        let device = self.device.check()?;
        let config = self.config()?;
        let (train, val) = self.datasets()?;
        eprintln!(
            "{} classes, {} training and {} validation images",
            train.classes.len(),
            train.len(),
            val.len()
        );
        let weights = crate::model_paths::resolve_model_file(&self.weights)?;
        let options = ProbeRunOptions {
            run_dir: self.run_dir.clone(),
            resume: self.resume,
            stop_after: self.stop_after,
        };
        let result = with_backend!(device, |B, burn_device| {
            let backbone = load_backbone::<Autodiff<B>>(
                &self.arch,
                &weights,
                self.weights_format,
                &burn_device,
            )?;
            run_linear_probe::<Autodiff<B>>(
                backbone,
                &train,
                &val,
                &config,
                &options,
                &burn_device,
            )?
        });
        let line = serde_json::to_string(&result).map_err(|err| CliError::Output {
            path: PathBuf::from("<stdout>"),
            message: err.to_string(),
        })?;
        println!("{line}");
        Ok(())
    }
}
