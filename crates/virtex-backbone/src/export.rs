//! Exports of a backbone to PyTorch files (`torch.save` format, written by
//! [`crate::save_torch`]): a torchvision `state_dict`, and the Detectron2 backbone that
//! upstream VirTex's `TorchvisionVisualBackbone.detectron2_backbone_state_dict()` returns.
//!
//! # The Detectron2 mapping table
//!
//! Upstream renames every key of the CNN's torchvision `state_dict` by these substring
//! replacements, applied in this order ([`DETECTRON2_RENAMES`]), then puts `stem.` in front of
//! every key that does not start with `res` ([`detectron2_key`]):
//!
//! | torchvision substring | Detectron2    |
//! |-----------------------|---------------|
//! | `layer1`              | `res2`        |
//! | `layer2`              | `res3`        |
//! | `layer3`              | `res4`        |
//! | `layer4`              | `res5`        |
//! | `bn1`                 | `conv1.norm`  |
//! | `bn2`                 | `conv2.norm`  |
//! | `bn3`                 | `conv3.norm`  |
//! | `downsample.0`        | `shortcut`    |
//! | `downsample.1`        | `shortcut.norm` |
//!
//! which gives, key by key:
//!
//! | torchvision `state_dict`                 | Detectron2 (`"model"` of the file)          |
//! |------------------------------------------|---------------------------------------------|
//! | `conv1.weight`                           | `stem.conv1.weight`                         |
//! | `bn1.{weight,bias,running_mean,running_var,num_batches_tracked}` | `stem.conv1.norm.*` |
//! | `layerN.i.convK.weight`                  | `res{N+1}.i.convK.weight`                   |
//! | `layerN.i.bnK.*`                         | `res{N+1}.i.convK.norm.*`                   |
//! | `layerN.i.downsample.0.weight`           | `res{N+1}.i.shortcut.weight`                |
//! | `layerN.i.downsample.1.*`                | `res{N+1}.i.shortcut.norm.*`                |
//!
//! There is no `fc` (upstream's backbone has none either). The file holds
//! `{"model": OrderedDict(...), "__author__": "virtex-rs", "matching_heuristics": True}`:
//! `matching_heuristics` makes Detectron2's `DetectionCheckpointer` match these names to its
//! own (`backbone.bottom_up.res2…` in an FPN, `backbone.res2…` / `roi_heads.res5…` in C4) as it
//! does for upstream's file.
//!
//! `num_batches_tracked` is written as 0 (int64) for every BatchNorm, as in
//! [`ResNet::save_torchvision_safetensors`]: the count only matters to torch when
//! `momentum=None`, which neither VirTex nor Detectron2 uses.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use burn_store::ModuleSnapshot;

use crate::error::{BackboneError, Result};
use crate::resnet::ResNet;
use crate::torch_save::{save_torch, TorchValue};
use crate::weights::burn_to_torchvision;

/// Upstream's `DETECTRON2_RENAME_MAPPING`: substring replacements applied in order to each
/// torchvision key (see the module's table).
pub const DETECTRON2_RENAMES: [(&str, &str); 9] = [
    ("layer1", "res2"),
    ("layer2", "res3"),
    ("layer3", "res4"),
    ("layer4", "res5"),
    ("bn1", "conv1.norm"),
    ("bn2", "conv2.norm"),
    ("bn3", "conv3.norm"),
    ("downsample.0", "shortcut"),
    ("downsample.1", "shortcut.norm"),
];

/// The Detectron2 name of a torchvision backbone key, as upstream's
/// `detectron2_backbone_state_dict()` renames it (`layer1.0.bn1.weight` →
/// `res2.0.conv1.norm.weight`, `bn1.bias` → `stem.conv1.norm.bias`).
pub fn detectron2_key(torchvision_key: &str) -> String {
    let renamed = DETECTRON2_RENAMES
        .iter()
        .fold(torchvision_key.to_string(), |key, (from, to)| {
            key.replace(from, to)
        });
    if renamed.starts_with("res") {
        renamed
    } else {
        format!("stem.{renamed}")
    }
}

/// What Detectron2 is told wrote the file (`__author__`; only `"Caffe2"` changes how
/// Detectron2 reads it).
pub const DETECTRON2_AUTHOR: &str = "virtex-rs";

impl<B: Backend> ResNet<B> {
    /// The torchvision `state_dict` of the backbone, in torchvision's order: every parameter
    /// and running statistic as float32, and after each BatchNorm's `running_var` its
    /// `num_batches_tracked` as an int64 scalar 0 (see the module docs). `path` only names the
    /// file in errors.
    pub(crate) fn torchvision_state_dict(&self, path: &Path) -> Result<Vec<(String, TensorData)>> {
        self.sync_running_statistics();
        let mut state = Vec::new();
        for snapshot in self.collect(None, None, false) {
            let name = burn_to_torchvision(&snapshot.full_path());
            let data = snapshot
                .to_data()
                .map_err(|err| BackboneError::Write {
                    path: path.to_path_buf(),
                    message: format!("cannot read tensor `{name}`: {err:?}"),
                })?
                .convert_dtype(DType::F32);
            let batches = name
                .strip_suffix("running_var")
                .map(|module| format!("{module}num_batches_tracked"));
            state.push((name, data));
            if let Some(batches) = batches {
                state.push((batches, TensorData::new(vec![0i64], [0usize; 0])));
            }
        }
        Ok(state)
    }

    /// Saves the torchvision `state_dict` as `torch.save` does (an `OrderedDict` of tensors),
    /// atomically. PyTorch loads it with
    /// `model.load_state_dict(torch.load(path, weights_only=True), strict=False)` on a
    /// torchvision ResNet (only `fc` is missing), and [`ResNet::load_weights`] reads it back.
    pub fn save_torchvision_pth(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let state = self.torchvision_state_dict(path)?;
        save_torch(&ordered_dict(state, |key| key), path)
    }

    /// Saves the backbone for Detectron2, atomically: the dictionary upstream's
    /// `detectron2_backbone_state_dict()` returns (names in the module's table), written with
    /// `torch.save`. Detectron2 loads it with `MODEL.WEIGHTS path` (its `DetectionCheckpointer`
    /// reads `.pth` files with `torch.load`).
    pub fn save_detectron2_pth(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let state = self.torchvision_state_dict(path)?;
        let file = TorchValue::Dict(vec![
            (
                "model".into(),
                ordered_dict(state, |key| detectron2_key(&key)),
            ),
            (
                "__author__".into(),
                TorchValue::Str(DETECTRON2_AUTHOR.into()),
            ),
            ("matching_heuristics".into(), TorchValue::Bool(true)),
        ]);
        save_torch(&file, path)
    }
}

fn ordered_dict(state: Vec<(String, TensorData)>, rename: impl Fn(String) -> String) -> TorchValue {
    TorchValue::OrderedDict(
        state
            .into_iter()
            .map(|(key, data)| (rename(key), TorchValue::Tensor(data)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_renamed_as_upstream_does() {
        for (torchvision, detectron2) in [
            ("conv1.weight", "stem.conv1.weight"),
            ("bn1.running_var", "stem.conv1.norm.running_var"),
            (
                "bn1.num_batches_tracked",
                "stem.conv1.norm.num_batches_tracked",
            ),
            ("layer1.0.conv3.weight", "res2.0.conv3.weight"),
            ("layer2.1.bn2.weight", "res3.1.conv2.norm.weight"),
            ("layer3.0.downsample.0.weight", "res4.0.shortcut.weight"),
            ("layer4.0.downsample.1.bias", "res5.0.shortcut.norm.bias"),
            (
                "layer4.2.bn3.running_mean",
                "res5.2.conv3.norm.running_mean",
            ),
        ] {
            assert_eq!(detectron2_key(torchvision), detectron2, "{torchvision}");
        }
    }
}
