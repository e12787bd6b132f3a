//! Device selection shared by every VirTex binary.
//!
//! Every binary accepts `--device cpu | cuda | cuda:N` and hands the parsed [`DeviceSpec`] to
//! [`DeviceSpec::check`] before touching a tensor. The CPU runs on burn's pure-Rust `flex`
//! backend ([`CpuBackend`]); CUDA runs on burn's `cuda` backend with kernel fusion and autotune
//! ([`CudaBackend`], behind this crate's `cuda` feature).
//!
//! Why a probe: a burn-cuda binary starts fine on a machine without a GPU driver and panics
//! (exit 101, inside cubecl's device thread) at the first tensor operation. [`DeviceSpec::check`]
//! opens `libcuda` itself, counts the devices and returns a typed [`DeviceError`] instead.
//!
//! The crate is also the leaf every crate shares for file safety: [`write_atomically`] (every
//! writer), [`check_output_path`] (no output over an input or a checkpoint) and
//! [`conform_snapshot`] (every stored tensor checked and converted before burn-store applies
//! it, so that a wrong dtype is an error, never a panic that aborts the process).
//!
//! ```
//! use virtex_device::DeviceSpec;
//!
//! let spec: DeviceSpec = "cpu".parse().unwrap();
//! assert_eq!(spec, DeviceSpec::Cpu);
//! assert_eq!("cuda:1".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(1));
//! assert!("tpu".parse::<DeviceSpec>().is_err());
//! ```
#![warn(missing_docs)]

mod atomic;
pub mod conform;
pub mod output_guard;
mod probe;

pub use atomic::{write_atomically, PARTIAL_PREFIX};
pub use conform::{accepts_dtype, conform_snapshot, dtype_name, fit_snapshot, Unfit};
pub use output_guard::{check_output_path, is_checkpoint_dir, OutputConflict};

#[doc(hidden)]
pub use burn as __burn;

use std::fmt;
use std::str::FromStr;

/// The CPU backend: burn's pure-Rust `flex` backend (~10× faster than `ndarray` on convolutions).
pub type CpuBackend = burn::backend::Flex;

/// The CPU backend with automatic differentiation, used for training and in every test binary.
pub type CpuAutodiffBackend = burn::backend::Autodiff<CpuBackend>;

/// The CUDA backend: burn's `cuda` backend with kernel fusion and autotune.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;

/// The CUDA backend with automatic differentiation.
#[cfg(feature = "cuda")]
pub type CudaAutodiffBackend = burn::backend::Autodiff<CudaBackend>;

/// Whether backend `B` runs on a CUDA GPU (burn's `cuda` backend, with or without autodiff
/// and fusion), read from its device type, so nothing is initialised to answer. Library code
/// generic over the backend uses it for device-dependent defaults such as
/// `train.precision = auto`.
pub fn runs_on_cuda<B: burn::tensor::backend::Backend>() -> bool {
    std::any::type_name::<B::Device>().contains("Cuda")
}

/// Errors from parsing or checking a device request.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The string is not `cpu`, `cuda` or `cuda:N`.
    #[error("invalid device `{0}`: expected `cpu`, `cuda` or `cuda:N` (N a GPU index)")]
    Invalid(String),
    /// CUDA was requested from a binary built without the `cuda` feature.
    #[error(
        "device `{0}` needs CUDA support, but this binary was built without it: \
         rebuild with `--features cuda`"
    )]
    CudaNotCompiled(DeviceSpec),
    /// The CUDA driver library could not be loaded or initialised.
    #[error("no CUDA driver found: {0}")]
    NoDriver(String),
    /// A device list (`--devices`) is empty or mixes backends.
    #[error("invalid device list `{list}`: {reason}")]
    InvalidList {
        /// The list as written.
        list: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The driver works but the requested GPU index does not exist.
    #[error("CUDA device {index} requested but only {count} CUDA device(s) are present")]
    NoSuchGpu {
        /// The requested index.
        index: usize,
        /// The number of devices the driver reports.
        count: usize,
    },
}

/// A device request as written on a command line: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU, through the `flex` backend.
    #[default]
    Cpu,
    /// CUDA GPU number `N`.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let lowered = text.trim().to_ascii_lowercase();
        match lowered.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|index| index.parse::<usize>().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Invalid(text.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl DeviceSpec {
    /// Checks that the device can be used by this binary, without touching burn.
    ///
    /// For `cpu` this always succeeds. For `cuda:N` it requires the `cuda` feature, a loadable
    /// driver (`libcuda.so.1`) and at least `N + 1` devices.
    pub fn check(self) -> Result<Self, DeviceError> {
        match self {
            Self::Cpu => Ok(self),
            Self::Cuda(index) => {
                if !cfg!(feature = "cuda") {
                    return Err(DeviceError::CudaNotCompiled(self));
                }
                let count = probe::cuda_device_count().map_err(DeviceError::NoDriver)?;
                if index >= count {
                    return Err(DeviceError::NoSuchGpu { index, count });
                }
                Ok(self)
            }
        }
    }

    /// Parses a comma-separated device list such as `cuda:0,cuda:1`.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, DeviceError> {
        text.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(str::parse)
            .collect()
    }

    /// Parses and checks a data-parallel device list such as `cuda:0,cuda:1`: at least one
    /// device, all served by one backend (all `cpu` or all `cuda:N`), each passing
    /// [`DeviceSpec::check`]. A device may repeat (`cpu,cpu`, `cuda:0,cuda:0`: several replicas
    /// on one device, for testing the multi-device path on one CPU or GPU).
    ///
    /// ```
    /// use virtex_device::DeviceSpec;
    ///
    /// assert_eq!(DeviceSpec::check_list("cpu,cpu").unwrap(), vec![DeviceSpec::Cpu; 2]);
    /// assert!(DeviceSpec::check_list("cpu,tpu").is_err());
    /// assert!(DeviceSpec::check_list("cpu,cuda:0").is_err());
    /// assert!(DeviceSpec::check_list(" , ").is_err());
    /// ```
    pub fn check_list(text: &str) -> Result<Vec<Self>, DeviceError> {
        let specs = Self::parse_list(text)?;
        let invalid = |reason: &str| DeviceError::InvalidList {
            list: text.to_string(),
            reason: reason.to_string(),
        };
        let Some(first) = specs.first() else {
            return Err(invalid(
                "expected at least one device, e.g. `cuda:0,cuda:1`",
            ));
        };
        let same_backend = |spec: &Self| {
            matches!(
                (first, spec),
                (Self::Cpu, Self::Cpu) | (Self::Cuda(_), Self::Cuda(_))
            )
        };
        if !specs.iter().all(same_backend) {
            return Err(invalid(
                "all devices must use one backend (all `cpu` or all `cuda:N`)",
            ));
        }
        specs.into_iter().map(Self::check).collect()
    }

    /// The burn device for the CUDA backend. Call [`DeviceSpec::check`] first.
    #[cfg(feature = "cuda")]
    pub fn cuda_device(self) -> Option<burn::backend::cuda::CudaDevice> {
        match self {
            Self::Cuda(index) => Some(burn::backend::cuda::CudaDevice::new(index)),
            Self::Cpu => None,
        }
    }
}

/// Runs `$body` with `$B` bound to the backend that serves `$spec` and `$device` to its device.
///
/// The body is monomorphised once per compiled backend, so a binary stays generic without a
/// hand-written `match` in every command. `$spec` must have passed [`DeviceSpec::check`].
///
/// ```
/// use burn::tensor::Tensor;
/// use virtex_device::{with_backend, DeviceSpec};
///
/// let spec = DeviceSpec::Cpu.check().unwrap();
/// let sum = with_backend!(spec, |B, device| {
///     Tensor::<B, 1>::from_floats([1.0, 2.0], &device).sum().into_scalar()
/// });
/// assert_eq!(sum, 3.0);
/// ```
#[macro_export]
macro_rules! with_backend {
    ($spec:expr, |$B:ident, $device:ident| $body:expr) => {{
        match $spec {
            $crate::DeviceSpec::Cpu => {
                #[allow(non_camel_case_types, dead_code)]
                type $B = $crate::CpuBackend;
                let $device: <$crate::CpuBackend as $crate::__burn::tensor::backend::BackendTypes>::Device = Default::default();
                $body
            }
            #[allow(unreachable_patterns)]
            $crate::DeviceSpec::Cuda(_index) => $crate::__cuda_arm!(_index, $B, $device, $body),
        }
    }};
}

/// Runs `$body` with `$B` bound to the backend that serves every spec of `$specs` and
/// `$devices` to a `Vec` of their burn devices, in order (the multi-device form of
/// [`with_backend!`]). `$specs` must come from [`DeviceSpec::check_list`] (non-empty, one
/// backend).
///
/// ```
/// use virtex_device::{with_backend_devices, DeviceSpec};
///
/// let specs = DeviceSpec::check_list("cpu,cpu").unwrap();
/// let count = with_backend_devices!(&specs, |B, devices| devices.len());
/// assert_eq!(count, 2);
/// ```
#[macro_export]
macro_rules! with_backend_devices {
    ($specs:expr, |$B:ident, $devices:ident| $body:expr) => {{
        let specs: &[$crate::DeviceSpec] = $specs;
        match specs.first().copied().unwrap_or_default() {
            $crate::DeviceSpec::Cpu => {
                #[allow(non_camel_case_types, dead_code)]
                type $B = $crate::CpuBackend;
                let $devices: Vec<
                    <$crate::CpuBackend as $crate::__burn::tensor::backend::BackendTypes>::Device,
                > = specs.iter().map(|_| Default::default()).collect();
                $body
            }
            #[allow(unreachable_patterns)]
            $crate::DeviceSpec::Cuda(_) => $crate::__cuda_devices_arm!(specs, $B, $devices, $body),
        }
    }};
}

#[doc(hidden)]
#[cfg(feature = "cuda")]
#[macro_export]
macro_rules! __cuda_devices_arm {
    ($specs:expr, $B:ident, $devices:ident, $body:expr) => {{
        #[allow(non_camel_case_types, dead_code)]
        type $B = $crate::CudaBackend;
        let $devices: Vec<$crate::__burn::backend::cuda::CudaDevice> = $specs
            .iter()
            .map(|spec| {
                spec.cuda_device()
                    .expect("DeviceSpec::check_list keeps one backend per list")
            })
            .collect();
        $body
    }};
}

#[doc(hidden)]
#[cfg(not(feature = "cuda"))]
#[macro_export]
macro_rules! __cuda_devices_arm {
    ($specs:expr, $B:ident, $devices:ident, $body:expr) => {{
        let _ = $specs;
        unreachable!("DeviceSpec::check rejects CUDA when the `cuda` feature is off")
    }};
}

#[doc(hidden)]
#[cfg(feature = "cuda")]
#[macro_export]
macro_rules! __cuda_arm {
    ($index:expr, $B:ident, $device:ident, $body:expr) => {{
        #[allow(non_camel_case_types, dead_code)]
        type $B = $crate::CudaBackend;
        let $device = $crate::__burn::backend::cuda::CudaDevice::new($index);
        $body
    }};
}

#[doc(hidden)]
#[cfg(not(feature = "cuda"))]
#[macro_export]
macro_rules! __cuda_arm {
    ($index:expr, $B:ident, $device:ident, $body:expr) => {{
        let _ = $index;
        unreachable!("DeviceSpec::check rejects CUDA when the `cuda` feature is off")
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_cuda_backend_runs_on_cuda() {
        assert!(!runs_on_cuda::<CpuBackend>());
        assert!(!runs_on_cuda::<CpuAutodiffBackend>());
        #[cfg(feature = "cuda")]
        {
            assert!(runs_on_cuda::<CudaBackend>());
            assert!(runs_on_cuda::<CudaAutodiffBackend>());
        }
    }

    #[test]
    fn parses_every_accepted_spelling() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!(" CPU ".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        for bad in ["", "cuda:", "cuda:-1", "cuda:x", "metal", "cuda:1:2"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(err.to_string().contains("invalid device"), "{bad}: {err}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn parses_device_lists() {
        let list = DeviceSpec::parse_list("cuda:0,cuda:1").unwrap();
        assert_eq!(list, vec![DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)]);
        assert!(DeviceSpec::parse_list("cuda:0,bogus").is_err());
    }

    #[test]
    fn checks_data_parallel_device_lists() {
        assert_eq!(
            DeviceSpec::check_list("cpu, cpu").unwrap(),
            vec![DeviceSpec::Cpu, DeviceSpec::Cpu]
        );
        let bad = DeviceSpec::check_list("cpu,tpu").unwrap_err();
        assert!(bad.to_string().contains("invalid device `tpu`"), "{bad}");
        let empty = DeviceSpec::check_list(",").unwrap_err();
        assert!(empty.to_string().contains("at least one device"), "{empty}");
        let mixed = DeviceSpec::check_list("cpu,cuda:1").unwrap_err();
        assert!(mixed.to_string().contains("one backend"), "{mixed}");
    }

    #[test]
    fn cpu_always_passes_the_check() {
        assert_eq!(DeviceSpec::Cpu.check().unwrap(), DeviceSpec::Cpu);
    }

    /// On machines without a driver (CI, developers' machines) asking for CUDA must give a
    /// typed error, never the cudarc panic. Where a GPU is present this test checks nothing.
    #[test]
    fn cuda_request_without_driver_is_a_typed_error() {
        let cuda_compiled = cfg!(feature = "cuda");
        match DeviceSpec::Cuda(0).check() {
            Ok(_) => {}
            Err(DeviceError::CudaNotCompiled(_)) => assert!(!cuda_compiled),
            Err(DeviceError::NoDriver(msg)) => {
                assert!(cuda_compiled);
                assert!(!msg.is_empty());
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
        let too_high = DeviceSpec::Cuda(10_000).check();
        assert!(too_high.is_err());
    }
}
