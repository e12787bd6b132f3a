//! Factories: the model, optimizer, schedule and datasets a [`PretrainConfig`] names (upstream
//! `virtex/factories.py`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use virtex::{
    CaptioningModel, CaptioningModelConfig, ClassificationModel, ClassificationModelConfig,
    MaskedLmModel, MaskedLmModelConfig,
};
use virtex_data::{
    BatchPart, CaptionChoice, CaptionSource, CaptioningDataset, CocoCaptions, CocoInstances,
    CocoOptions, DataError, DataLoader, FlipCaption, ImageSubset, ImageTransforms, LoaderConfig,
    PlainCaptions, PlainOptions, SentencePieceBpeTokenizer, ShardCaptioning, ShardDataset,
    ShardList, ShardSplit, Split,
};
use virtex_optim::{
    GroupRule, GroupedOptimizerConfig, LookaheadConfig, LrDecay, LrScheduleConfig,
    ParamGroupsConfig, TorchSgdConfig,
};

use crate::config::{DataFormat, PretrainConfig};
use crate::data_parallel::Topology;
use crate::error::TrainError;

/// Upstream's `PretrainingModelFactory`: the model `model.name` names, freshly initialised.
/// `bicaptioning` / `virtex` and `captioning` are one [`CaptioningModel`], with and without its
/// backward head.
pub fn captioning_model<B: Backend>(
    config: &PretrainConfig,
    device: &B::Device,
) -> Result<CaptioningModel<B>, TrainError> {
    Ok(model_config(config, config.data.vocab_size)?.init(device)?)
}

/// The classification model `model.name = token_classification` or
/// `multilabel_classification` names (upstream `TokenClassificationModel` /
/// `MultiLabelClassificationModel`): `model.visual` pooled into a linear layer over
/// `data.vocab_size` classes (the tokenizer's pieces, or COCO's 80 categories + background).
pub fn classification_model<B: Backend>(
    config: &PretrainConfig,
    device: &B::Device,
) -> Result<ClassificationModel<B>, TrainError> {
    if !["token_classification", "multilabel_classification"].contains(&config.model.name.as_str())
    {
        return Err(TrainError::Config(format!(
            "model.name `{}` is not a classification pretext",
            config.model.name
        )));
    }
    ClassificationModelConfig::from_names(
        &config.model.name,
        &config.model.visual,
        config.data.vocab_size,
    )
    .map_err(|err| TrainError::Config(format!("model: {err}")))?
    .init(device)
    .map_err(TrainError::from)
}

/// The masked language model `model.name = masked_lm` names (upstream `MaskedLMModel`): the
/// captioning head's transformer without the causal mask.
pub fn masked_lm_model<B: Backend>(
    config: &PretrainConfig,
    device: &B::Device,
) -> Result<MaskedLmModel<B>, TrainError> {
    let mut model = MaskedLmModelConfig::from_names(
        &config.model.visual,
        &config.model.textual,
        config.data.vocab_size,
        config.data.max_caption_length,
        config.model.dropout,
    )
    .map_err(|err| TrainError::Config(format!("model: {err}")))?;
    model.textual.padding_idx = config.data.padding_index as usize;
    model.init(device).map_err(TrainError::from)
}

/// The model's configuration from the pretraining config and the tokenizer.
pub fn model_config(
    config: &PretrainConfig,
    vocab_size: usize,
) -> Result<CaptioningModelConfig, TrainError> {
    let caption_backward = match config.model.name.as_str() {
        "bicaptioning" | "virtex" => true,
        "captioning" => false,
        other => {
            return Err(TrainError::Config(format!(
                "model.name `{other}`: expected bicaptioning, virtex or captioning"
            )))
        }
    };
    CaptioningModelConfig::from_names(
        &config.model.visual,
        &config.model.textual,
        vocab_size,
        config.data.max_caption_length,
        config.model.dropout,
    )
    .map(|mut model| {
        model.textual.padding_idx = config.data.padding_index as usize;
        model.with_caption_backward(caption_backward)
    })
    .map_err(|err| TrainError::Config(format!("model: {err}")))
}

/// The optimizer configuration of a pretraining config (upstream `OptimizerFactory` and
/// `LRSchedulerFactory`): LR group "visual" (`cnn_lr`) for every parameter whose path contains
/// "cnn", the common `lr` for the rest, no weight decay where `optim.no_decay` matches, SGD
/// momentum/Nesterov, Lookahead, warmup + decay schedule and the global gradient-norm clip.
pub fn optimizer_config(config: &PretrainConfig) -> Result<GroupedOptimizerConfig, TrainError> {
    let optim = &config.optim;
    let decay = LrDecay::from_name(&optim.lr_decay_name)
        .map_err(|err| TrainError::Config(format!("optim.lr_decay_name: {err}")))?;
    let no_decay = if optim.no_decay.is_empty() {
        None
    } else {
        Some(optim.no_decay.clone())
    };
    Ok(GroupedOptimizerConfig::new()
        .with_groups(
            ParamGroupsConfig::new()
                .with_rules(vec![GroupRule::new(
                    "visual".to_string(),
                    "cnn".to_string(),
                    optim.cnn_lr,
                )])
                .with_lr(optim.lr)
                .with_weight_decay(optim.weight_decay)
                .with_no_decay(no_decay),
        )
        .with_optimizer(optim.optimizer_name)
        .with_sgd(
            TorchSgdConfig::new()
                .with_momentum(optim.sgd_momentum)
                .with_nesterov(optim.sgd_nesterov),
        )
        .with_lookahead(optim.lookahead.enabled.then(|| {
            LookaheadConfig::new()
                .with_alpha(optim.lookahead.alpha)
                .with_steps(optim.lookahead.steps as usize)
        }))
        .with_schedule(
            LrScheduleConfig::new()
                .with_total_steps(optim.num_iterations as usize)
                .with_warmup_steps(optim.warmup_steps as usize)
                .with_milestones(optim.lr_steps.iter().map(|&s| s as usize).collect())
                .with_gamma(optim.lr_gamma)
                .with_decay(decay),
        )
        .with_clip_grad_norm((optim.clip_grad_norm > 0.0).then_some(optim.clip_grad_norm)))
}

/// The data root and tokenizer file this config points to (sample data by default).
///
/// Without `data.tokenizer`, a data root's tokenizer is the first that exists of
/// [`default_tokenizer_candidates`]; an error lists them when none does. With
/// `data.format = plain` and no `data.root`, the root is the directory of
/// `data.captions_train` (there is no sample tokenizer to fall back on).
pub fn data_paths(config: &PretrainConfig) -> Result<(PathBuf, PathBuf), TrainError> {
    let plain = config.data.format == DataFormat::Plain;
    let root = match &config.data.root {
        None if plain => {
            let file = config
                .data
                .captions_train
                .as_ref()
                .or(config.data.captions_val.as_ref())
                .ok_or_else(|| {
                    TrainError::Config(
                        "data.format is plain but neither data.root nor data.captions_train \
                         is set"
                            .into(),
                    )
                })?;
            let dir = match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !dir.is_dir() {
                return Err(TrainError::Config(format!(
                    "the directory of the captions file `{}` does not exist",
                    file.display()
                )));
            }
            Some(dir)
        }
        root => root.clone(),
    };
    let Some(root) = root else {
        let tokenizer = config
            .data
            .tokenizer
            .clone()
            .unwrap_or_else(virtex_data::sample_vocab_path);
        return Ok((virtex_data::sample_data_root(), tokenizer));
    };
    if !root.is_dir() {
        let expected = if plain {
            "`train.jsonl` and `val.jsonl` (or .ndjson, .tsv) for data.format=plain"
        } else {
            "COCO's `annotations/`, `train2017/` and `val2017/`"
        };
        return Err(TrainError::Config(format!(
            "the data root `{}` is not a directory (expected {expected})",
            root.display()
        )));
    }
    if let Some(tokenizer) = &config.data.tokenizer {
        return Ok((root, tokenizer.clone()));
    }
    let candidates = default_tokenizer_candidates(&root);
    match candidates.iter().find(|path| path.is_file()) {
        Some(tokenizer) => Ok((root.clone(), tokenizer.clone())),
        None => {
            let tried: Vec<String> = candidates
                .iter()
                .map(|path| format!("`{}`", path.display()))
                .collect();
            Err(TrainError::Config(format!(
                "no tokenizer found for the data root (tried {}); pass --tokenizer \
                 (upstream's is datasets/vocab/coco_10k.model)",
                tried.join(", ")
            )))
        }
    }
}

/// Where a data root's tokenizer is looked for: `vocab.json` (ours) or upstream's
/// `coco_10k.model`, in `vocab/` inside the root or next to it (upstream's `datasets/coco` and
/// `datasets/vocab`).
pub fn default_tokenizer_candidates(root: &Path) -> Vec<PathBuf> {
    let mut candidates = vec![
        root.join("vocab.json"),
        root.join("vocab").join("coco_10k.model"),
    ];
    if let Some(parent) = root.parent() {
        candidates.push(parent.join("vocab").join("coco_10k.model"));
    }
    candidates
}

/// The training and validation loaders of a run.
pub struct TrainingData {
    /// Training split: shuffled (per `data.shuffle`), augmented, incomplete batches dropped.
    pub train: DataLoader,
    /// Validation split: in order, centre crops, every image.
    pub val: DataLoader,
}

/// Both loaders of a run ([`TrainingData`]); `data.vocab_size` is checked against the
/// tokenizer.
pub fn training_data(config: &PretrainConfig) -> Result<TrainingData, TrainError> {
    training_data_for_node(config, Topology::single_node(1))
}

/// [`training_data`] for one node of a (multi-node) run: the training loader yields this
/// node's part of every global micro-batch (its devices' shards). It reads every global
/// micro-batch and decodes only that part ([`Topology::batch_part`]), or, with
/// `data.shards_by_node`, reads only this node's WebDataset shards and batches its share from
/// them. The validation loader is whole (node 0 validates).
pub fn training_data_for_node(
    config: &PretrainConfig,
    topology: Topology,
) -> Result<TrainingData, TrainError> {
    let loaders = Loaders::new(config)?;
    let train = if config.data.shards_by_node && topology.num_nodes > 1 {
        loaders.train_shards_by_node(topology)?
    } else {
        loaders.train(topology.batch_part())?
    };
    Ok(TrainingData {
        train,
        val: loaders.val()?,
    })
}

/// The validation loader alone: evaluation needs no training split (whose batch size may
/// exceed a small split's size).
pub fn validation_data(config: &PretrainConfig) -> Result<DataLoader, TrainError> {
    Loaders::new(config)?.val()
}

/// What both splits' loaders share.
struct Loaders<'a> {
    config: &'a PretrainConfig,
    root: PathBuf,
    tokenizer: Arc<SentencePieceBpeTokenizer>,
    options: CocoOptions,
}

impl<'a> Loaders<'a> {
    fn new(config: &'a PretrainConfig) -> Result<Self, TrainError> {
        let (root, tokenizer_path) = data_paths(config)?;
        let tokenizer = Arc::new(SentencePieceBpeTokenizer::from_file(&tokenizer_path)?);
        // Multilabel classification's classes are the object categories (checked against the
        // instances file in `loader`); its captions are read but not trained on.
        if !is_multilabel(config) && tokenizer.vocab_size() != config.data.vocab_size {
            return Err(TrainError::Config(format!(
                "data.vocab_size is {} but the tokenizer `{}` has {} pieces; set \
                 data.vocab_size to match (the model's vocabulary is the tokenizer's)",
                config.data.vocab_size,
                tokenizer_path.display(),
                tokenizer.vocab_size()
            )));
        }
        let unk = tokenizer.special_ids().unk;
        if unk != config.data.padding_index {
            return Err(TrainError::Config(format!(
                "data.padding_index is {} but the tokenizer `{}` has `<unk>` (the padding \
                 token) at id {unk}; set data.padding_index={unk}",
                config.data.padding_index,
                tokenizer_path.display(),
            )));
        }
        let options = CocoOptions {
            skip_bad_images: config.data.skip_bad_images,
            ..CocoOptions::default()
        };
        Ok(Self {
            config,
            root,
            tokenizer,
            options,
        })
    }

    fn train(&self, part: Option<BatchPart>) -> Result<DataLoader, TrainError> {
        self.loader(
            Split::Train,
            self.train_transforms()?,
            self.config.data.shuffle,
            true,
            part,
        )
    }

    /// The training loader over this node's own shards (`data.shards_by_node`): shard `i` goes
    /// to node `i % num_nodes`; each batch is the node's share of a global micro-batch.
    fn train_shards_by_node(&self, topology: Topology) -> Result<DataLoader, TrainError> {
        let config = self.config;
        let micro_batch = config.optim.batch_size / config.optim.accumulation_steps;
        if !micro_batch.is_multiple_of(topology.num_nodes) {
            return Err(TrainError::Config(format!(
                "data.shards_by_node: each node batches its share of every micro-batch of \
                 {micro_batch} images, which {} nodes cannot share evenly; make \
                 optim.batch_size / optim.accumulation_steps a multiple of the node count",
                topology.num_nodes
            )));
        }
        let node_batch = micro_batch / topology.num_nodes;
        let captioning = self.shard_captioning(self.train_transforms()?)?;
        let split = ShardSplit {
            rank: topology.node_rank,
            world_size: topology.num_nodes,
            worker: 0,
            num_workers: 1,
        };
        let shards = shard_dataset(config, Split::Train, captioning, split)?;
        if shards.len() < node_batch {
            return Err(TrainError::Config(format!(
                "data.shards_by_node: node {}'s shards of `{}` hold {} samples, fewer than its \
                 {node_batch} per micro-batch",
                topology.node_rank,
                shards.list.pattern(),
                shards.len()
            )));
        }
        Ok(DataLoader::from_shards(
            shards,
            loader_config(config, node_batch, (config.data.shuffle, true), None),
        )?)
    }

    /// The training split's transforms (`data.image_transform_train`, augmentations on).
    fn train_transforms(&self) -> Result<ImageTransforms, TrainError> {
        let data = &self.config.data;
        let flip = if data.upstream_flip_substring_swap {
            FlipCaption::Substring
        } else {
            FlipCaption::WholeWord
        };
        let transforms = if data.image_transform_train.is_empty() {
            ImageTransforms::no_augmentation(data.image_crop_size)
        } else {
            ImageTransforms::from_names(&data.image_transform_train, data.image_crop_size, flip)
        }?
        .with_resize_mode(data.resize_mode);
        Ok(transforms)
    }

    fn val(&self) -> Result<DataLoader, TrainError> {
        let data = &self.config.data;
        let transforms = ImageTransforms::from_names(
            &data.image_transform_val,
            data.image_crop_size,
            FlipCaption::WholeWord,
        )?
        .with_resize_mode(data.resize_mode);
        self.loader(Split::Val, transforms, false, false, None)
    }

    /// The captioned images of `split`, in the format `data.format` names.
    fn captions(&self, split: Split) -> Result<CaptionSource, TrainError> {
        let data = &self.config.data;
        if data.format == DataFormat::Coco {
            return Ok(CocoCaptions::load(&self.root, split, &self.options)?.into());
        }
        let (key, explicit) = match split {
            Split::Train => ("data.captions_train", &data.captions_train),
            Split::Val => ("data.captions_val", &data.captions_val),
        };
        let file = match explicit {
            Some(file) => file.clone(),
            None => {
                PlainCaptions::split_file(&self.root, split.name()).map_err(|err| match err {
                    // Said in the config's keys: the file can be named instead.
                    DataError::MissingSplitFile { .. } => {
                        TrainError::Config(format!("{err}; or set {key}"))
                    }
                    other => other.into(),
                })?
            }
        };
        let options = PlainOptions {
            image_root: data.image_root.clone(),
            format: None,
            skip_bad_images: self.options.skip_bad_images,
            verify_images: self.options.verify_images,
        };
        Ok(PlainCaptions::load(file, &options)?.into())
    }

    /// The training images and captions `data.image_fraction` / `data.image_count` and
    /// `data.captions_per_image` keep, logged on stderr (kept / total) when either is set.
    fn training_subset(&self, images: CaptionSource) -> Result<CaptionSource, TrainError> {
        let data = &self.config.data;
        let subset = data.image_subset();
        if subset == ImageSubset::All && data.captions_per_image.is_none() {
            return Ok(images);
        }
        let (total_images, total_captions) = (images.len(), images.captions().count());
        if let ImageSubset::Count(count) = subset {
            if count > total_images {
                return Err(TrainError::Config(format!(
                    "data.image_count is {count} but the training split `{}` has only \
                     {total_images} images",
                    images.annotations_path().display()
                )));
            }
        }
        let config_error = |key: &str, err: DataError| TrainError::Config(format!("{key}: {err}"));
        let mut images = images
            .with_image_subset(subset, data.subset_seed)
            .map_err(|err| config_error("data.image_fraction / data.image_count", err))?;
        if let Some(k) = data.captions_per_image {
            images = images
                .with_captions_per_image(k)
                .map_err(|err| config_error("data.captions_per_image", err))?;
        }
        let rule = match subset {
            ImageSubset::All => "every image".to_string(),
            ImageSubset::Fraction(fraction) => {
                format!(
                    "data.image_fraction={fraction}, data.subset_seed={}",
                    data.subset_seed
                )
            }
            ImageSubset::Count(count) => {
                format!(
                    "data.image_count={count}, data.subset_seed={}",
                    data.subset_seed
                )
            }
        };
        let per_image = data
            .captions_per_image
            .map_or("every caption".to_string(), |k| {
                format!("data.captions_per_image={k}")
            });
        eprintln!(
            "data efficiency: training on {} of {total_images} images ({rule}) and {} of \
             {total_captions} captions ({per_image})",
            images.len(),
            images.captions().count(),
        );
        Ok(images)
    }

    fn loader(
        &self,
        split: Split,
        transforms: ImageTransforms,
        shuffle: bool,
        drop_last: bool,
        part: Option<BatchPart>,
    ) -> Result<DataLoader, TrainError> {
        let config = self.config;
        if config.data.format == DataFormat::WebDataset {
            return self.shard_loader(split, transforms, (shuffle, drop_last), part);
        }
        let images = self.captions(split)?;
        // Only the training split is subset: validation losses stay comparable across the
        // data-efficiency runs.
        let labels = if is_multilabel(config) {
            Some(Arc::new(object_labels(config, &self.root, split)?))
        } else {
            None
        };
        // Upstream's multilabel dataset holds only images with an object label: dropped before
        // the subset, so `data.image_fraction` is a fraction of the images trained on.
        let images = match &labels {
            Some(labels) => images.with_labelled_images(labels)?,
            None => images,
        };
        let images = match split {
            Split::Train => self.training_subset(images)?,
            Split::Val => images,
        };
        let micro_batch = config.optim.batch_size / config.optim.accumulation_steps;
        if drop_last && images.len() < micro_batch {
            // Said here in the config's own keys; the loader would name its internal field.
            return Err(TrainError::Config(format!(
                "optim.batch_size / optim.accumulation_steps = {micro_batch} images per \
                 micro-batch, but the {} split has only {} images: lower optim.batch_size or \
                 raise optim.accumulation_steps",
                split.name(),
                images.len()
            )));
        }
        let mut dataset = CaptioningDataset::new(images, self.tokenizer.clone(), transforms)?
            .with_caption_choice(caption_choice(config))
            .with_max_caption_length(config.data.max_caption_length)?
            .with_padding_index(config.data.padding_index);
        if let Some(labels) = labels {
            dataset = dataset.with_object_labels(labels)?;
        }
        Ok(DataLoader::new(
            dataset,
            loader_config(
                config,
                config.optim.batch_size / config.optim.accumulation_steps,
                (shuffle, drop_last),
                part,
            ),
        )?)
    }
}

impl Loaders<'_> {
    /// Turns shard samples into training samples: the tokenizer, `transforms`, the caption
    /// choice, maximum length and padding of `config.data`.
    fn shard_captioning(&self, transforms: ImageTransforms) -> Result<ShardCaptioning, TrainError> {
        let data = &self.config.data;
        Ok(ShardCaptioning::new(self.tokenizer.clone(), transforms)?
            .with_caption_choice(caption_choice(self.config))
            .with_max_caption_length(data.max_caption_length)?
            .with_padding_index(data.padding_index))
    }

    /// The loader over `data.shards_train` / `data.shards_val` (`data.format = webdataset`):
    /// this process reads every shard ([`ShardSplit::default`]), as every rank of a
    /// data-parallel run reads the same global batches; [`shard_dataset`] takes a rank's share
    /// instead.
    fn shard_loader(
        &self,
        split: Split,
        transforms: ImageTransforms,
        (shuffle, drop_last): (bool, bool),
        part: Option<BatchPart>,
    ) -> Result<DataLoader, TrainError> {
        let config = self.config;
        let captioning = self.shard_captioning(transforms)?;
        let shards = shard_dataset(config, split, captioning, ShardSplit::default())?;
        let micro_batch = config.optim.batch_size / config.optim.accumulation_steps;
        if drop_last && shards.len() < micro_batch {
            return Err(TrainError::Config(format!(
                "optim.batch_size / optim.accumulation_steps = {micro_batch} images per \
                 micro-batch, but the {} shards `{}` hold only {} samples: lower \
                 optim.batch_size or raise optim.accumulation_steps",
                split.name(),
                shards.list.pattern(),
                shards.len()
            )));
        }
        Ok(DataLoader::from_shards(
            shards,
            loader_config(config, micro_batch, (shuffle, drop_last), part),
        )?)
    }
}

/// The shards of `split` (`data.shards_train` / `data.shards_val`, expanded, opened and
/// counted) that `shard_split` takes: [`ShardSplit::default`] for every shard, or
/// `ShardSplit::rank(global_rank, world_size)` for one rank's share of a run whose ranks read
/// different shards. Validation shards are never shuffled, training shards through a buffer
/// of `data.shuffle_buffer` samples.
pub fn shard_dataset(
    config: &PretrainConfig,
    split: Split,
    captioning: ShardCaptioning,
    shard_split: ShardSplit,
) -> Result<ShardDataset, TrainError> {
    let (key, pattern) = match split {
        Split::Train => ("data.shards_train", &config.data.shards_train),
        Split::Val => ("data.shards_val", &config.data.shards_val),
    };
    let pattern = pattern.as_deref().ok_or_else(|| {
        TrainError::Config(format!("data.format is webdataset but {key} is not set"))
    })?;
    let list = ShardList::open(pattern)?;
    Ok(ShardDataset {
        list: Arc::new(list),
        split: shard_split,
        shuffle_buffer: config.data.shuffle_buffer,
        captioning,
    })
}

/// Whether the run is multilabel classification, whose batches carry COCO object labels.
pub(crate) fn is_multilabel(config: &PretrainConfig) -> bool {
    config.model.name == "multilabel_classification"
}

/// The instances file of `split` under `root` (`annotations/instances_{split}2017.json`), its
/// classes checked against `data.vocab_size`.
fn object_labels(
    config: &PretrainConfig,
    root: &Path,
    split: Split,
) -> Result<CocoInstances, TrainError> {
    let path = root
        .join("annotations")
        .join(format!("instances_{}2017.json", split.name()));
    if !path.is_file() {
        return Err(TrainError::Config(format!(
            "model.name multilabel_classification needs COCO's object labels, but `{}` does \
             not exist (COCO 2017's `annotations_trainval2017.zip` holds \
             instances_train2017.json and instances_val2017.json)",
            path.display()
        )));
    }
    let labels = CocoInstances::load(&path)?;
    if labels.num_classes() != config.data.vocab_size {
        return Err(TrainError::Config(format!(
            "data.vocab_size is {} but `{}` has {} classes ({} categories + background); set \
             data.vocab_size={}",
            config.data.vocab_size,
            path.display(),
            labels.num_classes(),
            labels.num_classes() - 1,
            labels.num_classes()
        )));
    }
    Ok(labels)
}

/// `data.caption_choice`: `first`, or a random caption of each image.
fn caption_choice(config: &PretrainConfig) -> CaptionChoice {
    match config.data.caption_choice.as_str() {
        "first" => CaptionChoice::First,
        _ => CaptionChoice::Random,
    }
}

/// The loader settings of a split: `batch_size` samples per batch, of which `part` is decoded,
/// the rest from `config`.
fn loader_config(
    config: &PretrainConfig,
    batch_size: usize,
    (shuffle, drop_last): (bool, bool),
    part: Option<BatchPart>,
) -> LoaderConfig {
    LoaderConfig {
        batch_size,
        num_workers: config.data.num_workers,
        prefetch_batches: 2 * config.data.num_workers.max(1),
        seed: config.random_seed,
        shuffle,
        drop_last,
        skip_bad_images: config.data.skip_bad_images,
        part,
    }
}
