//! Construction: presets, parameter counts and torchvision's initialisation.

mod common;

use burn::module::Module;
use common::*;
use virtex_backbone::{BackboneError, BlockKind, ResNetConfig};

#[test]
fn resnet50_has_torchvisions_parameter_count() {
    let model = ResNetConfig::resnet50().init::<B>(&Default::default());
    // torchvision resnet50 without fc: 23,508,032 trainable parameters; burn's count also
    // includes the running statistics (2 per BatchNorm channel).
    let running: usize = model
        .batch_norms()
        .iter()
        .map(|bn| 2 * bn.weight.dims()[0])
        .sum();
    assert_eq!(model.num_params() - running, 23_508_032);
}

#[test]
fn presets_resolve_by_name() {
    for (name, channels) in [
        ("resnet18", 512),
        ("resnet34", 512),
        ("torchvision::resnet50", 2048),
        ("resnet101", 2048),
        ("resnet152", 2048),
        ("torchvision::wide_resnet50_2", 2048),
    ] {
        assert_eq!(
            ResNetConfig::from_name(name).unwrap().output_channels(),
            channels
        );
    }
    assert!(matches!(
        ResNetConfig::from_name("vgg16"),
        Err(BackboneError::UnknownArchitecture(_))
    ));
    assert!(ResNetConfig::new(BlockKind::Basic, [1, 0, 1, 1])
        .try_init::<B>(&Default::default())
        .is_err());
}

#[test]
fn wide_resnet_doubles_the_bottleneck_width() {
    let config = ResNetConfig {
        layers: [1, 1, 1, 1],
        ..ResNetConfig::wide_resnet50_2()
    };
    let model = config.init::<B>(&Default::default());
    assert_eq!(model.layer1[0].conv1.weight.dims(), [128, 64, 1, 1]);
    assert_eq!(
        model.layer4[0].conv3.as_ref().unwrap().weight.dims(),
        [2048, 1024, 1, 1]
    );
}

#[test]
fn zero_init_residual_and_kaiming_fan_out() {
    let config = ResNetConfig {
        layers: [1, 1, 1, 1],
        ..ResNetConfig::resnet50()
    };
    let model = config.init::<AB>(&Default::default());
    for block in model.layer1.iter().chain(&model.layer4) {
        let bn3 = block.bn3.as_ref().unwrap();
        assert_eq!(bn3.weight.val().abs().max().into_scalar(), 0.0);
        // Zero-initialised scales must still be trainable.
        assert!(bn3.weight.is_require_grad());
        assert_eq!(block.bn1.weight.val().min().into_scalar(), 1.0);
    }
    // layer4.0.conv2: 512 → 512, 3×3: std = sqrt(2 / (512·9)) ≈ 0.02083.
    let weight = model.layer4[0].conv2.weight.val().flatten::<1>(0, 3);
    let mean = weight.clone().mean().into_scalar();
    let std = (weight - mean).square().mean().into_scalar().sqrt();
    let expected = (2.0f32 / (512.0 * 9.0)).sqrt();
    assert!(
        (std - expected).abs() / expected < 0.02,
        "std {std} vs {expected}"
    );
    assert!(model.layer4[0].conv2.bias.is_none());
}
