//! burn-train integration (cargo feature `burn-train`): [`CaptioningModel`] as burn-train's
//! [`TrainStep`] and [`InferenceStep`], so that burn's `Learner` / `SupervisedTraining` can train
//! and validate it, with [`CaptioningLosses`] as the step output that burn-train's
//! [`LossMetric`](burn::train::metric::LossMetric) reads.
//!
//! The batch is [`CaptionBatch`], the four tensors the model consumes; this crate does not
//! depend on the data pipeline, so a caller converts its own batches (e.g. `virtex-data`'s
//! `Batch`) into it, typically in a burn `Batcher`.
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::tensor::{Distribution, Int, Tensor};
//! use burn::train::TrainStep;
//! use virtex::backbone::ResNetConfig;
//! use virtex::textual::TextualHeadConfig;
//! use virtex::{CaptionBatch, CaptioningModelConfig};
//!
//! type B = Autodiff<Flex>;
//! let device = Default::default();
//! let textual = TextualHeadConfig::from_name("transdec_postnorm::L1_H32_A2_F64", 32, 50).unwrap();
//! let model = CaptioningModelConfig::new(ResNetConfig::resnet18().with_stem_channels(4), textual)
//!     .init::<B>(&device)
//!     .unwrap();
//! let batch = CaptionBatch {
//!     images: Tensor::random([2, 3, 64, 64], Distribution::Default, &device),
//!     caption_tokens: Tensor::<B, 2, Int>::from_ints([[1, 7, 9, 2], [1, 5, 2, 0]], &device),
//!     noitpac_tokens: Tensor::<B, 2, Int>::from_ints([[2, 9, 7, 1], [2, 5, 1, 0]], &device),
//!     caption_lengths: Tensor::<B, 1, Int>::from_ints([4, 3], &device),
//! };
//! // `InferenceStep::step` also applies to an autodiff model: name the trait.
//! let output = TrainStep::step(&model, batch);
//! assert!(!output.grads.is_empty());
//! ```

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Transaction;
use burn::train::metric::{Adaptor, LossInput};
use burn::train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};

use crate::model::{CaptioningLosses, CaptioningModel};

/// One training or validation batch, as [`CaptioningModel::forward_train`] takes it.
#[derive(Debug, Clone)]
pub struct CaptionBatch<B: Backend> {
    /// `[B, 3, H, W]` normalised images.
    pub images: Tensor<B, 4>,
    /// `[B, T]` `[SOS] t1..tn [EOS]` tokens, right-padded with 0.
    pub caption_tokens: Tensor<B, 2, Int>,
    /// `[B, T]` reversed tokens `[EOS] tn..t1 [SOS]`, right-padded with 0.
    pub noitpac_tokens: Tensor<B, 2, Int>,
    /// `[B]` token count of each caption (`[SOS]` and `[EOS]` included).
    pub caption_lengths: Tensor<B, 1, Int>,
}

impl<B: Backend> CaptioningModel<B> {
    /// [`CaptioningModel::forward_train`] on a [`CaptionBatch`].
    pub fn forward_batch(&self, batch: CaptionBatch<B>) -> CaptioningLosses<B> {
        self.forward_train(
            batch.images,
            batch.caption_tokens,
            batch.noitpac_tokens,
            batch.caption_lengths,
        )
    }
}

/// Forward and backward pass in training mode (batch statistics, dropout): the losses of
/// [`CaptioningModel::forward_train`] and the gradients of `loss` for every trainable parameter.
impl<B: AutodiffBackend> TrainStep for CaptioningModel<B> {
    type Input = CaptionBatch<B>;
    type Output = CaptioningLosses<B>;

    fn step(&self, batch: CaptionBatch<B>) -> TrainOutput<CaptioningLosses<B>> {
        let losses = self.forward_batch(batch);
        let gradients = losses.loss.backward();
        TrainOutput::new(self, gradients, losses)
    }
}

/// Teacher-forced validation loss. burn-train runs it on `model.valid()` (the inner backend),
/// where BatchNorm uses its running statistics and dropout is off, as upstream's validation.
impl<B: Backend> InferenceStep for CaptioningModel<B> {
    type Input = CaptionBatch<B>;
    type Output = CaptioningLosses<B>;

    fn step(&self, batch: CaptionBatch<B>) -> CaptioningLosses<B> {
        self.forward_batch(batch)
    }
}

/// Reads the losses off the device in one transaction (on burn-train's metric thread), onto
/// the CPU backend the metrics run on.
impl<B: Backend> ItemLazy for CaptioningLosses<B> {
    type ItemSync = CaptioningLosses<Flex>;

    fn sync(self) -> CaptioningLosses<Flex> {
        let has_backward = self.captioning_backward.is_some();
        let mut transaction = Transaction::default()
            .register(self.loss)
            .register(self.captioning_forward);
        if let Some(backward) = self.captioning_backward {
            transaction = transaction.register(backward);
        }
        let device = Default::default();
        let mut data = transaction.execute().into_iter();
        let mut next = || {
            let values = data.next().expect("one TensorData per registered tensor");
            Tensor::<Flex, 1>::from_data(values, &device)
        };
        let loss = next();
        let captioning_forward = next();
        let captioning_backward = has_backward.then(next);
        CaptioningLosses {
            loss,
            captioning_forward,
            captioning_backward,
        }
    }
}

/// burn-train's `LossMetric` logs `loss` (forward + backward), `[1]` per batch.
impl<B: Backend> Adaptor<LossInput<B>> for CaptioningLosses<B> {
    fn adapt(&self) -> LossInput<B> {
        LossInput::new(self.loss.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::ResNetConfig;
    use crate::textual::TextualHeadConfig;
    use crate::CaptioningModelConfig;
    use burn::backend::Autodiff;
    use burn::module::{ModuleVisitor, Param, ParamId};
    use burn::optim::GradientsParams;
    use burn::tensor::Distribution;

    type B = Autodiff<Flex>;

    fn model(device: &Device<B>) -> CaptioningModel<B> {
        // No dropout, so that two training-mode forward passes are the same function.
        let textual = TextualHeadConfig::from_name("transdec_postnorm::L1_H32_A2_F64", 32, 50)
            .unwrap()
            .with_dropout(0.0);
        CaptioningModelConfig::new(ResNetConfig::resnet18().with_stem_channels(4), textual)
            .init::<B>(device)
            .unwrap()
    }

    fn batch(device: &Device<B>) -> CaptionBatch<B> {
        CaptionBatch {
            images: Tensor::random([2, 3, 64, 64], Distribution::Default, device),
            caption_tokens: Tensor::from_ints([[1, 7, 9, 2], [1, 5, 2, 0]], device),
            noitpac_tokens: Tensor::from_ints([[2, 9, 7, 1], [2, 5, 1, 0]], device),
            caption_lengths: Tensor::from_ints([4, 3], device),
        }
    }

    /// Checks that every trainable parameter has a gradient of its own shape.
    struct HasGradients<'a> {
        grads: &'a GradientsParams,
        checked: usize,
        missing: Vec<ParamId>,
    }

    impl ModuleVisitor<B> for HasGradients<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            // BatchNorm running statistics are visited too, but are not trainable.
            if !value.is_require_grad() {
                return;
            }
            self.checked += 1;
            match self.grads.get::<Flex, D>(param.id) {
                Some(grad) => assert_eq!(grad.dims(), value.dims()),
                None => self.missing.push(param.id),
            }
        }
    }

    #[test]
    fn train_step_returns_the_loss_of_forward_train_and_every_gradient() {
        let device = Default::default();
        let model = model(&device);
        let batch = batch(&device);

        let expected = model.forward_batch(batch.clone());
        let output = TrainStep::step(&model, batch);

        // The same function of the same inputs on the same backend: bit-identical.
        let loss = output.item.loss.clone().into_scalar();
        assert_eq!(loss, expected.loss.into_scalar());
        assert!(loss.is_finite() && loss > 0.0);
        assert_eq!(
            output.item.captioning_forward.clone().into_scalar(),
            expected.captioning_forward.into_scalar()
        );
        assert!(output.item.captioning_backward.is_some());

        let mut visitor = HasGradients {
            grads: &output.grads,
            checked: 0,
            missing: Vec::new(),
        };
        model.visit(&mut visitor);
        assert!(visitor.checked > 20, "only {} parameters", visitor.checked);
        assert!(
            visitor.missing.is_empty(),
            "no gradient for {:?}",
            visitor.missing
        );
        assert_eq!(output.grads.len(), visitor.checked);
    }

    #[test]
    fn inference_step_and_sync_give_the_losses_for_the_metrics() {
        use burn::module::AutodiffModule;

        let device = Default::default();
        let model = model(&device).valid();
        let batch = batch(&device);
        let batch = CaptionBatch {
            images: batch.images.inner(),
            caption_tokens: batch.caption_tokens.inner(),
            noitpac_tokens: batch.noitpac_tokens.inner(),
            caption_lengths: batch.caption_lengths.inner(),
        };
        let losses = InferenceStep::step(&model, batch);
        let forward = losses.captioning_forward.clone().into_scalar();
        let backward = losses.captioning_backward.clone().unwrap().into_scalar();

        let synced = losses.sync();
        let _: LossInput<Flex> = Adaptor::<LossInput<Flex>>::adapt(&synced);
        assert_eq!(synced.loss.dims(), [1]);
        // The sum was taken in f32 on the device: the same f32 sum here.
        assert_eq!(synced.loss.into_scalar(), forward + backward);
        assert_eq!(synced.captioning_forward.into_scalar(), forward);
        assert_eq!(synced.captioning_backward.unwrap().into_scalar(), backward);
    }
}
