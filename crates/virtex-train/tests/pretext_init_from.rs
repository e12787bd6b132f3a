//! `--init-from` of official-format pretext checkpoints through the loop: for token
//! classification, multilabel classification and masked LM, a `.pth` in upstream's layout
//! (`{"model": state_dict}` with `visual.cnn.*` in torchvision's names and the head's keys as
//! upstream's modules name them) starts a run (`Trainer::start` with `init_from`) and is
//! evaluated (`load_model` of a file, what `--init-from FILE --eval-only` does); both must hold
//! the file's weights: their loss on a fixed batch equals the library-level import's
//! (`from_official_checkpoint`) and the written model's, and differs from a fresh model's.
//!
//! The files are written here from a model of the loop's configuration with the crate's
//! `torch.save` writer (`virtex_backbone::save_torch`): the committed PyTorch fixtures use a
//! narrow ResNet that no `model.visual` name builds (their parity is tested in `virtex`).

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::DType;
use common::{exclusive, tiny_config};
use virtex::{ClassificationKind, ClassificationModel, ImportOptions, MaskedLmModel};
use virtex_backbone::{save_torch, TorchValue};
use virtex_data::CollatedBatch;
use virtex_train::{
    evaluate, load_model, validation_data, ModelSource, PretextModel, PretrainConfig,
    ResumeOverrides, RunOptions, SampleCaptioner, Trainer,
};

type B = Autodiff<Flex>;

/// Seeds of the model written to the file and of the run that imports it: different, so a
/// run that ignored the file would start from other weights.
const FILE_SEED: u64 = 11;
const RUN_SEED: u64 = 99;

fn token_classification() -> PretrainConfig {
    let mut config = tiny_config(4, 2);
    config.model.name = "token_classification".into();
    config.model.textual = "none".into();
    config
}

fn multilabel() -> PretrainConfig {
    let mut config = token_classification();
    config.model.name = "multilabel_classification".into();
    config.data.vocab_size = 81;
    config
}

fn masked_lm() -> PretrainConfig {
    let mut config = tiny_config(4, 2);
    config.model.name = "masked_lm".into();
    config
}

/// The tensors of a safetensors file, by name.
fn read_safetensors(path: &Path) -> Vec<(String, TensorData)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, TensorData)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::I64 => DType::I64,
                other => panic!("{name}: unexpected dtype {other:?}"),
            };
            let data =
                TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype);
            (name, data)
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

/// `[rows, columns]` → `[columns, rows]` (burn's `Linear` weight is the transpose of torch's).
fn transpose(data: &TensorData) -> TensorData {
    let [rows, columns] = [data.shape[0], data.shape[1]];
    let values: Vec<f32> = data.to_vec().unwrap();
    let mut out = vec![0f32; values.len()];
    for row in 0..rows {
        for column in 0..columns {
            out[column * rows + row] = values[row * columns + column];
        }
    }
    TensorData::new(out, [columns, rows])
}

/// Writes `model` as upstream's `torch.save({"model": model.state_dict()})`: the CNN from its
/// torchvision export, the head's tensors from our file with torch's names (they are the same
/// paths), `nn.Linear` weights transposed, and the tied `textual.output.weight` of a
/// transformer head.
fn write_official<M: PretextModel<Flex>>(model: &M, dir: &Path) -> std::path::PathBuf {
    let ours = dir.join("ours.safetensors");
    let cnn = dir.join("cnn.safetensors");
    model.save(&ours).unwrap();
    model.export_backbone(&cnn).unwrap();
    let mut state: Vec<(String, TorchValue)> = read_safetensors(&cnn)
        .into_iter()
        .map(|(name, data)| (format!("visual.cnn.{name}"), TorchValue::Tensor(data)))
        .collect();
    let linear_weights = [
        "visual_projection.weight",
        "out_proj.weight",
        "linear1.weight",
        "linear2.weight",
    ];
    let head = read_safetensors(&ours);
    let mut head_keys = 0;
    for (name, data) in &head {
        let Some(local) = name.strip_prefix("textual.") else {
            continue;
        };
        head_keys += 1;
        let is_linear = linear_weights
            .iter()
            .any(|suffix| local == *suffix || local.ends_with(&format!(".{suffix}")))
            // The classification head's single `nn.Linear`.
            || local == "output.weight";
        let value = if is_linear {
            transpose(data)
        } else {
            data.clone()
        };
        state.push((name.clone(), TorchValue::Tensor(value)));
        if local == "embedding.words.weight" {
            // Upstream ties the output layer to the word embedding; its state dict has both.
            state.push((
                "textual.output.weight".into(),
                TorchValue::Tensor(data.clone()),
            ));
        }
    }
    assert!(head_keys >= 2, "our file has the head's tensors");
    let path = dir.join("official.pth");
    save_torch(
        &TorchValue::Dict(vec![("model".into(), TorchValue::OrderedDict(state))]),
        &path,
    )
    .unwrap();
    path
}

/// The first validation batch of `config` on the CPU, with object labels where the loaders
/// attach them.
fn fixed_batch(config: &PretrainConfig) -> CollatedBatch {
    validation_data(config)
        .unwrap()
        .load_batch(Default::default())
        .unwrap()
}

/// The model's loss on `batch` in evaluation mode; the backend RNG (masked LM draws its masks
/// from it) is reseeded first, so every model sees the same masks.
fn loss<M: PretextModel<Flex>>(model: &M, config: &PretrainConfig, batch: &CollatedBatch) -> f64 {
    let device = Default::default();
    Flex::seed(&device, 5);
    let labels = validation_data(config)
        .unwrap()
        .dataset()
        .object_labels()
        .cloned();
    let batch = batch.to_device_labelled::<Flex>(&device, labels.as_deref());
    model.objective(&batch).loss.into_scalar().elem::<f64>()
}

/// Writes an official file of a model of `config`, then checks the loop's two ways in.
fn check_init_from<MA>(config: PretrainConfig, import: impl Fn(&Path) -> MA::InnerModule)
where
    MA: PretextModel<B> + AutodiffModule<B> + 'static,
    MA::InnerModule: PretextModel<Flex> + SampleCaptioner<Flex>,
    virtex_train::Optim<MA, B>: Send + 'static,
{
    let _exclusive = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let mut file_config = config.clone();
    file_config.random_seed = FILE_SEED;
    Flex::seed(&device, FILE_SEED);
    let written = MA::InnerModule::from_config(&file_config, &device).unwrap();
    let official = write_official(&written, dir.path());
    let batch = fixed_batch(&config);
    let expected = loss(&written, &config, &batch);

    // The library-level import of the file.
    let imported = import(&official);
    let library = loss(&imported, &config, &batch);
    assert!(
        (library - expected).abs() < 1e-6,
        "{}: library import {library} vs written {expected}",
        config.model.name
    );

    // A fresh model of the run's seed: other weights, another loss (the test can fail).
    let mut run_config = config.clone();
    run_config.random_seed = RUN_SEED;
    Flex::seed(&device, RUN_SEED);
    let fresh = MA::InnerModule::from_config(&run_config, &device).unwrap();
    let fresh = loss(&fresh, &config, &batch);
    assert!(
        (fresh - expected).abs() > 1e-4,
        "{}: a fresh model gives {fresh}, the file {expected}",
        config.model.name
    );

    // `--init-from FILE` of a training run: the model the loop starts from.
    let trainer = Trainer::<B, MA>::start(
        RunOptions {
            init_from: Some(official.clone()),
            ..RunOptions::new(run_config.clone(), dir.path().join("run"))
        },
        vec![Default::default()],
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    let started = loss(&trainer.model().valid(), &config, &batch);
    assert!(
        (started - expected).abs() < 1e-6,
        "{}: the run starts at {started}, the file gives {expected}",
        config.model.name
    );
    drop(trainer);
    // The record of the run names what was loaded: every tensor of the head.
    let record =
        std::fs::read_to_string(dir.path().join("run").join(virtex_train::INIT_FROM_FILE)).unwrap();
    assert!(record.contains("textual.output.bias"), "{record}");

    // `--init-from FILE --eval-only`: the file's weights in the configured model.
    let (model, eval_config, _) = load_model::<Flex, MA::InnerModule>(
        &ModelSource::File(official.clone()),
        run_config,
        &ResumeOverrides::default(),
        &device,
    )
    .unwrap();
    assert!((loss(&model, &config, &batch) - expected).abs() < 1e-6);
    let evaluated = evaluate(&model, &eval_config, &device).unwrap();
    let reference = evaluate(&written, &eval_config, &device).unwrap();
    assert!(
        (evaluated.loss - reference.loss).abs() < 1e-6,
        "{evaluated:?} vs {reference:?}"
    );
}

#[test]
fn token_classification_inits_from_an_official_checkpoint() {
    check_init_from::<ClassificationModel<B>>(token_classification(), |path| {
        ClassificationModel::from_official_checkpoint(
            path,
            ClassificationKind::Token,
            &Default::default(),
        )
        .unwrap()
        .0
    });
}

#[test]
fn multilabel_classification_inits_from_an_official_checkpoint() {
    check_init_from::<ClassificationModel<B>>(multilabel(), |path| {
        ClassificationModel::from_official_checkpoint(
            path,
            ClassificationKind::Multilabel,
            &Default::default(),
        )
        .unwrap()
        .0
    });
}

#[test]
fn masked_lm_inits_from_an_official_checkpoint() {
    let config = masked_lm();
    let options = ImportOptions {
        // `L1_H64_A1_F256`: one head, which H = 64 would also give (H / 64).
        attention_heads: Some(1),
        dropout: config.model.dropout,
        ..ImportOptions::default()
    };
    check_init_from::<MaskedLmModel<B>>(config, |path| {
        MaskedLmModel::from_official_checkpoint(path, &options, &Default::default())
            .unwrap()
            .0
    });
}
