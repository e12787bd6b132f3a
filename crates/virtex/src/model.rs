//! The captioning models (`virtex/models/captioning.py`).

use burn::prelude::*;
use virtex_backbone::{Precision, ResNet};
use virtex_loss::{bicaptioning_loss, captioning_loss, BicaptioningLoss, PADDING_INDEX};
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

/// The backward (right-to-left) head of the bicaptioning model: only its own decoder stack.
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

/// Evaluation outputs of the bicaptioning model (teacher forcing, as upstream's validation).
#[derive(Debug, Clone)]
pub struct BicaptioningOutput<B: Backend> {
    /// The loss and its two components.
    pub losses: BicaptioningLoss<B>,
    /// Forward head logits, `[B, T, V]`.
    pub forward_logits: Tensor<B, 3>,
    /// Backward head logits, `[B, T, V]`.
    pub backward_logits: Tensor<B, 3>,
    /// `argmax` of the forward logits at every position, `[B, T]`.
    pub predictions: Tensor<B, 2, Int>,
}

/// Evaluation outputs of the forward captioning model.
#[derive(Debug, Clone)]
pub struct CaptioningOutput<B: Backend> {
    /// `captioning_forward`, `[1]`.
    pub loss: Tensor<B, 1>,
    /// Logits, `[B, T, V]`.
    pub logits: Tensor<B, 3>,
    /// `argmax` of the logits at every position, `[B, T]`.
    pub predictions: Tensor<B, 2, Int>,
}

/// VirTex (`BidirectionalCaptioningModel`, names `virtex`/`bicaptioning`): one backbone, one
/// shared visual projection + embedding + tied output layer, and two decoder stacks captioning
/// left-to-right (`textual.transformer`) and right-to-left (`backward_textual.transformer`).
/// The loss is the plain sum of both directions' token-mean cross-entropies.
///
/// The backward stack starts as an exact copy of the forward one (upstream's `deepcopy`) with
/// its own parameters. Only the forward head decodes.
///
/// Training/evaluation mode follows burn: on an autodiff backend BatchNorm uses batch statistics
/// and dropout is active; call `model.valid()` for evaluation and decoding.
#[derive(Module, Debug)]
pub struct BidirectionalCaptioningModel<B: Backend> {
    /// The CNN (`visual.cnn.*`).
    pub visual: VisualBackbone<B>,
    /// The forward head, owner of the shared projection, embedding and output layer.
    pub textual: TransformerDecoderTextualHead<B>,
    /// The backward decoder stack.
    pub backward_textual: BackwardTextualHead<B>,
    /// The configuration the model was built from (not a parameter).
    pub config: CaptioningModelConfig,
}

/// Forward-only captioning (`ForwardCaptioningModel`, name `captioning`).
#[derive(Module, Debug)]
pub struct ForwardCaptioningModel<B: Backend> {
    /// The CNN (`visual.cnn.*`).
    pub visual: VisualBackbone<B>,
    /// The textual head.
    pub textual: TransformerDecoderTextualHead<B>,
    /// The configuration the model was built from (not a parameter).
    pub config: CaptioningModelConfig,
}

impl<B: Backend> BidirectionalCaptioningModel<B> {
    pub(crate) fn new(config: &CaptioningModelConfig, device: &B::Device) -> Result<Self> {
        let cnn = config.backbone.try_init(device)?;
        let textual = config.textual.try_init(device)?;
        let backward = textual.transformer.duplicate();
        Ok(Self {
            visual: VisualBackbone { cnn },
            textual,
            backward_textual: BackwardTextualHead {
                transformer: backward,
            },
            config: config.clone(),
        })
    }

    /// The model with its matrix products and convolutions in `precision`, for training and
    /// evaluation alike (`valid()` keeps it).
    ///
    /// [`Precision::Bf16`] runs the backbone's convolutions and every matrix product of both
    /// heads (visual projection, attention projections, `q kᵀ`, `weights · v`, feed-forward,
    /// tied output layer) in bf16, casting each result straight back to f32; BatchNorm,
    /// LayerNorm, softmax, GELU, residual adds, embeddings, the losses, the parameters and
    /// their gradients stay f32, so an optimizer keeps f32 master weights and state.
    /// [`Precision::F32`] (the default) computes exactly what the model computed before this
    /// setting existed. The precision is not saved with the weights: set it after building or
    /// loading a model.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self {
            visual: self.visual.with_precision(precision),
            textual: self.textual.with_precision(precision),
            backward_textual: self.backward_textual.with_precision(precision),
            config: self.config,
        }
    }

    /// The precision set by [`BidirectionalCaptioningModel::with_precision`].
    pub fn precision(&self) -> Precision {
        self.textual.precision
    }

    /// The training objective: `captioning_forward + captioning_backward`.
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`
    /// - `caption_tokens`: `[B, T]`, `[SOS, t1..tn, EOS]` right-padded with 0
    /// - `noitpac_tokens`: `[B, T]`, `[EOS, tn..t1, SOS]` right-padded with 0
    /// - `caption_lengths`: `[B]` (shared by both directions)
    pub fn forward_train(
        &self,
        images: Tensor<B, 4>,
        caption_tokens: Tensor<B, 2, Int>,
        noitpac_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
    ) -> BicaptioningLoss<B> {
        let features = self.visual.forward(images);
        self.forward_train_features(features, caption_tokens, noitpac_tokens, caption_lengths)
    }

    /// [`BidirectionalCaptioningModel::forward_train`] on precomputed `[B, C, h, w]` features.
    pub fn forward_train_features(
        &self,
        visual_features: Tensor<B, 4>,
        caption_tokens: Tensor<B, 2, Int>,
        noitpac_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
    ) -> BicaptioningLoss<B> {
        let (forward, backward) = self.logits(
            visual_features,
            caption_tokens.clone(),
            noitpac_tokens.clone(),
            caption_lengths,
        );
        bicaptioning_loss(forward, caption_tokens, backward, noitpac_tokens)
    }

    /// Teacher-forced evaluation: both losses, both directions' logits and the forward
    /// argmax predictions (upstream's validation outputs).
    ///
    /// # Shapes
    /// as [`BidirectionalCaptioningModel::forward_train`]
    pub fn forward_eval(
        &self,
        images: Tensor<B, 4>,
        caption_tokens: Tensor<B, 2, Int>,
        noitpac_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
    ) -> BicaptioningOutput<B> {
        let features = self.visual.forward(images);
        let (forward_logits, backward_logits) = self.logits(
            features,
            caption_tokens.clone(),
            noitpac_tokens.clone(),
            caption_lengths,
        );
        let losses = bicaptioning_loss(
            forward_logits.clone(),
            caption_tokens,
            backward_logits.clone(),
            noitpac_tokens,
        );
        let predictions = forward_logits.clone().argmax(2).squeeze_dim(2);
        BicaptioningOutput {
            losses,
            forward_logits,
            backward_logits,
            predictions,
        }
    }

    /// Logits of both directions; the visual grid is projected once and shared.
    ///
    /// # Shapes
    /// - `visual_features`: `[B, C, h, w]`
    /// - returns: two `[B, T, V]`
    pub fn logits(
        &self,
        visual_features: Tensor<B, 4>,
        caption_tokens: Tensor<B, 2, Int>,
        noitpac_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let memory = self.textual.project_visual(visual_features);
        let forward = self.textual.forward_with_decoder(
            &self.textual.transformer,
            memory.clone(),
            caption_tokens,
            caption_lengths.clone(),
        );
        let backward = self.textual.forward_with_decoder(
            &self.backward_textual.transformer,
            memory,
            noitpac_tokens,
            caption_lengths,
        );
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

    /// Drops the backward stack (only the forward head decodes).
    pub fn into_forward(self) -> ForwardCaptioningModel<B> {
        ForwardCaptioningModel {
            visual: self.visual,
            textual: self.textual,
            config: self.config,
        }
    }
}

impl<B: Backend> ForwardCaptioningModel<B> {
    pub(crate) fn new(config: &CaptioningModelConfig, device: &B::Device) -> Result<Self> {
        Ok(Self {
            visual: VisualBackbone {
                cnn: config.backbone.try_init(device)?,
            },
            textual: config.textual.try_init(device)?,
            config: config.clone(),
        })
    }

    /// The model with its matrix products and convolutions in `precision` (see
    /// [`BidirectionalCaptioningModel::with_precision`]).
    pub fn with_precision(self, precision: Precision) -> Self {
        Self {
            visual: self.visual.with_precision(precision),
            textual: self.textual.with_precision(precision),
            config: self.config,
        }
    }

    /// The precision set by [`ForwardCaptioningModel::with_precision`].
    pub fn precision(&self) -> Precision {
        self.textual.precision
    }

    /// The training objective `captioning_forward` (token-mean cross-entropy, padding ignored).
    ///
    /// # Shapes
    /// - `images`: `[B, 3, H, W]`
    /// - `caption_tokens`: `[B, T]`
    /// - `caption_lengths`: `[B]`
    /// - returns: `[1]`
    pub fn forward_train(
        &self,
        images: Tensor<B, 4>,
        caption_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
    ) -> Tensor<B, 1> {
        let logits = self.textual.forward(
            self.visual.forward(images),
            caption_tokens.clone(),
            caption_lengths,
        );
        captioning_loss(logits, caption_tokens, PADDING_INDEX)
    }

    /// Teacher-forced evaluation: loss, logits and argmax predictions.
    pub fn forward_eval(
        &self,
        images: Tensor<B, 4>,
        caption_tokens: Tensor<B, 2, Int>,
        caption_lengths: Tensor<B, 1, Int>,
    ) -> CaptioningOutput<B> {
        let logits = self.textual.forward(
            self.visual.forward(images),
            caption_tokens.clone(),
            caption_lengths,
        );
        let loss = captioning_loss(logits.clone(), caption_tokens, PADDING_INDEX);
        let predictions = logits.clone().argmax(2).squeeze_dim(2);
        CaptioningOutput {
            loss,
            logits,
            predictions,
        }
    }

    /// The `[B, C, h, w]` grid of the backbone.
    pub fn visual_features(&self, images: Tensor<B, 4>) -> Tensor<B, 4> {
        self.visual.forward(images)
    }

    /// Captions images (see [`DecodingConfig`]).
    pub fn decode(&self, images: Tensor<B, 4>, config: &DecodingConfig) -> Result<Captions> {
        self.decode_features(self.visual.forward(images), config)
    }

    /// Captions precomputed `[B, C, h, w]` features.
    pub fn decode_features(
        &self,
        visual_features: Tensor<B, 4>,
        config: &DecodingConfig,
    ) -> Result<Captions> {
        decode(&self.textual, visual_features, config)
    }
}
