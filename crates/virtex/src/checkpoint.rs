//! Checkpoints: the official VirTex `.pth` files, and our own format.
//!
//! # Official checkpoints (`torch.save({"model": state_dict, ...})`)
//!
//! The released model-zoo files, and the `checkpoint_{iter}.pth` files of upstream's training
//! script, hold `VirTexModel.state_dict()` under `"model"` (optionally next to `"optimizer"`,
//! `"scheduler"`, `"scaler"`, `"iteration"`, which are ignored). A bare state dict, or a
//! DDP-wrapped one (`module.` prefix), is accepted too. Keys, after that prefix:
//!
//! | key in the file                                   | burn module path                      | how |
//! |---------------------------------------------------|---------------------------------------|-----|
//! | `visual.cnn.conv1.weight`, `visual.cnn.bn1.*`, `visual.cnn.layerN.i.{convK,bnK}.*` | same | `virtex-backbone`'s loader (`ResNet::load_weights`) |
//! | `visual.cnn.layerN.i.downsample.0.weight`         | `visual.cnn.layerN.i.downsample.conv.weight` | backbone loader |
//! | `visual.cnn.layerN.i.downsample.1.*`              | `visual.cnn.layerN.i.downsample.bn.*` | backbone loader |
//! | `visual.cnn.*.num_batches_tracked`                | —                                     | ignored (momentum is fixed) |
//! | `textual.visual_projection.weight` `[H, C]`       | same, `[C, H]`                        | transposed |
//! | `textual.visual_projection.bias`                  | same                                  | |
//! | `textual.embedding.{words,positions}.weight`      | same                                  | |
//! | `textual.embedding.layer_norm.{weight,bias}`      | same                                  | |
//! | `textual.transformer.layers.{i}.{self_attn,multihead_attn}.in_proj_{weight,bias}` `[3H, H]`, `[3H]` | same | kept stacked (`[Wq; Wk; Wv]`, torch layout) |
//! | `textual.transformer.layers.{i}.{self_attn,multihead_attn}.out_proj.weight` | same | transposed |
//! | `textual.transformer.layers.{i}.linear{1,2}.weight` | same                                | transposed |
//! | `textual.transformer.layers.{i}.{…}.bias`, `norm{1,2,3}.*` | same                         | |
//! | `textual.transformer.norm.*` (pre-norm only)       | same                                 | |
//! | `textual.output.weight`                           | — (it *is* `textual.embedding.words.weight`) | checked equal, loaded once |
//! | `textual.output.bias`                             | same                                  | |
//! | `backward_textual.transformer.*`                  | `backward_textual.transformer.*`      | as `textual.transformer.*` |
//! | `backward_textual.{visual_projection,embedding,output}.*` | — (shared: owned by `textual`) | checked equal to the `textual.*` twin, dropped |
//!
//! The head-level part of the table lives in `virtex_textual::load_torch_head`. Loading is
//! strict: every tensor of the model must be present with the right shape, and any other key in
//! the model's namespace is an error naming it (with both shapes for a shape mismatch).
//!
//! [`infer_official_config`] reads the architecture from the tensors: backbone depth, width and
//! stem from `visual.cnn.*`, `V`/`H` from `embedding.words.weight`, `L` from the layer indices,
//! `F` from `linear1`, pre/post-norm from `transformer.norm`, the position table from
//! `embedding.positions`; the number of heads is not stored, so it is `H / 64` (every released
//! model) unless given.
//!
//! # Our format
//!
//! safetensors with burn's module paths and layouts (`visual.cnn.layer1.0.downsample.conv.weight`,
//! `textual.visual_projection.weight` as `[C, H]`, …) and the model's configuration as JSON in
//! the metadata (`virtex.config`, with `virtex.model` = `bicaptioning` | `captioning`), so a
//! file rebuilds its model without any other input.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn_store::{
    ApplyError, ModuleSnapshot, ModuleStore, PytorchStore, SafetensorsStore, TensorSnapshot,
};
use virtex_backbone::{BlockKind, ResNet, ResNetConfig, WeightsFormat};
use virtex_textual::{
    load_torch_decoder, load_torch_head, NormType, TextualHeadConfig, TransformerDecoder,
    TransformerDecoderTextualHead,
};

use crate::config::CaptioningModelConfig;
use crate::error::{Result, VirtexError};
use crate::model::{BidirectionalCaptioningModel, ForwardCaptioningModel};

/// Choices the tensors of an official checkpoint cannot tell.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOptions {
    /// Attention heads `A`; `None` = `H / 64`, as in every released config.
    pub attention_heads: Option<usize>,
    /// Dropout for further training (not stored in checkpoints; 0.1 upstream).
    pub dropout: f64,
    /// `[SOS]` id.
    pub sos_index: usize,
    /// `[EOS]` id.
    pub eos_index: usize,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            attention_heads: None,
            dropout: 0.1,
            sos_index: 1,
            eos_index: 2,
        }
    }
}

/// What an official import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The prefix of the model's keys in the file: `"model."`, `""` or `"module."`.
    pub prefix: String,
    /// The configuration read from the tensors.
    pub config: CaptioningModelConfig,
    /// Whether the file holds a backward decoder stack.
    pub has_backward: bool,
    /// Tensors applied to the CNN (parameters and BatchNorm statistics).
    pub cnn_tensors: usize,
    /// Tensors applied to the forward head (the tied output weight counted once).
    pub textual_tensors: usize,
    /// Tensors applied to the backward decoder stack.
    pub backward_tensors: usize,
    /// Duplicated shared tensors (`backward_textual.{visual_projection,embedding,output}.*`)
    /// checked equal to their `textual.*` twins and dropped.
    pub duplicates_checked: usize,
    /// Keys of the model's state dict that were not loaded on purpose (`num_batches_tracked`,
    /// and the backward head when importing into a forward-only model).
    pub ignored: usize,
}

/// An official checkpoint's state dict, read once.
struct OfficialFile {
    path: PathBuf,
    prefix: String,
    tensors: BTreeMap<String, TensorSnapshot>,
}

impl OfficialFile {
    fn read(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(VirtexError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let mut store = PytorchStore::from_file(path).map_indices_contiguous(false);
        let tensors = store
            .get_all_snapshots()
            .map_err(|err| VirtexError::Unreadable {
                path: path.to_path_buf(),
                format: "PyTorch",
                message: err.to_string(),
            })?
            .clone();
        let prefix = ["model.", "", "module.", "model.module."]
            .into_iter()
            .find(|prefix| tensors.contains_key(&format!("{prefix}textual.embedding.words.weight")))
            .ok_or_else(|| VirtexError::NotACaptioningCheckpoint {
                path: path.to_path_buf(),
                message: if tensors.keys().any(|k| k.ends_with("conv1.weight")) {
                    "it has no `textual.embedding.words.weight` (a backbone-only file? load it \
                     with `ResNet::load_weights`)"
                        .into()
                } else {
                    format!(
                        "it has no `model.textual.embedding.words.weight` ({} tensors{})",
                        tensors.len(),
                        tensors
                            .keys()
                            .next()
                            .map(|k| format!(", starting with `{k}`"))
                            .unwrap_or_default()
                    )
                },
            })?
            .to_string();
        Ok(Self {
            path: path.to_path_buf(),
            prefix,
            tensors,
        })
    }

    fn shape(&self, key: &str) -> Result<Vec<usize>> {
        let full = format!("{}{key}", self.prefix);
        self.tensors
            .get(&full)
            .map(|snapshot| snapshot.shape.to_vec())
            .ok_or_else(|| VirtexError::MissingTensor {
                path: self.path.clone(),
                key: full,
            })
    }

    /// Keys of the model's state dict (prefix stripped).
    fn model_keys(&self) -> impl Iterator<Item = &str> {
        self.tensors
            .keys()
            .filter_map(|key| key.strip_prefix(self.prefix.as_str()))
    }

    /// The distinct `N` of `{prefix}{under}N.` keys, sorted.
    fn indices(&self, under: &str) -> Vec<usize> {
        let full = format!("{}{under}", self.prefix);
        let mut found: Vec<usize> = self
            .tensors
            .keys()
            .filter_map(|key| key.strip_prefix(&full))
            .filter_map(|rest| rest.split('.').next()?.parse().ok())
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(&format!("{}{key}", self.prefix))
    }

    fn infer(&self, options: &ImportOptions) -> Result<(CaptioningModelConfig, bool)> {
        let backbone = self.infer_backbone()?;
        let words = self.shape("textual.embedding.words.weight")?;
        let positions = self.shape("textual.embedding.positions.weight")?;
        let projection = self.shape("textual.visual_projection.weight")?;
        let (vocab, hidden) = (words[0], words[1]);
        let layers = self.indices("textual.transformer.layers.");
        if layers.is_empty() || layers != (0..layers.len()).collect::<Vec<_>>() {
            return Err(VirtexError::NotACaptioningCheckpoint {
                path: self.path.clone(),
                message: format!("decoder layer indices {layers:?} are not 0..L"),
            });
        }
        let feedforward = self.shape("textual.transformer.layers.0.linear1.weight")?[0];
        let heads = match options.attention_heads {
            Some(heads) => heads,
            None if hidden.is_multiple_of(64) => hidden / 64,
            None => {
                return Err(VirtexError::InvalidConfig(format!(
                    "`{}`: H = {hidden} is not a multiple of 64, so the number of attention heads \
                     cannot be inferred; pass `ImportOptions::attention_heads`",
                    self.path.display()
                )))
            }
        };
        let norm = if self.has("textual.transformer.norm.weight") {
            NormType::Pre
        } else {
            NormType::Post
        };
        let textual = TextualHeadConfig::new(
            projection[1],
            vocab,
            hidden,
            layers.len(),
            heads,
            feedforward,
        )
        .with_norm_type(norm)
        .with_dropout(options.dropout)
        .with_max_caption_length(positions[0]);
        let mut config = CaptioningModelConfig::new(backbone, textual);
        config.sos_index = options.sos_index;
        config.eos_index = options.eos_index;
        config.validate()?;
        let has_backward = !self
            .indices("backward_textual.transformer.layers.")
            .is_empty();
        Ok((config, has_backward))
    }

    /// The torchvision ResNet under `visual.cnn.`: stem width, block kind, blocks per stage and
    /// bottleneck width.
    fn infer_backbone(&self) -> Result<ResNetConfig> {
        let stem = self.shape("visual.cnn.conv1.weight")?[0];
        let kind = if self.has("visual.cnn.layer1.0.conv3.weight") {
            BlockKind::Bottleneck
        } else {
            BlockKind::Basic
        };
        let mut layers = [0; 4];
        for (stage, count) in layers.iter_mut().enumerate() {
            *count = self
                .indices(&format!("visual.cnn.layer{}.", stage + 1))
                .len();
        }
        let mut config = ResNetConfig::new(kind, layers).with_stem_channels(stem);
        if kind == BlockKind::Bottleneck {
            // layer1.0.conv1: [planes · width_per_group / 64, stem, 1, 1] with planes = stem.
            let width = self.shape("visual.cnn.layer1.0.conv1.weight")?[0];
            config = config.with_width_per_group(width * 64 / stem.max(1));
        }
        Ok(config)
    }

    /// Loads everything into the parts of a model.
    fn load<B: Backend>(
        &self,
        cnn: &mut ResNet<B>,
        textual: &mut TransformerDecoderTextualHead<B>,
        backward: Option<&mut TransformerDecoder<B>>,
        config: CaptioningModelConfig,
    ) -> Result<ImportReport> {
        let has_backward = !self
            .indices("backward_textual.transformer.layers.")
            .is_empty();
        if backward.is_some() && !has_backward {
            return Err(VirtexError::MissingTensor {
                path: self.path.clone(),
                key: format!(
                    "{}backward_textual.transformer.layers.0.self_attn.in_proj_weight",
                    self.prefix
                ),
            });
        }
        for key in self.model_keys() {
            if !(key.starts_with("visual.cnn.")
                || key.starts_with("textual.")
                || key.starts_with("backward_textual."))
            {
                return Err(VirtexError::UnexpectedTensor {
                    path: self.path.clone(),
                    key: format!("{}{key}", self.prefix),
                    message: "not part of a captioning model".into(),
                });
            }
        }

        let cnn_report = cnn.load_weights_as(&self.path, WeightsFormat::Pytorch)?;
        let textual_report =
            load_torch_head(textual, &self.tensors, &format!("{}textual.", self.prefix)).map_err(
                |source| VirtexError::TextualWeights {
                    path: self.path.clone(),
                    source,
                },
            )?;
        let backward_prefix = format!("{}backward_textual.", self.prefix);
        let backward_keys: Vec<&String> = self
            .tensors
            .keys()
            .filter(|key| key.starts_with(&backward_prefix))
            .collect();
        let (backward_tensors, duplicates, mut ignored) = match backward {
            Some(decoder) => {
                let applied = load_torch_decoder(
                    decoder,
                    &self.tensors,
                    &format!("{backward_prefix}transformer."),
                )
                .map_err(|source| VirtexError::TextualWeights {
                    path: self.path.clone(),
                    source,
                })?;
                (applied, self.check_duplicates(&backward_keys)?, 0)
            }
            None => (0, 0, backward_keys.len()),
        };
        ignored += cnn_report.ignored;
        Ok(ImportReport {
            prefix: self.prefix.clone(),
            config,
            has_backward,
            cnn_tensors: cnn_report.applied,
            textual_tensors: textual_report.applied,
            backward_tensors,
            duplicates_checked: duplicates,
            ignored,
        })
    }

    /// Every shared tensor duplicated under `backward_textual.` must equal its `textual.` twin.
    fn check_duplicates(&self, backward_keys: &[&String]) -> Result<usize> {
        let mut checked = 0;
        for key in backward_keys {
            let local = &key[self.prefix.len() + "backward_textual.".len()..];
            if local.starts_with("transformer.") {
                continue;
            }
            let twin = format!("{}textual.{local}", self.prefix);
            let (Some(duplicate), Some(original)) =
                (self.tensors.get(*key), self.tensors.get(&twin))
            else {
                return Err(VirtexError::UnexpectedTensor {
                    path: self.path.clone(),
                    key: key.to_string(),
                    message: format!("the shared tensor it duplicates, `{twin}`, is absent"),
                });
            };
            let read = |snapshot: &TensorSnapshot, key: &str| {
                snapshot.to_data().map_err(|err| VirtexError::Unreadable {
                    path: self.path.clone(),
                    format: "PyTorch",
                    message: format!("tensor `{key}`: {err}"),
                })
            };
            if duplicate.shape != original.shape
                || read(duplicate, key)?.as_bytes() != read(original, &twin)?.as_bytes()
            {
                return Err(VirtexError::DuplicateMismatch {
                    path: self.path.clone(),
                    key: key.to_string(),
                    twin,
                });
            }
            checked += 1;
        }
        Ok(checked)
    }
}

/// Reads the architecture of an official checkpoint from its tensors. Returns the
/// configuration and whether the file holds a backward decoder (a bicaptioning model).
pub fn infer_official_config(
    path: impl AsRef<Path>,
    options: &ImportOptions,
) -> Result<(CaptioningModelConfig, bool)> {
    OfficialFile::read(path.as_ref())?.infer(options)
}

impl<B: Backend> BidirectionalCaptioningModel<B> {
    /// Builds the model an official bicaptioning checkpoint describes and loads it.
    pub fn from_official_checkpoint(
        path: impl AsRef<Path>,
        options: &ImportOptions,
        device: &B::Device,
    ) -> Result<(Self, ImportReport)> {
        let file = OfficialFile::read(path.as_ref())?;
        let (config, _) = file.infer(options)?;
        let mut model = config.init_bicaptioning(device)?;
        let report = file.load(
            &mut model.visual.cnn,
            &mut model.textual,
            Some(&mut model.backward_textual.transformer),
            config,
        )?;
        Ok((model, report))
    }

    /// Loads an official bicaptioning checkpoint into this model, whose configuration must
    /// match (an error names the first mismatched key and both shapes).
    ///
    /// The CNN is loaded first and each part is validated before it is applied, so after an
    /// error the model may hold some of the file's tensors: rebuild it before retrying.
    pub fn load_official_weights(&mut self, path: impl AsRef<Path>) -> Result<ImportReport> {
        let file = OfficialFile::read(path.as_ref())?;
        let config = self.config.clone();
        file.load(
            &mut self.visual.cnn,
            &mut self.textual,
            Some(&mut self.backward_textual.transformer),
            config,
        )
    }

    /// Saves in our format (see the module docs).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.visual.cnn.sync_running_statistics();
        save_ours(self, &self.config, BICAPTIONING, path.as_ref())
    }

    /// Loads a model saved by [`BidirectionalCaptioningModel::save`].
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let path = path.as_ref();
        let config = read_saved_config(path, BICAPTIONING)?;
        let mut model = config.init_bicaptioning(device)?;
        load_ours(&mut model, path)?;
        Ok(model)
    }

    /// Loads the weights of a model saved by [`BidirectionalCaptioningModel::save`] into this one, keeping this
    /// model's configuration: its dropout (not part of the architecture) in particular, so a
    /// checkpoint can be fine-tuned with other settings. The file's architecture (backbone,
    /// head, vocabulary, caption length, special tokens) must equal this model's; the first
    /// differing key is named otherwise.
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let saved = read_saved_config(path, BICAPTIONING)?;
        check_same_architecture(&saved, &self.config, path)?;
        load_ours(self, path)
    }
}

impl<B: Backend> ForwardCaptioningModel<B> {
    /// Builds the forward model an official checkpoint describes and loads it. A bicaptioning
    /// checkpoint is accepted: its backward stack is skipped (counted in `ignored`).
    pub fn from_official_checkpoint(
        path: impl AsRef<Path>,
        options: &ImportOptions,
        device: &B::Device,
    ) -> Result<(Self, ImportReport)> {
        let file = OfficialFile::read(path.as_ref())?;
        let (config, _) = file.infer(options)?;
        let mut model = config.init_captioning(device)?;
        let report = file.load(&mut model.visual.cnn, &mut model.textual, None, config)?;
        Ok((model, report))
    }

    /// Loads an official checkpoint into this model, whose configuration must match.
    pub fn load_official_weights(&mut self, path: impl AsRef<Path>) -> Result<ImportReport> {
        let file = OfficialFile::read(path.as_ref())?;
        let config = self.config.clone();
        file.load(&mut self.visual.cnn, &mut self.textual, None, config)
    }

    /// Saves in our format (see the module docs).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.visual.cnn.sync_running_statistics();
        save_ours(self, &self.config, CAPTIONING, path.as_ref())
    }

    /// Loads a model saved by [`ForwardCaptioningModel::save`].
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let path = path.as_ref();
        let config = read_saved_config(path, CAPTIONING)?;
        let mut model = config.init_captioning(device)?;
        load_ours(&mut model, path)?;
        Ok(model)
    }

    /// Loads the weights of a model saved by [`ForwardCaptioningModel::save`] into this one, keeping this
    /// model's configuration: its dropout (not part of the architecture) in particular, so a
    /// checkpoint can be fine-tuned with other settings. The file's architecture (backbone,
    /// head, vocabulary, caption length, special tokens) must equal this model's; the first
    /// differing key is named otherwise.
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let saved = read_saved_config(path, CAPTIONING)?;
        check_same_architecture(&saved, &self.config, path)?;
        load_ours(self, path)
    }
}

const BICAPTIONING: &str = "bicaptioning";
const CAPTIONING: &str = "captioning";
const KIND_KEY: &str = "virtex.model";
const CONFIG_KEY: &str = "virtex.config";

fn save_ours<B: Backend, M: ModuleSnapshot<B>>(
    model: &M,
    config: &CaptioningModelConfig,
    kind: &str,
    path: &Path,
) -> Result<()> {
    let write_error = |message: String| VirtexError::Write {
        path: path.to_path_buf(),
        message,
    };
    let json = serde_json::to_string(config).map_err(|err| write_error(err.to_string()))?;
    virtex_backbone::write_atomically(path, |temporary| {
        let mut store = SafetensorsStore::from_file(temporary)
            .overwrite(true)
            .metadata(KIND_KEY, kind)
            .metadata(CONFIG_KEY, json);
        model
            .save_into(&mut store)
            .map_err(|err| std::io::Error::other(err.to_string()))
    })
    .map_err(|err| write_error(err.to_string()))
}

/// The configuration stored in a file written by `save`, checking its kind.
fn read_saved_config(path: &Path, expected: &'static str) -> Result<CaptioningModelConfig> {
    let unreadable = |message: String| VirtexError::Unreadable {
        path: path.to_path_buf(),
        format: "virtex safetensors",
        message,
    };
    let mut file = File::open(path).map_err(|source| VirtexError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length)
        .map_err(|err| unreadable(format!("no safetensors header: {err}")))?;
    let length = u64::from_le_bytes(length);
    if length > 100_000_000 {
        return Err(unreadable(format!("implausible header length {length}")));
    }
    let mut header = vec![0u8; length as usize];
    file.read_exact(&mut header)
        .map_err(|err| unreadable(format!("truncated header: {err}")))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|err| unreadable(format!("header: {err}")))?;
    let metadata = header.get("__metadata__");
    let field = |key: &str| {
        metadata
            .and_then(|m| m.get(key))
            .and_then(|v| v.as_str())
            .ok_or_else(|| unreadable(format!("no `{key}` in the metadata (not saved by virtex?)")))
    };
    let kind = field(KIND_KEY)?;
    if kind != expected {
        return Err(VirtexError::WrongModelKind {
            path: path.to_path_buf(),
            expected,
            found: kind.to_string(),
        });
    }
    serde_json::from_str(field(CONFIG_KEY)?)
        .map_err(|err| unreadable(format!("`{CONFIG_KEY}`: {err}")))
}

/// Errors on the first configuration key where `saved` and `configured` differ, ignoring the
/// training settings that do not change what the weights compute: dropout, BatchNorm momentum
/// and the zero-initialisation of residual branches.
fn check_same_architecture(
    saved: &CaptioningModelConfig,
    configured: &CaptioningModelConfig,
    path: &Path,
) -> Result<()> {
    let mut saved = saved.clone();
    saved.textual.dropout = configured.textual.dropout;
    saved.backbone.bn_momentum = configured.backbone.bn_momentum;
    saved.backbone.zero_init_residual = configured.backbone.zero_init_residual;
    let as_json = |config: &CaptioningModelConfig| {
        serde_json::to_value(config).map_err(|err| VirtexError::Unreadable {
            path: path.to_path_buf(),
            format: "virtex safetensors",
            message: format!("`{CONFIG_KEY}`: {err}"),
        })
    };
    let (found, expected) = (as_json(&saved)?, as_json(configured)?);
    match first_difference(&found, &expected, String::new()) {
        None => Ok(()),
        Some((key, found, expected)) => Err(VirtexError::ArchitectureMismatch {
            path: path.to_path_buf(),
            key,
            expected,
            found,
        }),
    }
}

/// The dotted path and both values (as JSON) of the first difference between two JSON trees.
fn first_difference(
    found: &serde_json::Value,
    expected: &serde_json::Value,
    key: String,
) -> Option<(String, String, String)> {
    use serde_json::Value;
    if let (Value::Object(found_map), Value::Object(expected_map)) = (found, expected) {
        let keys: std::collections::BTreeSet<&String> =
            found_map.keys().chain(expected_map.keys()).collect();
        return keys.into_iter().find_map(|name| {
            let child = if key.is_empty() {
                name.clone()
            } else {
                format!("{key}.{name}")
            };
            first_difference(
                found_map.get(name).unwrap_or(&Value::Null),
                expected_map.get(name).unwrap_or(&Value::Null),
                child,
            )
        });
    }
    (found != expected).then(|| (key, found.to_string(), expected.to_string()))
}

fn load_ours<B: Backend, M: ModuleSnapshot<B>>(model: &mut M, path: &Path) -> Result<()> {
    let mut store = SafetensorsStore::from_file(path)
        .allow_partial(true)
        .validate(false);
    let result = model
        .load_from(&mut store)
        .map_err(|err| VirtexError::Unreadable {
            path: path.to_path_buf(),
            format: "virtex safetensors",
            message: err.to_string(),
        })?;
    if let Some(error) = result.errors.first() {
        return Err(match error {
            ApplyError::ShapeMismatch {
                path: key,
                expected,
                found,
            } => VirtexError::ShapeMismatch {
                path: path.to_path_buf(),
                key: key.clone(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            },
            other => VirtexError::Unreadable {
                path: path.to_path_buf(),
                format: "virtex safetensors",
                message: other.to_string(),
            },
        });
    }
    let mut missing: Vec<&String> = result.missing.iter().map(|(key, _)| key).collect();
    missing.sort();
    if let Some(key) = missing.first() {
        return Err(VirtexError::MissingTensor {
            path: path.to_path_buf(),
            key: key.to_string(),
        });
    }
    let mut unused = result.unused.clone();
    unused.sort();
    if let Some(key) = unused.first() {
        return Err(VirtexError::UnexpectedTensor {
            path: path.to_path_buf(),
            key: key.clone(),
            message: "the configured model has no such tensor".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::ParamId;

    fn snapshot(key: &str, values: Vec<f32>) -> (String, TensorSnapshot) {
        let shape = [values.len()];
        (
            key.to_string(),
            TensorSnapshot::from_data(
                TensorData::new(values, shape),
                key.split('.').map(str::to_string).collect(),
                Vec::new(),
                ParamId::new(),
            ),
        )
    }

    fn file(backward_bias: Vec<f32>) -> OfficialFile {
        OfficialFile {
            path: PathBuf::from("checkpoint.pth"),
            prefix: "model.".into(),
            tensors: BTreeMap::from([
                snapshot("model.textual.output.bias", vec![1.0, 2.0]),
                snapshot("model.backward_textual.output.bias", backward_bias),
                snapshot(
                    "model.backward_textual.transformer.layers.0.norm1.bias",
                    vec![0.0],
                ),
            ]),
        }
    }

    #[test]
    fn duplicated_shared_tensors_must_equal_their_twins() {
        let equal = file(vec![1.0, 2.0]);
        let keys: Vec<&String> = equal
            .tensors
            .keys()
            .filter(|k| k.contains("backward"))
            .collect();
        assert_eq!(equal.check_duplicates(&keys).unwrap(), 1);

        let differing = file(vec![1.0, 2.5]);
        let keys: Vec<&String> = differing
            .tensors
            .keys()
            .filter(|k| k.contains("backward"))
            .collect();
        match differing.check_duplicates(&keys).unwrap_err() {
            VirtexError::DuplicateMismatch { key, twin, .. } => {
                assert_eq!(key, "model.backward_textual.output.bias");
                assert_eq!(twin, "model.textual.output.bias");
            }
            other => panic!("unexpected error {other}"),
        }
    }
}
