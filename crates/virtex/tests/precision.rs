//! Mixed precision on a tiny bicaptioning model: bf16 losses and gradients track f32, every
//! gradient reaches its f32 parameter in f32, the setting reaches every module, and
//! `Precision::F32` is the model as it always was (the parity tests of the other crates prove
//! f32 against PyTorch; they run through the same code with the default precision).

mod common;

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Distribution};
use common::*;
use virtex::backbone::ResNetConfig;
use virtex::textual::TextualHeadConfig;
use virtex::{BeamSearchMode, CaptioningModel, CaptioningModelConfig, DecodingConfig, Precision};

/// bf16 keeps 8 significant bits; a cross-entropy over a few hundred logits computed from bf16
/// products lands well within 1e-2 of f32 (the bound the issue asks for).
const LOSS_RTOL: f64 = 1e-2;

/// Dropout 0 so that both precisions see the same network function.
fn tiny_model() -> CaptioningModel<AB> {
    let backbone = ResNetConfig::resnet18().with_stem_channels(8);
    let textual = TextualHeadConfig::from_name("transdec_postnorm::L2_H32_A2_F64", 64, 50)
        .unwrap()
        .with_max_caption_length(10)
        .with_dropout(0.0);
    CaptioningModelConfig::new(backbone, textual)
        .init::<AB>(&Default::default())
        .unwrap()
}

struct Inputs {
    images: Tensor<AB, 4>,
    caption: Tensor<AB, 2, Int>,
    noitpac: Tensor<AB, 2, Int>,
    lengths: Tensor<AB, 1, Int>,
}

fn inputs() -> Inputs {
    let device = Default::default();
    let caption = Tensor::<AB, 2, Int>::from_ints(
        [
            [1, 7, 9, 12, 30, 2, 0, 0],
            [1, 5, 44, 2, 0, 0, 0, 0],
            [1, 3, 3, 8, 21, 17, 11, 2],
        ],
        &device,
    );
    let lengths = Tensor::<AB, 1, Int>::from_ints([6, 4, 8], &device);
    Inputs {
        images: Tensor::random([3, 3, 64, 64], Distribution::Normal(0.0, 1.0), &device),
        noitpac: virtex::reverse_captions(caption.clone(), lengths.clone()),
        caption,
        lengths,
    }
}

fn scalar<Bk: Backend>(tensor: Tensor<Bk, 1>) -> f64 {
    tensor.into_scalar().elem::<f64>()
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// One float tensor of a module (a parameter or a BatchNorm running statistic): path, dtype,
/// and its gradient's dtype and squared norm (`None` for the running statistics).
type FloatTensor = (String, DType, Option<(DType, f64)>);

/// Collects a [`FloatTensor`] for every float tensor of the module.
struct Gradients<'a, Bk: AutodiffBackend> {
    grads: &'a Bk::Gradients,
    path: Vec<String>,
    found: Vec<FloatTensor>,
}

impl<Bk: AutodiffBackend> ModuleVisitor<Bk> for Gradients<'_, Bk> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        let trainable = param.val().is_require_grad();
        let grad = param.grad(self.grads).map(|grad| {
            let dtype = grad.dtype();
            let squared = grad.cast(DType::F32).square().sum().into_scalar();
            (dtype, squared.elem::<f64>())
        });
        let path = self.path.join(".");
        assert!(
            trainable || grad.is_none(),
            "{path}: gradient on a non-trainable tensor"
        );
        if trainable {
            assert!(grad.is_some(), "{path}: no gradient");
        }
        self.found.push((path, param.val().dtype(), grad));
    }
}

fn gradients(
    model: &CaptioningModel<AB>,
    grads: &<AB as AutodiffBackend>::Gradients,
) -> Vec<FloatTensor> {
    let mut visitor = Gradients::<AB> {
        grads,
        path: Vec::new(),
        found: Vec::new(),
    };
    model.visit(&mut visitor);
    visitor.found
}

#[test]
fn bf16_losses_match_f32_within_one_percent() {
    let f32_model = tiny_model();
    let bf16_model = f32_model.clone().with_precision(Precision::Bf16);
    assert_eq!(bf16_model.precision(), Precision::Bf16);
    let x = inputs();

    // Train mode (BatchNorm batch statistics) and eval mode (running statistics).
    let train = |model: &CaptioningModel<AB>| {
        let losses = model.forward_train(
            x.images.clone(),
            x.caption.clone(),
            x.noitpac.clone(),
            x.lengths.clone(),
        );
        [
            losses.loss,
            losses.captioning_forward,
            losses.captioning_backward.unwrap(),
        ]
        .map(|loss| {
            assert_eq!(loss.dtype(), DType::F32, "losses are computed in f32");
            scalar(loss)
        })
    };
    let eval = |model: &CaptioningModel<AB>| {
        let output = model.valid().forward_eval(
            x.images.clone().inner(),
            x.caption.clone().inner(),
            x.noitpac.clone().inner(),
            x.lengths.clone().inner(),
        );
        assert_eq!(output.forward_logits.dtype(), DType::F32);
        [
            output.losses.loss,
            output.losses.captioning_forward,
            output.losses.captioning_backward.unwrap(),
        ]
        .map(scalar)
    };
    for (mode, reference, mixed) in [
        ("train", train(&f32_model), train(&bf16_model)),
        ("eval", eval(&f32_model), eval(&bf16_model)),
    ] {
        for (name, (a, b)) in ["loss", "captioning_forward", "captioning_backward"]
            .iter()
            .zip(mixed.into_iter().zip(reference))
        {
            let difference = relative(a, b);
            eprintln!(
                "{mode} {name}: f32 {b:.6}, bf16 {a:.6}, relative difference {difference:.2e}"
            );
            assert!(a.is_finite());
            assert!(
                difference < LOSS_RTOL,
                "{mode} {name}: bf16 {a} vs f32 {b} ({difference:.2e} ≥ {LOSS_RTOL})"
            );
        }
    }
}

#[test]
fn bf16_logits_differ_from_f32_by_bf16_rounding_only() {
    let f32_model = tiny_model();
    let bf16_model = f32_model.clone().with_precision(Precision::Bf16);
    let x = inputs();
    let logits = |model: &CaptioningModel<AB>| {
        let model = model.valid();
        let (forward, backward) = model.logits(
            model.visual_features(x.images.clone().inner()),
            x.caption.clone().inner(),
            x.noitpac.clone().inner(),
            x.lengths.clone().inner(),
        );
        Tensor::cat(vec![forward, backward.unwrap()], 0)
    };
    let (reference, mixed) = (logits(&f32_model), logits(&bf16_model));
    assert_eq!(mixed.dtype(), DType::F32);
    let scale = reference.clone().abs().max().into_scalar().elem::<f64>();
    let error = (mixed - reference).abs().max().into_scalar().elem::<f64>();
    eprintln!("logits: max |bf16 − f32| = {error:.3e}, max |f32| = {scale:.3e}");
    // Not bit-identical (the bf16 path really ran), within bf16's 8 significant bits.
    assert!(error > 0.0 && error < 2e-2 * scale, "{error} vs {scale}");
}

#[test]
fn bf16_gradients_are_f32_and_track_the_f32_gradients() {
    let f32_model = tiny_model();
    let bf16_model = f32_model.clone().with_precision(Precision::Bf16);
    let x = inputs();
    let backward = |model: &CaptioningModel<AB>| {
        let grads = model
            .forward_train(
                x.images.clone(),
                x.caption.clone(),
                x.noitpac.clone(),
                x.lengths.clone(),
            )
            .loss
            .backward();
        gradients(model, &grads)
    };
    let reference = backward(&f32_model);
    let mixed = backward(&bf16_model);
    assert_eq!(reference.len(), mixed.len());
    let trainable = mixed.iter().filter(|(_, _, grad)| grad.is_some()).count();
    assert!(trainable > 60, "{trainable} parameters with gradients");

    let (mut total, mut reference_total) = (0.0, 0.0);
    for ((path, dtype, grad), (_, _, reference_grad)) in mixed.iter().zip(&reference) {
        assert_eq!(*dtype, DType::F32, "{path}: left f32");
        let Some((grad_dtype, squared)) = *grad else {
            continue; // BatchNorm running statistics
        };
        assert_eq!(grad_dtype, DType::F32, "{path}: gradient in {grad_dtype:?}");
        total += squared;
        reference_total += reference_grad.expect("f32 gradient").1;
    }
    // The global gradient norm (what the optimizer clips) within a few bf16 roundings.
    let (norm, reference_norm) = (total.sqrt(), reference_total.sqrt());
    let difference = relative(norm, reference_norm);
    eprintln!(
        "global gradient norm: f32 {reference_norm:.6}, bf16 {norm:.6}, relative difference \
         {difference:.2e}"
    );
    assert!(difference < 5e-2, "{difference:.2e}");
}

#[test]
fn precision_reaches_every_module_and_survives_valid() {
    let model = tiny_model();
    assert_eq!(model.precision(), Precision::F32);
    let model = model.with_precision(Precision::Bf16);
    let check = |model: &CaptioningModel<B>| {
        let cnn = &model.visual.cnn;
        assert_eq!(cnn.precision, Precision::Bf16);
        for block in [&cnn.layer1, &cnn.layer2, &cnn.layer3, &cnn.layer4]
            .into_iter()
            .flatten()
        {
            assert_eq!(block.precision, Precision::Bf16);
        }
        assert_eq!(model.textual.precision, Precision::Bf16);
        for stack in [
            &model.textual.transformer,
            &model.backward_textual.as_ref().unwrap().transformer,
        ] {
            for layer in &stack.layers {
                assert_eq!(layer.precision, Precision::Bf16);
                assert_eq!(layer.self_attn.precision, Precision::Bf16);
                assert_eq!(layer.multihead_attn.precision, Precision::Bf16);
            }
        }
    };
    let valid = model.valid();
    check(&valid);

    // Decoding (key/value caches, beam bookkeeping) runs in bf16 too.
    let images = Tensor::<B, 4>::random([2, 3, 64, 64], Distribution::Default, &Default::default());
    let config = DecodingConfig::beam_search(BeamSearchMode::Correct).with_max_steps(6);
    let captions = valid.decode(images, &config).unwrap();
    assert_eq!(captions.tokens.len(), 2);
}

#[test]
fn f32_precision_is_the_default_model_bit_for_bit() {
    let model = tiny_model();
    let x = inputs();
    let logits = |model: &CaptioningModel<AB>| {
        let (forward, backward) = model.logits(
            model.visual_features(x.images.clone()),
            x.caption.clone(),
            x.noitpac.clone(),
            x.lengths.clone(),
        );
        (forward.into_data(), backward.unwrap().into_data())
    };
    let default = logits(&model);
    let round_trip = model
        .clone()
        .with_precision(Precision::Bf16)
        .with_precision(Precision::F32);
    assert_eq!(logits(&round_trip), default);
}
