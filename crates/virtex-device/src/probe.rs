//! Asks the CUDA driver how many devices it sees, without going through cudarc (which panics
//! when `libcuda` is missing).

/// The number of CUDA devices, or why the driver could not be used.
#[cfg(feature = "cuda")]
pub(crate) fn cuda_device_count() -> Result<usize, String> {
    use std::os::raw::{c_int, c_uint};

    type CuInit = unsafe extern "C" fn(c_uint) -> c_int;
    type CuDeviceGetCount = unsafe extern "C" fn(*mut c_int) -> c_int;

    const CANDIDATES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];
    let mut failures = Vec::new();
    for name in CANDIDATES {
        // SAFETY: loading the CUDA driver runs its initialisers, which is exactly what burn-cuda
        // would do moments later; we only call two C functions with their documented signatures.
        let library = match unsafe { libloading::Library::new(name) } {
            Ok(library) => library,
            Err(err) => {
                failures.push(format!("{name}: {err}"));
                continue;
            }
        };
        // SAFETY: symbol types match the CUDA driver API (cuda.h): CUresult is a C int.
        unsafe {
            let init: libloading::Symbol<CuInit> = library
                .get(b"cuInit\0")
                .map_err(|err| format!("{name} has no cuInit: {err}"))?;
            let status = init(0);
            if status != 0 {
                return Err(format!("cuInit failed with CUresult {status} ({name})"));
            }
            let device_count: libloading::Symbol<CuDeviceGetCount> = library
                .get(b"cuDeviceGetCount\0")
                .map_err(|err| format!("{name} has no cuDeviceGetCount: {err}"))?;
            let mut count: c_int = 0;
            let status = device_count(&mut count);
            if status != 0 {
                return Err(format!(
                    "cuDeviceGetCount failed with CUresult {status} ({name})"
                ));
            }
            // Keep the driver loaded for the rest of the process, as burn-cuda will use it.
            std::mem::forget(library);
            return Ok(count.max(0) as usize);
        }
    }
    Err(failures.join("; "))
}

/// Without the `cuda` feature there is no driver to ask.
#[cfg(not(feature = "cuda"))]
pub(crate) fn cuda_device_count() -> Result<usize, String> {
    Err("this binary was built without the `cuda` feature".to_string())
}
