//! The captioning model (`virtex/models/captioning.py`): upstream's `CaptioningModel`, whose
//! `caption_backward` flag adds the right-to-left head of `BidirectionalCaptioningModel`.

use std::path::Path;

use burn::prelude::*;
use virtex_backbone::{Precision, ResNet};
use virtex_loss::captioning_loss;
use virtex_textual::{TransformerDecoder, TransformerDecoderTextualHead};

use crate::config::CaptioningModelConfig;
use crate::decoding::{decode, Captions, DecodingConfig};
use crate::error::Result;

/// The backward caption of upstream's dataset: each caption's unpadded tokens reversed, then
/// right-padded with 0 (`[SOS, t1..tn, EOS]` → `[EOS, tn..t1, SOS]`), for callers that only
/// have forward tokens (`virtex-data` batches already carry `noitpac_tokens`).
///
/// # Shapes
/// - `caption_tokens`: `[B, T]`
/// - `caption_lengths`: `[B]`, each `≤ T`
/// - returns: `[B, T]`
pub fn reverse_captions<B: Backend>(
    caption_tokens: Tensor<B, 2, Int>,
    caption_lengths: Tensor<B, 1, Int>,
) -> Tensor<B, 2, Int> {
    let [b, t] = caption_tokens.dims();
    let device = caption_tokens.device();
    let position = Tensor::<B, 1, Int>::arange(0..t as i64, &device)
        .reshape([1, t])
        .expand([b, t]);
    let length = caption_lengths.reshape([b, 1]).expand([b, t]);
    let padding = position.clone().greater_equal(length.clone());
    let source = (length.sub_scalar(1) - position)
        .mask_fill(padding.clone(), 0)
        .clamp(0, t as i64 - 1);
    caption_tokens.gather(1, source).mask_fill(padding, 0)
}

/// `TorchvisionVisualBackbone`: the CNN, whose `layer4` grid the heads read. Named `visual.cnn`
/// like upstream so parameter paths read `visual.cnn.layer1.0.conv1.weight`.
#[derive(Module, Debug)]
pub struct VisualBackbone<B: Backend> {
    /// The torchvision-style ResNet without `avgpool`/`fc`.
    pub cnn: ResNet<B>,
}

impl<B: Backend> VisualBackbone<B> {
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`, ImageNet-normalised
    /// - returns: `[B, C, H/32, W/32]`
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        self.cnn.forward(images)
    }

    /// The backbone with its convolutions in `precision` ([`ResNet::with_precision`]).
    pub fn with_precision(self, precision: Precision) -> Self {
        Self {
            cnn: self.cnn.with_precision(precision),
        }
    }
}

/// The backward (right-to-left) head of a bicaptioning model: only its own decoder stack.
///
/// Upstream's `backward_textual` is a deep copy of the forward head whose visual projection,
/// embedding and output layer are then replaced by the forward head's modules; those are owned
/// once, by the model's `textual` field, and the backward stack runs through them
/// ([`TransformerDecoderTextualHead::forward_with_decoder`]).
#[derive(Module, Debug)]
pub struct BackwardTextualHead<B: Backend> {
    /// The right-to-left decoder stack (`backward_textual.transformer.*`).
    pub transformer: TransformerDecoder<B>,
}

impl<B: Backend> BackwardTextualHead<B> {
    /// The stack with its matrix products in `precision`
    /// ([`TransformerDecoder::with_precision`]).
    pub fn with_precision(self, precision: Precision) -> Self {
        Self {
            transformer: self.transformer.with_precision(precision),
        }
    }
}

/// The training objective and its logged components (upstream's `loss` and
/// `loss_components`).
#[derive(Debug, Clone)]
pub struct CaptioningLosses<B: Backend> {
    /// What is optimised, `[1]`: `captioning_forward (+ captioning_backward)`.
    pub loss: Tensor<B, 1>,
    /// Token-mean cross-entropy of the left-to-right head, `[1]`.
    pub captioning_forward: Tensor<B, 1>,
    /// Token-mean cross-entropy of the right-to-left head, `[1]`; `None` without one.
    pub captioning_backward: Option<Tensor<B, 1>>,
}

/// Teacher-forced evaluation outputs (upstream's validation outputs).
#[derive(Debug, Clone)]
pub struct CaptioningOutput<B: Backend> {
    /// The loss and its components.
    pub losses: CaptioningLosses<B>,
    /// Forward head logits, `[B, T, V]`.
    pub forward_logits: Tensor<B, 3>,
    /// Backward head logits, `[B, T, V]`; `None` without a backward head.
    pub backward_logits: Option<Tensor<B, 3>>,
    /// `argmax` of the forward logits at every position, `[B, T]`.
    pub predictions: Tensor<B, 2, Int>,
}

/// VirTex's captioning model: one backbone (`visual.cnn`), one textual head (`textual`: visual
/// projection, embedding, left-to-right decoder stack, tied output layer) and, when
/// [`CaptioningModelConfig::caption_backward`] is set (upstream's `BidirectionalCaptioningModel`,
/// names `virtex`/`bicaptioning`), a right-to-left decoder stack (`backward_textual.transformer`)
/// that shares the head's projection, embedding and output layer. Without it this is
/// upstream's forward-only `captioning` model.
///
/// The loss is the plain sum of both directions' token-mean cross-entropies. The backward stack
/// starts as an exact copy of the forward one (upstream's `deepcopy`) with its own parameters.
/// Only the forward head decodes.
///
/// Training/evaluation mode follows burn: on an autodiff backend BatchNorm uses batch statistics
/// and dropout is active; call `model.valid()` for evaluation and decoding.
#[derive(Module, Debug)]
pub struct CaptioningModel<B: Backend> {
    /// The CNN (`visual.cnn.*`).
    pub visual: VisualBackbone<B>,
    /// The forward head, owner of the shared projection, embedding and output layer.
    pub textual: TransformerDecoderTextualHead<B>,
    /// The backward decoder stack, present iff `config.caption_backward`.
    pub backward_textual: Option<BackwardTextualHead<B>>,
    /// The configuration the model was built from (not a parameter).
    pub config: CaptioningModelConfig,
}

impl<B: Backend> CaptioningModel<B> {
    pub(crate) fn new(config: &CaptioningModelConfig, device: &B::Device) -> Result<Self> {
        let cnn = config.backbone.try_init(device)?;
        let textual = config.textual.try_init(device)?;
        let backward_textual = config.caption_backward.then(|| BackwardTextualHead {
            transformer: textual.transformer.duplicate(),
        });
        Ok(Self {
            visual: VisualBackbone { cnn },
            textual,
            backward_textual,
            config: config.clone(),
        })
    }

    /// Whether the model has a backward head (bicaptioning).
    pub fn has_backward(&self) -> bool {
        self.backward_textual.is_some()
    }

    /// The model with its matrix products and convolutions in `precision`, for training and
    /// evaluation alike (`valid()` keeps it).
    ///
    /// [`Precision::Bf16`] runs the backbone's convolutions and every matrix product of the
    /// heads (visual projection, attention projections, `q kᵀ`, `weights · v`, feed-forward,
    /// tied output layer) in bf16, casting each result straight back to f32; BatchNorm,
    /// LayerNorm, softmax, GELU, residual adds, embeddings, the losses, the parameters and
    /// their gradients stay f32, so an optimizer keeps f32 master weights and state.
    /// [`Precision::F32`] (the default) inserts no cast. The precision is not saved with the
    /// weights: set it after building or loading a model.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self {
            visual: self.visual.with_precision(precision),
            textual: self.textual.with_precision(precision),
            backward_textual: self
                .backward_textual
                .map(|head| head.with_precision(precision)),
            config: self.config,
        }
    }

    /// The model with a frozen visual backbone ([`ResNet::frozen`](virtex_backbone::ResNet::frozen),
    /// upstream's `MODEL.VISUAL.FROZEN`): the CNN gets no gradient, so an optimizer built
    /// afterwards leaves it out, and its BatchNorm stays in evaluation mode while the textual
    /// heads train. Not saved with the weights: set it after building or loading a model.
    pub fn with_frozen_visual(mut self) -> Self {
        self.visual.cnn = self.visual.cnn.frozen();
        self
    }

    /// Whether [`CaptioningModel::with_frozen_visual`] was applied.
    pub fn is_visual_frozen(&self) -> bool {
        self.visual.cnn.is_frozen()
    }

    /// Loads torchvision-layout weights (a `.pth` state dict, safetensors or burnpack, as
    /// [`ResNet::load_weights`](virtex_backbone::ResNet::load_weights) reads them) into the
    /// visual backbone: upstream's `MODEL.VISUAL.PRETRAINED` (ImageNet weights). Every CNN
    /// tensor must be present with its shape; `fc.*` is ignored.
    pub fn load_visual_weights(&mut self, path: impl AsRef<Path>) -> Result<()> {
        self.visual.cnn.load_weights(path)?;
        Ok(())
    }

    /// The precision set by [`CaptioningModel::with_precision`].
    pub fn precision(&self) -> Precision {
        self.textual.precision
    }

    /// The training objective: `captioning_forward (+ captioning_backward)`.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`
    /// - `caption_tokens`: `[B, T]`, `[SOS, t1..tn, EOS]` right-padded with 0
    /// - `noitpac_tokens`: `[B, T]`, `[EOS, tn..t1, SOS]` right-padded with 0 (read only by a
    ///   backward head)
    /// - `caption_lengths`: `[B]` (shared by both directions)
    pub fn forward_train(
        &self,
        images: Tensor<B, 4>,
        caption_tokens: Tensor<B, 2, Int>,
        noitpac_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
    ) -> CaptioningLosses<B> {
        let features = self.visual.forward(images);
        self.forward_train_features(features, caption_tokens, noitpac_tokens, caption_lengths)
    }

    /// [`CaptioningModel::forward_train`] on precomputed `[B, C, h, w]` features.
    pub fn forward_train_features(
        &self,
        visual_features: Tensor<B, 4>,
        caption_tokens: Tensor<B, 2, Int>,
        noitpac_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
    ) -> CaptioningLosses<B> {
        let (forward, backward) = self.logits(
            visual_features,
            caption_tokens.clone(),
            noitpac_tokens.clone(),
            caption_lengths,
        );
        losses(
            forward,
            caption_tokens,
            backward,
            noitpac_tokens,
            self.config.textual.padding_idx,
        )
    }

    /// Teacher-forced evaluation: the losses, the logits of each head and the forward argmax
    /// predictions (upstream's validation outputs).
    ///
    /// # Shapes
    /// as [`CaptioningModel::forward_train`]
    pub fn forward_eval(
        &self,
        images: Tensor<B, 4>,
        caption_tokens: Tensor<B, 2, Int>,
        noitpac_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
    ) -> CaptioningOutput<B> {
        let features = self.visual.forward(images);
        let (forward_logits, backward_logits) = self.logits(
            features,
            caption_tokens.clone(),
            noitpac_tokens.clone(),
            caption_lengths,
        );
        let losses = losses(
            forward_logits.clone(),
            caption_tokens,
            backward_logits.clone(),
            noitpac_tokens,
            self.config.textual.padding_idx,
        );
        let predictions = forward_logits.clone().argmax(2).squeeze_dim(2);
        CaptioningOutput {
            losses,
            forward_logits,
            backward_logits,
            predictions,
        }
    }

    /// Logits of each head; the visual grid is projected once and shared.
    ///
    /// # Shapes
    /// - `visual_features`: `[B, C, h, w]`
    /// - returns: `[B, T, V]` forward logits, and `[B, T, V]` backward logits with a backward
    ///   head
    pub fn logits(
        &self,
        visual_features: Tensor<B, 4>,
        caption_tokens: Tensor<B, 2, Int>,
        noitpac_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        let memory = self.textual.project_visual(visual_features);
        // The forward stack runs first, as upstream's: in train mode its dropout masks are
        // drawn from the RNG before the backward stack's.
        let forward = self.textual.forward_with_decoder(
            &self.textual.transformer,
            memory.clone(),
            caption_tokens,
            caption_lengths.clone(),
        );
        let backward = self.backward_textual.as_ref().map(|head| {
            self.textual.forward_with_decoder(
                &head.transformer,
                memory,
                noitpac_tokens,
                caption_lengths,
            )
        });
        (forward, backward)
    }

    /// The `[B, C, h, w]` grid of the backbone.
    pub fn visual_features(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        self.visual.forward(images)
    }

    /// Captions images with the forward head (see [`DecodingConfig`]).
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`
    pub fn decode(&self, images: Tensor<B, 4>, config: &DecodingConfig) -> Result<Captions> {
        self.decode_features(self.visual.forward(images), config)
    }

    /// Captions precomputed `[B, C, h, w]` features with the forward head.
    pub fn decode_features(
        &self,
        visual_features: Tensor<B, 4>,
        config: &DecodingConfig,
    ) -> Result<Captions> {
        decode(&self.textual, visual_features, config)
    }

    /// The forward-only model: drops the backward stack (only the forward head decodes).
    pub fn without_backward(self) -> Self {
        let mut config = self.config;
        config.caption_backward = false;
        Self {
            visual: self.visual,
            textual: self.textual,
            backward_textual: None,
            config,
        }
    }
}

/// Upstream's `loss` and `loss_components`: the forward loss, plus the backward loss when there
/// are backward logits; targets equal to `padding` (the textual head's `padding_idx`) are
/// ignored.
fn losses<B: Backend>(
    forward_logits: Tensor<B, 3>,
    caption_tokens: Tensor<B, 2, Int>,
    backward_logits: Option<Tensor<B, 3>>,
    noitpac_tokens: Tensor<B, 2, Int>,
    padding: usize,
) -> CaptioningLosses<B> {
    let captioning_forward = captioning_loss(forward_logits, caption_tokens, padding);
    let captioning_backward =
        backward_logits.map(|logits| captioning_loss(logits, noitpac_tokens, padding));
    let loss = match &captioning_backward {
        Some(backward) => captioning_forward.clone() + backward.clone(),
        None => captioning_forward.clone(),
    };
    CaptioningLosses {
        loss,
        captioning_forward,
        captioning_backward,
    }
}
