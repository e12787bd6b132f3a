//! Writes the inputs of `tools/reference/detectron2_export.py`: a ResNet-50 with random
//! weights (running statistics included) as torchvision-named safetensors, and its two PyTorch
//! exports.
//!
//! ```text
//! cargo run --release -p virtex-backbone --example write_exports -- OUT_DIR
//! ~/.venvs/ref/bin/python tools/reference/detectron2_export.py OUT_DIR
//! ```
//!
//! Files: `OUT_DIR/resnet50.safetensors`, `OUT_DIR/resnet50_torchvision.pth`,
//! `OUT_DIR/resnet50_detectron2.pth`.

use std::path::PathBuf;

use burn::backend::Flex;
use burn::module::ParamId;
use burn::tensor::TensorData;
use burn_store::{ModuleSnapshot, TensorSnapshot};
use virtex_backbone::ResNetConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(directory) = std::env::args_os().nth(1).map(PathBuf::from) else {
        return Err("usage: write_exports OUT_DIR".into());
    };
    std::fs::create_dir_all(&directory)?;
    let mut model = ResNetConfig::resnet50().init::<Flex>(&Default::default());

    // Every tensor random, so that no name can be confused with another of equal value
    // (a fresh network has all-zero running means, all-one variances and zero `bn3.weight`).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        // xorshift64*: reproducible without a dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
    };
    let random: Vec<TensorSnapshot> = model
        .collect(None, None, false)
        .into_iter()
        .map(|snapshot| {
            let path = snapshot.full_path();
            let numel = snapshot.shape.iter().product::<usize>();
            let values: Vec<f32> = (0..numel)
                .map(|_| {
                    let value = uniform();
                    // Variances must stay positive.
                    if path.ends_with("running_var") {
                        0.5 + value
                    } else {
                        value - 0.5
                    }
                })
                .collect();
            TensorSnapshot::from_data(
                TensorData::new(values, snapshot.shape.clone()),
                snapshot.path_stack.clone().unwrap_or_default(),
                snapshot.container_stack.clone().unwrap_or_default(),
                snapshot.tensor_id.unwrap_or_else(ParamId::new),
            )
        })
        .collect();
    let result = model.apply(random, None, None, false);
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(format!("could not set every tensor: {result:?}").into());
    }

    let files = [
        "resnet50.safetensors",
        "resnet50_torchvision.pth",
        "resnet50_detectron2.pth",
    ]
    .map(|name| directory.join(name));
    model.save_torchvision_safetensors(&files[0])?;
    model.save_torchvision_pth(&files[1])?;
    model.save_detectron2_pth(&files[2])?;
    for file in &files {
        println!("wrote {}", file.display());
    }
    Ok(())
}
