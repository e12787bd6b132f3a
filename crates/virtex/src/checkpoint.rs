//! Checkpoints: the official VirTex `.pth` files, and our own format.
//!
//! # Official checkpoints (`torch.save({"model": state_dict, ...})`)
//!
//! The released model-zoo files, and the `checkpoint_{iter}.pth` files of upstream's training
//! script, hold `VirTexModel.state_dict()` under `"model"` (optionally next to `"optimizer"`,
//! `"scheduler"`, `"scaler"`, `"iteration"`, which are ignored). A bare state dict, or a
//! DDP-wrapped one (`module.` prefix), is accepted too.
//!
//! Keys, after that prefix, go through one table ([`SECTIONS`]): the first prefix that
//! matches decides which part of the model a key fills and which crate's table renames it.
//!
//! | keys in the file                          | part of the model                  | renamed by |
//! |-------------------------------------------|------------------------------------|------------|
//! | `visual.cnn.*`                            | `visual.cnn` (the ResNet)          | `virtex_backbone`'s table (`downsample.{0,1}` → `downsample.{conv,bn}`; `num_batches_tracked` ignored) |
//! | `textual.*`                               | `textual` (projection, embedding, forward stack, output bias) | `virtex_textual`'s table (`nn.Linear` weights transposed; the tied `output.weight` checked equal to `embedding.words.weight`) |
//! | `backward_textual.transformer.*`          | `backward_textual.transformer` (bicaptioning only) | `virtex_textual`'s table, as `transformer.*` |
//! | `backward_textual.*` (everything else)    | — shared with `textual`            | checked equal to the `textual.*` twin, dropped |
//! | anything else                             | —                                  | an error: not part of a captioning model |
//!
//! The pretext models read the same files with their own tables:
//! [`ClassificationModel::from_official_checkpoint`] takes `visual.cnn.*` and
//! `textual.output.{weight,bias}` (`[V, C]` weight transposed to burn's `[C, V]`),
//! [`MaskedLmModel::from_official_checkpoint`] takes `visual.cnn.*` and `textual.*` as above
//! (the keys of a forward-only captioning file); any other key is an error naming it.
//!
//! The file is read once; each part is then loaded from the tensors in memory. Loading is
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
//! the metadata (`virtex.config`, with `virtex.model` = `bicaptioning` | `captioning`, which
//! also says whether the model has a backward head), so a file rebuilds its model without any
//! other input. The pretext models write `virtex.model` = `token_classification`,
//! `multilabel_classification` or `masked_lm` with their own configuration. Files written
//! before the two model types became one [`CaptioningModel`] have the same layout and load
//! unchanged.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use burn_store::{ModuleSnapshot, ModuleStore, SafetensorsStore, TensorSnapshot};
use virtex_backbone::{BlockKind, ResNet, ResNetConfig, WeightsFormat};
use virtex_device::{fit_snapshot, Unfit};
use virtex_textual::{
    load_torch_decoder, load_torch_decoder_matching, load_torch_head, load_torch_head_matching,
    NormType, TextualHeadConfig,
};

use crate::classification::{ClassificationKind, ClassificationModel, ClassificationModelConfig};
use crate::config::CaptioningModelConfig;
use crate::error::{Result, VirtexError};
use crate::masked_lm::{MaskedLmModel, MaskedLmModelConfig};
use crate::model::CaptioningModel;

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
    /// Whether the model gets a backward head: `None` = as the file (a bicaptioning file gives
    /// a bicaptioning model), `Some(false)` = forward only (a bicaptioning file's backward
    /// stack is skipped and counted in [`ImportReport::ignored`]), `Some(true)` = the file must
    /// hold one.
    pub caption_backward: Option<bool>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            attention_heads: None,
            dropout: 0.1,
            sos_index: 1,
            eos_index: 2,
            caption_backward: None,
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

/// What [`CaptioningModel::init_from`] loaded into a model whose textual head may be deeper
/// or shallower than the checkpoint's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitReport {
    /// Tensors applied to the CNN (all of the file's: the backbone must be the same).
    pub cnn_tensors: usize,
    /// Keys of the textual heads loaded from the file (PyTorch keys without the file's
    /// `model.` prefix for an official `.pth`, burn paths for ours; the two agree but for the
    /// tied output weight, which ours does not store).
    pub loaded: Vec<String>,
    /// Parameters of the textual heads the file lacks (the layers beyond its depth, or a
    /// backward stack a captioning file has not): freshly initialised.
    pub initialised: Vec<String>,
    /// Keys of the file the model has no parameter for (the layers beyond the model's depth, a
    /// backward stack the model has not): not used.
    pub unused: Vec<String>,
}

/// An official checkpoint's state dict, read once.
struct OfficialFile {
    path: PathBuf,
    prefix: String,
    tensors: BTreeMap<String, TensorSnapshot>,
}

impl OfficialFile {
    /// Every tensor of a `.pth` file, each shape checked against the file's size.
    fn read_tensors(path: &Path) -> Result<BTreeMap<String, TensorSnapshot>> {
        if !path.is_file() {
            return Err(VirtexError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        // The backbone's reader tells a truncated zip from a pickle and names what a file is
        // when it is neither (`BackboneError::DamagedArchive` / `Unreadable`).
        let tensors = virtex_backbone::read_pytorch_snapshots(path)?;
        check_sizes(path, &tensors)?;
        Ok(tensors)
    }

    fn read(path: &Path) -> Result<Self> {
        let tensors = Self::read_tensors(path)?;
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

    /// The shape of `key`, which must have `rank` dimensions (the architecture is read from
    /// them; a damaged file must not make the reading index out of bounds).
    fn shape(&self, key: &str, rank: usize) -> Result<Vec<usize>> {
        let full = format!("{}{key}", self.prefix);
        let shape = self
            .tensors
            .get(&full)
            .map(|snapshot| snapshot.shape.to_vec())
            .ok_or_else(|| VirtexError::MissingTensor {
                path: self.path.clone(),
                key: full.clone(),
            })?;
        if shape.len() != rank || shape.contains(&0) {
            return Err(VirtexError::NotACaptioningCheckpoint {
                path: self.path.clone(),
                message: format!(
                    "`{full}` has shape {shape:?}, expected {rank} non-zero dimensions"
                ),
            });
        }
        Ok(shape)
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
        let words = self.shape("textual.embedding.words.weight", 2)?;
        let positions = self.shape("textual.embedding.positions.weight", 2)?;
        let projection = self.shape("textual.visual_projection.weight", 2)?;
        let (vocab, hidden) = (words[0], words[1]);
        let layers = self.indices("textual.transformer.layers.");
        if layers.is_empty() || layers != (0..layers.len()).collect::<Vec<_>>() {
            return Err(VirtexError::NotACaptioningCheckpoint {
                path: self.path.clone(),
                message: format!("decoder layer indices {layers:?} are not 0..L"),
            });
        }
        let feedforward = self.shape("textual.transformer.layers.0.linear1.weight", 2)?[0];
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
        let has_backward = !self
            .indices("backward_textual.transformer.layers.")
            .is_empty();
        let mut config = CaptioningModelConfig::new(backbone, textual)
            .with_caption_backward(options.caption_backward.unwrap_or(has_backward));
        config.sos_index = options.sos_index;
        config.eos_index = options.eos_index;
        config.validate()?;
        Ok((config, has_backward))
    }

    /// The torchvision ResNet under `visual.cnn.`: stem width, block kind, blocks per stage and
    /// bottleneck width.
    fn infer_backbone(&self) -> Result<ResNetConfig> {
        let stem = self.shape("visual.cnn.conv1.weight", 4)?[0];
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
            let width = self.shape("visual.cnn.layer1.0.conv1.weight", 4)?[0];
            config = config.with_width_per_group(width * 64 / stem.max(1));
        }
        Ok(config)
    }

    /// Loads the keys `cnn_keys` (the backbone's section) into the model's CNN, strictly.
    fn load_cnn<B: Backend>(
        &self,
        cnn: &mut ResNet<B>,
        cnn_keys: &[&String],
    ) -> Result<virtex_backbone::LoadReport> {
        let cnn_snapshots = cnn_keys
            .iter()
            .map(|key| self.tensors[*key].clone())
            .collect();
        Ok(cnn.load_state_dict(
            cnn_snapshots,
            Some(&format!("{}visual.cnn.", self.prefix)),
            WeightsFormat::Pytorch,
            &self.path,
        )?)
    }

    /// The keys of the backbone's section.
    fn cnn_keys(&self) -> Vec<&String> {
        let prefix = format!("{}visual.cnn.", self.prefix);
        self.tensors
            .keys()
            .filter(|key| key.starts_with(&prefix))
            .collect()
    }

    /// [`CaptioningModel::init_from`] for an official file: the architecture up to the depth
    /// must be the model's, the CNN loads strictly, the heads load what matches.
    fn load_matching<B: Backend>(&self, model: &mut CaptioningModel<B>) -> Result<InitReport> {
        let (mut found, _) = self.infer(&ImportOptions {
            attention_heads: Some(model.config.textual.attention_heads),
            ..ImportOptions::default()
        })?;
        found.textual.num_layers = model.config.textual.num_layers;
        found.sos_index = model.config.sos_index;
        found.eos_index = model.config.eos_index;
        found.caption_backward = model.config.caption_backward;
        check_same_architecture(&found, &model.config, &self.path)?;

        let cnn = self.load_cnn(&mut model.visual.cnn, &self.cnn_keys())?;
        let textual_weights = |source| VirtexError::TextualWeights {
            path: self.path.clone(),
            source,
        };
        let mut report = InitReport {
            cnn_tensors: cnn.applied,
            ..InitReport::default()
        };
        // Named without the file's prefix (`model.`, `module.`), as the model's keys are.
        let prefix = self.prefix.clone();
        let local = move |keys: Vec<String>| {
            keys.into_iter()
                .map(|key| key.strip_prefix(&prefix).map(str::to_string).unwrap_or(key))
                .collect::<Vec<_>>()
        };
        let mut absorb = |part: virtex_textual::MatchingLoadReport| {
            report.loaded.extend(local(part.loaded));
            report.initialised.extend(local(part.initialised));
            report.unused.extend(local(part.unused));
        };
        let forward = load_torch_head_matching(
            &mut model.textual,
            &self.tensors,
            &format!("{}textual.", self.prefix),
        )
        .map_err(textual_weights)?;
        absorb(forward);
        let backward_prefix = format!("{}backward_textual.", self.prefix);
        let backward_keys: Vec<String> = self
            .tensors
            .keys()
            .filter(|key| key.starts_with(&backward_prefix))
            .cloned()
            .collect();
        match &mut model.backward_textual {
            Some(head) => {
                let stack = load_torch_decoder_matching(
                    &mut head.transformer,
                    &self.tensors,
                    &format!("{backward_prefix}transformer."),
                )
                .map_err(textual_weights)?;
                absorb(stack);
                // The shared copies (projection, embedding, output) belong to the forward
                // head and were loaded with it.
                let shared: Vec<&String> = backward_keys
                    .iter()
                    .filter(|key| !key.starts_with(&format!("{backward_prefix}transformer.")))
                    .collect();
                self.check_duplicates(&shared)?;
            }
            None => absorb(virtex_textual::MatchingLoadReport {
                unused: backward_keys,
                ..Default::default()
            }),
        }
        Ok(report)
    }

    /// Loads every part of `model` from the tensors read once, through [`SECTIONS`].
    fn load<B: Backend>(&self, model: &mut CaptioningModel<B>) -> Result<ImportReport> {
        let has_backward = !self
            .indices("backward_textual.transformer.layers.")
            .is_empty();
        if model.backward_textual.is_some() && !has_backward {
            return Err(VirtexError::MissingTensor {
                path: self.path.clone(),
                key: format!(
                    "{}backward_textual.transformer.layers.0.self_attn.in_proj_weight",
                    self.prefix
                ),
            });
        }
        let mut parts: BTreeMap<Section, Vec<&String>> = BTreeMap::new();
        for key in self.tensors.keys() {
            let Some(local) = key.strip_prefix(self.prefix.as_str()) else {
                continue;
            };
            let section = SECTIONS
                .iter()
                .find(|(prefix, _)| local.starts_with(prefix))
                .map(|(_, section)| *section)
                .ok_or_else(|| VirtexError::UnexpectedTensor {
                    path: self.path.clone(),
                    key: key.clone(),
                    message: "not part of a captioning model".into(),
                })?;
            parts.entry(section).or_default().push(key);
        }
        let part = |section: Section| parts.get(&section).map_or(&[][..], Vec::as_slice);

        let cnn_report = self.load_cnn(&mut model.visual.cnn, part(Section::Backbone))?;
        let textual_weights = |source| VirtexError::TextualWeights {
            path: self.path.clone(),
            source,
        };
        let textual_report = load_torch_head(
            &mut model.textual,
            &self.tensors,
            &format!("{}textual.", self.prefix),
        )
        .map_err(textual_weights)?;
        let backward_keys = part(Section::BackwardStack).len() + part(Section::Shared).len();
        let (backward_tensors, duplicates_checked, ignored) = match &mut model.backward_textual {
            Some(head) => {
                let applied = load_torch_decoder(
                    &mut head.transformer,
                    &self.tensors,
                    &format!("{}backward_textual.transformer.", self.prefix),
                )
                .map_err(textual_weights)?;
                (applied, self.check_duplicates(part(Section::Shared))?, 0)
            }
            None => (0, 0, backward_keys),
        };
        Ok(ImportReport {
            prefix: self.prefix.clone(),
            config: model.config.clone(),
            has_backward,
            cnn_tensors: cnn_report.applied,
            textual_tensors: textual_report.applied,
            backward_tensors,
            duplicates_checked,
            ignored: ignored + cnn_report.ignored,
        })
    }

    /// Every shared tensor duplicated under `backward_textual.` must equal its `textual.` twin.
    fn check_duplicates(&self, shared_keys: &[&String]) -> Result<usize> {
        let mut checked = 0;
        for key in shared_keys {
            let local = &key[self.prefix.len() + "backward_textual.".len()..];
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

/// Every tensor's shape must fit in the file: the model is built from these shapes before any
/// data is read, so a damaged shape (`[2^40, 512]`) must not size an allocation. A stored
/// tensor can share its storage with others (views, tied weights) but never exceed the file.
fn check_sizes(path: &Path, tensors: &BTreeMap<String, TensorSnapshot>) -> Result<()> {
    let file_length = std::fs::metadata(path)
        .map_err(|source| VirtexError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    for (key, snapshot) in tensors {
        let bytes = snapshot
            .shape
            .iter()
            .try_fold(snapshot.dtype.size() as u64, |count, &dim| {
                count.checked_mul(dim as u64)
            });
        if bytes.is_none_or(|bytes| bytes > file_length) {
            return Err(VirtexError::Unreadable {
                path: path.to_path_buf(),
                format: "PyTorch",
                message: format!(
                    "tensor `{key}` of shape {:?} would need more bytes than the file's \
                     {file_length} (a damaged header)",
                    snapshot.shape.as_slice()
                ),
            });
        }
    }
    Ok(())
}

/// Reads the architecture of an official checkpoint from its tensors. Returns the
/// configuration and whether the file holds a backward decoder (a bicaptioning model).
pub fn infer_official_config(
    path: impl AsRef<Path>,
    options: &ImportOptions,
) -> Result<(CaptioningModelConfig, bool)> {
    OfficialFile::read(path.as_ref())?.infer(options)
}

impl<B: Backend> CaptioningModel<B> {
    /// Builds the model an official checkpoint describes and loads it: a bicaptioning file
    /// gives a model with a backward head unless [`ImportOptions::caption_backward`] says
    /// otherwise.
    pub fn from_official_checkpoint(
        path: impl AsRef<Path>,
        options: &ImportOptions,
        device: &B::Device,
    ) -> Result<(Self, ImportReport)> {
        let file = OfficialFile::read(path.as_ref())?;
        let (config, _) = file.infer(options)?;
        let mut model = config.init(device)?;
        let report = file.load(&mut model)?;
        Ok((model, report))
    }

    /// Loads an official checkpoint into this model, whose configuration must match (an error
    /// names the first mismatched key and both shapes). A model with a backward head needs a
    /// bicaptioning file; a forward-only model skips a file's backward stack.
    ///
    /// The CNN is loaded first and each part is validated before it is applied, so after an
    /// error the model may hold some of the file's tensors: rebuild it before retrying.
    pub fn load_official_weights(&mut self, path: impl AsRef<Path>) -> Result<ImportReport> {
        OfficialFile::read(path.as_ref())?.load(self)
    }

    /// Initialises this model from a checkpoint (an official `.pth` or one of ours) whose
    /// textual head may have another depth: what matches is loaded, the rest keeps its fresh
    /// initialisation, and the report names the loaded, initialised and unused keys.
    ///
    /// Everything but the depth must be this model's (backbone, width, feed-forward size,
    /// norm placement, vocabulary, caption length; an error names the first difference), and
    /// the CNN loads strictly. A captioning file initialises a bicaptioning model's backward
    /// stack (listed as initialised); a bicaptioning file's backward stack is unused by a
    /// forward-only model. With equal depths this loads everything, as
    /// [`CaptioningModel::load_official_weights`] / [`CaptioningModel::load_weights`] do.
    pub fn init_from(&mut self, path: impl AsRef<Path>) -> Result<InitReport> {
        let path = path.as_ref();
        if matches!(WeightsFormat::detect(path)?, WeightsFormat::Pytorch) {
            return OfficialFile::read(path)?.load_matching(self);
        }
        let mut saved = read_saved_config(path)?;
        saved.textual.num_layers = self.config.textual.num_layers;
        saved.caption_backward = self.config.caption_backward;
        check_same_architecture(&saved, &self.config, path)?;
        load_ours_matching(self, path)
    }

    /// Saves in our format (see the module docs).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.visual.cnn.sync_running_statistics();
        save_ours(self, &self.config, path.as_ref())
    }

    /// Loads a model saved by [`CaptioningModel::save`] (either kind).
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let path = path.as_ref();
        let config = read_saved_config(path)?;
        check_config_fits(&config, path)?;
        let mut model = config.init(device)?;
        load_ours(&mut model, path)?;
        Ok(model)
    }

    /// Loads the weights of a model saved by [`CaptioningModel::save`] into this one, keeping
    /// this model's configuration: its dropout (not part of the architecture) in particular, so
    /// a checkpoint can be fine-tuned with other settings. The file's kind (with or without a
    /// backward head) and architecture (backbone, head, vocabulary, caption length, special
    /// tokens) must equal this model's; the first differing key is named otherwise.
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let saved = read_saved_config(path)?;
        if saved.caption_backward != self.config.caption_backward {
            return Err(VirtexError::WrongModelKind {
                path: path.to_path_buf(),
                expected: model_kind(&self.config),
                found: model_kind(&saved).to_string(),
            });
        }
        check_same_architecture(&saved, &self.config, path)?;
        load_ours(self, path)
    }
}

/// The parts of a captioning model, in the order [`SECTIONS`] names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Section {
    /// `visual.cnn.*`: the backbone's table.
    Backbone,
    /// `textual.*`: the head's table.
    Head,
    /// `backward_textual.transformer.*`: the head's table for a decoder stack.
    BackwardStack,
    /// The rest of `backward_textual.*`: copies of tensors `textual` owns.
    Shared,
}

/// The mapping table of an official state dict (keys after the file's prefix): the first
/// matching prefix wins, so the backward stack is found before the shared copies.
const SECTIONS: [(&str, Section); 4] = [
    ("visual.cnn.", Section::Backbone),
    ("textual.", Section::Head),
    ("backward_textual.transformer.", Section::BackwardStack),
    ("backward_textual.", Section::Shared),
];

const BICAPTIONING: &str = "bicaptioning";
const CAPTIONING: &str = "captioning";
const KIND_KEY: &str = "virtex.model";
const CONFIG_KEY: &str = "virtex.config";

/// The which-model tag of our files: written for every model, and the only record of
/// `caption_backward` in files written before that setting existed.
fn model_kind(config: &CaptioningModelConfig) -> &'static str {
    if config.caption_backward {
        BICAPTIONING
    } else {
        CAPTIONING
    }
}

fn save_ours<B: Backend, M: ModuleSnapshot<B>>(
    model: &M,
    config: &CaptioningModelConfig,
    path: &Path,
) -> Result<()> {
    let kind = model_kind(config);
    let config = serde_json::to_value(config).map_err(|err| VirtexError::Write {
        path: path.to_path_buf(),
        message: err.to_string(),
    })?;
    save_tagged(model, kind, &config, path)
}

/// Writes `model` in our format with `kind` as `virtex.model` and `config` (as JSON) as
/// `virtex.config`.
fn save_tagged<B: Backend, M: ModuleSnapshot<B>>(
    model: &M,
    kind: &str,
    config: &serde_json::Value,
    path: &Path,
) -> Result<()> {
    let write_error = |message: String| VirtexError::Write {
        path: path.to_path_buf(),
        message,
    };
    let json = serde_json::to_string(config).map_err(|err| write_error(err.to_string()))?;
    virtex_device::write_atomically(path, |temporary| {
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

/// The configuration stored in a file written by `save`, with `caption_backward` from the
/// file's kind.
fn read_saved_config(path: &Path) -> Result<CaptioningModelConfig> {
    let unreadable = |message: String| VirtexError::Unreadable {
        path: path.to_path_buf(),
        format: "virtex safetensors",
        message,
    };
    let (kind, mut config) = read_saved_metadata(path)?;
    let caption_backward = match kind.as_str() {
        BICAPTIONING => true,
        CAPTIONING => false,
        other => {
            return Err(unreadable(format!(
                "`{KIND_KEY}` is `{other}`, expected `{BICAPTIONING}` or `{CAPTIONING}`"
            )))
        }
    };
    // Files written before the setting existed record it only as their kind.
    if let Some(fields) = config.as_object_mut() {
        fields.insert("caption_backward".into(), caption_backward.into());
    }
    serde_json::from_value(config).map_err(|err| unreadable(format!("`{CONFIG_KEY}`: {err}")))
}

/// The model kind (`virtex.model`) and the configuration (`virtex.config`, parsed) of a file
/// written by one of the models' `save`.
fn read_saved_metadata(path: &Path) -> Result<(String, serde_json::Value)> {
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
    let kind = field(KIND_KEY)?.to_string();
    let config: serde_json::Value = serde_json::from_str(field(CONFIG_KEY)?)
        .map_err(|err| unreadable(format!("`{CONFIG_KEY}`: {err}")))?;
    Ok((kind, config))
}

/// The configuration in a file is read before its tensors and sizes the model that is built
/// for them: a damaged one (`layers: [2^40, …]`, `vocab_size: 2^40`) must be refused before it
/// sizes an allocation, which would abort the process. The model's weights, at 2 bytes each
/// (float16, the smallest accepted), must fit in the file.
fn check_config_fits(config: &CaptioningModelConfig, path: &Path) -> Result<()> {
    check_weights_fit(minimum_weights(config), path)
}

/// [`check_config_fits`] for a lower bound `weights` of a model's number of weights.
fn check_weights_fit(weights: u128, path: &Path) -> Result<()> {
    let file_length = std::fs::metadata(path)
        .map_err(|source| VirtexError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if weights.saturating_mul(2) > u128::from(file_length) {
        return Err(VirtexError::Unreadable {
            path: path.to_path_buf(),
            format: "virtex safetensors",
            message: format!(
                "`{CONFIG_KEY}` describes a model of at least {weights} weights, more than the \
                 file's {file_length} bytes can hold (a damaged configuration)"
            ),
        });
    }
    Ok(())
}

/// A lower bound of the number of weights `config` describes: the convolution, linear and
/// embedding matrices (biases and BatchNorm statistics left out), saturating instead of
/// overflowing.
fn minimum_weights(config: &CaptioningModelConfig) -> u128 {
    let n = |value: usize| value as u128;
    let textual = &config.textual;
    let (hidden, feedforward) = (n(textual.hidden_size), n(textual.feedforward_size));
    // Self- and cross-attention (4 H×H each) and the two feed-forward matrices.
    let layer = product(&[8, hidden, hidden]).saturating_add(product(&[2, hidden, feedforward]));
    let stacks = if config.caption_backward { 2 } else { 1 };
    backbone_minimum_weights(&config.backbone)
        .saturating_add(product(&[n(textual.vocab_size), hidden]))
        .saturating_add(product(&[n(textual.max_caption_length), hidden]))
        .saturating_add(product(&[n(textual.visual_feature_size), hidden]))
        .saturating_add(product(&[stacks, n(textual.num_layers), layer]))
}

/// The saturating product of `factors`.
fn product(factors: &[u128]) -> u128 {
    factors
        .iter()
        .fold(1u128, |total, &factor| total.saturating_mul(factor))
}

/// [`minimum_weights`] of the backbone alone (its convolution matrices).
fn backbone_minimum_weights(backbone: &ResNetConfig) -> u128 {
    let n = |value: usize| value as u128;
    let expansion = n(backbone.block.expansion());
    let stem = n(backbone.stem_channels);
    let mut total = product(&[stem, 3, 49]);
    let mut in_channels = stem;
    for (stage, &blocks) in backbone.layers.iter().enumerate() {
        let planes = stem.saturating_mul(1 << stage);
        let width = product(&[planes, n(backbone.width_per_group)]) / 64;
        let out = planes.saturating_mul(expansion);
        let block = |input: u128| match backbone.block {
            BlockKind::Basic => {
                product(&[input, planes, 9]).saturating_add(product(&[planes, planes, 9]))
            }
            BlockKind::Bottleneck => product(&[input, width])
                .saturating_add(product(&[width, width, 9]))
                .saturating_add(product(&[width, out])),
        };
        let rest = product(&[n(blocks).saturating_sub(1), block(out)]);
        total = total
            .saturating_add(block(in_channels))
            .saturating_add(rest);
        in_channels = out;
    }
    total
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

/// Reads the file's tensors and applies them, every one checked against its parameter first
/// (shape, dtype; see `virtex_backbone::conform_snapshot` for why nothing unchecked may reach
/// burn-store's applier). Errors name the first mis-shaped or refused tensor in the model's
/// order, then the first missing one, then the first the model has no place for.
fn load_ours<B: Backend, M: ModuleSnapshot<B>>(model: &mut M, path: &Path) -> Result<()> {
    load_ours_with(model, path, false).map(|_| ())
}

/// [`CaptioningModel::init_from`] for one of our files: `visual.*` must be complete, the
/// textual heads load what matches.
fn load_ours_matching<B: Backend>(
    model: &mut CaptioningModel<B>,
    path: &Path,
) -> Result<InitReport> {
    load_ours_with(model, path, true)
}

/// Loads our safetensors into `model`. Strict: every parameter present, every stored tensor
/// used. `matching`: outside `visual.`, missing parameters are reported as initialised and
/// extra tensors as unused.
fn load_ours_with<B: Backend, M: ModuleSnapshot<B>>(
    model: &mut M,
    path: &Path,
    matching: bool,
) -> Result<InitReport> {
    let unreadable = |message: String| VirtexError::Unreadable {
        path: path.to_path_buf(),
        format: "virtex safetensors",
        message,
    };
    let mut store = SafetensorsStore::from_file(path);
    let mut stored: BTreeMap<String, TensorSnapshot> = store
        .get_all_snapshots()
        .map_err(|err| unreadable(err.to_string()))?
        .clone();
    let mut checked = Vec::with_capacity(stored.len());
    let mut missing = Vec::new();
    let mut report = InitReport::default();
    let flexible = |key: &str| matching && !key.starts_with("visual.");
    for target in model.collect(None, None, false) {
        let key = target.full_path();
        let Some(snapshot) = stored.remove(&key) else {
            if flexible(&key) {
                report.initialised.push(key);
            } else {
                missing.push(key);
            }
            continue;
        };
        if key.starts_with("visual.") {
            report.cnn_tensors += 1;
        } else {
            report.loaded.push(key.clone());
        }
        let fitted = fit_snapshot(&snapshot, &target.shape, target.dtype)
            .map_err(|unfit| unfit_error(path, key, unfit))?;
        checked.push(fitted);
    }
    missing.sort();
    if let Some(key) = missing.into_iter().next() {
        return Err(VirtexError::MissingTensor {
            path: path.to_path_buf(),
            key,
        });
    }
    let (unused, unexpected): (Vec<String>, Vec<String>) =
        stored.into_keys().partition(|key| flexible(key));
    report.unused = unused;
    if let Some(key) = unexpected.into_iter().next() {
        return Err(VirtexError::UnexpectedTensor {
            path: path.to_path_buf(),
            key,
            message: "the configured model has no such tensor".into(),
        });
    }
    let result = model.apply(checked, None, None, false);
    // Only a read failure (a damaged data section) can remain after the checks above.
    if let Some(error) = result.errors.first() {
        return Err(unreadable(error.to_string()));
    }
    if let Some((key, _)) = result.missing.first().filter(|_| !matching) {
        return Err(VirtexError::MissingTensor {
            path: path.to_path_buf(),
            key: key.clone(),
        });
    }
    Ok(report)
}

// --------------------------------------------------------------------------------------------
// The pretext ablations: classification and masked LM
// --------------------------------------------------------------------------------------------
//
// Their official state dicts use the same prefixes (`model.`, `module.`, …) and the same CNN
// section as the captioning files; the table of each head:
//
// | model          | keys in the file                      | part of the model               |
// |----------------|---------------------------------------|---------------------------------|
// | classification | `visual.cnn.*`                        | `visual.cnn` (backbone's table) |
// |                | `textual.output.weight` `[V, C]`      | `textual.output.weight` `[C, V]` (transposed) |
// |                | `textual.output.bias` `[V]`           | `textual.output.bias`           |
// | masked LM      | `visual.cnn.*`                        | `visual.cnn` (backbone's table) |
// |                | `textual.*`                           | `textual` (`virtex_textual`'s table, as captioning) |
// | both           | anything else                         | an error naming the key         |
//
// A masked LM file has exactly the keys of a forward-only captioning file: what a file holds
// is the caller's claim.

/// What an official import of a pretext model ([`ClassificationModel`], [`MaskedLmModel`])
/// did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PretextImportReport {
    /// The prefix of the model's keys in the file: `"model."`, `""` or `"module."`.
    pub prefix: String,
    /// Tensors applied to the CNN (parameters and BatchNorm statistics).
    pub cnn_tensors: usize,
    /// Tensors applied to the textual head (the tied output weight counted once).
    pub head_tensors: usize,
    /// Keys not loaded on purpose (`num_batches_tracked`).
    pub ignored: usize,
}

const CLASSIFICATION_WEIGHT: &str = "textual.output.weight";
const CLASSIFICATION_BIAS: &str = "textual.output.bias";
const MASKED_LM: &str = "masked_lm";

impl OfficialFile {
    /// Reads a classification checkpoint: its prefix is the one under which
    /// `textual.output.weight` and `visual.cnn.conv1.weight` both exist.
    fn read_classification(path: &Path) -> Result<Self> {
        let tensors = Self::read_tensors(path)?;
        let prefix = ["model.", "", "module.", "model.module."]
            .into_iter()
            .find(|prefix| {
                tensors.contains_key(&format!("{prefix}{CLASSIFICATION_WEIGHT}"))
                    && tensors.contains_key(&format!("{prefix}visual.cnn.conv1.weight"))
            })
            .ok_or_else(|| VirtexError::NotAPretextCheckpoint {
                path: path.to_path_buf(),
                model: "classification",
                message: format!(
                    "it has no `model.{CLASSIFICATION_WEIGHT}` next to \
                     `model.visual.cnn.conv1.weight` ({} tensors)",
                    tensors.len()
                ),
            })?
            .to_string();
        Ok(Self {
            path: path.to_path_buf(),
            prefix,
            tensors,
        })
    }

    /// The keys of the model's namespace split into the CNN's and the head's; any other key
    /// is an error (`head` tells whether a key after the prefix is the head's).
    fn split_pretext(
        &self,
        model: &str,
        head: impl Fn(&str) -> bool,
        hint: impl Fn(&str) -> Option<&'static str>,
    ) -> Result<(Vec<&String>, Vec<&String>)> {
        let (mut cnn, mut textual) = (Vec::new(), Vec::new());
        for key in self.tensors.keys() {
            let Some(local) = key.strip_prefix(self.prefix.as_str()) else {
                continue;
            };
            if local.starts_with("visual.cnn.") {
                cnn.push(key);
            } else if head(local) {
                textual.push(key);
            } else {
                let what = hint(local).map(|h| format!(" ({h})")).unwrap_or_default();
                return Err(VirtexError::UnexpectedTensor {
                    path: self.path.clone(),
                    key: key.clone(),
                    message: format!("not part of a {model} model{what}"),
                });
            }
        }
        Ok((cnn, textual))
    }

    fn infer_classification(&self, kind: ClassificationKind) -> Result<ClassificationModelConfig> {
        // What does not belong is named before the shapes are read.
        self.classification_cnn_keys()?;
        let backbone = self.infer_backbone()?;
        let output = self.shape(CLASSIFICATION_WEIGHT, 2)?;
        let channels = backbone.output_channels();
        if output[1] != channels {
            return Err(VirtexError::ShapeMismatch {
                path: self.path.clone(),
                key: format!("{}{CLASSIFICATION_WEIGHT}", self.prefix),
                expected: vec![output[0], channels],
                found: output,
            });
        }
        let config = ClassificationModelConfig::new(backbone, kind, output[0]);
        config.validate()?;
        Ok(config)
    }

    /// The tensor `key` (after the prefix) as `shape` f32 data, checked before it is read.
    fn read_exact(&self, key: &str, shape: &[usize]) -> Result<TensorData> {
        let full = format!("{}{key}", self.prefix);
        let snapshot = self
            .tensors
            .get(&full)
            .ok_or_else(|| VirtexError::MissingTensor {
                path: self.path.clone(),
                key: full.clone(),
            })?;
        let fitted = fit_snapshot(snapshot, shape, DType::F32)
            .map_err(|unfit| unfit_error(&self.path, full.clone(), unfit))?;
        fitted.to_data().map_err(|err| VirtexError::Unreadable {
            path: self.path.clone(),
            format: "PyTorch",
            message: format!("tensor `{full}`: {err:?}"),
        })
    }

    /// The CNN's keys of a classification file; any key but the CNN's and the linear head's
    /// is an error.
    fn classification_cnn_keys(&self) -> Result<Vec<&String>> {
        let (cnn_keys, _) = self.split_pretext(
            "classification",
            |local| local == CLASSIFICATION_WEIGHT || local == CLASSIFICATION_BIAS,
            |local| {
                local
                    .starts_with("textual.")
                    .then_some("a transformer textual head: a captioning or masked LM checkpoint?")
            },
        )?;
        Ok(cnn_keys)
    }

    fn load_classification<B: Backend>(
        &self,
        model: &mut ClassificationModel<B>,
    ) -> Result<PretextImportReport> {
        let cnn_keys = self.classification_cnn_keys()?;
        let [channels, vocab] = model.textual.output.weight.dims();
        // Both tensors are read and checked before the model changes.
        let weight = self.read_exact(CLASSIFICATION_WEIGHT, &[vocab, channels])?;
        let bias = self.read_exact(CLASSIFICATION_BIAS, &[vocab])?;
        let cnn = self.load_cnn(&mut model.visual.cnn, &cnn_keys)?;
        let output = &mut model.textual.output;
        let device = output.weight.device();
        let weight = Tensor::<B, 2>::from_data(weight, &device).transpose();
        output.weight = output.weight.clone().map(|old| {
            let require_grad = old.is_require_grad();
            weight.set_require_grad(require_grad)
        });
        let bias = Tensor::<B, 1>::from_data(bias, &device);
        output.bias = output.bias.take().map(|param| {
            param.map(|old| {
                let require_grad = old.is_require_grad();
                bias.set_require_grad(require_grad)
            })
        });
        Ok(PretextImportReport {
            prefix: self.prefix.clone(),
            cnn_tensors: cnn.applied,
            head_tensors: 2,
            ignored: cnn.ignored,
        })
    }

    fn load_masked_lm<B: Backend>(
        &self,
        model: &mut MaskedLmModel<B>,
    ) -> Result<PretextImportReport> {
        let (cnn_keys, _) = self.split_pretext(
            "masked LM",
            |local| local.starts_with("textual."),
            |local| {
                local
                    .starts_with("backward_textual.")
                    .then_some("a bicaptioning checkpoint? masked LM has one textual head")
            },
        )?;
        let cnn = self.load_cnn(&mut model.visual.cnn, &cnn_keys)?;
        let head = load_torch_head(
            &mut model.textual,
            &self.tensors,
            &format!("{}textual.", self.prefix),
        )
        .map_err(|source| VirtexError::TextualWeights {
            path: self.path.clone(),
            source,
        })?;
        Ok(PretextImportReport {
            prefix: self.prefix.clone(),
            cnn_tensors: cnn.applied,
            head_tensors: head.applied,
            ignored: cnn.ignored,
        })
    }
}

/// The error of a tensor that does not fit its parameter.
fn unfit_error(path: &Path, key: String, unfit: Unfit) -> VirtexError {
    let path = path.to_path_buf();
    match unfit {
        Unfit::Shape { expected, found } => VirtexError::ShapeMismatch {
            path,
            key,
            expected,
            found,
        },
        Unfit::DType { expected, found } => VirtexError::UnsupportedDType {
            path,
            key,
            found,
            expected,
        },
    }
}

/// The configuration of a pretext model saved in our format, whose `virtex.model` must be one
/// of `kinds`.
fn read_pretext_config(path: &Path, kinds: &[&'static str]) -> Result<(String, serde_json::Value)> {
    let (kind, config) = read_saved_metadata(path)?;
    if !kinds.contains(&kind.as_str()) {
        return Err(VirtexError::WrongModelKind {
            path: path.to_path_buf(),
            expected: kinds[0],
            found: kind,
        });
    }
    Ok((kind, config))
}

/// Errors on the first key where a saved pretext configuration differs from the model's,
/// ignoring the settings that do not change what the weights compute (as
/// [`check_same_architecture`]).
fn check_same_pretext_architecture(
    mut saved: serde_json::Value,
    configured: &serde_json::Value,
    path: &Path,
) -> Result<()> {
    for setting in [
        "/backbone/bn_momentum",
        "/backbone/zero_init_residual",
        "/textual/dropout",
    ] {
        if let (Some(found), Some(expected)) =
            (saved.pointer_mut(setting), configured.pointer(setting))
        {
            *found = expected.clone();
        }
    }
    match first_difference(&saved, configured, String::new()) {
        None => Ok(()),
        Some((key, found, expected)) => Err(VirtexError::ArchitectureMismatch {
            path: path.to_path_buf(),
            key,
            expected,
            found,
        }),
    }
}

/// The error of a configuration that does not parse.
fn config_error(path: &Path, err: serde_json::Error) -> VirtexError {
    VirtexError::Unreadable {
        path: path.to_path_buf(),
        format: "virtex safetensors",
        message: format!("`{CONFIG_KEY}`: {err}"),
    }
}

/// The error of a configuration that does not serialise.
fn write_config_error(path: &Path, err: serde_json::Error) -> VirtexError {
    VirtexError::Write {
        path: path.to_path_buf(),
        message: err.to_string(),
    }
}

impl<B: Backend> ClassificationModel<B> {
    /// Builds the model an official classification checkpoint describes (backbone from
    /// `visual.cnn.*`, `V` from `textual.output.weight`) and loads it. The file cannot tell
    /// token from multilabel classification (only the ignored ids differ): `kind` says which.
    pub fn from_official_checkpoint(
        path: impl AsRef<Path>,
        kind: ClassificationKind,
        device: &B::Device,
    ) -> Result<(Self, PretextImportReport)> {
        let file = OfficialFile::read_classification(path.as_ref())?;
        let config = file.infer_classification(kind)?;
        let mut model = config.init(device)?;
        let report = file.load_classification(&mut model)?;
        Ok((model, report))
    }

    /// Saves in our format (`virtex.model` = the kind's name, `virtex.config` = the
    /// configuration; see [`crate::CaptioningModel::save`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.visual.cnn.sync_running_statistics();
        let config =
            serde_json::to_value(&self.config).map_err(|err| write_config_error(path, err))?;
        save_tagged(self, self.config.kind.name(), &config, path)
    }

    /// Loads a model saved by [`ClassificationModel::save`].
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let path = path.as_ref();
        let kinds = [
            ClassificationKind::Token.name(),
            ClassificationKind::Multilabel.name(),
        ];
        let (kind, config) = read_pretext_config(path, &kinds)?;
        let config: ClassificationModelConfig =
            serde_json::from_value(config).map_err(|err| config_error(path, err))?;
        if config.kind.name() != kind {
            return Err(VirtexError::Unreadable {
                path: path.to_path_buf(),
                format: "virtex safetensors",
                message: format!(
                    "`{KIND_KEY}` is `{kind}` but `{CONFIG_KEY}` describes {}",
                    config.kind.name()
                ),
            });
        }
        let head = product(&[
            config.backbone.output_channels() as u128,
            config.vocab_size as u128,
        ]);
        check_weights_fit(
            backbone_minimum_weights(&config.backbone).saturating_add(head),
            path,
        )?;
        let mut model = config.init(device)?;
        load_ours(&mut model, path)?;
        Ok(model)
    }
}

impl<B: Backend> ClassificationModel<B> {
    /// Loads the weights of a model saved by [`ClassificationModel::save`] into this one,
    /// keeping this model's configuration; the file's kind and architecture must be this
    /// model's (the first differing key is named otherwise).
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let kind = self.config.kind.name();
        let (_, saved) = read_pretext_config(path, &[kind])?;
        let configured =
            serde_json::to_value(&self.config).map_err(|err| config_error(path, err))?;
        check_same_pretext_architecture(saved, &configured, path)?;
        load_ours(self, path)
    }
}

impl<B: Backend> MaskedLmModel<B> {
    /// Loads the weights of a model saved by [`MaskedLmModel::save`] into this one, keeping
    /// this model's configuration (its dropout in particular); the architecture must be this
    /// model's (the first differing key is named otherwise).
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let (_, saved) = read_pretext_config(path, &[MASKED_LM])?;
        let configured =
            serde_json::to_value(&self.config).map_err(|err| config_error(path, err))?;
        check_same_pretext_architecture(saved, &configured, path)?;
        load_ours(self, path)
    }
}

impl<B: Backend> MaskedLmModel<B> {
    /// Builds the model an official masked LM checkpoint describes (read as
    /// [`crate::infer_official_config`] reads a captioning one) and loads it. A file with a
    /// backward head is refused.
    pub fn from_official_checkpoint(
        path: impl AsRef<Path>,
        options: &ImportOptions,
        device: &B::Device,
    ) -> Result<(Self, PretextImportReport)> {
        let file = OfficialFile::read(path.as_ref())?;
        let (config, _) = file.infer(&ImportOptions {
            caption_backward: Some(false),
            ..options.clone()
        })?;
        let config = MaskedLmModelConfig::new(
            config.backbone,
            config.textual.with_mask_future_positions(false),
        );
        let mut model = config.init(device)?;
        let report = file.load_masked_lm(&mut model)?;
        Ok((model, report))
    }

    /// Saves in our format (`virtex.model` = `masked_lm`; see
    /// [`crate::CaptioningModel::save`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.visual.cnn.sync_running_statistics();
        let config =
            serde_json::to_value(&self.config).map_err(|err| write_config_error(path, err))?;
        save_tagged(self, MASKED_LM, &config, path)
    }

    /// Loads a model saved by [`MaskedLmModel::save`].
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let path = path.as_ref();
        let (_, config) = read_pretext_config(path, &[MASKED_LM])?;
        let config: MaskedLmModelConfig =
            serde_json::from_value(config).map_err(|err| config_error(path, err))?;
        let bound = CaptioningModelConfig::new(config.backbone.clone(), config.textual.clone())
            .with_caption_backward(false);
        check_weights_fit(minimum_weights(&bound), path)?;
        let mut model = config.init(device)?;
        load_ours(&mut model, path)?;
        Ok(model)
    }
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
    fn the_weight_bound_is_a_lower_bound_within_half() {
        use burn::backend::Flex;
        let tiny = CaptioningModelConfig::new(
            ResNetConfig::new(BlockKind::Bottleneck, [2, 1, 1, 1]).with_stem_channels(4),
            TextualHeadConfig::new(128, 50, 16, 2, 2, 64),
        );
        let basic = CaptioningModelConfig::new(
            ResNetConfig::new(BlockKind::Basic, [1, 2, 1, 1]).with_stem_channels(8),
            TextualHeadConfig::new(64, 100, 32, 1, 4, 48),
        )
        .with_caption_backward(false);
        for config in [tiny, basic] {
            let model = config.init::<Flex>(&Default::default()).unwrap();
            let actual = model.num_params() as u128;
            let bound = minimum_weights(&config);
            assert!(
                bound <= actual && bound * 2 >= actual,
                "{bound} vs {actual}"
            );
        }
        let mut huge = CaptioningModelConfig::virtex();
        huge.backbone.layers[2] = 1 << 40;
        assert!(minimum_weights(&huge) > 1 << 50);
        huge.textual.vocab_size = usize::MAX;
        huge.backbone.stem_channels = usize::MAX;
        assert_eq!(minimum_weights(&huge), u128::MAX);
    }

    #[test]
    fn duplicated_shared_tensors_must_equal_their_twins() {
        let equal = file(vec![1.0, 2.0]);
        let keys: Vec<&String> = equal
            .tensors
            .keys()
            .filter(|k| k.contains("backward") && !k.contains("transformer"))
            .collect();
        assert_eq!(equal.check_duplicates(&keys).unwrap(), 1);

        let differing = file(vec![1.0, 2.5]);
        let keys: Vec<&String> = differing
            .tensors
            .keys()
            .filter(|k| k.contains("backward") && !k.contains("transformer"))
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
