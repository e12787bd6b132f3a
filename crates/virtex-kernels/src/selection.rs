//! Which kernels run: this crate's (default) or burn's own (`VIRTEX_KERNELS=burn`).

use std::sync::OnceLock;

/// The environment variable that selects the kernels: `burn` turns this crate's kernels off
/// (for A/B measurements and as an escape hatch); unset or `fast` keeps them on.
pub const KERNELS_ENV: &str = "VIRTEX_KERNELS";

/// Whether this crate's kernels are used, read once from [`KERNELS_ENV`]. Any value other than
/// `burn` (or unset) keeps them on; an unexpected value is reported once on stderr.
pub fn fast_kernels_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| match std::env::var(KERNELS_ENV) {
        Ok(value) if value == "burn" => false,
        Ok(value) if value.is_empty() || value == "fast" => true,
        Ok(value) => {
            eprintln!("{KERNELS_ENV}={value}: expected `fast` or `burn`; using `fast`");
            true
        }
        Err(_) => true,
    })
}
