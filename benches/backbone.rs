//! `cargo bench --bench backbone`: ResNet-50 forward (inference, batch 8, 224²) on the CPU
//! (burn flex), or on CUDA with `--features cuda` (`VIRTEX_BENCH_DEVICE=cuda`).
//!
//! The PyTorch side of the comparison is `tools/bench/backbone.py`; numbers are recorded in
//! `docs/performance.md`.

use burn::prelude::*;
use burn::tensor::Distribution;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtex_backbone::ResNetConfig;
use virtex_benches::{bench_device, BenchDevice};

const BATCH: usize = 8;
const SIZE: usize = 224;
/// Multiply-accumulates of torchvision ResNet-50 at 224² (4.09 GMAC per image, without fc).
const GFLOP_PER_IMAGE: f64 = 2.0 * 4.09;

fn resnet50_forward<B: Backend>(c: &mut Criterion, device: B::Device, label: &str) {
    let model = ResNetConfig::resnet50().init::<B>(&device);
    let images = Tensor::<B, 4>::random([BATCH, 3, SIZE, SIZE], Distribution::Default, &device);
    let mut group = c.benchmark_group("backbone");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(format!("resnet50_forward_b{BATCH}_{SIZE}px_{label}"), |b| {
        b.iter(|| {
            let grid = model.forward(images.clone());
            // Synchronise inside the timed region: read one value back.
            let _ = grid.slice([0..1, 0..1, 0..1, 0..1]).into_scalar();
            B::sync(&device).expect("device sync");
        })
    });
    group.finish();
    eprintln!("note: {GFLOP_PER_IMAGE:.2} GFLOP per image; GFLOP/s = img/s × {GFLOP_PER_IMAGE:.2}");
}

fn benches(c: &mut Criterion) {
    match bench_device() {
        BenchDevice::Cpu => {
            resnet50_forward::<virtex_device::CpuBackend>(c, Default::default(), "flex")
        }
        #[cfg(feature = "cuda")]
        BenchDevice::Cuda(index) => resnet50_forward::<virtex_device::CudaBackend>(
            c,
            burn::backend::cuda::CudaDevice::new(index),
            "cuda",
        ),
    }
}

criterion_group!(backbone, benches);
criterion_main!(backbone);
