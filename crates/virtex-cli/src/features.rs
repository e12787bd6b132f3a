//! `virtex features`: backbone features for a set of images, written as safetensors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use virtex_backbone::{global_average_pool, l2_normalize, ResNet, ResNetConfig, WeightsFormat};
use virtex_data::{collect_image_files, load_image_batch, ImageTransforms};
use virtex_device::{with_backend, write_atomically, DeviceSpec};

use crate::checks::{
    apply_image_limit, check_image_sizes, check_output, check_positive, image_side_parser,
    max_image_pixels_parser, positive_count_parser,
};
use crate::error::CliError;
use crate::model_paths::resolve_model_file;

/// Arguments of `virtex features`.
#[derive(Debug, Args)]
pub struct FeaturesArgs {
    /// Backbone weights: torchvision `.pth`, safetensors, the VirTex hub backbone, a full VirTex
    /// checkpoint, or burnpack (the kind is detected from the file); or a released name
    /// (`virtex weights list`, e.g. `bicaptioning_R_50_L1_H2048`), taken from the weights cache
    /// and downloaded first if absent; or a checkpoint directory (its `model.safetensors`) or
    /// a training run directory (its newest checkpoint).
    #[arg(long)]
    pub weights: PathBuf,
    /// Force the weights format instead of detecting it: pytorch | safetensors | burnpack.
    #[arg(long)]
    pub weights_format: Option<WeightsFormat>,
    /// Image files and/or directories of JPEG/PNG images.
    #[arg(long, num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// Backbone architecture (torchvision name).
    #[arg(long, default_value = "resnet50")]
    pub arch: String,
    /// Shorter side after resizing (1 to 4096).
    #[arg(long, default_value_t = 256, value_parser = image_side_parser())]
    pub short_side: u32,
    /// Side of the centre crop (1 to 4096, at most --short-side).
    #[arg(long, default_value_t = 224, value_parser = image_side_parser())]
    pub crop: u32,
    /// Global-average-pool the layer4 grid: `[N, C]` instead of `[N, C, h, w]`.
    #[arg(long)]
    pub pooled: bool,
    /// L2-normalise pooled features (implies --pooled), as the VOC07 protocol does.
    #[arg(long)]
    pub l2_normalize: bool,
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
    /// Output safetensors file (never one of the inputs, nor inside one of the input
    /// directories or a training checkpoint).
    #[arg(long)]
    pub out: PathBuf,
}

/// Which backbone output to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    /// The layer4 grid `[N, C, h, w]`.
    Grid,
    /// Global-average-pooled `[N, C]`.
    Pooled,
    /// Pooled and L2-normalised `[N, C]`.
    PooledL2,
}

/// Features of many images, in file order.
#[derive(Debug, Clone)]
pub struct FeatureMatrix {
    /// Row-major values.
    pub values: Vec<f32>,
    /// `[N, C]` or `[N, C, h, w]`.
    pub shape: Vec<usize>,
}

/// Builds an architecture and loads weights into it (eval use: no autodiff).
pub fn load_backbone<B: Backend>(
    arch: &str,
    weights: &Path,
    format: Option<WeightsFormat>,
    device: &B::Device,
) -> Result<ResNet<B>, CliError> {
    let mut model = ResNetConfig::from_name(arch)?.try_init::<B>(device)?;
    match format {
        Some(format) => model.load_weights_as(weights, format)?,
        None => model.load_weights(weights)?,
    };
    Ok(model)
}

/// Runs the backbone over `paths` in batches of `batch_size`. Images go through
/// [`virtex_data::load_image_batch`] (decoding and `transforms` on all cores; a bad file is an
/// error naming it); `transforms` is normally [`ImageTransforms::downstream_val`].
///
/// # Shapes
/// Returns `[paths.len(), C, h, w]` for [`FeatureKind::Grid`], `[paths.len(), C]` otherwise.
pub fn extract_features<B: Backend>(
    model: &ResNet<B>,
    paths: &[PathBuf],
    transforms: &ImageTransforms,
    kind: FeatureKind,
    batch_size: usize,
    device: &B::Device,
    progress: &ProgressBar,
) -> Result<FeatureMatrix, CliError> {
    let mut values = Vec::new();
    let mut item_shape = Vec::new();
    for batch in paths.chunks(batch_size.max(1)) {
        let images = load_image_batch::<B, _>(batch, transforms, device)?.images;
        let grid = model.forward(images);
        let output: TensorData = match kind {
            FeatureKind::Grid => grid.into_data(),
            FeatureKind::Pooled => global_average_pool(grid).into_data(),
            FeatureKind::PooledL2 => l2_normalize(global_average_pool(grid)).into_data(),
        };
        item_shape = output.shape[1..].to_vec();
        values.extend(
            output
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|err| CliError::Usage(format!("unexpected feature data type: {err:?}")))?,
        );
        progress.inc(batch.len() as u64);
    }
    let mut shape = vec![paths.len()];
    shape.extend(item_shape);
    Ok(FeatureMatrix { values, shape })
}

/// Writes `features` plus the file names (metadata key `files`, a JSON list), atomically.
pub fn write_features(
    out: &Path,
    features: &FeatureMatrix,
    files: &[PathBuf],
) -> Result<(), CliError> {
    let output_error = |message: String| CliError::Output {
        path: out.to_path_buf(),
        message,
    };
    let bytes: Vec<u8> = features
        .values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        features.shape.clone(),
        &bytes,
    )
    .map_err(|err| output_error(err.to_string()))?;
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    let metadata = HashMap::from([(
        "files".to_string(),
        serde_json::to_string(&names).map_err(|err| output_error(err.to_string()))?,
    )]);
    // Serialised straight into the temporary file: features can be large, so no second copy.
    write_atomically(out, |temporary| {
        safetensors::serialize_to_file([("features", view)], Some(metadata), temporary)
            .map_err(std::io::Error::other)
    })
    .map_err(|err| output_error(err.to_string()))
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(total: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} images, {per_sec}, ETA {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

impl FeaturesArgs {
    /// Runs the command.
    pub fn run(self) -> Result<(), CliError> {
        let device = self.device.check()?;
        check_image_sizes(self.short_side, self.crop)?;
        check_positive("--batch-size", self.batch_size)?;
        apply_image_limit(self.max_image_pixels)?;
        let mut inputs = vec![self.weights.as_path()];
        inputs.extend(self.images.iter().map(PathBuf::as_path));
        check_output(&self.out, &inputs)?;
        let files = collect_image_files(&self.images)?;
        // A released name is resolved (and possibly downloaded) only once the cheap checks have
        // passed; the cached file it names is then checked against --out like any input.
        let weights = resolve_model_file(&self.weights)?;
        if weights != self.weights {
            check_output(&self.out, &[weights.as_path()])?;
        }
        let kind = match (self.pooled, self.l2_normalize) {
            (_, true) => FeatureKind::PooledL2,
            (true, false) => FeatureKind::Pooled,
            (false, false) => FeatureKind::Grid,
        };
        let transforms = ImageTransforms::downstream_val(self.short_side, self.crop)?;
        let features = with_backend!(device, |B, burn_device| {
            let model =
                load_backbone::<B>(&self.arch, &weights, self.weights_format, &burn_device)?;
            let progress = progress_bar(files.len(), "features");
            let features = extract_features(
                &model,
                &files,
                &transforms,
                kind,
                self.batch_size,
                &burn_device,
                &progress,
            )?;
            progress.finish_and_clear();
            features
        });
        write_features(&self.out, &features, &files)?;
        eprintln!(
            "wrote features {:?} for {} images to {}",
            features.shape,
            files.len(),
            self.out.display()
        );
        Ok(())
    }
}
