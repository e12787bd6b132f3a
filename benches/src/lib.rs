//! Helpers shared by the benchmarks in this package.
#![warn(missing_docs)]

use virtex_device::DeviceSpec;

/// The device a benchmark run targets, from `VIRTEX_BENCH_DEVICE` (`cpu` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchDevice {
    /// burn flex on the CPU.
    Cpu,
    /// CUDA GPU `N` (needs the `cuda` feature).
    #[cfg(feature = "cuda")]
    Cuda(usize),
}

/// Reads `VIRTEX_BENCH_DEVICE`; exits with a message when it names an unusable device.
pub fn bench_device() -> BenchDevice {
    let requested = std::env::var("VIRTEX_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let checked = requested.parse::<DeviceSpec>().and_then(DeviceSpec::check);
    match checked {
        Ok(DeviceSpec::Cpu) => BenchDevice::Cpu,
        #[cfg(feature = "cuda")]
        Ok(DeviceSpec::Cuda(index)) => BenchDevice::Cuda(index),
        #[cfg(not(feature = "cuda"))]
        Ok(DeviceSpec::Cuda(_)) => unreachable!("check() rejects CUDA without the feature"),
        Err(err) => {
            eprintln!("VIRTEX_BENCH_DEVICE={requested}: {err}");
            std::process::exit(2);
        }
    }
}
