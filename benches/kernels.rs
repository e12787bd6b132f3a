//! `cargo bench --bench kernels`: the kernels of a VirTex training step, one row per real shape.
//!
//! Rows (criterion ids `group/name`, filter with `cargo bench --bench kernels -- <regex>`):
//! - `conv_fwd`, `conv_bwd_data`, `conv_bwd_weight`: every distinct ResNet-50 convolution at
//!   224² (batch 8; add 32 with `VIRTEX_BENCH_BATCHES=8,32`; other image sizes with
//!   `VIRTEX_BENCH_CONV_SIZE=128`), through `virtex_kernels`, the
//!   entry points the backbone uses (`VIRTEX_KERNELS=burn` measures burn's own kernels instead).
//! - `batchnorm`: the backbone's `BatchNorm2d` in training mode, forward and forward+backward.
//! - `eltwise`: ReLU (`virtex_kernels::relu`, as the backbone), residual add and the stem
//!   max-pool, forward and forward+backward.
//! - `matmul`: the textual head's products at H 1024 and 2048 (batch 8, T = 30 tokens, 49 memory
//!   tokens, F = 4H, 10K vocabulary). Plain burn tensor ops at the real shapes, so that this
//!   bench does not depend on the textual crate.
//! - `attention`: the textual head's `virtex_textual::MultiheadAttention` (projections, masked
//!   softmax, `out_proj`): causal self-attention over 30 tokens and cross-attention to 49 memory
//!   tokens, H 1024 and 2048, forward and forward+backward.
//! - `optim`: one step of `virtex_optim::TorchSgd` (torch's SGD, momentum 0.9 and coupled
//!   weight decay, as one pass per parameter since issue 17; what the trainer runs per parameter group) over every parameter of
//!   the R50-L1-H1024 model.
//! - `resnet50`: a ResNet-50 train step (forward + backward, 4×128²) and inference (8×224²).
//! - `train_step`: whole VirTex pretraining iterations as `virtex_train::Trainer` runs them (train-mode
//!   forward, both captioning losses, backward, global clip, Lookahead(SGD) with the LR groups,
//!   schedule), for the `small_cpu` preset (ResNet-18 + L1 H64, 8×64²) and
//!   `bicaptioning_R_50_L1_H1024` at batch 8 (224², 30 tokens, 10K vocabulary); reported in
//!   images per second.
//!
//! Throughput: FLOP-counted rows report `Melem/s` = MFLOP/s (criterion has no FLOP unit);
//! memory-bound rows report bytes of their input per second; `train_step` rows count images. Every timed closure ends by
//! synchronising the device. The PyTorch side is `tools/bench/kernels.py`, and
//! `tools/bench/compare.py` prints both side by side.

use std::time::Duration;

use burn::module::AutodiffModule;
use burn::module::{ModuleVisitor, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::Distribution;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use virtex::CaptioningModel;
use virtex_backbone::{BatchNorm2dConfig, ResNet, ResNetConfig};
use virtex_benches::{bench_device, BenchDevice};
use virtex_data::{Batch, ImageId, SentencePieceBpeTokenizer};
use virtex_optim::{TorchSgd, TorchSgdConfig};
use virtex_textual::{causal_mask, MultiheadAttention};
use virtex_train::{model_config, optimizer_config, train_step, Optim, PretrainConfig};

/// One distinct convolution of ResNet-50 (padding `kernel / 2`, no bias).
#[derive(Debug, Clone, PartialEq)]
struct ConvShape {
    name: String,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    /// Input height = width.
    size: usize,
}

impl ConvShape {
    fn out_size(&self) -> usize {
        (self.size + 2 * (self.kernel / 2) - self.kernel) / self.stride + 1
    }

    fn flops(&self, batch: usize) -> u64 {
        let out = self.out_size();
        (2 * batch * self.c_out * out * out * self.c_in * self.kernel * self.kernel) as u64
    }

    fn options(&self) -> ConvOptions<2> {
        let pad = self.kernel / 2;
        ConvOptions::new([self.stride; 2], [pad; 2], [1, 1], 1)
    }
}

/// The distinct convolutions of torchvision's ResNet-50 (v1.5) at `size`², in network order.
fn resnet50_conv_shapes(size: usize) -> Vec<ConvShape> {
    let mut shapes: Vec<ConvShape> = Vec::new();
    let mut push = |stage: &str, c_in, c_out, kernel, stride, size| {
        let shape = ConvShape {
            name: format!("{stage}_{kernel}x{kernel}s{stride}_{c_in}to{c_out}_{size}"),
            c_in,
            c_out,
            kernel,
            stride,
            size,
        };
        if !shapes.iter().any(|seen| seen.name == shape.name) {
            shapes.push(shape);
        }
    };
    push("stem", 3, 64, 7, 2, size);
    let mut spatial = size / 4;
    let mut in_channels = 64;
    for (stage, planes, blocks, stride) in [
        (1, 64, 3, 1),
        (2, 128, 4, 2),
        (3, 256, 6, 2),
        (4, 512, 3, 2),
    ] {
        let name = format!("l{stage}");
        for block in 0..blocks {
            let stride = if block == 0 { stride } else { 1 };
            let out_channels = planes * 4;
            push(&name, in_channels, planes, 1, 1, spatial);
            push(&name, planes, planes, 3, stride, spatial);
            if block == 0 {
                push(&name, in_channels, out_channels, 1, stride, spatial);
            }
            spatial /= stride;
            push(&name, planes, out_channels, 1, 1, spatial);
            in_channels = out_channels;
        }
    }
    shapes
}

/// Waits for the device and reads one value back, so that lazy backends run what was queued.
fn sync<B: Backend, const D: usize>(tensor: Tensor<B, D>) {
    let device = tensor.device();
    let _ = tensor.flatten::<1>(0, D - 1).narrow(0, 0, 1).into_scalar();
    B::sync(&device).expect("device sync");
}

fn batches() -> Vec<usize> {
    let spec = std::env::var("VIRTEX_BENCH_BATCHES").unwrap_or_else(|_| "8".into());
    spec.split(',')
        .map(|part| match part.trim().parse::<usize>() {
            Ok(batch) if batch > 0 => batch,
            _ => {
                eprintln!("VIRTEX_BENCH_BATCHES={spec}: expected positive integers such as 8,32");
                std::process::exit(2);
            }
        })
        .collect()
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn quick_group<'a>(c: &'a mut Criterion, name: &str) -> Group<'a> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sampling_mode(SamplingMode::Flat);
    group
}

/// One row: `make` builds the inputs on the first call (criterion calls the closure once per
/// sample, and never for a row the filter excludes, so a filtered run allocates nothing for the
/// other rows), then `routine` is timed on them. `make` should leave nothing lazy behind
/// (run a model once): the timed iterations must not include one-off work.
fn bench_with<T, R>(
    group: &mut Group<'_>,
    id: impl Into<String>,
    make: impl FnOnce() -> T,
    mut routine: impl FnMut(&mut T) -> R,
) {
    let mut make = Some(make);
    let mut inputs: Option<T> = None;
    group.bench_function(id.into(), |b| {
        let inputs = inputs.get_or_insert_with(|| (make.take().expect("inputs are made once"))());
        b.iter(|| routine(inputs))
    });
}

/// `VIRTEX_BENCH_CONV_SIZE`: the image size whose ResNet-50 layer shapes the conv rows use
/// (224 by default; 128 gives the train-step preset's shapes).
fn conv_image_size() -> usize {
    let spec = std::env::var("VIRTEX_BENCH_CONV_SIZE").unwrap_or_else(|_| "224".into());
    match spec.trim().parse::<usize>() {
        Ok(size) if size >= 32 => size,
        _ => {
            eprintln!("VIRTEX_BENCH_CONV_SIZE={spec}: expected an image size such as 224 or 128");
            std::process::exit(2);
        }
    }
}

fn conv_benches<B: Backend>(c: &mut Criterion, device: &B::Device) {
    for batch in batches() {
        let shapes = resnet50_conv_shapes(conv_image_size());
        for (pass, group_name) in [
            (0, "conv_fwd"),
            (1, "conv_bwd_data"),
            (2, "conv_bwd_weight"),
        ] {
            let mut group = quick_group(c, group_name);
            for shape in &shapes {
                group.throughput(Throughput::Elements(shape.flops(batch)));
                let make = || {
                    let random = |dims: [usize; 4]| {
                        Tensor::<B, 4>::random(dims, Distribution::Default, device)
                    };
                    let out = shape.out_size();
                    (
                        random([batch, shape.c_in, shape.size, shape.size]),
                        random([shape.c_out, shape.c_in, shape.kernel, shape.kernel]),
                        random([batch, shape.c_out, out, out]),
                    )
                };
                let options = shape.options();
                bench_with(
                    &mut group,
                    format!("b{batch}_{}", shape.name),
                    make,
                    |(x, w, dy)| {
                        let (x, w, dy, options) =
                            (x.clone(), w.clone(), dy.clone(), options.clone());
                        let result = match pass {
                            0 => virtex_kernels::conv2d(x, w, None, options),
                            1 => virtex_kernels::conv2d_x_backward(x, w, dy, options),
                            _ => virtex_kernels::conv2d_weight_backward(x, w, dy, options),
                        };
                        sync(result)
                    },
                );
            }
            group.finish();
        }
    }
}

fn bytes_of(dims: &[usize]) -> u64 {
    (dims.iter().product::<usize>() * std::mem::size_of::<f32>()) as u64
}

fn norm_and_eltwise_benches<B: AutodiffBackend>(c: &mut Criterion, device: &B::Device) {
    let random =
        |dims: [usize; 4]| Tensor::<B, 4>::random(dims, Distribution::Normal(0.0, 1.0), device);
    let mut group = quick_group(c, "batchnorm");
    for dims in [[8, 64, 112, 112], [8, 256, 56, 56], [8, 2048, 7, 7]] {
        let shape = format!("{}x{}x{}", dims[0], dims[1], dims[2]);
        let norm = || BatchNorm2dConfig::new(dims[1]).init::<B>(device);
        group.throughput(Throughput::Bytes(bytes_of(&dims)));
        bench_with(
            &mut group,
            format!("fwd_train_{shape}"),
            || (norm(), random(dims)),
            |(norm, x)| sync(norm.forward(x.clone())),
        );
        bench_with(
            &mut group,
            format!("fwd_bwd_{shape}"),
            || (norm(), random(dims), random(dims)),
            |(norm, x, g)| {
                let input = x.clone().require_grad();
                let grads = (norm.forward(input.clone()) * g.clone()).sum().backward();
                sync(input.grad(&grads).expect("input gradient"))
            },
        );
        bench_with(
            &mut group,
            format!("fwd_eval_{shape}"),
            || (norm().valid(), random(dims).inner()),
            |(norm, x)| sync(norm.forward(x.clone())),
        );
    }
    group.finish();

    let mut group = quick_group(c, "eltwise");
    let dims = [8, 256, 56, 56];
    let shape = "8x256x56";
    group.throughput(Throughput::Bytes(bytes_of(&dims)));
    bench_with(
        &mut group,
        format!("relu_fwd_{shape}"),
        || random(dims).inner(),
        |x| sync(virtex_kernels::relu(x.clone())),
    );
    bench_with(
        &mut group,
        format!("relu_fwd_bwd_{shape}"),
        || (random(dims), random(dims)),
        |(x, g)| {
            let input = x.clone().require_grad();
            let grads = (virtex_kernels::relu(input.clone()) * g.clone())
                .sum()
                .backward();
            sync(input.grad(&grads).expect("input gradient"))
        },
    );
    bench_with(
        &mut group,
        format!("add_fwd_{shape}"),
        || (random(dims).inner(), random(dims).inner()),
        |(x, y)| sync(x.clone() + y.clone()),
    );
    bench_with(
        &mut group,
        format!("add_fwd_bwd_{shape}"),
        || (random(dims), random(dims), random(dims)),
        |(x, y, g)| {
            let lhs = x.clone().require_grad();
            let rhs = y.clone().require_grad();
            let grads = ((lhs.clone() + rhs.clone()) * g.clone()).sum().backward();
            sync(lhs.grad(&grads).expect("lhs gradient"));
            sync(rhs.grad(&grads).expect("rhs gradient"))
        },
    );
    let dims = [8, 64, 112, 112];
    let shape = "8x64x112";
    group.throughput(Throughput::Bytes(bytes_of(&dims)));
    bench_with(
        &mut group,
        format!("maxpool3x3s2_fwd_{shape}"),
        || random(dims).inner(),
        |x| sync(max_pool2d(x.clone(), [3, 3], [2, 2], [1, 1], [1, 1], false)),
    );
    bench_with(
        &mut group,
        format!("maxpool3x3s2_fwd_bwd_{shape}"),
        || (random(dims), random([8, 64, 56, 56])),
        |(x, g)| {
            let input = x.clone().require_grad();
            let pooled = max_pool2d(input.clone(), [3, 3], [2, 2], [1, 1], [1, 1], false);
            let grads = (pooled * g.clone()).sum().backward();
            sync(input.grad(&grads).expect("input gradient"))
        },
    );
    group.finish();
}

/// Textual-head products at batch 8: `[M, K] × [K, N]`.
fn matmul_shapes(hidden: usize) -> Vec<(String, [usize; 3])> {
    let tokens = 8 * 30;
    let memory = 8 * 49;
    let ffn = 4 * hidden;
    vec![
        (format!("visual_proj_h{hidden}"), [memory, 2048, hidden]),
        (format!("self_qkv_h{hidden}"), [tokens, hidden, 3 * hidden]),
        (format!("cross_kv_h{hidden}"), [memory, hidden, 2 * hidden]),
        (format!("attn_out_h{hidden}"), [tokens, hidden, hidden]),
        (format!("ffn_up_h{hidden}"), [tokens, hidden, ffn]),
        (format!("ffn_down_h{hidden}"), [tokens, ffn, hidden]),
        (format!("vocab_h{hidden}"), [tokens, hidden, 10_000]),
    ]
}

fn matmul_benches<B: Backend>(c: &mut Criterion, device: &B::Device) {
    let mut group = quick_group(c, "matmul");
    for hidden in [1024, 2048] {
        for (name, [m, k, n]) in matmul_shapes(hidden) {
            group.throughput(Throughput::Elements((2 * m * k * n) as u64));
            let make = || {
                (
                    Tensor::<B, 2>::random([m, k], Distribution::Default, device),
                    Tensor::<B, 2>::random([k, n], Distribution::Default, device),
                )
            };
            bench_with(
                &mut group,
                format!("{name}_{m}x{k}x{n}"),
                make,
                |(lhs, rhs)| sync(lhs.clone().matmul(rhs.clone())),
            );
        }
    }
    group.finish();
}

/// The textual head's `MultiheadAttention` (fused `in_proj`, masked softmax, `out_proj`) at the
/// decoder's shapes: causal self-attention over the 30 caption tokens, and cross-attention from
/// them to the 49 visual tokens (keys/values projected from the memory inside the timed region,
/// as in training). Dropout 0: the cost of the mask draw is not the attention's.
fn attention_benches<B: AutodiffBackend>(c: &mut Criterion, device: &B::Device) {
    let mut group = quick_group(c, "attention");
    let (batch, tokens) = (8, 30);
    for hidden in [1024, 2048] {
        let heads = hidden / 64;
        for (kind, keys) in [("self_causal", tokens), ("cross", 49)] {
            let inputs = || {
                let random = |length: usize| {
                    Tensor::<B, 3>::random([batch, length, hidden], Distribution::Default, device)
                };
                let module = MultiheadAttention::<B>::new(hidden, heads, 0.0, device);
                (module, random(tokens), random(keys), random(tokens))
            };
            // Projections (q and out over T tokens, k and v over S) and the two attention
            // products.
            let flops = 2 * batch * (2 * tokens * hidden * hidden + 2 * keys * hidden * hidden)
                + 2 * 2 * batch * tokens * keys * hidden;
            group.throughput(Throughput::Elements(flops as u64));
            let name = format!("mha_{kind}_h{hidden}_b{batch}_t{tokens}_s{keys}");
            let cross = kind == "cross";
            bench_with(
                &mut group,
                format!("{name}_fwd"),
                || {
                    let (module, input, memory, _) = inputs();
                    (module.valid(), input.inner(), memory.inner())
                },
                move |(module, input, memory)| {
                    sync(mha_forward(module, cross, input.clone(), memory.clone()))
                },
            );
            bench_with(
                &mut group,
                format!("{name}_fwd_bwd"),
                inputs,
                move |(module, input, memory, gradient)| {
                    let input = input.clone().require_grad();
                    let output = mha_forward(module, cross, input.clone(), memory.clone());
                    let grads = (output * gradient.clone()).sum().backward();
                    sync(input.grad(&grads).expect("input gradient"));
                    sync(
                        module
                            .in_proj_weight
                            .grad(&grads)
                            .expect("in_proj_weight gradient"),
                    )
                },
            );
        }
    }
    group.finish();
}

/// The decoder's use of the module: cross-attention to the memory's projected keys/values, or
/// causal self-attention.
fn mha_forward<Bk: Backend>(
    module: &MultiheadAttention<Bk>,
    cross: bool,
    input: Tensor<Bk, 3>,
    memory: Tensor<Bk, 3>,
) -> Tensor<Bk, 3> {
    if cross {
        module.cross_attention(input, &module.memory_key_value(memory))
    } else {
        let mask = causal_mask(input.dims()[1], 0, &input.device());
        module.self_attention(input, None, Some(mask)).0
    }
}

/// Registers every parameter's own value as its gradient: the step costs what a real one
/// does (the values do not matter), and the gradients are fresh each iteration without
/// allocating.
struct ValuesAsGradients<'a>(&'a mut GradientsParams);

impl<B: AutodiffBackend> ModuleVisitor<B> for ValuesAsGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0
            .register::<B::InnerBackend, D>(param.id, param.val().inner());
    }
}

/// One step of the optimizer the trainer runs for each parameter group (`TorchSgd`: torch's SGD
/// with momentum and coupled weight decay, one fused pass per parameter) over every parameter of R50-L1-H1024.
fn optim_benches<B: AutodiffBackend>(c: &mut Criterion, device: &B::Device) {
    let config = PretrainConfig::preset("bicaptioning_R_50_L1_H1024").expect("a known preset");
    let (lr, decay) = (1e-3, 1e-4);
    let make = || {
        let model: CaptioningModel<B> = model_config(&config, config.data.vocab_size)
            .expect("model config")
            .init(device)
            .expect("model init");
        let sgd: TorchSgd<CaptioningModel<B>, B> =
            TorchSgdConfig::new().init(decay).expect("SGD config");
        let mut state = (Some(model), sgd);
        // The first step creates the momentum buffers, outside the timed region.
        sgd_step(&mut state, lr);
        state
    };
    let count = shapes_count(&config);
    let mut group = quick_group(c, "optim");
    // Reads param, grad and buffer, writes buffer and param.
    group.throughput(Throughput::Bytes((5 * count * 4) as u64));
    eprintln!("optim/sgd_momentum_r50_l1_h1024: {count} parameters");
    bench_with(
        &mut group,
        "sgd_momentum_r50_l1_h1024",
        make,
        move |state| sgd_step(state, lr),
    );
    group.finish();
}

/// Parameters of the model `config` names.
fn shapes_count(config: &PretrainConfig) -> usize {
    let model: CaptioningModel<burn::backend::Flex> = model_config(config, config.data.vocab_size)
        .expect("model config")
        .init(&Default::default())
        .expect("model init");
    model.num_params()
}

type SgdState<B> = (Option<CaptioningModel<B>>, TorchSgd<CaptioningModel<B>, B>);

fn sgd_step<B: AutodiffBackend>((model, sgd): &mut SgdState<B>, lr: f64) {
    let current = model.take().expect("the model is put back after each step");
    let mut grads = GradientsParams::new();
    current.visit(&mut ValuesAsGradients(&mut grads));
    let next = Optimizer::step(sgd, lr, current, grads);
    sync(next.textual.embedding.words.weight.val());
    *model = Some(next);
}

fn resnet_benches<B: AutodiffBackend>(c: &mut Criterion, device: &B::Device) {
    let mut group = quick_group(c, "resnet50");
    // 2·4.09 GMAC per 224² image, scaled by pixels; a train step is ≈ 3× the forward.
    let flops = |batch: usize, size: usize, factor: f64| {
        (factor * 2.0 * 4.09e9 * batch as f64 * (size * size) as f64 / (224.0 * 224.0)) as u64
    };
    let train_step = |model: &ResNet<B>, images: &Tensor<B, 4>| {
        let grads = model.forward(images.clone()).mean().backward();
        let weight = model.conv1.weight.val();
        sync(weight.grad(&grads).expect("conv1 gradient"))
    };
    // Parameters are initialised lazily, on first use: one step in the setup keeps that out of
    // the timed iterations.
    let train_inputs = || {
        let model = ResNetConfig::resnet50().init::<B>(device);
        let images = Tensor::<B, 4>::random([4, 3, 128, 128], Distribution::Default, device);
        train_step(&model, &images);
        (model, images)
    };
    group.throughput(Throughput::Elements(flops(4, 128, 3.0)));
    bench_with(
        &mut group,
        "train_step_b4_128",
        train_inputs,
        |(model, images)| train_step(model, images),
    );
    let inference_inputs = || {
        let model = ResNetConfig::resnet50().init::<B>(device).valid();
        let images =
            Tensor::<B::InnerBackend, 4>::random([8, 3, 224, 224], Distribution::Default, device);
        sync(model.forward(images.clone()));
        (model, images)
    };
    group.throughput(Throughput::Elements(flops(8, 224, 1.0)));
    bench_with(
        &mut group,
        "inference_b8_224",
        inference_inputs,
        |(model, images)| sync(model.forward(images.clone())),
    );
    group.finish();
}

/// A batch of random images and random captions of lengths spread over `[len/2, len]`
/// (`[SOS] … [EOS]`, right-padded with 0; the reversed copy for the backward model).
fn random_batch<B: Backend>(
    batch: usize,
    size: usize,
    max_length: usize,
    vocab: usize,
    device: &B::Device,
) -> Batch<B> {
    const SOS: i64 = 1;
    const EOS: i64 = 2;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |bound: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        ((state >> 33) % bound as u64) as usize
    };
    let (mut forward, mut backward, mut lengths) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..batch {
        let length = max_length / 2 + next(max_length / 2 + 1);
        let mut tokens = vec![SOS];
        tokens.extend((0..length - 2).map(|_| 3 + next(vocab - 3) as i64));
        tokens.push(EOS);
        let mut reversed = tokens.clone();
        reversed.reverse();
        tokens.resize(max_length, 0);
        reversed.resize(max_length, 0);
        forward.extend(tokens);
        backward.extend(reversed);
        lengths.push(length as i64);
    }
    let tokens = |values: Vec<i64>| {
        Tensor::<B, 2, Int>::from_data(TensorData::new(values, [batch, max_length]), device)
    };
    Batch {
        image_ids: (0..batch as u64).map(ImageId::Int).collect(),
        images: Tensor::random(
            [batch, 3, size, size],
            Distribution::Normal(0.0, 1.0),
            device,
        ),
        caption_tokens: tokens(forward),
        noitpac_tokens: tokens(backward),
        caption_lengths: Tensor::from_data(TensorData::new(lengths, [batch]), device),
        object_labels: None,
    }
}

fn train_step_benches<B: AutodiffBackend>(c: &mut Criterion, device: &B::Device) {
    let mut group = quick_group(c, "train_step");
    for (preset, batch) in [("small_cpu", 8), ("bicaptioning_R_50_L1_H1024", 8)] {
        let make = || {
            let config = PretrainConfig::preset(preset).expect("a known preset");
            // The small preset trains on the embedded sample's vocabulary; released models use
            // upstream's 10K SentencePiece vocabulary.
            let vocab = if preset == "small_cpu" {
                SentencePieceBpeTokenizer::from_file(virtex_data::sample_vocab_path())
                    .expect("the embedded sample vocabulary")
                    .vocab_size()
            } else {
                config.data.vocab_size
            };
            let model: CaptioningModel<B> = model_config(&config, vocab)
                .expect("model config")
                .init(device)
                .expect("model init");
            let optimizer = optimizer_config(&config)
                .expect("optimizer config")
                .init(&model)
                .expect("optimizer init");
            let size = config.data.image_crop_size as usize;
            let length = config.data.max_caption_length;
            let batch = random_batch::<B>(batch, size, length, vocab, device);
            let mut state = (Some(model), optimizer, batch);
            // One step outside the timed region: parameters are initialised lazily.
            virtex_step(&mut state);
            state
        };
        group.throughput(Throughput::Elements(batch as u64));
        bench_with(&mut group, format!("{preset}_b{batch}"), make, virtex_step);
    }
    group.finish();
}

/// What a `train_step` row keeps between iterations: the model (taken and put back by each
/// step), its optimizer and the batch.
type StepState<B> = (
    Option<CaptioningModel<B>>,
    Optim<CaptioningModel<B>, B>,
    Batch<B>,
);

/// One pretraining iteration through `virtex_train::train_step`, the function the training
/// loop runs: objective, backward, global clip, grouped Lookahead(SGD), schedule. It
/// reads the losses back, which synchronises the device; the updated stem weights are read too.
fn virtex_step<B: AutodiffBackend>((model, optimizer, batch): &mut StepState<B>) {
    let current = model.take().expect("the model is put back after each step");
    let (next, _result) =
        train_step(current, optimizer, std::iter::once(batch.clone())).expect("train step");
    sync(next.visual.cnn.conv1.weight.val());
    *model = Some(next);
}

fn run<B: AutodiffBackend>(c: &mut Criterion, device: B::Device) {
    conv_benches::<B::InnerBackend>(c, &device);
    norm_and_eltwise_benches::<B>(c, &device);
    matmul_benches::<B::InnerBackend>(c, &device);
    attention_benches::<B>(c, &device);
    optim_benches::<B>(c, &device);
    resnet_benches::<B>(c, &device);
    train_step_benches::<B>(c, &device);
    eprintln!(
        "note: `Melem/s` is MFLOP/s for conv/matmul/attention/resnet50 rows; \
         `GiB/s` counts the input tensor's bytes for batchnorm/eltwise/optim rows; \
         `elem/s` is images/s for train_step rows"
    );
}

fn benches(c: &mut Criterion) {
    match bench_device() {
        BenchDevice::Cpu => run::<virtex_device::CpuAutodiffBackend>(c, Default::default()),
        #[cfg(feature = "cuda")]
        BenchDevice::Cuda(index) => run::<virtex_device::CudaAutodiffBackend>(
            c,
            burn::backend::cuda::CudaDevice::new(index),
        ),
    }
}

criterion_group!(kernels, benches);
criterion_main!(kernels);
