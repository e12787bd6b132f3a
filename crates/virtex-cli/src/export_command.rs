//! `virtex export`: a backbone written back to PyTorch, as a torchvision `state_dict` or as the
//! Detectron2 backbone upstream's `detectron2_backbone_state_dict()` returns.

use std::path::PathBuf;

use burn::backend::Flex;
use clap::{Args, ValueEnum};
use virtex_backbone::WeightsFormat;

use crate::checks::check_output;
use crate::error::CliError;
use crate::features::load_backbone;
use crate::model_paths::resolve_model_file;

/// Arguments of `virtex export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Backbone weights: anything `virtex features --weights` accepts (an official VirTex
    /// checkpoint, the VirTex hub backbone, our `model.safetensors`, torchvision `.pth` /
    /// safetensors, burnpack) or a training checkpoint directory (its `model.safetensors`); or
    /// a released name (`virtex weights list`), taken from the weights cache and downloaded
    /// first if absent.
    #[arg(long)]
    pub weights: PathBuf,
    /// Force the weights format instead of detecting it: pytorch | safetensors | burnpack.
    #[arg(long)]
    pub weights_format: Option<WeightsFormat>,
    /// Backbone architecture (torchvision name).
    #[arg(long, default_value = "resnet50")]
    pub arch: String,
    /// torchvision: the `state_dict` of torchvision's ResNet without `fc`; detectron2:
    /// `{"model": …, "__author__": "virtex-rs", "matching_heuristics": True}` with Detectron2's
    /// names, for `MODEL.WEIGHTS`.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output `.pth` file (never the weights file itself, nor inside a training checkpoint).
    #[arg(long)]
    pub out: PathBuf,
}

/// What `virtex export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// torchvision `state_dict` ([`virtex_backbone::ResNet::save_torchvision_pth`]).
    Torchvision,
    /// Detectron2 backbone ([`virtex_backbone::ResNet::save_detectron2_pth`]).
    Detectron2,
}

impl ExportArgs {
    /// Runs the command (on the CPU: nothing is computed, weights are only renamed).
    pub fn run(self) -> Result<(), CliError> {
        check_output(&self.out, &[self.weights.as_path()])?;
        // A released name is resolved (and possibly downloaded) only once the cheap checks have
        // passed; the cached file it names is then checked against --out like any input.
        let weights = resolve_model_file(&self.weights)?;
        if weights != self.weights {
            check_output(&self.out, &[weights.as_path()])?;
        }
        let model = load_backbone::<Flex>(
            &self.arch,
            &weights,
            self.weights_format,
            &Default::default(),
        )?;
        match self.format {
            ExportFormat::Torchvision => model.save_torchvision_pth(&self.out)?,
            ExportFormat::Detectron2 => model.save_detectron2_pth(&self.out)?,
        }
        eprintln!(
            "wrote the {} backbone of {} as {} to {}",
            self.arch,
            weights.display(),
            match self.format {
                ExportFormat::Torchvision => "a torchvision state_dict",
                ExportFormat::Detectron2 => "a Detectron2 checkpoint",
            },
            self.out.display()
        );
        Ok(())
    }
}
